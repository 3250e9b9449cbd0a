package io.crossinfer.examples;

import static org.hamcrest.MatcherAssert.assertThat;
import static org.hamcrest.Matchers.containsString;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertThrows;
import static org.junit.Assert.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.util.Arrays;
import org.apache.beam.sdk.schemas.Schema;
import org.apache.beam.sdk.values.Row;
import org.junit.Test;
import org.junit.runner.RunWith;
import org.junit.runners.JUnit4;

/** Tests for the input parsing of {@link ClassifyRows}: no line is dropped silently. */
@RunWith(JUnit4.class)
public class ClassifyRowsTest {

  private static final ClassifyRows.ParseLine FLOATS =
      new ClassifyRows.ParseLine(ClassifyRows.inputSchema("features", "float64"), "features");
  private static final ClassifyRows.ParseLine TOKENS =
      new ClassifyRows.ParseLine(ClassifyRows.inputSchema("tokens", "int64"), "tokens");

  private static JsonNode failure(Object parsed) throws Exception {
    assertTrue("expected a failure record, got " + parsed, parsed instanceof String);
    JsonNode record = new ObjectMapper().readTree((String) parsed);
    assertEquals("parse", record.get("stage").asText());
    return record;
  }

  @Test
  public void goodLineBecomesARow() {
    Row row = (Row) FLOATS.parse("{\"id\": 7, \"features\": [1, 2.5], \"extra\": \"x\"}");
    assertEquals(Long.valueOf(7), row.getInt64("id"));
    assertEquals(Arrays.asList(1.0, 2.5), row.getArray("features"));
  }

  @Test
  public void badFeaturesStillBecomeARowForTheModelSideToReport() {
    Row missing = (Row) FLOATS.parse("{\"id\": 1}");
    assertNull(missing.getArray("features"));
    Row nulled = (Row) FLOATS.parse("{\"id\": 2, \"features\": null}");
    assertNull(nulled.getArray("features"));
    Row notNumbers = (Row) FLOATS.parse("{\"id\": 3, \"features\": [1, \"x\", null, true]}");
    assertEquals(Arrays.asList(1.0, null, null, null), notNumbers.getArray("features"));
    Row notArray = (Row) FLOATS.parse("{\"id\": 4, \"features\": \"1,2\"}");
    assertNull(notArray.getArray("features"));
  }

  @Test
  public void tokenIdsStayIntegersAndAreNeverRounded() {
    Row row = (Row) TOKENS.parse("{\"id\": 1, \"tokens\": [5, 3.0, 1.5, 9007199254740993]}");
    assertEquals(Arrays.asList(5L, 3L, null, 9007199254740993L), row.getArray("tokens"));
    assertEquals(
        Schema.FieldType.INT64.withNullable(true),
        row.getSchema().getField("tokens").getType().getCollectionElementType());
  }

  @Test
  public void linesWithoutAnIdAreParseFailures() throws Exception {
    JsonNode notJson = failure(FLOATS.parse("{\"id\": 1, \"features\": [1,"));
    assertEquals("{\"id\": 1, \"features\": [1,", notJson.get("element").asText());
    assertThat(
        notJson.get("error").asText(),
        containsString("JsonParseException: Unexpected end-of-input"));
    assertThat(
        failure(FLOATS.parse("[1, 2]")).get("error").asText(), containsString("not a JSON object"));
    assertThat(
        failure(FLOATS.parse("{\"id\": \"seven\", \"features\": [1]}")).get("error").asText(),
        containsString("\"id\" is missing or not an integer"));
    assertThat(
        failure(FLOATS.parse("{\"features\": [1]}")).get("error").asText(),
        containsString("\"id\" is missing"));
  }

  @Test
  public void blankLinesAreNotRecords() {
    assertNull(FLOATS.parse("   "));
  }

  @Test
  public void unknownFeatureTypeIsRejected() {
    IllegalArgumentException e =
        assertThrows(
            IllegalArgumentException.class, () -> ClassifyRows.inputSchema("features", "float32"));
    assertThat(e.getMessage(), containsString("--featureType=float32: give float64 or int64"));
  }
}
