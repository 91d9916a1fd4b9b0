//! Self-supervised pretraining on unlabelled files ([`pretrain()`]: masked block modelling,
//! [`tempest_model::pretrain`]) on the one training loop, [`fit_loop`], and taking its
//! weights over to fine-tune on a labelled task ([`init_from_pretrained`], `train --init`).
//!
//! A pretraining run folder holds what a training run's does, less evaluation: `last/` (the
//! resumable checkpoint: `config.json`, `model.safetensors` with the mask token
//! `pretrain.mask_token`, `tempest_tokenizer.json`, [`MASKING_FILE`], `optimizer.safetensors`,
//! `state.json`; with an embedding target the teacher, [`TEACHER_FILE`]) and `metrics.jsonl`,
//! one line per epoch with the pretraining loss (the ids' part: the mean cross-entropy of the
//! masked blocks' predicted ids; the embedding target's part: the mean squared error against
//! the teacher's output), its parts and the fraction of the predicted ids right.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use rayon::prelude::*;
use serde_json::json;
use tempest_model::pretrain::{prepare, MaskedBlockModel, Masking, Teacher, PRETRAIN_PREFIX};
use tempest_model::{Config, DeviceChoice};
use tempest_tokenize::{HostBatch, LoaderStats, TokenizerConfig};

use crate::checkpoint::{self, CheckpointParts, TrainState};
use crate::driver::{fit_loop, Driver, EpochLog, Outcome, StepLog};
use crate::evaluate::{distinct_formats, variant_formats};
use crate::feed::{EpochFeed, FedPart, FeedItems};
use crate::metrics::EpochSums;
use crate::optim::{AdamW, CosineSchedule};
use crate::options::TrainOptions;
use crate::report::{loader_skips, trim_metrics};
use crate::{seeded_var_builder, Dataset, Error, Result};

/// The masking settings' file in a pretraining checkpoint ([`Masking`] as JSON).
pub const MASKING_FILE: &str = "pretrain.json";
/// The teacher's weights in a pretraining checkpoint with an embedding target
/// ([`tempest_model::pretrain::Teacher`]; what a resumed run continues from).
pub const TEACHER_FILE: &str = "pretrain_teacher.safetensors";

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
    /// Each format read, with the items pretrained on that have a file in it (a folder may
    /// mix MP3, Ogg Opus and JPEG files: one model, one vocabulary, each format's blocks
    /// read as under its own recipe; [`crate::Recipe::for_formats`]).
    pub formats: Vec<(cff_blocks::Format, usize)>,
}

/// The configuration a pretraining on files of `formats` trains: `base` with the vocabulary
/// the options' tokens need ([`TrainOptions::model_config_for`]), one (unused) class, and
/// λ = 1 where `base` has none, so that the model has the block decoder D_t that predicts the
/// masked blocks (λ itself weighs nothing here; fine-tuning sets its own).
pub fn pretrain_config(
    base: &Config,
    options: &TrainOptions,
    formats: &[cff_blocks::Format],
) -> Result<Config> {
    let mut config = options.model_config_for(base, 1, formats)?;
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
///
/// With several ranks (`options.comm`, [`crate::dist`]) every rank calls this with the same
/// arguments and pretrains on its piece of each batch (batches of `batch_size` items per
/// rank), as [`crate::train()`] does: the gradients are averaged across the ranks before
/// clipping and the step, each item's masks depend on the item alone (not on its rank), and
/// rank 0 alone reads the checkpoint it resumes from and writes the run folder. An error on
/// any rank ends the whole job ([`crate::dist::abort_on_error`]).
pub fn pretrain(
    dataset: &Dataset,
    splits: &[String],
    model_config: &Config,
    options: &TrainOptions,
    masking: &Masking,
    run_dir: &Path,
    resume: bool,
) -> Result<PretrainReport> {
    crate::dist::abort_on_error(&options.comm, || {
        pretrain_ranks(
            dataset,
            splits,
            model_config,
            options,
            masking,
            run_dir,
            resume,
        )
    })
}

fn pretrain_ranks(
    dataset: &Dataset,
    splits: &[String],
    model_config: &Config,
    options: &TrainOptions,
    masking: &Masking,
    run_dir: &Path,
    resume: bool,
) -> Result<PretrainReport> {
    let comm = options.comm.clone();
    let (root, dist) = (comm.is_root(), comm.is_distributed());
    let rank_options = options.for_rank();
    let o: &TrainOptions = &rank_options;
    let device = o.device.open()?;
    let dtype = o.dtype.dtype(&device)?;
    o.check_batch()?;
    masking
        .validate()
        .map_err(|w| Error::setting("masking", w))?;
    if root {
        fs::create_dir_all(run_dir).map_err(Error::io(run_dir))?;
    }
    if o.handle_ctrl_c {
        crate::install_ctrl_c_handler();
    }
    crate::train::reset_stop();

    let by_variant = variant_formats(dataset, &o.train_variants)?;
    let formats = distinct_formats(&by_variant);
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
    let items_per_epoch = per_item.iter().filter(|f| !f.is_empty()).count();
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
    let item_formats: Vec<(cff_blocks::Format, usize)> = formats
        .iter()
        .map(|&f| {
            let n = items
                .iter()
                .filter(|&&i| {
                    dataset.samples[i]
                        .variants
                        .iter()
                        .any(|(v, _)| by_variant.iter().any(|(name, g)| name == v && *g == f))
                })
                .count();
            (f, n)
        })
        .collect();

    let last_dir = run_dir.join("last");
    let metrics_path = run_dir.join("metrics.jsonl");
    let fresh = || -> Result<(Config, TokenizerConfig)> {
        let mut config = pretrain_config(model_config, o, &formats)?;
        let tok = o.tokenizer_for(&formats, &config)?;
        crate::size_mixer(&mut config, dataset, &o.train_variants, &tok)?;
        Ok((config, tok))
    };
    // A resumed run's teacher (rank 0 reads it; with several ranks it is sent to the others).
    let mut teacher_path: Option<PathBuf> = None;
    let (model, varmap, opt, state, tok, masking) = if !root {
        // Everything comes from rank 0 below.
        let (config, tok) = fresh()?;
        let (model, varmap) = init_pretrainer(&config, *masking, &device, dtype, o.seed)?;
        let opt = AdamW::new(&varmap, o.adamw)?;
        (model, varmap, opt, TrainState::default(), tok, *masking)
    } else {
        match checkpoint::resolve(&last_dir).filter(|_| resume) {
            Some(dir) => {
                checkpoint::verify(&dir)?;
                let config = tempest_model::load_config(&dir)?;
                let masking: Masking = checkpoint::read_json(&dir.join(MASKING_FILE))?;
                let tok: TokenizerConfig =
                    checkpoint::read_json(&dir.join(checkpoint::TOKENIZER_FILE))?;
                let (model, varmap) = init_pretrainer(&config, masking, &device, dtype, o.seed)?;
                let weights = dir.join(tempest_model::WEIGHTS_FILE);
                copy_weights(&varmap, &weights, |_| true, true)?;
                teacher_path = Some(dir.join(TEACHER_FILE));
                let mut opt = AdamW::new(&varmap, o.adamw)?;
                opt.load(&dir.join(checkpoint::OPTIMIZER_FILE), &device)?;
                let state: TrainState = checkpoint::read_json(&dir.join(checkpoint::STATE_FILE))?;
                crate::train::check_seed(&state, o.seed)?;
                crate::train::check_world(&state, comm.world_size(), run_dir)?;
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
                let (config, tok) = fresh()?;
                let (model, varmap) = init_pretrainer(&config, *masking, &device, dtype, o.seed)?;
                let opt = AdamW::new(&varmap, o.adamw)?;
                let state = TrainState {
                    seed: o.seed,
                    world_size: comm.world_size(),
                    ..TrainState::default()
                };
                (model, varmap, opt, state, tok, *masking)
            }
        }
    };
    // Every rank starts from rank 0's configuration, masking, tokenizer, state and weights
    // (and, resuming, its optimiser's moments).
    let (model, varmap, mut opt, mut state, tok, masking) = if dist {
        let mut bytes = if root {
            serde_json::to_vec(&json!({
                "config": model.model().config(),
                "masking": masking,
                "tokenizer": tok,
                "state": state,
                "resumed": resume,
            }))
            .map_err(|e| Error::setting("dist", e.to_string()))?
        } else {
            Vec::new()
        };
        comm.broadcast_bytes(&mut bytes)?;
        let (model, varmap, mut opt, state, tok, masking, resumed) = if root {
            (model, varmap, opt, state, tok, masking, resume)
        } else {
            let start: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|e| Error::setting("dist", format!("rank 0's start: {e}")))?;
            let field = |name: &str| start.get(name).cloned().unwrap_or_default();
            let bad = |what: &str, e: serde_json::Error| {
                Error::setting("dist", format!("rank 0's {what}: {e}"))
            };
            let config: Config =
                serde_json::from_value(field("config")).map_err(|e| bad("model", e))?;
            let masking: Masking =
                serde_json::from_value(field("masking")).map_err(|e| bad("masking", e))?;
            let tok: TokenizerConfig =
                serde_json::from_value(field("tokenizer")).map_err(|e| bad("tokenizer", e))?;
            let state: TrainState =
                serde_json::from_value(field("state")).map_err(|e| bad("state", e))?;
            // Whether rank 0 resumed (it alone looks at the run folder).
            let resumed = start["resumed"].as_bool().unwrap_or(false);
            drop((model, varmap, opt));
            let (model, varmap) = init_pretrainer(&config, masking, &device, dtype, o.seed)?;
            let opt = AdamW::new(&varmap, o.adamw)?;
            (model, varmap, opt, state, tok, masking, resumed)
        };
        opt.broadcast_from_root(&*comm, resumed)?;
        if root {
            let values = opt.parameter_count();
            eprintln!(
                "data-parallel pretraining: {} ranks ({}), {} items per rank and batch, {} per \
                 step; each step sums {values} gradient values ({:.2} MB as f32) across the \
                 ranks",
                comm.world_size(),
                comm.backend(),
                o.batch_size,
                o.global_batch() * o.accumulate,
                values as f64 * 4.0 / 1e6
            );
        }
        (model, varmap, opt, state, tok, masking)
    } else {
        (model, varmap, opt, state, tok, masking)
    };
    let train_tok = tok.train_config()?;
    let config = model.model().config().clone();
    let teacher = if masking.target.embedding() {
        let teacher = Teacher::new(&config, &varmap, masking.teacher_decay, &device, dtype)?;
        if let Some(path) = &teacher_path {
            if !path.exists() {
                return Err(Error::dataset(
                    path,
                    "missing: the checkpoint has an embedding target but no teacher",
                ));
            }
            copy_weights(teacher.varmap(), path, |_| true, true)?;
        }
        if dist {
            broadcast_vars(&*comm, teacher.varmap())?;
        }
        Some(teacher)
    } else {
        None
    };
    let metrics_file = if root {
        Some(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&metrics_path)
                .map_err(Error::io(run_dir))?,
        )
    } else {
        None
    };
    let feed = EpochFeed::new(
        FeedItems {
            per_item: &per_item,
            labels: Vec::new(),
            ids: items.iter().map(|&i| i as u64).collect(),
        },
        &train_tok,
        o.batch_parts(&device),
        o,
        "pretrain epoch",
    );
    let mut driver = PretrainDriver {
        model: &model,
        teacher: teacher.as_ref(),
        device: &device,
        options: o,
        masking,
        feed,
        epoch: 0,
        seed: 0,
        config: &config,
        varmap: &varmap,
        saved_tok: &tok,
        schedule: &schedule,
        run_dir,
        last_dir: &last_dir,
        metrics_file,
        rank: comm.rank(),
        world: comm.world_size(),
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
        stats: driver.feed.stats.clone(),
        skipped: std::mem::take(&mut driver.feed.skipped),
        train_items: driver.train_items,
        train_seconds: driver.train_seconds,
        device: DeviceChoice::of(&device),
        formats: item_formats,
    })
}

/// [`pretrain()`]'s driver of [`fit_loop`]: batches from an [`EpochFeed`] (this rank's
/// piece of each), masked block modelling's gradients, rank 0's checkpoints and metrics.
struct PretrainDriver<'a> {
    model: &'a MaskedBlockModel,
    /// The embedding target's teacher (none with the ids target alone).
    teacher: Option<&'a Teacher>,
    device: &'a Device,
    options: &'a TrainOptions,
    masking: Masking,
    feed: EpochFeed<'a>,
    /// The epoch in progress (from 0).
    epoch: usize,
    /// The seed of the next batch's dropout masks.
    seed: u64,
    config: &'a Config,
    varmap: &'a VarMap,
    saved_tok: &'a TokenizerConfig,
    schedule: &'a CosineSchedule,
    run_dir: &'a Path,
    last_dir: &'a Path,
    /// Rank 0's (the others write nothing).
    metrics_file: Option<fs::File>,
    rank: usize,
    world: usize,
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

    /// Saves the resumable checkpoint `last` at `state` (rank 0; the others write nothing).
    fn save_last(&self, opt: &AdamW, state: &TrainState) -> Result<()> {
        if self.rank != 0 {
            return Ok(());
        }
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
        if let Some(teacher) = self.teacher {
            let path = self.last_dir.join(TEACHER_FILE);
            teacher
                .varmap()
                .save(&path)
                .map_err(|e| Error::dataset(&path, e.to_string()))?;
        }
        let path = self.last_dir.join(MASKING_FILE);
        let text = serde_json::to_string_pretty(&self.masking).map_err(|source| Error::Json {
            path: path.clone(),
            source,
        })?;
        fs::write(&path, text).map_err(Error::io(&path))
    }
}

impl Driver for PretrainDriver<'_> {
    type Batch = Vec<FedPart>;

    fn start_epoch(&mut self, epoch: usize, skip: usize) -> Result<usize> {
        self.epoch = epoch;
        Ok(self.feed.start(epoch, skip))
    }

    fn next_batch(&mut self) -> Result<Option<Option<Vec<FedPart>>>> {
        Ok(self.feed.next())
    }

    fn seed_dropout(&mut self, seed: u64) {
        self.seed = seed;
        self.model.model().seed_dropout(seed);
    }

    fn gradients(&mut self, batch: Vec<FedPart>) -> Result<(GradStore, EpochSums)> {
        // The masks follow from the run's seed, the batch's place and each item alone: the
        // same on one rank as on several, and after a resume.
        let seed = tempest_model::dropout_seed(
            self.options.seed,
            &[0x706c_616e, self.epoch as u64, self.feed.position() as u64],
        );
        let (parts, keys): (Vec<HostBatch>, Vec<Vec<u64>>) =
            batch.into_iter().map(|p| (p.batch, p.items)).unzip();
        pretrain_gradients(
            self.model,
            self.teacher,
            &parts,
            &keys,
            &self.masking,
            seed,
            self.device,
        )
    }

    fn global_batch_items(&self) -> Option<usize> {
        Some(self.feed.batch_items())
    }

    fn after_step(&mut self, state: &TrainState, opt: &AdamW, step: &StepLog) -> Result<()> {
        if let Some(teacher) = self.teacher {
            // After step `state.step` (counted from 1): every rank holds the same weights.
            teacher.update(self.varmap, state.step.saturating_sub(1))?;
        }
        self.feed.show_step("ids", &state.epoch_sums, step);
        if self.options.mid_epoch_checkpoint_due(state.step, step) {
            self.save_last(opt, state)?;
        }
        Ok(())
    }

    fn stop_requested(&self) -> bool {
        crate::train::stop_requested()
    }

    fn end_batches(&mut self) {
        self.feed.finish();
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
        if self.rank != 0 {
            return Ok(());
        }
        let line = json!({
            "epoch": log.epoch,
            "step": state.step,
            "lr": self.schedule.lr(state.step.saturating_sub(1)),
            "pretrain": {
                "loss": sums.mean_loss(),
                "id_accuracy": sums.accuracy(),
                // The ids' and the embedding target's parts of the loss (0 where not a target).
                "ids_loss": sums.reconstruction / sums.items.max(1.0),
                "embedding_loss": sums.classification / sums.items.max(1.0),
                "items": sums.items,
                // This rank's: with several ranks the job pretrains `ranks` times as many.
                "items_per_s": log.items as f64 / log.seconds.max(1e-9),
                "ranks": self.world,
                "skipped": loader_skips(&self.feed.stats),
            },
            "masking": self.masking,
            "elapsed_s": self.elapsed(),
        });
        if let Some(f) = self.metrics_file.as_mut() {
            writeln!(f, "{line}").map_err(Error::io(self.run_dir))?;
            f.flush().map_err(Error::io(self.run_dir))?;
            // curves.png: the loss and the masked ids predicted right, per epoch.
            crate::report::plot(self.run_dir, &[]);
        }
        if self.options.progress {
            let embedding = if self.masking.target.embedding() {
                format!(
                    ", embedding loss {:.4}",
                    sums.classification / sums.items.max(1.0)
                )
            } else {
                String::new()
            };
            eprintln!(
                "pretrain epoch {}/{}: loss {:.4}, masked ids right {:.4}{embedding}",
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

/// The gradients of the mean pretraining loss over one batch given in `parts`, each item's
/// masks drawn from `seed` and its key, computed at once on rayon's threads (each part
/// weighted by its share of the items, added in order, as [`tempest_model::batch_gradients`]
/// does for training); the sums hold the loss as `loss` and `reconstruction`, and the
/// fraction of predicted ids that were right as `correct` (per item).
///
/// `keys[i]` are part i's items' keys (their ids in the dataset), from which with `seed`
/// each item's masks are drawn ([`tempest_model::pretrain::MaskPlan::draw_keyed`]); a part
/// without keys keys its items by their places.
pub fn pretrain_gradients(
    model: &MaskedBlockModel,
    teacher: Option<&Teacher>,
    parts: &[HostBatch],
    keys: &[Vec<u64>],
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
            let k = keys.get(i).map_or(&[][..], Vec::as_slice);
            prepare(hb, masking, seed, k, device)
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    let weight = |i: usize| parts[i].batch as f64 / items as f64;
    let one = |m: &MaskedBlockModel, i: usize| -> candle_core::Result<(Parts, GradStore)> {
        let (batch, plan) = &prepared[i];
        let l = m.loss(batch, plan, teacher, true)?;
        let grads = if parts.len() == 1 {
            l.loss.backward()?
        } else {
            (&l.loss * weight(i))?.backward()?
        };
        let loss = l.loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        Ok(([loss, l.ids, l.embedding, l.accuracy], grads))
    };
    let results: Vec<candle_core::Result<(Parts, GradStore)>> = if parts.len() == 1 {
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
    let mut sum: Parts = [0.0; 4];
    let mut total: Option<GradStore> = None;
    for (i, r) in results.into_iter().enumerate() {
        let (values, grads) = r?;
        for (s, v) in sum.iter_mut().zip(values) {
            *s += v * weight(i);
        }
        match total.as_mut() {
            None => total = Some(grads),
            Some(t) => t.extend(grads)?,
        }
    }
    let grads = total.ok_or_else(|| Error::setting("batch", "no parts"))?;
    let n = items as f64;
    let [loss, ids, embedding, accuracy] = sum;
    // Pretraining has no classes: `reconstruction` carries the ids' part of the loss and
    // `classification` the embedding target's (`metrics.jsonl`: `ids_loss`, `embedding_loss`).
    let sums = EpochSums {
        loss: loss * n,
        classification: embedding * n,
        reconstruction: ids * n,
        correct: accuracy * n,
        items: n,
    };
    Ok((grads, sums))
}

/// One part's loss, ids' part, embedding's part and fraction of ids right.
type Parts = [f64; 4];

/// The variables of `varmap` with their names, in name order.
fn sorted_vars(varmap: &VarMap) -> Result<Vec<(String, Var)>> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| Error::setting("varmap", "its lock is poisoned"))?;
    let mut v: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(v)
}

/// Sets every variable of `varmap` (in name order) to rank 0's.
fn broadcast_vars(comm: &dyn crate::dist::Communicator, varmap: &VarMap) -> Result<()> {
    let vars = sorted_vars(varmap)?;
    let tensors: Vec<Tensor> = vars.iter().map(|(_, v)| v.as_tensor().detach()).collect();
    for ((_, var), t) in vars
        .iter()
        .zip(crate::dist::broadcast_tensors(comm, &tensors)?)
    {
        var.set(&t)?;
    }
    Ok(())
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
/// pretraining run) or `best` (a training run); its files checked against their checksums
/// ([`checkpoint::verify`]).
pub fn resolve_checkpoint(dir: &Path) -> Result<PathBuf> {
    let found = [dir.to_path_buf(), dir.join("last"), dir.join("best")]
        .iter()
        .find_map(|d| checkpoint::resolve(d))
        .ok_or_else(|| {
            Error::dataset(
                dir,
                "no checkpoint (model.safetensors) here or in last/, best/",
            )
        })?;
    checkpoint::verify(&found)?;
    Ok(found)
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
    let vars = sorted_vars(varmap)?;
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

/// [`pretrain()`] on ranks that are threads of this process ([`crate::dist`]'s test backend):
/// no MPI needed; `scripts/mpi-check.sh` runs the same over MPI (`mpi_check pretrain`).
#[cfg(test)]
mod ranks {
    use std::collections::HashMap;

    use super::*;
    use crate::dist::{threads, Comm};
    use crate::SplitPlan;
    use tempest_data::Layout;

    fn words() -> Result<Dataset> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/spoken-words");
        let mut dataset = Dataset::from_compressed(Layout::SpeechCommands, &root)?;
        let plan = SplitPlan::standard(&dataset)?;
        // 16 items: two batches of 8 an epoch.
        dataset.truncate_splits(&plan.train, 16);
        Ok(dataset)
    }

    fn options(comm: Comm, batch: usize, parts: usize) -> TrainOptions {
        TrainOptions {
            epochs: 2,
            batch_size: batch,
            seed: 5,
            workers: 1,
            parallel_parts: parts,
            progress: false,
            lr: 3e-3,
            stop_after_steps: Some(3),
            comm,
            ..TrainOptions::default()
        }
    }

    fn weights(dir: &Path) -> Result<HashMap<String, Tensor>> {
        let path = dir.join("last").join(tempest_model::WEIGHTS_FILE);
        Ok(candle_core::safetensors::load(path, &Device::Cpu)?)
    }

    /// The largest absolute difference between same-named tensors of `a` and `b`.
    fn max_diff(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) -> Result<f32> {
        assert_eq!(a.len(), b.len());
        assert!(!a.is_empty());
        let mut diff = 0f32;
        for (name, ta) in a {
            let tb = b
                .get(name)
                .ok_or_else(|| Error::setting("test", format!("no {name}")))?;
            let d = (ta - tb)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?;
            diff = diff.max(d);
        }
        Ok(diff)
    }

    /// Two ranks with batches of 4 take the steps of one process with batches of 8: the same
    /// items, the same masks (keyed by item), their gradients averaged before the step; with
    /// both targets, so that the teacher's outputs are taken on each rank's piece too.
    #[test]
    fn two_ranks_of_half_batches_pretrain_as_one_process() -> Result<()> {
        let dataset = words()?;
        let train = vec!["train".to_string()];
        let cfg = Config::tiny();
        let masking = Masking {
            target: tempest_model::pretrain::Target::Both,
            teacher_decay: 0.5,
            ..Masking::default()
        };
        let dir = std::env::temp_dir().join(format!("tempest-pt-ranks-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let (data, t, c, m, d) = (&dataset, &train, &cfg, &masking, &dir);
        let reports = threads::run(2, |rank| {
            let comm = Comm::new(rank);
            let r = pretrain(data, t, c, &options(comm, 4, 1), m, &d.join("two"), false)?;
            Ok(r)
        })?;
        for (rank, r) in reports.iter().enumerate() {
            // 3 steps of 4 items per rank: the first epoch's 2 batches and one more.
            assert!(r.interrupted && r.steps == 3, "rank {rank}: {r:?}");
            assert_eq!(r.train_items, 12, "rank {rank}");
        }
        let one = |batch: usize, parts: usize, name: &str| -> Result<HashMap<String, Tensor>> {
            let o = options(Comm::default(), batch, parts);
            let r = pretrain(&dataset, &train, &cfg, &o, &masking, &dir.join(name), false)?;
            assert_eq!(r.steps, 3, "{name}");
            weights(&dir.join(name))
        };
        let (w1, wh, w4) = (one(8, 1, "one")?, one(8, 2, "halves")?, one(4, 1, "four")?);
        let w2 = weights(&dir.join("two"))?;
        // Rank 0 alone wrote the epoch's line, counting both ranks' items.
        let lines = fs::read_to_string(dir.join("two/metrics.jsonl")).map_err(Error::io(&dir))?;
        let first: serde_json::Value = serde_json::from_str(lines.lines().next().unwrap_or(""))
            .map_err(|e| Error::setting("test", e.to_string()))?;
        assert_eq!(first["pretrain"]["items"].as_f64(), Some(16.0), "{first}");
        assert_eq!(first["pretrain"]["ranks"].as_u64(), Some(2));
        let state: TrainState =
            checkpoint::read_json(&dir.join("two/last").join(checkpoint::STATE_FILE))?;
        assert_eq!((state.world_size, state.step), (2, 3));
        let two_vs_one = max_diff(&w2, &w1)?;
        // How far one process drifts computing the same batches in two parts instead of one
        // (the f32 sums in another order, grown by Adam's division by √v where a gradient is
        // near zero): the ranks differ from one process by rounding of this kind only.
        let floor = max_diff(&wh, &w1)?;
        // Other batches (4 items a step on one process): what a wrong split or a missing
        // all-reduce would look like.
        let other = max_diff(&w4, &w1)?;
        let teacher = |name: &str| -> Result<HashMap<String, Tensor>> {
            let path = dir.join(name).join("last").join(TEACHER_FILE);
            Ok(candle_core::safetensors::load(path, &Device::Cpu)?)
        };
        let teachers = max_diff(&teacher("two")?, &teacher("one")?)?;
        assert!(
            teachers <= 2.0 * floor.max(1e-6),
            "the teachers of two ranks and of one process differ by {teachers:e}"
        );
        eprintln!("two ranks vs one: {two_vs_one:e}; in parts: {floor:e}; batches of 4: {other:e}");
        assert!(
            two_vs_one <= 2.0 * floor.max(1e-6) && two_vs_one * 20.0 < other,
            "two ranks differ from one process by {two_vs_one:e} (in parts: {floor:e}, other \
             batches: {other:e})"
        );
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }
}
