//! What a malformed pgoutput message is reported as: the message kind, the byte offset where
//! decoding stopped, and a typed [`Problem`] saying what was expected there, so an operator can
//! match the report against a hex dump of the message.

use std::fmt;

use super::MessageKind;

/// A pgoutput message that could not be decoded.
///
/// Displayed as `Update at byte 37: truncated new tuple value of column 3: needs 1000 bytes,
/// 12 left`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} at byte {offset}: {problem}", kind_name(*.kind))]
pub struct DecodeError {
    /// The kind of message being decoded; `None` when its first byte names no known kind.
    pub kind: Option<MessageKind>,
    /// Offset, from the message's first byte (its kind byte, offset 0), of the field that
    /// could not be decoded.
    pub offset: usize,
    /// What was wrong there.
    pub problem: Problem,
}

fn kind_name(kind: Option<MessageKind>) -> &'static str {
    kind.map_or("pgoutput message", MessageKind::name)
}

/// What was wrong with a field of a pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// The message has no bytes at all.
    #[error("the message is empty")]
    Empty,

    /// The first byte names no message kind this decoder knows.
    #[error("unknown message kind byte 0x{tag:02X} ({})", char::from(*.tag).escape_default())]
    UnknownKind {
        /// The first byte of the message.
        tag: u8,
    },

    /// A field runs past the end of the message.
    #[error("truncated {field}: needs {needed} bytes, {left} left")]
    Truncated {
        /// The field being read.
        field: Field,
        /// How many bytes the field needs.
        needed: usize,
        /// How many bytes the message has left.
        left: usize,
    },

    /// A length or count field holds a negative number.
    #[error("{field} is negative ({value})")]
    Negative {
        /// The length or count field.
        field: Field,
        /// The value it holds.
        value: i64,
    },

    /// A string field has no terminating NUL byte before the end of the message.
    #[error("{field} has no terminating NUL byte")]
    Unterminated {
        /// The string field.
        field: Field,
    },

    /// A string field is not valid UTF-8 (the offset points at the first invalid byte).
    #[error("{field} is not valid UTF-8")]
    InvalidUtf8 {
        /// The string field.
        field: Field,
    },

    /// A byte that selects between alternatives holds none of them.
    #[error("{field} is 0x{found:02X} ({}), expected {expected}", char::from(*.found).escape_default())]
    UnexpectedByte {
        /// The field.
        field: Field,
        /// The byte found.
        found: u8,
        /// The bytes allowed there, as a phrase such as `'K', 'O' or 'N'`.
        expected: &'static str,
    },

    /// The message is complete but more bytes follow it.
    #[error("{count} trailing bytes after a complete message")]
    TrailingBytes {
        /// How many bytes follow the message.
        count: usize,
    },
}

/// A field of a pgoutput message, named for error messages; fields of a column (of a Relation
/// message or of a tuple) carry the column's number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// The field's name, such as `commit LSN` or `new tuple value`.
    pub name: &'static str,
    /// The column the field belongs to, numbered from 1 as PostgreSQL numbers attributes.
    pub column: Option<u16>,
}

impl Field {
    /// A field of the message itself.
    pub const fn new(name: &'static str) -> Field {
        Field { name, column: None }
    }

    /// A field of the column at `index` (0-based; displayed from 1).
    pub(super) fn of_column(name: &'static str, index: u16) -> Field {
        Field {
            name,
            column: Some(index.saturating_add(1)),
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.column {
            Some(column) => write!(f, "{} of column {column}", self.name),
            None => f.write_str(self.name),
        }
    }
}

impl From<&'static str> for Field {
    fn from(name: &'static str) -> Field {
        Field::new(name)
    }
}
