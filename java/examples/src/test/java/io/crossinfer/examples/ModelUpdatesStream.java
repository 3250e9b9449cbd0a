package io.crossinfer.examples;

import io.crossinfer.CrossInference;
import java.io.IOException;
import java.io.Writer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.List;
import java.util.Random;
import org.apache.beam.sdk.Pipeline;
import org.apache.beam.sdk.PipelineResult;
import org.apache.beam.sdk.metrics.MetricNameFilter;
import org.apache.beam.sdk.metrics.MetricQueryResults;
import org.apache.beam.sdk.metrics.MetricResult;
import org.apache.beam.sdk.metrics.MetricsFilter;
import org.apache.beam.sdk.options.PipelineOptionsFactory;
import org.apache.beam.sdk.schemas.Schema;
import org.apache.beam.sdk.transforms.Create;
import org.apache.beam.sdk.transforms.DoFn;
import org.apache.beam.sdk.transforms.FlatMapElements;
import org.apache.beam.sdk.transforms.MapElements;
import org.apache.beam.sdk.transforms.ParDo;
import org.apache.beam.sdk.transforms.PeriodicImpulse;
import org.apache.beam.sdk.transforms.WithFailures;
import org.apache.beam.sdk.transforms.windowing.BoundedWindow;
import org.apache.beam.sdk.transforms.windowing.FixedWindows;
import org.apache.beam.sdk.transforms.windowing.IntervalWindow;
import org.apache.beam.sdk.transforms.windowing.Window;
import org.apache.beam.sdk.values.PCollection;
import org.apache.beam.sdk.values.Row;
import org.apache.beam.sdk.values.TypeDescriptors;
import org.joda.time.Duration;
import org.joda.time.Instant;

/**
 * A streaming Java pipeline whose model changes while it runs, run by the end-to-end tests and
 * bench/streaming.py: a source of ROWS rows (10 a second from the program's start, or
 * {@code -Drate=N}; every ninth has too few features), 2-second windows, {@link
 * CrossInference#of}{@code (FRAMEWORK, MODEL)} with {@link CrossInference#withModelUpdates}, and
 * each output appended to a file as it comes ({@code P,id,windowStart,wallMillis,model_id};
 * failures as {@code F,row as JSON}).
 *
 * <pre>
 * ModelUpdatesStream OUT ROWS FRAMEWORK MODEL PATTERN MODEL_ROOT [pipeline options]
 * </pre>
 *
 * <p>FRAMEWORK is a registry name ({@code sklearn}, {@code xgboost}, {@code tensorflow}, ...);
 * the model takes 8 doubles. {@code -DwarmUp=true}: the transform is first expanded once in a
 * pipeline that is never run (which starts the expansion service and loads the framework), and
 * the rows' clock ({@code -DstartDelayMs}) starts after that, so a slow start-up is not a
 * backlog that outlasts the stream.
 *
 * <p>The source ends after ROWS rows, and the job then ends by itself once every window is
 * scored (a drain). This then prints the crossinfer counters as {@code counter NAME=VALUE}:
 * Beam's portable runner fetches a job's metrics when {@code waitUntilFinish()} sees it end.
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

  /** A prediction's line, with its window's start (millis). */
  static final class PredictionLine extends DoFn<Row, String> {
    /**
     * Formats one prediction.
     *
     * @param r the prediction
     * @param window its window
     * @param out the line
     */
    @ProcessElement
    public void processElement(
        @Element Row r, BoundedWindow window, OutputReceiver<String> out) {
      out.output(
          "P,"
              + r.getInt64("id")
              + ","
              + ((IntervalWindow) window).start().getMillis()
              + ","
              + System.currentTimeMillis()
              + ","
              + r.getString("model_id"));
    }
  }

  /**
   * The transform under test: every run of this program, and its warm-up, uses the same one.
   *
   * @param framework the framework's registry name
   * @param model the first model
   * @param pattern the watched pattern
   * @param root the trusted model root
   * @return the transform
   */
  static CrossInference transform(String framework, String model, String pattern, String root) {
    return CrossInference.of(framework, model)
        .withFeatureField("features")
        .withPassthroughFields("id")
        .withTrustedModelRoots(root)
        .withModelUpdates(pattern, Duration.standardSeconds(1));
  }

  /**
   * Runs the pipeline until its source ends and every window is scored.
   *
   * @param args output file, row count, framework, first model, watched pattern, model root,
   *     then options
   * @throws Exception if the job fails
   */
  public static void main(String[] args) throws Exception {
    String out = args[0];
    long rows = Long.parseLong(args[1]);
    String framework = args[2];
    String model = args[3];
    String pattern = args[4];
    String root = args[5];
    String[] options = Arrays.copyOfRange(args, 6, args.length);
    Schema schema =
        Schema.builder()
            .addInt64Field("id")
            .addArrayField("features", Schema.FieldType.DOUBLE)
            .build();
    if (Boolean.getBoolean("warmUp")) {
      Pipeline warm = Pipeline.create(PipelineOptionsFactory.fromArgs(options).create());
      warm.apply(
              Create.of(
                      Row.withSchema(schema)
                          .addValues(0L, Collections.nCopies(WIDTH, 0.0))
                          .build())
                  .withRowSchema(schema))
          .apply(Window.into(FixedWindows.of(Duration.standardSeconds(2))))
          .apply(transform(framework, model, pattern, root));
      System.out.println("warmed up");
    }
    // An unbounded source that ends (a bounded GenerateSequence would be read whole before any
    // window closes): rows from the start of the program, so a slow start is a backlog.
    // -DstartDelayMs=N: the first row N ms after the program's start (a benchmark's rows then
    // come live, not as a backlog).
    Instant start = Instant.now().plus(Duration.millis(Long.getLong("startDelayMs", 0)));
    // -Drate=N rows a second (default 10), in bursts every tenth of a second.
    long perTick = Math.max(1, Integer.getInteger("rate", 10) / 10);
    long ticks = (rows + perTick - 1) / perTick;
    Pipeline p = Pipeline.create(PipelineOptionsFactory.fromArgs(options).create());
    PCollection<Row> input =
        p.apply(
                PeriodicImpulse.create()
                    .startAt(start)
                    .stopAt(start.plus(Duration.millis(100 * ticks - 50)))
                    .withInterval(Duration.millis(100)))
            .apply(
                FlatMapElements.into(TypeDescriptors.longs())
                    .via(
                        (Instant t) -> {
                          long tick = (t.getMillis() - start.getMillis()) / 100;
                          List<Long> ids = new ArrayList<>();
                          for (long k = 0; k < perTick; k++) {
                            ids.add(tick * perTick + k);
                          }
                          return ids;
                        }))
            .apply(
                MapElements.into(TypeDescriptors.rows())
                    .via(
                        (Long i) -> {
                          Random random = new Random(i);
                          Double[] features = new Double[i % 9 == 0 ? 3 : WIDTH];
                          for (int j = 0; j < features.length; j++) {
                            features[j] = random.nextGaussian();
                          }
                          return Row.withSchema(schema)
                              .addValues(i, Arrays.asList(features))
                              .build();
                        }))
            .setRowSchema(schema)
            .apply(Window.into(FixedWindows.of(Duration.standardSeconds(2))));
    WithFailures.Result<PCollection<Row>, Row> result =
        input.apply(transform(framework, model, pattern, root));
    result
        .output()
        .apply("Line", ParDo.of(new PredictionLine()))
        .apply("Write", ParDo.of(new AppendTo(out)));
    result
        .failures()
        .apply(
            "FailureLine",
            MapElements.into(TypeDescriptors.strings())
                .via((Row r) -> "F," + r.getString("element")))
        .apply("WriteFailures", ParDo.of(new AppendTo(out)));

    PipelineResult job = p.run();
    System.out.println("submitted");
    PipelineResult.State state = job.waitUntilFinish();
    System.out.println("state=" + state);
    MetricQueryResults metrics =
        job.metrics()
            .queryMetrics(
                MetricsFilter.builder()
                    .addNameFilter(MetricNameFilter.inNamespace("crossinfer"))
                    .build());
    for (MetricResult<Long> counter : metrics.getCounters()) {
      System.out.println("counter " + counter.getName().getName() + "=" + counter.getAttempted());
    }
    Path outPath = Paths.get(out);
    List<String> lines = Files.readAllLines(outPath);
    System.out.println("lines=" + lines.size());
  }
}
