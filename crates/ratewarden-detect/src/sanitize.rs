//! What may leave the process about a request, in one place.
//!
//! Alerts and log lines carry a request's path, method and user agent. The path's query
//! string may hold secrets (`?token=…`, `?api_key=…`, `?sig=…`): their values are
//! replaced by `***`. Text from the client is cut to a bounded length and stripped of
//! control characters, so it can neither forge log lines nor bloat alerts. Headers are
//! never copied wholesale: only the user agent is, and credentials (`Authorization`,
//! `Cookie`, API keys) never are.

/// Query parameters whose values are secrets unless configured otherwise (matched
/// case-insensitively anywhere in the name: `access_token`, `x-api-key`,
/// `authorization`, `jsessionid`).
pub const DEFAULT_SECRET_PARAMS: &[&str] = &[
    "token",
    "key",
    "password",
    "passwd",
    "pass",
    "secret",
    "pwd",
    "sig",
    "signature",
    "auth",
    "session",
    "sessid",
    "code",
    "credential",
    "jwt",
];

/// Longest client-supplied text kept (user agent, path).
const MAX_TEXT: usize = 256;

/// Sanitises request details for alerts and logs.
#[derive(Clone, Debug)]
pub struct Sanitiser {
    secret_params: Vec<String>,
}

impl Default for Sanitiser {
    fn default() -> Sanitiser {
        Sanitiser::new(
            DEFAULT_SECRET_PARAMS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        )
    }
}

impl Sanitiser {
    /// Masks the values of query parameters named (or ending with) one of `params`.
    pub fn new(params: Vec<String>) -> Sanitiser {
        Sanitiser {
            secret_params: params.into_iter().map(|p| p.to_ascii_lowercase()).collect(),
        }
    }

    fn is_secret(&self, name: &str) -> bool {
        let name = percent_decoded_lower(name);
        // Matching anywhere in the name also catches access_token, x-api-key,
        // authorization, jsessionid: masking a harmless parameter now and then is the
        // cheap side of the trade.
        self.secret_params.iter().any(|p| name.contains(p.as_str()))
    }

    /// A path and query with secret parameter values masked, bounded, printable.
    pub fn path_and_query(&self, path_and_query: &str) -> String {
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        let mut out = printable(&self.path_parameters(path), MAX_TEXT);
        if let Some(query) = query {
            out.push('?');
            // Pairs are split at `;` as well as `&`: many servers read both as
            // separators, so `?page=1;token=…` carries a token.
            let mut masked = String::with_capacity(query.len());
            let mut rest = query;
            loop {
                let end = rest.find(['&', ';']).unwrap_or(rest.len());
                let (pair, after) = rest.split_at(end);
                match pair.split_once('=') {
                    Some((name, _)) if self.is_secret(name) => {
                        masked.push_str(&printable(name, 64));
                        masked.push_str("=***");
                    }
                    None if self.is_secret(pair) => masked.push_str("***"),
                    _ => masked.push_str(&printable(pair, MAX_TEXT)),
                }
                let mut separator = after.chars();
                match separator.next() {
                    Some(c) => {
                        masked.push(c);
                        rest = separator.as_str();
                    }
                    None => break,
                }
            }
            out.push_str(&printable(&masked, MAX_TEXT));
        }
        out
    }

    /// The path with secret `;name=value` parameters masked (`;jsessionid=...`).
    fn path_parameters<'a>(&self, path: &'a str) -> std::borrow::Cow<'a, str> {
        if !path.contains(';') {
            return std::borrow::Cow::Borrowed(path);
        }
        let masked = path
            .split('/')
            .map(|segment| {
                let mut parts = segment.split(';');
                let mut out = parts.next().unwrap_or("").to_owned();
                for parameter in parts {
                    out.push(';');
                    match parameter.split_once('=') {
                        Some((name, _)) if self.is_secret(name) => {
                            out.push_str(name);
                            out.push_str("=***");
                        }
                        _ => out.push_str(parameter),
                    }
                }
                out
            })
            .collect::<Vec<_>>()
            .join("/");
        std::borrow::Cow::Owned(masked)
    }

    /// Client text (a user agent): bounded, printable.
    pub fn text(&self, text: &str) -> String {
        printable(text, MAX_TEXT)
    }
}

fn percent_decoded_lower(name: &str) -> String {
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| char::from(b).to_digit(16);
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).to_ascii_lowercase()
}

/// At most `max` characters, control characters replaced by `?`, and `…` after a cut.
fn printable(text: &str, max: usize) -> String {
    // Most paths and user agents are printable ASCII within bounds: one copy, instead
    // of a character at a time (a flood describes thousands of them a second).
    if text.len() <= max && text.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len().min(max.saturating_mul(4)) + '…'.len_utf8());
    let mut chars = text.chars();
    for c in chars.by_ref().take(max) {
        out.push(if c.is_control() { '?' } else { c });
    }
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_query_values_are_masked() {
        let s = Sanitiser::default();
        assert_eq!(
            s.path_and_query("/login?user=bob&token=abc123&access_token=zz&API_KEY=k1&page=2&sig"),
            "/login?user=bob&token=***&access_token=***&API_KEY=***&page=2&***"
        );
        assert_eq!(s.path_and_query("/a?%74oken=leak"), "/a?%74oken=***");
        assert_eq!(
            s.path_and_query("/a?page=1;token=CANARY&x=2;sig"),
            "/a?page=1;token=***&x=2;***"
        );
        assert_eq!(s.path_and_query("/plain"), "/plain");
        assert_eq!(
            s.path_and_query("/a;jsessionid=S3CR3T/b?Authorization=x&PHPSESSID=y&jwt=z"),
            "/a;jsessionid=***/b?Authorization=***&PHPSESSID=***&jwt=***"
        );
    }

    #[test]
    fn client_text_is_bounded_and_cannot_forge_lines() {
        let s = Sanitiser::default();
        let ua = format!("curl\r\nX-Injected: yes{}", "a".repeat(1000));
        let clean = s.text(&ua);
        assert!(!clean.contains('\n') && !clean.contains('\r'));
        assert!(clean.chars().count() <= MAX_TEXT + 1);
    }

    proptest::proptest! {
        /// The one-copy path for plain ASCII agrees with the definition: at most `max`
        /// characters, each control character a `?`, and `…` when something was cut.
        #[test]
        fn printable_is_the_text_cut_with_controls_replaced(
            text in proptest::prop_oneof![
                "[ -~]{0,40}",
                "(\\PC|[\\x00-\\x1f\\x7f\\u{80}-\\u{9f}]|[ -~]{1,8}){0,40}",
            ],
            max in 0_usize..40,
        ) {
            let mut expected: String = text
                .chars()
                .take(max)
                .map(|c| if c.is_control() { '?' } else { c })
                .collect();
            if text.chars().count() > max {
                expected.push('…');
            }
            proptest::prop_assert_eq!(printable(&text, max), expected);
        }
    }

    #[test]
    fn a_configured_list_replaces_the_default() {
        let s = Sanitiser::new(vec!["otp".into()]);
        assert_eq!(s.path_and_query("/x?otp=1&token=2"), "/x?otp=***&token=2");
    }
}
