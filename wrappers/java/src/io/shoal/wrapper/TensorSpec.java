package io.shoal.wrapper;

import java.util.Arrays;

/**
 * What a model declares about one input or output: its name, datatype and shape, where -1
 * is a dimension of any size ({@code new TensorSpec("x", DataType.FP64, -1, 4)}: any number
 * of rows of 4 features).
 */
public record TensorSpec(String name, DataType datatype, long... shape) {
    public TensorSpec {
        if (name == null || name.isEmpty()) {
            throw new IllegalArgumentException("a TensorSpec needs a name");
        }
        if (datatype == null) {
            throw new IllegalArgumentException("TensorSpec '" + name + "' needs a datatype");
        }
        shape = shape.clone();
        for (long d : shape) {
            if (d < -1) {
                throw new IllegalArgumentException("TensorSpec '" + name + "': dimensions are -1 or >= 0");
            }
        }
    }

    @Override
    public long[] shape() {
        return shape.clone();
    }

    /** Whether a tensor of {@code actual} shape fits: same rank, fixed sizes equal. */
    public boolean accepts(long[] actual) {
        if (actual.length != shape.length) {
            return false;
        }
        for (int i = 0; i < shape.length; i++) {
            if (shape[i] != -1 && shape[i] != actual[i]) {
                return false;
            }
        }
        return true;
    }

    @Override
    public boolean equals(Object other) {
        return other instanceof TensorSpec o && name.equals(o.name) && datatype == o.datatype
                && Arrays.equals(shape, o.shape);
    }

    @Override
    public int hashCode() {
        return 31 * (31 * name.hashCode() + datatype.hashCode()) + Arrays.hashCode(shape);
    }

    @Override
    public String toString() {
        return name + " " + datatype + " " + Arrays.toString(shape);
    }
}
