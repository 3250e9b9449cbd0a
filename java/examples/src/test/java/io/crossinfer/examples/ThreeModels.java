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
import org.apache.beam.sdk.transforms.Reshuffle;
import org.apache.beam.sdk.transforms.ToJson;
import org.apache.beam.sdk.transforms.WithFailures;
import org.apache.beam.sdk.values.PCollection;
import org.apache.beam.sdk.values.Row;

/**
 * A batch job with three models of three frameworks, as a team would write it: scikit-learn
 * and Keras files under a trusted root, an XGBoost JSON model under a data-only root. Runs the
 * same job RUNS times in this JVM (the services it started stay for the next run); run by the
 * tests and by {@code bench/prism_three_models.py}.
 *
 * <pre>
 * ThreeModels OUT ROWS_CSV SKLEARN XGBOOST KERAS DATA_ROOT TRUSTED_ROOT RUNS [pipeline options]
 * </pre>
 *
 * <p>Writes {@code OUT-RUN-MODEL-predictions.jsonl} and {@code -failures.jsonl}; prints {@code
 * run N: done in S s} per run, and exits 1 at the first run that does not end DONE.
 */
public final class ThreeModels {
  private ThreeModels() {}

  /**
   * Runs the job.
   *
   * @param args see the class comment
   * @throws IOException if the rows cannot be read
   */
  public static void main(String[] args) throws IOException {
    Schema schema = FeatureCsv.SCHEMA;
    List<Row> rows = FeatureCsv.read(args[1]);
    int runs = Integer.parseInt(args[7]);
    String[] options = Arrays.copyOfRange(args, 8, args.length);
    for (int run = 1; run <= runs; run++) {
      long started = System.nanoTime();
      Pipeline p = Pipeline.create(PipelineOptionsFactory.fromArgs(options).create());
      // Reshuffled: the models' stage gets its rows in several bundles.
      PCollection<Row> input =
          p.apply(Create.of(rows).withRowSchema(schema))
              .apply(Reshuffle.viaRandomKey())
              .setRowSchema(schema);
      String out = args[0] + "-" + run;
      write(
          input.apply(
              "sklearn",
              CrossInference.sklearn(args[2])
                  .withTrustedModelRoots(args[6])
                  .withFeatureField("features")
                  .withPassthroughFields("id")),
          out + "-sklearn");
      write(
          input.apply(
              "xgboost",
              CrossInference.xgboost(args[3])
                  .withModelRoots(args[5])
                  .withFeatureField("features")
                  .withPassthroughFields("id")),
          out + "-xgboost");
      write(
          input.apply(
              "keras",
              CrossInference.tensorflow(args[4])
                  .withTrustedModelRoots(args[6])
                  .withFeatureField("features")
                  .withPassthroughFields("id")),
          out + "-keras");
      double built = (System.nanoTime() - started) / 1e9;
      PipelineResult.State state = p.run().waitUntilFinish();
      double seconds = (System.nanoTime() - started) / 1e9;
      System.out.printf("run %d: %s in %.1f s (built in %.1f s)%n", run, state, seconds, built);
      if (state != PipelineResult.State.DONE) {
        System.exit(1);
      }
    }
  }

  private static void write(WithFailures.Result<PCollection<Row>, Row> result, String out) {
    String name = out.substring(out.lastIndexOf('-') + 1);
    result
        .output()
        .apply(name + "PredictionsToJson", ToJson.of())
        .apply(
            name + "WritePredictions",
            TextIO.write().to(out + "-predictions.jsonl").withoutSharding());
    result
        .failures()
        .apply(name + "FailuresToJson", ToJson.of())
        .apply(name + "WriteFailures", TextIO.write().to(out + "-failures.jsonl").withoutSharding());
  }
}
