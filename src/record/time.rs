//! Timestamps as every tool reads them: RFC 3339, epoch seconds/ms/µs/ns told apart by
//! magnitude, a strftime format (`--ts-format`), and for command-line times the relative
//! forms cron jobs want (`-1h`, `today`, `yesterday`, all UTC). Durations like `500ms 10s 5m`.
//! Everything becomes milliseconds since the Unix epoch (i64).

use jiff::Timestamp;

/// Epoch numbers: below 1e11 are seconds (to year 5138), below 1e14 milliseconds, below
/// 1e17 microseconds, else nanoseconds.
pub fn epoch_to_ms(n: f64) -> Option<i64> {
    if !n.is_finite() {
        return None;
    }
    let a = n.abs();
    let ms = if a < 1e11 {
        n * 1e3
    } else if a < 1e14 {
        n
    } else if a < 1e17 {
        n / 1e3
    } else {
        n / 1e6
    };
    if ms.abs() > 9.0e15 {
        return None;
    }
    Some(ms.floor() as i64)
}

/// Integer epoch values without going through f64 (exact for ns and µs).
pub fn epoch_int_to_ms(n: i64) -> i64 {
    let a = n.unsigned_abs();
    if a < 100_000_000_000 {
        n.saturating_mul(1000)
    } else if a < 100_000_000_000_000 {
        n
    } else if a < 100_000_000_000_000_000 {
        n.div_euclid(1000)
    } else {
        n.div_euclid(1_000_000)
    }
}

/// A timestamp given as text: an epoch number or RFC 3339.
pub fn parse_text(s: &str) -> Result<i64, String> {
    let t = s.trim();
    if let Ok(n) = t.parse::<i64>() {
        return Ok(epoch_int_to_ms(n));
    }
    if let Ok(f) = t.parse::<f64>() {
        if t.bytes().all(|b| {
            b.is_ascii_digit() || b == b'.' || b == b'-' || b == b'e' || b == b'E' || b == b'+'
        }) {
            return epoch_to_ms(f).ok_or_else(|| format!("timestamp out of range: {t}"));
        }
    }
    parse_rfc3339(t)
}

pub fn parse_rfc3339(t: &str) -> Result<i64, String> {
    match t.parse::<Timestamp>() {
        Ok(ts) => Ok(ts.as_millisecond()),
        Err(_) => Err(format!(
            "cannot parse timestamp {t:?} (expected RFC 3339 or epoch s/ms/µs/ns)"
        )),
    }
}

/// A timestamp read with a strftime format. Without an offset in the format, UTC.
pub fn parse_with_format(s: &str, fmt: &str) -> Result<i64, String> {
    let bad = |e: jiff::Error| format!("cannot parse timestamp {s:?} with format {fmt:?}: {e}");
    let tm = jiff::fmt::strtime::parse(fmt, s).map_err(bad)?;
    if let Ok(ts) = tm.to_timestamp() {
        return Ok(ts.as_millisecond());
    }
    let dt = tm.to_datetime().map_err(bad)?;
    let ts = dt
        .to_zoned(jiff::tz::TimeZone::UTC)
        .map_err(bad)?
        .timestamp();
    Ok(ts.as_millisecond())
}

pub fn now_ms() -> i64 {
    Timestamp::now().as_millisecond()
}

/// RFC 3339 in UTC with milliseconds: `2026-11-23T10:00:00.000Z`.
pub fn format_rfc3339(ms: i64) -> String {
    match Timestamp::from_millisecond(ms) {
        Ok(ts) => format!("{ts:.3}"),
        Err(_) => ms.to_string(),
    }
}

/// A time on the command line (after `@`): RFC 3339, epoch, `now`, `today`, `yesterday`
/// (midnight UTC), or `-DURATION` before now (`-1h`, `-30m`).
pub fn parse_time_arg(s: &str) -> Result<i64, String> {
    let now = now_ms();
    const DAY: i64 = 86_400_000;
    match s {
        "now" => return Ok(now),
        "today" => return Ok(now.div_euclid(DAY) * DAY),
        "yesterday" => return Ok(now.div_euclid(DAY) * DAY - DAY),
        _ => {}
    }
    if let Some(d) = s.strip_prefix('-') {
        if d.bytes().last().is_some_and(|b| b.is_ascii_alphabetic()) {
            return Ok(now - parse_duration_ms(d)?);
        }
    }
    parse_text(s)
}

/// `500ms 10s 5m 1h 1d 1w`, or a bare number of milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<i64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?} (examples: 500ms, 10s, 5m, 1h, 7d)"))?;
    let mult = match unit {
        "" | "ms" => 1.0,
        "s" => 1e3,
        "m" | "min" => 60e3,
        "h" => 3600e3,
        "d" => 86400e3,
        "w" => 7.0 * 86400e3,
        _ => return Err(format!("bad duration unit in {s:?} (ms, s, m, h, d, w)")),
    };
    let v = n * mult;
    if !v.is_finite() || !(0.0..=9.0e15).contains(&v) {
        return Err(format!("duration out of range: {s:?}"));
    }
    Ok(v.round() as i64)
}

/// `64MiB`, `1GB`, `4096`: sizes for segment and retention flags.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("bad size {s:?} (examples: 4096, 64MiB, 1GB)"))?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "bad size unit in {s:?} (B, kB, KiB, MB, MiB, GB, GiB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size out of range: {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_by_magnitude() {
        assert_eq!(epoch_int_to_ms(1_795_359_091), 1_795_359_091_000);
        assert_eq!(epoch_int_to_ms(1_795_359_091_608), 1_795_359_091_608);
        assert_eq!(epoch_int_to_ms(1_795_359_091_608_123), 1_795_359_091_608);
        assert_eq!(
            epoch_int_to_ms(1_795_359_091_608_123_456),
            1_795_359_091_608
        );
        assert_eq!(epoch_to_ms(1_795_359_091.608), Some(1_795_359_091_608));
        assert_eq!(parse_text("1795359091608").unwrap(), 1_795_359_091_608);
    }

    #[test]
    fn rfc3339() {
        assert_eq!(parse_text("1970-01-01T00:00:01Z").unwrap(), 1000);
        assert_eq!(parse_text("1970-01-01T01:00:01.5+01:00").unwrap(), 1500);
        assert!(parse_text("yesterday-ish").is_err());
        assert_eq!(format_rfc3339(1500), "1970-01-01T00:00:01.500Z");
    }

    #[test]
    fn formats_and_relative() {
        assert_eq!(
            parse_with_format("01/01/1970 00:00:02", "%d/%m/%Y %H:%M:%S").unwrap(),
            2000
        );
        let now = now_ms();
        let h = parse_time_arg("-1h").unwrap();
        assert!((now - h - 3_600_000).abs() < 5_000);
        assert_eq!(parse_time_arg("today").unwrap() % 86_400_000, 0);
        assert_eq!(parse_duration_ms("500ms").unwrap(), 500);
        assert_eq!(parse_duration_ms("5m").unwrap(), 300_000);
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert!(parse_duration_ms("5 parsecs").is_err());
    }
}
