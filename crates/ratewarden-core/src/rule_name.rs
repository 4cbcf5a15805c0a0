//! Rule names, with the 64-bit fingerprint stores use to tell rules apart cheaply.

/// The name of a rule (or of any other family of counters), with a fingerprint computed
/// once, when the configuration is compiled, so the request path never hashes it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RuleName {
    name: Box<str>,
    fingerprint: u64,
}

impl RuleName {
    /// A rule name. Names come from configuration, never from requests.
    pub fn new(name: &str) -> RuleName {
        RuleName {
            name: name.into(),
            // Unkeyed and stable: it only tells rules apart; secrecy comes from the
            // store's own key.
            fingerprint: siphasher::sip::SipHasher13::new_with_keys(0, 0).hash(name.as_bytes()),
        }
    }

    /// A rule name whose fingerprint also covers `version` (a rendering of the rule's
    /// limit), so a store keeps separate counters for the same name under different
    /// parameters.
    pub fn versioned(name: &str, version: &str) -> RuleName {
        let mut bytes = Vec::with_capacity(name.len() + 1 + version.len());
        bytes.extend_from_slice(name.as_bytes());
        bytes.push(0xff);
        bytes.extend_from_slice(version.as_bytes());
        RuleName {
            name: name.into(),
            fingerprint: siphasher::sip::SipHasher13::new_with_keys(0, 0).hash(&bytes),
        }
    }

    /// The name.
    #[inline]
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// A 64-bit digest of the name.
    #[inline]
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }
}

impl std::fmt::Display for RuleName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}
