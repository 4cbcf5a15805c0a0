//! One counter's state in 128 bits, updated by compare-and-swap.
//!
//! Layout: bits 0–63 the algorithm state's wide word, 64–95 its narrow word, 96–127 the
//! expiry in whole seconds since the Unix epoch (rounded up, so a state is never
//! reclaimed early; 32 bits last until 2106). State and expiry change in one atomic step,
//! so no state ever lives without its expiry.

use ratewarden_core::algorithm::StateBits;
use ratewarden_core::Timestamp;

/// A packed slot value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Slot(pub(crate) u128);

impl Slot {
    pub(crate) fn pack(state: StateBits, expires_at: Timestamp) -> Slot {
        let expiry = u32::try_from(expires_at.as_secs_ceil()).unwrap_or(u32::MAX);
        Slot(u128::from(state.wide) | (u128::from(state.narrow) << 64) | (u128::from(expiry) << 96))
    }

    pub(crate) fn state(self) -> StateBits {
        StateBits {
            wide: self.0 as u64,
            narrow: (self.0 >> 64) as u32,
        }
    }

    /// Seconds since the epoch from which the state means nothing.
    pub(crate) fn expiry_secs(self) -> u32 {
        (self.0 >> 96) as u32
    }

    /// Whether the state is equivalent to none at `now`.
    pub(crate) fn expired(self, now: Timestamp) -> bool {
        u64::from(self.expiry_secs()) * ratewarden_core::time::NANOS_PER_SEC <= now.as_nanos()
    }

    /// The same state with another expiry.
    pub(crate) fn with_state(self, state: StateBits) -> Slot {
        Slot((self.0 & (u128::from(u32::MAX) << 96)) | Slot::pack(state, Timestamp::EPOCH).0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rounds_expiry_up() {
        let state = StateBits {
            wide: u64::MAX - 3,
            narrow: 0xabcd_ef01,
        };
        let slot = Slot::pack(state, Timestamp(1_795_453_170_000_000_001));
        assert_eq!(slot.state(), state);
        assert_eq!(slot.expiry_secs(), 1_795_453_171);
        assert!(!slot.expired(Timestamp(1_795_453_170_999_999_999)));
        assert!(slot.expired(Timestamp(1_795_453_171_000_000_000)));
        let other = StateBits { wide: 1, narrow: 2 };
        let changed = slot.with_state(other);
        assert_eq!(changed.state(), other);
        assert_eq!(changed.expiry_secs(), slot.expiry_secs());
    }
}
