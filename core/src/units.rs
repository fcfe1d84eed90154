//! Units operators type: transfer rates.

/// Parses a rate in bytes per second: `50MiB/s`, `10MB/s`, `1Gbit/s`, `4096` (the `/s`
/// is optional). `None` for anything else, zero, or a negative number.
pub fn parse_rate(s: &str) -> Option<u64> {
    let v = s.trim();
    let v = v.strip_suffix("/s").unwrap_or(v);
    let split = v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len());
    let (n, unit) = v.split_at(split);
    let n: f64 = n.trim().parse().ok()?;
    let mul = match unit {
        "" | "B" => 1.0,
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "kbit" | "Kbit" => 1e3 / 8.0,
        "Mbit" => 1e6 / 8.0,
        "Gbit" => 1e9 / 8.0,
        _ => return None,
    };
    let bytes = (n * mul).round();
    (n.is_finite() && bytes >= 1.0).then_some(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::parse_rate;

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
