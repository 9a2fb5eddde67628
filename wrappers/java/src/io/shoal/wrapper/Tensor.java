package io.shoal.wrapper;

import java.lang.reflect.Array;
import java.math.BigInteger;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * One named V2 tensor: a datatype, a shape and its elements, flat, in row-major order.
 *
 * <p>The elements are kept in the Java array {@link DataType#storage()} names ({@code
 * double[]} for FP64, {@code byte[][]} for BYTES...), returned as is by {@link #data()}. The
 * {@code to*()} methods give them as another Java type whatever the datatype, refusing
 * (with an {@link IllegalArgumentException}, a 400 for the client) values that do not fit.
 *
 * <p>Tensors are immutable by convention: the arrays are not copied, so do not change an
 * input's data or an output's after returning it.
 */
public final class Tensor {
    private final String name;
    private final DataType datatype;
    private final long[] shape;
    private final Object data;
    private final Map<String, Object> parameters;

    /**
     * A tensor of {@code datatype} whose elements are {@code data}, an array of the class
     * {@link DataType#storage()} names with as many elements as {@code shape} holds.
     *
     * @throws InvalidTensorException when the array or its length does not fit
     */
    public Tensor(String name, DataType datatype, long[] shape, Object data) {
        this(name, datatype, shape, data, Map.of());
    }

    /** The same, with V2 tensor {@code parameters} (JSON values: maps, lists, strings, numbers). */
    public Tensor(String name, DataType datatype, long[] shape, Object data, Map<String, Object> parameters) {
        if (name == null || name.isEmpty()) {
            throw new InvalidTensorException("a tensor needs a non-empty name");
        }
        if (datatype == null) {
            throw new InvalidTensorException("tensor '" + name + "' needs a datatype");
        }
        if (shape == null) {
            throw new InvalidTensorException("tensor '" + name + "' needs a shape");
        }
        this.name = name;
        this.datatype = datatype;
        this.shape = shape.clone();
        long count = elementCount(this.shape, name);
        if (data == null || data.getClass() != datatype.storage()) {
            throw new InvalidTensorException("tensor '" + name + "' is " + datatype + ": its data must be a "
                    + datatype.storage().getSimpleName() + ", not "
                    + (data == null ? "null" : data.getClass().getSimpleName()));
        }
        int length = Array.getLength(data);
        if (length != count) {
            throw new InvalidTensorException("tensor '" + name + "' has " + length
                    + " elements but its shape " + Arrays.toString(this.shape) + " holds " + count);
        }
        if (datatype == DataType.BYTES) {
            for (byte[] element : (byte[][]) data) {
                if (element == null) {
                    throw new InvalidTensorException("tensor '" + name + "' has a null BYTES element");
                }
            }
        }
        this.data = data;
        this.parameters = parameters == null || parameters.isEmpty()
                ? Map.of() : Collections.unmodifiableMap(new LinkedHashMap<>(parameters));
    }

    // -- factories for the common cases ------------------------------------------------

    public static Tensor ofDoubles(String name, long[] shape, double... data) {
        return new Tensor(name, DataType.FP64, shape, data);
    }

    public static Tensor ofFloats(String name, long[] shape, float... data) {
        return new Tensor(name, DataType.FP32, shape, data);
    }

    /** FP16 from floats, each rounded to the nearest half-precision value. */
    public static Tensor ofFloat16(String name, long[] shape, float... data) {
        short[] bits = new short[data.length];
        for (int i = 0; i < data.length; i++) {
            bits[i] = Float16.fromFloat(data[i]);
        }
        return new Tensor(name, DataType.FP16, shape, bits);
    }

    public static Tensor ofLongs(String name, long[] shape, long... data) {
        return new Tensor(name, DataType.INT64, shape, data);
    }

    public static Tensor ofInts(String name, long[] shape, int... data) {
        return new Tensor(name, DataType.INT32, shape, data);
    }

    public static Tensor ofBooleans(String name, long[] shape, boolean... data) {
        return new Tensor(name, DataType.BOOL, shape, data);
    }

    /** BYTES holding each string in UTF-8. */
    public static Tensor ofStrings(String name, long[] shape, String... data) {
        byte[][] bytes = new byte[data.length][];
        for (int i = 0; i < data.length; i++) {
            bytes[i] = data[i].getBytes(StandardCharsets.UTF_8);
        }
        return new Tensor(name, DataType.BYTES, shape, bytes);
    }

    public static Tensor ofBytes(String name, long[] shape, byte[]... data) {
        return new Tensor(name, DataType.BYTES, shape, data);
    }

    /** Shorthand for a shape: {@code Tensor.shape(rows, 3)}. */
    public static long[] shape(long... dimensions) {
        return dimensions;
    }

    // -- what it is ---------------------------------------------------------------------

    public String name() {
        return name;
    }

    public DataType datatype() {
        return datatype;
    }

    public long[] shape() {
        return shape.clone();
    }

    /** Size of dimension {@code axis}. */
    public long dim(int axis) {
        return shape[axis];
    }

    public int rank() {
        return shape.length;
    }

    /** The number of elements. */
    public int size() {
        return Array.getLength(data);
    }

    /** The elements as stored: an array of {@link DataType#storage()}'s class (not copied). */
    public Object data() {
        return data;
    }

    /** The tensor's V2 parameters (read-only). */
    public Map<String, Object> parameters() {
        return parameters;
    }

    /** The same tensor under another name. */
    public Tensor withName(String newName) {
        return newName.equals(name) ? this : new Tensor(newName, datatype, shape, data, parameters);
    }

    /** The same tensor with other parameters. */
    public Tensor withParameters(Map<String, Object> newParameters) {
        return new Tensor(name, datatype, shape, data, newParameters);
    }

    // -- the elements as other Java types ------------------------------------------------

    /** Every element as a double: any numeric datatype (UINT64 and INT64 beyond 2^53 rounded), BOOL as 1/0. */
    public double[] toDoubles() {
        if (data instanceof double[] d) {
            return d;
        }
        int n = size();
        double[] out = new double[n];
        for (int i = 0; i < n; i++) {
            out[i] = doubleAt(i);
        }
        return out;
    }

    /** Every element as a float (rounded to nearest). */
    public float[] toFloats() {
        if (data instanceof float[] f) {
            return f;
        }
        int n = size();
        float[] out = new float[n];
        for (int i = 0; i < n; i++) {
            out[i] = (float) doubleAt(i);
        }
        return out;
    }

    /** Every element as a long: integers (a UINT64 above Long.MAX_VALUE is refused), BOOL as 1/0, whole floats. */
    public long[] toLongs() {
        if (data instanceof long[] l && datatype == DataType.INT64) {
            return l;
        }
        int n = size();
        long[] out = new long[n];
        for (int i = 0; i < n; i++) {
            out[i] = longAt(i);
        }
        return out;
    }

    /** Every element as an int, refusing values outside int's range. */
    public int[] toInts() {
        if (data instanceof int[] v && datatype == DataType.INT32) {
            return v;
        }
        int n = size();
        int[] out = new int[n];
        for (int i = 0; i < n; i++) {
            long value = longAt(i);
            if (value < Integer.MIN_VALUE || value > Integer.MAX_VALUE) {
                throw new IllegalArgumentException("tensor '" + name + "': element " + i + " (" + value
                        + ") does not fit an int");
            }
            out[i] = (int) value;
        }
        return out;
    }

    /** BOOL elements; numbers 0 and 1 as false and true. */
    public boolean[] toBooleans() {
        if (data instanceof boolean[] b) {
            return b;
        }
        int n = size();
        boolean[] out = new boolean[n];
        for (int i = 0; i < n; i++) {
            long value = longAt(i);
            if (value != 0 && value != 1) {
                throw new IllegalArgumentException("tensor '" + name + "': element " + i + " (" + value
                        + ") is not a boolean (0 or 1)");
            }
            out[i] = value == 1;
        }
        return out;
    }

    /** BYTES elements decoded as UTF-8 (malformed bytes replaced). */
    public String[] toStrings() {
        byte[][] bytes = toByteArrays();
        String[] out = new String[bytes.length];
        for (int i = 0; i < bytes.length; i++) {
            out[i] = new String(bytes[i], StandardCharsets.UTF_8);
        }
        return out;
    }

    /** BYTES elements. */
    public byte[][] toByteArrays() {
        if (data instanceof byte[][] b) {
            return b;
        }
        throw new IllegalArgumentException("tensor '" + name + "' is " + datatype + ", not BYTES");
    }

    /** Element {@code i} as a double. */
    public double doubleAt(int i) {
        return switch (datatype) {
            case BOOL -> ((boolean[]) data)[i] ? 1.0 : 0.0;
            case INT8 -> ((byte[]) data)[i];
            case UINT8 -> Byte.toUnsignedInt(((byte[]) data)[i]);
            case INT16 -> ((short[]) data)[i];
            case UINT16 -> Short.toUnsignedInt(((short[]) data)[i]);
            case INT32 -> ((int[]) data)[i];
            case UINT32 -> Integer.toUnsignedLong(((int[]) data)[i]);
            case INT64 -> ((long[]) data)[i];
            case UINT64 -> unsignedToDouble(((long[]) data)[i]);
            case FP16 -> Float16.toDouble(((short[]) data)[i]);
            case FP32 -> ((float[]) data)[i];
            case FP64 -> ((double[]) data)[i];
            case BYTES -> throw new IllegalArgumentException(
                    "tensor '" + name + "' is BYTES; numbers were expected");
        };
    }

    /** Element {@code i} as a long (see {@link #toLongs()}). */
    public long longAt(int i) {
        return switch (datatype) {
            case BOOL -> ((boolean[]) data)[i] ? 1 : 0;
            case INT8 -> ((byte[]) data)[i];
            case UINT8 -> Byte.toUnsignedInt(((byte[]) data)[i]);
            case INT16 -> ((short[]) data)[i];
            case UINT16 -> Short.toUnsignedInt(((short[]) data)[i]);
            case INT32 -> ((int[]) data)[i];
            case UINT32 -> Integer.toUnsignedLong(((int[]) data)[i]);
            case INT64 -> ((long[]) data)[i];
            case UINT64 -> {
                long raw = ((long[]) data)[i];
                if (raw < 0) {
                    throw new IllegalArgumentException("tensor '" + name + "': element " + i + " ("
                            + Long.toUnsignedString(raw) + ") does not fit a long");
                }
                yield raw;
            }
            case FP16, FP32, FP64 -> {
                double value = doubleAt(i);
                if (value != Math.rint(value) || Math.abs(value) >= 0x1p63) {
                    throw new IllegalArgumentException("tensor '" + name + "': element " + i + " (" + value
                            + ") is not a whole number that fits a long");
                }
                yield (long) value;
            }
            case BYTES -> throw new IllegalArgumentException(
                    "tensor '" + name + "' is BYTES; numbers were expected");
        };
    }

    static double unsignedToDouble(long raw) {
        if (raw >= 0) {
            return raw;
        }
        return new BigInteger(Long.toUnsignedString(raw)).doubleValue();
    }

    /** The number of elements {@code shape} holds, or a 400 when no Java array could. */
    static long elementCount(long[] shape, String name) {
        long count = 1;
        boolean empty = false;
        for (long d : shape) {
            if (d < 0) {
                throw new InvalidTensorException("tensor '" + name + "': shape " + Arrays.toString(shape)
                        + " has a negative dimension");
            }
            if (d == 0) {
                empty = true;
                continue;
            }
            try {
                count = Math.multiplyExact(count, d);
            } catch (ArithmeticException e) {
                count = Long.MAX_VALUE;
            }
        }
        if (count > Integer.MAX_VALUE - 8) {
            throw InferenceException.badRequest("tensor '" + name + "': shape " + Arrays.toString(shape)
                    + " is larger than any tensor can be");
        }
        return empty ? 0 : count;
    }

    @Override
    public String toString() {
        return "Tensor(" + name + ", " + datatype + ", " + Arrays.toString(shape) + ")";
    }
}
