//! AdamW whose state can be saved and restored, with gradient accumulation.
//!
//! `tempest_model::Trainer` wraps candle-nn's AdamW, whose moments are private: a run that
//! stops could not continue with the same optimiser state. This one keeps the moments as
//! tensors it can write to a safetensors file, applies the update of Loshchilov & Hutter
//! (2019, decoupled weight decay) exactly as candle-nn's AdamW does, decays matrices only
//! (rank ≥ 2, as `tempest_model::Trainer`), and sums the gradients of several micro-batches
//! before a step. Variables are kept in name order, so every sum over them (the gradient norm)
//! adds in the same order on every run.

use std::collections::HashMap;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;

use crate::{Error, Result};

/// AdamW's hyper-parameters (the learning rate comes from the schedule at each step).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// Decoupled weight decay, on matrices only.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// β = (0.9, 0.999), ε = 1e-8, weight decay 0.01 (`tempest_model::TrainConfig`'s values).
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

struct Slot {
    name: String,
    var: Var,
    decay: bool,
    m: Tensor,
    v: Tensor,
    grad: Option<Tensor>,
}

/// AdamW over the variables of a [`VarMap`], with accumulated gradients and a saveable state.
pub struct AdamW {
    slots: Vec<Slot>,
    config: AdamWConfig,
    steps: usize,
    accumulated: usize,
}

impl std::fmt::Debug for AdamW {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdamW")
            .field("variables", &self.slots.len())
            .field("config", &self.config)
            .field("steps", &self.steps)
            .field("accumulated", &self.accumulated)
            .finish()
    }
}

impl AdamW {
    /// An optimiser over every variable of `varmap`, moments at zero.
    pub fn new(varmap: &VarMap, config: AdamWConfig) -> Result<Self> {
        let data = varmap
            .data()
            .lock()
            .map_err(|_| Error::setting("varmap", "its lock is poisoned"))?;
        let mut named: Vec<(String, Var)> =
            data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let mut slots = Vec::with_capacity(named.len());
        for (name, var) in named {
            let zeros = var.as_tensor().zeros_like()?;
            slots.push(Slot {
                decay: var.rank() >= 2,
                name,
                m: zeros.clone(),
                v: zeros,
                var,
                grad: None,
            });
        }
        Ok(AdamW {
            slots,
            config,
            steps: 0,
            accumulated: 0,
        })
    }

    /// Optimisation steps taken.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// Micro-batches whose gradients wait for the next step.
    pub fn accumulated(&self) -> usize {
        self.accumulated
    }

    /// Adds one micro-batch's gradients (from `loss.backward()`).
    pub fn accumulate(&mut self, grads: &GradStore) -> Result<()> {
        for slot in &mut self.slots {
            if let Some(g) = grads.get(slot.var.as_tensor()) {
                let g = g.detach();
                slot.grad = Some(match slot.grad.take() {
                    Some(acc) => (acc + g)?,
                    None => g,
                });
            }
        }
        self.accumulated += 1;
        Ok(())
    }

    /// The global L2 norm of the mean accumulated gradient.
    pub fn grad_norm(&self) -> Result<f64> {
        let scale = 1.0 / self.accumulated.max(1) as f64;
        let mut sum = 0.0f64;
        for slot in &self.slots {
            if let Some(g) = &slot.grad {
                sum += g
                    .sqr()?
                    .sum_all()?
                    .to_dtype(DType::F64)?
                    .to_scalar::<f64>()?;
            }
        }
        Ok(sum.sqrt() * scale)
    }

    /// One step with learning rate `lr` on the mean of the accumulated gradients, clipped to
    /// a global norm of `max_norm` (0: no clipping). Returns the norm before clipping; a
    /// non-finite norm skips the update (the gradients are dropped either way).
    pub fn step(&mut self, lr: f64, max_norm: f64) -> Result<f64> {
        let norm = self.grad_norm()?;
        let mut scale = 1.0 / self.accumulated.max(1) as f64;
        if max_norm > 0.0 && norm > max_norm {
            scale *= max_norm / norm;
        }
        if norm.is_finite() {
            self.steps += 1;
            let c = self.config;
            let t = self.steps as i32;
            let bc1 = 1.0 - c.beta1.powi(t);
            let bc2 = 1.0 - c.beta2.powi(t);
            for slot in &mut self.slots {
                let Some(g) = slot.grad.take() else { continue };
                let g = (g * scale)?;
                slot.m = ((&slot.m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
                slot.v = ((&slot.v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
                let m_hat = (&slot.m / bc1)?;
                let v_hat = (&slot.v / bc2)?;
                let update = (m_hat / (v_hat.sqrt()? + c.eps)?)?;
                let theta = slot.var.as_tensor();
                let decayed = if slot.decay && c.weight_decay > 0.0 {
                    (theta * (1.0 - lr * c.weight_decay))?
                } else {
                    theta.clone()
                };
                slot.var.set(&(decayed - (update * lr)?)?)?;
            }
        }
        for slot in &mut self.slots {
            slot.grad = None;
        }
        self.accumulated = 0;
        Ok(norm)
    }

    /// Writes the moments (`m.<name>`, `v.<name>`) and the step count to a safetensors file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut map: HashMap<String, Tensor> = HashMap::new();
        for s in &self.slots {
            map.insert(format!("m.{}", s.name), s.m.clone());
            map.insert(format!("v.{}", s.name), s.v.clone());
        }
        map.insert(
            "steps".to_string(),
            Tensor::new(&[self.steps as u32], &Device::Cpu)?,
        );
        candle_core::safetensors::save(&map, path)?;
        Ok(())
    }

    /// Reads what [`AdamW::save`] wrote; every variable must have its moments.
    pub fn load(&mut self, path: &Path, device: &Device) -> Result<()> {
        let map = candle_core::safetensors::load(path, device)?;
        let get = |k: &str| {
            map.get(k)
                .ok_or_else(|| Error::dataset(path, format!("no tensor {k:?}")))
        };
        for s in &mut self.slots {
            let m = get(&format!("m.{}", s.name))?;
            let v = get(&format!("v.{}", s.name))?;
            if m.shape() != s.var.shape() || v.shape() != s.var.shape() {
                return Err(Error::dataset(
                    path,
                    format!("moments of {} have the wrong shape", s.name),
                ));
            }
            s.m = m.to_dtype(s.var.dtype())?;
            s.v = v.to_dtype(s.var.dtype())?;
            s.grad = None;
        }
        let steps = get("steps")?.to_vec1::<u32>()?;
        self.steps = steps.first().copied().unwrap_or(0) as usize;
        self.accumulated = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first AdamW step moves every coordinate by lr·sign(g) (bias-corrected m̂/√v̂ =
    /// g/|g|), after decaying matrices by lr·wd: checked by hand on a 2×2 matrix and a vector.
    #[test]
    fn first_step_moves_by_lr_times_sign_and_decays_matrices_only() -> Result<()> {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let w = varmap.get((2, 2), "w", candle_nn::Init::Const(1.0), DType::F32, &dev)?;
        let b = varmap.get(2, "b", candle_nn::Init::Const(1.0), DType::F32, &dev)?;
        let cfg = AdamWConfig {
            weight_decay: 0.5,
            ..AdamWConfig::default()
        };
        let mut opt = AdamW::new(&varmap, cfg)?;
        let target = Tensor::new(&[[3.0f32, -1.0], [0.5, 2.0]], &dev)?;
        let loss = ((&w * &target)?.sum_all()?
            + (&b * Tensor::new(&[-2.0f32, 4.0], &dev)?)?.sum_all()?)?;
        opt.accumulate(&loss.backward()?)?;
        opt.accumulate(&loss.backward()?)?; // the mean of two equal gradients is the gradient
        let norm = opt.step(0.1, 0.0)?;
        assert!((norm - (9.0f64 + 1.0 + 0.25 + 4.0 + 4.0 + 16.0).sqrt()).abs() < 1e-5);
        let w = w.to_vec2::<f32>()?;
        // 1·(1 − 0.1·0.5) − 0.1·sign(g)
        assert!((w[0][0] - (0.95 - 0.1)).abs() < 1e-6, "{w:?}");
        assert!((w[0][1] - (0.95 + 0.1)).abs() < 1e-6, "{w:?}");
        let b = b.to_vec1::<f32>()?;
        assert!(
            (b[0] - 1.1).abs() < 1e-6 && (b[1] - 0.9).abs() < 1e-6,
            "{b:?}"
        );
        assert_eq!(opt.steps(), 1);
        Ok(())
    }

    #[test]
    fn state_round_trips_through_a_file() -> Result<()> {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let w = varmap.get(3, "w", candle_nn::Init::Const(0.5), DType::F32, &dev)?;
        let mut a = AdamW::new(&varmap, AdamWConfig::default())?;
        let loss = (&w * Tensor::new(&[1.0f32, 2.0, 3.0], &dev)?)?
            .sqr()?
            .sum_all()?;
        a.accumulate(&loss.backward()?)?;
        a.step(0.01, 1.0)?;
        let dir = std::env::temp_dir().join(format!("tempest-train-adamw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
        let path = dir.join("opt.safetensors");
        a.save(&path)?;
        let mut b = AdamW::new(&varmap, AdamWConfig::default())?;
        b.load(&path, &dev)?;
        assert_eq!(b.steps(), 1);
        for (x, y) in a.slots.iter().zip(&b.slots) {
            assert_eq!(x.m.to_vec1::<f32>()?, y.m.to_vec1::<f32>()?);
            assert_eq!(x.v.to_vec1::<f32>()?, y.v.to_vec1::<f32>()?);
        }
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
