//! What a run is told: [`TrainOptions`] (the flags of `train`), the variants an evaluation
//! reads ([`EvalVariants`]), and the model and tokenizer settings derived from them.

use candle_core::Device;
use tempest_model::{Config, DeviceChoice, Precision};
use tempest_tokenize::{BlockTokens, TokenizerConfig};

use crate::optim::{AdamWConfig, CosineSchedule};
use crate::{Dataset, Error, Result};

/// Which variants an evaluation reads.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum EvalVariants {
    /// The first variant of the dataset (the first of `--variants`).
    #[default]
    First,
    /// One named variant (`mp3:32`).
    Named(String),
    /// Each of these, and the mean of their accuracies.
    Average(Vec<String>),
    /// Every variant of the dataset, and the mean.
    All,
    /// Test-time augmentation: each item's prediction is the mean of its class probabilities
    /// over these variants (all of the dataset's when empty), reported as one entry named
    /// after them. An item is counted when at least one of its variants could be read.
    Ensemble(Vec<String>),
}

impl std::str::FromStr for EvalVariants {
    type Err = std::convert::Infallible;

    /// [`EvalVariants::parse`]: every string names something.
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(EvalVariants::parse(s))
    }
}

impl EvalVariants {
    /// Parses `first`, `all`, `mp3:32`, `mp3:20,mp3:32` (each evaluated, accuracies
    /// averaged), `mp3:20+mp3:32` (one prediction per item from both: [`Self::Ensemble`]) or
    /// `ensemble` (all variants as one ensemble).
    pub fn parse(s: &str) -> Self {
        match s.trim() {
            "" | "first" => EvalVariants::First,
            "all" => EvalVariants::All,
            "ensemble" => EvalVariants::Ensemble(Vec::new()),
            list if list.contains('+') => EvalVariants::Ensemble(
                list.split('+')
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty())
                    .collect(),
            ),
            list if list.contains(',') => EvalVariants::Average(
                list.split(',')
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty())
                    .collect(),
            ),
            one => EvalVariants::Named(one.to_string()),
        }
    }

    pub(crate) fn names(&self, dataset: &Dataset) -> Vec<String> {
        let all = dataset.variants();
        match self {
            EvalVariants::First => all.into_iter().take(1).collect(),
            EvalVariants::Named(n) => vec![n.clone()],
            EvalVariants::Average(v) => v.clone(),
            EvalVariants::All => all,
            EvalVariants::Ensemble(v) if v.is_empty() => all,
            EvalVariants::Ensemble(v) => v.clone(),
        }
    }
}

/// What the ids of a format's blocks stand for unless a run says otherwise: for MP3 the
/// codec's fields as values and one id per scalefactor band for the band's energy,
/// requantised from the frame's own symbols (`BlockTokens::FieldsAndEnergy`, since session 13:
/// on both audio development sets above the band lines on validation, docs/audio.md rows
/// 34–35; the band lines, `FieldsAndLines`, were +11 points over the fields alone); for Ogg
/// Opus the fields (`BlockTokens::Fields`; Opus has no bands here); for JPEG the MCU's bytes
/// (the quickstart's recipe).
pub fn default_tokens(format: cff_blocks::Format) -> BlockTokens {
    match format {
        cff_blocks::Format::Mp3 => BlockTokens::FieldsAndEnergy,
        cff_blocks::Format::OggOpus => BlockTokens::Fields,
        _ => BlockTokens::Bytes,
    }
}

/// [`default_tokens`] for one run over files of several formats: MP3's where MP3 is among
/// them, else Opus's, else the bytes. Each format's blocks read as under its own default
/// (field tokens give an Opus packet its fields and a JPEG MCU its bytes; the field ids sit
/// above the 256 bytes), so one vocabulary holds them all.
pub fn default_tokens_for(formats: &[cff_blocks::Format]) -> BlockTokens {
    use cff_blocks::Format;
    [Format::Mp3, Format::OggOpus]
        .into_iter()
        .find(|f| formats.contains(f))
        .map_or(BlockTokens::Bytes, default_tokens)
}

/// How to train.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct TrainOptions {
    /// Passes over the training split.
    pub epochs: usize,
    /// Items per micro-batch.
    pub batch_size: usize,
    /// Micro-batches whose gradients are summed before each optimiser step.
    pub accumulate: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Final learning rate as a fraction of the peak.
    pub min_lr_ratio: f64,
    /// Linear warm-up, as a fraction of all optimiser steps.
    pub warmup: f64,
    /// AdamW's settings.
    pub adamw: AdamWConfig,
    /// Clip the global gradient norm to this (0: no clipping).
    pub max_grad_norm: f64,
    /// Overrides the model configuration's label smoothing.
    pub label_smoothing: Option<f64>,
    /// Overrides the model configuration's mixup α (mixup of block tokens; 0 = off).
    pub mixup: Option<f64>,
    /// Overrides the model configuration's dropout (E_t, E_c and D_t; 0 = off).
    pub dropout: Option<f64>,
    /// Overrides the model configuration's λ (the weight of L_r).
    pub reconstruction_weight: Option<f64>,
    /// Overrides the model configuration's mixer (how M pools a block's states).
    pub mixer: Option<tempest_model::MixerKind>,
    /// Overrides the model configuration's `context_conv` (the width of the convolution over
    /// neighbouring block tokens before E_c; 0 = none).
    pub context_conv: Option<usize>,
    /// Seeds the initial weights, the order of batches, the variant of each item per epoch
    /// and random crops, and the dropout masks (from the seed, the epoch and the batch), so a
    /// CPU run is repeatable.
    pub seed: u64,
    /// Variants trained on (empty: all); each epoch sees each item at one of them, drawn from
    /// the seed, the epoch and the item.
    pub train_variants: Vec<String>,
    /// Variants evaluated after each epoch.
    pub eval_variants: EvalVariants,
    /// Variants of the final test (`None`: [`Self::eval_variants`]); e.g. an
    /// [`EvalVariants::Ensemble`] of moved copies for test-time augmentation, while each
    /// epoch's evaluation reads one variant.
    pub test_variants: Option<EvalVariants>,
    /// Evaluate (and consider for the best checkpoint) after every this many epochs and
    /// after the last one (0 or 1: after every epoch). An epoch without evaluation still
    /// writes its metrics line (training figures only) and the resumable checkpoint.
    /// Evaluation costs the audio recipe a fifth of each epoch (docs/audio.md).
    pub eval_every: usize,
    /// Keep the JPEG header (its tables) as one block in front of the MCUs.
    pub jpeg_header_block: bool,
    /// Bits per id (`TokenizerConfig::bit_stride`): 8 (one id per byte, the default), 4, 2
    /// or 1; saved with the checkpoint so that evaluation and classification read the same.
    pub bit_stride: u8,
    /// L: ids kept of each block (its first ones; `None`: the format's default, capped at
    /// the model's `max_block_bytes`). Blocks cut short keep their true length for the length
    /// embedding, and the loader counts the cuts. Saved with the checkpoint.
    pub block_bytes: Option<usize>,
    /// Per format, fewer ids per block than L (`TokenizerConfig::format_block_bytes`): a
    /// run over files of several formats reads each as its own recipe does (a JPEG MCU's
    /// first 8 bytes beside whole MP3 frames; [`crate::Recipe::for_formats`]). Empty (the
    /// default): L for every format. Saved with the checkpoint.
    pub format_block_bytes: Vec<(cff_blocks::Format, usize)>,
    /// What a block's ids stand for (`BlockTokens`): its bytes (the paper), or the codec's
    /// fields as values, alone or followed by the block's bytes or its own coded data
    /// (docs/audio.md). Field ids widen the model's vocabulary (`BlockTokens::vocab_size`).
    /// `None`: by the format ([`default_tokens`]). Saved with the checkpoint.
    pub tokens: Option<BlockTokens>,
    /// Blocks of each training item kept as a random contiguous run (a random crop in time;
    /// evaluation reads the middle of the format's N). `None`: no crop below N.
    pub train_blocks: Option<usize>,
    /// Loudness jitter of MP3 field tokens while training, in quantiser steps of
    /// `global_gain` (1.5 dB each; `TokenizerConfig::gain_jitter`). 0 (the default): none.
    /// On the spoken words ±4 steps led by 6.8 points with seed 0 but trailed with seeds 1
    /// and 2 (docs/audio.md): no measured gain, so it is off unless asked for.
    pub gain_jitter: u8,
    /// Training only: with MP3 line tokens, silence a random run of up to this many long
    /// scalefactor bands in every frame of a clip (`TokenizerConfig::band_mask`). 0 (the
    /// default): none.
    pub band_mask: u8,
    /// Training only: with MP3 line tokens, move every band id of a clip by a random shift of
    /// up to this many band positions (`TokenizerConfig::band_shift`). 0 (the default): none.
    pub band_shift: u8,
    /// Training only: with MP3 line tokens, silence every band of a random run of up to this
    /// many frames of a clip (`TokenizerConfig::time_mask`). 0 (the default): none.
    pub time_mask: u16,
    /// With MP3 band energies: short-block frames give the long bands' energies, one layout
    /// for every frame (`TokenizerConfig::merge_short_windows`). Saved with the checkpoint.
    pub merge_short_windows: bool,
    /// Field ids the model embeds as ordered values (`tempest_model::OrdinalIds`: each id's
    /// row plus the running sum of its field's learned steps): the band energy levels, or
    /// those and the side-information amounts (`tempest_tokenize::fields::OrdinalFields`).
    /// `None` (the default): every id its own row alone. A model configuration that already
    /// has ordinal ranges keeps them. Saved in the model's `config.json`.
    pub ordinal: Option<tempest_tokenize::fields::OrdinalFields>,
    /// Batches per sorting window of the length-bucketing sampler (`BucketSampler`): items
    /// of similar shape are batched together to cut padding. 1 (the default) turns bucketing
    /// off: plain shuffled batches. Bucketing groups items by length, and where length tells
    /// classes apart (MNIST digits: a 1 has short MCUs) each batch holds a few classes, which
    /// slows learning badly (quickstart, 2 epochs: 28.8 % bucketed by 32 batches against
    /// 43.3 % unbucketed; docs/quickstart.md). The fused CPU layers skip padding, so little is
    /// lost.
    pub bucket_batches: usize,
    /// Loader worker threads (0: tokenize on the training thread).
    pub workers: usize,
    /// Parts each batch is split into whose forward and backward passes run at the same time
    /// (on rayon's threads), their gradients summed, each weighted by its share of the
    /// batch, into the batch's gradient: the optimiser sees the same batch. Small models on a
    /// few CPU cores keep the cores busier this way than by splitting each matrix product
    /// (`tiny` on the quickstart's digits, 2 threads: docs/quickstart.md). 0 (the default):
    /// 2 on the CPU with 2 or more rayon threads, else 1. With dropout each part draws its
    /// masks from a generator of its own, seeded in turn from the run's
    /// (`tempest_model::batch_gradients`). The parts change the sums' rounding (and which
    /// dropout mask an item gets) only; a run is repeatable for a given value.
    pub parallel_parts: usize,
    /// Progress bars on standard error.
    pub progress: bool,
    /// Write the resumable checkpoint every this many optimiser steps as well as after each
    /// epoch (0: after each epoch only).
    pub checkpoint_every: usize,
    /// Stop (saving first, as Ctrl-C does) after this many optimiser steps in total
    /// (`--max-steps`): for tests of resuming, for budgets and for timing a short run.
    pub stop_after_steps: Option<usize>,
    /// Install a Ctrl-C handler that saves the resumable checkpoint and stops.
    pub handle_ctrl_c: bool,
    /// Start a fresh run in a folder that already holds one (its metrics and checkpoints are
    /// replaced). Without it, and without `resume`, such a folder is refused.
    pub overwrite: bool,
    /// Where the model trains and evaluates (`--device cpu|cuda|cuda:N`; the CPU by
    /// default). Checkpoints do not depend on it.
    pub device: DeviceChoice,
    /// The weights' precision (`--dtype f32|bf16`; bf16 on a GPU only).
    pub dtype: Precision,
    /// Start a fresh run from a pretrained checkpoint (`--init`, a checkpoint or run folder):
    /// every variable but the head taken over where the file has it
    /// ([`crate::pretrain::init_from_pretrained`]). Ignored when resuming.
    pub init: Option<std::path::PathBuf>,
    /// Hold E_t and M (with the byte and length embeddings) still for this many epochs: their
    /// gradients are dropped ([`crate::pretrain::BLOCK_ENCODER_PREFIXES`]). 0: none.
    pub freeze_block_encoder: usize,
    /// The ranks of a data-parallel run and how they communicate (`train --dist`; one process,
    /// [`crate::dist::Single`], by default). With several ranks `batch_size` is each rank's:
    /// a step sees `batch_size × world size` items (module [`crate::dist`]).
    pub comm: crate::dist::Comm,
}

impl TrainOptions {
    /// Whether the resumable checkpoint is written after optimiser step `step_index` besides
    /// the epoch's end: every [`TrainOptions::checkpoint_every`] steps (0: never), unless the
    /// step closes the epoch or the run, whose own checkpoint follows.
    pub fn mid_epoch_checkpoint_due(
        &self,
        step_index: usize,
        step: &crate::driver::StepLog,
    ) -> bool {
        let every = self.checkpoint_every;
        every > 0 && step_index.is_multiple_of(every) && !step.end_of_epoch && !step.stopping
    }

    /// Whether epoch `epoch` (from 1) ends with an evaluation: every
    /// [`TrainOptions::eval_every`]th epoch and the last.
    pub fn eval_due(&self, epoch: usize) -> bool {
        self.eval_every <= 1 || epoch.is_multiple_of(self.eval_every) || epoch >= self.epochs
    }

    /// The options this process's rank runs with: these on rank 0 (or without a
    /// communicator), the same without progress bars on the other ranks (progress is rank
    /// 0's to show).
    pub fn for_rank(&self) -> std::borrow::Cow<'_, TrainOptions> {
        if self.comm.is_root() {
            std::borrow::Cow::Borrowed(self)
        } else {
            std::borrow::Cow::Owned(TrainOptions {
                progress: false,
                ..self.clone()
            })
        }
    }

    /// What the ids of `format`'s blocks stand for: [`TrainOptions::tokens`], or by default
    /// [`default_tokens`].
    pub fn block_tokens(&self, format: cff_blocks::Format) -> BlockTokens {
        self.block_tokens_for(&[format])
    }

    /// [`TrainOptions::block_tokens`] for a run over files of `formats`
    /// ([`default_tokens_for`]).
    pub fn block_tokens_for(&self, formats: &[cff_blocks::Format]) -> BlockTokens {
        self.tokens.unwrap_or(default_tokens_for(formats))
    }

    /// The model configuration a run on files of `format` trains: `base` with `classes`
    /// outputs, the vocabulary its tokens need and these options' label smoothing and λ
    /// overrides, validated.
    pub fn model_config(
        &self,
        base: &Config,
        classes: usize,
        format: cff_blocks::Format,
    ) -> Result<Config> {
        self.model_config_for(base, classes, &[format])
    }

    /// [`TrainOptions::model_config`] for a run over files of `formats`: the vocabulary of
    /// [`TrainOptions::block_tokens_for`].
    pub fn model_config_for(
        &self,
        base: &Config,
        classes: usize,
        formats: &[cff_blocks::Format],
    ) -> Result<Config> {
        let mut config = base.clone().with_num_classes(classes);
        if let Some(ls) = self.label_smoothing {
            config.label_smoothing = ls;
        }
        if let Some(a) = self.mixup {
            config.mixup = a;
        }
        if let Some(p) = self.dropout {
            config.dropout = p as f32;
        }
        if let Some(l) = self.reconstruction_weight {
            config.reconstruction_weight = l;
        }
        if let Some(m) = self.mixer {
            config.mixer = m;
        }
        if let Some(k) = self.context_conv {
            config.context_conv = k;
        }
        let tokens = self.block_tokens_for(formats);
        config.vocab_size = config.vocab_size.max(tokens.vocab_size());
        // Ids that are a value and a class embed as the sum of two rows (the band energies'
        // levels shared with `fields+energy`), unless the configuration says otherwise.
        if config.factored_ids.is_empty() {
            config.factored_ids = tokens
                .id_factors()
                .into_iter()
                .map(
                    |(start, values, classes, value_start)| tempest_model::IdFactors {
                        start,
                        values,
                        classes,
                        value_start,
                    },
                )
                .collect();
        }
        if let (Some(which), true) = (self.ordinal, config.ordinal_ids.is_empty()) {
            config.ordinal_ids = which
                .ranges(config.vocab_size)
                .into_iter()
                .map(|(start, values)| tempest_model::OrdinalIds { start, values })
                .collect();
        }
        config
            .validate()
            .map_err(|w| Error::setting("model config", w))?;
        Ok(config)
    }

    /// How files of `format` are tokenized for a model of `config`: the format's defaults
    /// with these options' JPEG header block, bit stride, L, tokens, augmentations and
    /// training crop. L is the format's, in ids of `bit_stride` bits (so that the same blocks
    /// fit), or [`TrainOptions::block_bytes`], and never more than the model has positions
    /// for.
    pub fn tokenizer(
        &self,
        format: cff_blocks::Format,
        config: &Config,
    ) -> Result<TokenizerConfig> {
        self.tokenizer_for(&[format], config)
    }

    /// [`TrainOptions::tokenizer`] for one run over files of `formats`: the largest of their
    /// defaults ([`TokenizerConfig::for_formats`]), the tokens of
    /// [`TrainOptions::block_tokens_for`], and [`TrainOptions::format_block_bytes`]' caps for
    /// the formats among them.
    pub fn tokenizer_for(
        &self,
        formats: &[cff_blocks::Format],
        config: &Config,
    ) -> Result<TokenizerConfig> {
        let defaults = TokenizerConfig::for_formats(formats);
        let max_block_bytes = match self.block_bytes {
            Some(ids) if ids == 0 || ids > config.max_block_bytes => {
                return Err(Error::setting(
                    "block bytes",
                    format!(
                        "{ids} (1 to the model's max_block_bytes {})",
                        config.max_block_bytes
                    ),
                ))
            }
            Some(ids) => ids,
            None => {
                let bytes = defaults.max_block_bytes.min(config.max_block_bytes);
                (bytes * 8 / usize::from(self.bit_stride.max(1))).min(config.max_block_bytes)
            }
        };
        if self.train_blocks == Some(0) {
            return Err(Error::setting("crop", "0 blocks (at least 1)"));
        }
        let mut tok = defaults
            .with_max_block_bytes(max_block_bytes)
            .with_jpeg_header_block(self.jpeg_header_block)
            .with_bit_stride(self.bit_stride)
            .with_tokens(self.block_tokens_for(formats))
            .with_gain_jitter(self.gain_jitter)
            .with_band_mask(self.band_mask)
            .with_band_shift(self.band_shift)
            .with_time_mask(self.time_mask)
            .with_merge_short_windows(self.merge_short_windows)
            .with_train_blocks(self.train_blocks);
        for &(format, ids) in &self.format_block_bytes {
            if formats.contains(&format) {
                tok = tok.with_format_block_bytes(format, ids);
            }
        }
        tok.train_config()
            .map_err(|e| Error::setting("tokenizer", e.to_string()))?;
        Ok(tok)
    }

    /// Batch size and accumulation must be at least 1 (checked by [`crate::fit_loop`], and
    /// by `train` and `pretrain` before they touch the run folder).
    pub fn check_batch(&self) -> Result<()> {
        if self.batch_size == 0 || self.accumulate == 0 {
            return Err(Error::setting(
                "batch",
                "batch size and accumulation must be ≥ 1",
            ));
        }
        Ok(())
    }

    /// The parts each batch is split into ([`TrainOptions::parallel_parts`]) on `device`.
    pub fn batch_parts(&self, device: &Device) -> usize {
        match self.parallel_parts {
            0 => tempest_model::auto_parts(device),
            k => k,
        }
    }

    /// Items per batch across all ranks: `batch_size × world size`.
    pub fn global_batch(&self) -> usize {
        self.batch_size * self.comm.world_size()
    }

    /// Warm-up then cosine decay over the optimiser steps of `epochs` epochs of
    /// `items_per_epoch` items (batches of [`Self::global_batch`], `accumulate` batches a
    /// step).
    pub fn schedule(&self, items_per_epoch: usize) -> CosineSchedule {
        let batches_per_epoch = items_per_epoch.div_ceil(self.global_batch().max(1));
        let total = batches_per_epoch.div_ceil(self.accumulate.max(1)) * self.epochs;
        CosineSchedule {
            peak: self.lr,
            min: self.lr * self.min_lr_ratio,
            warmup: ((total as f64 * self.warmup).round() as usize).max(1),
            total,
        }
    }
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            epochs: 10,
            batch_size: 64,
            accumulate: 1,
            lr: 1e-3,
            min_lr_ratio: 0.01,
            warmup: 0.05,
            adamw: AdamWConfig::default(),
            max_grad_norm: 1.0,
            label_smoothing: None,
            mixup: None,
            dropout: None,
            reconstruction_weight: None,
            mixer: None,
            context_conv: None,
            seed: 0,
            train_variants: Vec::new(),
            eval_variants: EvalVariants::First,
            test_variants: None,
            jpeg_header_block: false,
            bit_stride: 8,
            block_bytes: None,
            format_block_bytes: Vec::new(),
            tokens: None,
            train_blocks: None,
            gain_jitter: 0,
            band_mask: 0,
            time_mask: 0,
            merge_short_windows: false,
            band_shift: 0,
            ordinal: None,
            bucket_batches: 1,
            workers: 2,
            parallel_parts: 0,
            progress: true,
            checkpoint_every: 0,
            eval_every: 1,
            stop_after_steps: None,
            handle_ctrl_c: false,
            overwrite: false,
            device: DeviceChoice::Cpu,
            dtype: Precision::F32,
            init: None,
            freeze_block_encoder: 0,
            comm: crate::dist::Comm::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cff_blocks::Format;

    #[test]
    fn block_bytes_set_l_within_the_models_positions() {
        let model = Config::tiny();
        let mut o = TrainOptions {
            block_bytes: Some(8),
            ..TrainOptions::default()
        };
        let cut = o.tokenizer(Format::Jpeg, &model).unwrap();
        assert_eq!(cut.train_config().unwrap().max_block_bytes, 8);
        assert_eq!(cut.eval_config().unwrap().max_block_bytes, 8);
        for wrong in [0, model.max_block_bytes + 1] {
            o.block_bytes = Some(wrong);
            let err = o.tokenizer(Format::Jpeg, &model).unwrap_err().to_string();
            assert!(err.contains(&format!("{wrong} (1 to")), "{err}");
        }
    }

    #[test]
    fn bit_stride_scales_l_within_the_models_positions() {
        let model = Config::tiny();
        let mut o = TrainOptions::default();
        let bytes = o.tokenizer(Format::Jpeg, &model).unwrap();
        assert_eq!(bytes.bit_stride, 8);
        o.bit_stride = 4;
        let nibbles = o.tokenizer(Format::Jpeg, &model).unwrap();
        assert_eq!(nibbles.max_block_bytes, bytes.max_block_bytes * 2);
        assert_eq!(nibbles.train_config().unwrap().bit_stride, 4);
        o.bit_stride = 1;
        let bits = o.tokenizer(Format::Jpeg, &model).unwrap();
        assert_eq!(
            bits.max_block_bytes,
            (bytes.max_block_bytes * 8).min(model.max_block_bytes)
        );
        // Saved and read back as they are.
        let json = serde_json::to_string(&nibbles).unwrap();
        let back: TokenizerConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, nibbles);
    }

    #[test]
    fn overrides_reach_the_model_config_and_are_checked() {
        let base = Config::tiny();
        assert_eq!(base.dropout, 0.0);
        let mut o = TrainOptions {
            dropout: Some(0.1),
            mixup: Some(0.4),
            label_smoothing: Some(0.2),
            ..TrainOptions::default()
        };
        let c = o.model_config(&base, 5, Format::Mp3).unwrap();
        assert_eq!((c.dropout, c.mixup, c.label_smoothing), (0.1, 0.4, 0.2));
        assert_eq!(c.num_classes, 5);
        for wrong in [1.0, -0.1] {
            o.dropout = Some(wrong);
            let err = o
                .model_config(&base, 5, Format::Mp3)
                .unwrap_err()
                .to_string();
            assert!(err.contains("dropout"), "{err}");
        }
    }

    #[test]
    fn ordinal_fields_become_the_models_ordinal_ranges() {
        use tempest_tokenize::fields::{field_range, OrdinalFields};
        let base = Config::tiny();
        let energy = field_range("mp3.band_energy").unwrap();
        let mut o = TrainOptions::default();
        // MP3's default tokens (fields and band energies): none unless asked.
        let c = o.model_config(&base, 5, Format::Mp3).unwrap();
        assert!(c.ordinal_ids.is_empty());
        o.ordinal = Some(OrdinalFields::Levels);
        let c = o.model_config(&base, 5, Format::Mp3).unwrap();
        assert_eq!(c.ordinal_ids.len(), 2);
        assert!(c
            .ordinal_ids
            .iter()
            .any(|r| r.start == energy.start && r.values == energy.end - energy.start));
        o.ordinal = Some(OrdinalFields::All);
        let all = o.model_config(&base, 5, Format::Mp3).unwrap();
        assert_eq!(all.ordinal_ids.len(), 14);
        // Ogg Opus's field tokens have no band energies: its side amounts only.
        let opus = o.model_config(&base, 5, Format::OggOpus).unwrap();
        assert!(!opus.ordinal_ids.is_empty());
        assert!(opus
            .ordinal_ids
            .iter()
            .all(|r| (r.start + r.values) as usize <= opus.vocab_size));
        // A configuration with ranges of its own keeps them.
        let mut own = base.clone();
        own.ordinal_ids = vec![tempest_model::OrdinalIds {
            start: 3,
            values: 5,
        }];
        let kept = o.model_config(&own, 5, Format::Mp3).unwrap();
        assert_eq!(kept.ordinal_ids, own.ordinal_ids);
    }
}
