package io.shoal.wrapper;

import java.math.BigDecimal;
import java.math.BigInteger;

/**
 * Fills one tensor's storage array element by element, refusing (400) values the datatype
 * cannot hold: the same rules as Shoal's own decoding. A JSON decimal is rounded to the
 * nearest value of a float type (that is what 0.1 means), but an integer a float type cannot
 * hold exactly, a number beyond the type's range, or (in {@code strict} mode, converting one
 * tensor's datatype to another) any value that would change, is refused.
 */
final class Elements {
    static final BigInteger UINT64_MAX = BigInteger.ONE.shiftLeft(64).subtract(BigInteger.ONE);

    private final DataType type;
    private final String name;
    private final boolean strict;
    private final Object array;
    private int index;

    Elements(DataType type, int count, String name, boolean strict) {
        this.type = type;
        this.name = name;
        this.strict = strict;
        this.array = switch (type) {
            case BOOL -> new boolean[count];
            case INT8, UINT8 -> new byte[count];
            case INT16, UINT16, FP16 -> new short[count];
            case INT32, UINT32 -> new int[count];
            case INT64, UINT64 -> new long[count];
            case FP32 -> new float[count];
            case FP64 -> new double[count];
            case BYTES -> new byte[count][];
        };
    }

    Object array() {
        return array;
    }

    /** An integer value (its exact value; for UINT64 data above Long.MAX_VALUE use {@link #putBig}). */
    void putLong(long v) {
        switch (type) {
            case BOOL -> {
                if (!strict || (v != 0 && v != 1)) {
                    throw notBoolean();
                }
                ((boolean[]) array)[index++] = v == 1;
            }
            case INT8 -> ((byte[]) array)[index++] = (byte) checkRange(v, -128, 127);
            case UINT8 -> ((byte[]) array)[index++] = (byte) checkRange(v, 0, 255);
            case INT16 -> ((short[]) array)[index++] = (short) checkRange(v, Short.MIN_VALUE, Short.MAX_VALUE);
            case UINT16 -> ((short[]) array)[index++] = (short) checkRange(v, 0, 65535);
            case INT32 -> ((int[]) array)[index++] = (int) checkRange(v, Integer.MIN_VALUE, Integer.MAX_VALUE);
            case UINT32 -> ((int[]) array)[index++] = (int) checkRange(v, 0, 0xffffffffL);
            case INT64 -> ((long[]) array)[index++] = v;
            case UINT64 -> ((long[]) array)[index++] = checkRange(v, 0, Long.MAX_VALUE);
            case FP64 -> {
                double d = v;
                if ((v > (1L << 53) || v < -(1L << 53)) && (d >= 0x1p63 || (long) d != v)) {
                    throw notExact(Long.toString(v));
                }
                ((double[]) array)[index++] = d;
            }
            case FP32 -> {
                float f = v;
                if ((v > (1L << 24) || v < -(1L << 24)) && (f >= 0x1p63f || (long) f != v)) {
                    throw notExact(Long.toString(v));
                }
                ((float[]) array)[index++] = f;
            }
            case FP16 -> {
                short h = Float16.fromDouble(v);
                if ((v > 2048 || v < -2048) && Float16.toDouble(h) != v) {
                    throw notExact(Long.toString(v));
                }
                ((short[]) array)[index++] = h;
            }
            case BYTES -> throw notBytes();
        }
    }

    /** An integer outside long's range. */
    void putBig(BigInteger v) {
        if (type == DataType.UINT64) {
            if (v.signum() < 0 || v.compareTo(UINT64_MAX) > 0) {
                throw outOfRange();
            }
            ((long[]) array)[index++] = v.longValue();
        } else if (type.isFloat()) {
            double d = v.doubleValue();
            double stored = switch (type) {
                case FP64 -> d;
                case FP32 -> (float) d;
                default -> Float16.toDouble(Float16.fromDouble(d));
            };
            if (Double.isInfinite(stored) || !new BigDecimal(stored).toBigInteger().equals(v)) {
                throw notExact(v.toString());
            }
            putDouble(stored);
        } else if (type == DataType.BOOL) {
            throw notBoolean();
        } else if (type == DataType.BYTES) {
            throw notBytes();
        } else {
            throw outOfRange();
        }
    }

    /** A floating-point value (a JSON decimal, or an element of a float tensor). */
    void putDouble(double d) {
        switch (type) {
            case BOOL -> {
                if (!strict || (d != 0 && d != 1)) {
                    throw notBoolean();
                }
                ((boolean[]) array)[index++] = d == 1;
            }
            case FP64 -> ((double[]) array)[index++] = d;
            case FP32 -> {
                float f = (float) d;
                if (Float.isInfinite(f) && !Double.isInfinite(d)) {
                    throw floatOutOfRange(d, Float.MAX_VALUE);
                }
                if (strict && f != d && !Double.isNaN(d)) {
                    throw notExact(Double.toString(d));
                }
                ((float[]) array)[index++] = f;
            }
            case FP16 -> {
                short h = Float16.fromDouble(d);
                double back = Float16.toDouble(h);
                if (Double.isInfinite(back) && !Double.isInfinite(d)) {
                    throw floatOutOfRange(d, Float16.MAX_VALUE);
                }
                if (strict && back != d && !Double.isNaN(d)) {
                    throw notExact(Double.toString(d));
                }
                ((short[]) array)[index++] = h;
            }
            case BYTES -> throw notBytes();
            default -> { // integers: whole numbers only
                if (Double.isNaN(d) || Double.isInfinite(d) || d != Math.rint(d)) {
                    throw strict ? notExact(Double.toString(d))
                            : InferenceException.badRequest("input '" + name + "': " + type + " data must be integers");
                }
                if (Math.abs(d) < 0x1p63) {
                    putLong((long) d);
                } else {
                    putBig(new BigDecimal(d).toBigInteger());
                }
            }
        }
    }

    void putBoolean(boolean b) {
        if (type == DataType.BOOL) {
            ((boolean[]) array)[index++] = b;
        } else if (strict) {
            putLong(b ? 1 : 0);
        } else if (type == DataType.BYTES) {
            throw notBytes();
        } else {
            throw InferenceException.badRequest("input '" + name + "': " + type + " data must be "
                    + (type.isFloat() ? "numbers" : "integers") + ", not true or false");
        }
    }

    void putBytes(byte[] bytes) {
        if (type != DataType.BYTES) {
            throw InferenceException.badRequest("input '" + name + "': " + type + " data must be "
                    + (type == DataType.BOOL ? "true or false" : "numbers") + ", not strings");
        }
        ((byte[][]) array)[index++] = bytes;
    }

    private long checkRange(long v, long low, long high) {
        if (v < low || v > high) {
            throw outOfRange();
        }
        return v;
    }

    private InferenceException outOfRange() {
        String range = switch (type) {
            case INT8 -> "-128 to 127";
            case UINT8 -> "0 to 255";
            case INT16 -> "-32768 to 32767";
            case UINT16 -> "0 to 65535";
            case INT32 -> "-2147483648 to 2147483647";
            case UINT32 -> "0 to 4294967295";
            case INT64 -> "-9223372036854775808 to 9223372036854775807";
            case UINT64 -> "0 to 18446744073709551615";
            default -> "";
        };
        return InferenceException.badRequest("input '" + name + "': a value is out of range for " + type
                + " (" + range + ")");
    }

    private InferenceException floatOutOfRange(double d, double max) {
        return InferenceException.badRequest("input '" + name + "': " + d + " is out of range for " + type
                + " (" + (-max) + " to " + max + ")");
    }

    private InferenceException notExact(String value) {
        return InferenceException.badRequest("input '" + name + "': " + value
                + " cannot be represented exactly as " + type);
    }

    private InferenceException notBoolean() {
        return InferenceException.badRequest("input '" + name + "': BOOL data must be true or false");
    }

    private InferenceException notBytes() {
        return InferenceException.badRequest("input '" + name + "': BYTES elements must be strings in JSON");
    }
}
