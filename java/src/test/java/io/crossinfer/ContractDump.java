package io.crossinfer;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.lang.reflect.Method;
import java.lang.reflect.Modifier;
import java.lang.reflect.ParameterizedType;
import java.lang.reflect.Type;
import java.util.Arrays;
import java.util.Collections;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import org.apache.beam.sdk.schemas.Schema;

/**
 * Prints, as JSON, which Python kwargs each public factory and {@code with…} method of {@link
 * CrossInference} sends and in which wire type, found by calling each one (by reflection) with
 * sample arguments and comparing the kwargs before and after. The contract test compares this
 * with the Python argument table.
 */
public final class ContractDump {
  private ContractDump() {}

  /**
   * Prints the JSON list.
   *
   * @param args unused
   * @throws Exception if a method cannot be called
   */
  public static void main(String[] args) throws Exception {
    ObjectMapper json = new ObjectMapper();
    ArrayNode out = json.createArrayNode();
    CrossInference base = CrossInference.custom("pkg.mod:factory");
    Method[] methods = CrossInference.class.getMethods();
    Arrays.sort(methods, Comparator.comparing(Method::toGenericString));
    for (Method method : methods) {
      boolean factory =
          Modifier.isStatic(method.getModifiers())
              && method.getReturnType() == CrossInference.class;
      boolean with =
          !Modifier.isStatic(method.getModifiers()) && method.getName().startsWith("with");
      if (!factory && !with) {
        continue;
      }
      Object[] sample = new Object[method.getParameterCount()];
      Type[] types = declared(method).getGenericParameterTypes();
      for (int i = 0; i < sample.length; i++) {
        sample[i] = sampleFor(types[i]);
      }
      // Boundary blocks refuse a custom handler; the switch is Java's own and sends nothing.
      CrossInference before =
          factory
              ? null
              : method.getName().equals("withBoundaryBlocks")
                  ? CrossInference.sklearn("model.pkl").withFeatureField("f")
                  : base;
      CrossInference after = (CrossInference) method.invoke(before, sample);
      Map<String, Object> old = before == null ? Collections.emptyMap() : before.kwargs();
      ObjectNode node = out.addObject();
      node.put("method", method.getName());
      node.put("static", factory);
      ArrayNode params = node.putArray("params");
      for (Type type : types) {
        params.add(type.getTypeName());
      }
      ObjectNode sets = node.putObject("kwargs");
      for (Map.Entry<String, Object> kwarg : after.kwargs().entrySet()) {
        if (kwarg.getKey().equals(BoundaryBlocks.SWITCH)) {
          continue; // a Java-side switch, never sent to Python
        }
        if (!Objects.equals(old.get(kwarg.getKey()), kwarg.getValue())) {
          sets.put(kwarg.getKey(), tableType(WireValues.wireType(kwarg.getValue())));
        }
      }
    }
    System.out.println(json.writerWithDefaultPrettyPrinter().writeValueAsString(out));
  }

  // The method as declared: javac makes a public bridge in CrossInference for each public method
  // of its generated package-private base classes, and a bridge has no generic types.
  private static Method declared(Method method) {
    for (Class<?> c = method.getDeclaringClass().getSuperclass();
        method.isBridge() && c != null;
        c = c.getSuperclass()) {
      try {
        return c.getDeclaredMethod(method.getName(), method.getParameterTypes());
      } catch (NoSuchMethodException e) {
        // declared further up
      }
    }
    return method;
  }

  private static Object sampleFor(Type type) {
    if (type == String.class) {
      return "pkg.mod:1"; // also a host:port, for withExpansionService
    } else if (type == int.class) {
      return 2;
    } else if (type == long.class) {
      return 3L;
    } else if (type == double.class) {
      return 0.5;
    } else if (type == boolean.class) {
      return true;
    } else if (type == org.joda.time.Duration.class) {
      return org.joda.time.Duration.millis(1500);
    } else if (type == int[].class) {
      return new int[] {4};
    } else if (type == String[].class) {
      return new String[] {"a", "b"};
    } else if (type instanceof ParameterizedType) {
      ParameterizedType generic = (ParameterizedType) type;
      if (generic.getRawType() == List.class) {
        return Arrays.asList("a", "b");
      } else if (generic.getRawType() == Map.class) {
        Map<String, Object> map = new LinkedHashMap<>();
        boolean strings = generic.getActualTypeArguments()[1] == String.class;
        map.put("k", strings ? "v" : (Object) 1);
        return map;
      }
    }
    throw new IllegalStateException("no sample value for parameter type " + type);
  }

  // The argument table's type names.
  private static String tableType(Schema.FieldType type) {
    switch (type.getTypeName()) {
      case STRING:
        return "string";
      case INT64:
        return "int";
      case DOUBLE:
        return "float";
      case BOOLEAN:
        return "bool";
      case ARRAY:
        return "list<" + tableType(type.getCollectionElementType()) + ">";
      case MAP:
        return "map<string,string>";
      case ROW:
        // A row whose fields are all strings is how an ordered string map travels.
        boolean strings =
            type.getRowSchema().getFields().stream()
                .allMatch(f -> f.getType().getTypeName() == Schema.TypeName.STRING);
        return strings ? "map<string,string>" : "map<string,any>";
      default:
        return type.getTypeName().toString();
    }
  }

}
