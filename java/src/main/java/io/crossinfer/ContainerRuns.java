package io.crossinfer;

import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import java.util.regex.Pattern;
import org.apache.beam.sdk.options.PipelineOptions;
import org.apache.beam.sdk.options.PortablePipelineOptions;
import org.checkerframework.checker.nullness.qual.Nullable;

/**
 * Checks, while the pipeline is built, what a run whose workers are containers (Dataflow, or any
 * runner with {@code --defaultEnvironmentType=DOCKER}) needs from CrossInference: an image for the
 * Python stages, and model files the workers can read. Without these checks the first error
 * comes at submission ("Dataflow can only execute pipeline steps in Docker environments") or on
 * the workers, after the job started.
 */
final class ContainerRuns {

  // "gs://", "s3://", "hdfs://"...: a filesystem the workers reach over the network.
  private static final Pattern REMOTE = Pattern.compile("^[A-Za-z][A-Za-z0-9+.-]*://.*");

  private ContainerRuns() {}

  /** One location the workers open, and the Java call that set it (for the message). */
  static final class WorkerUri {
    final String method;
    final String uri;

    WorkerUri(String method, String uri) {
      this.method = method;
      this.uri = uri;
    }
  }

  /**
   * Every file location the workers open, from the Python keyword arguments. One list, so a new
   * argument that names a file (e.g. a model update pattern) is checked by adding it here.
   */
  static List<WorkerUri> urisWorkersRead(Map<String, Object> kwargs) {
    List<WorkerUri> uris = new ArrayList<>();
    Object modelUri = kwargs.get("model_uri");
    if (modelUri instanceof String) {
      uris.add(new WorkerUri("withModelUri", (String) modelUri));
    }
    Object models = kwargs.get("models");
    if (models instanceof Map) {
      for (Object uri : ((Map<?, ?>) models).values()) {
        uris.add(new WorkerUri("withModels", String.valueOf(uri)));
      }
    }
    Object updates = kwargs.get("model_updates");
    if (updates instanceof String) {
      uris.add(new WorkerUri("withModelUpdates", (String) updates));
    }
    return Collections.unmodifiableList(uris);
  }

  /** Whether the runner runs the Python stages in containers. */
  static boolean needsContainers(PipelineOptions options) {
    Class<?> runner = options.getRunner();
    if (runner != null && runner.getSimpleName().endsWith("DataflowRunner")) {
      return true;
    }
    String type = options.as(PortablePipelineOptions.class).getDefaultEnvironmentType();
    return "DOCKER".equalsIgnoreCase(type);
  }

  /** Whether workers on other machines can open {@code uri}: a remote filesystem's URI. */
  static boolean workersCanRead(String uri) {
    return REMOTE.matcher(uri).matches() && !uri.regionMatches(true, 0, "file:", 0, 5);
  }

  /**
   * Fails with the Java call to make when a container run lacks the Python image or names a model
   * the workers cannot read.
   *
   * @param startsService whether CrossInference starts the expansion service (no {@code
   *     withExpansionService}); a running service was given its image when it was started
   * @param image the image given with {@code withSdkContainerImage}, or null
   */
  static void check(
      PipelineOptions options,
      Map<String, Object> kwargs,
      boolean startsService,
      @Nullable String image) {
    if (!needsContainers(options)) {
      return;
    }
    String runner = options.getRunner() == null ? "this runner" : options.getRunner().getSimpleName();
    if (startsService && (image == null || image.isEmpty())) {
      throw new IllegalArgumentException(
          String.format(
              "CrossInference: %s runs the Python stages in containers, and no image is given "
                  + "for them; call withSdkContainerImage(\"REGISTRY/IMAGE:TAG\") with Beam's "
                  + "Python SDK image with crossinfer installed (see the Dockerfile of the "
                  + "expansion service), or withExpansionService(...) of a service started "
                  + "with --sdk-container-image",
              runner));
    }
    for (WorkerUri uri : urisWorkersRead(kwargs)) {
      if (!workersCanRead(uri.uri)) {
        throw new IllegalArgumentException(
            String.format(
                "CrossInference: %s(\"%s\") is a local path, which %s workers cannot read; copy "
                    + "the model where they can (e.g. gs://BUCKET/models/) and pass that URI to "
                    + "%s, with its prefix in withModelRoots/withTrustedModelRoots",
                uri.method, uri.uri, runner, uri.method));
      }
    }
  }
}
