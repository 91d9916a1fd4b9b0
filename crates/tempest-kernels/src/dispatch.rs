//! One entry per op. Each tries, in order, our CUDA kernel (a CUDA tensor, feature `cuda`,
//! a dtype and shape the kernel takes), then the fused CPU op (f32/f64 on the CPU), then
//! candle's tensor ops, which run anywhere. `own = false` (or [`Kernels::ops`] off) goes
//! straight to the tensor ops, to compare the paths.

use candle_core::{DType, Result, Tensor, D};

use crate::dropout::DropoutRng;
use crate::views::{AttentionWeights, Kernels, LayerWeights, LinearView, MlpWeights, NormView};
use crate::{cpu, cuda};

/// Additive attention bias for masked keys. Large and finite rather than −∞: a block whose bytes
/// are all padding (a padded block) then attends uniformly instead of producing NaN, and
/// `exp(bias)` still underflows to exactly 0 for masked keys of a row that has a real key.
pub const MASK_BIAS: f64 = -1e9;

/// The additive attention bias `[B, 1, 1, T]` for a key mask `[B, T]` (1 = attend, 0 = masked),
/// in `dtype`.
pub fn key_bias(mask: &Tensor, dtype: DType) -> Result<Tensor> {
    let (b, t) = mask.dims2()?;
    let m = mask.to_dtype(dtype)?;
    // (1 − m)·MASK_BIAS
    ((m - 1.0)? * (-MASK_BIAS))?.reshape((b, 1, 1, t))
}

/// `[.., in] -> [.., out]`. Leading dimensions are folded into one matmul (a batched matmul
/// against a broadcast weight is much slower on the CPU).
pub fn linear(x: &Tensor, w: LinearView<'_>) -> Result<Tensor> {
    let dims = x.dims();
    let in_dim = dims[dims.len() - 1];
    let rows = x.elem_count() / in_dim.max(1);
    let x2 = x.reshape((rows, in_dim))?;
    let y = x2.matmul(&w.weight.t()?)?;
    let y = match w.bias {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    let mut out = dims.to_vec();
    let last = out.len() - 1;
    out[last] = w.weight.dim(0)?;
    y.reshape(out)
}

/// Layer norm over the last dimension, `[.., d] -> [.., d]`.
///
/// The tensor-op path is written out rather than taken from candle, whose fused layer norm
/// records no backward pass (docs/design.md, "Facts about candle").
pub fn layer_norm(x: &Tensor, n: &NormView<'_>, own: bool) -> Result<Tensor> {
    if own {
        if let Some(y) = cuda::hook_layer_norm(x, n.weight, n.bias, n.eps)? {
            return Ok(y);
        }
        if let Some(y) = cpu::layer_norm(x, n.weight, n.bias, n.eps)? {
            return Ok(y);
        }
    }
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (var + n.eps)?.sqrt()?.recip()?;
    xc.broadcast_mul(&inv)?
        .broadcast_mul(n.weight)?
        .broadcast_add(n.bias)
}

/// GELU, tanh approximation: fused on the CPU ([`cpu::gelu`]), candle's `gelu` elsewhere.
pub fn gelu(x: &Tensor, own: bool) -> Result<Tensor> {
    if own {
        cpu::gelu(x)
    } else {
        x.gelu()
    }
}

/// The MLP `fc2(gelu(fc1(x)))`: `[.., dim] -> [.., out]`.
pub fn mlp(x: &Tensor, w: &MlpWeights<'_>, own: bool) -> Result<Tensor> {
    let h = linear(x, w.fc1)?;
    let h = gelu(&h, own)?;
    linear(&h, w.fc2)
}

/// `softmax(q·kᵀ + bias)·v` over heads: `q [B, H, Tq, d_h]` (already scaled), `k`, `v
/// [B, H, Tk, d_h]`, `bias [B, 1, 1, Tk]` additive ([`key_bias`]) → `[B, H, Tq, d_h]`.
///
/// The softmax of the tensor-op path is `candle_nn::ops::softmax`, which backpropagates
/// (candle's fused `softmax_last_dim` does not).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
    own: bool,
) -> Result<Tensor> {
    if own {
        let bias2 = match bias {
            Some(b) => {
                let (bb, _, _, tk) = b.dims4()?;
                Some(b.reshape((bb, tk))?)
            }
            None => None,
        };
        let y = match cuda::hook_attention(q, k, v, bias2.as_ref())? {
            Some(y) => Some(y),
            None => cpu::attention(q, k, v, bias2.as_ref())?,
        };
        if let Some(y) = y {
            return Ok(y);
        }
    }
    let scores = q.matmul(&k.t()?)?;
    let att = match (bias, own) {
        (Some(bias), true) => {
            let (bb, _, _, tk) = bias.dims4()?;
            cpu::biased_softmax(&scores, &bias.reshape((bb, tk))?)?
        }
        (Some(bias), false) => candle_nn::ops::softmax(&scores.broadcast_add(bias)?, D::Minus1)?,
        (None, true) => cpu::softmax(&scores)?,
        (None, false) => candle_nn::ops::softmax(&scores, D::Minus1)?,
    };
    att.matmul(v)
}

/// `[B, T, d] -> [B, H, T, d_h]`.
fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, t, d) = x.dims3()?;
    x.reshape((b, t, heads, d / heads))?
        .transpose(1, 2)?
        .contiguous()
}

/// Multi-head attention of `x [B, Tq, d]` to `kv [B, Tk, d]` (self-attention when `kv` is
/// `x`), keys masked by `bias [B, 1, 1, Tk]` → `[B, Tq, d]`.
pub fn attend(
    x: &Tensor,
    kv: &Tensor,
    bias: Option<&Tensor>,
    w: &AttentionWeights<'_>,
    own: bool,
) -> Result<Tensor> {
    let q = linear(x, w.q)?;
    attend_projected(&q, kv, bias, w, own)
}

/// As [`attend`], with the queries `q [B, Tq, d]` already projected by `w.q` (learned queries
/// are projected once).
pub fn attend_projected(
    q: &Tensor,
    kv: &Tensor,
    bias: Option<&Tensor>,
    w: &AttentionWeights<'_>,
    own: bool,
) -> Result<Tensor> {
    let (b, tq, d) = q.dims3()?;
    if w.heads == 0 || !d.is_multiple_of(w.heads) {
        candle_core::bail!("attention width {d} is not a multiple of {} heads", w.heads);
    }
    let head_dim = d / w.heads;
    let q = split_heads(q, w.heads)?;
    let k = split_heads(&linear(kv, w.k)?, w.heads)?;
    let v = split_heads(&linear(kv, w.v)?, w.heads)?;
    // Scaling q rather than the scores: Tq·d_h products instead of Tq·Tk.
    let q = (q * (1.0 / (head_dim as f64).sqrt()))?;
    let y = attention(&q, &k, &v, bias, own)?;
    let y = y.transpose(1, 2)?.reshape((b, tq, d))?;
    linear(&y, w.o)
}

/// One pre-norm transformer layer, `[B, T, d] -> [B, T, d]`: `x + drop(attn(norm1(x)))`, then
/// `+ drop(mlp(norm2(·)))`, keys masked by `bias [B, 1, 1, T]`; `p` the dropout probability
/// (0 at inference), its masks seeded from `rng`.
///
/// The fused layer ([`Kernels::layer`], f32/f64 on the CPU) skips masked positions and returns
/// their input unchanged there; the op-by-op layer computes them. Real positions agree, and
/// both draw the same two dropout seeds in the same order.
pub fn layer(
    x: &Tensor,
    w: &LayerWeights<'_>,
    bias: Option<&Tensor>,
    p: f32,
    rng: &DropoutRng,
    kernels: Kernels,
) -> Result<Tensor> {
    if kernels.layer {
        if let Some(y) = cpu::layer::forward(w, x, bias, p, rng)? {
            return Ok(y);
        }
    }
    let own = kernels.ops;
    let h = layer_norm(x, &w.norm1, own)?;
    let a = rng.dropout(&attend(&h, &h, bias, &w.attn, own)?, p)?;
    let x = (x + a)?;
    let h = layer_norm(&x, &w.norm2, own)?;
    let m = rng.dropout(&mlp(&h, &w.mlp, own)?, p)?;
    x + m
}

/// The byte embedding: `ids [R, L] u32`, `mask [R, L] u8` (1 = real byte), `table [V, d]`,
/// `positions [P, d]` (P ≥ L) → `[R, L, d]`, `table[id] + positions[i]`.
///
/// The CUDA kernel embeds padded bytes to exactly 0, the other paths to
/// `table[PAD] + positions[i]`: nothing downstream reads padded bytes (they are masked keys,
/// and the mixer weighs them by 0).
pub fn embed_bytes(
    ids: &Tensor,
    mask: &Tensor,
    table: &Tensor,
    positions: &Tensor,
    own: bool,
) -> Result<Tensor> {
    if own {
        if let Some(x) = cuda::hook_embed_bytes(ids, mask, table, positions)? {
            return Ok(x);
        }
        if let Some(x) = cpu::block_ops::embed_bytes(ids, table, positions)? {
            return Ok(x);
        }
    }
    let (r, l) = ids.dims2()?;
    let x = table
        .index_select(&ids.flatten_all()?, 0)?
        .reshape((r, l, table.dim(1)?))?;
    x.broadcast_add(&positions.narrow(0, 0, l)?)
}

/// The linear mixer's masked reduction: `h [R, L, d]`, `mask [R, L]` in `h`'s dtype (1 real,
/// 0 padding), `w [L', P]` (P ≥ L) → `[R, L', d]`, `Σ_i w_ji·m_i·h_i / max(1, Σ_i m_i)`:
/// padded bytes get weight exactly 0.
pub fn masked_mix(h: &Tensor, mask: &Tensor, w: &Tensor, own: bool) -> Result<Tensor> {
    let l = h.dim(1)?;
    let fused = if !own {
        None
    } else if cuda::available(h.device()) {
        cuda::hook_masked_mix(h, mask, &w.narrow(1, 0, l)?.contiguous()?)?
    } else {
        cpu::block_ops::masked_mix(h, mask, w)?
    };
    if let Some(y) = fused {
        return Ok(y);
    }
    let w = w.narrow(1, 0, l)?.unsqueeze(0)?; // [1, L', L]
    let count = mask.sum_keepdim(1)?.maximum(1.0)?; // [R, 1]
    let weights = w.broadcast_mul(&mask.broadcast_div(&count)?.unsqueeze(1)?)?; // [R, L', L]
    weights.matmul(h)
}
