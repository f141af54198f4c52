//! Test support: the real local stack (scripts/stack: PostgreSQL with logical replication, moto
//! for S3 and Glue, the Python readers), started once and shared, and a private database per
//! test with its own slot, publication, namespace and warehouse, so tests run in parallel.
#![allow(dead_code)]

pub mod delta;
pub mod extremes;
pub mod http;
pub mod items;
pub mod orders;
pub mod rest_server;
pub mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio_postgres::{Client, NoTls};

/// The running stack's settings (the `env` file `scripts/stack up` writes).
#[derive(Debug)]
pub struct Stack {
    vars: HashMap<String, String>,
}

impl Stack {
    /// A setting of the stack, such as `PGPORT` or `AWS_ENDPOINT_URL`.
    pub fn var(&self, name: &str) -> &str {
        self.vars
            .get(name)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("the stack's env file has no {name}"))
    }

    /// The superuser URL of the cluster, for database `db`.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres:{}@127.0.0.1:{}/{db}",
            self.var("PGPASSWORD"),
            self.var("PGPORT")
        )
    }

    /// The moto endpoint serving S3 and Glue.
    pub fn aws_endpoint(&self) -> &str {
        self.var("AWS_ENDPOINT_URL")
    }

    /// The project-local Python with DuckDB, pyiceberg, deltalake and moto.
    pub fn python(&self) -> Command {
        let mut command = Command::new(self.var("LAKEWRITER_PYTHON"));
        command.envs(&self.vars);
        command
    }

    /// Runs the Python `script` with `args` and the readers of `tests/readers` importable;
    /// panics naming `what` with Python's stderr when it fails, and returns the lines it
    /// printed.
    pub fn python_lines(&self, what: &str, script: &str, args: &[&str]) -> Vec<String> {
        let output = self
            .python()
            .arg("-c")
            .arg(script)
            .args(args)
            .env("PYTHONPATH", project_dir().join("tests/readers"))
            .output()
            .unwrap_or_else(|e| panic!("run {what}: {e}"));
        assert!(
            output.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// A PostgreSQL client program (psql, pg_recvlogical) of the cluster's version.
    pub fn pg_program(&self, name: &str) -> Command {
        let mut command = Command::new(Path::new(self.var("LAKEWRITER_PG_BINDIR")).join(name));
        command.envs(&self.vars);
        command
    }
}

/// The project's root directory.
pub fn project_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Starts the stack if it is not running (idempotent, and safe from parallel test processes:
/// the script takes a lock) and returns its settings.
pub fn stack() -> &'static Stack {
    static STACK: OnceLock<Stack> = OnceLock::new();
    STACK.get_or_init(|| {
        let output = Command::new(project_dir().join("scripts/stack"))
            .arg("up")
            .output()
            .expect("scripts/stack runs");
        assert!(
            output.status.success(),
            "scripts/stack up failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let dir = std::env::var("LAKEWRITER_STACK_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| project_dir().join(".stack"));
        let text = std::fs::read_to_string(dir.join("run/env")).expect("the stack's env file");
        let vars = text
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Stack { vars }
    })
}

/// Connects to `url` and drives the connection in the background.
pub async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to the test cluster: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// A private PostgreSQL cluster (`scripts/stack cluster`), for a test that restarts its
/// server while the shared one serves the other tests. Removed when dropped.
#[derive(Debug)]
pub struct Cluster {
    dir: tempfile::TempDir,
    /// Its port on 127.0.0.1.
    pub port: String,
    /// The `postgres` superuser's password.
    pub password: String,
}

impl Cluster {
    /// Starts a cluster with the stack's server settings (logical replication, no fsync).
    pub fn start() -> Cluster {
        let dir = tempfile::tempdir().expect("a directory for the cluster");
        let output = Command::new(project_dir().join("scripts/stack"))
            .args(["cluster", "up"])
            .arg(dir.path().join("pg"))
            .output()
            .expect("scripts/stack cluster up runs");
        assert!(
            output.status.success(),
            "scripts/stack cluster up failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("scripts/stack cluster up printed no {name}"))
                .to_string()
        };
        Cluster {
            port: value("PGPORT"),
            password: value("PGPASSWORD"),
            dir,
        }
    }

    /// Restarts the server the way a minor-version upgrade does (`pg_ctl restart -m fast`):
    /// every session is closed.
    pub fn restart(&self) {
        self.control("restart");
    }

    fn control(&self, action: &str) {
        let output = Command::new(project_dir().join("scripts/stack"))
            .args(["cluster", action])
            .arg(self.dir.path().join("pg"))
            .output()
            .expect("scripts/stack cluster runs");
        assert!(
            output.status.success(),
            "scripts/stack cluster {action} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(project_dir().join("scripts/stack"))
            .args(["cluster", "down"])
            .arg(self.dir.path().join("pg"))
            .output();
    }
}

/// A database of one test, with names for its slot, publication and lake namespace, and a
/// warehouse directory of its own. Dropped (slots first) when the test ends.
#[derive(Debug)]
pub struct TestDb {
    /// Database name (also the prefix of the other names).
    pub name: String,
    /// Superuser URL of this database.
    pub url: String,
    /// Replication slot name for this test.
    pub slot: String,
    /// Publication name for this test.
    pub publication: String,
    /// Lake namespace for this test.
    pub namespace: String,
    /// Local warehouse directory.
    pub warehouse: tempfile::TempDir,
    /// The server's port and superuser password.
    port: String,
    password: String,
}

impl TestDb {
    /// Creates a fresh database for the test `label` on the stack's server.
    pub async fn new(label: &str) -> TestDb {
        let stack = stack();
        TestDb::create(label, stack.var("PGPORT"), stack.var("PGPASSWORD")).await
    }

    /// Creates a fresh database for the test `label` on a private `cluster`.
    pub async fn on(cluster: &Cluster, label: &str) -> TestDb {
        TestDb::create(label, &cluster.port, &cluster.password).await
    }

    async fn create(label: &str, port: &str, password: &str) -> TestDb {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let label: String = label
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(30)
            .collect();
        let name = format!(
            "t_{label}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let url = |db: &str| format!("postgres://postgres:{password}@127.0.0.1:{port}/{db}");
        let admin = connect(&url("postgres")).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("create database {name}: {e}"));
        TestDb {
            url: url(&name),
            port: port.to_string(),
            password: password.to_string(),
            slot: format!("{name}_slot"),
            publication: format!("{name}_pub"),
            namespace: name.clone(),
            warehouse: tempfile::tempdir().expect("a temporary warehouse"),
            name,
        }
    }

    /// A superuser client on this database.
    pub async fn client(&self) -> Client {
        connect(&self.url).await
    }

    /// Runs psql on this database from the project directory (so `-f sql/…` works); panics
    /// with psql's message when it fails.
    pub fn psql(&self, args: &[&str]) {
        let output = stack()
            .pg_program("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &self.url])
            .args(args)
            .current_dir(project_dir())
            .output()
            .expect("run psql");
        assert!(
            output.status.success(),
            "psql {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Runs `rounds` rounds of the orders workload (`sql/workload.sql`), `batch` rows each.
    pub fn workload(&self, rounds: u32, batch: u32) {
        self.psql(&[
            "-v",
            &format!("rounds={rounds}"),
            "-v",
            &format!("batch={batch}"),
            "-f",
            "sql/workload.sql",
        ]);
    }

    /// The server's current WAL position.
    pub async fn current_lsn(&self) -> lakewriter::Lsn {
        let text: String = self
            .client()
            .await
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .expect("read the WAL position")
            .get(0);
        text.parse().expect("an LSN")
    }

    /// A position a stream reaches promptly: a transactional logical decoding message, which
    /// the stream receives as a transaction of its own (an idle server otherwise reports its
    /// position only every wal_sender_timeout / 2).
    pub async fn sync_point(&self) -> lakewriter::Lsn {
        let text: String = self
            .client()
            .await
            .query_one(
                "SELECT pg_logical_emit_message(true, 'lakewriter-test', 'sync')::text",
                &[],
            )
            .await
            .expect("emit a logical message")
            .get(0);
        text.parse().expect("an LSN")
    }

    /// The position this test's slot has confirmed.
    pub async fn confirmed_flush(&self) -> lakewriter::Lsn {
        let text: String = self
            .client()
            .await
            .query_one(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.slot],
            )
            .await
            .expect("read the slot")
            .get(0);
        text.parse().expect("an LSN")
    }

    /// A config file body for this database on the local default (SQLite catalog, local
    /// warehouse); `extra` is appended.
    pub fn config_toml(&self, extra: &str) -> String {
        format!(
            "[source]\nhost = \"127.0.0.1\"\nport = {port}\ndatabase = \"{db}\"\nuser = \"postgres\"\n\
             password = \"{password}\"\npublication = \"{publication}\"\nslot = \"{slot}\"\n\
             create_publication = true\n\n[sink]\nwarehouse = \"{warehouse}\"\n\
             namespace = \"{namespace}\"\n{extra}\n[sink.key_index]\ndir = \"{warehouse}/key-index\"\n",
            port = self.port,
            db = self.name,
            password = self.password,
            publication = self.publication,
            slot = self.slot,
            warehouse = self.warehouse.path().display(),
            namespace = self.namespace,
        )
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let url = format!(
            "postgres://postgres:{}@127.0.0.1:{}/postgres",
            self.password, self.port
        );
        // Drop may run inside a runtime: do the async clean-up on a thread of its own.
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let Ok((client, connection)) = tokio_postgres::connect(&url, NoTls).await else {
                    return;
                };
                tokio::spawn(connection);
                let _ = client
                    .execute(
                        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                         WHERE database = $1 AND NOT active",
                        &[&name],
                    )
                    .await;
                let _ = client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await;
            });
        });
        let _ = cleanup.join();
    }
}

/// Creates `bucket` on the S3 endpoint of `s3` (moto), or finds it already there.
pub async fn create_bucket(s3: &aws_sdk_s3::Client, bucket: &str) {
    if let Err(e) = s3.create_bucket().bucket(bucket).send().await {
        let text = format!("{e:?}");
        assert!(
            text.contains("BucketAlreadyOwnedByYou"),
            "create bucket: {text}"
        );
    }
}
