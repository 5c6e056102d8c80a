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

/// Whether `topic` is one of the broker's own status topics (`$SYS/...`), which it publishes
/// itself and does not log to the store (they are rebuilt after a restart).
pub fn is_broker_status(topic: &str) -> bool {
    topic.split('/').next() == Some("$SYS")
}

/// The prefix of delayed publishes: `$delayed/{seconds}/{topic}`.
pub const DELAYED_PREFIX: &str = "$delayed/";

/// A well-formed `$delayed/{seconds}/{topic}`: the delay and the target topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delayed<'a> {
    pub seconds: u32,
    /// The topic the message is delivered to (a valid topic name: no wildcard, not `$`).
    pub target: &'a str,
}

/// Why a `$delayed` topic was refused. Every case is answered 0x90 Topic Name Invalid ("the
/// Topic Name is correct, but is not accepted by this Server", 3.4.2.1), with
/// [`DelayedTopicError::reason`] as the Reason String.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DelayedTopicError {
    NoSeconds,
    NotANumber,
    TooLong,
    EmptyTarget,
    Wildcard,
    SystemTarget,
}

impl DelayedTopicError {
    /// What is wrong, for the log and the Reason String.
    pub const fn reason(self) -> &'static str {
        match self {
            DelayedTopicError::NoSeconds => {
                "$delayed topic without a delay: expected $delayed/{seconds}/{topic}"
            }
            DelayedTopicError::NotANumber => {
                "$delayed delay is not a whole number of seconds: expected $delayed/{seconds}/{topic}"
            }
            DelayedTopicError::TooLong => "$delayed delay is over mqtt.max_delay_seconds",
            DelayedTopicError::EmptyTarget => {
                "$delayed topic without a target topic: expected $delayed/{seconds}/{topic}"
            }
            DelayedTopicError::Wildcard => {
                "$delayed target topic contains a wildcard [MQTT-3.3.2-2]"
            }
            DelayedTopicError::SystemTarget => {
                "$delayed target topic starts with $ (server topics cannot be delayed to)"
            }
        }
    }
}

impl std::fmt::Display for DelayedTopicError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for DelayedTopicError {}

/// Parses `topic` as a delayed publish: None when it is not one (its first level is not
/// `$delayed`), Some(Err) when it is one but malformed, or its delay is over `max_seconds`.
pub fn delayed(topic: &str, max_seconds: u32) -> Option<Result<Delayed<'_>, DelayedTopicError>> {
    let rest = match topic.strip_prefix(DELAYED_PREFIX) {
        Some(rest) => rest,
        None if topic == "$delayed" => return Some(Err(DelayedTopicError::NoSeconds)),
        None => return None,
    };
    Some(parse_delayed(rest, max_seconds))
}

fn parse_delayed(rest: &str, max_seconds: u32) -> Result<Delayed<'_>, DelayedTopicError> {
    let (seconds, target) = rest.split_once('/').unwrap_or((rest, ""));
    if seconds.is_empty() {
        return Err(DelayedTopicError::NoSeconds);
    }
    if !seconds.bytes().all(|b| b.is_ascii_digit()) {
        return Err(DelayedTopicError::NotANumber);
    }
    // All digits: an error here is only an overflow.
    let seconds = seconds
        .parse::<u64>()
        .map_err(|_| DelayedTopicError::TooLong)?;
    if seconds > u64::from(max_seconds) {
        return Err(DelayedTopicError::TooLong);
    }
    if target.is_empty() {
        return Err(DelayedTopicError::EmptyTarget);
    }
    if target.contains(['+', '#']) {
        return Err(DelayedTopicError::Wildcard);
    }
    if is_system(target) {
        return Err(DelayedTopicError::SystemTarget);
    }
    Ok(Delayed {
        seconds: seconds as u32,
        target,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delayed_topics() {
        use DelayedTopicError::*;
        let ok = |seconds, target| Some(Ok(Delayed { seconds, target }));
        assert_eq!(delayed("a/b", 10), None);
        assert_eq!(delayed("$delayedx/1/a", 10), None);
        assert_eq!(delayed("$delayed/5/a/b", 10), ok(5, "a/b"));
        assert_eq!(delayed("$delayed/0/a", 10), ok(0, "a"));
        assert_eq!(delayed("$delayed/10/a/", 10), ok(10, "a/"));
        assert_eq!(delayed("$delayed", 10), Some(Err(NoSeconds)));
        assert_eq!(delayed("$delayed/", 10), Some(Err(NoSeconds)));
        assert_eq!(delayed("$delayed//a", 10), Some(Err(NoSeconds)));
        assert_eq!(delayed("$delayed/x/a", 10), Some(Err(NotANumber)));
        assert_eq!(delayed("$delayed/-1/a", 10), Some(Err(NotANumber)));
        assert_eq!(delayed("$delayed/1.5/a", 10), Some(Err(NotANumber)));
        assert_eq!(delayed("$delayed/11/a", 10), Some(Err(TooLong)));
        let huge = format!("$delayed/{}/a", "9".repeat(40));
        assert_eq!(delayed(&huge, u32::MAX), Some(Err(TooLong)));
        assert_eq!(delayed("$delayed/5", 10), Some(Err(EmptyTarget)));
        assert_eq!(delayed("$delayed/5/", 10), Some(Err(EmptyTarget)));
        assert_eq!(delayed("$delayed/5/a/+", 10), Some(Err(Wildcard)));
        assert_eq!(delayed("$delayed/5/#", 10), Some(Err(Wildcard)));
        assert_eq!(delayed("$delayed/5/$SYS/x", 10), Some(Err(SystemTarget)));
        assert_eq!(
            delayed("$delayed/5/$delayed/1/a", 10),
            Some(Err(SystemTarget))
        );
        assert_eq!(delayed("$delayed/4294967/a", 4_294_967), ok(4_294_967, "a"));
    }

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
