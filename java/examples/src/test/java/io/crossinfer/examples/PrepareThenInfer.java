package io.crossinfer.examples;

import io.crossinfer.CrossInference;
import io.crossinfer.CrossPrepare;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import org.apache.beam.sdk.Pipeline;
import org.apache.beam.sdk.PipelineResult;
import org.apache.beam.sdk.io.TextIO;
import org.apache.beam.sdk.options.PipelineOptionsFactory;
import org.apache.beam.sdk.schemas.Schema;
import org.apache.beam.sdk.transforms.Create;
import org.apache.beam.sdk.transforms.Flatten;
import org.apache.beam.sdk.transforms.ToJson;
import org.apache.beam.sdk.transforms.WithFailures;
import org.apache.beam.sdk.values.PCollection;
import org.apache.beam.sdk.values.PCollectionList;
import org.apache.beam.sdk.values.Row;

/**
 * A Java pipeline, run by the end-to-end tests, that prepares rows of {@code id,x,color} with
 * {@link CrossPrepare}: {@code write} analyses them (x scaled to [0, 1], color through a
 * vocabulary) and saves the artifacts; {@code read} applies saved artifacts and then classifies
 * with {@link CrossInference} on the fields x and color, in one chain.
 *
 * <pre>
 * PrepareThenInfer OUT write|read ARTIFACTS MODEL ROWS_CSV TRUSTED_ROOT [pipeline options]
 * </pre>
 *
 * <p>Writes {@code OUT-output.jsonl} (prepared rows, or predictions) and {@code
 * OUT-failures.jsonl}.
 */
public final class PrepareThenInfer {
  private PrepareThenInfer() {}

  /**
   * Runs the pipeline.
   *
   * @param args output prefix, mode, artifacts, model, rows file, trusted root, then options
   * @throws IOException if the rows cannot be read
   */
  public static void main(String[] args) throws IOException {
    String out = args[0];
    boolean write = args[1].equals("write");
    String artifacts = args[2];
    String model = args[3];
    String root = args[5];
    Schema schema =
        Schema.builder()
            .addInt64Field("id")
            .addDoubleField("x")
            .addStringField("color")
            .build();
    List<Row> rows = new ArrayList<>();
    for (String line : Files.readAllLines(Paths.get(args[4]), StandardCharsets.UTF_8)) {
      if (!line.isEmpty()) {
        String[] v = line.split(",");
        rows.add(
            Row.withSchema(schema)
                .addValues(Long.parseLong(v[0]), Double.parseDouble(v[1]), v[2])
                .build());
      }
    }
    Pipeline p =
        Pipeline.create(
            PipelineOptionsFactory.fromArgs(Arrays.copyOfRange(args, 6, args.length)).create());
    PCollection<Row> input = p.apply(Create.of(rows).withRowSchema(schema));
    PCollection<Row> output;
    PCollection<Row> failures;
    if (write) {
      WithFailures.Result<PCollection<Row>, Row> prepared =
          input.apply(
              CrossPrepare.write(artifacts)
                  .scaleTo01("x")
                  .computeAndApplyVocabulary("color")
                  .withPassthroughFields("id")
                  .withTrustedModelRoots(root));
      output = prepared.output();
      failures = prepared.failures();
    } else {
      // Prepare, then infer: one chain, no mapping in between.
      WithFailures.Result<PCollection<Row>, Row> prepared =
          input.apply(
              CrossPrepare.read(artifacts).withPassthroughFields("id").withTrustedModelRoots(root));
      WithFailures.Result<PCollection<Row>, Row> predicted =
          prepared
              .output()
              .apply(
                  CrossInference.sklearn(model)
                      .withFeatureFields("x", "color")
                      .withPassthroughFields("id")
                      .withTrustedModelRoots(root));
      output = predicted.output();
      failures =
          PCollectionList.of(prepared.failures())
              .and(predicted.failures())
              .apply("AllFailures", Flatten.pCollections());
    }
    output
        .apply("OutputToJson", ToJson.of())
        .apply(TextIO.write().to(out + "-output.jsonl").withoutSharding());
    failures
        .apply("FailuresToJson", ToJson.of())
        .apply("WriteFailures", TextIO.write().to(out + "-failures.jsonl").withoutSharding());
    PipelineResult.State state = p.run().waitUntilFinish();
    if (state != PipelineResult.State.DONE) {
      System.err.println("pipeline ended " + state);
      System.exit(1);
    }
    System.out.println("done");
  }
}
