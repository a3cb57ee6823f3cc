//! JUnit XML of a conformance report, for CI systems that show test results.

use std::fmt::Write as _;

use super::{Outcome, Report};

/// The report as one `<testsuite>`: a `<testcase>` per check, classname the check's group.
pub fn to_junit(report: &Report) -> String {
    let count = |outcome| {
        report
            .checks
            .iter()
            .filter(|c| c.outcome == outcome)
            .count()
    };
    let total: f64 = report.checks.iter().map(|c| c.elapsed.as_secs_f64()).sum();
    let suite = match &report.plugin {
        Some(plugin) => format!("edgeplug conformance: {plugin}"),
        None => format!("edgeplug conformance: {}", report.target),
    };
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        xml,
        "<testsuites><testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" skipped=\"{}\" time=\"{total:.3}\">",
        escape(&suite),
        report.checks.len(),
        count(Outcome::Fail),
        count(Outcome::Skip)
    );
    for check in &report.checks {
        let name = if check.name.is_empty() {
            check.group.to_string()
        } else {
            check.name.clone()
        };
        let _ = write!(
            xml,
            "  <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\"",
            escape(check.group),
            escape(&name),
            check.elapsed.as_secs_f64()
        );
        match check.outcome {
            Outcome::Pass => {
                let _ = writeln!(
                    xml,
                    "><system-out>{}</system-out></testcase>",
                    escape(&check.detail)
                );
            }
            Outcome::Fail => {
                let _ = writeln!(
                    xml,
                    "><failure message=\"{}\"/></testcase>",
                    escape(&check.detail)
                );
            }
            Outcome::Skip => {
                let _ = writeln!(
                    xml,
                    "><skipped message=\"{}\"/></testcase>",
                    escape(&check.detail)
                );
            }
        }
    }
    xml.push_str("</testsuite></testsuites>\n");
    xml
}

/// Escapes text for an XML attribute or element, dropping characters XML 1.0 cannot hold.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\t' | '\r' => out.push(' '),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::{Check, Outcome, Report};
    use super::*;

    #[test]
    fn counts_failures_and_escapes_details() {
        let check = |outcome, detail: &str| Check {
            group: "robustness",
            name: "image <bomb>.png".into(),
            outcome,
            detail: detail.into(),
            elapsed: Duration::from_millis(5),
        };
        let report = Report {
            target: "p".into(),
            plugin: Some("digits 0.1.0".into()),
            checks: vec![
                check(Outcome::Pass, "ok"),
                check(Outcome::Fail, "trap: \"unreachable\" & \u{1}more"),
                check(Outcome::Skip, "n/a"),
            ],
        };
        let xml = to_junit(&report);
        assert!(
            xml.contains("tests=\"3\" failures=\"1\" skipped=\"1\""),
            "{xml}"
        );
        assert!(xml.contains("name=\"image &lt;bomb&gt;.png\""), "{xml}");
        assert!(
            xml.contains("<failure message=\"trap: &quot;unreachable&quot; &amp; more\"/>"),
            "{xml}"
        );
        assert_eq!(xml.matches("<testcase ").count(), 3);
    }
}
