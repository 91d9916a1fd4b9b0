//! Training utilities candle-nn lacks: a warm-up + cosine learning-rate schedule, clipping by
//! the global gradient norm, and a [`Trainer`] that ties them to `candle_nn::AdamW`.

use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Storage, Tensor, Var, WithDType};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap};
use rayon::prelude::*;
use tempest_tokenize::Batch;

use crate::model::{Losses, Tempest};

/// Linear warm-up from 0 to `peak` over `warmup` steps, then a half cosine from `peak` down to
/// `min` at step `total` (Loshchilov & Hutter 2017, without restarts); `min` after that.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CosineSchedule {
    /// The learning rate at the end of warm-up.
    pub peak: f64,
    /// The final learning rate.
    pub min: f64,
    /// Warm-up steps.
    pub warmup: usize,
    /// Total steps (warm-up included).
    pub total: usize,
}

impl CosineSchedule {
    /// A schedule from `peak` to `peak / 100`.
    pub fn new(peak: f64, warmup: usize, total: usize) -> Self {
        CosineSchedule {
            peak,
            min: peak / 100.0,
            warmup,
            total,
        }
    }

    /// The learning rate of step `step` (counting from 0).
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup {
            // Step 0 trains at peak/warmup rather than 0, so no step is wasted.
            return self.peak * (step + 1) as f64 / self.warmup as f64;
        }
        let decay = self.total.saturating_sub(self.warmup);
        if decay == 0 || step >= self.total {
            return self.min;
        }
        let progress = (step - self.warmup) as f64 / decay as f64;
        self.min + 0.5 * (self.peak - self.min) * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// The global L2 norm of the gradients of `vars` (variables without a gradient count as 0).
pub fn grad_norm(vars: &[Var], grads: &GradStore) -> Result<f64> {
    let mut sum = 0.0f64;
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            sum += g
                .sqr()?
                .sum_all()?
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?;
        }
    }
    Ok(sum.sqrt())
}

/// Scales all gradients by `max_norm / norm` when their global norm exceeds `max_norm`
/// (Pascanu et al. 2013); returns the norm before clipping. A non-finite norm is returned
/// unchanged and the gradients are left alone, so the caller can skip the step.
pub fn clip_grad_norm(vars: &[Var], grads: &mut GradStore, max_norm: f64) -> Result<f64> {
    let norm = grad_norm(vars, grads)?;
    if norm.is_finite() && norm > max_norm && max_norm > 0.0 {
        let scale = max_norm / norm;
        for v in vars {
            if let Some(g) = grads.get(v.as_tensor()) {
                let scaled = (g * scale)?;
                grads.insert(v.as_tensor(), scaled);
            }
        }
    }
    Ok(norm)
}

/// How a [`Trainer`] optimises.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainConfig {
    /// Learning-rate schedule.
    pub schedule: CosineSchedule,
    /// AdamW weight decay, applied to matrices only (not to biases, norms or position tables
    /// of rank 1).
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (0 = no clipping).
    pub max_grad_norm: f64,
    /// AdamW β₁.
    pub beta1: f64,
    /// AdamW β₂.
    pub beta2: f64,
    /// The run's seed: step k's dropout masks are drawn from `dropout_seed(seed, &[k])`.
    pub seed: u64,
    /// Parts each batch is cut into for [`batch_gradients`] (0: [`auto_parts`]).
    pub parts: usize,
}

impl TrainConfig {
    /// AdamW (β = 0.9, 0.999), weight decay 0.01, clipping at 1.0, warm-up 5 % of `total`,
    /// seed 0.
    pub fn new(peak_lr: f64, total: usize) -> Self {
        TrainConfig {
            schedule: CosineSchedule::new(peak_lr, (total / 20).max(1), total),
            weight_decay: 0.01,
            max_grad_norm: 1.0,
            beta1: 0.9,
            beta2: 0.999,
            seed: 0,
            parts: 0,
        }
    }
}

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

/// What one [`Trainer::step`] did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// The step's index.
    pub step: usize,
    /// L.
    pub loss: f64,
    /// L_c.
    pub classification: f64,
    /// L_r (0 when λ = 0).
    pub reconstruction: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Items of the batch whose arg-max logit was the label.
    pub correct: usize,
}

/// AdamW with the schedule and clipping of a [`TrainConfig`], over a model's variables.
///
/// Where every variable is an f32/f64 tensor on the CPU, the gradient norm, the clipping and
/// the update run as one pass over raw slices per variable ([`FusedAdamW`]); elsewhere (CUDA,
/// bf16) through candle-nn's `AdamW`, which computes the same update from tensor ops.
#[derive(Debug)]
pub struct Trainer {
    optimizer: Optimiser,
    vars: Vec<Var>,
    config: TrainConfig,
    step: usize,
}

/// The two ways of running the update.
#[derive(Debug)]
enum Optimiser {
    Fused(FusedAdamW),
    Candle { decayed: AdamW, plain: AdamW },
}

impl Trainer {
    /// An optimiser over every variable of `varmap`.
    pub fn new(varmap: &VarMap, config: TrainConfig) -> Result<Self> {
        let vars = varmap.all_vars();
        let optimizer = if FusedAdamW::supports(&vars) {
            Optimiser::Fused(FusedAdamW::new(vars.clone(), &config)?)
        } else {
            let (matrices, rest): (Vec<Var>, Vec<Var>) =
                vars.iter().cloned().partition(|v| v.rank() >= 2);
            let params = |wd| ParamsAdamW {
                lr: config.schedule.lr(0),
                beta1: config.beta1,
                beta2: config.beta2,
                eps: ADAM_EPS,
                weight_decay: wd,
            };
            Optimiser::Candle {
                decayed: AdamW::new(matrices, params(config.weight_decay))?,
                plain: AdamW::new(rest, params(0.0))?,
            }
        };
        Ok(Trainer {
            optimizer,
            vars,
            config,
            step: 0,
        })
    }

    /// Steps taken.
    pub fn steps(&self) -> usize {
        self.step
    }

    /// One optimisation step on `batch`: forward with dropout, backward, clip, update.
    /// A step whose gradient norm is not finite updates nothing.
    pub fn step(&mut self, model: &Tempest, batch: &Batch) -> Result<StepStats> {
        model.seed_dropout(crate::dropout_seed(self.config.seed, &[self.step as u64]));
        let parts = match self.config.parts {
            0 => auto_parts(batch.ids.device()),
            k => k,
        };
        let computed = batch_gradients(model, &batch.parts(parts)?)?;
        let mut grads = computed.grads;
        let lr = self.config.schedule.lr(self.step);
        let max_norm = self.config.max_grad_norm;
        let norm = match &mut self.optimizer {
            Optimiser::Fused(opt) => opt.step(&grads, lr, max_norm)?,
            Optimiser::Candle { decayed, plain } => {
                let norm = if max_norm > 0.0 {
                    clip_grad_norm(&self.vars, &mut grads, max_norm)?
                } else {
                    grad_norm(&self.vars, &grads)?
                };
                if norm.is_finite() {
                    decayed.set_learning_rate(lr);
                    plain.set_learning_rate(lr);
                    decayed.step(&grads)?;
                    plain.step(&grads)?;
                }
                norm
            }
        };
        drop(grads);
        let stats = StepStats {
            step: self.step,
            loss: computed.loss,
            classification: computed.classification,
            reconstruction: computed.reconstruction,
            grad_norm: norm,
            lr,
            correct: computed.correct,
        };
        self.step += 1;
        Ok(stats)
    }
}

/// AdamW's ε, as [`Trainer`] has always used it.
const ADAM_EPS: f64 = 1e-8;

/// Elements of a variable one parallel task of [`FusedAdamW`] updates.
const ADAM_TASK: usize = 1 << 15;

/// AdamW (Loshchilov & Hutter 2019, decoupled weight decay on matrices only) with clipping by
/// the global gradient norm, computing what candle-nn's `AdamW` plus [`clip_grad_norm`]
/// compute, in one pass per variable over raw slices instead of about fifteen tensor ops (each
/// a pass over memory, an allocation and a wake-up of candle's thread pool). The moments are
/// kept in the variable's dtype, as candle-nn keeps them; each element's arithmetic is f64,
/// rounded once per stored value. CPU and f32/f64 only ([`FusedAdamW::supports`]).
#[derive(Debug)]
pub struct FusedAdamW {
    slots: Vec<AdamSlot>,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    steps: i32,
}

#[derive(Debug)]
struct AdamSlot {
    var: Var,
    /// Decayed: a matrix (rank ≥ 2).
    decay: bool,
    moments: Moments,
}

/// The first and second moments of a variable, in its dtype.
#[derive(Debug)]
enum Moments {
    F32(Vec<f32>, Vec<f32>),
    F64(Vec<f64>, Vec<f64>),
}

impl FusedAdamW {
    /// Whether every variable is an f32/f64 tensor on the CPU.
    pub fn supports(vars: &[Var]) -> bool {
        vars.iter().all(|v| {
            v.device().is_cpu() && matches!(v.dtype(), candle_core::DType::F32 | DType::F64)
        })
    }

    /// Moments at zero for `vars`, with the β's and weight decay of `config` (ε = 1e-8).
    pub fn new(vars: Vec<Var>, config: &TrainConfig) -> Result<Self> {
        Self::with_params(
            vars,
            config.beta1,
            config.beta2,
            ADAM_EPS,
            config.weight_decay,
        )
    }

    /// Moments at zero for `vars`, with β₁, β₂, ε and the weight decay (on matrices) given.
    pub fn with_params(
        vars: Vec<Var>,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
    ) -> Result<Self> {
        if !Self::supports(&vars) {
            candle_core::bail!("fused AdamW: a variable is not f32/f64 on the CPU");
        }
        let slots = vars
            .into_iter()
            .map(|var| {
                let n = var.elem_count();
                AdamSlot {
                    decay: var.rank() >= 2,
                    moments: match var.dtype() {
                        DType::F32 => Moments::F32(vec![0.0; n], vec![0.0; n]),
                        _ => Moments::F64(vec![0.0; n], vec![0.0; n]),
                    },
                    var,
                }
            })
            .collect();
        Ok(FusedAdamW {
            slots,
            beta1,
            beta2,
            eps,
            weight_decay,
            steps: 0,
        })
    }

    /// The variables, in the order of [`FusedAdamW::step_scaled`]'s gradients.
    pub fn vars(&self) -> impl Iterator<Item = &Var> {
        self.slots.iter().map(|s| &s.var)
    }

    /// Updates taken (the t of the bias corrections).
    pub fn steps(&self) -> usize {
        self.steps as usize
    }

    /// Sets the update count, as when restoring a saved state.
    pub fn set_steps(&mut self, steps: usize) -> Result<()> {
        self.steps = i32::try_from(steps)
            .map_err(|_| candle_core::Error::Msg(format!("fused AdamW: {steps} steps")))?;
        Ok(())
    }

    /// The first and second moments of variable `i` (in [`FusedAdamW::vars`]' order), as CPU
    /// tensors of its shape and dtype.
    pub fn moments(&self, i: usize) -> Result<(Tensor, Tensor)> {
        let Some(slot) = self.slots.get(i) else {
            candle_core::bail!("fused AdamW: no variable {i}")
        };
        let shape = slot.var.shape();
        let dev = &candle_core::Device::Cpu;
        Ok(match &slot.moments {
            Moments::F32(m, v) => (
                Tensor::from_slice(m, shape, dev)?,
                Tensor::from_slice(v, shape, dev)?,
            ),
            Moments::F64(m, v) => (
                Tensor::from_slice(m, shape, dev)?,
                Tensor::from_slice(v, shape, dev)?,
            ),
        })
    }

    /// Replaces the moments of variable `i` (converted to its dtype; the shapes must match).
    pub fn set_moments(&mut self, i: usize, m: &Tensor, v: &Tensor) -> Result<()> {
        let Some(slot) = self.slots.get_mut(i) else {
            candle_core::bail!("fused AdamW: no variable {i}")
        };
        if m.shape() != slot.var.shape() || v.shape() != slot.var.shape() {
            candle_core::bail!(
                "fused AdamW: moments of shape {:?}/{:?} for a variable of shape {:?}",
                m.shape(),
                v.shape(),
                slot.var.shape()
            );
        }
        let flat = |t: &Tensor, dtype| t.to_dtype(dtype)?.flatten_all();
        slot.moments = match slot.moments {
            Moments::F32(..) => Moments::F32(
                flat(m, DType::F32)?.to_vec1()?,
                flat(v, DType::F32)?.to_vec1()?,
            ),
            Moments::F64(..) => Moments::F64(
                flat(m, DType::F64)?.to_vec1()?,
                flat(v, DType::F64)?.to_vec1()?,
            ),
        };
        Ok(())
    }

    /// Clips the gradients to a global norm of `max_norm` (0: no clipping) and updates every
    /// variable with learning rate `lr`; returns the norm before clipping. A non-finite norm
    /// updates nothing (and does not count as a step). Variables without a gradient keep
    /// their values and moments.
    pub fn step(&mut self, grads: &GradStore, lr: f64, max_norm: f64) -> Result<f64> {
        let grads: Vec<Option<Tensor>> = self
            .slots
            .iter()
            .map(|s| grads.get(s.var.as_tensor()).cloned())
            .collect();
        self.step_scaled(&grads, 1.0, lr, max_norm)
    }

    /// [`FusedAdamW::step`] on gradients given in [`FusedAdamW::vars`]' order (`None`: no
    /// gradient), each multiplied by `grad_scale` before anything else (the mean of `k`
    /// accumulated micro-batches is their sum with `grad_scale = 1/k`). Returns the norm of the
    /// scaled gradients before clipping.
    pub fn step_scaled(
        &mut self,
        grads: &[Option<Tensor>],
        grad_scale: f64,
        lr: f64,
        max_norm: f64,
    ) -> Result<f64> {
        if grads.len() != self.slots.len() {
            candle_core::bail!(
                "fused AdamW: {} gradients for {} variables",
                grads.len(),
                self.slots.len()
            );
        }
        let grads: Vec<Option<Tensor>> = grads
            .iter()
            .map(|g| g.as_ref().map(|g| g.contiguous()).transpose())
            .collect::<Result<_>>()?;
        let mut sum = 0.0f64;
        for g in grads.iter().flatten() {
            sum += match g.dtype() {
                DType::F32 => with_slice::<f32, _>(g, |s| Ok(sum_sq(s)))?,
                _ => with_slice::<f64, _>(g, |s| Ok(sum_sq(s)))?,
            };
        }
        let norm = sum.sqrt() * grad_scale.abs();
        if !norm.is_finite() {
            return Ok(norm);
        }
        let scale = grad_scale
            * if max_norm > 0.0 && norm > max_norm {
                max_norm / norm
            } else {
                1.0
            };
        self.steps += 1;
        let hp = Hyper {
            beta1: self.beta1,
            beta2: self.beta2,
            bc1: 1.0 - self.beta1.powi(self.steps),
            bc2: 1.0 - self.beta2.powi(self.steps),
            eps: self.eps,
            lr,
            scale,
        };
        for (slot, g) in self.slots.iter_mut().zip(&grads) {
            let Some(g) = g else { continue };
            let decay = if slot.decay {
                1.0 - lr * self.weight_decay
            } else {
                1.0
            };
            let theta = slot.var.as_tensor();
            let next = match &mut slot.moments {
                Moments::F32(m, v) => {
                    let next = update::<f32>(theta, g, m, v, decay, &hp)?;
                    Tensor::from_vec(next, theta.shape(), theta.device())?
                }
                Moments::F64(m, v) => {
                    let next = update::<f64>(theta, g, m, v, decay, &hp)?;
                    Tensor::from_vec(next, theta.shape(), theta.device())?
                }
            };
            slot.var.set(&next)?;
        }
        Ok(norm)
    }
}

/// A step's constants.
struct Hyper {
    beta1: f64,
    beta2: f64,
    /// 1 − β₁ᵗ and 1 − β₂ᵗ (bias corrections).
    bc1: f64,
    bc2: f64,
    eps: f64,
    lr: f64,
    /// The factor applied to every gradient: the caller's scale times the clipping factor.
    scale: f64,
}

fn with_slice<T: WithDType, R>(t: &Tensor, f: impl FnOnce(&[T]) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(s) => f(crate::kernels::contiguous::<T>(s, layout)?),
        _ => candle_core::bail!("fused AdamW: tensor is not on the CPU"),
    }
}

/// Σ g² in f64, over fixed chunks added in order (independent of the number of threads).
fn sum_sq<T: WithDType>(g: &[T]) -> f64 {
    g.par_chunks(ADAM_TASK)
        .map(|c| c.iter().map(|v| v.to_f64() * v.to_f64()).sum::<f64>())
        .collect::<Vec<_>>()
        .into_iter()
        .sum()
}

/// One AdamW update of a variable: m ← β₁m + (1−β₁)ĝ, v ← β₂v + (1−β₂)ĝ², with ĝ the
/// clipped gradient; θ ← θ·decay − lr·(m/bc1)/(√(v/bc2) + ε). Returns the new θ.
fn update<T: WithDType>(
    theta: &Tensor,
    g: &Tensor,
    m: &mut [T],
    v: &mut [T],
    decay: f64,
    hp: &Hyper,
) -> Result<Vec<T>> {
    let theta = theta.contiguous()?;
    with_slice::<T, _>(&theta, |th| {
        with_slice::<T, _>(g, |gs| {
            if th.len() != m.len() || gs.len() != m.len() {
                candle_core::bail!("fused AdamW: a variable changed its size");
            }
            let mut next = th.to_vec();
            next.par_chunks_mut(ADAM_TASK)
                .zip(gs.par_chunks(ADAM_TASK))
                .zip(m.par_chunks_mut(ADAM_TASK).zip(v.par_chunks_mut(ADAM_TASK)))
                .for_each(|((th, gs), (m, v))| {
                    for (((th, g), m), v) in th.iter_mut().zip(gs).zip(m).zip(v) {
                        let g = g.to_f64() * hp.scale;
                        let mn = hp.beta1 * m.to_f64() + (1.0 - hp.beta1) * g;
                        let vn = hp.beta2 * v.to_f64() + (1.0 - hp.beta2) * g * g;
                        (*m, *v) = (T::from_f64(mn), T::from_f64(vn));
                        let step = (mn / hp.bc1) / ((vn / hp.bc2).sqrt() + hp.eps);
                        *th = T::from_f64(th.to_f64() * decay - hp.lr * step);
                    }
                });
            Ok(next)
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn schedule_warms_up_then_decays_to_min() {
        let s = CosineSchedule {
            peak: 1e-3,
            min: 1e-5,
            warmup: 10,
            total: 110,
        };
        assert!((s.lr(0) - 1e-4).abs() < 1e-15);
        assert!((s.lr(9) - 1e-3).abs() < 1e-15);
        for i in 0..9 {
            assert!(s.lr(i) < s.lr(i + 1), "warm-up rises at {i}");
        }
        assert!((s.lr(10) - 1e-3).abs() < 1e-15, "peak right after warm-up");
        // Halfway through the decay the cosine is at its midpoint.
        assert!((s.lr(60) - (1e-3 + 1e-5) / 2.0).abs() < 1e-12);
        for i in 10..109 {
            assert!(s.lr(i) >= s.lr(i + 1), "decay falls at {i}");
        }
        assert_eq!(s.lr(110), 1e-5);
        assert_eq!(s.lr(10_000), 1e-5);
        let none = CosineSchedule::new(1.0, 0, 0);
        assert_eq!(none.lr(0), 0.01);
    }

    /// The gradients of a test loss at the given variables and step.
    type LossFn = Box<dyn Fn(&[Var], usize) -> Result<GradStore>>;

    /// Variables (a matrix, a vector) and a loss whose gradients differ per element and per
    /// step: `Σ c⊙θ² + Σ d⊙θ`.
    fn adam_problem(dtype: DType) -> Result<(Vec<Var>, LossFn)> {
        let dev = Device::Cpu;
        let a = Var::from_tensor(&Tensor::randn(0f32, 1.0, (7, 5), &dev)?.to_dtype(dtype)?)?;
        let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, 11, &dev)?.to_dtype(dtype)?)?;
        let ca = Tensor::randn(0f32, 1.0, (7, 5), &dev)?.to_dtype(dtype)?;
        let cb = Tensor::randn(0f32, 1.0, 11, &dev)?.to_dtype(dtype)?;
        let loss = move |vars: &[Var], step: usize| -> Result<GradStore> {
            let k = 1.0 + step as f64;
            let la = ((vars[0].as_tensor().sqr()? * &ca)? + (vars[0].as_tensor() * k)?)?;
            let lb = ((vars[1].as_tensor().sqr()? * &cb)? - (vars[1].as_tensor() * k)?)?;
            (la.sum_all()? + lb.sum_all()?)?.backward()
        };
        Ok((vec![a, b], Box::new(loss)))
    }

    fn copy_vars(vars: &[Var]) -> Result<Vec<Var>> {
        vars.iter()
            .map(|v| Var::from_tensor(&v.as_tensor().copy()?))
            .collect()
    }

    fn max_rel_diff(a: &[Var], b: &[Var]) -> Result<f64> {
        let mut worst = 0.0f64;
        for (a, b) in a.iter().zip(b) {
            let (a, b) = (
                a.as_tensor()
                    .to_dtype(DType::F64)?
                    .flatten_all()?
                    .to_vec1::<f64>()?,
                b.as_tensor()
                    .to_dtype(DType::F64)?
                    .flatten_all()?
                    .to_vec1::<f64>()?,
            );
            for (x, y) in a.iter().zip(&b) {
                worst = worst.max((x - y).abs() / y.abs().max(1e-3));
            }
        }
        Ok(worst)
    }

    /// The fused update against candle-nn's AdamW (matrices decayed, vectors not) after
    /// [`clip_grad_norm`], over steps with and without clipping and with a changing rate.
    #[test]
    fn fused_adamw_matches_candle_nn_with_clipping() -> Result<()> {
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
            let (vars, loss) = adam_problem(dtype)?;
            let theirs = copy_vars(&vars)?;
            let mut config = TrainConfig::new(0.05, 10);
            config.weight_decay = 0.1;
            let params = |wd| ParamsAdamW {
                lr: 0.0,
                beta1: config.beta1,
                beta2: config.beta2,
                eps: ADAM_EPS,
                weight_decay: wd,
            };
            let mut decayed = AdamW::new(vec![theirs[0].clone()], params(config.weight_decay))?;
            let mut plain = AdamW::new(vec![theirs[1].clone()], params(0.0))?;
            let mut fused = FusedAdamW::new(vars.clone(), &config)?;
            // A large max norm first (no clipping), then one that clips every step.
            for (step, max_norm) in [(0, 1e9), (1, 1e9), (2, 2.0), (3, 2.0), (4, 0.0)] {
                let lr = 0.05 / (1.0 + step as f64);
                let mut g = loss(&theirs, step)?;
                let want = if max_norm > 0.0 {
                    clip_grad_norm(&theirs, &mut g, max_norm)?
                } else {
                    grad_norm(&theirs, &g)?
                };
                decayed.set_learning_rate(lr);
                plain.set_learning_rate(lr);
                decayed.step(&g)?;
                plain.step(&g)?;
                let got = fused.step(&loss(&vars, step)?, lr, max_norm)?;
                assert!(
                    (got - want).abs() <= tol * want,
                    "{dtype:?} step {step}: norm"
                );
                if step >= 2 && max_norm > 0.0 {
                    assert!(want > max_norm, "the test must clip at step {step}");
                }
                let diff = max_rel_diff(&vars, &theirs)?;
                assert!(
                    diff < tol,
                    "{dtype:?} step {step}: weights differ by {diff}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn fused_adamw_skips_a_step_with_a_non_finite_norm() -> Result<()> {
        let dev = Device::Cpu;
        let a = Var::from_tensor(&Tensor::new(&[1.0f32, 2.0], &dev)?)?;
        let before = a.as_tensor().to_vec1::<f32>()?;
        let mut opt = FusedAdamW::new(vec![a.clone()], &TrainConfig::new(0.1, 10))?;
        let g = (a.as_tensor() * Tensor::new(&[f32::INFINITY, 1.0], &dev)?)?
            .sum_all()?
            .backward()?;
        let norm = opt.step(&g, 0.1, 1.0)?;
        assert!(!norm.is_finite());
        assert_eq!(a.as_tensor().to_vec1::<f32>()?, before);
        // A finite gradient then moves each coordinate by lr·sign(g) on the first step.
        let g = (a.as_tensor() * Tensor::new(&[3.0f32, -0.5], &dev)?)?
            .sum_all()?
            .backward()?;
        opt.step(&g, 0.1, 0.0)?;
        let after = a.as_tensor().to_vec1::<f32>()?;
        assert!(
            (after[0] - 0.9).abs() < 1e-6 && (after[1] - 2.1).abs() < 1e-6,
            "{after:?}"
        );
        Ok(())
    }

    #[test]
    fn clipping_scales_to_the_max_norm_and_keeps_directions() -> Result<()> {
        let dev = Device::Cpu;
        let a = Var::from_tensor(&Tensor::new(&[1.0f32, 2.0], &dev)?)?;
        let b = Var::from_tensor(&Tensor::new(&[[3.0f32], [4.0]], &dev)?)?;
        // loss = 3·a0 + 4·a1 + 12·b0 : grads (3, 4) and (12, 0): norm 13.
        let loss = ((a.as_tensor() * Tensor::new(&[3.0f32, 4.0], &dev)?)?.sum_all()?
            + (b.as_tensor() * Tensor::new(&[[12.0f32], [0.0]], &dev)?)?.sum_all()?)?;
        let mut grads = loss.backward()?;
        let vars = [a.clone(), b.clone()];
        let before = clip_grad_norm(&vars, &mut grads, 6.5)?;
        assert!((before - 13.0).abs() < 1e-5);
        assert!((grad_norm(&vars, &grads)? - 6.5).abs() < 1e-5);
        let ga = grads
            .get(a.as_tensor())
            .map(|g| g.to_vec1::<f32>())
            .transpose()?
            .unwrap_or_default();
        assert!(
            (ga[0] - 1.5).abs() < 1e-6 && (ga[1] - 2.0).abs() < 1e-6,
            "{ga:?}"
        );
        // Below the threshold nothing changes.
        let again = clip_grad_norm(&vars, &mut grads, 100.0)?;
        assert!((again - 6.5).abs() < 1e-5);
        assert!((grad_norm(&vars, &grads)? - 6.5).abs() < 1e-5);
        Ok(())
    }
}
