package io.crossinfer;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.util.Arrays;
import java.util.List;
import org.apache.beam.sdk.options.PipelineOptions;
import org.apache.beam.sdk.options.PortablePipelineOptions;
import org.apache.beam.sdk.util.construction.Environments;
import org.checkerframework.checker.nullness.qual.Nullable;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Fills in what a local PortableRunner run needs before the Python transform is expanded, and
 * checks that the LOOPBACK Java worker can start.
 */
final class LocalRuns {
  private static final Logger LOG = LoggerFactory.getLogger(LocalRuns.class);

  private static final String PORTABLE_RUNNER =
      "org.apache.beam.runners.portability.PortableRunner";

  // Classes the in-process Java SDK harness (LOOPBACK) loads; without jamm it dies with
  // NoClassDefFoundError on its first bundle and the job waits forever.
  private static final List<String[]> LOOPBACK_CLASSES =
      Arrays.asList(
          new String[] {"org.github.jamm.MemoryMeter", "com.github.jbellis:jamm:0.4.0"},
          new String[] {
            "org.apache.beam.fn.harness.FnHarness",
            "org.apache.beam:beam-runners-portability-java (at your Beam version; it brings "
                + "beam-sdks-java-harness)"
          });

  private LocalRuns() {}

  /**
   * On the PortableRunner, fails at once if no job server listens at the job endpoint. With a job
   * server on this machine and no environment type, uses
   * LOOPBACK; for LOOPBACK, checks the worker's classes and picks the worker's address if none is
   * set. Beam Java needs that address when the transform is expanded, before {@code
   * PortableRunner.run()} would pick one, and then listens on it.
   */
  static void prepare(PipelineOptions options) {
    PortablePipelineOptions portable = options.as(PortablePipelineOptions.class);
    if (isPortableRunner(options) && portable.getJobEndpoint() != null) {
      JobEndpoint.checkReachable(portable.getJobEndpoint());
    }
    String type = portable.getDefaultEnvironmentType();
    if ((type == null || type.isEmpty())
        && isPortableRunner(options)
        && isLocal(portable.getJobEndpoint())) {
      LOG.info(
          "CrossInference: --defaultEnvironmentType is not set and the job server {} is on this "
              + "machine: using LOOPBACK (the Java stages run in this JVM)",
          portable.getJobEndpoint());
      portable.setDefaultEnvironmentType(Environments.ENVIRONMENT_LOOPBACK);
      type = Environments.ENVIRONMENT_LOOPBACK;
    }
    if (!Environments.ENVIRONMENT_LOOPBACK.equals(type)) {
      return;
    }
    checkLoopbackClasses(LocalRuns.class.getClassLoader());
    String address = Environments.getExternalServiceAddress(portable);
    if (address == null || address.isEmpty()) {
      portable.setDefaultEnvironmentConfig("localhost:" + freePort());
    }
  }

  static void checkLoopbackClasses(ClassLoader loader) {
    for (String[] needed : LOOPBACK_CLASSES) {
      try {
        Class.forName(needed[0], false, loader);
      } catch (ClassNotFoundException | LinkageError e) {
        throw new IllegalStateException(
            String.format(
                "CrossInference: --defaultEnvironmentType=LOOPBACK runs Beam's Java worker in "
                    + "this JVM, which needs %s on the runtime classpath (class %s is missing); "
                    + "depend on io.crossinfer:crossinfer with its runtime dependencies, and add "
                    + "%s",
                needed[1], needed[0], needed[1]),
            e);
      }
    }
  }

  private static boolean isPortableRunner(PipelineOptions options) {
    Class<?> runner = options.getRunner();
    return runner != null && PORTABLE_RUNNER.equals(runner.getName());
  }

  private static boolean isLocal(@Nullable String endpoint) {
    if (endpoint == null || endpoint.isEmpty()) {
      return false;
    }
    int colon = endpoint.lastIndexOf(':');
    String host = colon > 0 ? endpoint.substring(0, colon) : endpoint;
    if (host.equals("localhost")) {
      return true;
    }
    try {
      return InetAddress.getByName(host).isLoopbackAddress();
    } catch (IOException e) {
      return false;
    }
  }

  private static int freePort() {
    try (ServerSocket socket = new ServerSocket(0, 1, InetAddress.getLoopbackAddress())) {
      return socket.getLocalPort();
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
  }
}
