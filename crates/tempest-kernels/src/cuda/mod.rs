//! Our own CUDA kernels for the hot paths of TEMPEST (feature `cuda`), each a candle custom op
//! with a backward pass:
//!
//! | op | what it fuses |
//! |---|---|
//! | [`embed_bytes`] | byte-table gather + in-block position add + padding mask |
//! | [`attention`] | `softmax(q·kᵀ + bias)·v` for short sequences (≤ [`MAX_KEYS`] keys), online-max softmax that skips padded keys, f32 and bf16 |
//! | [`layer_norm`] | layer norm, forward and backward in one pass each |
//! | [`masked_mix`] | the linear mixer's masked reduction of a block's L byte vectors to L' tokens |
//!
//! The kernels live in `cuda/tempest.cu`, compiled to PTX by nvcc in `build.rs`. Each op's
//! `cpu_fwd` is a plain reference ([`reference`](mod@reference)): loops in f64 that define what the kernel
//! computes. So every op runs on the CPU too (that is how the tests check the references
//! against candle's tensor ops, and how the GPU check compares the kernels with them), but
//! the dispatch functions of the crate root call these ops only on a CUDA device, through the
//! `hook_*` functions, and only when asked to use our kernels (`own`; the model's
//! `Execution::cuda_kernels`); the CPU keeps its own path.
//!
//! Semantics that differ from the tensor-op path only where nothing downstream looks:
//! padded bytes embed to exactly 0, and an attention row whose keys are all padding gives 0
//! (the tensor ops attend uniformly there). Padded bytes and padded blocks never reach the
//! logits or the losses (the model's padding tests), so the model's outputs and gradients
//! agree either way.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Device, Layout, Result, Shape, Tensor};

pub mod check;
#[cfg(feature = "cuda")]
mod launch;
pub mod reference;

use reference::{AttnDims, EmbedDims, MixDims};

/// The longest key sequence [`attention`]'s kernel takes.
pub const MAX_KEYS: usize = 512;
/// The head sizes [`attention`]'s kernel is compiled for.
pub const HEAD_DIMS: [usize; 4] = [8, 16, 32, 64];
/// The most tokens per block (L') [`masked_mix`]'s kernel takes.
pub const MAX_TOKENS_PER_BLOCK: usize = 8;
/// The largest byte vocabulary [`embed_bytes`]'s backward kernel takes (its table gradient
/// lives in 48 KB of shared memory, 32 channels at a time).
pub const MAX_VOCAB: usize = 384;
/// Shared memory a kernel may use without opting in.
const SHARED_BYTES: usize = 48 * 1024;

/// Whether our kernels can run on `device`: the crate was built with feature `cuda` and the
/// device is a CUDA device.
pub fn available(device: &Device) -> bool {
    cfg!(feature = "cuda") && device.is_cuda()
}

/// Whether the GPU check asked ops to fill their outputs with NaN before the kernels write
/// them, so that an element a kernel leaves unwritten shows up as NaN.
static POISON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Turns output poisoning on or off (for the GPU check; it costs one fill per output).
pub fn set_poison_outputs(on: bool) {
    POISON.store(on, std::sync::atomic::Ordering::Relaxed);
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn poison_outputs() -> bool {
    POISON.load(std::sync::atomic::Ordering::Relaxed)
}

fn kernel_dtype(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::BF16)
}

/// The dtype of a packed gradient: f64 stays f64 (for finite differences), the rest is
/// accumulated in f32 and cast back by the caller.
fn grad_dtype(dtype: DType) -> DType {
    if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// A contiguous storage as f64s.
fn f64s(s: &CpuStorage, l: &Layout) -> Result<Vec<f64>> {
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("tempest cuda op: input is not contiguous")
    };
    let all = s.to_dtype(l, DType::F64)?;
    Ok(all.as_slice::<f64>()?[a..b].to_vec())
}

/// A CPU tensor (a field of an op) as f64s.
fn tensor_f64s(t: &Tensor) -> Result<Vec<f64>> {
    t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()
}

/// f64s as a storage of `dtype`.
fn storage(v: Vec<f64>, dtype: DType) -> Result<CpuStorage> {
    let n = v.len();
    CpuStorage::F64(v).to_dtype(&Layout::contiguous(n), dtype)
}

fn last2(l: &Layout) -> Result<(usize, usize)> {
    l.shape().dims2()
}

// ------------------------------------------------------------------------------------------
// Byte embedding.

/// The byte embedding: `ids [R, L] u32`, `mask [R, L] u8` (1 = real byte), `table [V, d]`,
/// `positions [P, d]` (P ≥ L) → `[R, L, d]`, `table[id] + positions[i]` for real bytes and 0
/// for padding. Gradients reach `table` and `positions`.
pub fn embed_bytes(
    ids: &Tensor,
    mask: &Tensor,
    table: &Tensor,
    positions: &Tensor,
) -> Result<Tensor> {
    let op = Embed {
        ids: ids.to_dtype(DType::U32)?.contiguous()?,
        mask: mask.to_dtype(DType::U8)?.contiguous()?,
    };
    table.contiguous()?.apply_op2(&positions.contiguous()?, op)
}

struct Embed {
    ids: Tensor,
    mask: Tensor,
}

impl Embed {
    fn dims(&self, table: &Layout, positions: &Layout) -> Result<EmbedDims> {
        let (rows, len) = self.ids.dims2()?;
        let (vocab, dim) = last2(table)?;
        let (p, d2) = last2(positions)?;
        if d2 != dim || p < len || self.mask.dims() != self.ids.dims() {
            candle_core::bail!(
                "embed_bytes: ids {:?}, mask {:?}, table {:?}, positions {:?}",
                self.ids.dims(),
                self.mask.dims(),
                table.dims(),
                positions.dims()
            );
        }
        Ok(EmbedDims {
            rows,
            len,
            dim,
            vocab,
            positions: p,
        })
    }
}

impl candle_core::CustomOp2 for Embed {
    fn name(&self) -> &'static str {
        "tempest-cuda-embed"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let s = self.dims(l1, l2)?;
        let ids = self.ids.flatten_all()?.to_vec1::<u32>()?;
        let mask = self.mask.flatten_all()?.to_vec1::<u8>()?;
        let out = reference::embed_fwd(&ids, &mask, &f64s(s1, l1)?, &f64s(s2, l2)?, s);
        Ok((
            storage(out, s1.dtype())?,
            Shape::from((s.rows, s.len, s.dim)),
        ))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let s = self.dims(l1, l2)?;
        let out = launch::embed_fwd(&self.ids, &self.mask, s1, l1, s2, l2, s)?;
        Ok((out, Shape::from((s.rows, s.len, s.dim))))
    }

    fn bwd(
        &self,
        table: &Tensor,
        positions: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let s = self.dims(table.layout(), positions.layout())?;
        let op = EmbedGrad {
            ids: self.ids.clone(),
            mask: self.mask.clone(),
            dims: s,
        };
        let all = grad.contiguous()?.apply_op1_no_bwd(&op)?;
        let nt = s.vocab * s.dim;
        let dt = all.narrow(0, 0, nt)?.reshape((s.vocab, s.dim))?;
        let dp = all
            .narrow(0, nt, s.positions * s.dim)?
            .reshape((s.positions, s.dim))?;
        Ok((
            Some(dt.to_dtype(table.dtype())?),
            Some(dp.to_dtype(positions.dtype())?),
        ))
    }
}

/// `grad [R, L, d]` → `[V·d + P·d]`: the table's gradient, then the positions'.
struct EmbedGrad {
    ids: Tensor,
    mask: Tensor,
    dims: EmbedDims,
}

impl CustomOp1 for EmbedGrad {
    fn name(&self) -> &'static str {
        "tempest-cuda-embed-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let ids = self.ids.flatten_all()?.to_vec1::<u32>()?;
        let mask = self.mask.flatten_all()?.to_vec1::<u8>()?;
        let out = reference::embed_bwd(&ids, &mask, &f64s(s, l)?, self.dims);
        let n = out.len();
        Ok((storage(out, grad_dtype(s.dtype()))?, Shape::from(n)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let out = launch::embed_bwd(&self.ids, &self.mask, s, l, self.dims)?;
        Ok((
            out,
            Shape::from((self.dims.vocab + self.dims.positions) * self.dims.dim),
        ))
    }
}

// ------------------------------------------------------------------------------------------
// Attention.

/// `softmax(q·kᵀ + bias)·v` over the real keys: `q [G, H, Tq, dh]` (already scaled), `k`, `v`
/// `[G, H, Tk, dh]`, `bias [G, Tk]` additive (no gradient), where a bias ≤ −1e8 marks a
/// padded key, which is skipped. A query without any real key gives 0. Gradients reach q, k
/// and v.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let op = Attention {
        bias: bias.map(|b| b.detach().contiguous()).transpose()?,
    };
    q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

struct Attention {
    bias: Option<Tensor>,
}

fn attn_dims(q: &Layout, k: &Layout, v: &Layout, bias: Option<&Tensor>) -> Result<AttnDims> {
    let (groups, heads, tq, head_dim) = q.shape().dims4()?;
    let (g2, h2, tk, d2) = k.shape().dims4()?;
    let bias_ok = bias.is_none_or(|b| b.dims() == [groups, tk]);
    if (g2, h2, d2) != (groups, heads, head_dim) || v.dims() != k.dims() || !bias_ok {
        candle_core::bail!(
            "attention: q {:?}, k {:?}, v {:?}, bias {:?}",
            q.dims(),
            k.dims(),
            v.dims(),
            bias.map(|b| b.dims().to_vec())
        );
    }
    Ok(AttnDims {
        groups,
        heads,
        tq,
        tk,
        head_dim,
    })
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "tempest-cuda-attention"
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
        let s = attn_dims(l1, l2, l3, self.bias.as_ref())?;
        let bias = self.bias.as_ref().map(tensor_f64s).transpose()?;
        let out = reference::attn_fwd(
            &f64s(s1, l1)?,
            &f64s(s2, l2)?,
            &f64s(s3, l3)?,
            bias.as_deref(),
            s,
        );
        Ok((storage(out, s1.dtype())?, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let s = attn_dims(l1, l2, l3, self.bias.as_ref())?;
        let out = launch::attn_fwd((s1, l1), (s2, l2), (s3, l3), self.bias.as_ref(), s)?;
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let op = AttentionGrad {
            out: res.detach(),
            dout: grad.detach().contiguous()?,
            bias: self.bias.clone(),
        };
        let all = q.detach().apply_op3_no_bwd(&k.detach(), &v.detach(), &op)?;
        let (nq, nk) = (q.elem_count(), k.elem_count());
        let dq = all
            .narrow(0, 0, nq)?
            .reshape(q.shape())?
            .to_dtype(q.dtype())?;
        let dk = all
            .narrow(0, nq, nk)?
            .reshape(k.shape())?
            .to_dtype(k.dtype())?;
        let dv = all
            .narrow(0, nq + nk, nk)?
            .reshape(v.shape())?
            .to_dtype(v.dtype())?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// `(q, k, v)` with the output and its gradient → `[dq; dk; dv]` flattened.
struct AttentionGrad {
    /// The forward's output: the kernel takes Δ = dO·O from it; the reference recomputes the
    /// probabilities instead.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    out: Tensor,
    dout: Tensor,
    bias: Option<Tensor>,
}

impl CustomOp3 for AttentionGrad {
    fn name(&self) -> &'static str {
        "tempest-cuda-attention-grad"
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
        let s = attn_dims(l1, l2, l3, self.bias.as_ref())?;
        let bias = self.bias.as_ref().map(tensor_f64s).transpose()?;
        let dout = tensor_f64s(&self.dout)?;
        let out = reference::attn_bwd(
            &f64s(s1, l1)?,
            &f64s(s2, l2)?,
            &f64s(s3, l3)?,
            bias.as_deref(),
            &dout,
            s,
        );
        let n = out.len();
        Ok((storage(out, grad_dtype(s1.dtype()))?, Shape::from(n)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let s = attn_dims(l1, l2, l3, self.bias.as_ref())?;
        let out = launch::attn_bwd(
            (s1, l1),
            (s2, l2),
            (s3, l3),
            &self.out,
            &self.dout,
            self.bias.as_ref(),
            s,
        )?;
        Ok((
            out,
            Shape::from(l1.shape().elem_count() + 2 * l2.shape().elem_count()),
        ))
    }
}

// ------------------------------------------------------------------------------------------
// Layer norm.

/// Layer norm over the last dimension, `(x − μ)/√(σ² + eps)·w + b`; gradients reach x, w, b.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, LayerNorm { eps })
}

struct LayerNorm {
    eps: f64,
}

fn ln_check(x: &Layout, w: &Layout, b: &Layout) -> Result<(usize, usize)> {
    let d = x.dims().last().copied().unwrap_or(0);
    if d == 0 || w.dims() != [d] || b.dims() != [d] {
        candle_core::bail!(
            "layer_norm: x {:?}, w {:?}, b {:?}",
            x.dims(),
            w.dims(),
            b.dims()
        );
    }
    Ok((x.shape().elem_count() / d, d))
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "tempest-cuda-layer-norm"
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
        ln_check(l1, l2, l3)?;
        let out = reference::ln_fwd(&f64s(s1, l1)?, &f64s(s2, l2)?, &f64s(s3, l3)?, self.eps);
        Ok((storage(out, s1.dtype())?, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (rows, d) = ln_check(l1, l2, l3)?;
        let out = launch::ln_fwd((s1, l1), (s2, l2), (s3, l3), rows, d, self.eps)?;
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = w.dim(0)?;
        let n = x.elem_count();
        let op = LayerNormGrad { eps: self.eps };
        let all = x
            .detach()
            .apply_op3_no_bwd(&w.detach(), &grad.detach().contiguous()?, &op)?;
        let dx = all
            .narrow(0, 0, n)?
            .reshape(x.shape())?
            .to_dtype(x.dtype())?;
        let dw = all.narrow(0, n, d)?.to_dtype(w.dtype())?;
        let db = all.narrow(0, n + d, d)?.to_dtype(b.dtype())?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// `(x, w, grad)` → `[dx; dw; db]` flattened.
struct LayerNormGrad {
    eps: f64,
}

impl CustomOp3 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "tempest-cuda-layer-norm-grad"
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
        ln_check(l1, l2, l2)?;
        if l3.dims() != l1.dims() {
            candle_core::bail!("layer_norm grad: x {:?}, grad {:?}", l1.dims(), l3.dims());
        }
        let out = reference::ln_bwd(&f64s(s1, l1)?, &f64s(s2, l2)?, &f64s(s3, l3)?, self.eps);
        let n = out.len();
        Ok((storage(out, grad_dtype(s1.dtype()))?, Shape::from(n)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (rows, d) = ln_check(l1, l2, l2)?;
        if l3.dims() != l1.dims() {
            candle_core::bail!("layer_norm grad: x {:?}, grad {:?}", l1.dims(), l3.dims());
        }
        let out = launch::ln_bwd((s1, l1), (s2, l2), (s3, l3), rows, d, self.eps)?;
        Ok((out, Shape::from(rows * d + 2 * d)))
    }
}

// ------------------------------------------------------------------------------------------
// The linear mixer's masked reduction.

/// `y[r, j, :] = Σ_i w[j, i]·m_ri·h[r, i, :] / max(1, Σ_i m_ri)`: `h [R, L, d]`, `mask [R, L]`
/// (0 or 1, in h's dtype), `w [L', L]` → `[R, L', d]`. Gradients reach h and w.
pub fn masked_mix(h: &Tensor, mask: &Tensor, w: &Tensor) -> Result<Tensor> {
    h.contiguous()?
        .apply_op3(&mask.contiguous()?, &w.contiguous()?, Mix)
}

struct Mix;

fn mix_dims(h: &Layout, mask: &Layout, w: &Layout) -> Result<MixDims> {
    let (rows, len, dim) = h.shape().dims3()?;
    let (tokens, l2) = w.shape().dims2()?;
    if mask.dims() != [rows, len] || l2 != len {
        candle_core::bail!(
            "masked_mix: h {:?}, mask {:?}, w {:?}",
            h.dims(),
            mask.dims(),
            w.dims()
        );
    }
    Ok(MixDims {
        rows,
        len,
        dim,
        tokens,
    })
}

impl CustomOp3 for Mix {
    fn name(&self) -> &'static str {
        "tempest-cuda-mix"
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
        let s = mix_dims(l1, l2, l3)?;
        let out = reference::mix_fwd(&f64s(s1, l1)?, &f64s(s2, l2)?, &f64s(s3, l3)?, s);
        Ok((
            storage(out, s1.dtype())?,
            Shape::from((s.rows, s.tokens, s.dim)),
        ))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let s = mix_dims(l1, l2, l3)?;
        let out = launch::mix_fwd((s1, l1), (s2, l2), (s3, l3), s)?;
        Ok((out, Shape::from((s.rows, s.tokens, s.dim))))
    }

    fn bwd(
        &self,
        h: &Tensor,
        mask: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let op = MixGrad {
            grad: grad.detach().contiguous()?,
        };
        let all = h
            .detach()
            .apply_op3_no_bwd(&mask.detach(), &w.detach(), &op)?;
        let n = h.elem_count();
        let dh = all
            .narrow(0, 0, n)?
            .reshape(h.shape())?
            .to_dtype(h.dtype())?;
        let dw = all
            .narrow(0, n, w.elem_count())?
            .reshape(w.shape())?
            .to_dtype(w.dtype())?;
        Ok((Some(dh), None, Some(dw)))
    }
}

/// `(h, mask, w)` with the output's gradient → `[dh; dw]` flattened.
struct MixGrad {
    grad: Tensor,
}

impl CustomOp3 for MixGrad {
    fn name(&self) -> &'static str {
        "tempest-cuda-mix-grad"
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
        let s = mix_dims(l1, l2, l3)?;
        let g = tensor_f64s(&self.grad)?;
        let out = reference::mix_bwd(&f64s(s1, l1)?, &f64s(s2, l2)?, &f64s(s3, l3)?, &g, s);
        let n = out.len();
        Ok((storage(out, grad_dtype(s1.dtype()))?, Shape::from(n)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let s = mix_dims(l1, l2, l3)?;
        let out = launch::mix_bwd((s1, l1), (s2, l2), (s3, l3), &self.grad, s)?;
        Ok((out, Shape::from(s.rows * s.len * s.dim + s.tokens * s.len)))
    }
}

// ------------------------------------------------------------------------------------------
// Hooks for the model: `Some` only where our kernel runs (a CUDA device, feature `cuda`, f32
// or bf16, shapes the kernel takes); `None` sends the caller down its tensor-op path.

/// [`embed_bytes`] where the kernel runs.
pub fn hook_embed_bytes(
    ids: &Tensor,
    mask: &Tensor,
    table: &Tensor,
    positions: &Tensor,
) -> Result<Option<Tensor>> {
    if !available(table.device()) || !kernel_dtype(table.dtype()) || table.dim(0)? > MAX_VOCAB {
        return Ok(None);
    }
    embed_bytes(ids, mask, table, positions).map(Some)
}

/// [`attention`] where the kernel runs (head size in [`HEAD_DIMS`], at most [`MAX_KEYS`] keys).
pub fn hook_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Option<Tensor>> {
    let (_, _, tk, dh) = k.dims4()?;
    if !available(q.device())
        || !kernel_dtype(q.dtype())
        || tk > MAX_KEYS
        || !HEAD_DIMS.contains(&dh)
    {
        return Ok(None);
    }
    attention(q, k, v, bias).map(Some)
}

/// [`layer_norm`] where the kernel runs.
pub fn hook_layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Option<Tensor>> {
    if !available(x.device()) || !kernel_dtype(x.dtype()) || x.rank() == 0 {
        return Ok(None);
    }
    layer_norm(x, w, b, eps).map(Some)
}

/// [`masked_mix`] where the kernel runs (L' ≤ [`MAX_TOKENS_PER_BLOCK`], the block's mixing
/// weights and their gradient within the shared memory of one block).
pub fn hook_masked_mix(h: &Tensor, mask: &Tensor, w: &Tensor) -> Result<Option<Tensor>> {
    let (lp, l) = w.dims2()?;
    let shared = (l + 2 * lp * l) * 4;
    if !available(h.device())
        || !kernel_dtype(h.dtype())
        || lp > MAX_TOKENS_PER_BLOCK
        || shared > SHARED_BYTES
    {
        return Ok(None);
    }
    masked_mix(h, mask, w).map(Some)
}

#[cfg(test)]
mod tests;
