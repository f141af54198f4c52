//! The test REST catalog server (Iceberg's Java reference classes, `scripts/iceberg_java rest`)
//! proven with an independent client, pyiceberg's REST catalog: tables created, appended to
//! and read back; a failed requirement refused with 409; bearer tokens and the OAuth2
//! client-credentials flow enforced; and the injected commit faults doing what the fault tests
//! of lakewriter's own client will rely on (a commit answered 503 after it landed is applied
//! exactly once).

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::http::Answer;
use support::rest_server::{CommitFault, RestServer, RestServerOptions};
use support::{project_dir, stack};

/// Runs `tests/readers/rest_catalog.py` (pyiceberg) against `uri` with `args`, and returns
/// the JSON object it prints.
fn pyiceberg(uri: &str, args: &[&str]) -> Value {
    let output = python()
        .arg(project_dir().join("tests/readers/rest_catalog.py"))
        .arg(uri)
        .args(args)
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "pyiceberg {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "pyiceberg {args:?} printed no JSON ({e}):\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

fn python() -> Command {
    stack().python()
}

/// The rows pyiceberg reads, as (id, name) pairs ordered by id.
fn rows(uri: &str, auth: &[&str], table: &str) -> Vec<(i64, String)> {
    let mut args = auth.to_vec();
    args.extend(["read", "lake", table]);
    let answer = pyiceberg(uri, &args);
    answer["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|row| {
            (
                row[0].as_i64().expect("an id"),
                row[1].as_str().expect("a name").to_string(),
            )
        })
        .collect()
}

fn expected(ids: &[i64]) -> Vec<(i64, String)> {
    ids.iter().map(|id| (*id, format!("row {id}"))).collect()
}

fn error_type(answer: &Answer) -> Value {
    let body: Value = serde_json::from_str(&answer.body)
        .unwrap_or_else(|e| panic!("an ErrorResponse ({e}): {}", answer.body));
    body["error"]["type"].clone()
}

#[test]
fn pyiceberg_creates_appends_and_reads_through_the_reference_catalog() {
    // a prefix, so the client must take it from GET /v1/config
    let server = RestServer::start_with(RestServerOptions {
        prefix: Some("warehouse-1".into()),
        ..RestServerOptions::default()
    });
    let uri = server.uri();

    let created = pyiceberg(&uri, &["create", "lake", "items"]);
    assert_eq!(created["format_version"], 2);
    assert!(
        created["location"]
            .as_str()
            .expect("a location")
            .starts_with(&server.warehouse().display().to_string()),
        "the table lives in the server's warehouse: {created}"
    );
    assert_eq!(
        pyiceberg(&uri, &["append", "lake", "items", "1", "2", "3"])["ok"],
        true
    );
    assert_eq!(rows(&uri, &[], "items"), expected(&[1, 2, 3]));
    assert_eq!(
        pyiceberg(&uri, &["list"]),
        serde_json::json!({"namespaces": ["lake"], "tables": {"lake": ["items"]}})
    );

    // a property update that requires the snapshot before an append: refused with 409
    let stale = pyiceberg(&uri, &["stale-commit", "lake", "items", "4"]);
    assert_eq!(stale["error"], "CommitFailedException", "{stale}");
    assert!(
        stale["properties"].get("lakewriter.test").is_none(),
        "the refused update must not be applied: {stale}"
    );
    assert_eq!(rows(&uri, &[], "items"), expected(&[1, 2, 3, 4]));
    let stats = server.stats();
    assert_eq!(stats["answers"]["409"], 1, "{stats}");
    assert_eq!(server.commits_of("lake.items"), 2, "two appends: {stats}");

    // the spec's errors, as a raw client sees them
    let table = "/v1/warehouse-1/namespaces/lake/tables/items";
    assert_eq!(server.request("HEAD", table, &[], None).status, 204);
    let missing = server.request(
        "GET",
        "/v1/warehouse-1/namespaces/lake/tables/nope",
        &[],
        None,
    );
    assert_eq!(missing.status, 404);
    assert_eq!(error_type(&missing), "NoSuchTableException");
    let no_namespace = server.request("GET", "/v1/warehouse-1/namespaces/nope", &[], None);
    assert_eq!(no_namespace.status, 404);
    assert_eq!(error_type(&no_namespace), "NoSuchNamespaceException");
    let again = server.request(
        "POST",
        "/v1/warehouse-1/namespaces",
        &[],
        Some(("application/json", r#"{"namespace": ["lake"]}"#)),
    );
    assert_eq!(again.status, 409);
    assert_eq!(error_type(&again), "AlreadyExistsException");
    let garbled = server.request("POST", table, &[], Some(("application/json", "{not json")));
    assert_eq!(garbled.status, 400, "{}", garbled.body);
}

#[test]
fn bearer_tokens_and_oauth2_client_credentials_are_enforced() {
    let server = RestServer::start_with(RestServerOptions {
        token: Some("static-token".into()),
        client_credentials: Some(("writer".into(), "sesame".into())),
        token_ttl: Some(Duration::from_secs(2)),
        ..RestServerOptions::default()
    });
    let uri = server.uri();

    let anonymous = server.request("GET", "/v1/config", &[], None);
    assert_eq!(anonymous.status, 401);
    assert_eq!(error_type(&anonymous), "NotAuthorizedException");
    let wrong = server.request(
        "GET",
        "/v1/config",
        &[("Authorization", "Bearer not-a-token")],
        None,
    );
    assert_eq!(wrong.status, 401);

    // pyiceberg with the static token, then with client credentials
    assert_eq!(
        pyiceberg(
            &uri,
            &["--token", "static-token", "create", "lake", "items"]
        )["format_version"],
        2
    );
    let credential = ["--credential", "writer:sesame"];
    let mut append = credential.to_vec();
    append.extend(["append", "lake", "items", "7"]);
    assert_eq!(pyiceberg(&uri, &append)["ok"], true);
    assert_eq!(rows(&uri, &credential, "items"), expected(&[7]));
    assert!(server.stats()["token_issues"].as_u64().expect("a count") >= 2);

    // a wrong secret gets no token
    let refused = python()
        .arg(project_dir().join("tests/readers/rest_catalog.py"))
        .args([&uri, "--credential", "writer:wrong", "list"])
        .output()
        .expect("run python");
    assert!(!refused.status.success(), "a wrong secret must be refused");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("invalid_client"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // an issued token works until its lifetime ends, then gets 401
    let form = "grant_type=client_credentials&client_id=writer&client_secret=sesame&scope=catalog";
    let issued = server.request(
        "POST",
        "/v1/oauth/tokens",
        &[],
        Some(("application/x-www-form-urlencoded", form)),
    );
    assert_eq!(issued.status, 200, "{}", issued.body);
    let issued: Value = serde_json::from_str(&issued.body).expect("a token response");
    assert_eq!(issued["token_type"], "bearer");
    assert_eq!(issued["expires_in"], 2);
    assert_eq!(
        issued["issued_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    let bearer = format!(
        "Bearer {}",
        issued["access_token"].as_str().expect("a token")
    );
    let headers = [("Authorization", bearer.as_str())];
    assert_eq!(
        server
            .request("GET", "/v1/namespaces", &headers, None)
            .status,
        200
    );
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        server
            .request("GET", "/v1/namespaces", &headers, None)
            .status,
        401,
        "an expired token must be refused"
    );
}

#[test]
fn injected_commit_faults_apply_each_commit_at_most_once() {
    let server = RestServer::start();
    let uri = server.uri();
    pyiceberg(&uri, &["create", "lake", "items"]);
    assert_eq!(
        pyiceberg(&uri, &["append", "lake", "items", "1"])["ok"],
        true
    );

    // the lost answer: applied, then 503
    server.fail_next_commit(CommitFault::After);
    let lost = pyiceberg(&uri, &["append", "lake", "items", "2"]);
    assert_eq!(lost["error"], "ServiceUnavailableError", "{lost}");
    assert_eq!(rows(&uri, &[], "items"), expected(&[1, 2]));
    assert_eq!(server.commits_of("lake.items"), 2);

    // refused before it is applied
    server.fail_next_commit(CommitFault::Before);
    let refused = pyiceberg(&uri, &["append", "lake", "items", "3"]);
    assert_eq!(refused["error"], "ServiceUnavailableError", "{refused}");
    assert_eq!(rows(&uri, &[], "items"), expected(&[1, 2]));
    assert_eq!(server.commits_of("lake.items"), 2);

    // applied, and the connection closed without an answer
    server.fail_next_commit(CommitFault::Close);
    let closed = pyiceberg(&uri, &["append", "lake", "items", "4"]);
    assert!(closed.get("error").is_some(), "{closed}");
    assert_eq!(rows(&uri, &[], "items"), expected(&[1, 2, 4]));
    assert_eq!(server.commits_of("lake.items"), 3);
    assert_eq!(server.stats()["faults_injected"], 3);
}
