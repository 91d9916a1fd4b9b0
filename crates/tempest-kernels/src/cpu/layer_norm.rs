//! Layer norm over the last dimension, fused forward and backward on the CPU.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{contiguous, rows_per_task, PAR_MIN};

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
