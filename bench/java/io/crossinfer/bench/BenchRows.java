package io.crossinfer.bench;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Random;
import org.apache.beam.sdk.schemas.Schema;
import org.apache.beam.sdk.transforms.DoFn;
import org.apache.beam.sdk.values.KV;
import org.apache.beam.sdk.values.Row;

/** The rows of {@link RowsToModel}: their schemas, parsed from CSV lines or generated. */
final class BenchRows {
  private BenchRows() {}

  static final Schema ROW =
      Schema.builder().addInt64Field("id").addArrayField("features", Schema.FieldType.DOUBLE).build();
  static final Schema FEATURES =
      Schema.builder().addArrayField("features", Schema.FieldType.DOUBLE).build();
  // What Beam's RunInference returns per row, declared by hand: PredictionResult's fields.
  static final Schema PEER_OUT =
      Schema.builder()
          .addArrayField("example", Schema.FieldType.FLOAT)
          .addInt64Field("inference")
          .build();

  /** N rows (id, 32 float32-valued features) from a fixed pool, as a source would give them. */
  static final class Generate extends DoFn<byte[], Row> {
    private final long n;
    private transient List<List<Double>> pool;

    Generate(long n) {
      this.n = n;
    }

    @Setup
    public void setup() {
      Random random = new Random(1);
      pool = new ArrayList<>(4096);
      for (int i = 0; i < 4096; i++) {
        Double[] values = new Double[32];
        for (int j = 0; j < values.length; j++) {
          values[j] = (double) (float) random.nextGaussian();
        }
        pool.add(Arrays.asList(values));
      }
    }

    @ProcessElement
    public void process(OutputReceiver<Row> out) {
      for (long i = 0; i < n; i++) {
        out.output(Row.withSchema(ROW).addValues(i, pool.get((int) (i % 4096))).build());
      }
    }
  }

  /** The features of a CSV line split at commas (all but the first field, the id). */
  static List<Double> features(String[] parts) {
    List<Double> values = new ArrayList<>(parts.length - 1);
    for (int i = 1; i < parts.length; i++) {
      values.add(Double.parseDouble(parts[i]));
    }
    return values;
  }

  /** "id,f0,...": one row (id, features). */
  static final class Parse extends DoFn<String, Row> {
    @ProcessElement
    public void process(@Element String line, OutputReceiver<Row> out) {
      String[] parts = line.split(",");
      out.output(Row.withSchema(ROW).addValues(Long.parseLong(parts[0]), features(parts)).build());
    }
  }

  /** "id,f0,...": (id, row of features), as Beam's keyed RunInference takes them. */
  static final class ParseKeyed extends DoFn<String, KV<Long, Row>> {
    @ProcessElement
    public void process(@Element String line, OutputReceiver<KV<Long, Row>> out) {
      String[] parts = line.split(",");
      out.output(
          KV.of(
              Long.parseLong(parts[0]),
              Row.withSchema(FEATURES).addValue(features(parts)).build()));
    }
  }
}
