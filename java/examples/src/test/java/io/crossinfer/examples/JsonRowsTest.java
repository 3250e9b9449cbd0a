package io.crossinfer.examples;

import static org.hamcrest.MatcherAssert.assertThat;
import static org.hamcrest.Matchers.containsString;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertThrows;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import org.apache.beam.sdk.schemas.Schema;
import org.apache.beam.sdk.testing.PAssert;
import org.apache.beam.sdk.testing.TestPipeline;
import org.apache.beam.sdk.transforms.Create;
import org.apache.beam.sdk.transforms.JsonToRow;
import org.apache.beam.sdk.values.Row;
import org.junit.Rule;
import org.junit.Test;
import org.junit.runner.RunWith;
import org.junit.runners.JUnit4;

/** Input parsing of {@link ClassifyRows} ({@link JsonRows}): no line is dropped silently. */
@RunWith(JUnit4.class)
public class JsonRowsTest {

  @Rule public final transient TestPipeline pipeline = TestPipeline.create();

  @Test
  public void everyLineBecomesARowOrAParseFailure() {
    Schema schema = JsonRows.inputSchema("features", "float64", null);
    JsonToRow.ParseResult parsed =
        pipeline
            .apply(
                Create.of(
                    "{\"id\": 7, \"features\": [1, 2.5], \"extra\": \"x\"}",
                    "{\"id\": 1}",
                    "{\"id\": 2, \"features\": null}",
                    "{\"id\": 3, \"features\": [1, \"x\"]}",
                    "{\"id\": 1, \"features\": [1,",
                    "{\"features\": [1]}"))
            .apply(
                JsonToRow.withExceptionReporting(schema)
                    .withExtendedErrorInfo());
    PAssert.that(parsed.getResults())
        .containsInAnyOrder(
            Row.withSchema(schema).addValues(7L, Arrays.asList(1.0, 2.5)).build(),
            Row.withSchema(schema).addValues(1L, null).build(),
            Row.withSchema(schema).addValues(2L, null).build());
    PAssert.that(parsed.getFailedToParseLines())
        .satisfies(
            failed -> {
              List<String> lines = new ArrayList<>();
              for (Row row : failed) {
                lines.add(row.getString("line"));
                assertThat(row.getString("err"), org.hamcrest.Matchers.not(org.hamcrest.Matchers.emptyString()));
              }
              lines.sort(null);
              assertEquals(
                  Arrays.asList(
                      "{\"features\": [1]}",
                      "{\"id\": 1, \"features\": [1,",
                      "{\"id\": 3, \"features\": [1, \"x\"]}"),
                  lines);
              return null;
            });
    pipeline.run().waitUntilFinish();
  }

  @Test
  public void parseFailuresLookLikeModelFailures() throws Exception {
    JsonNode record =
        new ObjectMapper().readTree(JsonRows.parseFailure("{bad", "Unable to parse Row"));
    Map<String, String> fields = new TreeMap<>();
    record.fields().forEachRemaining(e -> fields.put(e.getKey(), e.getValue().asText()));
    assertEquals("{bad", fields.get("element"));
    assertEquals("parse", fields.get("stage"));
    assertEquals("ParseError: Unable to parse Row", fields.get("error"));
  }

  @Test
  public void tokenIdsAreInt64AndAModelKeyIsAString() {
    Schema schema = JsonRows.inputSchema("tokens", "int64", "lang");
    assertEquals(
        Schema.FieldType.INT64, schema.getField("tokens").getType().getCollectionElementType());
    assertEquals(Schema.FieldType.STRING.withNullable(true), schema.getField("lang").getType());
    IllegalArgumentException e =
        assertThrows(
            IllegalArgumentException.class,
            () -> JsonRows.inputSchema("features", "float32", null));
    assertThat(e.getMessage(), containsString("--featureType=float32: give float64 or int64"));
  }
}
