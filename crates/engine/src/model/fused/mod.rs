//! Fused kernels for the decoder on a GPU: one launch where candle's ops take several (the residual
//! add with the next RMSNorm, RoPE with the KV-cache write, single-position attention over the
//! cache, a prompt's causal softmax, SwiGLU). Decode on a GPU is bound by launches and allocations, not by arithmetic: a 7B
//! step is ~30 candle ops per layer, so each op's fixed cost adds up to more than reading the
//! weights. The model asks [`Fused::for_device`] once at load and falls back to candle's ops when
//! there are none (every CPU, builds without CUDA, `QWEN_NATIVE_FUSED_KERNELS=0`).

#[cfg(feature = "cuda")]
mod cuda;
#[cfg(feature = "cuda")]
pub(super) use cuda::Fused;

#[cfg(not(feature = "cuda"))]
mod none {
    use candle_core::{DType, Device, Result, Tensor};

    /// No fused kernels in a build without CUDA: a type with no values, so every call site
    /// compiles and none can run.
    pub(in crate::model) enum Fused {}

    impl Fused {
        pub(in crate::model) fn for_device(_: &Device, _: DType) -> Result<Option<Self>> {
            Ok(None)
        }

        pub(in crate::model) fn add_rms_norm(
            &self,
            _: &Tensor,
            _: &Tensor,
            _: &Tensor,
            _: f32,
        ) -> Result<(Tensor, Tensor)> {
            match *self {}
        }

        pub(in crate::model) fn silu_mul(&self, _: &Tensor, _: &Tensor) -> Result<Tensor> {
            match *self {}
        }

        pub(in crate::model) fn rope_into_cache(&self, _: super::RopeInput<'_>) -> Result<Tensor> {
            match *self {}
        }

        pub(in crate::model) fn causal_softmax(
            &self,
            _: &Tensor,
            _: usize,
            _: usize,
            _: f32,
        ) -> Result<Tensor> {
            match *self {}
        }

        pub(in crate::model) fn decode_attention(
            &self,
            _: &Tensor,
            _: &Tensor,
            _: &Tensor,
            _: usize,
        ) -> Result<Option<Tensor>> {
            match *self {}
        }
    }
}
#[cfg(not(feature = "cuda"))]
pub(super) use none::Fused;

use candle_core::Tensor;

/// What [`Fused::rope_into_cache`] reads and writes for one sequence's new positions.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(super) struct RopeInput<'a> {
    /// The batch's query, key and value projections, (1, rows, heads * d) and (1, rows,
    /// kv_heads * d), biases not yet added.
    pub q: &'a Tensor,
    pub k: &'a Tensor,
    pub v: &'a Tensor,
    /// The three biases, when the model has them.
    pub biases: Option<(&'a Tensor, &'a Tensor, &'a Tensor)>,
    /// RoPE tables, (max_positions, d / 2).
    pub cos: &'a Tensor,
    pub sin: &'a Tensor,
    /// The layer's whole cache buffers, (1, kv_heads, capacity, d), written at `start..start + len`.
    pub k_cache: &'a Tensor,
    pub v_cache: &'a Tensor,
    /// This sequence's rows in the projections.
    pub offset: usize,
    pub len: usize,
    /// Positions already cached.
    pub start: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// Whether the fused kernels are switched off by `QWEN_NATIVE_FUSED_KERNELS=0` (to compare
/// against candle's ops, or to rule the kernels out when a result looks wrong).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn disabled_by_env() -> bool {
    std::env::var("QWEN_NATIVE_FUSED_KERNELS").is_ok_and(|v| v == "0")
}
