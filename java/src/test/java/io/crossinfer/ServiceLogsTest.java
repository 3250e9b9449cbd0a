package io.crossinfer;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertNotEquals;
import static org.junit.Assert.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.ArrayList;
import java.util.List;
import java.util.stream.Stream;
import org.junit.Rule;
import org.junit.Test;
import org.junit.rules.TemporaryFolder;
import org.junit.runner.RunWith;
import org.junit.runners.JUnit4;

/** The auto-started service's log: kept after the run, owner-only, the newest ones only. */
@RunWith(JUnit4.class)
public class ServiceLogsTest {
  @Rule public TemporaryFolder tmp = new TemporaryFolder();

  @Test
  public void logsAreOwnerOnlyDistinctAndPrunedToTheNewest() throws Exception {
    Path base = tmp.getRoot().toPath();
    List<Path> made = new ArrayList<>();
    for (int i = 0; i < ServiceLogs.KEPT + 5; i++) {
      made.add(ServiceLogs.newLog(base));
    }
    Path dir = made.get(0).getParent();
    assertEquals(base.resolve("crossinfer").resolve("logs"), dir);
    assertEquals("rwx------", PosixFilePermissions.toString(Files.getPosixFilePermissions(dir)));
    Path last = made.get(made.size() - 1);
    assertEquals("rw-------", PosixFilePermissions.toString(Files.getPosixFilePermissions(last)));
    assertNotEquals(made.get(made.size() - 2), last);
    try (Stream<Path> logs = Files.list(dir)) {
      assertEquals(ServiceLogs.KEPT, logs.count());
    }
    assertTrue(Files.exists(last));
    assertFalse(Files.exists(made.get(0)));
  }
}
