//! Run checkpoints: a model checkpoint (`tempest_model::save`'s `config.json` +
//! `model.safetensors`) plus `classes.json`, `tokenizer.json`, and for the resumable `last`
//! checkpoint `optimizer.safetensors` and `state.json`.
//!
//! Every checkpoint is written to `<name>.tmp` and then swapped in by renames (`<name>` →
//! `<name>.old`, `<name>.tmp` → `<name>`, `<name>.old` removed): a checkpoint under its final
//! name is always complete, and a run killed between the two renames leaves the previous one
//! as `<name>.old`, which [`resolve`] finds.

use std::fs;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarMap;
use cff_blocks::Format;
use serde::{Deserialize, Serialize};
use tempest_model::{Config, Tempest};
use tempest_tokenize::{BlockTokens, Crop, TokenizerConfig};

use crate::{Error, Result};

/// The class names' file: the one `tempest_model::Classifier` reads.
pub use tempest_model::CLASSES_FILE;
/// The tokenizer settings' file.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// The optimiser state's file.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The training state's file.
pub const STATE_FILE: &str = "state.json";

/// How files were tokenized for training, saved beside the weights so that evaluation and
/// classification read files the same way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenizerSettings {
    /// `mp3`, `ogg-opus` or `jpeg`.
    pub format: String,
    /// L.
    pub max_block_bytes: usize,
    /// N.
    pub max_blocks: usize,
    /// Keep the JPEG header as one block in front of the MCUs.
    pub jpeg_header_block: bool,
    /// Bits per id (`TokenizerConfig::bit_stride`): 8 = one id per byte. Checkpoints written
    /// before this setting existed read as 8.
    #[serde(default = "byte_stride")]
    pub bit_stride: u8,
    /// What a block's ids stand for (`BlockTokens::name`: `bytes`, `fields`, `fields+bytes`,
    /// `fields+data`, `fields+lines`). Checkpoints written before this setting existed read as `bytes`.
    #[serde(default = "byte_tokens")]
    pub tokens: String,
    /// Blocks kept per training item, a random contiguous run of them (a random crop in
    /// time); evaluation keeps `max_blocks` around the middle. `None`: `max_blocks`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_blocks: Option<usize>,
    /// Training only: the loudness jitter of MP3 field tokens in quantiser steps
    /// (`TokenizerConfig::gain_jitter`); 0 where absent.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gain_jitter: u8,
    /// Training only: the frequency mask of MP3 line tokens in long scalefactor bands
    /// (`TokenizerConfig::band_mask`); 0 where absent.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub band_mask: u8,
    /// Training only: the band shift of MP3 line tokens (`TokenizerConfig::band_shift`); 0
    /// where absent.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub band_shift: u8,
}

fn is_zero(v: &u8) -> bool {
    *v == 0
}

fn byte_stride() -> u8 {
    8
}

fn byte_tokens() -> String {
    BlockTokens::Bytes.name().to_string()
}

impl TokenizerSettings {
    /// The format's defaults (`TokenizerConfig::for_format`), capped at what the model has
    /// positions for.
    pub fn for_format(format: Format, model: &Config, jpeg_header_block: bool) -> Self {
        let t = TokenizerConfig::for_format(format);
        TokenizerSettings {
            format: format.name().to_string(),
            max_block_bytes: t.max_block_bytes.min(model.max_block_bytes),
            max_blocks: t.max_blocks,
            jpeg_header_block,
            bit_stride: 8,
            tokens: byte_tokens(),
            train_blocks: None,
            gain_jitter: 0,
            band_mask: 0,
            band_shift: 0,
        }
    }

    /// Reads blocks as `tokens` (see `BlockTokens`).
    pub fn with_tokens(mut self, tokens: BlockTokens) -> Self {
        self.tokens = tokens.name().to_string();
        self
    }

    /// What the ids stand for; an error for an unknown name.
    pub fn block_tokens(&self) -> Result<BlockTokens> {
        BlockTokens::parse(&self.tokens).ok_or_else(|| {
            Error::setting(
                "tokens",
                format!("{:?} (one of {})", self.tokens, BlockTokens::names()),
            )
        })
    }

    /// Reads blocks `stride` bits per id (8, 4, 2 or 1): L grows by `8 / stride` so that the
    /// same blocks fit, capped at what the model has positions for.
    pub fn with_bit_stride(mut self, stride: u8, model: &Config) -> Self {
        let bytes = self.max_block_bytes * usize::from(self.bit_stride) / 8;
        let ids = bytes * 8 / usize::from(stride.max(1));
        self.max_block_bytes = ids.min(model.max_block_bytes);
        self.bit_stride = stride;
        self
    }

    /// Keeps the first `ids` ids of each block (L), at most what the model has positions
    /// for; an error for 0 or more than that.
    pub fn with_max_block_bytes(mut self, ids: usize, model: &Config) -> Result<Self> {
        if ids == 0 || ids > model.max_block_bytes {
            return Err(Error::setting(
                "block bytes",
                format!(
                    "{ids} (1 to the model's max_block_bytes {})",
                    model.max_block_bytes
                ),
            ));
        }
        self.max_block_bytes = ids;
        Ok(self)
    }

    fn format(&self) -> Result<Format> {
        match self.format.as_str() {
            "mp3" => Ok(Format::Mp3),
            "ogg-opus" | "opus" => Ok(Format::OggOpus),
            "jpeg" => Ok(Format::Jpeg),
            other => Err(Error::setting("tokenizer format", other.to_string())),
        }
    }

    /// The tokenizer for training: a random contiguous crop where a file has more than N
    /// blocks (seeded by the run's seed, the epoch and the item).
    pub fn train_config(&self) -> Result<TokenizerConfig> {
        let base = self
            .base()?
            .with_crop(Crop::Random)
            .with_gain_jitter(self.gain_jitter)
            .with_band_mask(self.band_mask)
            .with_band_shift(self.band_shift);
        Ok(match self.train_blocks {
            Some(n) => base.with_max_blocks(n.max(1)),
            None => base,
        })
    }

    /// The tokenizer for evaluation and classification: the N blocks around the middle.
    pub fn eval_config(&self) -> Result<TokenizerConfig> {
        Ok(self.base()?.with_crop(Crop::Centre))
    }

    fn base(&self) -> Result<TokenizerConfig> {
        let config = TokenizerConfig::for_format(self.format()?)
            .with_max_block_bytes(self.max_block_bytes)
            .with_max_blocks(self.max_blocks)
            .with_jpeg_header_block(self.jpeg_header_block)
            .with_bit_stride(self.bit_stride)
            .with_tokens(self.block_tokens()?);
        config
            .validate()
            .map_err(|e| Error::setting("tokenizer", e.to_string()))?;
        Ok(config)
    }
}

/// Where a resumable run stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
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
}

/// Item-weighted sums over the batches of one epoch, from which its means are taken. Saved in
/// `train_state.json` as the array `[loss, classification, reconstruction, correct, items]`,
/// the form earlier checkpoints have.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "[f64; 5]", into = "[f64; 5]")]
pub struct EpochSums {
    /// Σ loss × items.
    pub loss: f64,
    /// Σ classification loss (L_c) × items.
    pub classification: f64,
    /// Σ reconstruction loss (L_r) × items.
    pub reconstruction: f64,
    /// Items classified correctly.
    pub correct: f64,
    /// Items.
    pub items: f64,
}

impl EpochSums {
    /// One batch's contributions: its mean losses times its items, its correct items, its
    /// items.
    pub fn of(g: &tempest_model::BatchGradients) -> Self {
        let n = g.items as f64;
        EpochSums {
            loss: g.loss * n,
            classification: g.classification * n,
            reconstruction: g.reconstruction * n,
            correct: g.correct as f64,
            items: n,
        }
    }

    /// Adds another batch's sums.
    pub fn add(&mut self, other: &EpochSums) {
        self.loss += other.loss;
        self.classification += other.classification;
        self.reconstruction += other.reconstruction;
        self.correct += other.correct;
        self.items += other.items;
    }

    /// Mean loss per item (0 before any item).
    pub fn mean_loss(&self) -> f64 {
        self.loss / self.items.max(1.0)
    }

    /// Mean classification loss per item.
    pub fn mean_classification(&self) -> f64 {
        self.classification / self.items.max(1.0)
    }

    /// Mean reconstruction loss per item.
    pub fn mean_reconstruction(&self) -> f64 {
        self.reconstruction / self.items.max(1.0)
    }

    /// Fraction of items classified correctly.
    pub fn accuracy(&self) -> f64 {
        self.correct / self.items.max(1.0)
    }
}

impl From<[f64; 5]> for EpochSums {
    fn from(a: [f64; 5]) -> Self {
        EpochSums {
            loss: a[0],
            classification: a[1],
            reconstruction: a[2],
            correct: a[3],
            items: a[4],
        }
    }
}

impl From<EpochSums> for [f64; 5] {
    fn from(s: EpochSums) -> Self {
        [
            s.loss,
            s.classification,
            s.reconstruction,
            s.correct,
            s.items,
        ]
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
    /// Tokenizer settings.
    pub tokenizer: &'a TokenizerSettings,
    /// Optimiser and state, for a resumable checkpoint.
    pub resume: Option<(&'a crate::optim::AdamW, &'a TrainState)>,
}

/// Writes a checkpoint atomically (see the module's documentation).
pub fn save(dir: &Path, parts: &CheckpointParts<'_>) -> Result<()> {
    let tmp = with_suffix(dir, ".tmp");
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(Error::io(&tmp))?;
    }
    tempest_model::save(&tmp, parts.config, parts.varmap)?;
    write_json(&tmp.join(CLASSES_FILE), &parts.classes)?;
    write_json(&tmp.join(TOKENIZER_FILE), parts.tokenizer)?;
    if let Some((opt, state)) = parts.resume {
        opt.save(&tmp.join(OPTIMIZER_FILE))?;
        write_json(&tmp.join(STATE_FILE), state)?;
    }
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
    /// How it tokenized files.
    pub tokenizer: TokenizerSettings,
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
    let classes: Vec<String> = read_json(&dir.join(CLASSES_FILE))?;
    let tokenizer: TokenizerSettings = read_json(&dir.join(TOKENIZER_FILE))?;
    if classes.len() != model.config().num_classes {
        return Err(Error::dataset(
            &dir,
            format!(
                "{} class names for a model of {} classes",
                classes.len(),
                model.config().num_classes
            ),
        ));
    }
    Ok(Loaded {
        model,
        classes,
        tokenizer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn block_bytes_set_l_within_the_models_positions() {
        let model = Config::tiny();
        let jpeg = TokenizerSettings::for_format(Format::Jpeg, &model, false);
        let cut = jpeg.clone().with_max_block_bytes(8, &model).unwrap();
        assert_eq!(cut.train_config().unwrap().max_block_bytes, 8);
        assert_eq!(cut.eval_config().unwrap().max_block_bytes, 8);
        for wrong in [0, model.max_block_bytes + 1] {
            let err = jpeg
                .clone()
                .with_max_block_bytes(wrong, &model)
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("{wrong} (1 to")), "{err}");
        }
    }

    #[test]
    fn bit_stride_scales_l_and_reads_back_from_json() {
        let model = Config::tiny();
        let bytes = TokenizerSettings::for_format(Format::Jpeg, &model, false);
        assert_eq!(bytes.bit_stride, 8);
        let nibbles = bytes.clone().with_bit_stride(4, &model);
        assert_eq!(nibbles.max_block_bytes, bytes.max_block_bytes * 2);
        assert_eq!(nibbles.train_config().unwrap().bit_stride, 4);
        // Capped at the model's positions, and back to bytes from there.
        let bits = nibbles.clone().with_bit_stride(1, &model);
        assert_eq!(
            bits.max_block_bytes,
            (bytes.max_block_bytes * 8).min(model.max_block_bytes)
        );
        let json = serde_json::to_string(&nibbles).unwrap();
        let back: TokenizerSettings = serde_json::from_str(&json).unwrap();
        assert_eq!(back, nibbles);
        // A tokenizer.json written before the setting existed reads as bytes.
        let old = r#"{"format":"jpeg","max_block_bytes":160,"max_blocks":1024,"jpeg_header_block":false}"#;
        let old: TokenizerSettings = serde_json::from_str(old).unwrap();
        assert_eq!(old.eval_config().unwrap().bit_stride, 8);
        // A stride the tokenizer cannot read is refused by name.
        let bad = TokenizerSettings {
            bit_stride: 3,
            ..old
        };
        let err = bad.train_config().unwrap_err().to_string();
        assert!(err.contains("bit_stride 3"), "{err}");
    }
}
