//! GGUF files: memory-mapped, tensors materialised one at a time with progress reports.

use super::{
    end_of_turn_ids, finish, qwen_defaults, release_mapped, LoadOptions, LoadedModel, Placement,
    ProgressFn, WeightName, WeightSource,
};
use crate::config::ModelConfig;
use crate::error::{candle_cause, EngineError, Result};
use crate::kernels::packed::{q8::PackedQ8, Packed};
use crate::kernels::{self, Level};
use crate::matrix::{dequantize_gguf, Embedding, MappedRows, Matrix};
use crate::template::ChatTemplate;
use crate::tokenizer::Tokenizer;
use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Tensor};
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

pub struct GgufSource<'p> {
    /// Shared with embeddings read in place ([`MappedRows`]).
    map: Arc<memmap2::Mmap>,
    content: gguf_file::Content,
    placement: Placement<'p>,
}

impl<'p> GgufSource<'p> {
    pub fn open(path: &Path, mut placement: Placement<'p>) -> Result<Self> {
        let file = std::fs::File::open(path)
            .map_err(|e| EngineError::load(format!("cannot open {}: {e}", path.display())))?;
        // SAFETY: the mapping is read-only and lives as long as the source; a file changed on disk
        // while loading is the caller's problem, as with any mmap-based loader.
        let map = unsafe { memmap2::Mmap::map(&file) }
            .map_err(|e| EngineError::load(format!("cannot map {}: {e}", path.display())))?;
        if map.len() < 4 || &map[..4] != b"GGUF" {
            return Err(EngineError::load(format!(
                "{} is not a GGUF file (no GGUF magic)",
                path.display()
            )));
        }
        // candle divides by the declared alignment (a zero panics there); llama.cpp requires a
        // power of two.
        if let Some(alignment) = declared_alignment(&map) {
            if !alignment.is_power_of_two() {
                return Err(EngineError::load(format!(
                    "{} is corrupt: general.alignment is {alignment}, not a power of two",
                    path.display()
                )));
            }
        }
        let content = gguf_file::Content::read(&mut Cursor::new(&map[..])).map_err(|e| {
            let e = candle_cause(&e);
            match e.strip_prefix("unknown dtype for tensor ") {
                Some(code) => EngineError::load(format!(
                    "{} uses GGML tensor type {code}, which qwen-native does not support (use F32, F16, BF16, Q4_0-Q8_0 or a K-quant)",
                    path.display()
                )),
                None => EngineError::load(format!("{} is corrupt: {e}", path.display())),
            }
        })?;
        let mut total = 0u64;
        for (name, info) in &content.tensor_infos {
            let bytes = tensor_bytes(info);
            let end = content.tensor_data_offset + info.offset + bytes;
            if end > map.len() as u64 {
                return Err(EngineError::load(format!(
                    "{} is truncated: tensor {name} ends at byte {end} but the file has {} bytes",
                    path.display(),
                    map.len()
                )));
            }
            total += bytes;
        }
        placement.total = total;
        // Quantized activations are f32 on every backend.
        placement.resolve_dtype(DType::F32);
        Ok(Self {
            map: Arc::new(map),
            content,
            placement,
        })
    }

    pub fn content(&self) -> &gguf_file::Content {
        &self.content
    }

    /// The weight storage types present, most frequent first, e.g. "Q5_0 x133, F32 x121".
    pub fn quantization_summary(&self) -> String {
        let mut counts: Vec<(String, usize)> = Vec::new();
        for info in self.content.tensor_infos.values() {
            let name = format!("{:?}", info.ggml_dtype);
            match counts.iter_mut().find(|(n, _)| *n == name) {
                Some((_, c)) => *c += 1,
                None => counts.push((name, 1)),
            }
        }
        counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        counts
            .iter()
            .map(|(n, c)| format!("{n} x{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn info(&self, name: WeightName) -> Result<&gguf_file::TensorInfo> {
        let key = name.gguf();
        self.content
            .tensor_infos
            .get(&key)
            .ok_or_else(|| EngineError::load(format!("GGUF file lacks tensor {key}")))
    }

    /// A weight as a dense f32 tensor on the CPU, whatever its storage type.
    pub fn dequantized(&mut self, name: WeightName) -> Result<Tensor> {
        Ok(self.read(name, &Device::Cpu)?.dequantize(&Device::Cpu)?)
    }

    fn read(&mut self, name: WeightName, device: &Device) -> Result<QTensor> {
        let key = name.gguf();
        let info = self.info(name)?;
        let start = (self.content.tensor_data_offset + info.offset) as usize;
        let bytes = tensor_bytes(info);
        let t = self
            .content
            .tensor(&mut Cursor::new(&self.map[..]), &key, device)
            .map_err(|e| {
                EngineError::load(format!("cannot read tensor {key}: {}", candle_cause(&e)))
            })?;
        release_mapped(&self.map[start..start + bytes as usize]);
        self.placement.advance(bytes);
        Ok(t)
    }
}

/// The `general.alignment` a GGUF (version 2 or later) declares in its metadata, when it has a
/// non-negative integer one (candle ignores negative ones); `None` if it has none or the header
/// cannot be walked this far.
fn declared_alignment(bytes: &[u8]) -> Option<u64> {
    let mut r = HeaderReader { bytes, at: 4 };
    if r.u32()? < 2 {
        return None; // version 1 counts in 32 bits; candle reads it as it is
    }
    r.take(8)?; // tensors
    for _ in 0..r.u64()? {
        let key_len = r.len()?;
        let key = r.take(key_len)?;
        let kind = r.u32()?;
        if key == b"general.alignment" {
            let v = r.take(scalar_size(kind)?)?;
            let value = match kind {
                0 => v[0] as i64,
                1 => v[0] as i8 as i64,
                2 => u16::from_le_bytes([v[0], v[1]]) as i64,
                3 => i16::from_le_bytes([v[0], v[1]]) as i64,
                4 => u32::from_le_bytes([v[0], v[1], v[2], v[3]]) as i64,
                5 => i32::from_le_bytes([v[0], v[1], v[2], v[3]]) as i64,
                _ => return None,
            };
            return u64::try_from(value).ok();
        }
        match kind {
            8 => r.skip_string()?,
            9 => {
                let item = r.u32()?;
                let count = usize::try_from(r.u64()?).ok()?;
                if item == 8 {
                    for _ in 0..count {
                        r.skip_string()?;
                    }
                } else {
                    r.take(scalar_size(item)?.checked_mul(count)?)?;
                }
            }
            _ => {
                r.take(scalar_size(kind)?)?;
            }
        }
    }
    None
}

/// Bytes of a GGUF metadata value of a fixed-size type.
fn scalar_size(kind: u32) -> Option<usize> {
    match kind {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

/// Little-endian reads through a GGUF header, `None` past its end.
struct HeaderReader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> HeaderReader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let taken = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(taken)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn len(&mut self) -> Option<usize> {
        usize::try_from(self.u64()?).ok()
    }

    fn skip_string(&mut self) -> Option<()> {
        let len = self.len()?;
        self.take(len).map(|_| ())
    }
}

fn tensor_bytes(info: &gguf_file::TensorInfo) -> u64 {
    let elems = info.shape.elem_count();
    (elems / info.ggml_dtype.block_size() * info.ggml_dtype.type_size()) as u64
}

/// Unquantized storage: dense weights, no quantized kernel involved.
fn is_float(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
}

/// Our own CPU kernels run every quantized type: Q8_0, Q5_0, Q4_0, Q4_K and Q6_K without loss,
/// the others dequantized and re-rounded to 8-bit blocks at load (at most a half-step of 8-bit
/// rounding per weight). Their results do not depend on how many rows they multiply, so an
/// answer is the same alone, in a batch, or after a cached prefix.
fn packed_on_cpu(dtype: GgmlDType) -> bool {
    !is_float(dtype)
}

/// Types candle's CPU kernels handle with scalar code only.
fn slow_on_cpu(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1)
}

impl GgufSource<'_> {
    /// Whether quantized weights go to our CPU kernels (a CPU they have a SIMD level for).
    fn ours_on_cpu(&self) -> bool {
        self.placement.device.is_cpu() && kernels::level() > Level::Scalar
    }

    /// A matrix packed for our CPU kernels.
    fn packed(&mut self, name: WeightName) -> Result<Packed> {
        let info = self.info(name)?;
        let dtype = info.ggml_dtype;
        let (rows, cols) = info
            .shape
            .dims2()
            .map_err(|_| EngineError::load(format!("tensor {} is not a matrix", name.gguf())))?;
        let start = (self.content.tensor_data_offset + info.offset) as usize;
        let bytes = tensor_bytes(info) as usize;
        let data = &self.map[start..start + bytes];
        let packed = match Packed::from_gguf(dtype, data, rows, cols) {
            Some(packed) => packed,
            // Other types re-rounded to 8 bits, a row at a time.
            None if cols.is_multiple_of(dtype.block_size()) => {
                let row_bytes = MappedRows::row_bytes(dtype, cols);
                Packed::Q8(PackedQ8::quantize_rows(rows, cols, |r, out| {
                    dequantize_gguf(dtype, &data[r * row_bytes..(r + 1) * row_bytes], out)
                })?)
            }
            None => {
                return Err(EngineError::load(format!(
                    "tensor {} has rows of {cols} values, not whole {dtype:?} blocks",
                    name.gguf()
                )))
            }
        };
        release_mapped(data);
        self.placement.advance(bytes as u64);
        Ok(packed)
    }
}

impl WeightSource for GgufSource<'_> {
    fn dtype(&self) -> DType {
        self.placement.dtype()
    }

    fn contains(&self, name: WeightName) -> bool {
        self.content.tensor_infos.contains_key(&name.gguf())
    }

    /// On the CPU an embedding stays in the file's mapping, as stored: only the rows of tokens
    /// seen become resident.
    fn embedding(&mut self, name: WeightName) -> Result<Embedding> {
        let info = self.info(name)?;
        let (dtype, start, bytes) = (
            info.ggml_dtype,
            (self.content.tensor_data_offset + info.offset) as usize,
            tensor_bytes(info),
        );
        if let (Ok((rows, cols)), true) = (info.shape.dims2(), self.placement.device.is_cpu()) {
            if let Some(rows) = MappedRows::new(self.map.clone(), start, dtype, rows, cols) {
                self.placement.advance(bytes);
                return Ok(Embedding::Mapped(Arc::new(rows)));
            }
        }
        Ok(Embedding::Matrix(self.matrix(name)?))
    }

    fn matrix(&mut self, name: WeightName) -> Result<Matrix> {
        let device = self.placement.device.clone();
        let dtype = self.placement.dtype();
        match self.info(name)?.ggml_dtype {
            d if is_float(d) => {
                let t = self.read(name, &Device::Cpu)?;
                let dense = t.dequantize(&device)?.to_dtype(dtype)?;
                Ok(Matrix::Candle(QMatMul::Tensor(dense)))
            }
            d if packed_on_cpu(d) && self.ours_on_cpu() => Ok(Matrix::packed(self.packed(name)?)),
            d if slow_on_cpu(d) && device.is_cpu() => {
                // No SIMD kernels of ours here (not x86-64): candle's Q8_0 has NEON code, its
                // 4-6 bit types only scalar code.
                let t = self.read(name, &device)?;
                let t = QTensor::quantize(&t.dequantize(&device)?, GgmlDType::Q8_0)?;
                Ok(Matrix::Candle(QMatMul::from_qtensor(t)?))
            }
            _ => Ok(Matrix::Candle(QMatMul::from_qtensor(
                self.read(name, &device)?,
            )?)),
        }
    }

    fn vector(&mut self, name: WeightName) -> Result<Tensor> {
        let t = self.read(name, &Device::Cpu)?;
        Ok(t.dequantize(&self.placement.device)?
            .to_dtype(self.placement.dtype())?)
    }
}

/// llama.cpp's `general.file_type` names for the common types.
fn file_type_name(code: u32) -> Option<&'static str> {
    Some(match code {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        32 => "BF16",
        _ => return None,
    })
}

pub(super) fn load(
    path: &Path,
    opts: &LoadOptions,
    progress: Option<&mut ProgressFn<'_>>,
) -> Result<LoadedModel> {
    let mut src = GgufSource::open(path, Placement::for_load(opts, progress))?;
    let quantized = src
        .content()
        .tensor_infos
        .values()
        .any(|i| !is_float(i.ggml_dtype));
    if quantized && !opts.device.is_cpu() {
        crate::device::check_quantized_kernels(&opts.device)?;
    }
    let md = &src.content().metadata;
    let cfg = ModelConfig::from_gguf(src.content())?;
    let tokenizer = Tokenizer::from_gguf(src.content())?;
    let text = |key: &str| md.get(key).and_then(|v| v.to_string().ok()).cloned();
    let id = |key: &str| md.get(key).and_then(|v| v.to_u32().ok());
    let template_src = text("tokenizer.chat_template").ok_or_else(|| {
        EngineError::load(format!(
            "{} has no chat template (tokenizer.chat_template); use an Instruct model",
            path.display()
        ))
    })?;
    let token_text = |id: Option<u32>| id.map(|i| tokenizer.decode(&[i])).unwrap_or_default();
    let template = ChatTemplate::new(
        &template_src,
        &token_text(id("tokenizer.ggml.bos_token_id")),
        &token_text(id("tokenizer.ggml.eos_token_id")),
    )?;
    let eos = end_of_turn_ids(
        id("tokenizer.ggml.eos_token_id").into_iter().collect(),
        &tokenizer,
    );
    let name = text("general.name").unwrap_or_else(|| {
        path.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    let file_type = id("general.file_type").and_then(file_type_name);
    let quantization = match file_type {
        Some(t) => format!("{t} ({})", src.quantization_summary()),
        None => src.quantization_summary(),
    };
    finish(
        &cfg,
        &mut src,
        tokenizer,
        template,
        eos,
        qwen_defaults(),
        opts,
        (name, "gguf", quantization),
    )
}
