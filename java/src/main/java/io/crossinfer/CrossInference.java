package io.crossinfer;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.HashSet;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Set;
import java.util.SortedMap;
import java.util.TreeMap;
import java.util.concurrent.TimeoutException;
import java.util.regex.Pattern;
import org.apache.beam.sdk.coders.Coder;
import org.apache.beam.sdk.extensions.python.PythonExternalTransform;
import org.apache.beam.sdk.options.PipelineOptions;
import org.apache.beam.sdk.options.PortablePipelineOptions;
import org.apache.beam.sdk.schemas.Schema;
import org.apache.beam.sdk.schemas.SchemaCoder;
import org.apache.beam.sdk.transforms.PTransform;
import org.apache.beam.sdk.transforms.WithFailures;
import org.apache.beam.sdk.util.construction.Environments;
import org.apache.beam.sdk.values.PCollection;
import org.apache.beam.sdk.values.PCollectionTuple;
import org.apache.beam.sdk.values.POutput;
import org.apache.beam.sdk.values.Row;
import org.apache.beam.sdk.values.TupleTag;
import org.checkerframework.checker.nullness.qual.Nullable;

/**
 * Runs ML inference on a {@code PCollection<Row>} with the Python transform {@code
 * crossinfer.Inference} (preprocess, Beam's RunInference, postprocess), expanded by a crossinfer
 * expansion service.
 *
 * <p>The result's {@link WithFailures.Result#output() output()} holds the predictions: the
 * passthrough fields, the postprocess fields (for the default {@code "argmax"}: {@code label:
 * int64}, {@code score: float64}) and {@code model_id: string}. Its {@link
 * WithFailures.Result#failures() failures()} holds one row per input row that could not be
 * predicted: {@code element: string} (the input row as JSON), {@code stage: string} ({@code
 * "preprocess"}, {@code "inference"} or {@code "postprocess"}) and {@code error: string}. Every
 * input row ends up in exactly one of the two.
 *
 * <pre>{@code
 * WithFailures.Result<PCollection<Row>, Row> result =
 *     rows.apply(
 *         CrossInference.sklearn("gs://bucket/model.pkl")
 *             .withFeatureField("features")
 *             .withPassthroughFields("id")
 *             .withExpansionService("localhost:8097"));
 * result.output().apply(...);
 * result.failures().apply(...);
 * }</pre>
 *
 * <p>Each {@code with…} method sets one keyword argument of {@code crossinfer.Inference}; only the
 * arguments set here are sent, the Python defaults apply to the others. Exactly one of {@link
 * #withFeatureField}, {@link #withFeatureFields} and {@link #withPreprocess} must be set. What can
 * be checked without Python is checked here, with an {@link IllegalArgumentException}; the rest
 * (model files, framework specific arguments, allowed callables) is checked by the expansion
 * service when the pipeline is constructed.
 *
 * <p>The expansion service must be running and named with {@link #withExpansionService}: start it
 * with {@code crossinfer-expansion-service --port PORT}. This transform never starts a Python
 * service itself, because Beam's auto-started one accepts any Python callable.
 *
 * <p>Instances are immutable: every {@code with…} method returns a new {@code CrossInference}.
 */
public final class CrossInference
    extends PTransform<PCollection<Row>, WithFailures.Result<PCollection<Row>, Row>> {

  /** Fully qualified name of the Python transform this wrapper expands. */
  public static final String PYTHON_TRANSFORM = "crossinfer.Inference";

  /** Output name of the predictions in the Python transform's result. */
  public static final String PREDICTIONS = "predictions";

  /** Output name of the failure rows in the Python transform's result. */
  public static final String FAILURES = "failures";

  private static final String NO_EXPANSION_SERVICE =
      "CrossInference needs withExpansionService(\"host:port\"): start "
          + "`crossinfer-expansion-service --port PORT`";

  // Same syntax the Python side accepts for a named callable: "package.module:name".
  private static final Pattern CALLABLE =
      Pattern.compile("^[A-Za-z_]\\w*(\\.[A-Za-z_]\\w*)*:[A-Za-z_]\\w*$");
  private static final Pattern IDENTIFIER = Pattern.compile("^[A-Za-z_]\\w*$");
  private static final List<String> BUILTIN_POSTPROCESS =
      Arrays.asList("argmax", "regression", "raw");
  private static final List<String> INPUT_SOURCES =
      Arrays.asList("feature_field", "feature_fields", "preprocess");

  // Python kwarg name -> value, already in its wire type: String, Long, Double, Boolean,
  // List<String>, Map<String, String> or Row. Sorted, so the payload schema is deterministic.
  private final SortedMap<String, Object> kwargs;
  private final @Nullable String expansionService;

  private CrossInference(SortedMap<String, Object> kwargs, @Nullable String expansionService) {
    super("CrossInference");
    this.kwargs = Collections.unmodifiableSortedMap(kwargs);
    this.expansionService = expansionService;
  }

  private static CrossInference forModel(String framework, String factory, String modelUri) {
    SortedMap<String, Object> kwargs = new TreeMap<>();
    kwargs.put("framework", framework);
    kwargs.put("model_uri", checkNonEmpty(factory, "modelUri", modelUri));
    return new CrossInference(kwargs, null);
  }

  /**
   * A scikit-learn model: a pickle or joblib file at {@code modelUri} (a local path or any URI
   * Beam's FileSystems read, such as {@code gs://…}). Sends {@code framework="sklearn"}.
   *
   * @param modelUri where the model file is, as seen by the Python workers
   * @return a transform for that model
   */
  public static CrossInference sklearn(String modelUri) {
    return forModel("sklearn", "sklearn", modelUri);
  }

  /**
   * A PyTorch model: a TorchScript file, or a {@code state_dict} when {@link #withModelClass} names
   * the model class. Sends {@code framework="pytorch"}.
   *
   * @param modelUri where the model file is, as seen by the Python workers
   * @return a transform for that model
   */
  public static CrossInference pytorch(String modelUri) {
    return forModel("pytorch", "pytorch", modelUri);
  }

  /**
   * An ONNX model: a {@code .onnx} file. Sends {@code framework="onnx"}.
   *
   * @param modelUri where the model file is, as seen by the Python workers
   * @return a transform for that model
   */
  public static CrossInference onnx(String modelUri) {
    return forModel("onnx", "onnx", modelUri);
  }

  /**
   * A model served by your own Beam {@code ModelHandler}: {@code handlerFqn} names a Python
   * callable {@code "package.module:factory"} that returns it. The expansion service must admit it
   * ({@code --allow 'package.*'}). Sends {@code framework="custom"} and {@code handler}, no {@code
   * model_uri}.
   *
   * @param handlerFqn the factory, as {@code "package.module:factory"}
   * @return a transform for that handler
   */
  public static CrossInference custom(String handlerFqn) {
    SortedMap<String, Object> kwargs = new TreeMap<>();
    kwargs.put("framework", "custom");
    kwargs.put("handler", checkCallable("custom", "handlerFqn", handlerFqn));
    return new CrossInference(kwargs, null);
  }

  /**
   * The model class of a PyTorch {@code state_dict}, as {@code "package.module:ClassName"}; the
   * expansion service must admit it ({@code --allow}). Sends {@code model_class}.
   *
   * @param modelClass the class, as {@code "package.module:ClassName"}
   * @return a new transform with this setting
   */
  public CrossInference withModelClass(String modelClass) {
    return with("model_class", checkCallable("withModelClass", "modelClass", modelClass));
  }

  /**
   * Keyword arguments for the model class ({@link #withModelClass}). Values may be String, Integer,
   * Long, Float, Double, Boolean, a List of one of those, or a nested Map of the same; keys must be
   * Python identifiers. Sends {@code model_params}, encoded as a schema'd row (one field per key)
   * because Beam's kwargs encoding needs one type per field.
   *
   * @param modelParams argument name to value
   * @return a new transform with this setting
   */
  public CrossInference withModelParams(Map<String, ?> modelParams) {
    checkArgument(modelParams != null, "withModelParams: modelParams is null; pass a Map");
    if (modelParams.isEmpty()) {
      // An empty row has no fields to decode into a dict; an empty map arrives as {}.
      return with("model_params", Collections.<String, String>emptySortedMap());
    }
    return with("model_params", ParamsRow.toRow("withModelParams", modelParams));
  }

  /**
   * The one array field that holds each row's model input (fixed or variable length). Integer
   * arrays stay int64 (token ids); floating arrays become float32. Sends {@code feature_field}.
   *
   * @param field name of an array field of the input rows
   * @return a new transform with this setting
   */
  public CrossInference withFeatureField(String field) {
    return withInputSource(
        "withFeatureField", "feature_field", checkNonEmpty("withFeatureField", "field", field));
  }

  /**
   * Scalar numeric fields stacked, in this order, into one float32 vector per row. Sends {@code
   * feature_fields}.
   *
   * @param fields names of numeric fields of the input rows; at least one, no repeats
   * @return a new transform with this setting
   */
  public CrossInference withFeatureFields(List<String> fields) {
    List<String> checked = checkNames("withFeatureFields", fields);
    checkArgument(
        !checked.isEmpty(), "withFeatureFields: no fields given; name at least one numeric field");
    return withInputSource("withFeatureFields", "feature_fields", checked);
  }

  /**
   * Same as {@link #withFeatureFields(List)}.
   *
   * @param fields names of numeric fields of the input rows; at least one, no repeats
   * @return a new transform with this setting
   */
  public CrossInference withFeatureFields(String... fields) {
    checkArgument(fields != null, "withFeatureFields: fields is null; name the numeric fields");
    return withFeatureFields(Arrays.asList(fields));
  }

  /**
   * Input fields copied unchanged onto each prediction row, for example {@code "id"}. Sends {@code
   * passthrough_fields}.
   *
   * @param fields names of fields of the input rows; may be empty, no repeats
   * @return a new transform with this setting
   */
  public CrossInference withPassthroughFields(List<String> fields) {
    return with("passthrough_fields", checkNames("withPassthroughFields", fields));
  }

  /**
   * Same as {@link #withPassthroughFields(List)}.
   *
   * @param fields names of fields of the input rows
   * @return a new transform with this setting
   */
  public CrossInference withPassthroughFields(String... fields) {
    checkArgument(fields != null, "withPassthroughFields: fields is null; name the fields");
    return withPassthroughFields(Arrays.asList(fields));
  }

  /**
   * A Python function {@code "package.module:function"} that turns a row into the model input,
   * instead of the default feature extraction; the expansion service must admit it ({@code
   * --allow}). Sends {@code preprocess}.
   *
   * @param function the function, as {@code "package.module:function"}
   * @return a new transform with this setting
   */
  public CrossInference withPreprocess(String function) {
    return withInputSource(
        "withPreprocess", "preprocess", checkCallable("withPreprocess", "function", function));
  }

  /**
   * How a model output becomes prediction fields: {@code "argmax"} (the Python default: {@code
   * label}, {@code score}), {@code "regression"} ({@code value}), {@code "raw"} ({@code output}) or
   * a Python function {@code "package.module:function"} admitted by the expansion service (then
   * also set {@link #withOutputSchema}). Sends {@code postprocess}.
   *
   * @param postprocess a built-in name or {@code "package.module:function"}
   * @return a new transform with this setting
   */
  public CrossInference withPostprocess(String postprocess) {
    checkNonEmpty("withPostprocess", "postprocess", postprocess);
    checkArgument(
        BUILTIN_POSTPROCESS.contains(postprocess) || CALLABLE.matcher(postprocess).matches(),
        "withPostprocess: %s is neither one of %s nor a callable name; "
            + "give a built-in or \"package.module:function\"",
        quote(postprocess),
        BUILTIN_POSTPROCESS);
    return with("postprocess", postprocess);
  }

  /**
   * The prediction fields a custom {@link #withPostprocess postprocess} returns, field name to Beam
   * type name ({@code "int64"}, {@code "float64"}, {@code "string"}, {@code "bool"}, {@code
   * "array<float64>"}, …), so the output is typed before the pipeline runs. Sends {@code
   * output_schema}.
   *
   * @param schema field name to type name, in a non-empty map
   * @return a new transform with this setting
   */
  public CrossInference withOutputSchema(Map<String, String> schema) {
    return with("output_schema", checkStringMap("withOutputSchema", "schema", schema));
  }

  /**
   * Bounds of the batches handed to the model, as in Beam's RunInference. Sends {@code
   * min_batch_size} and {@code max_batch_size}.
   *
   * @param minBatchSize smallest batch, at least 1
   * @param maxBatchSize largest batch, at least {@code minBatchSize}
   * @return a new transform with this setting
   */
  public CrossInference withBatchSize(int minBatchSize, int maxBatchSize) {
    checkArgument(
        minBatchSize >= 1,
        "withBatchSize: minBatchSize is %s; give a size of at least 1",
        minBatchSize);
    checkArgument(
        maxBatchSize >= minBatchSize,
        "withBatchSize: maxBatchSize %s is below minBatchSize %s; give min <= max",
        maxBatchSize,
        minBatchSize);
    return with("min_batch_size", (long) minBatchSize).with("max_batch_size", (long) maxBatchSize);
  }

  /**
   * The longest a partial batch waits for more rows, in whole seconds. Sends {@code
   * max_batch_duration_secs} as an int.
   *
   * @param seconds at least 1
   * @return a new transform with this setting
   */
  public CrossInference withMaxBatchDurationSecs(int seconds) {
    checkArgument(
        seconds >= 1, "withMaxBatchDurationSecs: %s seconds; give a positive duration", seconds);
    return with("max_batch_duration_secs", (long) seconds);
  }

  /**
   * The longest a partial batch waits for more rows, in seconds. Sends {@code
   * max_batch_duration_secs} as a float.
   *
   * @param seconds a positive, finite duration
   * @return a new transform with this setting
   */
  public CrossInference withMaxBatchDurationSecs(double seconds) {
    checkArgument(
        seconds > 0 && !Double.isInfinite(seconds),
        "withMaxBatchDurationSecs: %s seconds; give a positive, finite duration",
        seconds);
    return with("max_batch_duration_secs", seconds);
  }

  /**
   * Whether to share one model across the worker's processes, as Beam's {@code large_model}. Sends
   * {@code large_model}.
   *
   * @param largeModel true to share one copy of the model
   * @return a new transform with this setting
   */
  public CrossInference withLargeModel(boolean largeModel) {
    return with("large_model", largeModel);
  }

  /**
   * Whether each input row is a block of many rows, column by column: every passthrough field
   * and the feature field hold one value per row (the feature field a 2-D array, or a flat one of
   * rows times width numbers). Predictions then come out as one block row per input block, with
   * array fields; failures stay one row each. The per-row cost of the runner is then paid once
   * per block. Sends {@code blocks}.
   *
   * @param blocks true when each input row carries many rows
   * @return a new transform with this setting
   */
  public CrossInference withBlocks(boolean blocks) {
    return with("blocks", blocks);
  }

  // --- boundary blocks (BoundaryBlocks): begin ---
  /**
   * Whether rows cross to Python in column blocks (thousands of rows per element, grouped per
   * bundle and window) rather than one element per row. On by default wherever the Python block
   * path takes the configuration (not with a preprocess or custom postprocess function, a custom
   * handler, several models, {@link #withBatchSize} or {@link #withMaxBatchDurationSecs}); the
   * output rows, their schema and the failures are the same either way, and a failure's {@code
   * element} holds the fields the model reads or passes through. Turn it off to send one
   * element per row; turning it on with a setting it cannot take is an error. Not sent to Python.
   *
   * @param on true to group rows into blocks across the boundary
   * @return a new transform with this setting
   */
  public CrossInference withBoundaryBlocks(boolean on) {
    CrossInference copy = with(BoundaryBlocks.SWITCH, on);
    BoundaryBlocks.applies(copy.kwargs); // fails now if the configuration cannot take it
    return copy;
  }
  // --- boundary blocks: end ---

  /**
   * Load exactly this many copies of the model per worker, as Beam's {@code model_copies}. Sends
   * {@code model_copies}.
   *
   * @param copies at least 1
   * @return a new transform with this setting
   */
  public CrossInference withModelCopies(int copies) {
    checkArgument(copies >= 1, "withModelCopies: %s copies; give at least 1", copies);
    return with("model_copies", (long) copies);
  }

  /**
   * Several models: each row's {@code keyField} value picks its model from {@code models}. Sends
   * {@code model_key_field} and {@code models}, and no longer the factory's {@code model_uri}: the
   * Python side takes one model or several, not both. All models use the factory's framework.
   *
   * @param keyField name of the input field whose value is a key of {@code models}
   * @param models key to model URI, in a non-empty map
   * @return a new transform with this setting
   */
  public CrossInference withModels(String keyField, Map<String, String> models) {
    SortedMap<String, Object> copy = new TreeMap<>(kwargs);
    copy.remove("model_uri");
    copy.put("model_key_field", checkNonEmpty("withModels", "keyField", keyField));
    copy.put("models", checkStringMap("withModels", "models", models));
    return new CrossInference(copy, expansionService);
  }

  /**
   * Where the model runs: {@code "CPU"} (the Python default) or {@code "GPU"}. Sends {@code
   * device}.
   *
   * @param device {@code "CPU"} or {@code "GPU"}, in any case
   * @return a new transform with this setting
   */
  public CrossInference withDevice(String device) {
    checkNonEmpty("withDevice", "device", device);
    String upper = device.toUpperCase(Locale.ROOT);
    checkArgument(
        upper.equals("CPU") || upper.equals("GPU"),
        "withDevice: %s is not a device; give \"CPU\" or \"GPU\"",
        quote(device));
    return with("device", upper);
  }

  /**
   * The running crossinfer expansion service that expands this transform, as {@code "host:port"},
   * for example {@code "localhost:8097"} after {@code crossinfer-expansion-service --port 8097}.
   * Required.
   *
   * @param hostPort address of the expansion service
   * @return a new transform with this setting
   */
  public CrossInference withExpansionService(String hostPort) {
    checkNonEmpty("withExpansionService", "hostPort", hostPort);
    int colon = hostPort.lastIndexOf(':');
    boolean valid = colon > 0;
    if (valid) {
      try {
        int port = Integer.parseInt(hostPort.substring(colon + 1));
        valid = port > 0 && port < 65536;
      } catch (NumberFormatException e) {
        valid = false;
      }
    }
    checkArgument(
        valid,
        "withExpansionService: %s is not an address; give \"host:port\", e.g. \"localhost:8097\"",
        quote(hostPort));
    return new CrossInference(new TreeMap<>(kwargs), hostPort);
  }

  /**
   * Checks that the configuration is complete: an expansion service and exactly one input source.
   *
   * @param options the pipeline's options (unused)
   */
  @Override
  public void validate(@Nullable PipelineOptions options) {
    checkComplete();
  }

  /**
   * Expands {@code crossinfer.Inference} on the expansion service and returns its two outputs.
   *
   * @param input rows with a schema
   * @return predictions as output, failure rows as failures
   */
  @Override
  public WithFailures.Result<PCollection<Row>, Row> expand(PCollection<Row> input) {
    checkComplete();
    checkArgument(
        input.hasSchema(),
        "CrossInference needs rows with a schema: call setRowSchema(schema) on the input");
    checkInputFields(input.getSchema());
    checkLoopbackAddress(input.getPipeline().getOptions().as(PortablePipelineOptions.class));

    // --- boundary blocks (BoundaryBlocks): begin ---
    boolean blocked = BoundaryBlocks.applies(kwargs);
    PCollection<Row> toPython = blocked ? BoundaryBlocks.group(input, kwargs) : input;
    CrossInference sent = blocked ? with("blocks", true) : this;
    // --- boundary blocks: end ---
    POutput output;
    try {
      output = toPython.apply("Inference", sent.toPythonTransform());
    } catch (RuntimeException e) {
      // Beam's own message, "Timeout waiting for Python service startup", suggests Beam was
      // starting a service; here nothing answered at the address given.
      if (e.getCause() instanceof TimeoutException) {
        throw new IllegalStateException(
            String.format(
                "CrossInference: no expansion service answers at %s; start "
                    + "`crossinfer-expansion-service --port PORT` and pass its address to "
                    + "withExpansionService",
                expansionService),
            e);
      }
      throw e;
    }
    checkState(
        output instanceof PCollectionTuple,
        "%s returned one output; expected %s and %s (is the expansion service a crossinfer one?)",
        PYTHON_TRANSFORM,
        PREDICTIONS,
        FAILURES);
    PCollectionTuple tuple = (PCollectionTuple) output;
    TupleTag<Row> predictions = new TupleTag<>(PREDICTIONS);
    TupleTag<Row> failures = new TupleTag<>(FAILURES);
    withRowSchema(tuple, predictions);
    withRowSchema(tuple, failures);
    checkFailureSchema(tuple.get(failures).getSchema());
    if (blocked) { // --- boundary blocks: one prediction row per input row again
      return WithFailures.Result.of(
          BoundaryBlocks.explode(tuple.get(predictions)), tuple.get(failures));
    }
    return WithFailures.Result.of(tuple, predictions, failures);
  }

  /** The Python kwargs as sent, for tests: name to wire value. */
  SortedMap<String, Object> kwargs() {
    return kwargs;
  }

  /** The expansion service address, or null if not set yet. */
  @Nullable String expansionService() {
    return expansionService;
  }

  /** The keyword arguments as the row Beam sends to Python: one field per kwarg. */
  Row kwargsRow() {
    Schema.Builder schema = Schema.builder();
    List<Object> values = new ArrayList<>();
    for (Map.Entry<String, Object> kwarg : kwargs.entrySet()) {
      if (kwarg.getKey().equals(BoundaryBlocks.SWITCH)) {
        continue; // --- boundary blocks: a Java-side switch, not a Python kwarg
      }
      schema.addField(kwarg.getKey(), wireType(kwarg.getValue()));
      values.add(kwarg.getValue());
    }
    return Row.withSchema(schema.build()).addValues(values).build();
  }

  /** The Beam transform that calls {@code crossinfer.Inference}. */
  PythonExternalTransform<PCollection<Row>, POutput> toPythonTransform() {
    checkComplete();
    // A Row, not a Map: Beam infers a Map value's field type from its runtime class and cannot
    // encode lists, maps or mixed types that way.
    return PythonExternalTransform.<PCollection<Row>, POutput>from(
            PYTHON_TRANSFORM, expansionService)
        .withKwargs(kwargsRow());
  }

  private void checkComplete() {
    checkArgument(expansionService != null, NO_EXPANSION_SERVICE);
    long sources = INPUT_SOURCES.stream().filter(kwargs::containsKey).count();
    checkArgument(
        sources == 1,
        "CrossInference needs exactly one of withFeatureField, withFeatureFields, withPreprocess "
            + "to say where the model input comes from; none is set");
  }

  private void checkInputFields(Schema schema) {
    List<String> named = new ArrayList<>();
    addNames(named, kwargs.get("feature_field"));
    addNames(named, kwargs.get("feature_fields"));
    addNames(named, kwargs.get("passthrough_fields"));
    addNames(named, kwargs.get("model_key_field"));
    for (String name : named) {
      checkArgument(
          schema.hasField(name),
          "CrossInference: the input has no field %s; its fields are %s",
          quote(name),
          schema.getFieldNames());
    }
  }

  // Beam Java builds the pipeline's environment when an external transform is expanded, but
  // PortableRunner picks the LOOPBACK worker's address only in run(), unless one is configured.
  // Without one Beam fails deep inside External with a message that does not say what to do.
  private static void checkLoopbackAddress(PortablePipelineOptions options) {
    String address = Environments.getExternalServiceAddress(options);
    checkArgument(
        !Environments.ENVIRONMENT_LOOPBACK.equals(options.getDefaultEnvironmentType())
            || (address != null && !address.isEmpty()),
        "CrossInference with --defaultEnvironmentType=LOOPBACK also needs "
            + "--defaultEnvironmentConfig=localhost:PORT with a free PORT: Beam Java needs the "
            + "loopback worker's address when the transform is expanded, and PortableRunner then "
            + "starts that worker there");
  }

  // The failure rows are part of the contract; a mismatch means another service or version.
  private static void checkFailureSchema(Schema schema) {
    for (String field : Arrays.asList("element", "stage", "error")) {
      checkState(
          schema.hasField(field)
              && schema.getField(field).getType().getTypeName() == Schema.TypeName.STRING,
          "%s returned failures with schema %s; expected string fields element, stage, error "
              + "(is the expansion service a matching crossinfer version?)",
          PYTHON_TRANSFORM,
          schema);
    }
  }

  @SuppressWarnings("unchecked")
  private static void addNames(List<String> names, @Nullable Object value) {
    if (value instanceof String) {
      names.add((String) value);
    } else if (value instanceof List) {
      names.addAll((List<String>) value);
    }
  }

  private static void withRowSchema(PCollectionTuple tuple, TupleTag<Row> tag) {
    checkState(
        tuple.has(tag),
        "%s returned no output named %s; it returned %s",
        PYTHON_TRANSFORM,
        quote(tag.getId()),
        tuple.getAll().keySet());
    PCollection<Row> rows = tuple.get(tag);
    Coder<Row> coder = rows.getCoder();
    checkState(
        coder instanceof SchemaCoder,
        "%s output %s is not schema'd rows (coder %s); the Python side must emit beam.Row",
        PYTHON_TRANSFORM,
        quote(tag.getId()),
        coder);
    // A rehydrated RowCoder is already a SchemaCoder; set the schema only when Beam did not.
    if (!rows.hasSchema()) {
      rows.setRowSchema(((SchemaCoder<Row>) coder).getSchema());
    }
  }

  private CrossInference with(String name, Object value) {
    SortedMap<String, Object> copy = new TreeMap<>(kwargs);
    copy.put(name, value);
    return new CrossInference(copy, expansionService);
  }

  // Setting the same input source again replaces it; setting a second kind is an error now,
  // not at expansion, so the message can name both calls.
  private CrossInference withInputSource(String method, String name, Object value) {
    for (String other : INPUT_SOURCES) {
      checkArgument(
          other.equals(name) || !kwargs.containsKey(other),
          "%s: %s is already set; use only one of withFeatureField, withFeatureFields, "
              + "withPreprocess",
          method,
          javaMethod(other));
    }
    return with(name, value);
  }

  private static String javaMethod(String kwarg) {
    switch (kwarg) {
      case "feature_field":
        return "withFeatureField";
      case "feature_fields":
        return "withFeatureFields";
      default:
        return "withPreprocess";
    }
  }

  static Schema.FieldType wireType(Object value) {
    if (value instanceof String) {
      return Schema.FieldType.STRING;
    } else if (value instanceof Long) {
      return Schema.FieldType.INT64;
    } else if (value instanceof Double) {
      return Schema.FieldType.DOUBLE;
    } else if (value instanceof Boolean) {
      return Schema.FieldType.BOOLEAN;
    } else if (value instanceof List) {
      return Schema.FieldType.array(Schema.FieldType.STRING);
    } else if (value instanceof Map) {
      return Schema.FieldType.map(Schema.FieldType.STRING, Schema.FieldType.STRING);
    } else if (value instanceof Row) {
      return Schema.FieldType.row(((Row) value).getSchema());
    }
    throw new IllegalStateException("no wire type for " + value.getClass());
  }

  private static String checkNonEmpty(String method, String param, @Nullable String value) {
    checkArgument(
        value != null && !value.trim().isEmpty(),
        "%s: %s is %s; give a non-empty string",
        method,
        param,
        value == null ? "null" : "empty");
    return value;
  }

  private static String checkCallable(String method, String param, @Nullable String value) {
    checkNonEmpty(method, param, value);
    checkArgument(
        CALLABLE.matcher(value).matches(),
        "%s: %s is not a callable name; give it as \"package.module:name\" (a name, no code)",
        method,
        quote(value));
    return value;
  }

  private static List<String> checkNames(String method, @Nullable List<String> names) {
    checkArgument(names != null, "%s: the list of fields is null; pass a list of names", method);
    Set<String> seen = new HashSet<>();
    for (String name : names) {
      checkNonEmpty(method, "a field name", name);
      checkArgument(
          seen.add(name), "%s: field %s is named twice; name it once", method, quote(name));
    }
    return Collections.unmodifiableList(new ArrayList<>(names));
  }

  private static Map<String, String> checkStringMap(
      String method, String param, @Nullable Map<String, String> map) {
    checkArgument(
        map != null && !map.isEmpty(),
        "%s: %s is null or empty; give at least one entry",
        method,
        param);
    SortedMap<String, String> copy = new TreeMap<>();
    for (Map.Entry<String, String> entry : map.entrySet()) {
      checkNonEmpty(method, "a key of " + param, entry.getKey());
      checkNonEmpty(method, param + "[" + quote(entry.getKey()) + "]", entry.getValue());
      copy.put(entry.getKey(), entry.getValue());
    }
    return Collections.unmodifiableSortedMap(copy);
  }

  static void checkArgument(boolean ok, String format, Object... args) {
    if (!ok) {
      throw new IllegalArgumentException(args.length == 0 ? format : String.format(format, args));
    }
  }

  private static void checkState(boolean ok, String format, Object... args) {
    if (!ok) {
      throw new IllegalStateException(String.format(format, args));
    }
  }

  static String quote(String s) {
    return "\"" + s + "\"";
  }

  /** Builds the {@code model_params} row: one field per key, its type taken from the value. */
  static final class ParamsRow {
    private ParamsRow() {}

    static Row toRow(String method, Map<String, ?> params) {
      // Sorted by key, like the kwargs, so equal maps give equal schemas.
      SortedMap<String, Object> sorted = new TreeMap<>();
      for (Map.Entry<String, ?> entry : params.entrySet()) {
        String key = entry.getKey();
        checkArgument(
            key != null && IDENTIFIER.matcher(key).matches(),
            "%s: key %s is not a Python identifier; model parameters are keyword arguments",
            method,
            key == null ? "null" : quote(key));
        sorted.put(key, entry.getValue());
      }
      Schema.Builder schema = Schema.builder();
      List<Object> values = new ArrayList<>();
      for (Map.Entry<String, Object> entry : sorted.entrySet()) {
        String where = method + ": " + entry.getKey();
        Schema.FieldType type = typeOf(where, entry.getValue());
        schema.addField(entry.getKey(), type);
        values.add(convert(where, type, entry.getValue()));
      }
      return Row.withSchema(schema.build()).addValues(values).build();
    }

    private static Schema.FieldType typeOf(String where, @Nullable Object value) {
      checkArgument(
          value != null, "%s is null; leave the key out to use the model class's default", where);
      if (value instanceof String) {
        return Schema.FieldType.STRING;
      } else if (value instanceof Integer
          || value instanceof Long
          || value instanceof Short
          || value instanceof Byte) {
        // Python has one int type; INT64 holds every Java integer.
        return Schema.FieldType.INT64;
      } else if (value instanceof Double || value instanceof Float) {
        return Schema.FieldType.DOUBLE;
      } else if (value instanceof Boolean) {
        return Schema.FieldType.BOOLEAN;
      } else if (value instanceof Map) {
        @SuppressWarnings("unchecked")
        Map<String, ?> nested = (Map<String, ?>) value;
        return Schema.FieldType.row(toRow(where, nested).getSchema());
      } else if (value instanceof List) {
        List<?> list = (List<?>) value;
        checkArgument(
            !list.isEmpty(), "%s is an empty list; its element type cannot be known", where);
        Schema.FieldType element = null;
        for (Object item : list) {
          checkArgument(
              !(item instanceof List) && !(item instanceof Map),
              "%s: nested lists and maps in lists are not supported",
              where);
          Schema.FieldType type = typeOf(where + "[]", item);
          element = element == null ? type : widen(where, element, type);
        }
        return Schema.FieldType.array(element);
      }
      throw new IllegalArgumentException(
          String.format(
              "%s has type %s; use String, Integer, Long, Float, Double, Boolean, a List or a Map",
              where, value.getClass().getName()));
    }

    // A list of ints and floats is a list of floats, as Python would treat it.
    private static Schema.FieldType widen(String where, Schema.FieldType a, Schema.FieldType b) {
      if (a.equals(b)) {
        return a;
      }
      Set<Schema.FieldType> pair = new HashSet<>(Arrays.asList(a, b));
      if (pair.equals(
          new HashSet<>(Arrays.asList(Schema.FieldType.INT64, Schema.FieldType.DOUBLE)))) {
        return Schema.FieldType.DOUBLE;
      }
      throw new IllegalArgumentException(
          String.format(
              "%s mixes %s and %s in one list; give a list of one type",
              where, a.getTypeName(), b.getTypeName()));
    }

    private static Object convert(String where, Schema.FieldType type, Object value) {
      switch (type.getTypeName()) {
        case INT64:
          return ((Number) value).longValue();
        case DOUBLE:
          return ((Number) value).doubleValue();
        case ROW:
          @SuppressWarnings("unchecked")
          Map<String, ?> nested = (Map<String, ?>) value;
          return toRow(where, nested);
        case ARRAY:
          List<Object> items = new ArrayList<>();
          for (Object item : (List<?>) value) {
            items.add(convert(where, type.getCollectionElementType(), item));
          }
          return items;
        default:
          return value;
      }
    }
  }
}
