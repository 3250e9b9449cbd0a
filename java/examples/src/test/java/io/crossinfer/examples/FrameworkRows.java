package io.crossinfer.examples;

import io.crossinfer.CrossInference;
import java.io.IOException;
import java.util.Arrays;
import java.util.List;
import org.apache.beam.sdk.Pipeline;
import org.apache.beam.sdk.PipelineResult;
import org.apache.beam.sdk.io.TextIO;
import org.apache.beam.sdk.options.PipelineOptionsFactory;
import org.apache.beam.sdk.schemas.Schema;
import org.apache.beam.sdk.transforms.Create;
import org.apache.beam.sdk.transforms.ToJson;
import org.apache.beam.sdk.transforms.WithFailures;
import org.apache.beam.sdk.values.PCollection;
import org.apache.beam.sdk.values.Row;

/**
 * A Java pipeline, run by the end-to-end tests, that scores rows with one of the frameworks
 * that have a named factory and no other test program: {@link CrossInference#tensorflow} or
 * {@link CrossInference#xgboost}. Rows come from a file of {@code id,f1,...,fn} lines.
 *
 * <pre>
 * FrameworkRows OUT FRAMEWORK MODEL ROWS_CSV DATA_ROOT TRUSTED_ROOT [pipeline options]
 * </pre>
 *
 * <p>Writes {@code OUT-predictions.jsonl} and {@code OUT-failures.jsonl}.
 */
public final class FrameworkRows {
  private FrameworkRows() {}

  /**
   * Runs the pipeline.
   *
   * @param args output prefix, framework, model, rows file, roots, then pipeline options
   * @throws IOException if the rows cannot be read
   */
  public static void main(String[] args) throws IOException {
    String out = args[0];
    CrossInference inference;
    switch (args[1]) {
      case "tensorflow":
        inference = CrossInference.tensorflow(args[2]);
        break;
      case "xgboost":
        inference = CrossInference.xgboost(args[2]);
        break;
      default:
        throw new IllegalArgumentException("no test program for " + args[1]);
    }
    Schema schema = FeatureCsv.SCHEMA;
    List<Row> rows = FeatureCsv.read(args[3]);
    Pipeline p =
        Pipeline.create(
            PipelineOptionsFactory.fromArgs(Arrays.copyOfRange(args, 6, args.length)).create());
    WithFailures.Result<PCollection<Row>, Row> result =
        p.apply(Create.of(rows).withRowSchema(schema))
            .apply(
                inference
                    .withModelRoots(args[4])
                    .withTrustedModelRoots(args[5])
                    .withFeatureField("features")
                    .withPassthroughFields("id"));
    result
        .output()
        .apply("PredictionsToJson", ToJson.of())
        .apply(TextIO.write().to(out + "-predictions.jsonl").withoutSharding());
    result
        .failures()
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
