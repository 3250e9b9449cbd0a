package io.crossinfer.examples;

import java.util.List;
import org.apache.beam.sdk.options.Default;
import org.apache.beam.sdk.options.Description;
import org.apache.beam.sdk.options.PipelineOptions;
import org.apache.beam.sdk.options.Validation;

/** Command-line options of {@link ClassifyRows}. */
public interface ClassifyRowsOptions extends PipelineOptions {
  /** @return the JSON-lines input file (or glob) */
  @Description("JSON-lines input: one object per line, {\"id\": <long>, \"features\": [...]}")
  @Validation.Required
  String getInput();

  /** @param input the JSON-lines input file (or glob) */
  void setInput(String input);

  /** @return the output prefix */
  @Description("Output prefix: writes <output>-predictions.jsonl and <output>-failures.jsonl")
  @Validation.Required
  String getOutput();

  /** @param output the output prefix */
  void setOutput(String output);

  /** @return the model framework */
  @Description("Model framework: sklearn, pytorch, onnx, tensorflow or xgboost")
  @Default.String("sklearn")
  String getFramework();

  /** @param framework the model framework */
  void setFramework(String framework);

  /** @return the model file */
  @Description("Model file, as the Python side sees it (local path, gs://...)")
  String getModelUri();

  /** @param modelUri the model file */
  void setModelUri(String modelUri);

  /** @return the PyTorch model class, or null */
  @Description("PyTorch state_dict only: the model class, \"package.module:ClassName\"")
  String getModelClass();

  /** @param modelClass the PyTorch model class */
  void setModelClass(String modelClass);

  /** @return the postprocess name */
  @Description("Postprocess: argmax, regression, raw or \"package.module:function\"")
  @Default.String("argmax")
  String getPostprocess();

  /** @param postprocess the postprocess name */
  void setPostprocess(String postprocess);

  /** @return the expansion service address, or null to have one started */
  @Description(
      "A running crossinfer expansion service, host:port; without it one is started from "
          + "$CROSSINFER_PYTHON, else python3")
  String getExpansionService();

  /** @param expansionService the expansion service address */
  void setExpansionService(String expansionService);

  /** @return globs of Python callables the started service admits */
  @Description("Python callables the started service admits, e.g. mypkg.features.* (repeatable)")
  List<String> getAllow();

  /** @param allow globs of Python callables the started service admits */
  void setAllow(List<String> allow);

  /** @return directories (or gs:// prefixes) the started service loads safe model formats from */
  @Description("Model repository roots of the started service (ONNX, state_dicts); repeatable")
  List<String> getModelRoots();

  /** @param roots directories (or gs:// prefixes) the started service loads safe formats from */
  void setModelRoots(List<String> roots);

  /** @return roots the started service also loads code formats (pickle, TorchScript) from */
  @Description(
      "Trusted model roots of the started service: pickle, joblib and TorchScript files load "
          + "only from these; repeatable")
  List<String> getTrustedModelRoots();

  /** @param roots roots the started service also loads code formats from */
  void setTrustedModelRoots(List<String> roots);

  /** @return the Docker image of the Python stages, or null */
  @Description(
      "For Dataflow: the worker image of the Python stages (Beam's Python SDK + crossinfer)")
  String getPythonContainerImage();

  /** @param image the Docker image of the Python stages */
  void setPythonContainerImage(String image);

  /** @return the input field that picks the model, or null */
  @Description("Several models: the JSON key (string) whose value picks the model from --models")
  String getModelKeyField();

  /** @param modelKeyField the input field that picks the model */
  void setModelKeyField(String modelKeyField);

  /** @return key=uri pairs of the models */
  @Description("Several models: key=modelUri pairs (with --modelKeyField instead of --modelUri)")
  List<String> getModels();

  /** @param models key=uri pairs of the models */
  void setModels(List<String> models);

  /** @return the name of the feature array field */
  @Description("The JSON key (and row field) that holds the feature array")
  @Default.String("features")
  String getFeatureField();

  /** @param featureField the name of the feature array field */
  void setFeatureField(String featureField);

  /** @return the element type of the feature array */
  @Description("Element type of the feature array: float64, or int64 for token ids")
  @Default.String("float64")
  String getFeatureType();

  /** @param featureType the element type of the feature array */
  void setFeatureType(String featureType);

  /** @return key=value keyword arguments of the model class, or null */
  @Description("pytorch state_dict: key=value keyword arguments of --modelClass (integer values)")
  List<String> getModelParams();

  /** @param params key=value keyword arguments of the model class */
  void setModelParams(List<String> params);

  /** @return whether the model is loaded once per machine and shared by the workers */
  @Description("A big model: loaded once per worker machine and shared by its processes")
  @Default.Boolean(false)
  boolean getLargeModel();

  /** @param largeModel whether the model is loaded once per machine */
  void setLargeModel(boolean largeModel);
}
