package io.shoal.wrapper;

import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * One model behind the V2 protocol, without the HTTP: load it, check requests against it,
 * run it, and encode its answer. {@link ModelServer} serves it; {@code --predict} calls it
 * directly.
 */
final class Pipeline {
    final Model model;
    final String name;
    final String version;
    private volatile boolean ready;
    private volatile String notReady = "is loading";
    private volatile List<TensorSpec> inputs = List.of();
    private volatile List<TensorSpec> outputs = List.of();

    Pipeline(Model model, String name, String version) {
        this.model = model;
        this.name = name;
        this.version = version;
    }

    void load() throws Exception {
        model.load();
        inputs = List.copyOf(model.inputs());
        outputs = List.copyOf(model.outputs());
        ready = true;
    }

    boolean ready() {
        return ready;
    }

    void stopping() {
        notReady = "is shutting down";
        ready = false;
    }

    void checkReady() {
        if (!ready) {
            throw InferenceException.unavailable("model '" + name + "' " + notReady);
        }
    }

    Map<String, Object> metadata() {
        checkReady();
        Map<String, Object> metadata = new LinkedHashMap<>();
        metadata.put("name", name);
        metadata.put("versions", version == null ? List.of() : List.of(version));
        metadata.put("platform", model.platform());
        metadata.put("inputs", specs(inputs));
        metadata.put("outputs", specs(outputs));
        return metadata;
    }

    private static List<Map<String, Object>> specs(List<TensorSpec> specs) {
        return specs.stream().map(s -> {
            Map<String, Object> entry = new LinkedHashMap<>();
            entry.put("name", s.name());
            entry.put("datatype", s.datatype().name());
            entry.put("shape", s.shape());
            return entry;
        }).toList();
    }

    /** A V2 request body in, the response body out; failures are {@link InferenceException}s. */
    V2Codec.Encoded infer(byte[] body, int headerLength) {
        checkReady();
        InferenceRequest request = V2Codec.decodeRequest(body, headerLength);
        request = request.withInputs(V2Codec.conform(request.inputs(), inputs, name));
        InferenceResponse response = run(request);
        Map<String, Tensor> produced = new LinkedHashMap<>();
        for (Map.Entry<String, Tensor> entry : response.outputs().entrySet()) {
            if (entry.getValue() == null) {
                throw new InferenceException(500, "model '" + name + "' returned no tensor for output '"
                        + entry.getKey() + "'");
            }
            produced.put(entry.getKey(), entry.getValue().withName(entry.getKey()));
        }
        List<Tensor> chosen = V2Codec.selectOutputs(produced, request, outputs, name);
        return V2Codec.encodeResponse(name, version, request.id(), response.parameters(), chosen, request);
    }

    private InferenceResponse run(InferenceRequest request) {
        InferenceResponse response;
        try {
            response = model.infer(request);
        } catch (InferenceException e) {
            throw e;
        } catch (InvalidTensorException e) { // the model built a broken output: its fault
            throw failure(e);
        } catch (IllegalArgumentException e) {
            throw InferenceException.badRequest(e.getMessage() != null ? e.getMessage() : e.toString());
        } catch (Exception | LinkageError | StackOverflowError | OutOfMemoryError e) {
            throw failure(e);
        }
        if (response == null) {
            throw new InferenceException(500, "model '" + name + "' returned null");
        }
        return response;
    }

    private InferenceException failure(Throwable e) {
        System.err.println("model '" + name + "' failed:");
        e.printStackTrace();
        String message = e.getMessage() == null ? "" : ": " + e.getMessage();
        return new InferenceException(500, "model '" + name + "' failed: " + e.getClass().getSimpleName() + message);
    }
}
