//! Tests of the decoder: every message kind from bytes built by hand after the documentation,
//! every kind of malformed input, and property tests (arbitrary bytes, round trips, mutations
//! of valid messages) with a fixed number of cases; proptest prints and saves the seed of a
//! failing case so it replays.

use proptest::collection::vec;
use proptest::prelude::*;

use super::encode::{Out, Spec, Val, vals};
use super::*;

const LSN: u64 = 0x16_B374_D848;

fn out(tag: u8) -> Out {
    let mut out = Out::default();
    out.u8(tag);
    out
}

fn decode_ok(bytes: &[u8]) -> Message<'_> {
    decode(bytes).unwrap_or_else(|e| panic!("{e}"))
}

fn decode_err(bytes: &[u8]) -> DecodeError {
    match decode(bytes) {
        Ok(message) => panic!("decoded {message:?} from malformed bytes"),
        Err(e) => e,
    }
}

#[test]
fn begin() {
    let mut b = out(b'B');
    b.u64(LSN).i64(798_000_000_123_456).u32(771);
    let Message::Begin(begin) = decode_ok(&b.0) else {
        panic!("not a Begin");
    };
    assert_eq!(begin.final_lsn, Lsn(LSN));
    assert_eq!(begin.final_lsn.to_string(), "16/B374D848");
    assert_eq!(begin.commit_time, PgTimestamp(798_000_000_123_456));
    assert_eq!(begin.xid, Xid(771));
}

#[test]
fn timestamps_convert_to_unix_micros() {
    assert_eq!(PgTimestamp(0).unix_micros(), Some(946_684_800_000_000));
    // 2025-04-15 12:00:00 UTC, as PostgreSQL and the Unix clock count it.
    assert_eq!(
        PgTimestamp(798_033_600_000_000).unix_micros(),
        Some(1_744_718_400_000_000)
    );
    assert_eq!(PgTimestamp(-946_684_800_000_000).unix_micros(), Some(0));
    assert_eq!(PgTimestamp(i64::MAX).unix_micros(), None);
}

#[test]
fn commit() {
    let mut b = out(b'C');
    b.u8(0).u64(LSN).u64(LSN + 48).i64(-5);
    assert_eq!(
        decode_ok(&b.0),
        Message::Commit(Commit {
            flags: 0,
            commit_lsn: Lsn(LSN),
            end_lsn: Lsn(LSN + 48),
            commit_time: PgTimestamp(-5),
        })
    );
}

#[test]
fn origin() {
    let mut b = out(b'O');
    b.u64(7).string("node_a");
    assert_eq!(
        decode_ok(&b.0),
        Message::Origin(Origin {
            commit_lsn: Lsn(7),
            name: "node_a"
        })
    );
}

#[test]
fn relation() {
    let mut b = out(b'R');
    b.u32(16_384)
        .string("sales")
        .string("orders_ü")
        .u8(b'f')
        .i16(3);
    b.u8(1).string("id").u32(20).i32(-1);
    b.u8(0).string("amount").u32(1700).i32((12 << 16 | 2) + 4);
    b.u8(0).string("note").u32(25).i32(-1);
    let Message::Relation(relation) = decode_ok(&b.0) else {
        panic!("not a Relation");
    };
    assert_eq!(relation.xid, None);
    assert_eq!(relation.id, RelationId(16_384));
    assert_eq!(relation.namespace, "sales");
    assert_eq!(relation.name, "orders_ü");
    assert_eq!(relation.replica_identity, ReplicaIdentity::Full);
    let names: Vec<_> = relation.columns.iter().map(|c| c.name).collect();
    assert_eq!(names, ["id", "amount", "note"]);
    let keys: Vec<_> = relation.columns.iter().map(Column::is_key).collect();
    assert_eq!(keys, [true, false, false]);
    assert_eq!(relation.columns[1].type_oid, Oid(1700));
    assert_eq!(relation.columns[1].type_modifier, (12 << 16 | 2) + 4);
}

#[test]
fn every_replica_identity_byte() {
    for (byte, identity) in [
        (b'd', ReplicaIdentity::Default),
        (b'n', ReplicaIdentity::Nothing),
        (b'f', ReplicaIdentity::Full),
        (b'i', ReplicaIdentity::Index),
    ] {
        let mut b = out(b'R');
        b.u32(1).string("").string("t").u8(byte).i16(0);
        let Message::Relation(relation) = decode_ok(&b.0) else {
            panic!("not a Relation");
        };
        assert_eq!(relation.replica_identity, identity);
        assert_eq!(identity.byte(), byte);
    }
}

#[test]
fn type_message() {
    let mut b = out(b'Y');
    b.u32(16_390).string("public").string("mood");
    assert_eq!(
        decode_ok(&b.0),
        Message::Type(Type {
            xid: None,
            id: Oid(16_390),
            namespace: "public",
            name: "mood"
        })
    );
}

/// A tuple with one value of each kind: NULL, unchanged TOAST, text, binary.
fn four_kinds(b: &mut Out) {
    b.i16(4).u8(b'n').u8(b'u').u8(b't').bytes32(b"42").u8(b'b');
    b.bytes32(&[0, 1, 2]);
}

#[test]
fn insert_with_every_value_kind() {
    let mut b = out(b'I');
    b.u32(16_384).u8(b'N');
    four_kinds(&mut b);
    let Message::Insert(insert) = decode_ok(&b.0) else {
        panic!("not an Insert");
    };
    assert_eq!(insert.relation, RelationId(16_384));
    assert_eq!(insert.new.len(), 4);
    let values: Vec<_> = insert.new.iter().collect();
    assert_eq!(
        values,
        [
            Value::Null,
            Value::UnchangedToast,
            Value::Text(b"42"),
            Value::Binary(&[0, 1, 2])
        ]
    );
    assert_eq!(insert.new.get(2), Some(Value::Text(b"42")));
    assert_eq!(insert.new.get(2).and_then(|v| v.bytes()), Some(&b"42"[..]));
    assert_eq!(insert.new.get(4), None);
    assert_eq!(insert.new.iter().len(), 4);
    assert_eq!(
        format!("{:?}", insert.new),
        r#"[Null, UnchangedToast, Text("42"), Binary("\x00\x01\x02")]"#
    );
}

#[test]
fn update_without_old_tuple() {
    let mut b = out(b'U');
    b.u32(5).u8(b'N').i16(2).u8(b't').bytes32(b"1").u8(b'u');
    let Message::Update(update) = decode_ok(&b.0) else {
        panic!("not an Update");
    };
    assert_eq!(update.old, None);
    assert_eq!(
        vals(&update.new),
        [Val::Text(b"1".to_vec()), Val::Unchanged]
    );
}

#[test]
fn update_with_old_key_and_with_old_row() {
    for (marker, is_key) in [(b'K', true), (b'O', false)] {
        let mut b = out(b'U');
        b.u32(5).u8(marker).i16(2).u8(b't').bytes32(b"1").u8(b'n');
        b.u8(b'N')
            .i16(2)
            .u8(b't')
            .bytes32(b"2")
            .u8(b't')
            .bytes32(b"x");
        let Message::Update(update) = decode_ok(&b.0) else {
            panic!("not an Update");
        };
        let old = update.old.unwrap_or_else(|| panic!("no old tuple"));
        assert_eq!(matches!(old, OldTuple::Key(_)), is_key);
        assert_eq!(vals(&old.tuple()), [Val::Text(b"1".to_vec()), Val::Null]);
        assert_eq!(update.new.get(1), Some(Value::Text(b"x")));
    }
}

#[test]
fn delete_with_old_key_and_with_old_row() {
    for marker in [b'K', b'O'] {
        let mut b = out(b'D');
        b.u32(9).u8(marker).i16(1).u8(b't').bytes32(b"7");
        let Message::Delete(delete) = decode_ok(&b.0) else {
            panic!("not a Delete");
        };
        assert_eq!(delete.relation, RelationId(9));
        match (marker, delete.old) {
            (b'K', OldTuple::Key(t)) | (b'O', OldTuple::Row(t)) => {
                assert_eq!(t.get(0), Some(Value::Text(b"7")));
            }
            _ => panic!("wrong old tuple kind for {}", char::from(marker)),
        }
    }
}

#[test]
fn truncate() {
    let mut b = out(b'T');
    b.i32(2).u8(3).u32(16_384).u32(16_390);
    let Message::Truncate(truncate) = decode_ok(&b.0) else {
        panic!("not a Truncate");
    };
    assert!(truncate.cascade());
    assert!(truncate.restart_identity());
    assert_eq!(truncate.relations.len(), 2);
    let ids: Vec<_> = truncate.relations.iter().collect();
    assert_eq!(ids, [RelationId(16_384), RelationId(16_390)]);
}

#[test]
fn logical_message() {
    let mut b = out(b'M');
    b.u8(1).u64(LSN).string("lakewriter").bytes32(b"a\0b");
    assert_eq!(
        decode_ok(&b.0),
        Message::Logical(LogicalMessage {
            xid: None,
            flags: 1,
            lsn: Lsn(LSN),
            prefix: "lakewriter",
            content: b"a\0b",
        })
    );
}

#[test]
fn stream_messages() {
    let mut b = out(b'S');
    b.u32(900).u8(1);
    assert_eq!(
        decode_ok(&b.0),
        Message::StreamStart(StreamStart {
            xid: Xid(900),
            first_segment: true
        })
    );
    assert_eq!(decode_ok(b"E"), Message::StreamStop);
    let mut b = out(b'c');
    b.u32(900).u8(0).u64(LSN).u64(LSN + 8).i64(1);
    assert_eq!(
        decode_ok(&b.0),
        Message::StreamCommit(StreamCommit {
            xid: Xid(900),
            flags: 0,
            commit_lsn: Lsn(LSN),
            end_lsn: Lsn(LSN + 8),
            commit_time: PgTimestamp(1),
        })
    );
    let mut b = out(b'A');
    b.u32(900).u32(901);
    assert_eq!(
        decode_ok(&b.0),
        Message::StreamAbort(StreamAbort {
            xid: Xid(900),
            subxid: Xid(901),
            abort: None
        })
    );
    b.u64(LSN).i64(2);
    assert_eq!(
        decode_ok(&b.0),
        Message::StreamAbort(StreamAbort {
            xid: Xid(900),
            subxid: Xid(901),
            abort: Some(AbortPoint {
                lsn: Lsn(LSN),
                time: PgTimestamp(2)
            })
        })
    );
}

#[test]
fn streamed_data_messages_start_with_the_xid() {
    let mut b = out(b'I');
    b.u32(900)
        .u32(16_384)
        .u8(b'N')
        .i16(1)
        .u8(b't')
        .bytes32(b"1");
    let Ok(Message::Insert(insert)) = decode_streamed(&b.0) else {
        panic!("not an Insert");
    };
    assert_eq!(insert.xid, Some(Xid(900)));
    assert_eq!(insert.relation, RelationId(16_384));
    // Outside a stream the xid would be taken for the relation id.
    assert!(decode(&b.0).is_err());
    // Messages without an xid read the same in both contexts.
    assert_eq!(decode_streamed(b"E"), Ok(Message::StreamStop));
}

#[test]
fn message_kinds_round_trip_their_tags() {
    for tag in 0..=u8::MAX {
        if let Some(kind) = MessageKind::from_tag(tag) {
            assert_eq!(kind.tag(), tag);
        }
    }
}

// ---- malformed input ----------------------------------------------------------------------

#[test]
fn empty_and_unknown_messages() {
    let e = decode_err(b"");
    assert_eq!(e.problem, Problem::Empty);
    assert_eq!(
        e.to_string(),
        "pgoutput message at byte 0: the message is empty"
    );
    let e = decode_err(b"Zxyz");
    assert_eq!(e.kind, None);
    assert_eq!(e.problem, Problem::UnknownKind { tag: b'Z' });
    assert_eq!(
        e.to_string(),
        "pgoutput message at byte 0: unknown message kind byte 0x5A (Z)"
    );
    // Protocol version 3 (two-phase) messages are not requested, so not known.
    assert_eq!(decode_err(b"P").problem, Problem::UnknownKind { tag: b'P' });
}

#[test]
fn a_value_longer_than_the_message_names_column_and_offset() {
    let mut b = out(b'U');
    b.u32(5)
        .u8(b'N')
        .i16(3)
        .u8(b'n')
        .u8(b't')
        .bytes32(b"ab")
        .u8(b't');
    b.i32(1000).u8(b'x');
    b.0.extend_from_slice(&[0; 11]);
    let e = decode_err(&b.0);
    assert_eq!(e.kind, Some(MessageKind::Update));
    assert_eq!(e.offset, 21);
    assert_eq!(
        e.to_string(),
        "Update at byte 21: truncated new tuple value of column 3: needs 1000 bytes, 12 left"
    );
}

#[test]
fn trailing_bytes_are_an_error() {
    let mut b = out(b'B');
    b.u64(1).i64(2).u32(3).u8(0);
    let e = decode_err(&b.0);
    assert_eq!(e.offset, 21);
    assert_eq!(e.problem, Problem::TrailingBytes { count: 1 });
    assert_eq!(
        e.to_string(),
        "Begin at byte 21: 1 trailing bytes after a complete message"
    );
    assert_eq!(
        decode_err(b"E\0").problem,
        Problem::TrailingBytes { count: 1 }
    );
}

#[test]
fn strings_must_be_terminated_utf8() {
    let mut b = out(b'O');
    b.u64(1);
    b.0.extend_from_slice(b"no-nul");
    let e = decode_err(&b.0);
    assert_eq!(e.offset, 9);
    assert_eq!(
        e.problem,
        Problem::Unterminated {
            field: Field::new("origin name")
        }
    );

    let mut b = out(b'R');
    b.u32(1).string("public");
    b.0.extend_from_slice(b"ab\xFFc\0");
    let e = decode_err(&b.0);
    assert_eq!(e.offset, 14, "the offset of the invalid byte");
    assert_eq!(
        e.to_string(),
        "Relation at byte 14: relation name is not valid UTF-8"
    );
}

#[test]
fn negative_lengths_and_counts() {
    let mut b = out(b'I');
    b.u32(1).u8(b'N').i16(1).u8(b't').i32(-1);
    let e = decode_err(&b.0);
    assert_eq!(
        e.to_string(),
        "Insert at byte 9: new tuple value length of column 1 is negative (-1)"
    );

    let mut b = out(b'I');
    b.u32(1).u8(b'N').i16(-2);
    let e = decode_err(&b.0);
    assert_eq!(e.offset, 6);
    assert!(matches!(e.problem, Problem::Negative { value: -2, .. }));

    let mut b = out(b'R');
    b.u32(1).string("").string("t").u8(b'd').i16(-1);
    assert!(matches!(
        decode_err(&b.0).problem,
        Problem::Negative { value: -1, .. }
    ));

    let mut b = out(b'T');
    b.i32(i32::MIN).u8(0);
    assert!(matches!(
        decode_err(&b.0).problem,
        Problem::Negative { value, .. } if value == i64::from(i32::MIN)
    ));

    let mut b = out(b'M');
    b.u8(0).u64(0).string("p").i32(-7);
    assert!(matches!(
        decode_err(&b.0).problem,
        Problem::Negative { value: -7, .. }
    ));
}

#[test]
fn bytes_that_choose_between_alternatives() {
    let mut b = out(b'R');
    b.u32(1).string("").string("t").u8(b'x').i16(0);
    assert_eq!(
        decode_err(&b.0).to_string(),
        "Relation at byte 8: replica identity is 0x78 (x), expected 'd', 'n', 'f' or 'i'"
    );

    let mut b = out(b'U');
    b.u32(1).u8(b'X');
    assert_eq!(
        decode_err(&b.0).to_string(),
        "Update at byte 5: tuple marker is 0x58 (X), expected 'K', 'O' or 'N'"
    );

    let mut b = out(b'U');
    b.u32(1).u8(b'K').i16(0).u8(b'K').i16(0);
    assert_eq!(
        decode_err(&b.0).offset,
        8,
        "the new tuple must follow the old"
    );

    let mut b = out(b'D');
    b.u32(1).u8(b'N').i16(0);
    assert!(matches!(
        decode_err(&b.0).problem,
        Problem::UnexpectedByte { found: b'N', .. }
    ));

    let mut b = out(b'I');
    b.u32(1).u8(b'N').i16(2).u8(b'n').u8(b'q');
    assert_eq!(
        decode_err(&b.0).to_string(),
        "Insert at byte 9: new tuple value kind of column 2 is 0x71 (q), expected 'n', 'u', 't' or 'b'"
    );

    let mut b = out(b'S');
    b.u32(1).u8(2);
    assert_eq!(decode_err(&b.0).offset, 5);
}

#[test]
fn huge_counts_fail_at_once_without_allocating() {
    // Each claims far more than the few bytes that follow; each must fail on the first missing
    // byte, not reserve memory or loop per claimed entry.
    let mut b = out(b'T');
    b.i32(i32::MAX).u8(0).u32(1);
    let e = decode_err(&b.0);
    assert_eq!(e.offset, 6);
    assert!(matches!(
        e.problem,
        Problem::Truncated { needed, left: 4, .. } if needed == i32::MAX as usize * 4
    ));

    let mut b = out(b'R');
    b.u32(1).string("").string("t").u8(b'd').i16(i16::MAX);
    b.u8(0).string("a").u32(23).i32(-1);
    assert!(matches!(
        decode_err(&b.0).problem,
        Problem::Truncated {
            field: Field {
                column: Some(2),
                ..
            },
            ..
        }
    ));

    let mut b = out(b'I');
    b.u32(1).u8(b'N').i16(i16::MAX).u8(b'n');
    assert!(matches!(
        decode_err(&b.0).problem,
        Problem::Truncated {
            field: Field {
                column: Some(2),
                ..
            },
            ..
        }
    ));

    let mut b = out(b'M');
    b.u8(0).u64(0).string("p").i32(i32::MAX);
    assert!(matches!(
        decode_err(&b.0).problem,
        Problem::Truncated { left: 0, .. }
    ));
}

/// One valid message of every kind, the ones with tuples using every value kind.
fn samples() -> Vec<Spec> {
    let row = vec![
        Val::Null,
        Val::Unchanged,
        Val::Text(b"text".to_vec()),
        Val::Binary(vec![0, 255]),
    ];
    let xid = Some(Xid(77));
    vec![
        Spec::Begin(Begin {
            final_lsn: Lsn(LSN),
            commit_time: PgTimestamp(1),
            xid: Xid(2),
        }),
        Spec::Commit(Commit {
            flags: 0,
            commit_lsn: Lsn(LSN),
            end_lsn: Lsn(LSN + 1),
            commit_time: PgTimestamp(3),
        }),
        Spec::Origin {
            commit_lsn: Lsn(4),
            name: "o".into(),
        },
        Spec::Relation {
            xid: None,
            id: RelationId(5),
            namespace: "public".into(),
            name: "t".into(),
            replica_identity: ReplicaIdentity::Index,
            columns: vec![(1, "id".into(), Oid(23), -1), (0, "v".into(), Oid(25), -1)],
        },
        Spec::Type {
            xid,
            id: Oid(6),
            namespace: "s".into(),
            name: "mood".into(),
        },
        Spec::Insert {
            xid: None,
            relation: RelationId(7),
            new: row.clone(),
        },
        Spec::Update {
            xid,
            relation: RelationId(7),
            old: Some((b'O', row.clone())),
            new: row.clone(),
        },
        Spec::Delete {
            xid: None,
            relation: RelationId(7),
            old: (b'K', row),
        },
        Spec::Truncate {
            xid: None,
            options: 1,
            relations: vec![RelationId(7), RelationId(8)],
        },
        Spec::Logical {
            xid,
            flags: 1,
            lsn: Lsn(9),
            prefix: "p".into(),
            content: b"c\0".to_vec(),
        },
        Spec::StreamStart(StreamStart {
            xid: Xid(77),
            first_segment: false,
        }),
        Spec::StreamCommit(StreamCommit {
            xid: Xid(77),
            flags: 0,
            commit_lsn: Lsn(10),
            end_lsn: Lsn(11),
            commit_time: PgTimestamp(12),
        }),
        Spec::StreamAbort(StreamAbort {
            xid: Xid(77),
            subxid: Xid(78),
            abort: None,
        }),
    ]
}

fn decode_for(spec: &Spec, bytes: &[u8]) -> Result<Spec, DecodeError> {
    let decoded = if spec.is_streamed() {
        decode_streamed(bytes)
    } else {
        decode(bytes)
    };
    decoded.map(|m| Spec::of(&m))
}

#[test]
fn samples_decode_to_themselves() {
    for spec in samples() {
        assert_eq!(decode_for(&spec, &spec.encode()), Ok(spec.clone()));
    }
}

#[test]
fn every_truncation_of_a_valid_message_is_an_error() {
    for spec in samples() {
        let bytes = spec.encode();
        for end in 0..bytes.len() {
            let prefix = &bytes[..end];
            let e = match decode_for(&spec, prefix) {
                Ok(m) => panic!("{spec:?} cut at {end} decoded as {m:?}"),
                Err(e) => e,
            };
            // The error points into what was given, at the field the cut broke.
            assert!(e.offset <= end, "{e} for a cut at {end}");
            if end > 0 {
                assert_eq!(e.kind.map(MessageKind::tag), Some(bytes[0]), "{e}");
            }
            let _ = e.to_string();
        }
    }
}

// ---- property tests -----------------------------------------------------------------------

/// Reads everything a consumer could read from a message, so lazily decoded parts (tuples,
/// truncated relation ids) are exercised, and checks the tuple accessors agree.
fn walk(message: &Message<'_>) {
    let tuples: Vec<TupleData<'_>> = match message {
        Message::Insert(i) => vec![i.new],
        Message::Update(u) => u.old.iter().map(OldTuple::tuple).chain([u.new]).collect(),
        Message::Delete(d) => vec![d.old.tuple()],
        Message::Truncate(t) => {
            assert_eq!(t.relations.iter().count(), t.relations.len());
            vec![]
        }
        _ => vec![],
    };
    for tuple in tuples {
        let values: Vec<_> = tuple.iter().collect();
        assert_eq!(values.len(), tuple.len());
        for (i, value) in values.iter().enumerate() {
            assert_eq!(tuple.get(i).as_ref(), Some(value));
        }
    }
    let _ = format!("{message:?}");
}

fn decode_and_walk(bytes: &[u8]) {
    for result in [decode(bytes), decode_streamed(bytes)] {
        match result {
            Ok(message) => walk(&message),
            Err(e) => {
                assert!(e.offset <= bytes.len(), "{e} beyond {} bytes", bytes.len());
                let _ = e.to_string();
            }
        }
    }
}

fn arb_val() -> impl Strategy<Value = Val> {
    prop_oneof![
        Just(Val::Null),
        Just(Val::Unchanged),
        vec(any::<u8>(), 0..12).prop_map(Val::Text),
        vec(any::<u8>(), 0..12).prop_map(Val::Binary),
    ]
}

fn arb_tuple() -> impl Strategy<Value = Vec<Val>> {
    vec(arb_val(), 0..6)
}

fn arb_name() -> impl Strategy<Value = String> {
    "[^\\x00]{0,8}"
}

fn arb_lsn() -> impl Strategy<Value = Lsn> {
    any::<u64>().prop_map(Lsn)
}

fn arb_time() -> impl Strategy<Value = PgTimestamp> {
    any::<i64>().prop_map(PgTimestamp)
}

fn arb_xid() -> impl Strategy<Value = Option<Xid>> {
    proptest::option::of(any::<u32>().prop_map(Xid))
}

fn arb_old() -> impl Strategy<Value = (u8, Vec<Val>)> {
    (prop_oneof![Just(b'K'), Just(b'O')], arb_tuple())
}

fn arb_identity() -> impl Strategy<Value = ReplicaIdentity> {
    prop_oneof![
        Just(ReplicaIdentity::Default),
        Just(ReplicaIdentity::Nothing),
        Just(ReplicaIdentity::Full),
        Just(ReplicaIdentity::Index),
    ]
}

fn arb_spec() -> impl Strategy<Value = Spec> {
    let column = (any::<u8>(), arb_name(), any::<u32>(), any::<i32>())
        .prop_map(|(flags, name, oid, modifier)| (flags, name, Oid(oid), modifier));
    prop_oneof![
        (arb_lsn(), arb_time(), any::<u32>()).prop_map(|(final_lsn, commit_time, xid)| {
            Spec::Begin(Begin {
                final_lsn,
                commit_time,
                xid: Xid(xid),
            })
        }),
        (any::<u8>(), arb_lsn(), arb_lsn(), arb_time()).prop_map(
            |(flags, commit_lsn, end_lsn, commit_time)| Spec::Commit(Commit {
                flags,
                commit_lsn,
                end_lsn,
                commit_time
            })
        ),
        (arb_lsn(), arb_name()).prop_map(|(commit_lsn, name)| Spec::Origin { commit_lsn, name }),
        (
            arb_xid(),
            any::<u32>(),
            arb_name(),
            arb_name(),
            arb_identity(),
            vec(column, 0..5)
        )
            .prop_map(|(xid, id, namespace, name, replica_identity, columns)| {
                Spec::Relation {
                    xid,
                    id: RelationId(id),
                    namespace,
                    name,
                    replica_identity,
                    columns,
                }
            }),
        (arb_xid(), any::<u32>(), arb_name(), arb_name()).prop_map(|(xid, id, namespace, name)| {
            Spec::Type {
                xid,
                id: Oid(id),
                namespace,
                name,
            }
        }),
        (arb_xid(), any::<u32>(), arb_tuple()).prop_map(|(xid, id, new)| Spec::Insert {
            xid,
            relation: RelationId(id),
            new
        }),
        (
            arb_xid(),
            any::<u32>(),
            proptest::option::of(arb_old()),
            arb_tuple()
        )
            .prop_map(|(xid, id, old, new)| Spec::Update {
                xid,
                relation: RelationId(id),
                old,
                new
            }),
        (arb_xid(), any::<u32>(), arb_old()).prop_map(|(xid, id, old)| Spec::Delete {
            xid,
            relation: RelationId(id),
            old
        }),
        (arb_xid(), any::<u8>(), vec(any::<u32>(), 0..5)).prop_map(|(xid, options, ids)| {
            Spec::Truncate {
                xid,
                options,
                relations: ids.into_iter().map(RelationId).collect(),
            }
        }),
        (
            arb_xid(),
            any::<u8>(),
            arb_lsn(),
            arb_name(),
            vec(any::<u8>(), 0..16)
        )
            .prop_map(|(xid, flags, lsn, prefix, content)| Spec::Logical {
                xid,
                flags,
                lsn,
                prefix,
                content
            }),
        (any::<u32>(), any::<bool>()).prop_map(|(xid, first_segment)| {
            Spec::StreamStart(StreamStart {
                xid: Xid(xid),
                first_segment,
            })
        }),
        Just(Spec::StreamStop),
        (any::<u32>(), any::<u8>(), arb_lsn(), arb_lsn(), arb_time()).prop_map(
            |(xid, flags, commit_lsn, end_lsn, commit_time)| {
                Spec::StreamCommit(StreamCommit {
                    xid: Xid(xid),
                    flags,
                    commit_lsn,
                    end_lsn,
                    commit_time,
                })
            }
        ),
        (
            any::<u32>(),
            any::<u32>(),
            proptest::option::of((arb_lsn(), arb_time()))
        )
            .prop_map(|(xid, subxid, abort)| Spec::StreamAbort(StreamAbort {
                xid: Xid(xid),
                subxid: Xid(subxid),
                abort: abort.map(|(lsn, time)| AbortPoint { lsn, time }),
            })),
    ]
}

/// A change to a valid message's bytes; positions are taken modulo the length.
#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, bit: u8 },
    Set { at: usize, byte: u8 },
    Insert { at: usize, byte: u8 },
    Delete { at: usize },
    Cut { at: usize },
}

impl Mutation {
    fn apply(&self, bytes: &mut Vec<u8>) {
        let len = bytes.len().max(1);
        match *self {
            Mutation::Flip { at, bit } => {
                if let Some(b) = bytes.get_mut(at % len) {
                    *b ^= 1 << (bit % 8);
                }
            }
            Mutation::Set { at, byte } => {
                if let Some(b) = bytes.get_mut(at % len) {
                    *b = byte;
                }
            }
            Mutation::Insert { at, byte } => bytes.insert(at % (bytes.len() + 1), byte),
            Mutation::Delete { at } => {
                if !bytes.is_empty() {
                    bytes.remove(at % len);
                }
            }
            Mutation::Cut { at } => bytes.truncate(at % len),
        }
    }
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        // Lengths and counts are where decoders break: set bytes to the extremes often.
        (
            any::<usize>(),
            prop_oneof![Just(0u8), Just(0x7F), Just(0x80), Just(0xFF), any::<u8>()]
        )
            .prop_map(|(at, byte)| Mutation::Set { at, byte }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Insert { at, byte }),
        any::<usize>().prop_map(|at| Mutation::Delete { at }),
        any::<usize>().prop_map(|at| Mutation::Cut { at }),
    ]
}

/// A known tag followed by arbitrary bytes: reaches past the kind check far more often than
/// uniformly random bytes do.
fn arb_tagged_bytes() -> impl Strategy<Value = Vec<u8>> {
    let tags: Vec<u8> = b"BCORYIUDTMSEcA".to_vec();
    (proptest::sample::select(tags), vec(any::<u8>(), 0..64)).prop_map(|(tag, mut rest)| {
        rest.insert(0, tag);
        rest
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..256)) {
        decode_and_walk(&bytes);
    }

    #[test]
    fn arbitrary_bytes_after_a_known_tag_never_panic(bytes in arb_tagged_bytes()) {
        decode_and_walk(&bytes);
    }

    #[test]
    fn valid_messages_round_trip(spec in arb_spec()) {
        let bytes = spec.encode();
        prop_assert_eq!(decode_for(&spec, &bytes), Ok(spec.clone()));
        if let Ok(message) = decode(&bytes) {
            walk(&message);
        }
    }

    #[test]
    fn mutated_valid_messages_never_panic(
        spec in arb_spec(),
        mutations in vec(arb_mutation(), 1..4),
    ) {
        let mut bytes = spec.encode();
        for mutation in &mutations {
            mutation.apply(&mut bytes);
        }
        decode_and_walk(&bytes);
    }
}
