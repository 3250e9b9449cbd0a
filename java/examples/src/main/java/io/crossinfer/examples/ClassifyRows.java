package io.crossinfer.examples;

import io.crossinfer.CrossInference;
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.channels.Channels;
import java.nio.charset.StandardCharsets;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.apache.beam.sdk.Pipeline;
import org.apache.beam.sdk.PipelineResult;
import org.apache.beam.sdk.io.FileSystems;
import org.apache.beam.sdk.io.TextIO;
import org.apache.beam.sdk.options.PipelineOptionsFactory;
import org.apache.beam.sdk.transforms.Filter;
import org.apache.beam.sdk.transforms.Flatten;
import org.apache.beam.sdk.transforms.JsonToRow;
import org.apache.beam.sdk.transforms.ToJson;
import org.apache.beam.sdk.transforms.WithFailures;
import org.apache.beam.sdk.values.PCollection;
import org.apache.beam.sdk.values.PCollectionList;
import org.apache.beam.sdk.values.Row;

/**
 * Example pipeline: classifies the rows of a JSON-lines file with a model run by {@link
 * CrossInference}, and writes predictions and failures as JSON lines.
 *
 * <p>Each input line is an object such as {@code {"id": 7, "features": [0.1, 2.0]}}, parsed by
 * Beam's {@link JsonToRow}; other keys are ignored. A missing or null feature array still becomes
 * a row, so the model side reports it as a failure; a line that does not parse into the schema
 * (not JSON, no integer {@code id}, a feature that is not a number) is a failure with stage
 * {@code "parse"}. Writes {@code <output>-predictions.jsonl} and {@code <output>-failures.jsonl},
 * then prints {@code predictions=N failures=M}. Options: {@link ClassifyRowsOptions}.
 *
 * <p>Locally, with Beam's Prism runner listening ({@code "$(crossinfer-prism)"
 * --job_port=8073 --serve_http=false}) and crossinfer installed in {@code python3} (or the
 * Python named by {@code CROSSINFER_PYTHON}):
 *
 * <pre>
 * classify-rows --input=rows.jsonl --output=out/run --modelUri=/models/model.pkl \
 *   --trustedModelRoots=/models --runner=PortableRunner --jobEndpoint=localhost:8073
 * </pre>
 */
public final class ClassifyRows {

  private ClassifyRows() {}

  /**
   * Runs the pipeline and prints the summary line.
   *
   * @param args pipeline options, see {@link ClassifyRowsOptions}
   * @throws IOException if the written files cannot be read back
   */
  public static void main(String[] args) throws IOException {
    ClassifyRowsOptions options =
        PipelineOptionsFactory.fromArgs(args).withValidation().as(ClassifyRowsOptions.class);
    Pipeline pipeline = Pipeline.create(options);
    build(pipeline, options);
    PipelineResult.State state = awaitFinish(pipeline.run());
    if (state != PipelineResult.State.DONE) {
      System.err.println("pipeline ended " + state);
      System.exit(1);
    }
    long predictions = countLines(options.getOutput() + "-predictions.jsonl");
    long failures = countLines(options.getOutput() + "-failures.jsonl");
    System.out.println("predictions=" + predictions + " failures=" + failures);
  }

  /**
   * Adds read, parse, inference and write to {@code pipeline}.
   *
   * @param pipeline the pipeline to build
   * @param options its options
   */
  public static void build(Pipeline pipeline, ClassifyRowsOptions options) {
    JsonToRow.ParseResult parsed =
        pipeline
            .apply("Read", TextIO.read().from(options.getInput()))
            .apply("SkipBlankLines", Filter.by((String line) -> !line.trim().isEmpty()))
            .apply(
                "Parse",
                JsonToRow.withExceptionReporting(
                        JsonRows.inputSchema(
                            options.getFeatureField(),
                            options.getFeatureType(),
                            options.getModelKeyField()))
                    .withExtendedErrorInfo());
    WithFailures.Result<PCollection<Row>, Row> result =
        parsed.getResults().apply("Classify", inference(options));
    result
        .output()
        .apply("PredictionsToJson", ToJson.of())
        .apply("WritePredictions", write(options.getOutput() + "-predictions.jsonl"));
    PCollectionList.of(result.failures().apply("FailuresToJson", ToJson.of()))
        .and(JsonRows.failures(parsed))
        .apply("AllFailures", Flatten.pCollections())
        .apply("WriteFailures", write(options.getOutput() + "-failures.jsonl"));
  }

  private static TextIO.Write write(String path) {
    return TextIO.write().to(path).withoutSharding();
  }

  /** The transform the options describe: one model, or several picked by a key field. */
  static CrossInference inference(ClassifyRowsOptions options) {
    // Any framework the Python side registers; an unknown name fails at expansion, naming it.
    CrossInference inference = CrossInference.of(options.getFramework());
    if (options.getModelKeyField() != null) {
      inference = inference.withModels(options.getModelKeyField(), models(options.getModels()));
    } else if (options.getModelUri() != null) {
      inference = inference.withModelUri(options.getModelUri());
    } else {
      throw new IllegalArgumentException("give --modelUri, or --modelKeyField and --models");
    }
    inference =
        inference
            .withFeatureField(options.getFeatureField())
            .withPassthroughFields("id")
            .withPostprocess(options.getPostprocess());
    if (options.getExpansionService() != null) {
      inference = inference.withExpansionService(options.getExpansionService());
    }
    if (options.getAllow() != null) {
      inference = inference.withAllow(options.getAllow().toArray(new String[0]));
    }
    if (options.getModelRoots() != null) {
      inference = inference.withModelRoots(options.getModelRoots().toArray(new String[0]));
    }
    if (options.getTrustedModelRoots() != null) {
      inference =
          inference.withTrustedModelRoots(options.getTrustedModelRoots().toArray(new String[0]));
    }
    if (options.getModelParams() != null) {
      Map<String, Object> params = new LinkedHashMap<>();
      for (String pair : options.getModelParams()) {
        int eq = pair.indexOf('=');
        if (eq <= 0) {
          throw new IllegalArgumentException("--modelParams: " + pair + " is not key=integer");
        }
        params.put(pair.substring(0, eq), Long.parseLong(pair.substring(eq + 1)));
      }
      inference = inference.withModelParams(params);
    }
    if (options.getLargeModel()) {
      inference = inference.withLargeModel(true);
    }
    if (options.getPythonContainerImage() != null) {
      inference = inference.withSdkContainerImage(options.getPythonContainerImage());
    }
    return options.getModelClass() == null
        ? inference
        : inference.withModelClass(options.getModelClass());
  }

  private static Map<String, String> models(List<String> pairs) {
    if (pairs == null || pairs.isEmpty()) {
      throw new IllegalArgumentException("--modelKeyField needs --models=key=uri,key=uri");
    }
    Map<String, String> models = new LinkedHashMap<>();
    for (String pair : pairs) {
      int eq = pair.indexOf('=');
      if (eq <= 0) {
        throw new IllegalArgumentException("--models: " + pair + " is not key=uri");
      }
      models.put(pair.substring(0, eq), pair.substring(eq + 1));
    }
    return models;
  }

  private static long countLines(String path) throws IOException {
    try (BufferedReader reader =
        new BufferedReader(
            new InputStreamReader(
                Channels.newInputStream(
                    FileSystems.open(FileSystems.matchSingleFileSpec(path).resourceId())),
                StandardCharsets.UTF_8))) {
      return reader.lines().filter(l -> !l.isEmpty()).count();
    }
  }

  /**
   * Waits for the job, asking for its state every 50 ms: PortableRunner's own waitUntilFinish
   * asks every 3 s, which a short local run pays in full. Then lets waitUntilFinish (one more
   * question, answered at once) propagate errors and close the worker service.
   */
  static PipelineResult.State awaitFinish(PipelineResult result) {
    try {
      while (!result.getState().isTerminal()) {
        Thread.sleep(50);
      }
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
    }
    return result.waitUntilFinish();
  }
}
