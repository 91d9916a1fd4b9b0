//! Training utilities candle-nn lacks: a warm-up + cosine learning-rate schedule, clipping by
//! the global gradient norm, and a [`Trainer`] that ties them to `candle_nn::AdamW`.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap};
use tempest_tokenize::Batch;

use crate::model::Tempest;

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
        }
    }
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
#[derive(Debug)]
pub struct Trainer {
    decayed: AdamW,
    plain: AdamW,
    vars: Vec<Var>,
    config: TrainConfig,
    step: usize,
}

impl Trainer {
    /// An optimiser over every variable of `varmap`.
    pub fn new(varmap: &VarMap, config: TrainConfig) -> Result<Self> {
        let vars = varmap.all_vars();
        let (matrices, rest): (Vec<Var>, Vec<Var>) =
            vars.iter().cloned().partition(|v| v.rank() >= 2);
        let params = |wd| ParamsAdamW {
            lr: config.schedule.lr(0),
            beta1: config.beta1,
            beta2: config.beta2,
            eps: 1e-8,
            weight_decay: wd,
        };
        Ok(Trainer {
            decayed: AdamW::new(matrices, params(config.weight_decay))?,
            plain: AdamW::new(rest, params(0.0))?,
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
        let losses = model.loss(batch, true)?;
        let mut grads = losses.total.backward()?;
        let norm = if self.config.max_grad_norm > 0.0 {
            clip_grad_norm(&self.vars, &mut grads, self.config.max_grad_norm)?
        } else {
            grad_norm(&self.vars, &grads)?
        };
        let lr = self.config.schedule.lr(self.step);
        if norm.is_finite() {
            self.decayed.set_learning_rate(lr);
            self.plain.set_learning_rate(lr);
            self.decayed.step(&grads)?;
            self.plain.step(&grads)?;
        }
        let scalar =
            |t: &Tensor| -> Result<f64> { t.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>() };
        let stats = StepStats {
            step: self.step,
            loss: scalar(&losses.total)?,
            classification: scalar(&losses.classification)?,
            reconstruction: match &losses.reconstruction {
                Some(r) => scalar(r)?,
                None => 0.0,
            },
            grad_norm: norm,
            lr,
            correct: correct(&losses.logits, &batch.labels)?,
        };
        self.step += 1;
        Ok(stats)
    }
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
