//! Topic-filter algebra for the ACL's SUBSCRIBE decision: whether one filter covers another,
//! whether two filters can match a common topic, their intersection, and the finite set of
//! witness topics that decides "is any topic this filter matches readable" exactly.

use crate::topic::wildcard_may_reach;

/// True for `+` and `#`.
pub(super) fn is_wildcard(level: &str) -> bool {
    level == "+" || level == "#"
}

/// The first level of a filter.
pub(super) fn first_level(filter: &str) -> &str {
    filter.split_once('/').map_or(filter, |(first, _)| first)
}

/// Does `rule` match every topic that `filter` matches (both valid topic filters)?
///
/// Level by level: a `#` in the rule covers whatever remains; otherwise a `#` in the filter is
/// covered only by a `#` in the rule (or, as the first level, by `+/#`: a topic has at least one
/// level); a `+` in the rule covers any single level but `#`; a literal covers only the same
/// literal; both must end together. [MQTT-4.7.2-1]: a rule
/// starting with a wildcard does not cover a filter whose first level starts with `$`.
pub(super) fn covers(rule: &str, filter: &str) -> bool {
    if !wildcard_may_reach(first_level(rule), first_level(filter)) {
        return false;
    }
    let mut r = rule.split('/');
    let mut f = filter.split('/');
    let mut first = true;
    loop {
        match (r.next(), f.next()) {
            (Some("#"), _) | (None, None) => return true,
            // A topic has at least one level, so a filter `#` matches exactly what `+/#` does.
            (Some("+"), Some("#")) if first => return r.next() == Some("#"),
            (Some("+"), Some(fl)) if fl != "#" => {}
            (Some(rl), Some(fl)) if rl == fl => {}
            _ => return false,
        }
        first = false;
    }
}

/// Is there a topic that both `a` and `b` (valid topic filters) match?
///
/// Level by level: a `#` on either side matches whatever the other side still needs (including
/// nothing); a `+` matches any single level; literals must be equal; both must end together.
/// [MQTT-4.7.2-1]: a leading wildcard does not meet a first level starting with `$`.
pub(super) fn intersects(a: &str, b: &str) -> bool {
    let (a0, b0) = (first_level(a), first_level(b));
    if !wildcard_may_reach(a0, b0) || !wildcard_may_reach(b0, a0) {
        return false;
    }
    let mut a = a.split('/');
    let mut b = b.split('/');
    loop {
        match (a.next(), b.next()) {
            (Some("#"), _) | (_, Some("#")) | (None, None) => return true,
            (Some("+"), Some(_)) | (Some(_), Some("+")) => {}
            (Some(x), Some(y)) if x == y => {}
            _ => return false,
        }
    }
}

/// The topics both `a` and `b` (valid topic filters) match, as one filter; `None` if there are
/// none.
///
/// Level by level: equal literals stay; a literal meets `+` as the literal; `+` meets `+` as
/// `+`; a `#` on one side takes the rest of the other side, including none of it (`a/#` ∩ `a`
/// = `a`, since `#` also matches the parent level; `#` ∩ `#` = `#`); anything else is empty, as
/// are different lengths without a `#`. [MQTT-4.7.2-1]: a leading wildcard does not meet a first
/// level starting with `$`, and when both sides start with a wildcard so does the result, whose
/// topics then exclude `$` ones just as both sides' do.
pub(super) fn intersection(a: &str, b: &str) -> Option<String> {
    let (a0, b0) = (first_level(a), first_level(b));
    if !wildcard_may_reach(a0, b0) || !wildcard_may_reach(b0, a0) {
        return None;
    }
    let mut a = a.split('/');
    let mut b = b.split('/');
    let mut out: Vec<&str> = Vec::new();
    loop {
        match (a.next(), b.next()) {
            (None, None) | (Some("#"), None) | (None, Some("#")) => break,
            (Some("#"), Some(rest)) => {
                out.push(rest);
                out.extend(b);
                break;
            }
            (Some(rest), Some("#")) => {
                out.push(rest);
                out.extend(a);
                break;
            }
            (Some("+"), Some(level)) | (Some(level), Some("+")) => out.push(level),
            (Some(x), Some(y)) if x == y => out.push(x),
            _ => return None,
        }
    }
    Some(out.join("/"))
}

/// The smallest length (at least 1) that is not in `lengths`: a level of that many `x` equals
/// none of the levels those lengths were taken from.
pub(super) fn fresh_length(mut lengths: Vec<usize>) -> usize {
    lengths.sort_unstable();
    lengths.dedup();
    let mut n = 1;
    for l in lengths {
        if l == n {
            n += 1;
        } else if l > n {
            break;
        }
    }
    n
}

/// The witness topics of filter `pattern` (see [`Acl::readable_topic_exists`]): each `+`
/// replaced by `fresh`; a trailing `#` by 0 to `max_levels + 1` more `fresh` levels, as long as
/// the topic has at least one level and up to the first length past `max_levels`.
pub(super) fn witnesses<'a>(
    pattern: &'a str,
    fresh: &'a str,
    max_levels: usize,
) -> impl Iterator<Item = String> + 'a {
    let (fixed, hash) = match pattern.strip_suffix('#') {
        // `#` is a whole level: the whole pattern, or after a `/`.
        Some("") => ("", true),
        Some(rest) if rest.ends_with('/') => (&rest[..rest.len() - 1], true),
        _ => (pattern, false),
    };
    let fixed: Vec<&str> = if fixed.is_empty() && hash {
        Vec::new()
    } else {
        fixed
            .split('/')
            .map(|l| if l == "+" { fresh } else { l })
            .collect()
    };
    let k = fixed.len();
    let lengths = if hash {
        k.max(1)..=k.max(max_levels + 1)
    } else {
        // Exactly one witness: a pattern without `#` has at least one level.
        k..=k
    };
    lengths.map(move |len| {
        let mut levels = fixed.clone();
        levels.resize(len, fresh);
        levels.join("/")
    })
}
