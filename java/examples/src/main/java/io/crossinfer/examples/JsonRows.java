package io.crossinfer.examples;

import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.util.LinkedHashMap;
import java.util.Map;
import org.apache.beam.sdk.schemas.Schema;
import org.apache.beam.sdk.transforms.JsonToRow;
import org.apache.beam.sdk.transforms.MapElements;
import org.apache.beam.sdk.values.PCollection;
import org.apache.beam.sdk.values.Row;
import org.apache.beam.sdk.values.TypeDescriptors;

/**
 * The input side of {@link ClassifyRows}: the schema JSON lines are parsed into, and the lines
 * Beam's {@link JsonToRow} could not parse as failure records like the model side's.
 */
final class JsonRows {
  private static final ObjectMapper JSON = new ObjectMapper();

  private JsonRows() {}

  /**
   * The rows sent to the model: {@code id}, the feature array (nullable, so a missing one reaches
   * the model side and comes back as a failure) and the model key, if any.
   */
  static Schema inputSchema(String featureField, String featureType, String modelKeyField) {
    Schema.FieldType element;
    switch (featureType) {
      case "float64":
        element = Schema.FieldType.DOUBLE;
        break;
      case "int64":
        element = Schema.FieldType.INT64;
        break;
      default:
        throw new IllegalArgumentException(
            "--featureType=" + featureType + ": give float64 or int64");
    }
    Schema.Builder schema =
        Schema.builder()
            .addInt64Field("id")
            .addNullableField(featureField, Schema.FieldType.array(element));
    if (modelKeyField != null) {
      schema.addNullableField(modelKeyField, Schema.FieldType.STRING);
    }
    return schema.build();
  }

  /** Every line that did not parse, as a JSON failure record with stage {@code "parse"}. */
  static PCollection<String> failures(JsonToRow.ParseResult parsed) {
    return parsed
        .getFailedToParseLines()
        .apply(
            "ParseFailuresToJson",
            MapElements.into(TypeDescriptors.strings())
                .via((Row row) -> parseFailure(row.getString("line"), row.getString("err"))));
  }

  /** A line JsonToRow could not parse, as a failure record like the model side's. */
  static String parseFailure(String line, String error) {
    Map<String, String> record = new LinkedHashMap<>();
    record.put("element", line);
    record.put("stage", "parse");
    record.put("error", "ParseError: " + error); // "Type: message", like the model side's
    try {
      return JSON.writeValueAsString(record);
    } catch (IOException e) {
      throw new IllegalStateException(e);
    }
  }
}
