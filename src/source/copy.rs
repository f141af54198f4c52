//! A reader of PostgreSQL's COPY text format (`COPY … TO STDOUT`), the initial snapshot's wire
//! format: rows end with `\n`, fields are separated by tabs, `\N` is NULL, and backslash escapes
//! the rest. Fields come out as byte slices of the input where no escape occurs (most of them),
//! so parsing a value into Arrow needs no allocation per value.

use std::fmt;

/// The COPY stream ended inside a row, or holds an escape COPY TO never writes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CopyError {
    /// The stream ended without the row's newline.
    #[error("COPY data ends inside row {row}")]
    Truncated {
        /// 0-based row number.
        row: u64,
    },
    /// A backslash at the end of a field, or before a character COPY never escapes.
    #[error("COPY data row {row}, field {field}: bad escape sequence")]
    BadEscape {
        /// 0-based row number.
        row: u64,
        /// 0-based field number.
        field: usize,
    },
}

/// Splits COPY text data into rows and fields. Feed it the stream's chunks with
/// [`CopyReader::push`]; it calls back once per complete row with the row's fields.
#[derive(Default)]
pub struct CopyReader {
    /// Bytes of a row that has started in an earlier chunk.
    pending: Vec<u8>,
    /// Unescaped field bytes, reused across rows.
    scratch: Vec<u8>,
    /// Where each unescaped field lies in `scratch` (`None` for NULL).
    spans: Vec<Option<(usize, usize)>>,
    /// Field bounds of a row without escapes, reused: PostgreSQL sends each row of COPY in a
    /// message of its own, so a vector per chunk would be an allocation (or two) per row.
    bounds: Vec<(usize, usize)>,
    rows: u64,
}

impl fmt::Debug for CopyReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CopyReader")
            .field("rows", &self.rows)
            .field("pending_bytes", &self.pending.len())
            .finish()
    }
}

/// The fields of one row, borrowed from the input or from the reader's scratch buffer.
pub struct Row<'a> {
    source: RowSource<'a>,
}

enum RowSource<'a> {
    /// No escapes in the row: fields are slices of the line.
    Raw {
        line: &'a [u8],
        bounds: &'a [(usize, usize)],
    },
    /// The row had escapes: fields were unescaped into the scratch buffer.
    Unescaped {
        scratch: &'a [u8],
        spans: &'a [Option<(usize, usize)>],
    },
}

impl fmt::Debug for Row<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // never the values: rows stay out of logs
        f.debug_struct("Row").field("fields", &self.len()).finish()
    }
}

impl<'a> Row<'a> {
    /// How many fields the row has.
    pub fn len(&self) -> usize {
        match &self.source {
            RowSource::Raw { bounds, .. } => bounds.len(),
            RowSource::Unescaped { spans, .. } => spans.len(),
        }
    }

    /// Whether the row has no fields (never true for COPY output, which has at least one).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Field `i`: `None` for NULL; out of range is `None` too.
    pub fn get(&self, i: usize) -> Option<&'a [u8]> {
        match &self.source {
            RowSource::Raw { line, bounds } => {
                let (start, end) = *bounds.get(i)?;
                let field = line.get(start..end)?;
                if field == b"\\N" { None } else { Some(field) }
            }
            RowSource::Unescaped { scratch, spans } => {
                let (start, end) = (*spans.get(i)?)?;
                scratch.get(start..end)
            }
        }
    }
}

impl CopyReader {
    /// A reader at the start of a COPY stream.
    pub fn new() -> Self {
        CopyReader::default()
    }

    /// Rows read so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Reads every complete row of `chunk` (after what is pending from earlier chunks),
    /// calling `on_row` for each; keeps a trailing partial row for the next chunk.
    pub fn push<E>(
        &mut self,
        chunk: &[u8],
        mut on_row: impl FnMut(&Row<'_>) -> Result<(), E>,
    ) -> Result<(), E>
    where
        E: From<CopyError>,
    {
        let mut rest = chunk;
        if !self.pending.is_empty() {
            match memchr_newline(rest) {
                None => {
                    self.pending.extend_from_slice(rest);
                    return Ok(());
                }
                Some(at) => {
                    let mut line = std::mem::take(&mut self.pending);
                    line.extend_from_slice(&rest[..at]);
                    rest = &rest[at + 1..];
                    let result = self.row(&line, &mut on_row);
                    line.clear();
                    self.pending = line;
                    result?;
                }
            }
        }
        // (lost on an error, after which the reader is not used again)
        let mut bounds = std::mem::take(&mut self.bounds);
        while let Some(at) = memchr_newline(rest) {
            let line = &rest[..at];
            rest = &rest[at + 1..];
            if line.contains(&b'\\') && !is_only_null_escapes(line) {
                self.row(line, &mut on_row)?;
            } else {
                bounds.clear();
                split_fields(line, &mut bounds);
                on_row(&Row {
                    source: RowSource::Raw {
                        line,
                        bounds: &bounds,
                    },
                })?;
                self.rows += 1;
            }
        }
        self.bounds = bounds;
        self.pending.extend_from_slice(rest);
        Ok(())
    }

    /// Checks that the stream ended on a row boundary.
    pub fn finish(&self) -> Result<(), CopyError> {
        if self.pending.is_empty() {
            Ok(())
        } else {
            Err(CopyError::Truncated { row: self.rows })
        }
    }

    /// One row that holds escapes: unescape its fields into the scratch buffer.
    fn row<E: From<CopyError>>(
        &mut self,
        line: &[u8],
        on_row: &mut impl FnMut(&Row<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        self.scratch.clear();
        self.spans.clear();
        let mut bounds = Vec::new();
        split_fields(line, &mut bounds);
        for (field_no, &(start, end)) in bounds.iter().enumerate() {
            let field = &line[start..end];
            if field == b"\\N" {
                self.spans.push(None);
                continue;
            }
            let from = self.scratch.len();
            let mut bytes = field.iter();
            while let Some(&b) = bytes.next() {
                if b != b'\\' {
                    self.scratch.push(b);
                    continue;
                }
                let escaped = match bytes.next() {
                    Some(b'\\') => b'\\',
                    Some(b'n') => b'\n',
                    Some(b'r') => b'\r',
                    Some(b't') => b'\t',
                    Some(b'b') => 0x08,
                    Some(b'f') => 0x0c,
                    Some(b'v') => 0x0b,
                    _ => {
                        return Err(CopyError::BadEscape {
                            row: self.rows,
                            field: field_no,
                        }
                        .into());
                    }
                };
                self.scratch.push(escaped);
            }
            self.spans.push(Some((from, self.scratch.len())));
        }
        on_row(&Row {
            source: RowSource::Unescaped {
                scratch: &self.scratch,
                spans: &self.spans,
            },
        })?;
        self.rows += 1;
        Ok(())
    }
}

fn memchr_newline(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n')
}

/// Tab-separated field bounds of `line` (escaped tabs are `\t`, never a raw tab).
fn split_fields(line: &[u8], bounds: &mut Vec<(usize, usize)>) {
    let mut start = 0;
    for (i, &b) in line.iter().enumerate() {
        if b == b'\t' {
            bounds.push((start, i));
            start = i + 1;
        }
    }
    bounds.push((start, line.len()));
}

/// Whether every backslash in `line` belongs to a whole-field `\N`, so the raw path applies.
fn is_only_null_escapes(line: &[u8]) -> bool {
    line.split(|&b| b == b'\t')
        .all(|field| field == b"\\N" || !field.contains(&b'\\'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type Fields = Vec<Option<Vec<u8>>>;

    fn read_all(chunks: &[&[u8]]) -> Result<Vec<Fields>, CopyError> {
        let mut reader = CopyReader::new();
        let mut rows = Vec::new();
        for chunk in chunks {
            reader.push(chunk, |row: &Row<'_>| {
                rows.push(
                    (0..row.len())
                        .map(|i| row.get(i).map(<[u8]>::to_vec))
                        .collect(),
                );
                Ok::<(), CopyError>(())
            })?;
        }
        reader.finish()?;
        Ok(rows)
    }

    /// Writes fields the way COPY TO does.
    fn encode(rows: &[Fields]) -> Vec<u8> {
        let mut out = Vec::new();
        for row in rows {
            for (i, field) in row.iter().enumerate() {
                if i > 0 {
                    out.push(b'\t');
                }
                match field {
                    None => out.extend_from_slice(b"\\N"),
                    Some(bytes) => {
                        for &b in bytes {
                            match b {
                                b'\\' => out.extend_from_slice(b"\\\\"),
                                b'\n' => out.extend_from_slice(b"\\n"),
                                b'\r' => out.extend_from_slice(b"\\r"),
                                b'\t' => out.extend_from_slice(b"\\t"),
                                0x08 => out.extend_from_slice(b"\\b"),
                                0x0c => out.extend_from_slice(b"\\f"),
                                0x0b => out.extend_from_slice(b"\\v"),
                                other => out.push(other),
                            }
                        }
                    }
                }
            }
            out.push(b'\n');
        }
        out
    }

    #[test]
    fn fields_nulls_and_escapes() -> Result<(), CopyError> {
        let rows = read_all(&[b"1\tab\\tc\t\\N\n2\t\\\\N\t\n"])?;
        assert_eq!(
            rows,
            vec![
                vec![Some(b"1".to_vec()), Some(b"ab\tc".to_vec()), None],
                // `\\N` is the two characters backslash and N, not NULL; an empty field is ''
                vec![Some(b"2".to_vec()), Some(b"\\N".to_vec()), Some(Vec::new())],
            ]
        );
        Ok(())
    }

    #[test]
    fn rows_split_across_chunks_are_joined() -> Result<(), CopyError> {
        let rows = read_all(&[b"1\thel", b"lo\n2\tw", b"", b"orld\n"])?;
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1][1].as_deref(), Some(&b"world"[..]));
        Ok(())
    }

    #[test]
    fn a_cut_stream_and_a_bad_escape_are_errors() {
        assert_eq!(read_all(&[b"1\t2"]), Err(CopyError::Truncated { row: 0 }));
        assert_eq!(
            read_all(&[b"1\tx\\q\n"]),
            Err(CopyError::BadEscape { row: 0, field: 1 })
        );
        assert_eq!(
            read_all(&[b"ok\n1\tx\\\n"]),
            Err(CopyError::BadEscape { row: 1, field: 1 })
        );
    }

    proptest! {
        #[test]
        fn what_copy_writes_reads_back(
            rows in prop::collection::vec(
                prop::collection::vec(prop::option::of(prop::collection::vec(any::<u8>(), 0..12)), 1..5),
                0..8,
            ),
            cut in any::<prop::sample::Index>(),
        ) {
            let bytes = encode(&rows);
            let at = if bytes.is_empty() { 0 } else { cut.index(bytes.len()) };
            let (a, b) = bytes.split_at(at);
            prop_assert_eq!(read_all(&[a, b]), Ok(rows));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = read_all(&[&bytes]);
        }
    }
}
