//! YAML errors as users read them: serde_norway's message, with the line
//! and column added when the message has none (a configuration file's
//! mistake must say where it is).

/// `e`'s message, ending with "(line L, column C)" when it names no line.
pub fn describe_error(e: &serde_norway::Error) -> String {
    let msg = e.to_string();
    // serde_norway says "listeners[0].routes[0]: unknown field `upstrem`, expected ... at line 9 column 9".
    match e.location() {
        Some(loc) if !msg.contains("line") => {
            format!("{msg} (line {}, column {})", loc.line(), loc.column())
        }
        _ => msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_names_its_line_once() {
        let e = serde_norway::from_str::<std::collections::BTreeMap<String, u32>>("a: 1\nb: x\n")
            .unwrap_err();
        let text = describe_error(&e);
        assert!(text.contains("line 2"), "{text}");
        assert_eq!(text.matches("line").count(), 1, "{text}");
    }
}
