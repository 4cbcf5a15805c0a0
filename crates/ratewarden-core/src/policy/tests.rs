use super::*;
use crate::{Gcra, Rate};

fn rule(name: &str, route: RouteMatch, key: &str) -> Rule {
    let rate: Rate = "10/s".parse().expect("rate");
    Rule {
        name: RuleName::new(name),
        route,
        key: KeyTemplate::parse(key).expect("key"),
        limit: Limit::Gcra(Gcra::new(rate, 10).expect("gcra")),
        cost: 1,
        action: Action::Reject,
        allow: Vec::new(),
        deny: Vec::new(),
    }
}

fn prefix(p: &str) -> RouteMatch {
    RouteMatch {
        path_prefix: Some(CanonicalPath::parse(p).expect("path").into_owned()),
        ..RouteMatch::default()
    }
}

fn facts<'a>(
    method: &'a str,
    path: &'a CanonicalPath<'a>,
    ip: &str,
    header: &'a (dyn Fn(&str) -> Option<&'a [u8]> + Sync),
) -> RequestFacts<'a> {
    let ip: IpAddr = ip.parse().expect("ip");
    RequestFacts {
        method,
        host: Some("api.example.com"),
        path,
        client_ip: ip,
        client_network: crate::identity::client_network(ip, 64),
        header,
    }
}

#[test]
fn every_matching_rule_applies_in_order() {
    let policy = Policy {
        reputation: Default::default(),
        logins: Vec::new(),
        rules: vec![
            rule("api", prefix("/api/v1/"), "ip"),
            rule("auth", prefix("/api/v1/auth"), "ip"),
            rule(
                "login_post",
                RouteMatch {
                    path: Some(CanonicalPath::parse("/api/v1/auth/login").expect("path")),
                    methods: vec!["POST".into()],
                    ..RouteMatch::default()
                },
                "ip",
            ),
            rule("other", prefix("/other"), "ip"),
        ],
        ..Policy::default()
    };
    let no_headers = |_: &str| None;
    let path = CanonicalPath::parse("/API//v1/%61uth/login/").expect("path");
    let names = |method| {
        policy
            .evaluate(&facts(method, &path, "198.51.100.1", &no_headers))
            .checks
            .iter()
            .map(|(r, _)| r.name.as_str().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(names("POST"), ["api", "auth", "login_post"]);
    assert_eq!(names("GET"), ["api", "auth"]);
    let get_only = RouteMatch {
        methods: vec!["GET".into()],
        ..RouteMatch::default()
    };
    let none = |_: &str| None;
    assert!(
        get_only.matches(&facts("HEAD", &path, "198.51.100.1", &none)),
        "GET rules cover HEAD"
    );
    assert!(!get_only.matches(&facts("DELETE", &path, "198.51.100.1", &none)));
}

#[test]
fn except_prefixes_carve_out_specific_routes() {
    let mut general = rule("api", prefix("/api/v1/"), "ip");
    general.route.except_path_prefixes = vec![CanonicalPath::parse("/api/v1/auth/").expect("path")];
    let policy = Policy {
        reputation: Default::default(),
        logins: Vec::new(),
        rules: vec![general, rule("auth", prefix("/api/v1/auth/"), "ip")],
        ..Policy::default()
    };
    let names = |p: &str| -> Vec<String> {
        let path = CanonicalPath::parse(p).expect("path");
        let none = |_: &str| None;
        let applicable = policy.evaluate(&facts("GET", &path, "198.51.100.1", &none));
        applicable
            .checks
            .iter()
            .map(|(r, _)| r.name.as_str().to_owned())
            .collect()
    };
    assert_eq!(names("/api/v1/users"), ["api"]);
    assert_eq!(names("/API/v1/Auth/login"), ["auth"]);
}

#[test]
fn keys_cannot_be_forged_through_header_values() {
    let template = KeyTemplate::parse("header:X-A + header:x-b").expect("key");
    let path = CanonicalPath::parse("/").expect("path");
    let render = |a: &'static str, b: &'static str| {
        let lookup = move |name: &str| match name {
            "x-a" => Some(a.as_bytes()),
            "x-b" => Some(b.as_bytes()),
            _ => None,
        };
        template.render(&facts("GET", &path, "1.2.3.4", &lookup))
    };
    assert_ne!(render("k|x-b=1:z", "y"), render("k", "z|y"));
    assert_ne!(render("ab", "c"), render("a", "bc"));
}

#[test]
fn a_missing_header_counts_as_the_client_network() {
    let template = KeyTemplate::parse("header:x-api-key").expect("key");
    let path = CanonicalPath::parse("/").expect("path");
    let none = |_: &str| None;
    let a = template.render(&facts("GET", &path, "1.2.3.4", &none));
    let b = template.render(&facts("GET", &path, "1.2.3.5", &none));
    assert_ne!(a, b, "header-less clients are not pooled");
    let long = vec![b'k'; 10_000];
    let long_ref: &[u8] = &long;
    let with = move |_: &str| Some(long_ref);
    assert!(
        template
            .render(&facts("GET", &path, "1.2.3.4", &with))
            .len()
            < 300
    );
}

#[test]
fn ipv6_clients_in_one_prefix_share_a_key() {
    let template = KeyTemplate::parse("ip").expect("key");
    let path = CanonicalPath::parse("/").expect("path");
    let none = |_: &str| None;
    let a = template.render(&facts("GET", &path, "2001:db8::1", &none));
    let b = template.render(&facts("GET", &path, "2001:db8::ffff:1", &none));
    assert_eq!(a, b);
    let mapped = template.render(&facts("GET", &path, "::ffff:1.2.3.4", &none));
    assert_eq!(
        mapped,
        template.render(&facts("GET", &path, "1.2.3.4", &none))
    );
}

#[test]
fn deny_refuses_and_allow_skips() {
    let mut limited = rule("api", prefix("/"), "ip");
    limited.allow = vec!["10.0.0.0/8".parse().expect("net")];
    let mut blocked = rule("blocklist", prefix("/"), "ip");
    blocked.deny = vec!["203.0.113.0/24".parse().expect("net")];
    let policy = Policy {
        reputation: Default::default(),
        logins: Vec::new(),
        rules: vec![limited, blocked],
        ..Policy::default()
    };
    let path = CanonicalPath::parse("/x").expect("path");
    let none = |_: &str| None;
    let partner = policy.evaluate(&facts("GET", &path, "10.1.2.3", &none));
    assert_eq!(
        partner.checks.len(),
        1,
        "only the rule without an allow list"
    );
    let attacker = policy.evaluate(&facts("GET", &path, "203.0.113.9", &none));
    assert_eq!(
        attacker.denied_by.map(|r| r.name.as_str()),
        Some("blocklist")
    );
    assert!(attacker.checks.is_empty());
}

#[test]
fn key_templates_parse_and_refuse() {
    assert_eq!(
        KeyTemplate::parse("ip+path").expect("key").to_string(),
        "ip+path"
    );
    assert_eq!(
        KeyTemplate::parse("header:X-Api-Key").expect("key").parts(),
        [KeyPart::Header("x-api-key".into())]
    );
    assert_eq!(KeyTemplate::parse(""), Err(key::KeyError::Empty));
    assert_eq!(
        KeyTemplate::parse("ip+cookie"),
        Err(key::KeyError::UnknownPart("cookie".into()))
    );
    assert_eq!(
        KeyTemplate::parse("header:bad name"),
        Err(key::KeyError::BadHeaderName("bad name".into()))
    );
}
