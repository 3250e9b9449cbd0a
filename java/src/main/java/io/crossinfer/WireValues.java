package io.crossinfer;

import static org.apache.beam.vendor.guava.v32_1_2_jre.com.google.common.base.Preconditions.checkArgument;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import org.apache.beam.sdk.schemas.Schema;
import org.apache.beam.sdk.values.Row;
import org.checkerframework.checker.nullness.qual.Nullable;

/**
 * Java values in the types Beam's kwargs row can carry to Python. Checks only what the encoding
 * needs (no nulls, one element type per list, string keys); what the values mean is checked by
 * the Python side.
 */
final class WireValues {
  private WireValues() {}

  /** The schema field type a kwarg value travels as. */
  static Schema.FieldType wireType(Object value) {
    if (value instanceof String) {
      return Schema.FieldType.STRING;
    } else if (value instanceof Long) {
      return Schema.FieldType.INT64;
    } else if (value instanceof Double) {
      return Schema.FieldType.DOUBLE;
    } else if (value instanceof Boolean) {
      return Schema.FieldType.BOOLEAN;
    } else if (value instanceof LongList) {
      return Schema.FieldType.array(Schema.FieldType.INT64);
    } else if (value instanceof List) {
      return Schema.FieldType.array(Schema.FieldType.STRING);
    } else if (value instanceof Map) {
      return Schema.FieldType.map(Schema.FieldType.STRING, Schema.FieldType.STRING);
    } else if (value instanceof Row) {
      return Schema.FieldType.row(((Row) value).getSchema());
    }
    throw new IllegalStateException("no wire type for " + value.getClass());
  }

  /** A list of int64 values (a list of strings is a plain List). */
  static final class LongList extends ArrayList<Long> {
    private static final long serialVersionUID = 1L;

    LongList(int[] values) {
      for (int value : values) {
        add((long) value);
      }
    }
  }

  /** {@code value}, or an IllegalArgumentException naming the method and parameter. */
  static <T> T notNull(String method, String param, @Nullable T value) {
    checkArgument(value != null, "%s: %s is null", method, param);
    return value;
  }

  /**
   * A map of plain values as it travels: a row ({@link #toRow}), or an empty map (an empty row
   * has no fields to decode into a dict; an empty map arrives as {}).
   */
  static Object params(String method, @Nullable Map<String, ?> params) {
    notNull(method, "the map", params);
    return params.isEmpty() ? Collections.<String, String>emptyMap() : toRow(method, params);
  }

  static List<String> names(String method, @Nullable List<String> names) {
    checkArgument(names != null, "%s: the list is null; pass a list of names", method);
    for (String name : names) {
      checkArgument(name != null, "%s: a name is null", method);
    }
    return Collections.unmodifiableList(new ArrayList<>(names));
  }

  /** A string map in the caller's order (a LinkedHashMap or SortedMap keeps theirs). */
  static Map<String, String> stringMap(String method, @Nullable Map<String, String> map) {
    checkArgument(map != null, "%s: the map is null; pass a Map", method);
    Map<String, String> copy = new LinkedHashMap<>();
    for (Map.Entry<String, String> entry : map.entrySet()) {
      checkArgument(
          entry.getKey() != null && entry.getValue() != null,
          "%s: null key or value in %s",
          method,
          map);
      copy.put(entry.getKey(), entry.getValue());
    }
    return Collections.unmodifiableMap(copy);
  }

  /**
   * A map of plain values as a row, one field per key in the map's order, each field typed by its
   * value: Beam's kwargs encoding needs one type per field, and a Python dict arrives.
   */
  static Row toRow(String method, Map<String, ?> params) {
    Schema.Builder schema = Schema.builder();
    List<Object> values = new ArrayList<>();
    for (Map.Entry<String, ?> entry : params.entrySet()) {
      checkArgument(entry.getKey() != null, "%s: a key is null", method);
      String where = method + ": " + entry.getKey();
      Schema.FieldType type = typeOf(where, entry.getValue());
      schema.addField(entry.getKey(), type);
      values.add(convert(where, type, entry.getValue()));
    }
    return Row.withSchema(schema.build()).addValues(values).build();
  }

  private static Schema.FieldType typeOf(String where, @Nullable Object value) {
    checkArgument(value != null, "%s is null; leave the key out to use the default", where);
    if (value instanceof String) {
      return Schema.FieldType.STRING;
    } else if (value instanceof Integer
        || value instanceof Long
        || value instanceof Short
        || value instanceof Byte) {
      // Python has one int type; INT64 holds every Java integer.
      return Schema.FieldType.INT64;
    } else if (value instanceof Double || value instanceof Float) {
      return Schema.FieldType.DOUBLE;
    } else if (value instanceof Boolean) {
      return Schema.FieldType.BOOLEAN;
    } else if (value instanceof Map) {
      @SuppressWarnings("unchecked")
      Map<String, ?> nested = (Map<String, ?>) value;
      checkArgument(!nested.isEmpty(), "%s is an empty map; a row needs a field", where);
      return Schema.FieldType.row(toRow(where, nested).getSchema());
    } else if (value instanceof List) {
      List<?> list = (List<?>) value;
      checkArgument(!list.isEmpty(), "%s is an empty list; its element type cannot be known", where);
      Schema.FieldType element = null;
      for (Object item : list) {
        checkArgument(
            !(item instanceof List) && !(item instanceof Map),
            "%s: lists of lists or maps cannot be encoded",
            where);
        Schema.FieldType type = typeOf(where + "[]", item);
        element = element == null ? type : widen(where, element, type);
      }
      return Schema.FieldType.array(element);
    }
    throw new IllegalArgumentException(
        String.format(
            "%s has type %s; use String, Integer, Long, Float, Double, Boolean, a List or a Map",
            where, value.getClass().getName()));
  }

  // A list of ints and floats is a list of floats, as Python would treat it.
  private static Schema.FieldType widen(String where, Schema.FieldType a, Schema.FieldType b) {
    if (a.equals(b)) {
      return a;
    }
    Set<Schema.FieldType> pair = new HashSet<>(Arrays.asList(a, b));
    checkArgument(
        pair.equals(new HashSet<>(Arrays.asList(Schema.FieldType.INT64, Schema.FieldType.DOUBLE))),
        "%s mixes %s and %s in one list; give a list of one type",
        where,
        a.getTypeName(),
        b.getTypeName());
    return Schema.FieldType.DOUBLE;
  }

  private static Object convert(String where, Schema.FieldType type, Object value) {
    switch (type.getTypeName()) {
      case INT64:
        return ((Number) value).longValue();
      case DOUBLE:
        return ((Number) value).doubleValue();
      case ROW:
        @SuppressWarnings("unchecked")
        Map<String, ?> nested = (Map<String, ?>) value;
        return toRow(where, nested);
      case ARRAY:
        List<Object> items = new ArrayList<>();
        for (Object item : (List<?>) value) {
          items.add(convert(where, type.getCollectionElementType(), item));
        }
        return items;
      default:
        return value;
    }
  }
}
