package io.crossinfer.examples;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.util.Map;
import org.apache.beam.model.pipeline.v1.RunnerApi;
import org.apache.beam.sdk.Pipeline;
import org.apache.beam.sdk.options.PipelineOptionsFactory;
import org.apache.beam.sdk.util.construction.BeamUrns;
import org.apache.beam.sdk.util.construction.PipelineTranslation;

/**
 * Builds {@link ClassifyRows}' pipeline with the Dataflow command line and prints, instead of
 * submitting it, what the portable pipeline proto the DataflowRunner submits (runner v2) holds:
 * the runner, each environment (URN, container image) and the transforms that run in it, as JSON.
 * Used by the tests, where there are no credentials to submit with: they pass Beam's {@code
 * --credentialFactoryClass=...NoopCredentialFactory} and {@code
 * --pathValidatorClass=...NoopPathValidator} so that creating the DataflowRunner touches no GCP
 * service.
 */
public final class DataflowTranslation {
  private DataflowTranslation() {}

  /**
   * Prints the translation.
   *
   * @param args ClassifyRows' options, including {@code --runner=DataflowRunner}
   * @throws Exception if the pipeline cannot be built
   */
  public static void main(String[] args) throws Exception {
    // No withValidation(): with the DataflowRunner it checks the GCS temp location over the
    // network; give --gcpTempLocation and nothing here touches GCS.
    ClassifyRows.Options options = PipelineOptionsFactory.fromArgs(args).as(ClassifyRows.Options.class);
    Pipeline pipeline = Pipeline.create(options);
    ClassifyRows.build(pipeline, options);
    RunnerApi.Pipeline proto = PipelineTranslation.toProto(pipeline);

    ObjectMapper json = new ObjectMapper();
    ObjectNode out = json.createObjectNode();
    out.put("runner", options.getRunner().getName());
    ObjectNode environments = out.putObject("environments");
    for (Map.Entry<String, RunnerApi.Environment> env :
        proto.getComponents().getEnvironmentsMap().entrySet()) {
      ObjectNode node = environments.putObject(env.getKey());
      node.put("urn", env.getValue().getUrn());
      if (env.getValue().getUrn().equals(BeamUrns.getUrn(RunnerApi.StandardEnvironments.Environments.DOCKER))) {
        node.put(
            "image",
            RunnerApi.DockerPayload.parseFrom(env.getValue().getPayload()).getContainerImage());
      }
      node.putArray("transforms");
    }
    ArrayNode display = out.putArray("display_data");
    for (Map.Entry<String, RunnerApi.PTransform> t :
        proto.getComponents().getTransformsMap().entrySet()) {
      String envId = t.getValue().getEnvironmentId();
      if (!envId.isEmpty()) {
        ((ArrayNode) environments.get(envId).get("transforms")).add(t.getValue().getUniqueName());
      }
      for (RunnerApi.DisplayData item : t.getValue().getDisplayDataList()) {
        if (item.getUrn().equals("beam:display_data:labelled:v1")) {
          RunnerApi.LabelledPayload payload = RunnerApi.LabelledPayload.parseFrom(item.getPayload());
          ObjectNode node = display.addObject();
          node.put("transform", t.getValue().getUniqueName());
          node.put("key", payload.getKey());
          node.put("value", payload.hasStringValue() ? payload.getStringValue() : payload.toString());
        }
      }
    }
    System.out.println(json.writerWithDefaultPrettyPrinter().writeValueAsString(out));
  }
}
