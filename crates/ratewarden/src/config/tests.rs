use super::*;

const MINIMAL: &str = r#"
[server]
listen = "127.0.0.1:8080"
upstream = "http://127.0.0.1:8000"
"#;

fn errors(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(_) => Vec::new(),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn the_issue_example_compiles() {
    let config = parse(
        r#"
[server]
listen = "127.0.0.1:8080"
upstream = "http://127.0.0.1:8000"
admin_listen = "127.0.0.1:9090"

[clients]
trusted_proxies = ["10.0.0.0/8"]
ipv6_prefix = 64

[store]
kind = "memory"
max_keys = 1000000

[[rules]]
name = "api_general"
match = { path_prefix = "/api/v1/" }
key = "ip"
algorithm = "gcra"
rate = "10/s"
burst = 20
action = "reject"
"#,
    )
    .expect("valid");
    assert_eq!(config.policy.rules.len(), 1);
    assert_eq!(config.policy.rules[0].limit.capacity(), 20);
    assert_eq!(config.server.admin_listen.map(|a| a.port()), Some(9090));
}

#[test]
fn every_error_is_reported_with_its_field_path() {
    let text = format!(
        r#"{MINIMAL}
[[rules]]
name = "ok"
rate = "10/s"

[[rules]]
name = "bad"
rate = "10/fortnight"
algorithm = "gcra"
match = {{ path_prefix = "api" }}
allow_cidrs = ["10.0.0.0/33"]

[[rules]]
name = "ok"
rate = "5/m"
algorithm = "fixed_window"
burst = 3
action = "drop"
cost = 9
"#
    );
    let found = errors(&text);
    assert!(found.contains(&r#"rules[1].rate: "10/fortnight" is not a rate: unknown unit "fortnight"; use s, m, h, d or second, minute, hour, day"#.to_owned()), "{found:#?}");
    assert!(
        found
            .iter()
            .any(|e| e.starts_with("rules[1].match.path_prefix: ")),
        "{found:#?}"
    );
    assert!(
        found
            .iter()
            .any(|e| e.starts_with("rules[1].allow_cidrs[0]: ")),
        "{found:#?}"
    );
    assert!(
        found.iter().any(|e| e.starts_with("rules[2].name: ")),
        "{found:#?}"
    );
    assert!(
        found
            .iter()
            .any(|e| e.starts_with("rules[2].burst: burst applies to gcra only")),
        "{found:#?}"
    );
    assert!(
        found.iter().any(|e| e.starts_with("rules[2].action: ")),
        "{found:#?}"
    );
    assert!(
        found
            .iter()
            .any(|e| e.starts_with("rules[2].cost: cost 9 is larger")),
        "{found:#?}"
    );
    assert_eq!(found.len(), 7, "{found:#?}");
}

#[test]
fn unknown_fields_are_errors() {
    let found = errors(&format!(
        "{MINIMAL}\n[[rules]]\nname = \"a\"\nrate = \"1/s\"\nbrust = 3\n"
    ));
    assert_eq!(found.len(), 1);
    assert!(found[0].contains("unknown field `brust`"), "{found:?}");
    let found = errors("[server]\nlisten = \"127.0.0.1:1\"\nupstream = \"http://127.0.0.1:2\"\nlisten_backlog = 5\n");
    assert!(
        found[0].contains("unknown field `listen_backlog`"),
        "{found:?}"
    );
}

#[test]
fn server_values_are_checked() {
    let found = errors(
        r#"
[server]
listen = "localhost"
upstream = "https://api.example.com"
header_timeout = "ten seconds"
max_headers = 0
upstream_keepalive = 100001
upstream_keepalive_timeout = "a minute"
"#,
    );
    assert!(
        found.iter().any(|e| e.starts_with("server.listen: ")),
        "{found:#?}"
    );
    assert!(
        found
            .iter()
            .any(|e| e.starts_with("server.upstream: ") && e.contains("only http://")),
        "{found:#?}"
    );
    assert!(
        found
            .iter()
            .any(|e| e.starts_with("server.header_timeout: ")),
        "{found:#?}"
    );
    assert!(
        found.iter().any(|e| e.starts_with("server.max_headers: ")),
        "{found:#?}"
    );
    assert!(
        found
            .iter()
            .any(|e| e == "server.upstream_keepalive: 100001 is out of range: 0 to 100000"),
        "{found:#?}"
    );
    assert!(
        found
            .iter()
            .any(|e| e.starts_with("server.upstream_keepalive_timeout: ")),
        "{found:#?}"
    );
}

#[test]
fn defaults_are_sensible() {
    let config = parse(&format!(
        "{MINIMAL}\n[[rules]]\nname = \"a\"\nrate = \"10/s\"\n"
    ))
    .expect("valid");
    let rule = &config.policy.rules[0];
    assert_eq!(
        rule.limit.capacity(),
        10,
        "gcra burst defaults to the rate's count"
    );
    assert_eq!(rule.key.to_string(), "ip");
    assert_eq!(config.policy.clients.ipv6_prefix, 64);
    assert_eq!(config.server.header_timeout, Duration::from_secs(10));
    assert_eq!(config.server.upstream_keepalive, 256);
    assert_eq!(config.server.upgrades, ["websocket"]);
    assert_eq!(config.server.tunnel_idle_timeout, Duration::from_secs(60));
    assert_eq!(config.server.max_tunnels, 5_000);
    assert_eq!(config.server.max_tunnels_per_client, 256);
    assert_eq!(
        config.server.upstream_keepalive_timeout,
        Duration::from_secs(60)
    );
    assert!(matches!(
        config.store,
        StoreConfig::Memory {
            max_keys: 1_000_000
        }
    ));
}

#[test]
fn durations() {
    assert_eq!(
        compile::parse_duration("500ms"),
        Ok(Duration::from_millis(500))
    );
    assert_eq!(compile::parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert!(compile::parse_duration("0s").is_err());
    assert!(compile::parse_duration("5 fortnights").is_err());
}

#[test]
fn bounds_and_shapes_are_checked() {
    let found = errors(
        r#"
[server]
listen = "127.0.0.1:1"
upstream = "http://user:pw@127.0.0.1:2"
admin_listen = "x"
max_headers = 100000000
max_delayed = 4611686018427387904

[[rules]]
name = "bad name"
rate = "1/m"
burst = 61
action = "delay"
match = { hosts = ["api.example.com:443"] }
"#,
    );
    for field in [
        "server.upstream: ",
        "server.admin_listen: ",
        "server.max_headers: ",
        "server.max_delayed: ",
        "rules[0].name: ",
        "rules[0].burst: with action = \"delay\"",
        "rules[0].match.hosts[0]: ",
    ] {
        assert!(
            found.iter().any(|e| e.starts_with(field)),
            "{field} missing in {found:#?}"
        );
    }
}

#[test]
fn a_changed_limit_gets_new_counters_an_unchanged_one_keeps_them() {
    let rules = |burst: u32| {
        parse(&format!(
            "{MINIMAL}\n[[rules]]\nname = \"a\"\nrate = \"10/s\"\nburst = {burst}\n[[rules]]\nname = \"b\"\nrate = \"1/s\"\n"
        ))
        .expect("valid")
        .policy
        .rules
    };
    let (before, after) = (rules(10), rules(20));
    assert_ne!(before[0].name.fingerprint(), after[0].name.fingerprint());
    assert_eq!(before[1].name.fingerprint(), after[1].name.fingerprint());
}

#[test]
fn the_redis_store_of_the_issue_compiles() {
    let config = parse(&format!(
        "{MINIMAL}\n[store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\ntimeout = \"50ms\"\non_error = \"allow\"\n"
    ))
    .expect("valid");
    let StoreConfig::Redis {
        settings, on_error, ..
    } = config.store
    else {
        panic!("not redis");
    };
    assert_eq!(settings.timeout, Duration::from_millis(50));
    assert_eq!(settings.key_prefix, "rw");
    assert_eq!(on_error, FailurePolicy::Allow);
    let cluster = parse(&format!(
        "{MINIMAL}\n[store]\nkind = \"redis\"\ncluster = [\"redis://127.0.0.1:7000\", \"redis://127.0.0.1:7001\"]\non_error = \"local\"\n"
    ))
    .expect("valid");
    assert!(matches!(
        cluster.store,
        StoreConfig::Redis {
            on_error: FailurePolicy::Local,
            ..
        }
    ));
}

#[test]
fn redis_settings_are_checked_and_passwords_not_echoed() {
    let e = errors(&format!(
        "{MINIMAL}\n[store]\nkind = \"redis\"\nurl = \"http://u:hunter2@h:1\"\ntimeout = \"30s\"\non_error = \"maybe\"\nkey_prefix = \"a{{b}}\"\n"
    ));
    let all = e.join("\n");
    assert!(all.contains("store.url:"), "{all}");
    assert!(!all.contains("hunter2"), "{all}");
    assert!(all.contains("store.timeout:"), "{all}");
    assert!(all.contains("store.on_error: \"maybe\""), "{all}");
    assert!(all.contains("store.key_prefix:"), "{all}");
    assert!(
        errors(&format!("{MINIMAL}\n[store]\nkind = \"redis\"\n"))[0].starts_with("store.url:")
    );
    assert!(errors(&format!(
        "{MINIMAL}\n[store]\nkind = \"redis\"\nurl = \"rediss://h:1\"\n"
    ))[0]
        .contains("TLS"));
    assert!(errors(&format!(
        "{MINIMAL}\n[store]\nkind = \"redis\"\ncluster = []\n"
    ))[0]
        .starts_with("store.cluster:"));
    assert!(
        errors(&format!("{MINIMAL}\n[store]\nurl = \"redis://h:1\"\n"))[0]
            .starts_with("store.url: only applies")
    );
}

#[test]
fn rules_the_redis_store_cannot_run_exactly_are_refused() {
    let e = errors(&format!(
        "{MINIMAL}\n[store]\nkind = \"redis\"\nurl = \"redis://h:1\"\n[[rules]]\nname = \"yearly\"\nalgorithm = \"fixed_window\"\nrate = \"10/500d\"\n"
    ));
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].starts_with("rules[0].rate:"), "{e:?}");
}

#[test]
fn a_syntax_error_names_its_position_without_echoing_the_line() {
    let e = errors(&format!(
        "{MINIMAL}\n[store]\nkind = \"redis\"\nurl = \"redis://app:hunter2@h:1\" oops\n"
    ));
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].contains("line 8"), "{e:?}");
    assert!(!e[0].contains("hunter2"), "{e:?}");
}

const ABUSE: &str = r#"
[abuse]
window = "1h"
alert_after = 3
cooldown = "10m"
count_upstream_429 = true
clients = ["ip", "user", "api_key"]
user_header = "x-user-id"
api_key_header = "x-api-key"

[[alerts]]
kind = "sentry"
dsn = "https://PUBLIC_KEY@sentry.example.com/42"
[[alerts]]
kind = "webhook"
url = "https://hooks.example.com/security"
secret = "hook-secret"
[[alerts]]
kind = "log"

[privacy]
secret = "0123456789abcdef0123"
"#;

#[test]
fn the_abuse_example_of_the_issue_compiles_and_hides_its_secrets() {
    let config = parse(&format!("{MINIMAL}{ABUSE}")).expect("valid");
    let abuse = config.abuse.as_ref().expect("abuse on");
    assert_eq!(abuse.settings.alert_after, 3);
    assert_eq!(abuse.settings.cooldown, Duration::from_secs(600));
    assert_eq!(abuse.sinks.len(), 3);
    assert!(
        matches!(abuse.sinks[1].sink, SinkConfig::Webhook { batch: 100, .. }),
        "alerts waiting are posted together, 100 at most by default"
    );
    let shown = format!("{config:?}");
    for secret in ["hook-secret", "0123456789abcdef0123", "PUBLIC_KEY"] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
}

#[test]
fn abuse_settings_are_checked() {
    let e = errors(&format!(
        "{MINIMAL}\n[abuse]\nwindow = \"0s\"\nalert_after = 0\nclients = [\"ip\", \"user\", \"cookie\"]\n[[alerts]]\nkind = \"pager\"\n[[alerts]]\nkind = \"webhook\"\nurl = \"ftp://x\"\n[[alerts]]\nkind = \"sentry\"\ndsn = \"nope\"\n[[alerts]]\nkind = \"webhook\"\nurl = \"http://h/\"\ntimeout = \"soon\"\nbatch = 0\n[[alerts]]\nkind = \"log\"\ntimeout = \"1s\"\n"
    ))
    .join("\n");
    for field in [
        "abuse.window:",
        "abuse.alert_after:",
        "abuse.clients[2]:",
        "abuse.user_header:",
        "alerts[0].kind:",
        "alerts[1].url:",
        "alerts[2].dsn:",
        "alerts[3].timeout:",
        "alerts[3].batch: 0: use a number of alerts per POST from 1 to 1000",
        "alerts[4].timeout: does not apply to kind = \"log\"",
    ] {
        assert!(e.contains(field), "{field} missing from\n{e}");
    }
    let no_secret = errors(&format!(
        "{MINIMAL}\n[abuse]\nclients = [\"api_key\"]\napi_key_header = \"x-api-key\"\n"
    ));
    assert!(no_secret[0].starts_with("privacy.secret:"), "{no_secret:?}");
    let alerts_alone = errors(&format!("{MINIMAL}\n[[alerts]]\nkind = \"log\"\n"));
    assert!(alerts_alone[0].starts_with("alerts:"), "{alerts_alone:?}");
}

#[test]
fn sinks_are_named_by_kind_unless_named_and_no_two_share_a_name() {
    let webhook =
        |name: &str| format!("[[alerts]]\nkind = \"webhook\"\nurl = \"http://h/\"\n{name}\n");
    let names = |alerts: String| -> Vec<String> {
        let config = parse(&format!("{MINIMAL}\n[abuse]\n{alerts}")).expect("valid");
        let abuse = config.abuse.expect("abuse on");
        abuse.sinks.into_iter().map(|s| s.name).collect()
    };
    assert_eq!(
        names(format!(
            "{}{}{}[[alerts]]\nkind = \"log\"\n",
            webhook(""),
            webhook(""),
            webhook("name = \"soc.pager_1\"")
        )),
        ["webhook", "webhook-2", "soc.pager_1", "log"]
    );

    // A name given is kept; the unnamed sinks take the next free default.
    assert_eq!(
        names(format!(
            "{}{}{}",
            webhook("name = \"webhook-2\""),
            webhook(""),
            webhook("")
        )),
        ["webhook-2", "webhook", "webhook-3"]
    );

    let e = errors(&format!(
        "{MINIMAL}\n[abuse]\n{}{}{}{}{}[[alerts]]\nkind = \"log\"\nname = \"sentry\"\n",
        webhook("name = \"soc\""),
        webhook("name = \"soc\""),
        webhook("name = \"soc pager\"\nbatch = 0"),
        webhook(&format!("name = \"{}\"", "x".repeat(65))),
        webhook("name = \"pagér\""),
    ))
    .join("\n");
    for expected in [
        "alerts[1].name: \"soc\" is already the name of alerts[0]",
        "alerts[2].name: use 1 to 64 letters",
        "alerts[2].batch: 0:",
        "alerts[3].name: use 1 to 64",
        "alerts[4].name: use 1 to 64",
        "alerts[5].name: \"sentry\" is the name of another kind of sink",
    ] {
        assert!(e.contains(expected), "{expected} missing from\n{e}");
    }
}

#[test]
fn reputation_lists_are_read_relative_to_the_config_and_checked_line_by_line() {
    let dir = std::env::temp_dir().join(format!("rw-reputation-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(
        dir.join("deny.txt"),
        "10.0.0.0/8\n# comment\n2001:db8::/32\nnot-a-network\n",
    )
    .expect("write");
    let text = format!("{MINIMAL}\n[reputation]\ndeny = [\"deny.txt\", \"missing.txt\"]\n");
    let e = match parse_in(&text, &dir) {
        Ok(_) => panic!("bad lines must be refused"),
        Err(e) => e.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
    };
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].starts_with("reputation.deny[0]:") && e[0].contains("deny.txt line 4"),
        "{e:?}"
    );
    assert!(e[1].starts_with("reputation.deny[1]: cannot read"), "{e:?}");
    std::fs::write(dir.join("deny.txt"), "10.0.0.0/8\n2001:db8::/32 # docs\n").expect("write");
    let config = parse_in(
        &format!("{MINIMAL}\n[reputation]\ndeny = [\"deny.txt\"]\n"),
        &dir,
    )
    .expect("valid");
    assert!(config
        .policy
        .reputation
        .deny
        .contains("10.9.9.9".parse().expect("ip")));
    assert!(config
        .policy
        .reputation
        .deny
        .contains("2001:db8::1".parse().expect("ip")));
    assert!(!config
        .policy
        .reputation
        .deny
        .contains("11.0.0.1".parse().expect("ip")));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_threat_example_of_the_issue_compiles_with_its_levels() {
    let config = parse(&format!(
        r#"{MINIMAL}
[threat]
window = "5m"
[threat.levels]
normal   = {{ rate_factor = 1.0 }}
elevated = {{ rate_factor = 0.5 }}
high     = {{ rate_factor = 0.2, block_for = "5m" }}
critical = {{ rate_factor = 0.0, block_for = "1h" }}
[threat.escalation]
repeat_factor = 2.0
max_block = "24h"
"#
    ))
    .expect("valid");
    let threat = config.threat.expect("threat on");
    use ratewarden_core::threat::Level;
    assert_eq!(threat.window, ratewarden_core::Nanos::from_secs(300));
    assert_eq!(threat.levels.get(Level::Elevated).rate_factor, 0.5);
    assert_eq!(
        threat.levels.get(Level::Critical).block_for,
        Some(ratewarden_core::Nanos::from_secs(3600))
    );
    assert_eq!(
        threat.escalation.max_block,
        ratewarden_core::Nanos::from_secs(86_400)
    );
    assert!(threat
        .automation_agents
        .iter()
        .any(|a| a == "python-requests"));
    assert!(config.admin.token.is_none());
    // Failing addresses are counted together per /24 and /48 unless told otherwise.
    let network = |ip: &str| {
        threat
            .networks
            .network_of(ip.parse().expect("ip"))
            .to_string()
    };
    assert_eq!(network("203.0.113.77"), "203.0.113.0/24");
    assert_eq!(network("2001:db8:1:2::9"), "2001:db8:1::/48");
    // Clients grouped by /40: networks default to one bit wider, and a network as
    // narrow as a client is refused.
    let wide =
        |networks: &str| format!("{MINIMAL}\n[clients]\nipv6_prefix = 40\n[threat]\n{networks}");
    let grouped = parse(&wide("")).expect("valid").threat.expect("threat on");
    assert_eq!(grouped.networks.ipv6, 39);
    let narrow = errors(&wide("[threat.networks]\nipv6_prefix = 40\n")).join("\n");
    assert!(
        narrow.contains("threat.networks.ipv6_prefix: 40: use a prefix length from 8 to 39"),
        "{narrow}"
    );
}

#[test]
fn threat_settings_are_checked_with_their_paths() {
    let e = errors(&format!(
        r#"{MINIMAL}
[admin]
token = "short"
[threat]
window = "0s"
automation_agents = ["curl/", " "]
[threat.levels]
elevated = {{ rate_factor = 1.5 }}
critical = {{ rate_factor = 0.0 }}
high = {{ rate_factor = 0.2, block_for = "soon" }}
[threat.escalation]
repeat_factor = 0.5
[threat.scoring]
elevated = 80
high = 60
endpoints = {{ threshold = 0, weight = 30 }}
failing_neighbours = {{ threshold = 10, weight = -1 }}
[threat.networks]
ipv4_prefix = 4
ipv6_prefix = 129
"#
    ))
    .join("\n");
    for field in [
        "admin.token:",
        "threat.window:",
        "threat.automation_agents[1]:",
        "threat.levels.elevated.rate_factor:",
        "threat.levels.critical.block_for:",
        "threat.levels.high.block_for:",
        "threat.escalation.repeat_factor:",
        "threat.scoring:",
        "threat.scoring.endpoints:",
        "threat.scoring.failing_neighbours:",
        "threat.networks.ipv4_prefix: 4: use a prefix length from 8 to 31",
        "threat.networks.ipv6_prefix: 129: use a prefix length from 8 to 63, shorter than [clients] ipv6_prefix (64)",
    ] {
        assert!(e.contains(field), "{field} missing from\n{e}");
    }
    let unknown = errors(&format!("{MINIMAL}\n[threat]\nwindoww = \"5m\"\n"));
    assert!(unknown[0].contains("windoww"), "{unknown:?}");
}

#[test]
fn the_admin_token_never_reaches_debug_output() {
    let config = parse(&format!(
        "{MINIMAL}\n[admin]\ntoken = \"s3cret-admin-token-value\"\n"
    ))
    .expect("valid");
    assert!(!format!("{config:?}").contains("s3cret"));
}

#[test]
fn the_login_example_of_the_issue_compiles_with_its_per_address_rule() {
    let config = parse(&format!(
        r#"{MINIMAL}
[privacy]
secret = "0123456789abcdef0123"

[[login]]
name = "web_login"
match = {{ path = "/api/v1/auth/login", methods = ["POST"] }}
account = "json:username"
max_body = "16KiB"
failure_status = [401, 403]
per_account = {{ failures = 5, window = "1h", lockout = "1h" }}
per_ip      = {{ attempts = 100, window = "1h" }}
progressive_delay = {{ after = 3, base = "1s", max = "30s" }}
challenge_after = 3
"#
    ))
    .expect("valid");
    let login = &config.policy.logins[0];
    assert_eq!(login.max_body, 16 * 1024);
    assert_eq!(login.per_account.failures, 5);
    assert_eq!(login.challenge_after, Some(3));
    assert_eq!(
        login.lockout_scope,
        ratewarden_core::login::LockoutScope::Account
    );
    let rule = &config.policy.rules[0];
    assert_eq!(rule.name.as_str(), "web_login:per_ip");
    assert!(matches!(
        rule.limit,
        ratewarden_core::Limit::SlidingWindow(_)
    ));
    assert!(config.login_pseudonyms.is_some());
    assert!(!format!("{config:?}").contains("0123456789abcdef0123"));
}

#[test]
fn login_settings_are_checked_with_their_paths() {
    let errs = errors(&format!(
        r#"{MINIMAL}
[[rules]]
name = "web_login:per_ip"
rate = "1/s"

[[login]]
name = "web_login"
match = {{ methods = ["POST"] }}
account = "cookie:session"
max_body = "2MiB"
failure_status = [200]
per_ip = {{ attempts = 10, window = "1h" }}
progressive_delay = {{ base = "10s", max = "1s", mode = "later" }}
lockout_scope = "everyone"
lockout_status = 403
unidentified = "drop"
"#
    ));
    for expected in [
        "privacy.secret: [[login]] accounts are pseudonymised",
        "login[0].match: name the login endpoint",
        "login[0].account: \"cookie\": use json, form or header",
        "login[0].max_body: 2097152 bytes; at most 1MiB",
        "login[0].failure_status[0]: 200 is not a 4xx or 5xx status",
        "login[0].name: its per-address rule would be named \"web_login:per_ip\"",
        "login[0].progressive_delay.mode: \"later\" is not a mode",
        "login[0].lockout_scope: \"everyone\" is not a scope",
        "login[0].lockout_status: 403: use 429 or 423",
        "login[0].unidentified: \"drop\": use pass",
    ] {
        assert!(
            errs.iter().any(|e| e.starts_with(expected)),
            "missing {expected:?} in {errs:#?}"
        );
    }
    let errs = errors(&format!(
        r#"{MINIMAL}
[privacy]
secret = "0123456789abcdef0123"
[[login]]
name = "l"
match = {{ path = "/login" }}
account = "form:user"
progressive_delay = {{ base = "10s", max = "1s" }}
"#
    ));
    assert_eq!(
        errs,
        ["login[0].progressive_delay.max: must be at least progressive_delay.base"]
    );
}

#[test]
fn upgrades_name_protocols_and_never_http() {
    let found = errors(
        r#"
[server]
listen = "127.0.0.1:8080"
upstream = "http://127.0.0.1:8000"
upgrades = ["WebSocket", "h2c", "HTTP/2.0", "web socket", "", "irc/", "TLS/1.0", "h2", "h2c-14"]
tunnel_idle_timeout = "99999d"
max_tunnels_per_client = 0
"#,
    );
    for (i, reason) in [
        (1, "cannot be allowed"),
        (2, "cannot be allowed"),
        (3, "is not a protocol name"),
        (4, "is not a protocol name"),
        (5, "is not a protocol name"),
        (6, "cannot be allowed"),
        (7, "cannot be allowed"),
        (8, "cannot be allowed"),
    ] {
        let field = format!("server.upgrades[{i}]: ");
        assert!(
            found
                .iter()
                .any(|e| e.starts_with(&field) && e.contains(reason)),
            "{field}{reason} in {found:#?}"
        );
    }
    assert!(
        !found.iter().any(|e| e.starts_with("server.upgrades[0]")),
        "{found:#?}"
    );
    assert!(
        found
            .iter()
            .any(|e| e == "server.tunnel_idle_timeout: \"99999d\" is too long: at most 3650d"),
        "{found:#?}"
    );
    assert!(
        found
            .iter()
            .any(|e| e == "server.max_tunnels_per_client: 0 is out of range: 1 to 1000000"),
        "{found:#?}"
    );
    let config = parse(&format!(
        "{MINIMAL}\nupgrades = [\"WebSocket\", \"irc/6.9\"]\n[[rules]]\nname = \"a\"\nrate = \"10/s\"\n"
    ))
    .expect("valid");
    assert_eq!(config.server.upgrades, ["websocket", "irc/6.9"]);
    let none = parse(&format!(
        "{MINIMAL}\nupgrades = []\n[[rules]]\nname = \"a\"\nrate = \"10/s\"\n"
    ))
    .expect("valid");
    assert!(none.server.upgrades.is_empty());
}
