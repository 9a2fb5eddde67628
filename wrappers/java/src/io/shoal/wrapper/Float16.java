package io.shoal.wrapper;

/**
 * IEEE 754 half precision (FP16), which Java 17 has no type for: conversions between its
 * 16 bits (held in a {@code short}) and {@code float}/{@code double}, rounding to nearest,
 * ties to even, as numpy does.
 */
public final class Float16 {
    private Float16() {}

    /** The largest finite FP16 value. */
    public static final double MAX_VALUE = 65504.0;

    /** The value of the half-precision number whose bits are {@code bits} (exact). */
    public static double toDouble(short bits) {
        int h = bits & 0xffff;
        int exponent = (h >>> 10) & 0x1f;
        int mantissa = h & 0x3ff;
        double value;
        if (exponent == 0) {
            value = mantissa * 0x1p-24;
        } else if (exponent == 31) {
            value = mantissa == 0 ? Double.POSITIVE_INFINITY : Double.NaN;
        } else {
            value = (1024 + mantissa) * Math.scalb(1.0, exponent - 25);
        }
        return (h & 0x8000) != 0 ? -value : value;
    }

    public static float toFloat(short bits) {
        return (float) toDouble(bits);
    }

    /** The half-precision number nearest {@code value} (infinity beyond {@link #MAX_VALUE}). */
    public static short fromDouble(double value) {
        int sign = (Double.doubleToRawLongBits(value) >>> 63) != 0 ? 0x8000 : 0;
        if (Double.isNaN(value)) {
            return (short) (sign | 0x7e00);
        }
        double magnitude = Math.abs(value);
        if (Double.isInfinite(magnitude)) {
            return (short) (sign | 0x7c00);
        }
        int exponent = Math.getExponent(magnitude);
        if (exponent < -14) { // subnormal (or zero): multiples of 2^-24; 1024 of them is 2^-14
            return (short) (sign | (int) Math.rint(Math.scalb(magnitude, 24)));
        }
        // 1024..2048 steps of 2^(exponent - 10); 2048 carries into the next exponent.
        int steps = (int) Math.rint(Math.scalb(magnitude, 10 - Math.min(exponent, 16)));
        long bits = ((long) (Math.min(exponent, 16) + 15) << 10) + steps - 1024;
        return (short) (sign | (bits >= 0x7c00 ? 0x7c00 : (int) bits));
    }

    public static short fromFloat(float value) {
        return fromDouble(value);
    }
}
