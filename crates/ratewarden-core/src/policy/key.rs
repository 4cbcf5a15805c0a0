//! Whom a rule counts: the client part of a counter's key, built from the request.
//!
//! A template is one or more parts joined with `+` in configuration (`ip`,
//! `header:X-Api-Key`, `ip+path`). Each part renders as `name=value`, with the value
//! length-prefixed so no choice of header value can make one client's key equal
//! another's. A header that is missing counts as the client's network instead: leaving
//! the header out must neither escape the limit nor pool every header-less client into
//! one bucket.

use super::RequestFacts;
use crate::identity::DottedQuad;

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
                KeyPart::Ip => push_network(&mut key, "ip", request.client_network),
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
                    None => push_network(&mut key, "no-header-ip", request.client_network),
                },
            }
        }
        key
    }
}

/// `name=LEN:value`, written without the formatting machinery: this runs for every
/// request of every rule.
fn push(key: &mut String, name: &str, value: &str) {
    key.push_str(name);
    key.push('=');
    key.push_str(itoa::Buffer::new().format(value.len()));
    key.push(':');
    key.push_str(value);
}

/// [`push`] of a network as `IpNet` displays it (`192.0.2.7/32`, `2001:db8::/64`).
fn push_network(key: &mut String, name: &str, network: ipnet::IpNet) {
    match network {
        ipnet::IpNet::V4(net) => push(key, name, DottedQuad::network(net).as_str()),
        ipnet::IpNet::V6(net) => push(key, name, &net.to_string()),
    }
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

#[cfg(test)]
mod tests {
    use super::{push, push_network};
    use proptest::prelude::*;

    proptest! {
        /// The hand-written IPv4 rendering gives the very keys `IpNet`'s `Display`
        /// gave: counters already in Redis keep their names across an upgrade.
        #[test]
        fn a_network_renders_as_ipnet_displays_it(
            octets in any::<[u8; 4]>(),
            v4_prefix in 0u8..=32,
            segments in any::<[u16; 8]>(),
            v6_prefix in 0u8..=128,
        ) {
            let networks = [
                ipnet::IpNet::V4(ipnet::Ipv4Net::new(octets.into(), v4_prefix).unwrap()),
                ipnet::IpNet::V6(ipnet::Ipv6Net::new(segments.into(), v6_prefix).unwrap()),
            ];
            for network in networks {
                let (mut fast, mut displayed) = (String::new(), String::new());
                push_network(&mut fast, "ip", network);
                push(&mut displayed, "ip", &network.to_string());
                prop_assert_eq!(fast, displayed);
            }
        }
    }
}
