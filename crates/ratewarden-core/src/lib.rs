//! Pure rate-limiting logic for ratewarden.
//!
//! This crate owns what a limit *is* and how a decision is made:
//!
//! - [`rate`]: parsing rates such as `10/s`, `5/m`, `100/hour`, `10r/s`;
//! - [`algorithm`]: GCRA, sliding window and fixed window, each a pure function of
//!   (state, now, cost) returning a [`Decision`] and the next state;
//! - [`time`] and [`clock`]: timestamps in nanoseconds since the Unix epoch, and the
//!   [`Clock`](clock::Clock) trait through which everything else reads time;
//! - [`identity`]: the client's address from the peer and trusted forwarding headers;
//! - [`network_set`]: large sets of IP networks with logarithmic lookups (reputation);
//! - [`path`]: the canonical form of request paths that rules match on;
//! - [`policy`] and [`rule_name`]: compiled rules, route matching and counter keys;
//! - [`threat`]: behaviour signals, threat scores and levels, and what levels do;
//! - [`login`]: where a login names its account, canonical accounts, progressive delay.
//!
//! It does no I/O and keeps no state of its own: where state lives (memory, Redis) is
//! the business of `ratewarden-store`, and how a decision becomes HTTP headers is the
//! business of the gateway.

pub mod algorithm;
pub mod clock;
pub mod decision;
pub mod identity;
pub mod login;
pub mod network_set;
pub mod path;
pub mod policy;
pub mod rate;
pub mod rule_name;
pub mod threat;
pub mod time;

pub use algorithm::{FixedWindow, Gcra, Limit, LimitError, SlidingWindow};
pub use decision::{Decision, Outcome};
pub use rate::{Rate, RateError};
pub use rule_name::RuleName;
pub use time::{Nanos, Timestamp};
