package io.crossinfer;

import static io.crossinfer.Payloads.SERVICE;
import static io.crossinfer.Payloads.fieldNames;
import static io.crossinfer.Payloads.sentKwargs;
import static io.crossinfer.Payloads.set;
import static io.crossinfer.Payloads.typeOf;
import static org.hamcrest.MatcherAssert.assertThat;
import static org.hamcrest.Matchers.containsString;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertNotSame;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertThrows;
import static org.junit.Assert.assertTrue;

import java.util.Arrays;
import java.util.Collections;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import org.apache.beam.sdk.options.PipelineOptionsFactory;
import org.apache.beam.sdk.options.PortablePipelineOptions;
import org.apache.beam.sdk.schemas.Schema.FieldType;
import org.apache.beam.sdk.testing.CrashingRunner;
import org.apache.beam.sdk.values.Row;
import org.junit.Test;
import org.junit.runner.RunWith;
import org.junit.runners.JUnit4;

/** Tests for {@link CrossInference}: the payload it sends and what it refuses to send. */
@RunWith(JUnit4.class)
public class CrossInferenceTest {

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
            () -> PythonCheck.checkPython("/nonexistent/python3", "0.1.0"));
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
