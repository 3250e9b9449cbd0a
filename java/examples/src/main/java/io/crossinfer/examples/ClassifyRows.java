package io.crossinfer.examples;

import com.fasterxml.jackson.databind.ObjectMapper;
import io.crossinfer.CrossInference;
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.channels.Channels;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.LinkedHashMap;
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
import org.apache.beam.sdk.options.Validation;
import org.apache.beam.sdk.schemas.Schema;
import org.apache.beam.sdk.transforms.Filter;
import org.apache.beam.sdk.transforms.Flatten;
import org.apache.beam.sdk.transforms.JsonToRow;
import org.apache.beam.sdk.transforms.MapElements;
import org.apache.beam.sdk.transforms.ToJson;
import org.apache.beam.sdk.transforms.WithFailures;
import org.apache.beam.sdk.values.PCollection;
import org.apache.beam.sdk.values.PCollectionList;
import org.apache.beam.sdk.values.Row;
import org.apache.beam.sdk.values.TypeDescriptors;

/**
 * Example pipeline: classifies the rows of a JSON-lines file with a model run by {@link
 * CrossInference}, and writes predictions and failures as JSON lines.
 *
 * <p>Each input line is an object such as {@code {"id": 7, "features": [0.1, 2.0]}}, parsed by
 * Beam's {@link JsonToRow}; other keys are ignored. A missing or null feature array still becomes
 * a row, so the model side reports it as a failure; a line that does not parse into the schema
 * (not JSON, no integer {@code id}, a feature that is not a number) is a failure with stage
 * {@code "parse"}. Writes {@code <output>-predictions.jsonl} and {@code <output>-failures.jsonl},
 * then prints {@code predictions=N failures=M}.
 *
 * <p>Locally, with Beam's Python job server running ({@code python -m
 * apache_beam.runners.portability.local_job_service_main --port 8099}) and crossinfer installed
 * in {@code python3} (or the Python named by {@code --python} / {@code CROSSINFER_PYTHON}):
 *
 * <pre>
 * classify-rows --input=rows.jsonl --output=out/run --framework=sklearn \
 *   --modelUri=/models/model.pkl --runner=PortableRunner --jobEndpoint=localhost:8099
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
    @Description("Model framework: sklearn, pytorch, onnx, tensorflow or xgboost")
    @Default.String("sklearn")
    String getFramework();

    /**
     * @param framework the model framework
     */
    void setFramework(String framework);

    /**
     * @return the model file
     */
    @Description("Model file, as the Python side sees it (local path, gs://...)")
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
     * @return the expansion service address, or null to have one started
     */
    @Description(
        "A running crossinfer expansion service, host:port; without it one is started from "
            + "--python")
    String getExpansionService();

    /**
     * @param expansionService the expansion service address
     */
    void setExpansionService(String expansionService);

    /**
     * @return the Python to start the expansion service with, or null
     */
    @Description("The Python that has crossinfer (default: $CROSSINFER_PYTHON, else python3)")
    String getPython();

    /**
     * @param python the Python to start the expansion service with
     */
    void setPython(String python);

    /**
     * @return globs of Python callables the started service admits
     */
    @Description("Python callables the started service admits, e.g. mypkg.features.* (repeatable)")
    List<String> getAllow();

    /**
     * @param allow globs of Python callables the started service admits
     */
    void setAllow(List<String> allow);

    /**
     * @return directories (or gs:// prefixes) the started service loads safe model formats from
     */
    @Description("Model repository roots of the started service (ONNX, state_dicts); repeatable")
    List<String> getModelRoots();

    /**
     * @param roots directories (or gs:// prefixes) the started service loads safe formats from
     */
    void setModelRoots(List<String> roots);

    /**
     * @return roots the started service also loads code formats (pickle, TorchScript) from
     */
    @Description("Trusted model roots of the started service: pickle, joblib and TorchScript "
        + "files load only from these; repeatable")
    List<String> getTrustedModelRoots();

    /**
     * @param roots roots the started service also loads code formats from
     */
    void setTrustedModelRoots(List<String> roots);

    /**
     * @return the Docker image of the Python stages, or null
     */
    @Description("For Dataflow: the worker image of the Python stages (Beam's Python SDK + crossinfer)")
    String getPythonContainerImage();

    /**
     * @param image the Docker image of the Python stages
     */
    void setPythonContainerImage(String image);

    /**
     * @return the input field that picks the model, or null
     */
    @Description("Several models: the JSON key (string) whose value picks the model from --models")
    String getModelKeyField();

    /**
     * @param modelKeyField the input field that picks the model
     */
    void setModelKeyField(String modelKeyField);

    /**
     * @return key=uri pairs of the models
     */
    @Description("Several models: key=modelUri pairs (with --modelKeyField instead of --modelUri)")
    List<String> getModels();

    /**
     * @param models key=uri pairs of the models
     */
    void setModels(List<String> models);

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

  /**
   * Runs the pipeline and prints the summary line.
   *
   * @param args pipeline options, see {@link Options}
   * @throws IOException if the written files cannot be read back
   */
  public static void main(String[] args) throws IOException {
    Options options = PipelineOptionsFactory.fromArgs(args).withValidation().as(Options.class);
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
   * @throws IOException if {@code --modelParamsJson} is not JSON
   */
  public static void build(Pipeline pipeline, Options options) throws IOException {
    Schema schema =
        inputSchema(options.getFeatureField(), options.getFeatureType(), options.getModelKeyField());
    JsonToRow.ParseResult parsed =
        pipeline
            .apply("Read", TextIO.read().from(options.getInput()))
            .apply("SkipBlankLines", Filter.by((String line) -> !line.trim().isEmpty()))
            .apply(
                "Parse",
                JsonToRow.withExceptionReporting(schema)
                    .withExtendedErrorInfo());

    WithFailures.Result<PCollection<Row>, Row> result =
        parsed.getResults().apply("Classify", inference(options));

    result
        .output()
        .apply("PredictionsToJson", ToJson.of())
        .apply(
            "WritePredictions",
            TextIO.write().to(options.getOutput() + "-predictions.jsonl").withoutSharding());
    PCollection<String> parseFailures =
        parsed
            .getFailedToParseLines()
            .apply(
                "ParseFailuresToJson",
                MapElements.into(TypeDescriptors.strings())
                    .via(
                        (Row failed) ->
                            parseFailure(failed.getString("line"), failed.getString("err"))));
    PCollectionList.of(result.failures().apply("FailuresToJson", ToJson.of()))
        .and(parseFailures)
        .apply("AllFailures", Flatten.pCollections())
        .apply(
            "WriteFailures",
            TextIO.write().to(options.getOutput() + "-failures.jsonl").withoutSharding());
  }

  /**
   * The transform the options describe.
   *
   * @param options the pipeline's options
   * @return the configured transform
   * @throws IOException if {@code --modelParamsJson} is not JSON
   */
  static CrossInference inference(Options options) throws IOException {
    // Any framework the Python side registers; an unknown name fails at expansion, naming it.
    CrossInference inference = CrossInference.of(options.getFramework());
    if (options.getModelKeyField() != null) {
      inference = inference.withModels(options.getModelKeyField(), models(options.getModels()));
    } else if (options.getModelUri() != null) {
      inference = inference.withModelUri(options.getModelUri());
    } else {
      throw new IllegalArgumentException("give --modelUri, or --modelKeyField and --models");
    }
    inference =
        inference
            .withFeatureField(options.getFeatureField())
            .withPostprocess(options.getPostprocess());
    if (options.getExpansionService() != null) {
      inference = inference.withExpansionService(options.getExpansionService());
    }
    if (options.getPython() != null) {
      inference = inference.withPython(options.getPython());
    }
    if (options.getAllow() != null) {
      inference = inference.withAllow(options.getAllow().toArray(new String[0]));
    }
    if (options.getModelRoots() != null) {
      inference = inference.withModelRoots(options.getModelRoots().toArray(new String[0]));
    }
    if (options.getTrustedModelRoots() != null) {
      inference =
          inference.withTrustedModelRoots(options.getTrustedModelRoots().toArray(new String[0]));
    }
    if (options.getPythonContainerImage() != null) {
      inference = inference.withSdkContainerImage(options.getPythonContainerImage());
    }
    if (options.getModelClass() != null) {
      inference = inference.withModelClass(options.getModelClass());
    }
    if (options.getModelParamsJson() != null) {
      @SuppressWarnings("unchecked")
      Map<String, Object> params = JSON.readValue(options.getModelParamsJson(), Map.class);
      inference = inference.withModelParams(params);
    }
    List<String> passthrough = new ArrayList<>();
    for (String field : options.getPassthroughFields().split(",")) {
      if (!field.trim().isEmpty()) {
        passthrough.add(field.trim());
      }
    }
    return passthrough.isEmpty() ? inference : inference.withPassthroughFields(passthrough);
  }

  private static Map<String, String> models(List<String> pairs) {
    if (pairs == null || pairs.isEmpty()) {
      throw new IllegalArgumentException("--modelKeyField needs --models=key=uri,key=uri");
    }
    Map<String, String> models = new LinkedHashMap<>();
    for (String pair : pairs) {
      int eq = pair.indexOf('=');
      if (eq <= 0) {
        throw new IllegalArgumentException("--models: " + pair + " is not key=uri");
      }
      models.put(pair.substring(0, eq), pair.substring(eq + 1));
    }
    return models;
  }

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

  /** A line JsonToRow could not parse, as a failure record like the model side's. */
  static String parseFailure(String line, String error) {
    Map<String, String> record = new LinkedHashMap<>();
    record.put("element", line);
    record.put("stage", "parse");
    // "Type: message", like the model side's errors.
    record.put("error", "ParseError: " + error);
    try {
      return JSON.writeValueAsString(record);
    } catch (IOException e) {
      throw new IllegalStateException(e);
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
}
