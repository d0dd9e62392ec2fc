//! Launches of `cuda/fused.cu` on candle's CUDA tensors. build.rs makes the kernels a fat binary:
//! machine code for sm_80/86/89/90 (and the build's own architecture), which loads without the
//! driver compiling it, and PTX for the other GPUs from sm_75 on.
//!
//! Kernels run on the device's stream, the one candle's ops use, so they are ordered with them;
//! tensors are passed as device addresses, and every tensor read or written stays alive (held by
//! the caller) until its launch is queued, after which the stream orders any free behind it.

use super::{disabled_by_env, RopeInput};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaStream, DevicePtr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::cudarc::nvrtc::Ptx;
use candle_core::cuda_backend::{CudaDevice, CudaStorage, CudaStorageSlice, WrapErr};
use candle_core::op::BackpropOp;
use candle_core::{bail, DType, Device, Result, Shape, Storage, Tensor};
use half::{bf16, f16};

static FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/fused.fatbin"));

/// Positions per block of the decode attention (ATTN_CHUNK in fused.cu).
const ATTN_CHUNK: usize = 64;
/// Threads per block of the decode attention (ATTN_WARPS warps).
const ATTN_THREADS: u32 = 128;
/// Query heads per KV head the decode attention holds in registers (ATTN_MAX_GROUP).
const ATTN_MAX_GROUP: usize = 8;

/// One dtype's kernels.
struct Functions {
    add_rms_norm: CudaFunction,
    rope_qkv: CudaFunction,
    /// For head_dim ≤ 32, ≤ 64, ≤ 128.
    attn_partial: [CudaFunction; 3],
    attn_combine: CudaFunction,
    causal_softmax: CudaFunction,
    silu_mul: CudaFunction,
}

impl Functions {
    fn load(
        module: &std::sync::Arc<candle_core::cuda_backend::cudarc::driver::CudaModule>,
        suffix: &str,
    ) -> Result<Self> {
        let f = |name: &str| module.load_function(&format!("{name}_{suffix}")).w();
        Ok(Self {
            add_rms_norm: f("add_rms_norm")?,
            rope_qkv: f("rope_qkv")?,
            attn_partial: [
                f("attn_partial_32")?,
                f("attn_partial_64")?,
                f("attn_partial_128")?,
            ],
            attn_combine: f("attn_combine")?,
            causal_softmax: f("causal_softmax")?,
            silu_mul: f("silu_mul")?,
        })
    }
}

/// The fused kernels, loaded on one CUDA device for the model's activation dtype.
pub(in crate::model) struct Fused {
    device: CudaDevice,
    dtype: DType,
    functions: Functions,
}

impl Fused {
    /// The kernels for `device` and `dtype`, or `None` where they do not apply (not a CUDA
    /// device, a dtype they are not built for, or switched off by the environment).
    pub(in crate::model) fn for_device(device: &Device, dtype: DType) -> Result<Option<Self>> {
        let Device::Cuda(cuda) = device else {
            return Ok(None);
        };
        let suffix = match dtype {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            _ => return Ok(None),
        };
        if disabled_by_env() {
            return Ok(None);
        }
        let module = cuda
            .cuda_stream()
            .context()
            .load_module(Ptx::from_binary(FATBIN.to_vec()))
            .w()?;
        Ok(Some(Self {
            device: cuda.clone(),
            dtype,
            functions: Functions::load(&module, suffix)?,
        }))
    }

    /// (x + h, rmsnorm(x + h) · weight) for x, h (..., n).
    pub(in crate::model) fn add_rms_norm(
        &self,
        x: &Tensor,
        h: &Tensor,
        weight: &Tensor,
        eps: f32,
    ) -> Result<(Tensor, Tensor)> {
        let n = x.dim(candle_core::D::Minus1)?;
        if h.shape() != x.shape() || weight.dims() != [n] {
            bail!(
                "add_rms_norm: x {:?}, h {:?}, weight {:?}",
                x.dims(),
                h.dims(),
                weight.dims()
            );
        }
        let rows = x.elem_count() / n;
        let out = self.empty((2, rows, n))?;
        let stream = self.stream();
        let (px, ph, pw, po) = (
            self.address(x)?,
            self.address(h)?,
            self.address(weight)?,
            self.address(&out)?,
        );
        let (rows_arg, n_arg) = (rows as i32, n as i32);
        let mut launch = stream.launch_builder(&self.functions.add_rms_norm);
        launch
            .arg(&px)
            .arg(&ph)
            .arg(&pw)
            .arg(&po)
            .arg(&rows_arg)
            .arg(&n_arg)
            .arg(&eps);
        let threads = (n.div_ceil(32) * 32).min(1024) as u32;
        // SAFETY: the addresses are of live tensors of the sizes the kernel reads and writes.
        unsafe { launch.launch(grid((rows as u32, 1), threads)) }.w()?;
        Ok((
            out.get(0)?.reshape(x.shape())?,
            out.get(1)?.reshape(x.shape())?,
        ))
    }

    /// silu(gate) · up, elementwise.
    pub(in crate::model) fn silu_mul(&self, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        if gate.shape() != up.shape() {
            bail!("silu_mul: gate {:?}, up {:?}", gate.dims(), up.dims());
        }
        let out = self.empty(gate.shape().clone())?;
        let stream = self.stream();
        let (pg, pu, po) = (self.address(gate)?, self.address(up)?, self.address(&out)?);
        let n = gate.elem_count();
        let n_arg = n as u64;
        let mut launch = stream.launch_builder(&self.functions.silu_mul);
        launch.arg(&pg).arg(&pu).arg(&po).arg(&n_arg);
        let blocks = n.div_ceil(256).min(65_535) as u32;
        // SAFETY: as in add_rms_norm.
        unsafe { launch.launch(grid((blocks, 1), 256)) }.w()?;
        Ok(out)
    }

    /// Adds the biases, rotates queries and keys for their positions, writes keys and values into
    /// the cache at `start..start + len` and returns the queries, (1, heads, len, d).
    pub(in crate::model) fn rope_into_cache(&self, r: RopeInput<'_>) -> Result<Tensor> {
        let (h, kv, d, n) = (r.heads, r.kv_heads, r.head_dim, r.len);
        let capacity = r.k_cache.dim(2)?;
        if d % 2 != 0 || d > 2048 || r.start + n > capacity || r.cos.dim(0)? < r.start + n {
            bail!(
                "rope_into_cache: head_dim {d}, positions {}..{} in a cache of {capacity}",
                r.start,
                r.start + n
            );
        }
        let q_out = self.empty((1, h, n, d))?;
        let stream = self.stream();
        let rows = |t: &Tensor, width: usize| -> Result<u64> {
            Ok(self.address(t)? + (r.offset * width * self.dtype.size_in_bytes()) as u64)
        };
        let (pq, pk, pv) = (rows(r.q, h * d)?, rows(r.k, kv * d)?, rows(r.v, kv * d)?);
        let (pbq, pbk, pbv, has_bias) = match r.biases {
            Some((bq, bk, bv)) => (
                self.address(bq)?,
                self.address(bk)?,
                self.address(bv)?,
                1i32,
            ),
            None => (pq, pk, pv, 0),
        };
        let (pcos, psin, pout, pkc, pvc) = (
            self.address(r.cos)?,
            self.address(r.sin)?,
            self.address(&q_out)?,
            self.address(r.k_cache)?,
            self.address(r.v_cache)?,
        );
        let ints = [h, kv, d, n, r.start, capacity].map(|v| v as i32);
        let mut launch = stream.launch_builder(&self.functions.rope_qkv);
        launch
            .arg(&pq)
            .arg(&pk)
            .arg(&pv)
            .arg(&pbq)
            .arg(&pbk)
            .arg(&pbv)
            .arg(&has_bias)
            .arg(&pcos)
            .arg(&psin)
            .arg(&pout)
            .arg(&pkc)
            .arg(&pvc);
        for v in &ints {
            launch.arg(v);
        }
        let threads = (d / 2).div_ceil(32) as u32 * 32;
        // SAFETY: the projections hold rows offset..offset + n, the tables rows up to start + n,
        // the caches positions up to start + n (checked above).
        unsafe { launch.launch(grid(((h + 2 * kv) as u32, n as u32), threads)) }.w()?;
        Ok(q_out)
    }

    /// Attention of one new position, q (1, heads, 1, d), over the first `total` positions of a
    /// layer's cache buffers (1, kv_heads, capacity, d): (1, 1, heads · d). `None` for shapes the
    /// kernel does not cover (head_dim > 128, more than 8 query heads per KV head).
    pub(in crate::model) fn decode_attention(
        &self,
        q: &Tensor,
        k_cache: &Tensor,
        v_cache: &Tensor,
        total: usize,
    ) -> Result<Option<Tensor>> {
        let (_, heads, n, d) = q.dims4()?;
        let (_, kv_heads, capacity, _) = k_cache.dims4()?;
        let group = heads / kv_heads.max(1);
        let lanes = match d {
            1..=32 => 0,
            33..=64 => 1,
            65..=128 => 2,
            _ => return Ok(None),
        };
        if n != 1 || group > ATTN_MAX_GROUP || group * kv_heads != heads {
            return Ok(None);
        }
        if total == 0 || total > capacity {
            bail!("decode_attention over {total} positions of a cache of {capacity}");
        }
        let chunks = total.div_ceil(ATTN_CHUNK);
        let partial = {
            // SAFETY: every element is written by attn_partial before attn_combine reads it.
            let slice = unsafe { self.device.alloc::<f32>(heads * chunks * (d + 2)) }?;
            wrap(
                CudaStorageSlice::F32(slice),
                &self.device,
                heads * chunks * (d + 2),
            )
        };
        let out = self.empty((1, 1, heads * d))?;
        let stream = self.stream();
        let (pq, pk, pv, pp, po) = (
            self.address(q)?,
            self.address(k_cache)?,
            self.address(v_cache)?,
            address(&partial, DType::F32, &stream)?,
            self.address(&out)?,
        );
        let scale = 1.0 / (d as f32).sqrt();
        let ints = [group, d, total, capacity, chunks].map(|v| v as i32);
        let mut launch = stream.launch_builder(&self.functions.attn_partial[lanes]);
        launch.arg(&pq).arg(&pk).arg(&pv).arg(&pp).arg(&scale);
        for v in &ints {
            launch.arg(v);
        }
        // SAFETY: the caches hold `total` ≤ capacity positions; partial is (heads, chunks, d + 2).
        unsafe { launch.launch(grid((kv_heads as u32, chunks as u32), ATTN_THREADS)) }.w()?;
        let (chunks_arg, d_arg) = (chunks as i32, d as i32);
        let mut launch = stream.launch_builder(&self.functions.attn_combine);
        launch.arg(&pp).arg(&po).arg(&chunks_arg).arg(&d_arg);
        let threads = d.div_ceil(32) as u32 * 32;
        // SAFETY: partial as written above; out is (heads · d).
        unsafe { launch.launch(grid((heads as u32, 1), threads)) }.w()?;
        Ok(Some(out))
    }

    /// softmax(scale · scores) over each row's visible keys, for scores (..., rows, total) of a
    /// prompt's `n` new positions after `start` cached ones: row r is query r % n, which sees keys
    /// 0 ..= start + r % n; the others get 0.
    pub(in crate::model) fn causal_softmax(
        &self,
        scores: &Tensor,
        n: usize,
        start: usize,
        scale: f32,
    ) -> Result<Tensor> {
        let total = scores.dim(candle_core::D::Minus1)?;
        let rows = scores.elem_count() / total.max(1);
        // Rows are (..., group · n) query rows, so a multiple of n.
        if n == 0 || start + n != total {
            bail!(
                "causal_softmax: {n} queries after {start} positions, scores {:?}",
                scores.dims()
            );
        }
        let out = self.empty(scores.shape().clone())?;
        let stream = self.stream();
        let (ps, po) = (self.address(scores)?, self.address(&out)?);
        let ints = [n, start, total].map(|v| v as i32);
        let mut launch = stream.launch_builder(&self.functions.causal_softmax);
        launch.arg(&ps).arg(&po);
        for v in &ints {
            launch.arg(v);
        }
        launch.arg(&scale);
        // SAFETY: scores and out are (rows, total), contiguous.
        unsafe { launch.launch(grid((rows as u32, 1), 256)) }.w()?;
        Ok(out)
    }

    fn stream(&self) -> std::sync::Arc<CudaStream> {
        self.device.cuda_stream()
    }

    fn address(&self, t: &Tensor) -> Result<u64> {
        address(t, self.dtype, &self.stream())
    }

    /// An uninitialized tensor of the activation dtype, for a kernel to fill.
    fn empty<S: Into<Shape>>(&self, shape: S) -> Result<Tensor> {
        let shape = shape.into();
        let n = shape.elem_count();
        // SAFETY (all three): the kernel the tensor is made for writes every element.
        let slice = match self.dtype {
            DType::F32 => CudaStorageSlice::F32(unsafe { self.device.alloc::<f32>(n) }?),
            DType::BF16 => CudaStorageSlice::BF16(unsafe { self.device.alloc::<bf16>(n) }?),
            DType::F16 => CudaStorageSlice::F16(unsafe { self.device.alloc::<f16>(n) }?),
            dtype => bail!("no fused kernels for {dtype:?}"),
        };
        Ok(wrap(slice, &self.device, shape))
    }
}

fn wrap<S: Into<Shape>>(slice: CudaStorageSlice, device: &CudaDevice, shape: S) -> Tensor {
    let storage = CudaStorage {
        slice,
        device: device.clone(),
    };
    Tensor::from_storage(Storage::Cuda(storage), shape, BackpropOp::none(), false)
}

/// The device address of a tensor's first element. The kernels read rows as contiguous memory of
/// the dtype they were picked for, so the tensor must be contiguous from there on, of that dtype.
fn address(t: &Tensor, dtype: DType, stream: &CudaStream) -> Result<u64> {
    if t.dtype() != dtype {
        bail!(
            "a fused {dtype:?} kernel was given a {:?} tensor",
            t.dtype()
        );
    }
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cuda(cuda) = &*storage else {
        bail!("a fused kernel was given a tensor off the GPU");
    };
    if !layout.is_contiguous() {
        bail!(
            "a fused kernel needs contiguous tensors, got {:?} with strides {:?}",
            layout.dims(),
            layout.stride()
        );
    }
    let base = match &cuda.slice {
        CudaStorageSlice::F32(s) => s.device_ptr(stream).0,
        CudaStorageSlice::BF16(s) => s.device_ptr(stream).0,
        CudaStorageSlice::F16(s) => s.device_ptr(stream).0,
        _ => bail!("no fused kernels for {:?}", cuda.dtype()),
    };
    Ok(base + (layout.start_offset() * t.dtype().size_in_bytes()) as u64)
}

fn grid((x, y): (u32, u32), threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (x, y, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}
