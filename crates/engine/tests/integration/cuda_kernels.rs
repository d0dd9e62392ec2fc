//! The GPU's fused kernels (cuda/fused.cu) checked on the CPU: the kernel source is compiled as C++
//! against cuda/emulate/cuda_on_cpu.h, which runs each block's threads as OS threads with real
//! barriers and shuffles, and compared with reference code (cuda/emulate/test_fused.cpp). This is
//! what tests the kernels' indexing and reductions on machines without a GPU; the GPU check
//! (scripts/gpu/check.sh) then compares whole models on the device.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn fused_cuda_kernels_match_reference_code_when_emulated_on_the_cpu() {
    let cuda = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("cuda");
    let emulate = cuda.join("emulate");
    let binary = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("test_fused_kernels");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let compiled = Command::new(&cxx)
        .args(["-std=c++20", "-O2", "-pthread", "-I"])
        .arg(&emulate)
        .arg(emulate.join("test_fused.cpp"))
        .arg("-o")
        .arg(&binary)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C++ compiler `{cxx}` (set CXX): {e}"));
    assert!(
        compiled.status.success(),
        "compiling the emulated kernels failed:\n{}",
        String::from_utf8_lossy(&compiled.stderr)
    );
    let run = Command::new(&binary)
        .output()
        .expect("run the emulated kernels");
    let report = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{report}");
    assert!(report.contains("ok: 0 failure(s)"), "{report}");
}
