package io.crossinfer;

import java.util.ArrayList;
import java.util.Collection;
import java.util.Collections;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.SortedMap;
import org.apache.beam.sdk.schemas.Schema;
import org.apache.beam.sdk.transforms.DoFn;
import org.apache.beam.sdk.transforms.ParDo;
import org.apache.beam.sdk.transforms.windowing.BoundedWindow;
import org.apache.beam.sdk.values.PCollection;
import org.apache.beam.sdk.values.Row;
import org.checkerframework.checker.nullness.qual.Nullable;

/**
 * Rows cross the language boundary in column blocks: before the Python transform, each bundle's
 * rows are grouped (per window, at most {@link #MAX_ROWS} rows or about {@link #MAX_BYTES} bytes
 * a block, the rest flushed when the bundle finishes) into one row whose fields hold one value
 * per row; the Python transform runs with {@code blocks=True}; its prediction blocks are exploded
 * back into one row per input row, with the schema the row-by-row path has. Failures are one
 * row per failed input row either way.
 *
 * <p>Each element that crosses costs the runner, the coders and both SDK harnesses the same
 * whatever its size, so a block pays it once for thousands of rows.
 *
 * <p>A feature array of plain numbers (non-nullable {@code DOUBLE}, {@code FLOAT}, {@code INT64}
 * or {@code INT32} elements) crosses packed: one row of {@link #PACKED} per block, its numbers
 * little-endian row after row ({@link Packer}), so neither side boxes, encodes or decodes them one
 * by one.
 */
final class BoundaryBlocks {

  /** The most rows in one block (the Python side scores a block in one model call). */
  static final int MAX_ROWS = 4096;

  /** About the most bytes of row data in one block. */
  static final long MAX_BYTES = 8L << 20;

  /**
   * Key of the switch in {@link CrossInference}'s kwargs map. Not a Python identifier, so it
   * never collides with a kwarg; it is not sent.
   */
  static final String SWITCH = "@boundaryBlocks";

  /**
   * A packed feature column, as the Python block path reads it: {@code values} (every row's
   * numbers, little-endian, row after row), {@code lengths} (one little-endian int32 per row, -1
   * for a null row) and {@code dtype} ({@code float64}, {@code float32}, {@code int64},
   * {@code int32}).
   */
  static final Schema PACKED =
      Schema.builder()
          .addByteArrayField("values")
          .addByteArrayField("lengths")
          .addStringField("dtype")
          .build();

  private BoundaryBlocks() {}

  /**
   * Whether rows cross in blocks: the switch if set, else whenever the Python block path takes
   * the configuration. With the switch on, a configuration it does not take is an error.
   */
  static boolean applies(SortedMap<String, Object> kwargs) {
    // The Python block path's conflicts (generated from its argument table), and one of Java's:
    // rows that are blocks already.
    String conflict =
        Boolean.TRUE.equals(kwargs.get("blocks"))
            ? "withBlocks(true) (the input rows are blocks already)"
            : Rules.blocksConflict(kwargs);
    Object on = kwargs.get(SWITCH);
    if (Boolean.TRUE.equals(on) && conflict != null) {
      throw new IllegalArgumentException(
          "withBoundaryBlocks(true) cannot be combined with "
              + conflict
              + "; call withBoundaryBlocks(false) or drop that setting");
    }
    return conflict == null && !Boolean.FALSE.equals(on);
  }

  /** The input fields Python reads: passthrough and feature fields, in the input's order. */
  static List<String> fields(Schema input, Map<String, Object> kwargs) {
    List<String> named = Rules.fieldsPythonReads(kwargs);
    return Rules.inInputOrder(input, named == null ? Collections.emptyList() : named);
  }

  /**
   * The feature field that crosses packed, or null: {@code feature_field} when it is an array
   * of non-nullable plain numbers.
   */
  static @Nullable String packedField(Schema input, Map<String, Object> kwargs) {
    Object name = kwargs.get("feature_field");
    if (!(name instanceof String) || !input.hasField((String) name)) {
      return null;
    }
    return dtype(input.getField((String) name).getType()) != null ? (String) name : null;
  }

  /** The packed dtype of an array of plain numbers, else null. */
  static @Nullable String dtype(Schema.FieldType type) {
    Schema.TypeName kind = type.getTypeName();
    if (kind != Schema.TypeName.ARRAY && kind != Schema.TypeName.ITERABLE) {
      return null;
    }
    Schema.FieldType element = type.getCollectionElementType();
    if (element == null || element.getNullable()) {
      return null;
    }
    switch (element.getTypeName()) {
      case DOUBLE:
        return "float64";
      case FLOAT:
        return "float32";
      case INT64:
        return "int64";
      case INT32:
        return "int32";
      default:
        return null;
    }
  }

  /**
   * Each named field of {@code input} as an array of its type (one value per row), the packed
   * field as one {@link #PACKED} row.
   */
  static Schema blockSchema(Schema input, List<String> fields, @Nullable String packed) {
    Schema.Builder builder = Schema.builder();
    for (String name : fields) {
      if (name.equals(packed)) {
        builder.addRowField(name, PACKED);
      } else {
        builder.addArrayField(name, input.getField(name).getType());
      }
    }
    return builder.build();
  }

  /** The row-by-row schema of a prediction block's schema: every array field as its element. */
  static Schema rowSchema(Schema block) {
    Schema.Builder builder = Schema.builder();
    for (Schema.Field field : block.getFields()) {
      Schema.FieldType type = field.getType();
      builder.addField(
          field.getName(),
          type.getTypeName() == Schema.TypeName.ARRAY && !"model_id".equals(field.getName())
              ? type.getCollectionElementType()
              : type);
    }
    return builder.build();
  }

  /** Rows to blocks of the fields Python reads. */
  static PCollection<Row> group(PCollection<Row> rows, Map<String, Object> kwargs) {
    Schema input = rows.getSchema();
    List<String> fields = fields(input, kwargs);
    String packed = packedField(input, kwargs);
    Schema block = blockSchema(input, fields, packed);
    return rows.apply("ToBlocks", ParDo.of(new ToBlocks(input, block, fields, packed)))
        .setRowSchema(block);
  }

  /** Prediction blocks to one prediction row per scored input row. */
  static PCollection<Row> explode(PCollection<Row> blocks) {
    Schema rows = rowSchema(blocks.getSchema());
    return blocks.apply("FromBlocks", ParDo.of(new FromBlocks(blocks.getSchema(), rows)))
        .setRowSchema(rows);
  }

  /** Groups a bundle's rows, per window, into blocks. */
  static final class ToBlocks extends DoFn<Row, Row> {
    private final Schema block;
    private final int[] indices; // field index in the input row, per block field
    private final int packed; // position of the packed field among the block's fields, or -1
    private final Schema.@Nullable FieldType packedType; // the packed field's array type
    private transient @Nullable Map<BoundedWindow, Buffer> buffers;

    ToBlocks(Schema input, Schema block, List<String> fields, @Nullable String packedField) {
      this.block = block;
      this.indices = fields.stream().mapToInt(input::indexOf).toArray();
      this.packed = packedField == null ? -1 : fields.indexOf(packedField);
      this.packedType = packedField == null ? null : input.getField(packedField).getType();
    }

    @StartBundle
    public void startBundle() {
      buffers = new HashMap<>();
    }

    @ProcessElement
    public void process(@Element Row row, BoundedWindow window, OutputReceiver<Row> out) {
      Buffer buffer = buffers.computeIfAbsent(window, w -> new Buffer(indices.length, packed, packedType));
      buffer.add(row, indices);
      if (buffer.rows >= MAX_ROWS || buffer.bytes >= MAX_BYTES) {
        buffers.remove(window);
        // As Beam's BatchElements does: a batch carries the end of its window.
        out.outputWithTimestamp(buffer.toRow(block), window.maxTimestamp());
      }
    }

    @FinishBundle
    public void finishBundle(FinishBundleContext context) {
      for (Map.Entry<BoundedWindow, Buffer> entry : buffers.entrySet()) {
        BoundedWindow window = entry.getKey();
        context.output(entry.getValue().toRow(block), window.maxTimestamp(), window);
      }
      buffers = null;
    }
  }

  /** One block being filled: a list of values per field, the packed field's numbers as bytes. */
  static final class Buffer {
    final List<List<@Nullable Object>> columns;
    final int packed; // position of the packed field, or -1
    final @Nullable Packer packer;
    int rows;
    long bytes;

    Buffer(int fields, int packed, Schema.@Nullable FieldType packedType) {
      columns = new ArrayList<>(fields);
      for (int i = 0; i < fields; i++) {
        columns.add(i == packed ? null : new ArrayList<>());
      }
      this.packed = packed;
      this.packer = packedType == null ? null : new Packer(packedType);
    }

    void add(Row row, int[] indices) {
      for (int i = 0; i < indices.length; i++) {
        Object value = row.getValue(indices[i]);
        if (i == packed) {
          bytes += packer.add((Iterable<?>) value);
        } else {
          columns.get(i).add(value);
          bytes += size(value);
        }
      }
      rows++;
    }

    Row toRow(Schema block) {
      List<Object> values = new ArrayList<>(columns.size());
      for (int i = 0; i < columns.size(); i++) {
        values.add(i == packed ? packer.toRow() : columns.get(i));
      }
      return Row.withSchema(block).attachValues(values);
    }

    private static long size(@Nullable Object value) {
      if (value instanceof Collection) {
        return 16 + 8L * ((Collection<?>) value).size();
      }
      if (value instanceof CharSequence) {
        return 16 + ((CharSequence) value).length();
      }
      if (value instanceof byte[]) {
        return 16 + ((byte[]) value).length;
      }
      return 8;
    }
  }

  /** Explodes a prediction block into one row per scored row. */
  static final class FromBlocks extends DoFn<Row, Row> {
    private final Schema rows;
    private final boolean[] perRow; // field holds one value per row (else: one for the block)

    FromBlocks(Schema block, Schema rows) {
      this.rows = rows;
      this.perRow = new boolean[block.getFieldCount()];
      for (int i = 0; i < perRow.length; i++) {
        perRow[i] =
            block.getField(i).getType().getTypeName() == Schema.TypeName.ARRAY
                && !"model_id".equals(block.getField(i).getName());
      }
    }

    @ProcessElement
    public void process(@Element Row block, OutputReceiver<Row> out) {
      int fields = perRow.length;
      List<List<Object>> columns = new ArrayList<>(fields);
      int n = -1;
      for (int f = 0; f < fields; f++) {
        if (perRow[f]) {
          List<Object> column = asList(block.getValue(f));
          columns.add(column);
          if (n < 0) {
            n = column.size();
          } else if (column.size() != n) {
            throw new IllegalStateException(
                "a prediction block's fields disagree on its number of rows: "
                    + block.getSchema().getField(f).getName()
                    + " has "
                    + column.size()
                    + ", expected "
                    + n);
          }
        } else {
          columns.add(null);
        }
      }
      for (int i = 0; i < Math.max(n, 0); i++) {
        List<Object> values = new ArrayList<>(fields);
        for (int f = 0; f < fields; f++) {
          values.add(perRow[f] ? columns.get(f).get(i) : block.getValue(f));
        }
        out.output(Row.withSchema(rows).attachValues(values));
      }
    }

    @SuppressWarnings("unchecked")
    private static List<Object> asList(@Nullable Object value) {
      if (value instanceof List) {
        return (List<Object>) value;
      }
      List<Object> list = new ArrayList<>();
      if (value != null) {
        for (Object item : (Iterable<Object>) value) {
          list.add(item);
        }
      }
      return list;
    }
  }
}
