package example;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import io.shoal.wrapper.DataType;
import io.shoal.wrapper.Model;
import io.shoal.wrapper.ModelServer;
import io.shoal.wrapper.Tensor;
import io.shoal.wrapper.TensorSpec;
import java.io.IOException;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * A logistic regression whose weights (trained by scikit-learn, see build.py) are read from
 * a JSON file: {@code $WEIGHTS}, default weights.json in the working directory.
 *
 * <p>Input {@code features}: FP64 [rows, features]. Outputs {@code label} (INT64 [rows], the
 * most likely class) and {@code probabilities} (FP64 [rows, classes]), as scikit-learn's
 * {@code predict} and {@code predict_proba} give them.
 *
 * <p>{@code java -cp "lib/*" example.LogisticRegressionModel} serves it on $PORT; add
 * {@code --predict request.json} to answer one V2 request on stdout instead.
 */
public final class LogisticRegressionModel implements Model {
    private final Path weightsFile;
    private String[] features;
    private long[] classes;
    private double[][] coef; // [classes, features]; one row for a binary model
    private double[] intercept;

    public LogisticRegressionModel() {
        this(Path.of(System.getenv().getOrDefault("WEIGHTS", "weights.json")));
    }

    public LogisticRegressionModel(Path weightsFile) {
        this.weightsFile = weightsFile;
    }

    public static void main(String[] args) {
        ModelServer.run(new LogisticRegressionModel(), args);
    }

    @Override
    public void load() throws IOException {
        JsonNode root = new ObjectMapper().readTree(weightsFile.toFile());
        JsonNode coefNode = root.get("coef");
        int rows = coefNode.size();
        int width = root.get("features").size();
        features = new String[width];
        for (int j = 0; j < width; j++) {
            features[j] = root.get("features").get(j).asText();
        }
        classes = new long[root.get("classes").size()];
        for (int k = 0; k < classes.length; k++) {
            classes[k] = root.get("classes").get(k).asLong();
        }
        coef = new double[rows][width];
        intercept = new double[rows];
        for (int k = 0; k < rows; k++) {
            if (coefNode.get(k).size() != width) {
                throw new IOException(weightsFile + ": coef row " + k + " has " + coefNode.get(k).size()
                        + " weights for " + width + " features");
            }
            for (int j = 0; j < width; j++) {
                coef[k][j] = coefNode.get(k).get(j).doubleValue();
            }
            intercept[k] = root.get("intercept").get(k).doubleValue();
        }
        if (rows != (classes.length == 2 ? 1 : classes.length)) {
            throw new IOException(weightsFile + ": " + rows + " coef rows for " + classes.length + " classes");
        }
    }

    @Override
    public String name() {
        return "java-logreg";
    }

    @Override
    public List<TensorSpec> inputs() {
        return List.of(new TensorSpec("features", DataType.FP64, -1, features.length));
    }

    @Override
    public List<TensorSpec> outputs() {
        return List.of(new TensorSpec("label", DataType.INT64, -1),
                new TensorSpec("probabilities", DataType.FP64, -1, classes.length));
    }

    @Override
    public Map<String, Tensor> predict(Map<String, Tensor> inputs) {
        // The wrapper has checked the shape against inputs() and named the one input "features".
        Tensor x = inputs.get("features");
        int rows = (int) x.dim(0);
        int width = features.length;
        double[] values = x.toDoubles();
        for (int i = 0; i < values.length; i++) {
            if (!Double.isFinite(values[i])) {
                throw new IllegalArgumentException("features must be finite numbers: row " + (i / width)
                        + ", feature '" + features[i % width] + "' is " + values[i]);
            }
        }
        int k = classes.length;
        double[] probabilities = new double[rows * k];
        long[] labels = new long[rows];
        double[] z = new double[coef.length];
        for (int r = 0; r < rows; r++) {
            for (int c = 0; c < coef.length; c++) {
                double sum = 0;
                for (int j = 0; j < width; j++) {
                    sum += coef[c][j] * values[r * width + j];
                }
                z[c] = sum + intercept[c];
            }
            if (coef.length == 1) { // binary: the positive class's probability is the sigmoid
                double p = 1 / (1 + Math.exp(-z[0]));
                probabilities[r * k] = 1 - p;
                probabilities[r * k + 1] = p;
            } else { // multinomial: softmax
                double max = Double.NEGATIVE_INFINITY;
                for (double v : z) {
                    max = Math.max(max, v);
                }
                double total = 0;
                for (int c = 0; c < k; c++) {
                    probabilities[r * k + c] = Math.exp(z[c] - max);
                    total += probabilities[r * k + c];
                }
                for (int c = 0; c < k; c++) {
                    probabilities[r * k + c] /= total;
                }
            }
            int best = 0;
            for (int c = 1; c < k; c++) {
                if (probabilities[r * k + c] > probabilities[r * k + best]) {
                    best = c;
                }
            }
            labels[r] = classes[best];
        }
        Map<String, Tensor> outputs = new LinkedHashMap<>();
        outputs.put("label", Tensor.ofLongs("label", Tensor.shape(rows), labels));
        outputs.put("probabilities", Tensor.ofDoubles("probabilities", Tensor.shape(rows, k), probabilities));
        return outputs;
    }
}
