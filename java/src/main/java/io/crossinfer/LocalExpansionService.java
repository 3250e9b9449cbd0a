package io.crossinfer;

import java.io.BufferedReader;
import java.io.File;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.Serializable;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collections;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.checkerframework.checker.nullness.qual.Nullable;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The crossinfer expansion service this JVM starts for itself when no address is given: {@code
 * python -m expansion_service} (the {@code crossinfer-expansion-service} command) from a Python
 * the user names, on a free loopback port, one per distinct {@link Settings}, stopped at JVM exit,
 * or, with {@code CROSSINFER_KEEP_SERVICE}, kept for the next JVM ({@link KeptServices}).
 *
 * <p>Beam's own {@code PythonService} is not used: it bootstraps a virtualenv and pip-installs
 * Beam into it, and Beam's auto-started service admits every Python callable ({@code *}).
 */
final class LocalExpansionService {
  private static final Logger LOG = LoggerFactory.getLogger(LocalExpansionService.class);

  /** Environment variable naming the Python to start the service with. */
  static final String PYTHON_ENV = "CROSSINFER_PYTHON";

  private static final String DEFAULT_PYTHON = "python3";
  private static final Pattern LISTENING =
      Pattern.compile("crossinfer expansion service listening on (\\S+)");
  private static final long START_TIMEOUT_SECONDS = 180;

  private static final Map<Settings, LocalExpansionService> RUNNING = new HashMap<>();

  /** What the started service is told; equal settings share one service. */
  static final class Settings implements Serializable {
    private static final long serialVersionUID = 1L;

    final @Nullable String python;
    final List<String> allow;
    final List<String> modelRoots;
    final List<String> trustedModelRoots;
    final @Nullable String sdkContainerImage;

    Settings(
        @Nullable String python,
        List<String> allow,
        List<String> modelRoots,
        List<String> trustedModelRoots,
        @Nullable String sdkContainerImage) {
      this.python = python;
      this.allow = Collections.unmodifiableList(new ArrayList<>(allow));
      this.modelRoots = Collections.unmodifiableList(new ArrayList<>(modelRoots));
      this.trustedModelRoots = Collections.unmodifiableList(new ArrayList<>(trustedModelRoots));
      this.sdkContainerImage = sdkContainerImage;
    }

    Settings withPython(String python) {
      return new Settings(python, allow, modelRoots, trustedModelRoots, sdkContainerImage);
    }

    Settings withAllow(List<String> globs) {
      return new Settings(python, globs, modelRoots, trustedModelRoots, sdkContainerImage);
    }

    Settings withModelRoots(List<String> roots) {
      return new Settings(python, allow, roots, trustedModelRoots, sdkContainerImage);
    }

    Settings withTrustedModelRoots(List<String> roots) {
      return new Settings(python, allow, modelRoots, roots, sdkContainerImage);
    }

    Settings withSdkContainerImage(String image) {
      return new Settings(python, allow, modelRoots, trustedModelRoots, image);
    }

    static Settings defaults() {
      List<String> none = Collections.emptyList();
      return new Settings(null, none, none, none, null);
    }

    /** The Python to run: the one named, else {@code $CROSSINFER_PYTHON}, else python3. */
    String resolvedPython() {
      if (python != null) {
        return python;
      }
      String env = System.getenv(PYTHON_ENV);
      return env == null || env.isEmpty() ? DEFAULT_PYTHON : env;
    }

    List<String> flags() {
      List<String> flags = new ArrayList<>();
      for (String glob : allow) {
        flags.add("--allow");
        flags.add(glob);
      }
      for (String root : modelRoots) {
        flags.add("--model-root");
        flags.add(root);
      }
      for (String root : trustedModelRoots) {
        flags.add("--trusted-model-root");
        flags.add(root);
      }
      if (sdkContainerImage != null) {
        flags.add("--sdk-container-image");
        flags.add(sdkContainerImage);
      }
      return flags;
    }

    @Override
    public boolean equals(@Nullable Object o) {
      if (!(o instanceof Settings)) {
        return false;
      }
      Settings s = (Settings) o;
      return resolvedPython().equals(s.resolvedPython()) && flags().equals(s.flags());
    }

    @Override
    public int hashCode() {
      return Objects.hash(resolvedPython(), flags());
    }

    @Override
    public String toString() {
      return resolvedPython() + " " + String.join(" ", flags());
    }
  }

  private final ProcessHandle process;
  private final String address;

  private LocalExpansionService(ProcessHandle process, String address) {
    this.process = process;
    this.address = address;
  }

  /** The address of the running service for {@code settings}, starting it if needed. */
  static synchronized String addressFor(Settings settings, String libraryVersion) {
    LocalExpansionService running = RUNNING.get(settings);
    if (running != null && running.process.isAlive()) {
      return running.address;
    }
    LocalExpansionService started = start(settings, libraryVersion);
    RUNNING.put(settings, started);
    return started.address;
  }

  private static LocalExpansionService start(Settings settings, String libraryVersion) {
    long keep = KeptServices.keepSeconds(System.getenv(KeptServices.KEEP_ENV));
    Path state = keep > 0 ? KeptServices.stateFile(settings.toString(), libraryVersion) : null;
    if (state != null) {
      KeptServices.Found kept = KeptServices.find(state, libraryVersion);
      if (kept != null) {
        System.err.println("crossinfer: expansion service log: " + KeptServices.logFile(state));
        LOG.info(
            "CrossInference uses the crossinfer expansion service kept at {} (pid {}, {}); {}",
            kept.address,
            kept.process.pid(),
            settings,
            state);
        return new LocalExpansionService(kept.process, kept.address);
      }
    }
    String python = settings.resolvedPython();
    // The check runs beside the service's start: each is a Python start (a second or more on a
    // busy machine). A service whose Python fails the check is stopped before anything uses it.
    Process probe = PythonCheck.start(python);
    List<String> command = new ArrayList<>();
    command.add(python);
    command.add("-m");
    command.add("expansion_service");
    command.add("--port");
    command.add("0"); // the service binds a free port on 127.0.0.1 and prints it
    command.addAll(settings.flags());
    if (state != null) {
      command.addAll(KeptServices.flags(keep, state));
    }
    Path log;
    Process process;
    try {
      if (state != null) { // it outlives this JVM: its log too
        log = KeptServices.logFile(state);
      } else {
        log = ServiceLogs.newLog(); // kept after the run: its path is printed below
      }
      ProcessBuilder builder = new ProcessBuilder(command);
      builder.environment().put("PYTHONUNBUFFERED", "1");
      builder.redirectError(ProcessBuilder.Redirect.appendTo(log.toFile()));
      builder.redirectInput(ProcessBuilder.Redirect.from(new File("/dev/null")));
      process = builder.start();
    } catch (IOException e) {
      probe.destroyForcibly();
      throw new IllegalStateException(
          String.format(
              "CrossInference could not start the crossinfer expansion service with %s: %s",
              command, e.getMessage()),
          e);
    }
    try {
      PythonCheck.check(probe, python, libraryVersion);
    } catch (RuntimeException e) {
      stop(process);
      throw e;
    }
    if (state == null) {
      Runtime.getRuntime().addShutdownHook(new Thread(() -> stop(process), "crossinfer-stop"));
    }
    // Printed whatever logging binding the user has (or none): where to look after the run.
    System.err.println("crossinfer: expansion service log: " + log);
    String address = awaitAddress(process, log);
    LOG.info(
        "CrossInference started the crossinfer expansion service at {} ({}); log {}{}",
        address,
        settings,
        log,
        state == null
            ? ""
            : String.format(
                "; kept for the next run until unused for %d s (pid %d)", keep, process.pid()));
    return new LocalExpansionService(process.toHandle(), address);
  }

  // The service prints "crossinfer expansion service listening on HOST:PORT" on stdout once it
  // serves; stdout is then drained so the pipe never fills.
  private static String awaitAddress(Process process, Path log) {
    BufferedReader stdout =
        new BufferedReader(
            new InputStreamReader(process.getInputStream(), StandardCharsets.UTF_8));
    CompletableFuture<String> address = new CompletableFuture<>();
    Thread reader =
        new Thread(
            () -> {
              try {
                String line;
                while ((line = stdout.readLine()) != null) {
                  Matcher m = LISTENING.matcher(line);
                  if (m.find()) {
                    address.complete(m.group(1));
                  }
                }
              } catch (IOException e) {
                // The process ended; the future below reports it.
              }
              address.complete(null);
            },
            "crossinfer-expansion-service-stdout");
    reader.setDaemon(true);
    reader.start();
    try {
      String found = address.get(START_TIMEOUT_SECONDS, TimeUnit.SECONDS);
      if (found != null) {
        return found;
      }
      process.waitFor(5, TimeUnit.SECONDS);
      throw new IllegalStateException(
          String.format(
              "The crossinfer expansion service CrossInference started exited (code %s) before "
                  + "it served:\n%s",
              process.isAlive() ? "none yet" : String.valueOf(process.exitValue()),
              tail(log)));
    } catch (TimeoutException e) {
      stop(process);
      throw new IllegalStateException(
          String.format(
              "The crossinfer expansion service CrossInference started did not serve within %d s:"
                  + "\n%s",
              START_TIMEOUT_SECONDS, tail(log)),
          e);
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      stop(process);
      throw new IllegalStateException("interrupted while starting the expansion service", e);
    } catch (ExecutionException e) {
      throw new IllegalStateException(e);
    }
  }

  private static void stop(Process process) {
    if (!process.isAlive()) {
      return;
    }
    process.destroy(); // SIGTERM: the service exits cleanly within ~2 s
    try {
      if (!process.waitFor(10, TimeUnit.SECONDS)) {
        process.destroyForcibly();
      }
    } catch (InterruptedException e) {
      process.destroyForcibly();
      Thread.currentThread().interrupt();
    }
  }

  private static String tail(Path log) {
    try {
      List<String> lines = Files.readAllLines(log, StandardCharsets.UTF_8);
      return String.join("\n", lines.subList(Math.max(0, lines.size() - 40), lines.size()));
    } catch (IOException e) {
      return "(no log: " + e.getMessage() + ")";
    }
  }

  @Override
  public String toString() {
    return "crossinfer expansion service at " + address + " (pid " + process.pid() + ")";
  }
}
