//! Part of candle-kernels' build script in `npm run build:cuda` (copied there by
//! scripts/build-cuda.mjs as `fatbin.rs`).
//!
//! candle embeds its kernels as PTX, which the driver compiles to machine code on a machine's
//! first run: 15-20 s for a 7B's kernels on an H200, and again in every fresh container, whose
//! driver cache starts empty. This compiles each PTX file ahead of time into a fat binary holding
//! machine code for the PTX's own architecture plus the PTX itself (which the driver still
//! compiles on other GPUs it can run on), and declares the modules as those bytes.
use std::path::{Path, PathBuf};
use std::process::Command;

/// Turns every `*.ptx` in `out_dir` into a `*.fatbin` beside it and writes `rs` with one
/// `pub const NAME: &[u8]` per module (the declarations candle's `ptx.rs` otherwise holds).
pub fn write_modules(out_dir: &Path, rs: &Path) {
    let nvcc = std::env::var_os("CUDA_PATH")
        .map(|cuda| Path::new(&cuda).join("bin").join("nvcc"))
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    let mut ptx: Vec<PathBuf> = std::fs::read_dir(out_dir)
        .expect("OUT_DIR is readable")
        .map(|entry| entry.expect("OUT_DIR is readable").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "ptx"))
        .collect();
    ptx.sort();
    // quantized.ptx alone takes ~6 s in ptxas; the others run beside it.
    std::thread::scope(|scope| {
        for path in &ptx {
            let nvcc = &nvcc;
            scope.spawn(move || compile(nvcc, path));
        }
    });
    let decls: String = ptx
        .iter()
        .map(|path| {
            let stem = path.file_stem().unwrap().to_str().unwrap();
            format!(
                "pub const {}: &[u8] = include_bytes!(concat!(env!(\"OUT_DIR\"), \"/{stem}.fatbin\"));\n",
                stem.to_uppercase().replace(['.', '-'], "_")
            )
        })
        .collect();
    std::fs::write(rs, decls).expect("OUT_DIR is writable");
}

fn compile(nvcc: &Path, ptx: &Path) {
    let text = std::fs::read_to_string(ptx).expect("the PTX nvcc wrote is readable");
    // ".target sm_90a" (cudaforge adds the suffix from sm_90 on); the PTX fixes the architecture.
    let arch = text
        .lines()
        .find_map(|line| line.trim().strip_prefix(".target "))
        .and_then(|target| target.split(',').next())
        .and_then(|target| target.trim().strip_prefix("sm_"))
        .unwrap_or_else(|| panic!("{} names no .target sm_XX", ptx.display()));
    let output = Command::new(nvcc)
        .arg("-fatbin")
        .arg(format!("-gencode=arch=compute_{arch},code=[sm_{arch},compute_{arch}]"))
        .arg("-o")
        .arg(ptx.with_extension("fatbin"))
        .arg(ptx)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", nvcc.display()));
    assert!(
        output.status.success(),
        "nvcc -fatbin {} failed:\n{}",
        ptx.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}
