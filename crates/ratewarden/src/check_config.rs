//! `ratewarden check-config FILE`: the compiled configuration, or every error.

use crate::config::{self, StoreConfig};
use ratewarden_core::policy::Action;
use ratewarden_core::{Limit, Nanos};
use std::path::Path;

/// Prints the compiled rules and returns Ok, or prints each error and exits with 1.
pub fn run(file: &Path) -> anyhow::Result<()> {
    let config = match config::load(file) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{}: {} error(s)", file.display(), errors.0.len());
            for e in &errors.0 {
                eprintln!("  {e}");
            }
            std::process::exit(1);
        }
    };
    let s = &config.server;
    println!("{}: valid", file.display());
    println!("listen {} -> upstream {}", s.listen, s.upstream);
    println!(
        "limits: request head within {:?}, at most {} headers / {} bytes; upstream connect {:?}, answer {:?}; at most {} requests delayed and {} connections at once",
        s.header_timeout, s.max_headers, s.max_header_bytes, s.upstream_connect_timeout, s.upstream_timeout, s.max_delayed, s.max_connections
    );
    if s.upstream_keepalive == 0 {
        println!("upstream keep-alive: none (Connection: close on every request)");
    } else {
        println!(
            "upstream keep-alive: at most {} idle connections per worker, each for {:?}",
            s.upstream_keepalive, s.upstream_keepalive_timeout
        );
    }
    if s.upgrades.is_empty() {
        println!("protocol upgrades: none (Upgrade is removed)");
    } else {
        println!(
            "protocol upgrades: {} (tunnelled once the handshake is admitted; closed after {:?} with nothing sent; at most {} tunnels, {} per client)",
            s.upgrades.join(", "),
            s.tunnel_idle_timeout,
            s.max_tunnels,
            s.max_tunnels_per_client
        );
    }
    if let Some(admin) = s.admin_listen {
        println!("admin  {admin} (/healthz, /metrics)");
    }
    match &config.store {
        StoreConfig::Memory { max_keys } => println!("store  memory, at most {max_keys} counters"),
        StoreConfig::Redis {
            settings,
            on_error,
            max_keys,
        } => {
            println!(
                "store  redis {:?}, keys {}:v1:{{client}}:rule, timeout {:?}, on_error {}{}",
                settings.target,
                settings.key_prefix,
                settings.timeout,
                on_error.as_str(),
                if *on_error == ratewarden_store::FailurePolicy::Local {
                    format!(" (at most {max_keys} counters per instance meanwhile)")
                } else {
                    String::new()
                }
            );
        }
    }
    if let Some(abuse) = &config.abuse {
        let a = &abuse.settings;
        println!(
            "abuse  alert at {} violations within {:?} (one alert per {:?}), tracking {}, upstream 429s {}; alerts to {}",
            a.alert_after,
            a.window,
            a.cooldown,
            a.track.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", "),
            if a.count_upstream_429 { "counted" } else { "ignored" },
            abuse
                .sinks
                .iter()
                .map(|s| match s.sink.kind() {
                    kind if kind == s.name => s.name.clone(),
                    kind => format!("{} ({kind})", s.name),
                })
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let reputation = &config.policy.reputation;
    if !reputation.deny.is_empty() || !reputation.allow.is_empty() {
        println!(
            "reputation: deny {} ranges, allow {} ranges (after merging)",
            reputation.deny.ranges(),
            reputation.allow.ranges()
        );
    }
    if let Some(threat) = &config.threat {
        let levels: Vec<String> = ratewarden_core::threat::Level::ALL
            .iter()
            .map(|&l| {
                let r = threat.levels.get(l);
                let block = r
                    .block_for
                    .map_or_else(String::new, |b| format!(", block {b}"));
                format!("{l} x{}{block}", r.rate_factor)
            })
            .collect();
        let s = &threat.scoring;
        println!(
            "threat: window {}; levels {}; blocks grow x{} up to {}; score thresholds elevated {} / high {} / critical {}; failing addresses counted together per IPv4 /{} and IPv6 /{}",
            threat.window,
            levels.join("; "),
            threat.escalation.repeat_factor,
            threat.escalation.max_block,
            s.elevated,
            s.high,
            s.critical,
            threat.networks.ipv4,
            threat.networks.ipv6
        );
    }
    println!(
        "admin API: {}",
        if config.admin.token.is_some() {
            "on (bearer token set)"
        } else {
            "off (no [admin] token)"
        }
    );
    let clients = &config.policy.clients;
    println!(
        "clients: {} from trusted proxies{}, IPv6 grouped by /{}",
        clients.forwarding_header.name(),
        if clients.trusted_proxies.is_empty() {
            " (none: the peer address is the client)"
        } else {
            ""
        },
        clients.ipv6_prefix
    );
    println!(
        "rules ({}), every matching rule applies:",
        config.policy.rules.len()
    );
    for rule in &config.policy.rules {
        let action = match rule.action {
            Action::Reject => "reject",
            Action::Delay => "delay",
            Action::LogOnly => "log_only",
        };
        println!(
            "  {:<16} {} per key {}, {}, on {}{}{}",
            rule.name.as_str(),
            describe(&rule.limit),
            rule.key,
            action,
            describe_route(&rule.route),
            if rule.allow.is_empty() {
                String::new()
            } else {
                format!(", {} allowed networks", rule.allow.len())
            },
            if rule.deny.is_empty() {
                String::new()
            } else {
                format!(", {} denied networks", rule.deny.len())
            },
        );
    }
    if !config.policy.logins.is_empty() {
        println!("login protection (accounts pseudonymised with [privacy] secret):");
    }
    for login in &config.policy.logins {
        let a = &login.per_account;
        let delay = login.delay.map_or_else(
            || "no progressive delay".to_owned(),
            |d| {
                format!(
                    "from failure {} a delay of {:?} doubling up to {:?} ({})",
                    d.after,
                    d.base.to_duration(),
                    d.max.to_duration(),
                    match login.delay_mode {
                        ratewarden_core::login::DelayMode::Hold => "held",
                        ratewarden_core::login::DelayMode::Reject => "refused with Retry-After",
                    }
                )
            },
        );
        println!(
            "  {:<16} on {}; account from {} (body read up to {} bytes); failures {:?}; lock after {} failures within {:?} for {:?} ({} scope, status {}); {delay}; {}; stuffing at {} accounts per address, distributed at {} addresses per account",
            login.name,
            describe_route(&login.route),
            login.account,
            login.max_body,
            login.failure_status,
            a.failures,
            a.window.to_duration(),
            a.lockout.to_duration(),
            match login.lockout_scope {
                ratewarden_core::login::LockoutScope::Account => "account",
                ratewarden_core::login::LockoutScope::AccountAndIp => "account+ip",
            },
            login.lockout_status,
            login.challenge_after.map_or_else(
                || "no challenge".to_owned(),
                |n| format!("challenge from failure {n}")
            ),
            login.stuffing.accounts_per_ip,
            login.stuffing.ips_per_account,
        );
    }
    Ok(())
}

fn describe_route(route: &ratewarden_core::policy::RouteMatch) -> String {
    let mut on = Vec::new();
    if let Some(p) = &route.path {
        on.push(format!("path = {p}"));
    }
    if let Some(p) = &route.path_prefix {
        on.push(format!("path under {p}"));
    }
    for p in &route.except_path_prefixes {
        on.push(format!("not under {p}"));
    }
    if !route.methods.is_empty() {
        on.push(format!("methods {}", route.methods.join(",")));
    }
    if !route.hosts.is_empty() {
        on.push(format!("hosts {}", route.hosts.join(",")));
    }
    if on.is_empty() {
        on.push("every request".to_owned());
    }
    on.join(" and ")
}

fn describe(limit: &Limit) -> String {
    let window = |n: Nanos| format!("{:?}", n.to_duration());
    match limit {
        Limit::Gcra(g) => format!(
            "gcra: one every {}, burst {}",
            window(g.emission_interval()),
            g.capacity()
        ),
        Limit::SlidingWindow(s) => {
            format!("sliding_window: {} per {}", s.limit(), window(s.period()))
        }
        Limit::FixedWindow(f) => format!(
            "fixed_window: {} per {} (UTC-aligned)",
            f.limit(),
            window(f.period())
        ),
    }
}
