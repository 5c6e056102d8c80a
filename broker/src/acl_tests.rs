use super::*;
use proptest::prelude::*;

fn parse_ok(text: &str) -> Acl {
    match Acl::parse(text, "acl.conf") {
        Ok(acl) => acl,
        Err(e) => panic!("{e}"),
    }
}

fn load_err(text: &str) -> AclLoadError {
    match Acl::parse(text, "acl.conf") {
        Ok(acl) => panic!("expected an error, parsed {acl:?}"),
        Err(e) => e,
    }
}

const ANON: Option<&str> = None;

fn read(acl: &Acl, user: Option<&str>, client_id: &str, topic: &str) -> bool {
    acl.check_topic(user, client_id, topic, Access::Read)
}

fn write(acl: &Acl, user: Option<&str>, client_id: &str, topic: &str) -> bool {
    acl.check_topic(user, client_id, topic, Access::Write)
}

// ---- sections ----

#[test]
fn topic_lines_before_the_first_user_apply_to_anonymous_clients_only() {
    let acl = parse_ok("topic read public/#\nuser alice\ntopic read alice/#\n");
    assert!(read(&acl, ANON, "c", "public/news"));
    assert!(!read(&acl, ANON, "c", "alice/x"));
    // A named user does not inherit the anonymous section.
    assert!(!read(&acl, Some("alice"), "c", "public/news"));
    assert!(!read(&acl, Some("bob"), "c", "public/news"));
}

#[test]
fn topic_lines_after_user_apply_to_that_user_only() {
    let acl = parse_ok("user alice\ntopic alice/#\nuser bob\ntopic bob/#\n");
    assert!(write(&acl, Some("alice"), "c", "alice/x"));
    assert!(!write(&acl, Some("alice"), "c", "bob/x"));
    assert!(write(&acl, Some("bob"), "c", "bob/x"));
    assert!(!write(&acl, Some("carol"), "c", "alice/x"));
    assert!(!write(&acl, ANON, "c", "alice/x"));
}

#[test]
fn repeated_user_sections_accumulate_and_user_names_may_contain_spaces() {
    let acl = parse_ok(
        "user alice\ntopic a\nuser bob\ntopic b\nuser alice\ntopic c\nuser  john smith \ntopic j\n",
    );
    assert!(read(&acl, Some("alice"), "x", "a"));
    assert!(read(&acl, Some("alice"), "x", "c"));
    assert!(!read(&acl, Some("alice"), "x", "b"));
    assert!(read(&acl, Some("john smith"), "x", "j"));
}

#[test]
fn empty_acl_denies_everything() {
    let acl = parse_ok("");
    assert!(!read(&acl, ANON, "c", "a"));
    assert!(!write(&acl, Some("u"), "c", "a"));
    assert!(!acl.check_subscribe(ANON, "c", "a"));
}

// ---- access words ----

#[test]
fn no_access_word_means_readwrite_and_the_words_grant_what_they_say() {
    let acl = parse_ok("topic rw\ntopic read r\ntopic write w\ntopic readwrite both\n");
    for (topic, r, w) in [
        ("rw", true, true),
        ("r", true, false),
        ("w", false, true),
        ("both", true, true),
    ] {
        assert_eq!(read(&acl, ANON, "c", topic), r, "read {topic}");
        assert_eq!(write(&acl, ANON, "c", topic), w, "write {topic}");
    }
}

#[test]
fn a_single_word_after_topic_is_the_filter_even_if_it_is_an_access_word() {
    // As in Mosquitto: `topic read` is the filter "read" with readwrite access.
    let acl = parse_ok("topic read\n");
    assert!(write(&acl, ANON, "c", "read"));
}

#[test]
fn deny_wins_over_any_grant_whatever_the_order() {
    let acl = parse_ok(
        "topic deny a/secret\ntopic readwrite a/#\n\
         user alice\ntopic readwrite #\ntopic deny +/secret\n\
         pattern deny private/#\n",
    );
    assert!(read(&acl, ANON, "c", "a/public"));
    assert!(!read(&acl, ANON, "c", "a/secret"));
    assert!(!write(&acl, ANON, "c", "a/secret"));
    assert!(read(&acl, Some("alice"), "c", "x/public"));
    assert!(!read(&acl, Some("alice"), "c", "x/secret"));
    // A deny pattern applies on top of a user's own grant.
    assert!(!write(&acl, Some("alice"), "c", "private/x"));
}

#[test]
fn rule_matching_follows_mqtt_wildcards() {
    let acl = parse_ok("topic read a/+/c\ntopic read d/#\n");
    assert!(read(&acl, ANON, "c", "a/b/c"));
    assert!(!read(&acl, ANON, "c", "a/b/c/d"));
    assert!(read(&acl, ANON, "c", "d"));
    assert!(read(&acl, ANON, "c", "d/e/f"));
    assert!(!read(&acl, ANON, "c", "e"));
}

#[test]
fn leading_wildcards_do_not_grant_or_deny_dollar_topics() {
    // [MQTT-4.7.2-1]: `#` does not match $SYS/...; a rule must name `$SYS` to cover it.
    let acl = parse_ok("topic read #\ntopic deny +/x\ntopic read $SYS/broker/#\n");
    assert!(read(&acl, ANON, "c", "a/b"));
    assert!(!read(&acl, ANON, "c", "$SYS/clients"));
    assert!(read(&acl, ANON, "c", "$SYS/broker/uptime"));
    // `deny +/x` does not reach `$SYS/x` either.
    let acl2 = Acl::parse("topic read $SYS/#\ntopic deny +/x\n", "t").unwrap();
    assert!(read(&acl2, ANON, "c", "$SYS/x"));
}

// ---- patterns ----

#[test]
fn patterns_substitute_client_id_and_username_for_every_client() {
    let acl = parse_ok(
        "user alice\ntopic read x\npattern readwrite devices/%c/#\npattern read users/%u/inbox\n",
    );
    assert!(write(&acl, ANON, "dev1", "devices/dev1/status"));
    assert!(!write(&acl, ANON, "dev1", "devices/dev2/status"));
    assert!(write(&acl, Some("alice"), "dev2", "devices/dev2"));
    assert!(read(&acl, Some("alice"), "c", "users/alice/inbox"));
    assert!(!read(&acl, Some("alice"), "c", "users/bob/inbox"));
    // A user without a section still gets the patterns.
    assert!(read(&acl, Some("bob"), "c", "users/bob/inbox"));
}

#[test]
fn pattern_with_username_never_matches_an_anonymous_client() {
    let acl = parse_ok("pattern read users/%u/#\n");
    assert!(!read(&acl, ANON, "c", "users//x"));
    assert!(!read(&acl, ANON, "c", "users/%u/x"));
    assert!(!acl.check_subscribe(ANON, "c", "users/+/x"));
}

#[test]
fn substitutions_may_share_a_level_with_text() {
    let acl = parse_ok("pattern read a/pre-%c-%u.post/b\n");
    assert!(read(&acl, Some("u1"), "c1", "a/pre-c1-u1.post/b"));
    assert!(!read(&acl, Some("u1"), "c1", "a/pre-c1-u2.post/b"));
    assert!(!read(&acl, Some("u1"), "c1", "a/pre-c1-u1.post"));
    // `%` followed by something else is plain text; a topic rule never substitutes.
    let acl = parse_ok("pattern read 100%/%x\ntopic read t/%c\n");
    assert!(read(&acl, ANON, "c", "100%/%x"));
    assert!(read(&acl, ANON, "c", "t/%c"));
    assert!(!read(&acl, ANON, "c", "t/c"));
}

#[test]
fn wildcard_or_slash_in_client_id_or_username_is_never_substituted() {
    let acl = parse_ok("pattern readwrite devices/%c/#\npattern readwrite users/%u/#\n");
    // Client id "#" would turn the pattern into devices/#/# (or devices/# for subscribing).
    for id in ["#", "+", "a/+", "a/b", "x#"] {
        assert!(!write(&acl, ANON, id, &format!("devices/{id}")), "{id}");
        assert!(!write(&acl, ANON, id, "devices/other/x"), "{id}");
        assert!(
            !acl.check_subscribe(ANON, id, &format!("devices/{id}")),
            "{id}"
        );
        assert!(!acl.check_subscribe(ANON, id, "devices/#"), "{id}");
    }
    assert!(!read(&acl, Some("#"), "c", "users/bob/x"));
    assert!(!acl.check_subscribe(Some("+"), "c", "users/+/x"));
    // A fit client id still works alongside an unfit username.
    assert!(write(&acl, Some("a/b"), "dev", "devices/dev/x"));
}

// ---- subscriptions ----

#[test]
fn subscribe_needs_a_read_rule_covering_the_whole_filter() {
    let acl = parse_ok("topic read a/#\ntopic read b/+\ntopic read c/d\ntopic write w/#\n");
    let sub = |f: &str| acl.check_subscribe(ANON, "c", f);
    assert!(sub("a/#"));
    assert!(sub("a/+/c"));
    assert!(sub("a"));
    assert!(sub("b/x"));
    assert!(sub("b/+"));
    assert!(!sub("b/#"), "b/# also matches b and b/x/y");
    assert!(sub("c/d"));
    assert!(!sub("c/+"));
    assert!(!sub("w/x"), "write access does not allow subscribing");
    assert!(!sub("#"));
}

#[test]
fn subscribe_is_refused_if_a_deny_rule_could_match_any_topic_of_the_filter() {
    let acl = parse_ok("topic read a/#\ntopic deny a/secret/#\n");
    let sub = |f: &str| acl.check_subscribe(ANON, "c", f);
    assert!(sub("a/public/#"));
    assert!(!sub("a/#"));
    assert!(!sub("a/+/x"));
    assert!(!sub("a/secret"));
}

#[test]
fn subscribe_follows_the_dollar_rule_and_rejects_invalid_filters() {
    let acl =
        parse_ok("topic read #\ntopic read $SYS/broker/#\ntopic deny #\nuser u\ntopic read #\n");
    // The anonymous `deny #` does not reach $SYS topics, which `topic read $SYS/broker/#` grants.
    assert!(acl.check_subscribe(ANON, "c", "$SYS/broker/+"));
    assert!(!acl.check_subscribe(ANON, "c", "a"));
    assert!(acl.check_subscribe(Some("u"), "c", "#"));
    assert!(acl.check_subscribe(Some("u"), "c", "+/x"));
    assert!(!acl.check_subscribe(Some("u"), "c", "$SYS/#"));
    for bad in ["", "a/#/b", "a+", "a#", "a\0"] {
        assert!(!acl.check_subscribe(Some("u"), "c", bad), "{bad:?}");
    }
}

#[test]
fn subscribe_with_patterns() {
    let acl = parse_ok("pattern read devices/%c/#\npattern deny devices/%c/private\n");
    assert!(acl.check_subscribe(ANON, "d1", "devices/d1/status"));
    assert!(acl.check_subscribe(ANON, "d1", "devices/d1/+/x"));
    assert!(!acl.check_subscribe(ANON, "d1", "devices/d1/#"));
    assert!(!acl.check_subscribe(ANON, "d1", "devices/+/status"));
}

// ---- file syntax ----

#[test]
fn comments_blank_lines_and_whitespace_are_ignored() {
    let text = "\u{feff}# comment\r\n\r\n   \t\n  # indented comment\n\t topic   read \t a/b  \r\n\
                topic read my topic with spaces\nuser\talice \ntopic #\n";
    let acl = parse_ok(text);
    assert!(read(&acl, ANON, "c", "a/b"));
    assert!(!write(&acl, ANON, "c", "a/b"));
    assert!(read(&acl, ANON, "c", "my topic with spaces"));
    assert!(write(&acl, Some("alice"), "c", "x/y"));
}

#[test]
fn error_messages_name_file_line_and_problem() {
    let e = load_err("# c\n\n\n\n\ntopic read a\ntopic rw a/b\n");
    assert_eq!(e.line, Some(7));
    assert_eq!(
        e.to_string(),
        "acl.conf:7: unknown access `rw` (expected read, write, readwrite or deny)"
    );
}

#[test]
fn unknown_keyword_is_a_load_error() {
    let e = load_err("topic a\ntopics read b\n");
    assert!(matches!(e.kind, ErrorKind::UnknownKeyword(ref k) if k == "topics"));
    assert_eq!(
        e.to_string(),
        "acl.conf:2: unknown keyword `topics` (expected topic, pattern or user)"
    );
}

#[test]
fn invalid_filters_are_load_errors() {
    for (text, line, filter) in [
        ("topic read a/#/b\n", 1, "a/#/b"),
        ("\ntopic a+\n", 2, "a+"),
        ("user u\n\npattern write x/%c#\n", 3, "x/%c#"),
        ("topic deny sport/tennis#\n", 1, "sport/tennis#"),
    ] {
        let e = load_err(text);
        assert_eq!(e.line, Some(line), "{text}");
        assert!(
            matches!(e.kind, ErrorKind::InvalidFilter { filter: ref f, .. } if f == filter),
            "{e}"
        );
        assert!(
            e.to_string().starts_with(&format!(
                "acl.conf:{line}: invalid topic filter `{filter}`: "
            )),
            "{e}"
        );
    }
}

#[test]
fn user_without_a_name_and_topic_without_a_filter_are_load_errors() {
    let e = load_err("topic a\nuser   \n");
    assert_eq!(e.to_string(), "acl.conf:2: `user` without a name");
    let e = load_err("pattern\n");
    assert_eq!(
        e.to_string(),
        "acl.conf:1: `pattern` without a topic filter"
    );
    let e = load_err("user u\ntopic \t\n");
    assert_eq!(e.to_string(), "acl.conf:2: `topic` without a topic filter");
}

#[test]
fn load_reads_a_file_and_names_it_in_errors() {
    let dir = std::env::temp_dir().join(format!("sluice-acl-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.acl");
    std::fs::write(&good, "topic read a\n").unwrap();
    let acl = Acl::load(&good).unwrap();
    assert!(read(&acl, ANON, "c", "a"));

    let bad = dir.join("bad.acl");
    std::fs::write(&bad, "topic read a\nbogus\n").unwrap();
    let e = Acl::load(&bad).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}:2: unknown keyword `bogus` (expected topic, pattern or user)",
            bad.display()
        )
    );

    let missing = dir.join("missing.acl");
    let e = Acl::load(&missing).unwrap_err();
    assert_eq!(e.line, None);
    assert!(
        e.to_string()
            .starts_with(&format!("{}: cannot read: ", missing.display())),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---- covers / intersects ----

#[test]
fn covers_examples() {
    assert!(covers("a/#", "a/+/c"));
    assert!(covers("a/#", "a/#"));
    assert!(covers("a/#", "a"));
    assert!(covers("a/+", "a/b"));
    assert!(covers("a/+", "a/+"));
    assert!(!covers("a/+", "a/#"));
    assert!(covers("a/b", "a/b"));
    assert!(!covers("a/b", "a/+"));
    assert!(!covers("a/b", "a/b/c"));
    assert!(!covers("a/b/c", "a/b"));
    assert!(covers("#", "+/+"));
    assert!(covers("+/#", "#"), "a topic has at least one level");
    assert!(!covers("a/+/#", "a/#"), "a/# also matches a");
    assert!(!covers("#", "$SYS/#"));
    assert!(!covers("+/#", "$SYS"));
    assert!(covers("$SYS/#", "$SYS/+"));
}

#[test]
fn intersects_examples() {
    assert!(intersects("a/#", "a"));
    assert!(intersects("a/+", "+/b"));
    assert!(intersects("a/+/c", "#"));
    assert!(!intersects("a/+", "a"));
    assert!(!intersects("a/b", "a/c"));
    assert!(!intersects("a/+", "a/b/c"));
    assert!(!intersects("#", "$SYS/x"));
    assert!(!intersects("$SYS/#", "+/x"));
    assert!(intersects("$SYS/#", "$SYS/+"));
    assert!(intersects("+/x", "#"));
}

/// Levels for brute force; `$SYS` exercises the `$` rule as a first level and is an ordinary
/// literal elsewhere.
const TOPIC_LEVELS: [&str; 3] = ["a", "b", "$SYS"];
const FILTER_LEVELS: [&str; 5] = ["a", "b", "$SYS", "+", "#"];

/// All sequences of up to `max` levels from `alphabet`, joined with `/`.
fn all_joined(alphabet: &[&str], max: usize) -> Vec<String> {
    let mut out: Vec<Vec<&str>> = Vec::new();
    let mut layer: Vec<Vec<&str>> = vec![vec![]];
    for _ in 0..max {
        layer = layer
            .iter()
            .flat_map(|prefix| {
                alphabet.iter().map(move |l| {
                    let mut v = prefix.clone();
                    v.push(*l);
                    v
                })
            })
            .collect();
        out.extend(layer.iter().cloned());
    }
    out.into_iter().map(|v| v.join("/")).collect()
}

fn all_filters(max: usize) -> Vec<String> {
    all_joined(&FILTER_LEVELS, max)
        .into_iter()
        .filter(|f| validate_filter(f).is_ok())
        .collect()
}

fn brute_covers(topics: &[String], rule: &str, filter: &str) -> bool {
    topics
        .iter()
        .all(|t| !topic_matches(filter, t) || topic_matches(rule, t))
}

fn brute_intersects(topics: &[String], a: &str, b: &str) -> bool {
    topics
        .iter()
        .any(|t| topic_matches(a, t) && topic_matches(b, t))
}

/// Every pair of filters of up to 3 levels, against every topic of up to 4 levels (one more
/// than the longest filter, enough for a witness to exist when one does).
#[test]
fn covers_and_intersects_agree_with_brute_force_exhaustively() {
    let topics = all_joined(&TOPIC_LEVELS, 4);
    let filters = all_filters(3);
    for a in &filters {
        for b in &filters {
            assert_eq!(
                covers(a, b),
                brute_covers(&topics, a, b),
                "covers({a}, {b})"
            );
            assert_eq!(
                intersects(a, b),
                brute_intersects(&topics, a, b),
                "intersects({a}, {b})"
            );
        }
    }
}

/// A valid filter of 1..=max levels: everything after the first `#` is cut off.
fn filter_strategy(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(proptest::sample::select(&FILTER_LEVELS[..]), 1..=max).prop_map(
        |levels| {
            let end = levels
                .iter()
                .position(|l| *l == "#")
                .map_or(levels.len(), |i| i + 1);
            levels[..end].join("/")
        },
    )
}

proptest! {
    #[test]
    fn covers_and_intersects_agree_with_brute_force(a in filter_strategy(4), b in filter_strategy(4)) {
        let topics = all_joined(&TOPIC_LEVELS, 5);
        prop_assert_eq!(covers(&a, &b), brute_covers(&topics, &a, &b), "covers({}, {})", a, b);
        prop_assert_eq!(intersects(&a, &b), brute_intersects(&topics, &a, &b), "intersects({}, {})", a, b);
    }

    /// Matching a template in place agrees with substituting and calling `topic_matches`.
    #[test]
    fn template_matching_agrees_with_substitution(
        pattern in proptest::collection::vec(
            proptest::sample::select(&["a", "+", "#", "%c", "x%u", "%c%u", "$x", "%u"][..]), 1..=4),
        client_id in proptest::sample::select(&["a", "b", "$x", "#", "a/b", ""][..]),
        user in proptest::option::of(proptest::sample::select(&["a", "b", "+"][..])),
        topic in proptest::collection::vec(
            proptest::sample::select(&["a", "b", "xa", "xb", "aa", "ab", "$x", "$xa", "x"][..]), 1..=5),
    ) {
        let end = pattern.iter().position(|l| *l == "#").map_or(pattern.len(), |i| i + 1);
        let pattern = pattern[..end].join("/");
        let topic = topic.join("/");
        let rule = Rule::pattern(&pattern);
        let who = Who::new(user, client_id);
        let expected = match &rule.template {
            None => topic_matches(&pattern, &topic),
            Some(t) => t.substitute(who).is_some_and(|f| topic_matches(&f, &topic)),
        };
        prop_assert_eq!(rule.matches(who, &topic), expected);
    }

    /// A permitted subscription never matches a topic that a read check would refuse.
    #[test]
    fn permitted_subscription_implies_read_access_to_every_matched_topic(
        rules in proptest::collection::vec(
            (proptest::sample::select(&["read", "write", "readwrite", "deny"][..]), filter_strategy(3)), 0..5),
        sub in filter_strategy(3),
    ) {
        let text: String = rules.iter().map(|(a, f)| format!("topic {a} {f}\n")).collect();
        let acl = Acl::parse(&text, "t").unwrap();
        if acl.check_subscribe(None, "c", &sub) {
            for t in all_joined(&TOPIC_LEVELS, 4).iter().filter(|t| topic_matches(&sub, t)) {
                prop_assert!(read(&acl, None, "c", t), "{} allows {} but not reading {}", text, sub, t);
            }
        }
    }

    /// No input makes parsing or checking panic.
    #[test]
    fn arbitrary_input_does_not_panic(
        text in "(([ \t]*(topic|pattern|user|deny|read|#|%c|%u|\\+|/|a|\u{e9}|\r|\n| )){0,12})",
        user in proptest::option::of(".{0,6}"),
        client_id in ".{0,6}",
        topic in ".{0,8}",
    ) {
        if let Ok(acl) = Acl::parse(&text, "t") {
            let _ = acl.check_topic(user.as_deref(), &client_id, &topic, Access::Read);
            let _ = acl.check_topic(user.as_deref(), &client_id, &topic, Access::Write);
            let _ = acl.check_subscribe(user.as_deref(), &client_id, &topic);
        }
        let _ = Acl::parse(&topic, "t");
    }
}
