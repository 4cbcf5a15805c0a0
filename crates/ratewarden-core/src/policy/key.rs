//! Whom a rule counts: the client part of a counter's key, built from the request.
//!
//! A template is one or more parts joined with `+` in configuration (`ip`,
//! `header:X-Api-Key`, `ip+path`). Each part renders as `name=value`, with the value
//! length-prefixed so no choice of header value can make one client's key equal
//! another's. A header that is missing counts as the client's network instead: leaving
//! the header out must neither escape the limit nor pool every header-less client into
//! one bucket.

use super::RequestFacts;
use std::fmt::Write as _;

/// Longest header value used as is; a longer one is kept as its first bytes and a digest
/// of the whole, so keys stay short and long values with a shared prefix (JWTs) stay
/// apart.
const MAX_VALUE_BYTES: usize = 128;

/// One part of a key template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyPart {
    /// The client's network (address, or IPv6 prefix).
    Ip,
    /// A request header's value (name lower case).
    Header(String),
    /// The canonical path.
    Path,
    /// The method.
    Method,
    /// The host.
    Host,
}

/// A key template: the parts, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyTemplate {
    parts: Vec<KeyPart>,
}

/// Why a key template was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Nothing given.
    #[error("key is empty; use ip, header:NAME, path, method, host, or several joined with +")]
    Empty,
    /// A part that is none of the known ones.
    #[error("unknown key part {0:?}; use ip, header:NAME, path, method or host")]
    UnknownPart(String),
    /// `header:` without a valid header name.
    #[error("header name {0:?} is not a valid HTTP header name")]
    BadHeaderName(String),
}

impl KeyTemplate {
    /// Parses `ip`, `header:X-Api-Key`, `ip+path`...
    pub fn parse(text: &str) -> Result<KeyTemplate, KeyError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(KeyError::Empty);
        }
        let parts = text
            .split('+')
            .map(|part| {
                let part = part.trim();
                if let Some(name) = part
                    .strip_prefix("header:")
                    .or_else(|| part.strip_prefix("HEADER:"))
                {
                    let name = name.trim();
                    let token = !name.is_empty()
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
                    return if token {
                        Ok(KeyPart::Header(name.to_ascii_lowercase()))
                    } else {
                        Err(KeyError::BadHeaderName(name.to_owned()))
                    };
                }
                match part.to_ascii_lowercase().as_str() {
                    "ip" => Ok(KeyPart::Ip),
                    "path" => Ok(KeyPart::Path),
                    "method" => Ok(KeyPart::Method),
                    "host" => Ok(KeyPart::Host),
                    _ => Err(KeyError::UnknownPart(part.to_owned())),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(KeyTemplate { parts })
    }

    /// The parts.
    pub fn parts(&self) -> &[KeyPart] {
        &self.parts
    }

    /// The key for a request.
    pub fn render(&self, request: &RequestFacts<'_>) -> String {
        let mut key = String::with_capacity(48);
        for (i, part) in self.parts.iter().enumerate() {
            if i > 0 {
                key.push('|');
            }
            match part {
                KeyPart::Ip => push(&mut key, "ip", &request.client_network.to_string()),
                KeyPart::Path => push(&mut key, "path", request.path.as_str()),
                KeyPart::Method => push(&mut key, "method", request.method),
                KeyPart::Host => push(&mut key, "host", request.host.unwrap_or("")),
                KeyPart::Header(name) => match (request.header)(name) {
                    Some(value) if value.len() > MAX_VALUE_BYTES => {
                        let digest = siphasher::sip::SipHasher13::new_with_keys(0, 0).hash(value);
                        let shown = String::from_utf8_lossy(&value[..MAX_VALUE_BYTES]);
                        push(&mut key, name, &format!("{shown}#{digest:016x}"));
                    }
                    Some(value) => push(&mut key, name, &String::from_utf8_lossy(value)),
                    None => push(
                        &mut key,
                        "no-header-ip",
                        &request.client_network.to_string(),
                    ),
                },
            }
        }
        key
    }
}

fn push(key: &mut String, name: &str, value: &str) {
    let _ = write!(key, "{name}={}:{value}", value.len());
}

impl std::fmt::Display for KeyTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, part) in self.parts.iter().enumerate() {
            if i > 0 {
                f.write_str("+")?;
            }
            match part {
                KeyPart::Ip => f.write_str("ip")?,
                KeyPart::Header(name) => write!(f, "header:{name}")?,
                KeyPart::Path => f.write_str("path")?,
                KeyPart::Method => f.write_str("method")?,
                KeyPart::Host => f.write_str("host")?,
            }
        }
        Ok(())
    }
}
