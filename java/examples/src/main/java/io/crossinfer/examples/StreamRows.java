package io.crossinfer.examples;

import io.crossinfer.CrossInference;
import java.util.ArrayList;
import java.util.List;
import org.apache.beam.sdk.Pipeline;
import org.apache.beam.sdk.PipelineResult;
import org.apache.beam.sdk.io.GenerateSequence;
import org.apache.beam.sdk.options.Default;
import org.apache.beam.sdk.options.Description;
import org.apache.beam.sdk.options.PipelineOptions;
import org.apache.beam.sdk.options.PipelineOptionsFactory;
import org.apache.beam.sdk.options.Validation;
import org.apache.beam.sdk.schemas.Schema;
import org.apache.beam.sdk.transforms.Combine;
import org.apache.beam.sdk.transforms.Count;
import org.apache.beam.sdk.transforms.DoFn;
import org.apache.beam.sdk.transforms.MapElements;
import org.apache.beam.sdk.transforms.ParDo;
import org.apache.beam.sdk.transforms.WithFailures;
import org.apache.beam.sdk.transforms.windowing.BoundedWindow;
import org.apache.beam.sdk.transforms.windowing.FixedWindows;
import org.apache.beam.sdk.transforms.windowing.IntervalWindow;
import org.apache.beam.sdk.transforms.windowing.Window;
import org.apache.beam.sdk.values.PCollection;
import org.apache.beam.sdk.values.Row;
import org.apache.beam.sdk.values.TypeDescriptors;
import org.joda.time.Duration;

/**
 * A streaming pipeline: an unbounded rate source, fixed windows, {@link CrossInference}, and each
 * window's outcome printed as soon as the window closes, while the job runs.
 *
 * <p>Row {@code i} has {@code --features} numbers derived from {@code i}; every {@code
 * --badEvery}-th row has one number too few, so the model side fails it. Prints, one line each:
 * {@code PREDICTION <windowStartMillis> <id> <label>}, {@code FAILURE <windowStartMillis> <id>
 * <stage>} and, once a window closes, {@code WINDOW <windowStartMillis> predictions=<n>} and
 * {@code WINDOW <windowStartMillis> failures=<n>}. Run it on a streaming runner (Prism):
 *
 * <pre>
 * stream-rows --modelUri=/models/model.pkl --trustedModelRoots=/models \
 *   --runner=PortableRunner --jobEndpoint=localhost:8073
 * </pre>
 */
public final class StreamRows {
  private StreamRows() {}

  /** Options of the streaming example. */
  public interface Options extends PipelineOptions {
    /** @return the sklearn model file */
    @Description("The scikit-learn model file (the Python side's path)")
    @Validation.Required
    String getModelUri();

    /** @param uri the sklearn model file */
    void setModelUri(String uri);

    /** @return trusted model roots of the started service */
    @Description("Trusted model roots of the started service (pickles); repeatable")
    List<String> getTrustedModelRoots();

    /** @param roots trusted model roots */
    void setTrustedModelRoots(List<String> roots);

    /** @return rows per second */
    @Description("Rows the source emits per second")
    @Default.Long(20)
    long getRowsPerSecond();

    /** @param rate rows per second */
    void setRowsPerSecond(long rate);

    /** @return how many rows the source emits before it ends (0: never ends) */
    @Description("Rows before the source ends; 0 for an endless source")
    @Default.Long(0)
    long getRows();

    /** @param rows rows before the source ends */
    void setRows(long rows);

    /** @return the window length in seconds */
    @Description("Fixed window length, seconds")
    @Default.Integer(5)
    int getWindowSeconds();

    /** @param seconds the window length */
    void setWindowSeconds(int seconds);

    /** @return the model's input width */
    @Description("Numbers per row (the model's input width)")
    @Default.Integer(8)
    int getFeatures();

    /** @param features numbers per row */
    void setFeatures(int features);

    /** @return every how many rows one is bad (0: none) */
    @Description("Every n-th row has one number too few (a failure); 0 for none")
    @Default.Integer(7)
    int getBadEvery();

    /** @param n every how many rows one is bad */
    void setBadEvery(int n);
  }

  /**
   * Runs the pipeline until it ends (a bounded {@code --rows}) or is cancelled.
   *
   * @param args pipeline options, see {@link Options}
   */
  public static void main(String[] args) {
    Options options = PipelineOptionsFactory.fromArgs(args).withValidation().as(Options.class);
    Pipeline pipeline = Pipeline.create(options);
    build(pipeline, options);
    PipelineResult.State state = pipeline.run().waitUntilFinish();
    System.out.println("STATE " + state);
  }

  /**
   * Adds source, windows, inference and the printed outcome to {@code pipeline}.
   *
   * @param pipeline the pipeline to build
   * @param options its options
   */
  public static void build(Pipeline pipeline, Options options) {
    Schema schema =
        Schema.builder()
            .addInt64Field("id")
            .addArrayField("features", Schema.FieldType.DOUBLE)
            .build();
    int width = options.getFeatures();
    int badEvery = options.getBadEvery();
    GenerateSequence source =
        GenerateSequence.from(0).withRate(options.getRowsPerSecond(), Duration.standardSeconds(1));
    if (options.getRows() > 0) {
      source = source.to(options.getRows());
    }
    PCollection<Row> rows =
        pipeline
            .apply("Rate", source)
            .apply(
                "Windows",
                Window.into(FixedWindows.of(Duration.standardSeconds(options.getWindowSeconds()))))
            .apply(
                "ToRow",
                MapElements.into(TypeDescriptors.rows())
                    .via(
                        (Long id) ->
                            Row.withSchema(schema)
                                .addValues(id, features(id, width, badEvery))
                                .build()))
            .setRowSchema(schema);
    CrossInference inference =
        CrossInference.sklearn(options.getModelUri())
            .withFeatureField("features")
            .withPassthroughFields("id");
    if (options.getTrustedModelRoots() != null) {
      inference =
          inference.withTrustedModelRoots(options.getTrustedModelRoots().toArray(new String[0]));
    }
    WithFailures.Result<PCollection<Row>, Row> result = rows.apply("Classify", inference);
    report(result.output(), "predictions", "PREDICTION", "label");
    report(result.failures(), "failures", "FAILURE", "stage");
  }

  private static List<Double> features(long id, int width, int badEvery) {
    int n = badEvery > 0 && id % badEvery == badEvery - 1 ? width - 1 : width;
    List<Double> values = new ArrayList<>(n);
    for (int k = 0; k < n; k++) {
      values.add(Math.sin(id * 0.37 + k) * 2.0);
    }
    return values;
  }

  private static void report(PCollection<Row> rows, String what, String tag, String field) {
    rows.apply(what + "Lines", ParDo.of(new PrintRow(tag, field)));
    rows.apply(what + "Count", Combine.globally(Count.<Row>combineFn()).withoutDefaults())
        .apply(what + "Window", ParDo.of(new PrintCount(what)));
  }

  private static long start(BoundedWindow window) {
    return ((IntervalWindow) window).start().getMillis();
  }

  private static final java.util.regex.Pattern ID =
      java.util.regex.Pattern.compile("\"id\": ?(-?\\d+)");

  /** Prints one output row with its window. */
  private static final class PrintRow extends DoFn<Row, Void> {
    private final String tag;
    private final String field;

    PrintRow(String tag, String field) {
      this.tag = tag;
      this.field = field;
    }

    @ProcessElement
    public void process(@Element Row row, BoundedWindow window) {
      Object id = row.getSchema().hasField("id") ? row.getValue("id") : idOf(row);
      System.out.println(tag + " " + start(window) + " " + id + " " + row.getValue(field));
    }

    private static Object idOf(Row failure) {
      // A failure carries its input row as JSON: {"id": 6, ...}.
      java.util.regex.Matcher m = ID.matcher(failure.getString("element"));
      return m.find() ? m.group(1) : "?";
    }
  }

  /** Prints a closed window's count. */
  private static final class PrintCount extends DoFn<Long, Void> {
    private final String what;

    PrintCount(String what) {
      this.what = what;
    }

    @ProcessElement
    public void process(@Element Long count, BoundedWindow window) {
      System.out.println("WINDOW " + start(window) + " " + what + "=" + count);
    }
  }
}
