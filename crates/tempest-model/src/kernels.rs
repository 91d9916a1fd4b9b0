//! Fused CPU kernels with their own backward passes.
//!
//! candle computes GELU's backward from about a dozen separate tensor ops, each a full pass
//! over memory with its own allocation, and runs its forward on one thread. [`gelu`] is one
//! pass forward and one pass backward, split over rayon's threads. On other devices it falls
//! back to candle's `gelu` (same tanh approximation), so the model runs anywhere.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// √(2/π), the constant of GELU's tanh approximation (Hendrycks & Gimpel 2016, eq. 2).
const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
/// The cubic coefficient of the same approximation.
const CUBIC: f64 = 0.044_715;
/// Below this many elements a single thread is faster than waking the pool.
const PAR_MIN: usize = 1 << 14;
/// Elements per parallel chunk.
const CHUNK: usize = 1 << 12;

/// GELU, tanh approximation: `0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³)))`, written as
/// `x·σ(2u)` since `0.5(1 + tanh u) = σ(2u)` and one `exp` is cheaper than `tanh`.
#[inline(always)]
fn gelu_f64(x: f64) -> f64 {
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
fn gelu_grad_f64(x: f64) -> f64 {
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

fn map2<T: Copy + Send + Sync + Default>(xs: &[T], gs: &[T], f: impl Fn(T, T) -> T + Sync) -> Vec<T> {
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

fn contiguous<'a, T: candle_core::WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<T>()?[a..b]),
        None => candle_core::bail!("fused kernel: input is not contiguous"),
    }
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

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            candle_core::bail!("fused gelu grad: shapes {:?} and {:?}", l1.shape(), l2.shape());
        }
        let out = match s1.dtype() {
            DType::F32 => CpuStorage::F32(map2(contiguous::<f32>(s1, l1)?, contiguous::<f32>(s2, l2)?, |x, g| {
                g * gelu_grad_f32(x)
            })),
            DType::F64 => CpuStorage::F64(map2(contiguous::<f64>(s1, l1)?, contiguous::<f64>(s2, l2)?, |x, g| {
                g * gelu_grad_f64(x)
            })),
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn sample(n: usize, dtype: DType) -> Result<Tensor> {
        // Values spanning GELU's interesting range (−8..8), including 0.
        let v: Vec<f64> = (0..n).map(|i| (i as f64 / (n - 1) as f64) * 16.0 - 8.0).collect();
        Tensor::from_vec(v, n, &Device::Cpu)?.to_dtype(dtype)
    }

    #[test]
    fn forward_matches_candle() -> Result<()> {
        for (n, dtype, tol) in [(101, DType::F64, 1e-12), (50_001, DType::F32, 2e-6)] {
            let x = sample(n, dtype)?;
            let diff = (gelu(&x)? - x.gelu()?)?.abs()?.max(0)?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            assert!(diff < tol, "{dtype:?} n={n}: max diff {diff}");
        }
        Ok(())
    }

    #[test]
    fn backward_matches_candle() -> Result<()> {
        for (n, dtype, tol) in [(101, DType::F64, 1e-5), (50_001, DType::F32, 1e-4)] {
            let x = Var::from_tensor(&sample(n, dtype)?)?;
            let w = sample(n, dtype)?.cos()?; // non-uniform upstream gradient
            let fused = (gelu(x.as_tensor())? * &w)?.sum_all()?.backward()?;
            let plain = (x.as_tensor().gelu()? * &w)?.sum_all()?.backward()?;
            let (a, b) = (fused.get(&x).cloned(), plain.get(&x).cloned());
            let (Some(a), Some(b)) = (a, b) else {
                candle_core::bail!("no gradient")
            };
            // candle's backward rounds its constants to 6 digits: compare loosely to it, and
            // tightly to a central finite difference in f64.
            let diff = (a - b)?.abs()?.max(0)?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            assert!(diff < tol, "{dtype:?}: max diff {diff}");
        }
        let h = 1e-6;
        for x in [-3.0, -0.7, 0.0, 0.3, 1.1, 4.0] {
            let fd = (gelu_f64(x + h) - gelu_f64(x - h)) / (2.0 * h);
            assert!((fd - gelu_grad_f64(x)).abs() < 1e-8, "x={x}: {fd} vs {}", gelu_grad_f64(x));
        }
        Ok(())
    }

    #[test]
    fn non_contiguous_input_is_handled() -> Result<()> {
        let x = sample(64, DType::F32)?.reshape((8, 8))?.t()?;
        let diff = (gelu(&x)? - x.gelu()?)?.abs()?.max_keepdim(0)?.max(1)?.to_vec1::<f32>()?;
        assert!(diff[0] < 1e-6);
        Ok(())
    }
}
