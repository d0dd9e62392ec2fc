//! The engine's error type: one variant per failure a caller can act on, each with a stable code.

use std::fmt::Display;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The request is malformed; the message names the field and what to change.
    #[error("{0}")]
    InvalidRequest(String),
    /// No file or directory at the model path.
    #[error("{0}")]
    ModelNotFound(String),
    /// The model exists but cannot be loaded (wrong architecture, corrupt, unsupported type).
    #[error("{0}")]
    ModelLoad(String),
    /// Prompt plus requested tokens do not fit the context window.
    #[error("{0}")]
    ContextLength(String),
    /// The caller cancelled the request.
    #[error("the request was aborted")]
    Aborted,
    /// The model was closed before or while the request ran.
    #[error("the model is closed; load it again with loadModel()")]
    Closed,
    /// The request queue is full.
    #[error("{0}")]
    Overloaded(String),
    /// The request ran past its deadline (`timeoutMs`, or the model's `requestTimeoutMs`).
    #[error("{0}")]
    Timeout(String),
    /// A bug or an unexpected failure of the compute backend.
    #[error("internal error: {0}")]
    Internal(String),
}

/// `Err(ERR_INVALID_REQUEST)` with a message naming the field and what to change.
pub(crate) fn invalid<T>(msg: impl Display) -> Result<T> {
    Err(EngineError::invalid(msg))
}

impl EngineError {
    /// The stable code JS callers switch on.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) => "ERR_INVALID_REQUEST",
            Self::ModelNotFound(_) => "ERR_MODEL_NOT_FOUND",
            Self::ModelLoad(_) => "ERR_MODEL_LOAD",
            Self::ContextLength(_) => "ERR_CONTEXT_LENGTH",
            Self::Aborted => "ERR_ABORTED",
            Self::Closed => "ERR_CLOSED",
            Self::Overloaded(_) => "ERR_OVERLOADED",
            Self::Timeout(_) => "ERR_TIMEOUT",
            Self::Internal(_) => "ERR_INTERNAL",
        }
    }

    pub fn invalid(msg: impl Display) -> Self {
        Self::InvalidRequest(msg.to_string())
    }

    pub fn load(msg: impl Display) -> Self {
        Self::ModelLoad(msg.to_string())
    }
}

/// The message a caught panic carried ("unknown panic" when it was not text).
pub fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

impl From<candle_core::Error> for EngineError {
    fn from(e: candle_core::Error) -> Self {
        Self::Internal(candle_cause(&e))
    }
}

/// A candle error's message without the backtrace candle attaches when `RUST_BACKTRACE` is set:
/// errors carry their cause, not a stack.
pub(crate) fn candle_cause(e: &candle_core::Error) -> String {
    use candle_core::Error;
    match e {
        Error::WithBacktrace { inner, .. } => candle_cause(inner),
        Error::Context { inner, context } => format!("{context}: {}", candle_cause(inner)),
        Error::WithPath { inner, path } => format!("{}: {}", path.display(), candle_cause(inner)),
        e => e.to_string(),
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candle_errors_carry_their_cause_without_a_backtrace() {
        let traced = candle_core::Error::WithBacktrace {
            inner: Box::new(candle_core::Error::Msg("the cause".into())),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        };
        assert!(
            traced.to_string().lines().count() > 1,
            "candle prints the stack"
        );
        assert_eq!(
            EngineError::from(traced).to_string(),
            "internal error: the cause"
        );
    }
}
