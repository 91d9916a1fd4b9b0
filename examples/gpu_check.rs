//! The GPU check (`scripts/gpu-check.sh` runs it): every CUDA kernel against its CPU reference
//! on fresh random inputs with poisoned outputs, the model with our kernels against candle's
//! stock ops, then the training step of the `paper` preset (the step `train` takes: tempest-
//! train's `train_step`) timed both ways, in f32 and bf16,
//! beside the card's matmul rate. Exits 1 if a check fails, 2 without a CUDA device.
//!
//! ```text
//! cargo run --release --features cuda --example gpu_check -- [--seed N] [--batch B] [--steps S]
//! ```

use std::process::ExitCode;

use std::time::Instant;

use candle_core::{DType, Device};
use tempest::tempest_model::cuda::check;
use tempest::tempest_model::{Config, Tempest};
use tempest::tempest_tokenize::Batch;
use tempest::tempest_train::{train_step, AdamW, AdamWConfig};

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Milliseconds per training step as `train` takes it (tempest-train's `train_step`, the calls
/// its loop makes: the batch's gradients, clipping, AdamW's tensor-op update on the GPU) and
/// per forward + backward alone, after `warmup` steps, the device synchronised before the
/// clock stops.
fn time_training(
    dev: &Device,
    cfg: &Config,
    dtype: DType,
    batch: &Batch,
    warmup: usize,
    steps: usize,
) -> candle_core::Result<(f64, f64)> {
    let (model, varmap) = Tempest::init(cfg, dev, dtype)?;
    let batch = check::batch_to(batch, dev)?;
    let mut opt = AdamW::new(&varmap, AdamWConfig::default()).map_err(candle_core::Error::wrap)?;
    let step = |opt: &mut AdamW| -> candle_core::Result<()> {
        train_step(&model, &batch, 1, opt, 1e-4, 1.0)
            .map(|_| ())
            .map_err(candle_core::Error::wrap)
    };
    for _ in 0..warmup {
        step(&mut opt)?;
    }
    dev.synchronize()?;
    let t = Instant::now();
    for _ in 0..steps {
        step(&mut opt)?;
    }
    dev.synchronize()?;
    let step_ms = t.elapsed().as_secs_f64() * 1e3 / steps as f64;
    let t = Instant::now();
    for _ in 0..steps {
        let losses = model.loss(&batch, true)?;
        let _grads = losses.total.backward()?;
    }
    dev.synchronize()?;
    let fwd_bwd = t.elapsed().as_secs_f64() * 1e3 / steps as f64;
    Ok((step_ms, fwd_bwd))
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gpu_check: {e}");
            ExitCode::from(1)
        }
    }
}

fn run() -> candle_core::Result<ExitCode> {
    let args: Vec<String> = std::env::args().collect();
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    let seed = arg(&args, "--seed", clock);
    let batch = arg(&args, "--batch", 32) as usize;
    let steps = arg(&args, "--steps", 5) as usize;
    let dev = match Device::new_cuda(0) {
        Ok(d) => d,
        Err(e) => {
            println!("no CUDA device: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    println!("seed {seed} (rerun a failure with --seed {seed})");

    println!(
        "\n## Kernels against their CPU references (relative error: max|gpu - ref| / max|ref|)\n"
    );
    println!("| op | dtype | forward | backward | tolerance | result |");
    println!("|---|---|---:|---:|---:|---|");
    let mut failed = 0;
    for c in check::check_kernels(&dev, seed, false)? {
        let ok = c.passed();
        failed += usize::from(!ok);
        println!(
            "| {} | {:?} | {:.2e} | {:.2e} | {:.0e} | {} |",
            c.name,
            c.dtype,
            c.forward,
            c.backward,
            c.tolerance(),
            if ok { "ok" } else { "FAIL" }
        );
    }

    let mut rng = check::Rng::new(seed ^ 0x5EED);
    let small = check::random_batch(&mut rng, 4, 6, 40, 10)?;
    println!("\n## The model with our kernels against candle's stock ops (f32, same weights)\n");
    println!("| preset | logits | loss | gradients | result |");
    println!("|---|---:|---:|---:|---|");
    for name in ["tiny", "paper"] {
        let cfg = Config::preset(name).unwrap_or_default();
        let (logits, loss, grads) = check::compare_model(&dev, &cfg, &small)?;
        // Gradients pass through several kernels and different summation orders: 1e-4.
        let ok = logits < 1e-4 && loss < 1e-5 && grads < 1e-4;
        failed += usize::from(!ok);
        println!(
            "| {name} | {logits:.2e} | {loss:.2e} | {grads:.2e} | {} |",
            if ok { "ok" } else { "FAIL" }
        );
    }

    let n = 8192;
    let mm_bf16 = check::matmul_tflops(&dev, DType::BF16, n, 10)?;
    let mm_f32 = check::matmul_tflops(&dev, DType::F32, n, 5)?;
    let big = check::random_batch(&mut rng, batch, 28, 144, 50)?;
    let mut rows = Vec::new();
    for dtype in [DType::F32, DType::BF16] {
        let mut stock_ms = f64::NAN;
        for ours in [false, true] {
            let mut cfg = Config::paper().with_num_classes(50);
            cfg.execution.cuda_kernels = ours;
            let (step, fwd_bwd) = time_training(&dev, &cfg, dtype, &big, 2, steps)?;
            if !ours {
                stock_ms = step;
            }
            let flops = check::step_flops(&cfg, &big)?;
            let tflops = flops / (step / 1e3) / 1e12;
            let mm = if dtype == DType::BF16 {
                mm_bf16
            } else {
                mm_f32
            };
            rows.push(format!(
                "| {} | {:?} | {:.1} | {:.1} | {:.0} | {:.1} | {:.1} % | {:.2}x |",
                if ours { "ours" } else { "stock candle" },
                dtype,
                step,
                fwd_bwd,
                batch as f64 / (step / 1e3),
                tflops,
                100.0 * tflops / mm,
                stock_ms / step
            ));
        }
    }
    println!(
        "\n## Training step, `paper` preset, {batch} items of 28 blocks x 144 bytes (1 s of 16 kHz MP3 at 32 kbps), AdamW + clipping\n"
    );
    println!("matmul {n}^3: bf16 {mm_bf16:.0} TFLOP/s, f32 {mm_f32:.1} TFLOP/s (candle, cuBLAS)\n");
    println!("| ops | dtype | ms/step | ms fwd+bwd | items/s | TFLOP/s | % of matmul (same dtype) | speed-up |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!("{r}");
    }
    println!("\n{} checks failed", failed);
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
