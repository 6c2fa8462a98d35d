//! `runonserver` version ranges, in the syntax upstream reads them with
//! (github.com/blang/semver's `ParseRange`): comparisons (`>=10.0.0`,
//! `<11.0.0`, `=12.1.0`, `!=13.0.0`, a bare version means `=`) joined by
//! spaces (all must hold) and `||` (either side), and `x` wildcards
//! (`15.x`, `>=9.6.x`).

use std::fmt;

/// A server version as upstream compares it: 15.18 is `15.18.0`.
pub(crate) type Version = (u64, u64, u64);

/// The version of `server_version_num` (150018 → 15.18.0, 90624 → 9.6.24).
pub(crate) fn from_num(num: u32) -> Version {
    let num = u64::from(num);
    if num >= 100_000 {
        (num / 10_000, num % 10_000, 0)
    } else {
        (num / 10_000, num / 100 % 100, num % 100)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

/// A parsed range: alternatives of conjunctions of comparisons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Range {
    text: String,
    any: Vec<Vec<(Op, Version)>>,
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Range {
    pub fn matches(&self, v: Version) -> bool {
        self.any.iter().any(|all| {
            all.iter().all(|(op, bound)| match op {
                Op::Eq => v == *bound,
                Op::Ne => v != *bound,
                Op::Gt => v > *bound,
                Op::Ge => v >= *bound,
                Op::Lt => v < *bound,
                Op::Le => v <= *bound,
            })
        })
    }

    /// Parses `text`; the error says what is wrong and how to write it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let hint = "write it like \">=10.0.0 <11.0.0\" or \"<9.6.0 || >=11.0.0\"";
        let mut any = Vec::new();
        for alternative in text.split("||") {
            let mut all = Vec::new();
            let mut pending_op: Option<&str> = None;
            for word in alternative.split_whitespace() {
                // An operator may stand apart from its version: ">= 10.0.0".
                let word_op_len = word
                    .find(|c: char| c.is_ascii_digit())
                    .unwrap_or(word.len());
                let (op, version) = word.split_at(word_op_len);
                if version.is_empty() {
                    if pending_op.is_some() || op.is_empty() {
                        return Err(format!(
                            "runonserver {text:?}: {word:?} is no version; {hint}"
                        ));
                    }
                    pending_op = Some(op);
                    continue;
                }
                let op = match (pending_op.take(), op) {
                    (Some(_), o) if !o.is_empty() => {
                        return Err(format!(
                            "runonserver {text:?}: two operators before {version:?}; {hint}"
                        ));
                    }
                    (Some(o), _) => o,
                    (None, o) => o,
                };
                comparison(op, version, &mut all)
                    .map_err(|e| format!("runonserver {text:?}: {e}; {hint}"))?;
            }
            if pending_op.is_some() || all.is_empty() {
                return Err(format!(
                    "runonserver {text:?}: an operator or a `||` without a version; {hint}"
                ));
            }
            any.push(all);
        }
        Ok(Self {
            text: text.to_string(),
            any,
        })
    }
}

/// Adds the comparison `op version` (wildcards expanded) to `all`.
fn comparison(op: &str, version: &str, all: &mut Vec<(Op, Version)>) -> Result<(), String> {
    let op = match op {
        "" | "=" | "==" => Op::Eq,
        "!" | "!=" => Op::Ne,
        ">" => Op::Gt,
        ">=" => Op::Ge,
        "<" => Op::Lt,
        "<=" => Op::Le,
        other => {
            return Err(format!(
                "unknown operator {other:?} (use =, !=, >, >=, <, <=)"
            ));
        }
    };
    let parts: Vec<&str> = version.split('.').collect();
    let number = |s: &str| -> Result<u64, String> {
        if s.len() > 1 && s.starts_with('0') {
            return Err(format!("{version:?} has a leading zero"));
        }
        s.parse()
            .map_err(|_| format!("{version:?} is not a version like 10.0.0"))
    };
    // Wildcards: 1.x, 1.x.x, 1.2.x.
    let wildcard = match parts.as_slice() {
        [major, "x"] | [major, "x", "x"] => {
            Some(((number(major)?, 0, 0), (number(major)? + 1, 0, 0)))
        }
        [major, minor, "x"] => {
            let (ma, mi) = (number(major)?, number(minor)?);
            Some(((ma, mi, 0), (ma, mi + 1, 0)))
        }
        _ => None,
    };
    if let Some((low, next)) = wildcard {
        match op {
            Op::Gt => all.push((Op::Ge, next)),
            Op::Ge => all.push((Op::Ge, low)),
            Op::Lt => all.push((Op::Lt, low)),
            Op::Le => all.push((Op::Lt, next)),
            Op::Eq => {
                all.push((Op::Ge, low));
                all.push((Op::Lt, next));
            }
            // Upstream's expansion: below the range, and (sic) at or above its end.
            Op::Ne => {
                all.push((Op::Lt, low));
                all.push((Op::Ge, next));
            }
        }
        return Ok(());
    }
    let [major, minor, patch] = parts.as_slice() else {
        return Err(format!(
            "{version:?} is not a version like 10.0.0 (major.minor.patch, all three)"
        ));
    };
    all.push((op, (number(major)?, number(minor)?, number(patch)?)));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(range: &str, v: Version) -> bool {
        Range::parse(range).unwrap().matches(v)
    }

    #[test]
    fn ranges_match_as_upstream_reads_them() {
        assert!(m(">=10.0.0 <11.0.0", (10, 5, 0)));
        assert!(!m(">=10.0.0 <11.0.0", (11, 0, 0)));
        assert!(m("<9.6.0 || >=11.0.0", (15, 18, 0)));
        assert!(!m("<9.6.0 || >=11.0.0", (10, 1, 0)));
        assert!(m("=15.18.0", (15, 18, 0)));
        assert!(m("15.18.0", (15, 18, 0)));
        assert!(m(">= 16.0.0", (16, 2, 0)));
        assert!(m("16.x", (16, 2, 0)));
        assert!(!m("16.x", (17, 0, 0)));
        assert!(m(">16.x", (17, 0, 0)));
        assert!(!m(">16.x", (16, 9, 0)));
        assert!(m("!=16.0.0", (16, 2, 0)));
    }

    #[test]
    fn bad_ranges_say_how_to_write_them() {
        for bad in [
            "",
            ">=",
            "16",
            ">=16.0",
            "~16.0.0",
            ">=a.b.c",
            "|| >=1.0.0",
            ">=1.0.0 ||",
            ">= >= 1.0.0",
        ] {
            let e = Range::parse(bad).unwrap_err();
            assert!(e.contains("write it like"), "{bad}: {e}");
        }
    }

    #[test]
    fn server_versions() {
        assert_eq!(from_num(150_018), (15, 18, 0));
        assert_eq!(from_num(90_624), (9, 6, 24));
        assert_eq!(from_num(180_000), (18, 0, 0));
    }
}
