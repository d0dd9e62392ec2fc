//! Every engine error crosses into JS here. The message is prefixed with the stable code
//! (`ERR_...: message`); index.js moves the prefix into `error.code`, since napi's async
//! rejections only carry napi status codes.

use qwen_engine::EngineError;

pub fn to_napi(e: EngineError) -> napi::Error {
    napi::Error::from_reason(format!("{}: {e}", e.code()))
}

pub fn invalid(msg: impl std::fmt::Display) -> napi::Error {
    to_napi(EngineError::invalid(msg))
}

/// Runs `f`, turning a panic into `ERR_INTERNAL` so that no panic unwinds into Node.
pub fn guard<T>(f: impl FnOnce() -> napi::Result<T>) -> napi::Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        Err(to_napi(EngineError::Internal(format!(
            "panic in the binding: {}",
            qwen_engine::error::panic_text(p.as_ref())
        ))))
    })
}
