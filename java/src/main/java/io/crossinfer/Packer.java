package io.crossinfer;

import static org.apache.beam.vendor.guava.v32_1_2_jre.com.google.common.base.Preconditions.checkNotNull;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.Arrays;
import org.apache.beam.sdk.schemas.Schema;
import org.apache.beam.sdk.values.Row;
import org.checkerframework.checker.nullness.qual.Nullable;

/** A block's feature arrays packed little-endian, row after row, and their lengths. */
final class Packer {
  private final String dtype;
  private final Schema.TypeName element;
  private ByteBuffer values = ByteBuffer.allocate(1 << 16).order(ByteOrder.LITTLE_ENDIAN);
  private ByteBuffer lengths = ByteBuffer.allocate(1 << 12).order(ByteOrder.LITTLE_ENDIAN);

  /** For an array type that {@link BoundaryBlocks#dtype} packs. */
  Packer(Schema.FieldType array) {
    this.dtype = checkNotNull(BoundaryBlocks.dtype(array), "not a packed type: %s", array);
    this.element = array.getCollectionElementType().getTypeName();
  }

  /** Appends one row's array (null: a null row); returns the bytes it took. */
  long add(@Nullable Iterable<?> array) {
    lengths = room(lengths, 4);
    if (array == null) {
      lengths.putInt(-1);
      return 4;
    }
    int start = values.position();
    int n = 0;
    for (Object item : array) {
      values = room(values, 8);
      Number number = (Number) item;
      if (number == null) { // the schema says non-null; Beam's RowCoder would refuse it too
        throw new IllegalArgumentException(
            "a feature array holds a null, but its schema's elements are not nullable");
      }
      switch (element) {
        case DOUBLE:
          values.putDouble(number.doubleValue());
          break;
        case FLOAT:
          values.putFloat(number.floatValue());
          break;
        case INT64:
          values.putLong(number.longValue());
          break;
        default:
          values.putInt(number.intValue());
      }
      n++;
    }
    lengths.putInt(n);
    return 4L + values.position() - start;
  }

  Row toRow() {
    return Row.withSchema(BoundaryBlocks.PACKED)
        .attachValues(
            Arrays.asList(
                Arrays.copyOf(values.array(), values.position()),
                Arrays.copyOf(lengths.array(), lengths.position()),
                dtype));
  }

  private static ByteBuffer room(ByteBuffer buffer, int bytes) {
    if (buffer.remaining() >= bytes) {
      return buffer;
    }
    ByteBuffer bigger =
        ByteBuffer.allocate(Math.max(buffer.capacity() * 2, buffer.position() + bytes))
            .order(ByteOrder.LITTLE_ENDIAN);
    bigger.put(buffer.array(), 0, buffer.position());
    return bigger;
  }
}
