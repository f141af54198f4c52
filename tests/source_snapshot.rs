//! The initial snapshot against a real PostgreSQL: COPY inside the slot's exported snapshot
//! reads the table exactly as of the slot's consistent point (changes made after it are not
//! seen, even while the copy runs in parallel page ranges), and the changes streamed from the
//! slot then bring it to PostgreSQL's current state: no gap, no overlap. Values that COPY must
//! escape come through intact.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, BinaryArray, Int32Array, ListArray, StringArray};
use lakewriter::config::Config;
use lakewriter::masking::Masking;
use lakewriter::source::chunk;
use lakewriter::source::schema::describe_table;
use lakewriter::source::snapshot::{
    CopySettings, SnapshotRows, SnapshotSession, copy_table, masked_table_schema, table_schema,
};
use lakewriter::source::stream::{SourceEvent, StreamSettings, stream};
use lakewriter::table::TableId;
use lakewriter::{Lsn, source::types::TypeOptions};
use support::TestDb;
use support::orders::{Table, apply, order_at, postgres_orders};
use tokio::sync::{mpsc, watch};

fn config(db: &TestDb) -> Config {
    Config::parse(&db.config_toml(""), Path::new("test.toml"), Vec::new()).expect("config")
}

async fn snapshot_rows(
    config: &Config,
    session: &SnapshotSession,
    table: &str,
    settings: CopySettings,
) -> (Vec<SnapshotRows>, u64) {
    let client = lakewriter::source::connection::connect(&config.source)
        .await
        .expect("connect");
    let described = describe_table(&client, &TableId::new("public", table))
        .await
        .expect("describe")
        .expect("the table exists");
    let schema = table_schema(&client, &described, &TypeOptions::default())
        .await
        .expect("schema");
    let (tx, mut rx) = mpsc::channel(4);
    let collect = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Some(rows) = rx.recv().await {
            all.push(rows);
        }
        all
    });
    let counted = Arc::new(AtomicU64::new(0));
    let progress = counted.clone();
    let copied = copy_table(config, &session.snapshot, schema, &settings, tx, move |n| {
        progress.fetch_add(n, Ordering::Relaxed);
    })
    .await
    .expect("copy");
    let batches = collect.await.expect("collector");
    assert_eq!(
        counted.load(Ordering::Relaxed),
        copied,
        "progress saw every row"
    );
    (batches, copied)
}

#[tokio::test]
async fn the_snapshot_and_the_stream_fit_together_exactly() {
    let db = TestDb::new("snapshot_fit").await;
    db.psql(&["-v", "rows=20000", "-f", "sql/orders.sql"]);
    db.client()
        .await
        .batch_execute(&format!(
            "CREATE PUBLICATION {} FOR TABLE orders",
            db.publication
        ))
        .await
        .expect("publication");
    let config = config(&db);
    let session = SnapshotSession::create_slot(&config, &db.slot, false)
        .await
        .expect("create the slot with a snapshot");
    let at_snapshot = postgres_orders(&db).await;

    // Changes after the consistent point: the copy must not see them, the stream must.
    db.workload(3, 500);

    let settings = CopySettings {
        batch_rows: 1000,
        parallelism: 2,
        pages_per_range: 16,
        ..CopySettings::default()
    };
    let (batches, copied) = snapshot_rows(&config, &session, "orders", settings).await;
    assert_eq!(copied as usize, at_snapshot.len());
    let mut lake = Table::new();
    for batch in &batches {
        assert_eq!(
            batch.lsn, session.snapshot.lsn,
            "rows carry the consistent point"
        );
        for row in 0..batch.rows.num_rows() {
            let (key, order) = order_at(&batch.rows, row);
            let previous = lake.insert(key.expect("key"), order.expect("row"));
            assert!(
                previous.is_none(),
                "a row copied twice (overlapping page ranges)"
            );
        }
    }
    assert!(
        lake == at_snapshot,
        "the copy differs from the table at the snapshot"
    );
    assert!(batches.len() > 2, "the copy came in several batches");
    session.close();

    // Streaming from the slot brings the snapshot to the current state.
    let (tx, mut events) = mpsc::channel(16);
    let (durable_tx, durable) = watch::channel(Lsn::ZERO);
    let (shutdown_tx, shutdown) = watch::channel(false);
    let stream_config = config.clone();
    let task = tokio::spawn(async move {
        stream(
            &stream_config,
            StreamSettings::default(),
            tx,
            durable,
            shutdown,
        )
        .await
    });
    let end = db.current_lsn().await;
    let mut seen = Lsn::ZERO;
    let mut pending = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen < end {
        assert!(Instant::now() < deadline, "stream stalled at {seen}");
        let Ok(Some(event)) = tokio::time::timeout(Duration::from_secs(5), events.recv()).await
        else {
            continue;
        };
        match event {
            SourceEvent::Changes(batch) => pending.push(batch),
            SourceEvent::Begin { commit_lsn, .. } => {
                assert!(
                    commit_lsn > session_lsn(&batches),
                    "a change from before the snapshot"
                );
                pending.clear();
            }
            SourceEvent::Commit { end_lsn, .. } => {
                for batch in pending.drain(..) {
                    apply(&mut lake, &batch);
                }
                seen = seen.max(end_lsn);
                let _ = durable_tx.send(end_lsn);
            }
            SourceEvent::Idle { server_lsn } => seen = seen.max(server_lsn),
            _ => {}
        }
    }
    let _ = shutdown_tx.send(true);
    drop(events);
    task.await.expect("join").expect("stream");
    assert!(
        lake == postgres_orders(&db).await,
        "snapshot + stream differs from PostgreSQL"
    );
}

fn session_lsn(batches: &[SnapshotRows]) -> Lsn {
    batches.first().map(|b| b.lsn).unwrap_or(Lsn::ZERO)
}

#[tokio::test]
async fn values_copy_must_escape_come_through_intact() {
    let db = TestDb::new("snapshot_escapes").await;
    db.client()
        .await
        .batch_execute(
            "CREATE TABLE tricky (id int PRIMARY KEY, t text, a text[], b bytea);
             INSERT INTO tricky VALUES
               (1, E'tab\\there\\nnew line\\\\ back\\rslash', ARRAY['x,y', 'q\"uote', NULL, 'NULL', E'b\\\\s'], E'\\\\x00ff5c0a09'),
               (2, NULL, '{}', NULL),
               (3, '', ARRAY[E'\\t'], ''::bytea),
               (4, '\\N', NULL, E'\\\\x5c4e');",
        )
        .await
        .expect("schema");
    let config = config(&db);
    let session = SnapshotSession::create_slot(&config, &db.slot, true)
        .await
        .expect("temporary slot");
    let (batches, copied) =
        snapshot_rows(&config, &session, "tricky", CopySettings::default()).await;
    assert_eq!(copied, 4);
    let rows = &batches[0].rows;
    // what PostgreSQL holds, read over the binary protocol: independent of COPY's text form
    let expected = db
        .client()
        .await
        .query("SELECT id, t, a, b FROM tricky ORDER BY id", &[])
        .await
        .expect("read");
    let ids = rows
        .column(0)
        .as_any()
        .downcast_ref::<Int32Array>()
        .expect("int");
    let texts = rows
        .column(1)
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("text");
    let arrays = rows
        .column(2)
        .as_any()
        .downcast_ref::<ListArray>()
        .expect("list");
    let bytes = rows
        .column(3)
        .as_any()
        .downcast_ref::<BinaryArray>()
        .expect("bytea");
    for (i, row) in expected.iter().enumerate() {
        let at = (0..rows.num_rows())
            .find(|&r| ids.value(r) == row.get::<_, i32>(0))
            .expect("the row was copied");
        let t: Option<String> = row.get(1);
        assert_eq!(
            texts.is_valid(at).then(|| texts.value(at).to_string()),
            t,
            "row {i}"
        );
        let a: Option<Vec<Option<String>>> = row.get(2);
        let got = arrays.is_valid(at).then(|| {
            let list = arrays.value(at);
            let list = list.as_string::<i32>();
            (0..list.len())
                .map(|j| list.is_valid(j).then(|| list.value(j).to_string()))
                .collect::<Vec<_>>()
        });
        assert_eq!(got, a, "row {i}");
        let b: Option<Vec<u8>> = row.get(3);
        assert_eq!(
            bytes.is_valid(at).then(|| bytes.value(at).to_vec()),
            b,
            "row {i}"
        );
    }
    session.close();
}

/// A chunked copy's chunks of a table whose key has columns of many types (text with a
/// quote and non-ASCII letters, numeric, timestamptz to the microsecond, padded char, uuid)
/// read every row exactly once, in the key's order: each chunk's last key, printed by
/// PostgreSQL from the binary value the COPY brought, bounds the next chunk exactly. The same
/// with two of the key's columns hashed (their COPY brings their text output).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_over_a_key_of_many_types_read_every_row_once_in_key_order() {
    let db = TestDb::new("chunk_keys").await;
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE TABLE odd_keys (name text NOT NULL, amount numeric(10,2) NOT NULL, \
               at timestamptz NOT NULL, code char(4) NOT NULL, uid uuid NOT NULL, v int, \
               PRIMARY KEY (name, amount, at, code, uid));
             INSERT INTO odd_keys SELECT (ARRAY['it''s', 'a b', 'ünï', 'Z'])[g % 4 + 1], \
               (g % 7) / 3.0, \
               timestamptz '2026-01-01 00:00:00.123456+00' + (g % 5) * interval '1 microsecond', \
               lpad((g % 3)::text, 2), md5(g::text)::uuid, g \
               FROM generate_series(1, 200) g;",
        )
        .await
        .expect("the table");
    let expected: Vec<i32> = client
        .query(
            "SELECT v FROM odd_keys ORDER BY name, amount, at, code, uid",
            &[],
        )
        .await
        .expect("the rows in key order")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let described = describe_table(&client, &TableId::new("public", "odd_keys"))
        .await
        .expect("describe")
        .expect("the table exists");
    let key = chunk::key_columns(&described, &described.primary_key).expect("a NOT NULL key");

    let dir = tempfile::tempdir().expect("a directory");
    let key_file = dir.path().join("masking.key");
    std::fs::write(&key_file, "chunk-test-masking-key-0123456789abcdef").expect("the key");
    let hashed = Config::parse(
        &db.config_toml(&format!(
            "[sink.tables.\"public.odd_keys\"]\ncolumns = {{ code = \"hash\", at = \"hash\" }}\n\
             [sink.masking]\nkey_file = \"{}\"\n",
            key_file.display()
        )),
        Path::new("test.toml"),
        Vec::new(),
    )
    .expect("config");
    for masking in [
        Masking::none(),
        Masking::from_config(&hashed).expect("masking"),
    ] {
        let schema = masked_table_schema(&client, &described, &TypeOptions::default(), &masking)
            .await
            .expect("schema");
        let v = schema
            .columns
            .iter()
            .position(|c| c.name == "v")
            .expect("column v");
        let mut read = Vec::new();
        let mut after: Option<Vec<String>> = None;
        let mut chunks = 0;
        loop {
            let data =
                chunk::read_chunk(&client, &schema, &key, after.as_deref(), None, 7, &masking)
                    .await
                    .expect("a chunk");
            assert!(data.count <= 7, "a chunk holds at most its limit");
            let Some(last) = data.last_key else {
                assert_eq!(data.count, 0, "only an empty chunk has no last key");
                break;
            };
            // a hashed column's value is sealed (it is committed with the copy's progress);
            // the others are PostgreSQL's text
            let hashing = masking.hasher().is_some();
            for (i, value) in last.iter().enumerate() {
                let hashed = hashing && (i == 2 || i == 3);
                assert_eq!(value.starts_with("sealed:"), hashed, "{last:?}");
                if let Some(sealed) = value.strip_prefix("sealed:") {
                    // hex only: nothing of the timestamp's punctuation or the code's spaces
                    assert!(sealed.bytes().all(|b| b.is_ascii_hexdigit()), "{last:?}");
                }
            }
            for batch in &data.rows {
                let values = batch
                    .column(v)
                    .as_primitive::<arrow::datatypes::Int32Type>();
                read.extend(values.iter().flatten());
            }
            after = Some(last);
            chunks += 1;
            assert!(chunks <= 200, "the chunks do not end");
        }
        assert_eq!(chunks, 200_usize.div_ceil(7));
        assert_eq!(read, expected, "every row once, in the key's order");

        // split in three key ranges at sampled keys (a hashed column's sealed), each read
        // in chunks up to its last key: the ranges together hold every row once, in order
        let points = chunk::split_points(&client, &schema, &key, 200, 3, &masking)
            .await
            .expect("split points");
        assert_eq!(points.len(), 2, "{points:?}");
        let mut bounds: Vec<Option<Vec<String>>> = vec![None];
        bounds.extend(points.into_iter().map(Some));
        bounds.push(None);
        let mut ranged = Vec::new();
        let mut sizes = Vec::new();
        for pair in bounds.windows(2) {
            let (mut after, upto) = (pair[0].clone(), pair[1].clone());
            let before = ranged.len();
            loop {
                let data = chunk::read_chunk(
                    &client,
                    &schema,
                    &key,
                    after.as_deref(),
                    upto.as_deref(),
                    7,
                    &masking,
                )
                .await
                .expect("a chunk of a range");
                for batch in &data.rows {
                    let values = batch
                        .column(v)
                        .as_primitive::<arrow::datatypes::Int32Type>();
                    ranged.extend(values.iter().flatten());
                }
                match data.last_key {
                    Some(last) if data.count >= 7 => after = Some(last),
                    _ => break,
                }
            }
            sizes.push(ranged.len() - before);
        }
        assert_eq!(
            ranged, expected,
            "every row once across the ranges: {sizes:?}"
        );
        assert!(
            sizes.iter().all(|&n| n >= 40),
            "the sampled keys split the rows about evenly: {sizes:?}"
        );
    }
}
