package io.crossinfer.examples;

import io.crossinfer.CrossInference;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.apache.beam.sdk.Pipeline;
import org.apache.beam.sdk.PipelineResult;
import org.apache.beam.sdk.io.TextIO;
import org.apache.beam.sdk.options.PipelineOptionsFactory;
import org.apache.beam.sdk.schemas.Schema;
import org.apache.beam.sdk.transforms.Create;
import org.apache.beam.sdk.transforms.MapElements;
import org.apache.beam.sdk.transforms.ToJson;
import org.apache.beam.sdk.transforms.WithFailures;
import org.apache.beam.sdk.values.PCollection;
import org.apache.beam.sdk.values.Row;
import org.apache.beam.sdk.values.TypeDescriptors;

/**
 * One Java pipeline, run by the end-to-end tests, that uses {@link CrossInference} four ways at
 * once (one job, one auto-started expansion service): several models picked by a key field,
 * blocks with a batch cap, a custom postprocess with an ordered output schema, and a PyTorch
 * state_dict with nested model parameters. Rows come from a file of {@code id,f1,...,fn} lines.
 *
 * <pre>
 * EndToEnd OUT ROWS_CSV MODEL_A.pkl MODEL_B.pkl STATE_DICT.pt [pipeline options]
 * </pre>
 *
 * <p>Writes {@code OUT-<name>-predictions.jsonl} and {@code OUT-<name>-failures.jsonl} for the
 * names keyed, blocks, postprocess and statedict, and {@code OUT-schemas.txt} with each output's
 * field names in order.
 */
public final class EndToEnd {
  private EndToEnd() {}

  /**
   * Runs the pipeline.
   *
   * @param args output prefix, rows file, two sklearn models, a state_dict, then pipeline options
   * @throws IOException if the rows cannot be read
   */
  public static void main(String[] args) throws IOException {
    String out = args[0];
    List<double[]> features = new ArrayList<>();
    for (String line : Files.readAllLines(Paths.get(args[1]), StandardCharsets.UTF_8)) {
      if (!line.isEmpty()) {
        features.add(Arrays.stream(line.split(",")).mapToDouble(Double::parseDouble).toArray());
      }
    }
    String modelA = args[2];
    String modelB = args[3];
    String stateDict = args[4];
    Pipeline p =
        Pipeline.create(
            PipelineOptionsFactory.fromArgs(Arrays.copyOfRange(args, 5, args.length)).create());
    // Same service settings everywhere: one service for the whole JVM.
    // The models are pickles and a state_dict the test made itself: their directories are trusted.
    String[] roots = {parent(modelA), parent(modelB), parent(stateDict)};
    CrossInference base =
        CrossInference.sklearn().withAllow("tests.models.*").withTrustedModelRoots(roots);
    StringBuilder schemas = new StringBuilder();

    // Several models: rows keyed "a"/"b"; an unused column that must not cross; one unknown key.
    Schema keyed =
        Schema.builder()
            .addInt64Field("id")
            .addStringField("which")
            .addArrayField("features", Schema.FieldType.DOUBLE)
            .addStringField("comment")
            .build();
    List<Row> keyedRows = new ArrayList<>();
    for (int i = 0; i < features.size(); i++) {
      keyedRows.add(
          Row.withSchema(keyed)
              .addValues((long) i, i % 2 == 0 ? "a" : "b", list(features.get(i)), "unused " + i)
              .build());
    }
    keyedRows.add(
        Row.withSchema(keyed).addValues(9999L, "zzz", list(features.get(0)), "no model").build());
    Map<String, String> models = new LinkedHashMap<>();
    models.put("a", modelA);
    models.put("b", modelB);
    write(
        out,
        "keyed",
        p.apply("KeyedRows", Create.of(keyedRows).withRowSchema(keyed))
            .apply(
                "Keyed",
                base.withModels("which", models)
                    .withFeatureField("features")
                    .withPassthroughFields("id")),
        schemas);

    // Blocks of 10 rows, column by column, scored at most 4 rows per model call.
    Schema block =
        Schema.builder()
            .addArrayField("id", Schema.FieldType.INT64)
            .addArrayField("features", Schema.FieldType.array(Schema.FieldType.DOUBLE))
            .build();
    List<Row> blocks = new ArrayList<>();
    for (int start = 0; start < features.size(); start += 10) {
      List<Long> ids = new ArrayList<>();
      List<List<Double>> rows = new ArrayList<>();
      for (int i = start; i < Math.min(start + 10, features.size()); i++) {
        ids.add((long) i);
        rows.add(list(features.get(i)));
      }
      blocks.add(Row.withSchema(block).addValues(ids, rows).build());
    }
    write(
        out,
        "blocks",
        p.apply("BlockRows", Create.of(blocks).withRowSchema(block))
            .apply(
                "Blocks",
                base.withModelUri(modelA)
                    .withFeatureField("features")
                    .withPassthroughFields("id")
                    .withBlocks(true)
                    .withMaxBatchSize(4)),
        schemas);

    // A custom postprocess whose fields come out in the declared order, not sorted.
    Schema plain =
        Schema.builder()
            .addInt64Field("id")
            .addArrayField("features", Schema.FieldType.DOUBLE)
            .build();
    List<Row> plainRows = new ArrayList<>();
    for (int i = 0; i < features.size(); i++) {
      plainRows.add(Row.withSchema(plain).addValues((long) i, list(features.get(i))).build());
    }
    PCollection<Row> input = p.apply("PlainRows", Create.of(plainRows).withRowSchema(plain));
    write(
        out,
        "postprocess",
        input.apply(
            "Postprocess",
            base.withModelUri(modelA)
                .withFeatureField("features")
                .withPassthroughFields("id")
                .withPostprocess("tests.models:label_name")
                .withOutputSchema("top", "float64", "name", "string")),
        schemas);

    // A PyTorch state_dict: model class and nested parameters from Java.
    Map<String, Object> params = new LinkedHashMap<>();
    params.put("hidden", 16);
    write(
        out,
        "statedict",
        input.apply(
            "StateDict",
            CrossInference.pytorch(stateDict)
                .withAllow("tests.models.*")
                .withTrustedModelRoots(roots)
                .withModelClass("tests.models:MLP")
                .withModelParams(params)
                .withFeatureField("features")
                .withPassthroughFields("id")),
        schemas);

    Files.write(Paths.get(out + "-schemas.txt"), schemas.toString().getBytes(StandardCharsets.UTF_8));
    PipelineResult.State state = p.run().waitUntilFinish();
    if (state != PipelineResult.State.DONE) {
      System.err.println("pipeline ended " + state);
      System.exit(1);
    }
    System.out.println("done");
  }

  private static List<Double> list(double[] values) {
    List<Double> list = new ArrayList<>();
    for (double v : values) {
      list.add(v);
    }
    return list;
  }

  private static void write(
      String out, String name, WithFailures.Result<PCollection<Row>, Row> result, StringBuilder schemas) {
    schemas
        .append(name)
        .append(' ')
        .append(String.join(",", result.output().getSchema().getFieldNames()))
        .append('\n');
    result
        .output()
        .apply(name + "PredictionsToJson", ToJson.of())
        .apply(
            name + "WritePredictions",
            TextIO.write().to(out + "-" + name + "-predictions.jsonl").withoutSharding());
    result
        .failures()
        .apply(name + "FailuresToJson", ToJson.of())
        .apply(
            name + "WriteFailures",
            TextIO.write().to(out + "-" + name + "-failures.jsonl").withoutSharding());
  }

  private static String parent(String path) {
    return Paths.get(path).toAbsolutePath().getParent().toString();
  }
}
