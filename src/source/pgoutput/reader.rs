//! A cursor over one pgoutput message: reads big-endian integers and NUL-terminated strings,
//! checking every length against the bytes left before taking them, and turns every shortfall
//! into a [`DecodeError`] carrying the message kind and the offset.

use super::MessageKind;
use super::error::{DecodeError, Field, Problem};

/// The read position in one message, which starts with its kind byte (offset 0).
#[derive(Debug)]
pub(super) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    kind: MessageKind,
}

impl<'a> Reader<'a> {
    /// A reader of `bytes`, a message of `kind`, positioned after the kind byte.
    pub(super) fn after_tag(bytes: &'a [u8], kind: MessageKind) -> Reader<'a> {
        Reader {
            bytes,
            pos: 1.min(bytes.len()),
            kind,
        }
    }

    /// The current offset from the message's first byte.
    pub(super) fn position(&self) -> usize {
        self.pos
    }

    /// How many bytes are left.
    pub(super) fn left(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    /// The bytes from offset `start` to the current position.
    pub(super) fn since(&self, start: usize) -> &'a [u8] {
        self.bytes.get(start..self.pos).unwrap_or_default()
    }

    /// An error at offset `at` of this message.
    pub(super) fn error_at(&self, at: usize, problem: Problem) -> DecodeError {
        DecodeError {
            kind: Some(self.kind),
            offset: at,
            problem,
        }
    }

    /// Takes the next `n` bytes, or fails naming `field` when fewer are left.
    pub(super) fn take(
        &mut self,
        n: usize,
        field: impl Into<Field>,
    ) -> Result<&'a [u8], DecodeError> {
        let rest = self.bytes.get(self.pos..).unwrap_or_default();
        match rest.get(..n) {
            Some(taken) => {
                self.pos += n;
                Ok(taken)
            }
            None => Err(self.error_at(
                self.pos,
                Problem::Truncated {
                    field: field.into(),
                    needed: n,
                    left: rest.len(),
                },
            )),
        }
    }

    fn array<const N: usize>(&mut self, field: impl Into<Field>) -> Result<[u8; N], DecodeError> {
        let field = field.into();
        let at = self.pos;
        let taken = self.take(N, field)?;
        taken.try_into().map_err(|_| {
            // `take` returned exactly N bytes; this arm only keeps the code free of panics.
            self.error_at(
                at,
                Problem::Truncated {
                    field,
                    needed: N,
                    left: taken.len(),
                },
            )
        })
    }

    /// An Int8 (one byte).
    pub(super) fn u8(&mut self, field: impl Into<Field>) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    /// An Int16.
    pub(super) fn i16(&mut self, field: impl Into<Field>) -> Result<i16, DecodeError> {
        self.array(field).map(i16::from_be_bytes)
    }

    /// An Int32 that is an identifier (an OID or an xid): unsigned.
    pub(super) fn u32(&mut self, field: impl Into<Field>) -> Result<u32, DecodeError> {
        self.array(field).map(u32::from_be_bytes)
    }

    /// An Int32 that is a number (a type modifier, a length): signed.
    pub(super) fn i32(&mut self, field: impl Into<Field>) -> Result<i32, DecodeError> {
        self.array(field).map(i32::from_be_bytes)
    }

    /// An Int64 that is a position (an LSN): unsigned.
    pub(super) fn u64(&mut self, field: impl Into<Field>) -> Result<u64, DecodeError> {
        self.array(field).map(u64::from_be_bytes)
    }

    /// An Int64 that is a number (a timestamp): signed.
    pub(super) fn i64(&mut self, field: impl Into<Field>) -> Result<i64, DecodeError> {
        self.array(field).map(i64::from_be_bytes)
    }

    /// An Int16 count, which must not be negative.
    pub(super) fn count16(&mut self, field: impl Into<Field>) -> Result<u16, DecodeError> {
        let field = field.into();
        let at = self.pos;
        let value = self.i16(field)?;
        u16::try_from(value).map_err(|_| {
            self.error_at(
                at,
                Problem::Negative {
                    field,
                    value: value.into(),
                },
            )
        })
    }

    /// An Int32 count or length, which must not be negative.
    pub(super) fn length32(&mut self, field: impl Into<Field>) -> Result<usize, DecodeError> {
        let field = field.into();
        let at = self.pos;
        let value = self.i32(field)?;
        usize::try_from(value).map_err(|_| {
            self.error_at(
                at,
                Problem::Negative {
                    field,
                    value: value.into(),
                },
            )
        })
    }

    /// An Int32 length followed by that many bytes.
    pub(super) fn counted_bytes(
        &mut self,
        length_field: impl Into<Field>,
        bytes_field: impl Into<Field>,
    ) -> Result<&'a [u8], DecodeError> {
        let length = self.length32(length_field)?;
        self.take(length, bytes_field)
    }

    /// A NUL-terminated string, which must be UTF-8 (the NUL is consumed, not returned).
    pub(super) fn string(&mut self, field: impl Into<Field>) -> Result<&'a str, DecodeError> {
        let field = field.into();
        let at = self.pos;
        let rest = self.bytes.get(at..).unwrap_or_default();
        let Some(end) = rest.iter().position(|&b| b == 0) else {
            return Err(self.error_at(at, Problem::Unterminated { field }));
        };
        let text = rest.get(..end).unwrap_or_default();
        let text = std::str::from_utf8(text)
            .map_err(|e| self.error_at(at + e.valid_up_to(), Problem::InvalidUtf8 { field }))?;
        self.pos = at + end + 1;
        Ok(text)
    }

    /// Checks that the whole message was read.
    pub(super) fn finish(self) -> Result<(), DecodeError> {
        match self.left() {
            0 => Ok(()),
            count => Err(self.error_at(self.pos, Problem::TrailingBytes { count })),
        }
    }
}
