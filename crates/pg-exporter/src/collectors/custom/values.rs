//! A custom query's values as upstream reads them: its driver (lib/pq)
//! receives every value as text and decodes it by the column's type
//! (integers, floats, booleans, timestamps; the rest stays text), then
//! turns it into a sample value (`dbToFloat64`), a histogram count
//! (`dbToUint64`) or a label value (`dbToString`). The same rules here, on
//! the text the simple query protocol returns.

use std::borrow::Cow;

use tokio_postgres::types::Type;

/// One decoded value.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Value<'a> {
    Null,
    Int(i64),
    Float(f64),
    Bool(bool),
    /// A timestamp, date or time: seconds since 1970 (what Go's `Time.Unix` gives).
    Time(i64),
    Text(Cow<'a, str>),
}

/// Decodes `text` (a column of type `ty`) as lib/pq would.
pub(super) fn decode<'a>(ty: &Type, text: Option<&'a str>) -> Value<'a> {
    let Some(text) = text else {
        return Value::Null;
    };
    let decoded = match *ty {
        Type::INT2 | Type::INT4 | Type::INT8 => text.parse().ok().map(Value::Int),
        Type::FLOAT8 => text.parse().ok().map(Value::Float),
        // Read as float32, as lib/pq does (0.1 reads 0.10000000149011612).
        Type::FLOAT4 => text.parse::<f32>().ok().map(|v| Value::Float(f64::from(v))),
        Type::BOOL => Some(Value::Bool(text == "t")),
        Type::TIMESTAMP | Type::TIMESTAMPTZ | Type::DATE => timestamp(text).map(Value::Time),
        Type::TIME | Type::TIMETZ => time_of_day(text).map(Value::Time),
        Type::BYTEA => Some(Value::Text(bytea(text))),
        _ => None,
    };
    // Text that does not read as its type ("infinity" timestamps) stays text.
    decoded.unwrap_or(Value::Text(Cow::Borrowed(text)))
}

impl Value<'_> {
    /// The sample value (`dbToFloat64`): NULL reads NaN; `None` when the
    /// value is no number.
    pub fn number(&self) -> Option<f64> {
        match self {
            Value::Null => Some(f64::NAN),
            Value::Int(v) => Some(*v as f64),
            Value::Float(v) => Some(*v),
            Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
            Value::Time(secs) => Some(*secs as f64),
            Value::Text(t) => parse_float(t),
        }
    }

    /// A histogram's count (`dbToUint64`): NULL reads 0.
    pub fn count(&self) -> Option<u64> {
        match self {
            Value::Null => Some(0),
            // Go's uint64 conversions: negative integers wrap, floats truncate.
            Value::Int(v) | Value::Time(v) => Some(*v as u64),
            Value::Float(v) => Some(*v as u64),
            Value::Bool(b) => Some(u64::from(*b)),
            Value::Text(t) if t.starts_with('+') => None,
            Value::Text(t) => t.parse().ok(),
        }
    }

    /// The label value (`dbToString`): NULL is empty, floats as Go prints them.
    pub fn label(&self) -> String {
        match self {
            Value::Null => String::new(),
            Value::Int(v) | Value::Time(v) => v.to_string(),
            Value::Float(v) => go_float(*v),
            Value::Bool(b) => b.to_string(),
            Value::Text(t) => t.to_string(),
        }
    }

    /// The value as text, for a mapping or a duration; `None` for NULL.
    pub fn text(&self) -> Option<Cow<'_, str>> {
        match self {
            Value::Null => None,
            Value::Text(t) => Some(Cow::Borrowed(t.as_ref())),
            other => Some(Cow::Owned(other.label())),
        }
    }
}

/// Go's `strconv.ParseFloat`: also "NaN", "Inf" and "Infinity" in any case;
/// a finite number too large for a float64 is an error there.
pub(super) fn parse_float(text: &str) -> Option<f64> {
    let v: f64 = text.parse().ok()?;
    if v.is_infinite() {
        let word = text.trim_start_matches(['+', '-']).to_ascii_lowercase();
        if word != "inf" && word != "infinity" {
            return None;
        }
    }
    Some(v)
}

/// A float as Go's `%v` prints it: the shortest digits that read back the
/// same, in exponent form when the exponent is below -4 or at least 6
/// (`fmt.Println(1e6)` prints `1e+06`).
pub(super) fn go_float(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "1.5e6".
    let sci = format!("{v:e}");
    let Some((mantissa, exp)) = sci.split_once('e') else {
        return sci;
    };
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..6).contains(&exp) {
        return format!("{v}");
    }
    let sign = if exp < 0 { '-' } else { '+' };
    format!("{mantissa}e{sign}{:02}", exp.unsigned_abs())
}

/// `bytea` text (`\x` hex) as the bytes it holds, read as UTF-8 text.
fn bytea(text: &str) -> Cow<'_, str> {
    let Some(hex) = text.strip_prefix("\\x") else {
        return Cow::Borrowed(text);
    };
    let bytes: Option<Vec<u8>> = (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
    match bytes {
        Some(b) => Cow::Owned(String::from_utf8_lossy(&b).into_owned()),
        None => Cow::Borrowed(text),
    }
}

/// Days from 1970-01-01 to the given proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Seconds since 1970 of an ISO timestamp, date, or timestamp with zone
/// (`2024-05-06 07:08:09.123+02`, DateStyle ISO); the fraction is dropped
/// (Go's `Unix()` floors, and so does this for times after 1970).
fn timestamp(text: &str) -> Option<i64> {
    let (date, rest) = match text.split_once(' ') {
        Some((d, r)) => (d, r),
        None => (text, ""),
    };
    let mut parts = date.splitn(3, '-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next()?.parse().ok()?;
    let d: i64 = parts.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || rest.ends_with("BC") {
        return None;
    }
    let day = days_from_civil(y, m, d) * 86_400;
    if rest.is_empty() {
        return Some(day);
    }
    Some(day + clock(rest)?)
}

/// Seconds since 1970 of a `time` or `timetz`: Go reads them as a time on
/// 0000-01-01.
fn time_of_day(text: &str) -> Option<i64> {
    Some(days_from_civil(0, 1, 1) * 86_400 + clock(text)?)
}

/// `HH:MM:SS[.frac][+-HH[:MM[:SS]]]` as seconds, the offset taken off.
fn clock(text: &str) -> Option<i64> {
    let split = text.find(['+', '-']).unwrap_or(text.len());
    let (time, zone) = text.split_at(split);
    let mut hms = time.splitn(3, ':');
    let h: i64 = hms.next()?.parse().ok()?;
    let m: i64 = hms.next()?.parse().ok()?;
    let s: i64 = match hms.next() {
        Some(s) => s.split('.').next()?.parse().ok()?,
        None => 0,
    };
    let mut secs = h * 3600 + m * 60 + s;
    if let Some(sign) = zone.chars().next() {
        let mut parts = zone[1..].splitn(3, ':');
        let zh: i64 = parts.next()?.parse().ok()?;
        let zm: i64 = parts.next().map_or(Some(0), |p| p.parse().ok())?;
        let zs: i64 = parts.next().map_or(Some(0), |p| p.parse().ok())?;
        let offset = zh * 3600 + zm * 60 + zs;
        secs -= if sign == '-' { -offset } else { offset };
    }
    Some(secs)
}

/// A one-dimensional array's text (`{1,2.5,"3"}`) as its elements; `None`
/// for NULL elements or text that is no such array.
pub(super) fn array(text: &str) -> Option<Vec<String>> {
    let inner = text.strip_prefix('{')?.strip_suffix('}')?;
    if inner.is_empty() {
        return Some(Vec::new());
    }
    let mut items = Vec::new();
    let mut chars = inner.chars();
    loop {
        let mut item = String::new();
        let mut quoted = false;
        let mut next = chars.next();
        if next == Some('"') {
            quoted = true;
            loop {
                match chars.next()? {
                    '\\' => item.push(chars.next()?),
                    '"' => break,
                    c => item.push(c),
                }
            }
            next = chars.next();
        }
        while let Some(c) = next {
            if c == ',' {
                break;
            }
            if quoted || c == '{' || c == '"' {
                return None;
            }
            item.push(c);
            next = chars.next();
        }
        if !quoted && item == "NULL" {
            return None;
        }
        items.push(item);
        if next.is_none() {
            return Some(items);
        }
    }
}

/// Go's `time.ParseDuration` in milliseconds, truncated as upstream does
/// (`float64(d / time.Millisecond)`): "1h30m", "1.5s", "300ms", "-2m".
pub(super) fn duration_ms(text: &str) -> Option<f64> {
    let (negative, mut rest) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Some(0.0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut nanos: f64 = 0.0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..number_len];
        if number.is_empty() || number == "." {
            return None;
        }
        let value: f64 = number.parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        nanos += value * scale;
    }
    if nanos > i64::MAX as f64 {
        return None;
    }
    let ms = (nanos.round() as i64 / 1_000_000) as f64;
    Some(if negative { -ms } else { ms })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_decode_by_type_as_lib_pq_does() {
        assert_eq!(decode(&Type::INT8, Some("42")), Value::Int(42));
        assert_eq!(decode(&Type::INT4, None), Value::Null);
        assert_eq!(decode(&Type::BOOL, Some("t")), Value::Bool(true));
        assert_eq!(
            decode(&Type::TIMESTAMPTZ, Some("2024-05-06 07:08:09.5+02")),
            Value::Time(1_714_972_089)
        );
        assert_eq!(decode(&Type::DATE, Some("1970-01-02")), Value::Time(86_400));
        assert_eq!(
            decode(&Type::TIMESTAMPTZ, Some("infinity")).number(),
            Some(f64::INFINITY)
        );
        assert_eq!(decode(&Type::BYTEA, Some("\\x6869")).label(), "hi");
        assert_eq!(decode(&Type::NUMERIC, Some("1.50")).label(), "1.50");
        assert_eq!(decode(&Type::NUMERIC, Some("1.50")).number(), Some(1.5));
        assert_eq!(decode(&Type::TEXT, Some("abc")).number(), None);
        assert!(decode(&Type::TEXT, None).number().is_some_and(f64::is_nan));
        assert_eq!(
            decode(&Type::FLOAT4, Some("0.1")).label(),
            "0.10000000149011612"
        );
    }

    #[test]
    fn floats_print_as_go_prints_them() {
        assert_eq!(go_float(1.5), "1.5");
        assert_eq!(go_float(1e6), "1e+06");
        assert_eq!(go_float(123_456.0), "123456");
        assert_eq!(go_float(1_234_567.0), "1.234567e+06");
        assert_eq!(go_float(0.0001), "0.0001");
        assert_eq!(go_float(0.00001), "1e-05");
        assert_eq!(go_float(-2.0), "-2");
    }

    #[test]
    fn go_float_parsing() {
        assert_eq!(parse_float("Infinity"), Some(f64::INFINITY));
        assert!(parse_float("nan").is_some_and(f64::is_nan));
        assert_eq!(parse_float("1e400"), None);
        assert_eq!(parse_float(" 1"), None);
    }

    #[test]
    fn arrays_read_as_lib_pq_reads_them() {
        assert_eq!(
            array("{1,2.5,\"3\"}"),
            Some(vec!["1".into(), "2.5".into(), "3".into()])
        );
        assert_eq!(array("{}"), Some(vec![]));
        assert_eq!(array("{1,NULL}"), None);
        assert_eq!(array("{{1,2},{3,4}}"), None);
        assert_eq!(array("5"), None);
    }

    #[test]
    fn durations_read_as_go_reads_them() {
        assert_eq!(duration_ms("1h30m"), Some(5_400_000.0));
        assert_eq!(duration_ms("1.5s"), Some(1500.0));
        assert_eq!(duration_ms("300us"), Some(0.0));
        assert_eq!(duration_ms("-2m"), Some(-120_000.0));
        assert_eq!(duration_ms("0"), Some(0.0));
        assert_eq!(duration_ms("5"), None);
        assert_eq!(duration_ms("00:01:00"), None);
        assert_eq!(duration_ms(""), None);
    }

    #[test]
    fn counts_read_as_go_reads_them() {
        assert_eq!(Value::Null.count(), Some(0));
        assert_eq!(Value::Text("7".into()).count(), Some(7));
        assert_eq!(Value::Text("+7".into()).count(), None);
        assert_eq!(Value::Float(7.9).count(), Some(7));
    }
}
