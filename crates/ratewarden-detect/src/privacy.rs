//! Pseudonyms: user ids and API keys replaced by a keyed HMAC before they reach a store
//! key, a log line or an alert.
//!
//! Keyed, not a plain hash: user ids and many API key formats are guessable, and a plain
//! SHA-256 of a guess would confirm it. With the HMAC key (`[privacy] secret`) kept on the
//! gateways, an alert's reader can tell that two alerts concern the same user without
//! learning who it is; whoever holds the secret can check a suspect id.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Replaces identities by stable pseudonyms.
#[derive(Clone)]
pub struct Pseudonymiser {
    key: Vec<u8>,
}

impl std::fmt::Debug for Pseudonymiser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pseudonymiser(***)")
    }
}

impl Pseudonymiser {
    /// Pseudonyms keyed by `secret`.
    pub fn new(secret: &[u8]) -> Pseudonymiser {
        Pseudonymiser {
            key: secret.to_vec(),
        }
    }

    /// `kind` (a short word: `user`, `key`) and 96 bits of HMAC-SHA256 of the identity
    /// under that kind, in hex: `user_3f9a…`.
    pub fn pseudonym(&self, kind: &str, identity: &str) -> String {
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.key) {
            Ok(mac) => mac,
            // HMAC takes keys of any length; this arm is never taken.
            Err(_) => return format!("{kind}_unavailable"),
        };
        mac.update(kind.as_bytes());
        mac.update(&[0]);
        mac.update(identity.as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut out = String::with_capacity(kind.len() + 1 + 24);
        out.push_str(kind);
        out.push('_');
        for byte in &digest[..12] {
            out.push_str(&format!("{byte:02x}"));
        }
        out
    }
}

/// HMAC-SHA256 of `message` under `key`, in lower-case hex: webhook signatures.
pub fn hmac_hex(key: &[u8], message: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(message);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudonyms_are_stable_keyed_and_hide_the_identity() {
        let a = Pseudonymiser::new(b"secret-a");
        let b = Pseudonymiser::new(b"secret-b");
        let p = a.pseudonym("user", "alice@example.com");
        assert_eq!(p, a.pseudonym("user", "alice@example.com"));
        assert_ne!(p, b.pseudonym("user", "alice@example.com"), "keyed");
        assert_ne!(p, a.pseudonym("key", "alice@example.com"), "kinds apart");
        assert!(p.starts_with("user_") && p.len() == 5 + 24, "{p}");
        assert!(!p.contains("alice"));
        assert_eq!(format!("{a:?}"), "Pseudonymiser(***)");
    }

    #[test]
    fn hmac_matches_the_rfc_4231_vector() {
        // RFC 4231, test case 2.
        assert_eq!(
            hmac_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
