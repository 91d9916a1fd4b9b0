//! The training loop and evaluation.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tempest_model::{Config, DeviceChoice, Precision, Tempest};
use tempest_tokenize::{
    choose_variants, BlockTokens, BucketSampler, Entry, HostBatch, ItemShape, Loader, LoaderConfig,
    LoaderStats, TokenizerConfig, VariantChoice,
};

use crate::checkpoint::{self, CheckpointParts, EpochSums, TokenizerSettings, TrainState};
use crate::fit::{fit_loop, Driver, EpochLog, Outcome, StepLog};
use crate::metrics::{Metrics, Tally};
use crate::optim::{AdamW, AdamWConfig, CosineSchedule};
use crate::{init_seeded, Dataset, Error, Result, SplitPlan};

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

    fn names(&self, dataset: &Dataset) -> Vec<String> {
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
/// codec's fields as values and one id per scalefactor band from the entropy-decoded main data
/// (`BlockTokens::FieldsAndLines`: on the spoken-word development set +11 points on validation
/// over the fields alone, docs/audio.md); for Ogg Opus the fields (`BlockTokens::Fields`; Opus
/// has no lines here); for JPEG the MCU's bytes (the quickstart's recipe).
pub fn default_tokens(format: cff_blocks::Format) -> BlockTokens {
    match format {
        cff_blocks::Format::Mp3 => BlockTokens::FieldsAndLines,
        cff_blocks::Format::OggOpus => BlockTokens::Fields,
        _ => BlockTokens::Bytes,
    }
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
    /// Overrides the model configuration's λ (the weight of L_r).
    pub reconstruction_weight: Option<f64>,
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
    /// Keep the JPEG header (its tables) as one block in front of the MCUs.
    pub jpeg_header_block: bool,
    /// Bits per id (`TokenizerConfig::bit_stride`): 8 (one id per byte, the default), 4, 2
    /// or 1; saved with the checkpoint so that evaluation and classification read the same.
    pub bit_stride: u8,
    /// L: ids kept of each block (its first ones; `None`: the format's default, capped at
    /// the model's `max_block_bytes`). Blocks cut short keep their true length for the length
    /// embedding, and the loader counts the cuts. Saved with the checkpoint.
    pub block_bytes: Option<usize>,
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
}

impl TrainOptions {
    /// What the ids of `format`'s blocks stand for: [`TrainOptions::tokens`], or by default
    /// [`default_tokens`].
    pub fn block_tokens(&self, format: cff_blocks::Format) -> BlockTokens {
        self.tokens.unwrap_or(default_tokens(format))
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
        let mut config = base.clone().with_num_classes(classes);
        if let Some(ls) = self.label_smoothing {
            config.label_smoothing = ls;
        }
        if let Some(a) = self.mixup {
            config.mixup = a;
        }
        if let Some(l) = self.reconstruction_weight {
            config.reconstruction_weight = l;
        }
        config.vocab_size = config
            .vocab_size
            .max(self.block_tokens(format).vocab_size());
        config
            .validate()
            .map_err(|w| Error::setting("model config", w))?;
        Ok(config)
    }

    /// How files of `format` are tokenized for a model of `config`: the format's defaults
    /// with these options' JPEG header block, bit stride, L, tokens and training crop.
    pub fn tokenizer(
        &self,
        format: cff_blocks::Format,
        config: &Config,
    ) -> Result<TokenizerSettings> {
        let tok = TokenizerSettings::for_format(format, config, self.jpeg_header_block)
            .with_bit_stride(self.bit_stride, config)
            .with_tokens(self.block_tokens(format));
        let mut tok = match self.block_bytes {
            Some(ids) => tok.with_max_block_bytes(ids, config)?,
            None => tok,
        };
        tok.gain_jitter = self.gain_jitter;
        tok.band_mask = self.band_mask;
        tok.band_shift = self.band_shift;
        if let Some(n) = self.train_blocks {
            if n == 0 {
                return Err(Error::setting("crop", "0 blocks (at least 1)"));
            }
            tok.train_blocks = Some(n);
        }
        tok.train_config()?;
        Ok(tok)
    }

    /// The parts each batch is split into ([`TrainOptions::parallel_parts`]) on `device`.
    pub fn batch_parts(&self, device: &Device) -> usize {
        match self.parallel_parts {
            0 => tempest_model::auto_parts(device),
            k => k,
        }
    }

    /// Warm-up then cosine decay over the optimiser steps of `epochs` epochs of
    /// `items_per_epoch` items (batches of `batch_size`, `accumulate` batches a step).
    pub fn schedule(&self, items_per_epoch: usize) -> CosineSchedule {
        let batches_per_epoch = items_per_epoch.div_ceil(self.batch_size.max(1));
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
            reconstruction_weight: None,
            seed: 0,
            train_variants: Vec::new(),
            eval_variants: EvalVariants::First,
            test_variants: None,
            jpeg_header_block: false,
            bit_stride: 8,
            block_bytes: None,
            tokens: None,
            train_blocks: None,
            gain_jitter: 0,
            band_mask: 0,
            band_shift: 0,
            bucket_batches: 1,
            workers: 2,
            parallel_parts: 0,
            progress: true,
            checkpoint_every: 0,
            stop_after_steps: None,
            handle_ctrl_c: false,
            overwrite: false,
            device: DeviceChoice::Cpu,
            dtype: Precision::F32,
        }
    }
}

/// One evaluation.
#[derive(Debug, Clone)]
pub struct EvalReport {
    /// Metrics per variant evaluated.
    pub variants: Vec<(String, Metrics)>,
    /// Mean accuracy over the variants.
    pub accuracy: f64,
    /// Files read and skipped.
    pub stats: LoaderStats,
    /// Skipped files: path → reason.
    pub skipped: BTreeMap<String, String>,
    /// Items per second.
    pub items_per_s: f64,
}

impl EvalReport {
    fn to_json(&self) -> serde_json::Value {
        json!({
            "accuracy": self.accuracy,
            "items_per_s": self.items_per_s,
            "skipped": self.stats.files_skipped(),
            "variants": self.variants.iter().map(|(v, m)| json!({"variant": v, "metrics": m})).collect::<Vec<_>>(),
        })
    }
}

/// How a training run ended.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// Stopped early (Ctrl-C or `stop_after_steps`) after saving; `--resume` continues it.
    pub interrupted: bool,
    /// Epochs completed.
    pub epochs: usize,
    /// Optimiser steps taken.
    pub steps: usize,
    /// Best selection accuracy and its epoch (validation, or test when there is none).
    pub best: Option<(f64, usize)>,
    /// The final test (absent when interrupted).
    pub test: Option<EvalReport>,
    /// Training files read and skipped, over all epochs of this process.
    pub train_stats: LoaderStats,
    /// Evaluation files read and skipped, over all evaluations of this process.
    pub eval_stats: LoaderStats,
    /// Every skipped file: path → reason.
    pub skipped: BTreeMap<String, String>,
    /// Training seconds, including those before a resume.
    pub elapsed_s: f64,
    /// Items trained on in this process (all epochs, a partial one included).
    pub train_items: u64,
    /// Seconds those items took (forward, backward, optimiser; evaluation excluded).
    pub train_seconds: f64,
    /// The device the run trained on.
    pub device: DeviceChoice,
}

impl RunReport {
    /// Training items per second in this process.
    pub fn train_items_per_s(&self) -> f64 {
        self.train_items as f64 / self.train_seconds.max(1e-9)
    }

    /// One line: steps, items, seconds and items/s of the training in this process, and the
    /// device.
    pub fn speed_summary(&self) -> String {
        format!(
            "trained {} steps on {}: {} items in {:.1} s, {:.1} items/s\n",
            self.steps,
            self.device,
            self.train_items,
            self.train_seconds,
            self.train_items_per_s()
        )
    }

    /// Lines saying how many files were used and skipped, and why.
    pub fn files_summary(&self) -> String {
        let mut s = String::new();
        let line = |name: &str, st: &LoaderStats| {
            let reasons: Vec<String> = st.skipped.iter().map(|(r, n)| format!("{r} {n}")).collect();
            format!(
                "{name}: {} file reads used, {} skipped{}{}\n",
                st.files_used,
                st.files_skipped(),
                if reasons.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", reasons.join(", "))
                },
                if st.truncated_blocks == 0 {
                    String::new()
                } else {
                    format!("; {} blocks cut to L", st.truncated_blocks)
                }
            )
        };
        s.push_str(&line("training", &self.train_stats));
        s.push_str(&line("evaluation", &self.eval_stats));
        for (path, why) in self.skipped.iter().take(20) {
            s.push_str(&format!("  skipped {path}: {why}\n"));
        }
        if self.skipped.len() > 20 {
            s.push_str(&format!("  … and {} more\n", self.skipped.len() - 20));
        }
        s
    }
}

static STOP: AtomicBool = AtomicBool::new(false);
static HANDLER: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Installs (once per process) a Ctrl-C handler that asks running trainings to save and stop.
/// A second Ctrl-C while saving is not caught specially: the checkpoint swap is atomic.
pub fn install_ctrl_c_handler() -> bool {
    *HANDLER.get_or_init(|| ctrlc::set_handler(|| STOP.store(true, Ordering::SeqCst)).is_ok())
}

fn bar(progress: bool, len: u64, what: String) -> ProgressBar {
    if !progress {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:>14} [{bar:30}] {pos}/{len} {per_sec} ETA {eta} {prefix}",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what);
    pb
}

/// The format of a dataset: that of the first readable file among the `samples`.
pub fn detect_format(dataset: &Dataset) -> Result<cff_blocks::Format> {
    for s in &dataset.samples {
        for (_, p) in &s.variants {
            let Ok(mut f) = fs::File::open(p) else {
                continue;
            };
            let mut head = [0u8; 16];
            let mut n = 0;
            use std::io::Read;
            while n < head.len() {
                match f.read(&mut head[n..]) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k,
                }
            }
            if let Ok(fmt) = cff_blocks::detect(&head[..n]) {
                return Ok(fmt);
            }
        }
    }
    Err(Error::setting("dataset", "no file of a known format"))
}

/// Evaluates `model` on the samples `indices` of `dataset`.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    model: &Tempest,
    dataset: &Dataset,
    indices: &[usize],
    variants: &EvalVariants,
    tokenizer: &TokenizerConfig,
    batch_size: usize,
    workers: usize,
    progress: bool,
) -> Result<EvalReport> {
    let device = model.device().clone();
    let names = variants.names(dataset);
    let classes = model.config().num_classes;
    let start = Instant::now();
    let mut out = EvalReport {
        variants: Vec::new(),
        accuracy: 0.0,
        stats: LoaderStats::default(),
        skipped: BTreeMap::new(),
        items_per_s: 0.0,
    };
    let mut total_items = 0u64;
    // Ensemble: per item, the sum of its class probabilities over the variants read and
    // how many there were.
    let ensemble = matches!(variants, EvalVariants::Ensemble(_));
    let mut sums: BTreeMap<u64, (u32, Vec<f64>, u32)> = BTreeMap::new();
    for name in &names {
        let entries: Vec<Entry> = indices
            .iter()
            .filter_map(|&i| {
                let s = dataset.samples.get(i)?;
                Some(Entry {
                    path: s.variant(name)?.to_path_buf(),
                    label: s.label,
                    item: i as u64,
                })
            })
            .collect();
        if entries.is_empty() {
            return Err(Error::setting(
                "eval variants",
                format!("no item of the split has variant {name:?}"),
            ));
        }
        let mut tally = Tally::new(classes);
        variant_logits(
            model,
            &device,
            entries,
            name,
            tokenizer,
            batch_size,
            workers,
            progress,
            &mut out,
            |item, label, row| {
                if ensemble {
                    let slot = sums
                        .entry(item)
                        .or_insert_with(|| (label, vec![0.0; row.len()], 0));
                    add_probabilities(&mut slot.1, row);
                    slot.2 += 1;
                } else {
                    tally.add(label as usize, row);
                }
            },
        )?;
        if !ensemble {
            total_items += tally.items();
            out.variants.push((name.clone(), tally.metrics()));
        }
    }
    if ensemble {
        let mut tally = Tally::new(classes);
        for (label, sum, n) in sums.values() {
            // log of the mean probability: its softmax is the mean itself, so the tally's
            // argmax, top-5 and cross-entropy read the ensemble's prediction.
            let row: Vec<f32> = sum
                .iter()
                .map(|p| (p / f64::from(*n)).max(1e-30).ln() as f32)
                .collect();
            tally.add(*label as usize, &row);
        }
        total_items += tally.items();
        out.variants
            .push((format!("ensemble({})", names.join("+")), tally.metrics()));
    }
    out.accuracy = out.variants.iter().map(|(_, m)| m.accuracy).sum::<f64>()
        / out.variants.len().max(1) as f64;
    out.items_per_s = total_items as f64 / start.elapsed().as_secs_f64().max(1e-9);
    if total_items == 0 {
        return Err(Error::Empty {
            split: "evaluation".into(),
            skipped: out.stats.files_skipped(),
        });
    }
    Ok(out)
}

/// Adds the softmax of `logits` to `sum`.
fn add_probabilities(sum: &mut [f64], logits: &[f32]) {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let z: f64 = logits.iter().map(|&x| (x as f64 - max).exp()).sum();
    for (s, &x) in sum.iter_mut().zip(logits) {
        *s += (x as f64 - max).exp() / z;
    }
}

/// Forwards every entry of one variant (batches `parts` at a time on rayon's threads, as
/// training splits its batches) and hands each item's logits to `each` in order: (dataset
/// index, label, logits). Skipped files and loader counts go into `out`.
#[allow(clippy::too_many_arguments)]
fn variant_logits(
    model: &Tempest,
    device: &Device,
    entries: Vec<Entry>,
    name: &str,
    tokenizer: &TokenizerConfig,
    batch_size: usize,
    workers: usize,
    progress: bool,
    out: &mut EvalReport,
    mut each: impl FnMut(u64, u32, &[f32]),
) -> Result<()> {
    let plan: Vec<Vec<usize>> = (0..entries.len())
        .collect::<Vec<_>>()
        .chunks(batch_size.max(1))
        .map(<[usize]>::to_vec)
        .collect();
    let entries = Arc::new(entries);
    let pb = bar(progress, entries.len() as u64, format!("eval {name}"));
    let mut loader = Loader::new(
        Arc::clone(&entries),
        plan,
        tokenizer.clone(),
        &LoaderConfig::default().with_workers(workers),
    );
    let parts = tempest_model::auto_parts(device);
    loop {
        let group: Vec<_> = loader.by_ref().take(parts).collect();
        if group.is_empty() {
            break;
        }
        for lb in &group {
            for s in &lb.skipped {
                if let Some(e) = entries.get(s.entry) {
                    out.skipped
                        .insert(e.path.display().to_string(), s.message.clone());
                }
            }
            pb.inc((lb.entries.len() + lb.skipped.len()) as u64);
        }
        let host: Vec<(Vec<usize>, HostBatch)> = group
            .into_iter()
            .filter_map(|lb| Some((lb.entries, lb.batch?)))
            .collect();
        let forward = |hb: &HostBatch| -> Result<Vec<Vec<f32>>> {
            let batch = hb.to_tensors(device)?;
            Ok(model
                .forward(&batch, false)?
                .logits
                .to_dtype(DType::F32)?
                .to_vec2::<f32>()?)
        };
        let logits: Vec<Result<Vec<Vec<f32>>>> = if host.len() > 1 {
            use rayon::prelude::*;
            host.par_iter().map(|(_, hb)| forward(hb)).collect()
        } else {
            host.iter().map(|(_, hb)| forward(hb)).collect()
        };
        for ((ids, hb), logits) in host.iter().zip(logits) {
            for ((row, label), id) in logits?.iter().zip(&hb.labels).zip(ids) {
                let item = entries.get(*id).map_or(*id as u64, |e| e.item);
                each(item, *label, row);
            }
        }
    }
    pb.finish_and_clear();
    merge_stats(&mut out.stats, loader.stats());
    Ok(())
}

fn merge_stats(into: &mut LoaderStats, from: &LoaderStats) {
    into.files_used += from.files_used;
    into.input_bytes += from.input_bytes;
    into.truncated_blocks += from.truncated_blocks;
    for (r, n) in &from.skipped {
        *into.skipped.entry(r).or_default() += n;
    }
}

/// A training run in `run_dir`: trains on `plan.train`, evaluates every epoch on
/// `plan.validation` (or `plan.test` when there is no validation split), keeps the best
/// checkpoint in `run_dir/best` and a resumable one in `run_dir/last`, appends one JSON line
/// per epoch to `run_dir/metrics.jsonl`, and ends with a test on `plan.test` of the best
/// checkpoint (with a validation split) or of the last weights (without one: choosing an
/// epoch on the test split would overstate the accuracy).
///
/// `resume`: continue from `run_dir/last` (same dataset, plan and options); on the CPU with
/// dropout 0 the weights reached equal those of an uninterrupted run.
pub fn train(
    dataset: &Dataset,
    plan: &SplitPlan,
    model_config: &Config,
    options: &TrainOptions,
    run_dir: &Path,
    resume: bool,
) -> Result<RunReport> {
    let o = options;
    let device = o.device.open()?;
    let dtype = o.dtype.dtype(&device)?;
    if o.batch_size == 0 || o.accumulate == 0 {
        return Err(Error::setting(
            "batch",
            "batch size and accumulation must be ≥ 1",
        ));
    }
    fs::create_dir_all(run_dir).map_err(Error::io(run_dir))?;
    if o.handle_ctrl_c {
        install_ctrl_c_handler();
    }
    STOP.store(false, Ordering::SeqCst);

    let format = detect_format(dataset)?;
    let config = o.model_config(model_config, dataset.classes.len(), format)?;

    let tok = o.tokenizer(format, &config)?;
    let train_tok = tok.train_config()?;
    let eval_tok = tok.eval_config()?;

    // The training items and their variants.
    let train_idx = dataset.select(&plan.train);
    let wanted: Vec<String> = if o.train_variants.is_empty() {
        dataset.variants()
    } else {
        o.train_variants.clone()
    };
    let per_item: Vec<Vec<(PathBuf, u64)>> = train_idx
        .iter()
        .map(|&i| {
            dataset.samples[i]
                .variants
                .iter()
                .filter(|(v, _)| wanted.contains(v))
                .map(|(_, p)| (p.clone(), fs::metadata(p).map(|m| m.len()).unwrap_or(0)))
                .collect()
        })
        .collect();
    let counts: Vec<usize> = per_item.iter().map(Vec::len).collect();
    let items_per_epoch = counts.iter().filter(|&&c| c > 0).count();
    if items_per_epoch == 0 {
        return Err(Error::Empty {
            split: plan.train.join("+"),
            skipped: 0,
        });
    }
    let schedule = o.schedule(items_per_epoch);
    let sampler = BucketSampler::new(o.batch_size, o.seed).with_bucket_batches(o.bucket_batches);

    // Model, optimiser, state.
    let last_dir = run_dir.join("last");
    let best_dir = run_dir.join("best");
    let (model, varmap, mut opt, mut state) =
        match checkpoint::resolve(&last_dir).filter(|_| resume) {
            Some(dir) => {
                let (model, varmap) = tempest_model::load_trainable(&dir, &device, dtype)?;
                let mut opt = AdamW::new(&varmap, o.adamw)?;
                opt.load(&dir.join(checkpoint::OPTIMIZER_FILE), &device)?;
                let state: TrainState = checkpoint::read_json(&dir.join(checkpoint::STATE_FILE))?;
                if state.seed != o.seed {
                    return Err(Error::setting(
                        "seed",
                        format!(
                            "the run was started with seed {}, not {}",
                            state.seed, o.seed
                        ),
                    ));
                }
                trim_metrics(&run_dir.join("metrics.jsonl"), state.epoch)?;
                (model, varmap, opt, state)
            }
            None => {
                if resume {
                    return Err(Error::dataset(&last_dir, "nothing to resume"));
                }
                let metrics = run_dir.join("metrics.jsonl");
                let earlier = [&metrics, &last_dir, &best_dir];
                if !o.overwrite && earlier.iter().any(|p| p.exists()) {
                    return Err(Error::setting(
                        "run folder",
                        format!(
                            "{} already holds a run (metrics.jsonl, last/ or best/): give \
                             --resume to continue it or --overwrite to start it again",
                            run_dir.display()
                        ),
                    ));
                }
                let _ = fs::remove_file(&metrics);
                let (model, varmap) = init_seeded(&config, &device, dtype, o.seed)?;
                let opt = AdamW::new(&varmap, o.adamw)?;
                let state = TrainState {
                    seed: o.seed,
                    ..TrainState::default()
                };
                (model, varmap, opt, state)
            }
        };
    let config = model.config().clone();
    let parts = o.batch_parts(&device);
    let select_split = if plan.validation.is_empty() {
        &plan.test
    } else {
        &plan.validation
    };
    let mut report = RunReport {
        interrupted: false,
        epochs: state.epoch,
        steps: state.step,
        best: state.best,
        test: None,
        train_stats: LoaderStats::default(),
        eval_stats: LoaderStats::default(),
        skipped: BTreeMap::new(),
        elapsed_s: state.elapsed_s,
        train_items: 0,
        train_seconds: 0.0,
        device: DeviceChoice::of(&device),
    };
    let metrics_file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(run_dir.join("metrics.jsonl"))
        .map_err(Error::io(run_dir))?;
    let mut driver = FileDriver {
        model: &model,
        device: &device,
        dataset,
        options: o,
        train_idx: &train_idx,
        per_item: &per_item,
        counts: &counts,
        sampler: &sampler,
        train_tok: &train_tok,
        eval_tok: &eval_tok,
        parts,
        epoch: Epoch::default(),
        report: &mut report,
        schedule: &schedule,
        run_dir,
        last_dir: &last_dir,
        best_dir: &best_dir,
        metrics_file,
        select_split,
        select_idx: dataset.select(select_split),
        has_validation: !plan.validation.is_empty(),
        parts_saved: CheckpointParts {
            config: &config,
            varmap: &varmap,
            classes: &dataset.classes,
            tokenizer: &tok,
            resume: None,
        },
        process_start: Instant::now(),
        elapsed_before: state.elapsed_s,
    };
    let outcome = fit_loop(&mut driver, &mut opt, &schedule, &mut state, o)?;
    let (process_start, elapsed_before, mut metrics_file) = (
        driver.process_start,
        driver.elapsed_before,
        driver.metrics_file,
    );
    report.epochs = state.epoch;
    report.steps = state.step;
    report.best = state.best;
    report.elapsed_s = elapsed_before + process_start.elapsed().as_secs_f64();
    if outcome == Outcome::Interrupted {
        report.interrupted = true;
        return Ok(report);
    }

    // The final test: the best checkpoint if a validation split chose it, else the last weights.
    let test_idx = dataset.select(&plan.test);
    let test_variants = o.test_variants.as_ref().unwrap_or(&o.eval_variants);
    let best = if plan.validation.is_empty() {
        None
    } else {
        Some(checkpoint::load_as(&best_dir, &device, dtype)?)
    };
    let tested = evaluate(
        best.as_ref().map_or(&model, |b| &b.model),
        dataset,
        &test_idx,
        test_variants,
        &eval_tok,
        o.batch_size.max(64),
        o.workers,
        o.progress,
    )?;
    merge_stats(&mut report.eval_stats, &tested.stats);
    report.skipped.extend(tested.skipped.clone());
    let line =
        json!({"test_split": plan.test, "test": tested.to_json(), "elapsed_s": report.elapsed_s});
    writeln!(metrics_file, "{line}").map_err(Error::io(run_dir))?;
    plot(run_dir, &dataset.classes);
    report.test = Some(tested);
    Ok(report)
}

/// The epoch in progress of a [`FileDriver`].
#[derive(Default)]
struct Epoch {
    entries: Arc<Vec<Entry>>,
    loader: Option<Loader>,
    /// The loader's pieces per batch still to come.
    pieces: std::collections::VecDeque<usize>,
    pb: Option<ProgressBar>,
}

/// [`train()`]'s driver of [`fit_loop`]: each epoch's batches of files read and tokenized by
/// the loader's threads, split into `parts` computed at once; progress; periodic and
/// end-of-epoch checkpoints; evaluation, metrics and the best checkpoint after each epoch.
struct FileDriver<'a> {
    model: &'a Tempest,
    device: &'a Device,
    dataset: &'a Dataset,
    options: &'a TrainOptions,
    train_idx: &'a [usize],
    per_item: &'a [Vec<(PathBuf, u64)>],
    counts: &'a [usize],
    sampler: &'a BucketSampler,
    train_tok: &'a TokenizerConfig,
    eval_tok: &'a TokenizerConfig,
    parts: usize,
    epoch: Epoch,
    report: &'a mut RunReport,
    schedule: &'a CosineSchedule,
    run_dir: &'a Path,
    last_dir: &'a Path,
    best_dir: &'a Path,
    metrics_file: std::fs::File,
    select_split: &'a [String],
    select_idx: Vec<usize>,
    has_validation: bool,
    /// What every checkpoint holds (`resume` is filled in for `last`).
    parts_saved: CheckpointParts<'a>,
    process_start: Instant,
    elapsed_before: f64,
}

impl FileDriver<'_> {
    fn elapsed(&self) -> f64 {
        self.elapsed_before + self.process_start.elapsed().as_secs_f64()
    }

    /// Saves the resumable checkpoint `last` at `state`.
    fn save_last(&self, opt: &AdamW, state: &TrainState) -> Result<()> {
        let mut state = state.clone();
        state.elapsed_s = self.elapsed();
        checkpoint::save(
            self.last_dir,
            &CheckpointParts {
                resume: Some((opt, &state)),
                ..self.parts_saved
            },
        )
    }
}

impl Driver for FileDriver<'_> {
    type Batch = Vec<HostBatch>;

    fn start_epoch(&mut self, epoch: usize, skip: usize) -> Result<usize> {
        let o = self.options;
        let chosen = choose_variants(
            self.counts,
            VariantChoice::OnePerEpoch,
            o.seed,
            epoch as u64,
        );
        let mut entries = Vec::with_capacity(chosen.len());
        let mut shapes = Vec::with_capacity(chosen.len());
        for (item, v) in chosen {
            let (path, bytes) = &self.per_item[item][v];
            let sample = self.train_idx[item];
            entries.push(Entry {
                path: path.clone(),
                label: self.dataset.samples[sample].label,
                item: sample as u64,
            });
            // The file size stands in for the shape: bucketing needs no tokenizing pass.
            shapes.push(ItemShape {
                blocks: (*bytes).min(u32::MAX as u64) as u32,
                max_block_len: 0,
                bytes: *bytes,
            });
        }
        let entries = Arc::new(entries);
        let batches = self.sampler.batches(&shapes, epoch as u64);
        let skip = skip.min(batches.len());
        // Each batch goes to the loader as up to `parts` consecutive pieces, taken back
        // together by `next_batch`.
        let mut pieces = std::collections::VecDeque::with_capacity(batches.len() - skip);
        let mut remaining: Vec<Vec<usize>> =
            Vec::with_capacity((batches.len() - skip) * self.parts);
        for b in &batches[skip..] {
            let sizes = tempest_tokenize::part_sizes(b.len(), self.parts);
            pieces.push_back(sizes.len());
            let mut rest = &b[..];
            for len in sizes {
                let (piece, tail) = rest.split_at(len);
                remaining.push(piece.to_vec());
                rest = tail;
            }
        }
        let pb = bar(
            o.progress,
            batches.len() as u64,
            format!("epoch {}/{}", epoch + 1, o.epochs),
        );
        pb.set_position(skip as u64);
        let loader = Loader::new(
            Arc::clone(&entries),
            remaining,
            self.train_tok.clone(),
            &LoaderConfig::default()
                .with_workers(o.workers)
                .with_seed(o.seed)
                .with_epoch(epoch as u64),
        );
        self.epoch = Epoch {
            entries,
            loader: Some(loader),
            pieces,
            pb: Some(pb),
        };
        Ok(batches.len())
    }

    fn next_batch(&mut self) -> Result<Option<Option<Vec<HostBatch>>>> {
        let Some(k) = self.epoch.pieces.pop_front() else {
            return Ok(None);
        };
        let Some(loader) = self.epoch.loader.as_mut() else {
            return Ok(None);
        };
        let group: Vec<_> = loader.by_ref().take(k).collect();
        if group.is_empty() {
            return Ok(None);
        }
        for s in group.iter().flat_map(|lb| &lb.skipped) {
            if let Some(e) = self.epoch.entries.get(s.entry) {
                self.report
                    .skipped
                    .insert(e.path.display().to_string(), s.message.clone());
            }
        }
        if let Some(pb) = &self.epoch.pb {
            pb.inc(1);
        }
        let host: Vec<HostBatch> = group.into_iter().filter_map(|lb| lb.batch).collect();
        Ok(Some((!host.is_empty()).then_some(host)))
    }

    fn seed_dropout(&mut self, seed: u64) {
        // With dropout there is one part; `batch_gradients` seeds each part in turn.
        self.model.seed_dropout(seed);
    }

    fn gradients(&mut self, batch: Vec<HostBatch>) -> Result<(GradStore, EpochSums)> {
        batch_gradients(self.model, &batch, self.device)
    }

    fn after_step(&mut self, state: &TrainState, opt: &AdamW, step: &StepLog) -> Result<()> {
        if let Some(pb) = &self.epoch.pb {
            pb.set_prefix(format!(
                "loss {:.3} acc {:.3} lr {:.2e} |g| {:.2}",
                state.epoch_sums.mean_loss(),
                state.epoch_sums.accuracy(),
                step.lr,
                step.norm
            ));
        }
        let every = self.options.checkpoint_every;
        if every > 0 && state.step.is_multiple_of(every) && !step.end_of_epoch && !step.stopping {
            self.save_last(opt, state)?;
        }
        Ok(())
    }

    fn stop_requested(&self) -> bool {
        STOP.load(Ordering::SeqCst)
    }

    fn end_batches(&mut self) {
        if let Some(pb) = self.epoch.pb.take() {
            pb.finish_and_clear();
        }
        if let Some(loader) = self.epoch.loader.take() {
            merge_stats(&mut self.report.train_stats, loader.stats());
        }
    }

    fn interrupted(&mut self, state: &TrainState, opt: &AdamW, log: &EpochLog) -> Result<()> {
        self.report.train_items += log.items as u64;
        self.report.train_seconds += log.seconds;
        self.save_last(opt, state)?;
        Ok(())
    }

    fn end_epoch(&mut self, state: &mut TrainState, opt: &AdamW, log: &EpochLog) -> Result<()> {
        self.report.train_items += log.items as u64;
        self.report.train_seconds += log.seconds;
        let o = self.options;
        let eval = evaluate(
            self.model,
            self.dataset,
            &self.select_idx,
            &o.eval_variants,
            self.eval_tok,
            o.batch_size.max(64),
            o.workers,
            o.progress,
        )?;
        merge_stats(&mut self.report.eval_stats, &eval.stats);
        self.report.skipped.extend(eval.skipped.clone());
        let sums = log.sums;
        let line = json!({
            "epoch": log.epoch,
            "step": state.step,
            "lr": self.schedule.lr(state.step.saturating_sub(1)),
            "train": {
                "loss": sums.mean_loss(),
                "classification": sums.mean_classification(),
                "reconstruction": sums.mean_reconstruction(),
                "accuracy": sums.accuracy(),
                "items": sums.items,
                "items_per_s": log.items as f64 / log.seconds.max(1e-9),
                "skipped": loader_skips(&self.report.train_stats),
            },
            "eval_split": self.select_split,
            "eval": eval.to_json(),
            "elapsed_s": self.elapsed(),
        });
        writeln!(self.metrics_file, "{line}").map_err(Error::io(self.run_dir))?;
        plot(self.run_dir, &self.dataset.classes);
        if o.progress {
            eprintln!(
                "epoch {}/{}: train loss {:.4} acc {:.4}; {} acc {:.4}",
                log.epoch,
                o.epochs,
                sums.mean_loss(),
                sums.accuracy(),
                self.select_split.join("+"),
                eval.accuracy
            );
        }
        let better = state.best.is_none_or(|(b, _)| eval.accuracy > b);
        if better || !self.has_validation {
            if better {
                state.best = Some((eval.accuracy, log.epoch));
            }
            checkpoint::save(self.best_dir, &self.parts_saved)?;
        }
        state.elapsed_s = self.elapsed();
        self.save_last(opt, state)?;
        Ok(())
    }
}

/// Keeps the lines of `metrics.jsonl` that a resumed run stands on: those of the first
/// `epochs` epochs. A run stopped after writing an epoch's line but before saving its
/// resumable checkpoint (a kill between the two) redoes that epoch; without this its line
/// would appear twice. Lines of later epochs and a final test line go; a line that is not
/// JSON is an error naming the file and line.
fn trim_metrics(path: &Path, epochs: usize) -> Result<()> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(path)(e)),
    };
    let mut kept = String::with_capacity(text.len());
    let mut dropped = 0;
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| Error::dataset(path, format!("line {}: {e}", n + 1)))?;
        let keep = v
            .get("epoch")
            .and_then(serde_json::Value::as_u64)
            .is_some_and(|e| e as usize <= epochs);
        if keep {
            kept.push_str(line);
            kept.push('\n');
        } else {
            dropped += 1;
        }
    }
    if dropped > 0 {
        let tmp = path.with_extension("jsonl.tmp");
        fs::write(&tmp, kept).map_err(Error::io(&tmp))?;
        fs::rename(&tmp, path).map_err(Error::io(path))?;
    }
    Ok(())
}

/// Redraws the run's plots; a plot that cannot be drawn is reported and the run goes on (the
/// metrics themselves are already in `metrics.jsonl`).
fn plot(run_dir: &Path, classes: &[String]) {
    if let Err(e) = crate::plots::write_run_plots(run_dir, classes) {
        eprintln!("warning: plots not written: {e}");
    }
}

fn loader_skips(stats: &LoaderStats) -> serde_json::Value {
    json!(stats.skipped)
}

/// The gradients of the mean training loss over one batch given in parts (each a padded
/// [`HostBatch`]; [`tempest_model::batch_gradients`] computes them at once), and the batch's
/// contributions to the epoch's sums: loss, classification loss and reconstruction loss,
/// each times its items; items classified correctly; items.
fn batch_gradients(
    model: &Tempest,
    parts: &[HostBatch],
    device: &Device,
) -> Result<(GradStore, EpochSums)> {
    let batches: Vec<_> = parts
        .iter()
        .map(|hb| hb.to_tensors(device))
        .collect::<std::result::Result<_, _>>()?;
    let g = tempest_model::batch_gradients(model, &batches)?;
    let sums = EpochSums::of(&g);
    Ok((g.grads, sums))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cff_blocks::Format;
    use tempest_tokenize::{collate, tokenize, CropContext, TokenizedItem, PAD_ID};

    /// Spoken-word MP3s of the repository, tokenized as training reads them.
    fn spoken_words(model: &Config, count: usize) -> Vec<(TokenizedItem, u32)> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/spoken-words");
        let tok = TokenizerSettings::for_format(Format::Mp3, model, false)
            .train_config()
            .unwrap();
        let mut out = Vec::new();
        let mut words: Vec<_> = fs::read_dir(&root)
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.path())
            .collect();
        words.sort();
        for (label, word) in words.iter().enumerate() {
            let mut files: Vec<_> = fs::read_dir(word)
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .collect();
            files.sort();
            for f in files.iter().take(2) {
                let data = fs::read(f).unwrap();
                out.push((
                    tokenize(&data, f, &tok, CropContext::default()).unwrap(),
                    label as u32,
                ));
            }
        }
        out.truncate(count);
        assert_eq!(out.len(), count, "spoken words in {}", root.display());
        out
    }

    fn host(items: &[(TokenizedItem, u32)]) -> HostBatch {
        let refs: Vec<&TokenizedItem> = items.iter().map(|(i, _)| i).collect();
        let labels: Vec<u32> = items.iter().map(|(_, l)| *l).collect();
        collate(&refs, &labels, PAD_ID)
    }

    #[test]
    fn a_batch_in_parts_gets_the_whole_batch_gradient() -> Result<()> {
        let config = Config::tiny().with_num_classes(10);
        let (model, varmap) = init_seeded(&config, &Device::Cpu, DType::F32, 7)?;
        let items = spoken_words(&config, 8);
        let (whole, whole_sums) = batch_gradients(&model, &[host(&items)], &Device::Cpu)?;
        let vars = varmap.all_vars();
        for cuts in [vec![0, 4, 8], vec![0, 3, 6, 8], vec![0, 1, 8]] {
            let parts: Vec<HostBatch> = cuts.windows(2).map(|w| host(&items[w[0]..w[1]])).collect();
            let (parted, sums) = batch_gradients(&model, &parts, &Device::Cpu)?;
            assert_eq!(
                (sums.correct, sums.items),
                (whole_sums.correct, whole_sums.items),
                "correct and items, parts {cuts:?}"
            );
            for (k, (a, b)) in [
                (sums.loss, whole_sums.loss),
                (sums.classification, whole_sums.classification),
            ]
            .into_iter()
            .enumerate()
            {
                assert!((a - b).abs() <= 1e-4 * b.abs(), "sum {k}: {a} vs {b}");
            }
            crate::fit::assert_same_gradients(&whole, &parted, &vars, &format!("parts {cuts:?}"))?;
        }
        Ok(())
    }

    #[test]
    fn parts_with_dropout_repeat_exactly() -> Result<()> {
        let mut config = Config::tiny().with_num_classes(10);
        config.dropout = 0.2;
        let (model, varmap) = init_seeded(&config, &Device::Cpu, DType::F32, 7)?;
        let items = spoken_words(&config, 8);
        let parts = [host(&items[..3]), host(&items[3..6]), host(&items[6..])];
        let run = |seed: u64| -> Result<Vec<Vec<f32>>> {
            model.seed_dropout(seed);
            let (grads, _) = batch_gradients(&model, &parts, &Device::Cpu)?;
            varmap
                .all_vars()
                .iter()
                .map(|v| -> Result<Vec<f32>> {
                    let g = grads
                        .get(v)
                        .ok_or_else(|| Error::setting("test", "a variable without gradient"))?;
                    Ok(g.flatten_all()?.to_vec1()?)
                })
                .collect()
        };
        // Each part draws its masks from a generator of its own, seeded in turn: the same
        // seed, the same gradients to the bit, however the threads ran; another seed, other
        // masks.
        let (a, b, c) = (run(3)?, run(3)?, run(4)?);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.iter().flatten().all(|x| x.is_finite()));
        Ok(())
    }
}
