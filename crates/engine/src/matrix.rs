//! A weight matrix as the model uses it: multiplied by activations, or read as embedding rows.
//! Quantized weights on the CPU run our own kernels ([`crate::kernels`]); everything else (GPU
//! weights, dense checkpoints, CPUs without them) runs candle's.

use crate::kernels::q8_0::Q8Blocks;
use crate::kernels::{self, packed::Packed};
use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{DType, Device, Module, Result, Storage, Tensor};
use std::borrow::Cow;
use std::sync::Arc;

#[derive(Clone)]
pub enum Matrix {
    Candle(QMatMul),
    /// (out_features, in_features) packed for our kernels, on the CPU.
    Packed(Arc<Packed>),
}

impl Matrix {
    pub fn packed(weights: Packed) -> Self {
        Self::Packed(Arc::new(weights))
    }

    /// `x` (..., in_features) times the matrix transposed: (..., out_features).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let [y] = Self::forward_each(x, [self])?;
        Ok(y)
    }

    /// `x` times each of `matrices` (a layer's q/k/v or gate/up, which share their input).
    /// Where our kernels run them all, the input is copied out and quantized once for all.
    pub fn forward_each<const N: usize>(x: &Tensor, matrices: [&Self; N]) -> Result<[Tensor; N]> {
        let packed = matrices.map(|m| match m {
            Self::Packed(w) => Some(w),
            Self::Candle(_) => None,
        });
        let products: Vec<Tensor> = if packed.iter().all(Option::is_some) {
            let a = Input::quantize(x, packed.iter().flatten().map(|w| w.cols()))?;
            packed
                .iter()
                .flatten()
                .map(|w| a.times(w))
                .collect::<Result<_>>()?
        } else {
            matrices
                .iter()
                .map(|m| m.forward_alone(x))
                .collect::<Result<_>>()?
        };
        Ok(products
            .try_into()
            .unwrap_or_else(|_| unreachable!("one product per matrix")))
    }

    fn forward_alone(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Candle(m) => m.forward(x),
            Self::Packed(w) => Input::quantize(x, [w.cols()])?.times(w),
        }
    }

    /// The rows at `ids` (any shape): (ids..., in_features), f32 for packed weights.
    pub fn embedding(&self, ids: &Tensor) -> Result<Tensor> {
        match self {
            Self::Candle(m) => m.embedding(ids),
            Self::Packed(w) => rows_of(ids, w.rows(), w.cols(), |r, out| {
                w.dequantize_row(r, out);
                Ok(())
            }),
        }
    }
}

/// Activations as our kernels take them: 8-bit blocks of the rows of `x`.
struct Input {
    a: Q8Blocks,
    /// `x`'s dimensions but the last.
    dims: Vec<usize>,
    dtype: DType,
}

impl Input {
    /// `x` (..., k) for matrices of `columns` (each must be k).
    fn quantize(x: &Tensor, columns: impl IntoIterator<Item = usize>) -> Result<Self> {
        let mut dims = x.dims().to_vec();
        let k = dims.pop().unwrap_or(0);
        for cols in columns {
            if cols != k {
                candle_core::bail!(
                    "input {:?} does not match a matrix of {cols} columns",
                    x.dims()
                );
            }
        }
        let rows = x.elem_count() / k.max(1);
        Ok(Self {
            a: with_cpu_f32(x, |values| Q8Blocks::quantize(values, rows, k))?,
            dims,
            dtype: x.dtype(),
        })
    }

    /// (..., w.rows()) in the input's dtype.
    fn times(&self, w: &Packed) -> Result<Tensor> {
        let mut out = vec![0f32; self.a.rows() * w.rows()];
        w.matmul(kernels::level(), &self.a, &mut out);
        let mut dims = self.dims.clone();
        dims.push(w.rows());
        Tensor::from_vec(out, dims, &Device::Cpu)?.to_dtype(self.dtype)
    }
}

/// `f` of a tensor's values as f32, row-major: read in place from a contiguous f32 tensor on the
/// CPU (a prompt's activations are megabytes), copied out of any other.
pub fn with_cpu_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    if t.dtype() == DType::F32 && t.is_contiguous() {
        let (storage, layout) = t.storage_and_layout();
        if let Storage::Cpu(cpu) = &*storage {
            let values = &cpu.as_slice::<f32>()?[layout.start_offset()..][..t.elem_count()];
            return Ok(f(values));
        }
    }
    let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(f(&values))
}

/// The token embedding: a [`Matrix`] (when it is also the LM head, or not on the CPU), or rows
/// read from the mapped file as stored, so only the rows of tokens seen become resident.
#[derive(Clone)]
pub enum Embedding {
    Matrix(Matrix),
    Mapped(Arc<MappedRows>),
}

impl Embedding {
    /// The rows at `ids` (any shape): (ids..., hidden).
    pub fn lookup(&self, ids: &Tensor) -> Result<Tensor> {
        match self {
            Self::Matrix(m) => m.embedding(ids),
            Self::Mapped(rows) => rows_of(ids, rows.rows, rows.cols, |r, out| rows.row(r, out)),
        }
    }
}

/// A GGUF matrix left in the file's mapping, rows dequantized when looked up.
pub struct MappedRows {
    map: Arc<memmap2::Mmap>,
    /// Where the tensor's data starts in the mapping.
    start: usize,
    dtype: GgmlDType,
    rows: usize,
    cols: usize,
}

impl MappedRows {
    /// `None` unless rows are whole blocks of `dtype` and the tensor lies inside the mapping.
    pub fn new(
        map: Arc<memmap2::Mmap>,
        start: usize,
        dtype: GgmlDType,
        rows: usize,
        cols: usize,
    ) -> Option<Self> {
        let fits = cols.is_multiple_of(dtype.block_size())
            && start + rows * Self::row_bytes(dtype, cols) <= map.len();
        fits.then_some(Self {
            map,
            start,
            dtype,
            rows,
            cols,
        })
    }

    pub fn row_bytes(dtype: GgmlDType, cols: usize) -> usize {
        cols / dtype.block_size() * dtype.type_size()
    }

    fn row(&self, r: usize, out: &mut [f32]) -> Result<()> {
        let bytes = Self::row_bytes(self.dtype, self.cols);
        dequantize_gguf(
            self.dtype,
            &self.map[self.start + r * bytes..][..bytes],
            out,
        )
    }
}

/// GGUF data of `dtype` (whole blocks) as f32 values, by candle's dequantization.
pub fn dequantize_gguf(dtype: GgmlDType, data: &[u8], out: &mut [f32]) -> Result<()> {
    let storage = QStorage::from_data(Cow::Borrowed(data), &Device::Cpu, dtype)?;
    let values = QTensor::new(storage, out.len())?.dequantize(&Device::Cpu)?;
    out.copy_from_slice(&values.to_vec1::<f32>()?);
    Ok(())
}

/// f32 rows `ids` (any shape) of a `rows` × `cols` matrix read by `row(r, out)`: (ids..., cols).
fn rows_of(
    ids: &Tensor,
    rows: usize,
    cols: usize,
    row: impl Fn(usize, &mut [f32]) -> Result<()>,
) -> Result<Tensor> {
    let mut dims = ids.dims().to_vec();
    let ids = ids.flatten_all()?.to_vec1::<u32>()?;
    let mut out = vec![0f32; ids.len() * cols];
    for (values, &id) in out.chunks_exact_mut(cols).zip(&ids) {
        if id as usize >= rows {
            candle_core::bail!("token id {id} is outside the embedding's {rows} rows");
        }
        row(id as usize, values)?;
    }
    dims.push(cols);
    Tensor::from_vec(out, dims, &Device::Cpu)
}
