package io.crossinfer;

import java.io.BufferedReader;
import java.io.File;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;

/**
 * The check that a Python can run the crossinfer expansion service: it has crossinfer, Beam and
 * the service, and crossinfer's version is the Java library's. It is a Python start of its own,
 * so it runs beside the service's start.
 */
final class PythonCheck {
  // What the named Python has: modules the service needs that it lacks, and crossinfer's version.
  private static final String PROBE =
      "import importlib.util, importlib.metadata\n"
          + "missing = [m for m in ('crossinfer', 'expansion_service', 'apache_beam')"
          + " if importlib.util.find_spec(m) is None]\n"
          + "print('missing=' + ','.join(missing))\n"
          + "try:\n"
          + "    print('version=' + importlib.metadata.version('crossinfer'))\n"
          + "except importlib.metadata.PackageNotFoundError:\n"
          + "    print('version=')\n";

  private PythonCheck() {}

  /** Fails with what to do when {@code python} cannot run the service or has another version. */
  static void checkPython(String python, String libraryVersion) {
    check(start(python), python, libraryVersion);
  }

  /** Starts the check of {@code python}; {@link #check} reads its answer. */
  static Process start(String python) {
    try {
      return new ProcessBuilder(python, "-c", PROBE)
          .redirectErrorStream(true)
          .redirectInput(ProcessBuilder.Redirect.from(new File("/dev/null")))
          .start();
    } catch (IOException e) {
      throw new IllegalStateException(
          String.format(
              "CrossInference starts the crossinfer expansion service with Python %s, which "
                  + "cannot be run (%s); name a Python 3.10+ that has crossinfer with "
                  + "CrossInference.withPython(\"/path/to/python\") or the environment variable "
                  + "%s, or start the service yourself and pass its address to "
                  + "withExpansionService",
              python, e.getMessage(), LocalExpansionService.PYTHON_ENV),
          e);
    }
  }

  /** Fails with what to do unless {@code probe} says crossinfer {@code libraryVersion} is there. */
  static void check(Process probe, String python, String libraryVersion) {
    String how =
        String.format(
            "install crossinfer %s into that Python from the root of a crossinfer %s checkout "
                + "(the directory holding pyproject.toml; crossinfer is on no package index): "
                + "`%s -m pip install .`, or name another Python with "
                + "CrossInference.withPython(\"/path/to/python\") or the environment variable %s",
            libraryVersion, libraryVersion, python, LocalExpansionService.PYTHON_ENV);
    List<String> out = new ArrayList<>();
    int code;
    try {
      try (BufferedReader reader =
          new BufferedReader(
              new InputStreamReader(probe.getInputStream(), StandardCharsets.UTF_8))) {
        String line;
        while ((line = reader.readLine()) != null) {
          out.add(line);
        }
      }
      code = probe.waitFor();
    } catch (IOException e) {
      probe.destroyForcibly();
      throw new IllegalStateException("could not read what " + python + " says", e);
    } catch (InterruptedException e) {
      probe.destroyForcibly();
      Thread.currentThread().interrupt();
      throw new IllegalStateException("interrupted while checking " + python, e);
    }
    String missing = null;
    String version = null;
    for (String line : out) {
      if (line.startsWith("missing=")) {
        missing = line.substring("missing=".length());
      } else if (line.startsWith("version=")) {
        version = line.substring("version=".length());
      }
    }
    if (code != 0 || missing == null || version == null) {
      throw new IllegalStateException(
          String.format(
              "CrossInference could not ask Python %s about crossinfer (exit %d): %s; %s",
              python, code, String.join("\n", out), how));
    }
    if (!missing.isEmpty()) {
      throw new IllegalStateException(
          String.format(
              "Python %s has no crossinfer (missing modules: %s), which CrossInference needs to "
                  + "start the crossinfer expansion service; %s",
              python, missing, how));
    }
    if (!version.equals(libraryVersion)) {
      throw new IllegalStateException(
          String.format(
              "Python %s has crossinfer %s, but this Java library is crossinfer %s: the two "
                  + "sides must be the same version; %s",
              python, version.isEmpty() ? "(no version: not installed with pip)" : version,
              libraryVersion, how));
    }
  }
}
