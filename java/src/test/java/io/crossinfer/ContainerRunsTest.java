package io.crossinfer;

import static org.hamcrest.MatcherAssert.assertThat;
import static org.hamcrest.Matchers.containsString;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertThrows;
import static org.junit.Assert.assertTrue;

import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.SortedMap;
import java.util.TreeMap;
import java.util.TreeSet;
import java.util.stream.Collectors;
import org.apache.beam.sdk.options.PipelineOptions;
import org.apache.beam.sdk.options.PipelineOptionsFactory;
import org.apache.beam.sdk.testing.CrashingRunner;
import org.junit.Test;
import org.junit.runner.RunWith;
import org.junit.runners.JUnit4;

/** Tests for {@link ContainerRuns} and {@link BeamVersions}: what container runs refuse. */
@RunWith(JUnit4.class)
public class ContainerRunsTest {

  @Test
  public void remoteUrisAreReadableAndLocalPathsAreNot() {
    for (String uri : Arrays.asList("gs://b/m.pkl", "s3://b/m.onnx", "hdfs://nn/m.pt")) {
      assertTrue(uri, ContainerRuns.workersCanRead(uri));
    }
    for (String uri :
        Arrays.asList("/models/m.pkl", "m.pkl", "file:///models/m.pkl", "FILE:/m.pkl", "C:x")) {
      assertFalse(uri, ContainerRuns.workersCanRead(uri));
    }
  }

  @Test
  public void everyModelUriIsListed() {
    Map<String, String> models = new LinkedHashMap<>();
    models.put("a", "gs://b/a.pkl");
    models.put("b", "/local/b.pkl");
    SortedMap<String, Object> kwargs = new TreeMap<>();
    kwargs.put("models", models);
    assertEquals(
        Arrays.asList("withModels gs://b/a.pkl", "withModels /local/b.pkl"),
        ContainerRuns.urisWorkersRead(kwargs).stream()
            .map(u -> u.method + " " + u.uri)
            .collect(Collectors.toList()));
    kwargs.clear();
    kwargs.put("model_uri", "/m.pkl");
    assertEquals("withModelUri", ContainerRuns.urisWorkersRead(kwargs).get(0).method);
    kwargs.put("model_updates", "/models/m-*.pkl");
    assertEquals(
        "withModelUpdates /models/m-*.pkl",
        ContainerRuns.urisWorkersRead(kwargs).stream()
            .map(u -> u.method + " " + u.uri)
            .collect(Collectors.toList())
            .get(1));
  }

  @Test
  public void onlyContainerRunsAreChecked() {
    SortedMap<String, Object> kwargs = new TreeMap<>();
    kwargs.put("model_uri", "/local/m.pkl");
    PipelineOptions local = PipelineOptionsFactory.create();
    local.setRunner(CrashingRunner.class);
    ContainerRuns.check(local, kwargs, true, null); // a local run may read local files

    PipelineOptions docker =
        PipelineOptionsFactory.fromArgs("--defaultEnvironmentType=DOCKER").create();
    docker.setRunner(CrashingRunner.class);
    IllegalArgumentException noImage =
        assertThrows(
            IllegalArgumentException.class, () -> ContainerRuns.check(docker, kwargs, true, null));
    assertThat(noImage.getMessage(), containsString("call withSdkContainerImage("));
    // A running service was given its image when it started; the model path is still local.
    IllegalArgumentException local2 =
        assertThrows(
            IllegalArgumentException.class, () -> ContainerRuns.check(docker, kwargs, false, null));
    assertThat(local2.getMessage(), containsString("withModelUri(\"/local/m.pkl\") is a local path"));
    kwargs.put("model_uri", "gs://b/m.pkl");
    ContainerRuns.check(docker, kwargs, true, "img:1");
  }

  @Test
  public void mixedBeamVersionsAreNamed() {
    SortedMap<String, TreeSet<String>> versions = new TreeMap<>();
    versions.put("beam-sdks-java-core", new TreeSet<>(Arrays.asList("2.68.0")));
    versions.put("beam-runners-portability-java", new TreeSet<>(Arrays.asList("2.65.0")));
    versions.put("beam-runners-core-java", new TreeSet<>(Arrays.asList("2.65.0", "2.68.0")));
    String message = BeamVersions.describeMix(versions);
    assertThat(
        message,
        containsString(
            "(2.65.0: beam-runners-core-java, beam-runners-portability-java; "
                + "2.68.0: beam-runners-core-java, beam-sdks-java-core)"));
    assertThat(
        message,
        containsString("declare beam-runners-core-java, beam-runners-portability-java at 2.68.0"));
    versions.remove("beam-runners-portability-java");
    versions.remove("beam-runners-core-java");
    assertEquals(null, BeamVersions.describeMix(versions));
  }

  @Test
  public void thisClasspathHasOneBeamVersion() {
    SortedMap<String, TreeSet<String>> found =
        BeamVersions.versions(ContainerRunsTest.class.getClassLoader());
    assertTrue(found.toString(), found.containsKey("beam-sdks-java-core"));
    assertTrue(found.toString(), found.containsKey("beam-sdks-java-extensions-python"));
    assertEquals(null, BeamVersions.describeMix(found));
    BeamVersions.checkOneVersion(ContainerRunsTest.class.getClassLoader());
  }
}
