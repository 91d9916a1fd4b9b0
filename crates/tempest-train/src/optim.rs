//! The optimiser of every run: AdamW whose state can be saved and restored, with gradient
//! accumulation and clipping by the global norm, and the warm-up + cosine schedule.
//!
//! [`AdamW`] keeps its moments where it can write them to a safetensors file (a run that stops
//! continues with the same state), applies the update of Loshchilov & Hutter (2019, decoupled
//! weight decay) as candle-nn's AdamW does, decays matrices only (rank ≥ 2), and sums the
//! gradients of several micro-batches before a step. Variables are kept in name order, so
//! every sum over them (the gradient norm) adds in the same order on every run.
//!
//! Where every variable is an f32/f64 tensor on the CPU, the norm, the clipping and the update
//! run as one pass per variable over raw slices (`fused_adamw.rs`: f64 arithmetic rounded once
//! per stored value, moments in the variable's dtype; tested against candle-nn's AdamW);
//! elsewhere (a GPU, bf16), and in [`AdamW::with_tensor_ops`], as candle tensor ops (about
//! fifteen per variable, each a pass over memory, an allocation and a wake-up of candle's
//! thread pool). Both keep the same state under the same names, so a checkpoint written by one
//! resumes in the other. [`CosineSchedule`] gives each step's learning rate; [`train_step`] is
//! one step of the loop on one batch (the benches and the GPU check time it).

use std::collections::HashMap;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use tempest_model::Tempest;
use tempest_tokenize::Batch;

use crate::fused_adamw::FusedAdamW;
use crate::metrics::EpochSums;

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
    /// Decay of an exponential moving average of the weights (0: none). Each step `t`
    /// moves the average towards the new weights with the decay `min(ema, (1 + t) / (10 + t))`
    /// (a short memory while the weights move fast); [`AdamW::with_average_weights`] puts the
    /// average in the variables for evaluation and the best checkpoint.
    pub ema: f64,
}

impl Default for AdamWConfig {
    /// β = (0.9, 0.999), ε = 1e-8, weight decay 0.01, no weight average.
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            ema: 0.0,
        }
    }
}

struct Slot {
    name: String,
    var: Var,
    decay: bool,
    grad: Option<Tensor>,
}

/// Where the moments live and how the update runs.
enum Update {
    /// One pass per variable over raw slices; the moments are inside.
    Fused(FusedAdamW),
    /// Tensor ops; `(m, v)` per slot.
    Tensors(Vec<(Tensor, Tensor)>),
}

/// AdamW over the variables of a [`VarMap`], with accumulated gradients and a saveable state.
pub struct AdamW {
    slots: Vec<Slot>,
    update: Update,
    config: AdamWConfig,
    steps: usize,
    accumulated: usize,
    /// The moving average of each slot's weights (empty when `config.ema` is 0).
    average: Vec<Tensor>,
}

impl std::fmt::Debug for AdamW {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdamW")
            .field("variables", &self.slots.len())
            .field("fused", &matches!(self.update, Update::Fused(_)))
            .field("config", &self.config)
            .field("steps", &self.steps)
            .field("accumulated", &self.accumulated)
            .field("average", &!self.average.is_empty())
            .finish()
    }
}

impl AdamW {
    /// An optimiser over every variable of `varmap`, moments at zero: the one-pass update where
    /// every variable is f32/f64 on the CPU, tensor ops otherwise.
    pub fn new(varmap: &VarMap, config: AdamWConfig) -> Result<Self> {
        Self::build(varmap, config, true)
    }

    /// As [`AdamW::new`], but always updating through candle tensor ops (the reference the
    /// one-pass update is tested against; the only way for CUDA or bf16 variables).
    pub fn with_tensor_ops(varmap: &VarMap, config: AdamWConfig) -> Result<Self> {
        Self::build(varmap, config, false)
    }

    fn build(varmap: &VarMap, config: AdamWConfig, fused: bool) -> Result<Self> {
        let data = varmap
            .data()
            .lock()
            .map_err(|_| Error::setting("varmap", "its lock is poisoned"))?;
        let mut named: Vec<(String, Var)> =
            data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        drop(data);
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let vars: Vec<Var> = named.iter().map(|(_, v)| v.clone()).collect();
        let update = if fused && FusedAdamW::supports(&vars) {
            Update::Fused(FusedAdamW::with_params(
                vars,
                config.beta1,
                config.beta2,
                config.eps,
                config.weight_decay,
            )?)
        } else {
            Update::Tensors(
                vars.iter()
                    .map(|v| {
                        let zeros = v.as_tensor().zeros_like()?;
                        Ok((zeros.clone(), zeros))
                    })
                    .collect::<Result<_>>()?,
            )
        };
        let slots = named
            .into_iter()
            .map(|(name, var)| Slot {
                decay: var.rank() >= 2,
                name,
                var,
                grad: None,
            })
            .collect::<Vec<Slot>>();
        if !(0.0..1.0).contains(&config.ema) {
            return Err(Error::setting(
                "ema",
                format!(
                    "the weight average's decay must be in [0, 1), not {}",
                    config.ema
                ),
            ));
        }
        let average = if config.ema > 0.0 {
            slots
                .iter()
                .map(|s| Ok(s.var.as_tensor().detach().copy()?))
                .collect::<Result<_>>()?
        } else {
            Vec::new()
        };
        Ok(AdamW {
            slots,
            update,
            config,
            steps: 0,
            accumulated: 0,
            average,
        })
    }

    /// Whether the optimiser keeps a moving average of the weights ([`AdamWConfig::ema`]).
    pub fn averages_weights(&self) -> bool {
        !self.average.is_empty()
    }

    /// Moves the weight average towards the weights after step `self.steps`.
    fn update_average(&mut self) -> Result<()> {
        if self.average.is_empty() {
            return Ok(());
        }
        let d = tempest_model::pretrain::average_decay(self.config.ema, self.steps);
        for (avg, slot) in self.average.iter_mut().zip(&self.slots) {
            // Detached: the average is no variable and keeps no graph.
            let w = slot.var.as_tensor().detach();
            *avg = ((&*avg * d)? + (w * (1.0 - d))?)?;
        }
        Ok(())
    }

    /// Runs `f` with the weight average in the variables (evaluation, the best checkpoint),
    /// then puts the trained weights back, whatever `f` returned; without an average, just
    /// runs `f`.
    pub fn with_average_weights<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        if self.average.is_empty() {
            return f();
        }
        let trained = self
            .slots
            .iter()
            .map(|s| Ok(s.var.as_tensor().detach().copy()?))
            .collect::<Result<Vec<Tensor>>>()?;
        for (slot, avg) in self.slots.iter().zip(&self.average) {
            slot.var.set(avg)?;
        }
        let out = f();
        for (slot, w) in self.slots.iter().zip(&trained) {
            slot.var.set(w)?;
        }
        out
    }

    /// Whether the update runs as one pass over raw slices (else as tensor ops).
    pub fn is_fused(&self) -> bool {
        matches!(self.update, Update::Fused(_))
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
        let mean = 1.0 / self.accumulated.max(1) as f64;
        let norm = match &mut self.update {
            Update::Fused(opt) => {
                let grads: Vec<Option<Tensor>> =
                    self.slots.iter_mut().map(|s| s.grad.take()).collect();
                let norm = opt.step_scaled(&grads, mean, lr, max_norm)?;
                if norm.is_finite() {
                    self.steps += 1;
                }
                norm
            }
            Update::Tensors(moments) => {
                let norm = {
                    let mut sum = 0.0f64;
                    for g in self.slots.iter().filter_map(|s| s.grad.as_ref()) {
                        sum += g
                            .sqr()?
                            .sum_all()?
                            .to_dtype(DType::F64)?
                            .to_scalar::<f64>()?;
                    }
                    sum.sqrt() * mean
                };
                let mut scale = mean;
                if max_norm > 0.0 && norm > max_norm {
                    scale *= max_norm / norm;
                }
                if norm.is_finite() {
                    self.steps += 1;
                    let c = self.config;
                    let t = self.steps as i32;
                    let bc1 = 1.0 - c.beta1.powi(t);
                    let bc2 = 1.0 - c.beta2.powi(t);
                    for (slot, (m, v)) in self.slots.iter_mut().zip(moments.iter_mut()) {
                        let Some(g) = slot.grad.take() else { continue };
                        let g = (g * scale)?;
                        *m = ((&*m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
                        *v = ((&*v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
                        let m_hat = (&*m / bc1)?;
                        let v_hat = (&*v / bc2)?;
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
                norm
            }
        };
        for slot in &mut self.slots {
            slot.grad = None;
        }
        self.accumulated = 0;
        if norm.is_finite() {
            self.update_average()?;
        }
        Ok(norm)
    }

    /// The moments `(m, v)` of slot `i`.
    fn moments(&self, i: usize) -> Result<(Tensor, Tensor)> {
        match &self.update {
            Update::Fused(opt) => Ok(opt.moments(i)?),
            Update::Tensors(moments) => moments
                .get(i)
                .cloned()
                .ok_or_else(|| Error::setting("optimiser", format!("no variable {i}"))),
        }
    }

    /// Writes the moments (`m.<name>`, `v.<name>`), the weight average if there is one
    /// (`avg.<name>`) and the step count to a safetensors file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut map: HashMap<String, Tensor> = HashMap::new();
        for (i, s) in self.slots.iter().enumerate() {
            // On the CPU, so that the file is the same wherever the run was.
            let (m, v) = self.moments(i)?;
            map.insert(format!("m.{}", s.name), m.to_device(&Device::Cpu)?);
            map.insert(format!("v.{}", s.name), v.to_device(&Device::Cpu)?);
            if let Some(avg) = self.average.get(i) {
                map.insert(format!("avg.{}", s.name), avg.to_device(&Device::Cpu)?);
            }
        }
        map.insert(
            "steps".to_string(),
            Tensor::new(&[self.steps as u32], &Device::Cpu)?,
        );
        candle_core::safetensors::save(&map, path).map_err(|e| Error::dataset(path, e.to_string()))
    }

    /// Reads what [`AdamW::save`] wrote; every variable must have its moments, and its
    /// weight average where this optimiser keeps one.
    pub fn load(&mut self, path: &Path, device: &Device) -> Result<()> {
        let map = candle_core::safetensors::load(path, device)
            .map_err(|e| Error::dataset(path, e.to_string()))?;
        let get = |k: &str| {
            map.get(k)
                .ok_or_else(|| Error::dataset(path, format!("no tensor {k:?}")))
        };
        let steps = get("steps")?.to_vec1::<u32>()?;
        let steps = steps.first().copied().unwrap_or(0) as usize;
        for (i, s) in self.slots.iter_mut().enumerate() {
            let m = get(&format!("m.{}", s.name))?;
            let v = get(&format!("v.{}", s.name))?;
            if m.shape() != s.var.shape() || v.shape() != s.var.shape() {
                return Err(Error::dataset(
                    path,
                    format!("moments of {} have the wrong shape", s.name),
                ));
            }
            match &mut self.update {
                Update::Fused(opt) => opt.set_moments(i, m, v)?,
                Update::Tensors(moments) => {
                    if let Some(slot) = moments.get_mut(i) {
                        let (dtype, device) = (s.var.dtype(), s.var.device());
                        *slot = (
                            m.to_dtype(dtype)?.to_device(device)?,
                            v.to_dtype(dtype)?.to_device(device)?,
                        );
                    }
                }
            }
            if let Some(avg) = self.average.get_mut(i) {
                let a = get(&format!("avg.{}", s.name)).map_err(|_| {
                    Error::dataset(
                        path,
                        format!(
                            "no weight average of {} (was the run started without --ema?)",
                            s.name
                        ),
                    )
                })?;
                if a.shape() != s.var.shape() {
                    return Err(Error::dataset(
                        path,
                        format!("the weight average of {} has the wrong shape", s.name),
                    ));
                }
                *avg = a.to_dtype(s.var.dtype())?.to_device(s.var.device())?;
            }
            s.grad = None;
        }
        if let Update::Fused(opt) = &mut self.update {
            opt.set_steps(steps)?;
        }
        self.steps = steps;
        self.accumulated = 0;
        Ok(())
    }
}

/// Data-parallel training ([`crate::dist`]): the gradients' weights and sums across ranks, and
/// the state every rank starts from.
impl AdamW {
    /// The values of every variable together: what [`AdamW::all_reduce`] sums across the
    /// ranks each step (as f32, 4 bytes each).
    pub fn parameter_count(&self) -> usize {
        self.slots.iter().map(|s| s.var.elem_count()).sum()
    }

    /// Adds one micro-batch's gradients times `weight` (a rank's share of a batch split across
    /// ranks: its items over the batch's; [`AdamW::accumulate`] with weight 1).
    pub fn accumulate_weighted(&mut self, grads: &GradStore, weight: f64) -> Result<()> {
        if weight == 1.0 {
            return self.accumulate(grads);
        }
        for slot in &mut self.slots {
            if let Some(g) = grads.get(slot.var.as_tensor()) {
                let g = (g.detach() * weight)?;
                slot.grad = Some(match slot.grad.take() {
                    Some(acc) => (acc + g)?,
                    None => g,
                });
            }
        }
        self.accumulated += 1;
        Ok(())
    }

    /// Sums the accumulated gradients over the ranks of `comm`, as one flat f32 buffer of
    /// every variable's gradient in name order (zeros where this rank has none), and `extra`
    /// (metric sums and flags) in f64 with each variable's count of ranks holding a gradient;
    /// then counts `micro_batches` accumulated batches, so that [`AdamW::step`] divides by the
    /// micro-batches of the whole step. A variable that no rank has a gradient for keeps none
    /// (the step skips it, as with one rank). Every rank must call this with the same
    /// variables and the same `micro_batches`; afterwards every rank holds the same
    /// gradients.
    pub fn all_reduce(
        &mut self,
        comm: &dyn crate::dist::Communicator,
        micro_batches: usize,
        extra: &mut [f64],
    ) -> Result<()> {
        let total: usize = self.slots.iter().map(|s| s.var.elem_count()).sum();
        let mut flat: Vec<f32> = Vec::with_capacity(total);
        let mut small: Vec<f64> = extra.to_vec();
        for slot in &self.slots {
            match &slot.grad {
                Some(g) => {
                    flat.extend(g.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?);
                    small.push(1.0);
                }
                None => {
                    flat.resize(flat.len() + slot.var.elem_count(), 0.0);
                    small.push(0.0);
                }
            }
        }
        comm.all_reduce_sum_f32(&mut flat)?;
        comm.all_reduce_sum_f64(&mut small)?;
        let mut off = 0;
        for (slot, &holders) in self.slots.iter_mut().zip(&small[extra.len()..]) {
            let n = slot.var.elem_count();
            slot.grad = if holders > 0.0 {
                let part = flat
                    .get(off..off + n)
                    .ok_or_else(|| Error::setting("dist", "a gradient buffer too short"))?;
                Some(
                    Tensor::from_slice(part, slot.var.shape(), &Device::Cpu)?
                        .to_dtype(slot.var.dtype())?
                        .to_device(slot.var.device())?,
                )
            } else {
                None
            };
            off += n;
        }
        extra.copy_from_slice(&small[..extra.len()]);
        self.accumulated = micro_batches;
        Ok(())
    }

    /// Replaces this rank's weights and, with `state`, its moments, weight average and step
    /// count by rank 0's (one broadcast each of weights and state). Every rank must have
    /// the same variables.
    pub fn broadcast_from_root(
        &mut self,
        comm: &dyn crate::dist::Communicator,
        state: bool,
    ) -> Result<()> {
        let weights: Vec<Tensor> = self
            .slots
            .iter()
            .map(|s| s.var.as_tensor().detach())
            .collect();
        for (slot, w) in self
            .slots
            .iter()
            .zip(crate::dist::broadcast_tensors(comm, &weights)?)
        {
            slot.var.set(&w)?;
        }
        if !state {
            return Ok(());
        }
        let mut all = Vec::with_capacity(self.slots.len() * 3);
        for i in 0..self.slots.len() {
            let (m, v) = self.moments(i)?;
            all.push(m);
            all.push(v);
        }
        all.extend(self.average.iter().cloned());
        let mut got = crate::dist::broadcast_tensors(comm, &all)?.into_iter();
        for i in 0..self.slots.len() {
            let (Some(m), Some(v)) = (got.next(), got.next()) else {
                return Err(Error::setting("dist", "moments missing from a broadcast"));
            };
            match &mut self.update {
                Update::Fused(opt) => opt.set_moments(i, &m, &v)?,
                Update::Tensors(moments) => {
                    if let Some(slot) = moments.get_mut(i) {
                        *slot = (m, v);
                    }
                }
            }
        }
        for avg in &mut self.average {
            *avg = got
                .next()
                .ok_or_else(|| Error::setting("dist", "an average missing from a broadcast"))?;
        }
        let mut bytes = (self.steps as u64).to_le_bytes().to_vec();
        comm.broadcast_bytes(&mut bytes)?;
        let root_steps: [u8; 8] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| Error::setting("dist", "a step count of the wrong size"))?;
        let steps = u64::from_le_bytes(root_steps) as usize;
        if let Update::Fused(opt) = &mut self.update {
            opt.set_steps(steps)?;
        }
        self.steps = steps;
        Ok(())
    }
}

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

/// One training step of TEMPEST on `batch`, made of the calls [`crate::fit::fit_loop`] makes:
/// the batch cut into `parts` computed at once (0: [`tempest_model::auto_parts`] of its
/// device), the gradients of its mean loss ([`tempest_model::batch_gradients`]), then `opt`'s
/// step with learning rate `lr` and clipping at `max_norm`. What the benches and the GPU check
/// time. Returns the batch's sums and the gradient norm before clipping.
pub fn train_step(
    model: &Tempest,
    batch: &Batch,
    parts: usize,
    opt: &mut AdamW,
    lr: f64,
    max_norm: f64,
) -> Result<(EpochSums, f64)> {
    let parts = match parts {
        0 => tempest_model::auto_parts(batch.ids.device()),
        k => k,
    };
    let g = tempest_model::batch_gradients(model, &batch.parts(parts)?)?;
    opt.accumulate(&g.grads)?;
    let norm = opt.step(lr, max_norm)?;
    Ok((EpochSums::of(&g), norm))
}

#[cfg(test)]
mod tests {
    use super::*;

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

    type Build = fn(&VarMap, AdamWConfig) -> Result<AdamW>;
    const BOTH: [(&str, Build); 2] = [
        ("fused", AdamW::new),
        ("tensor ops", AdamW::with_tensor_ops),
    ];

    /// The first AdamW step moves every coordinate by lr·sign(g) (bias-corrected m̂/√v̂ =
    /// g/|g|), after decaying matrices by lr·wd: checked by hand on a 2×2 matrix and a vector,
    /// for both ways of updating.
    #[test]
    fn first_step_moves_by_lr_times_sign_and_decays_matrices_only() -> Result<()> {
        for (what, build) in BOTH {
            let dev = Device::Cpu;
            let varmap = VarMap::new();
            let w = varmap.get((2, 2), "w", candle_nn::Init::Const(1.0), DType::F32, &dev)?;
            let b = varmap.get(2, "b", candle_nn::Init::Const(1.0), DType::F32, &dev)?;
            let cfg = AdamWConfig {
                weight_decay: 0.5,
                ..AdamWConfig::default()
            };
            let mut opt = build(&varmap, cfg)?;
            assert_eq!(opt.is_fused(), what == "fused");
            let target = Tensor::new(&[[3.0f32, -1.0], [0.5, 2.0]], &dev)?;
            let loss = ((&w * &target)?.sum_all()?
                + (&b * Tensor::new(&[-2.0f32, 4.0], &dev)?)?.sum_all()?)?;
            opt.accumulate(&loss.backward()?)?;
            opt.accumulate(&loss.backward()?)?; // the mean of two equal gradients is the gradient
            let norm = opt.step(0.1, 0.0)?;
            assert!(
                (norm - (9.0f64 + 1.0 + 0.25 + 4.0 + 4.0 + 16.0).sqrt()).abs() < 1e-5,
                "{what}"
            );
            let w = w.to_vec2::<f32>()?;
            // 1·(1 − 0.1·0.5) − 0.1·sign(g)
            assert!((w[0][0] - (0.95 - 0.1)).abs() < 1e-6, "{what} {w:?}");
            assert!((w[0][1] - (0.95 + 0.1)).abs() < 1e-6, "{what} {w:?}");
            let b = b.to_vec1::<f32>()?;
            assert!(
                (b[0] - 1.1).abs() < 1e-6 && (b[1] - 0.9).abs() < 1e-6,
                "{what} {b:?}"
            );
            assert_eq!(opt.steps(), 1);
        }
        Ok(())
    }

    /// A matrix, a vector and a one-element vector of `dtype`, and the coefficients of a loss whose gradients differ
    /// per element, per step and per micro-batch: `Σ c⊙θ² + k·Σ d⊙θ`.
    fn problem(dtype: DType, seed: u64) -> Result<(VarMap, Vec<Tensor>)> {
        let dev = Device::Cpu;
        // Values spread over (−2, 2), different per element and per seed.
        let mut k = seed;
        let mut pseudo = |n: usize| -> Vec<f64> {
            (0..n)
                .map(|_| {
                    k = k
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((k >> 11) as f64 / (1u64 << 53) as f64) * 4.0 - 2.0
                })
                .collect()
        };
        let mut varmap = VarMap::new();
        let mut coef = Vec::new();
        for (name, shape) in [
            ("a.weight", vec![6, 5]),
            ("a.bias", vec![9]),
            ("z", vec![1]),
        ] {
            let n: usize = shape.iter().product();
            varmap.get(
                shape.as_slice(),
                name,
                candle_nn::Init::Const(0.0),
                dtype,
                &dev,
            )?;
            let value = Tensor::from_vec(pseudo(n), shape.as_slice(), &dev)?.to_dtype(dtype)?;
            varmap.set_one(name, value)?;
            coef.push(Tensor::from_vec(pseudo(n), shape.as_slice(), &dev)?.to_dtype(dtype)?);
        }
        Ok((varmap, coef))
    }

    fn loss_grads(varmap: &VarMap, coef: &[Tensor], k: f64) -> Result<GradStore> {
        let data = varmap.data().lock().expect("varmap");
        let mut total: Option<Tensor> = None;
        for (name, c) in ["a.weight", "a.bias", "z"].iter().zip(coef) {
            let v = data.get(*name).expect("variable").as_tensor();
            let c = c.reshape(v.shape())?;
            let l = ((v.sqr()? * &c)? + ((v * &c)? * k)?)?.sum_all()?;
            total = Some(match total {
                Some(t) => (t + l)?,
                None => l,
            });
        }
        Ok(total.expect("three variables").backward()?)
    }

    /// Two ranks (threads) whose gradients are 1/4 and 3/4 of a batch step as one process does
    /// on the whole batch's gradient (the loss is linear in `k`: weights 1/4 and 3/4 of
    /// k = 1 and k = 3 are k = 2.5): the same norm and weights up to f32 rounding, and the
    /// ranks' weights equal to the bit; a wrong weighting or a missing sum fails.
    #[test]
    fn weighted_shares_summed_across_ranks_step_as_the_whole_batch() -> Result<()> {
        use crate::dist::Communicator as _;
        let (reference, coef) = problem(DType::F32, 5)?;
        let mut one = AdamW::new(&reference, AdamWConfig::default())?;
        let mut norms = Vec::new();
        for _ in 0..3 {
            one.accumulate(&loss_grads(&reference, &coef, 2.5)?)?;
            norms.push(one.step(0.05, 0.0)?);
        }
        let want = values(&reference)?;
        let got = crate::dist::threads::run(2, |comm| -> Result<(Vec<f64>, Vec<f64>)> {
            let (varmap, coef) = problem(DType::F32, 5)?;
            let mut opt = AdamW::new(&varmap, AdamWConfig::default())?;
            let (k, share) = if comm.rank() == 0 {
                (1.0, 0.25)
            } else {
                (3.0, 0.75)
            };
            let mut norms = Vec::new();
            for _ in 0..3 {
                opt.accumulate_weighted(&loss_grads(&varmap, &coef, k)?, share)?;
                let mut extra = [share];
                opt.all_reduce(&comm, 1, &mut extra)?;
                assert_eq!(extra, [1.0], "the shares sum to the batch");
                norms.push(opt.step(0.05, 0.0)?);
            }
            Ok((values(&varmap)?, norms))
        })?;
        assert_eq!(got[0], got[1], "the ranks' weights and norms");
        for (a, b) in got[0].1.iter().zip(&norms) {
            assert!((a - b).abs() <= 1e-5 * b, "norm {a} against {b}");
        }
        for (a, b) in got[0].0.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-5, "weight {a} against {b}");
        }
        Ok(())
    }

    /// Rank 1 starts from other weights, moments and step count: afterwards it holds rank 0's.
    #[test]
    fn broadcast_from_root_gives_every_rank_rank_zeros_state() -> Result<()> {
        use crate::dist::Communicator as _;
        let got = crate::dist::threads::run(2, |comm| {
            let r = comm.rank();
            let (varmap, coef) = problem(DType::F32, 10 + r as u64)?;
            let cfg = AdamWConfig {
                ema: 0.9,
                ..AdamWConfig::default()
            };
            let mut opt = AdamW::new(&varmap, cfg)?;
            for _ in 0..(2 + r) {
                opt.accumulate(&loss_grads(&varmap, &coef, 1.0)?)?;
                opt.step(0.05, 0.0)?;
            }
            opt.broadcast_from_root(&comm, true)?;
            let mut state = Vec::new();
            for i in 0..opt.slots.len() {
                let (m, v) = opt.moments(i)?;
                for t in [m, v, opt.average[i].clone()] {
                    state.extend(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?);
                }
            }
            Ok((values(&varmap)?, opt.steps(), state))
        })?;
        assert_eq!(got[0].1, 2);
        assert_eq!(got[0], got[1]);
        Ok(())
    }

    fn values(varmap: &VarMap) -> Result<Vec<f64>> {
        let data = varmap.data().lock().expect("varmap");
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        let mut out = Vec::new();
        for n in names {
            out.extend(
                data[n]
                    .as_tensor()
                    .to_dtype(DType::F64)?
                    .flatten_all()?
                    .to_vec1::<f64>()?,
            );
        }
        Ok(out)
    }

    fn max_rel_diff(a: &[f64], b: &[f64]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs() / y.abs().max(1e-3))
            .fold(0.0, f64::max)
    }

    /// The one-pass update against the tensor-op one over six steps: micro-batches of one and
    /// of three, with and without clipping (checked to clip), a changing rate, weight decay on
    /// the matrix only. Same tolerances as tempest-model's test of the fused AdamW against
    /// candle-nn (f64 1e-12, f32 1e-5, relative), on the weights and the norms.
    #[test]
    fn one_pass_update_matches_the_tensor_op_update() -> Result<()> {
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
            let (fused_map, coef) = problem(dtype, 7)?;
            let (tensor_map, _) = problem(dtype, 7)?;
            assert_eq!(values(&fused_map)?, values(&tensor_map)?, "same start");
            let cfg = AdamWConfig {
                weight_decay: 0.1,
                ..AdamWConfig::default()
            };
            let mut fused = AdamW::new(&fused_map, cfg)?;
            let mut tensors = AdamW::with_tensor_ops(&tensor_map, cfg)?;
            assert!(fused.is_fused() && !tensors.is_fused());
            for (step, (micro, max_norm)) in
                [(1, 1e9), (3, 1e9), (1, 2.0), (3, 2.0), (2, 0.0), (1, 1.0)]
                    .into_iter()
                    .enumerate()
            {
                let lr = 0.05 / (1.0 + step as f64);
                for j in 0..micro {
                    let k = 1.0 + step as f64 + 0.5 * j as f64;
                    fused.accumulate(&loss_grads(&fused_map, &coef, k)?)?;
                    tensors.accumulate(&loss_grads(&tensor_map, &coef, k)?)?;
                }
                let want = tensors.step(lr, max_norm)?;
                let got = fused.step(lr, max_norm)?;
                assert!(
                    (got - want).abs() <= tol * want,
                    "{dtype:?} step {step}: norm {got} vs {want}"
                );
                if max_norm < 100.0 && max_norm > 0.0 {
                    assert!(want > max_norm, "the test must clip at step {step}");
                }
                let diff = max_rel_diff(&values(&fused_map)?, &values(&tensor_map)?);
                assert!(
                    diff < tol,
                    "{dtype:?} step {step}: weights differ by {diff}"
                );
                assert_eq!((fused.steps(), fused.accumulated()), (step + 1, 0));
            }
            // And the state they would save.
            for i in 0..3 {
                let (fm, fv) = fused.moments(i)?;
                let (tm, tv) = tensors.moments(i)?;
                for (a, b) in [(fm, tm), (fv, tv)] {
                    let a = a.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
                    let b = b.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
                    let diff = max_rel_diff(&a, &b);
                    assert!(diff < tol, "{dtype:?} moments of {i} differ by {diff}");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn a_non_finite_norm_skips_the_step_and_drops_the_gradients() -> Result<()> {
        for (what, build) in BOTH {
            let dev = Device::Cpu;
            let varmap = VarMap::new();
            let w = varmap.get(2, "w", candle_nn::Init::Const(1.0), DType::F32, &dev)?;
            let mut opt = build(&varmap, AdamWConfig::default())?;
            let g = (&w * Tensor::new(&[f32::INFINITY, 1.0], &dev)?)?
                .sum_all()?
                .backward()?;
            opt.accumulate(&g)?;
            assert!(!opt.step(0.1, 1.0)?.is_finite(), "{what}");
            assert_eq!((opt.steps(), opt.accumulated()), (0, 0), "{what}");
            assert_eq!(w.to_vec1::<f32>()?, vec![1.0, 1.0], "{what}");
            // The next finite step is the first: it moves by lr·sign(g).
            let g = (&w * Tensor::new(&[3.0f32, -0.5], &dev)?)?
                .sum_all()?
                .backward()?;
            opt.accumulate(&g)?;
            opt.step(0.1, 0.0)?;
            let w = w.to_vec1::<f32>()?;
            assert!(
                (w[0] - 0.9).abs() < 1e-6 && (w[1] - 1.1).abs() < 1e-6,
                "{what} {w:?}"
            );
        }
        Ok(())
    }

    /// The state saved by either way of updating loads into either, under the same names, and
    /// the next step from it is the same as from the optimiser that saved it.
    #[test]
    fn state_round_trips_through_a_file_between_both_updates() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("tempest-train-adamw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
        let path = dir.join("opt.safetensors");
        for (saver, build_saver) in BOTH {
            for (loader, build_loader) in BOTH {
                let (varmap, coef) = problem(DType::F32, 3)?;
                let mut a = build_saver(&varmap, AdamWConfig::default())?;
                for k in [1.0, 2.0] {
                    a.accumulate(&loss_grads(&varmap, &coef, k)?)?;
                    a.step(0.01, 1.0)?;
                }
                a.save(&path)?;
                let names = candle_core::safetensors::load(&path, &Device::Cpu)?;
                let mut keys: Vec<&String> = names.keys().collect();
                keys.sort();
                assert_eq!(
                    keys,
                    [
                        "m.a.bias",
                        "m.a.weight",
                        "m.z",
                        "steps",
                        "v.a.bias",
                        "v.a.weight",
                        "v.z"
                    ],
                    "{saver}"
                );
                let mut b = build_loader(&varmap, AdamWConfig::default())?;
                b.load(&path, &Device::Cpu)?;
                assert_eq!(b.steps(), 2);
                for i in 0..3 {
                    let (am, av) = a.moments(i)?;
                    let (bm, bv) = b.moments(i)?;
                    assert_eq!(
                        am.flatten_all()?.to_vec1::<f32>()?,
                        bm.flatten_all()?.to_vec1::<f32>()?
                    );
                    assert_eq!(
                        av.flatten_all()?.to_vec1::<f32>()?,
                        bv.flatten_all()?.to_vec1::<f32>()?
                    );
                }
                // One more step from the loaded state, against one from the saving optimiser
                // on a copy of the same weights.
                let (copy, _) = problem(DType::F32, 3)?;
                copy.data()
                    .lock()
                    .expect("varmap")
                    .iter()
                    .try_for_each(|(n, v)| {
                        let src = varmap.data().lock().expect("varmap")[n]
                            .as_tensor()
                            .copy()?;
                        v.set(&src)
                    })?;
                let mut a2 = build_saver(&copy, AdamWConfig::default())?;
                a2.load(&path, &Device::Cpu)?;
                b.accumulate(&loss_grads(&varmap, &coef, 3.0)?)?;
                a2.accumulate(&loss_grads(&copy, &coef, 3.0)?)?;
                b.step(0.01, 1.0)?;
                a2.step(0.01, 1.0)?;
                let diff = max_rel_diff(&values(&varmap)?, &values(&copy)?);
                let tol = if saver == loader { 0.0 } else { 1e-5 };
                assert!(diff <= tol, "{saver} → {loader}: {diff}");
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    /// The weight average: after each step it is `d·average + (1 − d)·weights` with
    /// `d = min(ema, (1 + t) / (10 + t))` (checked by hand over three steps, for both ways of
    /// updating); `with_average_weights` puts it in the variables and the trained weights back
    /// afterwards, also when the closure fails; it survives a save and load, and a file
    /// without it is refused by an optimiser that keeps one.
    #[test]
    fn weight_average_follows_the_weights_and_swaps_in_and_out() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("tempest-train-ema-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
        let path = dir.join("opt.safetensors");
        let cfg = AdamWConfig {
            ema: 0.5,
            ..AdamWConfig::default()
        };
        for (what, build) in BOTH {
            let (varmap, coef) = problem(DType::F32, 5)?;
            let mut opt = build(&varmap, cfg)?;
            assert!(opt.averages_weights());
            let mut expected = values(&varmap)?;
            for (t, k) in [1.0, 2.0, 3.0].into_iter().enumerate() {
                opt.accumulate(&loss_grads(&varmap, &coef, k)?)?;
                opt.step(0.05, 0.0)?;
                let t = (t + 1) as f64;
                let d = 0.5f64.min((1.0 + t) / (10.0 + t));
                let w = values(&varmap)?;
                for (e, w) in expected.iter_mut().zip(&w) {
                    *e = d * *e + (1.0 - d) * w;
                }
            }
            let trained = values(&varmap)?;
            let seen = opt.with_average_weights(|| values(&varmap))?;
            assert!(max_rel_diff(&seen, &expected) < 1e-5, "{what}");
            assert!(max_rel_diff(&seen, &trained) > 1e-3, "{what}: no average");
            assert_eq!(values(&varmap)?, trained, "{what}: weights not put back");
            let failed: Result<()> =
                opt.with_average_weights(|| Err(Error::setting("test", "fails")));
            assert!(failed.is_err());
            assert_eq!(
                values(&varmap)?,
                trained,
                "{what}: not put back after an error"
            );

            opt.save(&path)?;
            let mut loaded = build(&varmap, cfg)?;
            loaded.load(&path, &Device::Cpu)?;
            let again = loaded.with_average_weights(|| values(&varmap))?;
            assert_eq!(again, seen, "{what}");
            let mut plain = build(&varmap, AdamWConfig::default())?;
            plain.save(&path)?;
            let err = build(&varmap, cfg)?
                .load(&path, &Device::Cpu)
                .expect_err("no average in the file");
            assert!(err.to_string().contains("weight average"), "{err}");
            // Without an average, the closure sees the trained weights.
            assert_eq!(plain.with_average_weights(|| values(&varmap))?, trained);
            plain.load(&path, &Device::Cpu)?;
        }
        let bad = AdamWConfig {
            ema: 1.0,
            ..AdamWConfig::default()
        };
        let (varmap, _) = problem(DType::F32, 5)?;
        assert!(AdamW::new(&varmap, bad).is_err());
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
