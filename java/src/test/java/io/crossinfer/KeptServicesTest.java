package io.crossinfer;

import static org.hamcrest.MatcherAssert.assertThat;
import static org.hamcrest.Matchers.containsString;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertThrows;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
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

  private static void write(Path path, String text) throws Exception {
    Files.write(path, text.getBytes(StandardCharsets.UTF_8));
  }
}
