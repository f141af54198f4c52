//! The parsers against hand-picked extremes, and property tests that format random values the
//! way PostgreSQL's output functions do and parse them back.

// Tests unwrap freely: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use super::datetime::days_from_civil;
use super::*;

#[test]
fn integers_at_their_limits() {
    assert_eq!(parse_i64(b"-9223372036854775808"), Ok(i64::MIN));
    assert_eq!(parse_i64(b"9223372036854775807"), Ok(i64::MAX));
    assert_eq!(parse_i64(b"0"), Ok(0));
    assert_eq!(parse_i64(b"-0"), Ok(0));
    assert_eq!(parse_i64(b"9223372036854775808"), Err(INT_RANGE));
    assert_eq!(parse_i64(b"-9223372036854775809"), Err(INT_RANGE));
    assert_eq!(parse_i32(b"-2147483648"), Ok(i32::MIN));
    assert_eq!(parse_i32(b"2147483647"), Ok(i32::MAX));
    assert_eq!(parse_i32(b"2147483648"), Err(INT_RANGE));
    assert_eq!(parse_i32(b"-32768"), Ok(-32768));
    for bad in [
        &b""[..],
        b"-",
        b"+1",
        b" 1",
        b"1 ",
        b"1.0",
        b"1e3",
        b"--1",
        b"0x10",
    ] {
        assert_eq!(parse_i64(bad), Err(INT_SYNTAX), "{bad:?}");
    }
}

#[test]
fn floats_keep_nan_and_infinities() {
    assert!(parse_f64(b"NaN").unwrap().is_nan());
    assert_eq!(parse_f64(b"Infinity"), Ok(f64::INFINITY));
    assert_eq!(parse_f64(b"-Infinity"), Ok(f64::NEG_INFINITY));
    assert!(parse_f32(b"NaN").unwrap().is_nan());
    assert_eq!(parse_f32(b"-Infinity"), Ok(f32::NEG_INFINITY));
    assert_eq!(parse_f64(b"1.7976931348623157e+308"), Ok(f64::MAX));
    assert_eq!(parse_f64(b"5e-324"), Ok(5e-324));
    assert_eq!(parse_f64(b"-0").map(f64::to_bits), Ok((-0.0f64).to_bits()));
    assert_eq!(parse_f32(b"3.4028235e+38"), Ok(f32::MAX));
    assert_eq!(parse_f32(b"1e-45"), Ok(1e-45));
    assert_eq!(parse_f32(b"0.1"), Ok(0.1f32));
    for bad in [
        &b""[..],
        b"inf",
        b"nan",
        b"infinity",
        b"1e400",
        b"1,5",
        b"0x1p3",
        b" 1",
    ] {
        assert!(parse_f64(bad).is_err(), "{bad:?}");
    }
    assert!(parse_f32(b"3.5e38").is_err());
}

#[test]
fn booleans_are_t_or_f() {
    assert_eq!(parse_bool(b"t"), Ok(true));
    assert_eq!(parse_bool(b"f"), Ok(false));
    for bad in [&b""[..], b"true", b"T", b"1", b"tt"] {
        assert!(parse_bool(bad).is_err());
    }
}

#[test]
fn numerics_become_unscaled_integers() {
    let max38 = b"99999999999999999999999999999999999999";
    assert_eq!(parse_decimal(max38, 38, 0), Ok(10i128.pow(38) - 1));
    assert_eq!(
        parse_decimal(b"-99999999999999999999999999999999999999", 38, 0),
        Ok(1 - 10i128.pow(38))
    );
    assert!(parse_decimal(b"100000000000000000000000000000000000000", 38, 0).is_err());
    assert_eq!(
        parse_decimal(b"0.99999999999999999999999999999999999999", 38, 38),
        Ok(10i128.pow(38) - 1)
    );
    assert_eq!(parse_decimal(b"12345678.90", 10, 2), Ok(1_234_567_890));
    assert_eq!(parse_decimal(b"-0.01", 10, 2), Ok(-1));
    assert_eq!(parse_decimal(b"0.00", 10, 2), Ok(0));
    assert!(parse_decimal(b"123456789.00", 10, 2).is_err());
    // Fewer fractional digits than the scale (unconstrained numerics), and leading zeros.
    assert_eq!(parse_decimal(b"123.456", 38, 9), Ok(123_456_000_000));
    assert_eq!(parse_decimal(b"007", 38, 9), Ok(7_000_000_000));
    assert_eq!(parse_decimal(b"-5", 38, 0), Ok(-5));
    // Digits past the scale: zeros are exact, anything else would round.
    assert_eq!(parse_decimal(b"1.500000000000", 38, 9), Ok(1_500_000_000));
    assert!(parse_decimal(b"0.3333333333", 38, 9).is_err());
    // 30 integer digits leave no room for 9 decimals in 38; 29 do.
    assert!(parse_decimal(b"123456789012345678901234567890", 38, 9).is_err());
    assert!(parse_decimal(b"-12345678901234567890123456789", 38, 9).is_ok());
    assert_eq!(
        parse_decimal(b"1234567890123456789012345678.5", 38, 9),
        Ok(1_234_567_890_123_456_789_012_345_678_500_000_000)
    );
    for special in [&b"NaN"[..], b"Infinity", b"-Infinity"] {
        assert!(
            parse_decimal(special, 38, 9)
                .unwrap_err()
                .contains("decimal")
        );
    }
    for bad in [
        &b""[..],
        b"-",
        b".",
        b"1.",
        b"1e5",
        b"1.2.3",
        b"+1",
        b" 1",
        b"1,5",
    ] {
        assert!(parse_decimal(bad, 38, 2).is_err(), "{bad:?}");
    }
}

#[test]
fn uuids_in_both_spellings() {
    let expected = [
        0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38, 0x0a,
        0x11,
    ];
    assert_eq!(
        parse_uuid(b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        Ok(expected)
    );
    assert_eq!(
        parse_uuid(b"A0EEBC999C0B4EF8BB6D6BB9BD380A11"),
        Ok(expected)
    );
    assert_eq!(
        parse_uuid(b"00000000-0000-0000-0000-000000000000"),
        Ok([0; 16])
    );
    assert_eq!(
        parse_uuid(b"ffffffff-ffff-ffff-ffff-ffffffffffff"),
        Ok([0xff; 16])
    );
    for bad in [
        &b"a0eebc99x9c0b-4ef8-bb6d-6bb9bd380a11"[..],
        b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1g",
        b"a0eebc999-c0b-4ef8-bb6d-6bb9bd380a11",
        b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1",
        b"",
    ] {
        assert!(parse_uuid(bad).is_err(), "{bad:?}");
    }
}

fn bytea(text: &[u8]) -> Result<Vec<u8>, Reason> {
    let mut out = vec![7];
    parse_bytea_into(text, &mut out).map(|()| out[1..].to_vec())
}

#[test]
fn bytea_in_hex_and_escape_formats() {
    assert_eq!(bytea(b"\\x"), Ok(vec![]));
    assert_eq!(bytea(b"\\x00ff00"), Ok(vec![0, 255, 0]));
    assert_eq!(bytea(b"\\xDEADbeef"), Ok(vec![0xde, 0xad, 0xbe, 0xef]));
    assert_eq!(
        bytea(b"a\\000\\\\b\\377"),
        Ok(vec![b'a', 0, b'\\', b'b', 255])
    );
    assert_eq!(bytea(b""), Ok(vec![]));
    for bad in [&b"\\x0"[..], b"\\x0g", b"\\", b"\\400", b"\\09", b"a\\b"] {
        let mut out = vec![7];
        assert!(parse_bytea_into(bad, &mut out).is_err(), "{bad:?}");
        assert_eq!(out, vec![7], "a refused value leaves nothing behind");
    }
}

#[test]
fn day_numbers_are_consecutive_across_millennia() {
    assert_eq!(days_from_civil(1970, 1, 1), 0);
    assert_eq!(days_from_civil(2000, 1, 1), 10_957);
    assert_eq!(days_from_civil(1, 1, 1), -719_162);
    assert_eq!(days_from_civil(9999, 12, 31), 2_932_896);
    // 4714-11-24 BC (year -4713) is Julian day 0, 2_440_588 days before 1970.
    assert_eq!(days_from_civil(-4713, 11, 24), -2_440_588);
    // Walking day by day from 4800 BC to 12000 AD, every date is one more than the last.
    let mut expected = days_from_civil(-4800, 1, 1);
    for year in -4800..12000 {
        for month in 1..=12 {
            let days = match month {
                2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            for day in 1..=days {
                assert_eq!(
                    days_from_civil(year, month, day),
                    expected,
                    "{year}-{month}-{day}"
                );
                expected += 1;
            }
        }
    }
}

#[test]
fn dates_with_eras_and_infinities() {
    assert_eq!(parse_date(b"1970-01-01"), Ok(0));
    assert_eq!(parse_date(b"0001-01-01"), Ok(-719_162));
    assert_eq!(parse_date(b"9999-12-31"), Ok(2_932_896));
    assert_eq!(parse_date(b"0001-12-31 BC"), Ok(-719_163));
    assert_eq!(
        parse_date(b"0044-03-15 BC"),
        Ok(days_from_civil(-43, 3, 15) as i32)
    );
    assert_eq!(parse_date(b"4714-11-24 BC"), Ok(-2_440_588));
    assert_eq!(
        parse_date(b"5874897-12-31"),
        Ok(days_from_civil(5_874_897, 12, 31) as i32)
    );
    assert_eq!(parse_date(b"infinity"), Ok(DATE_INFINITY));
    assert_eq!(parse_date(b"-infinity"), Ok(DATE_NEG_INFINITY));
    assert_eq!(parse_date(b"2000-02-29"), Ok(11_016));
    // 1 BC (year 0) and 5 BC (year -4) are leap years; 1 AD is not.
    assert!(parse_date(b"0001-02-29 BC").is_ok());
    assert!(parse_date(b"0005-02-29 BC").is_ok());
    assert!(parse_date(b"0001-02-29").is_err());
    assert!(parse_date(b"1900-02-29").is_err());
    for bad in [
        &b"0000-01-01"[..],
        b"2024-13-01",
        b"2024-00-10",
        b"2024-04-31",
        b"2024-1-01",
        b"2024-01-01 AD",
        b"2024-01-01 BC ",
        b"20240101",
        b"Infinity",
        b"9999999999-01-01",
    ] {
        assert!(parse_date(bad).is_err(), "{}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn times_up_to_midnight_inclusive() {
    assert_eq!(parse_time(b"00:00:00"), Ok(0));
    assert_eq!(parse_time(b"23:59:59.999999"), Ok(86_399_999_999));
    assert_eq!(parse_time(b"24:00:00"), Ok(86_400_000_000));
    assert_eq!(parse_time(b"12:34:56.5"), Ok(45_296_500_000));
    assert_eq!(parse_time(b"00:00:00.000001"), Ok(1));
    for bad in [
        &b"24:00:00.000001"[..],
        b"24:00:01",
        b"25:00:00",
        b"12:60:00",
        b"12:00:60",
        b"12:00",
        b"12:00:00.",
        b"12:00:00.1234567",
        b"12:00:00+00",
    ] {
        assert!(parse_time(bad).is_err(), "{}", String::from_utf8_lossy(bad));
    }
}

const DAY: i64 = 86_400_000_000;

#[test]
fn timestamps_with_zones_eras_and_infinities() {
    assert_eq!(parse_timestamp(b"1970-01-01 00:00:00", false), Ok(0));
    assert_eq!(parse_timestamp(b"1970-01-01 00:00:00+00", true), Ok(0));
    assert_eq!(parse_timestamp(b"1970-01-01 05:30:00+05:30", true), Ok(0));
    assert_eq!(parse_timestamp(b"1969-12-31 16:00:00-08", true), Ok(0));
    assert_eq!(
        parse_timestamp(b"1969-12-31 19:03:58-04:56:02", true),
        Ok(0)
    );
    assert_eq!(
        parse_timestamp(b"2024-02-29T12:00:00.5", false),
        Ok(days_from_civil(2024, 2, 29) * DAY + 43_200_500_000)
    );
    assert_eq!(
        parse_timestamp(b"0001-01-01 00:00:00", false),
        Ok(-719_162 * DAY)
    );
    assert_eq!(
        parse_timestamp(b"9999-12-31 23:59:59.999999", false),
        Ok(2_932_897 * DAY - 1)
    );
    assert_eq!(
        parse_timestamp(b"0044-03-15 12:00:00+00 BC", true),
        Ok(days_from_civil(-43, 3, 15) * DAY + DAY / 2)
    );
    assert_eq!(
        parse_timestamp(b"4714-11-24 00:00:00 BC", false),
        Ok(-2_440_588 * DAY)
    );
    assert_eq!(parse_timestamp(b"infinity", false), Ok(TIMESTAMP_INFINITY));
    assert_eq!(
        parse_timestamp(b"-infinity", true),
        Ok(TIMESTAMP_NEG_INFINITY)
    );
    // The last microsecond 64 bits hold, and the first they do not.
    assert_eq!(
        parse_timestamp(b"294247-01-10 04:00:54.775806", false),
        Ok(i64::MAX - 1)
    );
    assert!(parse_timestamp(b"294247-01-10 04:00:54.775807", false).is_err());
    assert!(parse_timestamp(b"294276-12-31 23:59:59.999999", false).is_err());
    assert_eq!(
        parse_timestamp(b"294246-12-31 23:59:59.999999+00", true),
        Ok(days_from_civil(294_247, 1, 1) * DAY - 1)
    );
    for (bad, zoned) in [
        (&b"2024-01-01 12:00:00"[..], true),
        (b"2024-01-01 12:00:00+00", false),
        (b"2024-01-01", false),
        (b"2024-01-01  12:00:00", false),
        (b"2024-01-01 12:00:00+5", true),
        (b"2024-01-01 12:00:00+24", true),
        (b"2024-01-01 12:00:00 BC+00", true),
        (b"2024-02-30 12:00:00", false),
    ] {
        assert!(
            parse_timestamp(bad, zoned).is_err(),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

fn elements(text: &str) -> Result<Vec<Option<String>>, ArrayError<()>> {
    let mut out = Vec::new();
    let mut scratch = Vec::new();
    for_each_element(text.as_bytes(), b',', &mut scratch, |element| {
        out.push(element.map(|e| String::from_utf8(e.to_vec()).unwrap()));
        Ok::<(), ()>(())
    })?;
    Ok(out)
}

fn some(values: &[&str]) -> Vec<Option<String>> {
    values.iter().map(|v| Some(v.to_string())).collect()
}

#[test]
fn array_literals() {
    assert_eq!(elements("{}").unwrap(), vec![]);
    assert_eq!(elements("{1,2,3}").unwrap(), some(&["1", "2", "3"]));
    assert_eq!(
        elements(r#"{"a b","c\"d",NULL,"NULL","",null,"back\\slash"}"#).unwrap(),
        vec![
            Some("a b".into()),
            Some("c\"d".into()),
            None,
            Some("NULL".into()),
            Some(String::new()),
            None,
            Some("back\\slash".into()),
        ]
    );
    assert_eq!(elements("{ 1 , 2 }").unwrap(), some(&["1", "2"]));
    assert_eq!(
        elements(r#"{"{braces}","a,b"}"#).unwrap(),
        some(&["{braces}", "a,b"])
    );
    assert_eq!(elements("{日本,🎉}").unwrap(), some(&["日本", "🎉"]));
    assert_eq!(elements(r"{a\,b}").unwrap(), some(&["a,b"]));
    for bad in [
        "",
        "1,2",
        "{",
        "{1,2",
        "{1,}",
        "{,1}",
        "{1}x",
        r#"{"a}"#,
        r#"{a"b"}"#,
        r"{a\",
    ] {
        assert!(matches!(elements(bad), Err(ArrayError::Syntax(_))), "{bad}");
    }
    let Err(ArrayError::Syntax(reason)) = elements("{{1,2},{3,4}}") else {
        panic!("a 2-D array was accepted");
    };
    assert!(reason.contains("multidimensional"));
    let Err(ArrayError::Syntax(reason)) = elements("[0:1]={1,2}") else {
        panic!("explicit bounds were accepted");
    };
    assert!(reason.contains("bounds"));
}

#[test]
fn array_element_errors_stop_the_walk() {
    let mut seen = 0;
    let result = for_each_element(b"{1,2,3}", b',', &mut Vec::new(), |_| {
        seen += 1;
        if seen == 2 { Err("no") } else { Ok(()) }
    });
    assert!(matches!(result, Err(ArrayError::Element("no"))));
    assert_eq!(seen, 2);
}

/// PostgreSQL's `float8out` with `extra_float_digits` > 0: the shortest digits that read back
/// exactly, in fixed notation for exponents -4..15 and `1.5e+20` style outside.
fn pg_float(value: f64) -> String {
    if value.is_nan() {
        return "NaN".into();
    }
    if value.is_infinite() {
        return if value > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let scientific = format!("{value:e}");
    let (mantissa, exponent) = scientific.split_once('e').unwrap();
    let exponent: i32 = exponent.parse().unwrap();
    if (-4..15).contains(&exponent) {
        format!("{value}")
    } else {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exponent.abs())
    }
}

/// `numeric_out`: the digits with exactly `scale` of them after the point.
fn pg_numeric(unscaled: i128, scale: u32) -> String {
    let digits = unscaled.unsigned_abs().to_string();
    let scale = scale as usize;
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (integer, fraction) = padded.split_at(padded.len() - scale);
    let sign = if unscaled < 0 { "-" } else { "" };
    if scale == 0 {
        format!("{sign}{integer}")
    } else {
        format!("{sign}{integer}.{fraction}")
    }
}

/// `date_out` / `timestamp_out` in ISO style: 4-digit padded years, ` BC` last.
fn pg_date(year: i64, month: u32, day: u32) -> (String, bool) {
    let bc = year <= 0;
    let shown = if bc { 1 - year } else { year };
    (format!("{shown:04}-{month:02}-{day:02}"), bc)
}

fn pg_fraction(micros: i64) -> String {
    if micros == 0 {
        String::new()
    } else {
        format!(".{micros:06}").trim_end_matches('0').to_string()
    }
}

fn pg_offset(seconds: i64) -> String {
    let sign = if seconds < 0 { '-' } else { '+' };
    let s = seconds.abs();
    let (h, m, sec) = (s / 3600, s / 60 % 60, s % 60);
    match (m, sec) {
        (0, 0) => format!("{sign}{h:02}"),
        (_, 0) => format!("{sign}{h:02}:{m:02}"),
        _ => format!("{sign}{h:02}:{m:02}:{sec:02}"),
    }
}

fn valid_date() -> impl Strategy<Value = (i64, u32, u32)> {
    valid_date_until(5_874_897)
}

fn valid_date_until(last_year: i64) -> impl Strategy<Value = (i64, u32, u32)> {
    (-4713i64..=last_year, 1u32..=12, 1u32..=31).prop_filter_map("a real date", |(y, m, d)| {
        let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let days = match m {
            2 if leap => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        (d <= days).then_some((y, m, d))
    })
}

proptest! {
    #[test]
    fn integers_read_back(value: i64) {
        prop_assert_eq!(parse_i64(value.to_string().as_bytes()), Ok(value));
        let small = value as i32;
        prop_assert_eq!(parse_i32(small.to_string().as_bytes()), Ok(small));
    }

    #[test]
    fn doubles_read_back_bit_for_bit(bits: u64) {
        let value = f64::from_bits(bits);
        let parsed = parse_f64(pg_float(value).as_bytes()).unwrap();
        if value.is_nan() {
            prop_assert!(parsed.is_nan());
        } else {
            prop_assert_eq!(parsed.to_bits(), bits);
        }
    }

    #[test]
    fn reals_read_back_bit_for_bit(bits: u32) {
        let value = f32::from_bits(bits);
        // The f32's own shortest digits, as float4out writes them.
        let text = if value.is_finite() { pg_float_f32(value) } else { pg_float(f64::from(value)) };
        let parsed = parse_f32(text.as_bytes()).unwrap();
        if value.is_nan() {
            prop_assert!(parsed.is_nan());
        } else {
            prop_assert_eq!(parsed.to_bits(), bits);
        }
    }

    #[test]
    fn numerics_read_back(unscaled in -(10i128.pow(38) - 1)..10i128.pow(38), scale in 0u32..=38) {
        let text = pg_numeric(unscaled, scale);
        prop_assert_eq!(parse_decimal(text.as_bytes(), 38, scale as u8), Ok(unscaled));
    }

    #[test]
    fn uuids_read_back(bytes: [u8; 16]) {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let text = format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..]);
        prop_assert_eq!(parse_uuid(text.as_bytes()), Ok(bytes));
    }

    #[test]
    fn bytea_reads_back_in_both_formats(bytes: Vec<u8>) {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        prop_assert_eq!(bytea(format!("\\x{hex}").as_bytes()), Ok(bytes.clone()));
        let mut escaped = Vec::new();
        for &b in &bytes {
            match b {
                b'\\' => escaped.extend_from_slice(b"\\\\"),
                0x20..=0x7e => escaped.push(b),
                _ => escaped.extend_from_slice(format!("\\{b:03o}").as_bytes()),
            }
        }
        prop_assert_eq!(bytea(&escaped), Ok(bytes));
    }

    #[test]
    fn dates_read_back((year, month, day) in valid_date()) {
        let (text, bc) = pg_date(year, month, day);
        let text = if bc { format!("{text} BC") } else { text };
        prop_assert_eq!(parse_date(text.as_bytes()), Ok(days_from_civil(year, month, day) as i32));
    }

    #[test]
    fn timestamps_read_back(
        (year, month, day) in valid_date_until(294_246),
        time in 0i64..DAY,
        offset in -(15 * 3600i64)..=15 * 3600,
        zoned: bool,
    ) {
        let (date, bc) = pg_date(year, month, day);
        let seconds = time / 1_000_000;
        let mut text = format!(
            "{date} {:02}:{:02}:{:02}{}",
            seconds / 3600,
            seconds / 60 % 60,
            seconds % 60,
            pg_fraction(time % 1_000_000)
        );
        let offset = if zoned { offset } else { 0 };
        if zoned {
            text.push_str(&pg_offset(offset));
        }
        if bc {
            text.push_str(" BC");
        }
        let expected = days_from_civil(year, month, day) * DAY + time - offset * 1_000_000;
        prop_assert_eq!(parse_timestamp(text.as_bytes(), zoned), Ok(expected), "{}", text);
    }

    #[test]
    fn times_read_back(time in 0i64..=DAY) {
        let seconds = time / 1_000_000;
        let text = format!(
            "{:02}:{:02}:{:02}{}",
            seconds / 3600,
            seconds / 60 % 60,
            seconds % 60,
            pg_fraction(time % 1_000_000)
        );
        prop_assert_eq!(parse_time(text.as_bytes()), Ok(time));
    }

    #[test]
    fn day_numbers_repeat_every_400_years((year, month, day) in valid_date()) {
        prop_assert_eq!(
            days_from_civil(year + 400, month, day) - days_from_civil(year, month, day),
            146_097
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes: Vec<u8>, delimiter: u8) {
        let _ = parse_i64(&bytes);
        let _ = parse_i32(&bytes);
        let _ = parse_f32(&bytes);
        let _ = parse_f64(&bytes);
        let _ = parse_bool(&bytes);
        let _ = check_utf8(&bytes);
        let _ = parse_decimal(&bytes, 38, 9);
        let _ = parse_decimal(&bytes, 5, 5);
        let _ = parse_uuid(&bytes);
        let _ = parse_bytea_into(&bytes, &mut Vec::new());
        let _ = parse_date(&bytes);
        let _ = parse_time(&bytes);
        let _ = parse_timestamp(&bytes, false);
        let _ = parse_timestamp(&bytes, true);
        let _ = for_each_element(&bytes, delimiter, &mut Vec::new(), |_| Ok::<(), ()>(()));
    }

    #[test]
    fn temporal_shaped_noise_never_panics(text in "[-0-9: .+TBCinfty]{0,40}") {
        let _ = parse_date(text.as_bytes());
        let _ = parse_time(text.as_bytes());
        let _ = parse_timestamp(text.as_bytes(), true);
        let _ = parse_timestamp(text.as_bytes(), false);
        let _ = parse_decimal(text.as_bytes(), 38, 0);
    }

    #[test]
    fn array_shaped_noise_never_panics(text in r#"[{}",\\ aNUL1]{0,30}"#) {
        let _ = for_each_element(text.as_bytes(), b',', &mut Vec::new(), |_| Ok::<(), ()>(()));
    }
}

/// `float4out`: the shortest digits that read back as the same `f32`.
fn pg_float_f32(value: f32) -> String {
    let scientific = format!("{value:e}");
    let (mantissa, exponent) = scientific.split_once('e').unwrap();
    let exponent: i32 = exponent.parse().unwrap();
    if (-4..15).contains(&exponent) {
        format!("{value}")
    } else {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exponent.abs())
    }
}

#[test]
fn binary_numerics_become_the_text_parse_decimal_reads() {
    // (digits, weight, sign, dscale, base-10000 digits) → text
    let cases: &[(&[u16], i16, u16, &str)] = &[
        (&[], 0, 0x0000, "0"),
        (&[1], 0, 0x0000, "1"),
        (&[12, 3400], 0, 0x4000, "-12.3400"),
        (&[1, 0], 1, 0x0000, "10000"),
        (&[5], 2, 0x0000, "500000000"),
        (&[5], -1, 0x0000, "0.0005"),
        (&[5], -2, 0x0000, "0.00000005"),
        (&[9999, 9999], 0, 0x0000, "9999.9999"),
        (&[], 0, 0xC000, "NaN"),
        (&[], 0, 0xD000, "Infinity"),
        (&[], 0, 0xF000, "-Infinity"),
    ];
    for (digits, weight, sign, text) in cases {
        let mut binary = Vec::new();
        binary.extend_from_slice(&(digits.len() as u16).to_be_bytes());
        binary.extend_from_slice(&weight.to_be_bytes());
        binary.extend_from_slice(&sign.to_be_bytes());
        binary.extend_from_slice(&0u16.to_be_bytes());
        for d in *digits {
            binary.extend_from_slice(&d.to_be_bytes());
        }
        let mut out = Vec::new();
        numeric_binary_to_text(&binary, &mut out).expect("well-formed");
        assert_eq!(String::from_utf8_lossy(&out), *text);
    }
    let mut out = Vec::new();
    assert!(numeric_binary_to_text(&[0, 1, 0, 0, 0, 0, 0, 0], &mut out).is_err());
    assert!(numeric_binary_to_text(&[0, 1, 0, 0, 0, 0, 0, 0, 0x27, 0x10], &mut out).is_err());
}

/// Writes `numeric`'s binary form (as `numeric_send` makes it: digit count, weight, sign,
/// display scale, then base-10000 digits, all big-endian 16-bit) into `out` as the text
/// [`parse_decimal`] reads: the reference [`numeric_binary_to_decimal`] is held to.
fn numeric_binary_to_text(binary: &[u8], out: &mut Vec<u8>) -> Result<(), Reason> {
    const MALFORMED: Reason = "a malformed binary numeric";
    let word = |i: usize| -> Result<u16, Reason> {
        binary
            .get(2 * i..2 * i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or(MALFORMED)
    };
    let digits = usize::from(word(0)?);
    let weight = i32::from(word(1)? as i16);
    let sign = word(2)?;
    if binary.len() != 8 + 2 * digits {
        return Err(MALFORMED);
    }
    out.clear();
    match sign {
        0x0000 => {}
        0x4000 => out.push(b'-'),
        0xC000 => {
            out.extend_from_slice(b"NaN");
            return Ok(());
        }
        0xD000 => {
            out.extend_from_slice(b"Infinity");
            return Ok(());
        }
        0xF000 => {
            out.extend_from_slice(b"-Infinity");
            return Ok(());
        }
        _ => return Err(MALFORMED),
    }
    // the digit of base-10000 exponent `e` (weight down to below zero), 0 where none is sent
    let digit = |e: i32| -> Result<u16, Reason> {
        let index = weight - e;
        if index < 0 || index as usize >= digits {
            return Ok(0);
        }
        let d = word(4 + index as usize)?;
        if d > 9999 {
            return Err(MALFORMED);
        }
        Ok(d)
    };
    if weight < 0 {
        out.push(b'0');
    } else {
        let mut leading = true;
        for e in (0..=weight).rev() {
            let d = digit(e)?;
            if leading {
                if d == 0 && e > 0 {
                    continue;
                }
                let padded = four_digits(d);
                let first = padded.iter().position(|&b| b != b'0').unwrap_or(3);
                out.extend_from_slice(&padded[first..]);
                leading = false;
            } else {
                out.extend_from_slice(&four_digits(d));
            }
        }
    }
    let lowest = weight - digits as i32 + 1;
    if lowest < 0 {
        out.push(b'.');
        for e in (lowest..0).rev() {
            out.extend_from_slice(&four_digits(digit(e)?));
        }
    }
    Ok(())
}

/// `d` (below 10000) as four decimal digits, zero-padded.
fn four_digits(d: u16) -> [u8; 4] {
    [
        b'0' + (d / 1000) as u8,
        b'0' + (d / 100 % 10) as u8,
        b'0' + (d / 10 % 10) as u8,
        b'0' + (d % 10) as u8,
    ]
}

/// A `numeric` in binary form from its parts (`numeric_send`'s layout); `cut` drops that many
/// bytes from the end (a malformed form).
fn numeric_send(weight: i16, sign: u16, dscale: u16, groups: &[u16], cut: usize) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(groups.len() as u16).to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&dscale.to_be_bytes());
    for g in groups {
        out.extend_from_slice(&g.to_be_bytes());
    }
    out.truncate(out.len().saturating_sub(cut));
    out
}

/// The binary numeric read through its text form, as the copy read it before.
fn through_text(binary: &[u8], precision: u8, scale: u8) -> Result<i128, Reason> {
    let mut text = Vec::new();
    numeric_binary_to_text(binary, &mut text)?;
    parse_decimal(&text, precision, scale)
}

#[test]
fn binary_numerics_read_straight_as_through_their_text() {
    let cases: &[(i16, u16, &[u16], u8, u8)] = &[
        // 1234.5678 into (8, 4), (10, 2) (digits past the scale), (6, 4) (too large)
        (0, 0, &[1234, 5678], 8, 4),
        (0, 0, &[1234, 5678], 10, 2),
        (0, 0, &[1234, 5600], 10, 2),
        (0, 0, &[1234, 5678], 6, 4),
        // -0.0001, 0, 10^36, 10^38 - 1 at (38, 0)
        (-1, 0x4000, &[1], 10, 4),
        (0, 0, &[], 10, 2),
        (9, 0, &[1], 38, 0),
        (
            9,
            0,
            &[99, 9999, 9999, 9999, 9999, 9999, 9999, 9999, 9999, 9999],
            38,
            0,
        ),
        (9, 0, &[100], 38, 0),
        // trailing zero groups past the scale, and a group of zeros before the digits
        (-2, 0, &[12], 38, 8),
        (1, 0, &[0, 7], 10, 0),
        // NaN, infinities, a bad sign
        (0, 0xC000, &[], 10, 2),
        (0, 0xD000, &[], 10, 2),
        (0, 0xF000, &[], 10, 2),
        (0, 0x1234, &[], 10, 2),
        // a group above 9999
        (0, 0, &[10000], 10, 2),
    ];
    for &(weight, sign, groups, precision, scale) in cases {
        let binary = numeric_send(weight, sign, 4, groups, 0);
        assert_eq!(
            numeric_binary_to_decimal(&binary, precision, scale),
            through_text(&binary, precision, scale),
            "{weight} {sign:x} {groups:?} ({precision}, {scale})"
        );
    }
    // 12.0034 and -12.34
    assert_eq!(
        numeric_binary_to_decimal(&numeric_send(0, 0, 4, &[12, 34], 0), 10, 4),
        Ok(12_0034)
    );
    assert_eq!(
        numeric_binary_to_decimal(&numeric_send(0, 0x4000, 2, &[12, 3400], 0), 10, 4),
        Ok(-12_3400)
    );
    let short = numeric_send(0, 0, 0, &[1, 2], 1);
    assert_eq!(
        numeric_binary_to_decimal(&short, 10, 2),
        Err("a malformed binary numeric")
    );
}

proptest! {
    #[test]
    fn binary_numerics_read_straight_as_through_their_text_for_any(
        weight in prop_oneof![-12i16..12, Just(i16::MIN), Just(i16::MAX), -40i16..40],
        sign in prop_oneof![Just(0u16), Just(0x4000u16), Just(0xC000u16), Just(0xD000u16),
                            Just(0xF000u16), Just(0x0001u16)],
        groups in prop::collection::vec(prop_oneof![0u16..=9999, Just(0u16), Just(10_000u16)], 0..12),
        dscale in 0u16..40,
        cut in prop_oneof![Just(0usize), Just(0usize), Just(0usize), 1usize..3],
        precision in 1u8..=38,
        scale_part in 0u8..=38,
    ) {
        let scale = scale_part.min(precision);
        let binary = numeric_send(weight, sign, dscale, &groups, cut);
        prop_assert_eq!(
            numeric_binary_to_decimal(&binary, precision, scale),
            through_text(&binary, precision, scale)
        );
    }
}
