package io.crossinfer;

import static org.apache.beam.vendor.guava.v32_1_2_jre.com.google.common.base.Preconditions.checkArgument;
import static org.apache.beam.vendor.guava.v32_1_2_jre.com.google.common.base.Preconditions.checkState;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeoutException;
import org.apache.beam.sdk.coders.Coder;
import org.apache.beam.sdk.extensions.python.PythonExternalTransform;
import org.apache.beam.sdk.schemas.Schema;
import org.apache.beam.sdk.schemas.SchemaCoder;
import org.apache.beam.sdk.transforms.PTransform;
import org.apache.beam.sdk.transforms.WithFailures;
import org.apache.beam.sdk.transforms.display.DisplayData;
import org.apache.beam.sdk.values.PCollection;
import org.apache.beam.sdk.values.PCollectionTuple;
import org.apache.beam.sdk.values.POutput;
import org.apache.beam.sdk.values.Row;
import org.apache.beam.sdk.values.TupleTag;
import org.checkerframework.checker.nullness.qual.Nullable;

/**
 * Prepares a {@code PCollection<Row>} for a model with Beam's MLTransform (tf.Transform
 * operations), through the Python transform {@code crossinfer.Prepare} on a crossinfer expansion
 * service, the same one {@link CrossInference} uses.
 *
 * <p>{@link #write} analyses the rows (vocabularies, minimums and maximums, quantiles) and saves
 * the artifacts to a directory; {@link #read} applies saved artifacts, for example in the job
 * that then infers. The result's {@code output()} holds typed rows: the passthrough fields and
 * every column the operations write (a scalar column stays a scalar); {@code failures()} holds
 * one row ({@code element}, {@code stage}, {@code error}) per input row that could not be
 * prepared.
 *
 * <pre>{@code
 * PCollection<Row> predictions =
 *     rows.apply(CrossPrepare.read("/models/prep").withPassthroughFields("id")
 *             .withTrustedModelRoots("/models"))
 *         .output()
 *         .apply(CrossInference.sklearn("/models/model.pkl")
 *             .withFeatureFields("x", "color").withPassthroughFields("id")
 *             .withTrustedModelRoots("/models"))
 *         .output();
 * }</pre>
 *
 * <p>Artifacts are tf.Transform graphs (TensorFlow SavedModels), which the service reads only
 * from a trusted model root ({@link #withTrustedModelRoots}); write them there too. Instances are
 * immutable.
 */
public final class CrossPrepare
    extends PTransform<PCollection<Row>, WithFailures.Result<PCollection<Row>, Row>> {

  private static final long serialVersionUID = 1L;

  /** Fully qualified name of the Python transform this wrapper expands. */
  public static final String PYTHON_TRANSFORM = "crossinfer.Prepare";

  /** Output name of the prepared rows in the Python transform's result. */
  public static final String PREPARED = "prepared";

  private final Map<String, Object> kwargs; // Python kwarg -> wire value (see WireValues)
  private final List<Map<String, Object>> operations;
  private final @Nullable String expansionService;
  private final LocalExpansionService.Settings service;

  private CrossPrepare(
      Map<String, Object> kwargs,
      List<Map<String, Object>> operations,
      @Nullable String expansionService,
      LocalExpansionService.Settings service) {
    super("CrossPrepare");
    this.kwargs = Collections.unmodifiableMap(new LinkedHashMap<>(kwargs));
    this.operations = Collections.unmodifiableList(new ArrayList<>(operations));
    this.expansionService = expansionService;
    this.service = service;
  }

  private static CrossPrepare start(String mode, String location) {
    Map<String, Object> kwargs = new LinkedHashMap<>();
    kwargs.put(mode, WireValues.notNull(mode, "artifactLocation", location));
    kwargs.put("client_version", CrossInference.VERSION);
    return new CrossPrepare(
        kwargs, new ArrayList<>(), null, LocalExpansionService.Settings.defaults());
  }

  /**
   * Write mode: analyse the rows with the operations added next, and save the artifacts.
   *
   * @param artifactLocation a new directory (under a trusted model root of the service)
   * @return a transform with no operation yet
   */
  public static CrossPrepare write(String artifactLocation) {
    return start("write_artifact_location", artifactLocation);
  }

  /**
   * Read mode: apply the artifacts a write job saved (its operations come with them).
   *
   * @param artifactLocation the directory a {@link #write} job saved to
   * @return the transform
   */
  public static CrossPrepare read(String artifactLocation) {
    return start("read_artifact_location", artifactLocation);
  }

  /**
   * Adds one MLTransform operation by its Beam name (see {@code apache_beam.ml.transforms.tft}),
   * applied after the ones added before.
   *
   * @param operation such as {@code "ScaleTo01"}, {@code "Bucketize"}, {@code "TFIDF"}
   * @param columns the fields it transforms
   * @param args its other arguments (strings, numbers, booleans, lists of them), such as {@code
   *     num_buckets}
   * @return a new transform
   */
  public CrossPrepare withOperation(String operation, List<String> columns, Map<String, ?> args) {
    checkArgument(!kwargs.containsKey("read_artifact_location"),
        "CrossPrepare.read takes no operations: the artifacts hold them; use CrossPrepare.write "
            + "to analyse with new operations");
    Map<String, Object> entry = new LinkedHashMap<>();
    entry.put("operation", WireValues.notNull("withOperation", "operation", operation));
    entry.put("columns", WireValues.names("withOperation", columns));
    for (Map.Entry<String, ?> arg : WireValues.notNull("withOperation", "args", args).entrySet()) {
      checkArgument(arg.getValue() != null, "withOperation: argument %s is null", arg.getKey());
      entry.put(arg.getKey(), arg.getValue());
    }
    List<Map<String, Object>> more = new ArrayList<>(operations);
    more.add(entry);
    return new CrossPrepare(kwargs, more, expansionService, service);
  }

  /** Scales each column to [0, 1] (MLTransform's {@code ScaleTo01}). @param columns the fields @return a new transform */
  public CrossPrepare scaleTo01(String... columns) {
    return withOperation("ScaleTo01", Arrays.asList(columns), Collections.emptyMap());
  }

  /** Scales each column to mean 0, variance 1 ({@code ScaleToZScore}). @param columns the fields @return a new transform */
  public CrossPrepare scaleToZScore(String... columns) {
    return withOperation("ScaleToZScore", Arrays.asList(columns), Collections.emptyMap());
  }

  /** Replaces each string by its index in the vocabulary of the column ({@code ComputeAndApplyVocabulary}). @param columns the fields @return a new transform */
  public CrossPrepare computeAndApplyVocabulary(String... columns) {
    return withOperation(
        "ComputeAndApplyVocabulary", Arrays.asList(columns), Collections.emptyMap());
  }

  /** Buckets by quantiles ({@code Bucketize}). @param numBuckets how many @param columns the fields @return a new transform */
  public CrossPrepare bucketize(int numBuckets, String... columns) {
    return withOperation(
        "Bucketize", Arrays.asList(columns), Collections.singletonMap("num_buckets", numBuckets));
  }

  /**
   * Input fields copied unchanged onto each prepared row.
   *
   * @param fields field names, such as {@code "id"}
   * @return a new transform
   */
  public CrossPrepare withPassthroughFields(String... fields) {
    Map<String, Object> copy = new LinkedHashMap<>(kwargs);
    copy.put("passthrough_fields",
        WireValues.names("withPassthroughFields", Arrays.asList(fields)));
    return new CrossPrepare(copy, operations, expansionService, service);
  }

  /** The expansion service at {@code hostPort} (else one is started, as for CrossInference). @param hostPort such as {@code "localhost:8097"} @return a new transform */
  public CrossPrepare withExpansionService(String hostPort) {
    return new CrossPrepare(kwargs, operations,
        WireValues.notNull("withExpansionService", "hostPort", hostPort), service);
  }

  /** The Python whose expansion service is started. @param python its path @return a new transform */
  public CrossPrepare withPython(String python) {
    return new CrossPrepare(kwargs, operations, expansionService,
        service.withPython(WireValues.notNull("withPython", "python", python)));
  }

  /** Model roots of the started service, as {@link CrossInference#withModelRoots}. @param roots directories @return a new transform */
  public CrossPrepare withModelRoots(String... roots) {
    return new CrossPrepare(kwargs, operations, expansionService,
        service.withModelRoots(WireValues.names("withModelRoots", Arrays.asList(roots))));
  }

  /** Trusted model roots of the started service: where artifacts are written and read. @param roots directories @return a new transform */
  public CrossPrepare withTrustedModelRoots(String... roots) {
    return new CrossPrepare(kwargs, operations, expansionService,
        service.withTrustedModelRoots(
            WireValues.names("withTrustedModelRoots", Arrays.asList(roots))));
  }

  /**
   * Expands {@code crossinfer.Prepare} on the expansion service and returns its two outputs.
   *
   * @param input rows with a schema
   * @return prepared rows as output, failure rows as failures
   */
  @Override
  public WithFailures.Result<PCollection<Row>, Row> expand(PCollection<Row> input) {
    checkArgument(input.hasSchema(),
        "CrossPrepare needs rows with a schema: call setRowSchema(schema) on the input");
    BeamVersions.checkOneVersion(CrossPrepare.class.getClassLoader());
    LocalRuns.prepare(input.getPipeline().getOptions());
    String address = expansionService != null
        ? expansionService
        : LocalExpansionService.addressFor(service, CrossInference.VERSION);
    POutput output;
    try {
      output = input.apply("Prepare", PythonExternalTransform
          .<PCollection<Row>, POutput>from(PYTHON_TRANSFORM, address).withKwargs(kwargsRow()));
    } catch (RuntimeException e) {
      if (e.getCause() instanceof TimeoutException) {
        throw new IllegalStateException("CrossPrepare: no expansion service answers at "
            + address + "; pass a running one to withExpansionService, or leave it out", e);
      }
      throw e;
    }
    checkState(output instanceof PCollectionTuple,
        "%s returned one output; expected %s and %s", PYTHON_TRANSFORM, PREPARED,
        CrossInference.FAILURES);
    PCollectionTuple tuple = (PCollectionTuple) output;
    TupleTag<Row> prepared = new TupleTag<>(PREPARED);
    TupleTag<Row> failures = new TupleTag<>(CrossInference.FAILURES);
    withRowSchema(tuple, prepared);
    withRowSchema(tuple, failures);
    return WithFailures.Result.of(tuple, prepared, failures);
  }

  @Override
  public void populateDisplayData(DisplayData.Builder builder) {
    super.populateDisplayData(builder);
    builder.add(DisplayData.item("pythonTransform", PYTHON_TRANSFORM));
    for (Map.Entry<String, Object> kwarg : kwargs.entrySet()) {
      builder.add(DisplayData.item(kwarg.getKey(), String.valueOf(kwarg.getValue())));
    }
    if (!operations.isEmpty()) {
      builder.add(DisplayData.item("operations", Json.of(operations)));
    }
  }

  /** The keyword arguments as the row Beam sends: operations travel as one JSON string. */
  Row kwargsRow() {
    Map<String, Object> all = new LinkedHashMap<>(kwargs);
    if (!operations.isEmpty()) {
      all.put("operations", Json.of(operations));
    }
    Schema.Builder schema = Schema.builder();
    List<Object> values = new ArrayList<>();
    for (Map.Entry<String, Object> kwarg : all.entrySet()) {
      schema.addField(kwarg.getKey(), WireValues.wireType(kwarg.getValue()));
      values.add(kwarg.getValue());
    }
    return Row.withSchema(schema.build()).addValues(values).build();
  }

  private static void withRowSchema(PCollectionTuple tuple, TupleTag<Row> tag) {
    checkState(tuple.has(tag), "%s returned no output named \"%s\"; it returned %s",
        PYTHON_TRANSFORM, tag.getId(), tuple.getAll().keySet());
    PCollection<Row> rows = tuple.get(tag);
    Coder<Row> coder = rows.getCoder();
    checkState(coder instanceof SchemaCoder, "%s output \"%s\" is not schema'd rows (coder %s)",
        PYTHON_TRANSFORM, tag.getId(), coder);
    if (!rows.hasSchema()) {
      rows.setRowSchema(((SchemaCoder<Row>) coder).getSchema());
    }
  }

  /** Plain values (strings, numbers, booleans, lists, string-keyed maps) as JSON text. */
  static final class Json {
    private Json() {}

    static String of(Object value) {
      StringBuilder out = new StringBuilder();
      write(out, value);
      return out.toString();
    }

    private static void write(StringBuilder out, Object value) {
      if (value instanceof String) {
        out.append('"');
        for (char c : ((String) value).toCharArray()) {
          if (c == '"' || c == '\\') {
            out.append('\\').append(c);
          } else if (c < 0x20) {
            out.append(String.format("\\u%04x", (int) c));
          } else {
            out.append(c);
          }
        }
        out.append('"');
      } else if (value instanceof Boolean
          || value instanceof Integer
          || value instanceof Long
          || value instanceof Short) {
        out.append(value);
      } else if (value instanceof Double || value instanceof Float) {
        double d = ((Number) value).doubleValue();
        checkArgument(Double.isFinite(d), "CrossPrepare: %s is not a finite number", value);
        out.append(d);
      } else if (value instanceof List) {
        out.append('[');
        String sep = "";
        for (Object item : (List<?>) value) {
          out.append(sep);
          write(out, item);
          sep = ",";
        }
        out.append(']');
      } else if (value instanceof Map) {
        out.append('{');
        String sep = "";
        for (Map.Entry<?, ?> e : ((Map<?, ?>) value).entrySet()) {
          out.append(sep);
          write(out, String.valueOf(e.getKey()));
          out.append(':');
          write(out, e.getValue());
          sep = ",";
        }
        out.append('}');
      } else {
        throw new IllegalArgumentException("CrossPrepare: an operation argument must be a "
            + "string, number, boolean or list of them, not " + value.getClass().getName());
      }
    }
  }
}
