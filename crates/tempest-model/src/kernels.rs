//! Fused CPU kernels with their own backward passes.
//!
//! candle computes GELU's backward from about a dozen separate tensor ops, each a full pass
//! over memory with its own allocation, and runs its forward on one thread. [`gelu`] is one
//! pass forward and one pass backward, split over rayon's threads. On other devices it falls
//! back to candle's `gelu` (same tanh approximation), so the model runs anywhere.

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor,
};
use num_traits::Float;
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

/// The elements of a contiguous CPU input (our ops take no strided views); an error for a
/// strided view.
pub fn contiguous<'a, T: candle_core::WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
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

/// Rows of `x` processed per parallel task.
fn rows_per_task(rows: usize, d: usize) -> usize {
    (CHUNK / d.max(1)).max(1).min(rows.max(1))
}

/// Softmax of one row in place over `o`, from `x` (+ `bias`), in `T`'s own precision: f32
/// data uses `expf`, about twice as fast as `exp` on f64.
#[inline]
fn softmax_row<T: candle_core::WithDType + Float>(o: &mut [T], x: &[T], bias: Option<&[T]>) {
    let mut max = T::neg_infinity();
    match bias {
        Some(b) => {
            for ((o, &v), &b) in o.iter_mut().zip(x).zip(b) {
                *o = v + b;
                max = Float::max(max, *o);
            }
        }
        None => {
            o.copy_from_slice(x);
            max = x.iter().fold(max, |m, &v| Float::max(m, v));
        }
    }
    let mut sum = T::zero();
    for o in o.iter_mut() {
        *o = (*o - max).exp();
        sum += *o;
    }
    let inv = T::one() / sum;
    for o in o.iter_mut() {
        *o *= inv;
    }
}

fn softmax_rows<T: candle_core::WithDType + Float>(x: &[T], d: usize) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    let task = |(o, x): (&mut [T], &[T])| {
        for (o, x) in o.chunks_mut(d).zip(x.chunks(d)) {
            softmax_row(o, x, None);
        }
    };
    let n = rows_per_task(x.len() / d.max(1), d) * d;
    if x.len() >= PAR_MIN {
        out.par_chunks_mut(n).zip(x.par_chunks(n)).for_each(task);
    } else {
        out.chunks_mut(n.max(1))
            .zip(x.chunks(n.max(1)))
            .for_each(task);
    }
    out
}

/// Softmax over the last dimension, one pass forward and one backward.
struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "tempest-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = l.dims().last().copied().unwrap_or(1);
        let out = match s.dtype() {
            DType::F32 => CpuStorage::F32(softmax_rows(contiguous::<f32>(s, l)?, d)),
            DType::F64 => CpuStorage::F64(softmax_rows(contiguous::<f64>(s, l)?, d)),
            dt => candle_core::bail!("fused softmax: unsupported dtype {dt:?}"),
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            res.apply_op2_no_bwd(&grad_res.contiguous()?, &SoftmaxGrad)?,
        ))
    }
}

/// `dx = y ⊙ (g − Σ g⊙y)` per row.
struct SoftmaxGrad;

fn softmax_grad_rows<T: candle_core::WithDType>(y: &[T], g: &[T], d: usize) -> Vec<T> {
    let mut out = vec![T::zero(); y.len()];
    let task = |(o, (y, g)): (&mut [T], (&[T], &[T]))| {
        for (o, (y, g)) in o.chunks_mut(d).zip(y.chunks(d).zip(g.chunks(d))) {
            let dot: f64 = y.iter().zip(g).map(|(y, g)| y.to_f64() * g.to_f64()).sum();
            for ((o, y), g) in o.iter_mut().zip(y).zip(g) {
                *o = T::from_f64(y.to_f64() * (g.to_f64() - dot));
            }
        }
    };
    let n = rows_per_task(y.len() / d.max(1), d) * d;
    if y.len() >= PAR_MIN {
        out.par_chunks_mut(n)
            .zip(y.par_chunks(n).zip(g.par_chunks(n)))
            .for_each(task);
    } else {
        out.chunks_mut(n.max(1))
            .zip(y.chunks(n.max(1)).zip(g.chunks(n.max(1))))
            .for_each(task);
    }
    out
}

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "tempest-softmax-grad"
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
                "fused softmax grad: shapes {:?} and {:?}",
                l1.shape(),
                l2.shape()
            );
        }
        let d = l1.dims().last().copied().unwrap_or(1);
        let out = match s1.dtype() {
            DType::F32 => CpuStorage::F32(softmax_grad_rows(
                contiguous::<f32>(s1, l1)?,
                contiguous::<f32>(s2, l2)?,
                d,
            )),
            DType::F64 => CpuStorage::F64(softmax_grad_rows(
                contiguous::<f64>(s1, l1)?,
                contiguous::<f64>(s2, l2)?,
                d,
            )),
            dt => candle_core::bail!("fused softmax grad: unsupported dtype {dt:?}"),
        };
        Ok((out, l1.shape().clone()))
    }
}

/// Softmax over the last dimension with a fused backward on the CPU (f32/f64);
/// `candle_nn::ops::softmax` (which backpropagates) elsewhere.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) {
        x.contiguous()?.apply_op1(Softmax)
    } else {
        candle_nn::ops::softmax(x, candle_core::D::Minus1)
    }
}

/// Softmax over the last dimension of `scores + bias`, where `bias [G, T]` holds one additive
/// key bias per group of `scores`' rows (`scores [G, .., T]`: every row of group g uses bias
/// row g). Saves materialising the biased scores: one pass fewer over the largest tensor of
/// attention.
struct BiasedSoftmax;

fn biased_softmax_rows<T: candle_core::WithDType + Float>(x: &[T], bias: &[T], d: usize) -> Vec<T> {
    let groups = bias.len() / d.max(1);
    let rows_per_group = (x.len() / d.max(1)) / groups.max(1);
    let mut out = vec![T::zero(); x.len()];
    let group_len = rows_per_group * d;
    let task = |(g, (o, x)): (usize, (&mut [T], &[T]))| {
        let b = &bias[g * d..(g + 1) * d];
        for (o, x) in o.chunks_mut(d).zip(x.chunks(d)) {
            softmax_row(o, x, Some(b));
        }
    };
    if group_len == 0 {
        return out;
    }
    if x.len() >= PAR_MIN {
        out.par_chunks_mut(group_len)
            .zip(x.par_chunks(group_len))
            .enumerate()
            .for_each(task);
    } else {
        out.chunks_mut(group_len)
            .zip(x.chunks(group_len))
            .enumerate()
            .for_each(task);
    }
    out
}

impl CustomOp2 for BiasedSoftmax {
    fn name(&self) -> &'static str {
        "tempest-biased-softmax"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = l1.dims().last().copied().unwrap_or(1);
        let (g, t) = l2.shape().dims2()?;
        let rows = l1.shape().elem_count() / d.max(1);
        if t != d || g == 0 || !rows.is_multiple_of(g) || l1.dims().first() != Some(&g) {
            candle_core::bail!(
                "biased softmax: scores {:?}, bias {:?}",
                l1.shape(),
                l2.shape()
            );
        }
        let out = match s1.dtype() {
            DType::F32 => CpuStorage::F32(biased_softmax_rows(
                contiguous::<f32>(s1, l1)?,
                contiguous::<f32>(s2, l2)?,
                d,
            )),
            DType::F64 => CpuStorage::F64(biased_softmax_rows(
                contiguous::<f64>(s1, l1)?,
                contiguous::<f64>(s2, l2)?,
                d,
            )),
            dt => candle_core::bail!("biased softmax: unsupported dtype {dt:?}"),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _bias: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // The bias comes from a mask: no gradient flows into it.
        Ok((
            Some(res.apply_op2_no_bwd(&grad_res.contiguous()?, &SoftmaxGrad)?),
            None,
        ))
    }
}

/// `softmax(scores + bias)` over the last dimension, `scores [G, .., T]`, `bias [G, T]` (one
/// key bias per leading index, broadcast over the middle dimensions). Fused on the CPU for
/// f32/f64; tensor ops elsewhere. No gradient reaches `bias`.
pub fn biased_softmax(scores: &Tensor, bias: &Tensor) -> Result<Tensor> {
    if scores.device().is_cpu() && matches!(scores.dtype(), DType::F32 | DType::F64) {
        scores
            .contiguous()?
            .apply_op2(&bias.contiguous()?, BiasedSoftmax)
    } else {
        let (g, t) = bias.dims2()?;
        let mut shape = vec![g];
        shape.extend(std::iter::repeat_n(1, scores.rank() - 2));
        shape.push(t);
        candle_nn::ops::softmax(
            &scores.broadcast_add(&bias.reshape(shape)?)?,
            candle_core::D::Minus1,
        )
    }
}

/// Scores entries per chunk of fused attention: small enough to stay in the allocator's heap
/// and the cache (4 MB in f32), large enough for the matmuls to run at speed.
const ATTENTION_CHUNK: usize = 1 << 20;

/// Attention `softmax(q·kᵀ + bias)·v` over `[G, H, T, d_h]` inputs (q already scaled), computed
/// a few groups at a time so that the `[G, H, Tq, Tk]` scores never exist whole, neither in
/// memory nor in the autograd graph; the backward recomputes them chunk by chunk (as
/// FlashAttention does, Dao et al. 2022, without the tiling inside a head).
struct FusedAttention {
    /// `[G, Tk]` additive key bias, if any.
    bias: Option<Tensor>,
}

impl FusedAttention {
    fn chunk(&self, q: &Tensor, k: &Tensor) -> Result<usize> {
        let (_, h, tq, _) = q.dims4()?;
        let tk = k.dim(2)?;
        Ok((ATTENTION_CHUNK / (h * tq * tk).max(1)).max(1))
    }

    fn probs(&self, q: &Tensor, k: &Tensor, g0: usize, c: usize) -> Result<Tensor> {
        let s = q.matmul(&k.t()?)?;
        match &self.bias {
            Some(b) => s.apply_op2_no_bwd(&b.narrow(0, g0, c)?, &BiasedSoftmax),
            None => s.apply_op1_no_bwd(&Softmax),
        }
    }

    /// The forward on detached tensors: `[G, H, Tq, d_h]`.
    fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let g = q.dim(0)?;
        let step = self.chunk(q, k)?;
        let mut parts = Vec::with_capacity(g.div_ceil(step));
        for g0 in (0..g).step_by(step) {
            let c = step.min(g - g0);
            let p = self.probs(&q.narrow(0, g0, c)?, &k.narrow(0, g0, c)?, g0, c)?;
            parts.push(p.matmul(&v.narrow(0, g0, c)?)?);
        }
        Tensor::cat(&parts, 0)
    }
}

fn storage_tensor(s: &CpuStorage, l: &Layout) -> Result<Tensor> {
    let dev = candle_core::Device::Cpu;
    match s.dtype() {
        DType::F32 => Tensor::from_slice(contiguous::<f32>(s, l)?, l.shape(), &dev),
        DType::F64 => Tensor::from_slice(contiguous::<f64>(s, l)?, l.shape(), &dev),
        dt => candle_core::bail!("fused attention: unsupported dtype {dt:?}"),
    }
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "tempest-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (q, k, v) = (
            storage_tensor(s1, l1)?,
            storage_tensor(s2, l2)?,
            storage_tensor(s3, l3)?,
        );
        let y = self.forward(&q, &k, &v)?.flatten_all()?;
        let out = match y.dtype() {
            DType::F32 => CpuStorage::F32(y.to_vec1::<f32>()?),
            DType::F64 => CpuStorage::F64(y.to_vec1::<f64>()?),
            dt => candle_core::bail!("fused attention: unsupported dtype {dt:?}"),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (q, k, v, dy) = (
            q.detach(),
            k.detach(),
            v.detach(),
            dy.detach().contiguous()?,
        );
        let g = q.dim(0)?;
        let step = self.chunk(&q, &k)?;
        let (mut dq, mut dk, mut dv) = (Vec::new(), Vec::new(), Vec::new());
        for g0 in (0..g).step_by(step) {
            let c = step.min(g - g0);
            let (qc, kc, vc, dyc) = (
                q.narrow(0, g0, c)?,
                k.narrow(0, g0, c)?,
                v.narrow(0, g0, c)?,
                dy.narrow(0, g0, c)?,
            );
            let p = self.probs(&qc, &kc, g0, c)?;
            dv.push(p.t()?.matmul(&dyc)?);
            let dp = dyc.matmul(&vc.t()?)?;
            let ds = p.apply_op2_no_bwd(&dp, &SoftmaxGrad)?;
            dq.push(ds.matmul(&kc)?);
            dk.push(ds.t()?.matmul(&qc)?);
        }
        Ok((
            Some(Tensor::cat(&dq, 0)?),
            Some(Tensor::cat(&dk, 0)?),
            Some(Tensor::cat(&dv, 0)?),
        ))
    }
}

/// `softmax(q·kᵀ + bias)·v` for `q [G, H, Tq, d_h]` (already scaled), `k`, `v [G, H, Tk, d_h]`
/// and an optional key bias `[G, Tk]` (no gradient). Fused and chunked on the CPU for f32/f64
/// (`None` elsewhere: the caller uses tensor ops).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Option<Tensor>> {
    if !(q.device().is_cpu() && matches!(q.dtype(), DType::F32 | DType::F64)) {
        return Ok(None);
    }
    let op = FusedAttention {
        bias: bias.map(|b| b.detach().contiguous()).transpose()?,
    };
    Ok(Some(q.contiguous()?.apply_op3(
        &k.contiguous()?,
        &v.contiguous()?,
        op,
    )?))
}

/// Layer norm over the last dimension with learned scale and shift, fused forward and backward.
struct LayerNormOp {
    eps: f64,
}

fn layer_norm_rows<T: candle_core::WithDType>(x: &[T], w: &[T], b: &[T], eps: f64) -> Vec<T> {
    let d = w.len();
    let mut out = vec![T::zero(); x.len()];
    let task = |(o, x): (&mut [T], &[T])| {
        for (o, x) in o.chunks_mut(d).zip(x.chunks(d)) {
            let mean = x.iter().map(|v| v.to_f64()).sum::<f64>() / d as f64;
            let var = x.iter().map(|v| (v.to_f64() - mean).powi(2)).sum::<f64>() / d as f64;
            let inv = 1.0 / (var + eps).sqrt();
            for (((o, x), w), b) in o.iter_mut().zip(x).zip(w).zip(b) {
                *o = T::from_f64((x.to_f64() - mean) * inv * w.to_f64() + b.to_f64());
            }
        }
    };
    let n = rows_per_task(x.len() / d.max(1), d) * d;
    if x.len() >= PAR_MIN {
        out.par_chunks_mut(n).zip(x.par_chunks(n)).for_each(task);
    } else {
        out.chunks_mut(n.max(1))
            .zip(x.chunks(n.max(1)))
            .for_each(task);
    }
    out
}

/// The layer norm's backward: `[rows + 2, d]`, the rows of dx, then dw, then db.
/// With x̂ = (x − μ)/σ and ĝ = g⊙w: dx = (ĝ − mean(ĝ) − x̂·mean(ĝ⊙x̂))/σ, dw = Σ g⊙x̂, db = Σ g.
fn layer_norm_grad_rows<T: candle_core::WithDType>(x: &[T], w: &[T], g: &[T], eps: f64) -> Vec<T> {
    let d = w.len();
    let rows = x.len() / d.max(1);
    let mut out = vec![T::zero(); x.len() + 2 * d];
    let (dx, _) = out.split_at_mut(x.len());
    let task = |(o, (x, g)): (&mut [T], (&[T], &[T]))| -> (Vec<f64>, Vec<f64>) {
        let (mut dw, mut db) = (vec![0.0; d], vec![0.0; d]);
        let mut xhat = vec![0.0; d];
        for (o, (x, g)) in o.chunks_mut(d).zip(x.chunks(d).zip(g.chunks(d))) {
            let mean = x.iter().map(|v| v.to_f64()).sum::<f64>() / d as f64;
            let var = x.iter().map(|v| (v.to_f64() - mean).powi(2)).sum::<f64>() / d as f64;
            let inv = 1.0 / (var + eps).sqrt();
            let (mut m1, mut m2) = (0.0, 0.0);
            for (j, (x, (g, w))) in x.iter().zip(g.iter().zip(w)).enumerate() {
                let xh = (x.to_f64() - mean) * inv;
                xhat[j] = xh;
                let gh = g.to_f64() * w.to_f64();
                m1 += gh;
                m2 += gh * xh;
                dw[j] += g.to_f64() * xh;
                db[j] += g.to_f64();
            }
            let (m1, m2) = (m1 / d as f64, m2 / d as f64);
            for (j, (o, (g, w))) in o.iter_mut().zip(g.iter().zip(w)).enumerate() {
                *o = T::from_f64((g.to_f64() * w.to_f64() - m1 - xhat[j] * m2) * inv);
            }
        }
        (dw, db)
    };
    let n = rows_per_task(rows, d) * d;
    let parts: Vec<(Vec<f64>, Vec<f64>)> = if x.len() >= PAR_MIN {
        dx.par_chunks_mut(n)
            .zip(x.par_chunks(n).zip(g.par_chunks(n)))
            .map(task)
            .collect()
    } else {
        dx.chunks_mut(n.max(1))
            .zip(x.chunks(n.max(1)).zip(g.chunks(n.max(1))))
            .map(task)
            .collect()
    };
    let (mut dw, mut db) = (vec![0.0; d], vec![0.0; d]);
    for (pw, pb) in parts {
        dw.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
        db.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
    }
    let tail = &mut out[x.len()..];
    for j in 0..d {
        tail[j] = T::from_f64(dw[j]);
        tail[d + j] = T::from_f64(db[j]);
    }
    out
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "tempest-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = l1.dims().last().copied().unwrap_or(1);
        if l2.dims() != [d] || l3.dims() != [d] {
            candle_core::bail!(
                "fused layer norm: x {:?}, w {:?}, b {:?}",
                l1.shape(),
                l2.shape(),
                l3.shape()
            );
        }
        let out = match s1.dtype() {
            DType::F32 => CpuStorage::F32(layer_norm_rows(
                contiguous::<f32>(s1, l1)?,
                contiguous::<f32>(s2, l2)?,
                contiguous::<f32>(s3, l3)?,
                self.eps,
            )),
            DType::F64 => CpuStorage::F64(layer_norm_rows(
                contiguous::<f64>(s1, l1)?,
                contiguous::<f64>(s2, l2)?,
                contiguous::<f64>(s3, l3)?,
                self.eps,
            )),
            dt => candle_core::bail!("fused layer norm: unsupported dtype {dt:?}"),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = w.dim(0)?;
        let rows = x.elem_count() / d.max(1);
        let all = x.apply_op3_no_bwd(w, &grad.contiguous()?, &LayerNormGrad { eps: self.eps })?;
        let dx = all.narrow(0, 0, rows * d)?.reshape(x.shape())?;
        let dw = all.narrow(0, rows * d, d)?;
        let db = all.narrow(0, rows * d + d, d)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

struct LayerNormGrad {
    eps: f64,
}

impl CustomOp3 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "tempest-layer-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let n = l1.shape().elem_count() + 2 * l2.shape().elem_count();
        if l1.shape() != l3.shape() {
            candle_core::bail!(
                "fused layer norm grad: x {:?}, grad {:?}",
                l1.shape(),
                l3.shape()
            );
        }
        let out = match s1.dtype() {
            DType::F32 => CpuStorage::F32(layer_norm_grad_rows(
                contiguous::<f32>(s1, l1)?,
                contiguous::<f32>(s2, l2)?,
                contiguous::<f32>(s3, l3)?,
                self.eps,
            )),
            DType::F64 => CpuStorage::F64(layer_norm_grad_rows(
                contiguous::<f64>(s1, l1)?,
                contiguous::<f64>(s2, l2)?,
                contiguous::<f64>(s3, l3)?,
                self.eps,
            )),
            dt => candle_core::bail!("fused layer norm grad: unsupported dtype {dt:?}"),
        };
        Ok((out, Shape::from(n)))
    }
}

/// Layer norm over the last dimension, `(x − μ)/√(σ² + eps)·w + b`, with a fused backward on
/// the CPU (f32/f64); `None` elsewhere, so the caller uses the tensor-op version.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Option<Tensor>> {
    if x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) {
        Ok(Some(x.contiguous()?.apply_op3(
            w,
            b,
            LayerNormOp { eps },
        )?))
    } else {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn sample(n: usize, dtype: DType) -> Result<Tensor> {
        // Values spanning GELU's interesting range (−8..8), including 0.
        let v: Vec<f64> = (0..n)
            .map(|i| (i as f64 / (n - 1) as f64) * 16.0 - 8.0)
            .collect();
        Tensor::from_vec(v, n, &Device::Cpu)?.to_dtype(dtype)
    }

    #[test]
    fn forward_matches_candle() -> Result<()> {
        for (n, dtype, tol) in [(101, DType::F64, 1e-12), (50_001, DType::F32, 2e-6)] {
            let x = sample(n, dtype)?;
            let diff = (gelu(&x)? - x.gelu()?)?
                .abs()?
                .max(0)?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
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
            let diff = (a - b)?
                .abs()?
                .max(0)?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
            assert!(diff < tol, "{dtype:?}: max diff {diff}");
        }
        let h = 1e-6;
        for x in [-3.0, -0.7, 0.0, 0.3, 1.1, 4.0] {
            let fd = (gelu_f64(x + h) - gelu_f64(x - h)) / (2.0 * h);
            assert!(
                (fd - gelu_grad_f64(x)).abs() < 1e-8,
                "x={x}: {fd} vs {}",
                gelu_grad_f64(x)
            );
        }
        Ok(())
    }

    #[test]
    fn non_contiguous_input_is_handled() -> Result<()> {
        let x = sample(64, DType::F32)?.reshape((8, 8))?.t()?;
        let diff = (gelu(&x)? - x.gelu()?)?
            .abs()?
            .max_keepdim(0)?
            .max(1)?
            .to_vec1::<f32>()?;
        assert!(diff[0] < 1e-6);
        Ok(())
    }

    fn grads_of(x: &Var, y: &Tensor, w: &Tensor) -> Result<Tensor> {
        let g = (y * w)?.sum_all()?.backward()?;
        match g.get(x.as_tensor()) {
            Some(t) => Ok(t.clone()),
            None => candle_core::bail!("no gradient"),
        }
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
        (a - b)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()
    }

    #[test]
    fn softmax_matches_candle_forward_and_backward() -> Result<()> {
        // 2·3·40 rows of 100: above PAR_MIN, so the parallel path runs; 5×7 rows: the serial one.
        // Fixed inputs (uniform in ±6 and ±2), so a run cannot draw an unlucky row; the f32
        // bound allows for summing 100 terms in another order (≈ 100 ε).
        let mut rng = tempest_tokenize::rng::SplitMix64::new(11);
        let mut uniform = |shape: &[usize], half: f64, dtype| -> Result<Tensor> {
            let n: usize = shape.iter().product();
            let v: Vec<f64> = (0..n)
                .map(|_| half * (2.0 * (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 - 1.0))
                .collect();
            Tensor::from_vec(v, shape, &Device::Cpu)?.to_dtype(dtype)
        };
        for (shape, dtype, tol) in [
            (vec![2usize, 3, 40, 100], DType::F32, 1e-5),
            (vec![5, 7], DType::F64, 1e-14),
        ] {
            let x = Var::from_tensor(&uniform(&shape, 6.0, dtype)?)?;
            let w = uniform(&shape, 2.0, dtype)?;
            let fused = softmax(x.as_tensor())?;
            let plain = candle_nn::ops::softmax(x.as_tensor(), candle_core::D::Minus1)?;
            assert!(max_diff(&fused, &plain)? < tol);
            let (gf, gp) = (grads_of(&x, &fused, &w)?, grads_of(&x, &plain, &w)?);
            assert!(
                max_diff(&gf, &gp)? < tol,
                "{dtype:?}: {}",
                max_diff(&gf, &gp)?
            );
        }
        Ok(())
    }

    #[test]
    fn layer_norm_matches_candle_forward_and_backward() -> Result<()> {
        for (shape, dtype, tol) in [
            (vec![4usize, 50, 96], DType::F32, 2e-5),
            (vec![3, 8], DType::F64, 1e-12),
        ] {
            let d = shape[shape.len() - 1];
            let dev = Device::Cpu;
            let x = Var::from_tensor(
                &(Tensor::randn(1f32, 2.0, shape.clone(), &dev)?.to_dtype(dtype)?),
            )?;
            let a = Var::from_tensor(&(Tensor::randn(1f32, 0.5, d, &dev)?.to_dtype(dtype)?))?;
            let b = Var::from_tensor(&(Tensor::randn(0f32, 0.5, d, &dev)?.to_dtype(dtype)?))?;
            let w = Tensor::randn(0f32, 1.0, shape, &dev)?.to_dtype(dtype)?;
            let fused = layer_norm(x.as_tensor(), a.as_tensor(), b.as_tensor(), 1e-5)?;
            let Some(fused) = fused else {
                candle_core::bail!("no fused layer norm on the CPU")
            };
            let plain =
                candle_nn::ops::layer_norm_slow(x.as_tensor(), a.as_tensor(), b.as_tensor(), 1e-5)?;
            assert!(max_diff(&fused, &plain)? < tol);
            let gf = (&fused * &w)?.sum_all()?.backward()?;
            let gp = (&plain * &w)?.sum_all()?.backward()?;
            for v in [&x, &a, &b] {
                let (Some(f), Some(p)) = (gf.get(v.as_tensor()), gp.get(v.as_tensor())) else {
                    candle_core::bail!("missing gradient")
                };
                let scale = p
                    .abs()?
                    .flatten_all()?
                    .max(0)?
                    .to_dtype(DType::F64)?
                    .to_scalar::<f64>()?
                    .max(1.0);
                assert!(
                    max_diff(f, p)? / scale < tol,
                    "{dtype:?}: {}",
                    max_diff(f, p)?
                );
            }
        }
        Ok(())
    }

    #[test]
    fn biased_softmax_matches_softmax_of_the_sum() -> Result<()> {
        let dev = Device::Cpu;
        for (g, h, t, dtype, tol) in [
            (6usize, 4usize, 30usize, DType::F32, 1e-6),
            (2, 3, 5, DType::F64, 1e-14),
        ] {
            let x =
                Var::from_tensor(&Tensor::randn(0f32, 2.0, (g, h, t, t), &dev)?.to_dtype(dtype)?)?;
            let mask = Tensor::rand(0f32, 1.0, (g, t), &dev)?.ge(0.3)?;
            let bias = crate::nn::key_bias(&mask, dtype)?; // [g, 1, 1, t]
            let w = Tensor::randn(0f32, 1.0, (g, h, t, t), &dev)?.to_dtype(dtype)?;
            let fused = biased_softmax(x.as_tensor(), &bias.reshape((g, t))?)?;
            let plain = candle_nn::ops::softmax(
                &x.as_tensor().broadcast_add(&bias)?,
                candle_core::D::Minus1,
            )?;
            assert!(max_diff(&fused, &plain)? < tol);
            assert!(max_diff(&grads_of(&x, &fused, &w)?, &grads_of(&x, &plain, &w)?)? < tol);
        }
        Ok(())
    }

    #[test]
    fn fused_attention_matches_tensor_ops_across_chunks() -> Result<()> {
        let dev = Device::Cpu;
        // (G, H, Tq, Tk): 5 groups of 2·512·512 scores span 3 chunks; Tq ≠ Tk as in pooling.
        for (g, h, tq, tk, dtype, tol) in [
            (5usize, 2usize, 512usize, 512usize, DType::F32, 2e-5),
            (3, 2, 2, 7, DType::F64, 1e-12),
        ] {
            let dh = 4;
            let var = |t: usize| -> Result<Var> {
                Var::from_tensor(&Tensor::randn(0f32, 1.0, (g, h, t, dh), &dev)?.to_dtype(dtype)?)
            };
            let (q, k, v) = (var(tq)?, var(tk)?, var(tk)?);
            let mask = Tensor::rand(0f32, 1.0, (g, tk), &dev)?.ge(0.3)?;
            let bias = crate::nn::key_bias(&mask, dtype)?;
            let w = Tensor::randn(0f32, 1.0, (g, h, tq, dh), &dev)?.to_dtype(dtype)?;
            let Some(fused) = attention(
                q.as_tensor(),
                k.as_tensor(),
                v.as_tensor(),
                Some(&bias.reshape((g, tk))?),
            )?
            else {
                candle_core::bail!("no fused attention on the CPU")
            };
            let s = q
                .as_tensor()
                .matmul(&k.as_tensor().t()?)?
                .broadcast_add(&bias)?;
            let plain =
                candle_nn::ops::softmax(&s, candle_core::D::Minus1)?.matmul(v.as_tensor())?;
            assert!(
                max_diff(&fused, &plain)? < tol,
                "forward {}",
                max_diff(&fused, &plain)?
            );
            let gf = (&fused * &w)?.sum_all()?.backward()?;
            let gp = (&plain * &w)?.sum_all()?.backward()?;
            for x in [&q, &k, &v] {
                let (Some(a), Some(b)) = (gf.get(x.as_tensor()), gp.get(x.as_tensor())) else {
                    candle_core::bail!("missing gradient")
                };
                // Relative to the gradient's size: the inputs are unseeded random numbers, and
                // a sum over 512 keys in f32 can reach a few 1e-5 in absolute terms.
                let scale = b.abs()?.flatten_all()?.max(0)?.to_dtype(DType::F64)?;
                let scale = scale.to_scalar::<f64>()?.max(1.0);
                assert!(
                    max_diff(a, b)? < tol * scale,
                    "backward {} (scale {scale})",
                    max_diff(a, b)?
                );
            }
        }
        Ok(())
    }
}
