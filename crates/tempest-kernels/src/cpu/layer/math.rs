//! The per-element and per-row arithmetic of the fused layer (its exponential, GELU, layer norm
//! rows, softmax rows, sums in a fixed order), which the block encoder shares, and the lock on
//! what a forward pass kept for its backward pass.

use std::sync::Mutex;

use candle_core::{Result, WithDType};
use num_traits::Float;
use rayon::prelude::*;

use super::TASK_ELEMS;

/// √(2/π) and the cubic coefficient of GELU's tanh approximation (as in [`crate::cpu::gelu`]).
pub(crate) const GELU_K: f64 = 2.0 * 0.797_884_560_802_865_4;
pub(crate) const GELU_C: f64 = 0.044_715;

/// The element types of the fused layer, with the exponential it uses: for f32 a polynomial
/// that the compiler vectorises (libm's `expf` is a scalar call per element, and the softmax
/// and GELU take hundreds of millions of them per training step); f64 keeps `exp`, so the f64
/// path stays exact for the gradient checks.
pub(crate) trait Elem:
    WithDType + Float + std::ops::AddAssign + std::ops::MulAssign + crate::scratch::Pooled
{
    /// eˣ; 0 for x below about −87 in f32 (where `expf` returns 0 or a subnormal).
    fn exp_fast(self) -> Self;
}

impl Elem for f64 {
    #[inline(always)]
    fn exp_fast(self) -> f64 {
        self.exp()
    }
}

impl Elem for f32 {
    #[inline(always)]
    fn exp_fast(self) -> f32 {
        exp_f32(self)
    }
}

/// eˣ in f32 to about 2 ulp: x = n·ln2 + y with |y| ≤ ln2/2 (n by rounding, ln2 split in two
/// parts so that y is exact: Cody & Waite 1980), eʸ by its Taylor series to degree 7 (error
/// below 4e-9 relative on that range), 2ⁿ written into the exponent bits. Branch-free, so
/// loops over it vectorise.
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4; // ln 2 rounded to 12 significant bits: n·LN2_HI is exact
    const LN2_LO: f32 = -2.121_944_4e-4; // ln 2 − LN2_HI
                                         // 1.5·2²³: adding it rounds to an integer in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(-87.0, 88.0);
    let shifted = xc * LOG2_E + ROUND;
    let n = (shifted.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let nf = shifted - ROUND;
    let y = (xc - nf * LN2_HI) - nf * LN2_LO;
    let p = 1.0
        + y * (1.0
            + y * (0.5
                + y * (1.0 / 6.0
                    + y * (1.0 / 24.0
                        + y * (1.0 / 120.0 + y * (1.0 / 720.0 + y * (1.0 / 5040.0)))))));
    let scale = f32::from_bits(((n + 127) as u32) << 23);
    if x < -87.0 {
        0.0
    } else {
        p * scale
    }
}

/// Rows per parallel task for rows of `width` elements.
pub(crate) fn rows_per_task(width: usize) -> usize {
    (TASK_ELEMS / width.max(1)).max(1)
}

/// Column sums of `[rows, width]` in f64, split over threads; the partial sums are added in
/// order, so the result does not depend on how rayon scheduled the work.
pub(crate) fn col_sums<T: WithDType>(a: &[T], width: usize) -> Vec<f64> {
    a.par_chunks(rows_per_task(width) * width)
        .map(|c| {
            let mut s = vec![0.0; width];
            for row in c.chunks(width) {
                s.iter_mut().zip(row).for_each(|(s, v)| *s += v.to_f64());
            }
            s
        })
        .collect::<Vec<_>>()
        .into_iter()
        .fold(vec![0.0; width], add_into)
}

/// Runs `f` on what an op's forward pass kept in `saved`, holding the lock through it; an
/// error naming `op` when a backward pass panicked with it held or no forward pass ran.
pub(crate) fn with_saved<S, R>(
    saved: &Mutex<Option<S>>,
    op: &str,
    f: impl FnOnce(&S) -> Result<R>,
) -> Result<R> {
    let guard = saved
        .lock()
        .map_err(|_| candle_core::Error::msg(format!("{op}: a backward pass panicked")))?;
    let Some(saved) = guard.as_ref() else {
        candle_core::bail!("{op}: backward without a forward pass")
    };
    f(saved)
}

pub(crate) fn add_into(mut a: Vec<f64>, b: Vec<f64>) -> Vec<f64> {
    a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
    a
}

/// The per-task (weight, bias) gradient sums of a norm's backward pass, added in task order.
pub(crate) trait SumPairs {
    /// The two sums, each `d` long.
    fn sum_pairs(self, d: usize) -> (Vec<f64>, Vec<f64>);
}

impl SumPairs for Vec<(Vec<f64>, Vec<f64>)> {
    fn sum_pairs(self, d: usize) -> (Vec<f64>, Vec<f64>) {
        self.into_iter().fold((vec![0.0; d], vec![0.0; d]), |a, b| {
            (add_into(a.0, b.0), add_into(a.1, b.1))
        })
    }
}

/// Layer norm of one row into `out`; returns (mean, 1/σ).
#[inline]
pub(crate) fn norm_row<T: WithDType>(
    x: &[T],
    w: &[T],
    b: &[T],
    eps: f64,
    out: &mut [T],
) -> (f64, f64) {
    let d = x.len() as f64;
    let mean = x.iter().map(|v| v.to_f64()).sum::<f64>() / d;
    let var = x.iter().map(|v| (v.to_f64() - mean).powi(2)).sum::<f64>() / d;
    let inv = 1.0 / (var + eps).sqrt();
    for (((o, x), w), b) in out.iter_mut().zip(x).zip(w).zip(b) {
        *o = T::from_f64((x.to_f64() - mean) * inv * w.to_f64() + b.to_f64());
    }
    (mean, inv)
}

/// A layer norm's backward for one row, added to `dx`: with x̂ = (x − μ)/σ and ĝ = g⊙w,
/// dx += (ĝ − mean(ĝ) − x̂·mean(ĝ⊙x̂))/σ; dw += g⊙x̂, db += g.
#[inline]
#[allow(clippy::too_many_arguments)]
pub(crate) fn norm_row_grad<T: WithDType>(
    x: &[T],
    (mean, inv): (f64, f64),
    w: &[T],
    g: &[T],
    dx: &mut [f64],
    dw: &mut [f64],
    db: &mut [f64],
) {
    let d = x.len() as f64;
    let (mut m1, mut m2) = (0.0, 0.0);
    for j in 0..x.len() {
        let xh = (x[j].to_f64() - mean) * inv;
        let gj = g[j].to_f64();
        let gh = gj * w[j].to_f64();
        m1 += gh;
        m2 += gh * xh;
        dw[j] += gj * xh;
        db[j] += gj;
    }
    let (m1, m2) = (m1 / d, m2 / d);
    for j in 0..x.len() {
        let xh = (x[j].to_f64() - mean) * inv;
        dx[j] += (g[j].to_f64() * w[j].to_f64() - m1 - xh * m2) * inv;
    }
}

/// GELU (tanh approximation) as `x·σ(2u)`, and its derivative.
#[inline(always)]
pub(crate) fn gelu<T: Elem>(x: T) -> T {
    let (k, c) = (
        T::from(GELU_K).unwrap_or(T::one()),
        T::from(GELU_C).unwrap_or(T::zero()),
    );
    x / (T::one() + (-(k * (x + c * x * x * x))).exp_fast())
}

#[inline(always)]
pub(crate) fn gelu_grad<T: Elem>(x: T) -> T {
    let (k, c) = (
        T::from(GELU_K).unwrap_or(T::one()),
        T::from(GELU_C).unwrap_or(T::zero()),
    );
    let three = T::from(3.0).unwrap_or(T::one());
    let s = T::one() / (T::one() + (-(k * (x + c * x * x * x))).exp_fast());
    s + x * s * (T::one() - s) * k * (T::one() + three * c * x * x)
}

/// Partial sums per lane: a single running sum is a chain of dependent adds that the compiler
/// may not reorder (and so cannot vectorise); eight of them can.
pub(crate) const LANES: usize = 8;

/// Σ v, eight lanes at a time.
#[inline]
pub(crate) fn sum_lanes<T: Elem>(v: &[T]) -> T {
    let mut acc = [T::zero(); LANES];
    let chunks = v.chunks_exact(LANES);
    let tail = chunks.remainder().iter().fold(T::zero(), |a, &b| a + b);
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    acc.iter().fold(tail, |a, &b| a + b)
}

/// Σ a⊙b, eight lanes at a time.
#[inline]
pub(crate) fn dot_lanes<T: Elem>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::zero(); LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .fold(T::zero(), |s, (&x, &y)| s + x * y);
    for (x, y) in ca.zip(cb) {
        for ((s, &x), &y) in acc.iter_mut().zip(x).zip(y) {
            *s += x * y;
        }
    }
    acc.iter().fold(tail, |a, &b| a + b)
}

/// Softmax over rows of `s [c·H·T, T]` plus the key bias of each row's sequence (`rows_per_seq`
/// rows share a bias row), written to `p`.
pub(crate) fn softmax_rows<T: Elem>(
    s: &[T],
    p: &mut [T],
    t: usize,
    rows_per_seq: usize,
    bias: Option<&[T]>,
) {
    for (r, (row, out)) in s.chunks(t).zip(p.chunks_mut(t)).enumerate() {
        match bias {
            Some(b) => {
                let b = &b[(r / rows_per_seq) * t..][..t];
                out.iter_mut()
                    .zip(row.iter().zip(b))
                    .for_each(|(o, (&v, &b))| *o = v + b);
            }
            None => out.copy_from_slice(row),
        }
        let max = out.iter().fold(T::neg_infinity(), |m, &v| Float::max(m, v));
        out.iter_mut().for_each(|v| *v = (*v - max).exp_fast());
        let sum = sum_lanes(out);
        let inv = T::one() / sum;
        out.iter_mut().for_each(|v| *v *= inv);
    }
}
