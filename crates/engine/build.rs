//! With the `cuda` feature: compiles cuda/fused.cu into a fat binary in OUT_DIR, with machine code
//! for the data-centre and desktop GPUs of the last generations (so the driver has nothing to
//! compile on a machine's first run) and PTX for the others. Needs nvcc: CUDA_PATH/bin, else
//! PATH (`npm run build:cuda` provides one). Without the feature it does nothing.

use std::path::PathBuf;
use std::process::Command;

/// Ampere (A100, RTX 30xx), Ampere (A10, A40), Ada (L4, L40, RTX 40xx), Hopper (H100, H200).
const MACHINE_CODE: [&str; 4] = ["80", "86", "89", "90"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let source = "cuda/fused.cu";
    println!("cargo:rerun-if-changed={source}");
    for var in ["CUDA_PATH", "CUDA_COMPUTE_CAP", "NVCC_CCBIN"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let nvcc = std::env::var_os("CUDA_PATH")
        .map(|p| PathBuf::from(p).join("bin").join("nvcc"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let mut archs: Vec<String> = MACHINE_CODE.iter().map(|a| a.to_string()).collect();
    // The architecture the rest of the build targets, when it is not in the list (a newer GPU).
    if let Ok(cap) = std::env::var("CUDA_COMPUTE_CAP") {
        let cap = cap.replace('.', "");
        if cap.parse::<u32>().is_ok_and(|c| c > 80) && !archs.contains(&cap) {
            archs.push(cap);
        }
    }
    let mut cmd = Command::new(&nvcc);
    cmd.args(["-fatbin", "-O3", "-std=c++17", "-o"])
        .arg(out.join("fused.fatbin"))
        .arg(source);
    for arch in &archs {
        cmd.arg(format!("-gencode=arch=compute_{arch},code=sm_{arch}"));
    }
    // PTX for Turing (T4, RTX 20xx: the oldest CUDA 13 supports; the kernels only convert bf16,
    // which it emulates) and, compiled by the driver, anything newer than the list.
    cmd.arg("-gencode=arch=compute_75,code=compute_75");
    if let Some(ccbin) = std::env::var_os("NVCC_CCBIN") {
        cmd.arg("-ccbin").arg(ccbin);
    }
    let status = cmd.status().unwrap_or_else(|e| {
        panic!(
            "cannot run {}: {e}. The cuda feature needs nvcc (set CUDA_PATH, or use `npm run build:cuda`)",
            nvcc.display()
        )
    });
    assert!(status.success(), "nvcc failed on {source}");
}
