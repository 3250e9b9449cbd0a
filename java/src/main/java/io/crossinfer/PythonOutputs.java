package io.crossinfer;

import static org.apache.beam.vendor.guava.v32_1_2_jre.com.google.common.base.Preconditions.checkState;

import java.util.Arrays;
import java.util.concurrent.TimeoutException;
import org.apache.beam.sdk.coders.Coder;
import org.apache.beam.sdk.extensions.python.PythonExternalTransform;
import org.apache.beam.sdk.schemas.Schema;
import org.apache.beam.sdk.schemas.SchemaCoder;
import org.apache.beam.sdk.values.PCollection;
import org.apache.beam.sdk.values.PCollectionTuple;
import org.apache.beam.sdk.values.POutput;
import org.apache.beam.sdk.values.Row;
import org.apache.beam.sdk.values.TupleTag;

/**
 * Applies the Python transform and checks what comes back: two schema'd outputs, {@link
 * CrossInference#PREDICTIONS} and {@link CrossInference#FAILURES}, the failures with the string
 * fields every crossinfer version sends. A mismatch means another service or version.
 */
final class PythonOutputs {
  private PythonOutputs() {}

  /** The outputs of {@code transform} applied to {@code rows}, checked. */
  static PCollectionTuple apply(
      PCollection<Row> rows,
      PythonExternalTransform<PCollection<Row>, POutput> transform,
      String address) {
    POutput output;
    try {
      output = rows.apply("Inference", transform);
    } catch (RuntimeException e) {
      // Beam's own message, "Timeout waiting for Python service startup", suggests Beam was
      // starting a service; here nothing answered at the address.
      if (e.getCause() instanceof TimeoutException) {
        throw new IllegalStateException(
            String.format(
                "CrossInference: no expansion service answers at %s; start "
                    + "`crossinfer-expansion-service --port PORT` and pass its address to "
                    + "withExpansionService, or leave withExpansionService out to have one "
                    + "started",
                address),
            e);
      }
      if (unimplemented(e)) {
        // Something answers gRPC at the address but not Beam's expansion API (a job server, a
        // worker pool, another service): Beam says only "UNIMPLEMENTED: unknown service".
        throw new IllegalStateException(
            String.format(
                "CrossInference: the service at %s is not an expansion service (it does not "
                    + "serve Beam's ExpansionService API); start "
                    + "`crossinfer-expansion-service --port PORT` and pass its address to "
                    + "withExpansionService, or leave withExpansionService out to have one "
                    + "started",
                address),
            e);
      }
      throw e;
    }
    checkState(
        output instanceof PCollectionTuple,
        "%s returned one output; expected %s and %s (is the expansion service a crossinfer one?)",
        CrossInference.PYTHON_TRANSFORM,
        CrossInference.PREDICTIONS,
        CrossInference.FAILURES);
    PCollectionTuple tuple = (PCollectionTuple) output;
    withRowSchema(tuple, new TupleTag<>(CrossInference.PREDICTIONS));
    withRowSchema(tuple, new TupleTag<>(CrossInference.FAILURES));
    checkFailureSchema(tuple.get(new TupleTag<Row>(CrossInference.FAILURES)).getSchema());
    return tuple;
  }

  // gRPC's status UNIMPLEMENTED anywhere in the cause chain (read from the message: the status
  // class is Beam's vendored gRPC, which this library does not use).
  private static boolean unimplemented(Throwable e) {
    for (Throwable t = e; t != null; t = t.getCause()) {
      String message = t.getMessage();
      if (message != null && message.contains("UNIMPLEMENTED")) {
        return true;
      }
      if (t.getCause() == t) {
        break;
      }
    }
    return false;
  }

  private static void checkFailureSchema(Schema schema) {
    for (String field : Arrays.asList("element", "stage", "error")) {
      checkState(
          schema.hasField(field)
              && schema.getField(field).getType().getTypeName() == Schema.TypeName.STRING,
          "%s returned failures with schema %s; expected string fields element, stage, error "
              + "(is the expansion service a matching crossinfer version?)",
          CrossInference.PYTHON_TRANSFORM,
          schema);
    }
  }

  private static void withRowSchema(PCollectionTuple tuple, TupleTag<Row> tag) {
    checkState(
        tuple.has(tag),
        "%s returned no output named \"%s\"; it returned %s",
        CrossInference.PYTHON_TRANSFORM,
        tag.getId(),
        tuple.getAll().keySet());
    PCollection<Row> rows = tuple.get(tag);
    Coder<Row> coder = rows.getCoder();
    checkState(
        coder instanceof SchemaCoder,
        "%s output \"%s\" is not schema'd rows (coder %s); the Python side must emit beam.Row",
        CrossInference.PYTHON_TRANSFORM,
        tag.getId(),
        coder);
    // A rehydrated RowCoder is already a SchemaCoder; set the schema only when Beam did not.
    if (!rows.hasSchema()) {
      rows.setRowSchema(((SchemaCoder<Row>) coder).getSchema());
    }
  }
}
