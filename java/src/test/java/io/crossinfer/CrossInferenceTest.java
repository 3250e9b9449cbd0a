package io.crossinfer;

import static org.hamcrest.MatcherAssert.assertThat;
import static org.hamcrest.Matchers.containsString;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertNotSame;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertThrows;
import static org.junit.Assert.assertTrue;

import java.lang.reflect.Method;
import java.util.Arrays;
import java.util.Collections;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import org.apache.beam.model.pipeline.v1.ExternalTransforms.ExternalConfigurationPayload;
import org.apache.beam.sdk.Pipeline;
import org.apache.beam.sdk.coders.RowCoder;
import org.apache.beam.sdk.extensions.python.PythonExternalTransform;
import org.apache.beam.sdk.options.PipelineOptions;
import org.apache.beam.sdk.options.PipelineOptionsFactory;
import org.apache.beam.sdk.options.PortablePipelineOptions;
import org.apache.beam.sdk.schemas.Schema;
import org.apache.beam.sdk.schemas.Schema.FieldType;
import org.apache.beam.sdk.schemas.SchemaTranslation;
import org.apache.beam.sdk.testing.CrashingRunner;
import org.apache.beam.sdk.transforms.Create;
import org.apache.beam.sdk.util.CoderUtils;
import org.apache.beam.sdk.values.PCollection;
import org.apache.beam.sdk.values.Row;
import org.junit.Test;
import org.junit.function.ThrowingRunnable;
import org.junit.runner.RunWith;
import org.junit.runners.JUnit4;

/** Tests for {@link CrossInference}: the payload it sends and what it refuses to send. */
@RunWith(JUnit4.class)
public class CrossInferenceTest {

  private static final String SERVICE = "localhost:8097";

  /**
   * The payload PythonExternalTransform would send, decoded the way the expansion service does: the
   * Row schema travels with the bytes. generatePayload() is Beam's own package-private,
   * test-visible method, so this checks the real bytes rather than our copy of the kwargs.
   */
  private static Row sentPayload(CrossInference transform) throws Exception {
    PythonExternalTransform<?, ?> external = transform.toPythonTransform();
    Method generate = PythonExternalTransform.class.getDeclaredMethod("generatePayload");
    generate.setAccessible(true);
    ExternalConfigurationPayload payload = (ExternalConfigurationPayload) generate.invoke(external);
    Schema schema = SchemaTranslation.schemaFromProto(payload.getSchema());
    return CoderUtils.decodeFromByteArray(RowCoder.of(schema), payload.getPayload().toByteArray());
  }

  private static Row sentKwargs(CrossInference transform) throws Exception {
    Row payload = sentPayload(transform);
    assertEquals("crossinfer.Inference", payload.getString("constructor"));
    assertFalse("no positional args", payload.getSchema().hasField("args"));
    return payload.getRow("kwargs");
  }

  private static HashSet<String> set(String... names) {
    return new HashSet<>(Arrays.asList(names));
  }

  private static HashSet<String> fieldNames(Row row) {
    return new HashSet<>(row.getSchema().getFieldNames());
  }

  private static FieldType typeOf(Row row, String field) {
    return row.getSchema().getField(field).getType();
  }

  private static void assertRejected(String expected, ThrowingRunnable call) {
    IllegalArgumentException e = assertThrows(IllegalArgumentException.class, call);
    assertThat(e.getMessage(), containsString(expected));
  }

  @Test
  public void sklearnSendsOnlyWhatWasSet() throws Exception {
    Row kwargs =
        sentKwargs(
            CrossInference.sklearn("/models/m.pkl")
                .withFeatureField("features")
                .withPassthroughFields("id")
                .withExpansionService(SERVICE));

    assertEquals(
        set("framework", "model_uri", "feature_field", "passthrough_fields"), fieldNames(kwargs));
    assertEquals("sklearn", kwargs.getString("framework"));
    assertEquals("/models/m.pkl", kwargs.getString("model_uri"));
    assertEquals("features", kwargs.getString("feature_field"));
    assertEquals(FieldType.array(FieldType.STRING), typeOf(kwargs, "passthrough_fields"));
    assertEquals(Collections.singletonList("id"), kwargs.getArray("passthrough_fields"));
  }

  @Test
  public void everyKwargHasItsContractNameAndType() throws Exception {
    Map<String, String> outputSchema = new LinkedHashMap<>();
    outputSchema.put("label", "int64");
    outputSchema.put("probs", "array<float64>");
    Map<String, Object> params = Collections.singletonMap("hidden", 16);
    Row kwargs =
        sentKwargs(
            CrossInference.pytorch("gs://b/model.pt")
                .withModelClass("mypkg.models:Net")
                .withModelParams(params)
                .withFeatureFields("a", "b")
                .withPassthroughFields(Arrays.asList("id", "name"))
                .withPostprocess("mypkg.post:to_fields")
                .withOutputSchema(outputSchema)
                .withBatchSize(8, 64)
                .withMaxBatchDurationSecs(0.5)
                .withLargeModel(true)
                .withBlocks(true)
                .withModelCopies(2)
                .withDevice("gpu")
                .withExpansionService(SERVICE));

    assertEquals(
        set(
            "framework",
            "model_uri",
            "model_class",
            "model_params",
            "feature_fields",
            "passthrough_fields",
            "postprocess",
            "output_schema",
            "min_batch_size",
            "max_batch_size",
            "max_batch_duration_secs",
            "large_model",
            "blocks",
            "model_copies",
            "device"),
        fieldNames(kwargs));
    assertEquals("pytorch", kwargs.getString("framework"));
    assertEquals("mypkg.models:Net", kwargs.getString("model_class"));
    assertEquals(Arrays.asList("a", "b"), kwargs.getArray("feature_fields"));
    assertEquals(Arrays.asList("id", "name"), kwargs.getArray("passthrough_fields"));
    assertEquals("mypkg.post:to_fields", kwargs.getString("postprocess"));
    assertEquals(
        FieldType.map(FieldType.STRING, FieldType.STRING), typeOf(kwargs, "output_schema"));
    assertEquals(new TreeMap<>(outputSchema), new TreeMap<>(kwargs.getMap("output_schema")));
    assertEquals(FieldType.INT64, typeOf(kwargs, "min_batch_size"));
    assertEquals(Long.valueOf(8), kwargs.getInt64("min_batch_size"));
    assertEquals(Long.valueOf(64), kwargs.getInt64("max_batch_size"));
    assertEquals(FieldType.DOUBLE, typeOf(kwargs, "max_batch_duration_secs"));
    assertEquals(0.5, kwargs.getDouble("max_batch_duration_secs"), 0.0);
    assertEquals(FieldType.BOOLEAN, typeOf(kwargs, "large_model"));
    assertTrue(kwargs.getBoolean("large_model"));
    assertEquals(FieldType.BOOLEAN, typeOf(kwargs, "blocks"));
    assertTrue(kwargs.getBoolean("blocks"));
    assertEquals(Long.valueOf(2), kwargs.getInt64("model_copies"));
    assertEquals("GPU", kwargs.getString("device"));
    assertEquals(Long.valueOf(16), kwargs.getRow("model_params").getInt64("hidden"));
  }

  @Test
  public void maxBatchDurationKeepsIntOrFloat() throws Exception {
    CrossInference base =
        CrossInference.onnx("m.onnx").withFeatureField("x").withExpansionService(SERVICE);
    Row asInt = sentKwargs(base.withMaxBatchDurationSecs(3));
    assertEquals(FieldType.INT64, typeOf(asInt, "max_batch_duration_secs"));
    assertEquals(Long.valueOf(3), asInt.getInt64("max_batch_duration_secs"));
    Row asFloat = sentKwargs(base.withMaxBatchDurationSecs(2.5));
    assertEquals(FieldType.DOUBLE, typeOf(asFloat, "max_batch_duration_secs"));
    assertEquals("onnx", asFloat.getString("framework"));
  }

  @Test
  public void customSendsHandlerAndNoModelUri() throws Exception {
    Row kwargs =
        sentKwargs(
            CrossInference.custom("mypkg.handlers:make_handler")
                .withPreprocess("mypkg.features:to_array")
                .withExpansionService(SERVICE));

    assertEquals(set("framework", "handler", "preprocess"), fieldNames(kwargs));
    assertEquals("custom", kwargs.getString("framework"));
    assertEquals("mypkg.handlers:make_handler", kwargs.getString("handler"));
    assertEquals("mypkg.features:to_array", kwargs.getString("preprocess"));
  }

  @Test
  public void modelParamsWithMixedTypesBecomeATypedRow() throws Exception {
    Map<String, Object> nested = new LinkedHashMap<>();
    nested.put("depth", 3);
    Map<String, Object> params = new LinkedHashMap<>();
    params.put("hidden", 64);
    params.put("vocab", 30_000_000_000L);
    params.put("dropout", 0.1);
    params.put("scale", 2.5f);
    params.put("name", "mlp");
    params.put("bias", true);
    params.put("sizes", Arrays.asList(1, 2, 3));
    params.put("weights", Arrays.asList(1, 2.5));
    params.put("labels", Arrays.asList("cat", "dog"));
    params.put("block", nested);

    Row sent =
        sentKwargs(
                CrossInference.pytorch("m.pt")
                    .withModelClass("mypkg.models:Net")
                    .withModelParams(params)
                    .withFeatureField("tokens")
                    .withExpansionService(SERVICE))
            .getRow("model_params");

    Schema schema = sent.getSchema();
    assertEquals(FieldType.INT64, schema.getField("hidden").getType());
    assertEquals(Long.valueOf(64), sent.getInt64("hidden"));
    assertEquals(Long.valueOf(30_000_000_000L), sent.getInt64("vocab"));
    assertEquals(FieldType.DOUBLE, schema.getField("dropout").getType());
    assertEquals(0.1, sent.getDouble("dropout"), 0.0);
    assertEquals(2.5, sent.getDouble("scale"), 0.0);
    assertEquals("mlp", sent.getString("name"));
    assertEquals(FieldType.BOOLEAN, schema.getField("bias").getType());
    assertTrue(sent.getBoolean("bias"));
    assertEquals(FieldType.array(FieldType.INT64), schema.getField("sizes").getType());
    assertEquals(Arrays.asList(1L, 2L, 3L), sent.getArray("sizes"));
    assertEquals(FieldType.array(FieldType.DOUBLE), schema.getField("weights").getType());
    assertEquals(Arrays.asList(1.0, 2.5), sent.getArray("weights"));
    assertEquals(Arrays.asList("cat", "dog"), sent.getArray("labels"));
    assertEquals(Long.valueOf(3), sent.getRow("block").getInt64("depth"));
  }

  @Test
  public void emptyModelParamsIsAnEmptyMap() throws Exception {
    Row kwargs =
        sentKwargs(
            CrossInference.pytorch("m.pt")
                .withModelParams(Collections.emptyMap())
                .withFeatureField("x")
                .withExpansionService(SERVICE));
    assertEquals(FieldType.map(FieldType.STRING, FieldType.STRING), typeOf(kwargs, "model_params"));
    assertTrue(kwargs.getMap("model_params").isEmpty());
  }

  @Test
  public void modelParamsItCannotEncodeAreRejected() {
    CrossInference t = CrossInference.pytorch("m.pt");
    assertRejected(
        "\"bad-key\" is not a Python identifier",
        () -> t.withModelParams(Collections.singletonMap("bad-key", 1)));
    assertRejected(
        "withModelParams: hidden is null",
        () -> t.withModelParams(Collections.singletonMap("hidden", null)));
    assertRejected(
        "mixes STRING and INT64",
        () -> t.withModelParams(Collections.singletonMap("xs", Arrays.asList("a", 1))));
    assertRejected(
        "empty list",
        () -> t.withModelParams(Collections.singletonMap("xs", Collections.emptyList())));
    assertRejected(
        "has type java.lang.Object",
        () -> t.withModelParams(Collections.singletonMap("o", new Object())));
  }

  @Test
  public void withModelsSendsKeyFieldAndMap() throws Exception {
    Map<String, String> models = new LinkedHashMap<>();
    models.put("en", "gs://b/en.pkl");
    models.put("de", "gs://b/de.pkl");
    Row kwargs =
        sentKwargs(
            CrossInference.sklearn("gs://b/en.pkl")
                .withModels("lang", models)
                .withFeatureField("features")
                .withExpansionService(SERVICE));
    // The Python side takes model_uri or models, never both.
    assertEquals(
        set("framework", "model_key_field", "models", "feature_field"), fieldNames(kwargs));
    assertEquals("sklearn", kwargs.getString("framework"));
    assertEquals("lang", kwargs.getString("model_key_field"));
    assertEquals(FieldType.map(FieldType.STRING, FieldType.STRING), typeOf(kwargs, "models"));
    assertEquals(models, kwargs.getMap("models"));

    assertRejected(
        "withModels: models is null or empty",
        () -> CrossInference.sklearn("m").withModels("lang", Collections.emptyMap()));
    assertRejected(
        "withModels: keyField is empty", () -> CrossInference.sklearn("m").withModels("", models));
    assertRejected(
        "withModels: models[\"en\"] is empty",
        () -> CrossInference.sklearn("m").withModels("lang", Collections.singletonMap("en", " ")));
  }

  @Test
  public void withMethodsReturnNewInstancesAndLeaveTheOriginalAlone() {
    CrossInference base = CrossInference.sklearn("m.pkl");
    CrossInference withField = base.withFeatureField("features");
    CrossInference withService = withField.withExpansionService(SERVICE);
    CrossInference withBatch = withService.withBatchSize(1, 10);

    assertNotSame(base, withField);
    assertEquals(set("framework", "model_uri"), new HashSet<>(base.kwargs().keySet()));
    assertNull(base.expansionService());
    assertNull(withField.expansionService());
    assertEquals(SERVICE, withService.expansionService());
    assertFalse(withService.kwargs().containsKey("min_batch_size"));
    assertEquals(Long.valueOf(10), withBatch.kwargs().get("max_batch_size"));
    assertThrows(
        UnsupportedOperationException.class, () -> withBatch.kwargs().put("device", "CPU"));

    // A later call replaces the value on the new instance only.
    CrossInference other = withField.withFeatureField("other");
    assertEquals("features", withField.kwargs().get("feature_field"));
    assertEquals("other", other.kwargs().get("feature_field"));
  }

  @Test
  public void listsPassedInAreCopied() {
    List<String> fields = new java.util.ArrayList<>(Arrays.asList("a", "b"));
    CrossInference t = CrossInference.sklearn("m.pkl").withFeatureFields(fields);
    fields.add("c");
    assertEquals(Arrays.asList("a", "b"), t.kwargs().get("feature_fields"));
  }

  @Test
  public void exactlyOneInputSource() {
    CrossInference field = CrossInference.sklearn("m.pkl").withFeatureField("features");
    assertRejected(
        "withFeatureFields: withFeatureField is already set", () -> field.withFeatureFields("a"));
    assertRejected(
        "withPreprocess: withFeatureField is already set", () -> field.withPreprocess("mypkg.f:g"));
    assertRejected(
        "withFeatureField: withPreprocess is already set",
        () -> CrossInference.sklearn("m.pkl").withPreprocess("mypkg.f:g").withFeatureField("x"));
    assertRejected(
        "exactly one of withFeatureField, withFeatureFields, withPreprocess",
        () -> CrossInference.sklearn("m.pkl").withExpansionService(SERVICE).toPythonTransform());
  }

  @Test
  public void argumentsAreChecked() {
    CrossInference t = CrossInference.sklearn("m.pkl");
    assertRejected("sklearn: modelUri is null", () -> CrossInference.sklearn(null));
    assertRejected("onnx: modelUri is empty", () -> CrossInference.onnx(" "));
    assertRejected(
        "custom: \"make_handler\" is not a callable name",
        () -> CrossInference.custom("make_handler"));
    assertRejected(
        "withModelClass: \"import os; os.system('x')\" is not a callable name",
        () -> t.withModelClass("import os; os.system('x')"));
    assertRejected("withBatchSize: minBatchSize is 0", () -> t.withBatchSize(0, 10));
    assertRejected("maxBatchSize 4 is below minBatchSize 8", () -> t.withBatchSize(8, 4));
    assertRejected("withMaxBatchDurationSecs: 0 seconds", () -> t.withMaxBatchDurationSecs(0));
    assertRejected(
        "withMaxBatchDurationSecs: NaN seconds", () -> t.withMaxBatchDurationSecs(Double.NaN));
    assertRejected("withModelCopies: 0 copies", () -> t.withModelCopies(0));
    assertRejected("withFeatureFields: no fields given", () -> t.withFeatureFields());
    assertRejected(
        "withFeatureFields: field \"a\" is named twice", () -> t.withFeatureFields("a", "a"));
    assertRejected(
        "withPassthroughFields: a field name is null", () -> t.withPassthroughFields("id", null));
    assertRejected("withPostprocess: \"softmax\" is neither", () -> t.withPostprocess("softmax"));
    assertRejected(
        "withOutputSchema: schema is null or empty",
        () -> t.withOutputSchema(Collections.emptyMap()));
    assertRejected("withDevice: \"TPU\" is not a device", () -> t.withDevice("TPU"));
    assertRejected(
        "withExpansionService: \"localhost\" is not an address",
        () -> t.withExpansionService("localhost"));
    assertRejected(
        "withExpansionService: \"host:99999\"", () -> t.withExpansionService("host:99999"));
    assertRejected("withExpansionService: hostPort is null", () -> t.withExpansionService(null));

    // Built-in postprocess names and callables pass.
    t.withPostprocess("raw").withPostprocess("regression").withPostprocess("mypkg.post:f");
    t.withPassthroughFields(Collections.emptyList());
  }

  // Never run: CrashingRunner only satisfies Pipeline.create, which wants some runner.
  private static Pipeline pipeline() {
    PipelineOptions options = PipelineOptionsFactory.create();
    options.setRunner(CrashingRunner.class);
    return Pipeline.create(options);
  }

  private static PCollection<Row> input(Pipeline p) {
    Schema schema =
        Schema.builder().addInt64Field("id").addArrayField("features", FieldType.DOUBLE).build();
    return p.apply(
        Create.of(Row.withSchema(schema).addValues(1L, Arrays.asList(1.0, 2.0)).build())
            .withRowSchema(schema));
  }

  @Test
  public void refusesToExpandWithoutAnExpansionService() {
    Pipeline p = pipeline();
    PCollection<Row> rows = input(p);
    IllegalArgumentException e =
        assertThrows(
            IllegalArgumentException.class,
            () -> rows.apply(CrossInference.sklearn("m.pkl").withFeatureField("features")));
    assertEquals(
        "CrossInference needs withExpansionService(\"host:port\"): start "
            + "`crossinfer-expansion-service --port PORT`",
        e.getMessage());
  }

  @Test
  public void loopbackWithoutAnAddressGetsAMessageThatSaysWhatToDo() {
    Pipeline p = pipeline();
    p.getOptions().as(PortablePipelineOptions.class).setDefaultEnvironmentType("LOOPBACK");
    PCollection<Row> rows = input(p);
    assertRejected(
        "--defaultEnvironmentConfig=localhost:PORT with a free PORT",
        () ->
            rows.apply(
                CrossInference.sklearn("m.pkl")
                    .withFeatureField("features")
                    .withExpansionService(SERVICE)));
  }

  @Test
  public void namedFieldsMustExistInTheInput() {
    Pipeline p = pipeline();
    PCollection<Row> rows = input(p);
    assertRejected(
        "the input has no field \"key\"; its fields are [id, features]",
        () ->
            rows.apply(
                CrossInference.sklearn("m.pkl")
                    .withFeatureField("features")
                    .withPassthroughFields("id", "key")
                    .withExpansionService(SERVICE)));
  }
}
