package io.crossinfer;

import java.io.IOException;
import java.io.InputStream;
import java.net.JarURLConnection;
import java.net.URL;
import java.net.URLConnection;
import java.util.Enumeration;
import java.util.Map;
import java.util.Properties;
import java.util.SortedMap;
import java.util.TreeMap;
import java.util.TreeSet;
import java.util.jar.JarEntry;
import java.util.jar.JarFile;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * Checks that the Beam Java jars on the classpath are all one version. Beam's modules share
 * internal APIs: a mix (say core 2.68 with a PortableRunner 2.65 that a dependency brought) fails
 * inside the runner with a NoClassDefFoundError, and the job then hangs. Each Beam jar carries its
 * Maven coordinates in {@code META-INF/maven/org.apache.beam/ARTIFACT/pom.properties}.
 */
final class BeamVersions {

  private static final String PREFIX = "META-INF/maven/org.apache.beam/";
  private static final Pattern PROPERTIES =
      Pattern.compile("^" + Pattern.quote(PREFIX) + "(beam-[^/]+)/pom\\.properties$");
  // Read when a listing of the jars is not possible (e.g. a classloader without jar URLs).
  private static final String[] KNOWN =
      new String[] {
        "beam-sdks-java-core",
        "beam-sdks-java-extensions-python",
        "beam-model-pipeline",
        "beam-model-job-management",
        "beam-model-fn-execution",
        "beam-runners-core-java",
        "beam-runners-java-fn-execution",
        "beam-runners-java-job-service",
        "beam-runners-portability-java",
        "beam-runners-google-cloud-dataflow-java",
        "beam-runners-direct-java",
        "beam-sdks-java-harness",
        "beam-sdks-java-expansion-service",
        "beam-sdks-java-transform-service-launcher",
        "beam-sdks-java-extensions-google-cloud-platform-core",
        "beam-sdks-java-io-google-cloud-platform"
      };

  private static volatile boolean checked;

  private BeamVersions() {}

  /** Fails if the Beam jars {@code loader} sees are of more than one version (once per JVM). */
  static void checkOneVersion(ClassLoader loader) {
    if (checked) {
      return;
    }
    String problem = describeMix(versions(loader));
    if (problem != null) {
      throw new IllegalStateException(problem);
    }
    checked = true;
  }

  /** Beam artifact name to its version(s), as the classpath holds them. */
  static SortedMap<String, TreeSet<String>> versions(ClassLoader loader) {
    SortedMap<String, TreeSet<String>> found = new TreeMap<>();
    try {
      Enumeration<URL> dirs = loader.getResources(PREFIX);
      while (dirs.hasMoreElements()) {
        URL dir = dirs.nextElement();
        // Beam's vendored libraries (grpc, guava) have their own versions and many entries.
        if (dir.getPath().contains("/beam-vendor-")) {
          continue;
        }
        URLConnection connection = dir.openConnection();
        if (connection instanceof JarURLConnection) {
          JarURLConnection jarConnection = (JarURLConnection) connection;
          jarConnection.setUseCaches(false);
          try (JarFile jar = jarConnection.getJarFile()) {
            Enumeration<JarEntry> entries = jar.entries();
            while (entries.hasMoreElements()) {
              JarEntry entry = entries.nextElement();
              Matcher artifact = PROPERTIES.matcher(entry.getName());
              if (artifact.matches()) {
                try (InputStream in = jar.getInputStream(entry)) {
                  add(found, artifact.group(1), in);
                }
              }
            }
          }
        }
      }
      for (String artifact : KNOWN) {
        Enumeration<URL> copies = loader.getResources(PREFIX + artifact + "/pom.properties");
        while (copies.hasMoreElements()) {
          try (InputStream in = copies.nextElement().openStream()) {
            add(found, artifact, in);
          }
        }
      }
    } catch (IOException e) {
      // Unreadable metadata proves nothing either way; the runner reports what it finds.
      return new TreeMap<>();
    }
    return found;
  }

  /**
   * The message for a mix of versions, or null when all jars agree. Names each version with its
   * artifacts and the dependencies to align to beam-sdks-java-core's version.
   */
  static String describeMix(SortedMap<String, TreeSet<String>> versions) {
    SortedMap<String, TreeSet<String>> byVersion = new TreeMap<>();
    for (Map.Entry<String, TreeSet<String>> artifact : versions.entrySet()) {
      for (String version : artifact.getValue()) {
        byVersion.computeIfAbsent(version, v -> new TreeSet<>()).add(artifact.getKey());
      }
    }
    if (byVersion.size() <= 1) {
      return null;
    }
    TreeSet<String> coreVersions = versions.get("beam-sdks-java-core");
    String core = coreVersions == null ? null : coreVersions.last();
    StringBuilder mix = new StringBuilder();
    TreeSet<String> toAlign = new TreeSet<>();
    for (Map.Entry<String, TreeSet<String>> version : byVersion.entrySet()) {
      mix.append(mix.length() == 0 ? "" : "; ")
          .append(version.getKey())
          .append(": ")
          .append(String.join(", ", version.getValue()));
      if (!version.getKey().equals(core)) {
        toAlign.addAll(version.getValue());
      }
    }
    return String.format(
        "CrossInference: the Beam Java jars on the classpath are of different versions (%s). "
            + "Beam's modules must all be one version, else the runner fails or hangs: declare "
            + "%s at %s, the version of beam-sdks-java-core, e.g. with one property for every "
            + "org.apache.beam dependency (Maven: <beam.version>, Gradle: a beamVersion "
            + "variable); `mvn dependency:tree -Dincludes=org.apache.beam` shows which "
            + "dependency brings another version",
        mix,
        String.join(", ", toAlign),
        core == null ? "one version" : core);
  }

  private static void add(SortedMap<String, TreeSet<String>> found, String artifact, InputStream in)
      throws IOException {
    Properties properties = new Properties();
    properties.load(in);
    String version = properties.getProperty("version");
    if (version != null && !version.isEmpty()) {
      found.computeIfAbsent(artifact, a -> new TreeSet<>()).add(version);
    }
  }
}
