//! The training loop, [`fit_loop`], and its simplest driver, [`fit`].
//!
//! [`fit_loop`] is the one loop every run goes through: epochs of batches, gradients
//! accumulated into this crate's [`AdamW`], the warm-up + cosine schedule, clipping, dropout
//! seeds from the run's seed and each batch's place, a budget in steps and a stop request, and a
//! [`TrainState`] that resumes where it stood. A [`Driver`] says where the batches come from and
//! what happens after each step and epoch: [`crate::train()`] drives it with the loader's
//! batches of files, checkpoints, evaluation and metrics; [`fit`] with items prepared in
//! memory, so that two models (the `compare` example: TEMPEST against a spectrogram/pixel
//! ViT) train on the same items, split and budget and are timed the same way. A [`Learner`]
//! turns [`fit`]'s items into a loss and logits; [`prepare_items`] prepares them once, before
//! training, timing the preparation (read the file, then tokenize it, or decode it and compute
//! features) apart from the model.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use serde_json::json;
use tempest_model::Tempest;
use tempest_tokenize::{
    choose_variants, collate, BucketSampler, ItemShape, TokenizedItem, VariantChoice, PAD_ID,
};

use crate::checkpoint::TrainState;
pub use crate::driver::{fit_loop, Driver, EpochLog, Outcome, StepLog};
use crate::metrics::{EpochSums, Metrics, Tally};
use crate::optim::AdamW;
use crate::{Dataset, Error, Result, TrainOptions};

/// A classifier that [`fit`] can train: prepared items in, a loss and logits out.
pub trait Learner {
    /// One prepared file: tokenized blocks, or decoded features.
    type Item;

    /// The item's size, for length bucketing (items of similar size share a batch).
    fn shape(&self, item: &Self::Item) -> ItemShape;

    /// The training loss (a scalar) and the logits `[B, classes]` of `items` with `labels`.
    fn loss(
        &self,
        items: &[&Self::Item],
        labels: &[u32],
        train: bool,
    ) -> candle_core::Result<(Tensor, Tensor)>;

    /// Inference logits `[B, classes]`.
    fn logits(&self, items: &[&Self::Item]) -> candle_core::Result<Tensor>;

    /// Seeds the dropout masks of the next training pass (models without dropout ignore it).
    fn seed_dropout(&self, _seed: u64) {}

    /// The gradients of the mean training loss over `items`, with the loss and how many
    /// items the logits classified correctly. `parts` is [`TrainOptions::parallel_parts`]
    /// (0: the learner's choice): a learner may compute the batch as that many parts at once
    /// (TEMPEST does, [`tempest_model::batch_gradients`]); the default is one pass through
    /// [`Learner::loss`].
    fn gradients(
        &self,
        items: &[&Self::Item],
        labels: &[u32],
        parts: usize,
    ) -> candle_core::Result<Gradients> {
        let _ = parts;
        let (loss, logits) = self.loss(items, labels, true)?;
        let n = items.len() as f64;
        let mean = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let correct = count_correct(&logits, labels).map_err(candle_core::Error::wrap)?;
        Ok(Gradients {
            grads: loss.backward()?,
            sums: EpochSums {
                loss: mean * n,
                classification: mean * n,
                reconstruction: 0.0,
                correct: correct as f64,
                items: n,
            },
        })
    }
}

/// What [`Learner::gradients`] computed for one batch.
#[derive(Debug)]
pub struct Gradients {
    /// Gradients of the batch's mean loss.
    pub grads: GradStore,
    /// The batch's contributions to its epoch's sums (losses × items, correct, items).
    pub sums: EpochSums,
}

impl Gradients {
    /// The batch's mean loss.
    pub fn loss(&self) -> f64 {
        self.sums.mean_loss()
    }

    /// Items whose arg-max logit was the label.
    pub fn correct(&self) -> usize {
        self.sums.correct as usize
    }
}

/// One item of a split with its prepared variants.
#[derive(Debug, Clone)]
pub struct PreparedItem<T> {
    /// Index of the sample in the dataset.
    pub sample: usize,
    /// Its class.
    pub label: u32,
    /// `(variant, prepared file)`, in the dataset's order.
    pub variants: Vec<(String, T)>,
}

/// The items of a split, prepared once, and what preparing them cost.
#[derive(Debug, Clone)]
pub struct Prepared<T> {
    /// Items with at least one prepared variant.
    pub items: Vec<PreparedItem<T>>,
    /// Files that failed, with the reason.
    pub failed: Vec<(PathBuf, String)>,
    /// Files prepared.
    pub files: usize,
    /// Seconds spent preparing them (reading excluded), on one thread.
    pub seconds: f64,
}

impl<T> Prepared<T> {
    /// Mean preparation time per prepared file, in microseconds.
    pub fn us_per_file(&self) -> f64 {
        1e6 * self.seconds / self.files.max(1) as f64
    }

    /// The prepared files of variant `name`.
    pub fn of_variant<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a T> + 'a {
        self.items
            .iter()
            .filter_map(move |i| i.variants.iter().find(|(v, _)| v == name).map(|(_, t)| t))
    }
}

/// Prepares the files of `variants` (all variants when empty) of the samples `indices` with
/// `prepare(bytes, path)`, on the calling thread. Reading a file is not timed; `prepare` is.
/// A file that fails is recorded and left out.
pub fn prepare_items<T, E: std::fmt::Display>(
    dataset: &Dataset,
    indices: &[usize],
    variants: &[String],
    mut prepare: impl FnMut(&[u8], &Path) -> std::result::Result<T, E>,
) -> Prepared<T> {
    let mut out = Prepared {
        items: Vec::new(),
        failed: Vec::new(),
        files: 0,
        seconds: 0.0,
    };
    for &i in indices {
        let Some(s) = dataset.samples.get(i) else {
            continue;
        };
        let mut item = PreparedItem {
            sample: i,
            label: s.label,
            variants: Vec::new(),
        };
        for (v, path) in &s.variants {
            if !variants.is_empty() && !variants.contains(v) {
                continue;
            }
            let data = match fs::read(path) {
                Ok(d) => d,
                Err(e) => {
                    out.failed.push((path.clone(), e.to_string()));
                    continue;
                }
            };
            let start = Instant::now();
            let prepared = prepare(&data, path);
            out.seconds += start.elapsed().as_secs_f64();
            match prepared {
                Ok(t) => {
                    out.files += 1;
                    item.variants.push((v.clone(), t));
                }
                Err(e) => out.failed.push((path.clone(), e.to_string())),
            }
        }
        if !item.variants.is_empty() {
            out.items.push(item);
        }
    }
    out
}

/// What [`fit`] did and measured.
#[derive(Debug, Clone)]
pub struct FitReport {
    /// Each epoch.
    pub epochs: Vec<EpochLog>,
    /// Optimiser steps.
    pub steps: usize,
    /// The test after the last epoch.
    pub test: Metrics,
    /// Seconds the test took (batched inference, no gradients).
    pub test_seconds: f64,
    /// The test accuracy after every `curve_every`th epoch ([`fit`]; empty
    /// without): (epoch, accuracy), the current weights (not a weight average).
    pub curve: Vec<(usize, f64)>,
}

impl FitReport {
    /// Seconds of training over all epochs (the test after them not included).
    pub fn train_seconds(&self) -> f64 {
        self.epochs.iter().map(|e| e.seconds).sum()
    }

    /// Training items per second over all epochs.
    pub fn train_items_per_s(&self) -> f64 {
        let items: usize = self.epochs.iter().map(|e| e.items).sum();
        items as f64 / self.train_seconds().max(1e-9)
    }

    /// Test items per second.
    pub fn test_items_per_s(&self) -> f64 {
        self.test.items as f64 / self.test_seconds.max(1e-9)
    }
}

/// [`fit`]'s driver: batches of items prepared in memory, one variant per item and epoch.
struct PreparedDriver<'a, L: Learner> {
    learner: &'a L,
    train: &'a Prepared<L::Item>,
    counts: Vec<usize>,
    sampler: BucketSampler,
    seed: u64,
    parts: usize,
    picked: Vec<(&'a L::Item, u32)>,
    batches: Vec<Vec<usize>>,
    next: usize,
    epochs: Vec<EpochLog>,
    log: Option<(std::fs::File, &'a Path)>,
    total_epochs: usize,
    progress: bool,
    /// The test after every so many epochs: the items, the variant, the classes, the period.
    curve: Option<CurveTest<'a, L::Item>>,
    points: Vec<(usize, f64)>,
}

struct CurveTest<'a, T> {
    test: &'a Prepared<T>,
    variant: &'a str,
    classes: usize,
    every: usize,
    batch_size: usize,
}

impl<L: Learner> Driver for PreparedDriver<'_, L> {
    type Batch = usize;

    fn start_epoch(&mut self, epoch: usize, skip: usize) -> Result<usize> {
        let chosen = choose_variants(
            &self.counts,
            VariantChoice::OnePerEpoch,
            self.seed,
            epoch as u64,
        );
        let items = &self.train.items;
        self.picked = chosen
            .iter()
            .map(|&(i, v)| (&items[i].variants[v].1, items[i].label))
            .collect();
        let shapes: Vec<ItemShape> = self
            .picked
            .iter()
            .map(|(t, _)| self.learner.shape(t))
            .collect();
        self.batches = self.sampler.batches(&shapes, epoch as u64);
        self.next = skip.min(self.batches.len());
        Ok(self.batches.len())
    }

    fn next_batch(&mut self) -> Result<Option<Option<usize>>> {
        if self.next >= self.batches.len() {
            return Ok(None);
        }
        self.next += 1;
        Ok(Some(Some(self.next - 1)))
    }

    fn seed_dropout(&mut self, seed: u64) {
        self.learner.seed_dropout(seed);
    }

    fn gradients(&mut self, batch: usize) -> Result<(GradStore, EpochSums)> {
        let b = &self.batches[batch];
        let items: Vec<&L::Item> = b.iter().map(|&i| self.picked[i].0).collect();
        let labels: Vec<u32> = b.iter().map(|&i| self.picked[i].1).collect();
        let g = self.learner.gradients(&items, &labels, self.parts)?;
        Ok((g.grads, g.sums))
    }

    fn interrupted(&mut self, _: &TrainState, _: &AdamW, log: &EpochLog) -> Result<()> {
        self.epochs.push(log.clone());
        Ok(())
    }

    fn end_epoch(&mut self, state: &mut TrainState, _: &AdamW, e: &EpochLog) -> Result<()> {
        if self.progress {
            eprintln!(
                "epoch {}/{}: loss {:.4}, accuracy {:.4}, {:.1} items/s",
                e.epoch,
                self.total_epochs,
                e.loss(),
                e.accuracy(),
                e.items as f64 / e.seconds.max(1e-9)
            );
        }
        // After the epoch's time was taken: the curve's tests do not count as training.
        let mut curve = None;
        if let Some(c) = &self.curve {
            if e.epoch.is_multiple_of(c.every) || e.epoch == self.total_epochs {
                let (m, _) =
                    evaluate_prepared(self.learner, c.test, c.variant, c.classes, c.batch_size)?;
                self.points.push((e.epoch, m.accuracy));
                curve = Some(m.accuracy);
            }
        }
        if let Some((f, path)) = self.log.as_mut() {
            let mut line = json!({"epoch": e.epoch, "step": state.step, "train": {"loss": e.loss(),
                "accuracy": e.accuracy(), "items": e.items, "seconds": e.seconds}});
            if let Some(a) = curve {
                line["test_accuracy"] = json!(a);
            }
            writeln!(f, "{line}").map_err(Error::io(path))?;
        }
        self.epochs.push(e.clone());
        Ok(())
    }
}

/// Trains `learner` (its variables in `varmap`) on `train` with the budget and optimiser of
/// `options` (epochs, batch, accumulation, peak learning rate, warm-up + cosine, AdamW,
/// clipping, seed, `stop_after_steps`), each epoch on one variant per item, through
/// [`fit_loop`] (the loop [`crate::train()`] runs too), then tests the last weights on `test`
/// at `eval_variant` (no checkpoint selection: both models of a comparison are tested after
/// the same budget). Appends one JSON line per epoch and one for the test to `metrics` when
/// given.
///
/// With `curve_every` > 0 it also tests the current weights on `test` after every
/// `curve_every`th epoch and the last, into [`FitReport::curve`] and each epoch's line of
/// `metrics` (`test_accuracy`): how the test accuracy moves over one schedule. Those tests
/// change nothing of the training (no random draw, no weight) and are not counted in its
/// seconds.
#[allow(clippy::too_many_arguments)]
pub fn fit<L: Learner>(
    learner: &L,
    varmap: &VarMap,
    train: &Prepared<L::Item>,
    test: &Prepared<L::Item>,
    eval_variant: &str,
    classes: usize,
    options: &TrainOptions,
    metrics: Option<&Path>,
    curve_every: usize,
) -> Result<FitReport> {
    let o = options;
    if train.items.is_empty() {
        return Err(Error::Empty {
            split: "train".into(),
            skipped: train.failed.len() as u64,
        });
    }
    let log = match metrics {
        Some(path) => {
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir).map_err(Error::io(dir))?;
            }
            let _ = fs::remove_file(path);
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(Error::io(path))?;
            Some((f, path))
        }
        None => None,
    };
    let mut driver = PreparedDriver {
        learner,
        train,
        counts: train.items.iter().map(|i| i.variants.len()).collect(),
        sampler: BucketSampler::new(o.batch_size.max(1), o.seed)
            .with_bucket_batches(o.bucket_batches),
        seed: o.seed,
        parts: o.parallel_parts,
        picked: Vec::new(),
        batches: Vec::new(),
        next: 0,
        epochs: Vec::new(),
        log,
        total_epochs: o.epochs,
        progress: o.progress,
        curve: (curve_every > 0).then_some(CurveTest {
            test,
            variant: eval_variant,
            classes,
            every: curve_every,
            batch_size: o.batch_size.max(64),
        }),
        points: Vec::new(),
    };
    let schedule = o.schedule(train.items.len());
    let mut opt = AdamW::new(varmap, o.adamw)?;
    let mut state = TrainState {
        seed: o.seed,
        ..TrainState::default()
    };
    fit_loop(&mut driver, &mut opt, &schedule, &mut state, o)?;
    let mut report = FitReport {
        epochs: std::mem::take(&mut driver.epochs),
        steps: state.step,
        test: Tally::new(classes).metrics(),
        test_seconds: 0.0,
        curve: std::mem::take(&mut driver.points),
    };
    // With a weight average (`AdamWConfig::ema`), the test reads the average.
    let (metrics_out, seconds) = opt.with_average_weights(|| {
        evaluate_prepared(learner, test, eval_variant, classes, o.batch_size.max(64))
    })?;
    report.test = metrics_out;
    report.test_seconds = seconds;
    if let Some((f, path)) = driver.log.as_mut() {
        let line =
            json!({"test": {"variant": eval_variant, "seconds": seconds, "metrics": report.test}});
        writeln!(f, "{line}").map_err(Error::io(path))?;
    }
    Ok(report)
}

fn count_correct(logits: &Tensor, labels: &[u32]) -> Result<usize> {
    let pred = logits.argmax(candle_core::D::Minus1)?.to_vec1::<u32>()?;
    Ok(pred.iter().zip(labels).filter(|(p, l)| p == l).count())
}

/// Tests `learner` on the items of `test` that have `variant`, in batches of `batch_size`:
/// the metrics and the seconds taken.
pub fn evaluate_prepared<L: Learner>(
    learner: &L,
    test: &Prepared<L::Item>,
    variant: &str,
    classes: usize,
    batch_size: usize,
) -> Result<(Metrics, f64)> {
    let picked: Vec<(&L::Item, u32)> = test
        .items
        .iter()
        .filter_map(|i| {
            i.variants
                .iter()
                .find(|(v, _)| v == variant)
                .map(|(_, t)| (t, i.label))
        })
        .collect();
    if picked.is_empty() {
        return Err(Error::setting(
            "eval variant",
            format!("no test item has variant {variant:?}"),
        ));
    }
    let mut tally = Tally::new(classes);
    let start = Instant::now();
    for chunk in picked.chunks(batch_size.max(1)) {
        let items: Vec<&L::Item> = chunk.iter().map(|(t, _)| *t).collect();
        let logits = learner
            .logits(&items)?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?;
        for ((_, label), row) in chunk.iter().zip(&logits) {
            tally.add(*label as usize, row);
        }
    }
    Ok((tally.metrics(), start.elapsed().as_secs_f64()))
}

/// TEMPEST as a [`Learner`]: items are tokenized files, the loss is L_c + λ·L_r.
#[derive(Debug)]
pub struct TempestLearner {
    /// The model.
    pub model: Tempest,
    /// Where its tensors live.
    pub device: Device,
    /// Band and time masks drawn anew for each training batch on items tokenized without them
    /// ([`TokenizedItem::with_band_masks`]; `None`: items as they are).
    pub masks: Option<tempest_tokenize::TokenizerConfig>,
    /// The seed of the current training batch ([`Learner::seed_dropout`]), which the masks
    /// are drawn from.
    batch_seed: std::sync::atomic::AtomicU64,
}

impl Clone for TempestLearner {
    fn clone(&self) -> Self {
        TempestLearner {
            model: self.model.clone(),
            device: self.device.clone(),
            masks: self.masks.clone(),
            batch_seed: std::sync::atomic::AtomicU64::new(
                self.batch_seed.load(std::sync::atomic::Ordering::Relaxed),
            ),
        }
    }
}

impl TempestLearner {
    /// `model` on `device`, without masks.
    pub fn new(model: Tempest, device: Device) -> Self {
        TempestLearner {
            model,
            device,
            masks: None,
            batch_seed: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// With the band shift and the band and time masks of `config` on training batches,
    /// drawn from each batch's seed (the tokenizer's draws with that seed, epoch 0 and the
    /// item's place in the batch).
    pub fn with_masks(mut self, config: tempest_tokenize::TokenizerConfig) -> Self {
        let any = config.band_mask > 0 || config.time_mask > 0 || config.band_shift > 0;
        self.masks = any.then_some(config);
        self
    }

    /// `items` with this batch's masks (borrowed as they are without masks).
    fn masked<'a>(&self, items: &[&'a TokenizedItem]) -> Vec<std::borrow::Cow<'a, TokenizedItem>> {
        let seed = self.batch_seed.load(std::sync::atomic::Ordering::Relaxed);
        items
            .iter()
            .enumerate()
            .map(|(i, &item)| match &self.masks {
                None => std::borrow::Cow::Borrowed(item),
                Some(c) => std::borrow::Cow::Owned(item.with_band_masks(
                    c,
                    tempest_tokenize::CropContext {
                        seed,
                        epoch: 0,
                        item: i as u64,
                    },
                )),
            })
            .collect()
    }
}

impl Learner for TempestLearner {
    type Item = TokenizedItem;

    fn shape(&self, item: &TokenizedItem) -> ItemShape {
        item.shape()
    }

    fn loss(
        &self,
        items: &[&TokenizedItem],
        labels: &[u32],
        train: bool,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let owned = if train {
            self.masked(items)
        } else {
            items
                .iter()
                .map(|&i| std::borrow::Cow::Borrowed(i))
                .collect()
        };
        let items: Vec<&TokenizedItem> = owned.iter().map(|c| c.as_ref()).collect();
        let batch = collate(&items, labels, PAD_ID)
            .to_tensors(&self.device)
            .map_err(candle_core::Error::wrap)?;
        let losses = self.model.loss(&batch, train)?;
        Ok((losses.total, losses.logits))
    }

    fn logits(&self, items: &[&TokenizedItem]) -> candle_core::Result<Tensor> {
        let labels = vec![0; items.len()];
        let batch = collate(items, &labels, PAD_ID)
            .to_tensors(&self.device)
            .map_err(candle_core::Error::wrap)?;
        Ok(self.model.forward(&batch, false)?.logits)
    }

    fn seed_dropout(&self, seed: u64) {
        self.batch_seed
            .store(seed, std::sync::atomic::Ordering::Relaxed);
        self.model.seed_dropout(seed);
    }

    /// The batch as `parts` parts computed at once (0: 2 on a CPU with 2 or more rayon
    /// threads, as [`crate::train()`] does).
    fn gradients(
        &self,
        items: &[&TokenizedItem],
        labels: &[u32],
        parts: usize,
    ) -> candle_core::Result<Gradients> {
        let parts = match parts {
            0 => tempest_model::auto_parts(&self.device),
            n => n,
        };
        let owned = self.masked(items);
        let items: Vec<&TokenizedItem> = owned.iter().map(|c| c.as_ref()).collect();
        let sizes = tempest_tokenize::part_sizes(items.len(), parts);
        let mut batches = Vec::with_capacity(sizes.len());
        let mut at = 0;
        for n in sizes {
            let (Some(its), Some(ls)) = (items.get(at..at + n), labels.get(at..at + n)) else {
                candle_core::bail!("gradients: {} items, {} labels", items.len(), labels.len())
            };
            batches.push(
                collate(its, ls, PAD_ID)
                    .to_tensors(&self.device)
                    .map_err(candle_core::Error::wrap)?,
            );
            at += n;
        }
        let g = tempest_model::batch_gradients(&self.model, &batches)?;
        Ok(Gradients {
            sums: EpochSums::of(&g),
            grads: g.grads,
        })
    }
}

/// Test helper: `parted` has a gradient for every variable, each within 1e-4 of the largest
/// entry of `whole`'s, and at least 90 % of the variables get a non-zero one (so a test of
/// batches in parts cannot pass on gradients that are all missing or zero).
#[cfg(test)]
pub(crate) fn assert_same_gradients(
    whole: &GradStore,
    parted: &GradStore,
    vars: &[candle_core::Var],
    what: &str,
) -> Result<()> {
    let mut nonzero = 0;
    for v in vars {
        let (Some(a), Some(b)) = (whole.get(v), parted.get(v)) else {
            panic!("{what}: a variable has a gradient in one pass only");
        };
        let a: Vec<f32> = a.flatten_all()?.to_vec1()?;
        let b: Vec<f32> = b.flatten_all()?.to_vec1()?;
        let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
        let worst = a
            .iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            worst <= 1e-4 * scale + 1e-7,
            "{what}: gradient differs by {worst} (largest {scale})"
        );
        nonzero += usize::from(scale > 0.0);
    }
    assert!(
        nonzero * 10 >= vars.len() * 9,
        "{what}: {nonzero} of {} vars",
        vars.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarBuilder;

    /// A linear classifier over 2-D points, to check the loop optimises anything it is given.
    struct Linear2 {
        w: Tensor,
        b: Tensor,
    }

    impl Learner for Linear2 {
        type Item = [f32; 2];

        fn shape(&self, _: &[f32; 2]) -> ItemShape {
            ItemShape::default()
        }

        fn loss(
            &self,
            items: &[&[f32; 2]],
            labels: &[u32],
            _train: bool,
        ) -> candle_core::Result<(Tensor, Tensor)> {
            let logits = self.logits(items)?;
            let labels = Tensor::new(labels, &Device::Cpu)?;
            let loss = tempest_model::cross_entropy(&logits, &labels, 0.0)?;
            Ok((loss, logits))
        }

        fn logits(&self, items: &[&[f32; 2]]) -> candle_core::Result<Tensor> {
            let x: Vec<f32> = items.iter().flat_map(|p| p.iter().copied()).collect();
            let x = Tensor::from_vec(x, (items.len(), 2), &Device::Cpu)?;
            x.matmul(&self.w.t()?)?.broadcast_add(&self.b)
        }
    }

    fn points(n: usize, offset: usize) -> Prepared<[f32; 2]> {
        // Class 1 above the line y = x, class 0 below, at distance ≥ 0.1.
        let items = (0..n)
            .map(|i| {
                let t = ((i + offset) * 37 % 100) as f32 / 50.0 - 1.0;
                let label = (i % 2) as u32;
                let d = 0.1 + ((i * 13) % 10) as f32 / 10.0;
                let p = if label == 1 { [t, t + d] } else { [t, t - d] };
                PreparedItem {
                    sample: i,
                    label,
                    variants: vec![("v".to_string(), p)],
                }
            })
            .collect();
        Prepared {
            items,
            failed: Vec::new(),
            files: n,
            seconds: 0.0,
        }
    }

    #[test]
    fn fit_learns_a_separable_problem() -> Result<()> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let model = Linear2 {
            w: vb.get_with_hints((2, 2), "w", candle_nn::Init::Const(0.0))?,
            b: vb.get_with_hints(2, "b", candle_nn::Init::Const(0.0))?,
        };
        let o = TrainOptions {
            epochs: 30,
            batch_size: 8,
            lr: 0.1,
            progress: false,
            ..TrainOptions::default()
        };
        let (train, test) = (points(64, 0), points(40, 7));
        let before = evaluate_prepared(&model, &test, "v", 2, 64)?.0;
        let report = fit(&model, &varmap, &train, &test, "v", 2, &o, None, 0)?;
        assert!(
            (before.accuracy - 0.5).abs() < 1e-9,
            "zero weights: ties → class 0"
        );
        assert_eq!(report.epochs.len(), 30);
        assert_eq!(report.steps, 30 * 8);
        assert!(report.test.accuracy > 0.95, "{}", report.test.accuracy);
        assert!(report.epochs[29].loss() < report.epochs[0].loss());
        assert_eq!(report.test.items, 40);
        // The same run testing every 7th epoch on the way: the same training to the bit, the
        // curve at epochs 7, 14, 21, 28 and 30 (the last), its last point the final test.
        let varmap2 = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap2, DType::F32, &Device::Cpu);
        let model2 = Linear2 {
            w: vb.get_with_hints((2, 2), "w", candle_nn::Init::Const(0.0))?,
            b: vb.get_with_hints(2, "b", candle_nn::Init::Const(0.0))?,
        };
        let curved = fit(&model2, &varmap2, &train, &test, "v", 2, &o, None, 7)?;
        let epochs: Vec<usize> = curved.curve.iter().map(|c| c.0).collect();
        assert_eq!(epochs, [7, 14, 21, 28, 30]);
        assert_eq!(curved.curve[4].1, report.test.accuracy);
        assert_eq!(curved.test.accuracy, report.test.accuracy);
        for (a, b) in curved.epochs.iter().zip(&report.epochs) {
            assert_eq!(a.loss(), b.loss());
        }
        assert!(curved.curve[0].1 > 0.5, "{:?}", curved.curve);
        Ok(())
    }

    /// A driver of ten one-item batches per epoch over one variable, recording what the
    /// loop asked of it.
    struct Counting {
        var: candle_core::Var,
        next: usize,
        seeds: Vec<u64>,
        ended: Vec<usize>,
        interrupted: usize,
    }

    impl Counting {
        fn new(varmap: &VarMap) -> Result<Self> {
            let vb = VarBuilder::from_varmap(varmap, DType::F32, &Device::Cpu);
            vb.get_with_hints(1, "x", candle_nn::Init::Const(1.0))?;
            let var = varmap.all_vars()[0].clone();
            Ok(Counting {
                var,
                next: 0,
                seeds: Vec::new(),
                ended: Vec::new(),
                interrupted: 0,
            })
        }
    }

    impl Driver for Counting {
        type Batch = ();

        fn start_epoch(&mut self, _: usize, skip: usize) -> Result<usize> {
            self.next = skip;
            Ok(10)
        }

        fn next_batch(&mut self) -> Result<Option<Option<()>>> {
            self.next += 1;
            Ok((self.next <= 10).then_some(Some(())))
        }

        fn seed_dropout(&mut self, seed: u64) {
            self.seeds.push(seed);
        }

        fn gradients(&mut self, _: ()) -> Result<(GradStore, EpochSums)> {
            let loss = self.var.as_tensor().sqr()?.sum_all()?;
            let sums = EpochSums {
                loss: 1.0,
                items: 1.0,
                ..EpochSums::default()
            };
            Ok((loss.backward()?, sums))
        }

        fn interrupted(&mut self, _: &TrainState, _: &AdamW, _: &EpochLog) -> Result<()> {
            self.interrupted += 1;
            Ok(())
        }

        fn end_epoch(&mut self, _: &mut TrainState, _: &AdamW, log: &EpochLog) -> Result<()> {
            assert_eq!(
                log.sums.items, 10.0,
                "a whole epoch's sums, across a resume"
            );
            self.ended.push(log.epoch);
            Ok(())
        }
    }

    /// The loop's bookkeeping: a step every `accumulate` batches and at the end of each
    /// epoch; a stop after `stop_after_steps` inside an epoch leaves a state that, resumed,
    /// trains the remaining batches with the dropout seeds an uninterrupted run draws, to
    /// the same weights.
    #[test]
    fn fit_loop_steps_stops_and_resumes_where_it_stood() -> Result<()> {
        let o = TrainOptions {
            epochs: 2,
            accumulate: 3,
            batch_size: 1,
            lr: 0.1,
            progress: false,
            ..TrainOptions::default()
        };
        let schedule = o.schedule(10);
        let run = |stop: Option<usize>, state: &mut TrainState, varmap: &VarMap| {
            let mut d = Counting::new(varmap)?;
            let mut opt = AdamW::new(varmap, o.adamw)?;
            let mut o = o.clone();
            o.stop_after_steps = stop;
            let out = fit_loop(&mut d, &mut opt, &schedule, state, &o)?;
            Ok::<_, Error>((out, d, opt))
        };
        let whole_vars = VarMap::new();
        let mut whole = TrainState::default();
        let (out, d, _) = run(None, &mut whole, &whole_vars)?;
        assert_eq!(out, Outcome::Finished);
        assert_eq!((whole.epoch, whole.step, whole.batch_in_epoch), (2, 8, 0));
        assert_eq!(
            (d.ended.clone(), d.seeds.len(), d.interrupted),
            (vec![1, 2], 20, 0)
        );
        let whole_seeds = d.seeds;

        // Stopped after 5 steps: epoch 0 took 4 (batches 3, 6, 9, 10), so the stop falls after
        // batch 3 of epoch 1.
        let parted_vars = VarMap::new();
        let mut state = TrainState::default();
        let (out, first, opt) = run(Some(5), &mut state, &parted_vars)?;
        assert_eq!(out, Outcome::Interrupted);
        assert_eq!((state.epoch, state.step, state.batch_in_epoch), (1, 5, 3));
        assert_eq!((first.ended.clone(), first.interrupted), (vec![1], 1));
        // Resume with the optimiser's state carried over (as `last/` does).
        let mut d = Counting::new(&parted_vars)?;
        let mut opt2 = opt;
        let out = fit_loop(&mut d, &mut opt2, &schedule, &mut state, &o)?;
        assert_eq!(out, Outcome::Finished);
        assert_eq!((state.epoch, state.step), (2, 8));
        assert_eq!(d.ended, vec![2]);
        let seeds: Vec<u64> = first.seeds.iter().chain(&d.seeds).copied().collect();
        assert_eq!(seeds, whole_seeds);
        let value =
            |m: &VarMap| -> Result<Vec<f32>> { Ok(m.all_vars()[0].as_tensor().to_vec1::<f32>()?) };
        assert_eq!(value(&whole_vars)?, value(&parted_vars)?);
        assert_ne!(value(&whole_vars)?, vec![1.0], "the variable moved");
        Ok(())
    }

    /// A driver that does not split its batches across ranks (`fit()`'s, this one) is refused
    /// on several ranks, before any step, instead of training every rank on every batch.
    #[test]
    fn fit_loop_refuses_several_ranks_for_a_driver_that_does_not_split() -> Result<()> {
        let errors = crate::dist::threads::run(2, |rank| {
            let o = TrainOptions {
                epochs: 1,
                batch_size: 1,
                progress: false,
                comm: crate::dist::Comm::new(rank),
                ..TrainOptions::default()
            };
            let varmap = VarMap::new();
            let mut d = Counting::new(&varmap)?;
            let mut opt = AdamW::new(&varmap, o.adamw)?;
            let mut state = TrainState::default();
            let out = fit_loop(&mut d, &mut opt, &o.schedule(10), &mut state, &o);
            Ok((out.err().map(|e| e.to_string()), d.seeds.len()))
        })?;
        for (err, batches) in errors {
            let err = err.unwrap_or_default();
            assert!(err.contains("does not split its batches"), "{err}");
            assert_eq!(batches, 0);
        }
        Ok(())
    }

    /// `TempestLearner::gradients` in parts gives the one-pass loss, count and gradients, so
    /// `fit` (the `compare` example) may split its batches as `train()` does.
    #[test]
    fn tempest_learner_gradients_in_parts_equal_one_pass() -> Result<()> {
        use tempest_tokenize::BlockPosition;
        let config = tempest_model::Config::tiny().with_num_classes(4);
        let (model, varmap) = crate::init_seeded(&config, &Device::Cpu, DType::F32, 3)?;
        let learner = TempestLearner::new(model, Device::Cpu);
        // Seven items of 3 to 9 blocks of 2 to 40 bytes.
        let items: Vec<TokenizedItem> = (0..7usize)
            .map(|i| {
                let mut item = TokenizedItem::new(cff_blocks::Format::Jpeg, 1000);
                for b in 0..3 + (i * 5) % 7 {
                    let len = 2 + (i * 7 + b * 13) % 39;
                    let bytes: Vec<u8> = (0..len)
                        .map(|k| ((i * 31 + b * 17 + k * 5) % 256) as u8)
                        .collect();
                    let at = BlockPosition {
                        index: b as u32,
                        time: 0.0,
                        duration: 0.0,
                        row: (b / 3) as u32,
                        col: (b % 3) as u32,
                    };
                    item.push_block(&bytes, at, 512);
                }
                item
            })
            .collect();
        let refs: Vec<&TokenizedItem> = items.iter().collect();
        let labels = [0, 1, 2, 3, 0, 1, 2];
        // The reference: Learner::loss and candle's backward, no parts.
        let (loss, logits) = learner.loss(&refs, &labels, true)?;
        let whole = loss.backward()?;
        let whole_loss = loss.to_scalar::<f32>()? as f64;
        let whole_correct = count_correct(&logits, &labels)?;
        let vars = varmap.all_vars();
        for parts in [1, 2, 3, 7] {
            let g = learner.gradients(&refs, &labels, parts)?;
            assert!(
                (g.loss() - whole_loss).abs() <= 1e-5 * whole_loss.abs(),
                "{parts} parts: loss {} vs {whole_loss}",
                g.loss()
            );
            assert_eq!(g.correct(), whole_correct, "{parts} parts");
            assert_eq!(g.sums.items, 7.0);
            assert_same_gradients(&whole, &g.grads, &vars, &format!("{parts} parts"))?;
        }
        Ok(())
    }
}
