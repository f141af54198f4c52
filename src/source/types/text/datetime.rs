//! Dates, times and timestamps in PostgreSQL's ISO output (`DateStyle=ISO`): years of 4 digits
//! or more, ` BC` after everything else, up to 6 fractional digits, and zone offsets of hours,
//! minutes and (for historic local mean times) seconds.

use super::Reason;

/// The `Date32` value `'infinity'::date` becomes: `i32::MAX` days. No finite PostgreSQL date is
/// that late (its last is 5874897-12-31, 2_145_042_905 days after 1970), and DuckDB reads this
/// very value as `infinity`.
pub const DATE_INFINITY: i32 = i32::MAX;

/// The `Date32` value `'-infinity'::date` becomes: `-i32::MAX` days (PostgreSQL's first date,
/// 4714-11-24 BC, is -2_440_588), DuckDB's `-infinity`.
pub const DATE_NEG_INFINITY: i32 = -i32::MAX;

/// The microseconds `'infinity'` becomes in `timestamp` and `timestamptz` columns: `i64::MAX`,
/// DuckDB's `infinity`. PostgreSQL timestamps from 294247-01-10 04:00:54.775807 on (it allows
/// them up to 294276 AD) do not fit 64-bit microseconds since 1970 and are refused, so no
/// finite value is ever mistaken for this one.
pub const TIMESTAMP_INFINITY: i64 = i64::MAX;

/// The microseconds `'-infinity'` becomes: `-i64::MAX`, DuckDB's `-infinity`, far before
/// PostgreSQL's first timestamp (4714-11-24 00:00:00 BC).
pub const TIMESTAMP_NEG_INFINITY: i64 = -i64::MAX;

const MICROS_PER_SECOND: i64 = 1_000_000;
const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SECOND;

const DATE_SYNTAX: Reason = "not an ISO date (YYYY-MM-DD)";
const TIME_SYNTAX: Reason = "not a time (HH:MM:SS)";
const TIMESTAMP_SYNTAX: Reason = "not an ISO timestamp (YYYY-MM-DD HH:MM:SS)";
const FIELD_RANGE: Reason = "month, day, hour, minute or second out of range";

/// A position in the text being parsed.
struct Cursor<'a> {
    text: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(text: &'a [u8]) -> Self {
        Cursor { text, pos: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.text.get(self.pos).copied()
    }

    /// Consumes `byte` if it comes next.
    fn eat(&mut self, byte: u8) -> bool {
        let found = self.peek() == Some(byte);
        if found {
            self.pos += 1;
        }
        found
    }

    fn expect(&mut self, byte: u8, reason: Reason) -> Result<(), Reason> {
        if self.eat(byte) { Ok(()) } else { Err(reason) }
    }

    /// Reads a run of `min..=max` decimal digits.
    fn digits(&mut self, min: usize, max: usize, reason: Reason) -> Result<(i64, usize), Reason> {
        let mut value = 0i64;
        let mut count = 0;
        while count < max {
            match self.peek() {
                Some(byte @ b'0'..=b'9') => {
                    value = value * 10 + i64::from(byte - b'0');
                    count += 1;
                    self.pos += 1;
                }
                _ => break,
            }
        }
        if count < min {
            return Err(reason);
        }
        Ok((value, count))
    }

    /// Consumes a ` BC` suffix if it comes next.
    fn era_is_bc(&mut self) -> bool {
        let bc = self.text[self.pos..].starts_with(b" BC");
        if bc {
            self.pos += 3;
        }
        bc
    }

    fn finish(&self, reason: Reason) -> Result<(), Reason> {
        if self.pos == self.text.len() {
            Ok(())
        } else {
            Err(reason)
        }
    }
}

/// Year, month and day as written (the year before applying ` BC`).
struct Ymd {
    year: i64,
    month: u32,
    day: u32,
}

fn ymd(cursor: &mut Cursor<'_>, reason: Reason) -> Result<Ymd, Reason> {
    // PostgreSQL pads years to 4 digits and writes more when it must (up to 5874897 for dates).
    let (year, _) = cursor.digits(1, 9, reason)?;
    cursor.expect(b'-', reason)?;
    let (month, _) = cursor.digits(2, 2, reason)?;
    cursor.expect(b'-', reason)?;
    let (day, _) = cursor.digits(2, 2, reason)?;
    Ok(Ymd {
        year,
        // Two digits each: these conversions cannot fail.
        month: u32::try_from(month).map_err(|_| FIELD_RANGE)?,
        day: u32::try_from(day).map_err(|_| FIELD_RANGE)?,
    })
}

/// Days since 1970-01-01 of a date of the proleptic Gregorian calendar, in astronomical years
/// (1 BC is year 0, 2 BC is year -1), which is how PostgreSQL counts.
pub(super) fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    // Count from 0000-03-01, so that the leap day ends the (shifted) year and each 400-year
    // cycle has the same 146_097 days.
    let shifted_year = if month <= 2 { year - 1 } else { year };
    let cycle = shifted_year.div_euclid(400);
    let year_of_cycle = shifted_year.rem_euclid(400);
    let month_from_march = (i64::from(month) + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_cycle = year_of_cycle * 365 + year_of_cycle / 4 - year_of_cycle / 100 + day_of_year;
    // 719_468 days lie between 0000-03-01 and 1970-01-01.
    cycle * 146_097 + day_of_cycle - 719_468
}

fn is_leap(year: i64) -> bool {
    year.rem_euclid(4) == 0 && (year.rem_euclid(100) != 0 || year.rem_euclid(400) == 0)
}

/// Validates a written date and returns its days since 1970.
fn civil_days(date: &Ymd, bc: bool) -> Result<i64, Reason> {
    if date.year == 0 {
        // Written years start at 1: the year before 1 AD is 1 BC.
        return Err(FIELD_RANGE);
    }
    let year = if bc { 1 - date.year } else { date.year };
    let month_days = match date.month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => return Err(FIELD_RANGE),
    };
    if date.day == 0 || date.day > month_days {
        return Err(FIELD_RANGE);
    }
    Ok(days_from_civil(year, date.month, date.day))
}

/// Parses `HH:MM:SS[.ffffff]` into microseconds since midnight. `24:00:00` is allowed (as
/// PostgreSQL allows it) and is 86_400_000_000.
fn time_of_day(cursor: &mut Cursor<'_>, reason: Reason) -> Result<i64, Reason> {
    let (hour, _) = cursor.digits(2, 2, reason)?;
    cursor.expect(b':', reason)?;
    let (minute, _) = cursor.digits(2, 2, reason)?;
    cursor.expect(b':', reason)?;
    let (second, _) = cursor.digits(2, 2, reason)?;
    let mut micros = 0;
    if cursor.eat(b'.') {
        // More than 6 digits would need rounding; PostgreSQL never writes them, and the digit
        // left over makes the caller's next expectation fail.
        let (fraction, count) = cursor.digits(1, 6, reason)?;
        micros = fraction * 10i64.pow(6 - count as u32);
    }
    if minute > 59
        || second > 59
        || hour > 24
        || (hour == 24 && (minute, second, micros) != (0, 0, 0))
    {
        return Err(FIELD_RANGE);
    }
    Ok(((hour * 60 + minute) * 60 + second) * MICROS_PER_SECOND + micros)
}

/// Parses a zone offset `±HH[:MM[:SS]]` into seconds east of UTC.
fn zone_offset(cursor: &mut Cursor<'_>, reason: Reason) -> Result<i64, Reason> {
    let sign = match cursor.peek() {
        Some(b'+') => 1,
        Some(b'-') => -1,
        _ => return Err(reason),
    };
    cursor.pos += 1;
    let (hours, _) = cursor.digits(2, 2, reason)?;
    let mut minutes = 0;
    let mut seconds = 0;
    if cursor.eat(b':') {
        minutes = cursor.digits(2, 2, reason)?.0;
        if cursor.eat(b':') {
            seconds = cursor.digits(2, 2, reason)?.0;
        }
    }
    if hours > 23 || minutes > 59 || seconds > 59 {
        return Err(FIELD_RANGE);
    }
    Ok(sign * ((hours * 60 + minutes) * 60 + seconds))
}

/// Parses `date` output into days since 1970-01-01 (`Date32`); `infinity` and `-infinity`
/// become [`DATE_INFINITY`] and [`DATE_NEG_INFINITY`].
pub(in crate::source::types) fn parse_date(text: &[u8]) -> Result<i32, Reason> {
    match text {
        b"infinity" => return Ok(DATE_INFINITY),
        b"-infinity" => return Ok(DATE_NEG_INFINITY),
        _ => {}
    }
    let mut cursor = Cursor::new(text);
    let date = ymd(&mut cursor, DATE_SYNTAX)?;
    let bc = cursor.era_is_bc();
    cursor.finish(DATE_SYNTAX)?;
    let days = civil_days(&date, bc)?;
    match i32::try_from(days) {
        Ok(days) if days != DATE_INFINITY && days != DATE_NEG_INFINITY && days != i32::MIN => {
            Ok(days)
        }
        _ => Err("date outside the range of 32-bit days since 1970"),
    }
}

/// Parses `time` output into microseconds since midnight (`Time64(µs)`).
pub(in crate::source::types) fn parse_time(text: &[u8]) -> Result<i64, Reason> {
    let mut cursor = Cursor::new(text);
    let micros = time_of_day(&mut cursor, TIME_SYNTAX)?;
    cursor.finish(TIME_SYNTAX)?;
    Ok(micros)
}

/// Parses `timestamp` output (`zoned` false) or `timestamptz` output (`zoned` true: the offset
/// is required) into microseconds since 1970-01-01 00:00:00 UTC; `infinity` and `-infinity`
/// become [`TIMESTAMP_INFINITY`] and [`TIMESTAMP_NEG_INFINITY`].
pub(in crate::source::types) fn parse_timestamp(text: &[u8], zoned: bool) -> Result<i64, Reason> {
    match text {
        b"infinity" => return Ok(TIMESTAMP_INFINITY),
        b"-infinity" => return Ok(TIMESTAMP_NEG_INFINITY),
        _ => {}
    }
    let mut cursor = Cursor::new(text);
    let date = ymd(&mut cursor, TIMESTAMP_SYNTAX)?;
    if !(cursor.eat(b' ') || cursor.eat(b'T')) {
        return Err(TIMESTAMP_SYNTAX);
    }
    let time = time_of_day(&mut cursor, TIMESTAMP_SYNTAX)?;
    let offset = if zoned {
        zone_offset(&mut cursor, TIMESTAMP_SYNTAX)?
    } else {
        0
    };
    let bc = cursor.era_is_bc();
    cursor.finish(TIMESTAMP_SYNTAX)?;
    let days = civil_days(&date, bc)?;
    let micros = i128::from(days) * i128::from(MICROS_PER_DAY) + i128::from(time)
        - i128::from(offset) * i128::from(MICROS_PER_SECOND);
    match i64::try_from(micros) {
        Ok(micros) if micros != TIMESTAMP_INFINITY && micros > TIMESTAMP_NEG_INFINITY => Ok(micros),
        _ => Err("timestamp beyond 64-bit microseconds since 1970 (after 294247-01-10)"),
    }
}
