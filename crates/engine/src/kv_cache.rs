//! Per-sequence key/value cache: preallocated buffers written in place, never grown by concatenation.

use crate::config::ModelConfig;
use candle_core::{DType, Device, Result, Tensor};

/// Capacity grows in steps of this many positions, so a sequence without a known length
/// reallocates rarely; a sequence that reserves its length up front never reallocates.
const GROWTH_STEP: usize = 256;

/// The attention keys and values of one sequence, for every layer. Owned by the request (not the
/// model), so sequences are independent and a prefix can be kept or truncated between turns.
pub struct KvCache {
    /// One buffer per layer, (1, kv_heads, capacity, head_dim); empty until the first `reserve`.
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    len: usize,
    capacity: usize,
    num_layers: usize,
    num_kv_heads: usize,
    head_dim: usize,
    dtype: DType,
    device: Device,
}

impl KvCache {
    pub fn new(cfg: &ModelConfig, dtype: DType, device: &Device) -> Self {
        Self {
            keys: Vec::new(),
            values: Vec::new(),
            len: 0,
            capacity: 0,
            num_layers: cfg.num_layers,
            num_kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
            dtype,
            device: device.clone(),
        }
    }

    /// Number of positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets positions from `len` on (a shared prefix stays valid).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Ensures room for `total` positions, copying the cached prefix into larger buffers if needed.
    pub fn reserve(&mut self, total: usize) -> Result<()> {
        if total <= self.capacity {
            return Ok(());
        }
        let capacity = total.div_ceil(GROWTH_STEP) * GROWTH_STEP;
        let shape = (1, self.num_kv_heads, capacity, self.head_dim);
        let grow = |old: Option<&Tensor>| -> Result<Tensor> {
            let grown = Tensor::zeros(shape, self.dtype, &self.device)?;
            if let Some(old) = old.filter(|_| self.len > 0) {
                grown.slice_set(&old.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
            }
            Ok(grown)
        };
        let keys = (0..self.num_layers)
            .map(|i| grow(self.keys.get(i)))
            .collect::<Result<Vec<_>>>()?;
        let values = (0..self.num_layers)
            .map(|i| grow(self.values.get(i)))
            .collect::<Result<Vec<_>>>()?;
        self.keys = keys;
        self.values = values;
        self.capacity = capacity;
        Ok(())
    }

    /// Makes this cache hold `from`'s first `n` positions (a copy: the two stay independent).
    pub fn copy_prefix(&mut self, from: &KvCache, n: usize) -> Result<()> {
        self.len = 0;
        self.reserve(n)?;
        for (dst, src) in [(&self.keys, &from.keys), (&self.values, &from.values)] {
            for (d, s) in dst.iter().zip(src) {
                d.slice_set(&s.narrow(2, 0, n)?.contiguous()?, 2, 0)?;
            }
        }
        self.len = n;
        Ok(())
    }

    /// Writes `k`, `v` of shape (1, kv_heads, n, head_dim) for `layer` after the cached positions and
    /// returns views of all positions so far. Positions become part of `len` only on `commit`.
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let n = k.dim(2)?;
        if self.len + n > self.capacity {
            candle_core::bail!("kv cache full: reserve before the forward pass");
        }
        self.keys[layer].slice_set(k, 2, self.len)?;
        self.values[layer].slice_set(v, 2, self.len)?;
        self.positions(layer, self.len + n)
    }

    /// `layer`'s whole key and value buffers, (1, kv_heads, capacity, head_dim), for kernels that
    /// write new positions in place (after `reserve`; positions count once `commit`ted).
    pub(crate) fn buffers(&self, layer: usize) -> (&Tensor, &Tensor) {
        (&self.keys[layer], &self.values[layer])
    }

    /// Views of `layer`'s first `total` positions.
    pub(crate) fn positions(&self, layer: usize, total: usize) -> Result<(Tensor, Tensor)> {
        Ok((
            self.keys[layer].narrow(2, 0, total)?,
            self.values[layer].narrow(2, 0, total)?,
        ))
    }

    /// Marks `n` appended positions as cached (after every layer wrote them).
    pub fn commit(&mut self, n: usize) {
        self.len += n;
    }
}
