//! Source benchmarks, each measured against a reference in the same run on the same data and
//! reported as a ratio (DESIGN.md, "Performance"): never a timed assertion.
//!
//! 1. Decoder: a real pgoutput stream of the orders workload, recorded into memory with
//!    `pg_logical_slot_peek_binary_changes`, decoded (and decoded into Arrow with
//!    `ChangeBuilder`), against a pass that only sums the bytes (a floor, not a target).
//! 2. Stream: `stream()` delivering every change of the workload to a counting consumer that
//!    acknowledges, against `pg_recvlogical` draining a twin slot to a file.
//! 3. Snapshot: `copy_table` (COPY text parsed into Arrow batches) against
//!    `COPY … TO STDOUT (FORMAT binary)` drained and counted.
//!
//! ```text
//! cargo bench --bench source -- [--rounds N] [--batch N] [--seed-rows N]
//!                               [--snapshot-rows N] [--passes N] [--only LIST]
//! ```
//!
//! or the same through `LAKEWRITER_BENCH_ROUNDS`, `…_BATCH`, `…_SEED_ROWS`, `…_SNAPSHOT_ROWS`,
//! `…_PASSES`, `…_ONLY` (`--only decoder,stream,snapshot`).

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::hint::black_box;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lakewriter::Lsn;
use lakewriter::config::Config;
use lakewriter::source::RelationId;
use lakewriter::source::changes::{ChangeBuilder, TableSchema};
use lakewriter::source::connection;
use lakewriter::source::pgoutput::{self, Message};
use lakewriter::source::schema::describe_table;
use lakewriter::source::snapshot::{
    CopySettings, SnapshotRows, SnapshotSession, copy_table, table_schema,
};
use lakewriter::source::stream::{SourceEvent, StreamSettings, stream};
use lakewriter::source::types::{PgType, TypeOptions};
use lakewriter::table::TableId;
use support::{TestDb, stack};
use tokio::sync::{mpsc, watch};

/// Sizes and choices, from arguments or the environment.
#[derive(Debug, Clone)]
struct Args {
    /// Rounds of sql/workload.sql.
    rounds: u32,
    /// Inserts per round (one transaction); the other statements scale with it and the table.
    batch: u32,
    /// Rows in `orders` before the slots exist (not streamed; the updates touch them).
    seed_rows: u64,
    /// Rows in `orders` for the snapshot measurement.
    snapshot_rows: u64,
    /// Passes over the recording for each decoder measurement; the best is kept.
    passes: u32,
    /// Which measurements run.
    decoder: bool,
    stream: bool,
    snapshot: bool,
}

impl Args {
    fn parse() -> Args {
        let env = |name: &str| std::env::var(format!("LAKEWRITER_BENCH_{name}")).ok();
        let mut values: HashMap<String, String> = HashMap::new();
        for name in [
            "ROUNDS",
            "BATCH",
            "SEED_ROWS",
            "SNAPSHOT_ROWS",
            "PASSES",
            "ONLY",
        ] {
            if let Some(value) = env(name) {
                values.insert(name.to_lowercase().replace('_', "-"), value);
            }
        }
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            // cargo bench passes --bench to harness-less benches
            if arg == "--bench" {
                continue;
            }
            let Some(name) = arg.strip_prefix("--") else {
                panic!("unexpected argument {arg:?}; see the header of benches/source.rs");
            };
            let (name, value) = match name.split_once('=') {
                Some((n, v)) => (n.to_string(), v.to_string()),
                None => (
                    name.to_string(),
                    args.next()
                        .unwrap_or_else(|| panic!("--{name} needs a value")),
                ),
            };
            values.insert(name, value);
        }
        let number = |name: &str, default: u64| -> u64 {
            values.get(name).map_or(default, |v| {
                v.replace('_', "")
                    .parse()
                    .unwrap_or_else(|_| panic!("--{name}: {v:?} is not a number"))
            })
        };
        let only = values
            .get("only")
            .cloned()
            .unwrap_or_else(|| "decoder,stream,snapshot".into());
        let known = [
            "rounds",
            "batch",
            "seed-rows",
            "snapshot-rows",
            "passes",
            "only",
        ];
        for name in values.keys() {
            assert!(known.contains(&name.as_str()), "unknown option --{name}");
        }
        Args {
            rounds: u32::try_from(number("rounds", 60)).expect("--rounds fits u32"),
            batch: u32::try_from(number("batch", 2000)).expect("--batch fits u32"),
            seed_rows: number("seed-rows", 10_000),
            snapshot_rows: number("snapshot-rows", 1_500_000),
            passes: u32::try_from(number("passes", 5))
                .expect("--passes fits u32")
                .max(1),
            decoder: only.contains("decoder"),
            stream: only.contains("stream"),
            snapshot: only.contains("snapshot"),
        }
    }
}

/// One line of the results table.
struct Line {
    name: String,
    rows: u64,
    bytes: Option<u64>,
    seconds: f64,
    /// `(reference name, reference seconds for the same work)`.
    reference: Option<(String, f64)>,
    note: &'static str,
}

impl Line {
    fn rate(&self) -> f64 {
        self.rows as f64 / self.seconds
    }
}

fn print_table(title: &str, lines: &[Line]) {
    println!("\n{title}");
    println!(
        "  {:<44} {:>10} {:>9} {:>12} {:>9} {:>8}",
        "measurement", "rows", "seconds", "rows/s", "MB/s", "ratio"
    );
    for line in lines {
        let mb = line.bytes.map_or_else(
            || "-".to_string(),
            |b| format!("{:.1}", b as f64 / 1e6 / line.seconds),
        );
        let ratio = line.reference.as_ref().map_or_else(
            || "ref".to_string(),
            |(_, seconds)| format!("{:.3}", seconds / line.seconds),
        );
        println!(
            "  {:<44} {:>10} {:>9.3} {:>12.0} {:>9} {:>8}",
            line.name,
            line.rows,
            line.seconds,
            line.rate(),
            mb,
            ratio
        );
    }
    for line in lines {
        if let Some((reference, _)) = &line.reference {
            println!(
                "  ratio of {:?} = its rate / rate of {reference:?}",
                line.name
            );
        }
        if !line.note.is_empty() {
            println!("  {}: {}", line.name, line.note);
        }
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    println!(
        "lakewriter source benchmarks: {} cores; {args:?}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let db = TestDb::new("bench_source").await;
    let started = Instant::now();
    let workload = if args.decoder || args.stream {
        Some(Workload::run(&db, &args).await)
    } else {
        None
    };
    if let Some(workload) = &workload {
        if args.decoder {
            decoder_bench(workload, &args);
        }
        if args.stream {
            stream_bench(&db, workload).await;
        }
        workload.drop_slots(&db).await;
    }
    if args.snapshot {
        snapshot_bench(&db, &args).await;
    }
    println!("\ntotal time {:.1} s", started.elapsed().as_secs_f64());
}

/// The orders workload committed after four slots were created (two for `stream()`, two for
/// pg_recvlogical: each side runs twice), and its pgoutput stream recorded in memory.
struct Workload {
    /// Slots for `stream()`, one per run.
    lakewriter_slots: [String; 2],
    /// Slots for pg_recvlogical, one per run.
    recvlogical_slots: [String; 2],
    /// The recorded messages, in stream order.
    messages: Vec<Vec<u8>>,
    /// The end LSN of the last commit: where both streams stop.
    end: Lsn,
    /// Inserts, updates and deletes in the recording.
    changes: u64,
    /// Transactions in the recording.
    transactions: u64,
}

impl Workload {
    async fn run(db: &TestDb, args: &Args) -> Workload {
        let seeded = Instant::now();
        db.psql(&[
            "-v",
            &format!("rows={}", args.seed_rows),
            "-f",
            "sql/orders.sql",
        ]);
        let client = db.client().await;
        client
            .batch_execute(&format!(
                "CREATE PUBLICATION {} FOR TABLE orders",
                db.publication
            ))
            .await
            .expect("create the publication");
        let slot = |what: &str, run: usize| format!("{}_{what}{run}", db.slot);
        let lakewriter_slots = [slot("lw", 1), slot("lw", 2)];
        let recvlogical_slots = [slot("recv", 1), slot("recv", 2)];
        for name in lakewriter_slots.iter().chain(&recvlogical_slots) {
            client
                .execute(
                    "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                    &[name],
                )
                .await
                .expect("create a slot");
        }
        let committed = Instant::now();
        db.psql(&[
            "-v",
            &format!("rounds={}", args.rounds),
            "-v",
            &format!("batch={}", args.batch),
            "-f",
            "sql/workload.sql",
        ]);
        let workload_seconds = committed.elapsed().as_secs_f64();

        // Recorded through a lakewriter session, so values are rendered with the same settings
        // (TimeZone=UTC, DateStyle=ISO) as on the replication connection.
        let config = config_for(db, &lakewriter_slots[0]);
        let session = connection::connect(&config.source)
            .await
            .expect("connect for the recording");
        let recorded = Instant::now();
        let messages: Vec<Vec<u8>> = session
            .query(
                "SELECT data FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL, \
                 'proto_version', '1', 'publication_names', $2)",
                &[&lakewriter_slots[0], &db.publication],
            )
            .await
            .expect("peek the slot")
            .iter()
            .map(|row| row.get::<_, Vec<u8>>(0))
            .collect();
        let record_seconds = recorded.elapsed().as_secs_f64();
        let mut end = Lsn::ZERO;
        let (mut changes, mut transactions) = (0u64, 0u64);
        for bytes in &messages {
            match pgoutput::decode(bytes).expect("a recorded message decodes") {
                Message::Insert(_) | Message::Update(_) | Message::Delete(_) => changes += 1,
                Message::Commit(commit) => {
                    transactions += 1;
                    end = end.max(commit.end_lsn);
                }
                _ => {}
            }
        }
        let bytes: usize = messages.iter().map(Vec::len).sum();
        println!(
            "workload: {} seed rows, {} rounds of {} (committed in {workload_seconds:.1} s, \
             setup {:.1} s); recorded {} messages, {changes} row changes in {transactions} \
             transactions, {:.1} MB, ending at {end} (peek took {record_seconds:.2} s)",
            args.seed_rows,
            args.rounds,
            args.batch,
            committed.duration_since(seeded).as_secs_f64(),
            messages.len(),
            bytes as f64 / 1e6,
        );
        Workload {
            lakewriter_slots,
            recvlogical_slots,
            messages,
            end,
            changes,
            transactions,
        }
    }

    fn bytes(&self) -> u64 {
        self.messages.iter().map(|m| m.len() as u64).sum()
    }

    async fn drop_slots(&self, db: &TestDb) {
        let client = db.client().await;
        for name in self.lakewriter_slots.iter().chain(&self.recvlogical_slots) {
            client
                .execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                     WHERE slot_name = $1 AND NOT active",
                    &[name],
                )
                .await
                .expect("drop a slot");
        }
    }
}

/// The config of the bench database, streaming `slot`.
fn config_for(db: &TestDb, slot: &str) -> Config {
    let mut config = Config::parse(&db.config_toml(""), Path::new("bench.toml"), Vec::new())
        .expect("the bench config");
    config.source.slot = slot.to_string();
    config
}

/// Runs `pass` `passes` times and keeps the fastest; returns its seconds and its result.
fn best_of<T>(passes: u32, mut pass: impl FnMut() -> T) -> (f64, T) {
    let mut best: Option<(f64, T)> = None;
    for _ in 0..passes {
        let started = Instant::now();
        let out = black_box(pass());
        let seconds = started.elapsed().as_secs_f64();
        if best.as_ref().is_none_or(|(b, _)| seconds < *b) {
            best = Some((seconds, out));
        }
    }
    best.expect("at least one pass")
}

fn decoder_bench(workload: &Workload, args: &Args) {
    let messages = &workload.messages;
    let bytes = workload.bytes();

    // The floor: every byte read once, nothing decided.
    let (floor, sum) = best_of(args.passes, || {
        let mut sum = 0u64;
        for message in messages {
            sum = sum.wrapping_add(
                black_box(message.as_slice())
                    .iter()
                    .map(|&b| u64::from(b))
                    .sum::<u64>(),
            );
        }
        sum
    });
    black_box(sum);

    let (decode_only, decoded) = best_of(args.passes, || {
        let mut changes = 0u64;
        for message in messages {
            let message = pgoutput::decode(black_box(message)).expect("decodes");
            if let Message::Insert(_) | Message::Update(_) | Message::Delete(_) = message {
                changes += 1;
            }
            black_box(&message);
        }
        changes
    });
    assert_eq!(decoded, workload.changes);

    let (to_arrow, built) = best_of(args.passes, || decode_into_arrow(messages));
    assert_eq!(built, workload.changes);

    let line = |name: &str, seconds: f64, reference: bool, note: &'static str| Line {
        name: name.to_string(),
        rows: workload.changes,
        bytes: Some(bytes),
        seconds,
        reference: reference.then(|| ("sum of bytes".to_string(), floor)),
        note,
    };
    print_table(
        &format!(
            "1. decoder, in memory: {} messages, {} row changes, {:.1} MB \
             (best of {} passes each)",
            messages.len(),
            workload.changes,
            bytes as f64 / 1e6,
            args.passes
        ),
        &[
            line(
                "sum of bytes (floor)",
                floor,
                false,
                "a floor, not a target: reads every byte once and decides nothing",
            ),
            line("pgoutput::decode", decode_only, true, ""),
            line("decode + ChangeBuilder (Arrow)", to_arrow, true, ""),
        ],
    );
    println!(
        "  messages/s: sum {:.0}, decode {:.0}, decode + Arrow {:.0}",
        messages.len() as f64 / floor,
        messages.len() as f64 / decode_only,
        messages.len() as f64 / to_arrow,
    );
}

/// What `stream()` does with each message, without the network: relation cache, builders per
/// table in the transaction, batches of at most 65 536 rows, finished at commit.
fn decode_into_arrow(messages: &[Vec<u8>]) -> u64 {
    let options = TypeOptions::default();
    let batch_rows = StreamSettings::default().batch_rows;
    let mut schemas: HashMap<RelationId, Arc<TableSchema>> = HashMap::new();
    let mut builders: Vec<(RelationId, ChangeBuilder)> = Vec::new();
    let mut commit_lsn = Lsn::ZERO;
    let (mut position, mut rows) = (0u64, 0u64);
    for bytes in messages {
        let message = pgoutput::decode(bytes).expect("decodes");
        let (relation, change) = match message {
            Message::Begin(begin) => {
                commit_lsn = begin.final_lsn;
                position = 0;
                builders.clear();
                continue;
            }
            Message::Commit(_) => {
                for (_, builder) in &mut builders {
                    if !builder.is_empty() {
                        rows += black_box(builder.finish(position).expect("finish")).len() as u64;
                    }
                }
                continue;
            }
            Message::Relation(relation) => {
                let types: Vec<PgType> = relation
                    .columns
                    .iter()
                    .map(|c| PgType::builtin(c.type_oid).expect("a built-in type"))
                    .collect();
                let schema = TableSchema::from_relation(&relation, &types, &options)
                    .expect("the relation's schema");
                builders.retain(|(id, _)| *id != relation.id);
                schemas.insert(relation.id, Arc::new(schema));
                continue;
            }
            Message::Insert(insert) => (insert.relation, Message::Insert(insert)),
            Message::Update(update) => (update.relation, Message::Update(update)),
            Message::Delete(delete) => (delete.relation, Message::Delete(delete)),
            _ => continue,
        };
        let index = match builders.iter().position(|(id, _)| *id == relation) {
            Some(index) => index,
            None => {
                let schema = schemas.get(&relation).expect("a Relation first").clone();
                builders.push((
                    relation,
                    ChangeBuilder::new(schema, commit_lsn, position).expect("a builder"),
                ));
                builders.len() - 1
            }
        };
        let builder = &mut builders[index].1;
        let at = Lsn(position);
        match change {
            Message::Insert(insert) => builder.insert(insert.new, at),
            Message::Update(update) => builder.update(update.old, update.new, at),
            Message::Delete(delete) => builder.delete(delete.old, at),
            _ => Ok(()),
        }
        .expect("the change appends");
        position += 1;
        if builder.len() >= batch_rows {
            rows += black_box(builder.finish(position).expect("finish")).len() as u64;
        }
    }
    rows
}

async fn stream_bench(db: &TestDb, workload: &Workload) {
    let dir = tempfile::tempdir().expect("a directory for pg_recvlogical's output");
    let mut recvlogical = Vec::new();
    let mut lakewriter = Vec::new();
    for run in 0..2 {
        let file = dir.path().join(format!("recv{run}.out"));
        let (seconds, written) =
            recvlogical_drain(db, &workload.recvlogical_slots[run], workload.end, &file);
        println!(
            "  run {}: pg_recvlogical {seconds:.3} s ({:.1} MB written)",
            run + 1,
            written as f64 / 1e6
        );
        recvlogical.push(seconds);
        let (seconds, rows) = stream_drain(db, &workload.lakewriter_slots[run], workload.end).await;
        assert_eq!(
            rows, workload.changes,
            "stream() delivered every recorded change"
        );
        println!("  run {}: stream() {seconds:.3} s", run + 1);
        lakewriter.push(seconds);
    }
    let best = |times: &[f64]| times.iter().copied().fold(f64::INFINITY, f64::min);
    let reference = best(&recvlogical);
    print_table(
        &format!(
            "2. stream, PostgreSQL to Arrow: {} row changes in {} transactions \
             (each side run twice on its own slot; best run kept)",
            workload.changes, workload.transactions
        ),
        &[
            Line {
                name: "pg_recvlogical (pgoutput, to a file)".into(),
                rows: workload.changes,
                bytes: None,
                seconds: reference,
                reference: None,
                note: "",
            },
            Line {
                name: "stream() to a counting, acknowledging consumer".into(),
                rows: workload.changes,
                bytes: None,
                seconds: best(&lakewriter),
                reference: Some(("pg_recvlogical".into(), reference)),
                note: "",
            },
        ],
    );
}

/// pg_recvlogical drains `slot` up to `end` into `file`; returns its seconds and bytes written.
fn recvlogical_drain(db: &TestDb, slot: &str, end: Lsn, file: &Path) -> (f64, u64) {
    let mut command: Command = stack().pg_program("pg_recvlogical");
    command.args([
        "-d",
        &db.name,
        "--slot",
        slot,
        "--start",
        "-o",
        "proto_version=1",
        "-o",
        &format!("publication_names={}", db.publication),
        "--endpos",
        &end.to_string(),
        "--no-loop",
        "-f",
    ]);
    command.arg(file);
    let started = Instant::now();
    let output = command.output().expect("run pg_recvlogical");
    let seconds = started.elapsed().as_secs_f64();
    assert!(
        output.status.success(),
        "pg_recvlogical failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let written = std::fs::metadata(file).map_or(0, |m| m.len());
    assert!(written > 0, "pg_recvlogical wrote nothing");
    (seconds, written)
}

/// `stream()` on `slot` until the commit ending at `end` arrives; returns the seconds from the
/// call to that commit and the rows delivered.
async fn stream_drain(db: &TestDb, slot: &str, end: Lsn) -> (f64, u64) {
    let config = config_for(db, slot);
    let (events_tx, mut events) = mpsc::channel(16);
    let (durable_tx, durable_rx) = watch::channel(Lsn::ZERO);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let started = Instant::now();
    let task = tokio::spawn(async move {
        stream(
            &config,
            StreamSettings::default(),
            events_tx,
            durable_rx,
            shutdown_rx,
        )
        .await
    });
    let mut rows = 0u64;
    let deadline = Duration::from_secs(600);
    loop {
        let event = tokio::time::timeout(deadline, events.recv())
            .await
            .expect("stream() stalled")
            .unwrap_or_else(|| panic!("stream() ended early after {rows} rows"));
        match event {
            SourceEvent::Changes(batch) => rows += batch.len() as u64,
            SourceEvent::Commit { end_lsn, .. } => {
                let _ = durable_tx.send(end_lsn);
                if end_lsn >= end {
                    break;
                }
            }
            SourceEvent::Idle { server_lsn } => {
                let _ = durable_tx.send(server_lsn);
            }
            _ => {}
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let _ = shutdown_tx.send(true);
    let drain = async { while events.recv().await.is_some() {} };
    let (result, ()) = tokio::join!(task, drain);
    result
        .expect("join stream()")
        .expect("stream() stops cleanly");
    (seconds, rows)
}

async fn snapshot_bench(db: &TestDb, args: &Args) {
    let client = db.client().await;
    let table = TableId::new("public", "orders");
    let has_orders: bool = client
        .query_one("SELECT to_regclass('public.orders') IS NOT NULL", &[])
        .await
        .expect("look for orders")
        .get(0);
    let current = if has_orders {
        client
            .query_one("SELECT count(*) FROM public.orders", &[])
            .await
            .expect("count orders")
            .get::<_, i64>(0)
    } else {
        0
    };
    let missing = args.snapshot_rows.saturating_sub(current.unsigned_abs());
    let grown = Instant::now();
    if missing > 0 || !has_orders {
        db.psql(&["-v", &format!("rows={missing}"), "-f", "sql/orders.sql"]);
    }
    // Hint bits and the visibility map set, statistics fresh, pages cached: both sides read a
    // settled table.
    client
        .batch_execute("VACUUM (ANALYZE) public.orders")
        .await
        .expect("vacuum orders");
    let rows: i64 = client
        .query_one("SELECT count(*) FROM public.orders", &[])
        .await
        .expect("count orders")
        .get(0);
    let rows = rows.unsigned_abs();
    let pages: i64 = client
        .query_one(
            "SELECT relpages::bigint FROM pg_class WHERE oid = 'public.orders'::regclass",
            &[],
        )
        .await
        .expect("orders' size")
        .get(0);
    println!(
        "\nsnapshot table: {rows} rows, {pages} pages of 8 KiB (grown and vacuumed in {:.1} s)",
        grown.elapsed().as_secs_f64()
    );

    let config = config_for(db, &db.slot);
    let session = SnapshotSession::create_slot(&config, &format!("{}_snap", db.slot), true)
        .await
        .expect("a slot with an exported snapshot");
    let catalog = connection::connect(&config.source)
        .await
        .expect("a catalog session");
    let source_table = describe_table(&catalog, &table)
        .await
        .expect("describe orders")
        .expect("orders exists");
    let schema = table_schema(&catalog, &source_table, &TypeOptions::default())
        .await
        .expect("orders' schema");
    // One COPY stream on each side: the comparison is of one stream with another.
    let settings = CopySettings {
        parallelism: 1,
        ..CopySettings::default()
    };

    let mut binary = Vec::new();
    let mut arrow = Vec::new();
    for run in 0..2 {
        let started = Instant::now();
        let stream = catalog
            .copy_out("COPY public.orders TO STDOUT (FORMAT binary)")
            .await
            .expect("COPY binary");
        futures::pin_mut!(stream);
        let mut bytes = 0u64;
        while let Some(chunk) = stream.next().await {
            bytes += chunk.expect("a COPY chunk").len() as u64;
        }
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "  run {}: COPY binary {seconds:.3} s ({:.1} MB)",
            run + 1,
            bytes as f64 / 1e6
        );
        binary.push((seconds, bytes));

        let (tx, mut rx) = mpsc::channel(4);
        let counter = tokio::spawn(async move {
            let (mut rows, mut bytes) = (0u64, 0u64);
            while let Some(batch) = rx.recv().await {
                let batch: SnapshotRows = batch;
                rows += batch.rows.num_rows() as u64;
                bytes += batch.rows.get_array_memory_size() as u64;
            }
            (rows, bytes)
        });
        let started = Instant::now();
        let copied = copy_table(
            &config,
            &session.snapshot,
            schema.clone(),
            &settings,
            tx,
            |_| {},
        )
        .await
        .expect("copy_table");
        let (counted, arrow_bytes) = counter.await.expect("the counting consumer");
        let seconds = started.elapsed().as_secs_f64();
        assert_eq!(copied, rows, "copy_table copied every row");
        assert_eq!(counted, rows, "every row reached the consumer");
        println!(
            "  run {}: copy_table {seconds:.3} s ({:.1} MB of Arrow arrays)",
            run + 1,
            arrow_bytes as f64 / 1e6
        );
        arrow.push(seconds);
    }
    session.close();
    let (reference, bytes) = binary
        .iter()
        .copied()
        .fold((f64::INFINITY, 0), |a, b| if b.0 < a.0 { b } else { a });
    let best = arrow.iter().copied().fold(f64::INFINITY, f64::min);
    print_table(
        &format!(
            "3. snapshot, one COPY stream each: {rows} rows (each side run twice; best run kept)"
        ),
        &[
            Line {
                name: "COPY binary, drained and counted".into(),
                rows,
                bytes: Some(bytes),
                seconds: reference,
                reference: None,
                note: "",
            },
            Line {
                name: "copy_table: COPY text into Arrow batches".into(),
                rows,
                bytes: None,
                seconds: best,
                reference: Some(("COPY binary".into(), reference)),
                note: "",
            },
        ],
    );
}
