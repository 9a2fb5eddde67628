package io.shoal.wrapper;

import java.util.List;
import java.util.Map;

/**
 * A model served by {@link ModelServer}: implement {@link #predict}, and optionally declare
 * its name, inputs and outputs.
 *
 * <pre>{@code
 * public final class Doubler implements Model {
 *     public Map<String, Tensor> predict(Map<String, Tensor> inputs) {
 *         Tensor x = inputs.get("x");
 *         double[] out = x.toDoubles().clone();
 *         for (int i = 0; i < out.length; i++) out[i] *= 2;
 *         return Map.of("y", Tensor.ofDoubles("y", x.shape(), out));
 *     }
 *     public static void main(String[] args) { ModelServer.run(new Doubler(), args); }
 * }
 * }</pre>
 *
 * <p>Requests run concurrently on several threads: {@code predict} must be thread-safe.
 * Throw an {@link IllegalArgumentException} for an input the model cannot take (the client
 * gets a 400 with its message), or an {@link InferenceException} to choose the status; any
 * other exception is a 500.
 */
@FunctionalInterface
public interface Model {
    /**
     * The outputs for {@code inputs} (keyed by name, in the order the client sent them). The
     * map's keys name the outputs; use a {@code LinkedHashMap} (or declare {@link #outputs()})
     * to fix their order in the response.
     */
    Map<String, Tensor> predict(Map<String, Tensor> inputs) throws Exception;

    /**
     * The whole request in, the whole response out: override this instead of {@link #predict}
     * to read the request's {@code parameters} or {@code id}, or to answer with parameters of
     * its own. The wrapper keeps only the outputs the request asked for.
     */
    default InferenceResponse infer(InferenceRequest request) throws Exception {
        return new InferenceResponse(predict(request.inputs()));
    }

    /**
     * Called once before the model is ready (weights, files...), after the server is up:
     * {@code /v2/health/live} answers meanwhile, {@code /ready} says 503 until it returns.
     * An exception stops the process with its message (Shoal shows it as the load failure).
     */
    default void load() throws Exception {}

    /** The model's name when {@code $SHOAL_MODEL_NAME} is not set (Shoal always sets it). */
    default String name() {
        return getClass().getSimpleName();
    }

    /** The platform metadata reports. */
    default String platform() {
        return "java";
    }

    /**
     * The inputs the model takes (asked after {@link #load()}). When declared, the wrapper
     * checks each request against them first (names, shapes, BYTES against numbers) and
     * answers 400 on a mismatch; a one-input model takes its input under any name.
     */
    default List<TensorSpec> inputs() {
        return List.of();
    }

    /** The outputs the model produces (metadata, and their order in responses). */
    default List<TensorSpec> outputs() {
        return List.of();
    }
}
