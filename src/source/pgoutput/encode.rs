//! A test-only model of pgoutput messages that owns its data, with an encoder written from the
//! format's documentation, so property tests can check encode → decode → the same model without
//! trusting the decoder's own types.

use super::{
    Begin, Commit, Message, OldTuple, ReplicaIdentity, StreamAbort, StreamCommit, StreamStart,
    TupleData, Value, Xid,
};
use crate::Lsn;
use crate::source::{Oid, RelationId};

/// An owned column value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Val {
    Null,
    Unchanged,
    Text(Vec<u8>),
    Binary(Vec<u8>),
}

/// An owned column of a Relation: flags, name, type, modifier.
pub type Col = (u8, String, Oid, i32);

/// An owned pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spec {
    Begin(Begin),
    Commit(Commit),
    Origin {
        commit_lsn: Lsn,
        name: String,
    },
    Relation {
        xid: Option<Xid>,
        id: RelationId,
        namespace: String,
        name: String,
        replica_identity: ReplicaIdentity,
        columns: Vec<Col>,
    },
    Type {
        xid: Option<Xid>,
        id: Oid,
        namespace: String,
        name: String,
    },
    Insert {
        xid: Option<Xid>,
        relation: RelationId,
        new: Vec<Val>,
    },
    Update {
        xid: Option<Xid>,
        relation: RelationId,
        /// The marker (`K` or `O`) and the old tuple.
        old: Option<(u8, Vec<Val>)>,
        new: Vec<Val>,
    },
    Delete {
        xid: Option<Xid>,
        relation: RelationId,
        old: (u8, Vec<Val>),
    },
    Truncate {
        xid: Option<Xid>,
        options: u8,
        relations: Vec<RelationId>,
    },
    Logical {
        xid: Option<Xid>,
        flags: u8,
        lsn: Lsn,
        prefix: String,
        content: Vec<u8>,
    },
    StreamStart(StreamStart),
    StreamStop,
    StreamCommit(StreamCommit),
    StreamAbort(StreamAbort),
}

impl Spec {
    /// Whether the message carries a streamed xid, i.e. must be decoded with `decode_streamed`.
    pub fn is_streamed(&self) -> bool {
        match self {
            Spec::Relation { xid, .. }
            | Spec::Type { xid, .. }
            | Spec::Insert { xid, .. }
            | Spec::Update { xid, .. }
            | Spec::Delete { xid, .. }
            | Spec::Truncate { xid, .. }
            | Spec::Logical { xid, .. } => xid.is_some(),
            _ => false,
        }
    }

    /// The message's bytes, as PostgreSQL would send them.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Out::default();
        match self {
            Spec::Begin(b) => {
                out.u8(b'B')
                    .u64(b.final_lsn.0)
                    .i64(b.commit_time.0)
                    .u32(b.xid.0);
            }
            Spec::Commit(c) => {
                out.u8(b'C')
                    .u8(c.flags)
                    .u64(c.commit_lsn.0)
                    .u64(c.end_lsn.0)
                    .i64(c.commit_time.0);
            }
            Spec::Origin { commit_lsn, name } => {
                out.u8(b'O').u64(commit_lsn.0).string(name);
            }
            Spec::Relation {
                xid,
                id,
                namespace,
                name,
                replica_identity,
                columns,
            } => {
                out.u8(b'R')
                    .xid(*xid)
                    .u32(id.0)
                    .string(namespace)
                    .string(name);
                out.u8(replica_identity.byte()).i16(len16(columns.len()));
                for (flags, name, type_oid, modifier) in columns {
                    out.u8(*flags).string(name).u32(type_oid.0).i32(*modifier);
                }
            }
            Spec::Type {
                xid,
                id,
                namespace,
                name,
            } => {
                out.u8(b'Y')
                    .xid(*xid)
                    .u32(id.0)
                    .string(namespace)
                    .string(name);
            }
            Spec::Insert { xid, relation, new } => {
                out.u8(b'I').xid(*xid).u32(relation.0).u8(b'N').tuple(new);
            }
            Spec::Update {
                xid,
                relation,
                old,
                new,
            } => {
                out.u8(b'U').xid(*xid).u32(relation.0);
                if let Some((marker, old)) = old {
                    out.u8(*marker).tuple(old);
                }
                out.u8(b'N').tuple(new);
            }
            Spec::Delete {
                xid,
                relation,
                old: (marker, old),
            } => {
                out.u8(b'D')
                    .xid(*xid)
                    .u32(relation.0)
                    .u8(*marker)
                    .tuple(old);
            }
            Spec::Truncate {
                xid,
                options,
                relations,
            } => {
                let count = i32::try_from(relations.len()).unwrap_or(i32::MAX);
                out.u8(b'T').xid(*xid).i32(count).u8(*options);
                for id in relations {
                    out.u32(id.0);
                }
            }
            Spec::Logical {
                xid,
                flags,
                lsn,
                prefix,
                content,
            } => {
                out.u8(b'M').xid(*xid).u8(*flags).u64(lsn.0).string(prefix);
                out.bytes32(content);
            }
            Spec::StreamStart(s) => {
                out.u8(b'S').u32(s.xid.0).u8(u8::from(s.first_segment));
            }
            Spec::StreamStop => {
                out.u8(b'E');
            }
            Spec::StreamCommit(c) => {
                out.u8(b'c')
                    .u32(c.xid.0)
                    .u8(c.flags)
                    .u64(c.commit_lsn.0)
                    .u64(c.end_lsn.0)
                    .i64(c.commit_time.0);
            }
            Spec::StreamAbort(a) => {
                out.u8(b'A').u32(a.xid.0).u32(a.subxid.0);
                if let Some(point) = a.abort {
                    out.u64(point.lsn.0).i64(point.time.0);
                }
            }
        }
        out.0
    }

    /// The model of a decoded message (reading every tuple through its iterator).
    pub fn of(message: &Message<'_>) -> Spec {
        match message {
            Message::Begin(b) => Spec::Begin(*b),
            Message::Commit(c) => Spec::Commit(*c),
            Message::Origin(o) => Spec::Origin {
                commit_lsn: o.commit_lsn,
                name: o.name.to_string(),
            },
            Message::Relation(r) => Spec::Relation {
                xid: r.xid,
                id: r.id,
                namespace: r.namespace.to_string(),
                name: r.name.to_string(),
                replica_identity: r.replica_identity,
                columns: r
                    .columns
                    .iter()
                    .map(|c| (c.flags, c.name.to_string(), c.type_oid, c.type_modifier))
                    .collect(),
            },
            Message::Type(t) => Spec::Type {
                xid: t.xid,
                id: t.id,
                namespace: t.namespace.to_string(),
                name: t.name.to_string(),
            },
            Message::Insert(i) => Spec::Insert {
                xid: i.xid,
                relation: i.relation,
                new: vals(&i.new),
            },
            Message::Update(u) => Spec::Update {
                xid: u.xid,
                relation: u.relation,
                old: u.old.as_ref().map(old),
                new: vals(&u.new),
            },
            Message::Delete(d) => Spec::Delete {
                xid: d.xid,
                relation: d.relation,
                old: old(&d.old),
            },
            Message::Truncate(t) => Spec::Truncate {
                xid: t.xid,
                options: t.options,
                relations: t.relations.iter().collect(),
            },
            Message::Logical(m) => Spec::Logical {
                xid: m.xid,
                flags: m.flags,
                lsn: m.lsn,
                prefix: m.prefix.to_string(),
                content: m.content.to_vec(),
            },
            Message::StreamStart(s) => Spec::StreamStart(*s),
            Message::StreamStop => Spec::StreamStop,
            Message::StreamCommit(c) => Spec::StreamCommit(*c),
            Message::StreamAbort(a) => Spec::StreamAbort(*a),
        }
    }
}

/// The owned values of a tuple.
pub fn vals(tuple: &TupleData<'_>) -> Vec<Val> {
    tuple
        .iter()
        .map(|v| match v {
            Value::Null => Val::Null,
            Value::UnchangedToast => Val::Unchanged,
            Value::Text(b) => Val::Text(b.to_vec()),
            Value::Binary(b) => Val::Binary(b.to_vec()),
        })
        .collect()
}

fn old(tuple: &OldTuple<'_>) -> (u8, Vec<Val>) {
    match tuple {
        OldTuple::Key(t) => (b'K', vals(t)),
        OldTuple::Row(t) => (b'O', vals(t)),
    }
}

fn len16(len: usize) -> i16 {
    i16::try_from(len).unwrap_or(i16::MAX)
}

/// A message being written, field by field, big-endian as the protocol wants.
#[derive(Debug, Default)]
pub struct Out(pub Vec<u8>);

impl Out {
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    pub fn i16(&mut self, v: i16) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn i32(&mut self, v: i32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    /// A NUL-terminated string.
    pub fn string(&mut self, s: &str) -> &mut Self {
        self.0.extend_from_slice(s.as_bytes());
        self.0.push(0);
        self
    }
    /// An Int32 length and the bytes.
    pub fn bytes32(&mut self, b: &[u8]) -> &mut Self {
        self.i32(i32::try_from(b.len()).unwrap_or(i32::MAX));
        self.0.extend_from_slice(b);
        self
    }
    fn xid(&mut self, xid: Option<Xid>) -> &mut Self {
        if let Some(xid) = xid {
            self.u32(xid.0);
        }
        self
    }
    /// A TupleData: Int16 count, then each column.
    pub fn tuple(&mut self, values: &[Val]) -> &mut Self {
        self.i16(len16(values.len()));
        for value in values {
            match value {
                Val::Null => self.u8(b'n'),
                Val::Unchanged => self.u8(b'u'),
                Val::Text(b) => self.u8(b't').bytes32(b),
                Val::Binary(b) => self.u8(b'b').bytes32(b),
            };
        }
        self
    }
}
