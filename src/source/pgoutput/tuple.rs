//! TupleData, the row part of Insert, Update and Delete messages: checked once when the message
//! is decoded, then iterated column by column without allocating, each value borrowing from the
//! message bytes.

use std::fmt;

use super::error::{DecodeError, Field, Problem};
use super::reader::Reader;

/// The columns of one row as pgoutput sent them, in the order of the table's columns in the
/// latest Relation message (generated columns excluded).
///
/// Checked when the message is decoded, so iterating cannot fail. Columns are found by walking
/// the bytes: [`TupleData::iter`] is the way to read a whole row; [`TupleData::get`] walks to
/// its column each time.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TupleData<'a> {
    /// The encoded columns (everything after the Int16 column count), already validated.
    columns: &'a [u8],
    len: u16,
}

/// One column value of a [`TupleData`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    /// SQL NULL (`n`).
    Null,
    /// A TOASTed value the change left unchanged (`u`): pgoutput does not send it, so it must be
    /// taken from the old row or from an earlier version of the row. Never a NULL.
    UnchangedToast,
    /// The value in PostgreSQL's text output format (`t`), in the database's encoding.
    Text(&'a [u8]),
    /// The value in the type's binary send format (`b`; only when binary mode was requested).
    Binary(&'a [u8]),
}

impl<'a> Value<'a> {
    /// The bytes of a text or binary value; `None` for NULL and unchanged TOAST.
    pub fn bytes(&self) -> Option<&'a [u8]> {
        match *self {
            Value::Text(bytes) | Value::Binary(bytes) => Some(bytes),
            Value::Null | Value::UnchangedToast => None,
        }
    }
}

impl fmt::Debug for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("Null"),
            Value::UnchangedToast => f.write_str("UnchangedToast"),
            Value::Text(bytes) => write!(f, "Text(\"{}\")", bytes.escape_ascii()),
            Value::Binary(bytes) => write!(f, "Binary(\"{}\")", bytes.escape_ascii()),
        }
    }
}

impl<'a> TupleData<'a> {
    /// The number of columns.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Whether the row has no columns (a table without columns).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The values, in column order.
    pub fn iter(&self) -> Values<'a> {
        Values {
            rest: self.columns,
            left: self.len,
        }
    }

    /// The value of column `index` (0-based), walking the columns before it.
    pub fn get(&self, index: usize) -> Option<Value<'a>> {
        self.iter().nth(index)
    }
}

impl fmt::Debug for TupleData<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<'a> IntoIterator for TupleData<'a> {
    type Item = Value<'a>;
    type IntoIter = Values<'a>;

    fn into_iter(self) -> Values<'a> {
        self.iter()
    }
}

impl<'a> IntoIterator for &TupleData<'a> {
    type Item = Value<'a>;
    type IntoIter = Values<'a>;

    fn into_iter(self) -> Values<'a> {
        self.iter()
    }
}

/// The values of a [`TupleData`], in column order.
#[derive(Debug, Clone)]
pub struct Values<'a> {
    rest: &'a [u8],
    left: u16,
}

impl<'a> Iterator for Values<'a> {
    type Item = Value<'a>;

    fn next(&mut self) -> Option<Value<'a>> {
        if self.left == 0 {
            return None;
        }
        // The bytes were validated by `read`, so this finds every column; should it ever not,
        // the row ends early rather than panicking.
        let Some((value, rest)) = split_value(self.rest) else {
            self.left = 0;
            return None;
        };
        self.rest = rest;
        self.left -= 1;
        Some(value)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (usize::from(self.left), Some(usize::from(self.left)))
    }
}

impl ExactSizeIterator for Values<'_> {}

/// Splits one encoded column off the front of `bytes`.
fn split_value(bytes: &[u8]) -> Option<(Value<'_>, &[u8])> {
    let (&kind, rest) = bytes.split_first()?;
    match kind {
        b'n' => Some((Value::Null, rest)),
        b'u' => Some((Value::UnchangedToast, rest)),
        b't' | b'b' => {
            let (length, rest) = rest.split_first_chunk::<4>()?;
            let length = usize::try_from(i32::from_be_bytes(*length)).ok()?;
            let (data, rest) = rest.split_at_checked(length)?;
            let value = if kind == b't' {
                Value::Text(data)
            } else {
                Value::Binary(data)
            };
            Some((value, rest))
        }
        _ => None,
    }
}

/// Which tuple of a message is read, so errors say which one was malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TuplePart {
    /// The new row of an Insert or Update (`N`).
    New,
    /// The old key of an Update or Delete (`K`).
    OldKey,
    /// The old row of an Update or Delete under `REPLICA IDENTITY FULL` (`O`).
    OldRow,
}

impl TuplePart {
    /// Field names: (column count, value kind, value length, value bytes).
    fn fields(self) -> [&'static str; 4] {
        match self {
            TuplePart::New => [
                "new tuple column count",
                "new tuple value kind",
                "new tuple value length",
                "new tuple value",
            ],
            TuplePart::OldKey => [
                "old key column count",
                "old key value kind",
                "old key value length",
                "old key value",
            ],
            TuplePart::OldRow => [
                "old row column count",
                "old row value kind",
                "old row value length",
                "old row value",
            ],
        }
    }
}

/// Reads and validates one TupleData (Int16 column count, then the columns).
///
/// Every column consumes at least one byte or fails, so a huge column count costs no more
/// time than the message has bytes.
pub(super) fn read<'a>(
    reader: &mut Reader<'a>,
    part: TuplePart,
) -> Result<TupleData<'a>, DecodeError> {
    let [count_field, kind_field, length_field, value_field] = part.fields();
    let count = reader.count16(count_field)?;
    let start = reader.position();
    for index in 0..count {
        let kind_at = reader.position();
        match reader.u8(Field::of_column(kind_field, index))? {
            b'n' | b'u' => {}
            b't' | b'b' => {
                reader.counted_bytes(
                    Field::of_column(length_field, index),
                    Field::of_column(value_field, index),
                )?;
            }
            found => {
                return Err(reader.error_at(
                    kind_at,
                    Problem::UnexpectedByte {
                        field: Field::of_column(kind_field, index),
                        found,
                        expected: "'n', 'u', 't' or 'b'",
                    },
                ));
            }
        }
    }
    Ok(TupleData {
        columns: reader.since(start),
        len: count,
    })
}
