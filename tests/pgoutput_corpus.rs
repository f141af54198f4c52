//! The pgoutput decoder against messages a real PostgreSQL wrote: `tests/corpus/pgoutput/` holds
//! one file per scenario (inserts of every type, updates and deletes under each replica
//! identity, truncate, logical messages, an origin, binary values, a streamed transaction),
//! recorded from a slot by the ignored `record_pgoutput_corpus` test. The other tests need no
//! database: they decode every recorded message and check what a user would check.
//!
//! Corpus file format: for each message, its length as a big-endian u32, then its bytes.
//! Re-record with `cargo test --test pgoutput_corpus -- --ignored record_pgoutput_corpus`.

mod support;

use std::path::PathBuf;

use lakewriter::source::pgoutput::{
    Message, OldTuple, ReplicaIdentity, TupleData, Value, Xid, decode, decode_streamed,
};
use lakewriter::source::{Oid, RelationId};

/// A column of the `everything` table: its SQL type, the type oid and modifier PostgreSQL
/// reports, a literal for the first row and the text PostgreSQL writes for it.
struct TypedColumn {
    name: &'static str,
    sql_type: &'static str,
    /// `None` for the enum type, whose oid is chosen at creation (a Type message names it).
    oid: Option<u32>,
    modifier: i32,
    literal: &'static str,
    text: &'static str,
}

const fn col(
    name: &'static str,
    sql_type: &'static str,
    oid: Option<u32>,
    modifier: i32,
    literal: &'static str,
    text: &'static str,
) -> TypedColumn {
    TypedColumn {
        name,
        sql_type,
        oid,
        modifier,
        literal,
        text,
    }
}

/// The columns of `everything`, in order; the last one, `big_text`, holds [`big_text`].
const COLUMNS: &[TypedColumn] = &[
    col("id", "bigint PRIMARY KEY", Some(20), -1, "1", "1"),
    col("small", "smallint", Some(21), -1, "-32768", "-32768"),
    col("int", "integer", Some(23), -1, "2147483647", "2147483647"),
    col(
        "big",
        "bigint",
        Some(20),
        -1,
        "-9223372036854775808",
        "-9223372036854775808",
    ),
    // numeric(12,2): atttypmod is ((precision << 16) | scale) + 4; the server rounds.
    col(
        "num",
        "numeric(12,2)",
        Some(1700),
        (12 << 16 | 2) + 4,
        "1234567890.125",
        "1234567890.13",
    ),
    col("num_free", "numeric", Some(1700), -1, "'NaN'", "NaN"),
    col("real_v", "real", Some(700), -1, "'-Infinity'", "-Infinity"),
    col(
        "double_v",
        "double precision",
        Some(701),
        -1,
        "1.5e300",
        "1.5e+300",
    ),
    col("flag", "boolean", Some(16), -1, "true", "t"),
    col(
        "txt",
        "text",
        Some(25),
        -1,
        "'héllo wörld ✓ 🐘'",
        "héllo wörld ✓ 🐘",
    ),
    col(
        "label",
        "varchar(20)",
        Some(1043),
        24,
        "'varchar'",
        "varchar",
    ),
    col("code", "char(3)", Some(1042), 7, "'ab'", "ab "),
    col("bin", "bytea", Some(17), -1, "'\\x00ff10'", "\\x00ff10"),
    col("day", "date", Some(1082), -1, "'0001-01-01'", "0001-01-01"),
    col(
        "ts",
        "timestamp",
        Some(1114),
        -1,
        "'9999-12-31 23:59:59.999999'",
        "9999-12-31 23:59:59.999999",
    ),
    col(
        "tstz",
        "timestamptz",
        Some(1184),
        -1,
        "'2024-02-29 12:34:56.789+00'",
        "2024-02-29 12:34:56.789+00",
    ),
    col("t", "time", Some(1083), -1, "'23:59:59'", "23:59:59"),
    col(
        "ints",
        "integer[]",
        Some(1007),
        -1,
        "'{1,NULL,3}'",
        "{1,NULL,3}",
    ),
    col(
        "texts",
        "text[]",
        Some(1009),
        -1,
        "ARRAY['a b', '', NULL]",
        "{\"a b\",\"\",NULL}",
    ),
    col(
        "doc",
        "jsonb",
        Some(3802),
        -1,
        "'{\"k\": [1, \"x\"], \"a\": null}'",
        "{\"a\": null, \"k\": [1, \"x\"]}",
    ),
    col(
        "uid",
        "uuid",
        Some(2950),
        -1,
        "'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'",
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    ),
    col("feeling", "mood", None, -1, "'happy'", "happy"),
    col(
        "span",
        "interval",
        Some(1186),
        -1,
        "'1 year 2 months 3 days 04:05:06'",
        "1 year 2 mons 3 days 04:05:06",
    ),
    col(
        "big_text",
        "text",
        Some(25),
        -1,
        "repeat('lakewriter ', 400)",
        "",
    ),
];

/// The value of `big_text` in row 1: larger than the TOAST threshold, and stored out of line
/// (`STORAGE EXTERNAL`), so updates that leave it alone send it as unchanged TOAST.
fn big_text() -> String {
    "lakewriter ".repeat(400)
}

/// The text PostgreSQL writes for column `index` of row 1.
fn row1_text(index: usize) -> String {
    match COLUMNS[index].name {
        "big_text" => big_text(),
        _ => COLUMNS[index].text.to_string(),
    }
}

fn column_index(name: &str) -> usize {
    COLUMNS
        .iter()
        .position(|c| c.name == name)
        .unwrap_or_else(|| panic!("no column {name}"))
}

fn corpus_dir() -> PathBuf {
    support::project_dir().join("tests/corpus/pgoutput")
}

/// The recorded messages of `scenario`.
fn read_corpus(scenario: &str) -> Vec<Vec<u8>> {
    let path = corpus_dir().join(format!("{scenario}.bin"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut messages = Vec::new();
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        let (length, tail) = rest
            .split_first_chunk::<4>()
            .unwrap_or_else(|| panic!("{}: a cut length", path.display()));
        let length = u32::from_be_bytes(*length) as usize;
        assert!(length <= tail.len(), "{}: a cut message", path.display());
        let (message, tail) = tail.split_at(length);
        messages.push(message.to_vec());
        rest = tail;
    }
    messages
}

fn write_corpus(scenario: &str, messages: &[Vec<u8>]) {
    let mut bytes = Vec::new();
    for message in messages {
        let length = u32::try_from(message.len()).expect("a message under 4 GiB");
        bytes.extend_from_slice(&length.to_be_bytes());
        bytes.extend_from_slice(message);
    }
    let path = corpus_dir().join(format!("{scenario}.bin"));
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// Decodes a recorded scenario as a consumer of the stream would: messages between Stream
/// Start and Stream Stop carry the streamed transaction's xid.
fn decode_all(messages: &[Vec<u8>]) -> Vec<Message<'_>> {
    let mut in_stream = false;
    messages
        .iter()
        .enumerate()
        .map(|(i, bytes)| {
            let decoded = if in_stream {
                decode_streamed(bytes)
            } else {
                decode(bytes)
            };
            let message = decoded.unwrap_or_else(|e| panic!("message {i}: {e}"));
            match message {
                Message::StreamStart(_) => in_stream = true,
                Message::StreamStop => in_stream = false,
                _ => {}
            }
            message
        })
        .collect()
}

fn load(scenario: &str) -> (Vec<Vec<u8>>, String) {
    let messages = read_corpus(scenario);
    let kinds = messages
        .iter()
        .map(|m| char::from(m.first().copied().unwrap_or(b'?')))
        .collect();
    (messages, kinds)
}

fn text(value: Option<Value<'_>>) -> String {
    match value {
        Some(Value::Text(bytes)) => String::from_utf8(bytes.to_vec()).expect("UTF-8 text"),
        other => panic!("expected a text value, got {other:?}"),
    }
}

fn texts(tuple: &TupleData<'_>) -> Vec<Option<String>> {
    tuple
        .iter()
        .map(|v| match v {
            Value::Null => None,
            Value::Text(b) => Some(String::from_utf8(b.to_vec()).expect("UTF-8 text")),
            other => panic!("expected text or NULL, got {other:?}"),
        })
        .collect()
}

// ---- the corpus, checked ------------------------------------------------------------------

#[test]
fn every_recorded_message_decodes() {
    let mut count = 0;
    for entry in std::fs::read_dir(corpus_dir()).expect("the corpus directory") {
        let path = entry.expect("a corpus entry").path();
        if path.extension().is_some_and(|e| e == "bin") {
            let scenario = path.file_stem().and_then(|s| s.to_str()).expect("a name");
            count += decode_all(&read_corpus(scenario)).len();
        }
    }
    assert!(count > 50, "only {count} messages in the corpus");
}

#[test]
fn insert_of_every_type() {
    let (messages, kinds) = load("insert");
    // The enum's Type message comes before the Relation that uses it.
    assert_eq!(kinds, "BYRIIC");
    let decoded = decode_all(&messages);
    let [
        Message::Begin(begin),
        Message::Type(mood),
        Message::Relation(relation),
        Message::Insert(row1),
        Message::Insert(row2),
        Message::Commit(commit),
    ] = &decoded[..]
    else {
        panic!("unexpected messages {decoded:?}");
    };

    assert_eq!(begin.final_lsn, commit.commit_lsn);
    assert!(commit.end_lsn > commit.commit_lsn);
    assert_eq!(commit.flags, 0);
    // Recorded after 2025-01-01 (Unix micros), so the epoch shift is applied.
    let unix = commit.commit_time.unix_micros().expect("a commit time");
    assert!(unix > 1_735_689_600_000_000, "{unix}");
    assert_eq!(begin.commit_time, commit.commit_time);

    assert_eq!((mood.namespace, mood.name), ("public", "mood"));
    assert_eq!(relation.namespace, "public");
    assert_eq!(relation.name, "everything");
    assert_eq!(relation.replica_identity, ReplicaIdentity::Default);
    assert_eq!(relation.columns.len(), COLUMNS.len());
    for (column, want) in relation.columns.iter().zip(COLUMNS) {
        assert_eq!(column.name, want.name);
        assert_eq!(
            column.type_oid,
            Oid(want.oid.unwrap_or(mood.id.0)),
            "{}",
            want.name
        );
        assert_eq!(column.type_modifier, want.modifier, "{}", want.name);
        assert_eq!(column.is_key(), want.name == "id", "{}", want.name);
    }

    for insert in [row1, row2] {
        assert_eq!(insert.relation, relation.id);
        assert_eq!(insert.xid, None);
        assert_eq!(insert.new.len(), COLUMNS.len());
    }
    let row1_texts = texts(&row1.new);
    for (index, value) in row1_texts.iter().enumerate() {
        assert_eq!(
            value.as_deref(),
            Some(&row1_text(index)[..]),
            "{}",
            COLUMNS[index].name
        );
    }
    // Row 2 is all NULLs but its key.
    let row2_texts = texts(&row2.new);
    assert_eq!(row2_texts[0].as_deref(), Some("2"));
    assert!(
        row2_texts[1..].iter().all(Option::is_none),
        "{row2_texts:?}"
    );
}

#[test]
fn updates_and_deletes_under_the_default_identity() {
    let (messages, kinds) = load("update_default");
    assert_eq!(kinds, "BYRUCBUCBDC");
    let decoded = decode_all(&messages);
    let Message::Relation(relation) = &decoded[2] else {
        panic!("no relation in {decoded:?}");
    };
    assert_eq!(relation.replica_identity, ReplicaIdentity::Default);
    let big = column_index("big_text");

    // UPDATE everything SET int = 7 WHERE id = 1: no old key (the key kept its value), and
    // the TOASTed text the update did not touch comes as unchanged, not as NULL.
    let Message::Update(update) = &decoded[3] else {
        panic!("not an update: {:?}", decoded[3]);
    };
    assert_eq!(update.relation, relation.id);
    assert_eq!(update.old, None);
    assert_eq!(update.new.get(big), Some(Value::UnchangedToast));
    assert_eq!(text(update.new.get(column_index("int"))), "7");
    assert_eq!(
        text(update.new.get(column_index("txt"))),
        row1_text(column_index("txt"))
    );

    // UPDATE everything SET id = 10 WHERE id = 2: the old key comes first.
    let Message::Update(update) = &decoded[6] else {
        panic!("not an update: {:?}", decoded[6]);
    };
    let Some(OldTuple::Key(old)) = update.old else {
        panic!("no old key in {update:?}");
    };
    let old = texts(&old);
    assert_eq!(old[0].as_deref(), Some("2"));
    assert!(
        old[1..].iter().all(Option::is_none),
        "only the key: {old:?}"
    );
    assert_eq!(text(update.new.get(0)), "10");

    // DELETE FROM everything WHERE id = 10: the key only.
    let Message::Delete(delete) = &decoded[9] else {
        panic!("not a delete: {:?}", decoded[9]);
    };
    let OldTuple::Key(old) = delete.old else {
        panic!("not a key: {delete:?}");
    };
    assert_eq!(text(old.get(0)), "10");
}

#[test]
fn updates_and_deletes_under_replica_identity_full() {
    let (messages, kinds) = load("update_full");
    assert_eq!(kinds, "BYRUCBDC");
    let decoded = decode_all(&messages);
    let Message::Relation(relation) = &decoded[2] else {
        panic!("no relation in {decoded:?}");
    };
    assert_eq!(relation.replica_identity, ReplicaIdentity::Full);
    // Under FULL every column is part of the identity.
    assert!(relation.columns.iter().all(|c| c.is_key()));
    let big = column_index("big_text");
    let txt = column_index("txt");

    // UPDATE everything SET txt = 'changed' WHERE id = 1: the whole old row, TOASTed value
    // included; the new row leaves the TOASTed value unchanged.
    let Message::Update(update) = &decoded[3] else {
        panic!("not an update: {:?}", decoded[3]);
    };
    let Some(OldTuple::Row(old)) = update.old else {
        panic!("no old row in {update:?}");
    };
    assert_eq!(old.len(), COLUMNS.len());
    assert_eq!(text(old.get(txt)), row1_text(txt));
    assert_eq!(text(old.get(big)), big_text());
    assert_eq!(text(update.new.get(txt)), "changed");
    assert_eq!(update.new.get(big), Some(Value::UnchangedToast));
    assert_eq!(
        text(update.new.get(column_index("doc"))),
        row1_text(column_index("doc"))
    );

    // DELETE FROM everything WHERE id = 1: the whole old row.
    let Message::Delete(delete) = &decoded[6] else {
        panic!("not a delete: {:?}", decoded[6]);
    };
    let OldTuple::Row(old) = delete.old else {
        panic!("not a row: {delete:?}");
    };
    assert_eq!(text(old.get(txt)), "changed");
    assert_eq!(text(old.get(big)), big_text());
}

#[test]
fn truncate_names_the_tables() {
    let (messages, kinds) = load("truncate");
    assert_eq!(kinds, "BYRRTCBRTC");
    let decoded = decode_all(&messages);
    let ids: Vec<(RelationId, &str)> = decoded
        .iter()
        .filter_map(|m| match m {
            Message::Relation(r) => Some((r.id, r.name)),
            _ => None,
        })
        .collect();
    let id_of = |name: &str| {
        ids.iter()
            .find(|(_, n)| *n == name)
            .map(|(id, _)| *id)
            .unwrap_or_else(|| panic!("no relation {name}"))
    };
    // TRUNCATE everything, other RESTART IDENTITY CASCADE
    let Message::Truncate(both) = &decoded[4] else {
        panic!("not a truncate: {:?}", decoded[4]);
    };
    assert!(both.cascade() && both.restart_identity());
    let truncated: Vec<_> = both.relations.iter().collect();
    assert_eq!(truncated, [id_of("everything"), id_of("other")]);
    // TRUNCATE other
    let Message::Truncate(one) = &decoded[8] else {
        panic!("not a truncate: {:?}", decoded[8]);
    };
    assert!(!one.cascade() && !one.restart_identity());
    assert_eq!(one.relations.iter().collect::<Vec<_>>(), [id_of("other")]);
}

#[test]
fn logical_decoding_messages() {
    let (messages, kinds) = load("messages");
    // The non-transactional message is sent when decoded, the other one with its transaction.
    assert_eq!(kinds, "MBMC");
    let decoded = decode_all(&messages);
    let Message::Logical(immediate) = &decoded[0] else {
        panic!("not a message: {:?}", decoded[0]);
    };
    assert!(!immediate.is_transactional());
    assert_eq!(immediate.prefix, "lakewriter.raw");
    assert_eq!(immediate.content, b"\x00\xff\x00");
    let Message::Logical(transactional) = &decoded[2] else {
        panic!("not a message: {:?}", decoded[2]);
    };
    assert!(transactional.is_transactional());
    assert_eq!(transactional.prefix, "lakewriter");
    assert_eq!(transactional.content, "transactional ✓".as_bytes());
    let Message::Commit(commit) = &decoded[3] else {
        panic!("not a commit: {:?}", decoded[3]);
    };
    // A message's LSN is the end of its WAL record: here, where the commit record starts.
    assert!(immediate.lsn < transactional.lsn);
    assert!(transactional.lsn <= commit.commit_lsn);
}

#[test]
fn origin_of_a_replicated_transaction() {
    let (messages, kinds) = load("origin");
    assert_eq!(kinds, "BORIC");
    let decoded = decode_all(&messages);
    let Message::Origin(origin) = &decoded[1] else {
        panic!("not an origin: {:?}", decoded[1]);
    };
    assert_eq!(origin.name, "upstream");
    assert_eq!(origin.commit_lsn, "0/ABCDEF".parse().expect("an LSN"));
    let Message::Insert(insert) = &decoded[3] else {
        panic!("not an insert: {:?}", decoded[3]);
    };
    assert_eq!(
        texts(&insert.new),
        [Some("1".into()), Some("from upstream".into())]
    );
}

#[test]
fn binary_values() {
    let (messages, kinds) = load("binary");
    assert_eq!(kinds, "BRIC");
    let decoded = decode_all(&messages);
    let Message::Insert(insert) = &decoded[2] else {
        panic!("not an insert: {:?}", decoded[2]);
    };
    // int4 in its send format is four big-endian bytes; text is its UTF-8 bytes.
    let values: Vec<_> = insert.new.iter().collect();
    assert_eq!(
        values,
        [
            Value::Binary(&(-5i32).to_be_bytes()),
            Value::Binary("binary ✓".as_bytes())
        ]
    );
}

#[test]
fn a_streamed_transaction_with_an_aborted_subtransaction() {
    let (messages, kinds) = load("stream");
    let decoded = decode_all(&messages);
    assert!(kinds.starts_with('S'), "{kinds}");
    assert!(kinds.ends_with('c'), "{kinds}");
    assert!(kinds.contains('A'), "{kinds}");
    assert!(
        !kinds.contains('B'),
        "a streamed transaction has no Begin: {kinds}"
    );

    let Message::StreamStart(first) = &decoded[0] else {
        panic!("not a stream start: {:?}", decoded[0]);
    };
    assert!(first.first_segment);
    let xid = first.xid;
    // Changes carry the xid of the (sub)transaction that made them: the top-level one, or the
    // subtransaction that a Stream Abort later discards.
    let mut inserted: Vec<(Xid, i32)> = Vec::new();
    let mut aborted = Vec::new();
    let mut committed = false;
    let mut blocks = 0;
    for message in &decoded {
        match message {
            Message::StreamStart(s) => {
                assert_eq!(s.xid, xid);
                assert_eq!(s.first_segment, blocks == 0);
                blocks += 1;
            }
            Message::Relation(r) => assert!(r.xid.is_some()),
            Message::Insert(i) => {
                let id = text(i.new.get(0)).parse::<i32>().expect("an id");
                inserted.push((i.xid.expect("a streamed xid"), id));
            }
            Message::StreamAbort(a) => {
                assert_eq!(a.xid, xid);
                assert_ne!(a.subxid, xid, "the subtransaction aborted, not the whole");
                assert_eq!(a.abort, None, "protocol version 2 sends no abort LSN");
                aborted.push(a.subxid);
            }
            Message::StreamCommit(c) => {
                assert_eq!(c.xid, xid);
                assert!(c.end_lsn > c.commit_lsn);
                committed = true;
            }
            _ => {}
        }
    }
    assert!(committed);
    assert!(
        blocks > 1,
        "the transaction streamed in several blocks: {kinds}"
    );
    assert_eq!(aborted.len(), 1, "{kinds}");
    // What a consumer applies: every row but those of the aborted subtransaction, which are
    // the rows inserted inside the savepoint (at least some of them were streamed).
    let (discarded, kept): (Vec<_>, Vec<_>) =
        inserted.iter().partition(|(x, _)| aborted.contains(x));
    let kept: Vec<i32> = kept.iter().map(|(_, id)| *id).collect();
    let want: Vec<i32> = (10_001..=10_300).chain([30_000]).collect();
    assert_eq!(kept, want);
    assert!(!discarded.is_empty());
    assert!(
        discarded
            .iter()
            .all(|(_, id)| (20_001..=20_600).contains(id))
    );
}

// ---- recording ----------------------------------------------------------------------------

/// Runs each scenario against the local stack and writes what the slot returns.
#[tokio::test]
#[ignore = "re-records tests/corpus/pgoutput from the local stack"]
async fn record_pgoutput_corpus() {
    let db = support::TestDb::new("pgoutput_corpus").await;
    let client = db.client().await;
    let run = |sql: String| {
        let client = &client;
        async move {
            client
                .batch_execute(&sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        }
    };
    // Decoding writes timestamptz in the decoding session's time zone.
    run("SET TimeZone = 'UTC'".into()).await;
    let columns: Vec<String> = COLUMNS
        .iter()
        .map(|c| format!("{} {}", c.name, c.sql_type))
        .collect();
    run(format!(
        "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
         CREATE TABLE everything ({});
         ALTER TABLE everything ALTER COLUMN big_text SET STORAGE EXTERNAL;
         CREATE TABLE other (id int GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, v text);
         CREATE PUBLICATION {} FOR TABLE everything, other;",
        columns.join(", "),
        db.publication
    ))
    .await;
    run(format!(
        "SELECT pg_create_logical_replication_slot('{}', 'pgoutput')",
        db.slot
    ))
    .await;

    let take = |options: &'static str| {
        let client = &client;
        let db = &db;
        async move {
            let sql = format!(
                "SELECT data FROM pg_logical_slot_get_binary_changes('{}', NULL, NULL, \
                 'publication_names', '{}', 'messages', 'true', {options})",
                db.slot, db.publication
            );
            let rows = client
                .query(&sql, &[])
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
            rows.iter()
                .map(|r| r.get::<_, Vec<u8>>(0))
                .collect::<Vec<_>>()
        }
    };
    let v1 = "'proto_version', '1'";

    let literals: Vec<&str> = COLUMNS.iter().map(|c| c.literal).collect();
    let nulls: Vec<&str> = COLUMNS.iter().skip(1).map(|_| "NULL").collect();
    run(format!(
        "INSERT INTO everything VALUES ({}), (2, {})",
        literals.join(", "),
        nulls.join(", ")
    ))
    .await;
    write_corpus("insert", &take(v1).await);

    run("UPDATE everything SET int = 7 WHERE id = 1".into()).await;
    run("UPDATE everything SET id = 10 WHERE id = 2".into()).await;
    run("DELETE FROM everything WHERE id = 10".into()).await;
    write_corpus("update_default", &take(v1).await);

    run("ALTER TABLE everything REPLICA IDENTITY FULL".into()).await;
    run("UPDATE everything SET txt = 'changed' WHERE id = 1".into()).await;
    run("DELETE FROM everything WHERE id = 1".into()).await;
    write_corpus("update_full", &take(v1).await);

    run("INSERT INTO other (v) VALUES ('x')".into()).await;
    take(v1).await;
    run("TRUNCATE everything, other RESTART IDENTITY CASCADE".into()).await;
    run("TRUNCATE other".into()).await;
    write_corpus("truncate", &take(v1).await);

    // The slot functions read only flushed WAL, and a non-transactional message flushes
    // nothing: the transactional one's commit, after it, does.
    run("SELECT pg_logical_emit_message(false, 'lakewriter.raw', '\\x00ff00'::bytea)".into()).await;
    run("SELECT pg_logical_emit_message(true, 'lakewriter', 'transactional ✓')".into()).await;
    write_corpus("messages", &take(v1).await);

    // Replication origins belong to the cluster, not to the test's database.
    run(
        "SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin
           WHERE roname = 'upstream';
         SELECT pg_replication_origin_create('upstream');
         SELECT pg_replication_origin_session_setup('upstream');
         BEGIN;
         SELECT pg_replication_origin_xact_setup('0/ABCDEF', now());
         INSERT INTO other VALUES (1, 'from upstream');
         COMMIT;
         SELECT pg_replication_origin_session_reset();
         SELECT pg_replication_origin_drop('upstream');"
            .into(),
    )
    .await;
    write_corpus("origin", &take(v1).await);

    run("INSERT INTO other VALUES (-5, 'binary ✓')".into()).await;
    write_corpus(
        "binary",
        &take("'proto_version', '1', 'binary', 'true'").await,
    );

    // Streaming starts when decoding needs more than logical_decoding_work_mem (64 kB at
    // least); the subtransaction's rows are streamed, then rolled back.
    run("BEGIN;
         INSERT INTO other SELECT g, 'r' || g FROM generate_series(10001, 10300) g;
         SAVEPOINT s;
         INSERT INTO other SELECT g, 'r' || g FROM generate_series(20001, 20600) g;
         ROLLBACK TO SAVEPOINT s;
         INSERT INTO other VALUES (30000, 'last');
         COMMIT;"
        .into())
    .await;
    run("SET logical_decoding_work_mem = '64kB'".into()).await;
    write_corpus(
        "stream",
        &take("'proto_version', '2', 'streaming', 'on'").await,
    );
}
