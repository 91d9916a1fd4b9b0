//! AdamW's update as one pass per variable over raw CPU slices: the fused backend of
//! [`crate::optim::AdamW`] where every variable is f32/f64 on the CPU.

use candle_core::{DType, Result, Storage, Tensor, Var, WithDType};
use rayon::prelude::*;

/// Elements of a variable one parallel task of [`FusedAdamW`] updates.
const ADAM_TASK: usize = 1 << 15;

/// AdamW (Loshchilov & Hutter 2019, decoupled weight decay on matrices only) with clipping by
/// the global gradient norm, computing what candle-nn's `AdamW` after clipping by the global
/// norm computes, in one pass per variable over raw slices instead of about fifteen tensor ops (each
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

    /// Sets the update count, as when restoring a saved state.
    pub fn set_steps(&mut self, steps: usize) -> Result<()> {
        self.steps = i32::try_from(steps)
            .map_err(|_| candle_core::Error::Msg(format!("fused AdamW: {steps} steps")))?;
        Ok(())
    }

    /// The first and second moments of variable `i` (in the order of the variables given to [`FusedAdamW::with_params`]), as CPU
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
    #[cfg(test)]
    pub fn step(
        &mut self,
        grads: &candle_core::backprop::GradStore,
        lr: f64,
        max_norm: f64,
    ) -> Result<f64> {
        let grads: Vec<Option<Tensor>> = self
            .slots
            .iter()
            .map(|s| grads.get(s.var.as_tensor()).cloned())
            .collect();
        self.step_scaled(&grads, 1.0, lr, max_norm)
    }

    /// [`FusedAdamW::step`] on gradients given in the order of the variables given to [`FusedAdamW::with_params`] (`None`: no
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
        Storage::Cpu(s) => f(tempest_model::kernels::contiguous::<T>(s, layout)?),
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::backprop::GradStore;
    use candle_core::Device;
    use candle_nn::{AdamW, Optimizer, ParamsAdamW};

    // The independent reference: the global norm and clipping in candle tensor ops, then
    // candle-nn's AdamW.

    /// The global L2 norm of the gradients of `vars` (variables without a gradient count as 0).
    fn grad_norm(vars: &[Var], grads: &GradStore) -> Result<f64> {
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
    fn clip_grad_norm(vars: &[Var], grads: &mut GradStore, max_norm: f64) -> Result<f64> {
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

    /// The gradients of a test loss at the given variables and step.
    type LossFn = Box<dyn Fn(&[Var], usize) -> Result<GradStore>>;

    /// Variables (a matrix, a vector) and a loss whose gradients differ per element and per
    /// step: `Σ c⊙θ² + Σ d⊙θ`.
    /// Fixed values (uniform in ±2 from one seeded stream), so that no run draws a weight that
    /// lands next to zero, where the relative comparison below has nothing to hold on to.
    fn adam_problem(dtype: DType) -> Result<(Vec<Var>, LossFn)> {
        let dev = Device::Cpu;
        let mut rng = tempest_tokenize::rng::SplitMix64::new(5);
        let mut uniform = |shape: &[usize]| -> Result<Tensor> {
            let n: usize = shape.iter().product();
            let v: Vec<f64> = (0..n).map(|_| 4.0 * rng.next_f64() - 2.0).collect();
            Tensor::from_vec(v, shape, &dev)?.to_dtype(dtype)
        };
        let a = Var::from_tensor(&uniform(&[7, 5])?)?;
        let b = Var::from_tensor(&uniform(&[11])?)?;
        let ca = uniform(&[7, 5])?;
        let cb = uniform(&[11])?;
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
            let (beta1, beta2, eps, weight_decay) = (0.9, 0.999, 1e-8, 0.1);
            let params = |wd| ParamsAdamW {
                lr: 0.0,
                beta1,
                beta2,
                eps,
                weight_decay: wd,
            };
            let mut decayed = AdamW::new(vec![theirs[0].clone()], params(weight_decay))?;
            let mut plain = AdamW::new(vec![theirs[1].clone()], params(0.0))?;
            let mut fused = FusedAdamW::with_params(vars.clone(), beta1, beta2, eps, weight_decay)?;
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
        let mut opt = FusedAdamW::with_params(vec![a.clone()], 0.9, 0.999, 1e-8, 0.01)?;
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
