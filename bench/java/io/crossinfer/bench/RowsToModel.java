package io.crossinfer.bench;

import io.crossinfer.CrossInference;
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.net.ServerSocket;
import java.nio.channels.Channels;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import org.apache.beam.sdk.Pipeline;
import org.apache.beam.sdk.PipelineResult;
import org.apache.beam.sdk.coders.KvCoder;
import org.apache.beam.sdk.coders.RowCoder;
import org.apache.beam.sdk.coders.VarLongCoder;
import org.apache.beam.sdk.extensions.python.transforms.RunInference;
import org.apache.beam.sdk.io.FileSystems;
import org.apache.beam.sdk.io.TextIO;
import org.apache.beam.sdk.io.fs.MatchResult;
import org.apache.beam.sdk.options.Default;
import org.apache.beam.sdk.options.Description;
import org.apache.beam.sdk.options.PipelineOptions;
import org.apache.beam.sdk.options.PipelineOptionsFactory;
import org.apache.beam.sdk.options.PortablePipelineOptions;
import org.apache.beam.sdk.options.Validation;
import org.apache.beam.sdk.transforms.Count;
import org.apache.beam.sdk.transforms.DoFn;
import org.apache.beam.sdk.transforms.Impulse;
import org.apache.beam.sdk.transforms.MapElements;
import org.apache.beam.sdk.transforms.ParDo;
import org.apache.beam.sdk.transforms.ToJson;
import org.apache.beam.sdk.transforms.WithFailures;
import org.apache.beam.sdk.util.construction.Environments;
import org.apache.beam.sdk.values.KV;
import org.apache.beam.sdk.values.PCollection;
import org.apache.beam.sdk.values.Row;
import org.apache.beam.sdk.values.TypeDescriptors;

/**
 * The benchmark's Java pipeline: a CSV of rows ({@code id,f0,...,f31}) to a model and back, as
 * CSV. {@code --system=crossinfer} classifies the rows with {@link CrossInference};
 * {@code --system=peer} with Beam's own Java {@link RunInference} on Beam's stock expansion
 * service, fed what a user has (key, row) plus the user's Python row-to-model-input function.
 * Prints {@code rows=N failures=M} when done.
 */
public final class RowsToModel {

  private RowsToModel() {}

  /** Command-line options. */
  public interface Options extends PipelineOptions {
    /** @return the CSV input */
    @Validation.Required
    String getInput();

    /** @param input the CSV input */
    void setInput(String input);

    /** @return the output prefix */
    @Validation.Required
    String getOutput();

    /** @param output the output prefix */
    void setOutput(String output);

    /** @return crossinfer or peer */
    @Description("crossinfer (CrossInference) or peer (Beam's Java RunInference)")
    @Default.String("crossinfer")
    String getSystem();

    /** @param system crossinfer or peer */
    void setSystem(String system);

    /** @return sklearn, pytorch or onnx */
    @Default.String("sklearn")
    String getFramework();

    /** @param framework sklearn, pytorch or onnx */
    void setFramework(String framework);

    /** @return the model file */
    @Validation.Required
    String getModelUri();

    /** @param modelUri the model file */
    void setModelUri(String modelUri);

    /** @return the torch model class, "module:Class" */
    @Default.String("bench.models:MLP")
    String getModelClass();

    /** @param modelClass the torch model class */
    void setModelClass(String modelClass);

    /** @return the expansion service, host:port; empty: CrossInference starts its own */
    @Default.String("")
    String getExpansionService();

    /** @param expansionService the expansion service */
    void setExpansionService(String expansionService);

    /** @return how often to ask for the job's state; 0: PortableRunner's waitUntilFinish */
    @Description("Ask the job server for the job's state every this many ms (0: waitUntilFinish, "
        + "which asks every 3 s)")
    @Default.Integer(50)
    int getPollMillis();

    /** @param pollMillis how often to ask for the job's state */
    void setPollMillis(int pollMillis);

    /** @return whether crossinfer groups rows into blocks across the boundary */
    @Description("crossinfer only: group rows into column blocks across the language boundary")
    @Default.Boolean(true)
    boolean getBoundaryBlocks();

    /** @param boundaryBlocks whether crossinfer groups rows into blocks */
    void setBoundaryBlocks(boolean boundaryBlocks);

    /** @return how the output is sharded: bundles (TextIO's default) or one */
    @Description("bundles: TextIO's default (each bundle writes its own file); one: "
        + "withoutSharding(), every output line through one GroupByKey")
    @Default.String("bundles")
    String getSharding();

    /** @param sharding how the output is sharded */
    void setSharding(String sharding);
  }

  /**
   * Runs the pipeline and prints the summary line.
   *
   * @param args pipeline options
   * @throws IOException if the output cannot be read back
   */
  public static void main(String[] args) throws IOException {
    Options options = PipelineOptionsFactory.fromArgs(args).withValidation().as(Options.class);
    PortablePipelineOptions portable = options.as(PortablePipelineOptions.class);
    if (Environments.ENVIRONMENT_LOOPBACK.equals(portable.getDefaultEnvironmentType())
        && Environments.getExternalServiceAddress(portable).isEmpty()) {
      try (ServerSocket socket = new ServerSocket(0)) {
        portable.setDefaultEnvironmentConfig("localhost:" + socket.getLocalPort());
      }
    }
    Pipeline pipeline = Pipeline.create(options);
    boolean counted = options.getInput().startsWith(MEMORY);
    if (counted) {
      // Rows made in the JVM, predictions counted: the Java block path without text I/O.
      long n = Long.parseLong(options.getInput().substring(MEMORY.length()));
      PCollection<Row> rows =
          pipeline
              .apply("Impulse", Impulse.create())
              .apply("Generate", ParDo.of(new BenchRows.Generate(n)))
              .setRowSchema(BenchRows.ROW);
      WithFailures.Result<PCollection<Row>, Row> result = rows.apply("Model", model(options));
      count(result.output(), options.getOutput() + "-predictions.count");
      count(result.failures(), options.getOutput() + "-failures.count");
    } else {
      PCollection<String> lines = pipeline.apply("Read", TextIO.read().from(options.getInput()));
      if ("peer".equals(options.getSystem())) {
        peer(lines, options);
      } else {
        crossinfer(lines, options);
      }
    }
    PipelineResult result = pipeline.run();
    try {
      while (options.getPollMillis() > 0 && !result.getState().isTerminal()) {
        Thread.sleep(options.getPollMillis()); // PortableRunner's waitUntilFinish asks every 3 s
      }
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
    }
    PipelineResult.State state = result.waitUntilFinish();
    if (state != PipelineResult.State.DONE) {
      System.err.println("pipeline ended " + state);
      System.exit(1);
    }
    System.out.println(
        "rows="
            + (counted
                ? readCount(options.getOutput() + "-predictions.count")
                : countLines(options.getOutput() + "-predictions.csv"))
            + " failures="
            + (counted
                ? readCount(options.getOutput() + "-failures.count")
                : countLines(options.getOutput() + "-failures.jsonl")));
  }

  /** {@code --input=memory:N}: N rows generated in the pipeline instead of read from a file. */
  static final String MEMORY = "memory:";

  private static void crossinfer(PCollection<String> lines, Options options) {
    WithFailures.Result<PCollection<Row>, Row> result =
        lines
            .apply("Parse", ParDo.of(new BenchRows.Parse()))
            .setRowSchema(BenchRows.ROW)
            .apply("Model", model(options));
    formatAndWrite(result, options);
  }

  private static CrossInference model(Options options) {
    CrossInference inference;
    switch (options.getFramework()) {
      case "pytorch":
        inference =
            CrossInference.pytorch(options.getModelUri()).withModelClass(options.getModelClass());
        break;
      case "onnx":
        inference = CrossInference.onnx(options.getModelUri());
        break;
      default:
        inference = CrossInference.sklearn(options.getModelUri());
    }
    inference = inference.withFeatureField("features").withPassthroughFields("id");
    if (options.getExpansionService().isEmpty()) {
      // The service CrossInference starts: the benchmark's models are files it made itself.
      String uri = options.getModelUri();
      inference = inference.withTrustedModelRoots(uri.substring(0, uri.lastIndexOf('/')));
    } else {
      inference = inference.withExpansionService(options.getExpansionService());
    }
    return inference.withBoundaryBlocks(options.getBoundaryBlocks());
  }

  private static void count(PCollection<Row> rows, String path) {
    String name = path.substring(path.lastIndexOf('-')); // -predictions.count, -failures.count
    rows.apply("Count" + name, Count.globally())
        .apply("Text" + name, MapElements.into(TypeDescriptors.strings()).via(String::valueOf))
        .apply("Write" + name, TextIO.write().to(path).withoutSharding());
  }

  private static long readCount(String path) throws IOException {
    return Long.parseLong(lines(path).get(0).trim());
  }

  private static void formatAndWrite(
      WithFailures.Result<PCollection<Row>, Row> result, Options options) {
    result
        .output()
        .apply(
            "Format",
            ParDo.of(
                new DoFn<Row, String>() {
                  @ProcessElement
                  public void process(@Element Row row, OutputReceiver<String> out) {
                    out.output(
                        row.getInt64("id") + "," + row.getInt64("label") + ","
                            + row.getDouble("score"));
                  }
                }))
        .apply("Write", write(options, "-predictions.csv"));
    result
        .failures()
        .apply("FailuresToJson", ToJson.of())
        .apply("WriteFailures", write(options, "-failures.jsonl"));
  }

  /** The same write for every system: TextIO's default sharding, or one file. */
  private static TextIO.Write write(Options options, String suffix) {
    TextIO.Write write = TextIO.write().to(options.getOutput() + suffix);
    return "one".equals(options.getSharding()) ? write.withoutSharding() : write;
  }

  private static void peer(PCollection<String> lines, Options options) {
    PCollection<KV<Long, Row>> keyed =
        lines
            .apply("Parse", ParDo.of(new BenchRows.ParseKeyed()))
            .setCoder(KvCoder.of(VarLongCoder.of(), RowCoder.of(BenchRows.FEATURES)));
    keyed
        .apply(
            "Model",
            RunInference.ofKVs(peerHandler(options), BenchRows.PEER_OUT, VarLongCoder.of())
                .withKwarg("model_uri", options.getModelUri())
                .withExpansionService(options.getExpansionService()))
        .apply(
            "Format",
            ParDo.of(
                new DoFn<KV<Long, Row>, String>() {
                  @ProcessElement
                  public void process(@Element KV<Long, Row> kv, OutputReceiver<String> out) {
                    out.output(kv.getKey() + "," + kv.getValue().getInt64("inference"));
                  }
                }))
        .apply("Write", write(options, "-predictions.csv"));
    // The peer has no failure output: a bad row fails the job.
    lines
        .getPipeline()
        .apply("NoFailures", org.apache.beam.sdk.transforms.Create.empty(
            org.apache.beam.sdk.coders.StringUtf8Coder.of()))
        .apply("WriteFailures", write(options, "-failures.jsonl"));
  }

  /**
   * The Python a user of Beam's Java RunInference writes: a handler factory, keyed so the id
   * comes back, with their row-to-model-input function, and for the torch and ONNX models an
   * argmax so the output is a label like sklearn's predict.
   */
  static String peerHandler(Options options) {
    String keyed = "KeyedModelHandler(%s).with_preprocess_fn(\n"
        + "      lambda kv: (kv[0], %s))%s\n";
    String toArray = "np.asarray(kv[1].features, dtype=np.float32)";
    // Annotated "-> Any": a lambda's inferred (int, PredictionResult) fails the output type
    // check against the declared row schema at expansion.
    String argmax = ".with_postprocess_fn(to_label)";
    String label =
        "  def to_label(kv) -> typing.Any:\n"
            + "    return kv[0], PredictionResult(%s, int(kv[1].inference.argmax()))\n";
    String head =
        "def get_model_handler(model_uri):\n"
            + "  import typing\n"
            + "  import numpy as np\n"
            + "  from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult\n";
    switch (options.getFramework()) {
      case "pytorch":
        String[] cls = options.getModelClass().split(":");
        return head
            + "  import torch\n"
            + "  from apache_beam.ml.inference.pytorch_inference import PytorchModelHandlerTensor\n"
            + "  from " + cls[0] + " import " + cls[1] + "\n"
            + String.format(label, "kv[1].example.numpy()")
            + "  return " + String.format(keyed,
                "PytorchModelHandlerTensor(state_dict_path=model_uri, model_class=" + cls[1]
                    + ", model_params={})",
                "torch.from_numpy(" + toArray + ")",
                argmax);
      case "onnx":
        return head
            + "  from apache_beam.ml.inference.onnx_inference import OnnxModelHandlerNumpy\n"
            + String.format(label, "kv[1].example")
            + "  return " + String.format(keyed, "OnnxModelHandlerNumpy(model_uri)", toArray, argmax);
      default:
        return head
            + "  from apache_beam.ml.inference.sklearn_inference import SklearnModelHandlerNumpy\n"
            + "  return " + String.format(keyed, "SklearnModelHandlerNumpy(model_uri)", toArray, "");
    }
  }

  private static long countLines(String prefix) throws IOException {
    return lines(prefix + "*").stream().filter(l -> !l.isEmpty()).count();
  }

  /** Every line of every file {@code pattern} matches. */
  private static List<String> lines(String pattern) throws IOException {
    List<String> lines = new ArrayList<>();
    for (MatchResult.Metadata file : FileSystems.match(pattern).metadata()) {
      try (BufferedReader reader =
          new BufferedReader(
              new InputStreamReader(
                  Channels.newInputStream(FileSystems.open(file.resourceId())),
                  StandardCharsets.UTF_8))) {
        reader.lines().forEach(lines::add);
      }
    }
    return lines;
  }
}
