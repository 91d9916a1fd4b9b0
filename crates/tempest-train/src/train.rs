//! A training run on files, [`train()`]: [`fit_loop`] driven by the loader's batches of files
//! (`FileDriver`), with checkpoints, resume, evaluation every epoch and the run's metrics;
//! and the Ctrl-C handler that asks runs to save and stop.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::Device;
use serde_json::json;
use tempest_model::{Config, DeviceChoice, Tempest};
use tempest_tokenize::{HostBatch, LoaderStats, TokenizerConfig};

use crate::checkpoint::{self, CheckpointParts, TrainState};
use crate::driver::{fit_loop, Driver, EpochLog, Outcome, StepLog};
use crate::evaluate::{detect_formats, evaluate, merge_stats};
use crate::feed::{EpochFeed, FeedItems};
use crate::metrics::EpochSums;
use crate::optim::{AdamW, CosineSchedule};
use crate::options::TrainOptions;
use crate::report::{loader_skips, plot, trim_metrics, RunReport};
use crate::{init_seeded, Dataset, Error, Result, SplitPlan};

static STOP: AtomicBool = AtomicBool::new(false);
static HANDLER: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Installs (once per process) a Ctrl-C handler that asks running trainings to save and stop.
/// A second Ctrl-C while saving is not caught specially: the checkpoint swap is atomic.
pub fn install_ctrl_c_handler() -> bool {
    *HANDLER.get_or_init(|| ctrlc::set_handler(|| STOP.store(true, Ordering::SeqCst)).is_ok())
}

/// Whether Ctrl-C asked the runs of this process to stop.
/// Each item's files of the `wanted` variants with their sizes (0 where unreadable: the
/// loader reports the file), for the sampler and the loader: `train`'s and `pretrain`'s.
pub(crate) fn item_files(
    dataset: &Dataset,
    indices: &[usize],
    wanted: &[String],
) -> Vec<Vec<(PathBuf, u64)>> {
    indices
        .iter()
        .map(|&i| {
            dataset.samples[i]
                .variants
                .iter()
                .filter(|(v, _)| wanted.contains(v))
                .map(|(_, p)| (p.clone(), fs::metadata(p).map(|m| m.len()).unwrap_or(0)))
                .collect()
        })
        .collect()
}

/// A resumed run must keep the seed it was started with (its batches, variants and masks
/// follow from it).
pub(crate) fn check_seed(state: &TrainState, seed: u64) -> Result<()> {
    if state.seed != seed {
        return Err(Error::setting(
            "seed",
            format!("the run was started with seed {}, not {seed}", state.seed),
        ));
    }
    Ok(())
}

/// A resumed run must have the number of ranks it was started with (its batches' pieces
/// follow from it).
pub(crate) fn check_world(state: &TrainState, world: usize, run_dir: &Path) -> Result<()> {
    if state.world_size != world {
        return Err(Error::setting(
            "world size",
            format!(
                "the run in {} was trained on {} rank(s): resume it on {} (mpirun -np {}), \
                 not {world}",
                run_dir.display(),
                state.world_size,
                state.world_size,
                state.world_size,
            ),
        ));
    }
    Ok(())
}

pub(crate) fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Clears an earlier stop request (at the start of a run).
pub(crate) fn reset_stop() {
    STOP.store(false, Ordering::SeqCst);
}

/// A training run in `run_dir`: trains on `plan.train`, evaluates every epoch (every
/// [`TrainOptions::eval_every`]th and the last) on `plan.validation` (or `plan.test` when
/// there is no validation split) in batches of [`TrainOptions::batch_size`], keeps the best
/// checkpoint in `run_dir/best` and a resumable one in `run_dir/last`, appends one JSON line
/// per epoch to `run_dir/metrics.jsonl`, and ends with a test on `plan.test` of the best
/// checkpoint (with a validation split) or of the last weights (without one: choosing an
/// epoch on the test split would overstate the accuracy).
///
/// `resume`: continue from `run_dir/last` (same dataset, plan and options); on the CPU with
/// dropout 0 the weights reached equal those of an uninterrupted run.
///
/// With several ranks (`options.comm`; module [`crate::dist`]) every rank calls this with the
/// same arguments and trains on its piece of each batch; rank 0 alone reads the checkpoint it
/// resumes from, writes the run folder and evaluates, and the others return a report without
/// test. An error on any rank ends the whole job ([`crate::dist::abort_on_error`]).
pub fn train(
    dataset: &Dataset,
    plan: &SplitPlan,
    model_config: &Config,
    options: &TrainOptions,
    run_dir: &Path,
    resume: bool,
) -> Result<RunReport> {
    crate::dist::abort_on_error(&options.comm, || {
        train_ranks(dataset, plan, model_config, options, run_dir, resume)
    })
}

fn train_ranks(
    dataset: &Dataset,
    plan: &SplitPlan,
    model_config: &Config,
    options: &TrainOptions,
    run_dir: &Path,
    resume: bool,
) -> Result<RunReport> {
    let comm = options.comm.clone();
    let (root, dist) = (comm.is_root(), comm.is_distributed());
    let rank_options = options.for_rank();
    let o: &TrainOptions = &rank_options;
    let device = o.device.open()?;
    let dtype = o.dtype.dtype(&device)?;
    o.check_batch()?;
    if root {
        fs::create_dir_all(run_dir).map_err(Error::io(run_dir))?;
    }
    if o.handle_ctrl_c {
        install_ctrl_c_handler();
    }
    reset_stop();

    // Files of several formats (MP3 and Opus variants of one clip, say) train one model with
    // one vocabulary, each format read as under its own default tokens.
    let formats = detect_formats(dataset, &o.train_variants)?;
    let mut config = o.model_config_for(model_config, dataset.classes.len(), &formats)?;

    let tok = o.tokenizer_for(&formats, &config)?;
    // Fine-tuning takes over the pretrained model's mixer (unless `o.mixer` names one): a
    // recipe's other kind would start M afresh. A flatten mixer keeps its positions.
    if let Some(dir) = &o.init {
        let pre = tempest_model::load_config(&crate::pretrain::resolve_checkpoint(dir)?)?;
        if o.mixer.is_none() {
            config.mixer = pre.mixer;
        }
        let flatten = tempest_model::MixerKind::Flatten;
        if config.mixer == flatten && pre.mixer == flatten && config.mix_positions == 0 {
            config.mix_positions = pre.flat_positions().min(config.max_block_bytes);
        }
    }
    crate::size_mixer(&mut config, dataset, &o.train_variants, &tok)?;
    let train_tok = tok.train_config()?;
    let eval_tok = tok.eval_config()?;

    // The training items and their variants.
    let train_idx = dataset.select(&plan.train);
    let wanted: Vec<String> = if o.train_variants.is_empty() {
        dataset.variants()
    } else {
        o.train_variants.clone()
    };
    let per_item = item_files(dataset, &train_idx, &wanted);
    // One plan of batches across the ranks; each rank trains on its piece of each.
    let feed_items = FeedItems {
        per_item: &per_item,
        labels: train_idx
            .iter()
            .map(|&i| dataset.samples[i].label)
            .collect(),
        ids: train_idx.iter().map(|&i| i as u64).collect(),
    };
    let feed = EpochFeed::new(feed_items, &train_tok, o.batch_parts(&device), o, "epoch");
    let items_per_epoch = feed.items_per_epoch();
    if items_per_epoch == 0 {
        return Err(Error::Empty {
            split: plan.train.join("+"),
            skipped: 0,
        });
    }
    let schedule = o.schedule(items_per_epoch);

    // Model, optimiser, state.
    let last_dir = run_dir.join("last");
    let best_dir = run_dir.join("best");
    let (model, varmap, opt, state) = if !root {
        // Everything comes from rank 0 below.
        let (model, varmap) = init_seeded(&config, &device, dtype, o.seed)?;
        let opt = AdamW::new(&varmap, o.adamw)?;
        (model, varmap, opt, TrainState::default())
    } else {
        match checkpoint::resolve(&last_dir).filter(|_| resume) {
            Some(dir) => {
                // (`load_trainable` checks the checkpoint's checksums first.)
                let (model, varmap) = tempest_model::load_trainable(&dir, &device, dtype)?;
                let mut opt = AdamW::new(&varmap, o.adamw)?;
                opt.load(&dir.join(checkpoint::OPTIMIZER_FILE), &device)?;
                let state: TrainState = checkpoint::read_json(&dir.join(checkpoint::STATE_FILE))?;
                check_seed(&state, o.seed)?;
                check_world(&state, comm.world_size(), run_dir)?;
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
                if let Some(dir) = &o.init {
                    let r = crate::pretrain::init_from_pretrained(&varmap, dir)?;
                    eprintln!("{}", r.summary());
                }
                let opt = AdamW::new(&varmap, o.adamw)?;
                let state = TrainState {
                    seed: o.seed,
                    world_size: comm.world_size(),
                    ..TrainState::default()
                };
                (model, varmap, opt, state)
            }
        }
    };
    // Every rank starts from rank 0's configuration, state, weights and (resuming) moments.
    let (model, varmap, mut opt, mut state) = if dist {
        let mut bytes = if root {
            serde_json::to_vec(
                &json!({"config": model.config(), "state": state, "resumed": resume}),
            )
            .map_err(|e| Error::setting("dist", e.to_string()))?
        } else {
            Vec::new()
        };
        comm.broadcast_bytes(&mut bytes)?;
        let (model, varmap, mut opt, state, resumed) = if root {
            (model, varmap, opt, state, resume)
        } else {
            let start: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|e| Error::setting("dist", format!("rank 0's start: {e}")))?;
            let root_config: Config = serde_json::from_value(start["config"].clone())
                .map_err(|e| Error::setting("dist", format!("rank 0's model: {e}")))?;
            let state: TrainState = serde_json::from_value(start["state"].clone())
                .map_err(|e| Error::setting("dist", format!("rank 0's state: {e}")))?;
            // Whether rank 0 resumed (it alone looks at the run folder).
            let resumed = start["resumed"].as_bool().unwrap_or(false);
            drop((model, varmap, opt));
            let (model, varmap) = init_seeded(&root_config, &device, dtype, o.seed)?;
            let opt = AdamW::new(&varmap, o.adamw)?;
            (model, varmap, opt, state, resumed)
        };
        opt.broadcast_from_root(&*comm, resumed)?;
        if root {
            let values = opt.parameter_count();
            eprintln!(
                "data-parallel: {} ranks ({}), {} items per rank and batch, {} per step; each \
                 step sums {values} gradient values ({:.2} MB as f32) across the ranks",
                comm.world_size(),
                comm.backend(),
                o.batch_size,
                o.global_batch() * o.accumulate,
                values as f64 * 4.0 / 1e6
            );
        }
        (model, varmap, opt, state)
    } else {
        (model, varmap, opt, state)
    };
    let config = model.config().clone();
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
    let metrics_file = if root {
        Some(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(run_dir.join("metrics.jsonl"))
                .map_err(Error::io(run_dir))?,
        )
    } else {
        None
    };
    let mut driver = FileDriver {
        model: &model,
        device: &device,
        dataset,
        options: o,
        feed,
        eval_tok: &eval_tok,
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
        frozen: if o.freeze_block_encoder > 0 {
            crate::pretrain::block_encoder_vars(&varmap)
        } else {
            Vec::new()
        },
        epoch_index: 0,
        rank: comm.rank(),
        world: comm.world_size(),
    };
    let outcome = fit_loop(&mut driver, &mut opt, &schedule, &mut state, o)?;
    let (process_start, elapsed_before, metrics_file) = (
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
    if !root {
        return Ok(report);
    }
    let Some(mut metrics_file) = metrics_file else {
        return Ok(report);
    };

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
        o.batch_size,
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

/// [`train()`]'s driver of [`fit_loop`]: each epoch's batches of files from an
/// [`EpochFeed`] (read and tokenized by the loader's threads, this rank's piece, split into
/// parts computed at once); progress; periodic and end-of-epoch checkpoints; evaluation,
/// metrics and the best checkpoint after each epoch.
struct FileDriver<'a> {
    model: &'a Tempest,
    device: &'a Device,
    dataset: &'a Dataset,
    options: &'a TrainOptions,
    feed: EpochFeed<'a>,
    eval_tok: &'a TokenizerConfig,
    report: &'a mut RunReport,
    schedule: &'a CosineSchedule,
    run_dir: &'a Path,
    last_dir: &'a Path,
    best_dir: &'a Path,
    /// Rank 0's (the others write nothing).
    metrics_file: Option<std::fs::File>,
    select_split: &'a [String],
    select_idx: Vec<usize>,
    has_validation: bool,
    /// What every checkpoint holds (`resume` is filled in for `last`).
    parts_saved: CheckpointParts<'a>,
    process_start: Instant,
    elapsed_before: f64,
    /// E_t and M's variables, whose gradients are dropped in the first
    /// `options.freeze_block_encoder` epochs (empty when none are).
    frozen: Vec<candle_core::Var>,
    /// The epoch in progress (from 0).
    epoch_index: usize,
    /// This process's rank and the number of ranks ([`crate::dist`]).
    rank: usize,
    world: usize,
}

impl FileDriver<'_> {
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
                resume: Some((opt, &state)),
                ..self.parts_saved
            },
        )
    }
}

impl Driver for FileDriver<'_> {
    type Batch = Vec<HostBatch>;

    fn start_epoch(&mut self, epoch: usize, skip: usize) -> Result<usize> {
        self.epoch_index = epoch;
        Ok(self.feed.start(epoch, skip))
    }

    fn next_batch(&mut self) -> Result<Option<Option<Vec<HostBatch>>>> {
        let next = self.feed.next();
        self.report.skipped.append(&mut self.feed.skipped);
        Ok(next.map(|b| b.map(|parts| parts.into_iter().map(|p| p.batch).collect())))
    }

    fn seed_dropout(&mut self, seed: u64) {
        // With dropout there is one part; `batch_gradients` seeds each part in turn.
        self.model.seed_dropout(seed);
    }

    fn gradients(&mut self, batch: Vec<HostBatch>) -> Result<(GradStore, EpochSums)> {
        let (mut grads, sums) = batch_gradients(self.model, &batch, self.device)?;
        if self.epoch_index < self.options.freeze_block_encoder {
            for v in &self.frozen {
                grads.remove(v.as_tensor());
            }
        }
        Ok((grads, sums))
    }

    fn global_batch_items(&self) -> Option<usize> {
        Some(self.feed.batch_items())
    }

    fn after_step(&mut self, state: &TrainState, opt: &AdamW, step: &StepLog) -> Result<()> {
        self.feed.show_step("acc", &state.epoch_sums, step);
        if self.options.mid_epoch_checkpoint_due(state.step, step) {
            self.save_last(opt, state)?;
        }
        Ok(())
    }

    fn stop_requested(&self) -> bool {
        stop_requested()
    }

    fn end_batches(&mut self) {
        self.feed.finish();
        self.report.train_stats = self.feed.stats.clone();
        self.report.skipped.append(&mut self.feed.skipped);
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
        if self.rank != 0 {
            // Rank 0 evaluates and writes; this rank goes on to the next epoch.
            return Ok(());
        }
        let o = self.options;
        // With a weight average (`--ema`), evaluation and the best checkpoint read the
        // average; the trained weights stay in the last checkpoint, to resume from. Batches
        // of the training size: larger ones were slower (docs/audio.md, session 17).
        let eval = if o.eval_due(log.epoch) {
            let eval = opt.with_average_weights(|| {
                evaluate(
                    self.model,
                    self.dataset,
                    &self.select_idx,
                    &o.eval_variants,
                    self.eval_tok,
                    o.batch_size,
                    o.workers,
                    o.progress,
                )
            })?;
            merge_stats(&mut self.report.eval_stats, &eval.stats);
            self.report.skipped.extend(eval.skipped.clone());
            Some(eval)
        } else {
            None
        };
        let sums = log.sums;
        let mut line = json!({
            "epoch": log.epoch,
            "step": state.step,
            "lr": self.schedule.lr(state.step.saturating_sub(1)),
            "train": {
                "loss": sums.mean_loss(),
                "classification": sums.mean_classification(),
                "reconstruction": sums.mean_reconstruction(),
                "accuracy": sums.accuracy(),
                "items": sums.items,
                // This rank's: with several ranks the job trains `ranks` times as many.
                "items_per_s": log.items as f64 / log.seconds.max(1e-9),
                "ranks": self.world,
                "skipped": loader_skips(&self.report.train_stats),
            },
            "elapsed_s": self.elapsed(),
        });
        if let Some(eval) = &eval {
            line["eval_split"] = json!(self.select_split);
            line["eval"] = eval.to_json();
        }
        if let Some(f) = self.metrics_file.as_mut() {
            writeln!(f, "{line}").map_err(Error::io(self.run_dir))?;
        }
        plot(self.run_dir, &self.dataset.classes);
        if o.progress {
            let evaluated = eval.as_ref().map_or(String::new(), |e| {
                format!("; {} acc {:.4}", self.select_split.join("+"), e.accuracy)
            });
            eprintln!(
                "epoch {}/{}: train loss {:.4} acc {:.4}{evaluated}",
                log.epoch,
                o.epochs,
                sums.mean_loss(),
                sums.accuracy(),
            );
        }
        if let Some(eval) = &eval {
            let better = state.best.is_none_or(|(b, _)| eval.accuracy > b);
            if better || !self.has_validation {
                if better {
                    state.best = Some((eval.accuracy, log.epoch));
                }
                opt.with_average_weights(|| checkpoint::save(self.best_dir, &self.parts_saved))?;
            }
        }
        state.elapsed_s = self.elapsed();
        self.save_last(opt, state)?;
        Ok(())
    }
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
    use candle_core::DType;
    use cff_blocks::Format;
    use tempest_tokenize::{collate, tokenize, CropContext, TokenizedItem, PAD_ID};

    /// Spoken-word MP3s of the repository, tokenized as training reads them.
    fn spoken_words(model: &Config, count: usize) -> Vec<(TokenizedItem, u32)> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/spoken-words");
        let mp3 = TokenizerConfig::for_format(Format::Mp3);
        let tok = mp3
            .clone()
            .with_max_block_bytes(mp3.max_block_bytes.min(model.max_block_bytes))
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

/// [`train()`] on ranks that are threads of this process ([`crate::dist`]'s test backend): no
/// MPI needed, so these run everywhere; `scripts/mpi-check.sh` runs the same over MPI.
#[cfg(test)]
mod ranks {
    use super::*;
    use crate::dist::{threads, Comm, Communicator as _};
    use tempest_data::Layout;

    fn words() -> Result<(Dataset, SplitPlan)> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/spoken-words");
        let mut dataset = Dataset::from_compressed(Layout::SpeechCommands, &root)?;
        let plan = SplitPlan::standard(&dataset)?;
        // 21 items: batches of 4 across 2 ranks leave a last batch of 5 (3 + 2), batches of 1
        // a last batch of 1 (rank 1 gets nothing).
        dataset.truncate_splits(&plan.train, 21);
        Ok((dataset, plan))
    }

    fn options(comm: Comm, batch: usize) -> TrainOptions {
        TrainOptions {
            epochs: 2,
            batch_size: batch,
            seed: 4,
            workers: 1,
            parallel_parts: 1,
            progress: false,
            comm,
            ..TrainOptions::default()
        }
    }

    fn scratch(name: &str) -> Result<PathBuf> {
        let dir = std::env::temp_dir().join(format!("tempest-ranks-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
        Ok(dir)
    }

    fn last(dir: &Path, file: &str) -> Result<Vec<u8>> {
        let path = dir.join("last").join(file);
        fs::read(&path).map_err(Error::io(&path))
    }

    /// Two ranks: every item once per epoch (11 + 10 items, 21 in rank 0's metrics), rank 0
    /// alone writes and tests; stopped inside the first epoch and resumed, the weights and
    /// moments of the uninterrupted run to the bit; one process refuses to resume it.
    #[test]
    fn two_ranks_see_every_item_once_and_resume_exactly() -> Result<()> {
        let (dataset, plan) = words()?;
        let cfg = Config::tiny().with_num_classes(10);
        let dir = scratch("resume")?;
        let d = &dir;
        let (data, pl, c) = (&dataset, &plan, &cfg);
        let reports = threads::run(2, |rank| {
            let r = rank.rank();
            let comm = Comm::new(rank);
            let each = options(comm.clone(), 1);
            let once = TrainOptions { epochs: 1, ..each };
            let one = train(data, pl, c, &once, &d.join("once"), false)?;
            let whole = train(
                data,
                pl,
                c,
                &options(comm.clone(), 4),
                &d.join("whole"),
                false,
            )?;
            let stop = TrainOptions {
                stop_after_steps: Some(2),
                ..options(comm.clone(), 4)
            };
            let first = train(data, pl, c, &stop, &d.join("parted"), false)?;
            let rest = train(data, pl, c, &options(comm, 4), &d.join("parted"), true)?;
            Ok((r, one, whole, first, rest))
        })?;
        for (r, once, whole, first, rest) in &reports {
            assert_eq!(once.train_items, if *r == 0 { 11 } else { 10 }, "rank {r}");
            assert_eq!(once.steps, 11);
            assert_eq!(once.test.is_some(), *r == 0, "rank 0 alone tests");
            assert_eq!(whole.steps, 6, "two epochs of 3 steps");
            assert!(first.interrupted && first.steps == 2);
            assert_eq!((rest.steps, rest.interrupted), (6, false));
        }
        let lines = fs::read_to_string(dir.join("once/metrics.jsonl")).map_err(Error::io(&dir))?;
        let epoch: serde_json::Value = serde_json::from_str(lines.lines().next().unwrap_or(""))
            .map_err(|e| Error::setting("test", e.to_string()))?;
        assert_eq!(epoch["train"]["items"].as_f64(), Some(21.0), "{epoch}");
        assert_eq!(epoch["train"]["ranks"].as_u64(), Some(2));
        for file in [tempest_model::WEIGHTS_FILE, checkpoint::OPTIMIZER_FILE] {
            assert!(
                last(&dir.join("whole"), file)? == last(&dir.join("parted"), file)?,
                "{file} after resuming"
            );
        }
        let state: TrainState =
            checkpoint::read_json(&dir.join("parted/last").join(checkpoint::STATE_FILE))?;
        assert_eq!((state.world_size, state.step), (2, 6));
        let err = train(
            &dataset,
            &plan,
            &cfg,
            &options(Comm::default(), 4),
            &dir.join("parted"),
            true,
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("trained on 2 rank(s)"), "{err}");
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }
}
