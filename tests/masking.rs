//! Column masking end to end: `lakewriter run` (the binary) against the real PostgreSQL, the
//! lake read back by DuckDB and pyarrow. A masked value must never leave masked form: not in
//! the lake's files, not in a spill file while a large transaction waits for its commit, not in
//! a log line; hashed keys keep upserts and deletes exact; `verify` compares masked with masked;
//! the hashes are what an independent HMAC-SHA-256 (Python's) computes with the key.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use support::writer::{caught_up, command, command_ok, duck_query, start_with, stop, write_config};
use support::{TestDb, project_dir, stack};

/// The masking key of these tests (40 bytes).
const KEY: &str = "masking-test-key-4b1d9f0c2e7a8d3b6c5e1f0a";

/// What every plaintext value of a masked column contains, and nothing else does.
const MARKERS: [&str; 3] = ["@plain.example", "SSN-PLAIN", "NOTE-PLAIN"];

/// A value of an unmasked column: spill files are sealed, so not even it shows there.
const CLEAR: &str = "city3";

/// A directory beside the warehouse with the key file and the spill directory.
fn secrets() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().expect("a directory for the key");
    let key = dir.path().join("masking.key");
    std::fs::write(&key, format!("{KEY}\n")).expect("write the key");
    let spill = dir.path().join("spill");
    std::fs::create_dir_all(&spill).expect("the spill directory");
    (dir, key, spill)
}

/// HMAC-SHA-256 of each value with the test key, in hex, by Python's `hmac` (not ours).
fn python_hmac(values: &[String]) -> Vec<String> {
    let output = stack()
        .python()
        .arg("-c")
        .arg(
            "import hmac, hashlib, sys\n\
             key = sys.argv[1].encode()\n\
             for line in sys.stdin.read().splitlines():\n\
             \x20   print(hmac.new(key, line.encode(), hashlib.sha256).hexdigest())\n",
        )
        .arg(KEY)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(values.join("\n").as_bytes())?;
            }
            child.wait_with_output()
        })
        .expect("run python hmac");
    assert!(output.status.success());
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Every file under `dir` whose bytes contain one of the markers, with the marker.
fn files_with_markers(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                for marker in MARKERS {
                    if bytes.windows(marker.len()).any(|w| w == marker.as_bytes()) {
                        found.push(format!("{}: {marker}", path.display()));
                    }
                }
            }
        }
    }
    found
}

/// Every column of every Parquet file under the warehouse, value by value (pyarrow): the
/// files' column names, and the values that hold a marker.
fn parquet_columns_and_leaks(db: &TestDb) -> (Vec<String>, Vec<String>) {
    let output = stack()
        .python()
        .arg("-c")
        .arg(
            "import glob, sys\n\
             import pyarrow.parquet as pq\n\
             names, leaks = set(), []\n\
             for path in glob.glob(sys.argv[1] + '/**/*.parquet', recursive=True):\n\
             \x20   table = pq.read_table(path)\n\
             \x20   names.update(table.column_names)\n\
             \x20   for name in table.column_names:\n\
             \x20       for value in table.column(name).to_pylist():\n\
             \x20           if any(m in str(value) for m in sys.argv[2:]):\n\
             \x20               leaks.append(f'{path}:{name}')\n\
             print(','.join(sorted(names)))\n\
             for leak in leaks[:10]:\n\
             \x20   print(leak)\n",
        )
        .arg(db.warehouse.path())
        .args(MARKERS)
        .output()
        .expect("run pyarrow");
    assert!(
        output.status.success(),
        "pyarrow: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut lines = text.lines();
    let names = lines
        .next()
        .unwrap_or_default()
        .split(',')
        .map(str::to_string)
        .collect();
    (names, lines.map(str::to_string).collect())
}

/// Watches the spill directory while the writer runs: the bytes of spill files seen, and
/// every file in which a marker was found.
struct SpillWatch {
    stop: Arc<AtomicBool>,
    seen: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<Vec<String>>,
}

impl SpillWatch {
    fn start(dir: PathBuf) -> SpillWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(AtomicU64::new(0));
        let (stop_flag, seen_bytes) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            let mut leaks = Vec::new();
            while !stop_flag.load(Ordering::Relaxed) {
                let mut pending = vec![dir.clone()];
                while let Some(dir) = pending.pop() {
                    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                        let path = entry.path();
                        if path.is_dir() {
                            pending.push(path);
                        } else if let Ok(bytes) = std::fs::read(&path) {
                            seen_bytes.fetch_max(bytes.len() as u64, Ordering::Relaxed);
                            for marker in MARKERS.iter().chain([&CLEAR]) {
                                let leak = format!("{}: {marker}", path.display());
                                if leaks.len() < 10
                                    && !leaks.contains(&leak)
                                    && bytes.windows(marker.len()).any(|w| w == marker.as_bytes())
                                {
                                    leaks.push(leak);
                                }
                            }
                        }
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            leaks
        });
        SpillWatch { stop, seen, thread }
    }

    /// The largest spill file seen, and the leaks.
    fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let leaks = self.thread.join().expect("the spill watcher");
        (self.seen.load(Ordering::Relaxed), leaks)
    }
}

/// PostgreSQL's `accounts` as the lake must hold them, `hmac(email)|balance` sorted; the HMAC
/// by Python.
async fn masked_accounts(db: &TestDb) -> Vec<String> {
    let client = db.client().await;
    let rows = client
        .query("SELECT email, balance FROM accounts", &[])
        .await
        .expect("read accounts");
    let emails: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let hashes = python_hmac(&emails);
    let mut expected: Vec<String> = hashes
        .iter()
        .zip(&rows)
        .map(|(h, r)| format!("{h}|{}", r.get::<_, i32>(1)))
        .collect();
    expected.sort();
    expected
}

/// The lake's `accounts`, `email|balance` sorted (DuckDB).
fn lake_accounts(db: &TestDb) -> Vec<String> {
    duck_query(
        db,
        "accounts",
        "SELECT email || '|' || balance FROM {scan} ORDER BY 1",
    )
}

/// A table keyed on a hashed column, copied in chunks beside the stream: every commit of the
/// copy carries its last key so a restart resumes after it, and the plaintext of the hashed
/// key column is sealed there, so no file of the lake (metadata included) holds an email;
/// the lake ends equal to PostgreSQL's table, masked.
#[tokio::test]
async fn a_chunked_copy_keyed_on_a_hashed_column_commits_its_last_keys_sealed() {
    let db = TestDb::new("masking_chunked").await;
    let (_secrets, key, spill) = secrets();
    db.psql(&[
        "-c",
        "CREATE TABLE customers (id int PRIMARY KEY, email text, ssn text, notes text, city text);\
         CREATE TABLE accounts (email text PRIMARY KEY, balance int);\
         INSERT INTO accounts SELECT 'acct-' || i || '@plain.example', i \
           FROM generate_series(1, 50) i;",
    ]);
    masked_config(&db, &key, &spill);
    let settings = [
        ("SOURCE__INITIAL_COPY", "chunked"),
        ("SOURCE__SNAPSHOT_CHUNK_ROWS", "7"),
        // each chunk committed as it joins (the stream is idle): commits mid-copy
        ("FLUSH__IDLE_ROWS", "1"),
    ];
    let mut child = start_with(&db, &settings);
    caught_up(&db, &mut child).await;
    db.psql(&[
        "-c",
        "UPDATE accounts SET balance = -1 WHERE email = 'acct-9@plain.example';",
    ]);
    let expected = masked_accounts(&db).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while lake_accounts(&db) != expected {
        assert!(
            std::time::Instant::now() < deadline,
            "the chunked copy did not complete: {:?}",
            lake_accounts(&db)
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    let log = stop(child);
    assert!(
        log.lines()
            .any(|l| l.contains("copied the table in chunks") && l.contains("public.accounts")),
        "accounts was not copied in chunks: {log}"
    );
    let leaks = files_with_markers(db.warehouse.path());
    assert!(leaks.is_empty(), "unmasked values in lake files: {leaks:?}");
    for marker in MARKERS {
        assert!(!log.contains(marker), "the log holds {marker}: {log}");
    }
    // the commits mid-copy carried its last key, sealed (else the check above proves nothing)
    let sealed = duck_query(
        &db,
        "accounts",
        "SELECT count(*) FROM (SELECT unnest(snapshots) AS s FROM read_json_auto('{metadata}')) \
         WHERE s.summary['lakewriter.copy'] LIKE '%\"sealed:%'",
    );
    assert_ne!(
        sealed,
        vec!["0".to_string()],
        "no commit carried a sealed last key"
    );
}

fn masked_config(db: &TestDb, key: &Path, spill: &Path) {
    write_config(
        db,
        &format!(
            "[sink.tables.\"public.customers\"]\n\
             columns = {{ email = \"hash\", ssn = \"redact\", notes = \"drop\" }}\n\
             [sink.tables.\"public.accounts\"]\n\
             columns = {{ email = \"hash\" }}\n\
             [sink.masking]\nkey_file = \"{}\"\n\
             [compaction]\ninterval = \"0\"\n",
            key.display()
        ),
    );
    // the spill directory is given to `run` by the environment (see `start_with`)
    let _ = spill;
}

#[tokio::test]
async fn masked_columns_never_leave_masked_form_and_hashed_keys_stay_exact() {
    let db = TestDb::new("masking_e2e").await;
    let (_secrets, key, spill) = secrets();
    db.psql(&[
        "-c",
        "CREATE TABLE customers (id int PRIMARY KEY, email text, ssn text, notes text, city text);\
         INSERT INTO customers SELECT i, 'mail-' || i || '@plain.example', 'SSN-PLAIN-' || i, \
           'NOTE-PLAIN-' || i, 'city' || (i % 5) FROM generate_series(1, 200) i;\
         CREATE TABLE accounts (email text PRIMARY KEY, balance int);\
         INSERT INTO accounts SELECT 'acct-' || i || '@plain.example', i \
           FROM generate_series(1, 50) i;",
    ]);
    masked_config(&db, &key, &spill);
    let spill_dir = spill.display().to_string();
    let settings = [
        ("FLUSH__MEMORY_BUDGET", "4MiB"),
        ("FLUSH__MAX_BYTES", "1MiB"),
        ("FLUSH__SPILL_DIR", spill_dir.as_str()),
    ];
    let watch = SpillWatch::start(spill.clone());
    let mut child = start_with(&db, &settings);
    caught_up(&db, &mut child).await;

    // a transaction far over half the budget: it spills while it streams
    db.psql(&[
        "-c",
        "INSERT INTO customers SELECT i, 'mail-' || i || '@plain.example', 'SSN-PLAIN-' || i, \
           'NOTE-PLAIN-' || i || repeat('x', 200), 'city' || (i % 5) \
         FROM generate_series(1000, 40000) i;",
    ]);
    // streamed changes of a table keyed on a hashed column: an update, a key change, a
    // delete, an insert; and of the masked columns of the other
    db.psql(&[
        "-c",
        "UPDATE accounts SET balance = balance + 1000 WHERE email = 'acct-1@plain.example';\
         UPDATE accounts SET email = 'acct-moved@plain.example' WHERE email = 'acct-2@plain.example';\
         DELETE FROM accounts WHERE email = 'acct-3@plain.example';\
         INSERT INTO accounts VALUES ('acct-new@plain.example', 7);\
         BEGIN;\
         UPDATE accounts SET balance = -1 WHERE email = 'acct-4@plain.example';\
         UPDATE accounts SET email = 'acct-4b@plain.example' WHERE email = 'acct-4@plain.example';\
         COMMIT;\
         UPDATE customers SET email = 'changed-5@plain.example', ssn = 'SSN-PLAIN-new', \
           notes = 'NOTE-PLAIN-new' WHERE id = 5;\
         DELETE FROM customers WHERE id = 6;",
    ]);
    caught_up(&db, &mut child).await;
    let log = stop(child);
    let (spilled, spill_leaks) = watch.finish();

    // nothing unmasked was spilled, logged or written
    assert!(
        spilled > 0,
        "the large transaction never spilled, so the spill check proves nothing"
    );
    assert!(
        spill_leaks.is_empty(),
        "unmasked values spilled: {spill_leaks:?}"
    );
    for marker in MARKERS {
        assert!(!log.contains(marker), "the log holds {marker}: {log}");
    }
    assert!(!log.contains(KEY), "the log holds the key");
    let leaks = files_with_markers(db.warehouse.path());
    assert!(leaks.is_empty(), "unmasked values in lake files: {leaks:?}");
    let (columns, parquet_leaks) = parquet_columns_and_leaks(&db);
    assert!(
        parquet_leaks.is_empty(),
        "unmasked values in Parquet: {parquet_leaks:?}"
    );
    assert!(columns.contains(&"email".to_string()), "{columns:?}");
    assert!(
        !columns.contains(&"notes".to_string()),
        "a dropped column reached the lake: {columns:?}"
    );

    // the table keyed on a hashed column equals PostgreSQL's, masked by an independent HMAC
    let expected = masked_accounts(&db).await;
    assert_eq!(expected.len(), 50);
    assert_eq!(lake_accounts(&db), expected, "the lake's accounts, masked");

    // customers: the hash of the new email, a redacted ssn, no notes; every row there
    let expected_5 = python_hmac(&["changed-5@plain.example".to_string()]);
    assert_eq!(
        duck_query(
            &db,
            "customers",
            "SELECT email FROM {scan} WHERE id = 5 UNION ALL \
             SELECT count(*)::VARCHAR || '|' || count(ssn) || '|' || min(length(email)) || '|' \
               || max(length(email)) || '|' || count(*) FILTER (WHERE id = 6) FROM {scan}",
        ),
        vec![expected_5[0].clone(), "39200|0|64|64|0".to_string()]
    );

    // verify masks the source side the same way and finds the lake equal
    let verified = command(&db, &["verify"], &[]);
    let report = String::from_utf8_lossy(&verified.stdout);
    assert!(
        verified.status.success(),
        "verify: {report}{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    // query shows the masked values
    let shown = command_ok(
        &db,
        &[
            "query",
            "--format",
            "csv",
            &format!("SELECT email FROM {}.customers WHERE id = 5", db.namespace),
        ],
        &[],
    );
    assert!(shown.contains(&expected_5[0]), "{shown}");
    // neither status nor doctor prints the key
    for args in [&["status"][..], &["doctor"][..]] {
        let output = command(&db, args, &[]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!text.contains(KEY), "{args:?} printed the key");
        for marker in MARKERS {
            assert!(!text.contains(marker), "{args:?} printed {marker}");
        }
    }
}

#[tokio::test]
async fn a_renamed_masked_column_keeps_its_policy_and_a_stale_policy_stops_the_start() {
    let db = TestDb::new("masking_rename").await;
    let (_secrets, key, spill) = secrets();
    db.psql(&[
        "-c",
        "CREATE TABLE customers (id int PRIMARY KEY, email text, ssn text, notes text);\
         INSERT INTO customers VALUES (1, 'first@plain.example', 'SSN-PLAIN-1', 'NOTE-PLAIN-1');\
         CREATE TABLE accounts (email text PRIMARY KEY, balance int);",
    ]);
    masked_config(&db, &key, &spill);
    let mut child = start_with(&db, &[]);
    caught_up(&db, &mut child).await;
    db.psql(&[
        "-c",
        "ALTER TABLE customers RENAME COLUMN email TO mail;\
         ALTER TABLE customers ADD COLUMN city text;\
         INSERT INTO customers VALUES (2, 'renamed@plain.example', 'SSN-PLAIN-2', \
           'NOTE-PLAIN-2', 'lyon');",
    ]);
    caught_up(&db, &mut child).await;
    let log = stop(child);
    assert!(log.contains("its policy follows it"), "{log}");
    let expected = python_hmac(&["renamed@plain.example".to_string()]);
    assert_eq!(
        duck_query(
            &db,
            "customers",
            "SELECT mail || '|' || city || '|' || (ssn IS NULL) FROM {scan} WHERE id = 2",
        ),
        vec![format!("{}|lyon|true", expected[0])]
    );
    let leaks = files_with_markers(db.warehouse.path());
    assert!(leaks.is_empty(), "unmasked values in lake files: {leaks:?}");

    // the config still names `email`, which no longer exists: the start is refused, by name
    let output = Command::new(env!("CARGO_BIN_EXE_lakewriter"))
        .args(["run", "--config"])
        .arg(db.warehouse.path().join("lakewriter.toml"))
        .current_dir(project_dir())
        .output()
        .expect("run lakewriter");
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{text}");
    assert!(
        text.contains("names column email, which table public.customers does not have"),
        "{text}"
    );
}

#[tokio::test]
async fn a_missing_key_and_a_masked_key_column_stop_the_start_with_named_errors() {
    let db = TestDb::new("masking_refusals").await;
    db.psql(&[
        "-c",
        "CREATE TABLE accounts (email text PRIMARY KEY, balance int);\
         INSERT INTO accounts VALUES ('acct@plain.example', 1);",
    ]);
    let run = |extra: &str| {
        let config = write_config(&db, extra);
        let output = Command::new(env!("CARGO_BIN_EXE_lakewriter"))
            .args(["run", "--config"])
            .arg(config)
            .env_remove("LAKEWRITER_MASKING_KEY")
            .output()
            .expect("run lakewriter");
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let missing = run(
        "[sink.tables.\"public.accounts\"]\ncolumns = { email = \"hash\" }\n\
         [sink.masking]\nkey_env = \"LAKEWRITER_TEST_MASKING_KEY_UNSET\"\n",
    );
    assert!(
        missing.contains("table public.accounts hashes column email")
            && missing.contains("LAKEWRITER_TEST_MASKING_KEY_UNSET is not set"),
        "{missing}"
    );
    let dropped_key = run("[sink.tables.\"public.accounts\"]\ncolumns = { email = \"drop\" }\n");
    assert!(
        dropped_key.contains("email is a key column of public.accounts"),
        "{dropped_key}"
    );
    let unknown = run("[sink.tables.\"public.accounts\"]\ncolumns = { emial = \"redact\" }\n");
    assert!(unknown.contains("names column emial"), "{unknown}");
    // nothing was written before the refusals
    assert!(
        !db.warehouse.path().join("catalog.db").exists()
            || duck_lake_is_empty(&db.warehouse.path().join("catalog.db"))
    );
}

/// Whether the SQLite catalog at `path` lists no table.
fn duck_lake_is_empty(path: &Path) -> bool {
    let output = stack()
        .python()
        .arg("-c")
        .arg(
            "import sqlite3, sys\n\
             con = sqlite3.connect(sys.argv[1])\n\
             try:\n\
             \x20   print(con.execute('SELECT count(*) FROM iceberg_tables').fetchone()[0])\n\
             except sqlite3.OperationalError:\n\
             \x20   print(0)\n",
        )
        .arg(path)
        .output()
        .expect("run python");
    String::from_utf8_lossy(&output.stdout).trim() == "0"
}

#[tokio::test]
async fn doctor_checks_the_key_and_suggests_a_column_list_that_keeps_dropped_columns_home() {
    let db = TestDb::new("masking_doctor").await;
    db.psql(&[
        "-c",
        &format!(
            "CREATE TABLE customers (id int PRIMARY KEY, email text, notes text);\
             INSERT INTO customers VALUES (1, 'one@plain.example', 'NOTE-PLAIN-1');\
             CREATE PUBLICATION {} FOR TABLE customers;",
            db.publication
        ),
    ]);
    let doctor = |env: &[(&str, &str)]| {
        let output = Command::new(env!("CARGO_BIN_EXE_lakewriter"))
            .args(["doctor", "--config"])
            .arg(db.warehouse.path().join("lakewriter.toml"))
            .env_remove("LAKEWRITER_TEST_DOCTOR_KEY")
            .envs(env.iter().copied())
            .output()
            .expect("run lakewriter doctor");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(!text.contains(KEY), "doctor printed the key:\n{text}");
        (output.status.code(), text)
    };
    write_config(
        &db,
        "[sink.tables.\"public.customers\"]\n\
         columns = { email = \"hash\", notes = \"drop\" }\n\
         [sink.masking]\nkey_env = \"LAKEWRITER_TEST_DOCTOR_KEY\"\n",
    );

    // without the key: an error naming where it was looked for
    let (code, text) = doctor(&[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("LAKEWRITER_TEST_DOCTOR_KEY is not set"),
        "{text}"
    );

    // with it: found (not shown), and the dropped column still published, with the fix
    let (code, text) = doctor(&[("LAKEWRITER_TEST_DOCTOR_KEY", KEY)]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(
            "masking key found in the environment variable LAKEWRITER_TEST_DOCTOR_KEY (not shown)"
        ),
        "{text}"
    );
    assert!(
        text.contains("dropped column(s) notes leave PostgreSQL"),
        "{text}"
    );
    let fix: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("ALTER PUBLICATION"))
        .collect();
    assert_eq!(fix.len(), 2, "{text}");
    assert!(fix[1].ends_with("(\"id\", \"email\");"), "{text}");

    // the fix as printed: the column stays home, and a run masks the rest
    for statement in &fix {
        db.psql(&["-c", &format!("ALTER PUBLICATION{statement}")]);
    }
    let (code, text) = doctor(&[("LAKEWRITER_TEST_DOCTOR_KEY", KEY)]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("dropped column(s) notes are not published"),
        "{text}"
    );

    let mut child = Command::new(env!("CARGO_BIN_EXE_lakewriter"))
        .args(["run", "--config"])
        .arg(db.warehouse.path().join("lakewriter.toml"))
        .env("LAKEWRITER_TEST_DOCTOR_KEY", KEY)
        .env_remove("LAKEWRITER_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map(support::writer::Writer::from_child)
        .expect("start lakewriter run");
    caught_up(&db, &mut child).await;
    db.psql(&[
        "-c",
        "INSERT INTO customers VALUES (2, 'two@plain.example', 'NOTE-PLAIN-2');\
         UPDATE customers SET notes = 'NOTE-PLAIN-1b', email = 'one-b@plain.example' WHERE id = 1;",
    ]);
    caught_up(&db, &mut child).await;
    let log = stop(child);
    assert!(!log.contains("PLAIN"), "{log}");
    let hashes = python_hmac(&[
        "one-b@plain.example".to_string(),
        "two@plain.example".to_string(),
    ]);
    assert_eq!(
        duck_query(
            &db,
            "customers",
            "SELECT id || '|' || email FROM {scan} ORDER BY id"
        ),
        vec![format!("1|{}", hashes[0]), format!("2|{}", hashes[1])]
    );
    let (mut columns, leaks) = parquet_columns_and_leaks(&db);
    // the update's position-delete file names rows by data file path and position
    columns.retain(|c| c != "file_path" && c != "pos");
    assert_eq!(columns, vec!["email".to_string(), "id".to_string()]);
    assert!(leaks.is_empty(), "{leaks:?}");
}

#[tokio::test]
async fn a_policy_added_to_a_table_in_the_lake_copies_it_again_masked() {
    let db = TestDb::new("masking_added").await;
    let (_secrets, key, _spill) = secrets();
    db.psql(&[
        "-c",
        "CREATE TABLE customers (id int PRIMARY KEY, email text, ssn text, notes text);\
         INSERT INTO customers VALUES (1, 'first@plain.example', 'SSN-PLAIN-1', 'n');\
         CREATE TABLE accounts (email text PRIMARY KEY, balance int);\
         INSERT INTO accounts VALUES ('acct@plain.example', 1);",
    ]);
    // a first run without any policy: the lake holds the plain values
    write_config(&db, "");
    let mut child = start_with(&db, &[]);
    caught_up(&db, &mut child).await;
    stop(child);
    assert_eq!(
        duck_query(&db, "customers", "SELECT email FROM {scan}"),
        vec!["first@plain.example".to_string()]
    );

    // the policies arrive: each table is copied again, masked, and streams on masked
    masked_config(&db, &key, &PathBuf::new());
    let mut child = start_with(&db, &[]);
    caught_up(&db, &mut child).await;
    db.psql(&[
        "-c",
        "INSERT INTO customers VALUES (2, 'second@plain.example', 'SSN-PLAIN-2', 'm');",
    ]);
    caught_up(&db, &mut child).await;
    let log = stop(child);
    assert!(
        log.contains("its masking policy changed since the last run (from none to email=hash"),
        "{log}"
    );
    let hashes = python_hmac(&[
        "first@plain.example".to_string(),
        "second@plain.example".to_string(),
    ]);
    assert_eq!(
        duck_query(
            &db,
            "customers",
            "SELECT id || '|' || email || '|' || (ssn IS NULL) FROM {scan} ORDER BY id"
        ),
        vec![
            format!("1|{}|true", hashes[0]),
            format!("2|{}|true", hashes[1])
        ]
    );
    let accounts = python_hmac(&["acct@plain.example".to_string()]);
    assert_eq!(
        duck_query(&db, "accounts", "SELECT email FROM {scan}"),
        vec![accounts[0].clone()]
    );

    // a restart with the same policies copies nothing again
    let mut child = start_with(&db, &[]);
    caught_up(&db, &mut child).await;
    let log = stop(child);
    assert!(!log.contains("masking policy changed"), "{log}");
}

#[tokio::test]
async fn delta_tables_are_masked_alike_and_upsert_on_the_hashed_key() {
    let db = TestDb::new("masking_delta").await;
    let (_secrets, key, _spill) = secrets();
    db.psql(&[
        "-c",
        "CREATE TABLE accounts (email text PRIMARY KEY, balance int);\
         INSERT INTO accounts SELECT 'acct-' || i || '@plain.example', i \
           FROM generate_series(1, 20) i;\
         CREATE TABLE customers (id int PRIMARY KEY, email text, ssn text, notes text);",
    ]);
    write_config(
        &db,
        &format!(
            "format = \"delta\"\n\
             [sink.tables.\"public.accounts\"]\ncolumns = {{ email = \"hash\" }}\n\
             [sink.masking]\nkey_file = \"{}\"\n",
            key.display()
        ),
    );
    let mut child = start_with(&db, &[]);
    caught_up(&db, &mut child).await;
    db.psql(&[
        "-c",
        "UPDATE accounts SET balance = 1000 WHERE email = 'acct-1@plain.example';\
         UPDATE accounts SET email = 'acct-moved@plain.example' WHERE email = 'acct-2@plain.example';\
         DELETE FROM accounts WHERE email = 'acct-3@plain.example';",
    ]);
    caught_up(&db, &mut child).await;
    let log = stop(child);
    assert!(!log.contains("@plain.example"), "{log}");

    let rows = db
        .client()
        .await
        .query("SELECT email, balance FROM accounts", &[])
        .await
        .expect("read accounts");
    let emails: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let mut expected: Vec<String> = python_hmac(&emails)
        .iter()
        .zip(&rows)
        .map(|(h, r)| format!("{h}|{}", r.get::<_, i32>(1)))
        .collect();
    expected.sort();
    let lake = support::delta::python_delta_rows(
        &db.warehouse
            .path()
            .join(&db.namespace)
            .join("accounts")
            .display()
            .to_string(),
        &[],
        &["email", "balance"],
    );
    assert_eq!(lake, expected);
    let leaks = files_with_markers(db.warehouse.path());
    assert!(leaks.is_empty(), "unmasked values in lake files: {leaks:?}");
    let verified = command(&db, &["verify"], &[]);
    assert!(
        verified.status.success(),
        "verify: {}",
        String::from_utf8_lossy(&verified.stdout)
    );
}
