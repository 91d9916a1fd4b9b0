//! The building blocks: linear layers, a layer norm and a softmax that backpropagate, masked
//! multi-head attention, the MLP and the pre-norm transformer.
//!
//! candle's fused `LayerNorm`, `ops::layer_norm` and `ops::softmax_last_dim` record no backward
//! pass (docs/design.md, "Facts about candle"): gradients would silently stop there. Everything here
//! is written from tensor ops whose backward candle knows, or from [`crate::kernels`] ops that
//! carry their own.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{Init, VarBuilder};

use crate::dropout::DropoutRng;
use crate::kernels;

/// Additive attention bias for masked keys. Large and finite rather than −∞: a block whose bytes
/// are all padding (a padded block) then attends uniformly instead of producing NaN, and
/// `exp(bias)` still underflows to exactly 0 for masked keys of a row that has a real key.
pub const MASK_BIAS: f64 = -1e9;

/// A dense layer `y = x·Wᵀ + b`. Weights `[out, in]` named `weight`, bias `[out]` named `bias`.
#[derive(Debug, Clone)]
pub struct Linear {
    pub(crate) weight: Tensor,
    pub(crate) bias: Option<Tensor>,
}

impl Linear {
    /// A layer with weights drawn from N(0, `std`²) (LeCun: `std = 1/√in` unless given) and a zero bias.
    pub fn new(
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        std: Option<f64>,
        vb: VarBuilder<'_>,
    ) -> Result<Self> {
        let stdev = std.unwrap_or(1.0 / (in_dim as f64).sqrt());
        let weight = vb.get_with_hints(
            (out_dim, in_dim),
            "weight",
            Init::Randn { mean: 0.0, stdev },
        )?;
        let bias = if bias {
            Some(vb.get_with_hints(out_dim, "bias", Init::Const(0.0))?)
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }

    /// The weight, `[out, in]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// `[.., in] -> [.., out]`. Leading dimensions are folded into one matmul (a batched matmul
    /// against a broadcast weight is much slower on the CPU).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let in_dim = dims[dims.len() - 1];
        let rows = x.elem_count() / in_dim.max(1);
        let x2 = x.reshape((rows, in_dim))?;
        let y = x2.matmul(&self.weight.t()?)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out = dims.to_vec();
        let last = out.len() - 1;
        out[last] = self.weight.dim(0)?;
        y.reshape(out)
    }
}

/// Layer normalisation over the last dimension, from tensor ops (so it backpropagates).
/// Parameters `weight` (init 1) and `bias` (init 0).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub(crate) weight: Tensor,
    pub(crate) bias: Tensor,
    pub(crate) eps: f64,
    fused: bool,
}

impl LayerNorm {
    /// A layer norm over `dim` features; `fused` uses [`kernels::layer_norm`] where it can.
    pub fn new(dim: usize, eps: f64, fused: bool, vb: VarBuilder<'_>) -> Result<Self> {
        Ok(LayerNorm {
            weight: vb.get_with_hints(dim, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(dim, "bias", Init::Const(0.0))?,
            eps,
            fused,
        })
    }

    /// `[.., d] -> [.., d]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.fused {
            if let Some(y) = crate::cuda::hook_layer_norm(x, &self.weight, &self.bias, self.eps)? {
                return Ok(y);
            }
            if let Some(y) = kernels::layer_norm(x, &self.weight, &self.bias, self.eps)? {
                return Ok(y);
            }
        }
        let mean = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        let inv = (var + self.eps)?.sqrt()?.recip()?;
        xc.broadcast_mul(&inv)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)
    }
}

/// Softmax over the last dimension that backpropagates (`candle_nn::ops::softmax`, not the
/// fused `softmax_last_dim`).
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    candle_nn::ops::softmax(x, D::Minus1)
}

/// The additive attention bias `[B, 1, 1, T]` for a key mask `[B, T]` (1 = attend, 0 = masked),
/// in `dtype`.
pub fn key_bias(mask: &Tensor, dtype: DType) -> Result<Tensor> {
    let (b, t) = mask.dims2()?;
    let m = mask.to_dtype(dtype)?;
    // (1 − m)·MASK_BIAS
    ((m - 1.0)? * (-MASK_BIAS))?.reshape((b, 1, 1, t))
}

/// Multi-head attention. Projections `q`, `k`, `v`, `o` (all `d → d`, with bias).
#[derive(Debug, Clone)]
pub struct Attention {
    pub(crate) q: Linear,
    pub(crate) k: Linear,
    pub(crate) v: Linear,
    pub(crate) o: Linear,
    pub(crate) heads: usize,
    head_dim: usize,
    fused: bool,
}

impl Attention {
    /// Attention of width `dim` with `heads` heads; `out_std` initialises `o`; `fused` uses
    /// [`kernels::softmax`].
    pub fn new(
        dim: usize,
        heads: usize,
        out_std: f64,
        fused: bool,
        vb: VarBuilder<'_>,
    ) -> Result<Self> {
        if heads == 0 || !dim.is_multiple_of(heads) {
            candle_core::bail!("attention width {dim} is not a multiple of {heads} heads");
        }
        Ok(Attention {
            q: Linear::new(dim, dim, true, None, vb.pp("q"))?,
            k: Linear::new(dim, dim, true, None, vb.pp("k"))?,
            v: Linear::new(dim, dim, true, None, vb.pp("v"))?,
            o: Linear::new(dim, dim, true, Some(out_std), vb.pp("o"))?,
            heads,
            head_dim: dim / heads,
            fused,
        })
    }

    fn split(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        x.reshape((b, t, self.heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// Self-attention when `kv` is `x`. `x: [B, Tq, d]`, `kv: [B, Tk, d]`, `bias: [B, 1, 1, Tk]`
    /// additive (see [`key_bias`]) → `[B, Tq, d]`.
    pub fn forward(&self, x: &Tensor, kv: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let q = self.q.forward(x)?;
        self.attend_projected(&q, kv, bias)
    }

    /// Attention with queries already projected by `q` (learned queries are projected once).
    pub fn attend_projected(
        &self,
        q: &Tensor,
        kv: &Tensor,
        bias: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, tq, d) = q.dims3()?;
        let q = self.split(q)?;
        let k = self.split(&self.k.forward(kv)?)?;
        let v = self.split(&self.v.forward(kv)?)?;
        // Scaling q rather than the scores: Tq·d_h products instead of Tq·Tk.
        let q = (q * (1.0 / (self.head_dim as f64).sqrt()))?;
        if self.fused {
            let bias2 = match bias {
                Some(b) => {
                    let (bb, _, _, tk) = b.dims4()?;
                    Some(b.reshape((bb, tk))?)
                }
                None => None,
            };
            let cuda = crate::cuda::hook_attention(&q, &k, &v, bias2.as_ref())?;
            if let Some(y) = cuda.map_or_else(
                || kernels::attention(&q, &k, &v, bias2.as_ref()),
                |y| Ok(Some(y)),
            )? {
                let y = y.transpose(1, 2)?.reshape((b, tq, d))?;
                return self.o.forward(&y);
            }
        }
        let scores = q.matmul(&k.t()?)?;
        let att = match (bias, self.fused) {
            (Some(bias), true) => {
                let (bb, _, _, tk) = bias.dims4()?;
                kernels::biased_softmax(&scores, &bias.reshape((bb, tk))?)?
            }
            (Some(bias), false) => softmax(&scores.broadcast_add(bias)?)?,
            (None, true) => kernels::softmax(&scores)?,
            (None, false) => softmax(&scores)?,
        };
        let y = att.matmul(&v)?.transpose(1, 2)?.reshape((b, tq, d))?;
        self.o.forward(&y)
    }

    /// The query projection.
    pub fn q(&self) -> &Linear {
        &self.q
    }
}

/// Position-wise MLP `fc2(gelu(fc1(x)))`.
#[derive(Debug, Clone)]
pub struct Mlp {
    pub(crate) fc1: Linear,
    pub(crate) fc2: Linear,
    fused: bool,
}

impl Mlp {
    /// `dim → hidden → out`; `out_std` initialises `fc2`.
    pub fn new(
        dim: usize,
        hidden: usize,
        out: usize,
        out_std: Option<f64>,
        fused: bool,
        vb: VarBuilder<'_>,
    ) -> Result<Self> {
        Ok(Mlp {
            fc1: Linear::new(dim, hidden, true, None, vb.pp("fc1"))?,
            fc2: Linear::new(hidden, out, true, out_std, vb.pp("fc2"))?,
            fused,
        })
    }

    /// `[.., dim] -> [.., out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.fc1.forward(x)?;
        let h = if self.fused {
            kernels::gelu(&h)?
        } else {
            h.gelu()?
        };
        self.fc2.forward(&h)
    }
}

/// One pre-norm transformer layer: `x + attn(norm1(x))`, then `x + mlp(norm2(x))`.
#[derive(Debug, Clone)]
pub struct TransformerLayer {
    pub(crate) norm1: LayerNorm,
    pub(crate) attn: Attention,
    pub(crate) norm2: LayerNorm,
    pub(crate) mlp: Mlp,
    dropout: f32,
    /// Seeds of the dropout masks, shared by the model's layers.
    pub(crate) rng: DropoutRng,
    fused_layer: bool,
}

/// The shape of a transformer stack.
#[derive(Debug, Clone)]
pub struct StackSpec {
    /// Width.
    pub dim: usize,
    /// Layers.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// MLP hidden width.
    pub mlp_dim: usize,
    /// Dropout on residual branches during training.
    pub dropout: f32,
    /// Layer-norm epsilon.
    pub eps: f64,
    /// Use the fused CPU kernels ([`kernels`]).
    pub fused: bool,
    /// Run each layer as one op on the CPU (`fused_layer.rs`).
    pub fused_layer: bool,
    /// Where the layers' dropout masks come from.
    pub rng: DropoutRng,
}

impl TransformerLayer {
    /// Layer of a stack; tensor names `norm1`, `attn.{q,k,v,o}`, `norm2`, `mlp.{fc1,fc2}`.
    pub fn new(spec: &StackSpec, vb: VarBuilder<'_>) -> Result<Self> {
        // GPT-2's scaling of the residual projections keeps the residual stream's variance
        // independent of depth at initialisation.
        let out_std =
            0.02_f64.max(1.0 / (spec.dim as f64).sqrt()) / (2.0 * spec.layers.max(1) as f64).sqrt();
        Ok(TransformerLayer {
            norm1: LayerNorm::new(spec.dim, spec.eps, spec.fused, vb.pp("norm1"))?,
            attn: Attention::new(spec.dim, spec.heads, out_std, spec.fused, vb.pp("attn"))?,
            norm2: LayerNorm::new(spec.dim, spec.eps, spec.fused, vb.pp("norm2"))?,
            mlp: Mlp::new(
                spec.dim,
                spec.mlp_dim,
                spec.dim,
                Some(out_std),
                spec.fused,
                vb.pp("mlp"),
            )?,
            dropout: spec.dropout,
            rng: spec.rng.clone(),
            fused_layer: spec.fused_layer,
        })
    }

    /// Whether this layer runs as one fused op where it can, and its dropout probability.
    pub(crate) fn fused_with_dropout(&self) -> (bool, f32) {
        (self.fused_layer, self.dropout)
    }

    /// `[B, T, d] -> [B, T, d]`; `bias: [B, 1, 1, T]`. The fused layer (CPU, f32/f64) skips
    /// masked positions and returns their input unchanged there; the tensor-op layer computes
    /// them. Real positions agree.
    pub fn forward(&self, x: &Tensor, bias: Option<&Tensor>, train: bool) -> Result<Tensor> {
        let p = if train { self.dropout } else { 0.0 };
        if self.fused_layer {
            if let Some(y) = crate::fused_layer::forward(self, x, bias, p)? {
                return Ok(y);
            }
        }
        let h = self.norm1.forward(x)?;
        let a = self.rng.dropout(&self.attn.forward(&h, &h, bias)?, p)?;
        let x = (x + a)?;
        let h = self.norm2.forward(&x)?;
        let m = self.rng.dropout(&self.mlp.forward(&h)?, p)?;
        x + m
    }
}

/// A stack of pre-norm layers `layers.{i}` and a final norm `norm`.
#[derive(Debug, Clone)]
pub struct Transformer {
    layers: Vec<TransformerLayer>,
    norm: LayerNorm,
}

impl Transformer {
    /// A stack as `spec` says.
    pub fn new(spec: &StackSpec, vb: VarBuilder<'_>) -> Result<Self> {
        let layers = (0..spec.layers)
            .map(|i| TransformerLayer::new(spec, vb.pp(format!("layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Transformer {
            layers,
            norm: LayerNorm::new(spec.dim, spec.eps, spec.fused, vb.pp("norm"))?,
        })
    }

    /// The layers, first to last.
    pub(crate) fn layers(&self) -> &[TransformerLayer] {
        &self.layers
    }

    /// A copy of the stack (the same variables) whose layers draw their dropout masks from
    /// `rng`.
    pub(crate) fn with_dropout_rng(&self, rng: &DropoutRng) -> Transformer {
        let mut t = self.clone();
        for layer in &mut t.layers {
            layer.rng = rng.clone();
        }
        t
    }

    /// The final layer norm.
    pub(crate) fn final_norm(&self) -> &LayerNorm {
        &self.norm
    }

    /// `[B, T, d] -> [B, T, d]`, keys masked by `bias: [B, 1, 1, T]`.
    pub fn forward(&self, x: &Tensor, bias: Option<&Tensor>, train: bool) -> Result<Tensor> {
        let mut x = x.clone();
        for layer in &self.layers {
            x = layer.forward(&x, bias, train)?;
        }
        self.norm.forward(&x)
    }
}

/// Inverted dropout, only when training and `p > 0`, from candle's generator (which cannot be
/// seeded on the CPU); the layers use their seeded [`DropoutRng`] instead.
pub fn dropout(x: &Tensor, p: f32, train: bool) -> Result<Tensor> {
    if train && p > 0.0 {
        candle_nn::ops::dropout(x, p)
    } else {
        Ok(x.clone())
    }
}

/// A learned table `[rows, dim]` named `weight`, looked up by `u32` ids.
#[derive(Debug, Clone)]
pub struct Embedding {
    weight: Tensor,
}

impl Embedding {
    /// A table initialised from N(0, `std`²).
    pub fn new(rows: usize, dim: usize, std: f64, vb: VarBuilder<'_>) -> Result<Self> {
        Ok(Embedding {
            weight: vb.get_with_hints(
                (rows, dim),
                "weight",
                Init::Randn {
                    mean: 0.0,
                    stdev: std,
                },
            )?,
        })
    }

    /// The table.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// `ids [..] u32 -> [.., dim]`.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let mut dims = ids.dims().to_vec();
        let flat = ids.flatten_all()?;
        let out = self.weight.index_select(&flat, 0)?;
        dims.push(self.weight.dim(1)?);
        out.reshape(dims)
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Linear::forward(self, x)
    }
}
