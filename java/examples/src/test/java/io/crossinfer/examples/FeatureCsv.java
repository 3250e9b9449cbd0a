package io.crossinfer.examples;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.List;
import org.apache.beam.sdk.schemas.Schema;
import org.apache.beam.sdk.values.Row;

/** The test programs' input: CSV lines {@code id,f1,f2,...} as rows {@code (id, features)}. */
final class FeatureCsv {
  static final Schema SCHEMA =
      Schema.builder()
          .addInt64Field("id")
          .addArrayField("features", Schema.FieldType.DOUBLE)
          .build();

  private FeatureCsv() {}

  /** The rows of the CSV file at {@code path} (empty lines skipped). */
  static List<Row> read(String path) throws IOException {
    List<Row> rows = new ArrayList<>();
    for (String line : Files.readAllLines(Paths.get(path), StandardCharsets.UTF_8)) {
      if (!line.isEmpty()) {
        String[] values = line.split(",");
        List<Double> features = new ArrayList<>();
        for (int i = 1; i < values.length; i++) {
          features.add(Double.parseDouble(values[i]));
        }
        rows.add(Row.withSchema(SCHEMA).addValues(Long.parseLong(values[0]), features).build());
      }
    }
    return rows;
  }
}
