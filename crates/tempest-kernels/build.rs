//! Under feature `cuda`, compiles `cuda/tempest.cu` to PTX with nvcc (`$OUT_DIR/tempest.ptx`, which
//! `src/cuda/launch.rs` embeds). Without the feature it does nothing: CPU builds need no CUDA.
//!
//! nvcc is `$NVCC`, else `$CUDA_ROOT/bin/nvcc` (or `$CUDA_PATH`, `$CUDA_HOME`), else `nvcc` on
//! `PATH`. The PTX targets `compute_XY` for `CUDA_COMPUTE_CAP` (as candle's own kernels), else
//! the first GPU `nvidia-smi` reports, else 80; capped at 90 so that the PTX never needs an
//! architecture-specific (`sm_90a`) feature and any newer GPU's driver can JIT it.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=cuda");
    for var in [
        "NVCC",
        "CUDA_ROOT",
        "CUDA_PATH",
        "CUDA_HOME",
        "CUDA_COMPUTE_CAP",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let nvcc = nvcc();
    let cap = compute_cap().min(90);
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let ptx = out.join("tempest.ptx");
    let src = Path::new("cuda").join("tempest.cu");
    let status = Command::new(&nvcc)
        .arg("--ptx")
        .arg(format!("-arch=compute_{cap}"))
        .args(["-O3", "-std=c++17", "-o"])
        .arg(&ptx)
        .arg(&src)
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "feature `cuda`: cannot run nvcc ({}): {e}; install the CUDA toolkit or set NVCC",
                nvcc.display()
            )
        });
    assert!(status.success(), "nvcc failed on {}", src.display());
}

fn nvcc() -> PathBuf {
    if let Some(p) = env::var_os("NVCC") {
        return PathBuf::from(p);
    }
    for var in ["CUDA_ROOT", "CUDA_PATH", "CUDA_HOME"] {
        if let Some(root) = env::var_os(var) {
            let p = Path::new(&root).join("bin").join("nvcc");
            if p.exists() {
                return p;
            }
        }
    }
    PathBuf::from("nvcc")
}

fn compute_cap() -> u32 {
    if let Ok(v) = env::var("CUDA_COMPUTE_CAP") {
        if let Ok(c) = v.trim().trim_start_matches("sm_").parse::<u32>() {
            return c;
        }
        panic!("CUDA_COMPUTE_CAP={v:?} is not a number such as 90");
    }
    let smi = Command::new("nvidia-smi")
        .args(["--query-gpu=compute_cap", "--format=csv,noheader"])
        .output();
    if let Ok(out) = smi {
        let text = String::from_utf8_lossy(&out.stdout);
        if let Some(line) = text.lines().next() {
            if let Ok(c) = line.trim().replace('.', "").parse::<u32>() {
                return c;
            }
        }
    }
    80
}
