package io.shoal.wrapper;

/**
 * A {@link Tensor} built with data that does not fit its datatype or shape. Thrown while a
 * model builds its outputs, it is the model's fault: a 500, not the 400 other
 * {@link IllegalArgumentException}s are.
 */
public class InvalidTensorException extends IllegalArgumentException {
    private static final long serialVersionUID = 1L;

    public InvalidTensorException(String message) {
        super(message);
    }
}
