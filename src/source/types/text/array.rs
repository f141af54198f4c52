//! PostgreSQL's array literal (`array_out`): `{1,2,NULL}`, `{"a b","c\"d",NULL,"NULL"}`, `{}`.
//! Only one dimension is read: the column maps to a flat list, so a nested or re-based array
//! is refused by name rather than flattened (which would lose its shape).

use super::Reason;

/// Why an array literal was refused: its syntax, or one of its elements.
#[derive(Debug)]
pub(in crate::source::types) enum ArrayError<E> {
    /// The literal is malformed, or has a shape a list cannot hold.
    Syntax(Reason),
    /// The element callback refused an element.
    Element(E),
}

const SYNTAX: Reason = "not an array literal";
const UNTERMINATED: Reason = "array literal ends early";

/// Whitespace `array_in` skips around elements.
fn is_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// Calls `element` for each element of a one-dimensional array literal, in order: `None` for an
/// unquoted `NULL`, otherwise the element with quotes and backslash escapes removed (a slice of
/// `text` when nothing had to be removed, else of `scratch`). A quoted `"NULL"` is the string.
///
/// Refused: nested braces (multidimensional arrays) and explicit bounds (`[0:1]={…}`, an array
/// whose lower bound is not 1) — a list can hold neither faithfully.
pub(in crate::source::types) fn for_each_element<E>(
    text: &[u8],
    delimiter: u8,
    scratch: &mut Vec<u8>,
    mut element: impl FnMut(Option<&[u8]>) -> Result<(), E>,
) -> Result<(), ArrayError<E>> {
    let skip_space = |mut pos: usize| {
        while text.get(pos).is_some_and(|&b| is_space(b)) {
            pos += 1;
        }
        pos
    };
    let mut pos = skip_space(0);
    match text.get(pos) {
        Some(b'{') => pos += 1,
        Some(b'[') => {
            return Err(ArrayError::Syntax(
                "arrays with explicit bounds (lower bound other than 1) are not supported",
            ));
        }
        _ => return Err(ArrayError::Syntax(SYNTAX)),
    }
    pos = skip_space(pos);
    if text.get(pos) == Some(&b'}') {
        pos = skip_space(pos + 1);
        return if pos == text.len() {
            Ok(())
        } else {
            Err(ArrayError::Syntax(SYNTAX))
        };
    }
    loop {
        pos = skip_space(pos);
        match text.get(pos) {
            None => return Err(ArrayError::Syntax(UNTERMINATED)),
            Some(b'{') => {
                return Err(ArrayError::Syntax(
                    "multidimensional arrays are not supported (the column maps to a flat list)",
                ));
            }
            Some(b'"') => {
                pos += 1;
                let start = pos;
                // Fast path: no escape, the element is a slice of the input.
                while let Some(&byte) = text.get(pos) {
                    if byte == b'"' || byte == b'\\' {
                        break;
                    }
                    pos += 1;
                }
                match text.get(pos) {
                    None => return Err(ArrayError::Syntax(UNTERMINATED)),
                    Some(b'"') => {
                        element(Some(&text[start..pos])).map_err(ArrayError::Element)?;
                        pos += 1;
                    }
                    Some(_) => {
                        scratch.clear();
                        scratch.extend_from_slice(&text[start..pos]);
                        loop {
                            match text.get(pos) {
                                None => return Err(ArrayError::Syntax(UNTERMINATED)),
                                Some(b'"') => break,
                                Some(b'\\') => {
                                    let escaped = text
                                        .get(pos + 1)
                                        .ok_or(ArrayError::Syntax(UNTERMINATED))?;
                                    scratch.push(*escaped);
                                    pos += 2;
                                }
                                Some(&byte) => {
                                    scratch.push(byte);
                                    pos += 1;
                                }
                            }
                        }
                        element(Some(scratch)).map_err(ArrayError::Element)?;
                        pos += 1;
                    }
                }
            }
            Some(_) => {
                let start = pos;
                let mut escaped = false;
                while let Some(&byte) = text.get(pos) {
                    if byte == delimiter || byte == b'}' {
                        break;
                    }
                    match byte {
                        b'\\' => {
                            escaped = true;
                            pos += 2;
                        }
                        b'"' | b'{' => return Err(ArrayError::Syntax(SYNTAX)),
                        _ => pos += 1,
                    }
                }
                if pos > text.len() {
                    return Err(ArrayError::Syntax(UNTERMINATED));
                }
                let mut end = pos;
                if !escaped {
                    while end > start && is_space(text[end - 1]) {
                        end -= 1;
                    }
                }
                let raw = &text[start..end];
                if raw.is_empty() {
                    return Err(ArrayError::Syntax("empty unquoted array element"));
                }
                if escaped {
                    // Unquoted escapes are never written by array_out, but array_in reads them.
                    scratch.clear();
                    let mut bytes = raw.iter();
                    while let Some(&byte) = bytes.next() {
                        if byte == b'\\' {
                            if let Some(&next) = bytes.next() {
                                scratch.push(next);
                            }
                        } else {
                            scratch.push(byte);
                        }
                    }
                    element(Some(scratch)).map_err(ArrayError::Element)?;
                } else if raw.eq_ignore_ascii_case(b"NULL") {
                    element(None).map_err(ArrayError::Element)?;
                } else {
                    element(Some(raw)).map_err(ArrayError::Element)?;
                }
            }
        }
        pos = skip_space(pos);
        match text.get(pos) {
            Some(&byte) if byte == delimiter => pos += 1,
            Some(b'}') => {
                pos += 1;
                break;
            }
            None => return Err(ArrayError::Syntax(UNTERMINATED)),
            Some(_) => return Err(ArrayError::Syntax(SYNTAX)),
        }
    }
    if skip_space(pos) == text.len() {
        Ok(())
    } else {
        Err(ArrayError::Syntax(SYNTAX))
    }
}
