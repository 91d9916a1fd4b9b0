//! GELU (tanh approximation) with its own backward pass.
//!
//! candle computes GELU's backward from about a dozen separate tensor ops, each a full pass
//! over memory with its own allocation, and runs its forward on one thread. [`gelu`] is one
//! pass forward and one pass backward, split over rayon's threads. On other devices it falls
//! back to candle's `gelu` (same tanh approximation), so the model runs anywhere.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{contiguous, CHUNK, PAR_MIN};

/// √(2/π), the constant of GELU's tanh approximation (Hendrycks & Gimpel 2016, eq. 2).
const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
/// The cubic coefficient of the same approximation.
const CUBIC: f64 = 0.044_715;

/// GELU, tanh approximation: `0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³)))`, written as
/// `x·σ(2u)` since `0.5(1 + tanh u) = σ(2u)` and one `exp` is cheaper than `tanh`.
#[inline(always)]
pub(super) fn gelu_f64(x: f64) -> f64 {
    let u2 = 2.0 * SQRT_2_OVER_PI * (x + CUBIC * x * x * x);
    x / (1.0 + (-u2).exp())
}

#[inline(always)]
fn gelu_f32(x: f32) -> f32 {
    let u2 = (2.0 * SQRT_2_OVER_PI) as f32 * (x + CUBIC as f32 * x * x * x);
    x / (1.0 + (-u2).exp())
}

/// d gelu / dx = σ + x·σ(1 − σ)·2√(2/π)(1 + 3·0.044715x²) with σ = σ(2u).
#[inline(always)]
pub(super) fn gelu_grad_f64(x: f64) -> f64 {
    let k = 2.0 * SQRT_2_OVER_PI;
    let s = 1.0 / (1.0 + (-k * (x + CUBIC * x * x * x)).exp());
    s + x * s * (1.0 - s) * k * (1.0 + 3.0 * CUBIC * x * x)
}

#[inline(always)]
fn gelu_grad_f32(x: f32) -> f32 {
    let k = (2.0 * SQRT_2_OVER_PI) as f32;
    let c = CUBIC as f32;
    let s = 1.0 / (1.0 + (-k * (x + c * x * x * x)).exp());
    s + x * s * (1.0 - s) * k * (1.0 + 3.0 * c * x * x)
}

fn map1<T: Copy + Send + Sync + Default>(xs: &[T], f: impl Fn(T) -> T + Sync) -> Vec<T> {
    let mut out = vec![T::default(); xs.len()];
    if xs.len() >= PAR_MIN {
        out.par_chunks_mut(CHUNK)
            .zip(xs.par_chunks(CHUNK))
            .for_each(|(o, x)| o.iter_mut().zip(x).for_each(|(o, &x)| *o = f(x)));
    } else {
        out.iter_mut().zip(xs).for_each(|(o, &x)| *o = f(x));
    }
    out
}

fn map2<T: Copy + Send + Sync + Default>(
    xs: &[T],
    gs: &[T],
    f: impl Fn(T, T) -> T + Sync,
) -> Vec<T> {
    let mut out = vec![T::default(); xs.len()];
    if xs.len() >= PAR_MIN {
        out.par_chunks_mut(CHUNK)
            .zip(xs.par_chunks(CHUNK).zip(gs.par_chunks(CHUNK)))
            .for_each(|(o, (x, g))| {
                for ((o, &x), &g) in o.iter_mut().zip(x).zip(g) {
                    *o = f(x, g);
                }
            });
    } else {
        for ((o, &x), &g) in out.iter_mut().zip(xs).zip(gs) {
            *o = f(x, g);
        }
    }
    out
}

struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "tempest-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = match s.dtype() {
            DType::F32 => CpuStorage::F32(map1(contiguous::<f32>(s, l)?, gelu_f32)),
            DType::F64 => CpuStorage::F64(map1(contiguous::<f64>(s, l)?, gelu_f64)),
            d => candle_core::bail!("fused gelu: unsupported dtype {d:?}"),
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let g = grad_res.contiguous()?;
        Ok(Some(arg.apply_op2_no_bwd(&g, &GeluGrad)?))
    }
}

/// `grad_in = grad_out · gelu'(x)` in one pass.
struct GeluGrad;

impl CustomOp2 for GeluGrad {
    fn name(&self) -> &'static str {
        "tempest-gelu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            candle_core::bail!(
                "fused gelu grad: shapes {:?} and {:?}",
                l1.shape(),
                l2.shape()
            );
        }
        let out = match s1.dtype() {
            DType::F32 => CpuStorage::F32(map2(
                contiguous::<f32>(s1, l1)?,
                contiguous::<f32>(s2, l2)?,
                |x, g| g * gelu_grad_f32(x),
            )),
            DType::F64 => CpuStorage::F64(map2(
                contiguous::<f64>(s1, l1)?,
                contiguous::<f64>(s2, l2)?,
                |x, g| g * gelu_grad_f64(x),
            )),
            d => candle_core::bail!("fused gelu grad: unsupported dtype {d:?}"),
        };
        Ok((out, l1.shape().clone()))
    }
}

/// GELU (tanh approximation) with a fused backward on the CPU for f32/f64; candle's `gelu`
/// elsewhere. Agrees with candle's `gelu` to rounding.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) {
        x.contiguous()?.apply_op1(Gelu)
    } else {
        x.gelu()
    }
}
