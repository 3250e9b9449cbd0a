package io.crossinfer;

import java.io.ByteArrayOutputStream;
import java.io.DataInputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.nio.charset.StandardCharsets;

/**
 * One gRPC health check ({@code grpc.health.v1.Health/Check}, plaintext HTTP/2) with the JDK
 * alone. Beam's own gRPC classes are vendored under a package that changes with each Beam
 * release (a library compiled against one fails with {@code NoClassDefFoundError} on another),
 * and the check needs a single request: the HTTP/2 preface, SETTINGS, one HEADERS frame (HPACK
 * literals, no Huffman, no dynamic table) and one DATA frame; the answer is SERVING when a DATA
 * frame carries the message {@code status: SERVING} (bytes {@code 08 01}).
 */
final class HealthProbe {
  private static final byte[] PREFACE =
      "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".getBytes(StandardCharsets.US_ASCII);
  private static final int DATA = 0, HEADERS = 1, RST_STREAM = 3, SETTINGS = 4, GOAWAY = 7;
  private static final int END_STREAM = 1, END_HEADERS = 4, ACK = 1;
  private static final int MAX_FRAMES = 64;

  private HealthProbe() {}

  /** Whether the gRPC server at {@code host:port} answers its health check as SERVING. */
  static boolean serving(String host, int port, int timeoutMillis) {
    try (Socket socket = new Socket()) {
      socket.connect(new InetSocketAddress(host, port), timeoutMillis);
      socket.setSoTimeout(timeoutMillis);
      OutputStream out = socket.getOutputStream();
      out.write(PREFACE);
      frame(out, SETTINGS, 0, 0, new byte[0]);
      frame(out, HEADERS, END_HEADERS, 1, headers(host + ":" + port));
      frame(out, DATA, END_STREAM, 1, new byte[5]); // an empty HealthCheckRequest
      out.flush();
      DataInputStream in = new DataInputStream(socket.getInputStream());
      for (int i = 0; i < MAX_FRAMES; i++) {
        int length = (in.readUnsignedByte() << 16) | in.readUnsignedShort();
        int type = in.readUnsignedByte();
        int flags = in.readUnsignedByte();
        int stream = in.readInt() & 0x7fffffff;
        if (length > 1 << 20) {
          return false;
        }
        byte[] payload = new byte[length];
        in.readFully(payload);
        if (type == SETTINGS && (flags & ACK) == 0) {
          frame(out, SETTINGS, ACK, 0, new byte[0]);
          out.flush();
        } else if (type == DATA && stream == 1) {
          // gRPC message: 1 byte compressed flag, 4 bytes length, then HealthCheckResponse.
          return length == 7 && payload[4] == 2 && payload[5] == 0x08 && payload[6] == 1;
        } else if ((type == HEADERS && stream == 1 && (flags & END_STREAM) != 0)
            || type == RST_STREAM
            || type == GOAWAY) {
          return false; // trailers only (an error status), or the stream was refused
        }
      }
      return false;
    } catch (IOException e) {
      return false; // nothing there, not gRPC, or no answer in time
    }
  }

  private static void frame(OutputStream out, int type, int flags, int stream, byte[] payload)
      throws IOException {
    out.write(new byte[] {
      (byte) (payload.length >>> 16), (byte) (payload.length >>> 8), (byte) payload.length,
      (byte) type, (byte) flags,
      (byte) (stream >>> 24), (byte) (stream >>> 16), (byte) (stream >>> 8), (byte) stream
    });
    out.write(payload);
  }

  private static byte[] headers(String authority) {
    ByteArrayOutputStream block = new ByteArrayOutputStream();
    block.write(0x83); // :method POST (static table 3)
    block.write(0x86); // :scheme http (6)
    literal(block, new byte[] {0x04}, "/grpc.health.v1.Health/Check"); // :path (4)
    literal(block, new byte[] {0x01}, authority); // :authority (1)
    literal(block, new byte[] {0x0f, 0x10}, "application/grpc"); // content-type (31)
    block.write(0x00); // te: a literal name
    string(block, "te");
    string(block, "trailers");
    return block.toByteArray();
  }

  // A literal header field without indexing whose name is in the static table.
  private static void literal(ByteArrayOutputStream block, byte[] name, String value) {
    block.write(name, 0, name.length);
    string(block, value);
  }

  private static void string(ByteArrayOutputStream block, String value) {
    byte[] bytes = value.getBytes(StandardCharsets.US_ASCII);
    if (bytes.length >= 127) {
      throw new IllegalArgumentException("header value too long: " + value);
    }
    block.write(bytes.length); // no Huffman, 7-bit length
    block.write(bytes, 0, bytes.length);
  }
}
