package io.crossinfer;

import static org.apache.beam.vendor.guava.v32_1_2_jre.com.google.common.base.Preconditions.checkArgument;
import static org.apache.beam.vendor.guava.v32_1_2_jre.com.google.common.base.Preconditions.checkState;

import java.io.IOException;
import java.io.InputStream;
import java.io.UncheckedIOException;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.SortedMap;
import java.util.TreeMap;
import org.apache.beam.sdk.extensions.python.PythonExternalTransform;
import org.apache.beam.sdk.schemas.Schema;
import org.apache.beam.sdk.schemas.transforms.Select;
import org.apache.beam.sdk.transforms.WithFailures;
import org.apache.beam.sdk.transforms.display.DisplayData;
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
 * Python argument table and framework registry, so the two sides name the same arguments.
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
 * the Python callables allowed with {@link #withAllow} and nothing else, and reads models from
 * {@link #withModelRoots}/{@link #withTrustedModelRoots}.
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
public final class CrossInference extends CrossInferenceOptions {

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
    builder.add(DisplayData.item("pythonTransform", PYTHON_TRANSFORM).withLabel("Python transform"));
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

  @Override
  SortedMap<String, Object> kwargs() {
    return kwargs;
  }

  @Override
  @Nullable String expansionService() {
    return expansionService;
  }

  @Override
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

  /** The Beam transform that calls {@code crossinfer.Inference} on the service at {@code address}. */
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
    return input.apply("SelectFieldsPythonReads", Select.fieldNames(ordered.toArray(new String[0])));
  }

  @Override
  CrossInference with(String name, Object value) {
    SortedMap<String, Object> copy = new TreeMap<>(kwargs);
    copy.put(name, value);
    return new CrossInference(copy, expansionService, service);
  }

  @Override
  CrossInference without(String... names) {
    SortedMap<String, Object> copy = new TreeMap<>(kwargs);
    for (String name : names) {
      copy.remove(name);
    }
    return new CrossInference(copy, expansionService, service);
  }

  @Override
  CrossInference withService(@Nullable String address, LocalExpansionService.Settings settings) {
    return new CrossInference(kwargs, address, settings);
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
