package io.crossinfer;

import static org.hamcrest.MatcherAssert.assertThat;
import static org.hamcrest.Matchers.containsString;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertThrows;

import java.util.Arrays;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.Map;
import org.apache.beam.sdk.values.Row;
import org.junit.Test;
import org.junit.runner.RunWith;
import org.junit.runners.JUnit4;

/** Tests for {@link CrossPrepare}: what it sends to {@code crossinfer.Prepare}. */
@RunWith(JUnit4.class)
public class CrossPrepareTest {

  @Test
  public void operationsTravelAsOneJsonListInTheOrderAdded() {
    Map<String, Object> args = new LinkedHashMap<>();
    args.put("bucket_boundaries", Arrays.asList(-1.5, 0, 2L));
    args.put("name", "a \"quoted\"\nname");
    Row sent =
        CrossPrepare.write("/models/prep")
            .scaleTo01("x", "y")
            .bucketize(3, "z")
            .withOperation("ApplyBuckets", Collections.singletonList("w"), args)
            .withPassthroughFields("id")
            .kwargsRow();
    assertEquals("/models/prep", sent.getString("write_artifact_location"));
    assertEquals(CrossInference.VERSION, sent.getString("client_version"));
    assertEquals(Collections.singletonList("id"), sent.getArray("passthrough_fields"));
    assertEquals(
        "[{\"operation\":\"ScaleTo01\",\"columns\":[\"x\",\"y\"]},"
            + "{\"operation\":\"Bucketize\",\"columns\":[\"z\"],\"num_buckets\":3},"
            + "{\"operation\":\"ApplyBuckets\",\"columns\":[\"w\"],"
            + "\"bucket_boundaries\":[-1.5,0,2],\"name\":\"a \\\"quoted\\\"\\u000aname\"}]",
        sent.getString("operations"));
  }

  @Test
  public void readModeSendsNoOperationsAndRefusesThem() {
    Row sent = CrossPrepare.read("/models/prep").kwargsRow();
    assertEquals("/models/prep", sent.getString("read_artifact_location"));
    assertEquals(false, sent.getSchema().hasField("operations"));
    IllegalArgumentException e =
        assertThrows(IllegalArgumentException.class, () -> CrossPrepare.read("d").scaleTo01("x"));
    assertThat(e.getMessage(), containsString("CrossPrepare.read takes no operations"));
  }

  @Test
  public void argumentsThatAreNotPlainValuesAreRefused() {
    IllegalArgumentException e =
        assertThrows(
            IllegalArgumentException.class,
            () ->
                CrossPrepare.write("d")
                    .withOperation(
                        "ScaleTo01",
                        Collections.singletonList("x"),
                        Collections.singletonMap("elementwise", new Object()))
                    .kwargsRow());
    assertThat(e.getMessage(), containsString("must be a string, number, boolean or list"));
  }
}
