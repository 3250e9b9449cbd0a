package io.crossinfer;

import java.util.ArrayList;
import java.util.Collection;
import java.util.List;
import java.util.Map;
import org.apache.beam.sdk.schemas.Schema;
import org.checkerframework.checker.nullness.qual.Nullable;

/**
 * Applies the rules of crossinfer's argument table that the Java library needs itself, as
 * generated into {@link ArgumentRules}: which fields Python reads, and what keeps rows from
 * crossing in blocks.
 */
final class Rules {
  private Rules() {}

  /**
   * A condition on one kwarg, as the table's {@code When}: set at all (no values), or set to one
   * of {@code values} ({@code negate}: to anything else). A kwarg that is absent, false or empty
   * is not set.
   */
  static final class Condition {
    final String name;
    final List<Object> values;
    final boolean negate;
    final String what; // how Java names it: its method, or a description
    final String why; // why blocks cannot be combined with it ("" for other rules)

    Condition(String name, List<?> values, boolean negate, String what, String why) {
      this.name = name;
      this.values = new ArrayList<>(values);
      this.negate = negate;
      this.what = what;
      this.why = why;
    }

    boolean holds(Map<String, Object> kwargs) {
      Object value = kwargs.get(name);
      if (value == null
          || Boolean.FALSE.equals(value)
          || (value instanceof Collection && ((Collection<?>) value).isEmpty())
          || (value instanceof Map && ((Map<?, ?>) value).isEmpty())) {
        return false;
      }
      return values.isEmpty() || values.contains(value) != negate;
    }
  }

  /**
   * The fields Python reads from each input row, in the order the arguments name them, or null
   * when it needs whole rows (a Python preprocess reads any field; a custom postprocess sees the
   * input row).
   */
  static @Nullable List<String> fieldsPythonReads(Map<String, Object> kwargs) {
    for (Condition whole : ArgumentRules.WHOLE_ROWS) {
      if (whole.holds(kwargs)) {
        return null;
      }
    }
    List<String> fields = new ArrayList<>();
    for (String argument : ArgumentRules.FIELD_ARGUMENTS) {
      Object value = kwargs.get(argument);
      if (value instanceof String) {
        fields.add((String) value);
      } else if (value instanceof List) {
        for (Object name : (List<?>) value) {
          fields.add((String) name);
        }
      }
    }
    return fields;
  }

  /** The {@code named} fields that {@code input} has, in its field order. */
  static List<String> inInputOrder(Schema input, List<String> named) {
    List<String> ordered = new ArrayList<>();
    for (String name : input.getFieldNames()) {
      if (named.contains(name)) {
        ordered.add(name);
      }
    }
    return ordered;
  }

  /** What in the kwargs keeps rows from crossing in blocks (say why), or null. */
  static @Nullable String blocksConflict(Map<String, Object> kwargs) {
    for (Condition conflict : ArgumentRules.BLOCK_CONFLICTS) {
      if (conflict.holds(kwargs)) {
        return conflict.what + " (" + conflict.why + ")";
      }
    }
    return null;
  }
}
