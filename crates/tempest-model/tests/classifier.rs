//! The end-to-end classifier: checkpoint directory in, sorted predictions out.

mod common;

use candle_core::{DType, Device, Result};
use tempest_model::{Classifier, Config, Tempest};

fn checkpoint(name: &str, classes: &[&str]) -> Result<(std::path::PathBuf, Tempest)> {
    let cfg = Config::tiny().with_num_classes(classes.len());
    let (model, varmap) = Tempest::init(&cfg, &Device::Cpu, DType::F32)?;
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    tempest_model::save(&dir, &cfg, &varmap).map_err(candle_core::Error::wrap)?;
    let names: Vec<String> = classes.iter().map(|s| s.to_string()).collect();
    std::fs::write(
        dir.join("classes.json"),
        serde_json::to_string(&names).map_err(candle_core::Error::wrap)?,
    )?;
    Ok((dir, model))
}

#[test]
fn classifies_items_with_named_sorted_probabilities() -> Result<()> {
    let classes = ["dog", "rain", "siren"];
    let (dir, model) = checkpoint("tempest-classifier-items", &classes)?;
    let classifier = Classifier::load(&dir, &Device::Cpu).map_err(candle_core::Error::wrap)?;
    let data = common::items(4, 2, 5, 30);
    let refs: Vec<_> = data.iter().collect();
    let out = classifier
        .classify_items(&refs)
        .map_err(candle_core::Error::wrap)?;
    assert_eq!(out.len(), 2);
    let expected = model
        .probabilities(&common::batch(&data, &[0, 0])?)?
        .to_vec2::<f32>()?;
    for (preds, probs) in out.iter().zip(expected) {
        assert_eq!(preds.len(), 3);
        assert!(preds
            .windows(2)
            .all(|w| w[0].probability >= w[1].probability));
        let total: f32 = preds.iter().map(|p| p.probability).sum();
        assert!((total - 1.0).abs() < 1e-5);
        for p in preds {
            assert_eq!(p.label, classes[p.class]);
            assert_eq!(
                p.probability, probs[p.class],
                "the loaded model is the saved one"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn wrong_number_of_class_names_is_an_error() -> Result<()> {
    let (model, _) = Tempest::init(
        &Config::tiny().with_num_classes(3),
        &Device::Cpu,
        DType::F32,
    )?;
    let c = Classifier::new(model, Device::Cpu);
    assert!(c.with_class_names(vec!["a".into()]).is_err());
    Ok(())
}

/// Three MPEG-2 Layer III frames (16 kHz, 32 kbps, mono: FF F3 48 C4 + 140 bytes = 144).
#[test]
fn classifies_an_mp3_buffer_end_to_end() -> Result<()> {
    let (dir, _) = checkpoint("tempest-classifier-mp3", &["a", "b"])?;
    let classifier = Classifier::load(&dir, &Device::Cpu).map_err(candle_core::Error::wrap)?;
    let mut frame = [0u8; 144];
    frame[..4].copy_from_slice(&[0xFF, 0xF3, 0x48, 0xC4]);
    let file = frame.repeat(3);
    let preds = classifier
        .classify_bytes(&file, std::path::Path::new("clip.mp3"))
        .map_err(candle_core::Error::wrap)?;
    assert_eq!(preds.len(), 2);
    let total: f32 = preds.iter().map(|p| p.probability).sum();
    assert!((total - 1.0).abs() < 1e-5);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// A checkpoint's weights file does not depend on where or in which precision the model was
/// trained: variables in f64 (as a GPU run's bf16 ones, another dtype than the file's) are
/// written as the same f32 file byte for byte, every tensor of it is f32, and it loads back
/// for training in any dtype. (tests/cuda.rs moves one between a GPU and the CPU.)
#[test]
fn checkpoint_files_do_not_depend_on_the_variables_dtype() -> Result<()> {
    let wrap = candle_core::Error::wrap;
    let (dir, _) = checkpoint("ckpt_dtype_f32", &["a", "b", "c"])?;
    let f32_bytes = std::fs::read(dir.join(tempest_model::WEIGHTS_FILE))?;
    let (model64, varmap64) =
        tempest_model::load_trainable(&dir, &Device::Cpu, DType::F64).map_err(wrap)?;
    assert_eq!(model64.dtype(), DType::F64);
    assert!(varmap64.all_vars().iter().all(|v| v.dtype() == DType::F64));
    let again = dir.with_file_name("ckpt_dtype_f64");
    let _ = std::fs::remove_dir_all(&again);
    tempest_model::save(&again, model64.config(), &varmap64).map_err(wrap)?;
    let f64_bytes = std::fs::read(again.join(tempest_model::WEIGHTS_FILE))?;
    assert_eq!(
        f32_bytes, f64_bytes,
        "the file depends on the variables' dtype"
    );
    let stored =
        candle_core::safetensors::load(again.join(tempest_model::WEIGHTS_FILE), &Device::Cpu)?;
    assert_eq!(stored.len(), varmap64.all_vars().len());
    assert!(stored.values().all(|t| t.dtype() == DType::F32));
    Ok(())
}
