package io.crossinfer.examples;

import io.crossinfer.CrossInference;
import java.util.ArrayList;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.apache.beam.sdk.Pipeline;
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
import org.apache.beam.sdk.transforms.SerializableFunction;
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
 * <p>Row {@code i} has 8 numbers made from {@code i}; every {@code --badEvery}-th row has 7, so
 * the model side fails it. Prints {@code PREDICTION <windowStart> <id> <label>}, {@code FAILURE
 * <windowStart> <id> <stage>}, then {@code WINDOW <windowStart> predictions=<n>} and {@code
 * failures=<n>} as each window closes. Run it on a streaming runner (Prism):
 *
 * <pre>
 * stream-rows --modelUri=/models/model.pkl --trustedModelRoots=/models \
 *   --runner=PortableRunner --jobEndpoint=localhost:8073
 * </pre>
 */
public final class StreamRows {
  private static final int WIDTH = 8;
  private static final Pattern ID = Pattern.compile("\"id\": ?(-?\\d+)");

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
    System.out.println("STATE " + pipeline.run().waitUntilFinish());
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
                                .addValues(id, features(id, badEvery))
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

  private static List<Double> features(long id, int badEvery) {
    int n = badEvery > 0 && id % badEvery == badEvery - 1 ? WIDTH - 1 : WIDTH;
    List<Double> values = new ArrayList<>(n);
    for (int k = 0; k < n; k++) {
      values.add(Math.sin(id * 0.37 + k) * 2.0);
    }
    return values;
  }

  private static void report(PCollection<Row> rows, String what, String tag, String field) {
    rows.apply(
        what + "Lines", ParDo.of(new Print<>(tag, (Row r) -> idOf(r) + " " + r.getValue(field))));
    rows.apply(what + "Count", Combine.globally(Count.<Row>combineFn()).withoutDefaults())
        .apply(what + "Window", ParDo.of(new Print<>("WINDOW", (Long n) -> what + "=" + n)));
  }

  private static String idOf(Row row) {
    if (row.getSchema().hasField("id")) {
      return String.valueOf(row.getInt64("id"));
    }
    Matcher m = ID.matcher(row.getString("element")); // a failure: its input row as JSON
    return m.find() ? m.group(1) : "?";
  }

  /** Prints each element as a line: tag, the start of its window (millis), its text. */
  private static final class Print<T> extends DoFn<T, Void> {
    private final String tag;
    private final SerializableFunction<T, String> text;

    Print(String tag, SerializableFunction<T, String> text) {
      this.tag = tag;
      this.text = text;
    }

    @ProcessElement
    public void process(@Element T element, BoundedWindow window) {
      long start = ((IntervalWindow) window).start().getMillis();
      System.out.println(tag + " " + start + " " + text.apply(element));
    }
  }
}
