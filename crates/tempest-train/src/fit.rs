//! A budgeted training loop for any classifier, so that two models can be trained on the same
//! items, split and budget and timed the same way (the `compare` example: TEMPEST against a
//! spectrogram/pixel ViT).
//!
//! [`train()`](crate::train()) remains the loop for TEMPEST runs (checkpoints, resume, Ctrl-C,
//! loader threads). [`fit`] is its core with the model and its inputs left open: a
//! [`Learner`] turns prepared items into a loss and logits; the items are prepared once,
//! before training, by [`prepare_items`], which times the preparation (read the file, then
//! tokenize it, or decode it and compute features) separately from the model. It reuses
//! this crate's [`AdamW`], the schedule, gradient clipping and accumulation of
//! [`TrainOptions`], the [`BucketSampler`] and one variant per item and epoch, and reports
//! [`Metrics`].

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

use crate::metrics::{Metrics, Tally};
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
        Ok(Gradients {
            grads: loss.backward()?,
            loss: loss.to_dtype(DType::F64)?.to_scalar::<f64>()?,
            correct: count_correct(&logits, labels).map_err(candle_core::Error::wrap)?,
        })
    }
}

/// What [`Learner::gradients`] computed for one batch.
#[derive(Debug)]
pub struct Gradients {
    /// Gradients of the batch's mean loss.
    pub grads: GradStore,
    /// The batch's mean loss.
    pub loss: f64,
    /// Items whose arg-max logit was the label.
    pub correct: usize,
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

/// One epoch of [`fit`].
#[derive(Debug, Clone, PartialEq)]
pub struct EpochLog {
    /// The epoch, from 1.
    pub epoch: usize,
    /// Mean training loss.
    pub loss: f64,
    /// Training accuracy.
    pub accuracy: f64,
    /// Items trained on.
    pub items: usize,
    /// Seconds of training (forward, backward, optimiser).
    pub seconds: f64,
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
}

impl FitReport {
    /// Training items per second over all epochs.
    pub fn train_items_per_s(&self) -> f64 {
        let items: usize = self.epochs.iter().map(|e| e.items).sum();
        let secs: f64 = self.epochs.iter().map(|e| e.seconds).sum();
        items as f64 / secs.max(1e-9)
    }

    /// Test items per second.
    pub fn test_items_per_s(&self) -> f64 {
        self.test.items as f64 / self.test_seconds.max(1e-9)
    }
}

/// Trains `learner` (its variables in `varmap`) on `train` with the budget and optimiser of
/// `options` (epochs, batch, accumulation, peak learning rate, warm-up + cosine, AdamW,
/// clipping, seed, `stop_after_steps`), each epoch on one variant per item, then tests the
/// last weights on `test` at `eval_variant` (no checkpoint selection: both models of a
/// comparison are tested after the same budget). Appends one JSON line per epoch and one for
/// the test to `metrics` when given.
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
) -> Result<FitReport> {
    let o = options;
    if o.batch_size == 0 || o.accumulate == 0 {
        return Err(Error::setting(
            "batch",
            "batch size and accumulation must be ≥ 1",
        ));
    }
    if train.items.is_empty() {
        return Err(Error::Empty {
            split: "train".into(),
            skipped: train.failed.len() as u64,
        });
    }
    let mut log = match metrics {
        Some(path) => {
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir).map_err(Error::io(dir))?;
            }
            let _ = fs::remove_file(path);
            Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(Error::io(path))?,
            )
        }
        None => None,
    };
    let counts: Vec<usize> = train.items.iter().map(|i| i.variants.len()).collect();
    let schedule = o.schedule(train.items.len());
    let sampler = BucketSampler::new(o.batch_size, o.seed).with_bucket_batches(o.bucket_batches);
    let mut opt = AdamW::new(varmap, o.adamw)?;
    let mut report = FitReport {
        epochs: Vec::new(),
        steps: 0,
        test: Tally::new(classes).metrics(),
        test_seconds: 0.0,
    };
    'epochs: for epoch in 0..o.epochs {
        let chosen = choose_variants(&counts, VariantChoice::OnePerEpoch, o.seed, epoch as u64);
        let picked: Vec<(&L::Item, u32)> = chosen
            .iter()
            .map(|&(i, v)| (&train.items[i].variants[v].1, train.items[i].label))
            .collect();
        let shapes: Vec<ItemShape> = picked.iter().map(|(t, _)| learner.shape(t)).collect();
        let batches = sampler.batches(&shapes, epoch as u64);
        let start = Instant::now();
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
        for (b, batch) in batches.iter().enumerate() {
            let items: Vec<&L::Item> = batch.iter().map(|&i| picked[i].0).collect();
            let labels: Vec<u32> = batch.iter().map(|&i| picked[i].1).collect();
            // Dropout masks from the run's seed and the batch's place, as `train()` does.
            learner.seed_dropout(tempest_model::dropout_seed(
                o.seed,
                &[epoch as u64, b as u64],
            ));
            let g = learner.gradients(&items, &labels, o.parallel_parts)?;
            opt.accumulate(&g.grads)?;
            loss_sum += g.loss * items.len() as f64;
            correct += g.correct;
            seen += items.len();
            let last = b + 1 == batches.len();
            if opt.accumulated() >= o.accumulate || (last && opt.accumulated() > 0) {
                opt.step(schedule.lr(report.steps), o.max_grad_norm)?;
                report.steps += 1;
                if o.stop_after_steps.is_some_and(|s| report.steps >= s) {
                    report
                        .epochs
                        .push(epoch_log(epoch, loss_sum, correct, seen, &start));
                    break 'epochs;
                }
            }
        }
        let e = epoch_log(epoch, loss_sum, correct, seen, &start);
        if o.progress {
            eprintln!(
                "epoch {}/{}: loss {:.4}, accuracy {:.4}, {:.1} items/s",
                e.epoch,
                o.epochs,
                e.loss,
                e.accuracy,
                e.items as f64 / e.seconds.max(1e-9)
            );
        }
        if let Some(f) = log.as_mut() {
            let line = json!({"epoch": e.epoch, "step": report.steps, "train": {"loss": e.loss,
                "accuracy": e.accuracy, "items": e.items, "seconds": e.seconds}});
            writeln!(f, "{line}").map_err(Error::io(metrics.unwrap_or(Path::new("."))))?;
        }
        report.epochs.push(e);
    }
    let (metrics_out, seconds) =
        evaluate_prepared(learner, test, eval_variant, classes, o.batch_size.max(64))?;
    report.test = metrics_out;
    report.test_seconds = seconds;
    if let Some(f) = log.as_mut() {
        let line =
            json!({"test": {"variant": eval_variant, "seconds": seconds, "metrics": report.test}});
        writeln!(f, "{line}").map_err(Error::io(metrics.unwrap_or(Path::new("."))))?;
    }
    Ok(report)
}

fn epoch_log(epoch: usize, loss: f64, correct: usize, seen: usize, start: &Instant) -> EpochLog {
    let n = seen.max(1) as f64;
    EpochLog {
        epoch: epoch + 1,
        loss: loss / n,
        accuracy: correct as f64 / n,
        items: seen,
        seconds: start.elapsed().as_secs_f64(),
    }
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
#[derive(Debug, Clone)]
pub struct TempestLearner {
    /// The model.
    pub model: Tempest,
    /// Where its tensors live.
    pub device: Device,
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
        let batch = collate(items, labels, PAD_ID)
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
            0 => tempest_model::optim::auto_parts(&self.device),
            n => n,
        };
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
            grads: g.grads,
            loss: g.loss,
            correct: g.correct,
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
        let report = fit(&model, &varmap, &train, &test, "v", 2, &o, None)?;
        assert!(
            (before.accuracy - 0.5).abs() < 1e-9,
            "zero weights: ties → class 0"
        );
        assert_eq!(report.epochs.len(), 30);
        assert_eq!(report.steps, 30 * 8);
        assert!(report.test.accuracy > 0.95, "{}", report.test.accuracy);
        assert!(report.epochs[29].loss < report.epochs[0].loss);
        assert_eq!(report.test.items, 40);
        Ok(())
    }

    /// `TempestLearner::gradients` in parts gives the one-pass loss, count and gradients, so
    /// `fit` (the `compare` example) may split its batches as `train()` does.
    #[test]
    fn tempest_learner_gradients_in_parts_equal_one_pass() -> Result<()> {
        use tempest_tokenize::BlockPosition;
        let config = tempest_model::Config::tiny().with_num_classes(4);
        let (model, varmap) = crate::init_seeded(&config, &Device::Cpu, DType::F32, 3)?;
        let learner = TempestLearner {
            model,
            device: Device::Cpu,
        };
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
                (g.loss - whole_loss).abs() <= 1e-5 * whole_loss.abs(),
                "{parts} parts: loss {} vs {whole_loss}",
                g.loss
            );
            assert_eq!(g.correct, whole_correct, "{parts} parts");
            assert_same_gradients(&whole, &g.grads, &vars, &format!("{parts} parts"))?;
        }
        Ok(())
    }
}
