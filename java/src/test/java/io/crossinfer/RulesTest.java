package io.crossinfer;

import static org.hamcrest.MatcherAssert.assertThat;
import static org.hamcrest.Matchers.containsString;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNull;

import java.util.Arrays;
import java.util.Collections;
import org.joda.time.Duration;
import org.junit.Test;
import org.junit.runner.RunWith;
import org.junit.runners.JUnit4;

/**
 * Tests for {@link Rules}: the argument table's rules, as generated into {@link ArgumentRules},
 * applied to what the {@code with…} methods send.
 */
@RunWith(JUnit4.class)
public class RulesTest {

  private static final CrossInference PLAIN =
      CrossInference.sklearn("m.pkl").withFeatureField("f").withPassthroughFields("id");

  private static String conflict(CrossInference transform) {
    return Rules.blocksConflict(transform.kwargs());
  }

  @Test
  public void whatBlocksCannotBeCombinedWithIsNamedByItsJavaMethod() {
    assertNull(conflict(PLAIN));
    assertNull(conflict(PLAIN.withPostprocess("raw").withMaxBatchSize(64).withLargeModel(false)));
    assertThat(conflict(PLAIN.withPreprocess("p.m:f")), containsString("withPreprocess"));
    assertThat(
        conflict(PLAIN.withPostprocess("p.m:f")), containsString("a custom postprocess"));
    assertThat(
        conflict(PLAIN.withModels("k", Collections.singletonMap("a", "m.pkl"))),
        containsString("withModels"));
    assertThat(conflict(PLAIN.withMinBatchSize(2)), containsString("withMinBatchSize"));
    assertThat(
        conflict(PLAIN.withMaxBatchDurationSecs(0.5)),
        containsString("withMaxBatchDurationSecs (blocks are not batched further)"));
    assertThat(
        conflict(CrossInference.custom("p.m:factory").withFeatureField("f")),
        containsString("a framework without blocks"));
    assertNull(conflict(CrossInference.xgboost("b.json").withFeatureField("f")));
    assertNull(
        conflict(PLAIN.withModelUpdates("/m/*.pkl", Duration.standardSeconds(5))));
  }

  @Test
  public void wholeRowsWhenAFunctionSeesTheRow() {
    assertEquals(Arrays.asList("f", "id"), Rules.fieldsPythonReads(PLAIN.kwargs()));
    assertNull(Rules.fieldsPythonReads(PLAIN.withPreprocess("p.m:f").kwargs()));
    assertNull(Rules.fieldsPythonReads(PLAIN.withPostprocess("p.m:f").kwargs()));
    assertEquals(
        Arrays.asList("f", "id"),
        Rules.fieldsPythonReads(PLAIN.withPostprocess("regression").kwargs()));
  }
}
