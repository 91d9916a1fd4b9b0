//! A whole pre-norm transformer layer as one autograd node on the CPU.
//!
//! Built from tensor ops, one layer is about forty nodes of candle's graph, and each costs a
//! zero-filled gradient buffer and an add in the backward pass, a separate pass over memory for
//! every bias add and elementwise op, and a wake-up of candle's spinning thread pool. Here the
//! layer is one [`CustomOp2`] over `x` and the layer's weights packed into one vector: the
//! forward pass runs the matrix products through candle's matmul (gemm) and everything between
//! them in a few fused passes over raw slices, keeps the activations the backward pass needs in
//! the op (which lives in the graph until the graph is dropped), and the backward pass is
//! written by hand. The attention probabilities are kept for the backward pass when a layer's
//! fit `PROBS_BUDGET`, and otherwise recomputed a few sequences at a time there, as in
//! [`crate::cpu::attention`]; those small products run in parallel over sequences (each is
//! below gemm's threading threshold and would otherwise run on one thread).
//!
//! The code is split by stage: [`plan`](mod@plan) (which rows are real, the attention tasks),
//! [`math`] (per-element and per-row arithmetic), [`products`](mod@products) (matrix products
//! on raw storages, heads in and out), `forward.rs` and `backward.rs` (the two passes).
//!
//! Padding costs nothing: only real rows (those whose key bias is above `MASK_BIAS / 2`) are
//! gathered into a compact matrix for the per-token work, and each sequence's attention runs
//! over its real positions only (see [`Plan`]). A padding row's output is its input, passed
//! through unchanged, and so is its gradient (the weights get none from it): the tensor-op
//! layer computes something else there, but nothing reads it, since padded keys are masked and
//! the mixer and the context encoder ignore padded positions. A sequence of padding only is
//! the identity.
//!
//! The weights keep their documented names: [`forward`] concatenates the flattened variables at
//! call time, and candle's backward of `cat` hands each variable its slice of the gradient.
//! Dropout draws the same masks as the tensor-op path ([`crate::dropout`]), so the two paths
//! agree for any seed; `tests` compare them, forward and backward, on the same weights.

use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp2, DType, Layout, Result, Shape, Storage, StorageRef, Tensor, WithDType,
};
use rayon::prelude::*;

use crate::dropout::{DropoutRng, Mask};
use crate::views::LayerWeights;

mod backward;
mod forward;
pub(crate) mod math;
mod plan;
mod products;
#[cfg(test)]
mod tests;

pub(crate) use math::*;
use plan::*;
use products::*;

/// Elements a parallel task of a row-wise pass handles.
const TASK_ELEMS: usize = 1 << 14;
/// Attention scores a parallel task computes at once (256 KB in f32: the task's temporaries
/// stay in the cache and in the allocator's heap).
const TASK_SCORES: usize = 1 << 16;

/// Bytes of attention probabilities a layer keeps from its forward pass for its backward pass
/// (all of its tasks' or none): `small` on the MP3 bench batch (8 items of 28 blocks of 144
/// bytes) needs 74 MB per E_t layer, 600 MB at 64 items, where recomputing is the better deal.
const PROBS_BUDGET: usize = 128 << 20;

static PROBS_BUDGET_NOW: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(PROBS_BUDGET);

fn probs_budget() -> usize {
    PROBS_BUDGET_NOW.load(std::sync::atomic::Ordering::Relaxed)
}

/// What the backward pass needs, kept from the forward pass (compact rows: see [`Plan`]).
#[derive(Debug)]
struct Saved {
    plan: Arc<Plan>,
    /// `None` when no row is real (the layer is the identity).
    acts: Option<Activations>,
}

/// An attention task's `[c, H, tt, d_h]` scaled queries, keys and values, and the
/// probabilities `[c, H, tt, tt]` when the layer's fit [`probs_budget`].
#[derive(Debug)]
struct TaskActs {
    q: CpuStorage,
    k: CpuStorage,
    v: CpuStorage,
    p: Option<CpuStorage>,
}

/// The activations of the real rows `[R', ·]`, in buffers of the scratch pool
/// ([`crate::scratch`]) that go back to it when the op is dropped with its graph.
#[derive(Debug)]
struct Activations {
    /// `[R', d]` the first layer norm's output.
    h1: CpuStorage,
    /// Per row: mean and 1/σ of the first and second layer norms' inputs.
    stats1: Vec<(f64, f64)>,
    stats2: Vec<(f64, f64)>,
    /// Per attention task.
    qkv: Vec<TaskActs>,
    /// `[R', d]` the heads' outputs (before the output projection).
    o: CpuStorage,
    /// `[R', d]` the residual stream after attention, and its layer norm.
    x2: CpuStorage,
    h2: CpuStorage,
    /// `[R', m]` fc1's product (without its bias) and the GELU of it plus the bias.
    f: CpuStorage,
    g: CpuStorage,
}

fn empty() -> CpuStorage {
    CpuStorage::F32(Vec::new())
}

impl Drop for Activations {
    fn drop(&mut self) {
        for s in [
            &mut self.h1,
            &mut self.o,
            &mut self.x2,
            &mut self.h2,
            &mut self.f,
            &mut self.g,
        ] {
            crate::scratch::recycle(std::mem::replace(s, empty()));
        }
        for t in self.qkv.drain(..) {
            for s in [t.q, t.k, t.v] {
                crate::scratch::recycle(s);
            }
            if let Some(p) = t.p {
                crate::scratch::recycle(p);
            }
        }
    }
}

/// The layer as an op: inputs `x [B, T, d]` and the packed weights `[P]`.
pub(crate) struct FusedLayer {
    dims: Dims,
    eps: f64,
    /// `[B, T]` additive key bias (no gradient), if any.
    bias: Option<Tensor>,
    /// Dropout masks of the attention and MLP branches (training only).
    drop: Option<(Mask, Mask)>,
    /// Whether a backward pass can follow (an input is in an autograd graph): only then are
    /// the activations kept.
    keep: bool,
    saved: Mutex<Option<Saved>>,
}

/// A read lock on a tensor's storage and its layout, for reading it as a slice.
struct View<'a> {
    storage: StorageRef<'a>,
    layout: &'a Layout,
}

fn view(t: &Tensor) -> View<'_> {
    let (storage, layout) = t.storage_and_layout();
    View { storage, layout }
}

impl View<'_> {
    fn cpu(&self) -> Result<&CpuStorage> {
        match &*self.storage {
            Storage::Cpu(s) => Ok(s),
            _ => candle_core::bail!("fused layer: tensor is not on the CPU"),
        }
    }

    fn slice<T: WithDType>(&self) -> Result<&[T]> {
        match &*self.storage {
            Storage::Cpu(s) => crate::cpu::contiguous(s, self.layout),
            _ => candle_core::bail!("fused layer: tensor is not on the CPU"),
        }
    }
}

fn tensor<T: WithDType>(v: Vec<T>, shape: impl Into<Shape>) -> Result<Tensor> {
    Tensor::from_vec(v, shape, &candle_core::Device::Cpu)
}

/// Packs the layer's weights in [`Dims::offsets`]' order (a graph node: its backward splits
/// the gradient back to each variable).
pub(crate) fn pack(l: &LayerWeights<'_>) -> Result<Tensor> {
    let a = &l.attn;
    let parts = [
        l.norm1.weight,
        l.norm1.bias,
        a.q.weight,
        a.k.weight,
        a.v.weight,
        a.q.bias_or_err()?,
        a.k.bias_or_err()?,
        a.v.bias_or_err()?,
        a.o.weight,
        a.o.bias_or_err()?,
        l.norm2.weight,
        l.norm2.bias,
        l.mlp.fc1.weight,
        l.mlp.fc1.bias_or_err()?,
        l.mlp.fc2.weight,
        l.mlp.fc2.bias_or_err()?,
    ];
    let flat = parts
        .iter()
        .map(|t| t.flatten_all())
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&flat, 0)
}

/// The layer `x + drop(attn(norm1(x)))`, then `+ drop(mlp(norm2(·)))` as one op when `x` is
/// an f32/f64 tensor on the CPU; `None` otherwise (the caller runs the tensor-op version).
/// `x [B, T, d]`, `bias [B, 1, 1, T]` additive key bias; `p` the dropout probability (0 at
/// inference). Draws the layer's two dropout seeds from `rng`, in the order the tensor-op
/// version does.
pub(crate) fn forward(
    layer: &LayerWeights<'_>,
    x: &Tensor,
    bias: Option<&Tensor>,
    p: f32,
    rng: &DropoutRng,
) -> Result<Option<Tensor>> {
    if !(x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)) {
        return Ok(None);
    }
    let w = pack(layer)?;
    let x = x.contiguous()?;
    let keep = x.track_op() || w.track_op();
    let op = FusedLayer::new(layer, x.dims3()?, bias, (p, rng), keep)?;
    Ok(Some(x.apply_op2(&w, op)?))
}

impl FusedLayer {
    /// The op of `layer` on `x [B, T, d]` (`dims`), with the key bias and dropout probability
    /// of [`forward`]; `keep`: whether a backward pass can follow. Draws the layer's dropout
    /// seeds from `rng`.
    pub(crate) fn new(
        layer: &LayerWeights<'_>,
        (b, t, d): (usize, usize, usize),
        bias: Option<&Tensor>,
        (p, rng): (f32, &DropoutRng),
        keep: bool,
    ) -> Result<Self> {
        let dims = Dims {
            b,
            t,
            d,
            h: layer.attn.heads,
            m: layer.mlp.fc1.weight.dim(0)?,
        };
        let bias = match bias {
            Some(bias) => Some(bias.detach().reshape((b, t))?.contiguous()?),
            None => None,
        };
        let drop = if p > 0.0 {
            let attn = Mask::new(rng.next_seed(), p);
            let mlp = Mask::new(rng.next_seed(), p);
            Some((attn, mlp))
        } else {
            None
        };
        Ok(FusedLayer {
            keep,
            dims,
            eps: layer.norm1.eps,
            bias,
            drop,
            saved: Mutex::new(None),
        })
    }

    /// Length of the layer's packed weights ([`pack`]).
    pub(crate) fn packed_len(&self) -> usize {
        self.dims.offsets().total
    }

    /// The forward pass on `xs [B·T, d]` with the packed weights at `offset` of `weights`;
    /// keeps the activations when the op was made with `keep`.
    pub(crate) fn run_forward<T: Elem>(
        &self,
        xs: &[T],
        weights: &CpuStorage,
        offset: usize,
    ) -> Result<Vec<T>> {
        let layout = Layout::contiguous_with_offset(self.packed_len(), offset);
        self.forward_t(xs, weights, &layout)
    }

    /// The backward pass after [`FusedLayer::run_forward`]: `(dx, dw)` for the input `x`, the
    /// packed weights `w` and the output's gradient `dy` (contiguous CPU tensors).
    pub(crate) fn run_backward<T: Elem>(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        self.with_saved(|saved| self.backward_t::<T>(saved, x, w, dy))
    }

    /// Runs `f` on the activations the forward pass kept, holding their lock through it: they
    /// stay in the op (a second backward pass over the same graph finds them) and go back to
    /// the pool with it.
    fn with_saved<R>(&self, f: impl FnOnce(&Saved) -> Result<R>) -> Result<R> {
        with_saved(&self.saved, "fused layer", f)
    }
}

impl CustomOp2 for FusedLayer {
    fn name(&self) -> &'static str {
        "tempest-fused-layer"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = match s1.dtype() {
            DType::F32 => {
                CpuStorage::F32(self.forward_t::<f32>(crate::cpu::contiguous(s1, l1)?, s2, l2)?)
            }
            DType::F64 => {
                CpuStorage::F64(self.forward_t::<f64>(crate::cpu::contiguous(s1, l1)?, s2, l2)?)
            }
            dt => candle_core::bail!("fused layer: unsupported dtype {dt:?}"),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.detach().contiguous()?;
        let (x, w) = (x.detach(), w.detach().contiguous()?);
        let (dx, dw) = self.with_saved(|saved| match x.dtype() {
            DType::F32 => self.backward_t::<f32>(saved, &x, &w, &g),
            DType::F64 => self.backward_t::<f64>(saved, &x, &w, &g),
            dt => candle_core::bail!("fused layer: unsupported dtype {dt:?}"),
        })?;
        Ok((Some(dx), Some(dw)))
    }
}
