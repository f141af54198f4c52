/*
 * An Iceberg REST catalog server for lakewriter's tests, made of Apache Iceberg's own Java
 * reference classes: the routes are ours, but every table update a client sends is applied, and
 * every requirement checked, by org.apache.iceberg.rest.CatalogHandlers over a JdbcCatalog on a
 * SQLite file; requests and answers are (de)serialised with Iceberg's own parsers
 * (RESTSerializers). So a client that passes against this server speaks the protocol the way the
 * reference implementation understands it.
 *
 * Started by `scripts/iceberg_java rest` (which builds the class path):
 *
 *   RestCatalogServer --port P --warehouse DIR --catalog-db FILE [--prefix PREFIX]
 *                     [--token T] [--client-id ID --client-secret S [--token-ttl SECONDS]]
 *
 * It listens on 127.0.0.1:P, prints `ready P` on stdout once it accepts connections, logs one
 * line per request on stderr (method, path, status, milliseconds) and exits 0 on SIGTERM or
 * SIGINT.
 *
 * Routes (the REST catalog spec, open-api/rest-catalog-open-api.yaml; {prefix}/ is absent
 * unless --prefix is given, and GET /v1/config announces it as the `prefix` override):
 *   GET    /v1/config
 *   POST   /v1/oauth/tokens                                   (with --client-id)
 *   GET    /v1/{prefix}/namespaces[?parent=]                  list
 *   POST   /v1/{prefix}/namespaces                            create
 *   GET    /v1/{prefix}/namespaces/{ns}                       load
 *   HEAD   /v1/{prefix}/namespaces/{ns}                       exists
 *   DELETE /v1/{prefix}/namespaces/{ns}                       drop
 *   POST   /v1/{prefix}/namespaces/{ns}/properties            set and remove properties
 *   GET    /v1/{prefix}/namespaces/{ns}/tables                list
 *   POST   /v1/{prefix}/namespaces/{ns}/tables                create (also staged)
 *   POST   /v1/{prefix}/namespaces/{ns}/register              register a metadata file
 *   GET    /v1/{prefix}/namespaces/{ns}/tables/{t}            load
 *   HEAD   /v1/{prefix}/namespaces/{ns}/tables/{t}            exists
 *   POST   /v1/{prefix}/namespaces/{ns}/tables/{t}            commit: requirements and updates
 *   DELETE /v1/{prefix}/namespaces/{ns}/tables/{t}[?purgeRequested=true]  drop
 *   POST   /v1/{prefix}/namespaces/{ns}/tables/{t}/metrics    accepted and ignored
 *   POST   /v1/{prefix}/tables/rename                         rename
 *
 * Errors are the spec's ErrorResponse: 400 bad request, 401 no or bad token, 404 no such table
 * or namespace, 409 already exists, namespace not empty, or a failed requirement
 * (CommitFailedException), 503 an injected fault, 500 anything else.
 *
 * Authentication: with --token T every request but the token endpoint and the test routes must
 * carry `Authorization: Bearer T`. With --client-id and --client-secret, POST /v1/oauth/tokens
 * issues tokens for the client_credentials grant (and for the token-exchange grant, given a
 * valid subject token, which is how Iceberg's Java client refreshes); each expires after
 * --token-ttl seconds (default 3600), after which it is answered with 401.
 *
 * Test routes (no authentication), for the fault tests of a client:
 *   POST /test/fail-next-commit?mode=before   the next table commit is answered 503 and NOT
 *                                             applied
 *   POST /test/fail-next-commit?mode=after    the next table commit is applied, then answered
 *                                             503: the commit landed, the client cannot know
 *   POST /test/fail-next-commit?mode=close    the next table commit is applied and the
 *                                             connection closed without an answer
 *   GET  /test/stats                          counters as JSON: commits_applied,
 *                                             commits_by_table, token_issues, requests
 *                                             (by route template), answers (by status),
 *                                             faults_injected
 */

import com.sun.net.httpserver.Headers;
import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.net.URLDecoder;
import java.nio.charset.StandardCharsets;
import java.security.SecureRandom;
import java.util.ArrayList;
import java.util.Base64;
import java.util.HashMap;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.Executors;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReference;
import org.apache.iceberg.BaseTable;
import org.apache.iceberg.CatalogProperties;
import org.apache.iceberg.Table;
import org.apache.iceberg.catalog.Namespace;
import org.apache.iceberg.catalog.TableIdentifier;
import org.apache.iceberg.exceptions.AlreadyExistsException;
import org.apache.iceberg.exceptions.BadRequestException;
import org.apache.iceberg.exceptions.CommitFailedException;
import org.apache.iceberg.exceptions.CommitStateUnknownException;
import org.apache.iceberg.exceptions.ForbiddenException;
import org.apache.iceberg.exceptions.NamespaceNotEmptyException;
import org.apache.iceberg.exceptions.NoSuchNamespaceException;
import org.apache.iceberg.exceptions.NoSuchTableException;
import org.apache.iceberg.exceptions.NotAuthorizedException;
import org.apache.iceberg.exceptions.ServiceUnavailableException;
import org.apache.iceberg.exceptions.ValidationException;
import org.apache.iceberg.jdbc.JdbcCatalog;
import org.apache.iceberg.rest.CatalogHandlers;
import org.apache.iceberg.rest.RESTSerializers;
import org.apache.iceberg.rest.requests.CreateNamespaceRequest;
import org.apache.iceberg.rest.requests.CreateTableRequest;
import org.apache.iceberg.rest.requests.RegisterTableRequest;
import org.apache.iceberg.rest.requests.RenameTableRequest;
import org.apache.iceberg.rest.requests.UpdateNamespacePropertiesRequest;
import org.apache.iceberg.rest.requests.UpdateTableRequest;
import org.apache.iceberg.rest.responses.ConfigResponse;
import org.apache.iceberg.rest.responses.ErrorResponse;
import org.apache.iceberg.rest.responses.LoadTableResponse;
import org.apache.iceberg.shaded.com.fasterxml.jackson.annotation.JsonAutoDetect;
import org.apache.iceberg.shaded.com.fasterxml.jackson.annotation.PropertyAccessor;
import org.apache.iceberg.shaded.com.fasterxml.jackson.core.JsonProcessingException;
import org.apache.iceberg.shaded.com.fasterxml.jackson.databind.DeserializationFeature;
import org.apache.iceberg.shaded.com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.iceberg.shaded.com.fasterxml.jackson.databind.PropertyNamingStrategies;

public final class RestCatalogServer {
  private static final String TOKEN_PATH = "/v1/oauth/tokens";
  private static final String ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token";

  /** The command line. */
  static final class Options {
    int port;
    String warehouse;
    String catalogDb;
    String prefix;
    String token;
    String clientId;
    String clientSecret;
    long tokenTtlSeconds = 3600;

    static Options parse(String[] args) {
      Options o = new Options();
      for (int i = 0; i < args.length; i++) {
        String name = args[i];
        if (i + 1 >= args.length) {
          throw new IllegalArgumentException("option " + name + " needs a value");
        }
        String value = args[++i];
        switch (name) {
          case "--port" -> o.port = Integer.parseInt(value);
          case "--warehouse" -> o.warehouse = value;
          case "--catalog-db" -> o.catalogDb = value;
          case "--prefix" -> o.prefix = value;
          case "--token" -> o.token = value;
          case "--client-id" -> o.clientId = value;
          case "--client-secret" -> o.clientSecret = value;
          case "--token-ttl" -> o.tokenTtlSeconds = Long.parseLong(value);
          default -> throw new IllegalArgumentException("unknown option " + name);
        }
      }
      if (o.port <= 0 || o.warehouse == null || o.catalogDb == null) {
        throw new IllegalArgumentException("--port, --warehouse and --catalog-db are required");
      }
      if ((o.clientId == null) != (o.clientSecret == null)) {
        throw new IllegalArgumentException("--client-id and --client-secret go together");
      }
      return o;
    }
  }

  /** An answer to send: a status and a JSON body (null for none). */
  record Answer(int status, String body) {}

  /** Thrown to answer with an OAuth2 error body (RFC 6749, section 5.2) instead of ours. */
  static final class OAuthError extends RuntimeException {
    final int status;
    final String error;

    OAuthError(int status, String error, String description) {
      super(description);
      this.status = status;
      this.error = error;
    }
  }

  /** Thrown by a commit whose fault is to close the connection without an answer. */
  static final class CloseConnection extends RuntimeException {}

  private final Options options;
  private final JdbcCatalog catalog;
  private final ObjectMapper mapper;
  private final String base;
  private final SecureRandom random = new SecureRandom();
  /** Issued tokens and when each expires (System.nanoTime()). */
  private final Map<String, Long> tokens = new ConcurrentHashMap<>();
  private final AtomicReference<String> nextCommitFault = new AtomicReference<>();
  private final AtomicLong commitsApplied = new AtomicLong();
  private final AtomicLong tokenIssues = new AtomicLong();
  private final AtomicLong faultsInjected = new AtomicLong();
  private final Map<String, AtomicLong> commitsByTable = new ConcurrentHashMap<>();
  private final Map<String, AtomicLong> requestsByRoute = new ConcurrentHashMap<>();
  private final Map<String, AtomicLong> answersByStatus = new ConcurrentHashMap<>();

  RestCatalogServer(Options options) {
    this.options = options;
    this.base = options.prefix == null ? "/v1/" : "/v1/" + options.prefix + "/";
    this.mapper = restMapper();
    this.catalog = new JdbcCatalog();
    // HadoopFileIO (the default FileIO) reads its settings from a Hadoop Configuration
    this.catalog.setConf(new org.apache.hadoop.conf.Configuration());
    Map<String, String> properties = new HashMap<>();
    properties.put(CatalogProperties.URI, "jdbc:sqlite:" + options.catalogDb);
    properties.put(CatalogProperties.WAREHOUSE_LOCATION, options.warehouse);
    properties.put(JdbcCatalog.PROPERTY_PREFIX + "schema-version", "V1");
    // one connection: SQLite serialises writers anyway, and a pool of several only adds
    // "database is locked" retries
    properties.put(CatalogProperties.CLIENT_POOL_SIZE, "1");
    this.catalog.initialize("rest_test", properties);
  }

  /** The JSON mapper Iceberg's REST classes expect: kebab-case fields, Iceberg's parsers. */
  private static ObjectMapper restMapper() {
    ObjectMapper mapper = new ObjectMapper();
    mapper.setVisibility(PropertyAccessor.FIELD, JsonAutoDetect.Visibility.ANY);
    mapper.configure(DeserializationFeature.FAIL_ON_UNKNOWN_PROPERTIES, false);
    mapper.setPropertyNamingStrategy(new PropertyNamingStrategies.KebabCaseStrategy());
    RESTSerializers.registerAll(mapper);
    return mapper;
  }

  public static void main(String[] args) throws Exception {
    if (args.length == 2 && args[0].equals("--self-check")) {
      try {
        selfCheck(java.nio.file.Path.of(args[1]));
      } catch (Exception e) {
        e.printStackTrace();
        System.exit(1);
      }
      System.exit(0);
    }
    Options options;
    try {
      options = Options.parse(args);
    } catch (IllegalArgumentException e) {
      System.err.println("rest server: " + e.getMessage());
      System.exit(2);
      return;
    }
    new RestCatalogServer(options).serve();
  }

  private HttpServer start() throws IOException {
    HttpServer http = HttpServer.create(new InetSocketAddress("127.0.0.1", options.port), 64);
    http.setExecutor(
        Executors.newFixedThreadPool(
            8,
            task -> {
              Thread thread = new Thread(task, "rest-worker");
              thread.setDaemon(true);
              return thread;
            }));
    http.createContext("/", this::handle);
    http.start();
    return http;
  }

  void serve() throws IOException, InterruptedException {
    HttpServer http = start();
    CountDownLatch stop = new CountDownLatch(1);
    // SIGTERM ends the server cleanly, with status 0: the tests stop it that way
    for (String signal : List.of("TERM", "INT")) {
      sun.misc.Signal.handle(new sun.misc.Signal(signal), s -> stop.countDown());
    }
    System.out.println("ready " + http.getAddress().getPort());
    System.out.flush();
    stop.await();
    http.stop(0);
    catalog.close();
    System.err.println("rest server: stopped");
    System.exit(0);
  }

  /**
   * Proves the class path at install time: the relocated Jackson (every answer), HadoopFileIO
   * (a table's metadata file) and the SQLite driver with its native library (the catalog), by
   * a namespace and a table created and loaded through the routes on a private port.
   */
  static void selfCheck(java.nio.file.Path dir) throws Exception {
    java.nio.file.Files.createDirectories(dir);
    Options options = new Options();
    options.warehouse = dir.resolve("warehouse").toString();
    options.catalogDb = dir.resolve("catalog.db").toString();
    RestCatalogServer server = new RestCatalogServer(options);
    HttpServer http = server.start();
    String uri = "http://127.0.0.1:" + http.getAddress().getPort();
    java.net.http.HttpClient client = java.net.http.HttpClient.newHttpClient();
    String schema =
        "{\"type\":\"struct\",\"schema-id\":0,\"fields\":[{\"id\":1,\"name\":\"id\","
            + "\"required\":true,\"type\":\"long\"}]}";
    String[][] steps = {
      {"GET", "/v1/config", null},
      {"POST", "/v1/namespaces", "{\"namespace\":[\"check\"]}"},
      {"POST", "/v1/namespaces/check/tables", "{\"name\":\"t\",\"schema\":" + schema + "}"},
      {"GET", "/v1/namespaces/check/tables/t", null},
    };
    try {
      for (String[] step : steps) {
        java.net.http.HttpRequest.Builder request =
            java.net.http.HttpRequest.newBuilder(java.net.URI.create(uri + step[1]));
        request.method(
            step[0],
            step[2] == null
                ? java.net.http.HttpRequest.BodyPublishers.noBody()
                : java.net.http.HttpRequest.BodyPublishers.ofString(step[2]));
        java.net.http.HttpResponse<String> response =
            client.send(request.build(), java.net.http.HttpResponse.BodyHandlers.ofString());
        if (response.statusCode() != 200) {
          throw new IllegalStateException(
              step[0] + " " + step[1] + ": " + response.statusCode() + " " + response.body());
        }
      }
    } finally {
      http.stop(0);
      server.catalog.close();
    }
    System.out.println("self-check passed");
  }

  private void handle(HttpExchange exchange) {
    long started = System.nanoTime();
    String method = exchange.getRequestMethod();
    String path = exchange.getRequestURI().getRawPath();
    String[] route = {"unmatched"};
    int status;
    try {
      Answer answer;
      try {
        try {
          authenticate(exchange, path);
        } catch (NotAuthorizedException e) {
          route[0] = "unauthenticated";
          throw e;
        }
        answer = route(exchange, method, path, route);
      } catch (CloseConnection e) {
        log(method, path, -1, started);
        exchange.close();
        return;
      } catch (OAuthError e) {
        Map<String, String> body = new LinkedHashMap<>();
        body.put("error", e.error);
        body.put("error_description", e.getMessage());
        answer = new Answer(e.status, mapper.writeValueAsString(body));
      } catch (Exception e) {
        answer = error(e);
      } catch (LinkageError | AssertionError e) {
        // a class missing from the class path: answer 500 rather than drop the connection
        answer = error(new RuntimeException(e.toString(), e));
      }
      requestsByRoute.computeIfAbsent(route[0], k -> new AtomicLong()).incrementAndGet();
      status = answer.status();
      answersByStatus
          .computeIfAbsent(String.valueOf(status), k -> new AtomicLong())
          .incrementAndGet();
      send(exchange, method, answer);
    } catch (IOException e) {
      status = -1;
    } finally {
      exchange.close();
    }
    log(method, path, status, started);
  }

  private static void log(String method, String path, int status, long started) {
    long ms = (System.nanoTime() - started) / 1_000_000;
    System.err.println(method + " " + path + " " + (status < 0 ? "closed" : status) + " " + ms + "ms");
  }

  private void send(HttpExchange exchange, String method, Answer answer) throws IOException {
    Headers headers = exchange.getResponseHeaders();
    if (answer.status() == 401) {
      headers.set("WWW-Authenticate", "Bearer");
    }
    if (answer.body() == null || method.equals("HEAD")) {
      exchange.sendResponseHeaders(answer.status(), -1);
      return;
    }
    byte[] body = answer.body().getBytes(StandardCharsets.UTF_8);
    headers.set("Content-Type", "application/json");
    exchange.sendResponseHeaders(answer.status(), body.length);
    try (OutputStream out = exchange.getResponseBody()) {
      out.write(body);
    }
  }

  /** The spec's ErrorResponse for an exception, with its HTTP status. */
  private Answer error(Exception e) throws JsonProcessingException {
    int code = statusOf(e);
    String message = e.getMessage() == null ? e.getClass().getSimpleName() : e.getMessage();
    if (code == 500) {
      System.err.println("rest server: " + e);
    }
    ErrorResponse response =
        ErrorResponse.builder()
            .responseCode(code)
            .withType(
                e instanceof NoRoute
                    ? BadRequestException.class.getSimpleName()
                    : e.getClass().getSimpleName())
            .withMessage(message)
            .build();
    return new Answer(code, mapper.writeValueAsString(response));
  }

  private static int statusOf(Exception e) {
    if (e instanceof NoSuchTableException || e instanceof NoSuchNamespaceException) {
      return 404;
    } else if (e instanceof AlreadyExistsException
        || e instanceof CommitFailedException
        || e instanceof NamespaceNotEmptyException) {
      return 409;
    } else if (e instanceof NotAuthorizedException) {
      return 401;
    } else if (e instanceof ForbiddenException) {
      return 403;
    } else if (e instanceof ServiceUnavailableException) {
      return 503;
    } else if (e instanceof CommitStateUnknownException) {
      return 500;
    } else if (e instanceof IllegalArgumentException
        || e instanceof ValidationException
        || e instanceof BadRequestException
        || e instanceof JsonProcessingException
        || e instanceof NullPointerException) {
      // a request body without a field its parser requires ends as a NullPointerException
      return 400;
    } else if (e instanceof UnsupportedOperationException) {
      return 406;
    }
    return 500;
  }

  // ---- authentication ----

  private void authenticate(HttpExchange exchange, String path) {
    boolean required = options.token != null || options.clientId != null;
    if (!required || path.equals(TOKEN_PATH) || path.startsWith("/test/")) {
      return;
    }
    String header = exchange.getRequestHeaders().getFirst("Authorization");
    if (header == null || !header.regionMatches(true, 0, "Bearer ", 0, 7)) {
      throw new NotAuthorizedException("Authorization: Bearer <token> is required");
    }
    if (!validToken(header.substring(7).trim())) {
      throw new NotAuthorizedException("the bearer token is unknown or has expired");
    }
  }

  private boolean validToken(String token) {
    if (options.token != null && options.token.equals(token)) {
      return true;
    }
    Long expires = tokens.get(token);
    if (expires == null) {
      return false;
    }
    if (System.nanoTime() - expires >= 0) {
      tokens.remove(token);
      return false;
    }
    return true;
  }

  private Answer issueToken(HttpExchange exchange) throws IOException {
    if (options.clientId == null) {
      throw new OAuthError(400, "unsupported_grant_type", "this server issues no tokens");
    }
    Map<String, String> form = parseQuery(new String(body(exchange), StandardCharsets.UTF_8));
    String clientId = form.get("client_id");
    String clientSecret = form.get("client_secret");
    String basic = exchange.getRequestHeaders().getFirst("Authorization");
    if (basic != null && basic.regionMatches(true, 0, "Basic ", 0, 6)) {
      String pair =
          new String(Base64.getDecoder().decode(basic.substring(6).trim()), StandardCharsets.UTF_8);
      int colon = pair.indexOf(':');
      if (colon > 0) {
        clientId = URLDecoder.decode(pair.substring(0, colon), StandardCharsets.UTF_8);
        clientSecret = URLDecoder.decode(pair.substring(colon + 1), StandardCharsets.UTF_8);
      }
    }
    String grant = form.getOrDefault("grant_type", "");
    switch (grant) {
      case "client_credentials" -> {
        if (!options.clientId.equals(clientId) || !options.clientSecret.equals(clientSecret)) {
          throw new OAuthError(401, "invalid_client", "unknown client or wrong secret");
        }
      }
      case "urn:ietf:params:oauth:grant-type:token-exchange" -> {
        String subject = form.get("subject_token");
        boolean clientOk =
            options.clientId.equals(clientId) && options.clientSecret.equals(clientSecret);
        if (subject == null || !(validToken(subject) || clientOk)) {
          throw new OAuthError(401, "invalid_client", "the subject token is unknown or expired");
        }
      }
      default -> throw new OAuthError(400, "unsupported_grant_type", "grant_type " + grant);
    }
    byte[] bytes = new byte[24];
    random.nextBytes(bytes);
    String token = HexFormat.of().formatHex(bytes);
    tokens.put(token, System.nanoTime() + options.tokenTtlSeconds * 1_000_000_000L);
    tokenIssues.incrementAndGet();
    Map<String, Object> response = new LinkedHashMap<>();
    response.put("access_token", token);
    response.put("token_type", "bearer");
    response.put("expires_in", options.tokenTtlSeconds);
    response.put("issued_token_type", ACCESS_TOKEN_TYPE);
    return new Answer(200, mapper.writeValueAsString(response));
  }

  // ---- routing ----

  /**
   * Answers one request; `route` receives the route's template, for the request counters.
   */
  private Answer route(HttpExchange exchange, String method, String path, String[] route)
      throws IOException {
    Map<String, String> query = parseQuery(exchange.getRequestURI().getRawQuery());

    if (path.startsWith("/test/")) {
      route[0] = method + " " + path;
      return testRoute(method, path, query);
    }
    if (path.equals("/v1/config")) {
      route[0] = "GET /v1/config";
      requireMethod(method, "GET");
      return json(200, config());
    }
    if (path.equals(TOKEN_PATH)) {
      route[0] = "POST " + TOKEN_PATH;
      requireMethod(method, "POST");
      return issueToken(exchange);
    }
    if (!path.startsWith(base)) {
      throw new NoRoute(method, path);
    }
    List<String> parts = new ArrayList<>();
    for (String segment : path.substring(base.length()).split("/", -1)) {
      parts.add(percentDecode(segment));
    }
    int n = parts.size();
    String p = "/v1/{prefix}/";

    if (n == 1 && parts.get(0).equals("namespaces")) {
      route[0] = method + " " + p + "namespaces";
      if (method.equals("GET")) {
        Namespace parent =
            query.containsKey("parent") ? namespace(query.get("parent")) : Namespace.empty();
        return json(
            200,
            query.containsKey("pageSize")
                ? CatalogHandlers.listNamespaces(
                    catalog, parent, query.get("pageToken"), query.get("pageSize"))
                : CatalogHandlers.listNamespaces(catalog, parent));
      }
      requireMethod(method, "POST");
      CreateNamespaceRequest request = read(exchange, CreateNamespaceRequest.class);
      return json(200, CatalogHandlers.createNamespace(catalog, request));
    }
    if (n == 2 && parts.get(0).equals("tables") && parts.get(1).equals("rename")) {
      route[0] = method + " " + p + "tables/rename";
      requireMethod(method, "POST");
      RenameTableRequest request = read(exchange, RenameTableRequest.class);
      request.validate();
      CatalogHandlers.renameTable(catalog, request);
      return new Answer(204, null);
    }
    if (n < 2 || !parts.get(0).equals("namespaces")) {
      throw new NoRoute(method, path);
    }
    Namespace ns = namespace(parts.get(1));

    if (n == 2) {
      route[0] = method + " " + p + "namespaces/{namespace}";
      switch (method) {
        case "GET":
          return json(200, CatalogHandlers.loadNamespace(catalog, ns));
        case "HEAD":
          CatalogHandlers.namespaceExists(catalog, ns);
          return new Answer(204, null);
        case "DELETE":
          CatalogHandlers.dropNamespace(catalog, ns);
          return new Answer(204, null);
        default:
          throw new NoRoute(method, path);
      }
    }
    if (n == 3 && parts.get(2).equals("properties")) {
      route[0] = method + " " + p + "namespaces/{namespace}/properties";
      requireMethod(method, "POST");
      UpdateNamespacePropertiesRequest request =
          read(exchange, UpdateNamespacePropertiesRequest.class);
      return json(200, CatalogHandlers.updateNamespaceProperties(catalog, ns, request));
    }
    if (n == 3 && parts.get(2).equals("register")) {
      route[0] = method + " " + p + "namespaces/{namespace}/register";
      requireMethod(method, "POST");
      RegisterTableRequest request = read(exchange, RegisterTableRequest.class);
      return json(200, CatalogHandlers.registerTable(catalog, ns, request));
    }
    if (n == 3 && parts.get(2).equals("tables")) {
      route[0] = method + " " + p + "namespaces/{namespace}/tables";
      if (method.equals("GET")) {
        return json(
            200,
            query.containsKey("pageSize")
                ? CatalogHandlers.listTables(
                    catalog, ns, query.get("pageToken"), query.get("pageSize"))
                : CatalogHandlers.listTables(catalog, ns));
      }
      requireMethod(method, "POST");
      CreateTableRequest request = read(exchange, CreateTableRequest.class);
      if (request.stageCreate()) {
        return json(200, CatalogHandlers.stageTableCreate(catalog, ns, request));
      }
      return json(200, CatalogHandlers.createTable(catalog, ns, request));
    }
    if (n == 4 && parts.get(2).equals("tables")) {
      route[0] = method + " " + p + "namespaces/{namespace}/tables/{table}";
      TableIdentifier ident = TableIdentifier.of(ns, parts.get(3));
      switch (method) {
        case "GET":
          return json(200, CatalogHandlers.loadTable(catalog, ident));
        case "HEAD":
          CatalogHandlers.tableExists(catalog, ident);
          return new Answer(204, null);
        case "DELETE":
          if (Boolean.parseBoolean(query.getOrDefault("purgeRequested", "false"))) {
            CatalogHandlers.purgeTable(catalog, ident);
          } else {
            CatalogHandlers.dropTable(catalog, ident);
          }
          return new Answer(204, null);
        case "POST":
          return commit(exchange, ident);
        default:
          throw new NoRoute(method, path);
      }
    }
    if (n == 5 && parts.get(2).equals("tables") && parts.get(4).equals("metrics")) {
      route[0] = method + " " + p + "namespaces/{namespace}/tables/{table}/metrics";
      requireMethod(method, "POST");
      body(exchange);
      return new Answer(204, null);
    }
    throw new NoRoute(method, path);
  }

  /** A table commit, through CatalogHandlers.updateTable, with the fault injected if any. */
  private Answer commit(HttpExchange exchange, TableIdentifier ident) throws IOException {
    UpdateTableRequest request = read(exchange, UpdateTableRequest.class);
    String fault = nextCommitFault.getAndSet(null);
    if (fault != null) {
      faultsInjected.incrementAndGet();
    }
    if ("before".equals(fault)) {
      throw new ServiceUnavailableException("injected fault: the commit was not applied");
    }
    String before = currentMetadataLocation(ident);
    LoadTableResponse response = CatalogHandlers.updateTable(catalog, ident, request);
    String after = response.metadataLocation();
    if (after != null && !after.equals(before)) {
      commitsApplied.incrementAndGet();
      commitsByTable.computeIfAbsent(ident.toString(), k -> new AtomicLong()).incrementAndGet();
    }
    if ("after".equals(fault)) {
      throw new ServiceUnavailableException("injected fault: the commit was applied");
    }
    if ("close".equals(fault)) {
      throw new CloseConnection();
    }
    return json(200, response);
  }

  private String currentMetadataLocation(TableIdentifier ident) {
    try {
      Table table = catalog.loadTable(ident);
      return ((BaseTable) table).operations().current().metadataFileLocation();
    } catch (NoSuchTableException e) {
      // a create transaction commits to a table that does not exist yet
      return null;
    }
  }

  private Answer testRoute(String method, String path, Map<String, String> query)
      throws IOException {
    if (path.equals("/test/fail-next-commit")) {
      requireMethod(method, "POST");
      String mode = query.getOrDefault("mode", "");
      if (!List.of("before", "after", "close").contains(mode)) {
        throw new IllegalArgumentException("mode must be before, after or close, not " + mode);
      }
      nextCommitFault.set(mode);
      return new Answer(204, null);
    }
    if (path.equals("/test/stats")) {
      requireMethod(method, "GET");
      Map<String, Object> stats = new LinkedHashMap<>();
      stats.put("commits_applied", commitsApplied.get());
      stats.put("commits_by_table", snapshot(commitsByTable));
      stats.put("token_issues", tokenIssues.get());
      stats.put("faults_injected", faultsInjected.get());
      stats.put("requests", snapshot(requestsByRoute));
      stats.put("answers", snapshot(answersByStatus));
      return new Answer(200, mapper.writeValueAsString(stats));
    }
    throw new NoRoute(method, path);
  }

  private static Map<String, Long> snapshot(Map<String, AtomicLong> counters) {
    Map<String, Long> out = new TreeMap<>();
    counters.forEach((k, v) -> out.put(k, v.get()));
    return out;
  }

  private ConfigResponse config() {
    ConfigResponse.Builder builder = ConfigResponse.builder();
    if (options.prefix != null) {
      builder.withOverride("prefix", options.prefix);
    }
    // No `endpoints` list: Iceberg's Endpoint class needs Apache HttpClient 5, which the Spark
    // runtime jar does not carry; without the list, clients assume the standard routes, which
    // are the ones served here.
    return builder.build();
  }

  // ---- helpers ----

  /** A request to a path or with a method this server does not serve: 400, as the spec's. */
  static final class NoRoute extends BadRequestException {
    NoRoute(String method, String path) {
      super("no route for %s %s", method, path);
    }
  }

  private static void requireMethod(String method, String expected) {
    if (!method.equals(expected)) {
      throw new BadRequestException("method %s is not served here (use %s)", method, expected);
    }
  }

  private Answer json(int status, Object value) throws JsonProcessingException {
    return new Answer(status, mapper.writeValueAsString(value));
  }

  private <T> T read(HttpExchange exchange, Class<T> type) throws IOException {
    byte[] bytes = body(exchange);
    if (bytes.length == 0) {
      throw new BadRequestException("the request has no body");
    }
    return mapper.readValue(bytes, type);
  }

  private static byte[] body(HttpExchange exchange) throws IOException {
    try (InputStream in = exchange.getRequestBody()) {
      ByteArrayOutputStream out = new ByteArrayOutputStream();
      in.transferTo(out);
      return out.toByteArray();
    }
  }

  /** A namespace from its path or query form: levels joined by the unit separator (0x1F). */
  private static Namespace namespace(String encoded) {
    return Namespace.of(encoded.split("\u001f", -1));
  }

  /** Decodes %XX escapes; unlike URLDecoder, leaves '+' alone, as a path segment requires. */
  private static String percentDecode(String s) {
    if (s.indexOf('%') < 0) {
      return s;
    }
    ByteArrayOutputStream out = new ByteArrayOutputStream();
    for (int i = 0; i < s.length(); i++) {
      char c = s.charAt(i);
      if (c == '%' && i + 2 < s.length()) {
        out.write(Integer.parseInt(s.substring(i + 1, i + 3), 16));
        i += 2;
      } else {
        byte[] bytes = String.valueOf(c).getBytes(StandardCharsets.UTF_8);
        out.write(bytes, 0, bytes.length);
      }
    }
    return out.toString(StandardCharsets.UTF_8);
  }

  /** A query string or form body: name=value pairs, '+' and %XX decoded. */
  private static Map<String, String> parseQuery(String raw) {
    Map<String, String> out = new HashMap<>();
    if (raw == null || raw.isEmpty()) {
      return out;
    }
    for (String pair : raw.split("&")) {
      int eq = pair.indexOf('=');
      String name = eq < 0 ? pair : pair.substring(0, eq);
      String value = eq < 0 ? "" : pair.substring(eq + 1);
      out.put(
          URLDecoder.decode(name, StandardCharsets.UTF_8),
          URLDecoder.decode(value, StandardCharsets.UTF_8));
    }
    return out;
  }
}
