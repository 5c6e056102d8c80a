//! MQTT topics and filters as NATS subjects.
//!
//! A topic `a/b/c` is the subject `sluice.msg.a.b.c`: each topic level is one subject token.
//! NATS tokens are separated by `.`, cannot be empty or contain whitespace, and `*` / `>` are
//! its wildcards, so a level is escaped byte by byte:
//!
//! | in the level | in the token |
//! |---|---|
//! | `%` | `%25` |
//! | `.` | `%2E` |
//! | `*` | `%2A` |
//! | `>` | `%3E` |
//! | space, other ASCII control characters and DEL (bytes 0x00-0x20, 0x7F) | `%XX` (upper-case hex) |
//! | an empty level (`a//b`, `/a`, `a/`) | `%` alone (a literal `%` is always `%25`, so this is unambiguous) |
//! | anything else, `$` and UTF-8 included | itself |
//!
//! `$` needs no escape: every subject starts with `sluice.msg.`, so a `$SYS/x` topic
//! (`sluice.msg.$SYS.x`) never looks like a NATS system subject (`$SYS.>`, `$JS.>`). A filter
//! maps level by level the same way, with `+` as `*`; `#` becomes two subjects, its parent
//! level and the parent followed by `>` (MQTT's `a/#` also matches `a` itself), and the filter
//! `#` alone is `sluice.msg.>`. NATS may therefore deliver more than MQTT matches (`#` and `+`
//! at the first level also match `$` topics in NATS): the receiving node matches each message
//! against its own subscription tree, which applies MQTT's rules ([MQTT-4.7.2-1]).

/// The prefix of the subjects of QoS 1/2 messages: the JetStream stream `sluice_messages`
/// keeps what is published under it (`sluice.msg.>`), for persistent sessions that move.
pub const MSG_PREFIX: &str = "sluice.msg";

/// The prefix of the subjects of QoS 0 messages: NATS core only, never stored. (A token of its
/// own, so `sluice.msg.>` does not match it.)
pub const QOS0_PREFIX: &str = "sluice.msg0";

/// The prefixes a node subscribes under for each filter: both QoS.
pub const PREFIXES: [&str; 2] = [MSG_PREFIX, QOS0_PREFIX];

/// Appends `level` escaped as one token.
fn push_level(level: &str, out: &mut String) {
    if level.is_empty() {
        out.push('%');
        return;
    }
    for c in level.chars() {
        match c {
            '%' | '.' | '*' | '>' | '\u{0}'..=' ' | '\u{7f}' => {
                out.push_str(&format!("%{:02X}", c as u32));
            }
            c => out.push(c),
        }
    }
}

/// The subject a QoS 1/2 message published to `topic` goes to.
pub fn topic_subject(topic: &str) -> String {
    topic_subject_in(MSG_PREFIX, topic)
}

/// The subject of `topic` under `prefix` ([`MSG_PREFIX`] or [`QOS0_PREFIX`]).
pub fn topic_subject_in(prefix: &str, topic: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + topic.len() + 8);
    out.push_str(prefix);
    for level in topic.split('/') {
        out.push('.');
        push_level(level, &mut out);
    }
    out
}

/// The subjects to subscribe to for an MQTT filter (without `$share/{group}/`): one, or two
/// for a filter ending in `#` after at least one level.
pub fn filter_subjects(filter: &str) -> Vec<String> {
    filter_subjects_in(MSG_PREFIX, filter)
}

/// [`filter_subjects`] under `prefix` ([`MSG_PREFIX`] or [`QOS0_PREFIX`]).
pub fn filter_subjects_in(prefix: &str, filter: &str) -> Vec<String> {
    let mut base = String::with_capacity(prefix.len() + filter.len() + 8);
    base.push_str(prefix);
    for level in filter.split('/') {
        match level {
            "#" => {
                if base.len() == prefix.len() {
                    // `#` alone: every topic (each has at least one level).
                    return vec![format!("{base}.>")];
                }
                let all_below = format!("{base}.>");
                return vec![base, all_below];
            }
            "+" => base.push_str(".*"),
            level => {
                base.push('.');
                push_level(level, &mut base);
            }
        }
    }
    vec![base]
}

/// Un-escapes a subject made by [`topic_subject`] back into its topic; None if `subject` is
/// not one.
pub fn subject_topic(subject: &str) -> Option<String> {
    let rest = subject.strip_prefix(MSG_PREFIX)?.strip_prefix('.')?;
    let mut topic = String::with_capacity(rest.len());
    for (i, token) in rest.split('.').enumerate() {
        if i > 0 {
            topic.push('/');
        }
        if token == "%" {
            continue;
        }
        let mut bytes = Vec::with_capacity(token.len());
        let mut it = token.bytes();
        while let Some(b) = it.next() {
            if b == b'%' {
                let hex = [it.next()?, it.next()?];
                let hex = std::str::from_utf8(&hex).ok()?;
                bytes.push(u8::from_str_radix(hex, 16).ok()?);
            } else {
                bytes.push(b);
            }
        }
        topic.push_str(&String::from_utf8(bytes).ok()?);
    }
    Some(topic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_become_tokens_with_escapes() {
        assert_eq!(topic_subject("a/b/c"), "sluice.msg.a.b.c");
        assert_eq!(topic_subject("a.b/c*d/>"), "sluice.msg.a%2Eb.c%2Ad.%3E");
        assert_eq!(topic_subject("a b/%"), "sluice.msg.a%20b.%25");
        assert_eq!(topic_subject("a//b"), "sluice.msg.a.%.b");
        assert_eq!(topic_subject("/a/"), "sluice.msg.%.a.%");
        assert_eq!(topic_subject("$SYS/x"), "sluice.msg.$SYS.x");
        assert_eq!(topic_subject("tab\there"), "sluice.msg.tab%09here");
        assert_eq!(topic_subject("ünï"), "sluice.msg.ünï");
    }

    #[test]
    fn filters_map_wildcards() {
        assert_eq!(filter_subjects("a/+/c"), vec!["sluice.msg.a.*.c"]);
        assert_eq!(
            filter_subjects("a/#"),
            vec!["sluice.msg.a", "sluice.msg.a.>"]
        );
        assert_eq!(filter_subjects("#"), vec!["sluice.msg.>"]);
        assert_eq!(
            filter_subjects("+/#"),
            vec!["sluice.msg.*", "sluice.msg.*.>"]
        );
        assert_eq!(filter_subjects("a.b/ /"), vec!["sluice.msg.a%2Eb.%20.%"]);
    }

    #[test]
    fn subjects_round_trip() {
        for t in ["a/b", "a//b", "/", "%/%25/.", "x y/*/>", "$SYS/ü", "a/"] {
            assert_eq!(subject_topic(&topic_subject(t)).as_deref(), Some(t), "{t}");
        }
        assert_eq!(subject_topic("other.a"), None);
        assert_eq!(subject_topic("sluice.msg.a%2"), None);
    }

    /// NATS's matching of the mapped subjects agrees with MQTT's on every topic MQTT matches
    /// (NATS may match more at a leading wildcard, never less).
    #[test]
    fn nats_matching_covers_mqtt_matching() {
        fn nats_matches(pattern: &str, subject: &str) -> bool {
            let p: Vec<&str> = pattern.split('.').collect();
            let s: Vec<&str> = subject.split('.').collect();
            for (i, tok) in p.iter().enumerate() {
                match *tok {
                    ">" => return s.len() > i,
                    "*" if i < s.len() => {}
                    t if i < s.len() && s[i] == t => {}
                    _ => return false,
                }
            }
            p.len() == s.len()
        }
        let topics = [
            "a", "a/b", "a/b/c", "a//c", "a/", "/a", "b/a.x", "a/*", "a/>",
        ];
        let filters = [
            "a", "a/#", "#", "+", "+/+", "a/+", "a/+/c", "+/#", "/+", "a/*",
        ];
        for f in filters {
            for t in topics {
                let mqtt = sluice_codec::topic_matches(f, t);
                let nats = filter_subjects(f)
                    .iter()
                    .filter(|p| nats_matches(p, &topic_subject(t)))
                    .count();
                assert_eq!(mqtt, nats == 1, "filter {f} topic {t}: nats {nats}");
            }
        }
    }
}
