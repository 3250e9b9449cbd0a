package standin;

import com.google.api.services.dataflow.model.DataflowPackage;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.List;
import org.apache.beam.runners.dataflow.options.DataflowPipelineOptions;
import org.apache.beam.runners.dataflow.util.PackageUtil;
import org.apache.beam.runners.dataflow.util.Stager;
import org.apache.beam.sdk.options.PipelineOptions;

/**
 * The DataflowRunner's stager for tests against a stand-in Dataflow API
 * (--stagerClass=standin.LocalStager): uploads nothing, names each file at its usual staging
 * location, and writes what the runner stages from memory (the portable pipeline proto, for runner
 * v2) into the directory named by the environment variable STANDIN_STAGED, for the test to read.
 */
public final class LocalStager implements Stager {
  private final String stagingLocation;

  private LocalStager(String stagingLocation) {
    this.stagingLocation = stagingLocation;
  }

  /** Beam's StagerFactory calls this. */
  public static LocalStager fromOptions(PipelineOptions options) {
    return new LocalStager(options.as(DataflowPipelineOptions.class).getStagingLocation());
  }

  @Override
  public List<DataflowPackage> stageFiles(List<PackageUtil.StagedFile> files) {
    List<DataflowPackage> packages = new ArrayList<>();
    for (PackageUtil.StagedFile file : files) {
      packages.add(named(file.getDestination()));
    }
    return packages;
  }

  @Override
  public DataflowPackage stageToFile(byte[] bytes, String baseName) {
    try {
      Path dir = Paths.get(System.getenv("STANDIN_STAGED"));
      Files.createDirectories(dir);
      Files.write(dir.resolve(baseName), bytes);
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
    return named(baseName);
  }

  private DataflowPackage named(String name) {
    return new DataflowPackage()
        .setName(name)
        .setLocation(stagingLocation.replaceAll("/$", "") + "/" + name);
  }
}
