//! Attention chunked over groups of sequences on the CPU, its scores recomputed in the
//! backward pass.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

use super::contiguous;
use super::softmax::{BiasedSoftmax, Softmax, SoftmaxGrad};

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
