package io.crossinfer;

import static org.hamcrest.MatcherAssert.assertThat;
import static org.hamcrest.Matchers.containsString;
import static org.hamcrest.Matchers.lessThan;
import static org.junit.Assert.assertThrows;

import java.net.InetAddress;
import java.net.ServerSocket;
import org.junit.Test;
import org.junit.runner.RunWith;
import org.junit.runners.JUnit4;

/** The job endpoint check: a live port passes, a dead one fails at once saying what to start. */
@RunWith(JUnit4.class)
public class JobEndpointTest {
  @Test
  public void aListeningEndpointPasses() throws Exception {
    try (ServerSocket server = new ServerSocket(0, 8, InetAddress.getLoopbackAddress())) {
      JobEndpoint.checkReachable("localhost:" + server.getLocalPort());
      JobEndpoint.checkReachable("127.0.0.1:" + server.getLocalPort());
    }
  }

  @Test
  public void aDeadEndpointFailsWithinFiveSecondsNamingBothJobServers() throws Exception {
    int port;
    try (ServerSocket server = new ServerSocket(0, 1, InetAddress.getLoopbackAddress())) {
      port = server.getLocalPort();
    }
    String endpoint = "localhost:" + port;
    long started = System.nanoTime();
    IllegalStateException e =
        assertThrows(IllegalStateException.class, () -> JobEndpoint.checkReachable(endpoint));
    assertThat((System.nanoTime() - started) / 1_000_000L, lessThan(5_000L));
    assertThat(e.getMessage(), containsString("--jobEndpoint=" + endpoint));
    assertThat(e.getMessage(), containsString("--job_port=" + port + " --serve_http=false"));
    assertThat(e.getMessage(), containsString("local_job_service_main --port " + port));
  }

  @Test
  public void notHostAndPortIsLeftToTheRunner() {
    JobEndpoint.checkReachable("embed");
    JobEndpoint.checkReachable("localhost:notaport");
  }
}
