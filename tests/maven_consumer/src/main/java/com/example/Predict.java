package com.example;

import io.crossinfer.CrossInference;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import org.apache.beam.sdk.Pipeline;
import org.apache.beam.sdk.PipelineResult;
import org.apache.beam.sdk.io.TextIO;
import org.apache.beam.sdk.options.Description;
import org.apache.beam.sdk.options.PipelineOptions;
import org.apache.beam.sdk.options.PipelineOptionsFactory;
import org.apache.beam.sdk.schemas.Schema;
import org.apache.beam.sdk.transforms.Create;
import org.apache.beam.sdk.transforms.ToJson;
import org.apache.beam.sdk.transforms.WithFailures;
import org.apache.beam.sdk.values.PCollection;
import org.apache.beam.sdk.values.Row;

/**
 * What a Java team writes: rows, one CrossInference apply, predictions and failures out.
 *
 * <pre>Predict MODEL.pkl OUT_PREFIX --runner=PortableRunner --jobEndpoint=localhost:8099
 * Predict gs://BUCKET/MODEL.pkl gs://BUCKET/OUT --runner=DataflowRunner --pythonImage=IMAGE ...</pre>
 */
public final class Predict {
  private Predict() {}

  /** The image of the Python stages, for Dataflow. */
  public interface Options extends PipelineOptions {
    @Description("Beam's Python SDK image with crossinfer installed (Dataflow)")
    String getPythonImage();

    void setPythonImage(String image);
  }

  public static void main(String[] args) {
    String model = args[0];
    String out = args[1];
    Options options =
        PipelineOptionsFactory.fromArgs(Arrays.copyOfRange(args, 2, args.length)).as(Options.class);
    Pipeline p = Pipeline.create(options);
    Schema schema =
        Schema.builder()
            .addInt64Field("id")
            .addNullableField("features", Schema.FieldType.array(Schema.FieldType.DOUBLE))
            .build();
    List<Row> rows = new ArrayList<>();
    for (int i = 0; i < 8; i++) {
      List<Double> features = new ArrayList<>();
      for (int j = 0; j < 4; j++) {
        features.add(i % 2 == 0 ? 1.0 + j : -1.0 - j);
      }
      rows.add(Row.withSchema(schema).addValues((long) i, features).build());
    }
    rows.add(Row.withSchema(schema).addValues(99L, null).build());

    // A pickle this project trained itself: its directory is a trusted root.
    CrossInference inference =
        CrossInference.sklearn(model)
            .withTrustedModelRoots(model.substring(0, model.lastIndexOf('/') + 1))
            .withFeatureField("features")
            .withPassthroughFields("id");
    if (options.getPythonImage() != null) {
      inference = inference.withSdkContainerImage(options.getPythonImage());
    }
    WithFailures.Result<PCollection<Row>, Row> result =
        p.apply(Create.of(rows).withRowSchema(schema)).apply(inference);
    result.output().apply("P", ToJson.of())
        .apply("WP", TextIO.write().to(out + "-predictions.jsonl").withoutSharding());
    result.failures().apply("F", ToJson.of())
        .apply("WF", TextIO.write().to(out + "-failures.jsonl").withoutSharding());
    PipelineResult.State state = p.run().waitUntilFinish();
    System.out.println("state=" + state);
  }
}
