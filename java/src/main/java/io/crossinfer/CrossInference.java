package io.crossinfer;

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
import org.apache.beam.sdk.extensions.python.PythonExternalTransform;
import org.apache.beam.sdk.schemas.Schema;
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
 * The methods that send one value each, and the framework factories, are generated from the
 * Python argument table and framework registry (between the GENERATED markers below, by {@code
 * python -m crossinfer._javagen}), so the two sides name the same arguments.
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
 * same version of crossinfer as this library ({@link #VERSION}: {@code pip install .} from the
 * root of a crossinfer checkout of that version), which is checked before the service starts.
 * The started service admits the Python callables allowed with {@link #withAllow} and nothing
 * else, and reads models from {@link #withModelRoots}/{@link #withTrustedModelRoots}.
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
    this.kwargs = Collections.unmodifiableSortedMap(new TreeMap<>(kwargs));
    this.expansionService = expansionService;
    this.service = service;
  }

  /**
   * A model of any framework the Python side registers, by its name (the {@code framework}
   * argument). Sends {@code framework} and {@code model_uri}.
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
    SortedMap<String, Object> kwargs = new TreeMap<>();
    kwargs.put("framework", WireValues.notNull("of", "framework", framework));
    // The handshake: the service refuses a request from another crossinfer version.
    kwargs.put("client_version", VERSION);
    return new CrossInference(kwargs, null, LocalExpansionService.Settings.defaults());
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
    return CrossInference.of("custom")
        .with("handler", WireValues.notNull("custom", "handlerFqn", handlerFqn));
  }

  /**
   * The running crossinfer expansion service that expands this transform, as {@code "host:port"},
   * for example {@code "localhost:8097"} after {@code crossinfer-expansion-service --port 8097}.
   * Without it, this library starts a service itself (see {@link CrossInference}).
   *
   * @param hostPort address of the expansion service
   * @return a new transform with this setting
   */
  public CrossInference withExpansionService(String hostPort) {
    WireValues.notNull("withExpansionService", "hostPort", hostPort);
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
    return withService(hostPort, serviceSettings());
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
        .with("model_uri", WireValues.notNull("withModelUri", "modelUri", modelUri));
  }

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
        .with("model_key_field", WireValues.notNull("withModels", "keyField", keyField))
        .with("models", WireValues.stringMap("withModels", models));
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
    WireValues.notNull("withOutputSchema", "moreNamesAndTypes", moreNamesAndTypes);
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
    WireValues.notNull("withModelUpdates", "filePattern", filePattern);
    WireValues.notNull("withModelUpdates", "interval", interval);
    checkArgument(
        interval.getMillis() > 0, "withModelUpdates: interval must be positive, got %s", interval);
    return with("model_updates", filePattern)
        .with("model_update_interval_secs", interval.getMillis() / 1000.0);
  }

  /**
   * Whether rows cross to Python in column blocks (thousands of rows per element, grouped per
   * bundle and window) rather than one element per row. On by default wherever the Python block
   * path takes the configuration (not with a preprocess or custom postprocess function, a custom
   * handler, several models, {@link #withBatchSize} or {@link #withMaxBatchDurationSecs}); the
   * output rows, their schema and the failures are the same either way, and a failure's {@code
   * element} holds the fields the model reads or passes through. Turn it off to send one element
   * per row; turning it on with a setting it cannot take is an error. Not sent to Python.
   *
   * @param on true to group rows into blocks across the boundary
   * @return a new transform with this setting
   */
  public CrossInference withBoundaryBlocks(boolean on) {
    CrossInference copy = with(BoundaryBlocks.SWITCH, on);
    BoundaryBlocks.applies(copy.kwargs()); // fails now if the configuration cannot take it
    return copy;
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
    String checked = WireValues.notNull("withPython", "python", python);
    return withService(expansionService(), serviceSettings().withPython(checked));
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
    List<String> checked = list("withAllow", globs);
    return withService(expansionService(), serviceSettings().withAllow(checked));
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
    List<String> checked = list("withModelRoots", roots);
    return withService(expansionService(), serviceSettings().withModelRoots(checked));
  }

  /**
   * Where the started expansion service may load model files that are code (pickle, joblib,
   * TorchScript) from ({@code --trusted-model-root}).
   *
   * @param roots directory or URI prefixes whose files you trust to run
   * @return a new transform with this setting
   */
  public CrossInference withTrustedModelRoots(String... roots) {
    List<String> checked = list("withTrustedModelRoots", roots);
    return withService(expansionService(), serviceSettings().withTrustedModelRoots(checked));
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
    String checked = WireValues.notNull("withSdkContainerImage", "image", image);
    return withService(expansionService(), serviceSettings().withSdkContainerImage(checked));
  }

  // BEGIN GENERATED by `python -m crossinfer._javagen` from the argument table; do not edit.
  /**
   * A model of framework {@code sklearn} at {@code modelUri} (a local path or any URI Beam's
   * FileSystems read, such as {@code gs://…}): a pickle, or joblib for {@code .joblib}. It runs
   * code when loaded (a pickle/joblib file): an expansion service loads it from a trusted model
   * root only. Sends {@code framework="sklearn"} and {@code model_uri}.
   *
   * @param modelUri where the model is, as seen by the Python side
   * @return a transform for that model
   */
  public static CrossInference sklearn(String modelUri) {
    return CrossInference.of("sklearn", modelUri);
  }

  /**
   * Models of framework {@code sklearn}, named later with {@link CrossInference#withModelUri} or
   * {@link CrossInference#withModels}. Sends {@code framework="sklearn"}.
   *
   * @return a transform for sklearn models
   */
  public static CrossInference sklearn() {
    return CrossInference.of("sklearn");
  }

  /**
   * A model of framework {@code pytorch} at {@code modelUri} (a local path or any URI Beam's
   * FileSystems read, such as {@code gs://…}): a state_dict ({@code torch.save} or {@code
   * .safetensors}) with {@code model_class}, or TorchScript without. It runs code when loaded (a
   * TorchScript file): an expansion service loads it from a trusted model root only. Sends {@code
   * framework="pytorch"} and {@code model_uri}.
   *
   * @param modelUri where the model is, as seen by the Python side
   * @return a transform for that model
   */
  public static CrossInference pytorch(String modelUri) {
    return CrossInference.of("pytorch", modelUri);
  }

  /**
   * Models of framework {@code pytorch}, named later with {@link CrossInference#withModelUri} or
   * {@link CrossInference#withModels}. Sends {@code framework="pytorch"}.
   *
   * @return a transform for pytorch models
   */
  public static CrossInference pytorch() {
    return CrossInference.of("pytorch");
  }

  /**
   * A model of framework {@code onnx} at {@code modelUri} (a local path or any URI Beam's
   * FileSystems read, such as {@code gs://…}): {@code .onnx}. Sends {@code framework="onnx"} and
   * {@code model_uri}.
   *
   * @param modelUri where the model is, as seen by the Python side
   * @return a transform for that model
   */
  public static CrossInference onnx(String modelUri) {
    return CrossInference.of("onnx", modelUri);
  }

  /**
   * Models of framework {@code onnx}, named later with {@link CrossInference#withModelUri} or
   * {@link CrossInference#withModels}. Sends {@code framework="onnx"}.
   *
   * @return a transform for onnx models
   */
  public static CrossInference onnx() {
    return CrossInference.of("onnx");
  }

  /**
   * A model of framework {@code tensorflow} at {@code modelUri} (a local path or any URI Beam's
   * FileSystems read, such as {@code gs://…}): a SavedModel directory, or a Keras {@code .keras} /
   * {@code .h5} file. It runs code when loaded (a SavedModel or Keras file): an expansion service
   * loads it from a trusted model root only. Sends {@code framework="tensorflow"} and {@code
   * model_uri}.
   *
   * @param modelUri where the model is, as seen by the Python side
   * @return a transform for that model
   */
  public static CrossInference tensorflow(String modelUri) {
    return CrossInference.of("tensorflow", modelUri);
  }

  /**
   * Models of framework {@code tensorflow}, named later with {@link CrossInference#withModelUri} or
   * {@link CrossInference#withModels}. Sends {@code framework="tensorflow"}.
   *
   * @return a transform for tensorflow models
   */
  public static CrossInference tensorflow() {
    return CrossInference.of("tensorflow");
  }

  /**
   * A model of framework {@code xgboost} at {@code modelUri} (a local path or any URI Beam's
   * FileSystems read, such as {@code gs://…}): XGBoost's JSON ({@code .json}) or UBJSON ({@code
   * .ubj}) model. Sends {@code framework="xgboost"} and {@code model_uri}.
   *
   * @param modelUri where the model is, as seen by the Python side
   * @return a transform for that model
   */
  public static CrossInference xgboost(String modelUri) {
    return CrossInference.of("xgboost", modelUri);
  }

  /**
   * Models of framework {@code xgboost}, named later with {@link CrossInference#withModelUri} or
   * {@link CrossInference#withModels}. Sends {@code framework="xgboost"}.
   *
   * @return a transform for xgboost models
   */
  public static CrossInference xgboost() {
    return CrossInference.of("xgboost");
  }

  /**
   * pytorch state_dict: {@code "pkg.module:Class"}, the {@code torch.nn.Module} to load it into.
   * Sends {@code model_class}.
   *
   * @param modelClass the value of {@code model_class}
   * @return a new transform with this setting
   */
  public CrossInference withModelClass(String modelClass) {
    return with("model_class", WireValues.notNull("withModelClass", "modelClass", modelClass));
  }

  /**
   * Keyword arguments for {@code model_class} (pytorch) or the handler factory (custom). Values may
   * be String, Integer, Long, Float, Double, Boolean, a List of one of those, or a nested Map of
   * the same; sent as a row, one field per key (Beam's kwargs encoding needs one type per field),
   * which Python receives as a dict. Sends {@code model_params}.
   *
   * @param modelParams the value of {@code model_params}
   * @return a new transform with this setting
   */
  public CrossInference withModelParams(Map<String, ?> modelParams) {
    return with("model_params", WireValues.params("withModelParams", modelParams));
  }

  /**
   * One array field holding the model input (fixed or variable length). Integer arrays stay int64
   * (token ids); floating arrays become float32. Sends {@code feature_field}.
   *
   * @param featureField the value of {@code feature_field}
   * @return a new transform with this setting
   */
  public CrossInference withFeatureField(String featureField) {
    return with(
        "feature_field", WireValues.notNull("withFeatureField", "featureField", featureField));
  }

  /**
   * Scalar numeric fields stacked in order into one vector. Sends {@code feature_fields}.
   *
   * @param featureFields the value of {@code feature_fields}
   * @return a new transform with this setting
   */
  public CrossInference withFeatureFields(List<String> featureFields) {
    return with("feature_fields", WireValues.names("withFeatureFields", featureFields));
  }

  /**
   * Same as {@link #withFeatureFields(List)}.
   *
   * @param featureFields the value of {@code feature_fields}
   * @return a new transform with this setting
   */
  public CrossInference withFeatureFields(String... featureFields) {
    WireValues.notNull("withFeatureFields", "featureFields", featureFields);
    return withFeatureFields(Arrays.asList(featureFields));
  }

  /**
   * Input fields copied unchanged onto each prediction. Sends {@code passthrough_fields}.
   *
   * @param passthroughFields the value of {@code passthrough_fields}
   * @return a new transform with this setting
   */
  public CrossInference withPassthroughFields(List<String> passthroughFields) {
    return with("passthrough_fields", WireValues.names("withPassthroughFields", passthroughFields));
  }

  /**
   * Same as {@link #withPassthroughFields(List)}.
   *
   * @param passthroughFields the value of {@code passthrough_fields}
   * @return a new transform with this setting
   */
  public CrossInference withPassthroughFields(String... passthroughFields) {
    WireValues.notNull("withPassthroughFields", "passthroughFields", passthroughFields);
    return withPassthroughFields(Arrays.asList(passthroughFields));
  }

  /**
   * {@code "pkg.module:function"}: row -&gt; model input. The expansion service must admit it
   * ({@code withAllow}); whole rows then cross to Python. Sends {@code preprocess}.
   *
   * @param preprocess the value of {@code preprocess}
   * @return a new transform with this setting
   */
  public CrossInference withPreprocess(String preprocess) {
    return with("preprocess", WireValues.notNull("withPreprocess", "preprocess", preprocess));
  }

  /**
   * {@code "argmax"} ({@code label}, {@code score}), {@code "regression"} ({@code value}), {@code
   * "raw"} ({@code output: array<float64>}) or {@code "pkg.module:function"} taking Beam's {@code
   * PredictionResult(example=<input row>, inference=<the model's output for the row>, model_id)}
   * and returning a dict (sklearn: {@code predict_proba} for a classifier, {@code predict} with
   * {@code output="value"}). A function must be admitted by the expansion service ({@code
   * withAllow}) and needs {@code withOutputSchema}; whole rows then cross to Python. Sends {@code
   * postprocess}.
   *
   * @param postprocess the value of {@code postprocess}
   * @return a new transform with this setting
   */
  public CrossInference withPostprocess(String postprocess) {
    return with("postprocess", WireValues.notNull("withPostprocess", "postprocess", postprocess));
  }

  /**
   * Beam's batching: fewest rows per model call. Sends {@code min_batch_size}.
   *
   * @param minBatchSize the value of {@code min_batch_size}
   * @return a new transform with this setting
   */
  public CrossInference withMinBatchSize(int minBatchSize) {
    return with("min_batch_size", (long) minBatchSize);
  }

  /**
   * Beam's batching: most rows per model call. With {@code withBlocks}, the most rows of a block
   * per model call. Sends {@code max_batch_size}.
   *
   * @param maxBatchSize the value of {@code max_batch_size}
   * @return a new transform with this setting
   */
  public CrossInference withMaxBatchSize(int maxBatchSize) {
    return with("max_batch_size", (long) maxBatchSize);
  }

  /**
   * Longest wait for a batch (streaming-friendly batching). Sends {@code max_batch_duration_secs}.
   *
   * @param maxBatchDurationSecs the value of {@code max_batch_duration_secs}
   * @return a new transform with this setting
   */
  public CrossInference withMaxBatchDurationSecs(double maxBatchDurationSecs) {
    return with("max_batch_duration_secs", maxBatchDurationSecs);
  }

  /**
   * One copy of the model per machine, shared by its worker processes. Sends {@code large_model}.
   *
   * @param largeModel the value of {@code large_model}
   * @return a new transform with this setting
   */
  public CrossInference withLargeModel(boolean largeModel) {
    return with("large_model", largeModel);
  }

  /**
   * Exactly this many copies of the model per machine, shared by its processes. Sends {@code
   * model_copies}.
   *
   * @param modelCopies the value of {@code model_copies}
   * @return a new transform with this setting
   */
  public CrossInference withModelCopies(int modelCopies) {
    return with("model_copies", (long) modelCopies);
  }

  /**
   * Several models: key -&gt; model_uri (Beam's KeyedModelHandler). Sends {@code models}.
   *
   * @param models the value of {@code models}
   * @return a new transform with this setting
   */
  public CrossInference withModels(Map<String, String> models) {
    return with("models", WireValues.stringMap("withModels", models));
  }

  /**
   * Where the model runs. Sends {@code device}.
   *
   * @param device the value of {@code device}
   * @return a new transform with this setting
   */
  public CrossInference withDevice(String device) {
    return with("device", WireValues.notNull("withDevice", "device", device));
  }

  /**
   * Each input element holds many rows column by column (see Blocks). Every passthrough field and
   * the feature field then hold one value per row; predictions come out as one block row per input
   * block, failures one row each. Sends {@code blocks}.
   *
   * @param blocks the value of {@code blocks}
   * @return a new transform with this setting
   */
  public CrossInference withBlocks(boolean blocks) {
    return with("blocks", blocks);
  }

  /**
   * One row's model input, stated instead of read off the model: {@code [32]} (fixed width), {@code
   * [-1]} (a sequence), {@code [-1, 16]}. Sends {@code input_shape}.
   *
   * @param inputShape the value of {@code input_shape}
   * @return a new transform with this setting
   */
  public CrossInference withInputShape(int... inputShape) {
    return with(
        "input_shape",
        new WireValues.LongList(WireValues.notNull("withInputShape", "inputShape", inputShape)));
  }

  /**
   * The model input's dtype, stated instead of read off the model ({@code "string"}: an array of
   * strings per row, for a TensorFlow model that starts with {@code StringLookup} / {@code
   * TextVectorization}). Sends {@code input_dtype}.
   *
   * @param inputDtype the value of {@code input_dtype}
   * @return a new transform with this setting
   */
  public CrossInference withInputDtype(String inputDtype) {
    return with("input_dtype", WireValues.notNull("withInputDtype", "inputDtype", inputDtype));
  }

  /**
   * The value sequences are padded with (e.g. the tokenizer's pad id); stated instead of read off
   * the model ({@code Embedding.padding_idx}). Sends {@code pad_value}.
   *
   * @param padValue the value of {@code pad_value}
   * @return a new transform with this setting
   */
  public CrossInference withPadValue(double padValue) {
    return with("pad_value", padValue);
  }

  /**
   * Same as {@link #withPadValue(double)}, sent as an int.
   *
   * @param padValue the value of {@code pad_value}
   * @return a new transform with this setting
   */
  public CrossInference withPadValue(long padValue) {
    return with("pad_value", padValue);
  }

  /**
   * What the model returns per row: {@code "probabilities"}, {@code "logits"}, {@code "value"}
   * (regression) or {@code "named"} (a dict of arrays, for a custom postprocess); read off the
   * model where its metadata says, else needed by {@code argmax}. Sends {@code output}.
   *
   * @param output the value of {@code output}
   * @return a new transform with this setting
   */
  public CrossInference withOutput(String output) {
    return with("output", WireValues.notNull("withOutput", "output", output));
  }

  /**
   * Plain values passed to the model call on every batch (Beam's {@code inference_args}). Values
   * may be String, Integer, Long, Float, Double, Boolean, a List of one of those, or a nested Map
   * of the same; sent as a row, one field per key (Beam's kwargs encoding needs one type per
   * field), which Python receives as a dict. Sends {@code inference_args}.
   *
   * @param inferenceArgs the value of {@code inference_args}
   * @return a new transform with this setting
   */
  public CrossInference withInferenceArgs(Map<String, ?> inferenceArgs) {
    return with("inference_args", WireValues.params("withInferenceArgs", inferenceArgs));
  }

  /**
   * With {@code "argmax"}: the name of each class, in the order of the model's outputs; adds {@code
   * label_name: string} (added on its own for string classes: sklearn {@code classes_}, an ONNX
   * classifier's labels). Sends {@code labels}.
   *
   * @param labels the value of {@code labels}
   * @return a new transform with this setting
   */
  public CrossInference withLabels(List<String> labels) {
    return with("labels", WireValues.names("withLabels", labels));
  }

  /**
   * Same as {@link #withLabels(List)}.
   *
   * @param labels the value of {@code labels}
   * @return a new transform with this setting
   */
  public CrossInference withLabels(String... labels) {
    WireValues.notNull("withLabels", "labels", labels);
    return withLabels(Arrays.asList(labels));
  }

  /**
   * A model that returns several outputs (a tuple, several ONNX outputs): the one to use, by
   * position; the others are then ignored at your request (or {@code output="named"} passes them
   * all to a custom postprocess, a tuple's by position {@code "0"}, {@code "1"}, …). Sends {@code
   * output_index}.
   *
   * @param outputIndex the value of {@code output_index}
   * @return a new transform with this setting
   */
  public CrossInference withOutputIndex(int outputIndex) {
    return with("output_index", (long) outputIndex);
  }

  /**
   * Environment variables set on each worker before the model loads (Beam's {@code env_vars}); not
   * set where the pipeline is built; not {@code LD_*}, {@code PYTHON*}, {@code PATH} and others
   * that change which code runs. Sends {@code env_vars}.
   *
   * @param envVars the value of {@code env_vars}
   * @return a new transform with this setting
   */
  public CrossInference withEnvVars(Map<String, String> envVars) {
    return with("env_vars", WireValues.stringMap("withEnvVars", envVars));
  }

  /**
   * pytorch state_dict: keyword arguments for {@code torch.load} (Beam's {@code load_model_args}):
   * {@code weights_only} (default {@code true}; {@code false} runs the file's code, so the file
   * must be trusted); tensorflow Keras file: {@code safe_mode} (default {@code true}; {@code false}
   * loads Lambda layers' code) and {@code compile}. Values may be String, Integer, Long, Float,
   * Double, Boolean, a List of one of those, or a nested Map of the same; sent as a row, one field
   * per key (Beam's kwargs encoding needs one type per field), which Python receives as a dict.
   * Sends {@code load_model_args}.
   *
   * @param loadModelArgs the value of {@code load_model_args}
   * @return a new transform with this setting
   */
  public CrossInference withLoadModelArgs(Map<String, ?> loadModelArgs) {
    return with("load_model_args", WireValues.params("withLoadModelArgs", loadModelArgs));
  }

  /**
   * The model file's format, stated instead of read off its name: sklearn {@code "pickle"} or
   * {@code "joblib"} (Beam's {@code ModelFileType}); pytorch {@code "state_dict"}, {@code
   * "safetensors"} (both with {@code model_class}) or {@code "torchscript"}. Sends {@code
   * model_file_type}.
   *
   * @param modelFileType the value of {@code model_file_type}
   * @return a new transform with this setting
   */
  public CrossInference withModelFileType(String modelFileType) {
    return with(
        "model_file_type", WireValues.notNull("withModelFileType", "modelFileType", modelFileType));
  }

  /**
   * With {@code models}: at most this many models held in memory per worker at once (Beam's {@code
   * max_models_per_worker_hint}; others are loaded when their rows come). Sends {@code
   * max_models_per_worker_hint}.
   *
   * @param maxModelsPerWorkerHint the value of {@code max_models_per_worker_hint}
   * @return a new transform with this setting
   */
  public CrossInference withMaxModelsPerWorkerHint(int maxModelsPerWorkerHint) {
    return with("max_models_per_worker_hint", (long) maxModelsPerWorkerHint);
  }

  /**
   * Swap the model while the job runs: a file pattern ({@code /models/*.onnx}, {@code
   * gs://b/m/*.pkl}) listed as each window closes; the window is scored by the newest file landed
   * since the job started and by the window's end that passes the first model's checks and has its
   * signature, else the first model (fixed windows; see Model updates). Python also takes a
   * PCollection of Beam's {@code ModelMetadata}. Sends {@code model_updates}.
   *
   * @param modelUpdates the value of {@code model_updates}
   * @return a new transform with this setting
   */
  public CrossInference withModelUpdates(String modelUpdates) {
    return with(
        "model_updates", WireValues.notNull("withModelUpdates", "modelUpdates", modelUpdates));
  }
  // END GENERATED

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
        input.getPipeline().getOptions(),
        kwargs,
        expansionService == null,
        service.sdkContainerImage);
    LocalRuns.prepare(input.getPipeline().getOptions());
    String address =
        expansionService != null
            ? expansionService
            : LocalExpansionService.addressFor(service, VERSION);
    PCollection<Row> projected = project(input);
    boolean blocked = BoundaryBlocks.applies(kwargs);
    PCollection<Row> toPython = blocked ? BoundaryBlocks.group(projected, kwargs) : projected;
    CrossInference sent = blocked ? with("blocks", true) : this;
    PCollectionTuple tuple =
        PythonOutputs.apply(toPython, sent.toPythonTransform(address), address);
    TupleTag<Row> predictions = new TupleTag<>(PREDICTIONS);
    TupleTag<Row> failures = new TupleTag<>(FAILURES);
    if (blocked) { // one prediction row per input row again
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
    builder.add(
        DisplayData.item("pythonTransform", PYTHON_TRANSFORM).withLabel("Python transform"));
    builder.add(DisplayData.item("crossinferVersion", VERSION).withLabel("crossinfer version"));
    for (Map.Entry<String, Object> kwarg : kwargs.entrySet()) {
      builder.add(
          DisplayData.item(kwarg.getKey(), String.valueOf(kwarg.getValue()))
              .withLabel(kwarg.getKey()));
    }
    String shown =
        expansionService != null ? expansionService : "started by CrossInference: " + service;
    builder.add(DisplayData.item("expansionService", shown).withLabel("Expansion service"));
  }

  /** The Python kwargs as sent: name to wire value (read-only). */
  SortedMap<String, Object> kwargs() {
    return kwargs;
  }

  /** The address given to {@link #withExpansionService}, or null if a service is to be started. */
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
        continue; // a Java-side switch, not a Python kwarg
      }
      schema.addField(kwarg.getKey(), WireValues.wireType(kwarg.getValue()));
      values.add(kwarg.getValue());
    }
    return Row.withSchema(schema.build()).addValues(values).build();
  }

  /** The Beam transform that calls {@code crossinfer.Inference} on the service {@code address}. */
  PythonExternalTransform<PCollection<Row>, POutput> toPythonTransform(String address) {
    // A Row, not a Map: Beam infers a Map value's field type from its runtime class and cannot
    // encode lists, maps or mixed types that way.
    return PythonExternalTransform.<PCollection<Row>, POutput>from(PYTHON_TRANSFORM, address)
        .withKwargs(kwargsRow());
  }

  /** The fields Python reads from each input row, or null when it needs whole rows. */
  @Nullable List<String> fieldsPythonReads() {
    return Rules.fieldsPythonReads(kwargs);
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
    List<String> ordered = Rules.inInputOrder(schema, needed);
    return input.apply(
        "SelectFieldsPythonReads", Select.fieldNames(ordered.toArray(new String[0])));
  }

  /** This transform with keyword argument {@code name} set to the wire value {@code value}. */
  CrossInference with(String name, Object value) {
    SortedMap<String, Object> copy = new TreeMap<>(kwargs);
    copy.put(name, value);
    return new CrossInference(copy, expansionService, service);
  }

  /** This transform without the keyword arguments {@code names}. */
  CrossInference without(String... names) {
    SortedMap<String, Object> copy = new TreeMap<>(kwargs);
    for (String name : names) {
      copy.remove(name);
    }
    return new CrossInference(copy, expansionService, service);
  }

  /** This transform with another service address (null: start one) or started-service settings. */
  CrossInference withService(@Nullable String address, LocalExpansionService.Settings settings) {
    return new CrossInference(kwargs, address, settings);
  }

  private static List<String> list(String method, String[] values) {
    return WireValues.names(method, Arrays.asList(WireValues.notNull(method, "the list", values)));
  }

  // Guava's checkArgument, without Beam's vendored Guava (not a public Beam API).
  private static void checkArgument(boolean valid, String format, Object... args) {
    if (!valid) {
      throw new IllegalArgumentException(String.format(format, args));
    }
  }

  private static String readVersion() {
    Properties properties = new Properties();
    try (InputStream in = CrossInference.class.getResourceAsStream("crossinfer.properties")) {
      if (in == null) {
        throw new IllegalStateException(
            "io/crossinfer/crossinfer.properties is missing from the jar");
      }
      properties.load(in);
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
    return properties.getProperty("version");
  }
}
