//! A reader of PostgreSQL's binary COPY format (`COPY … TO STDOUT (FORMAT binary)`), the
//! initial snapshot's wire format. The server spends far less on `int4send` or
//! `timestamptz_send` than on their text output, and fixed-width values need no parsing here.
//!
//! The stream is an 11-byte signature, a flags word and a header extension, then one tuple
//! per row: a 16-bit field count, and per field a 32-bit length (-1 for NULL) and that many
//! bytes; a field count of -1 ends the data. Fields come out as slices of the input.

use std::fmt;

/// The binary COPY signature.
const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// What is wrong with binary COPY data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BinaryCopyError {
    /// The data does not start with the binary COPY signature.
    #[error("binary COPY data without its signature")]
    Signature,
    /// The header sets a flag this reader does not know (only OIDs would be, and they are
    /// never asked for).
    #[error("binary COPY header flags {0:#x} are not supported")]
    Flags(u32),
    /// The stream ended inside the header or a row.
    #[error("binary COPY data ends inside row {row}")]
    Truncated {
        /// 0-based row number.
        row: u64,
    },
    /// A row with a field count other than the columns asked for, or a negative length other
    /// than -1.
    #[error("binary COPY row {row}: {what}")]
    Malformed {
        /// 0-based row number.
        row: u64,
        /// What is wrong.
        what: String,
    },
    /// Data after the end marker.
    #[error("binary COPY data continues after its end marker")]
    AfterEnd,
}

/// Splits binary COPY data into rows and fields. Feed it the stream's chunks with
/// [`BinaryCopyReader::push`]; it calls back once per complete row.
pub struct BinaryCopyReader {
    columns: usize,
    /// Bytes not yet consumed: a header or row that has started in an earlier chunk.
    pending: Vec<u8>,
    header_read: bool,
    ended: bool,
    /// Field bounds of the current row (`None` for NULL), reused.
    fields: Vec<Option<(usize, usize)>>,
    rows: u64,
}

impl fmt::Debug for BinaryCopyReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BinaryCopyReader")
            .field("columns", &self.columns)
            .field("rows", &self.rows)
            .field("pending_bytes", &self.pending.len())
            .finish()
    }
}

/// The fields of one row, borrowed from the input.
#[derive(Clone, Copy)]
pub struct BinaryRow<'a> {
    data: &'a [u8],
    fields: &'a [Option<(usize, usize)>],
}

impl fmt::Debug for BinaryRow<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // never the values: rows stay out of logs
        f.debug_struct("BinaryRow")
            .field("fields", &self.fields.len())
            .finish()
    }
}

impl<'a> BinaryRow<'a> {
    /// How many fields the row has.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether the row has no field.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Field `i`'s bytes, `None` for NULL (or past the last field).
    pub fn get(&self, i: usize) -> Option<&'a [u8]> {
        let (start, end) = (*self.fields.get(i)?)?;
        Some(&self.data[start..end])
    }
}

/// How a parse of the buffered bytes ended.
enum Step {
    /// A row (or the header, or the end marker) was taken, `usize` bytes of it.
    Took(usize),
    /// More bytes are needed.
    NeedMore,
}

impl BinaryCopyReader {
    /// A reader of rows of `columns` fields.
    pub fn new(columns: usize) -> Self {
        BinaryCopyReader {
            columns,
            pending: Vec::new(),
            header_read: false,
            ended: false,
            fields: Vec::with_capacity(columns),
            rows: 0,
        }
    }

    /// Rows read so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Takes the next chunk of the stream, calling `row` for each row it completes. Stops at
    /// the first error of `row`.
    pub fn push<E: From<BinaryCopyError>>(
        &mut self,
        chunk: &[u8],
        mut row: impl FnMut(BinaryRow<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        // the common case: nothing pending, whole rows in the chunk, parsed in place
        if self.pending.is_empty() {
            let taken = self.consume(chunk, &mut row)?;
            self.pending.extend_from_slice(&chunk[taken..]);
            return Ok(());
        }
        self.pending.extend_from_slice(chunk);
        let pending = std::mem::take(&mut self.pending);
        let result = self.consume(&pending, &mut row);
        self.pending = pending;
        let taken = result?;
        self.pending.drain(..taken);
        Ok(())
    }

    /// Checks that the data ended with its end marker and nothing after it.
    pub fn finish(&self) -> Result<(), BinaryCopyError> {
        if !self.ended {
            return Err(BinaryCopyError::Truncated { row: self.rows });
        }
        Ok(())
    }

    /// Parses as many complete items of `data` as there are; returns the bytes taken.
    fn consume<E: From<BinaryCopyError>>(
        &mut self,
        data: &[u8],
        row: &mut impl FnMut(BinaryRow<'_>) -> Result<(), E>,
    ) -> Result<usize, E> {
        let mut at = 0;
        loop {
            if at == data.len() {
                return Ok(at);
            }
            if self.ended {
                return Err(BinaryCopyError::AfterEnd.into());
            }
            let step = if self.header_read {
                self.row_at(data, at, row)?
            } else {
                self.header_at(&data[at..])?
            };
            match step {
                Step::Took(n) => at += n,
                Step::NeedMore => return Ok(at),
            }
        }
    }

    fn header_at(&mut self, data: &[u8]) -> Result<Step, BinaryCopyError> {
        let fixed = SIGNATURE.len() + 8;
        if data.len() < fixed {
            if !SIGNATURE.starts_with(&data[..data.len().min(SIGNATURE.len())]) {
                return Err(BinaryCopyError::Signature);
            }
            return Ok(Step::NeedMore);
        }
        if &data[..SIGNATURE.len()] != SIGNATURE {
            return Err(BinaryCopyError::Signature);
        }
        let flags = be_u32(&data[11..15]);
        // bit 16: OIDs included; bits 0-15 are critical flags, unknown ones refused
        if flags != 0 {
            return Err(BinaryCopyError::Flags(flags));
        }
        let extension = be_u32(&data[15..19]) as usize;
        if data.len() < fixed + extension {
            return Ok(Step::NeedMore);
        }
        self.header_read = true;
        Ok(Step::Took(fixed + extension))
    }

    fn row_at<E: From<BinaryCopyError>>(
        &mut self,
        data: &[u8],
        start: usize,
        row: &mut impl FnMut(BinaryRow<'_>) -> Result<(), E>,
    ) -> Result<Step, E> {
        let Some(count) = data.get(start..start + 2) else {
            return Ok(Step::NeedMore);
        };
        let count = i16::from_be_bytes([count[0], count[1]]);
        if count == -1 {
            self.ended = true;
            return Ok(Step::Took(2));
        }
        if count < 0 || count as usize != self.columns {
            return Err(BinaryCopyError::Malformed {
                row: self.rows,
                what: format!("{count} fields for {} columns", self.columns),
            }
            .into());
        }
        self.fields.clear();
        let mut at = start + 2;
        for _ in 0..count {
            let Some(length) = data.get(at..at + 4) else {
                return Ok(Step::NeedMore);
            };
            let length = i32::from_be_bytes([length[0], length[1], length[2], length[3]]);
            at += 4;
            if length == -1 {
                self.fields.push(None);
                continue;
            }
            let Ok(length) = usize::try_from(length) else {
                return Err(BinaryCopyError::Malformed {
                    row: self.rows,
                    what: format!("a field of length {length}"),
                }
                .into());
            };
            if data.len() < at + length {
                return Ok(Step::NeedMore);
            }
            self.fields.push(Some((at, at + length)));
            at += length;
        }
        row(BinaryRow {
            data,
            fields: &self.fields,
        })?;
        self.rows += 1;
        Ok(Step::Took(at - start))
    }
}

fn be_u32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Binary COPY data of `rows` (each field `None` for NULL), with its header and end.
    fn encode(rows: &[Vec<Option<&[u8]>>]) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        for row in rows {
            out.extend_from_slice(&(row.len() as i16).to_be_bytes());
            for field in row {
                match field {
                    None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(bytes) => {
                        out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
                        out.extend_from_slice(bytes);
                    }
                }
            }
        }
        out.extend_from_slice(&(-1i16).to_be_bytes());
        out
    }

    fn read(
        data: &[u8],
        chunk: usize,
        columns: usize,
    ) -> Result<Vec<Vec<Option<Vec<u8>>>>, BinaryCopyError> {
        let mut reader = BinaryCopyReader::new(columns);
        let mut rows = Vec::new();
        for piece in data.chunks(chunk.max(1)) {
            reader.push(piece, |row: BinaryRow<'_>| -> Result<(), BinaryCopyError> {
                rows.push(
                    (0..row.len())
                        .map(|i| row.get(i).map(<[u8]>::to_vec))
                        .collect(),
                );
                Ok(())
            })?;
        }
        reader.finish()?;
        Ok(rows)
    }

    #[test]
    fn rows_come_out_whatever_the_chunking() {
        let rows: Vec<Vec<Option<&[u8]>>> = vec![
            vec![Some(b"\x00\x00\x00\x01"), None, Some(b"")],
            vec![None, Some(b"hello"), Some(b"\xff")],
        ];
        let data = encode(&rows);
        let expected: Vec<Vec<Option<Vec<u8>>>> = rows
            .iter()
            .map(|r| r.iter().map(|f| f.map(<[u8]>::to_vec)).collect())
            .collect();
        for chunk in [1, 2, 3, 7, 19, 20, data.len()] {
            assert_eq!(read(&data, chunk, 3), Ok(expected.clone()), "chunk {chunk}");
        }
    }

    #[test]
    fn bad_data_gets_a_named_error() {
        let good = encode(&[vec![Some(b"ab")]]);
        assert_eq!(
            read(b"PGCOPY\nxx\r\n\0........", 64, 1),
            Err(BinaryCopyError::Signature)
        );
        assert_eq!(
            read(&good[..good.len() - 2], 64, 1),
            Err(BinaryCopyError::Truncated { row: 1 })
        );
        assert!(matches!(
            read(&good, 64, 2),
            Err(BinaryCopyError::Malformed { row: 0, .. })
        ));
        let mut after = good.clone();
        after.push(0);
        assert_eq!(read(&after, 64, 1), Err(BinaryCopyError::AfterEnd));
        let mut flagged = good;
        flagged[11..15].copy_from_slice(&0x0001_0000u32.to_be_bytes());
        assert_eq!(
            read(&flagged, 64, 1),
            Err(BinaryCopyError::Flags(0x0001_0000))
        );
    }
}
