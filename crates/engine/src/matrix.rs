//! A weight matrix as the model uses it: multiplied by activations, or read as embedding rows.
//! 8-bit blocks on the CPU run our own kernels ([`crate::kernels`]); everything else (GPU
//! weights, dense checkpoints, the k-quants) runs candle's.

use crate::kernels::{self, packed::PackedQ8, q8_0::Q8Blocks};
use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, Module, Result, Tensor};
use std::sync::Arc;

#[derive(Clone)]
pub enum Matrix {
    Candle(QMatMul),
    /// (out_features, in_features) in 8-bit blocks, on the CPU.
    Q8(Arc<PackedQ8>),
}

impl Matrix {
    pub fn q8(blocks: PackedQ8) -> Self {
        Self::Q8(Arc::new(blocks))
    }

    /// `x` (..., in_features) times the matrix transposed: (..., out_features).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Candle(m) => m.forward(x),
            Self::Q8(w) => {
                let mut dims = x.dims().to_vec();
                let k = dims.pop().unwrap_or(0);
                if k != w.cols() {
                    candle_core::bail!(
                        "input {:?} does not match a matrix of {} columns",
                        x.dims(),
                        w.cols()
                    );
                }
                let rows = x.elem_count() / k.max(1);
                let values = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                let a = Q8Blocks::quantize(&values, rows, k);
                let mut out = vec![0f32; rows * w.rows()];
                kernels::matmul::matmul(kernels::level(), &a, w, &mut out);
                dims.push(w.rows());
                Tensor::from_vec(out, dims, &Device::Cpu)?.to_dtype(x.dtype())
            }
        }
    }

    /// The rows at `ids` (any shape): (ids..., in_features), f32 for 8-bit blocks.
    pub fn embedding(&self, ids: &Tensor) -> Result<Tensor> {
        match self {
            Self::Candle(m) => m.embedding(ids),
            Self::Q8(w) => {
                let mut dims = ids.dims().to_vec();
                let ids = ids.flatten_all()?.to_vec1::<u32>()?;
                let k = w.cols();
                let mut out = vec![0f32; ids.len() * k];
                for (row, &id) in out.chunks_exact_mut(k).zip(&ids) {
                    if id as usize >= w.rows() {
                        candle_core::bail!(
                            "token id {id} is outside the embedding's {} rows",
                            w.rows()
                        );
                    }
                    w.dequantize_row(id as usize, row);
                }
                dims.push(k);
                Tensor::from_vec(out, dims, &Device::Cpu)
            }
        }
    }
}
