//! Durations as users write them on the command line: `300ms`, `5s`, `1m`, `1h30m`.

use std::time::Duration;

/// Parses a human duration such as `300ms`, `5s` or `1m`.
///
/// Meant as a clap `value_parser`; the error is a sentence that says what to write.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("a duration is needed, written like 300ms, 5s or 1m".to_string());
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "`{text}` has no unit; write it with one, like {text}ms or {text}s"
        ));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is not a duration ({e}); write it like 300ms, 5s or 1m"))
}

/// Formats a duration the way [`parse`] reads it back (`1s 500ms` style is avoided: `1.5s`).
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 60_000 == 0 && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1000 == 0 && ms > 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!(parse("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse(" 2s "), Ok(Duration::from_secs(2)));
    }

    #[test]
    fn rejects_with_a_helpful_sentence() {
        let err = parse("5").unwrap_err();
        assert!(err.contains("5ms or 5s"), "{err}");
        let err = parse("fast").unwrap_err();
        assert!(err.contains("like 300ms"), "{err}");
        assert!(parse("").is_err());
    }

    #[test]
    fn format_round_trips() {
        for ms in [1u64, 200, 1000, 1500, 60_000, 90_000] {
            let d = Duration::from_millis(ms);
            assert_eq!(parse(&format(d)), Ok(d));
        }
    }
}
