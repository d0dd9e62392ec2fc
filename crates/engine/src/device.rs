//! Choosing the compute device. CPU is always there; CUDA is there when this build has the `cuda`
//! feature *and* the machine has a driver, the CUDA libraries and a GPU. A CUDA build loads its
//! CUDA libraries at run time (never linked; see scripts/build-cuda.mjs), so the same binary starts
//! on any machine: `auto` falls back to the CPU and says why, `cuda` fails naming what is missing.

use crate::error::{EngineError, Result};
use candle_core::Device;
use serde::Serialize;

/// The device a caller asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceRequest {
    /// CUDA device 0 when usable, else the CPU.
    Auto,
    Cpu,
    Cuda(usize),
}

impl DeviceRequest {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => match s.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
                Some(n) => Ok(Self::Cuda(n)),
                None => Err(EngineError::invalid(format!(
                    "device must be \"auto\", \"cpu\", \"cuda\" or \"cuda:N\", got \"{s}\""
                ))),
            },
        }
    }
}

/// The device picked, and why the CPU was picked when `auto` could not use a GPU.
pub struct Selected {
    pub device: Device,
    pub cpu_fallback_reason: Option<String>,
}

/// Resolves a request to a device; `Cuda(n)` that cannot be had is `ERR_MODEL_LOAD` with the reason.
pub fn select(request: DeviceRequest) -> Result<Selected> {
    match request {
        DeviceRequest::Cpu => Ok(Selected {
            device: Device::Cpu,
            cpu_fallback_reason: None,
        }),
        DeviceRequest::Cuda(n) => cuda::open(n)
            .map(|device| Selected {
                device,
                cpu_fallback_reason: None,
            })
            .map_err(|why| {
                EngineError::load(format!("device \"cuda:{n}\" is not available: {why}"))
            }),
        DeviceRequest::Auto => Ok(match cuda::open(0) {
            Ok(device) => Selected {
                device,
                cpu_fallback_reason: None,
            },
            Err(why) => Selected {
                device: Device::Cpu,
                cpu_fallback_reason: Some(why),
            },
        }),
    }
}

/// "cpu" or "cuda:N".
pub fn name(d: &Device) -> String {
    match d.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// What `info.gpu` reports for a model on a GPU.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GpuInfo {
    pub name: String,
    /// "8.0", "9.0", ...
    pub compute_capability: String,
    pub total_memory_bytes: u64,
    /// Device-wide (every process), at the time `info` is read.
    pub used_memory_bytes: u64,
}

/// The GPU behind `d`, or `None` on the CPU.
pub fn gpu_info(d: &Device) -> Option<GpuInfo> {
    cuda::info(d)
}

/// Whether this build's quantized-matmul kernels (compiled for one GPU generation, unlike the
/// PTX kernels, which the driver compiles for any later GPU) run on `d`.
pub fn check_quantized_kernels(d: &Device) -> Result<()> {
    cuda::check_quantized_kernels(d).map_err(EngineError::load)
}

#[cfg(not(feature = "cuda"))]
mod cuda {
    use candle_core::Device;

    pub fn open(_ordinal: usize) -> Result<Device, String> {
        Err(
            "this build of qwen-native has no CUDA support; build it with `npm run build:cuda` \
             or install the qwen-native-linux-x64-gnu-cuda package"
                .into(),
        )
    }

    pub fn check_quantized_kernels(_d: &Device) -> Result<(), String> {
        Ok(())
    }

    pub fn info(_d: &Device) -> Option<super::GpuInfo> {
        None
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::GpuInfo;
    use candle_core::cuda_backend::cudarc;
    use candle_core::Device;
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::path::PathBuf;
    use std::sync::OnceLock;

    /// The shared libraries candle's CUDA backend calls, by cudarc's name, with what provides them.
    const LIBRARIES: [(&str, &str); 5] = [
        ("cuda", "libcuda.so.1, the NVIDIA driver"),
        ("nvrtc", "libnvrtc, pip package nvidia-cuda-nvrtc"),
        ("cublas", "libcublas, pip package nvidia-cublas"),
        ("cublasLt", "libcublasLt, pip package nvidia-cublas"),
        ("curand", "libcurand, pip package nvidia-curand"),
    ];

    /// Folders searched after the dynamic loader's own path (LD_LIBRARY_PATH, ldconfig):
    /// `QWEN_NATIVE_CUDA_LIBS` (a path list), then the toolkit named by CUDA_PATH / CUDA_HOME.
    fn extra_dirs() -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = std::env::var_os("QWEN_NATIVE_CUDA_LIBS")
            .map(|v| std::env::split_paths(&v).collect())
            .unwrap_or_default();
        for var in ["CUDA_PATH", "CUDA_HOME", "CUDA_ROOT"] {
            if let Some(root) = std::env::var_os(var) {
                let root = PathBuf::from(root);
                dirs.push(root.join("lib64"));
                dirs.push(root.join("lib"));
            }
        }
        dirs
    }

    /// Loads every library candle needs, once per process, so that cudarc (which panics when
    /// one is missing) finds them already loaded under their sonames, then asks the driver
    /// itself whether it works. Returns the number of GPUs, or why CUDA cannot be used.
    fn load_libraries() -> Result<usize, String> {
        static LOADED: OnceLock<Result<usize, String>> = OnceLock::new();
        LOADED
            .get_or_init(|| {
                let dirs = extra_dirs();
                let mut missing = Vec::new();
                let mut driver = None;
                for (lib, provider) in LIBRARIES {
                    let names = cudarc::get_lib_name_candidates(lib);
                    let found = names
                        .iter()
                        .map(PathBuf::from)
                        .chain(dirs.iter().flat_map(|d| names.iter().map(|n| d.join(n))))
                        // SAFETY: loading a CUDA library runs only its initialisers.
                        .find_map(|p| unsafe { libloading::Library::new(&p) }.ok());
                    match found {
                        Some(handle) if lib == "cuda" => driver = Some(handle),
                        // Kept loaded for the process: cudarc resolves its symbols from it.
                        Some(handle) => std::mem::forget(handle),
                        None => missing.push(provider),
                    }
                }
                if !missing.is_empty() {
                    return Err(format!(
                        "CUDA libraries not found: {}. Put their folder on LD_LIBRARY_PATH or \
                         QWEN_NATIVE_CUDA_LIBS, or set CUDA_PATH to a CUDA {} toolkit",
                        missing.join("; "),
                        BUILT_CUDA,
                    ));
                }
                let driver = driver.expect("found with the others");
                let gpus = check_driver(&driver);
                std::mem::forget(driver);
                gpus
            })
            .clone()
    }

    /// The CUDA version this build's kernels and bindings need ("13.0").
    const BUILT_CUDA: &str = match option_env!("QWEN_NATIVE_CUDA_VERSION") {
        Some(v) => v,
        None => "12 or 13",
    };

    /// Initialises the driver and counts GPUs through the driver library's own entry points, so
    /// a stub or old driver, or a machine without a GPU, is an error naming the cause (cudarc
    /// would panic on a missing symbol and report only a number).
    fn check_driver(lib: &libloading::Library) -> Result<usize, String> {
        type Init = unsafe extern "C" fn(u32) -> i32;
        type OutInt = unsafe extern "C" fn(*mut i32) -> i32;
        // SAFETY: the three symbols have these C signatures in every CUDA driver API version.
        let (init, version, count) = unsafe {
            let sym = |name: &str| {
                format!("libcuda.so.1 has no {name}: it is not a working NVIDIA driver")
            };
            (
                *lib.get::<Init>(b"cuInit").map_err(|_| sym("cuInit"))?,
                *lib.get::<OutInt>(b"cuDriverGetVersion")
                    .map_err(|_| sym("cuDriverGetVersion"))?,
                *lib.get::<OutInt>(b"cuDeviceGetCount")
                    .map_err(|_| sym("cuDeviceGetCount"))?,
            )
        };
        let mut v = 0;
        // SAFETY: plain driver calls writing to a local.
        if unsafe { version(&mut v) } == 0 {
            let needed = BUILT_CUDA.split_once('.').and_then(|(a, b)| {
                Some(a.parse::<i32>().ok()? * 1000 + b.parse::<i32>().ok()? * 10)
            });
            if needed.is_some_and(|n| v < n) {
                return Err(format!(
                    "the NVIDIA driver supports CUDA {}.{}, and this build needs CUDA {BUILT_CUDA}: \
                     update the driver",
                    v / 1000,
                    v % 1000 / 10
                ));
            }
        }
        // SAFETY: as above.
        match unsafe { init(0) } {
            0 => {}
            100 => return Err("the NVIDIA driver found no GPU (CUDA_ERROR_NO_DEVICE)".into()),
            35 => return Err(
                "the NVIDIA driver is older than its CUDA library (CUDA_ERROR_INSUFFICIENT_DRIVER)"
                    .into(),
            ),
            code => {
                return Err(format!(
                    "the NVIDIA driver failed to initialise (cuInit: CUDA error {code})"
                ))
            }
        }
        let mut n = 0;
        // SAFETY: as above.
        match unsafe { count(&mut n) } {
            0 => Ok(n.max(0) as usize),
            code => Err(format!(
                "cannot count GPUs (cuDeviceGetCount: CUDA error {code})"
            )),
        }
    }

    /// The compute capability this build's kernels target (CUDA_COMPUTE_CAP at build time).
    fn built_arch() -> Option<(i32, i32)> {
        let cap: i32 = option_env!("QWEN_NATIVE_CUDA_ARCH")?.parse().ok()?;
        Some((cap / 10, cap % 10))
    }

    pub fn open(ordinal: usize) -> Result<Device, String> {
        let gpus = load_libraries()?;
        if ordinal >= gpus {
            return Err(format!("this machine has {gpus} GPU(s), numbered from 0"));
        }
        // cudarc panics instead of returning errors where a library lacks a symbol it calls.
        let device = catch_unwind(AssertUnwindSafe(|| Device::new_cuda(ordinal)))
            .map_err(|panic| {
                format!(
                    "the CUDA libraries failed while opening the device: {}",
                    crate::error::panic_text(panic.as_ref())
                )
            })?
            .map_err(|e| e.to_string())?;
        if let (Some(built), Ok(cuda)) = (built_arch(), device.as_cuda_device()) {
            let ctx = cuda.cuda_stream().context().clone();
            let gpu = ctx.compute_capability().map_err(|e| e.to_string())?;
            // candle's kernels carry PTX, which runs on its own and later architectures, except
            // that from sm_90 on candle compiles for one architecture only (sm_90a). The prebuilt
            // machine code of the quantized kernels is checked at their load.
            let (runs, which) = if built.0 >= 9 {
                (gpu == built, "only")
            } else {
                (gpu >= built, "and newer")
            };
            if !runs {
                return Err(format!(
                    "this GPU is sm_{}{}, but this build's kernels target sm_{}{} {which}; rebuild \
                     with CUDA_COMPUTE_CAP={}{} npm run build:cuda",
                    gpu.0, gpu.1, built.0, built.1, gpu.0, gpu.1
                ));
            }
        }
        Ok(device)
    }

    pub fn check_quantized_kernels(d: &Device) -> Result<(), String> {
        let (Some(built), Ok(cuda)) = (built_arch(), d.as_cuda_device()) else {
            return Ok(());
        };
        let gpu = cuda
            .cuda_stream()
            .context()
            .compute_capability()
            .map_err(|e| e.to_string())?;
        if gpu.0 == built.0 {
            Ok(())
        } else {
            Err(format!(
                "this build's quantized (GGUF) CUDA kernels are compiled for sm_{}{}, which does not \
                 run on this sm_{}{} GPU; rebuild with CUDA_COMPUTE_CAP={}{} npm run build:cuda, or \
                 load a safetensors (bf16) model",
                built.0, built.1, gpu.0, gpu.1, gpu.0, gpu.1
            ))
        }
    }

    pub fn info(d: &Device) -> Option<GpuInfo> {
        let cuda = d.as_cuda_device().ok()?;
        let ctx = cuda.cuda_stream().context().clone();
        let (free, total) = ctx.mem_get_info().ok()?;
        let (major, minor) = ctx.compute_capability().ok()?;
        Some(GpuInfo {
            name: ctx.name().unwrap_or_default(),
            compute_capability: format!("{major}.{minor}"),
            total_memory_bytes: total as u64,
            used_memory_bytes: (total - free) as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!(DeviceRequest::parse("auto").unwrap(), DeviceRequest::Auto);
        assert_eq!(DeviceRequest::parse("cpu").unwrap(), DeviceRequest::Cpu);
        assert_eq!(
            DeviceRequest::parse("cuda").unwrap(),
            DeviceRequest::Cuda(0)
        );
        assert_eq!(
            DeviceRequest::parse("cuda:3").unwrap(),
            DeviceRequest::Cuda(3)
        );
        for bad in ["gpu", "cuda:", "cuda:x", "CUDA", ""] {
            let e = DeviceRequest::parse(bad).unwrap_err();
            assert_eq!(e.code(), "ERR_INVALID_REQUEST", "{bad}");
        }
    }

    #[test]
    fn auto_always_finds_a_device() {
        let s = select(DeviceRequest::Auto).unwrap();
        if s.device.is_cpu() {
            assert!(s.cpu_fallback_reason.is_some());
        }
    }
}
