//! Source benchmarks, each measured against a reference in the same run on the same data and
//! reported as a ratio (DESIGN.md, "Performance"): never a timed assertion.
//!
//! 1. Decoder: a real pgoutput stream of the orders workload, recorded into memory with
//!    `pg_logical_slot_peek_binary_changes`, decoded (and decoded into Arrow with
//!    `ChangeBuilder`), against a pass that only sums the bytes (a floor, not a target).
//! 2. Stream: `stream()` delivering every change of the workload to a counting consumer that
//!    acknowledges, against `pg_recvlogical` draining a twin slot to a file.
//! 3. Snapshot: `copy_table` (binary COPY decoded into Arrow batches) against
//!    `COPY … TO STDOUT (FORMAT binary)` drained and counted; with, between them, copy_table's
//!    own query drained undecoded (PostgreSQL's share of the gap: columns without a binary
//!    decoder come as their text output), and first, the recorded data decoded in memory
//!    (ours).
//!
//! Each side of 2 and 3 runs `--runs` times (default 2), alternating, and keeps its best run;
//! the CPU seconds shown are this process's (or pg_recvlogical's) during the run. The decoder
//! passes repeat for at least a second. Ratios are this side's rate over the reference's.
//!
//! ```text
//! cargo bench --bench source -- [--rounds N] [--batch N] [--seed-rows N]
//!                               [--snapshot-rows N] [--runs N] [--passes N] [--only LIST]
//! ```
//!
//! or the same through `LAKEWRITER_BENCH_ROUNDS`, `…_BATCH`, `…_SEED_ROWS`, `…_SNAPSHOT_ROWS`,
//! `…_RUNS`, `…_PASSES`, `…_ONLY` (`--only decoder,stream,snapshot`).

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::collections::HashMap;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Options, Run, copy_drain, cpu_seconds, fastest, load_average, recvlogical_drain};
use futures::StreamExt;
use lakewriter::Lsn;
use lakewriter::config::Config;
use lakewriter::source::RelationId;
use lakewriter::source::changes::{ChangeBuilder, TableSchema};
use lakewriter::source::connection;
use lakewriter::source::copy_binary::{BinaryCopyReader, BinaryRow};
use lakewriter::source::pgoutput::{self, Message};
use lakewriter::source::schema::describe_table;
use lakewriter::source::snapshot::{
    CopySettings, SnapshotRows, SnapshotSession, copy_table, select_list, table_schema,
    wires as snapshot_wires,
};
use lakewriter::source::stream::{SourceEvent, StreamSettings, stream};
use lakewriter::source::types::{ColumnBuilder, PgType, TypeOptions, Wire};
use lakewriter::table::TableId;
use support::TestDb;
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
    /// Runs of each side of the stream and snapshot measurements; the best is kept.
    runs: usize,
    /// Passes over the recording for each decoder measurement; the best is kept.
    passes: u32,
    /// Which measurements run.
    decoder: bool,
    stream: bool,
    snapshot: bool,
}

impl Args {
    fn parse() -> Args {
        let options = Options::read(
            "source.rs",
            &[
                "rounds",
                "batch",
                "seed-rows",
                "snapshot-rows",
                "passes",
                "runs",
                "only",
            ],
        );
        let only = options.parts(&["decoder", "stream", "snapshot"]);
        let part = |name: &str| only.iter().any(|p| p == name);
        Args {
            rounds: u32::try_from(options.number("rounds", 60)).expect("--rounds fits u32"),
            batch: u32::try_from(options.number("batch", 2000)).expect("--batch fits u32"),
            seed_rows: options.number("seed-rows", 10_000),
            snapshot_rows: options.number("snapshot-rows", 1_500_000),
            runs: options.count("runs", 2),
            passes: u32::try_from(options.count("passes", 5)).expect("--passes fits u32"),
            decoder: part("decoder"),
            stream: part("stream"),
            snapshot: part("snapshot"),
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
    /// CPU seconds (user and system) the measured side spent: this process, or the child.
    cpu: Option<f64>,
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
        "  {:<48} {:>10} {:>9} {:>12} {:>9} {:>7} {:>8}",
        "measurement", "rows", "seconds", "rows/s", "MB/s", "CPU s", "ratio"
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
        let cpu = line
            .cpu
            .map_or_else(|| "-".to_string(), |c| format!("{c:.2}"));
        println!(
            "  {:<48} {:>10} {:>9.3} {:>12.0} {:>9} {:>7} {:>8}",
            line.name,
            line.rows,
            line.seconds,
            line.rate(),
            mb,
            cpu,
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
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "an unknown CPU".into());
    println!(
        "lakewriter source benchmarks: {} cores ({cpu}), load average {}\n{args:?}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
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
            stream_bench(&db, workload, &args).await;
        }
        workload.drop_slots(&db).await;
    }
    if args.snapshot {
        snapshot_bench(&db, &args).await;
    }
    println!(
        "\ntotal time {:.1} s; load average {}",
        started.elapsed().as_secs_f64(),
        load_average()
    );
}

/// The orders workload committed after its slots were created (one per run for `stream()`, one
/// per run for pg_recvlogical), and its pgoutput stream recorded in memory.
struct Workload {
    /// Slots for `stream()`, one per run.
    lakewriter_slots: Vec<String>,
    /// Slots for pg_recvlogical, one per run.
    recvlogical_slots: Vec<String>,
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
        let lakewriter_slots: Vec<String> = (1..=args.runs).map(|run| slot("lw", run)).collect();
        let recvlogical_slots: Vec<String> = (1..=args.runs).map(|run| slot("recv", run)).collect();
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

/// Runs `pass` at least `passes` times and for at least a second in all, and keeps the
/// fastest; returns its seconds and its result.
fn best_of<T>(passes: u32, mut pass: impl FnMut() -> T) -> (f64, T) {
    let mut best: Option<(f64, T)> = None;
    let started = Instant::now();
    let mut done = 0;
    while done < passes || started.elapsed() < Duration::from_secs(1) {
        done += 1;
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
        cpu: None,
        note,
    };
    print_table(
        &format!(
            "1. decoder, in memory: {} messages, {} row changes, {:.1} MB \
             (best of at least {} passes and 1 s each)",
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
                // pgoutput repeats a Relation after cache invalidations: only a new shape
                // hands on the rows built so far and starts a new builder
                if schemas
                    .get(&relation.id)
                    .is_some_and(|known| known.same_shape(&schema))
                {
                    continue;
                }
                if let Some(index) = builders.iter().position(|(id, _)| *id == relation.id) {
                    let (_, mut builder) = builders.remove(index);
                    if !builder.is_empty() {
                        rows += black_box(builder.finish(position).expect("finish")).len() as u64;
                    }
                }
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

async fn stream_bench(db: &TestDb, workload: &Workload, args: &Args) {
    let dir = tempfile::tempdir().expect("a directory for pg_recvlogical's output");
    let mut recvlogical = Vec::new();
    let mut lakewriter = Vec::new();
    // Alternated, so that a drift of the machine's load touches both sides alike.
    for run in 0..args.runs {
        let file = dir.path().join(format!("recv{run}.out"));
        let (timed, written) =
            recvlogical_drain(db, &workload.recvlogical_slots[run], workload.end, &file);
        println!(
            "  run {}: pg_recvlogical {:.3} s, {:.2} CPU s ({:.1} MB written)",
            run + 1,
            timed.seconds,
            timed.cpu,
            written as f64 / 1e6
        );
        recvlogical.push(timed);
        let (timed, rows) = stream_drain(db, &workload.lakewriter_slots[run], workload.end).await;
        assert_eq!(
            rows, workload.changes,
            "stream() delivered every recorded change"
        );
        println!(
            "  run {}: stream() {:.3} s, {:.2} CPU s",
            run + 1,
            timed.seconds,
            timed.cpu
        );
        lakewriter.push(timed);
    }
    let reference = fastest(&recvlogical);
    let ours = fastest(&lakewriter);
    print_table(
        &format!(
            "2. stream, PostgreSQL to Arrow: {} row changes in {} transactions \
             (each side run {} times, each run on its own slot; best run kept)",
            workload.changes, workload.transactions, args.runs
        ),
        &[
            Line {
                name: "pg_recvlogical (pgoutput, to a file)".into(),
                rows: workload.changes,
                bytes: None,
                seconds: reference.seconds,
                reference: None,
                cpu: Some(reference.cpu),
                note: "",
            },
            Line {
                name: "stream() to a counting, acknowledging consumer".into(),
                rows: workload.changes,
                bytes: None,
                seconds: ours.seconds,
                reference: Some(("pg_recvlogical".into(), reference.seconds)),
                cpu: Some(ours.cpu),
                note: "from the call to the last commit, connections included on both sides",
            },
        ],
    );
}

/// `stream()` on `slot` until the commit ending at `end` arrives; returns the time from the
/// call to that commit and the rows delivered.
async fn stream_drain(db: &TestDb, slot: &str, end: Lsn) -> (Run, u64) {
    let config = config_for(db, slot);
    let (events_tx, mut events) = mpsc::channel(16);
    let (durable_tx, durable_rx) = watch::channel(Lsn::ZERO);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (cpu_before, _) = cpu_seconds();
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
    let (cpu_after, _) = cpu_seconds();
    let _ = shutdown_tx.send(true);
    let drain = async { while events.recv().await.is_some() {} };
    let (result, ()) = tokio::join!(task, drain);
    result
        .expect("join stream()")
        .expect("stream() stops cleanly");
    let cpu = cpu_after - cpu_before;
    (Run { seconds, cpu }, rows)
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
    // Hint bits and the visibility map set, statistics fresh: both sides read a settled table.
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
    // The query copy_table sends, drained without decoding: splits the gap between the
    // plain binary COPY and ours (PostgreSQL's side) from the decoding into Arrow (ours).
    let wires = snapshot_wires(&schema);
    let text_query = format!(
        "COPY (SELECT {} FROM {}) TO STDOUT (FORMAT binary)",
        select_list(&schema, &wires),
        table.quoted()
    );

    copy_parse_bench(&catalog, &text_query, &schema, &wires, rows, args).await;

    let (mut binary, mut text, mut arrow) = (Vec::new(), Vec::new(), Vec::new());
    let (mut binary_bytes, mut text_bytes) = (0, 0);
    for run in 0..args.runs {
        let (timed, bytes) =
            copy_drain(&catalog, "COPY public.orders TO STDOUT (FORMAT binary)").await;
        println!(
            "  run {}: COPY binary {:.3} s, {:.2} CPU s ({:.1} MB)",
            run + 1,
            timed.seconds,
            timed.cpu,
            bytes as f64 / 1e6
        );
        binary.push(timed);
        binary_bytes = bytes;

        let (timed, bytes) = copy_drain(&catalog, &text_query).await;
        println!(
            "  run {}: copy_table's query {:.3} s, {:.2} CPU s ({:.1} MB)",
            run + 1,
            timed.seconds,
            timed.cpu,
            bytes as f64 / 1e6
        );
        text.push(timed);
        text_bytes = bytes;

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
        let (cpu_before, _) = cpu_seconds();
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
        let timed = Run {
            seconds: started.elapsed().as_secs_f64(),
            cpu: cpu_seconds().0 - cpu_before,
        };
        assert_eq!(copied, rows, "copy_table copied every row");
        assert_eq!(counted, rows, "every row reached the consumer");
        println!(
            "  run {}: copy_table {:.3} s, {:.2} CPU s ({:.1} MB of Arrow arrays)",
            run + 1,
            timed.seconds,
            timed.cpu,
            arrow_bytes as f64 / 1e6
        );
        arrow.push(timed);
    }
    session.close();
    let reference = fastest(&binary);
    let text = fastest(&text);
    let ours = fastest(&arrow);
    print_table(
        &format!(
            "3. snapshot, one COPY stream each: {rows} rows (each side run {} times; best run \
             kept)",
            args.runs
        ),
        &[
            Line {
                name: "COPY binary, drained and counted".into(),
                rows,
                bytes: Some(binary_bytes),
                seconds: reference.seconds,
                reference: None,
                cpu: Some(reference.cpu),
                note: "",
            },
            Line {
                name: "copy_table's query, drained and counted".into(),
                rows,
                bytes: Some(text_bytes),
                seconds: text.seconds,
                reference: Some(("COPY binary".into(), reference.seconds)),
                cpu: Some(text.cpu),
                note: "without the decoding: PostgreSQL's cost of the text-form columns",
            },
            Line {
                name: "copy_table: binary COPY into Arrow batches".into(),
                rows,
                bytes: Some(text_bytes),
                seconds: ours.seconds,
                reference: Some(("COPY binary".into(), reference.seconds)),
                cpu: Some(ours.cpu),
                note: "connections and snapshot import included; the slot's creation is not",
            },
        ],
    );
}

/// copy_table's binary COPY recorded into memory (the chunks as tokio-postgres hands them over,
/// one row each), then decoded into Arrow with `BinaryCopyReader` and `ColumnBuilder` as
/// `copy_table` does, against
/// a pass that sums the bytes: our side of the snapshot without the server or the network.
async fn copy_parse_bench(
    client: &tokio_postgres::Client,
    query: &str,
    schema: &TableSchema,
    wires: &[Wire],
    rows: u64,
    args: &Args,
) {
    let stream = client.copy_out(query).await.expect("binary COPY");
    futures::pin_mut!(stream);
    let mut chunks: Vec<bytes::Bytes> = Vec::new();
    while let Some(chunk) = stream.next().await {
        chunks.push(chunk.expect("a COPY chunk"));
    }
    let bytes: u64 = chunks.iter().map(|c| c.len() as u64).sum();
    let (floor, sum) = best_of(args.passes, || {
        chunks
            .iter()
            .map(|c| black_box(&c[..]).iter().map(|&b| u64::from(b)).sum::<u64>())
            .fold(0u64, u64::wrapping_add)
    });
    black_box(sum);
    let batch_rows = CopySettings::default().batch_rows;
    let (parse, parsed) = best_of(args.passes, || {
        let mut builders: Vec<ColumnBuilder> = schema
            .arrow
            .fields()
            .iter()
            .map(|f| ColumnBuilder::with_capacity(f, batch_rows).expect("a builder"))
            .collect();
        let mut reader = BinaryCopyReader::new(wires.len());
        let mut parsed = 0u64;
        for chunk in &chunks {
            reader
                .push(chunk, |row: BinaryRow<'_>| -> lakewriter::Result<()> {
                    for (i, (builder, wire)) in builders.iter_mut().zip(wires).enumerate() {
                        builder.append_binary(row.get(i), *wire).map_err(|e| {
                            lakewriter::Error::Source {
                                message: e.to_string(),
                            }
                        })?;
                    }
                    parsed += 1;
                    if parsed.is_multiple_of(batch_rows as u64) {
                        for builder in &mut builders {
                            black_box(builder.finish().expect("an array"));
                        }
                    }
                    Ok(())
                })
                .expect("the binary COPY decodes");
        }
        reader.finish().expect("whole rows");
        for builder in &mut builders {
            black_box(builder.finish().expect("an array"));
        }
        parsed
    });
    assert_eq!(parsed, rows, "every row parsed");
    let line = |name: &str, seconds: f64, reference: bool, note: &'static str| Line {
        name: name.to_string(),
        rows,
        bytes: Some(bytes),
        seconds,
        reference: reference.then(|| ("sum of bytes".to_string(), floor)),
        cpu: None,
        note,
    };
    print_table(
        &format!(
            "3a. binary COPY decoding, in memory: {rows} rows in {} chunks, {:.1} MB \
             (best of at least {} passes and 1 s each)",
            chunks.len(),
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
            line("BinaryCopyReader + ColumnBuilder (Arrow)", parse, true, ""),
        ],
    );
}
