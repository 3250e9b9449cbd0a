package io.crossinfer;

import static org.apache.beam.vendor.guava.v32_1_2_jre.com.google.common.base.Preconditions.checkArgument;

import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.SortedMap;
import org.checkerframework.checker.nullness.qual.Nullable;
import org.joda.time.Duration;

/**
 * The methods of {@link CrossInference} written by hand: those that send several keyword
 * arguments or encode a value beyond its wire type, the boundary-block switch, and those that say
 * which expansion service expands the transform (an address, or the settings of the one this
 * library starts), which are not sent to Python.
 */
abstract class CrossInferenceOptions extends InferenceArguments {
  private static final long serialVersionUID = 1L;

  CrossInferenceOptions(String name) {
    super(name);
  }

  /**
   * The Python kwargs as sent, for tests: name to wire value.
   *
   * @return the kwargs
   */
  abstract SortedMap<String, Object> kwargs();

  /**
   * This transform without the keyword arguments {@code names}.
   *
   * @param names Python keyword arguments
   * @return a new transform without them
   */
  abstract CrossInference without(String... names);

  /**
   * The expansion service address, or null if one is to be started.
   *
   * @return the address given to {@link #withExpansionService}, or null
   */
  abstract @Nullable String expansionService();

  /**
   * The settings of the service started when no address is given.
   *
   * @return the settings
   */
  abstract LocalExpansionService.Settings serviceSettings();

  /**
   * This transform with another service address or settings.
   *
   * @param address the expansion service address, or null to start one
   * @param settings the settings of a started service
   * @return a new transform with these settings
   */
  abstract CrossInference withService(
      @Nullable String address, LocalExpansionService.Settings settings);

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

  private static List<String> list(String method, String[] values) {
    return WireValues.names(method, Arrays.asList(WireValues.notNull(method, "the list", values)));
  }
}
