//! Softmax over the last dimension, plain and with an additive key bias, each one pass
//! forward and one backward on the CPU.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use num_traits::Float;
use rayon::prelude::*;

use super::{contiguous, rows_per_task, PAR_MIN};

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
pub(super) struct Softmax;

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
pub(super) struct SoftmaxGrad;

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
pub(super) struct BiasedSoftmax;

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
