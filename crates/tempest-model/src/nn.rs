//! The building blocks: linear layers, a layer norm and a softmax that backpropagate, masked
//! multi-head attention, the MLP and the pre-norm transformer.
//!
//! The layers own their variables (named as in the checkpoints) and compute through
//! tempest-kernels' dispatch functions, handing them views of their weights: each op runs as
//! our CUDA kernel, a fused CPU op or candle's tensor ops, whichever applies. candle's fused
//! `LayerNorm`, `ops::layer_norm` and `ops::softmax_last_dim` record no backward pass
//! (docs/design.md, "Facts about candle"): none of the paths uses them.

use candle_core::{Module, Result, Tensor, D};
use candle_nn::{Init, VarBuilder};
use tempest_kernels::{
    AttentionWeights, DropoutRng, Kernels, LayerWeights, LinearView, MlpWeights, NormView,
};

pub use tempest_kernels::{key_bias, MASK_BIAS};

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

    /// The layer's weights as the kernels take them.
    pub fn view(&self) -> LinearView<'_> {
        LinearView {
            weight: &self.weight,
            bias: self.bias.as_ref(),
        }
    }

    /// `[.., in] -> [.., out]` ([`tempest_kernels::linear`]).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        tempest_kernels::linear(x, self.view())
    }
}

/// Layer normalisation over the last dimension, with a backward pass on every path (our kernels
/// or tensor ops; candle's fused layer norm has none).
/// Parameters `weight` (init 1) and `bias` (init 0).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub(crate) weight: Tensor,
    pub(crate) bias: Tensor,
    pub(crate) eps: f64,
    fused: bool,
}

impl LayerNorm {
    /// A layer norm over `dim` features; `fused` uses our kernels where they apply
    /// ([`tempest_kernels::layer_norm`]).
    pub fn new(dim: usize, eps: f64, fused: bool, vb: VarBuilder<'_>) -> Result<Self> {
        Ok(LayerNorm {
            weight: vb.get_with_hints(dim, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(dim, "bias", Init::Const(0.0))?,
            eps,
            fused,
        })
    }

    /// The norm's weights as the kernels take them.
    pub fn view(&self) -> NormView<'_> {
        NormView {
            weight: &self.weight,
            bias: &self.bias,
            eps: self.eps,
        }
    }

    /// `[.., d] -> [.., d]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        tempest_kernels::layer_norm(x, &self.view(), self.fused)
    }
}

/// Softmax over the last dimension that backpropagates (`candle_nn::ops::softmax`, not the
/// fused `softmax_last_dim`).
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    candle_nn::ops::softmax(x, D::Minus1)
}

/// Multi-head attention. Projections `q`, `k`, `v`, `o` (all `d → d`, with bias).
#[derive(Debug, Clone)]
pub struct Attention {
    pub(crate) q: Linear,
    pub(crate) k: Linear,
    pub(crate) v: Linear,
    pub(crate) o: Linear,
    pub(crate) heads: usize,
    fused: bool,
}

impl Attention {
    /// Attention of width `dim` with `heads` heads; `out_std` initialises `o`; `fused` uses our
    /// kernels where they apply ([`tempest_kernels::attention`]).
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
            fused,
        })
    }

    /// The projections as the kernels take them.
    pub fn weights(&self) -> AttentionWeights<'_> {
        AttentionWeights {
            q: self.q.view(),
            k: self.k.view(),
            v: self.v.view(),
            o: self.o.view(),
            heads: self.heads,
        }
    }

    /// Self-attention when `kv` is `x`. `x: [B, Tq, d]`, `kv: [B, Tk, d]`, `bias: [B, 1, 1, Tk]`
    /// additive (see [`key_bias`]) → `[B, Tq, d]`.
    pub fn forward(&self, x: &Tensor, kv: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        tempest_kernels::attend(x, kv, bias, &self.weights(), self.fused)
    }

    /// Attention with queries already projected by `q` (learned queries are projected once).
    pub fn attend_projected(
        &self,
        q: &Tensor,
        kv: &Tensor,
        bias: Option<&Tensor>,
    ) -> Result<Tensor> {
        tempest_kernels::attend_projected(q, kv, bias, &self.weights(), self.fused)
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

    /// The MLP's weights as the kernels take them.
    pub fn weights(&self) -> MlpWeights<'_> {
        MlpWeights {
            fc1: self.fc1.view(),
            fc2: self.fc2.view(),
        }
    }

    /// `[.., dim] -> [.., out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        tempest_kernels::mlp(x, &self.weights(), self.fused)
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
    kernels: Kernels,
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
    /// Use our kernels where they apply ([`Kernels::ops`]).
    pub fused: bool,
    /// Run each layer as one op on the CPU ([`Kernels::layer`]).
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
            kernels: Kernels {
                ops: spec.fused,
                layer: spec.fused_layer,
            },
        })
    }

    /// The layer's weights as the kernels take them.
    pub fn weights(&self) -> LayerWeights<'_> {
        LayerWeights {
            norm1: self.norm1.view(),
            attn: self.attn.weights(),
            norm2: self.norm2.view(),
            mlp: self.mlp.weights(),
        }
    }

    /// Which of our kernels the layer uses.
    pub(crate) fn kernels(&self) -> Kernels {
        self.kernels
    }

    /// `[B, T, d] -> [B, T, d]`; `bias: [B, 1, 1, T]` ([`tempest_kernels::layer`]: the fused
    /// layer skips masked positions and returns their input unchanged there, the op-by-op
    /// layer computes them; real positions agree).
    pub fn forward(&self, x: &Tensor, bias: Option<&Tensor>, train: bool) -> Result<Tensor> {
        let p = if train { self.dropout } else { 0.0 };
        tempest_kernels::layer(x, &self.weights(), bias, p, &self.rng, self.kernels)
    }
}

/// A stack of pre-norm layers `layers.{i}` and a final norm `norm`.
#[derive(Debug, Clone)]
pub struct Transformer {
    layers: Vec<TransformerLayer>,
    norm: LayerNorm,
    /// The layers' dropout probability and generator.
    dropout: f32,
    rng: DropoutRng,
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
            dropout: spec.dropout,
            rng: spec.rng.clone(),
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
        t.rng = rng.clone();
        t
    }

    /// The layers' dropout probability while training, and the generator of their masks.
    pub(crate) fn dropout(&self) -> (f32, &DropoutRng) {
        (self.dropout, &self.rng)
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
