package io.crossinfer.examples;

import io.crossinfer.CrossInference;
import java.io.IOException;
import java.io.Writer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.StandardOpenOption;
import java.util.Arrays;
import java.util.List;
import java.util.Random;
import org.apache.beam.sdk.Pipeline;
import org.apache.beam.sdk.PipelineResult;
import org.apache.beam.sdk.io.GenerateSequence;
import org.apache.beam.sdk.metrics.MetricNameFilter;
import org.apache.beam.sdk.metrics.MetricQueryResults;
import org.apache.beam.sdk.metrics.MetricResult;
import org.apache.beam.sdk.metrics.MetricsFilter;
import org.apache.beam.sdk.options.PipelineOptionsFactory;
import org.apache.beam.sdk.schemas.Schema;
import org.apache.beam.sdk.transforms.DoFn;
import org.apache.beam.sdk.transforms.MapElements;
import org.apache.beam.sdk.transforms.ParDo;
import org.apache.beam.sdk.transforms.WithFailures;
import org.apache.beam.sdk.transforms.windowing.FixedWindows;
import org.apache.beam.sdk.transforms.windowing.Window;
import org.apache.beam.sdk.values.PCollection;
import org.apache.beam.sdk.values.Row;
import org.apache.beam.sdk.values.TypeDescriptors;
import org.joda.time.Duration;

/**
 * An unbounded Java pipeline whose model changes while it runs, run by the end-to-end tests: a
 * rate source of rows, 2-second windows, {@link CrossInference#withModelUpdates}, and each
 * prediction appended to a file as it comes ({@code id,model_id}; failures as {@code FAIL,...}).
 *
 * <pre>
 * ModelUpdatesStream OUT ROWS MODEL.pkl PATTERN MODEL_ROOT [pipeline options]
 * </pre>
 *
 * <p>The source runs on; once ROWS predictions and failures are written (or after ten minutes)
 * this prints the crossinfer counters as {@code counter NAME=VALUE} and cancels the job.
 */
public final class ModelUpdatesStream {
  private ModelUpdatesStream() {}

  static final int WIDTH = 8;

  /** Appends each element's line to a file; the runner runs this in the launching JVM. */
  static final class AppendTo extends DoFn<String, Void> {
    private final String path;

    AppendTo(String path) {
      this.path = path;
    }

    /**
     * Appends one line.
     *
     * @param line the line
     * @throws IOException if the file cannot be written
     */
    @ProcessElement
    public void processElement(@Element String line) throws IOException {
      synchronized (AppendTo.class) {
        try (Writer w =
            Files.newBufferedWriter(
                Paths.get(path),
                StandardCharsets.UTF_8,
                StandardOpenOption.CREATE,
                StandardOpenOption.APPEND)) {
          w.write(line + "\n");
        }
      }
    }
  }

  /**
   * Runs the pipeline until every row has an output.
   *
   * @param args output file, row count, first model, watched pattern, model root, then options
   * @throws Exception if the job fails
   */
  public static void main(String[] args) throws Exception {
    String out = args[0];
    long rows = Long.parseLong(args[1]);
    Pipeline p =
        Pipeline.create(
            PipelineOptionsFactory.fromArgs(Arrays.copyOfRange(args, 5, args.length)).create());
    Schema schema =
        Schema.builder()
            .addInt64Field("id")
            .addArrayField("features", Schema.FieldType.DOUBLE)
            .build();
    PCollection<Row> input =
        p.apply(GenerateSequence.from(0).withRate(4, Duration.standardSeconds(1)))
            .apply(
                MapElements.into(TypeDescriptors.rows())
                    .via(
                        (Long i) -> {
                          Random random = new Random(i);
                          Double[] features = new Double[WIDTH];
                          for (int j = 0; j < WIDTH; j++) {
                            features[j] = random.nextGaussian();
                          }
                          return Row.withSchema(schema)
                              .addValues(i, Arrays.asList(features))
                              .build();
                        }))
            .setRowSchema(schema)
            .apply(Window.into(FixedWindows.of(Duration.standardSeconds(2))));
    WithFailures.Result<PCollection<Row>, Row> result =
        input.apply(
            CrossInference.sklearn(args[2])
                .withFeatureField("features")
                .withPassthroughFields("id")
                .withTrustedModelRoots(args[4])
                .withModelUpdates(args[3], Duration.standardSeconds(1)));
    result
        .output()
        .apply(
            "Line",
            MapElements.into(TypeDescriptors.strings())
                .via((Row r) -> r.getInt64("id") + "," + r.getString("model_id")))
        .apply("Write", ParDo.of(new AppendTo(out)));
    result
        .failures()
        .apply(
            "FailureLine",
            MapElements.into(TypeDescriptors.strings())
                .via((Row r) -> "FAIL," + r.getString("stage") + "," + r.getString("error")))
        .apply("WriteFailures", ParDo.of(new AppendTo(out)));

    PipelineResult job = p.run();
    Path outPath = Paths.get(out);
    long deadline = System.currentTimeMillis() + 600_000;
    while (System.currentTimeMillis() < deadline) {
      if (Files.exists(outPath) && Files.readAllLines(outPath).size() >= rows + 16) {
        break;
      }
      Thread.sleep(250);
    }
    // A portable job's metrics are fetched when it reaches a final state.
    job.cancel();
    job.waitUntilFinish(Duration.standardSeconds(60));
    MetricQueryResults metrics =
        job.metrics()
            .queryMetrics(
                MetricsFilter.builder()
                    .addNameFilter(MetricNameFilter.inNamespace("crossinfer"))
                    .build());
    for (MetricResult<Long> counter : metrics.getCounters()) {
      System.out.println("counter " + counter.getName().getName() + "=" + counter.getAttempted());
    }
    List<String> lines = Files.readAllLines(outPath);
    System.out.println("lines=" + lines.size());
  }
}
