package io.shoal.wrapper;

import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.Map;

/** A model's answer: its output tensors by name, and optional response {@code parameters}. */
public final class InferenceResponse {
    private final Map<String, Tensor> outputs;
    private final Map<String, Object> parameters;

    public InferenceResponse(Map<String, Tensor> outputs) {
        this(outputs, Map.of());
    }

    public InferenceResponse(Map<String, Tensor> outputs, Map<String, Object> parameters) {
        if (outputs == null) {
            throw new InvalidTensorException("a model returned no outputs (null)");
        }
        this.outputs = Collections.unmodifiableMap(new LinkedHashMap<>(outputs));
        this.parameters = parameters == null || parameters.isEmpty()
                ? Map.of() : Collections.unmodifiableMap(new LinkedHashMap<>(parameters));
    }

    public Map<String, Tensor> outputs() {
        return outputs;
    }

    public Map<String, Object> parameters() {
        return parameters;
    }
}
