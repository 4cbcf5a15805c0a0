//! Login protection's pure parts: where a request names its account, the account's
//! canonical form, and how long to hold a request after repeated failures.
//!
//! Reading the body, counting failures and locking accounts out are the gateway's and
//! the store's business; this module only answers questions about bytes and numbers.

use crate::time::Nanos;
use std::fmt;
use unicode_normalization::UnicodeNormalization;

/// The longest account name kept (in characters); longer ones are cut, so a hostile
/// value cannot make keys or log lines large.
pub const MAX_ACCOUNT_CHARS: usize = 256;

/// Where the account name is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccountSource {
    /// A top-level string field of a JSON object body (`json:username`).
    Json(String),
    /// A field of an `application/x-www-form-urlencoded` body (`form:username`).
    Form(String),
    /// A request header (`header:X-Username`), lower-cased.
    Header(String),
}

impl AccountSource {
    /// Parses `json:FIELD`, `form:FIELD` or `header:NAME`.
    pub fn parse(text: &str) -> Result<AccountSource, String> {
        let (kind, name) = text
            .split_once(':')
            .ok_or_else(|| format!("{text:?}: use json:FIELD, form:FIELD or header:NAME"))?;
        let name = name.trim();
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            return Err(format!(
                "{text:?}: the field or header name is missing or unreadable"
            ));
        }
        match kind.trim() {
            "json" => Ok(AccountSource::Json(name.to_owned())),
            "form" => Ok(AccountSource::Form(name.to_owned())),
            "header" => Ok(AccountSource::Header(name.to_ascii_lowercase())),
            other => Err(format!(
                "{other:?}: use json, form or header before the colon"
            )),
        }
    }

    /// Whether the account is in the body (which must then be read first).
    pub fn needs_body(&self) -> bool {
        !matches!(self, AccountSource::Header(_))
    }
}

impl fmt::Display for AccountSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AccountSource::Json(n) => write!(f, "json:{n}"),
            AccountSource::Form(n) => write!(f, "form:{n}"),
            AccountSource::Header(n) => write!(f, "header:{n}"),
        }
    }
}

/// The account named by a form body's field `field`, raw (not yet normalised).
pub fn form_field(body: &[u8], field: &str) -> Option<String> {
    body.split(|b| *b == b'&').find_map(|pair| {
        let (name, value) = match pair.iter().position(|b| *b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &[][..]),
        };
        (form_decode(name)? == field)
            .then(|| form_decode(value))
            .flatten()
    })
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte; the
/// result must be UTF-8.
fn form_decode(bytes: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The canonical account: Unicode NFKC, trimmed, lower-cased, at most
/// [`MAX_ACCOUNT_CHARS`]; `None` when nothing is left. `Alice@Example.com `,
/// `alice@example.com` and the full-width `ａｌｉｃｅ@example.com` are one account.
pub fn normalize_account(raw: &str) -> Option<String> {
    let folded: String = raw.nfkc().collect::<String>();
    let account: String = folded
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_ACCOUNT_CHARS)
        .collect();
    (!account.is_empty()).then_some(account)
}

/// Holding requests after repeated failures: from the `after`-th failure on, a request
/// waits `base × 2^(failures - after)`, at most `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgressiveDelay {
    /// Failures before any delay.
    pub after: u32,
    /// The first delay.
    pub base: Nanos,
    /// The longest delay.
    pub max: Nanos,
}

impl ProgressiveDelay {
    /// The delay for a request on an account that has failed `failures` times.
    pub fn for_failures(&self, failures: u32) -> Nanos {
        // A first attempt is never held, whatever `after` says.
        let after = self.after.max(1);
        if failures < after {
            return Nanos::ZERO;
        }
        let doublings = (failures - after).min(63);
        let delay = self.base.as_nanos().saturating_mul(1u64 << doublings);
        Nanos(delay.min(self.max.as_nanos()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_and_print() {
        for text in ["json:username", "form:user", "header:x-username"] {
            assert_eq!(
                AccountSource::parse(text).map(|s| s.to_string()),
                Ok(text.to_owned())
            );
        }
        assert_eq!(
            AccountSource::parse("header:X-Username"),
            Ok(AccountSource::Header("x-username".into()))
        );
        for bad in ["username", "cookie:x", "json:", "json: "] {
            assert!(AccountSource::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn form_fields_are_decoded() {
        let body = b"password=p%40ss&username=Alice+Smith%40example.com&x";
        assert_eq!(
            form_field(body, "username").as_deref(),
            Some("Alice Smith@example.com")
        );
        assert_eq!(form_field(body, "missing"), None);
        assert_eq!(form_field(b"username=%ZZ", "username"), None);
        assert_eq!(form_field(b"username=%", "username"), None);
        assert_eq!(form_field(b"username=%ff", "username"), None, "not UTF-8");
    }

    #[test]
    fn accounts_are_one_whatever_their_spelling() {
        let canonical = normalize_account("alice@example.com");
        for spelling in [
            "Alice@Example.com ",
            "  ALICE@EXAMPLE.COM",
            "ａｌｉｃｅ@example.com",
        ] {
            assert_eq!(normalize_account(spelling), canonical, "{spelling}");
        }
        assert_eq!(normalize_account("   "), None);
        assert_eq!(
            normalize_account(&"x".repeat(10_000)).map(|a| a.chars().count()),
            Some(MAX_ACCOUNT_CHARS)
        );
    }

    #[test]
    fn delays_double_from_the_threshold_up_to_the_cap() {
        let d = ProgressiveDelay {
            after: 3,
            base: Nanos::from_secs(1),
            max: Nanos::from_secs(30),
        };
        let secs: Vec<u64> = (0..10)
            .map(|n| d.for_failures(n).as_nanos() / 1_000_000_000)
            .collect();
        assert_eq!(secs, [0, 0, 0, 1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(d.for_failures(u32::MAX), Nanos::from_secs(30));
    }
}
