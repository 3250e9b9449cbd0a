package io.crossinfer;

import static org.hamcrest.MatcherAssert.assertThat;
import static org.hamcrest.Matchers.containsString;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertThrows;
import static org.junit.Assert.assertTrue;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import org.apache.beam.sdk.schemas.Schema;
import org.apache.beam.sdk.schemas.Schema.FieldType;
import org.apache.beam.sdk.transforms.DoFn;
import org.apache.beam.sdk.transforms.windowing.GlobalWindow;
import org.apache.beam.sdk.values.Row;
import org.joda.time.Instant;
import org.junit.Test;
import org.junit.runner.RunWith;
import org.junit.runners.JUnit4;

/** Tests for {@link BoundaryBlocks}: rows to column blocks and prediction blocks back to rows. */
@RunWith(JUnit4.class)
public class BoundaryBlocksTest {

  private static final Schema INPUT =
      Schema.builder()
          .addStringField("note")
          .addInt64Field("id")
          .addNullableField("features", FieldType.array(FieldType.DOUBLE.withNullable(true)))
          .build();

  private static final class Collect implements DoFn.OutputReceiver<Row> {
    final List<Row> rows = new ArrayList<>();
    final List<Instant> timestamps = new ArrayList<>();

    @Override
    public void output(Row row) {
      rows.add(row);
      timestamps.add(null);
    }

    @Override
    public void outputWithTimestamp(Row row, Instant timestamp) {
      rows.add(row);
      timestamps.add(timestamp);
    }
  }

  private static Map<String, Object> kwargs() {
    Map<String, Object> kwargs = new TreeMap<>();
    kwargs.put("framework", "sklearn");
    kwargs.put("feature_field", "features");
    kwargs.put("passthrough_fields", Collections.singletonList("id"));
    return kwargs;
  }

  @Test
  public void blocksHoldOnlyTheFieldsPythonReadsInInputOrder() {
    List<String> fields = BoundaryBlocks.fields(INPUT, kwargs());
    assertEquals(Arrays.asList("id", "features"), fields);
    Schema block = BoundaryBlocks.blockSchema(INPUT, fields, null);
    assertEquals(FieldType.array(FieldType.INT64), block.getField("id").getType());
    // A nullable feature array stays nullable per row, so a null row fails alone in Python.
    assertEquals(
        FieldType.array(FieldType.array(FieldType.DOUBLE.withNullable(true)).withNullable(true)),
        block.getField("features").getType());
  }

  @Test
  public void rowsAreGroupedAtTheRowBoundAndFlushedAtTheEndOfTheBundle() {
    List<String> fields = BoundaryBlocks.fields(INPUT, kwargs());
    // Nullable elements: not packed (a null inside an array must fail its row in Python).
    assertNull(BoundaryBlocks.packedField(INPUT, kwargs()));
    BoundaryBlocks.ToBlocks toBlocks =
        new BoundaryBlocks.ToBlocks(
            INPUT, BoundaryBlocks.blockSchema(INPUT, fields, null), fields, null);
    toBlocks.startBundle();
    Collect out = new Collect();
    int n = BoundaryBlocks.MAX_ROWS + 3;
    for (long i = 0; i < n; i++) {
      List<Double> features = i == 1 ? null : Arrays.asList(i * 1.0, 2.0);
      Row row = Row.withSchema(INPUT).addValues("x", i, features).build();
      toBlocks.process(row, GlobalWindow.INSTANCE, out);
    }
    assertEquals(1, out.rows.size());
    assertEquals(GlobalWindow.INSTANCE.maxTimestamp(), out.timestamps.get(0));
    Row first = out.rows.get(0);
    assertEquals(BoundaryBlocks.MAX_ROWS, first.getArray("id").size());
    assertEquals(Long.valueOf(2), new ArrayList<Object>(first.getArray("id")).get(2));
    assertNull(new ArrayList<Object>(first.getArray("features")).get(1));
    assertEquals(Arrays.asList(2.0, 2.0), new ArrayList<Object>(first.getArray("features")).get(2));
  }

  private static final Schema PLAIN =
      Schema.builder()
          .addInt64Field("id")
          .addNullableField("features", FieldType.array(FieldType.DOUBLE))
          .addArrayField("tokens", FieldType.INT32)
          .build();

  @Test
  public void plainNumbersCrossPackedLittleEndianWithTheirLengths() {
    Map<String, Object> kwargs = kwargs();
    assertEquals("features", BoundaryBlocks.packedField(PLAIN, kwargs));
    List<String> fields = BoundaryBlocks.fields(PLAIN, kwargs);
    Schema block = BoundaryBlocks.blockSchema(PLAIN, fields, "features");
    assertEquals(FieldType.row(BoundaryBlocks.PACKED), block.getField("features").getType());
    BoundaryBlocks.ToBlocks toBlocks = new BoundaryBlocks.ToBlocks(PLAIN, block, fields, "features");
    toBlocks.startBundle();
    Collect out = new Collect();
    List<List<Double>> features =
        Arrays.asList(Arrays.asList(1.5, -2.0), null, Arrays.asList(3.0, 4.0, 5.0));
    for (long i = 0; i < features.size(); i++) {
      toBlocks.process(
          Row.withSchema(PLAIN)
              .addValues(i, features.get((int) i), Arrays.asList(1, 2))
              .build(),
          GlobalWindow.INSTANCE,
          out);
    }
    assertTrue(out.rows.isEmpty());
    toBlocks.finishBundle(new FinishBundle(out));
    Row packed = out.rows.get(0).getRow("features");
    assertEquals("float64", packed.getString("dtype"));
    java.nio.ByteBuffer values =
        java.nio.ByteBuffer.wrap(packed.getBytes("values")).order(java.nio.ByteOrder.LITTLE_ENDIAN);
    List<Double> read = new ArrayList<>();
    while (values.hasRemaining()) {
      read.add(values.getDouble());
    }
    assertEquals(Arrays.asList(1.5, -2.0, 3.0, 4.0, 5.0), read);
    java.nio.ByteBuffer lengths =
        java.nio.ByteBuffer.wrap(packed.getBytes("lengths")).order(java.nio.ByteOrder.LITTLE_ENDIAN);
    assertEquals(2, lengths.getInt());
    assertEquals(-1, lengths.getInt()); // the null row
    assertEquals(3, lengths.getInt());
    assertFalse(lengths.hasRemaining());
    assertEquals(Arrays.asList(0L, 1L, 2L), new ArrayList<Object>(out.rows.get(0).getArray("id")));
    // Other element types pack with their own dtype; arrays of other things do not pack.
    assertEquals("int32", BoundaryBlocks.dtype(FieldType.array(FieldType.INT32)));
    assertEquals("float32", BoundaryBlocks.dtype(FieldType.iterable(FieldType.FLOAT)));
    assertNull(BoundaryBlocks.dtype(FieldType.array(FieldType.STRING)));
    assertNull(BoundaryBlocks.dtype(FieldType.DOUBLE));
  }

  /** The end of a bundle, collecting what is output there. */
  private static final class FinishBundle extends DoFn<Row, Row>.FinishBundleContext {
    private final Collect out;

    FinishBundle(Collect out) {
      new DoFn<Row, Row>() {}.super();
      this.out = out;
    }

    @Override
    public org.apache.beam.sdk.options.PipelineOptions getPipelineOptions() {
      throw new UnsupportedOperationException();
    }

    @Override
    public void output(Row output, Instant timestamp, org.apache.beam.sdk.transforms.windowing.BoundedWindow window) {
      out.outputWithTimestamp(output, timestamp);
    }

    @Override
    public <T> void output(
        org.apache.beam.sdk.values.TupleTag<T> tag,
        T output,
        Instant timestamp,
        org.apache.beam.sdk.transforms.windowing.BoundedWindow window) {
      throw new UnsupportedOperationException();
    }
  }

  @Test
  public void predictionBlocksExplodeToTheRowByRowSchema() {
    Schema block =
        Schema.builder()
            .addArrayField("id", FieldType.INT64)
            .addArrayField("label", FieldType.INT64)
            .addArrayField("score", FieldType.DOUBLE)
            .addStringField("model_id")
            .build();
    Schema rows = BoundaryBlocks.rowSchema(block);
    assertEquals(
        Schema.builder()
            .addInt64Field("id")
            .addInt64Field("label")
            .addDoubleField("score")
            .addStringField("model_id")
            .build(),
        rows);
    Collect out = new Collect();
    new BoundaryBlocks.FromBlocks(block, rows)
        .process(
            Row.withSchema(block)
                .addValues(
                    Arrays.asList(7L, 9L), Arrays.asList(1L, 0L), Arrays.asList(0.9, 0.6), "m")
                .build(),
            out);
    assertEquals(
        Arrays.asList(
            Row.withSchema(rows).addValues(7L, 1L, 0.9, "m").build(),
            Row.withSchema(rows).addValues(9L, 0L, 0.6, "m").build()),
        out.rows);
  }

  @Test
  public void onByDefaultOnlyWhereThePythonBlockPathTakesTheConfiguration() {
    TreeMap<String, Object> kwargs = new TreeMap<>(kwargs());
    assertTrue(BoundaryBlocks.applies(kwargs));
    kwargs.put(BoundaryBlocks.SWITCH, false);
    assertFalse(BoundaryBlocks.applies(kwargs));
    kwargs.remove(BoundaryBlocks.SWITCH);
    kwargs.put("preprocess", "pkg.mod:fn");
    assertFalse(BoundaryBlocks.applies(kwargs));
    kwargs.put(BoundaryBlocks.SWITCH, true);
    IllegalArgumentException e =
        assertThrows(IllegalArgumentException.class, () -> BoundaryBlocks.applies(kwargs));
    assertThat(e.getMessage(), containsString("withPreprocess"));
  }

  @Test
  public void theSwitchIsNotSentToPython() {
    CrossInference on =
        CrossInference.sklearn("/m.pkl")
            .withFeatureField("features")
            .withExpansionService("localhost:8097");
    CrossInference off = on.withBoundaryBlocks(false);
    assertEquals(on.kwargsRow().getSchema(), off.kwargsRow().getSchema());
    assertThrows(
        IllegalArgumentException.class,
        () -> on.withBatchSize(1, 8).withBoundaryBlocks(true));
  }
}
