//! The decoded pgoutput messages: one type per message kind, each field named after PostgreSQL's
//! documentation, names and values borrowed from the message bytes; plus the identifiers and
//! times they carry ([`Xid`], [`PgTimestamp`]).

use std::fmt;

use super::tuple::TupleData;
use crate::Lsn;
use crate::source::{Oid, RelationId};
pub use crate::table::ReplicaIdentity;

/// A transaction id (`xid`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Xid(pub u32);

impl fmt::Display for Xid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for Xid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Xid({})", self.0)
    }
}

/// A PostgreSQL timestamp as pgoutput sends it: microseconds since 2000-01-01 00:00:00 UTC
/// (PostgreSQL's epoch), kept raw so nothing is lost in conversion.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PgTimestamp(pub i64);

impl PgTimestamp {
    /// PostgreSQL's epoch (2000-01-01) in microseconds since the Unix epoch (1970-01-01).
    pub const POSTGRES_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

    /// Microseconds since the Unix epoch; `None` if that overflows an i64 (only for values
    /// within 30 years of the i64 range's end, which PostgreSQL never sends as commit times).
    pub fn unix_micros(self) -> Option<i64> {
        self.0.checked_add(Self::POSTGRES_EPOCH_UNIX_MICROS)
    }
}

impl fmt::Debug for PgTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgTimestamp({})", self.0)
    }
}

/// The kinds of pgoutput message, each named by its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// `B`: a transaction begins.
    Begin,
    /// `C`: a transaction commits.
    Commit,
    /// `O`: the transaction came from another node (replication origin).
    Origin,
    /// `R`: the description of a table.
    Relation,
    /// `Y`: the description of a non-built-in data type.
    Type,
    /// `I`: a row was inserted.
    Insert,
    /// `U`: a row was updated.
    Update,
    /// `D`: a row was deleted.
    Delete,
    /// `T`: tables were truncated.
    Truncate,
    /// `M`: a logical decoding message (`pg_logical_emit_message`).
    LogicalMessage,
    /// `S`: a block of a streamed in-progress transaction begins (protocol version 2).
    StreamStart,
    /// `E`: a block of a streamed transaction ends (protocol version 2).
    StreamStop,
    /// `c`: a streamed transaction commits (protocol version 2).
    StreamCommit,
    /// `A`: a streamed transaction or subtransaction aborts (protocol version 2).
    StreamAbort,
}

impl MessageKind {
    /// The kind named by a message's first byte, if this decoder knows it.
    pub fn from_tag(tag: u8) -> Option<MessageKind> {
        Some(match tag {
            b'B' => MessageKind::Begin,
            b'C' => MessageKind::Commit,
            b'O' => MessageKind::Origin,
            b'R' => MessageKind::Relation,
            b'Y' => MessageKind::Type,
            b'I' => MessageKind::Insert,
            b'U' => MessageKind::Update,
            b'D' => MessageKind::Delete,
            b'T' => MessageKind::Truncate,
            b'M' => MessageKind::LogicalMessage,
            b'S' => MessageKind::StreamStart,
            b'E' => MessageKind::StreamStop,
            b'c' => MessageKind::StreamCommit,
            b'A' => MessageKind::StreamAbort,
            _ => return None,
        })
    }

    /// The message's first byte.
    pub fn tag(self) -> u8 {
        match self {
            MessageKind::Begin => b'B',
            MessageKind::Commit => b'C',
            MessageKind::Origin => b'O',
            MessageKind::Relation => b'R',
            MessageKind::Type => b'Y',
            MessageKind::Insert => b'I',
            MessageKind::Update => b'U',
            MessageKind::Delete => b'D',
            MessageKind::Truncate => b'T',
            MessageKind::LogicalMessage => b'M',
            MessageKind::StreamStart => b'S',
            MessageKind::StreamStop => b'E',
            MessageKind::StreamCommit => b'c',
            MessageKind::StreamAbort => b'A',
        }
    }

    /// The name PostgreSQL's documentation gives the message.
    pub fn name(self) -> &'static str {
        match self {
            MessageKind::Begin => "Begin",
            MessageKind::Commit => "Commit",
            MessageKind::Origin => "Origin",
            MessageKind::Relation => "Relation",
            MessageKind::Type => "Type",
            MessageKind::Insert => "Insert",
            MessageKind::Update => "Update",
            MessageKind::Delete => "Delete",
            MessageKind::Truncate => "Truncate",
            MessageKind::LogicalMessage => "Message",
            MessageKind::StreamStart => "Stream Start",
            MessageKind::StreamStop => "Stream Stop",
            MessageKind::StreamCommit => "Stream Commit",
            MessageKind::StreamAbort => "Stream Abort",
        }
    }
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    /// A transaction begins.
    Begin(Begin),
    /// A transaction commits.
    Commit(Commit),
    /// The transaction came from another node.
    Origin(Origin<'a>),
    /// The description of a table, sent before its first change in a session and after every
    /// change of its definition.
    Relation(Relation<'a>),
    /// The description of a non-built-in data type used by a column.
    Type(Type<'a>),
    /// A row was inserted.
    Insert(Insert<'a>),
    /// A row was updated.
    Update(Update<'a>),
    /// A row was deleted.
    Delete(Delete<'a>),
    /// Tables were truncated.
    Truncate(Truncate<'a>),
    /// A logical decoding message.
    Logical(LogicalMessage<'a>),
    /// A block of a streamed transaction begins.
    StreamStart(StreamStart),
    /// A block of a streamed transaction ends.
    StreamStop,
    /// A streamed transaction commits.
    StreamCommit(StreamCommit),
    /// A streamed transaction or subtransaction aborts.
    StreamAbort(StreamAbort),
}

impl Message<'_> {
    /// The message's kind.
    pub fn kind(&self) -> MessageKind {
        match self {
            Message::Begin(_) => MessageKind::Begin,
            Message::Commit(_) => MessageKind::Commit,
            Message::Origin(_) => MessageKind::Origin,
            Message::Relation(_) => MessageKind::Relation,
            Message::Type(_) => MessageKind::Type,
            Message::Insert(_) => MessageKind::Insert,
            Message::Update(_) => MessageKind::Update,
            Message::Delete(_) => MessageKind::Delete,
            Message::Truncate(_) => MessageKind::Truncate,
            Message::Logical(_) => MessageKind::LogicalMessage,
            Message::StreamStart(_) => MessageKind::StreamStart,
            Message::StreamStop => MessageKind::StreamStop,
            Message::StreamCommit(_) => MessageKind::StreamCommit,
            Message::StreamAbort(_) => MessageKind::StreamAbort,
        }
    }
}

/// Begin (`B`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Begin {
    /// The LSN of the transaction's commit record (its end), known up front because pgoutput
    /// sends a transaction only once it has committed.
    pub final_lsn: Lsn,
    /// When the transaction committed.
    pub commit_time: PgTimestamp,
    /// The transaction's id.
    pub xid: Xid,
}

/// Commit (`C`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    /// Flags; unused by PostgreSQL so far (0), kept as sent.
    pub flags: u8,
    /// The LSN of the commit record: the position a checkpoint records.
    pub commit_lsn: Lsn,
    /// The LSN just past the commit record.
    pub end_lsn: Lsn,
    /// When the transaction committed.
    pub commit_time: PgTimestamp,
}

/// Origin (`O`): the transaction was replicated here from another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin<'a> {
    /// The LSN of the commit on the origin node.
    pub commit_lsn: Lsn,
    /// The origin's name.
    pub name: &'a str,
}

/// Relation (`R`): how the rows of a table are laid out in the tuples that follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation<'a> {
    /// The streamed transaction's id (in a streamed block only).
    pub xid: Option<Xid>,
    /// The table's oid, which the tuple messages refer to.
    pub id: RelationId,
    /// The schema (empty for `pg_catalog`).
    pub namespace: &'a str,
    /// The table's name.
    pub name: &'a str,
    /// Which old values updates and deletes carry.
    pub replica_identity: ReplicaIdentity,
    /// The columns, in tuple order (generated columns are not sent).
    pub columns: Vec<Column<'a>>,
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column<'a> {
    /// Flags as sent: bit 1 marks a column of the replica identity key.
    pub flags: u8,
    /// The column's name.
    pub name: &'a str,
    /// The column's data type.
    pub type_oid: Oid,
    /// The type modifier (`atttypmod`; -1 for none), such as the precision of a numeric.
    pub type_modifier: i32,
}

impl Column<'_> {
    /// Whether the column is part of the replica identity key.
    pub fn is_key(&self) -> bool {
        self.flags & 1 != 0
    }
}

/// Type (`Y`): the name of a data type that is not built in, sent before the first Relation
/// that uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Type<'a> {
    /// The streamed transaction's id (in a streamed block only).
    pub xid: Option<Xid>,
    /// The type's oid.
    pub id: Oid,
    /// The type's schema (empty for `pg_catalog`).
    pub namespace: &'a str,
    /// The type's name.
    pub name: &'a str,
}

/// Insert (`I`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insert<'a> {
    /// The streamed transaction's id (in a streamed block only).
    pub xid: Option<Xid>,
    /// The table.
    pub relation: RelationId,
    /// The inserted row.
    pub new: TupleData<'a>,
}

/// Update (`U`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Update<'a> {
    /// The streamed transaction's id (in a streamed block only).
    pub xid: Option<Xid>,
    /// The table.
    pub relation: RelationId,
    /// The old key or row: sent when the key changed (`K`) or under `REPLICA IDENTITY FULL`
    /// (`O`); absent when the key kept its value.
    pub old: Option<OldTuple<'a>>,
    /// The new row; unchanged TOASTed values are
    /// [`Value::UnchangedToast`](super::Value::UnchangedToast).
    pub new: TupleData<'a>,
}

/// Delete (`D`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delete<'a> {
    /// The streamed transaction's id (in a streamed block only).
    pub xid: Option<Xid>,
    /// The table.
    pub relation: RelationId,
    /// The deleted row's key or whole row.
    pub old: OldTuple<'a>,
}

/// The old values an Update or Delete carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldTuple<'a> {
    /// `K`: the replica identity key columns; the others are NULL.
    Key(TupleData<'a>),
    /// `O`: the whole old row (`REPLICA IDENTITY FULL`).
    Row(TupleData<'a>),
}

impl<'a> OldTuple<'a> {
    /// The tuple, key or whole row.
    pub fn tuple(&self) -> TupleData<'a> {
        match *self {
            OldTuple::Key(tuple) | OldTuple::Row(tuple) => tuple,
        }
    }
}

/// Truncate (`T`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncate<'a> {
    /// The streamed transaction's id (in a streamed block only).
    pub xid: Option<Xid>,
    /// Option bits as sent: 1 is `CASCADE`, 2 is `RESTART IDENTITY`.
    pub options: u8,
    /// The truncated tables.
    pub relations: RelationIds<'a>,
}

impl Truncate<'_> {
    /// Whether `TRUNCATE … CASCADE` was used.
    pub fn cascade(&self) -> bool {
        self.options & 1 != 0
    }

    /// Whether `TRUNCATE … RESTART IDENTITY` was used.
    pub fn restart_identity(&self) -> bool {
        self.options & 2 != 0
    }
}

/// The relation ids of a [`Truncate`], read from the message as they are iterated.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RelationIds<'a> {
    /// Int32 ids, a multiple of 4 bytes (checked at decode time).
    pub(super) bytes: &'a [u8],
}

impl<'a> RelationIds<'a> {
    /// How many tables were truncated.
    pub fn len(&self) -> usize {
        self.bytes.len() / 4
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The relation ids, in the order sent.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = RelationId> + 'a {
        let (ids, _) = self.bytes.as_chunks::<4>();
        ids.iter().map(|id| RelationId(u32::from_be_bytes(*id)))
    }
}

impl fmt::Debug for RelationIds<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Message (`M`): a logical decoding message written with `pg_logical_emit_message`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogicalMessage<'a> {
    /// The streamed transaction's id (in a streamed block only).
    pub xid: Option<Xid>,
    /// Flags as sent: 1 marks a transactional message.
    pub flags: u8,
    /// The LSN of the message.
    pub lsn: Lsn,
    /// The prefix given by the writer, which says who the message is for.
    pub prefix: &'a str,
    /// The content, arbitrary bytes.
    pub content: &'a [u8],
}

impl LogicalMessage<'_> {
    /// Whether the message was part of its transaction (sent between its Begin and Commit)
    /// rather than sent at once.
    pub fn is_transactional(&self) -> bool {
        self.flags & 1 != 0
    }
}

/// Stream Start (`S`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamStart {
    /// The streamed transaction.
    pub xid: Xid,
    /// Whether this is the transaction's first block.
    pub first_segment: bool,
}

/// Stream Commit (`c`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamCommit {
    /// The streamed transaction.
    pub xid: Xid,
    /// Flags; unused by PostgreSQL so far (0), kept as sent.
    pub flags: u8,
    /// The LSN of the commit record.
    pub commit_lsn: Lsn,
    /// The LSN just past the commit record.
    pub end_lsn: Lsn,
    /// When the transaction committed.
    pub commit_time: PgTimestamp,
}

/// Stream Abort (`A`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamAbort {
    /// The streamed (top-level) transaction.
    pub xid: Xid,
    /// The aborted subtransaction (equal to `xid` when the whole transaction aborts).
    pub subxid: Xid,
    /// The abort's LSN and time, sent only with protocol version 4 and parallel streaming.
    pub abort: Option<AbortPoint>,
}

/// Where and when a streamed transaction aborted (protocol version 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortPoint {
    /// The LSN of the abort record.
    pub lsn: Lsn,
    /// When the transaction aborted.
    pub time: PgTimestamp,
}
