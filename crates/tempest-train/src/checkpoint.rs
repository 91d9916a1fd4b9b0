//! Run checkpoints: a model checkpoint (`tempest_model::save`'s `config.json`, which names
//! the classes as `id2label`/`label2id`, + `model.safetensors`) plus `tempest_tokenizer.json`,
//! and for the resumable `last` checkpoint `optimizer.safetensors` and `state.json`.
//! Checkpoints written before the class names moved into `config.json` and the tokenizer file
//! was renamed (`classes.json`, `tokenizer.json`) still load.
//!
//! Every checkpoint is written to `<name>.tmp` and then swapped in by renames (`<name>` →
//! `<name>.old`, `<name>.tmp` → `<name>`, `<name>.old` removed): a checkpoint under its final
//! name is always complete, and a run killed between the two renames leaves the previous one
//! as `<name>.old`, which [`resolve`] finds.

use std::fs;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};
use tempest_model::{Config, Tempest};
use tempest_tokenize::TokenizerConfig;

use crate::metrics::EpochSums;
use crate::optim::AdamW;
use crate::{Error, Result};

/// The class names' file of older checkpoints (read when `config.json` has no `id2label`).
pub use tempest_model::CLASSES_FILE;
/// The tokenizer's file: the [`TokenizerConfig`] training used, saved beside the weights so
/// that evaluation and classification read files the same way.
pub const TOKENIZER_FILE: &str = "tempest_tokenizer.json";
/// The tokenizer file's name in checkpoints written before it was renamed (it is not a Hugging
/// Face `tokenizer.json`, so it no longer takes that name); still read.
pub const OLD_TOKENIZER_FILE: &str = "tokenizer.json";
/// The optimiser state's file.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The training state's file.
pub const STATE_FILE: &str = "state.json";

/// Where a resumable run stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// The epoch in progress (from 0).
    pub epoch: usize,
    /// Batches of that epoch's plan already trained on.
    pub batch_in_epoch: usize,
    /// Optimiser steps taken.
    pub step: usize,
    /// The run's seed.
    pub seed: u64,
    /// Best selection accuracy so far and its epoch.
    pub best: Option<(f64, usize)>,
    /// Sums over the epoch in progress.
    pub epoch_sums: EpochSums,
    /// Seconds trained before this process.
    pub elapsed_s: f64,
    /// Ranks of the run (data-parallel training, [`crate::dist`]); a run resumes with the same
    /// number. Checkpoints written before it existed were of one rank.
    #[serde(default = "one_rank")]
    pub world_size: usize,
}

fn one_rank() -> usize {
    1
}

impl Default for TrainState {
    /// The start of a run of one rank.
    fn default() -> Self {
        TrainState {
            epoch: 0,
            batch_in_epoch: 0,
            step: 0,
            seed: 0,
            best: None,
            epoch_sums: EpochSums::default(),
            elapsed_s: 0.0,
            world_size: 1,
        }
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })?;
    fs::write(path, text).map_err(Error::io(path))
}

/// Reads a JSON file.
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = fs::read_to_string(path).map_err(Error::io(path))?;
    serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })
}

fn with_suffix(dir: &Path, suffix: &str) -> PathBuf {
    let mut s = dir.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// The checkpoint directory `dir`, or what a run killed mid-swap left as `dir.old`.
pub fn resolve(dir: &Path) -> Option<PathBuf> {
    if dir.join(tempest_model::WEIGHTS_FILE).exists() {
        return Some(dir.to_path_buf());
    }
    let old = with_suffix(dir, ".old");
    old.join(tempest_model::WEIGHTS_FILE)
        .exists()
        .then_some(old)
}

/// What a checkpoint holds besides the weights.
#[allow(missing_debug_implementations)] // VarMap has no Debug
pub struct CheckpointParts<'a> {
    /// The model's configuration.
    pub config: &'a Config,
    /// Its variables.
    pub varmap: &'a VarMap,
    /// Class names.
    pub classes: &'a [String],
    /// How files were tokenized.
    pub tokenizer: &'a TokenizerConfig,
    /// Optimiser and state, for a resumable checkpoint.
    pub resume: Option<(&'a AdamW, &'a TrainState)>,
}

/// [`CHECKSUMS_FILE`] lists each other file of a checkpoint with its length and CRC-32
/// (written last by [`save`]); [`verify`] checks a folder against it (a checkpoint without
/// one passes). Resume, load and `--init` verify before reading anything else.
pub use tempest_model::{verify, CHECKSUMS_FILE};

/// Writes a checkpoint atomically (see the module's documentation), its
/// [`CHECKSUMS_FILE`] last.
pub fn save(dir: &Path, parts: &CheckpointParts<'_>) -> Result<()> {
    let tmp = with_suffix(dir, ".tmp");
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(Error::io(&tmp))?;
    }
    let config = parts.config.clone().with_class_names(parts.classes);
    tempest_model::save(&tmp, &config, parts.varmap)?;
    write_json(&tmp.join(TOKENIZER_FILE), parts.tokenizer)?;
    if let Some((opt, state)) = parts.resume {
        opt.save(&tmp.join(OPTIMIZER_FILE))?;
        write_json(&tmp.join(STATE_FILE), state)?;
    }
    tempest_model::write_checksums(&tmp)?;
    let old = with_suffix(dir, ".old");
    if old.exists() {
        fs::remove_dir_all(&old).map_err(Error::io(&old))?;
    }
    if dir.exists() {
        fs::rename(dir, &old).map_err(Error::io(dir))?;
    }
    fs::rename(&tmp, dir).map_err(Error::io(dir))?;
    if old.exists() {
        fs::remove_dir_all(&old).map_err(Error::io(&old))?;
    }
    Ok(())
}

/// A checkpoint loaded for evaluation or classification.
#[derive(Debug)]
pub struct Loaded {
    /// The model.
    pub model: Tempest,
    /// Class names.
    pub classes: Vec<String>,
    /// How it tokenized files (training's settings: take
    /// [`TokenizerConfig::eval_config`] to read files as evaluation does).
    pub tokenizer: TokenizerConfig,
}

/// Loads a checkpoint written by [`save`] (or a run directory: its `best`, else `last`).
pub fn load(dir: &Path, device: &Device) -> Result<Loaded> {
    load_as(dir, device, DType::F32)
}

/// As [`load`], with the weights in `dtype` (bf16 on a GPU).
pub fn load_as(dir: &Path, device: &Device, dtype: DType) -> Result<Loaded> {
    let dir = [dir.to_path_buf(), dir.join("best"), dir.join("last")]
        .iter()
        .find_map(|d| resolve(d))
        .ok_or_else(|| Error::dataset(dir, "no checkpoint (model.safetensors) here"))?;
    let model = tempest_model::load(&dir, device, dtype)?;
    // A checkpoint for evaluation must name its classes; one without names fails on the
    // missing `classes.json`, naming it.
    let classes: Vec<String> = match tempest_model::class_names(&dir, model.config())? {
        Some(names) => names,
        None => read_json(&dir.join(CLASSES_FILE))?,
    };
    let tokenizer_file = if dir.join(TOKENIZER_FILE).exists() {
        dir.join(TOKENIZER_FILE)
    } else {
        dir.join(OLD_TOKENIZER_FILE)
    };
    let tokenizer: TokenizerConfig = read_json(&tokenizer_file)?;
    Ok(Loaded {
        model,
        classes,
        tokenizer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `tokenizer.json` as checkpoints are written today (the fields of training's
    /// `TokenizerConfig`, zero augmentations left out).
    const TOKENIZER_JSON: &str = include_str!("../tests/fixtures/tokenizer.json");

    #[test]
    fn tokenizer_files_of_todays_checkpoints_load_and_write_back_alike() {
        let t: TokenizerConfig = serde_json::from_str(TOKENIZER_JSON).unwrap();
        assert_eq!(t.format, Some(cff_blocks::Format::Mp3));
        assert_eq!((t.max_block_bytes, t.max_blocks), (320, 1024));
        assert_eq!(t.tokens, tempest_tokenize::BlockTokens::FieldsAndLines);
        assert_eq!(
            (t.train_blocks, t.gain_jitter, t.band_shift),
            (Some(20), 2, 1)
        );
        assert_eq!(t.train_config().unwrap().max_blocks, 20);
        assert_eq!(t.eval_config().unwrap().gain_jitter, 0);
        assert_eq!(
            serde_json::to_string_pretty(&t).unwrap(),
            TOKENIZER_JSON.trim_end()
        );
        // Unknown keys are refused, by name.
        let extra = TOKENIZER_JSON.replacen('{', "{\n  \"crop_size\": 3,", 1);
        let err = serde_json::from_str::<TokenizerConfig>(&extra).unwrap_err();
        assert!(err.to_string().contains("crop_size"), "{err}");
    }

    #[test]
    fn tokenizer_files_from_before_bit_stride_and_tokens_read_as_bytes() {
        let old = r#"{"format":"jpeg","max_block_bytes":160,"max_blocks":1024,"jpeg_header_block":false}"#;
        let old: TokenizerConfig = serde_json::from_str(old).unwrap();
        assert_eq!(old.eval_config().unwrap().bit_stride, 8);
        assert_eq!(old.tokens, tempest_tokenize::BlockTokens::Bytes);
        // A stride the tokenizer cannot read is refused by name.
        let bad = old.with_bit_stride(3);
        let err = bad.train_config().unwrap_err().to_string();
        assert!(err.contains("bit_stride 3"), "{err}");
    }

    #[test]
    fn epoch_sums_keep_the_array_form_of_earlier_checkpoints() {
        // A train_state.json written before the sums had names.
        let old = r#"{"epoch":3,"batch_in_epoch":7,"step":55,"seed":1,"best":[0.5,2],
            "epoch_sums":[12.5,10.0,2.5,6.0,16.0],"elapsed_s":9.5}"#;
        let state: TrainState = serde_json::from_str(old).unwrap();
        let s = state.epoch_sums;
        assert_eq!((s.loss, s.correct, s.items), (12.5, 6.0, 16.0));
        assert_eq!((s.mean_loss(), s.accuracy()), (12.5 / 16.0, 6.0 / 16.0));
        let text = serde_json::to_string(&state).unwrap();
        assert!(
            text.contains(r#""epoch_sums":[12.5,10.0,2.5,6.0,16.0]"#),
            "{text}"
        );
        let mut sum = EpochSums::default();
        sum.add(&s);
        sum.add(&s);
        assert_eq!(<[f64; 5]>::from(sum), [25.0, 20.0, 5.0, 12.0, 32.0]);
        assert_eq!(EpochSums::default().accuracy(), 0.0);
    }
}
