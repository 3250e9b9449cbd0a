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
    PythonExternalTransform<?, ?> external = transform.toPythonTransform(SERVICE);
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
  public void frameworkFactoriesSendTheirFrameworkName() throws Exception {
    Object[][] cases = {
      {CrossInference.tensorflow("/m/clf.keras"), "tensorflow", "/m/clf.keras"},
      {CrossInference.xgboost("/m/b.json"), "xgboost", "/m/b.json"},
      {CrossInference.of("onnx", "/m/a.onnx"), "onnx", "/m/a.onnx"},
    };
    for (Object[] c : cases) {
      Row kwargs = sentKwargs(((CrossInference) c[0]).withFeatureField("f"));
      assertEquals(c[1], kwargs.getString("framework"));
      assertEquals(c[2], kwargs.getString("model_uri"));
    }
    Row later = sentKwargs(CrossInference.of("xgboost").withModelUri("/m/c.ubj").withFeatureField("f"));
    assertEquals("xgboost", later.getString("framework"));
    assertEquals("/m/c.ubj", later.getString("model_uri"));
  }

  @Test
  public void sklearnSendsOnlyWhatWasSet() throws Exception {
    Row kwargs =
        sentKwargs(
            CrossInference.sklearn("/models/m.pkl")
                .withFeatureField("features")
                .withPassthroughFields("id"));

    assertEquals(
        set("client_version", "framework", "model_uri", "feature_field", "passthrough_fields"), fieldNames(kwargs));
    assertEquals("sklearn", kwargs.getString("framework"));
    assertEquals("/models/m.pkl", kwargs.getString("model_uri"));
    assertEquals("features", kwargs.getString("feature_field"));
    assertEquals(FieldType.array(FieldType.STRING), typeOf(kwargs, "passthrough_fields"));
    assertEquals(Collections.singletonList("id"), kwargs.getArray("passthrough_fields"));
  }

  @Test
  public void everyKwargHasItsContractNameAndType() throws Exception {
    Map<String, Object> params = Collections.singletonMap("hidden", 16);
    Map<String, Object> inferenceArgs = Collections.singletonMap("temperature", 0.5);
    Row kwargs =
        sentKwargs(
            CrossInference.pytorch("gs://b/model.pt")
                .withModelClass("mypkg.models:Net")
                .withModelParams(params)
                .withFeatureFields("a", "b")
                .withPassthroughFields(Arrays.asList("id", "name"))
                .withPostprocess("raw")
                .withBatchSize(8, 64)
                .withMaxBatchDurationSecs(0.5)
                .withLargeModel(true)
                .withBlocks(true)
                .withModelCopies(2)
                .withDevice("GPU")
                .withInputShape(-1)
                .withInputDtype("int64")
                .withPadValue(3L)
                .withOutput("logits")
                .withInferenceArgs(inferenceArgs));

    assertEquals(
        set(
            "client_version",
            "framework",
            "model_uri",
            "model_class",
            "model_params",
            "feature_fields",
            "passthrough_fields",
            "postprocess",
            "min_batch_size",
            "max_batch_size",
            "max_batch_duration_secs",
            "large_model",
            "blocks",
            "model_copies",
            "device",
            "input_shape",
            "input_dtype",
            "pad_value",
            "output",
            "inference_args"),
        fieldNames(kwargs));
    assertEquals("pytorch", kwargs.getString("framework"));
    assertEquals("mypkg.models:Net", kwargs.getString("model_class"));
    assertEquals(Arrays.asList("a", "b"), kwargs.getArray("feature_fields"));
    assertEquals(Arrays.asList("id", "name"), kwargs.getArray("passthrough_fields"));
    assertEquals(FieldType.INT64, typeOf(kwargs, "min_batch_size"));
    assertEquals(Long.valueOf(8), kwargs.getInt64("min_batch_size"));
    assertEquals(Long.valueOf(64), kwargs.getInt64("max_batch_size"));
    assertEquals(FieldType.DOUBLE, typeOf(kwargs, "max_batch_duration_secs"));
    assertEquals(0.5, kwargs.getDouble("max_batch_duration_secs"), 0.0);
    assertTrue(kwargs.getBoolean("large_model"));
    assertTrue(kwargs.getBoolean("blocks"));
    assertEquals(Long.valueOf(2), kwargs.getInt64("model_copies"));
    assertEquals("GPU", kwargs.getString("device"));
    assertEquals(Long.valueOf(16), kwargs.getRow("model_params").getInt64("hidden"));
    assertEquals(FieldType.array(FieldType.INT64), typeOf(kwargs, "input_shape"));
    assertEquals(Collections.singletonList(-1L), kwargs.getArray("input_shape"));
    assertEquals("int64", kwargs.getString("input_dtype"));
    assertEquals(Long.valueOf(3), kwargs.getInt64("pad_value"));
    assertEquals("logits", kwargs.getString("output"));
    assertEquals(0.5, kwargs.getRow("inference_args").getDouble("temperature"), 0.0);
  }

  @Test
  public void outputSchemaKeepsTheDeclaredFieldOrder() throws Exception {
    CrossInference base =
        CrossInference.sklearn("m.pkl").withFeatureField("x").withPostprocess("mypkg.post:f");
    Row pairs = sentKwargs(base.withOutputSchema("zeta", "string", "alpha", "int64", "mid", "bool"));
    assertEquals(
        Arrays.asList("zeta", "alpha", "mid"),
        pairs.getRow("output_schema").getSchema().getFieldNames());
    assertEquals("int64", pairs.getRow("output_schema").getString("alpha"));
    Map<String, String> linked = new LinkedHashMap<>();
    linked.put("b", "float64");
    linked.put("a", "string");
    Row map = sentKwargs(base.withOutputSchema(linked));
    assertEquals(
        Arrays.asList("b", "a"), map.getRow("output_schema").getSchema().getFieldNames());
    assertRejected("give name, type pairs; mid has no type",
        () -> base.withOutputSchema("a", "string", "mid"));
  }

  @Test
  public void modelUpdatesSendThePatternAndTheIntervalInSeconds() throws Exception {
    Row kwargs =
        sentKwargs(
            CrossInference.sklearn("/models/m-1.pkl")
                .withFeatureField("features")
                .withModelUpdates("/models/m-*.pkl", org.joda.time.Duration.millis(2500)));
    assertEquals("/models/m-*.pkl", kwargs.getString("model_updates"));
    assertEquals(FieldType.DOUBLE, typeOf(kwargs, "model_update_interval_secs"));
    assertEquals(2.5, kwargs.getDouble("model_update_interval_secs"), 0.0);
    assertThrows(
        IllegalArgumentException.class,
        () -> CrossInference.sklearn("m.pkl").withModelUpdates("/m/*.pkl", org.joda.time.Duration.ZERO));
  }

  @Test
  public void customSendsHandlerAndAnOptionalModelUri() throws Exception {
    Row kwargs =
        sentKwargs(
            CrossInference.custom("mypkg.handlers:make_handler")
                .withPreprocess("mypkg.features:to_array"));
    assertEquals(set("client_version", "framework", "handler", "preprocess"), fieldNames(kwargs));
    assertEquals("custom", kwargs.getString("framework"));
    assertEquals("mypkg.handlers:make_handler", kwargs.getString("handler"));

    Row withUri =
        sentKwargs(
            CrossInference.custom("mypkg.handlers:make_handler")
                .withModelUri("/models/w.bin")
                .withFeatureField("x"));
    assertEquals("/models/w.bin", withUri.getString("model_uri"));
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
                    .withFeatureField("tokens"))
            .getRow("model_params");

    Schema schema = sent.getSchema();
    assertEquals(FieldType.INT64, schema.getField("hidden").getType());
    assertEquals(Long.valueOf(64), sent.getInt64("hidden"));
    assertEquals(Long.valueOf(30_000_000_000L), sent.getInt64("vocab"));
    assertEquals(FieldType.DOUBLE, schema.getField("dropout").getType());
    assertEquals(0.1, sent.getDouble("dropout"), 0.0);
    assertEquals(2.5, sent.getDouble("scale"), 0.0);
    assertEquals("mlp", sent.getString("name"));
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
                .withFeatureField("x"));
    assertEquals(FieldType.map(FieldType.STRING, FieldType.STRING), typeOf(kwargs, "model_params"));
    assertTrue(kwargs.getMap("model_params").isEmpty());
  }

  @Test
  public void valuesItCannotEncodeAreRejected() {
    CrossInference t = CrossInference.pytorch("m.pt");
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
        () -> t.withInferenceArgs(Collections.singletonMap("o", new Object())));
    assertRejected("withModelUri: modelUri is null", () -> CrossInference.sklearn(null));
    assertRejected("withModels: null key or value",
        () -> t.withModels("k", Collections.singletonMap("en", null)));
    assertRejected(
        "withPassthroughFields: a name is null", () -> t.withPassthroughFields("id", null));
    assertRejected(
        "withExpansionService: \"localhost\" is not an address",
        () -> t.withExpansionService("localhost"));
    assertRejected(
        "withExpansionService: \"host:99999\"", () -> t.withExpansionService("host:99999"));
  }

  @Test
  public void pythonOwnsTheRules() throws Exception {
    // Values only Python can judge are sent as given; the service names what is wrong.
    Row kwargs =
        sentKwargs(
            CrossInference.sklearn("m.pkl")
                .withFeatureField("x")
                .withFeatureFields("a")
                .withDevice("tpu")
                .withModelCopies(0)
                .withPostprocess("softmax"));
    assertEquals("tpu", kwargs.getString("device"));
    assertEquals(Long.valueOf(0), kwargs.getInt64("model_copies"));
    assertEquals("x", kwargs.getString("feature_field"));
    assertEquals(Arrays.asList("a"), kwargs.getArray("feature_fields"));
  }

  @Test
  public void withModelsNeedsNoModelUriAndReplacesIt() throws Exception {
    Map<String, String> models = new LinkedHashMap<>();
    models.put("en", "gs://b/en.pkl");
    models.put("de", "gs://b/de.pkl");
    Row kwargs =
        sentKwargs(CrossInference.sklearn().withModels("lang", models).withFeatureField("features"));
    assertEquals(
        set("client_version", "framework", "model_key_field", "models", "feature_field"), fieldNames(kwargs));
    assertEquals("lang", kwargs.getString("model_key_field"));
    assertEquals(FieldType.map(FieldType.STRING, FieldType.STRING), typeOf(kwargs, "models"));
    assertEquals(models, kwargs.getMap("models"));

    Row replaced =
        sentKwargs(CrossInference.onnx("a.onnx").withModels("lang", models).withFeatureField("f"));
    assertFalse(replaced.getSchema().hasField("model_uri"));
    Row back =
        sentKwargs(
            CrossInference.onnx().withModels("lang", models).withModelUri("b.onnx")
                .withFeatureField("f"));
    assertEquals(set("client_version", "framework", "model_uri", "feature_field"), fieldNames(back));
  }

  @Test
  public void withMethodsReturnNewInstancesAndLeaveTheOriginalAlone() {
    CrossInference base = CrossInference.sklearn("m.pkl");
    CrossInference withField = base.withFeatureField("features");
    CrossInference withService = withField.withExpansionService(SERVICE);
    CrossInference withBatch = withService.withMaxBatchSize(10);

    assertNotSame(base, withField);
    assertEquals(
        set("client_version", "framework", "model_uri"), new HashSet<>(base.kwargs().keySet()));
    assertEquals(CrossInference.VERSION, base.kwargs().get("client_version"));
    assertNull(base.expansionService());
    assertEquals(SERVICE, withService.expansionService());
    assertFalse(withService.kwargs().containsKey("max_batch_size"));
    assertEquals(Long.valueOf(10), withBatch.kwargs().get("max_batch_size"));
    assertThrows(
        UnsupportedOperationException.class, () -> withBatch.kwargs().put("device", "CPU"));
    List<String> fields = new java.util.ArrayList<>(Arrays.asList("a", "b"));
    CrossInference t = base.withFeatureFields(fields);
    fields.add("c");
    assertEquals(Arrays.asList("a", "b"), t.kwargs().get("feature_fields"));
  }

  @Test
  public void serviceSettingsBecomeServiceFlags() {
    CrossInference t =
        CrossInference.sklearn("m.pkl")
            .withPython("/opt/venv/bin/python")
            .withAllow("mypkg.*", "other.features.*")
            .withModelRoots("/models/")
            .withTrustedModelRoots("/models/trusted/")
            .withSdkContainerImage("img:1");
    LocalExpansionService.Settings s = t.serviceSettings();
    assertEquals("/opt/venv/bin/python", s.resolvedPython());
    assertEquals(
        Arrays.asList(
            "--allow", "mypkg.*", "--allow", "other.features.*",
            "--model-root", "/models/", "--trusted-model-root", "/models/trusted/",
            "--sdk-container-image", "img:1"),
        s.flags());
    // Equal settings share one service; any difference starts another.
    assertEquals(s, CrossInference.onnx("x").withSdkContainerImage("img:1")
        .withTrustedModelRoots("/models/trusted/").withModelRoots("/models/")
        .withAllow("mypkg.*", "other.features.*").withPython("/opt/venv/bin/python")
        .serviceSettings());
    assertFalse(s.equals(t.withAllow("mypkg.*").serviceSettings()));
  }

  @Test
  public void aPythonWithoutCrossinferGetsTheInstallCommand() {
    IllegalStateException missing =
        assertThrows(
            IllegalStateException.class,
            () -> LocalExpansionService.checkPython("/nonexistent/python3", "0.1.0"));
    assertThat(missing.getMessage(), containsString("cannot be run"));
    assertThat(missing.getMessage(), containsString("withPython"));
  }

  @Test
  public void onlyTheFieldsPythonReadsCross() {
    assertEquals(
        Arrays.asList("features", "id", "lang"),
        CrossInference.sklearn()
            .withModels("lang", Collections.singletonMap("en", "m.pkl"))
            .withFeatureField("features")
            .withPassthroughFields("id")
            .fieldsPythonReads());
    assertNull(CrossInference.sklearn("m").withPreprocess("p.m:f").fieldsPythonReads());
    assertNull(
        CrossInference.sklearn("m").withFeatureField("x").withPostprocess("p.m:f")
            .fieldsPythonReads());
    assertEquals(
        Arrays.asList("x"),
        CrossInference.sklearn("m").withFeatureField("x").withPostprocess("raw")
            .fieldsPythonReads());
  }

  @Test
  public void versionComesFromTheBuild() {
    assertTrue(CrossInference.VERSION, CrossInference.VERSION.matches("\\d+\\.\\d+\\.\\d+.*"));
  }

  @Test
  public void loopbackNeedsItsWorkerClasses() {
    LocalRuns.checkLoopbackClasses(CrossInferenceTest.class.getClassLoader());
    ClassLoader empty = new ClassLoader(null) {};
    IllegalStateException e =
        assertThrows(IllegalStateException.class, () -> LocalRuns.checkLoopbackClasses(empty));
    assertThat(e.getMessage(), containsString("com.github.jbellis:jamm"));
  }

  @Test
  public void localPortableRunsGetLoopbackAndAWorkerAddress() {
    PortablePipelineOptions options =
        PipelineOptionsFactory.fromArgs("--jobEndpoint=localhost:8099")
            .as(PortablePipelineOptions.class);
    options.setRunner(CrashingRunner.class);
    LocalRuns.prepare(options);
    assertNull("not the PortableRunner: untouched", options.getDefaultEnvironmentType());

    options.setDefaultEnvironmentType("LOOPBACK");
    LocalRuns.prepare(options);
    assertThat(options.getDefaultEnvironmentConfig(), org.hamcrest.Matchers.startsWith("localhost:"));
  }

  @Test
  public void displayDataShowsTheArguments() {
    org.apache.beam.sdk.transforms.display.DisplayData data =
        org.apache.beam.sdk.transforms.display.DisplayData.from(
            CrossInference.sklearn("gs://b/m.pkl").withFeatureField("features")
                .withExpansionService(SERVICE));
    String shown = data.toString();
    assertThat(shown, containsString("gs://b/m.pkl"));
    assertThat(shown, containsString("features"));
    assertThat(shown, containsString(SERVICE));
    assertThat(shown, containsString(CrossInference.VERSION));
  }
}
