package io.crossinfer;

import static org.apache.beam.vendor.guava.v32_1_2_jre.com.google.common.base.Preconditions.checkArgument;
import static org.apache.beam.vendor.guava.v32_1_2_jre.com.google.common.base.Preconditions.checkState;

import java.io.IOException;
import java.io.InputStream;
import java.io.UncheckedIOException;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.SortedMap;
import java.util.TreeMap;
import java.util.concurrent.TimeoutException;
import org.apache.beam.sdk.coders.Coder;
import org.apache.beam.sdk.extensions.python.PythonExternalTransform;
import org.apache.beam.sdk.schemas.Schema;
import org.apache.beam.sdk.schemas.SchemaCoder;
import org.apache.beam.sdk.schemas.transforms.Select;
import org.apache.beam.sdk.transforms.PTransform;
import org.apache.beam.sdk.transforms.WithFailures;
import org.apache.beam.sdk.transforms.display.DisplayData;
import org.apache.beam.sdk.values.PCollection;
import org.apache.beam.sdk.values.PCollectionTuple;
import org.apache.beam.sdk.values.POutput;
import org.apache.beam.sdk.values.Row;
import org.apache.beam.sdk.values.TupleTag;
import org.checkerframework.checker.nullness.qual.Nullable;
import org.joda.time.Duration;

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
 *         CrossInference.sklearn("/models/model.pkl")
 *             .withFeatureField("features")
 *             .withPassthroughFields("id"));
 * result.output().apply(...);
 * result.failures().apply(...);
 * }</pre>
 *
 * <p><b>Arguments.</b> Each {@code with…} method sets one keyword argument of {@code
 * crossinfer.Inference}; only the arguments set are sent, the Python defaults apply to the others.
 * The Python side checks them all (and opens the model files) when the transform is expanded,
 * which is when {@code apply} returns: a mistake fails the pipeline's construction with a message
 * that names the argument, never a running job. This class checks only what it needs to encode
 * the arguments.
 *
 * <p><b>The expansion service.</b> With {@link #withExpansionService} the transform is expanded by
 * the crossinfer expansion service running at that address. Without it, this library starts one
 * itself, once per JVM and settings, on a free port of 127.0.0.1, and stops it when the JVM exits:
 * {@code crossinfer-expansion-service} from the Python named by {@link #withPython}, else by the
 * environment variable {@code CROSSINFER_PYTHON}, else {@code python3}. That Python needs the
 * same version of crossinfer as this library ({@link #VERSION}: {@code pip install
 * crossinfer==VERSION}), which is checked before the service starts. The started service admits
 * the Python callables allowed with {@link #withAllow} and nothing else, and reads models from {@link #withModelRoots}/{@link #withTrustedModelRoots}.
 *
 * <p><b>Versions.</b> Every request carries this library's version ({@code client_version}), and
 * any crossinfer expansion service, started here or not, refuses a request from another version,
 * so the pipeline fails at construction with both versions named.
 *
 * <p><b>Local runs.</b> With {@code --runner=PortableRunner --jobEndpoint=localhost:PORT} (Beam's
 * Python job server) and no {@code --defaultEnvironmentType}, the Java stages run in this JVM
 * (LOOPBACK), and the LOOPBACK worker's address is picked when not given.
 *
 * <p><b>Dataflow and other container runs.</b> On the DataflowRunner (or with {@code
 * --defaultEnvironmentType=DOCKER}) {@code apply} fails unless {@link #withSdkContainerImage} names
 * the Python stages' image (or {@link #withExpansionService} a service started with one) and every
 * model is at a URI the workers can read ({@code gs://...}, not a local path). It also fails when
 * the Beam Java jars on the classpath are of more than one version, naming them.
 *
 * <p><b>Only what Python needs crosses.</b> Unless a Python preprocess or postprocess needs whole
 * rows, the input is narrowed to the feature, passthrough and model key fields before it crosses
 * to Python.
 *
 * <p>Instances are immutable: every {@code with…} method returns a new {@code CrossInference}.
 */
public final class CrossInference
    extends PTransform<PCollection<Row>, WithFailures.Result<PCollection<Row>, Row>> {

  private static final long serialVersionUID = 1L;

  /** Fully qualified name of the Python transform this wrapper expands. */
  public static final String PYTHON_TRANSFORM = "crossinfer.Inference";

  /** Output name of the predictions in the Python transform's result. */
  public static final String PREDICTIONS = "predictions";

  /** Output name of the failure rows in the Python transform's result. */
  public static final String FAILURES = "failures";

  /** This library's version: the crossinfer (Python package) version it was built with. */
  public static final String VERSION = readVersion();

  private static final List<String> BUILTIN_POSTPROCESS =
      Arrays.asList("argmax", "regression", "raw");

  // Python kwarg name -> value, already in its wire type (see WireValues). Sorted, so the
  // payload schema is deterministic.
  private final SortedMap<String, Object> kwargs;
  private final @Nullable String expansionService;
  private final LocalExpansionService.Settings service;

  private CrossInference(
      SortedMap<String, Object> kwargs,
      @Nullable String expansionService,
      LocalExpansionService.Settings service) {
    super("CrossInference");
    this.kwargs = Collections.unmodifiableSortedMap(kwargs);
    this.expansionService = expansionService;
    this.service = service;
  }

  private static CrossInference forFramework(String framework) {
    SortedMap<String, Object> kwargs = new TreeMap<>();
    kwargs.put("framework", framework);
    // The handshake: the service refuses a request from another crossinfer version.
    kwargs.put("client_version", VERSION);
    return new CrossInference(kwargs, null, LocalExpansionService.Settings.defaults());
  }

  /**
   * A scikit-learn model: a pickle or joblib file at {@code modelUri} (a local path or any URI
   * Beam's FileSystems read, such as {@code gs://…}). Sends {@code framework="sklearn"} and {@code
   * model_uri}.
   *
   * @param modelUri where the model file is, as seen by the Python side
   * @return a transform for that model
   */
  public static CrossInference sklearn(String modelUri) {
    return sklearn().withModelUri(modelUri);
  }

  /**
   * scikit-learn models named later, with {@link #withModelUri} or {@link #withModels}. Sends
   * {@code framework="sklearn"}.
   *
   * @return a transform for scikit-learn models
   */
  public static CrossInference sklearn() {
    return forFramework("sklearn");
  }

  /**
   * A PyTorch model: a TorchScript file, or a {@code state_dict} when {@link #withModelClass} names
   * the model class. Sends {@code framework="pytorch"} and {@code model_uri}.
   *
   * @param modelUri where the model file is, as seen by the Python side
   * @return a transform for that model
   */
  public static CrossInference pytorch(String modelUri) {
    return pytorch().withModelUri(modelUri);
  }

  /**
   * PyTorch models named later, with {@link #withModelUri} or {@link #withModels}. Sends {@code
   * framework="pytorch"}.
   *
   * @return a transform for PyTorch models
   */
  public static CrossInference pytorch() {
    return forFramework("pytorch");
  }

  /**
   * An ONNX model: a {@code .onnx} file. Sends {@code framework="onnx"} and {@code model_uri}.
   *
   * @param modelUri where the model file is, as seen by the Python side
   * @return a transform for that model
   */
  public static CrossInference onnx(String modelUri) {
    return onnx().withModelUri(modelUri);
  }

  /**
   * ONNX models named later, with {@link #withModelUri} or {@link #withModels}. Sends {@code
   * framework="onnx"}.
   *
   * @return a transform for ONNX models
   */
  public static CrossInference onnx() {
    return forFramework("onnx");
  }

  /**
   * A TensorFlow model: a Keras file ({@code .keras}, {@code .h5}) or a SavedModel directory.
   * Both run code when loaded: an expansion service loads them from a trusted model root only.
   * Sends {@code framework="tensorflow"} and {@code model_uri}.
   *
   * @param modelUri where the model is, as seen by the Python side
   * @return a transform for that model
   */
  public static CrossInference tensorflow(String modelUri) {
    return of("tensorflow", modelUri);
  }

  /**
   * An XGBoost model saved as JSON ({@code .json}) or UBJSON ({@code .ubj}). Sends {@code
   * framework="xgboost"} and {@code model_uri}.
   *
   * @param modelUri where the model file is, as seen by the Python side
   * @return a transform for that model
   */
  public static CrossInference xgboost(String modelUri) {
    return of("xgboost", modelUri);
  }

  /**
   * A model of any framework the Python side registers, by its name (the {@code framework}
   * argument), for frameworks without a named factory here. Sends {@code framework} and {@code
   * model_uri}.
   *
   * @param framework the framework's name, such as {@code "xgboost"}
   * @param modelUri where the model file is, as seen by the Python side
   * @return a transform for that model
   */
  public static CrossInference of(String framework, String modelUri) {
    return of(framework).withModelUri(modelUri);
  }

  /**
   * Models of any registered framework, named later with {@link #withModelUri} or {@link
   * #withModels}. Sends {@code framework}.
   *
   * @param framework the framework's name, such as {@code "tensorflow"}
   * @return a transform for that framework's models
   */
  public static CrossInference of(String framework) {
    return forFramework(notNull("of", "framework", framework));
  }

  /**
   * A model served by your own Beam {@code ModelHandler}: {@code handlerFqn} names a Python
   * callable {@code "package.module:factory"} that returns it, called with the model parameters
   * ({@link #withModelParams}) and the model URI ({@link #withModelUri}, optional). The expansion
   * service must admit it ({@link #withAllow}). Sends {@code framework="custom"} and {@code
   * handler}.
   *
   * @param handlerFqn the factory, as {@code "package.module:factory"}
   * @return a transform for that handler
   */
  public static CrossInference custom(String handlerFqn) {
    return forFramework("custom").with("handler", notNull("custom", "handlerFqn", handlerFqn));
  }

  /**
   * The model file: a local path or any URI Beam's FileSystems read ({@code gs://…}), as the
   * Python side sees it. Replaces {@link #withModels}. Sends {@code model_uri}.
   *
   * @param modelUri where the model file is
   * @return a new transform with this setting
   */
  public CrossInference withModelUri(String modelUri) {
    return without("models", "model_key_field")
        .with("model_uri", notNull("withModelUri", "modelUri", modelUri));
  }

  /**
   * The model class of a PyTorch {@code state_dict}, as {@code "package.module:ClassName"}; the
   * expansion service must admit it ({@link #withAllow}). Sends {@code model_class}.
   *
   * @param modelClass the class, as {@code "package.module:ClassName"}
   * @return a new transform with this setting
   */
  public CrossInference withModelClass(String modelClass) {
    return with("model_class", notNull("withModelClass", "modelClass", modelClass));
  }

  /**
   * Keyword arguments for the model class ({@link #withModelClass}) or the custom handler's
   * factory. Values may be String, Integer, Long, Float, Double, Boolean, a List of one of those,
   * or a nested Map of the same. Sends {@code model_params}, encoded as a schema'd row (one field
   * per key) because Beam's kwargs encoding needs one type per field; Python receives a dict.
   *
   * @param modelParams argument name to value
   * @return a new transform with this setting
   */
  public CrossInference withModelParams(Map<String, ?> modelParams) {
    return withParams("withModelParams", "model_params", modelParams);
  }

  /**
   * The one array field that holds each row's model input (fixed or variable length). Integer
   * arrays stay int64 (token ids); floating arrays become float32. Sends {@code feature_field}.
   *
   * @param field name of an array field of the input rows
   * @return a new transform with this setting
   */
  public CrossInference withFeatureField(String field) {
    return with("feature_field", notNull("withFeatureField", "field", field));
  }

  /**
   * Scalar numeric fields stacked, in this order, into one float32 vector per row. Sends {@code
   * feature_fields}.
   *
   * @param fields names of numeric fields of the input rows
   * @return a new transform with this setting
   */
  public CrossInference withFeatureFields(List<String> fields) {
    return with("feature_fields", WireValues.names("withFeatureFields", fields));
  }

  /**
   * Same as {@link #withFeatureFields(List)}.
   *
   * @param fields names of numeric fields of the input rows
   * @return a new transform with this setting
   */
  public CrossInference withFeatureFields(String... fields) {
    return withFeatureFields(Arrays.asList(notNull("withFeatureFields", "fields", fields)));
  }

  /**
   * Input fields copied unchanged onto each prediction row, for example {@code "id"}. Sends {@code
   * passthrough_fields}.
   *
   * @param fields names of fields of the input rows
   * @return a new transform with this setting
   */
  public CrossInference withPassthroughFields(List<String> fields) {
    return with("passthrough_fields", WireValues.names("withPassthroughFields", fields));
  }

  /**
   * Same as {@link #withPassthroughFields(List)}.
   *
   * @param fields names of fields of the input rows
   * @return a new transform with this setting
   */
  public CrossInference withPassthroughFields(String... fields) {
    return withPassthroughFields(Arrays.asList(notNull("withPassthroughFields", "fields", fields)));
  }

  /**
   * A Python function {@code "package.module:function"} that turns a whole row into the model
   * input, instead of the default feature extraction; the expansion service must admit it ({@link
   * #withAllow}). Whole rows then cross to Python. Sends {@code preprocess}.
   *
   * @param function the function, as {@code "package.module:function"}
   * @return a new transform with this setting
   */
  public CrossInference withPreprocess(String function) {
    return with("preprocess", notNull("withPreprocess", "function", function));
  }

  /**
   * How a model output becomes prediction fields: {@code "argmax"} (the Python default: {@code
   * label}, {@code score}), {@code "regression"} ({@code value}), {@code "raw"} ({@code output}) or
   * a Python function {@code "package.module:function"} admitted by the expansion service (then
   * also set {@link #withOutputSchema}; whole rows then cross to Python, as the function sees the
   * input row). Sends {@code postprocess}.
   *
   * @param postprocess a built-in name or {@code "package.module:function"}
   * @return a new transform with this setting
   */
  public CrossInference withPostprocess(String postprocess) {
    return with("postprocess", notNull("withPostprocess", "postprocess", postprocess));
  }

  /**
   * The prediction fields a custom {@link #withPostprocess postprocess} returns, field name to Beam
   * type name ({@code "int64"}, {@code "float64"}, {@code "string"}, {@code "bool"}, {@code
   * "array<float64>"}, …), in the order the prediction rows get them: pass a {@code LinkedHashMap}
   * (or use {@link #withOutputSchema(String, String, String...)}). Sends {@code output_schema}, as
   * a row of string fields in that order (Python receives a dict).
   *
   * @param schema field name to type name, in field order
   * @return a new transform with this setting
   */
  public CrossInference withOutputSchema(Map<String, String> schema) {
    Map<String, String> ordered = WireValues.stringMap("withOutputSchema", schema);
    checkArgument(!ordered.isEmpty(), "withOutputSchema: the schema is empty; name a field");
    // A row, not a map: its fields keep their order on the wire, and Python reads it as a dict.
    return with("output_schema", WireValues.toRow("withOutputSchema", ordered));
  }

  /**
   * Same as {@link #withOutputSchema(Map)}, with the fields as name, type pairs in order: {@code
   * withOutputSchema("label", "string", "score", "float64")}.
   *
   * @param name the first field's name
   * @param type the first field's type name
   * @param moreNamesAndTypes further name, type pairs
   * @return a new transform with this setting
   */
  public CrossInference withOutputSchema(String name, String type, String... moreNamesAndTypes) {
    notNull("withOutputSchema", "moreNamesAndTypes", moreNamesAndTypes);
    checkArgument(
        moreNamesAndTypes.length % 2 == 0,
        "withOutputSchema: give name, type pairs; %s has no type",
        moreNamesAndTypes.length == 0 ? "" : moreNamesAndTypes[moreNamesAndTypes.length - 1]);
    Map<String, String> schema = new LinkedHashMap<>();
    schema.put(name, type);
    for (int i = 0; i < moreNamesAndTypes.length; i += 2) {
      schema.put(moreNamesAndTypes[i], moreNamesAndTypes[i + 1]);
    }
    return withOutputSchema(schema);
  }

  /**
   * Bounds of the batches handed to the model, as in Beam's RunInference. Sends {@code
   * min_batch_size} and {@code max_batch_size}.
   *
   * @param minBatchSize smallest batch
   * @param maxBatchSize largest batch
   * @return a new transform with this setting
   */
  public CrossInference withBatchSize(int minBatchSize, int maxBatchSize) {
    return withMinBatchSize(minBatchSize).withMaxBatchSize(maxBatchSize);
  }

  /**
   * The smallest batch handed to the model, as in Beam's RunInference. Sends {@code
   * min_batch_size}.
   *
   * @param minBatchSize smallest batch
   * @return a new transform with this setting
   */
  public CrossInference withMinBatchSize(int minBatchSize) {
    return with("min_batch_size", (long) minBatchSize);
  }

  /**
   * The largest batch handed to the model, as in Beam's RunInference; with {@link #withBlocks},
   * the most rows of a block per model call. Sends {@code max_batch_size}.
   *
   * @param maxBatchSize largest batch
   * @return a new transform with this setting
   */
  public CrossInference withMaxBatchSize(int maxBatchSize) {
    return with("max_batch_size", (long) maxBatchSize);
  }

  /**
   * The longest a partial batch waits for more rows, in seconds (streaming-friendly batching).
   * Sends {@code max_batch_duration_secs}.
   *
   * @param seconds the duration
   * @return a new transform with this setting
   */
  public CrossInference withMaxBatchDurationSecs(double seconds) {
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
   * Load exactly this many copies of the model per worker, as Beam's {@code model_copies}. Sends
   * {@code model_copies}.
   *
   * @param copies the number of copies
   * @return a new transform with this setting
   */
  public CrossInference withModelCopies(int copies) {
    return with("model_copies", (long) copies);
  }

  /**
   * Swaps the model while the job runs: every {@code interval} the service's workers look for the
   * newest file matching {@code filePattern} (a local pattern such as {@code "/models/*.onnx"} or
   * {@code "gs://bucket/models/*.pkl"}) written since the job started. A new file is checked like
   * the first model (the service's model roots, isolated inspection) and must have the running
   * model's inputs and outputs; it then scores every window that ends after it was found, and
   * {@code model_id} on each prediction names the file. A refused file is logged and counted
   * (Beam counter {@code crossinfer/model_updates_refused}) and the running model keeps serving.
   * The input must be windowed (for example {@code Window.into(FixedWindows.of(...))}); each
   * window's rows are scored when it closes. Give each new model a new file name. Sends {@code
   * model_updates} and {@code model_update_interval_secs}.
   *
   * @param filePattern the files to watch, under the service's model roots
   * @param interval how often to look, at least one millisecond
   * @return a new transform with this setting
   */
  public CrossInference withModelUpdates(String filePattern, Duration interval) {
    notNull("withModelUpdates", "filePattern", filePattern);
    notNull("withModelUpdates", "interval", interval);
    checkArgument(
        interval.getMillis() > 0,
        "withModelUpdates: interval must be positive, got %s",
        interval);
    return with("model_updates", filePattern)
        .with("model_update_interval_secs", interval.getMillis() / 1000.0);
  }

  /**
   * Whether each input row is a block of many rows, column by column: every passthrough field and
   * the feature field hold one value per row (the feature field a 2-D array, or a flat one of rows
   * times width numbers). Predictions then come out as one block row per input block, with array
   * fields; failures stay one row each. Sends {@code blocks}.
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
   * Several models: each row's {@code keyField} value picks its model from {@code models}, all of
   * the factory's framework. Replaces {@link #withModelUri}. Sends {@code model_key_field} and
   * {@code models}.
   *
   * @param keyField name of the input field whose value is a key of {@code models}
   * @param models key to model URI
   * @return a new transform with this setting
   */
  public CrossInference withModels(String keyField, Map<String, String> models) {
    return without("model_uri")
        .with("model_key_field", notNull("withModels", "keyField", keyField))
        .with("models", WireValues.stringMap("withModels", models));
  }

  /**
   * Where the model runs: {@code "CPU"} (the Python default) or {@code "GPU"}. Sends {@code
   * device}.
   *
   * @param device {@code "CPU"} or {@code "GPU"}
   * @return a new transform with this setting
   */
  public CrossInference withDevice(String device) {
    return with("device", notNull("withDevice", "device", device));
  }

  /**
   * The shape of one row's model input, stated instead of read off the model: {@code 32} (a fixed
   * width) or {@code -1} (a sequence of any length). Sends {@code input_shape}.
   *
   * @param shape the dimensions of one row's input; -1 for a variable one
   * @return a new transform with this setting
   */
  public CrossInference withInputShape(int... shape) {
    return with("input_shape", new WireValues.LongList(notNull("withInputShape", "shape", shape)));
  }

  /**
   * The element type the model takes, stated instead of read off the model: {@code "float32"},
   * {@code "int64"}, …. Sends {@code input_dtype}.
   *
   * @param dtype a numpy dtype name
   * @return a new transform with this setting
   */
  public CrossInference withInputDtype(String dtype) {
    return with("input_dtype", notNull("withInputDtype", "dtype", dtype));
  }

  /**
   * The value sequences are padded with in a batch (for token ids: the padding token's id). Sends
   * {@code pad_value} as an int.
   *
   * @param padValue the padding value
   * @return a new transform with this setting
   */
  public CrossInference withPadValue(long padValue) {
    return with("pad_value", padValue);
  }

  /**
   * The value float sequences are padded with in a batch. Sends {@code pad_value} as a float.
   *
   * @param padValue the padding value
   * @return a new transform with this setting
   */
  public CrossInference withPadValue(double padValue) {
    return with("pad_value", padValue);
  }

  /**
   * What the model returns, stated instead of read off the model: {@code "probabilities"}, {@code
   * "logits"}, {@code "value"} or {@code "named"}. Sends {@code output}.
   *
   * @param output what the model's output is
   * @return a new transform with this setting
   */
  public CrossInference withOutput(String output) {
    return with("output", notNull("withOutput", "output", output));
  }

  /**
   * Plain values passed to Beam's model handler on every call, as RunInference's {@code
   * inference_args}. Values as for {@link #withModelParams}. Sends {@code inference_args}.
   *
   * @param inferenceArgs argument name to value
   * @return a new transform with this setting
   */
  public CrossInference withInferenceArgs(Map<String, ?> inferenceArgs) {
    return withParams("withInferenceArgs", "inference_args", inferenceArgs);
  }

  /**
   * The name of each class, in the order of the model's outputs; with the default {@code argmax}
   * postprocess the predictions get a {@code label_name} string field (they get it without this for
   * models whose classes are strings). Sends {@code labels}.
   *
   * @param labels one name per class
   * @return a new transform with this setting
   */
  public CrossInference withLabels(List<String> labels) {
    return with("labels", WireValues.names("withLabels", labels));
  }

  /**
   * Same as {@link #withLabels(List)}.
   *
   * @param labels one name per class
   * @return a new transform with this setting
   */
  public CrossInference withLabels(String... labels) {
    return withLabels(Arrays.asList(notNull("withLabels", "labels", labels)));
  }

  /**
   * For a model that returns several outputs (a tuple, several ONNX outputs): the position of the
   * one to use. Sends {@code output_index}.
   *
   * @param index the output's position, from 0
   * @return a new transform with this setting
   */
  public CrossInference withOutputIndex(int index) {
    return with("output_index", (long) index);
  }

  /**
   * Environment variables set on each worker before the model loads (Beam's {@code env_vars}).
   * Sends {@code env_vars}.
   *
   * @param envVars variable name to value
   * @return a new transform with this setting
   */
  public CrossInference withEnvVars(Map<String, String> envVars) {
    return with("env_vars", WireValues.stringMap("withEnvVars", envVars));
  }

  /**
   * Keyword arguments for {@code torch.load} when loading a PyTorch state_dict (Beam's {@code
   * load_model_args}), for example {@code weights_only=false} for a trusted file. Sends {@code
   * load_model_args}.
   *
   * @param loadModelArgs argument name to value
   * @return a new transform with this setting
   */
  public CrossInference withLoadModelArgs(Map<String, ?> loadModelArgs) {
    return withParams("withLoadModelArgs", "load_model_args", loadModelArgs);
  }

  /**
   * The model file's format, stated instead of read off its name: {@code "pickle"} or {@code
   * "joblib"} (scikit-learn), {@code "state_dict"}, {@code "safetensors"} or {@code "torchscript"}
   * (PyTorch). Sends {@code model_file_type}.
   *
   * @param type the format
   * @return a new transform with this setting
   */
  public CrossInference withModelFileType(String type) {
    return with("model_file_type", notNull("withModelFileType", "type", type));
  }

  /**
   * With {@link #withModels}: at most this many models held in memory per worker at once (Beam's
   * {@code max_models_per_worker_hint}). Sends {@code max_models_per_worker_hint}.
   *
   * @param hint the number of models
   * @return a new transform with this setting
   */
  public CrossInference withMaxModelsPerWorkerHint(int hint) {
    return with("max_models_per_worker_hint", (long) hint);
  }

  /**
   * The running crossinfer expansion service that expands this transform, as {@code "host:port"},
   * for example {@code "localhost:8097"} after {@code crossinfer-expansion-service --port 8097}.
   * Without it, this library starts a service itself (see the class documentation).
   *
   * @param hostPort address of the expansion service
   * @return a new transform with this setting
   */
  public CrossInference withExpansionService(String hostPort) {
    notNull("withExpansionService", "hostPort", hostPort);
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
        "withExpansionService: \"%s\" is not an address; give \"host:port\", e.g. "
            + "\"localhost:8097\"",
        hostPort);
    return new CrossInference(new TreeMap<>(kwargs), hostPort, service);
  }

  /**
   * The Python whose {@code crossinfer-expansion-service} this library starts when no {@link
   * #withExpansionService address} is given, for example a virtualenv's {@code
   * /opt/venv/bin/python}. Default: the environment variable {@code CROSSINFER_PYTHON}, else
   * {@code python3}.
   *
   * @param python path or command name of a Python that has crossinfer installed
   * @return a new transform with this setting
   */
  public CrossInference withPython(String python) {
    notNull("withPython", "python", python);
    return withService(
        new LocalExpansionService.Settings(
            python,
            service.allow,
            service.modelRoots,
            service.trustedModelRoots,
            service.sdkContainerImage));
  }

  /**
   * Python callables the started expansion service admits for preprocess, postprocess, handler
   * and model class: globs such as {@code "mypkg.features.*"} ({@code --allow}). Without them no
   * callable of yours resolves.
   *
   * @param globs one glob per package or module of yours
   * @return a new transform with this setting
   */
  public CrossInference withAllow(String... globs) {
    return withService(
        new LocalExpansionService.Settings(
            service.python,
            WireValues.names("withAllow", Arrays.asList(notNull("withAllow", "globs", globs))),
            service.modelRoots,
            service.trustedModelRoots,
            service.sdkContainerImage));
  }

  /**
   * Where the started expansion service may read model files from ({@code --model-root}): local
   * directories or {@code gs://bucket/path/} prefixes. Files that are code when loaded (pickle,
   * joblib, TorchScript) also need {@link #withTrustedModelRoots}.
   *
   * @param roots directory or URI prefixes
   * @return a new transform with this setting
   */
  public CrossInference withModelRoots(String... roots) {
    return withService(
        new LocalExpansionService.Settings(
            service.python,
            service.allow,
            WireValues.names(
                "withModelRoots", Arrays.asList(notNull("withModelRoots", "roots", roots))),
            service.trustedModelRoots,
            service.sdkContainerImage));
  }

  /**
   * Where the started expansion service may load model files that are code (pickle, joblib,
   * TorchScript) from ({@code --trusted-model-root}).
   *
   * @param roots directory or URI prefixes whose files you trust to run
   * @return a new transform with this setting
   */
  public CrossInference withTrustedModelRoots(String... roots) {
    return withService(
        new LocalExpansionService.Settings(
            service.python,
            service.allow,
            service.modelRoots,
            WireValues.names(
                "withTrustedModelRoots",
                Arrays.asList(notNull("withTrustedModelRoots", "roots", roots))),
            service.sdkContainerImage));
  }

  /**
   * The Docker image the Python stages run in, for Dataflow ({@code --sdk-container-image} of the
   * started expansion service): Beam's Python SDK image with crossinfer installed. Without it the
   * started service runs the Python stages itself (local runs only).
   *
   * @param image a container image the workers can pull
   * @return a new transform with this setting
   */
  public CrossInference withSdkContainerImage(String image) {
    return withService(
        new LocalExpansionService.Settings(
            service.python,
            service.allow,
            service.modelRoots,
            service.trustedModelRoots,
            notNull("withSdkContainerImage", "image", image)));
  }

  /**
   * Expands {@code crossinfer.Inference} on the expansion service and returns its two outputs.
   *
   * @param input rows with a schema
   * @return predictions as output, failure rows as failures
   */
  @Override
  public WithFailures.Result<PCollection<Row>, Row> expand(PCollection<Row> input) {
    checkArgument(
        input.hasSchema(),
        "CrossInference needs rows with a schema: call setRowSchema(schema) on the input");
    BeamVersions.checkOneVersion(CrossInference.class.getClassLoader());
    ContainerRuns.check(
        input.getPipeline().getOptions(), kwargs, expansionService == null, service.sdkContainerImage);
    LocalRuns.prepare(input.getPipeline().getOptions());
    String address = expansionServiceAddress();
    PCollection<Row> projected = project(input);
    // --- boundary blocks (BoundaryBlocks): begin ---
    boolean blocked = BoundaryBlocks.applies(kwargs);
    PCollection<Row> toPython = blocked ? BoundaryBlocks.group(projected, kwargs) : projected;
    CrossInference sent = blocked ? with("blocks", true) : this;
    // --- boundary blocks: end ---
    POutput output;
    try {
      output = toPython.apply("Inference", sent.toPythonTransform(address));
    } catch (RuntimeException e) {
      // Beam's own message, "Timeout waiting for Python service startup", suggests Beam was
      // starting a service; here nothing answered at the address.
      if (e.getCause() instanceof TimeoutException) {
        throw new IllegalStateException(
            String.format(
                "CrossInference: no expansion service answers at %s; start "
                    + "`crossinfer-expansion-service --port PORT` and pass its address to "
                    + "withExpansionService, or leave withExpansionService out to have one "
                    + "started",
                address),
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

  /**
   * Shows the keyword arguments sent to Python and the expansion service, for example in the
   * Dataflow UI.
   *
   * @param builder the display data builder
   */
  @Override
  public void populateDisplayData(DisplayData.Builder builder) {
    super.populateDisplayData(builder);
    builder.add(DisplayData.item("pythonTransform", PYTHON_TRANSFORM).withLabel("Python transform"));
    builder.add(DisplayData.item("crossinferVersion", VERSION).withLabel("crossinfer version"));
    for (Map.Entry<String, Object> kwarg : kwargs.entrySet()) {
      builder.add(
          DisplayData.item(kwarg.getKey(), String.valueOf(kwarg.getValue()))
              .withLabel(kwarg.getKey()));
    }
    builder.add(
        DisplayData.item(
                "expansionService",
                expansionService != null
                    ? expansionService
                    : "started by CrossInference: " + service)
            .withLabel("Expansion service"));
  }

  /** The Python kwargs as sent, for tests: name to wire value. */
  SortedMap<String, Object> kwargs() {
    return kwargs;
  }

  /** The expansion service address, or null if one is to be started. */
  @Nullable String expansionService() {
    return expansionService;
  }

  /** The settings of the service started when no address is given. */
  LocalExpansionService.Settings serviceSettings() {
    return service;
  }

  /** The keyword arguments as the row Beam sends to Python: one field per kwarg. */
  Row kwargsRow() {
    Schema.Builder schema = Schema.builder();
    List<Object> values = new ArrayList<>();
    for (Map.Entry<String, Object> kwarg : kwargs.entrySet()) {
      if (kwarg.getKey().equals(BoundaryBlocks.SWITCH)) {
        continue; // --- boundary blocks: a Java-side switch, not a Python kwarg
      }
      schema.addField(kwarg.getKey(), WireValues.wireType(kwarg.getValue()));
      values.add(kwarg.getValue());
    }
    return Row.withSchema(schema.build()).addValues(values).build();
  }

  /** The Beam transform that calls {@code crossinfer.Inference} on the service at {@code address}. */
  PythonExternalTransform<PCollection<Row>, POutput> toPythonTransform(String address) {
    // A Row, not a Map: Beam infers a Map value's field type from its runtime class and cannot
    // encode lists, maps or mixed types that way.
    return PythonExternalTransform.<PCollection<Row>, POutput>from(PYTHON_TRANSFORM, address)
        .withKwargs(kwargsRow());
  }

  /**
   * The fields Python reads from each input row, or null when it needs whole rows (a Python
   * preprocess reads any field; a custom postprocess sees the input row).
   */
  @Nullable List<String> fieldsPythonReads() {
    Object postprocess = kwargs.get("postprocess");
    if (kwargs.containsKey("preprocess")
        || (postprocess != null && !BUILTIN_POSTPROCESS.contains(postprocess))) {
      return null;
    }
    List<String> fields = new ArrayList<>();
    for (String kwarg :
        Arrays.asList("feature_field", "feature_fields", "passthrough_fields", "model_key_field")) {
      Object value = kwargs.get(kwarg);
      if (value instanceof String) {
        fields.add((String) value);
      } else if (value instanceof List) {
        for (Object name : (List<?>) value) {
          fields.add((String) name);
        }
      }
    }
    return fields;
  }

  // Narrows the rows to the fields Python reads, in the input's field order. A field the input
  // lacks is left for the Python side to report, with the whole row to show.
  private PCollection<Row> project(PCollection<Row> input) {
    List<String> needed = fieldsPythonReads();
    Schema schema = input.getSchema();
    if (needed == null
        || needed.isEmpty()
        || !needed.stream().allMatch(schema::hasField)
        || needed.containsAll(schema.getFieldNames())) {
      return input;
    }
    List<String> ordered = new ArrayList<>();
    for (String field : schema.getFieldNames()) {
      if (needed.contains(field)) {
        ordered.add(field);
      }
    }
    return input.apply("SelectFieldsPythonReads", Select.fieldNames(ordered.toArray(new String[0])));
  }

  private String expansionServiceAddress() {
    if (expansionService != null) {
      return expansionService;
    }
    return LocalExpansionService.addressFor(service, VERSION);
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

  private static void withRowSchema(PCollectionTuple tuple, TupleTag<Row> tag) {
    checkState(
        tuple.has(tag),
        "%s returned no output named \"%s\"; it returned %s",
        PYTHON_TRANSFORM,
        tag.getId(),
        tuple.getAll().keySet());
    PCollection<Row> rows = tuple.get(tag);
    Coder<Row> coder = rows.getCoder();
    checkState(
        coder instanceof SchemaCoder,
        "%s output \"%s\" is not schema'd rows (coder %s); the Python side must emit beam.Row",
        PYTHON_TRANSFORM,
        tag.getId(),
        coder);
    // A rehydrated RowCoder is already a SchemaCoder; set the schema only when Beam did not.
    if (!rows.hasSchema()) {
      rows.setRowSchema(((SchemaCoder<Row>) coder).getSchema());
    }
  }

  private CrossInference with(String name, Object value) {
    SortedMap<String, Object> copy = new TreeMap<>(kwargs);
    copy.put(name, value);
    return new CrossInference(copy, expansionService, service);
  }

  private CrossInference without(String... names) {
    SortedMap<String, Object> copy = new TreeMap<>(kwargs);
    for (String name : names) {
      copy.remove(name);
    }
    return new CrossInference(copy, expansionService, service);
  }

  private CrossInference withService(LocalExpansionService.Settings settings) {
    return new CrossInference(new TreeMap<>(kwargs), expansionService, settings);
  }

  private CrossInference withParams(String method, String kwarg, @Nullable Map<String, ?> params) {
    notNull(method, "the map", params);
    if (params.isEmpty()) {
      // An empty row has no fields to decode into a dict; an empty map arrives as {}.
      return with(kwarg, Collections.<String, String>emptyMap());
    }
    return with(kwarg, WireValues.toRow(method, params));
  }

  private static <T> T notNull(String method, String param, @Nullable T value) {
    checkArgument(value != null, "%s: %s is null", method, param);
    return value;
  }

  private static String readVersion() {
    Properties properties = new Properties();
    try (InputStream in = CrossInference.class.getResourceAsStream("crossinfer.properties")) {
      checkState(in != null, "io/crossinfer/crossinfer.properties is missing from the jar");
      properties.load(in);
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
    return properties.getProperty("version");
  }
}
