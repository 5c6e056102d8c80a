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
///
/// Alias numbers are fixed slots: slot `i` is alias `i + 1`, and an alias keeps its number for as
/// long as the client may hold it. The client's table is only ever changed by a PUBLISH that
/// reached it, so the broker never renumbers: renumbering would make the client resolve later
/// aliases to other topics.
#[derive(Debug, Default)]
pub struct OutboundAliases {
    /// Slot `i` holds alias `i + 1`: `(topic, last use)`, or `None` when the slot is free (never
    /// used, or its assignment was withdrawn before the client saw it). Grows up to `max`.
    slots: Vec<Option<(TopicName, u64)>>,
    /// The most aliases this connection may use (0: none).
    max: u16,
    /// Use counter for least-recently-used eviction.
    tick: u64,
}

impl OutboundAliases {
    /// Aliases up to `max` (the client's Topic Alias Maximum, already capped by config).
    pub fn new(max: u16) -> OutboundAliases {
        OutboundAliases {
            slots: Vec::new(),
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
        let tick = self.tick;
        let mut free = None;
        let mut lru: Option<(usize, u64)> = None;
        for (i, slot) in self.slots.iter_mut().enumerate() {
            match slot {
                Some((t, used)) if t == topic => {
                    *used = tick;
                    return AliasUse::Known(alias_of(i));
                }
                Some((_, used)) => {
                    if lru.is_none_or(|(_, u)| *used < u) {
                        lru = Some((i, *used));
                    }
                }
                None => {
                    free.get_or_insert(i);
                }
            }
        }
        let i = match free {
            Some(i) => i,
            None if self.slots.len() < usize::from(self.max) => {
                self.slots.push(None);
                self.slots.len() - 1
            }
            None => match lru {
                Some((i, _)) => i,
                None => return AliasUse::None,
            },
        };
        self.slots[i] = Some((topic.clone(), tick));
        AliasUse::Assign(alias_of(i))
    }

    /// Withdraws an assignment whose PUBLISH was not sent after all. Only that slot is freed:
    /// every other alias keeps its number, because the client still holds them. The client may
    /// still map the freed number to an older topic; that does no harm, since the next use of
    /// the slot is an [`AliasUse::Assign`] carrying the full topic.
    pub fn forget(&mut self, alias: u16) {
        if let Some(slot) = usize::from(alias)
            .checked_sub(1)
            .and_then(|i| self.slots.get_mut(i))
        {
            *slot = None;
        }
    }
}

/// The alias number of slot `i` (slots are at most a `u16` Topic Alias Maximum).
fn alias_of(i: usize) -> u16 {
    u16::try_from(i + 1).unwrap_or(u16::MAX)
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

    #[test]
    fn forget_after_an_eviction_keeps_every_other_number() {
        // The client holds 1 -> a, 2 -> b. "c" evicts "a" from alias 1, but that PUBLISH is not
        // sent: the client still maps 1 -> a and 2 -> b, so "b" must stay alias 2.
        let mut a = OutboundAliases::new(2);
        assert_eq!(a.name(&t("a")), AliasUse::Assign(1));
        assert_eq!(a.name(&t("b")), AliasUse::Assign(2));
        assert_eq!(a.name(&t("c")), AliasUse::Assign(1));
        a.forget(1);
        assert_eq!(a.name(&t("b")), AliasUse::Known(2));
        // The freed slot is used before any eviction, with the full topic.
        assert_eq!(a.name(&t("d")), AliasUse::Assign(1));
        assert_eq!(a.name(&t("b")), AliasUse::Known(2));
    }
}
