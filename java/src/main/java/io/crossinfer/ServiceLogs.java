package io.crossinfer;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.DirectoryStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.attribute.PosixFilePermissions;
import java.time.LocalDateTime;
import java.time.format.DateTimeFormatter;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;

/**
 * Where an auto-started service writes its log: a file that outlives the JVM, so a refused model
 * update or a worker's error can still be read after the run. {@code
 * $XDG_CACHE_HOME/crossinfer/logs} (else {@code ~/.cache/...}), owner-only; the newest {@link
 * #KEPT} logs stay, older ones are removed when a service starts.
 */
final class ServiceLogs {
  static final int KEPT = 20;
  private static final String PREFIX = "expansion-service-";
  private static final DateTimeFormatter STAMP = DateTimeFormatter.ofPattern("yyyyMMdd-HHmmss.SSS");

  private ServiceLogs() {}

  /** A new log file for a service started now by this JVM. */
  static Path newLog() {
    return newLog(cacheBase());
  }

  static Path newLog(Path base) {
    Path dir = base.resolve("crossinfer").resolve("logs");
    try {
      if (!Files.isDirectory(dir)) {
        Files.createDirectories(dir.getParent());
        Files.createDirectory(
            dir, PosixFilePermissions.asFileAttribute(PosixFilePermissions.fromString("rwx------")));
      }
      prune(dir, KEPT - 1);
      String name =
          PREFIX + LocalDateTime.now().format(STAMP) + "-" + ProcessHandle.current().pid();
      Path log = dir.resolve(name + "-01.log");
      for (int i = 2; Files.exists(log); i++) { // started within one millisecond
        log = dir.resolve(String.format("%s-%02d.log", name, i));
      }
      return Files.createFile(
          log, PosixFilePermissions.asFileAttribute(PosixFilePermissions.fromString("rw-------")));
    } catch (IOException e) {
      throw new UncheckedIOException(
          "CrossInference cannot create the service's log in " + dir + ": " + e.getMessage(), e);
    }
  }

  // Names sort by start time: keep the newest `keep`.
  private static void prune(Path dir, int keep) throws IOException {
    List<Path> logs = new ArrayList<>();
    try (DirectoryStream<Path> stream = Files.newDirectoryStream(dir, PREFIX + "*.log")) {
      stream.forEach(logs::add);
    }
    Collections.sort(logs);
    for (int i = 0; i < logs.size() - keep; i++) {
      Files.deleteIfExists(logs.get(i));
    }
  }

  private static Path cacheBase() {
    String cache = System.getenv("XDG_CACHE_HOME");
    return cache != null && !cache.isEmpty()
        ? Paths.get(cache)
        : Paths.get(System.getProperty("user.home"), ".cache");
  }
}
