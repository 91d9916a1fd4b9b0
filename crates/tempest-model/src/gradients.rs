//! A batch's gradients, computed in parts at once on rayon's threads: what every training run
//! of the model does before its optimiser step (tempest-train's `fit_loop`, the benches, the
//! GPU check).

use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor};
use rayon::prelude::*;
use tempest_tokenize::Batch;

use crate::model::{Losses, Tempest};

/// The parts a batch is cut into by default on `device`: 2 on the CPU when rayon has 2 or more
/// threads, else 1.
///
/// On a CPU with few cores a small model's matrix products are too small to keep every core
/// busy, and two halves of a batch computed at once do better: on the quickstart's `tiny` JPEG
/// batches with 2 threads, training ran ~35 % faster (docs/quickstart.md).
pub fn auto_parts(device: &candle_core::Device) -> usize {
    if device.is_cpu() && rayon::current_num_threads() >= 2 {
        2
    } else {
        1
    }
}

/// What [`batch_gradients`] computed for a whole batch.
#[derive(Debug)]
pub struct BatchGradients {
    /// Gradients of the batch's mean loss with respect to the model's variables.
    pub grads: GradStore,
    /// Mean L over the batch's items.
    pub loss: f64,
    /// Mean L_c.
    pub classification: f64,
    /// Mean L_r (0 when λ = 0).
    pub reconstruction: f64,
    /// Items whose arg-max logit was the label.
    pub correct: usize,
    /// Items.
    pub items: usize,
}

/// The gradients of the mean training loss over one batch given as `parts` (from
/// [`Batch::parts`], or any batches taken together), computed at the same time on rayon's
/// threads when there is more than one: each part's mean loss weighted by its share of the
/// items, so that the gradients add up to the whole batch's, and added in the parts' order
/// (the same rounding on every run).
///
/// Each part's forward and backward passes run together. With dropout each part draws its
/// masks from a copy of the model with a generator of its own ([`Tempest::with_own_dropout`]),
/// seeded in turn from the model's (seed it first, [`Tempest::seed_dropout`]), so the masks do
/// not depend on the threads' timing. The parts change the sums' rounding only (and, with
/// dropout, which mask an item gets).
pub fn batch_gradients(model: &Tempest, parts: &[Batch]) -> Result<BatchGradients> {
    let sizes: Vec<usize> = parts.iter().map(Batch::len).collect();
    let items: usize = sizes.iter().sum();
    if parts.is_empty() || items == 0 {
        candle_core::bail!("batch_gradients: a batch of no items")
    }
    let weight = |i: usize| sizes[i] as f64 / items as f64;
    let backward = |i: usize, losses: &Losses| -> Result<GradStore> {
        if parts.len() == 1 {
            losses.total.backward()
        } else {
            (&losses.total * weight(i))?.backward()
        }
    };
    let results: Vec<Result<(Losses, GradStore)>> = if parts.len() == 1 {
        vec![model
            .loss(&parts[0], true)
            .and_then(|l| backward(0, &l).map(|g| (l, g)))]
    } else if model.config().dropout > 0.0 {
        // Each part draws its masks from a generator of its own, seeded in turn from the
        // model's: the masks do not depend on which thread runs which part when.
        let models: Vec<Tempest> = parts
            .iter()
            .map(|_| model.with_own_dropout(model.dropout_rng().next_seed()))
            .collect();
        parts
            .par_iter()
            .zip(&models)
            .enumerate()
            .map(|(i, (p, m))| {
                let l = m.loss(p, true)?;
                backward(i, &l).map(|g| (l, g))
            })
            .collect()
    } else {
        parts
            .par_iter()
            .enumerate()
            .map(|(i, p)| {
                let l = model.loss(p, true)?;
                backward(i, &l).map(|g| (l, g))
            })
            .collect()
    };
    let scalar = |t: &Tensor| -> Result<f64> { t.to_dtype(DType::F64)?.to_scalar::<f64>() };
    let (mut loss, mut classification, mut reconstruction, mut right) = (0.0, 0.0, 0.0, 0);
    let mut total: Option<GradStore> = None;
    for (i, r) in results.into_iter().enumerate() {
        let (losses, grads) = r?;
        let w = weight(i);
        loss += scalar(&losses.total)? * w;
        classification += scalar(&losses.classification)? * w;
        if let Some(r) = &losses.reconstruction {
            reconstruction += scalar(r)? * w;
        }
        right += correct(&losses.logits, &parts[i].labels)?;
        match total.as_mut() {
            None => total = Some(grads),
            Some(t) => t.extend(grads)?,
        }
    }
    let grads = total.ok_or_else(|| candle_core::Error::Msg("no parts".into()))?;
    Ok(BatchGradients {
        grads,
        loss,
        classification,
        reconstruction,
        correct: right,
        items,
    })
}

/// Items whose arg-max logit is their label.
pub fn correct(logits: &Tensor, labels: &Tensor) -> Result<usize> {
    let pred = logits.argmax(candle_core::D::Minus1)?;
    Ok(pred
        .eq(labels)?
        .to_dtype(candle_core::DType::U32)?
        .sum_all()?
        .to_scalar::<u32>()? as usize)
}
