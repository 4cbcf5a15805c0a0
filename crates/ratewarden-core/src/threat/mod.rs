//! Threat scoring: what a client's behaviour says about it.
//!
//! - [`signals`]: per-request observations folded into window buckets, and the signals
//!   (rates, ratios, distinct endpoints, timing regularity...) read from them;
//! - [`sketch`]: the bounded distinct counter behind "endpoints touched";
//! - [`score`]: signals weighed into a score, a [`Level`] and its reasons;
//! - [`response`]: what each level does to limits, and how long blocks last.
//!
//! Pure functions and plain data: where the buckets live (memory, Redis) is the store's
//! business, and what a level means for a request is the gateway's.

pub mod response;
pub mod score;
pub mod signals;
pub mod sketch;

pub use response::{Escalation, LevelResponse, LevelResponses};
pub use score::{Assessment, Level, Scoring, Weighted};
pub use signals::{Batch, Bucket, ClientWindow, Observation, RequestOutcome, Signals};
pub use sketch::DistinctSketch;

#[cfg(test)]
mod tests;
