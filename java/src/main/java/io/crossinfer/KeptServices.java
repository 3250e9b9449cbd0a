package io.crossinfer;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.FileAlreadyExistsException;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.attribute.PosixFileAttributes;
import java.nio.file.attribute.PosixFilePermission;
import java.nio.file.attribute.PosixFilePermissions;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayList;
import java.util.List;
import java.util.Optional;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.checkerframework.checker.nullness.qual.Nullable;

/**
 * Expansion services kept between local runs ({@code CROSSINFER_KEEP_SERVICE=SECONDS}): the
 * first JVM starts one with {@code --idle-exit} and {@code --state-file}; a later JVM with the
 * same settings and version finds it through that file and uses it after a health check. The
 * files live in a directory only this user can open; the service removes its file when it exits.
 */
final class KeptServices {
  /** Environment variable: seconds a started service stays after its last use; unset or 0: off. */
  static final String KEEP_ENV = "CROSSINFER_KEEP_SERVICE";

  private static final long MAX_KEEP_SECONDS = 7 * 86400;
  private static final Pattern ADDRESS = Pattern.compile("\"address\":\\s*\"([^\"]{1,300})\"");
  private static final Pattern PID = Pattern.compile("\"pid\":\\s*(\\d{1,10})");
  private static final Pattern VERSION = Pattern.compile("\"version\":\\s*\"([^\"]{0,100})\"");

  private KeptServices() {}

  /**
   * Seconds to keep a started service, from {@value #KEEP_ENV}; 0 when unset.
   *
   * @param value the variable's value, or null
   * @return seconds, 0 for off
   */
  static long keepSeconds(@Nullable String value) {
    if (value == null || value.trim().isEmpty()) {
      return 0;
    }
    long seconds;
    try {
      seconds = Long.parseLong(value.trim());
    } catch (NumberFormatException e) {
      seconds = -1;
    }
    if (seconds < 0 || seconds > MAX_KEEP_SECONDS) {
      throw new IllegalArgumentException(
          String.format(
              "%s=%s: give the seconds a started crossinfer expansion service stays after its "
                  + "last use (0 to %d; 0 or unset: stopped when the JVM exits)",
              KEEP_ENV, value, MAX_KEEP_SECONDS));
    }
    return seconds;
  }

  /** The state file of the service for these settings and version (its directory is made). */
  static Path stateFile(String settings, String version) {
    return directory().resolve(key(settings, version) + ".json");
  }

  /** A kept service that answered. */
  static final class Found {
    final String address;
    final ProcessHandle process;

    private Found(String address, ProcessHandle process) {
      this.address = address;
      this.process = process;
    }
  }

  /** The log of the service of {@code stateFile}, beside it (it outlives the JVM too). */
  static Path logFile(Path stateFile) {
    String name = stateFile.getFileName().toString();
    return stateFile.resolveSibling(name.substring(0, name.length() - ".json".length()) + ".log");
  }

  /**
   * The kept service of {@code stateFile} if it answers a health check as serving, else null.
   * The answered check counts as use, so the service stays for its whole idle time.
   */
  static @Nullable Found find(Path stateFile, String version) {
    String text;
    try {
      text = new String(Files.readAllBytes(stateFile), StandardCharsets.UTF_8);
    } catch (IOException e) {
      return null; // none yet, or it just exited
    }
    Matcher address = ADDRESS.matcher(text);
    Matcher pid = PID.matcher(text);
    Matcher found = VERSION.matcher(text);
    if (!address.find() || !pid.find() || !found.find() || !found.group(1).equals(version)) {
      return null;
    }
    Optional<ProcessHandle> process = ProcessHandle.of(Long.parseLong(pid.group(1)));
    if (!process.isPresent() || !process.get().isAlive()) {
      return null;
    }
    // A stale file (its service SIGKILLed) may name a port that someone else now listens on:
    // only a listener of this user is trusted, before any request is sent to it.
    if (!listensAsThisUser(address.group(1))) {
      return null;
    }
    return serving(address.group(1)) ? new Found(address.group(1), process.get()) : null;
  }

  /**
   * Whether the socket listening on {@code address}'s port (loopback) belongs to this process's
   * user, read from the kernel's socket tables ({@code /proc/self/net/tcp{,6}}: the uid column).
   * False when it cannot be told.
   */
  static boolean listensAsThisUser(String address) {
    int colon = address.lastIndexOf(':');
    int port;
    try {
      port = Integer.parseInt(address.substring(colon + 1));
    } catch (NumberFormatException e) {
      return false;
    }
    Object self;
    try {
      self = Files.getAttribute(Paths.get("/proc/self"), "unix:uid");
    } catch (IOException | UnsupportedOperationException e) {
      return false;
    }
    for (String table : new String[] {"/proc/self/net/tcp", "/proc/self/net/tcp6"}) {
      List<String> lines;
      try {
        lines = Files.readAllLines(Paths.get(table), StandardCharsets.US_ASCII);
      } catch (IOException e) {
        continue;
      }
      for (String line : lines) {
        String[] parts = line.trim().split("\\s+");
        // sl local_address rem_address st ... uid: state 0A is LISTEN
        if (parts.length < 8 || !"0A".equals(parts[3])) {
          continue;
        }
        String local = parts[1];
        int at = local.indexOf(':');
        if (at < 0 || Integer.parseInt(local.substring(at + 1), 16) != port) {
          continue;
        }
        return parts[7].equals(self.toString());
      }
    }
    return false;
  }

  static boolean serving(String address) {
    int colon = address.lastIndexOf(':');
    if (colon <= 0) {
      return false;
    }
    String host = address.substring(0, colon).replace("[", "").replace("]", "");
    try {
      // Gone, stopping (not SERVING), or not ours: false.
      return HealthProbe.serving(host, Integer.parseInt(address.substring(colon + 1)), 3000);
    } catch (NumberFormatException e) {
      return false;
    }
  }

  /** The flags that make a started service a kept one. */
  static List<String> flags(long keepSeconds, Path stateFile) {
    List<String> flags = new ArrayList<>();
    flags.add("--idle-exit");
    flags.add(Long.toString(keepSeconds));
    flags.add("--state-file");
    flags.add(stateFile.toString());
    return flags;
  }

  // $XDG_CACHE_HOME/crossinfer/services, else ~/.cache/...
  private static Path directory() {
    String cache = System.getenv("XDG_CACHE_HOME");
    return directory(
        cache != null && !cache.isEmpty()
            ? Paths.get(cache)
            : Paths.get(System.getProperty("user.home"), ".cache"));
  }

  /** {@code base}/crossinfer/services, made owner-only if new; refused if others can open it. */
  static Path directory(Path base) {
    Path dir = base.resolve("crossinfer").resolve("services");
    try {
      Files.createDirectories(dir.getParent());
      try {
        Files.createDirectory(
            dir, PosixFilePermissions.asFileAttribute(PosixFilePermissions.fromString("rwx------")));
      } catch (FileAlreadyExistsException e) {
        // checked below
      }
      PosixFileAttributes attributes =
          Files.readAttributes(dir, PosixFileAttributes.class, LinkOption.NOFOLLOW_LINKS);
      boolean mine = attributes.isDirectory() && ownedByThisProcess(dir);
      boolean shared = false;
      for (PosixFilePermission p : attributes.permissions()) {
        shared |= p.name().startsWith("GROUP") || p.name().startsWith("OTHERS");
      }
      if (!mine || shared) {
        throw new IllegalStateException(
            String.format(
                "%s: %s must be a directory of yours that no one else can open (chmod 700 "
                    + "it), since it says where your kept services listen",
                KEEP_ENV, dir));
      }
    } catch (IOException e) {
      throw new UncheckedIOException(KEEP_ENV + ": cannot make " + dir, e);
    }
    return dir;
  }

  // By uid (this process's is that of /proc/self): a user name can be missing in a container.
  private static boolean ownedByThisProcess(Path dir) throws IOException {
    Path self = Paths.get("/proc/self");
    if (Files.exists(self)) {
      return Files.getAttribute(dir, "unix:uid", LinkOption.NOFOLLOW_LINKS)
          .equals(Files.getAttribute(self, "unix:uid"));
    }
    return Files.getOwner(dir, LinkOption.NOFOLLOW_LINKS)
        .getName()
        .equals(System.getProperty("user.name"));
  }

  private static String key(String settings, String version) {
    try {
      byte[] digest =
          MessageDigest.getInstance("SHA-256")
              .digest((settings + "\0" + version).getBytes(StandardCharsets.UTF_8));
      StringBuilder hex = new StringBuilder();
      for (int i = 0; i < 8; i++) {
        hex.append(String.format("%02x", digest[i]));
      }
      return hex.toString();
    } catch (NoSuchAlgorithmException e) {
      throw new IllegalStateException(e);
    }
  }
}
