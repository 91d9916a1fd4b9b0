//! The CUDA path on a real device: every kernel against its CPU reference (fresh random inputs,
//! poisoned outputs), and the model with our kernels against candle's stock ops. Each test
//! prints why it skips where there is no CUDA device (a build without feature `cuda`, or a
//! machine without a GPU, where `scripts/cuda-env.sh` links a stub driver).

use candle_core::Device;
use tempest_model::cuda::check;
use tempest_model::Config;

fn device(test: &str) -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            let why = e.to_string();
            println!(
                "skipped {test}: no CUDA device ({})",
                why.lines().next().unwrap_or_default()
            );
            None
        }
    }
}

fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7)
}

#[test]
fn kernels_match_their_cpu_references() -> candle_core::Result<()> {
    let Some(dev) = device("kernels_match_their_cpu_references") else {
        return Ok(());
    };
    let seed = seed();
    let checks = check::check_kernels(&dev, seed, false)?;
    assert!(checks.len() >= 24);
    let failed: Vec<_> = checks.iter().filter(|c| !c.passed()).collect();
    assert!(failed.is_empty(), "seed {seed}: {failed:#?}");
    Ok(())
}

#[test]
fn model_with_our_kernels_matches_stock_ops() -> candle_core::Result<()> {
    let Some(dev) = device("model_with_our_kernels_matches_stock_ops") else {
        return Ok(());
    };
    let mut rng = check::Rng::new(seed());
    let batch = check::random_batch(&mut rng, 3, 5, 33, 10)?;
    for name in ["tiny", "paper"] {
        let cfg = Config::preset(name).unwrap_or_default();
        let (logits, loss, grads) = check::compare_model(&dev, &cfg, &batch)?;
        assert!(
            logits < 1e-4 && loss < 1e-5 && grads < 1e-4,
            "{name}: {logits} {loss} {grads}"
        );
    }
    Ok(())
}

#[test]
fn cuda_kernels_default_on_and_old_configs_load() {
    assert!(Config::default().execution.cuda_kernels);
    let old: Config = serde_json::from_str(r#"{"num_classes": 3}"#).unwrap_or_default();
    assert!(old.execution.cuda_kernels);
    // Files from before `Execution` held the switches: they load, the switches are ignored
    // (how a run executes is not part of the model).
    let older =
        Config::from_json(r#"{"num_classes": 3, "cuda_kernels": false, "fused_kernels": false}"#)
            .unwrap_or_default();
    assert_eq!(older.num_classes, 3);
    assert!(older.execution.cuda_kernels && older.execution.fused_kernels);
    let mut off = Config::tiny();
    off.execution.cuda_kernels = false;
    assert!(
        off.own_kernels(&Device::Cpu),
        "the CPU follows fused_kernels"
    );
    let json = serde_json::to_string(&off).unwrap_or_default();
    assert!(json.contains("num_classes"), "{json}");
    for key in [
        "fused_kernels",
        "fused_layers",
        "cuda_kernels",
        "dedup_blocks",
        "execution",
    ] {
        assert!(!json.contains(key), "config.json holds {key}: {json}");
    }
}

/// A checkpoint written from a model on the GPU is the file a CPU run writes: it loads on the
/// CPU with the same logits, and the CPU's copy saved again is the same bytes.
#[test]
fn checkpoints_move_between_the_gpu_and_the_cpu() -> candle_core::Result<()> {
    let Some(dev) = device("checkpoints_move_between_the_gpu_and_the_cpu") else {
        return Ok(());
    };
    let wrap = candle_core::Error::wrap;
    let cfg = Config::tiny().with_num_classes(10);
    let (gpu_model, gpu_vars) = tempest_model::Tempest::init(&cfg, &dev, candle_core::DType::F32)?;
    let root = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let (from_gpu, from_cpu) = (root.join("ckpt_from_gpu"), root.join("ckpt_from_cpu"));
    tempest_model::save(&from_gpu, &cfg, &gpu_vars).map_err(wrap)?;
    let (cpu_model, cpu_vars) =
        tempest_model::load_trainable(&from_gpu, &Device::Cpu, candle_core::DType::F32)
            .map_err(wrap)?;
    tempest_model::save(&from_cpu, &cfg, &cpu_vars).map_err(wrap)?;
    let read = |d: &std::path::Path| std::fs::read(d.join(tempest_model::WEIGHTS_FILE));
    assert_eq!(read(&from_gpu)?, read(&from_cpu)?);
    let mut rng = check::Rng::new(seed());
    let batch = check::random_batch(&mut rng, 3, 5, 33, 10)?;
    let on_cpu = cpu_model.forward(&batch, false)?.logits;
    let on_gpu = gpu_model
        .forward(&check::batch_to(&batch, &dev)?, false)?
        .logits
        .to_device(&Device::Cpu)?;
    let diff = (on_cpu - on_gpu)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(diff < 1e-4, "logits differ by {diff}");
    Ok(())
}
