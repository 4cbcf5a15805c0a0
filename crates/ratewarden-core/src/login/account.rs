//! Where a login request names its account, and the account's canonical form.
//!
//! The gateway reads the body (bounded) and hands the bytes here. A body that names the
//! account twice (a repeated JSON key or form field, or a JSON array of attempts) is
//! [`Named::Ambiguous`]: the application may read the other value than the one we
//! would count, so such a request is refused rather than guessed at.

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
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

/// What a request says about its account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Named {
    /// The canonical account (see [`normalize_account`]).
    Account(String),
    /// The field or header is absent or empty.
    Missing,
    /// The body is not what the source expects (not JSON, not UTF-8, the field not a
    /// string): the request goes on, counted against its address only.
    Unreadable,
    /// The request names the account more than once, or carries several attempts:
    /// refused, since the application may count another one than we would.
    Ambiguous(&'static str),
}

impl Named {
    fn of(raw: &str) -> Named {
        normalize_account(raw).map_or(Named::Missing, Named::Account)
    }
}

/// The account that a complete body names, for a body source (`json:` or `form:`).
pub fn account_in_body(source: &AccountSource, body: &[u8]) -> Named {
    match source {
        AccountSource::Json(field) => json_field(body, field),
        AccountSource::Form(field) => form_field(body, field),
        AccountSource::Header(_) => Named::Missing,
    }
}

/// The account that the values of the source header name (`header:` sources).
pub fn account_in_header<'a>(mut values: impl Iterator<Item = &'a [u8]>) -> Named {
    let Some(first) = values.next() else {
        return Named::Missing;
    };
    if values.next().is_some() {
        return Named::Ambiguous("the account header was sent more than once");
    }
    match std::str::from_utf8(first) {
        Ok(text) => Named::of(text),
        Err(_) => Named::Unreadable,
    }
}

/// The account named by a form body's field `field`.
fn form_field(body: &[u8], field: &str) -> Named {
    let mut found = None;
    for pair in body.split(|b| *b == b'&') {
        let (name, value) = match pair.iter().position(|b| *b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &[][..]),
        };
        if form_decode(name).as_deref() != Some(field) {
            continue;
        }
        if found.is_some() {
            // Django reads the last of repeated fields, PHP the last, others the first.
            return Named::Ambiguous("the account field appears more than once");
        }
        found = Some(form_decode(value));
    }
    match found {
        None => Named::Missing,
        Some(None) => Named::Unreadable,
        Some(Some(value)) => Named::of(&value),
    }
}

/// The account named by a JSON object body's top-level field `field`.
fn json_field(body: &[u8], field: &str) -> Named {
    let mut reader = serde_json::Deserializer::from_slice(body);
    let named = match (JsonField { field }).deserialize(&mut reader) {
        Ok(named) => named,
        Err(_) => return Named::Unreadable,
    };
    // Trailing bytes after the object: not JSON the application would accept either.
    match reader.end() {
        Ok(()) => named,
        Err(_) => Named::Unreadable,
    }
}

/// Scans a JSON object for one key, skipping every other value without building it.
struct JsonField<'f> {
    field: &'f str,
}

impl<'de> DeserializeSeed<'de> for JsonField<'_> {
    type Value = Named;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Named, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for JsonField<'_> {
    type Value = Named;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Named, A::Error> {
        let mut found: Option<Named> = None;
        while let Some(key) = map.next_key::<String>()? {
            if key != self.field {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let value = map.next_value::<serde_json::Value>()?;
            if found.is_some() {
                // Most JSON parsers keep the last of repeated keys; we would count the first.
                found = Some(Named::Ambiguous("the account field appears more than once"));
                continue;
            }
            found = Some(match value {
                serde_json::Value::String(s) => Named::of(&s),
                serde_json::Value::Number(n) => Named::of(&n.to_string()),
                serde_json::Value::Null => Named::Missing,
                _ => Named::Unreadable,
            });
        }
        Ok(found.unwrap_or(Named::Missing))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Named, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Named::Ambiguous(
            "a JSON array carries several login attempts in one request",
        ))
    }
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
            form_field(body, "username"),
            Named::Account("alice smith@example.com".into())
        );
        assert_eq!(form_field(body, "missing"), Named::Missing);
        assert_eq!(form_field(b"username=%ZZ", "username"), Named::Unreadable);
        assert_eq!(form_field(b"username=%", "username"), Named::Unreadable);
        assert_eq!(
            form_field(b"username=%ff", "username"),
            Named::Unreadable,
            "not UTF-8"
        );
        assert!(matches!(
            form_field(b"username=alice&password=x&username=bob", "username"),
            Named::Ambiguous(_)
        ));
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
    fn json_fields_are_found_and_ambiguity_refused() {
        let field = |body: &str| json_field(body.as_bytes(), "username");
        assert_eq!(
            field(r#"{"password":"x","username":" Bob ","nested":{"username":"eve"}}"#),
            Named::Account("bob".into())
        );
        assert_eq!(
            field(r#"{"user\u006eame":"escaped"}"#),
            Named::Account("escaped".into()),
            "keys are compared decoded, as the application reads them"
        );
        assert_eq!(
            field(r#"{"username":12345}"#),
            Named::Account("12345".into())
        );
        assert_eq!(field(r#"{"password":"x"}"#), Named::Missing);
        assert_eq!(field(r#"{"username":null}"#), Named::Missing);
        assert_eq!(field(r#"{"username":["a"]}"#), Named::Unreadable);
        assert_eq!(field("username=alice"), Named::Unreadable);
        assert_eq!(field(r#"{"username":"a"} trailing"#), Named::Unreadable);
        assert_eq!(field(r#"{"username":"a""#), Named::Unreadable);
        assert_eq!(field(&"[".repeat(10_000)), Named::Unreadable);
        assert_eq!(
            field(&format!("{}{}", r#"{"a":"#.repeat(5000), "1")),
            Named::Unreadable,
            "deep nesting is refused by the parser, not a stack overflow"
        );
        assert!(matches!(
            field(r#"{"username":"alice","username":"victim"}"#),
            Named::Ambiguous(_)
        ));
        assert!(matches!(
            field(r#"[{"username":"a"},{"username":"b"}]"#),
            Named::Ambiguous(_)
        ));
    }

    #[test]
    fn header_accounts_must_come_once() {
        assert_eq!(
            account_in_header([&b"Alice"[..]].into_iter()),
            Named::Account("alice".into())
        );
        assert_eq!(account_in_header(std::iter::empty()), Named::Missing);
        assert!(matches!(
            account_in_header([&b"a"[..], &b"b"[..]].into_iter()),
            Named::Ambiguous(_)
        ));
        assert_eq!(
            account_in_header([&b"\xff"[..]].into_iter()),
            Named::Unreadable
        );
    }
}
