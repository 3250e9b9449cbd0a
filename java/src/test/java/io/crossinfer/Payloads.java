package io.crossinfer;

import static org.hamcrest.MatcherAssert.assertThat;
import static org.hamcrest.Matchers.containsString;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertThrows;

import java.lang.reflect.Method;
import java.util.Arrays;
import java.util.HashSet;
import org.apache.beam.model.pipeline.v1.ExternalTransforms.ExternalConfigurationPayload;
import org.apache.beam.sdk.coders.RowCoder;
import org.apache.beam.sdk.extensions.python.PythonExternalTransform;
import org.apache.beam.sdk.schemas.Schema;
import org.apache.beam.sdk.schemas.Schema.FieldType;
import org.apache.beam.sdk.schemas.SchemaTranslation;
import org.apache.beam.sdk.util.CoderUtils;
import org.apache.beam.sdk.values.Row;
import org.junit.function.ThrowingRunnable;

/** What a {@link CrossInference} sends, decoded as the expansion service decodes it. */
final class Payloads {

  static final String SERVICE = "localhost:8097";

  private Payloads() {}

  /**
   * The payload PythonExternalTransform would send, decoded the way the expansion service does: the
   * Row schema travels with the bytes. generatePayload() is Beam's own package-private,
   * test-visible method, so this checks the real bytes rather than our copy of the kwargs.
   */
  static Row sentPayload(CrossInference transform) throws Exception {
    PythonExternalTransform<?, ?> external = transform.toPythonTransform(SERVICE);
    Method generate = PythonExternalTransform.class.getDeclaredMethod("generatePayload");
    generate.setAccessible(true);
    ExternalConfigurationPayload payload = (ExternalConfigurationPayload) generate.invoke(external);
    Schema schema = SchemaTranslation.schemaFromProto(payload.getSchema());
    return CoderUtils.decodeFromByteArray(RowCoder.of(schema), payload.getPayload().toByteArray());
  }

  static Row sentKwargs(CrossInference transform) throws Exception {
    Row payload = sentPayload(transform);
    assertEquals("crossinfer.Inference", payload.getString("constructor"));
    assertFalse("no positional args", payload.getSchema().hasField("args"));
    return payload.getRow("kwargs");
  }

  static HashSet<String> set(String... names) {
    return new HashSet<>(Arrays.asList(names));
  }

  static HashSet<String> fieldNames(Row row) {
    return new HashSet<>(row.getSchema().getFieldNames());
  }

  static FieldType typeOf(Row row, String field) {
    return row.getSchema().getField(field).getType();
  }

  static void assertRejected(String expected, ThrowingRunnable call) {
    IllegalArgumentException e = assertThrows(IllegalArgumentException.class, call);
    assertThat(e.getMessage(), containsString(expected));
  }
}
