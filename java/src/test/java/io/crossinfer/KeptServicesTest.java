package io.crossinfer;

import static org.hamcrest.MatcherAssert.assertThat;
import static org.hamcrest.Matchers.containsString;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertThrows;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.assertFalse;

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import org.junit.Assume;
import org.junit.Rule;
import org.junit.Test;
import org.junit.rules.TemporaryFolder;
import org.junit.runner.RunWith;
import org.junit.runners.JUnit4;

/** CROSSINFER_KEEP_SERVICE's value, and state files that name no usable service. */
@RunWith(JUnit4.class)
public class KeptServicesTest {
  @Rule public TemporaryFolder tmp = new TemporaryFolder();

  @Test
  public void unsetOrZeroIsOffAndSecondsAreTaken() {
    assertEquals(0, KeptServices.keepSeconds(null));
    assertEquals(0, KeptServices.keepSeconds(" "));
    assertEquals(0, KeptServices.keepSeconds("0"));
    assertEquals(600, KeptServices.keepSeconds("600"));
  }

  @Test
  public void aValueThatIsNotSecondsNamesTheVariable() {
    for (String bad : new String[] {"10m", "-1", "99999999999"}) {
      IllegalArgumentException e =
          assertThrows(IllegalArgumentException.class, () -> KeptServices.keepSeconds(bad));
      assertThat(e.getMessage(), containsString("CROSSINFER_KEEP_SERVICE=" + bad));
      assertThat(e.getMessage(), containsString("seconds"));
    }
  }

  @Test
  public void aStateFileOfADeadProcessOrAnotherVersionIsNotUsed() throws Exception {
    Path state = tmp.newFile("s.json").toPath();
    long dead = new ProcessBuilder("true").start().onExit().get().pid();
    write(state, "{\"address\": \"127.0.0.1:1\", \"pid\": " + dead + ", \"version\": \"1\"}");
    assertNull(KeptServices.find(state, "1"));
    long alive = ProcessHandle.current().pid(); // alive, but no service listens at port 1
    write(state, "{\"address\": \"127.0.0.1:1\", \"pid\": " + alive + ", \"version\": \"1\"}");
    assertNull(KeptServices.find(state, "1"));
    assertNull(KeptServices.find(state, "2"));
    assertNull(KeptServices.find(tmp.getRoot().toPath().resolve("none.json"), "1"));
  }

  @Test
  public void theStateDirectoryIsMadeOwnerOnlyAndRefusedWhenOthersCanOpenIt() throws Exception {
    Path base = tmp.newFolder("cache").toPath();
    Path dir = KeptServices.directory(base);
    assertEquals("rwx------", PosixFilePermissions.toString(Files.getPosixFilePermissions(dir)));
    Files.setPosixFilePermissions(dir, PosixFilePermissions.fromString("rwxrwx---"));
    IllegalStateException e =
        assertThrows(IllegalStateException.class, () -> KeptServices.directory(base));
    assertThat(e.getMessage(), containsString("chmod 700"));
  }

  @Test
  public void aListenerIsTrustedOnlyWhenThisUserOwnsIt() throws Exception {
    try (ServerSocket mine = new ServerSocket(0, 1, InetAddress.getLoopbackAddress())) {
      assertTrue(KeptServices.listensAsThisUser("127.0.0.1:" + mine.getLocalPort()));
    }
    int closed;
    try (ServerSocket gone = new ServerSocket(0, 1, InetAddress.getLoopbackAddress())) {
      closed = gone.getLocalPort();
    }
    assertFalse(KeptServices.listensAsThisUser("127.0.0.1:" + closed));
  }

  /**
   * A SIGKILLed service's state file, and another local user now listening on its port (with a
   * live process): the JVM does not use it. Needs root and the second user that the setup makes.
   */
  @Test
  public void aStaleStateFileNeverLeadsToAnotherUsersListener() throws Exception {
    Assume.assumeTrue(
        "root and the user crossinfer-other are needed",
        "root".equals(System.getProperty("user.name"))
            && new ProcessBuilder("id", "crossinfer-other").start().waitFor() == 0);
    // A gRPC health service that says SERVING, run by the other user (built first, then the
    // process becomes that user and binds, so its listening socket is theirs).
    Process other =
        new ProcessBuilder(
                "python", "-c",
                "import os, pwd, time\n"
                    + "from concurrent.futures import ThreadPoolExecutor\n"
                    + "import grpc\n"
                    + "from grpc_health.v1 import health, health_pb2_grpc\n"
                    + "server = grpc.server(ThreadPoolExecutor(2))\n"
                    + "health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), "
                    + "server)\n"
                    + "u = pwd.getpwnam('crossinfer-other')\n"
                    + "os.setgroups([]); os.setgid(u.pw_gid); os.setuid(u.pw_uid)\n"
                    + "port = server.add_insecure_port('127.0.0.1:0'); server.start()\n"
                    + "print(port, flush=True); time.sleep(60)")
            .start();
    try {
      String port =
          new BufferedReader(new InputStreamReader(other.getInputStream(), StandardCharsets.UTF_8))
              .readLine();
      Assume.assumeTrue("python with grpc is needed", port != null);
      assertFalse(KeptServices.listensAsThisUser("127.0.0.1:" + port));
      Path state = tmp.newFile("stale.json").toPath();
      write(
          state,
          "{\"address\": \"127.0.0.1:" + port + "\", \"pid\": " + other.pid()
              + ", \"version\": \"1\"}");
      // It does answer as a serving service (the first channel of a JVM may take seconds).
      boolean answers = false;
      for (int i = 0; i < 5 && !answers; i++) {
        answers = KeptServices.serving("127.0.0.1:" + port);
      }
      assertTrue(answers);
      assertNull(KeptServices.find(state, "1"));
    } finally {
      other.destroyForcibly();
    }
  }

  private static void write(Path path, String text) throws Exception {
    Files.write(path, text.getBytes(StandardCharsets.UTF_8));
  }
}
