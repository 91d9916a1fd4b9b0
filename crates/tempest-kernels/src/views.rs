//! Plain views of a model's weights, as the dispatch functions take them: borrowed tensors and
//! the few numbers that go with them, so that this crate needs no model type (the model builds
//! the views from its own layers at each call; a view costs a few pointers).

use candle_core::{Result, Tensor};

/// A dense layer `y = x·Wᵀ + b`: `weight [out, in]`, `bias [out]`.
#[derive(Debug, Clone, Copy)]
pub struct LinearView<'a> {
    /// `[out, in]`.
    pub weight: &'a Tensor,
    /// `[out]`, if the layer has one.
    pub bias: Option<&'a Tensor>,
}

impl LinearView<'_> {
    /// The bias, which the fused ops require.
    pub(crate) fn bias_or_err(&self) -> Result<&Tensor> {
        match self.bias {
            Some(b) => Ok(b),
            None => candle_core::bail!("fused layer: a projection has no bias"),
        }
    }
}

/// A layer norm over the last dimension: `(x − μ)/√(σ² + eps)·weight + bias`.
#[derive(Debug, Clone, Copy)]
pub struct NormView<'a> {
    /// `[d]`.
    pub weight: &'a Tensor,
    /// `[d]`.
    pub bias: &'a Tensor,
    /// Added to the variance.
    pub eps: f64,
}

/// Multi-head attention: the projections `q`, `k`, `v`, `o` (each `d → d`, with bias) and the
/// number of heads.
#[derive(Debug, Clone, Copy)]
pub struct AttentionWeights<'a> {
    /// Query projection.
    pub q: LinearView<'a>,
    /// Key projection.
    pub k: LinearView<'a>,
    /// Value projection.
    pub v: LinearView<'a>,
    /// Output projection.
    pub o: LinearView<'a>,
    /// Heads (the width is a multiple of them).
    pub heads: usize,
}

/// The position-wise MLP `fc2(gelu(fc1(x)))`.
#[derive(Debug, Clone, Copy)]
pub struct MlpWeights<'a> {
    /// `d → hidden`.
    pub fc1: LinearView<'a>,
    /// `hidden → out`.
    pub fc2: LinearView<'a>,
}

/// One pre-norm transformer layer: `x + attn(norm1(x))`, then `x + mlp(norm2(x))`.
#[derive(Debug, Clone, Copy)]
pub struct LayerWeights<'a> {
    /// The norm before attention.
    pub norm1: NormView<'a>,
    /// Self-attention.
    pub attn: AttentionWeights<'a>,
    /// The norm before the MLP.
    pub norm2: NormView<'a>,
    /// The MLP (its output width is the layer's width).
    pub mlp: MlpWeights<'a>,
}

/// Which of this crate's kernels a call may use. Either way the result is the same function
/// of the inputs, up to rounding; the switches exist to compare the paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kernels {
    /// Our kernel for each op where one applies: the CUDA kernel on a CUDA device (feature
    /// `cuda`, f32/bf16, shapes it takes), the fused CPU op on f32/f64 CPU tensors. Off:
    /// candle's tensor ops.
    pub ops: bool,
    /// A transformer layer as one fused CPU op (f32/f64 on the CPU). Elsewhere, or off, the
    /// layer runs op by op as [`Kernels::ops`] says.
    pub layer: bool,
}
