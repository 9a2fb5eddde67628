package io.shoal.wrapper;

import java.util.Arrays;
import java.util.stream.Collectors;

/**
 * The Open Inference Protocol (V2) datatypes, and how a {@link Tensor} stores each one.
 *
 * <p>Java has no unsigned integers and no 16-bit float: UINT8/16/32/64 are stored in the signed
 * array of the same width (their bits unchanged, as {@link Byte#toUnsignedInt} reads them), and
 * FP16 as {@code short[]} holding IEEE 754 half-precision bits (see {@link Float16}). The
 * {@code Tensor.to*()} methods convert any of them to plain Java values.
 */
public enum DataType {
    BOOL(1, boolean[].class),
    UINT8(1, byte[].class),
    UINT16(2, short[].class),
    UINT32(4, int[].class),
    UINT64(8, long[].class),
    INT8(1, byte[].class),
    INT16(2, short[].class),
    INT32(4, int[].class),
    INT64(8, long[].class),
    FP16(2, short[].class),
    FP32(4, float[].class),
    FP64(8, double[].class),
    /** Byte strings: {@code byte[][]}, one array per element (text is UTF-8). */
    BYTES(-1, byte[][].class);

    private final int byteSize;
    private final Class<?> storage;

    DataType(int byteSize, Class<?> storage) {
        this.byteSize = byteSize;
        this.storage = storage;
    }

    /** Bytes per element on the wire (binary extension); -1 for BYTES (variable). */
    public int byteSize() {
        return byteSize;
    }

    /** The Java array class that holds this datatype's elements in a {@link Tensor}. */
    public Class<?> storage() {
        return storage;
    }

    public boolean isInteger() {
        return this != BOOL && this != BYTES && !isFloat();
    }

    public boolean isUnsigned() {
        return this == UINT8 || this == UINT16 || this == UINT32 || this == UINT64;
    }

    public boolean isFloat() {
        return this == FP16 || this == FP32 || this == FP64;
    }

    /** The datatype named {@code name} (exact V2 spelling), or a 400 naming the valid ones. */
    public static DataType parse(String name) {
        try {
            return valueOf(name);
        } catch (IllegalArgumentException | NullPointerException e) {
            String known = Arrays.stream(values()).map(Enum::name).sorted()
                    .collect(Collectors.joining(", "));
            throw InferenceException.badRequest(
                    "unknown datatype '" + name + "'; expected one of " + known);
        }
    }
}
