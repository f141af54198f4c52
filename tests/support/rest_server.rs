//! The Iceberg REST catalog server of Apache Iceberg's Java reference classes
//! (`scripts/iceberg_java rest`), started per test on a free port with a warehouse and a
//! catalog database of its own, so what a REST client sends is applied and checked by the
//! reference implementation. Its test hooks inject commit faults and count what happened.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

use super::http::{self, Answer};
use super::project_dir;

/// How long a server may take to print `ready` (it takes well under a second when the
/// machine is idle; the tests share two cores with builds).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// What the server requires of its clients, and where it serves its routes.
#[derive(Debug, Clone, Default)]
pub struct RestServerOptions {
    /// The routes' prefix (`/v1/{prefix}/…`), announced by `GET /v1/config`.
    pub prefix: Option<String>,
    /// A static bearer token every request must carry.
    pub token: Option<String>,
    /// Client id and secret for the OAuth2 client-credentials grant at `/v1/oauth/tokens`.
    pub client_credentials: Option<(String, String)>,
    /// How long an issued token is valid (the server's default: one hour).
    pub token_ttl: Option<Duration>,
}

/// The fault the server injects into the next table commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitFault {
    /// Answer 503 without applying the commit.
    Before,
    /// Apply the commit, then answer 503: the commit landed, the client cannot know.
    After,
    /// Apply the commit and close the connection without an answer.
    Close,
}

impl CommitFault {
    fn mode(self) -> &'static str {
        match self {
            CommitFault::Before => "before",
            CommitFault::After => "after",
            CommitFault::Close => "close",
        }
    }
}

/// A running REST catalog server; killed, and its files removed, when dropped.
#[derive(Debug)]
pub struct RestServer {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

/// Installs the Java pieces once per test binary (`scripts/iceberg_java install` is
/// idempotent, and takes a lock against other test binaries).
fn install() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let output = Command::new(project_dir().join("scripts/iceberg_java"))
            .arg("install")
            .output()
            .expect("scripts/iceberg_java runs");
        assert!(
            output.status.success(),
            "scripts/iceberg_java install failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    });
}

impl RestServer {
    /// A server without authentication, routes without a prefix.
    pub fn start() -> RestServer {
        RestServer::start_with(RestServerOptions::default())
    }

    /// A server with `options`; panics with the server's log when it does not become ready.
    pub fn start_with(options: RestServerOptions) -> RestServer {
        install();
        let dir = tempfile::tempdir().expect("a directory for the REST server");
        let addr = http::free_address();
        let log = std::fs::File::create(dir.path().join("server.log")).expect("the server's log");
        let mut command = Command::new(project_dir().join("scripts/iceberg_java"));
        command
            .arg("rest")
            .args(["--port", &addr.port().to_string()])
            .arg("--warehouse")
            .arg(dir.path().join("warehouse"))
            .arg("--catalog-db")
            .arg(dir.path().join("catalog.db"));
        if let Some(prefix) = &options.prefix {
            command.args(["--prefix", prefix]);
        }
        if let Some(token) = &options.token {
            command.args(["--token", token]);
        }
        if let Some((id, secret)) = &options.client_credentials {
            command.args(["--client-id", id, "--client-secret", secret]);
        }
        if let Some(ttl) = options.token_ttl {
            command.args(["--token-ttl", &ttl.as_secs().max(1).to_string()]);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start scripts/iceberg_java rest");
        let stdout = child.stdout.take().expect("the server's stdout");
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = RestServer { child, addr, dir };
        let expected = format!("ready {}", addr.port());
        match receiver.recv_timeout(READY_TIMEOUT) {
            Ok(line) if line == expected => server,
            outcome => {
                let _ = server.child.kill();
                let _ = server.child.wait();
                panic!(
                    "the REST server did not print `{expected}` (got {outcome:?}); its log:\n{}",
                    server.log()
                );
            }
        }
    }

    /// The catalog's URI, `http://127.0.0.1:PORT`.
    pub fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The server's address, for the raw HTTP helpers of `support::http`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The warehouse directory the catalog creates tables in.
    pub fn warehouse(&self) -> PathBuf {
        self.dir.path().join("warehouse")
    }

    /// The SQLite file of the server's JdbcCatalog.
    pub fn catalog_db(&self) -> PathBuf {
        self.dir.path().join("catalog.db")
    }

    /// What the server logged so far (one line per request).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Injects `fault` into the next table commit the server receives.
    pub fn fail_next_commit(&self, fault: CommitFault) {
        let path = format!("/test/fail-next-commit?mode={}", fault.mode());
        let answer = http::post(self.addr, &path, &[], "text/plain", "")
            .unwrap_or_else(|| panic!("the REST server does not answer; its log:\n{}", self.log()));
        assert_eq!(answer.status, 204, "fail-next-commit: {}", answer.body);
    }

    /// The server's counters: `commits_applied`, `commits_by_table` (`"ns.table"`),
    /// `token_issues`, `faults_injected`, `requests` (by route) and `answers` (by status).
    pub fn stats(&self) -> serde_json::Value {
        let answer = http::get(self.addr, "/test/stats", &[])
            .unwrap_or_else(|| panic!("the REST server does not answer; its log:\n{}", self.log()));
        assert_eq!(answer.status, 200, "stats: {}", answer.body);
        serde_json::from_str(&answer.body).expect("the stats are JSON")
    }

    /// Commits applied to table `ident` (`"namespace.table"`).
    pub fn commits_of(&self, ident: &str) -> u64 {
        self.stats()["commits_by_table"][ident]
            .as_u64()
            .unwrap_or(0)
    }

    /// One raw request to the server, with `headers`; panics when nothing answers.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<(&str, &str)>,
    ) -> Answer {
        http::request(self.addr, method, path, headers, body).unwrap_or_else(|| {
            panic!(
                "the REST server does not answer {method} {path}; its log:\n{}",
                self.log()
            )
        })
    }

    /// Where the server's files are (warehouse, catalog database, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for RestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
