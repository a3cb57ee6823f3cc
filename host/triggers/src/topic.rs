//! MQTT topic names and filters as the triggers use them: checking filters, matching a topic
//! against one, taking the device from a topic level, and rendering result topic templates.

/// Checks an MQTT topic filter (MQTT 5 §4.7): non-empty, at most 65,535 bytes, no NUL, `+`
/// alone in its level, `#` alone in the last level.
pub fn check_filter(filter: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !filter.is_empty() && filter.len() <= 65_535,
        "a topic filter must be 1-65535 bytes"
    );
    anyhow::ensure!(
        !filter.contains('\0'),
        "a topic filter must not contain NUL"
    );
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('+') {
            anyhow::ensure!(*level == "+", "{filter:?}: '+' must fill a whole level");
        }
        if level.contains('#') {
            anyhow::ensure!(
                *level == "#" && i + 1 == levels.len(),
                "{filter:?}: '#' must be the whole last level"
            );
        }
    }
    Ok(())
}

/// Checks a topic name a message is published to: a filter without wildcards.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    check_filter(name)?;
    anyhow::ensure!(
        !name.contains(['+', '#']),
        "{name:?}: a topic name has no wildcards"
    );
    Ok(())
}

/// Whether `topic` matches `filter` (`+` one level, `#` the rest, none of them matching a
/// `$`-topic at the first level).
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && !filter.starts_with('$') {
        return false;
    }
    let mut topic_levels = topic.split('/');
    for level in filter.split('/') {
        match level {
            "#" => return true,
            "+" => {
                if topic_levels.next().is_none() {
                    return false;
                }
            }
            literal => {
                if topic_levels.next() != Some(literal) {
                    return false;
                }
            }
        }
    }
    topic_levels.next().is_none()
}

/// Whether some topic name matches both filters.
pub fn overlap(a: &str, b: &str) -> bool {
    let (mut a, mut b) = (a.split('/'), b.split('/'));
    loop {
        match (a.next(), b.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (None, None) => return true,
            (None, Some(_)) | (Some(_), None) => return false,
            (Some(x), Some(y)) => {
                if x != y && x != "+" && y != "+" {
                    return false;
                }
            }
        }
    }
}

/// The level `level` (from 0) of `topic`, the device's name.
pub fn level(topic: &str, level: usize) -> Option<&str> {
    topic.split('/').nth(level)
}

/// What a result topic template may name.
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a> {
    pub device: &'a str,
    pub plugin: &'a str,
    pub version: &'a str,
    pub gateway: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Device,
    Plugin,
    Version,
    Gateway,
}

/// A result topic template such as `results/{device}/{plugin}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    pub fn parse(text: &str) -> anyhow::Result<Template> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .map(|c| open + c)
                .ok_or_else(|| anyhow::anyhow!("{text:?}: unclosed '{{'"))?;
            parts.push(match &rest[open + 1..close] {
                "device" => Part::Device,
                "plugin" => Part::Plugin,
                "version" => Part::Version,
                "gateway" => Part::Gateway,
                other => anyhow::bail!(
                    "{text:?}: unknown placeholder {{{other}}} (known: {{device}} {{plugin}} {{version}} {{gateway}})"
                ),
            });
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        let template = Template { parts };
        // The literal parts must make a valid name whatever fills the placeholders.
        check_name(&template.render(&Fields {
            device: "d",
            plugin: "p",
            version: "v",
            gateway: "g",
        }))?;
        anyhow::ensure!(
            !text.starts_with('$'),
            "{text:?}: results are not published to $-topics"
        );
        Ok(template)
    }

    pub fn uses_device(&self) -> bool {
        self.parts.contains(&Part::Device)
    }

    pub fn render(&self, fields: &Fields<'_>) -> String {
        self.parts
            .iter()
            .map(|part| match part {
                Part::Text(text) => text.as_str(),
                Part::Device => fields.device,
                Part::Plugin => fields.plugin,
                Part::Version => fields.version,
                Part::Gateway => fields.gateway,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_as_mqtt_says() {
        for (filter, topic, expected) in [
            ("devices/+/camera", "devices/cam-1/camera", true),
            ("devices/+/camera", "devices/cam-1/camera/x", false),
            ("devices/+/camera", "devices/camera", false),
            ("devices/#", "devices", true),
            ("devices/#", "devices/a/b/c", true),
            ("#", "$SYS/broker", false),
            ("+/x", "$SYS/x", false),
            ("a/b", "a/b", true),
            ("a/b", "a/c", false),
            ("+", "", true),
        ] {
            assert_eq!(matches(filter, topic), expected, "{filter} vs {topic}");
        }
        assert!(check_filter("a/+/#").is_ok());
        for bad in ["", "a/b+", "a/#/b", "a#", "a\0b"] {
            assert!(check_filter(bad).is_err(), "{bad:?}");
        }
        assert!(check_name("a/+").is_err());
        for (a, b, expected) in [
            ("devices/+/camera", "devices/cam-1/+", true),
            ("devices/+/camera", "devices/+/sensor", false),
            ("devices/#", "devices", true),
            ("a/b", "a/b/c", false),
            ("+/+", "a/#", true),
            ("a", "b", false),
        ] {
            assert_eq!(overlap(a, b), expected, "{a} vs {b}");
            assert_eq!(overlap(b, a), expected, "{b} vs {a}");
        }
    }

    #[test]
    fn templates_render_their_fields() {
        let template = Template::parse("results/{gateway}/{device}/{plugin}@{version}").unwrap();
        let fields = Fields {
            device: "cam-1",
            plugin: "digits",
            version: "1.2.0",
            gateway: "gw-1",
        };
        assert_eq!(template.render(&fields), "results/gw-1/cam-1/digits@1.2.0");
        assert!(template.uses_device());
        assert!(!Template::parse("results/all").unwrap().uses_device());
        for bad in [
            "results/{colour}",
            "results/{device",
            "results/+",
            "$SYS/x",
            "",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(level("devices/cam-1/camera", 1), Some("cam-1"));
        assert_eq!(level("devices", 1), None);
    }
}
