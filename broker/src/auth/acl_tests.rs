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

/// The ACL of the issue that changed the rule: the commonest file there is. A subscription is
/// refused only if no topic it can match is readable; the deny rule filters deliveries instead.
#[test]
fn subscribe_is_granted_if_some_topic_of_the_filter_is_readable() {
    let acl = parse_ok("topic deny test/nosubscribe\ntopic readwrite #\n");
    let sub = |f: &str| acl.check_subscribe(ANON, "c", f);
    for f in [
        "#",
        "+/+",
        "test/#",
        "+/nosubscribe",
        "TopicA/#",
        "test/+",
        "+/#",
    ] {
        assert!(sub(f), "{f}");
    }
    // Every topic of these is denied; `$` topics are out of `#`'s reach [MQTT-4.7.2-1].
    for f in ["test/nosubscribe", "$SYS/#", "$SYS/+"] {
        assert!(!sub(f), "{f}");
    }
    // What a granted `#` delivers is still decided per message.
    assert!(!read(&acl, ANON, "c", "test/nosubscribe"));
    assert!(read(&acl, ANON, "c", "test/other"));
}

/// Before: a read rule had to cover the whole filter, so `b/#` (next to `topic read b/+`), `c/+`
/// and `#` were refused; now each is granted because it matches some readable topic (`b/x`,
/// `c/d`, `a`). A filter that meets only write rules, or no rule at all, is still refused.
#[test]
fn subscribe_needs_a_read_rule_that_meets_the_filter() {
    let acl = parse_ok("topic read a/#\ntopic read b/+\ntopic read c/d\ntopic write w/#\n");
    let sub = |f: &str| acl.check_subscribe(ANON, "c", f);
    for f in [
        "a/#", "a/+/c", "a", "b/x", "b/+", "b/#", "c/d", "c/+", "#", "+/+", "+/d",
    ] {
        assert!(sub(f), "{f}");
    }
    for f in ["w/x", "w/#", "b", "b/x/y", "c/e", "c/d/e", "d/#", "x/+/+/x"] {
        assert!(!sub(f), "{f}");
    }
    // `x/+/+/x` is refused but `+/+/+/x` is granted through `a/#` (a/y/z/x).
    assert!(sub("+/+/+/x"));
}

/// Before: a deny rule that merely overlapped the filter refused it (`a/#`, `a/+/x`); now only a
/// filter all of whose topics are denied is refused.
#[test]
fn subscribe_is_refused_only_if_deny_rules_cover_every_readable_topic() {
    let acl = parse_ok("topic read a/#\ntopic deny a/secret/#\ntopic deny a/+/x\n");
    let sub = |f: &str| acl.check_subscribe(ANON, "c", f);
    for f in [
        "a/public/#",
        "a/#",
        "a/+",
        "a/+/y",
        "a/secret2/x/y",
        "a/+/x/y",
    ] {
        assert!(sub(f), "{f}");
    }
    for f in [
        "a/secret",
        "a/secret/+",
        "a/secret/#",
        "a/+/x",
        "a/public/x",
    ] {
        assert!(!sub(f), "{f}");
    }
}

/// A `#` in the filter can reach past every deny rule's length: `a/#` next to deny `a`,
/// `a/+` and `a/+/+` is still readable at a/x/y/z.
#[test]
fn subscribe_looks_past_the_longest_deny_rule() {
    let acl = parse_ok("topic read #\ntopic deny a\ntopic deny a/+\ntopic deny a/+/+\n");
    assert!(acl.check_subscribe(ANON, "c", "a/#"));
    assert!(acl.check_subscribe(ANON, "c", "a/+/+/#"));
    assert!(!acl.check_subscribe(ANON, "c", "a/+/+"));
    let acl = parse_ok("topic read a/+/#\ntopic deny a/+\ntopic deny a/+/+/#\n");
    assert!(
        !acl.check_subscribe(ANON, "c", "a/#"),
        "a/x denied, a/x/... denied, a unreadable"
    );
    assert!(!acl.check_subscribe(ANON, "c", "#"));
}

/// The witness level stands for "any other level": it must not equal a level of a deny rule,
/// not even one made of `x` or the client id (a witness `x/x` would be denied by `deny x/x` and
/// `deny %c/%c` for client `x`, though `a/b` is readable).
#[test]
fn subscribe_witnesses_avoid_every_deny_level() {
    let acl = parse_ok("topic read #\ntopic deny x/x\ntopic deny xx/+\npattern deny %c/%c\n");
    for id in ["x", "xxx", "c"] {
        let sub = |f: &str| acl.check_subscribe(ANON, id, f);
        assert!(sub("+/+"), "{id}");
        assert!(sub("x/+"), "{id}");
        assert!(!sub("x/x"), "{id}");
        assert!(!sub("xx/+"), "{id}");
        assert!(!sub(&format!("{id}/{id}")), "{id}");
    }
}

#[test]
fn subscribe_follows_the_dollar_rule_and_rejects_invalid_filters() {
    let acl =
        parse_ok("topic read #\ntopic read $SYS/broker/#\ntopic deny #\nuser u\ntopic read #\n");
    // The anonymous `deny #` does not reach $SYS topics, which `topic read $SYS/broker/#` grants.
    assert!(acl.check_subscribe(ANON, "c", "$SYS/broker/+"));
    assert!(acl.check_subscribe(ANON, "c", "$SYS/#"));
    assert!(!acl.check_subscribe(ANON, "c", "$SYS/other/#"));
    assert!(!acl.check_subscribe(ANON, "c", "a"));
    assert!(
        !acl.check_subscribe(ANON, "c", "#"),
        "`#` meets no $SYS topic"
    );
    assert!(acl.check_subscribe(Some("u"), "c", "#"));
    assert!(acl.check_subscribe(Some("u"), "c", "+/x"));
    assert!(!acl.check_subscribe(Some("u"), "c", "$SYS/#"));
    for bad in ["", "a/#/b", "a+", "a#", "a\0"] {
        assert!(!acl.check_subscribe(Some("u"), "c", bad), "{bad:?}");
    }
}

/// Before: `devices/d1/#` and `devices/+/status` were refused because the deny pattern overlaps
/// the first and the read pattern does not cover the second; both match readable topics.
#[test]
fn subscribe_with_patterns() {
    let acl = parse_ok(
        "pattern read devices/%c/#\npattern deny devices/%c/private\n\
         user u\ntopic read other/#\npattern read users/%u/#\n",
    );
    let sub = |f: &str| acl.check_subscribe(ANON, "d1", f);
    for f in [
        "devices/d1/status",
        "devices/d1/+/x",
        "devices/d1/#",
        "devices/+/status",
        "#",
    ] {
        assert!(sub(f), "{f}");
    }
    for f in [
        "devices/d1/private",
        "devices/+/private",
        "+/+/private",
        "devices/d2/#",
    ] {
        assert!(!sub(f), "{f}");
    }
    // A user gets its section and the patterns; anonymous clients get no `%u` pattern.
    assert!(acl.check_subscribe(Some("u"), "d1", "+/u/x"));
    assert!(acl.check_subscribe(Some("u"), "d1", "other/+"));
    assert!(!acl.check_subscribe(ANON, "d1", "users/#"));
    assert!(!acl.check_subscribe(Some("v"), "d1", "other/+"));
}

/// `$share/{group}/{filter}` is checked on its filter, but every topic of it must be readable:
/// a message in the group's queue goes to any member.
#[test]
fn shared_subscribe_needs_every_topic_of_the_filter_readable() {
    let acl = parse_ok("topic deny test/nosubscribe\ntopic readwrite #\ntopic read $app/#\n");
    let sub = |f: &str| acl.check_subscribe(ANON, "c", f);
    assert!(sub("#"));
    assert!(!sub("$share/g/#"), "test/nosubscribe is denied");
    assert!(sub("$share/g/TopicA/#"));
    assert!(sub("$share/g/$app/+"));
    assert!(!sub("$share/g/test/nosubscribe"));
    for bad in [
        "$share/g",
        "$share//a",
        "$share/+/a",
        "$share/g/a/#/b",
        "$share/g/",
    ] {
        assert!(!sub(bad), "{bad:?}");
    }
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
            let p = intersection(a, b);
            for t in &topics {
                assert_eq!(
                    p.as_deref().is_some_and(|p| topic_matches(p, t)),
                    topic_matches(a, t) && topic_matches(b, t),
                    "intersection({a}, {b}) = {p:?} on {t}"
                );
            }
        }
    }
}

#[test]
fn intersection_examples() {
    for (a, b, want) in [
        ("a/#", "a", Some("a")),
        ("a/#", "+/b/#", Some("a/b/#")),
        ("#", "a/+", Some("a/+")),
        ("+/#", "#", Some("+/#")),
        ("#", "#", Some("#")),
        ("a/+", "+/b", Some("a/b")),
        ("a/b/#", "a", None),
        ("a/+", "a/b/c", None),
        ("#", "$SYS/x", None),
        ("$SYS/#", "$SYS/+", Some("$SYS/+")),
    ] {
        assert_eq!(intersection(a, b).as_deref(), want, "{a} ∩ {b}");
        assert_eq!(intersection(b, a).as_deref(), want, "{b} ∩ {a}");
    }
}

#[test]
fn witnesses_and_fresh_length() {
    assert_eq!(fresh_length(vec![]), 1);
    assert_eq!(fresh_length(vec![3, 1, 1, 2, 5]), 4);
    assert_eq!(fresh_length(vec![2, 7]), 1);
    let w = |p: &str, max| witnesses(p, "z", max).collect::<Vec<_>>();
    assert_eq!(w("a/+/b", 5), ["a/z/b"]);
    assert_eq!(w("#", 2), ["z", "z/z", "z/z/z"]);
    assert_eq!(w("a/+/#", 1), ["a/z"]);
    assert_eq!(w("a/#", 2), ["a", "a/z", "a/z/z"]);
    assert_eq!(w("/+/#", 0), ["/z"]);
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

/// Like [`filter_strategy`], with `%c` and `%u` levels too (plain text in `topic` lines).
fn template_filter_strategy(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(
        proptest::sample::select(&["a", "b", "$SYS", "+", "#", "%c", "%u"][..]),
        1..=max,
    )
    .prop_map(|levels| {
        let end = levels
            .iter()
            .position(|l| *l == "#")
            .map_or(levels.len(), |i| i + 1);
        levels[..end].join("/")
    })
}

/// Topic levels for the brute-force subscribe checks: every literal a generated rule can have,
/// and `z`, which none has.
const BRUTE_LEVELS: [&str; 6] = ["a", "b", "$SYS", "%c", "%u", "z"];

/// An ACL file from (scope, access, filter): scope 0 = anonymous `topic`, 1 = `topic` in user
/// b's section, 2 = `pattern`.
fn acl_text(rules: &[(usize, &str, String)]) -> String {
    let mut text = String::new();
    for scope in 0..3 {
        if scope == 1 {
            text.push_str("user b\n");
        }
        for (_, access, filter) in rules.iter().filter(|r| r.0 == scope) {
            let keyword = if scope == 2 { "pattern" } else { "topic" };
            text.push_str(&format!("{keyword} {access} {filter}\n"));
        }
    }
    text
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

    /// `check_subscribe` agrees with brute force: granted iff some topic the filter matches is
    /// readable, over every topic of up to 4 levels from BRUTE_LEVELS. Enough for exactness:
    /// rules and filters have at most 3 levels from {a, b, $SYS, +, #, %c, %u} (`%c` and `%u`
    /// are plain text in `topic` lines), client ids and usernames are a, b or unfit, and `z`
    /// equals no level of any rule, so any readable topic of the filter has a readable
    /// counterpart among these (the argument of `Acl::readable_topic_exists`, applied to an
    /// independent computation).
    #[test]
    fn subscribe_agrees_with_brute_force(
        rules in proptest::collection::vec(
            (0..3usize, proptest::sample::select(&["read", "write", "readwrite", "deny"][..]), template_filter_strategy(3)),
            0..6),
        sub in filter_strategy(3),
        client_id in proptest::sample::select(&["a", "b", "+"][..]),
        user in proptest::option::of(proptest::sample::select(&["a", "b", "#"][..])),
    ) {
        let acl = Acl::parse(&acl_text(&rules), "t").unwrap();
        let expected = all_joined(&BRUTE_LEVELS, 4)
            .iter()
            .any(|t| topic_matches(&sub, t) && read(&acl, user, client_id, t));
        prop_assert_eq!(acl.check_subscribe(user, client_id, &sub), expected, "{}", acl_text(&rules));
    }

    /// A permitted shared subscription never matches a topic that a read check would refuse.
    #[test]
    fn permitted_shared_subscription_implies_read_access_to_every_matched_topic(
        rules in proptest::collection::vec(
            (0..3usize, proptest::sample::select(&["read", "write", "readwrite", "deny"][..]), template_filter_strategy(3)),
            0..6),
        sub in filter_strategy(3),
        user in proptest::option::of(proptest::sample::select(&["a", "b"][..])),
    ) {
        let text = acl_text(&rules);
        let acl = Acl::parse(&text, "t").unwrap();
        if acl.check_subscribe(user, "a", &format!("$share/g/{sub}")) {
            for t in all_joined(&BRUTE_LEVELS, 4).iter().filter(|t| topic_matches(&sub, t)) {
                prop_assert!(read(&acl, user, "a", t), "{} allows {} but not reading {}", text, sub, t);
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
