//! Topic access control from a Mosquitto-style `acl_file` (mosquitto.conf(5), "acl_file").
//!
//! # Format
//! One rule per line; leading and trailing whitespace is ignored, as are blank lines and lines
//! whose first non-blank character is `#`.
//!
//! ```text
//! # anonymous clients (no username) may only read the weather
//! topic read weather/#
//!
//! user alice
//! topic readwrite home/alice/#
//! topic deny home/alice/secrets/#
//! # no access word: readwrite
//! topic sensors/+/temperature
//!
//! # every client; %c = its client id
//! pattern write devices/%c/status
//! # every client with a username; %u = its username
//! pattern read users/%u/inbox/#
//! ```
//!
//! There are no end-of-line comments: `#` after a keyword is part of the filter.
//!
//! * `topic [read|write|readwrite|deny] <filter>`: before the first `user` line the rule applies
//!   to anonymous clients only; after `user <name>` it applies to that user (a user may have
//!   several sections; they accumulate).
//! * `user <name>`: starts a user's section; the name is the rest of the line.
//! * `pattern [read|write|readwrite|deny] <filter>`: applies to every client, anonymous
//!   included, wherever it appears. `%c` is replaced by the client id and `%u` by the username.
//!   A pattern using `%u` never applies to an anonymous client. A pattern never applies to a
//!   client whose id (for `%c`) or username (for `%u`) contains `+`, `#` or `/`: substituting it
//!   would turn the pattern into a wider filter (`devices/%c/#` with client id `#`). This holds
//!   for `deny` patterns too, so such a client escapes a `deny` pattern using `%c`/`%u`; it also
//!   gets no grant from one, so this only matters when another rule grants the same topics.
//!
//! As in Mosquitto, a `topic`/`pattern` line with one word after the keyword has no access word
//! (readwrite); with two or more, the first is the access word and the rest of the line is the
//! filter, which may contain spaces (`topic read my topic`). `topic read` is thus the filter
//! `read` with readwrite access, again as in Mosquitto.
//!
//! Every filter is validated as an MQTT topic filter (4.7.1) when the file is loaded. An unknown
//! keyword is a load error, as in Mosquitto 2.0 (1.x skipped such lines): a typo in an ACL
//! should not silently drop a rule.
//!
//! # Decision
//! The rules that apply to a client are its section (the anonymous one, or its user's; a user
//! with no section has none) plus all patterns.
//! * [`Acl::check_topic`]: refused if any applicable `deny` rule matches the topic (deny wins
//!   whatever the order of lines); otherwise allowed if an applicable rule granting the requested
//!   access matches; otherwise refused (default deny). Matching follows MQTT, including
//!   [MQTT-4.7.2-1]: a rule starting with `+` or `#` does not match `$SYS/...`; to grant a `$`
//!   topic the rule must name its first level.
//! * [`Acl::check_subscribe`]: allowed if *some* topic the filter can match is readable
//!   ([`Acl::check_topic`] with Read would allow it); refused only when none is. So a `#`
//!   subscription next to `topic deny test/nosubscribe` is granted, and `test/nosubscribe` alone
//!   is refused. Granting such a filter is safe because the broker checks every delivery
//!   (live and retained) against [`Acl::check_topic`]: a message on a denied topic never reaches
//!   the subscriber. The decision is exact, not a heuristic: see `Acl::readable_topic_exists`.
//!   A shared subscription (`$share/{group}/{filter}`) is stricter, because a message waiting in
//!   the group's queue goes to whichever member frees a slot first: it is allowed only if one
//!   applicable read rule *covers* the filter (matches every topic it can match, see `covers`)
//!   and no applicable `deny` rule *intersects* it (see `intersects`), so every member can read
//!   every message of the group.

use super::filter_algebra::{
    covers, fresh_length, intersection, intersects, is_wildcard, witnesses,
};
use crate::topic::is_system;
use sluice_codec::topic_matches;
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::path::Path;

/// The kind of access being checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Receiving messages published to a topic.
    Read,
    /// Publishing to a topic.
    Write,
}

/// A loaded ACL file, pre-split so that a check looks only at the rules that can apply.
#[derive(Debug)]
pub struct Acl {
    /// `topic` lines before the first `user` line: the only rules (besides patterns) for clients
    /// without a username, kept apart so anonymous checks never hash anything.
    anonymous: RuleSet,
    /// `topic` lines per user section, keyed by username: one hash lookup per check instead of a
    /// scan over every user's rules.
    users: HashMap<String, RuleSet>,
    /// `pattern` lines, which apply to every client.
    patterns: RuleSet,
    /// True if some pattern uses `%c` or `%u`: only then does a check need to vet the client id
    /// and username for substitution.
    has_templates: bool,
    /// True if some pattern uses `%c`: only then can two clients with the same username get
    /// different answers, so a caller may share one answer per username otherwise.
    uses_client_id: bool,
}

/// The rules of one scope, split by what they grant so a check scans only the relevant lists.
#[derive(Debug, Default)]
struct RuleSet {
    /// `deny` rules: consulted first, since any match refuses.
    deny: Vec<Rule>,
    /// `read` and `readwrite` rules.
    read: Vec<Rule>,
    /// `write` and `readwrite` rules.
    write: Vec<Rule>,
}

/// One filter from the file.
#[derive(Debug, Clone)]
struct Rule {
    /// The filter as written; matched directly (no allocation) when there is no template.
    filter: Box<str>,
    /// For a `pattern` containing `%c` or `%u`: the filter pre-split into levels, so a topic can
    /// be matched without building the substituted filter.
    template: Option<Template>,
}

/// A pattern filter with substitutions, split into levels at load.
#[derive(Debug, Clone)]
struct Template {
    /// The levels; substitutions never add levels because substituted values contain no `/`.
    levels: Box<[TLevel]>,
    /// Uses `%c`: the rule does not apply when the client id is unfit for substitution.
    needs_client_id: bool,
    /// Uses `%u`: the rule does not apply to anonymous clients or unfit usernames.
    needs_username: bool,
}

/// One level of a [`Template`].
#[derive(Debug, Clone)]
enum TLevel {
    /// `+`.
    Plus,
    /// `#` (always the last level).
    Hash,
    /// A level without substitutions, compared as is.
    Literal(Box<str>),
    /// A level containing `%c` and/or `%u`, as the pieces to concatenate.
    Pieces(Box<[Piece]>),
}

/// Part of a [`TLevel::Pieces`] level.
#[derive(Debug, Clone)]
enum Piece {
    /// Text copied as is.
    Text(Box<str>),
    /// `%c`.
    ClientId,
    /// `%u`.
    Username,
}

/// The client being checked, with the values a pattern may substitute (`None` when a value is
/// absent or unfit: it contains `+`, `#` or `/`).
#[derive(Debug, Clone, Copy)]
struct Who<'a> {
    /// Client id, if fit for `%c`.
    client_id: Option<&'a str>,
    /// Username, if present and fit for `%u`.
    username: Option<&'a str>,
}

impl<'a> Who<'a> {
    fn new(user: Option<&'a str>, client_id: &'a str) -> Who<'a> {
        let fit = |s: &&str| !s.contains(['+', '#', '/']);
        Who {
            client_id: Some(client_id).filter(fit),
            username: user.filter(fit),
        }
    }

    /// For an ACL without templates: nothing is ever substituted.
    const NOBODY: Who<'static> = Who {
        client_id: None,
        username: None,
    };
}

/// Why an ACL file could not be loaded. The message names the file, the line and the problem,
/// e.g. ``acl.conf:7: unknown access `rw` (expected read, write, readwrite or deny)``.
#[derive(Debug, thiserror::Error)]
#[error("{}: {}", Location(.source_name, .line), .kind)]
pub struct AclLoadError {
    /// The file path (or the name given to [`Acl::parse`]), so the operator knows which file.
    source_name: String,
    /// 1-based line number; `None` when the file as a whole could not be read.
    line: Option<usize>,
    /// What was wrong.
    kind: ErrorKind,
}

/// `file:line` or `file`.
struct Location<'a>(&'a str, &'a Option<usize>);

impl fmt::Display for Location<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self.1 {
            Some(line) => write!(f, "{}:{line}", self.0),
            None => f.write_str(self.0),
        }
    }
}

/// The problems [`AclLoadError`] reports.
#[derive(Debug, thiserror::Error)]
enum ErrorKind {
    #[error("cannot read: {0}")]
    Read(std::io::Error),
    #[error("unknown keyword `{0}` (expected topic, pattern or user)")]
    UnknownKeyword(String),
    #[error("unknown access `{0}` (expected read, write, readwrite or deny)")]
    UnknownAccess(String),
    #[error("`{0}` without a topic filter")]
    MissingFilter(&'static str),
    #[error("invalid topic filter `{filter}`: {why}")]
    InvalidFilter { filter: String, why: &'static str },
    #[error("`user` without a name")]
    MissingUser,
}

/// What a rule line grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grant {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl RuleSet {
    fn add(&mut self, grant: Grant, rule: Rule) {
        match grant {
            Grant::Read => self.read.push(rule),
            Grant::Write => self.write.push(rule),
            Grant::ReadWrite => {
                self.read.push(rule.clone());
                self.write.push(rule);
            }
            Grant::Deny => self.deny.push(rule),
        }
    }
}

impl Acl {
    /// Parses ACL text; `source_name` (usually the path) is used in error messages.
    pub fn parse(text: &str, source_name: &str) -> Result<Acl, AclLoadError> {
        let mut acl = Acl {
            anonymous: RuleSet::default(),
            users: HashMap::new(),
            patterns: RuleSet::default(),
            has_templates: false,
            uses_client_id: false,
        };
        // The section `topic` lines go to: None = anonymous.
        let mut user: Option<String> = None;
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (index, raw) in text.lines().enumerate() {
            let err = |kind| AclLoadError {
                source_name: source_name.to_owned(),
                line: Some(index + 1),
                kind,
            };
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, rest) = split_word(line);
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(err(ErrorKind::MissingUser));
                    }
                    user = Some(rest.to_owned());
                }
                "topic" | "pattern" => {
                    let keyword = if keyword == "topic" {
                        "topic"
                    } else {
                        "pattern"
                    };
                    let (grant, filter) = parse_rule(keyword, rest).map_err(err)?;
                    if keyword == "topic" {
                        let set = match &user {
                            None => &mut acl.anonymous,
                            Some(name) => acl.users.entry(name.clone()).or_default(),
                        };
                        set.add(grant, Rule::topic(filter));
                    } else {
                        let rule = Rule::pattern(filter);
                        acl.has_templates |= rule.template.is_some();
                        acl.uses_client_id |=
                            rule.template.as_ref().is_some_and(|t| t.needs_client_id);
                        acl.patterns.add(grant, rule);
                    }
                }
                other => return Err(err(ErrorKind::UnknownKeyword(other.to_owned()))),
            }
        }
        Ok(acl)
    }

    /// Reads and parses an ACL file.
    pub fn load(path: &Path) -> Result<Acl, AclLoadError> {
        let name = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Acl::parse(&text, &name),
            Err(e) => Err(AclLoadError {
                source_name: name,
                line: None,
                kind: ErrorKind::Read(e),
            }),
        }
    }

    /// May `user` (None = anonymous) / `client_id` publish to (Write) or receive from (Read) `topic`?
    pub fn check_topic(
        &self,
        user: Option<&str>,
        client_id: &str,
        topic: &str,
        access: Access,
    ) -> bool {
        let who = self.who(user, client_id);
        let sets = self.rule_sets(user);
        if denied(sets.clone(), who, topic) {
            return false;
        }
        sets.into_iter().any(|s| {
            let rules = match access {
                Access::Read => &s.read,
                Access::Write => &s.write,
            };
            rules.iter().any(|r| r.matches(who, topic))
        })
    }

    /// Whether an answer can depend on the client id (some pattern uses `%c`); if not, clients
    /// with the same username always get the same answer.
    pub fn uses_client_id(&self) -> bool {
        self.uses_client_id
    }

    /// May the client subscribe to `filter`, the filter as the client wrote it (a shared
    /// subscription keeps its `$share/{group}/` prefix, which selects the stricter rule)?
    pub fn check_subscribe(&self, user: Option<&str>, client_id: &str, filter: &str) -> bool {
        if let Some(rest) = filter.strip_prefix("$share/") {
            // $share/{group}/{filter} (4.8.2); anything else after `$share/` is not a filter.
            return match rest.split_once('/') {
                Some((group, filter)) if !group.is_empty() && !group.contains(['+', '#']) => {
                    validate_filter(filter).is_ok()
                        && self.every_topic_readable(user, client_id, filter)
                }
                _ => false,
            };
        }
        validate_filter(filter).is_ok() && self.readable_topic_exists(user, client_id, filter)
    }

    /// Is some topic that `filter` (a valid topic filter) matches readable by this client?
    ///
    /// The readable topics of the filter are the union over the applicable read rules R of
    /// (filter ∩ R) minus the topics that an applicable deny rule matches. `filter ∩ R` is itself
    /// a filter P (see [`intersection`]), so the question is whether some topic of some P escapes
    /// every deny rule. It is answered on a few witness topics of each P: every `+` of P becomes
    /// `fresh`, a level equal to no level of any applicable deny rule, and a trailing `#` becomes
    /// 0 to `max_levels + 1` more `fresh` levels (`max_levels`: the most levels of a deny rule;
    /// at least one level in all). Why that is exact:
    /// * At a `fresh` level a deny rule can only have `+` or `#`, which match any level there; at
    ///   a literal level of P every topic of P has that literal. So a deny rule that matches the
    ///   witness of length L matches every topic of P of length L (the `$` rule agrees: a `fresh`
    ///   first level does not start with `$`, and P starts with a `$` literal only if its topics
    ///   do). Hence if some topic of P of length L is readable, the witness of length L is.
    /// * Lengths beyond `max_levels + 1` need no witness of their own: a deny rule without `#`
    ///   matches no topic that long, and one with `#` looks only at levels that every such
    ///   witness has alike, so they all fare as the one of length `max_levels + 1`.
    ///
    /// Each witness is checked as [`Acl::check_topic`] does (R matches it by construction, and
    /// matching R is checked anyway), so deny-wins, templates and sections behave the same.
    fn readable_topic_exists(&self, user: Option<&str>, client_id: &str, filter: &str) -> bool {
        let who = self.who(user, client_id);
        let sets = self.rule_sets(user);
        // The deny rules as this client sees them: their levels decide `fresh` and `max_levels`.
        let mut lengths: Vec<usize> = Vec::new();
        let mut max_levels = 0;
        for rule in sets.clone().flat_map(|s| &s.deny) {
            if let Some(deny) = rule.substitute(who) {
                let levels = deny.split('/');
                max_levels = max_levels.max(levels.clone().count());
                lengths.extend(levels.filter(|l| !is_wildcard(l)).map(str::len));
            }
        }
        let fresh = "x".repeat(fresh_length(lengths));
        for rule in sets.clone().flat_map(|s| &s.read) {
            let Some(read) = rule.substitute(who) else {
                continue;
            };
            let Some(pattern) = intersection(filter, &read) else {
                continue;
            };
            if witnesses(&pattern, &fresh, max_levels)
                .any(|w| rule.matches(who, &w) && !denied(sets.clone(), who, &w))
            {
                return true;
            }
        }
        false
    }

    /// Is every topic that `filter` (a valid topic filter) matches readable by this client?
    /// Sound, not complete: one read rule must cover the whole filter and no deny rule may meet
    /// it (a filter covered only by several read rules together is refused).
    fn every_topic_readable(&self, user: Option<&str>, client_id: &str, filter: &str) -> bool {
        let who = self.who(user, client_id);
        let sets = self.rule_sets(user);
        if sets
            .clone()
            .any(|s| s.deny.iter().any(|r| r.intersects(who, filter)))
        {
            return false;
        }
        sets.into_iter()
            .any(|s| s.read.iter().any(|r| r.covers(who, filter)))
    }

    /// The rule sets that apply to this client: its section, if any, then the patterns.
    fn rule_sets(&self, user: Option<&str>) -> impl Iterator<Item = &RuleSet> + Clone {
        [self.section(user), Some(&self.patterns)]
            .into_iter()
            .flatten()
    }

    /// The `topic` rules for this client: the anonymous section or its user's, if any.
    fn section(&self, user: Option<&str>) -> Option<&RuleSet> {
        match user {
            None => Some(&self.anonymous),
            Some(name) => self.users.get(name),
        }
    }

    /// The substitution values, vetted only if some pattern needs them.
    fn who<'a>(&self, user: Option<&'a str>, client_id: &'a str) -> Who<'a> {
        if self.has_templates {
            Who::new(user, client_id)
        } else {
            Who::NOBODY
        }
    }
}

/// Splits off the first whitespace-separated word; the rest is trimmed at its start.
fn split_word(s: &str) -> (&str, &str) {
    match s.split_once(char::is_whitespace) {
        Some((word, rest)) => (word, rest.trim_start()),
        None => (s, ""),
    }
}

/// Parses what follows `topic`/`pattern`: an optional access word, then the filter.
fn parse_rule<'a>(keyword: &'static str, rest: &'a str) -> Result<(Grant, &'a str), ErrorKind> {
    let (first, filter) = split_word(rest);
    let (grant, filter) = if filter.is_empty() {
        // One word: it is the filter (an empty `first` means nothing followed the keyword).
        (Grant::ReadWrite, first)
    } else {
        let grant = match first {
            "read" => Grant::Read,
            "write" => Grant::Write,
            "readwrite" => Grant::ReadWrite,
            "deny" => Grant::Deny,
            other => return Err(ErrorKind::UnknownAccess(other.to_owned())),
        };
        (grant, filter)
    };
    if filter.is_empty() {
        return Err(ErrorKind::MissingFilter(keyword));
    }
    validate_filter(filter).map_err(|why| ErrorKind::InvalidFilter {
        filter: filter.to_owned(),
        why,
    })?;
    Ok((grant, filter))
}

/// Topic filter syntax (4.7.1): non-empty, `#` only as the whole last level, `+` only as a whole
/// level, and no U+0000 (not allowed in MQTT strings, 1.5.4).
fn validate_filter(filter: &str) -> Result<(), &'static str> {
    if filter.is_empty() {
        return Err("empty");
    }
    if filter.contains('\0') {
        return Err("contains U+0000");
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err("`#` must be a whole level and the last one");
        }
        if level.contains('+') && level != "+" {
            return Err("`+` must be a whole level");
        }
    }
    Ok(())
}

impl Rule {
    /// A `topic` rule: used as written (`%c`/`%u` mean nothing there).
    fn topic(filter: &str) -> Rule {
        Rule {
            filter: filter.into(),
            template: None,
        }
    }

    /// A `pattern` rule: pre-split into levels if it substitutes anything.
    fn pattern(filter: &str) -> Rule {
        Rule {
            filter: filter.into(),
            template: Template::parse(filter),
        }
    }

    /// Does the rule, for this client, match topic name `topic`?
    fn matches(&self, who: Who<'_>, topic: &str) -> bool {
        match &self.template {
            None => topic_matches(&self.filter, topic),
            Some(t) => t.matches(who, topic),
        }
    }

    /// The rule's filter for this client: as written, or with `%c`/`%u` substituted; `None` if
    /// the rule does not apply to the client (a value it needs is absent or unfit).
    fn substitute(&self, who: Who<'_>) -> Option<Cow<'_, str>> {
        match &self.template {
            None => Some(Cow::Borrowed(&self.filter)),
            Some(t) => t.substitute(who).map(Cow::Owned),
        }
    }

    /// Does the rule, for this client, cover subscription filter `filter`?
    fn covers(&self, who: Who<'_>, filter: &str) -> bool {
        self.substitute(who)
            .is_some_and(|rule| covers(&rule, filter))
    }

    /// Does the rule, for this client, match some topic that `filter` matches?
    fn intersects(&self, who: Who<'_>, filter: &str) -> bool {
        self.substitute(who)
            .is_some_and(|rule| intersects(&rule, filter))
    }
}

impl Template {
    /// `None` if the pattern contains neither `%c` nor `%u`.
    fn parse(filter: &str) -> Option<Template> {
        if !filter.contains("%c") && !filter.contains("%u") {
            return None;
        }
        let mut needs_client_id = false;
        let mut needs_username = false;
        let levels = filter
            .split('/')
            .map(|level| match level {
                "+" => TLevel::Plus,
                "#" => TLevel::Hash,
                _ if !level.contains("%c") && !level.contains("%u") => {
                    TLevel::Literal(level.into())
                }
                _ => {
                    let mut pieces = Vec::new();
                    let mut rest = level;
                    while let Some(i) = find_token(rest) {
                        if i > 0 {
                            pieces.push(Piece::Text(rest[..i].into()));
                        }
                        if rest[i..].starts_with("%c") {
                            needs_client_id = true;
                            pieces.push(Piece::ClientId);
                        } else {
                            needs_username = true;
                            pieces.push(Piece::Username);
                        }
                        rest = &rest[i + 2..];
                    }
                    if !rest.is_empty() {
                        pieces.push(Piece::Text(rest.into()));
                    }
                    TLevel::Pieces(pieces.into())
                }
            })
            .collect();
        Some(Template {
            levels,
            needs_client_id,
            needs_username,
        })
    }

    /// The values to substitute, or `None` if the client lacks one this template needs.
    fn values<'a>(&self, who: Who<'a>) -> Option<(&'a str, &'a str)> {
        let client_id = match who.client_id {
            Some(c) => c,
            None if self.needs_client_id => return None,
            None => "",
        };
        let username = match who.username {
            Some(u) => u,
            None if self.needs_username => return None,
            None => "",
        };
        Some((client_id, username))
    }

    /// Matches a topic against the substituted filter without building it. Same rules as
    /// [`topic_matches`], including [MQTT-4.7.2-1].
    fn matches(&self, who: Who<'_>, topic: &str) -> bool {
        let Some((client_id, username)) = self.values(who) else {
            return false;
        };
        if is_system(topic) && matches!(self.levels.first(), Some(TLevel::Plus | TLevel::Hash)) {
            return false;
        }
        let mut topic_levels = topic.split('/');
        for level in self.levels.iter() {
            if let TLevel::Hash = level {
                return true;
            }
            let Some(t) = topic_levels.next() else {
                return false;
            };
            let ok = match level {
                TLevel::Plus | TLevel::Hash => true,
                TLevel::Literal(l) => **l == *t,
                TLevel::Pieces(pieces) => {
                    let mut rest = t;
                    pieces.iter().all(|p| {
                        let s = match p {
                            Piece::Text(s) => s,
                            Piece::ClientId => client_id,
                            Piece::Username => username,
                        };
                        match rest.strip_prefix(s) {
                            Some(r) => {
                                rest = r;
                                true
                            }
                            None => false,
                        }
                    }) && rest.is_empty()
                }
            };
            if !ok {
                return false;
            }
        }
        topic_levels.next().is_none()
    }

    /// The filter with `%c`/`%u` replaced, or `None` if the client lacks a needed value.
    fn substitute(&self, who: Who<'_>) -> Option<String> {
        let (client_id, username) = self.values(who)?;
        let mut out = String::new();
        for (i, level) in self.levels.iter().enumerate() {
            if i > 0 {
                out.push('/');
            }
            match level {
                TLevel::Plus => out.push('+'),
                TLevel::Hash => out.push('#'),
                TLevel::Literal(l) => out.push_str(l),
                TLevel::Pieces(pieces) => {
                    for p in pieces.iter() {
                        out.push_str(match p {
                            Piece::Text(s) => s,
                            Piece::ClientId => client_id,
                            Piece::Username => username,
                        });
                    }
                }
            }
        }
        Some(out)
    }
}

/// Byte offset of the first `%c` or `%u` in `s`.
fn find_token(s: &str) -> Option<usize> {
    s.match_indices('%')
        .map(|(i, _)| i)
        .find(|&i| matches!(s.as_bytes().get(i + 1), Some(b'c' | b'u')))
}

/// Does an applicable deny rule match `topic`?
fn denied<'a>(mut sets: impl Iterator<Item = &'a RuleSet>, who: Who<'_>, topic: &str) -> bool {
    sets.any(|s| s.deny.iter().any(|r| r.matches(who, topic)))
}

#[cfg(test)]
#[path = "acl_tests.rs"]
mod tests;
