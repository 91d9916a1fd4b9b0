//! Self-supervised pretraining on unlabelled files ([`pretrain()`]: masked block modelling,
//! [`tempest_model::pretrain`]) on the one training loop, [`fit_loop`], and taking its
//! weights over to fine-tune on a labelled task ([`init_from_pretrained`], `train --init`).
//!
//! A pretraining run folder holds what a training run's does, less evaluation: `last/` (the
//! resumable checkpoint: `config.json`, `model.safetensors` with the mask token
//! `pretrain.mask_token`, `tempest_tokenizer.json`, [`MASKING_FILE`], `optimizer.safetensors`,
//! `state.json`) and `metrics.jsonl`, one line per epoch with the pretraining loss (the mean
//! cross-entropy of the masked blocks' predicted ids) and the fraction of those ids predicted
//! right.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use indicatif::ProgressBar;
use rayon::prelude::*;
use serde_json::json;
use tempest_model::pretrain::{prepare, MaskedBlockModel, Masking, PRETRAIN_PREFIX};
use tempest_model::{Config, DeviceChoice};
use tempest_tokenize::{
    choose_variants, BucketSampler, Entry, HostBatch, ItemShape, Loader, LoaderConfig, LoaderStats,
    TokenizerConfig, VariantChoice,
};

use crate::checkpoint::{self, CheckpointParts, TrainState};
use crate::driver::{fit_loop, Driver, EpochLog, Outcome, StepLog};
use crate::evaluate::{bar, detect_format, merge_stats};
use crate::metrics::EpochSums;
use crate::optim::{AdamW, CosineSchedule};
use crate::options::TrainOptions;
use crate::report::{loader_skips, trim_metrics};
use crate::{seeded_var_builder, Dataset, Error, Result};

/// The masking settings' file in a pretraining checkpoint ([`Masking`] as JSON).
pub const MASKING_FILE: &str = "pretrain.json";

/// The variables of E_t and M (with the byte and length embeddings): what
/// `--freeze-block-encoder` holds still for the first epochs of a fine-tuning.
pub const BLOCK_ENCODER_PREFIXES: &[&str] = &["embed.", "block_encoder.", "mixer.", "length."];

/// How a pretraining run ended.
#[derive(Debug, Clone)]
pub struct PretrainReport {
    /// Stopped early (Ctrl-C or `stop_after_steps`) after saving; `resume` continues it.
    pub interrupted: bool,
    /// Epochs completed.
    pub epochs: usize,
    /// Optimiser steps taken.
    pub steps: usize,
    /// The last completed epoch's mean pretraining loss (`None` before the first).
    pub last_loss: Option<f64>,
    /// Files read and skipped.
    pub stats: LoaderStats,
    /// Every skipped file: path → reason.
    pub skipped: BTreeMap<String, String>,
    /// Seconds of the run, including those before a resume.
    pub elapsed_s: f64,
    /// Items trained on in this process.
    pub train_items: u64,
    /// Seconds those items took.
    pub train_seconds: f64,
    /// The device.
    pub device: DeviceChoice,
}

/// The configuration a pretraining on files of `format` trains: `base` with the vocabulary
/// the options' tokens need, one (unused) class, and λ = 1 where `base` has none, so that the
/// model has the block decoder D_t that predicts the masked blocks (λ itself weighs nothing
/// here; fine-tuning sets its own).
pub fn pretrain_config(
    base: &Config,
    options: &TrainOptions,
    format: cff_blocks::Format,
) -> Result<Config> {
    let mut config = options.model_config(base, 1, format)?;
    if !config.has_block_decoder() {
        config.reconstruction_weight = 1.0;
    }
    config.label_smoothing = 0.0;
    config.mixup = 0.0;
    Ok(config)
}

/// A masked block model whose variables are drawn from `seed` ([`seeded_var_builder`]).
pub fn init_pretrainer(
    config: &Config,
    masking: Masking,
    device: &Device,
    dtype: DType,
    seed: u64,
) -> Result<(MaskedBlockModel, VarMap)> {
    let (vb, varmap) = seeded_var_builder(seed, dtype, device);
    let model = MaskedBlockModel::new(config, masking, vb)?;
    Ok((model, varmap))
}

/// A pretraining run in `run_dir` on the items of `splits` of `dataset` (all items when
/// `splits` is empty; their labels are not read): masked block modelling with `masking`,
/// `options`' epochs, batches, learning-rate schedule, seed, variants and tokens, the
/// resumable checkpoint in `run_dir/last` after every epoch (and every
/// `options.checkpoint_every` steps), one line per epoch in `run_dir/metrics.jsonl`.
///
/// `resume`: continue from `run_dir/last` (same dataset and options; the model and masking
/// are read from the checkpoint). With dropout 0 on the CPU the weights reached equal an
/// uninterrupted run's.
pub fn pretrain(
    dataset: &Dataset,
    splits: &[String],
    model_config: &Config,
    options: &TrainOptions,
    masking: &Masking,
    run_dir: &Path,
    resume: bool,
) -> Result<PretrainReport> {
    let o = options;
    let device = o.device.open()?;
    let dtype = o.dtype.dtype(&device)?;
    o.check_batch()?;
    masking
        .validate()
        .map_err(|w| Error::setting("masking", w))?;
    fs::create_dir_all(run_dir).map_err(Error::io(run_dir))?;
    if o.handle_ctrl_c {
        crate::install_ctrl_c_handler();
    }
    crate::train::reset_stop();

    let format = detect_format(dataset, &o.train_variants)?;
    let items: Vec<usize> = if splits.is_empty() {
        (0..dataset.samples.len()).collect()
    } else {
        dataset.select(splits)
    };
    let wanted: Vec<String> = if o.train_variants.is_empty() {
        dataset.variants()
    } else {
        o.train_variants.clone()
    };
    let per_item = crate::train::item_files(dataset, &items, &wanted);
    let counts: Vec<usize> = per_item.iter().map(Vec::len).collect();
    let items_per_epoch = counts.iter().filter(|&&c| c > 0).count();
    if items_per_epoch == 0 {
        return Err(Error::Empty {
            split: if splits.is_empty() {
                "all".into()
            } else {
                splits.join("+")
            },
            skipped: 0,
        });
    }
    let schedule = o.schedule(items_per_epoch);
    let sampler = BucketSampler::new(o.batch_size, o.seed).with_bucket_batches(o.bucket_batches);

    let last_dir = run_dir.join("last");
    let metrics_path = run_dir.join("metrics.jsonl");
    let (model, varmap, mut opt, mut state, tok, masking) =
        match checkpoint::resolve(&last_dir).filter(|_| resume) {
            Some(dir) => {
                let config = tempest_model::load_config(&dir)?;
                let masking: Masking = checkpoint::read_json(&dir.join(MASKING_FILE))?;
                let tok: TokenizerConfig =
                    checkpoint::read_json(&dir.join(checkpoint::TOKENIZER_FILE))?;
                let (model, varmap) = init_pretrainer(&config, masking, &device, dtype, o.seed)?;
                let weights = dir.join(tempest_model::WEIGHTS_FILE);
                copy_weights(&varmap, &weights, |_| true, true)?;
                let mut opt = AdamW::new(&varmap, o.adamw)?;
                opt.load(&dir.join(checkpoint::OPTIMIZER_FILE), &device)?;
                let state: TrainState = checkpoint::read_json(&dir.join(checkpoint::STATE_FILE))?;
                crate::train::check_seed(&state, o.seed)?;
                trim_metrics(&metrics_path, state.epoch)?;
                (model, varmap, opt, state, tok, masking)
            }
            None => {
                if resume {
                    return Err(Error::dataset(&last_dir, "nothing to resume"));
                }
                if !o.overwrite && (metrics_path.exists() || last_dir.exists()) {
                    return Err(Error::setting(
                        "run folder",
                        format!(
                            "{} already holds a run (metrics.jsonl or last/): give --resume to \
                             continue it or --overwrite to start it again",
                            run_dir.display()
                        ),
                    ));
                }
                let _ = fs::remove_file(&metrics_path);
                let config = pretrain_config(model_config, o, format)?;
                let tok = o.tokenizer(format, &config)?;
                let (model, varmap) = init_pretrainer(&config, *masking, &device, dtype, o.seed)?;
                let opt = AdamW::new(&varmap, o.adamw)?;
                let state = TrainState {
                    seed: o.seed,
                    ..TrainState::default()
                };
                (model, varmap, opt, state, tok, *masking)
            }
        };
    let train_tok = tok.train_config()?;
    let config = model.model().config().clone();
    let metrics_file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(Error::io(run_dir))?;
    let mut driver = PretrainDriver {
        model: &model,
        device: &device,
        options: o,
        masking,
        items: &items,
        per_item: &per_item,
        counts: &counts,
        sampler: &sampler,
        tok: &train_tok,
        saved_tok: &tok,
        parts: o.batch_parts(&device),
        epoch: None,
        seed: 0,
        config: &config,
        varmap: &varmap,
        schedule: &schedule,
        run_dir,
        last_dir: &last_dir,
        metrics_file,
        stats: LoaderStats::default(),
        skipped: BTreeMap::new(),
        last_loss: None,
        process_start: Instant::now(),
        elapsed_before: state.elapsed_s,
        train_items: 0,
        train_seconds: 0.0,
    };
    let outcome = fit_loop(&mut driver, &mut opt, &schedule, &mut state, o)?;
    Ok(PretrainReport {
        interrupted: outcome == Outcome::Interrupted,
        epochs: state.epoch,
        steps: state.step,
        last_loss: driver.last_loss,
        elapsed_s: driver.elapsed(),
        stats: driver.stats,
        skipped: driver.skipped,
        train_items: driver.train_items,
        train_seconds: driver.train_seconds,
        device: DeviceChoice::of(&device),
    })
}

/// The epoch in progress: its loader, the pieces per batch still to come, its progress bar.
struct EpochRun {
    entries: Arc<Vec<Entry>>,
    loader: Loader,
    pieces: VecDeque<usize>,
    pb: ProgressBar,
}

/// [`pretrain()`]'s driver of [`fit_loop`].
struct PretrainDriver<'a> {
    model: &'a MaskedBlockModel,
    device: &'a Device,
    options: &'a TrainOptions,
    masking: Masking,
    items: &'a [usize],
    per_item: &'a [Vec<(PathBuf, u64)>],
    counts: &'a [usize],
    sampler: &'a BucketSampler,
    tok: &'a TokenizerConfig,
    saved_tok: &'a TokenizerConfig,
    parts: usize,
    epoch: Option<EpochRun>,
    /// The seed of the next batch's dropout masks and mask plans.
    seed: u64,
    config: &'a Config,
    varmap: &'a VarMap,
    schedule: &'a CosineSchedule,
    run_dir: &'a Path,
    last_dir: &'a Path,
    metrics_file: fs::File,
    stats: LoaderStats,
    skipped: BTreeMap<String, String>,
    last_loss: Option<f64>,
    process_start: Instant,
    elapsed_before: f64,
    train_items: u64,
    train_seconds: f64,
}

impl PretrainDriver<'_> {
    fn elapsed(&self) -> f64 {
        self.elapsed_before + self.process_start.elapsed().as_secs_f64()
    }

    fn save_last(&self, opt: &AdamW, state: &TrainState) -> Result<()> {
        let mut state = state.clone();
        state.elapsed_s = self.elapsed();
        checkpoint::save(
            self.last_dir,
            &CheckpointParts {
                config: self.config,
                varmap: self.varmap,
                classes: &[],
                tokenizer: self.saved_tok,
                resume: Some((opt, &state)),
            },
        )?;
        let path = self.last_dir.join(MASKING_FILE);
        let text = serde_json::to_string_pretty(&self.masking).map_err(|source| Error::Json {
            path: path.clone(),
            source,
        })?;
        fs::write(&path, text).map_err(Error::io(&path))
    }
}

impl Driver for PretrainDriver<'_> {
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
            entries.push(Entry {
                path: path.clone(),
                label: 0,
                item: self.items[item] as u64,
            });
            shapes.push(ItemShape {
                blocks: (*bytes).min(u32::MAX as u64) as u32,
                max_block_len: 0,
                bytes: *bytes,
            });
        }
        let entries = Arc::new(entries);
        let batches = self.sampler.batches(&shapes, epoch as u64);
        let skip = skip.min(batches.len());
        let mut pieces = VecDeque::with_capacity(batches.len() - skip);
        let mut loads: Vec<Vec<usize>> = Vec::new();
        for b in &batches[skip..] {
            let sizes = tempest_tokenize::part_sizes(b.len(), self.parts);
            pieces.push_back(sizes.len());
            let mut rest = &b[..];
            for len in sizes {
                let (piece, tail) = rest.split_at(len);
                loads.push(piece.to_vec());
                rest = tail;
            }
        }
        let pb = bar(
            o.progress,
            batches.len() as u64,
            format!("pretrain epoch {}/{}", epoch + 1, o.epochs),
        );
        pb.set_position(skip as u64);
        let loader = Loader::new(
            Arc::clone(&entries),
            loads,
            self.tok.clone(),
            &LoaderConfig::default()
                .with_workers(o.workers)
                .with_seed(o.seed)
                .with_epoch(epoch as u64),
        );
        self.epoch = Some(EpochRun {
            entries,
            loader,
            pieces,
            pb,
        });
        Ok(batches.len())
    }

    fn next_batch(&mut self) -> Result<Option<Option<Vec<HostBatch>>>> {
        let Some(run) = self.epoch.as_mut() else {
            return Ok(None);
        };
        let Some(k) = run.pieces.pop_front() else {
            return Ok(None);
        };
        let group: Vec<_> = run.loader.by_ref().take(k).collect();
        if group.is_empty() {
            return Ok(None);
        }
        for s in group.iter().flat_map(|lb| &lb.skipped) {
            if let Some(e) = run.entries.get(s.entry) {
                self.skipped
                    .insert(e.path.display().to_string(), s.message.clone());
            }
        }
        run.pb.inc(1);
        let host: Vec<HostBatch> = group
            .into_iter()
            .filter_map(|lb| lb.batch)
            .filter(|hb| hb.batch > 0)
            .collect();
        Ok(Some((!host.is_empty()).then_some(host)))
    }

    fn seed_dropout(&mut self, seed: u64) {
        self.seed = seed;
        self.model.model().seed_dropout(seed);
    }

    fn gradients(&mut self, batch: Vec<HostBatch>) -> Result<(GradStore, EpochSums)> {
        pretrain_gradients(self.model, &batch, &self.masking, self.seed, self.device)
    }

    fn after_step(&mut self, state: &TrainState, opt: &AdamW, step: &StepLog) -> Result<()> {
        if let Some(run) = &self.epoch {
            run.pb.set_prefix(format!(
                "loss {:.3} ids {:.3} lr {:.2e} |g| {:.2}",
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
        crate::train::stop_requested()
    }

    fn end_batches(&mut self) {
        if let Some(run) = self.epoch.take() {
            run.pb.finish_and_clear();
            merge_stats(&mut self.stats, run.loader.stats());
        }
    }

    fn interrupted(&mut self, state: &TrainState, opt: &AdamW, log: &EpochLog) -> Result<()> {
        self.train_items += log.items as u64;
        self.train_seconds += log.seconds;
        self.save_last(opt, state)
    }

    fn end_epoch(&mut self, state: &mut TrainState, opt: &AdamW, log: &EpochLog) -> Result<()> {
        self.train_items += log.items as u64;
        self.train_seconds += log.seconds;
        let sums = log.sums;
        self.last_loss = Some(sums.mean_loss());
        let line = json!({
            "epoch": log.epoch,
            "step": state.step,
            "lr": self.schedule.lr(state.step.saturating_sub(1)),
            "pretrain": {
                "loss": sums.mean_loss(),
                "id_accuracy": sums.accuracy(),
                "items": sums.items,
                "items_per_s": log.items as f64 / log.seconds.max(1e-9),
                "skipped": loader_skips(&self.stats),
            },
            "masking": self.masking,
            "elapsed_s": self.elapsed(),
        });
        writeln!(self.metrics_file, "{line}").map_err(Error::io(self.run_dir))?;
        if self.options.progress {
            eprintln!(
                "pretrain epoch {}/{}: loss {:.4}, masked ids right {:.4}",
                log.epoch,
                self.options.epochs,
                sums.mean_loss(),
                sums.accuracy()
            );
        }
        state.elapsed_s = self.elapsed();
        self.save_last(opt, state)
    }
}

/// The gradients of the mean pretraining loss over one batch given in `parts`, each part's
/// mask plan drawn from `seed` and its place, computed at once on rayon's threads (each part
/// weighted by its share of the items, added in order, as [`tempest_model::batch_gradients`]
/// does for training); the sums hold the loss as `loss` and `reconstruction`, and the
/// fraction of predicted ids that were right as `correct` (per item).
pub fn pretrain_gradients(
    model: &MaskedBlockModel,
    parts: &[HostBatch],
    masking: &Masking,
    seed: u64,
    device: &Device,
) -> Result<(GradStore, EpochSums)> {
    let items: usize = parts.iter().map(|p| p.batch).sum();
    if items == 0 {
        return Err(Error::setting("batch", "a batch of no items"));
    }
    let prepared = parts
        .iter()
        .enumerate()
        .map(|(i, hb)| {
            prepare(
                hb,
                masking,
                tempest_model::dropout_seed(seed, &[0x706c_616e, i as u64]),
                device,
            )
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    let weight = |i: usize| parts[i].batch as f64 / items as f64;
    let one = |m: &MaskedBlockModel, i: usize| -> candle_core::Result<(f64, f64, GradStore)> {
        let (batch, plan) = &prepared[i];
        let l = m.loss(batch, plan, true)?;
        let grads = if parts.len() == 1 {
            l.loss.backward()?
        } else {
            (&l.loss * weight(i))?.backward()?
        };
        let loss = l.loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        Ok((loss, l.accuracy, grads))
    };
    let results: Vec<candle_core::Result<(f64, f64, GradStore)>> = if parts.len() == 1 {
        vec![one(model, 0)]
    } else if model.model().config().dropout > 0.0 {
        let models: Vec<MaskedBlockModel> = parts
            .iter()
            .map(|_| model.with_own_dropout(model.model().dropout_rng().next_seed()))
            .collect();
        (0..parts.len())
            .into_par_iter()
            .map(|i| one(&models[i], i))
            .collect()
    } else {
        (0..parts.len())
            .into_par_iter()
            .map(|i| one(model, i))
            .collect()
    };
    let (mut loss, mut accuracy) = (0.0, 0.0);
    let mut total: Option<GradStore> = None;
    for (i, r) in results.into_iter().enumerate() {
        let (l, a, grads) = r?;
        loss += l * weight(i);
        accuracy += a * weight(i);
        match total.as_mut() {
            None => total = Some(grads),
            Some(t) => t.extend(grads)?,
        }
    }
    let grads = total.ok_or_else(|| Error::setting("batch", "no parts"))?;
    let n = items as f64;
    let sums = EpochSums {
        loss: loss * n,
        classification: 0.0,
        reconstruction: loss * n,
        correct: accuracy * n,
        items: n,
    };
    Ok((grads, sums))
}

/// What [`init_from_pretrained`] took over.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InitReport {
    /// The checkpoint folder read.
    pub dir: PathBuf,
    /// Variables set from it.
    pub loaded: Vec<String>,
    /// Variables of the model it has no tensor for (left as initialised): the head, and D_t
    /// when the pretraining had none.
    pub fresh: Vec<String>,
    /// Its tensors the model has no variable for (the mask token; D_t when λ = 0).
    pub unused: Vec<String>,
}

impl InitReport {
    /// One line: how many tensors were taken over from where, and which were not.
    pub fn summary(&self) -> String {
        format!(
            "init: {} tensors from {}; left as initialised: {}; not used: {}",
            self.loaded.len(),
            self.dir.display(),
            list(&self.fresh),
            list(&self.unused)
        )
    }
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// The checkpoint folder of `dir`: `dir` itself when it holds weights, else its `last` (a
/// pretraining run) or `best` (a training run).
pub fn resolve_checkpoint(dir: &Path) -> Result<PathBuf> {
    [dir.to_path_buf(), dir.join("last"), dir.join("best")]
        .iter()
        .find_map(|d| checkpoint::resolve(d))
        .ok_or_else(|| {
            Error::dataset(
                dir,
                "no checkpoint (model.safetensors) here or in last/, best/",
            )
        })
}

/// Sets the variables of `varmap` from the pretrained checkpoint in `dir` (a checkpoint
/// folder or a run folder, [`resolve_checkpoint`]): every variable but the head's
/// (`head.*`) whose name the file holds, which must have the variable's shape (else an error
/// naming the tensor, both shapes and the file). Variables the file lacks keep their
/// initial values; the file's other tensors (the mask token) are left behind. An error when
/// not one variable matches.
pub fn init_from_pretrained(varmap: &VarMap, dir: &Path) -> Result<InitReport> {
    let dir = resolve_checkpoint(dir)?;
    let path = dir.join(tempest_model::WEIGHTS_FILE);
    let (loaded, fresh, unused) = copy_weights(
        varmap,
        &path,
        |name| !name.starts_with("head.") && !name.starts_with(PRETRAIN_PREFIX),
        false,
    )?;
    if loaded.is_empty() {
        return Err(Error::dataset(
            &path,
            "not one tensor of the model is in this file: is it a TEMPEST checkpoint?",
        ));
    }
    Ok(InitReport {
        dir,
        loaded,
        fresh,
        unused,
    })
}

/// Copies the tensors of the safetensors file `path` into the variables of `varmap` whose
/// names `take` accepts (converted to each variable's dtype and device), checking shapes.
/// `strict`: every accepted variable must be in the file. Returns the names loaded, the
/// variables not loaded (refused by `take` or missing from the file), and the file's tensors
/// not loaded, each sorted.
#[allow(clippy::type_complexity)]
fn copy_weights(
    varmap: &VarMap,
    path: &Path,
    take: impl Fn(&str) -> bool,
    strict: bool,
) -> Result<(Vec<String>, Vec<String>, Vec<String>)> {
    let stored = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| Error::dataset(path, format!("cannot read the weights: {e}")))?;
    let vars: Vec<(String, Var)> = {
        let data = varmap
            .data()
            .lock()
            .map_err(|_| Error::setting("varmap", "its lock is poisoned"))?;
        let mut v: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let (mut loaded, mut fresh) = (Vec::new(), Vec::new());
    for (name, var) in &vars {
        if !take(name) {
            fresh.push(name.clone());
            continue;
        }
        let Some(t) = stored.get(name) else {
            if strict {
                return Err(Error::dataset(path, format!("no tensor {name:?}")));
            }
            fresh.push(name.clone());
            continue;
        };
        if t.dims() != var.dims() {
            return Err(Error::dataset(
                path,
                format!(
                    "tensor {name:?} has shape {:?}, the model's {:?} (was it pretrained with \
                     another preset, --tokens or --block-bytes?)",
                    t.dims(),
                    var.dims()
                ),
            ));
        }
        let t: Tensor = t.to_dtype(var.dtype())?.to_device(var.device())?;
        var.set(&t)?;
        loaded.push(name.clone());
    }
    let mut unused: Vec<String> = stored
        .keys()
        .filter(|k| !loaded.contains(k))
        .cloned()
        .collect();
    unused.sort();
    Ok((loaded, fresh, unused))
}

/// The variables of E_t and M in `varmap` ([`BLOCK_ENCODER_PREFIXES`]), for freezing.
pub fn block_encoder_vars(varmap: &VarMap) -> Vec<Var> {
    let Ok(data) = varmap.data().lock() else {
        return Vec::new();
    };
    let mut v: Vec<(&String, &Var)> = data
        .iter()
        .filter(|(k, _)| BLOCK_ENCODER_PREFIXES.iter().any(|p| k.starts_with(p)))
        .collect();
    v.sort_by(|a, b| a.0.cmp(b.0));
    v.into_iter().map(|(_, v)| v.clone()).collect()
}
