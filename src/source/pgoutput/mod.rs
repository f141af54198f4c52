//! Our decoder of pgoutput, the logical replication output of PostgreSQL ("Logical Replication
//! Message Formats" in its documentation): one message in, one typed [`Message`] out, every name
//! and value borrowed from the input. Protocol version 1, plus the streaming messages of
//! version 2. Malformed bytes give a [`DecodeError`] naming the message kind, the byte offset and
//! what was expected there — never a panic, and never an allocation sized by a length field.

mod error;
mod message;
mod reader;
mod tuple;

#[cfg(test)]
mod encode;
#[cfg(test)]
mod tests;

pub use error::{DecodeError, Field, Problem};
pub use message::{
    AbortPoint, Begin, Column, Commit, Delete, Insert, LogicalMessage, Message, MessageKind,
    OldTuple, Origin, PgTimestamp, Relation, RelationIds, ReplicaIdentity, StreamAbort,
    StreamCommit, StreamStart, Truncate, Type, Update, Xid,
};
pub use tuple::{TupleData, Value, Values};

use crate::Lsn;
use crate::source::{Oid, RelationId};
use reader::Reader;
use tuple::TuplePart;

/// Decodes one pgoutput message (the payload of one XLogData message, or one row of
/// `pg_logical_slot_get_binary_changes`) outside a streamed block: data messages carry no xid.
pub fn decode(bytes: &[u8]) -> Result<Message<'_>, DecodeError> {
    decode_in(bytes, Context::Transaction)
}

/// Decodes one pgoutput message received between a Stream Start and a Stream Stop (protocol
/// version 2 and later): there, Relation, Type, Insert, Update, Delete, Truncate and Message
/// start with the xid of the streamed transaction.
pub fn decode_streamed(bytes: &[u8]) -> Result<Message<'_>, DecodeError> {
    decode_in(bytes, Context::Stream)
}

/// Whether data messages carry the xid of a streamed transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Context {
    Transaction,
    Stream,
}

fn decode_in(bytes: &[u8], context: Context) -> Result<Message<'_>, DecodeError> {
    let Some(&tag) = bytes.first() else {
        return Err(DecodeError {
            kind: None,
            offset: 0,
            problem: Problem::Empty,
        });
    };
    let Some(kind) = MessageKind::from_tag(tag) else {
        return Err(DecodeError {
            kind: None,
            offset: 0,
            problem: Problem::UnknownKind { tag },
        });
    };
    let mut r = Reader::after_tag(bytes, kind);
    let message = match kind {
        MessageKind::Begin => Message::Begin(Begin {
            final_lsn: Lsn(r.u64("final LSN")?),
            commit_time: PgTimestamp(r.i64("commit timestamp")?),
            xid: Xid(r.u32("transaction id")?),
        }),
        MessageKind::Commit => Message::Commit(Commit {
            flags: r.u8("flags")?,
            commit_lsn: Lsn(r.u64("commit LSN")?),
            end_lsn: Lsn(r.u64("end LSN")?),
            commit_time: PgTimestamp(r.i64("commit timestamp")?),
        }),
        MessageKind::Origin => Message::Origin(Origin {
            commit_lsn: Lsn(r.u64("origin commit LSN")?),
            name: r.string("origin name")?,
        }),
        MessageKind::Relation => Message::Relation(relation(&mut r, context)?),
        MessageKind::Type => Message::Type(Type {
            xid: streamed_xid(&mut r, context)?,
            id: Oid(r.u32("type oid")?),
            namespace: r.string("type namespace")?,
            name: r.string("type name")?,
        }),
        MessageKind::Insert => {
            let xid = streamed_xid(&mut r, context)?;
            let relation = RelationId(r.u32("relation id")?);
            expect_byte(&mut r, "tuple marker", b'N', "'N' (new tuple)")?;
            let new = tuple::read(&mut r, TuplePart::New)?;
            Message::Insert(Insert { xid, relation, new })
        }
        MessageKind::Update => Message::Update(update(&mut r, context)?),
        MessageKind::Delete => {
            let xid = streamed_xid(&mut r, context)?;
            let relation = RelationId(r.u32("relation id")?);
            let at = r.position();
            let old = match r.u8("tuple marker")? {
                b'K' => OldTuple::Key(tuple::read(&mut r, TuplePart::OldKey)?),
                b'O' => OldTuple::Row(tuple::read(&mut r, TuplePart::OldRow)?),
                found => return Err(unexpected(&r, at, "tuple marker", found, "'K' or 'O'")),
            };
            Message::Delete(Delete { xid, relation, old })
        }
        MessageKind::Truncate => Message::Truncate(truncate(&mut r, context)?),
        MessageKind::LogicalMessage => Message::Logical(LogicalMessage {
            xid: streamed_xid(&mut r, context)?,
            flags: r.u8("flags")?,
            lsn: Lsn(r.u64("message LSN")?),
            prefix: r.string("prefix")?,
            content: r.counted_bytes("content length", "content")?,
        }),
        MessageKind::StreamStart => {
            let xid = Xid(r.u32("transaction id")?);
            let at = r.position();
            let first_segment = match r.u8("first segment flag")? {
                0 => false,
                1 => true,
                found => return Err(unexpected(&r, at, "first segment flag", found, "0 or 1")),
            };
            Message::StreamStart(StreamStart { xid, first_segment })
        }
        MessageKind::StreamStop => Message::StreamStop,
        MessageKind::StreamCommit => Message::StreamCommit(StreamCommit {
            xid: Xid(r.u32("transaction id")?),
            flags: r.u8("flags")?,
            commit_lsn: Lsn(r.u64("commit LSN")?),
            end_lsn: Lsn(r.u64("end LSN")?),
            commit_time: PgTimestamp(r.i64("commit timestamp")?),
        }),
        MessageKind::StreamAbort => {
            let xid = Xid(r.u32("transaction id")?);
            let subxid = Xid(r.u32("subtransaction id")?);
            // Protocol version 4 appends the abort's LSN and time (parallel streaming only);
            // earlier versions end here. Nothing else may follow, so the length tells them apart.
            let abort = if r.left() == 0 {
                None
            } else {
                Some(AbortPoint {
                    lsn: Lsn(r.u64("abort LSN")?),
                    time: PgTimestamp(r.i64("abort timestamp")?),
                })
            };
            Message::StreamAbort(StreamAbort { xid, subxid, abort })
        }
    };
    r.finish()?;
    Ok(message)
}

fn streamed_xid(r: &mut Reader<'_>, context: Context) -> Result<Option<Xid>, DecodeError> {
    match context {
        Context::Transaction => Ok(None),
        Context::Stream => Ok(Some(Xid(r.u32("streamed transaction id")?))),
    }
}

fn unexpected(
    r: &Reader<'_>,
    at: usize,
    field: &'static str,
    found: u8,
    expected: &'static str,
) -> DecodeError {
    r.error_at(
        at,
        Problem::UnexpectedByte {
            field: Field::new(field),
            found,
            expected,
        },
    )
}

fn expect_byte(
    r: &mut Reader<'_>,
    field: &'static str,
    want: u8,
    expected: &'static str,
) -> Result<(), DecodeError> {
    let at = r.position();
    match r.u8(field)? {
        found if found == want => Ok(()),
        found => Err(unexpected(r, at, field, found, expected)),
    }
}

fn relation<'a>(r: &mut Reader<'a>, context: Context) -> Result<Relation<'a>, DecodeError> {
    let xid = streamed_xid(r, context)?;
    let id = RelationId(r.u32("relation id")?);
    let namespace = r.string("namespace")?;
    let name = r.string("relation name")?;
    let at = r.position();
    let identity = r.u8("replica identity")?;
    let replica_identity = ReplicaIdentity::from_byte(identity)
        .ok_or_else(|| unexpected(r, at, "replica identity", identity, "'d', 'n', 'f' or 'i'"))?;
    let count = r.count16("column count")?;
    // A column takes at least 10 bytes (flags, an empty name, type oid, modifier): the count
    // cannot reserve more than the message can hold.
    let mut columns = Vec::with_capacity(usize::from(count).min(r.left() / 10));
    for index in 0..count {
        columns.push(Column {
            flags: r.u8(Field::of_column("column flags", index))?,
            name: r.string(Field::of_column("column name", index))?,
            type_oid: Oid(r.u32(Field::of_column("column type oid", index))?),
            type_modifier: r.i32(Field::of_column("column type modifier", index))?,
        });
    }
    Ok(Relation {
        xid,
        id,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

fn update<'a>(r: &mut Reader<'a>, context: Context) -> Result<Update<'a>, DecodeError> {
    let xid = streamed_xid(r, context)?;
    let relation = RelationId(r.u32("relation id")?);
    let at = r.position();
    let old = match r.u8("tuple marker")? {
        b'K' => Some(OldTuple::Key(tuple::read(r, TuplePart::OldKey)?)),
        b'O' => Some(OldTuple::Row(tuple::read(r, TuplePart::OldRow)?)),
        b'N' => None,
        found => return Err(unexpected(r, at, "tuple marker", found, "'K', 'O' or 'N'")),
    };
    if old.is_some() {
        expect_byte(r, "new tuple marker", b'N', "'N' (new tuple)")?;
    }
    let new = tuple::read(r, TuplePart::New)?;
    Ok(Update {
        xid,
        relation,
        old,
        new,
    })
}

fn truncate<'a>(r: &mut Reader<'a>, context: Context) -> Result<Truncate<'a>, DecodeError> {
    let xid = streamed_xid(r, context)?;
    let count = r.length32("relation count")?;
    let options = r.u8("options")?;
    // Take all ids at once: a huge count fails here, before anything is iterated.
    let relations = RelationIds {
        bytes: r.take(count.saturating_mul(4), "relation ids")?,
    };
    Ok(Truncate {
        xid,
        options,
        relations,
    })
}
