package io.shoal.wrapper;

import com.fasterxml.jackson.core.JsonGenerator;
import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.math.BigInteger;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.CharBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeSet;

/**
 * V2 REST bodies: JSON (parsed and written by Jackson) with the binary tensor extension.
 *
 * <p>A request is a JSON header, optionally followed by binary tensor data whose header length
 * arrives in {@code Inference-Header-Content-Length}; an input with {@code
 * parameters.binary_data_size} takes its bytes from there (numbers little-endian, row-major;
 * BYTES elements each a 4-byte little-endian length and its bytes). A response puts an
 * output in the binary section when the request's {@code binary_data_output} parameter, or
 * the requested output's own {@code binary_data}, says so.
 */
public final class V2Codec {
    private V2Codec() {}

    static final ObjectMapper MAPPER = new ObjectMapper()
            .enable(DeserializationFeature.FAIL_ON_TRAILING_TOKENS);

    /** How deep tensor data may nest (numpy's limit on dimensions). */
    static final int MAX_NESTING = 64;

    public static final String HEADER_LENGTH = "Inference-Header-Content-Length";

    /** An encoded body, and the length of its JSON header when binary data follows (else -1). */
    public record Encoded(byte[] body, int headerLength) {}

    // -- requests ------------------------------------------------------------------------

    /** A request body; {@code headerLength} is -1 when the request has no binary section. */
    public static InferenceRequest decodeRequest(byte[] body, int headerLength) {
        JsonNode header;
        int binaryStart;
        if (headerLength < 0) {
            header = parseObject(body, 0, body.length, "request body");
            binaryStart = -1;
        } else {
            if (headerLength > body.length) {
                throw InferenceException.badRequest(HEADER_LENGTH + " is " + headerLength
                        + " but the body has only " + body.length + " bytes");
            }
            header = parseObject(body, 0, headerLength, "JSON header");
            binaryStart = headerLength;
        }
        JsonNode rawInputs = header.get("inputs");
        if (rawInputs == null || !rawInputs.isArray()) {
            throw InferenceException.badRequest("'inputs' must be a list of tensors");
        }
        Map<String, Tensor> inputs = new LinkedHashMap<>();
        int offset = binaryStart;
        for (int position = 0; position < rawInputs.size(); position++) {
            JsonNode raw = rawInputs.get(position);
            int[] cursor = {offset};
            Tensor tensor = decodeInput(raw, position, body, binaryStart, cursor);
            offset = cursor[0];
            if (inputs.put(tensor.name(), tensor) != null) {
                throw InferenceException.badRequest("input '" + tensor.name() + "' appears more than once");
            }
        }
        if (binaryStart >= 0 && offset != body.length) {
            throw InferenceException.badRequest("the body has " + (body.length - offset)
                    + " bytes of binary data that no input claims");
        }
        JsonNode id = header.get("id");
        if (id != null && !id.isNull() && !id.isTextual()) {
            throw InferenceException.badRequest("'id' must be a string");
        }
        return new InferenceRequest(inputs, id == null || id.isNull() ? null : id.textValue(),
                parameters(header.get("parameters"), "request"), requestedOutputs(header.get("outputs")));
    }

    static JsonNode parseObject(byte[] body, int offset, int length, String what) {
        JsonNode node;
        try {
            node = MAPPER.readTree(body, offset, length);
        } catch (JsonProcessingException e) {
            throw InferenceException.badRequest(what + " is not valid JSON: " + e.getOriginalMessage());
        } catch (IOException e) {
            throw InferenceException.badRequest(what + " is not valid JSON: " + e.getMessage());
        }
        if (node == null || node.isMissingNode()) {
            throw InferenceException.badRequest(what + " is not valid JSON: it is empty");
        }
        if (!node.isObject()) {
            throw InferenceException.badRequest(what + " must be a JSON object");
        }
        return node;
    }

    private static Tensor decodeInput(JsonNode raw, int position, byte[] body, int binaryStart, int[] cursor) {
        if (!raw.isObject()) {
            throw InferenceException.badRequest("input " + position + " must be a JSON object");
        }
        JsonNode nameNode = raw.get("name");
        if (nameNode == null || !nameNode.isTextual() || nameNode.textValue().isEmpty()) {
            throw InferenceException.badRequest("input " + position + " needs a non-empty string 'name'");
        }
        String name = nameNode.textValue();
        JsonNode datatypeNode = raw.get("datatype");
        if (datatypeNode == null || !datatypeNode.isTextual()) {
            throw InferenceException.badRequest("input '" + name + "' needs a string 'datatype'");
        }
        DataType datatype = DataType.parse(datatypeNode.textValue());
        long[] shape = parseShape(raw.get("shape"), name);
        int count = (int) Tensor.elementCount(shape, name);
        Map<String, Object> parameters = parameters(raw.get("parameters"), "input '" + name + "'");
        Object size = parameters.remove("binary_data_size");
        if (size != null) {
            if (binaryStart < 0) {
                throw InferenceException.badRequest("input '" + name + "' has binary_data_size but the request has no "
                        + HEADER_LENGTH + " header");
            }
            if (!(size instanceof Integer || size instanceof Long) || ((Number) size).longValue() < 0) {
                throw InferenceException.badRequest("input '" + name
                        + "': binary_data_size must be a non-negative integer");
            }
            long bytes = ((Number) size).longValue();
            int offset = cursor[0];
            if (bytes > body.length - offset) {
                throw InferenceException.badRequest("input '" + name + "': binary_data_size " + bytes
                        + " overruns the " + (body.length - offset) + " bytes of binary data left");
            }
            Object data = decodeBinary(body, offset, (int) bytes, datatype, count, shape, name);
            cursor[0] = offset + (int) bytes;
            return new Tensor(name, datatype, shape, data, parameters);
        }
        JsonNode data = raw.get("data");
        if (data == null) {
            throw InferenceException.badRequest("input '" + name
                    + "' has neither 'data' nor parameters.binary_data_size");
        }
        return new Tensor(name, datatype, shape, jsonData(data, datatype, shape, count, name), parameters);
    }

    private static long[] parseShape(JsonNode node, String name) {
        if (node == null || !node.isArray()) {
            throw badShape(name);
        }
        long[] shape = new long[node.size()];
        for (int i = 0; i < shape.length; i++) {
            JsonNode d = node.get(i);
            if (!d.isIntegralNumber() || !d.canConvertToLong() || d.longValue() < 0) {
                throw badShape(name);
            }
            shape[i] = d.longValue();
        }
        return shape;
    }

    private static InferenceException badShape(String name) {
        return InferenceException.badRequest("input '" + name + "': 'shape' must be a list of non-negative integers");
    }

    /**
     * JSON {@code data}, flat or nested (row-major), as the storage array of {@code datatype}.
     * The elements actually present are counted first and compared with the shape's {@code
     * count}: nothing sized by the client's declared shape is allocated until the data is
     * known to fill it (a 60-byte body declaring {@code [2000000000]} is a 400, not an
     * OutOfMemoryError).
     */
    static Object jsonData(JsonNode data, DataType datatype, long[] shape, int count, String name) {
        long present = countLeaves(data, 0);
        if (present != count) {
            throw InferenceException.badRequest("input '" + name + "': " + present
                    + " data elements do not match shape " + Arrays.toString(shape) + " (" + count + " elements)");
        }
        Elements elements = new Elements(datatype, count, name, false);
        fill(data, elements, datatype, name);
        return elements.array();
    }

    /** How many scalars {@code node} holds, nested arrays flattened; a 400 past {@link #MAX_NESTING}. */
    private static long countLeaves(JsonNode node, int depth) {
        if (!node.isArray()) {
            return 1;
        }
        if (depth >= MAX_NESTING) {
            throw InferenceException.badRequest("tensor data nests deeper than " + MAX_NESTING + " levels");
        }
        long n = 0;
        for (JsonNode item : node) {
            n += countLeaves(item, depth + 1);
        }
        return n;
    }

    /** Puts {@code node}'s scalars, row-major, into {@code elements} (already counted: no depth check). */
    private static void fill(JsonNode node, Elements elements, DataType datatype, String name) {
        if (node.isArray()) {
            for (JsonNode item : node) {
                fill(item, elements, datatype, name);
            }
            return;
        }
        putValue(node, elements, datatype, name);
    }

    private static void putValue(JsonNode value, Elements elements, DataType datatype, String name) {
        if (value.isIntegralNumber()) {
            if (datatype == DataType.BOOL || datatype == DataType.BYTES) {
                throw wrongKind(datatype, name, value);
            }
            if (value.canConvertToLong()) {
                elements.putLong(value.longValue());
            } else {
                elements.putBig(value.bigIntegerValue());
            }
        } else if (value.isNumber()) {
            if (datatype == DataType.BOOL || datatype == DataType.BYTES) {
                throw wrongKind(datatype, name, value);
            }
            double d = value.doubleValue();
            if (Double.isInfinite(d)) { // a literal beyond any double: 1e400
                throw InferenceException.badRequest("input '" + name + "': " + value
                        + " is out of range for " + datatype);
            }
            elements.putDouble(d);
        } else if (value.isBoolean()) {
            elements.putBoolean(value.booleanValue());
        } else if (value.isTextual()) {
            if (datatype == DataType.BYTES) {
                elements.putBytes(value.textValue().getBytes(StandardCharsets.UTF_8));
            } else if (datatype.isFloat() && NONFINITE.containsKey(value.textValue())) {
                elements.putDouble(NONFINITE.get(value.textValue()));
            } else {
                throw wrongKind(datatype, name, value);
            }
        } else {
            throw wrongKind(datatype, name, value);
        }
    }

    /** How JSON, which has no literal for them, carries non-finite floats (both ways). */
    static final Map<String, Double> NONFINITE = Map.of(
            "NaN", Double.NaN, "Infinity", Double.POSITIVE_INFINITY, "-Infinity", Double.NEGATIVE_INFINITY);

    private static InferenceException wrongKind(DataType datatype, String name, JsonNode value) {
        String shown = value.toString();
        shown = shown.length() > 40 ? shown.substring(0, 40) + "..." : shown;
        String want = switch (datatype) {
            case BOOL -> "true or false";
            case BYTES -> "strings in JSON";
            case FP16, FP32, FP64 -> "numbers (or \"NaN\", \"Infinity\", \"-Infinity\")";
            default -> "integers";
        };
        String what = datatype == DataType.BYTES ? "BYTES elements" : datatype + " data";
        return InferenceException.badRequest("input '" + name + "': " + what + " must be " + want + ", not " + shown);
    }

    /**
     * One input's binary section. The declared shape is checked against the {@code size} bytes
     * actually received before anything is allocated: a fixed-width type needs exactly {@code
     * count * byteSize} bytes, and BYTES needs at least 4 per element, so no array here is
     * ever larger than the bytes that arrived.
     */
    static Object decodeBinary(byte[] body, int offset, int size, DataType datatype, int count, long[] shape,
                               String name) {
        if (datatype == DataType.BYTES) {
            return decodeBytesElements(body, offset, size, count, name);
        }
        long expected = (long) count * datatype.byteSize();
        if (size != expected) {
            throw InferenceException.badRequest("input '" + name + "': " + size + " bytes of " + datatype
                    + " data do not match shape " + Arrays.toString(shape) + ", which needs " + expected + " bytes");
        }
        ByteBuffer buffer = ByteBuffer.wrap(body, offset, size).slice().order(ByteOrder.LITTLE_ENDIAN);
        switch (datatype) {
            case BOOL -> {
                boolean[] out = new boolean[count];
                for (int i = 0; i < count; i++) {
                    out[i] = buffer.get(i) != 0;
                }
                return out;
            }
            case INT8, UINT8 -> {
                byte[] out = new byte[count];
                buffer.get(out);
                return out;
            }
            case INT16, UINT16, FP16 -> {
                short[] out = new short[count];
                buffer.asShortBuffer().get(out);
                return out;
            }
            case INT32, UINT32 -> {
                int[] out = new int[count];
                buffer.asIntBuffer().get(out);
                return out;
            }
            case INT64, UINT64 -> {
                long[] out = new long[count];
                buffer.asLongBuffer().get(out);
                return out;
            }
            case FP32 -> {
                float[] out = new float[count];
                buffer.asFloatBuffer().get(out);
                return out;
            }
            case FP64 -> {
                double[] out = new double[count];
                buffer.asDoubleBuffer().get(out);
                return out;
            }
            default -> throw new IllegalStateException(datatype.name());
        }
    }

    private static byte[][] decodeBytesElements(byte[] body, int offset, int size, int count, String name) {
        if ((long) count * 4 > size) {
            throw InferenceException.badRequest("input '" + name + "': shape needs " + count
                    + " BYTES elements, but the " + size + " bytes of data hold at most " + (size / 4));
        }
        ByteBuffer buffer = ByteBuffer.wrap(body, offset, size).slice().order(ByteOrder.LITTLE_ENDIAN);
        byte[][] out = new byte[count][];
        int position = 0;
        for (int i = 0; i < count; i++) {
            if (position + 4 > size) {
                throw InferenceException.badRequest("input '" + name + "': BYTES data ends after " + i + " of "
                        + count + " elements");
            }
            long length = Integer.toUnsignedLong(buffer.getInt(position));
            position += 4;
            if (length > size - position) {
                throw InferenceException.badRequest("input '" + name + "': BYTES element " + i + " claims " + length
                        + " bytes but only " + (size - position) + " remain");
            }
            out[i] = Arrays.copyOfRange(body, offset + position, offset + position + (int) length);
            position += (int) length;
        }
        if (position != size) {
            throw InferenceException.badRequest("input '" + name + "': " + (size - position)
                    + " bytes left over after " + count + " BYTES elements");
        }
        return out;
    }

    @SuppressWarnings("unchecked")
    private static Map<String, Object> parameters(JsonNode node, String where) {
        if (node == null || node.isNull()) {
            return new LinkedHashMap<>();
        }
        if (!node.isObject()) {
            throw InferenceException.badRequest(where + " 'parameters' must be a JSON object");
        }
        return MAPPER.convertValue(node, LinkedHashMap.class);
    }

    private static List<InferenceRequest.RequestedOutput> requestedOutputs(JsonNode node) {
        if (node == null || node.isNull()) {
            return null;
        }
        if (!node.isArray()) {
            throw InferenceException.badRequest("'outputs' must be a list");
        }
        List<InferenceRequest.RequestedOutput> outputs = new ArrayList<>();
        for (JsonNode raw : node) {
            JsonNode name = raw.get("name");
            if (!raw.isObject() || name == null || !name.isTextual()) {
                throw InferenceException.badRequest("each requested output needs a string 'name'");
            }
            outputs.add(new InferenceRequest.RequestedOutput(name.textValue(),
                    parameters(raw.get("parameters"), "output")));
        }
        return outputs;
    }

    // -- checking inputs against what the model declares -----------------------------------

    /**
     * The inputs as {@code specs} declare them, as Shoal checks them: a one-input model takes
     * its input under any name; otherwise names must match. Shapes must fit; numbers convert
     * to the declared datatype when every value survives unchanged, BYTES never does.
     */
    static Map<String, Tensor> conform(Map<String, Tensor> inputs, List<TensorSpec> specs, String model) {
        if (specs.isEmpty()) {
            return inputs;
        }
        Map<String, Tensor> out = new LinkedHashMap<>();
        if (specs.size() == 1 && inputs.size() == 1) {
            Tensor tensor = inputs.values().iterator().next();
            TensorSpec spec = specs.get(0);
            out.put(spec.name(), conformOne(tensor, spec, model).withName(spec.name()));
            return out;
        }
        Map<String, TensorSpec> byName = new LinkedHashMap<>();
        for (TensorSpec spec : specs) {
            byName.put(spec.name(), spec);
        }
        for (Tensor tensor : inputs.values()) {
            TensorSpec spec = byName.get(tensor.name());
            if (spec == null) {
                throw InferenceException.badRequest("model '" + model + "' has no input '" + tensor.name()
                        + "'; it expects " + new TreeSet<>(byName.keySet()));
            }
            out.put(tensor.name(), conformOne(tensor, spec, model));
        }
        Set<String> missing = new TreeSet<>(byName.keySet());
        missing.removeAll(inputs.keySet());
        if (!missing.isEmpty()) {
            throw InferenceException.badRequest("model '" + model + "' is missing input(s) " + missing);
        }
        return out;
    }

    private static Tensor conformOne(Tensor tensor, TensorSpec spec, String model) {
        List<String> sent = new ArrayList<>();
        List<String> wanted = new ArrayList<>();
        if (!spec.accepts(tensor.shape())) {
            sent.add("has shape " + Arrays.toString(tensor.shape()));
            wanted.add(Arrays.toString(spec.shape()) + " (-1 is any size)");
        }
        if (tensor.datatype() != spec.datatype()
                && (tensor.datatype() == DataType.BYTES || spec.datatype() == DataType.BYTES)) {
            sent.add("is " + tensor.datatype());
            wanted.add(spec.datatype().name());
        }
        if (!sent.isEmpty()) {
            String alias = tensor.name().equals(spec.name()) ? "" : " (its input '" + spec.name() + "')";
            throw InferenceException.badRequest("input '" + tensor.name() + "'" + alias + " " + String.join(" and ", sent)
                    + " but model '" + model + "' expects " + String.join(" and ", wanted));
        }
        if (tensor.datatype() == spec.datatype()) {
            return tensor;
        }
        return new Tensor(tensor.name(), spec.datatype(), tensor.shape(), convert(tensor, spec.datatype(), model),
                tensor.parameters());
    }

    /** {@code tensor}'s elements as {@code target}, or a 400 naming the first value that would change. */
    static Object convert(Tensor tensor, DataType target, String model) {
        int n = tensor.size();
        Elements elements = new Elements(target, n, tensor.name(), true);
        DataType source = tensor.datatype();
        for (int i = 0; i < n; i++) {
            try {
                if (source == DataType.BOOL) {
                    elements.putBoolean(((boolean[]) tensor.data())[i]);
                } else if (source.isFloat()) {
                    elements.putDouble(tensor.doubleAt(i));
                } else if (source == DataType.UINT64 && ((long[]) tensor.data())[i] < 0) {
                    elements.putBig(new BigInteger(Long.toUnsignedString(((long[]) tensor.data())[i])));
                } else {
                    elements.putLong(tensor.longAt(i));
                }
            } catch (InferenceException e) {
                String value = source.isFloat() ? Double.toString(tensor.doubleAt(i))
                        : source == DataType.BOOL ? Boolean.toString(((boolean[]) tensor.data())[i])
                        : source == DataType.UINT64 ? Long.toUnsignedString(((long[]) tensor.data())[i])
                        : Long.toString(tensor.longAt(i));
                throw InferenceException.badRequest("input '" + tensor.name() + "' is " + source + " but model '" + model
                        + "' expects " + target + ", and its value " + value + " does not convert to " + target
                        + " exactly; send " + target + " data");
            }
        }
        return elements.array();
    }

    // -- responses -----------------------------------------------------------------------

    /**
     * A response body: {@code outputs} (already chosen and ordered), each in JSON or in the
     * binary section as {@code request} asks.
     */
    public static Encoded encodeResponse(String modelName, String modelVersion, String id,
                                         Map<String, Object> parameters, List<Tensor> outputs,
                                         InferenceRequest request) {
        boolean everything = request != null && truthy(request.parameters().get("binary_data_output"));
        Map<String, Boolean> choice = new LinkedHashMap<>();
        if (request != null && request.outputs() != null) {
            for (InferenceRequest.RequestedOutput o : request.outputs()) {
                if (o.parameters().containsKey("binary_data")) {
                    choice.put(o.name(), truthy(o.parameters().get("binary_data")));
                }
            }
        }
        List<byte[]> chunks = new ArrayList<>();
        ByteArrayOutputStream out = new ByteArrayOutputStream(256);
        try (JsonGenerator gen = MAPPER.createGenerator(out)) {
            gen.writeStartObject();
            gen.writeStringField("model_name", modelName);
            if (modelVersion != null) {
                gen.writeStringField("model_version", modelVersion);
            }
            if (id != null) {
                gen.writeStringField("id", id);
            }
            if (parameters != null && !parameters.isEmpty()) {
                gen.writeFieldName("parameters");
                gen.writeObject(parameters);
            }
            gen.writeArrayFieldStart("outputs");
            for (Tensor tensor : outputs) {
                gen.writeStartObject();
                gen.writeStringField("name", tensor.name());
                gen.writeStringField("datatype", tensor.datatype().name());
                gen.writeArrayFieldStart("shape");
                for (long d : tensor.shape()) {
                    gen.writeNumber(d);
                }
                gen.writeEndArray();
                Map<String, Object> tensorParameters = new LinkedHashMap<>(tensor.parameters());
                boolean binary = choice.getOrDefault(tensor.name(), everything);
                if (binary) {
                    byte[] raw = encodeBinary(tensor);
                    tensorParameters.put("binary_data_size", raw.length);
                    chunks.add(raw);
                } else {
                    gen.writeFieldName("data");
                    writeData(gen, tensor);
                }
                if (!tensorParameters.isEmpty()) {
                    gen.writeFieldName("parameters");
                    gen.writeObject(tensorParameters);
                }
                gen.writeEndObject();
            }
            gen.writeEndArray();
            gen.writeEndObject();
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        if (chunks.isEmpty()) {
            return new Encoded(out.toByteArray(), -1);
        }
        int headerLength = out.size();
        for (byte[] chunk : chunks) {
            out.writeBytes(chunk);
        }
        return new Encoded(out.toByteArray(), headerLength);
    }

    static boolean truthy(Object value) {
        if (value == null) {
            return false;
        }
        if (value instanceof Boolean b) {
            return b;
        }
        if (value instanceof Number n) {
            return n.doubleValue() != 0;
        }
        if (value instanceof String s) {
            return !s.isEmpty();
        }
        if (value instanceof Map<?, ?> m) {
            return !m.isEmpty();
        }
        if (value instanceof List<?> l) {
            return !l.isEmpty();
        }
        return true;
    }

    private static void writeData(JsonGenerator gen, Tensor tensor) throws IOException {
        Object data = tensor.data();
        int n = tensor.size();
        gen.writeStartArray();
        switch (tensor.datatype()) {
            case BOOL -> {
                for (boolean v : (boolean[]) data) {
                    gen.writeBoolean(v);
                }
            }
            case INT8 -> {
                for (byte v : (byte[]) data) {
                    gen.writeNumber(v);
                }
            }
            case UINT8 -> {
                for (byte v : (byte[]) data) {
                    gen.writeNumber(Byte.toUnsignedInt(v));
                }
            }
            case INT16 -> {
                for (short v : (short[]) data) {
                    gen.writeNumber(v);
                }
            }
            case UINT16 -> {
                for (short v : (short[]) data) {
                    gen.writeNumber(Short.toUnsignedInt(v));
                }
            }
            case INT32 -> {
                for (int v : (int[]) data) {
                    gen.writeNumber(v);
                }
            }
            case UINT32 -> {
                for (int v : (int[]) data) {
                    gen.writeNumber(Integer.toUnsignedLong(v));
                }
            }
            case INT64 -> {
                for (long v : (long[]) data) {
                    gen.writeNumber(v);
                }
            }
            case UINT64 -> {
                for (long v : (long[]) data) {
                    if (v >= 0) {
                        gen.writeNumber(v);
                    } else {
                        gen.writeNumber(new BigInteger(Long.toUnsignedString(v)));
                    }
                }
            }
            case FP16 -> {
                for (short v : (short[]) data) {
                    writeFloat(gen, Float16.toFloat(v));
                }
            }
            case FP32 -> {
                for (float v : (float[]) data) {
                    writeFloat(gen, v);
                }
            }
            case FP64 -> {
                for (double v : (double[]) data) {
                    if (Double.isNaN(v) || Double.isInfinite(v)) {
                        gen.writeString(nonFinite(v));
                    } else {
                        gen.writeNumber(v);
                    }
                }
            }
            case BYTES -> {
                var decoder = StandardCharsets.UTF_8.newDecoder()
                        .onMalformedInput(CodingErrorAction.REPORT)
                        .onUnmappableCharacter(CodingErrorAction.REPORT);
                for (byte[] v : (byte[][]) data) {
                    CharBuffer text;
                    try {
                        text = decoder.decode(ByteBuffer.wrap(v));
                    } catch (CharacterCodingException e) {
                        throw InferenceException.badRequest("output '" + tensor.name()
                                + "': a BYTES element is not UTF-8 text; ask for it with binary_data");
                    }
                    gen.writeString(text.toString());
                }
            }
        }
        gen.writeEndArray();
        assert n == tensor.size();
    }

    private static void writeFloat(JsonGenerator gen, float v) throws IOException {
        if (Float.isNaN(v) || Float.isInfinite(v)) {
            gen.writeString(nonFinite(v));
        } else {
            gen.writeNumber(v);
        }
    }

    private static String nonFinite(double v) {
        return Double.isNaN(v) ? "NaN" : v > 0 ? "Infinity" : "-Infinity";
    }

    /** A tensor's elements in the binary extension's layout. */
    public static byte[] encodeBinary(Tensor tensor) {
        Object data = tensor.data();
        int n = tensor.size();
        if (tensor.datatype() == DataType.BYTES) {
            byte[][] elements = (byte[][]) data;
            long total = 0;
            for (byte[] e : elements) {
                total += 4 + e.length;
            }
            if (total > Integer.MAX_VALUE - 8) {
                throw new InferenceException(500, "output '" + tensor.name() + "' is too large to send");
            }
            ByteBuffer buffer = ByteBuffer.allocate((int) total).order(ByteOrder.LITTLE_ENDIAN);
            for (byte[] e : elements) {
                buffer.putInt(e.length);
                buffer.put(e);
            }
            return buffer.array();
        }
        ByteBuffer buffer = ByteBuffer.allocate(n * tensor.datatype().byteSize()).order(ByteOrder.LITTLE_ENDIAN);
        switch (tensor.datatype()) {
            case BOOL -> {
                boolean[] values = (boolean[]) data;
                for (int i = 0; i < n; i++) {
                    buffer.put(i, values[i] ? (byte) 1 : (byte) 0);
                }
            }
            case INT8, UINT8 -> buffer.put((byte[]) data);
            case INT16, UINT16, FP16 -> buffer.asShortBuffer().put((short[]) data);
            case INT32, UINT32 -> buffer.asIntBuffer().put((int[]) data);
            case INT64, UINT64 -> buffer.asLongBuffer().put((long[]) data);
            case FP32 -> buffer.asFloatBuffer().put((float[]) data);
            case FP64 -> buffer.asDoubleBuffer().put((double[]) data);
            default -> throw new IllegalStateException(tensor.datatype().name());
        }
        return buffer.array();
    }

    // -- small JSON bodies ---------------------------------------------------------------

    /** Any JSON value (maps, lists, strings, numbers) as UTF-8 bytes. */
    public static byte[] json(Object value) {
        try {
            return MAPPER.writeValueAsBytes(value);
        } catch (JsonProcessingException e) {
            throw new UncheckedIOException(e);
        }
    }

    /** The V2 error body: {@code {"error": message}}. */
    public static byte[] error(String message) {
        return json(Map.of("error", message == null ? "" : message));
    }

    /** The outputs the request asked for, in its order; a 400 naming a missing one. */
    static List<Tensor> selectOutputs(Map<String, Tensor> produced, InferenceRequest request, List<TensorSpec> declared,
                                      String model) {
        List<Tensor> chosen = new ArrayList<>();
        if (request.outputs() != null) {
            for (InferenceRequest.RequestedOutput o : request.outputs()) {
                Tensor tensor = produced.get(o.name());
                if (tensor == null) {
                    throw InferenceException.badRequest("model '" + model + "' has no output '" + o.name()
                            + "'; it produced " + new TreeSet<>(produced.keySet()));
                }
                chosen.add(tensor);
            }
            return chosen;
        }
        Set<String> seen = new HashSet<>();
        for (TensorSpec spec : declared) {
            Tensor tensor = produced.get(spec.name());
            if (tensor != null && seen.add(spec.name())) {
                chosen.add(tensor);
            }
        }
        for (Map.Entry<String, Tensor> entry : produced.entrySet()) {
            if (seen.add(entry.getKey())) {
                chosen.add(entry.getValue());
            }
        }
        return chosen;
    }
}
