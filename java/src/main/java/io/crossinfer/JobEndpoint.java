package io.crossinfer;

import java.io.IOException;
import java.net.InetSocketAddress;
import java.net.Socket;

/**
 * Checks, before anything is started, that a job server listens at the PortableRunner's {@code
 * --jobEndpoint}: without one Beam waits up to its job-service deadline (minutes) and then reports
 * {@code DEADLINE_EXCEEDED}.
 */
final class JobEndpoint {
  static final int TIMEOUT_MILLIS = 3000;

  private JobEndpoint() {}

  /**
   * Throws an {@link IllegalStateException} saying how to start a job server if nothing accepts
   * a connection at {@code endpoint} ({@code host:port}) within {@link #TIMEOUT_MILLIS}.
   */
  static void checkReachable(String endpoint) {
    int colon = endpoint.lastIndexOf(':');
    if (colon <= 0) {
      return; // not host:port (e.g. a runner's own keyword): the runner says what it accepts
    }
    String host = endpoint.substring(0, colon);
    if (host.startsWith("[") && host.endsWith("]")) {
      host = host.substring(1, host.length() - 1);
    }
    int port;
    try {
      port = Integer.parseInt(endpoint.substring(colon + 1));
    } catch (NumberFormatException e) {
      return;
    }
    try (Socket socket = new Socket()) {
      socket.connect(new InetSocketAddress(host, port), TIMEOUT_MILLIS);
    } catch (IOException | IllegalArgumentException e) {
      throw new IllegalStateException(
          String.format(
              "CrossInference: no job server accepts connections at --jobEndpoint=%s (%s). "
                  + "Start one first, e.g. Beam's Prism runner: "
                  + "\"$(crossinfer-prism)\" --job_port=%d --serve_http=false "
                  + "(streaming and batch), or Beam's Python job server: python3 -m "
                  + "apache_beam.runners.portability.local_job_service_main --port %d (batch)",
              endpoint, e.getClass().getSimpleName(), port, port),
          e);
    }
  }
}
