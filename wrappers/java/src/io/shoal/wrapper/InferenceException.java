package io.shoal.wrapper;

/**
 * An error with the HTTP status the client gets, as Shoal answers it: 400 bad input, 404 no
 * such model or route, 500 the model failed, 503 not ready. A model may throw it to choose
 * the status; an {@link IllegalArgumentException} from a model is a 400 and any other
 * exception a 500.
 */
public class InferenceException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    private final int status;

    public InferenceException(int status, String message) {
        super(message);
        this.status = status;
    }

    public int status() {
        return status;
    }

    public static InferenceException badRequest(String message) {
        return new InferenceException(400, message);
    }

    public static InferenceException notFound(String message) {
        return new InferenceException(404, message);
    }

    public static InferenceException unavailable(String message) {
        return new InferenceException(503, message);
    }
}
