package io.crossinfer.examples;

import java.lang.reflect.Modifier;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.logging.Handler;
import java.util.logging.LogRecord;
import java.util.logging.Logger;
import org.apache.beam.model.pipeline.v1.Endpoints.ApiServiceDescriptor;
import org.apache.beam.sdk.fn.channel.ManagedChannelFactory;

/**
 * Runs {@link ClassifyRows} (same arguments), then reports the gRPC channels found garbage
 * collected without being shut down, each with the class and method that built it (the first
 * frame of its allocation site outside gRPC and Beam's channel factory).
 *
 * <p>gRPC reports such a channel only once the collector has found it and another channel is
 * built. After the run the audit builds a channel it never shuts down (a canary, which shows the
 * detection works), collects, and builds (and closes) a channel, until a canary is reported. Prints {@code orphan: <class.method>} per channel, then {@code audit done}. What gRPC
 * reported during the run went to the console (stderr), or, while Beam's in-process Java worker
 * ran, to the runner: Beam's worker replaces the JVM's log handlers meanwhile.
 */
public final class ChannelAudit {
  private static final String ORPHAN = "ManagedChannel allocation site";

  private ChannelAudit() {}

  /** Collects what gRPC's orphan detector logs (through java.util.logging). */
  private static final class Orphans extends Handler {
    private final List<Throwable> sites = new ArrayList<>();

    @Override
    public synchronized void publish(LogRecord record) {
      Throwable site = record.getThrown();
      if (site != null && ORPHAN.equals(site.getMessage())) {
        sites.add(site);
      }
    }

    synchronized List<Throwable> found() {
      return new ArrayList<>(sites);
    }

    @Override
    public void flush() {}

    @Override
    public void close() {}
  }

  /**
   * Runs the example, then the audit.
   *
   * @param args the arguments of {@link ClassifyRows}
   * @throws Exception if the run or the audit fails
   */
  public static void main(String[] args) throws Exception {
    ClassifyRows.main(args);
    Orphans orphans = new Orphans();
    Object first = channel();
    // gRPC's orphan detector logs as the wrapper class its builder returns.
    Logger detector = Logger.getLogger(first.getClass().getName());
    shutdownNow(first);
    // A canary per round: Beam's worker may reset the JVM's logging as it closes, after the
    // run returned; a canary reported to the handler shows the handler saw that round's report.
    for (int round = 0; round < 50 && !reported(orphans, "canary"); round++) {
      if (!Arrays.asList(detector.getHandlers()).contains(orphans)) {
        detector.addHandler(orphans);
      }
      canary();
      System.gc();
      Thread.sleep(100);
      shutdownNow(channel());
    }
    for (Throwable site : orphans.found()) {
      System.out.println("orphan: " + builder(site));
    }
    System.out.println("audit done");
  }

  private static void canary() {
    channel(); // built and dropped: an orphan on purpose
  }

  private static Object channel() {
    return ManagedChannelFactory.createDefault()
        .forDescriptor(ApiServiceDescriptor.newBuilder().setUrl("localhost:1").build());
  }

  // gRPC's package name carries its vendored version: ManagedChannel is reached by reflection.
  private static void shutdownNow(Object channel) throws ReflectiveOperationException {
    Class<?> type = channel.getClass();
    while (!Modifier.isPublic(type.getModifiers())) {
      type = type.getSuperclass();
    }
    type.getMethod("shutdownNow").invoke(channel);
  }

  private static boolean reported(Orphans orphans, String method) {
    for (Throwable site : orphans.found()) {
      if (builder(site).endsWith("." + method)) {
        return true;
      }
    }
    return false;
  }

  private static String builder(Throwable site) {
    for (StackTraceElement frame : site.getStackTrace()) {
      String name = frame.getClassName();
      if (!name.contains(".grpc.")
          && !name.endsWith(".ManagedChannelFactory")
          && !(name.equals(ChannelAudit.class.getName())
              && frame.getMethodName().equals("channel"))) {
        return name + "." + frame.getMethodName();
      }
    }
    return "?";
  }
}
