//! A small HyperLogLog: how many distinct things (endpoints) a client touched, in a fixed
//! 128 bytes whatever it touches.

/// Registers: 2^7 = 128, standard error about 1.04 / sqrt(128) ≈ 9%, plenty to tell a
/// user who reads twenty pages from a scraper that reads two thousand.
const PRECISION: u32 = 7;
const REGISTERS: usize = 1 << PRECISION;

/// A HyperLogLog counter of 64-bit hashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DistinctSketch {
    registers: [u8; REGISTERS],
}

impl Default for DistinctSketch {
    fn default() -> DistinctSketch {
        DistinctSketch {
            registers: [0; REGISTERS],
        }
    }
}

impl DistinctSketch {
    /// Adds one item, given as a 64-bit hash (remixed here, so a weak hash of
    /// structured input still spreads over the registers as the estimate assumes).
    pub fn insert(&mut self, hash: u64) {
        let hash = mix(hash);
        let index = (hash >> (64 - PRECISION)) as usize;
        // The rank of the first set bit of the remaining bits (1-based); a sentinel bit
        // bounds it when they are all zero.
        let rest = (hash << PRECISION) | (1 << (PRECISION - 1));
        let rank = rest.leading_zeros() as u8 + 1;
        if let Some(r) = self.registers.get_mut(index) {
            *r = (*r).max(rank);
        }
    }

    /// Merges another sketch in (the union of both sets).
    pub fn merge(&mut self, other: &DistinctSketch) {
        for (r, o) in self.registers.iter_mut().zip(other.registers.iter()) {
            *r = (*r).max(*o);
        }
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.registers.iter().all(|r| *r == 0)
    }

    /// The estimated number of distinct items, with the small-range correction (linear
    /// counting) that makes small counts nearly exact.
    pub fn estimate(&self) -> f64 {
        let m = REGISTERS as f64;
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let sum: f64 = self
            .registers
            .iter()
            // 2^-r, built from its exponent bits (r is at most 58): this runs after
            // every request.
            .map(|r| f64::from_bits((1023 - u64::from(*r)) << 52))
            .sum();
        let raw = alpha * m * m / sum;
        let zeros = self.registers.iter().filter(|r| **r == 0).count();
        if raw <= 2.5 * m && zeros > 0 {
            m * (m / zeros as f64).ln()
        } else {
            raw
        }
    }
}

/// The splitmix64 finaliser: every input bit affects every output bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use siphasher::sip::SipHasher13;
    use std::hash::Hasher;

    fn hash(i: u64) -> u64 {
        let mut h = SipHasher13::new_with_keys(1, 2);
        h.write_u64(i);
        h.finish()
    }

    #[test]
    fn structured_hashes_estimate_as_well_as_random_ones() {
        let mut s = DistinctSketch::default();
        for i in 0..50u64 {
            s.insert(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        }
        assert!((s.estimate() - 50.0).abs() < 8.0, "{}", s.estimate());
    }

    #[test]
    fn estimates_within_the_expected_error() {
        for n in [0u64, 1, 10, 50, 200, 1000, 20_000] {
            let mut s = DistinctSketch::default();
            for i in 0..n {
                s.insert(hash(i));
                s.insert(hash(i)); // repeats do not count
            }
            let e = s.estimate();
            let tolerance = (n as f64 * 0.2).max(1.0);
            assert!((e - n as f64).abs() <= tolerance, "n={n} estimate={e}");
        }
    }

    #[test]
    fn merge_is_the_union() {
        let (mut a, mut b) = (DistinctSketch::default(), DistinctSketch::default());
        for i in 0..300 {
            a.insert(hash(i));
        }
        for i in 200..600 {
            b.insert(hash(i));
        }
        a.merge(&b);
        let e = a.estimate();
        assert!((e - 600.0).abs() < 180.0, "{e}");
    }
}
