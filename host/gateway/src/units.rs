//! Durations and rates as operators write them (`60s`, `1%`), for the canary gate's query
//! parameters and the fleet rollout's options alike.

use std::time::Duration;

use anyhow::Context as _;

/// Parses `60s`, `500ms`, `2m`, `1h` (a bare number is seconds).
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .with_context(|| format!("{text:?} is not a duration such as 60s, 500ms or 2m"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1e3,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => anyhow::bail!("{text:?}: the unit must be ms, s, m or h"),
    };
    anyhow::ensure!(
        seconds.is_finite() && (0.0..1e9).contains(&seconds),
        "{text:?} is out of range"
    );
    Ok(Duration::from_secs_f64(seconds))
}

/// Parses `1%` or `0.5%` into a fraction (0.01, 0.005).
pub fn parse_rate(text: &str) -> anyhow::Result<f64> {
    let number = text
        .trim()
        .strip_suffix('%')
        .with_context(|| format!("{text:?}: an error rate is a percentage, such as 1%"))?;
    let p: f64 = number
        .trim()
        .parse()
        .with_context(|| format!("{text:?} is not a percentage"))?;
    anyhow::ensure!((0.0..=100.0).contains(&p), "{text:?}: 0% to 100%");
    Ok(p / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_rates_parse_as_written() {
        assert_eq!(parse_duration("60s").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("2 weeks").is_err());
        assert_eq!(parse_rate("1%").unwrap(), 0.01);
        assert!(parse_rate("1").is_err() && parse_rate("101%").is_err());
    }
}
