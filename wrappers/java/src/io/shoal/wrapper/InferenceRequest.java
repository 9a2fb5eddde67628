package io.shoal.wrapper;

import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * A V2 inference request as the model sees it: its inputs (in the order sent, by name), its
 * {@code id}, its {@code parameters} and the outputs the client asked for.
 */
public final class InferenceRequest {
    private final Map<String, Tensor> inputs;
    private final String id;
    private final Map<String, Object> parameters;
    private final List<RequestedOutput> outputs;

    /** One entry of the request's {@code outputs}: a name and its parameters. */
    public record RequestedOutput(String name, Map<String, Object> parameters) {}

    public InferenceRequest(Map<String, Tensor> inputs, String id, Map<String, Object> parameters,
                            List<RequestedOutput> outputs) {
        this.inputs = Collections.unmodifiableMap(new LinkedHashMap<>(inputs));
        this.id = id;
        this.parameters = parameters == null ? Map.of() : Collections.unmodifiableMap(parameters);
        this.outputs = outputs == null ? null : List.copyOf(outputs);
    }

    /** The inputs by name, in the order the client sent them. */
    public Map<String, Tensor> inputs() {
        return inputs;
    }

    /** The input called {@code name}, or a 400 saying which inputs there are. */
    public Tensor input(String name) {
        Tensor tensor = inputs.get(name);
        if (tensor == null) {
            throw InferenceException.badRequest("the request has no input '" + name + "'; it has "
                    + inputs.keySet());
        }
        return tensor;
    }

    /** The request's {@code id}, or null. */
    public String id() {
        return id;
    }

    /** The request's {@code parameters} (JSON values), empty when none were sent. */
    public Map<String, Object> parameters() {
        return parameters;
    }

    /** The outputs asked for, in order; null when the request did not say (all outputs). */
    public List<RequestedOutput> outputs() {
        return outputs;
    }

    InferenceRequest withInputs(Map<String, Tensor> newInputs) {
        return new InferenceRequest(newInputs, id, parameters, outputs);
    }
}
