//! What topics beginning with `$` mean to the broker (4.7.2). The codec decides whether a topic
//! name or filter is well formed; this module decides how the broker treats the `$` ones, so
//! the rule is written once for the subscription tree, the retained store and the ACL.

/// Whether `topic` (or its first level) is a server topic: one whose first level starts with
/// `$`. A filter whose first level is a wildcard never matches it [MQTT-4.7.2-1].
pub fn is_system(topic: &str) -> bool {
    topic.starts_with('$')
}

/// Whether a filter whose first level is `filter_first` may match topics whose first level is
/// `topic_first`, as far as [MQTT-4.7.2-1] goes: a leading `+` or `#` never reaches a `$` topic.
pub fn wildcard_may_reach(filter_first: &str, topic_first: &str) -> bool {
    !(matches!(filter_first, "+" | "#") && is_system(topic_first))
}

/// Whether clients may publish to `topic`: `$SYS` (the broker's own status topics) and
/// `$share` (a subscription prefix, 4.8.2) are the broker's.
pub fn is_reserved_for_clients(topic: &str) -> bool {
    let first = topic.split('/').next().unwrap_or(topic);
    first == "$SYS" || first == "$share"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollar_topics() {
        assert!(is_system("$SYS/broker/uptime"));
        assert!(!is_system("a/$SYS"));
        assert!(!wildcard_may_reach("#", "$SYS"));
        assert!(!wildcard_may_reach("+", "$app"));
        assert!(wildcard_may_reach("$SYS", "$SYS"));
        assert!(wildcard_may_reach("+", "a"));
        assert!(is_reserved_for_clients("$SYS/x"));
        assert!(is_reserved_for_clients("$SYS"));
        assert!(is_reserved_for_clients("$share/g/t"));
        assert!(!is_reserved_for_clients("$SYSTEM/x"));
        assert!(!is_reserved_for_clients("$app/x"));
    }
}
