//! How counters are named in Redis, in one place.
//!
//! `{prefix}:v1:{<client>}:<rule>:<limit version>`, where `<client>` is a digest of the
//! client's identity. The braces are a Redis Cluster hash tag: every counter of one
//! client lands in one slot, so one script can decide all of a request's checks that
//! share the client. The digest keeps identities (addresses, API keys, user ids) out of
//! Redis, where anyone with `KEYS` access would read them, and bounds the key length;
//! it is unkeyed so that every gateway sharing the Redis computes the same name. `v1` is
//! the layout's version: a change of layout or of the scripts' state encoding bumps it,
//! so an upgraded gateway never misreads an older one's state. The limit version (the
//! rule's fingerprint, which covers its parameters) starts a fresh counter when a
//! reload changes a rule's limit.

use crate::check::CounterKey;
use sha2::{Digest, Sha256};
use std::fmt::Write;

/// The layout version in every key.
const LAYOUT: &str = "v1";

/// The Redis key of `key` under `prefix`, and the hash tag it carries.
pub(crate) fn counter_key(prefix: &str, key: CounterKey<'_>) -> (String, ClientTag) {
    let tag = ClientTag::of(key.client);
    let rule = key.rule;
    let mut name = String::with_capacity(prefix.len() + rule.as_str().len() + 64);
    // Writing to a String cannot fail.
    let _ = write!(
        name,
        "{prefix}:{LAYOUT}:{{{}}}:{}:{:016x}",
        tag.as_str(),
        rule.as_str(),
        rule.fingerprint()
    );
    (name, tag)
}

/// The base key of a client's threat state (behaviour buckets, level, block): its
/// script adds suffixes, all under the client's tag.
pub(crate) fn threat_key(prefix: &str, client: &str) -> String {
    let tag = ClientTag::of(client);
    format!("{prefix}:{LAYOUT}:{{{}}}:threat", tag.as_str())
}

/// The base key of a login subject's state: an account's (failures, lockout, attempts
/// in flight, known addresses, addresses seen) or an address's (accounts it tried), all
/// under the subject's tag. Subjects come pseudonymised; the tag hides them further.
pub(crate) fn login_key(prefix: &str, subject: &str) -> String {
    let tag = ClientTag::of(subject);
    format!("{prefix}:{LAYOUT}:{{{}}}:login", tag.as_str())
}

/// The index of blocks in force (clients by end time), for the admin API.
pub(crate) fn block_index(prefix: &str) -> String {
    format!("{prefix}:{LAYOUT}:threat:blocks")
}

/// The hash tag of a client: 128 bits of SHA-256 of its identity, in hex.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ClientTag([u8; 32]);

impl ClientTag {
    fn of(client: &str) -> ClientTag {
        let digest = Sha256::digest(client.as_bytes());
        let mut hex = [0u8; 32];
        for (i, byte) in digest.iter().take(16).enumerate() {
            hex[2 * i] = HEX[usize::from(byte >> 4)];
            hex[2 * i + 1] = HEX[usize::from(byte & 0x0f)];
        }
        ClientTag(hex)
    }

    fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever written.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RuleName;

    #[test]
    fn keys_are_tagged_by_client_and_hide_it() {
        let rule = RuleName::new("login");
        let (a, tag_a) = counter_key("rw", CounterKey::new(&rule, "203.0.113.9"));
        let (b, tag_b) = counter_key("rw", CounterKey::new(&rule, "203.0.113.9"));
        let (c, tag_c) = counter_key("rw", CounterKey::new(&rule, "203.0.113.10"));
        assert_eq!((&a, &tag_a), (&b, &tag_b));
        assert_ne!(tag_a, tag_c);
        assert_ne!(a, c);
        assert!(!a.contains("203.0.113"), "{a}");
        assert!(a.starts_with("rw:v1:{"), "{a}");
        let tag = &a[a.find('{').expect("open") + 1..a.find('}').expect("close")];
        assert_eq!(tag, tag_a.as_str());
        assert!(
            a.ends_with(&format!(":login:{:016x}", rule.fingerprint())),
            "{a}"
        );
    }

    #[test]
    fn a_changed_limit_is_a_new_counter() {
        let old = RuleName::versioned("api", "gcra 10/s burst 20");
        let new = RuleName::versioned("api", "gcra 5/s burst 20");
        let (a, _) = counter_key("rw", CounterKey::new(&old, "c"));
        let (b, _) = counter_key("rw", CounterKey::new(&new, "c"));
        assert_ne!(a, b);
    }
}
