//! One module per subcommand: its clap arguments and how they wire a library crate.

pub mod demo;
pub mod inject;
pub mod injector;
pub mod logs;
pub mod pg_exporter;
pub mod proxy;

/// Parses a byte size: `1048576`, `512KiB`, `1MiB`, `64k`.
pub fn parse_bytes(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| format!("`{text}` is not a size; write it like 65536, 64KiB or 1MiB"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        "g" | "gb" | "gib" => 1024 * 1024 * 1024,
        _ => return Err(format!("`{text}` has an unknown unit; use KiB, MiB or GiB")),
    };
    let bytes = n
        .checked_mul(mult)
        .ok_or_else(|| format!("`{text}` is too large"))?;
    if bytes == 0 {
        return Err("the size must be at least 1 byte".to_string());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes() {
        assert_eq!(super::parse_bytes("1MiB"), Ok(1 << 20));
        assert_eq!(super::parse_bytes("64k"), Ok(64 << 10));
        assert_eq!(super::parse_bytes("100"), Ok(100));
        assert!(super::parse_bytes("1 parsec").is_err());
        assert!(super::parse_bytes("0").is_err());
    }
}
