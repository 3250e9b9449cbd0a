package io.crossinfer;

import static io.crossinfer.Payloads.assertRejected;
import static io.crossinfer.Payloads.fieldNames;
import static io.crossinfer.Payloads.sentKwargs;
import static io.crossinfer.Payloads.set;
import static io.crossinfer.Payloads.typeOf;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertThrows;
import static org.junit.Assert.assertTrue;

import java.util.Arrays;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.Map;
import org.apache.beam.sdk.schemas.Schema;
import org.apache.beam.sdk.schemas.Schema.FieldType;
import org.apache.beam.sdk.values.Row;
import org.junit.Test;
import org.junit.runner.RunWith;
import org.junit.runners.JUnit4;

/** Tests for the {@code with…} methods of {@link CrossInference}: what each one sends. */
@RunWith(JUnit4.class)
public class CrossInferenceArgumentsTest {

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
}
