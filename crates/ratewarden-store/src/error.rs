//! Store failures. A denial is not a failure: it is a [`Decision`](ratewarden_core::Decision).

/// Why a store could not decide.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend did not answer in time.
    #[error("store timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The backend could not be reached or dropped the connection.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The backend failed repeatedly and is not being asked until the pause is over.
    #[error("store failing: not asked again for {0:?}")]
    CircuitOpen(std::time::Duration),
    /// The backend answered something this version does not understand.
    #[error("store protocol error: {0}")]
    Protocol(String),
}

impl StoreError {
    /// Whether trying again later may succeed; the gateway's failure policy (fail open,
    /// fail closed, local fallback) applies to transient errors.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Timeout(_) | StoreError::Unavailable(_) | StoreError::CircuitOpen(_) => {
                true
            }
            StoreError::Protocol(_) => false,
        }
    }
}

impl StoreError {
    /// A short, stable name for metrics labels and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Timeout(_) => "timeout",
            StoreError::Unavailable(_) => "unavailable",
            StoreError::CircuitOpen(_) => "circuit_open",
            StoreError::Protocol(_) => "protocol",
        }
    }
}
