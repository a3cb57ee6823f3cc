//! The MQTT topic names, in one place. Group and gateway names are checked by
//! [`check_fleet_name`](crate::check_fleet_name) and plugin names by the notice, so none of
//! them holds a `/`, `+` or `#`.

/// Every fleet topic starts with this; an ACL gives the cloud write access to it all and a
/// gateway write access to its own status topic only.
pub const ROOT: &str = "edgeplug/fleet";

/// The group's notice for `plugin`.
pub fn group_plugin(group: &str, plugin: &str) -> String {
    format!("{ROOT}/{group}/plugins/{plugin}")
}

/// A pin: the notice for `plugin` on gateway `id` only.
pub fn pin_plugin(group: &str, id: &str, plugin: &str) -> String {
    format!("{ROOT}/{group}/gateways/{id}/plugins/{plugin}")
}

/// The group's notices, every plugin.
pub fn group_filter(group: &str) -> String {
    format!("{ROOT}/{group}/plugins/+")
}

/// One gateway's pins, every plugin.
pub fn pin_filter(group: &str, id: &str) -> String {
    format!("{ROOT}/{group}/gateways/{id}/plugins/+")
}

/// A gateway's retained status.
pub fn status(group: &str, id: &str) -> String {
    format!("{ROOT}/{group}/gateways/{id}/status")
}

/// Every gateway's status in a group.
pub fn status_filter(group: &str) -> String {
    format!("{ROOT}/{group}/gateways/+/status")
}

/// What a notice topic names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoticeTopic {
    Group {
        group: String,
        plugin: String,
    },
    Pin {
        group: String,
        id: String,
        plugin: String,
    },
}

impl NoticeTopic {
    pub fn plugin(&self) -> &str {
        match self {
            NoticeTopic::Group { plugin, .. } | NoticeTopic::Pin { plugin, .. } => plugin,
        }
    }
}

/// Parses a notice topic; `None` for anything else.
pub fn parse_notice_topic(topic: &str) -> Option<NoticeTopic> {
    let rest = topic.strip_prefix(ROOT)?.strip_prefix('/')?;
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        [group, "plugins", plugin] => Some(NoticeTopic::Group {
            group: group.to_string(),
            plugin: plugin.to_string(),
        }),
        [group, "gateways", id, "plugins", plugin] => Some(NoticeTopic::Pin {
            group: group.to_string(),
            id: id.to_string(),
            plugin: plugin.to_string(),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notice_topics_round_trip() {
        assert_eq!(
            parse_notice_topic(&group_plugin("g1", "digits")),
            Some(NoticeTopic::Group {
                group: "g1".into(),
                plugin: "digits".into()
            })
        );
        assert_eq!(
            parse_notice_topic(&pin_plugin("g1", "gw-7", "digits")),
            Some(NoticeTopic::Pin {
                group: "g1".into(),
                id: "gw-7".into(),
                plugin: "digits".into()
            })
        );
        assert_eq!(parse_notice_topic(&status("g1", "gw-7")), None);
        assert_eq!(parse_notice_topic("edgeplug/fleetX/g/plugins/p"), None);
        assert_eq!(parse_notice_topic("other/g/plugins/p"), None);
    }
}
