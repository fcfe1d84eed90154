//! Units operators type: transfer rates and sizes.

/// Parses a rate in bytes per second: `50MiB/s`, `10MB/s`, `1Gbit/s`, `4096` (the `/s`
/// is optional). `None` for anything else, zero, or a negative number.
pub fn parse_rate(s: &str) -> Option<u64> {
    let v = s.trim();
    amount(v.strip_suffix("/s").unwrap_or(v), |unit| match unit {
        "kbit" | "Kbit" => Some(1e3 / 8.0),
        "Mbit" => Some(1e6 / 8.0),
        "Gbit" => Some(1e9 / 8.0),
        other => byte_unit(other),
    })
}

/// Parses a size in bytes: `1TiB`, `500GiB`, `10MB`, `4096`. `None` for anything else,
/// zero, or a negative number.
pub fn parse_size(s: &str) -> Option<u64> {
    amount(s, byte_unit)
}

/// Bytes per unit of the byte units both parsers take.
fn byte_unit(unit: &str) -> Option<f64> {
    Some(match unit {
        "" | "B" => 1.0,
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "TiB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    })
}

/// A number followed by a unit (`unit` says how many bytes one is): a whole number of
/// bytes, at least one. `None` for anything else.
fn amount(s: &str, unit: impl Fn(&str) -> Option<f64>) -> Option<u64> {
    let v = s.trim();
    let split = v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len());
    let (n, u) = v.split_at(split);
    let n: f64 = n.trim().parse().ok()?;
    let bytes = (n * unit(u)?).round();
    (n.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// A byte count for people (tables, messages): `512 B`, `1.5 KiB`, `1.0 TiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_rate, parse_size};

    #[test]
    fn byte_counts() {
        assert_eq!(super::bytes(512), "512 B");
        assert_eq!(super::bytes(1536), "1.5 KiB");
        assert_eq!(super::bytes(1 << 40), "1.0 TiB");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1TiB"), Some(1 << 40));
        assert_eq!(parse_size("500GiB"), Some(500 << 30));
        assert_eq!(parse_size("10MB"), Some(10_000_000));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("1MiB/s"), None);
        assert_eq!(parse_size("0GiB"), None);
        assert_eq!(parse_size("-1GiB"), None);
        assert_eq!(parse_size("lots"), None);
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("50MiB/s"), Some(50 << 20));
        assert_eq!(parse_rate("10MB/s"), Some(10_000_000));
        assert_eq!(parse_rate("1Gbit/s"), Some(125_000_000));
        assert_eq!(parse_rate("4096"), Some(4096));
        assert_eq!(parse_rate("fast"), None);
        assert_eq!(parse_rate("0MB/s"), None);
        assert_eq!(parse_rate("-5MB/s"), None);
        assert_eq!(parse_rate("5 parsecs/s"), None);
    }
}
