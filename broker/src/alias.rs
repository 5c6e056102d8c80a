//! Outbound Topic Aliases (5.0, 3.3.2.3.4): which topics a connection sends as a 2-byte alias.
//!
//! Policy: least recently used. The first PUBLISH on a topic carries the topic and a new alias;
//! later ones carry the alias and an empty topic. When every alias the client allows (its
//! Topic Alias Maximum, capped by `mqtt.max_outbound_topic_aliases`) is taken, the least recently
//! used topic gives up its alias number to the new topic, which is sent in full with that alias
//! (re-mapping an alias is allowed at any time [MQTT-3.3.2-8 note]). Mappings live and die with
//! the connection [MQTT-3.3.2-7]. Memory: one `TopicName` (a shared `Bytes`) and 10 bytes per
//! alias; lookups scan at most the configured maximum (default 32) entries, no hashing.

use sluice_codec::TopicName;

/// How a PUBLISH should name its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AliasUse {
    /// The client knows this alias: send it with an empty topic.
    Known(u16),
    /// Send the full topic and this alias, which the client will remember.
    Assign(u16),
    /// Aliases are off for this connection: send the full topic only.
    None,
}

/// The aliases of one connection, towards the client.
#[derive(Debug, Default)]
pub struct OutboundAliases {
    /// (topic, alias, last use). Alias numbers are 1..=entries.len() in assignment order.
    entries: Vec<(TopicName, u16, u64)>,
    /// The most aliases this connection may use (0: none).
    max: u16,
    /// Use counter for least-recently-used eviction.
    tick: u64,
}

impl OutboundAliases {
    /// Aliases up to `max` (the client's Topic Alias Maximum, already capped by config).
    pub fn new(max: u16) -> OutboundAliases {
        OutboundAliases {
            entries: Vec::new(),
            max,
            tick: 0,
        }
    }

    /// Decides how to name `topic` in the next PUBLISH, and records the choice.
    pub fn name(&mut self, topic: &TopicName) -> AliasUse {
        if self.max == 0 {
            return AliasUse::None;
        }
        self.tick += 1;
        if let Some(e) = self.entries.iter_mut().find(|e| e.0 == *topic) {
            e.2 = self.tick;
            return AliasUse::Known(e.1);
        }
        if self.entries.len() < usize::from(self.max) {
            let alias = self.entries.len() as u16 + 1;
            self.entries.push((topic.clone(), alias, self.tick));
            return AliasUse::Assign(alias);
        }
        let Some(lru) = self.entries.iter_mut().min_by_key(|e| e.2) else {
            return AliasUse::None;
        };
        *lru = (topic.clone(), lru.1, self.tick);
        AliasUse::Assign(lru.1)
    }

    /// Forgets an assignment whose PUBLISH was not sent after all.
    pub fn forget(&mut self, alias: u16) {
        self.entries.retain(|e| e.1 != alias);
        // Keep alias numbers dense so `name` can hand out len()+1 again.
        for (i, e) in self.entries.iter_mut().enumerate() {
            e.1 = i as u16 + 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> TopicName {
        TopicName::try_from(s).unwrap()
    }

    #[test]
    fn assigns_then_reuses_then_evicts_least_recently_used() {
        let mut a = OutboundAliases::new(2);
        assert_eq!(a.name(&t("a")), AliasUse::Assign(1));
        assert_eq!(a.name(&t("b")), AliasUse::Assign(2));
        assert_eq!(a.name(&t("a")), AliasUse::Known(1));
        // "b" is now least recently used: "c" takes its alias.
        assert_eq!(a.name(&t("c")), AliasUse::Assign(2));
        assert_eq!(a.name(&t("c")), AliasUse::Known(2));
        assert_eq!(a.name(&t("a")), AliasUse::Known(1));
    }

    #[test]
    fn disabled_when_client_allows_none() {
        let mut a = OutboundAliases::new(0);
        assert_eq!(a.name(&t("a")), AliasUse::None);
    }

    #[test]
    fn forget_frees_the_number() {
        let mut a = OutboundAliases::new(2);
        assert_eq!(a.name(&t("a")), AliasUse::Assign(1));
        a.forget(1);
        assert_eq!(a.name(&t("b")), AliasUse::Assign(1));
    }
}
