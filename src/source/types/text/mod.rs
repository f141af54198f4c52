//! Parsers for PostgreSQL's text output of single values, reading bytes in place: no `String`
//! per value. Each refusal comes back as a static reason that never quotes the value, so the
//! caller can put it in an error without leaking row data.

mod array;
mod datetime;

pub(super) use array::{ArrayError, for_each_element};
pub use datetime::{DATE_INFINITY, DATE_NEG_INFINITY, TIMESTAMP_INFINITY, TIMESTAMP_NEG_INFINITY};
pub(super) use datetime::{parse_date, parse_time, parse_timestamp};

/// Why a value was refused (a fixed sentence, never the value).
pub(super) type Reason = &'static str;

const INT_SYNTAX: Reason = "not an integer";
const INT_RANGE: Reason = "integer out of range";
const FLOAT_SYNTAX: Reason = "not a floating-point number";
const FLOAT_RANGE: Reason = "floating-point number out of range";

/// Parses a decimal integer: an optional `-` and digits, as `int2out`, `int4out` and `int8out`
/// write them (no `+`, no spaces).
pub(super) fn parse_i64(text: &[u8]) -> Result<i64, Reason> {
    let (negative, digits) = match text {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, text),
    };
    if digits.is_empty() {
        return Err(INT_SYNTAX);
    }
    // Accumulating towards the sign (subtracting for negatives) reaches i64::MIN without a
    // special case.
    let mut value: i64 = 0;
    for &byte in digits {
        let digit = byte.wrapping_sub(b'0');
        if digit > 9 {
            return Err(INT_SYNTAX);
        }
        let digit = i64::from(digit);
        value = value
            .checked_mul(10)
            .and_then(|v| {
                if negative {
                    v.checked_sub(digit)
                } else {
                    v.checked_add(digit)
                }
            })
            .ok_or(INT_RANGE)?;
    }
    Ok(value)
}

/// Parses a decimal integer that must fit 32 bits (`smallint` and `integer` columns).
pub(super) fn parse_i32(text: &[u8]) -> Result<i32, Reason> {
    i32::try_from(parse_i64(text)?).map_err(|_| INT_RANGE)
}

/// Checks that `text` holds only what `float8out` writes for a finite number, and views it as a
/// `str` for the standard library's (correctly rounding, allocation-free) float parser. Rust's
/// parser also takes `inf` and `nan`, which PostgreSQL never writes: refused here.
fn finite_float_text(text: &[u8]) -> Result<&str, Reason> {
    let allowed = |b: &u8| matches!(b, b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-');
    if text.is_empty() || !text.iter().all(allowed) {
        return Err(FLOAT_SYNTAX);
    }
    std::str::from_utf8(text).map_err(|_| FLOAT_SYNTAX)
}

/// Parses a `double precision` value, including `NaN`, `Infinity` and `-Infinity`.
pub(super) fn parse_f64(text: &[u8]) -> Result<f64, Reason> {
    match text {
        b"NaN" => Ok(f64::NAN),
        b"Infinity" => Ok(f64::INFINITY),
        b"-Infinity" => Ok(f64::NEG_INFINITY),
        _ => {
            let value: f64 = finite_float_text(text)?.parse().map_err(|_| FLOAT_SYNTAX)?;
            if value.is_finite() {
                Ok(value)
            } else {
                Err(FLOAT_RANGE)
            }
        }
    }
}

/// Parses a `real` value, including `NaN`, `Infinity` and `-Infinity`. Parsed as `f32`
/// directly: going through `f64` would round twice.
pub(super) fn parse_f32(text: &[u8]) -> Result<f32, Reason> {
    match text {
        b"NaN" => Ok(f32::NAN),
        b"Infinity" => Ok(f32::INFINITY),
        b"-Infinity" => Ok(f32::NEG_INFINITY),
        _ => {
            let value: f32 = finite_float_text(text)?.parse().map_err(|_| FLOAT_SYNTAX)?;
            if value.is_finite() {
                Ok(value)
            } else {
                Err(FLOAT_RANGE)
            }
        }
    }
}

/// Parses `boolean` output: `t` or `f`.
pub(super) fn parse_bool(text: &[u8]) -> Result<bool, Reason> {
    match text {
        b"t" => Ok(true),
        b"f" => Ok(false),
        _ => Err("not a boolean (t or f)"),
    }
}

/// Checks that a text value is UTF-8 (the server encoding may not be).
pub(super) fn check_utf8(text: &[u8]) -> Result<(), Reason> {
    std::str::from_utf8(text)
        .map(|_| ())
        .map_err(|_| "not valid UTF-8 (is the database encoding UTF8?)")
}

/// The largest precision of an Arrow (and Iceberg) decimal.
pub(super) const MAX_DECIMAL_PRECISION: u8 = 38;

/// A numeric with more integer digits than a decimal's precision leaves room for.
const DECIMAL_PRECISION: Reason = "value exceeds the precision of the decimal";
/// A numeric with non-zero digits past a decimal's scale (nothing is rounded).
const DECIMAL_SCALE: Reason = "more fractional digits than the decimal's scale holds";
const DECIMAL_NAN: Reason = "NaN cannot be stored in a decimal";
const DECIMAL_INFINITY: Reason = "infinity cannot be stored in a decimal";

/// Parses `numeric` output (`-123.4500`) into the unscaled integer of a decimal with `scale`
/// fractional digits and at most `precision` digits in all (`precision` ≤ 38, `scale` ≤
/// `precision`). Fractional digits past `scale` are accepted only when they are zeros: nothing is
/// rounded. `NaN` and `±Infinity` are refused: a decimal cannot hold them.
pub(super) fn parse_decimal(text: &[u8], precision: u8, scale: u8) -> Result<i128, Reason> {
    const SYNTAX: Reason = "not a numeric";
    match text {
        b"NaN" => return Err(DECIMAL_NAN),
        b"Infinity" | b"-Infinity" => return Err(DECIMAL_INFINITY),
        _ => {}
    }
    let (negative, body) = match text {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, text),
    };
    let (integer, fraction) = match body.iter().position(|&b| b == b'.') {
        Some(point) => (&body[..point], Some(&body[point + 1..])),
        None => (body, None),
    };
    let fraction = fraction.unwrap_or_default();
    if integer.is_empty() && fraction.is_empty() {
        return Err(SYNTAX);
    }
    if text.ends_with(b".") && fraction.is_empty() {
        return Err(SYNTAX);
    }
    let integer_room = usize::from(precision.saturating_sub(scale));
    // At most 38 digits are accumulated, so u128 never overflows.
    let mut value: u128 = 0;
    let mut significant = 0usize;
    for &byte in integer {
        let digit = byte.wrapping_sub(b'0');
        if digit > 9 {
            return Err(SYNTAX);
        }
        if significant == 0 && digit == 0 {
            continue;
        }
        significant += 1;
        if significant > integer_room {
            return Err(DECIMAL_PRECISION);
        }
        value = value * 10 + u128::from(digit);
    }
    let scale = usize::from(scale);
    for (index, &byte) in fraction.iter().enumerate() {
        let digit = byte.wrapping_sub(b'0');
        if digit > 9 {
            return Err(SYNTAX);
        }
        if index < scale {
            value = value * 10 + u128::from(digit);
        } else if digit != 0 {
            return Err(DECIMAL_SCALE);
        }
    }
    for _ in fraction.len()..scale {
        value *= 10;
    }
    // value < 10^38 < i128::MAX.
    let value = i128::try_from(value).map_err(|_| DECIMAL_PRECISION)?;
    Ok(if negative { -value } else { value })
}

/// Reads `numeric`'s binary form straight into the unscaled integer of a decimal of
/// `precision` and `scale`, held to [`parse_decimal`]'s rules and giving its errors for the
/// same values as its text output would (the tests hold it to that): a malformed form first,
/// then too many integer digits, then non-zero digits past `scale`.
pub(super) fn numeric_binary_to_decimal(
    binary: &[u8],
    precision: u8,
    scale: u8,
) -> Result<i128, Reason> {
    const MALFORMED: Reason = "a malformed binary numeric";
    let word = |i: usize| -> Option<u16> {
        binary
            .get(2 * i..2 * i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    let (Some(digits), Some(weight), Some(sign)) = (word(0), word(1), word(2)) else {
        return Err(MALFORMED);
    };
    let digits = usize::from(digits);
    let weight = i32::from(weight as i16);
    if binary.len() != 8 + 2 * digits {
        return Err(MALFORMED);
    }
    let negative = match sign {
        0x0000 => false,
        0x4000 => true,
        0xC000 => return Err(DECIMAL_NAN),
        0xD000 | 0xF000 => return Err(DECIMAL_INFINITY),
        _ => return Err(MALFORMED),
    };
    // every digit checked first: a malformed form is reported before any other error
    if (0..digits).any(|i| word(4 + i).is_none_or(|d| d > 9999)) {
        return Err(MALFORMED);
    }
    // the base-10000 digit of exponent `e`, 0 where none is sent
    let digit = |e: i32| -> u16 {
        usize::try_from(weight - e)
            .ok()
            .filter(|&i| i < digits)
            .and_then(|i| word(4 + i))
            .unwrap_or(0)
    };
    // the integer part, below 10^(precision - scale)
    let limit = 10u128.pow(u32::from(precision.saturating_sub(scale)));
    let mut integer: u128 = 0;
    for e in (0..=weight).rev() {
        integer = integer
            .checked_mul(10_000)
            .and_then(|v| v.checked_add(u128::from(digit(e))))
            .filter(|v| *v < limit)
            .ok_or(DECIMAL_PRECISION)?;
    }
    // the fraction: `scale` decimal digits kept, the ones past it must be zeros
    let scale = u32::from(scale);
    let mut fraction: u128 = 0;
    let lowest = weight - digits as i32 + 1;
    let groups_after_point = (-lowest).max(0) as u32;
    for g in 0..groups_after_point.max(scale.div_ceil(4)) {
        let d = digit(-(g as i32) - 1);
        for (k, place) in [1000u16, 100, 10, 1].into_iter().enumerate() {
            let position = 4 * g + k as u32;
            let decimal = d / place % 10;
            if position < scale {
                fraction = fraction * 10 + u128::from(decimal);
            } else if decimal != 0 {
                return Err(DECIMAL_SCALE);
            }
        }
    }
    // integer < 10^(precision - scale), so the value is below 10^precision <= 10^38
    let value = integer * 10u128.pow(scale) + fraction;
    let value = i128::try_from(value).map_err(|_| DECIMAL_PRECISION)?;
    Ok(if negative { -value } else { value })
}

/// The value of one hexadecimal digit.
fn hex_digit(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// Parses `uuid` output: 32 hexadecimal digits, in the standard 8-4-4-4-12 groups or without
/// hyphens.
pub(super) fn parse_uuid(text: &[u8]) -> Result<[u8; 16], Reason> {
    const SYNTAX: Reason = "not a uuid";
    let hyphenated = match text.len() {
        36 => true,
        32 => false,
        _ => return Err(SYNTAX),
    };
    let mut out = [0u8; 16];
    let mut digits = text.iter().enumerate().filter_map(|(index, &byte)| {
        let is_hyphen_slot = hyphenated && matches!(index, 8 | 13 | 18 | 23);
        if is_hyphen_slot {
            // A hyphen slot yields nothing when it holds a hyphen, and an impossible digit
            // (refused below) when it does not.
            (byte != b'-').then_some(None)
        } else {
            Some(hex_digit(byte))
        }
    });
    for slot in &mut out {
        let high = digits.next().flatten().ok_or(SYNTAX)?;
        let low = digits.next().flatten().ok_or(SYNTAX)?;
        *slot = high << 4 | low;
    }
    if digits.next().is_some() {
        return Err(SYNTAX);
    }
    Ok(out)
}

/// Appends the bytes of `bytea` output to `out`: the hex format (`\x0aff`, the default
/// `bytea_output`) or the escape format (`a\000\\`). On error `out` is left as it was.
pub(super) fn parse_bytea_into(text: &[u8], out: &mut Vec<u8>) -> Result<(), Reason> {
    let start = out.len();
    let result = match text {
        [b'\\', b'x', hex @ ..] => bytea_hex(hex, out),
        _ => bytea_escape(text, out),
    };
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn bytea_hex(hex: &[u8], out: &mut Vec<u8>) -> Result<(), Reason> {
    const SYNTAX: Reason = "not bytea hex output";
    if !hex.len().is_multiple_of(2) {
        return Err(SYNTAX);
    }
    out.reserve(hex.len() / 2);
    for pair in hex.chunks_exact(2) {
        let high = hex_digit(pair[0]).ok_or(SYNTAX)?;
        let low = hex_digit(pair[1]).ok_or(SYNTAX)?;
        out.push(high << 4 | low);
    }
    Ok(())
}

fn bytea_escape(text: &[u8], out: &mut Vec<u8>) -> Result<(), Reason> {
    const SYNTAX: Reason = "not bytea escape output";
    out.reserve(text.len());
    let mut rest = text;
    while let Some((&byte, tail)) = rest.split_first() {
        if byte != b'\\' {
            out.push(byte);
            rest = tail;
            continue;
        }
        match tail {
            [b'\\', after @ ..] => {
                out.push(b'\\');
                rest = after;
            }
            [
                a @ b'0'..=b'3',
                b @ b'0'..=b'7',
                c @ b'0'..=b'7',
                after @ ..,
            ] => {
                out.push((a - b'0') << 6 | (b - b'0') << 3 | (c - b'0'));
                rest = after;
            }
            _ => return Err(SYNTAX),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
