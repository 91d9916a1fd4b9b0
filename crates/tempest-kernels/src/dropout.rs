//! Seeded dropout: the same seed gives the same masks, so a training run on the CPU repeats.
//!
//! candle's `ops::dropout` draws from the device's generator, which cannot be seeded on the CPU.
//! Here every dropout call takes a seed from a [`DropoutRng`] shared by the model's layers, and
//! element `i` of that call is kept when a hash of `(seed, i)` clears the threshold: the mask
//! depends on the seed and the element's index only, not on the thread that computes it or on
//! the order of the work, and the backward pass regenerates the mask instead of storing it.
//! The fused layer (`crate::cpu::layer`) uses the same function, so its masks equal those of
//! the tensor-op path for the same seed.

use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use tempest_tokenize::rng::{mix64, GOLDEN_GAMMA};

/// The seed of a training step from the run's seed and the step's index (and any further
/// counters, such as a micro-batch), each mixed in turn.
pub fn dropout_seed(run_seed: u64, parts: &[u64]) -> u64 {
    parts
        .iter()
        .fold(mix64(run_seed ^ 0x6472_6f70_6f75_7400), |acc, &p| {
            mix64(acc ^ mix64(p.wrapping_add(GOLDEN_GAMMA)))
        })
}

/// Whether dropout with keep threshold `threshold` (see [`Mask::new`]) keeps element `i`
/// of the call seeded with `seed`.
#[inline(always)]
fn keeps(seed: u64, i: usize, threshold: u32) -> bool {
    let u = mix64(seed ^ (i as u64).wrapping_mul(GOLDEN_GAMMA));
    ((u >> 32) as u32) >= threshold
}

/// One dropout call's mask: element `i` is kept (and scaled by `1/(1 − p)`) or zeroed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Mask {
    seed: u64,
    threshold: u32,
    scale: f64,
}

impl Mask {
    /// The mask of probability `p` (0 ≤ p < 1) drawn from `seed`.
    pub(crate) fn new(seed: u64, p: f32) -> Self {
        let p = f64::from(p).clamp(0.0, 1.0);
        Mask {
            seed,
            threshold: (p * 4_294_967_296.0).min(u32::MAX as f64) as u32,
            scale: 1.0 / (1.0 - p).max(f64::MIN_POSITIVE),
        }
    }

    /// The factor element `i` is multiplied by: 0 or `1/(1 − p)`.
    #[inline(always)]
    pub(crate) fn factor(&self, i: usize) -> f64 {
        if keeps(self.seed, i, self.threshold) {
            self.scale
        } else {
            0.0
        }
    }
}

#[derive(Debug, Default)]
struct RngState {
    seed: u64,
    calls: u64,
}

/// The source of dropout seeds for one model: its layers share it (clones share the state).
/// [`DropoutRng::reseed`] before a training step makes the step's masks a function of the seed:
/// the k-th dropout call after it gets seed `mix(seed, k)`, and a forward pass makes its calls
/// in a fixed order. Without a reseed the sequence continues from the last one (seed 0 at
/// construction). Used from several threads at once, the order of calls (and so the masks)
/// is not defined.
#[derive(Debug, Clone, Default)]
pub struct DropoutRng(Arc<Mutex<RngState>>);

impl DropoutRng {
    /// A generator starting at seed 0.
    pub fn new() -> Self {
        DropoutRng::default()
    }

    /// Restarts the sequence of seeds from `seed`.
    pub fn reseed(&self, seed: u64) {
        if let Ok(mut s) = self.0.lock() {
            *s = RngState { seed, calls: 0 };
        }
    }

    /// The seed of the next dropout call.
    pub fn next_seed(&self) -> u64 {
        match self.0.lock() {
            Ok(mut s) => {
                s.calls += 1;
                mix64(s.seed ^ mix64(s.calls))
            }
            Err(_) => 0,
        }
    }

    /// Inverted dropout of probability `p` on `x` (nothing when `p` is 0), seeded by the next
    /// seed: one pass forward and one backward on the CPU; elsewhere the mask is built on the
    /// host and multiplied in (the same mask).
    pub fn dropout(&self, x: &Tensor, p: f32) -> Result<Tensor> {
        if p <= 0.0 {
            return Ok(x.clone());
        }
        if p.is_nan() || p >= 1.0 {
            candle_core::bail!("dropout probability {p} is not below 1");
        }
        apply(x, Mask::new(self.next_seed(), p))
    }
}

/// Elements per parallel task.
const CHUNK: usize = 1 << 13;

fn masked<T: candle_core::WithDType>(xs: &[T], mask: Mask) -> Vec<T> {
    let mut out = vec![T::zero(); xs.len()];
    let task = |(c, (o, x)): (usize, (&mut [T], &[T]))| {
        for (j, (o, &x)) in o.iter_mut().zip(x).enumerate() {
            *o = T::from_f64(x.to_f64() * mask.factor(c * CHUNK + j));
        }
    };
    if xs.len() > CHUNK {
        out.par_chunks_mut(CHUNK)
            .zip(xs.par_chunks(CHUNK))
            .enumerate()
            .for_each(task);
    } else {
        task((0, (&mut out, xs)));
    }
    out
}

/// `x ⊙ mask`: its own backward (`grad ⊙ mask`, the same op on the gradient).
struct DropoutOp(Mask);

impl CustomOp1 for DropoutOp {
    fn name(&self) -> &'static str {
        "tempest-dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("dropout: input is not contiguous")
        };
        let out = match s.dtype() {
            DType::F32 => CpuStorage::F32(masked(&s.as_slice::<f32>()?[a..b], self.0)),
            DType::F64 => CpuStorage::F64(masked(&s.as_slice::<f64>()?[a..b], self.0)),
            d => candle_core::bail!("dropout: unsupported dtype {d:?}"),
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            grad.contiguous()?.apply_op1_no_bwd(&DropoutOp(self.0))?,
        ))
    }
}

fn apply(x: &Tensor, mask: Mask) -> Result<Tensor> {
    if x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) {
        return x.contiguous()?.apply_op1(DropoutOp(mask));
    }
    let factors: Vec<f32> = (0..x.elem_count()).map(|i| mask.factor(i) as f32).collect();
    let m = Tensor::from_vec(factors, x.shape(), x.device())?.to_dtype(x.dtype())?;
    x * m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::check::Rng;
    use crate::testing::normal;
    use candle_core::{Device, Var};

    #[test]
    fn same_seed_same_mask_and_the_rate_is_p() -> Result<()> {
        let x = Tensor::ones(100_000, DType::F32, &Device::Cpu)?;
        let (a, b) = (DropoutRng::new(), DropoutRng::new());
        a.reseed(7);
        b.reseed(7);
        let ya = a.dropout(&x, 0.25)?.to_vec1::<f32>()?;
        let yb = b.dropout(&x, 0.25)?.to_vec1::<f32>()?;
        assert_eq!(ya, yb);
        // The next call of the same generator draws another mask.
        let yc = a.dropout(&x, 0.25)?.to_vec1::<f32>()?;
        assert_ne!(ya, yc);
        // Kept elements are scaled by 1/(1 − p); about p of them are dropped (the standard
        // error of the rate at n = 1e5 is 0.0014: 0.01 is seven of them).
        assert!(ya
            .iter()
            .all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
        let dropped = ya.iter().filter(|&&v| v == 0.0).count() as f64 / 1e5;
        assert!((dropped - 0.25).abs() < 0.01, "dropped {dropped}");
        // Reseeding restarts the sequence.
        a.reseed(7);
        assert_eq!(a.dropout(&x, 0.25)?.to_vec1::<f32>()?, ya);
        a.reseed(8);
        assert_ne!(a.dropout(&x, 0.25)?.to_vec1::<f32>()?, ya);
        Ok(())
    }

    #[test]
    fn the_gradient_is_the_same_mask() -> Result<()> {
        let mut draw = Rng::new(4);
        let x = Var::from_tensor(&normal(&mut draw, (37, 300), 0.0, 1.0, DType::F64)?)?;
        let w = normal(&mut draw, (37, 300), 0.0, 1.0, DType::F64)?;
        let rng = DropoutRng::new();
        rng.reseed(3);
        let y = rng.dropout(x.as_tensor(), 0.5)?;
        let grads = (&y * &w)?.sum_all()?.backward()?;
        let Some(g) = grads.get(x.as_tensor()) else {
            candle_core::bail!("no gradient")
        };
        // y = x ⊙ m, so dy/dx = m = y / x elementwise, and the gradient is w ⊙ m.
        let m = (&y / x.as_tensor())?;
        let diff = (g - (&w * &m)?)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f64>()?;
        assert!(diff < 1e-12, "{diff}");
        Ok(())
    }

    #[test]
    fn step_seeds_differ_by_step_and_run() {
        let s = dropout_seed(1, &[0]);
        assert_eq!(s, dropout_seed(1, &[0]));
        assert_ne!(s, dropout_seed(1, &[1]));
        assert_ne!(s, dropout_seed(2, &[0]));
        assert_ne!(dropout_seed(1, &[0, 1]), dropout_seed(1, &[1, 0]));
    }
}
