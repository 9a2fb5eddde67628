package io.shoal.wrapper;

import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.io.PrintStream;
import java.net.InetSocketAddress;
import java.net.URLDecoder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.ThreadFactory;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * Serves one {@link Model} over V2 REST (the Open Inference Protocol) with JDK's built-in
 * HTTP server, as Shoal's {@code runtime: process} expects:
 *
 * <pre>
 * GET  /v2/health/live               GET  /v2/health/ready          GET /v2
 * GET  /v2/models/{name}[/versions/{v}]           metadata
 * GET  /v2/models/{name}[/versions/{v}]/ready
 * POST /v2/models/{name}[/versions/{v}]/infer     JSON tensors, or the binary extension
 * </pre>
 *
 * <p>Settings come from the environment: {@code PORT} (default 9000; 0 picks a free one),
 * {@code HOST} (default 127.0.0.1), {@code SHOAL_MODEL_NAME} (default {@link Model#name()}),
 * {@code SHOAL_MODEL_VERSION} (default 1), {@code SHOAL_WRAPPER_THREADS} (requests served at
 * once; default twice the processors, at least 8), {@code SHOAL_WRAPPER_MAX_REQUEST_SIZE}
 * (bytes; default 256 MiB), {@code SHOAL_WRAPPER_DRAIN_SECONDS} (how long SIGTERM waits for
 * requests in flight; default 5).
 *
 * <p>Errors are {@code {"error": "..."}} with Shoal's statuses: 400 bad input, 404 unknown
 * model or route, 405 wrong method, 413 body too large, 500 the model failed, 503 not ready.
 */
public final class ModelServer {
    private final Pipeline pipeline;
    private final HttpServer http;
    private final ExecutorService pool;
    private final long maxRequestSize;
    private final int drainSeconds;
    private final AtomicInteger inFlight = new AtomicInteger();

    /** What a server is started with; {@link #fromEnvironment} reads the variables above. */
    public record Settings(String host, int port, String name, String version, int threads,
                           long maxRequestSize, int drainSeconds) {
        public static Settings fromEnvironment(Model model) {
            Map<String, String> env = System.getenv();
            return new Settings(
                    env.getOrDefault("HOST", "127.0.0.1"),
                    intSetting(env, "PORT", 9000),
                    nonEmpty(env.get("SHOAL_MODEL_NAME"), model.name()),
                    nonEmpty(env.get("SHOAL_MODEL_VERSION"), "1"),
                    intSetting(env, "SHOAL_WRAPPER_THREADS", Math.max(8, 2 * Runtime.getRuntime().availableProcessors())),
                    intSetting(env, "SHOAL_WRAPPER_MAX_REQUEST_SIZE", 256 << 20),
                    intSetting(env, "SHOAL_WRAPPER_DRAIN_SECONDS", 5));
        }
    }

    private ModelServer(Pipeline pipeline, HttpServer http, ExecutorService pool, Settings settings) {
        this.pipeline = pipeline;
        this.http = http;
        this.pool = pool;
        this.maxRequestSize = settings.maxRequestSize();
        this.drainSeconds = settings.drainSeconds();
    }

    // -- entry points --------------------------------------------------------------------

    /**
     * {@code java -cp ... io.shoal.wrapper.ModelServer MODEL_CLASS [--predict FILE]}: serves (or
     * runs once) the model class named (or in {@code $MODEL_CLASS}), which needs a public
     * constructor without arguments.
     */
    public static void main(String[] args) {
        List<String> rest = new ArrayList<>(List.of(args));
        String className = !rest.isEmpty() && !rest.get(0).startsWith("-") ? rest.remove(0) : System.getenv("MODEL_CLASS");
        if (className == null || className.isEmpty()) {
            System.err.println("usage: io.shoal.wrapper.ModelServer MODEL_CLASS [--predict FILE]"
                    + " (or set $MODEL_CLASS)");
            System.exit(2);
        }
        Model model;
        try {
            model = (Model) Class.forName(className).getConstructor().newInstance();
        } catch (ReflectiveOperationException | ClassCastException e) {
            System.err.println("cannot make a model of class " + className + ": " + e);
            System.exit(1);
            return;
        }
        run(model, rest.toArray(new String[0]));
    }

    /**
     * What a model's {@code main} calls: with {@code --predict FILE} (a V2 request body; "-"
     * reads stdin) it loads the model, prints the V2 response JSON on stdout and exits
     * (status 1 on an error, printed as {@code {"error": ...}} on stderr); otherwise it serves
     * the model until the process is stopped.
     */
    public static void run(Model model, String... args) {
        if (args.length > 0 && (args[0].equals("-h") || args[0].equals("--help"))) {
            System.out.println("serves the model over V2 REST on $PORT; --predict FILE: answer one V2 request and exit");
            return;
        }
        if (args.length >= 2 && args[0].equals("--predict")) {
            System.exit(predict(model, args[1], System.out, System.err));
        }
        if (args.length > 0) {
            System.err.println("unknown arguments " + List.of(args) + "; expected none, or --predict FILE");
            System.exit(2);
        }
        Settings settings = Settings.fromEnvironment(model);
        ModelServer server;
        try {
            server = start(model, settings);
        } catch (IOException e) {
            System.err.println("cannot listen on " + settings.host() + ":" + settings.port() + ": " + e);
            System.exit(1);
            return;
        }
        Runtime.getRuntime().addShutdownHook(new Thread(server::stop, "shoal-shutdown"));
        try {
            server.load();
        } catch (Throwable e) {
            e.printStackTrace();
            System.err.println("model '" + settings.name() + "' failed to load: " + e);
            System.exit(1);
        }
    }

    /** Runs one request through the model without a server (see {@link #run}); the exit status. */
    static int predict(Model model, String file, PrintStream out, PrintStream err) {
        Pipeline pipeline = new Pipeline(model, nonEmpty(System.getenv("SHOAL_MODEL_NAME"), model.name()),
                nonEmpty(System.getenv("SHOAL_MODEL_VERSION"), "1"));
        try {
            byte[] body = file.equals("-") ? System.in.readAllBytes() : Files.readAllBytes(Path.of(file));
            pipeline.load();
            V2Codec.Encoded answer = pipeline.infer(body, -1);
            out.write(answer.body());
            out.println();
            out.flush();
            return 0;
        } catch (InferenceException e) {
            err.println(new String(V2Codec.error(e.getMessage()), StandardCharsets.UTF_8));
            return 1;
        } catch (Exception e) {
            e.printStackTrace(err);
            err.println(new String(V2Codec.error(e.toString()), StandardCharsets.UTF_8));
            return 1;
        }
    }

    /** Binds and starts answering (health at once, the model once {@link #load()} returns). */
    public static ModelServer start(Model model, Settings settings) throws IOException {
        System.setProperty("sun.net.httpserver.nodelay", "true"); // no Nagle delay on small answers
        Pipeline pipeline = new Pipeline(model, settings.name(), settings.version());
        HttpServer http = HttpServer.create(new InetSocketAddress(settings.host(), settings.port()), 1024);
        ExecutorService pool = Executors.newFixedThreadPool(settings.threads(), daemonThreads());
        ModelServer server = new ModelServer(pipeline, http, pool, settings);
        http.createContext("/", server::handle);
        http.setExecutor(pool);
        http.start();
        System.err.printf("shoal java wrapper: model '%s' version %s on http://%s:%d (%d threads)%n",
                settings.name(), settings.version(), settings.host(), server.port(), settings.threads());
        return server;
    }

    /** Loads the model; the server is ready once this returns. */
    public void load() throws Exception {
        long started = System.nanoTime();
        pipeline.load();
        System.err.printf("shoal java wrapper: model '%s' is ready (loaded in %d ms)%n",
                pipeline.name, (System.nanoTime() - started) / 1_000_000);
    }

    /** The port the server listens on. */
    public int port() {
        return http.getAddress().getPort();
    }

    /** Not ready from now on; waits for requests in flight (up to the drain time), then stops. */
    public void stop() {
        pipeline.stopping();
        // HttpServer.stop(delay) waits the whole delay on JDK 17 even when nothing is in
        // flight (JDK-8304065): wait for the requests here, then stop at once.
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(drainSeconds);
        try {
            while (inFlight.get() > 0 && System.nanoTime() < deadline) {
                Thread.sleep(10);
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
        http.stop(0);
        pool.shutdownNow();
    }

    private static ThreadFactory daemonThreads() {
        AtomicInteger count = new AtomicInteger();
        return runnable -> {
            Thread thread = new Thread(runnable, "shoal-request-" + count.incrementAndGet());
            thread.setDaemon(true);
            return thread;
        };
    }

    // -- HTTP ----------------------------------------------------------------------------

    private record Answer(int status, byte[] body, String contentType, int headerLength, String allow) {
        static Answer json(int status, Object value) {
            return new Answer(status, V2Codec.json(value), "application/json", -1, null);
        }

        static Answer error(int status, String message) {
            return new Answer(status, V2Codec.error(message), "application/json", -1, null);
        }
    }

    private void handle(HttpExchange exchange) {
        inFlight.incrementAndGet();
        try {
            answer(exchange);
        } finally {
            inFlight.decrementAndGet();
        }
    }

    private void answer(HttpExchange exchange) {
        Answer answer;
        try {
            answer = route(exchange);
        } catch (InferenceException e) {
            answer = Answer.error(e.status(), e.getMessage());
        } catch (Throwable e) {
            e.printStackTrace();
            answer = Answer.error(500, "internal error: " + e);
        }
        try {
            var headers = exchange.getResponseHeaders();
            headers.set("Content-Type", answer.contentType());
            if (answer.headerLength() >= 0) {
                headers.set(V2Codec.HEADER_LENGTH, Integer.toString(answer.headerLength()));
            }
            if (answer.allow() != null) {
                headers.set("Allow", answer.allow());
            }
            // HEAD: the headers GET would send, without the body.
            byte[] body = exchange.getRequestMethod().equals("HEAD") ? new byte[0] : answer.body();
            exchange.sendResponseHeaders(answer.status(), body.length == 0 ? -1 : body.length);
            if (body.length > 0) {
                try (OutputStream out = exchange.getResponseBody()) {
                    out.write(body);
                }
            }
        } catch (IOException e) {
            // the client went away: nothing to answer
        } finally {
            exchange.close();
        }
    }

    private Answer route(HttpExchange exchange) throws IOException {
        String method = exchange.getRequestMethod();
        String rawPath = exchange.getRequestURI().getRawPath();
        List<String> parts = segments(rawPath);
        boolean post = method.equals("POST");
        boolean get = method.equals("GET") || method.equals("HEAD");
        if (parts.size() >= 1 && parts.get(0).equals("v2")) {
            int n = parts.size();
            if (n == 1) {
                return get ? Answer.json(200, Map.of("name", "shoal-java-wrapper", "version", "1",
                        "extensions", List.of("binary_tensor_data"))) : notAllowed(method, rawPath, "GET");
            }
            if (n == 3 && parts.get(1).equals("health") && (parts.get(2).equals("live") || parts.get(2).equals("ready"))) {
                if (!get) {
                    return notAllowed(method, rawPath, "GET");
                }
                if (parts.get(2).equals("live")) {
                    return Answer.json(200, Map.of("live", true));
                }
                pipeline.checkReady();
                return Answer.json(200, Map.of("ready", true));
            }
            if (n >= 3 && parts.get(1).equals("models")) {
                String name = parts.get(2);
                int at = 3;
                String version = null;
                if (n >= 5 && parts.get(3).equals("versions")) {
                    version = parts.get(4);
                    at = 5;
                }
                String action = n == at ? "" : n == at + 1 ? parts.get(at) : null;
                if (action != null && (action.isEmpty() || action.equals("ready") || action.equals("infer"))) {
                    checkModel(name, version);
                    switch (action) {
                        case "" -> {
                            return get ? Answer.json(200, pipeline.metadata()) : notAllowed(method, rawPath, "GET");
                        }
                        case "ready" -> {
                            if (!get) {
                                return notAllowed(method, rawPath, "GET");
                            }
                            pipeline.checkReady();
                            return Answer.json(200, Map.of("name", name, "ready", true));
                        }
                        default -> {
                            if (!post) {
                                return notAllowed(method, rawPath, "POST");
                            }
                            return infer(exchange);
                        }
                    }
                }
            }
        }
        return Answer.error(404, "Not Found: " + method + " " + rawPath);
    }

    private void checkModel(String name, String version) {
        if (!name.equals(pipeline.name)) {
            throw InferenceException.notFound("model '" + name + "' is not served here (this server serves '"
                    + pipeline.name + "')");
        }
        if (version != null && !version.equals(pipeline.version)) {
            throw InferenceException.notFound("model '" + name + "' has no version '" + version + "'; served: ["
                    + pipeline.version + "]");
        }
    }

    private Answer infer(HttpExchange exchange) throws IOException {
        int headerLength = -1;
        String header = exchange.getRequestHeaders().getFirst(V2Codec.HEADER_LENGTH);
        if (header != null) {
            try {
                headerLength = Integer.parseInt(header.trim());
            } catch (NumberFormatException e) {
                headerLength = -2;
            }
            if (headerLength < 0) {
                throw InferenceException.badRequest(V2Codec.HEADER_LENGTH + " must be a non-negative integer, not '"
                        + header + "'");
            }
        }
        byte[] body = readBody(exchange);
        V2Codec.Encoded encoded = pipeline.infer(body, headerLength);
        return new Answer(200, encoded.body(),
                encoded.headerLength() >= 0 ? "application/octet-stream" : "application/json",
                encoded.headerLength(), null);
    }

    private byte[] readBody(HttpExchange exchange) throws IOException {
        String declared = exchange.getRequestHeaders().getFirst("Content-Length");
        if (declared != null) {
            try {
                if (Long.parseLong(declared.trim()) > maxRequestSize) {
                    throw tooLarge();
                }
            } catch (NumberFormatException e) {
                // the HTTP server has refused it already
            }
        }
        try (InputStream in = exchange.getRequestBody()) {
            byte[] body = in.readNBytes((int) Math.min(Integer.MAX_VALUE - 8, maxRequestSize + 1));
            if (body.length > maxRequestSize) {
                throw tooLarge();
            }
            return body;
        }
    }

    private InferenceException tooLarge() {
        return new InferenceException(413, "the request body is larger than " + maxRequestSize
                + " bytes (SHOAL_WRAPPER_MAX_REQUEST_SIZE)");
    }

    private static Answer notAllowed(String method, String path, String allowed) {
        Answer error = Answer.error(405, "Method Not Allowed: " + method + " " + path);
        return new Answer(405, error.body(), error.contentType(), -1, allowed);
    }

    private static List<String> segments(String rawPath) {
        List<String> parts = new ArrayList<>();
        for (String part : rawPath.split("/")) {
            if (!part.isEmpty()) {
                try {
                    parts.add(URLDecoder.decode(part.replace("+", "%2B"), StandardCharsets.UTF_8));
                } catch (IllegalArgumentException e) {
                    throw InferenceException.badRequest("malformed path " + rawPath + ": " + e.getMessage());
                }
            }
        }
        return parts;
    }

    // -- settings ------------------------------------------------------------------------

    private static String nonEmpty(String value, String otherwise) {
        return value == null || value.isEmpty() ? otherwise : value;
    }

    private static int intSetting(Map<String, String> env, String key, int otherwise) {
        String value = env.get(key);
        if (value == null || value.isEmpty()) {
            return otherwise;
        }
        try {
            return Integer.parseInt(value.trim());
        } catch (NumberFormatException e) {
            throw new IllegalArgumentException("$" + key + " must be an integer, not '" + value + "'");
        }
    }
}
