package io.crossinfer.examples;

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import io.crossinfer.CrossInference;
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.net.ServerSocket;
import java.nio.channels.Channels;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.apache.beam.sdk.Pipeline;
import org.apache.beam.sdk.PipelineResult;
import org.apache.beam.sdk.io.FileSystems;
import org.apache.beam.sdk.io.TextIO;
import org.apache.beam.sdk.io.fs.MatchResult;
import org.apache.beam.sdk.options.Default;
import org.apache.beam.sdk.options.Description;
import org.apache.beam.sdk.options.PipelineOptions;
import org.apache.beam.sdk.options.PipelineOptionsFactory;
import org.apache.beam.sdk.options.PortablePipelineOptions;
import org.apache.beam.sdk.options.Validation;
import org.apache.beam.sdk.schemas.Schema;
import org.apache.beam.sdk.transforms.DoFn;
import org.apache.beam.sdk.transforms.Flatten;
import org.apache.beam.sdk.transforms.ParDo;
import org.apache.beam.sdk.transforms.ToJson;
import org.apache.beam.sdk.transforms.WithFailures;
import org.apache.beam.sdk.util.construction.Environments;
import org.apache.beam.sdk.values.PCollection;
import org.apache.beam.sdk.values.PCollectionList;
import org.apache.beam.sdk.values.PCollectionTuple;
import org.apache.beam.sdk.values.Row;
import org.apache.beam.sdk.values.TupleTag;
import org.apache.beam.sdk.values.TupleTagList;
import org.checkerframework.checker.nullness.qual.Nullable;

/**
 * Example pipeline: classifies the rows of a JSON-lines file with a model run by {@link
 * CrossInference}, and writes predictions and failures as JSON lines.
 *
 * <p>Each input line is an object such as {@code {"id": 7, "features": [0.1, 2.0]}}; other keys are
 * ignored. A line whose features are missing, null or not numbers still becomes a row (with null
 * values), so the model side reports it as a failure; a line that is not a JSON object with an
 * integer {@code id} is reported as a failure with stage {@code "parse"}. Writes {@code
 * <output>-predictions.jsonl} and {@code <output>-failures.jsonl}, then prints {@code predictions=N
 * failures=M}.
 *
 * <pre>
 * java -cp "$(cat java/build/classpath.txt)" io.crossinfer.examples.ClassifyRows \
 *   --input=rows.jsonl --output=out/run --framework=sklearn --modelUri=/models/model.pkl \
 *   --expansionService=localhost:8097 \
 *   --runner=PortableRunner --jobEndpoint=localhost:8099 --defaultEnvironmentType=LOOPBACK
 * </pre>
 */
public final class ClassifyRows {

  private ClassifyRows() {}

  /** Command-line options of {@link ClassifyRows}. */
  public interface Options extends PipelineOptions {
    /**
     * @return the JSON-lines input file (or glob)
     */
    @Description("JSON-lines input: one object per line, {\"id\": <long>, \"features\": [...]}")
    @Validation.Required
    String getInput();

    /**
     * @param input the JSON-lines input file (or glob)
     */
    void setInput(String input);

    /**
     * @return the output prefix
     */
    @Description("Output prefix: writes <output>-predictions.jsonl and <output>-failures.jsonl")
    @Validation.Required
    String getOutput();

    /**
     * @param output the output prefix
     */
    void setOutput(String output);

    /**
     * @return the model framework
     */
    @Description("Model framework: sklearn, pytorch or onnx")
    @Default.String("sklearn")
    String getFramework();

    /**
     * @param framework the model framework
     */
    void setFramework(String framework);

    /**
     * @return the model file
     */
    @Description("Model file, as the Python workers see it (local path, gs://...)")
    @Validation.Required
    String getModelUri();

    /**
     * @param modelUri the model file
     */
    void setModelUri(String modelUri);

    /**
     * @return the PyTorch model class, or null
     */
    @Description("PyTorch state_dict only: the model class, \"package.module:ClassName\"")
    String getModelClass();

    /**
     * @param modelClass the PyTorch model class
     */
    void setModelClass(String modelClass);

    /**
     * @return the model class arguments as a JSON object, or null
     */
    @Description("Keyword arguments for the model class, as a JSON object")
    String getModelParamsJson();

    /**
     * @param modelParamsJson the model class arguments as a JSON object
     */
    void setModelParamsJson(String modelParamsJson);

    /**
     * @return the postprocess name
     */
    @Description("Postprocess: argmax, regression, raw or \"package.module:function\"")
    @Default.String("argmax")
    String getPostprocess();

    /**
     * @param postprocess the postprocess name
     */
    void setPostprocess(String postprocess);

    /**
     * @return the expansion service address
     */
    @Description("The crossinfer expansion service, host:port")
    @Validation.Required
    String getExpansionService();

    /**
     * @param expansionService the expansion service address
     */
    void setExpansionService(String expansionService);

    /**
     * @return the name of the feature array field
     */
    @Description("The JSON key (and row field) that holds the feature array")
    @Default.String("features")
    String getFeatureField();

    /**
     * @param featureField the name of the feature array field
     */
    void setFeatureField(String featureField);

    /**
     * @return the element type of the feature array
     */
    @Description("Element type of the feature array: float64, or int64 for token ids")
    @Default.String("float64")
    String getFeatureType();

    /**
     * @param featureType the element type of the feature array
     */
    void setFeatureType(String featureType);

    /**
     * @return comma-separated fields copied onto the predictions
     */
    @Description("Comma-separated input fields copied onto each prediction (id or nothing)")
    @Default.String("id")
    String getPassthroughFields();

    /**
     * @param passthroughFields comma-separated fields copied onto the predictions
     */
    void setPassthroughFields(String passthroughFields);
  }

  private static final ObjectMapper JSON = new ObjectMapper();
  // Anonymous subclasses keep the element type for coder inference.
  private static final TupleTag<Row> ROWS = new TupleTag<Row>("rows") {};
  private static final TupleTag<String> UNPARSED = new TupleTag<String>("unparsed") {};

  /**
   * Runs the pipeline and prints the summary line.
   *
   * @param args pipeline options, see {@link Options}
   * @throws IOException if the written files cannot be read back
   */
  public static void main(String[] args) throws IOException {
    Options options = PipelineOptionsFactory.fromArgs(args).withValidation().as(Options.class);
    PortablePipelineOptions portable = options.as(PortablePipelineOptions.class);
    if (Environments.ENVIRONMENT_LOOPBACK.equals(portable.getDefaultEnvironmentType())
        && Environments.getExternalServiceAddress(portable).isEmpty()) {
      // Beam Java needs the loopback worker's address when the Python transform is expanded,
      // long before PortableRunner.run() would pick one; run() then listens on this one.
      portable.setDefaultEnvironmentConfig("localhost:" + freePort());
    }
    Pipeline pipeline = Pipeline.create(options);
    build(pipeline, options);
    PipelineResult.State state = awaitFinish(pipeline.run());
    if (state != PipelineResult.State.DONE) {
      System.err.println("pipeline ended " + state);
      System.exit(1);
    }
    long predictions = countLines(options.getOutput() + "-predictions.jsonl");
    long failures = countLines(options.getOutput() + "-failures.jsonl");
    System.out.println("predictions=" + predictions + " failures=" + failures);
  }

  /**
   * Adds read, parse, inference and write to {@code pipeline}.
   *
   * @param pipeline the pipeline to build
   * @param options its options
   * @throws IOException if {@code --modelParamsJson} is not a JSON object
   */
  public static void build(Pipeline pipeline, Options options) throws IOException {
    Schema schema = inputSchema(options.getFeatureField(), options.getFeatureType());
    PCollectionTuple parsed =
        pipeline
            .apply("Read", TextIO.read().from(options.getInput()))
            .apply(
                "Parse",
                ParDo.of(new ParseLine(schema, options.getFeatureField()))
                    .withOutputTags(ROWS, TupleTagList.of(UNPARSED)));

    WithFailures.Result<PCollection<Row>, Row> result =
        parsed.get(ROWS).setRowSchema(schema).apply("Classify", inference(options));

    result
        .output()
        .apply("PredictionsToJson", ToJson.of())
        .apply(
            "WritePredictions",
            TextIO.write().to(options.getOutput() + "-predictions.jsonl").withoutSharding());
    PCollectionList.of(result.failures().apply("FailuresToJson", ToJson.of()))
        .and(parsed.get(UNPARSED))
        .apply("AllFailures", Flatten.pCollections())
        .apply(
            "WriteFailures",
            TextIO.write().to(options.getOutput() + "-failures.jsonl").withoutSharding());
  }

  private static CrossInference inference(Options options) throws IOException {
    CrossInference inference;
    switch (options.getFramework()) {
      case "sklearn":
        inference = CrossInference.sklearn(options.getModelUri());
        break;
      case "pytorch":
        inference = CrossInference.pytorch(options.getModelUri());
        break;
      case "onnx":
        inference = CrossInference.onnx(options.getModelUri());
        break;
      default:
        throw new IllegalArgumentException(
            "--framework=" + options.getFramework() + ": give sklearn, pytorch or onnx");
    }
    inference =
        inference
            .withFeatureField(options.getFeatureField())
            .withPostprocess(options.getPostprocess())
            .withExpansionService(options.getExpansionService());
    if (options.getModelClass() != null) {
      inference = inference.withModelClass(options.getModelClass());
    }
    if (options.getModelParamsJson() != null) {
      JsonNode params = JSON.readTree(options.getModelParamsJson());
      if (params == null || !params.isObject()) {
        throw new IllegalArgumentException(
            "--modelParamsJson: give a JSON object, e.g. {\"n\": 2}");
      }
      @SuppressWarnings("unchecked")
      Map<String, Object> map = JSON.convertValue(params, Map.class);
      inference = inference.withModelParams(map);
    }
    List<String> passthrough = new ArrayList<>();
    for (String field : options.getPassthroughFields().split(",")) {
      if (!field.trim().isEmpty()) {
        passthrough.add(field.trim());
      }
    }
    return passthrough.isEmpty() ? inference : inference.withPassthroughFields(passthrough);
  }

  /**
   * The rows sent to the model: {@code id} and the feature array. The array and its elements are
   * nullable so that bad input reaches the model side and comes back as a failure.
   */
  static Schema inputSchema(String featureField, String featureType) {
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
    return Schema.builder()
        .addInt64Field("id")
        .addNullableField(featureField, Schema.FieldType.array(element.withNullable(true)))
        .build();
  }

  /** Parses one JSON line into a row, or into a failure record when it has no usable id. */
  static final class ParseLine extends DoFn<String, Row> {
    private final Schema schema;
    private final String featureField;
    private final boolean integers;

    ParseLine(Schema schema, String featureField) {
      this.schema = schema;
      this.featureField = featureField;
      this.integers =
          schema.getField(featureField).getType().getCollectionElementType().getTypeName()
              == Schema.TypeName.INT64;
    }

    @ProcessElement
    public void process(@Element String line, MultiOutputReceiver out) {
      Object parsed = parse(line);
      if (parsed instanceof Row) {
        out.get(ROWS).output((Row) parsed);
      } else if (parsed != null) {
        out.get(UNPARSED).output((String) parsed);
      }
    }

    /** The line's row, its failure record as JSON, or null for a blank line. */
    @Nullable Object parse(String line) {
      if (line.trim().isEmpty()) {
        return null; // blank lines separate nothing in JSON lines; they are not records
      }
      JsonNode node;
      try {
        node = JSON.readTree(line);
      } catch (JsonProcessingException e) {
        return failure(line, e.getClass().getSimpleName() + ": " + e.getOriginalMessage());
      }
      if (node == null || !node.isObject()) {
        return failure(line, "InputError: the line is not a JSON object");
      }
      JsonNode id = node.get("id");
      if (id == null || !id.isIntegralNumber() || !id.canConvertToLong()) {
        return failure(line, "InputError: \"id\" is missing or not an integer");
      }
      return Row.withSchema(schema)
          .addValues(id.asLong(), features(node.get(featureField)))
          .build();
    }

    // Anything that is not a number becomes null: the model side then names the row a failure
    // instead of this parser guessing a value.
    private @Nullable List<Object> features(@Nullable JsonNode array) {
      if (array == null || !array.isArray()) {
        return null;
      }
      List<Object> values = new ArrayList<>(array.size());
      for (JsonNode item : array) {
        if (!item.isNumber()) {
          values.add(null);
        } else if (!integers) {
          values.add(item.asDouble());
        } else if (item.canConvertToExactIntegral() && item.canConvertToLong()) {
          values.add(item.asLong());
        } else {
          values.add(null); // 1.5 is not a token id; never round it
        }
      }
      return values;
    }

    private static String failure(String line, String error) {
      ObjectNode record = JSON.createObjectNode();
      record.put("element", line);
      record.put("stage", "parse");
      record.put("error", error);
      return record.toString();
    }
  }

  /**
   * Waits for the job, asking for its state every 50 ms: PortableRunner's own waitUntilFinish
   * asks every 3 s, which a short local run pays in full. Then lets waitUntilFinish (one more
   * question, answered at once) propagate errors and close the worker service.
   */
  static PipelineResult.State awaitFinish(PipelineResult result) {
    try {
      while (!result.getState().isTerminal()) {
        Thread.sleep(50);
      }
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
    }
    return result.waitUntilFinish();
  }

  private static int freePort() throws IOException {
    try (ServerSocket socket = new ServerSocket(0)) {
      return socket.getLocalPort();
    }
  }

  private static long countLines(String path) throws IOException {
    MatchResult.Metadata file = FileSystems.matchSingleFileSpec(path);
    try (BufferedReader reader =
        new BufferedReader(
            new InputStreamReader(
                Channels.newInputStream(FileSystems.open(file.resourceId())),
                StandardCharsets.UTF_8))) {
      return reader.lines().filter(l -> !l.isEmpty()).count();
    }
  }
}
