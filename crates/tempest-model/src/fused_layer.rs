//! A whole pre-norm transformer layer as one autograd node on the CPU.
//!
//! Built from tensor ops, one layer is about forty nodes of candle's graph, and each costs a
//! zero-filled gradient buffer and an add in the backward pass, a separate pass over memory for
//! every bias add and elementwise op, and a wake-up of candle's spinning thread pool. Here the
//! layer is one [`CustomOp2`] over `x` and the layer's weights packed into one vector: the
//! forward pass runs the matrix products through candle's matmul (gemm) and everything between
//! them in a few fused passes over raw slices, keeps the activations the backward pass needs in
//! the op (which lives in the graph until the graph is dropped), and the backward pass is
//! written by hand. The attention scores are never stored: they are recomputed a few sequences
//! at a time in the backward pass, as in [`crate::kernels::attention`], and those small
//! products run in parallel over sequences (each is below gemm's threading threshold and would
//! otherwise run on one thread).
//!
//! The weights keep their documented names: [`forward`] concatenates the flattened variables at
//! call time, and candle's backward of `cat` hands each variable its slice of the gradient.
//! Dropout draws the same masks as the tensor-op path ([`crate::dropout`]), so the two paths
//! agree for any seed; `tests` compare them, forward and backward.

use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp2, DType, Layout, Result, Shape, Storage, StorageRef, Tensor, WithDType,
};
use num_traits::Float;
use rayon::prelude::*;

use crate::dropout::Mask;
use crate::nn::TransformerLayer;

/// √(2/π) and the cubic coefficient of GELU's tanh approximation (as in [`crate::kernels`]).
const GELU_K: f64 = 2.0 * 0.797_884_560_802_865_4;
const GELU_C: f64 = 0.044_715;

/// The element types of the fused layer, with the exponential it uses: for f32 a polynomial
/// that the compiler vectorises (libm's `expf` is a scalar call per element, and the softmax
/// and GELU take hundreds of millions of them per training step); f64 keeps `exp`, so the f64
/// path stays exact for the gradient checks.
pub(crate) trait Elem:
    WithDType + Float + std::ops::AddAssign + std::ops::MulAssign
{
    /// eˣ; 0 for x below about −87 in f32 (where `expf` returns 0 or a subnormal).
    fn exp_fast(self) -> Self;
}

impl Elem for f64 {
    #[inline(always)]
    fn exp_fast(self) -> f64 {
        self.exp()
    }
}

impl Elem for f32 {
    #[inline(always)]
    fn exp_fast(self) -> f32 {
        exp_f32(self)
    }
}

/// eˣ in f32 to about 2 ulp: x = n·ln2 + y with |y| ≤ ln2/2 (n by rounding, ln2 split in two
/// parts so that y is exact: Cody & Waite 1980), eʸ by its Taylor series to degree 7 (error
/// below 4e-9 relative on that range), 2ⁿ written into the exponent bits. Branch-free, so
/// loops over it vectorise.
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4; // ln 2 rounded to 12 significant bits: n·LN2_HI is exact
    const LN2_LO: f32 = -2.121_944_4e-4; // ln 2 − LN2_HI
                                         // 1.5·2²³: adding it rounds to an integer in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(-87.0, 88.0);
    let shifted = xc * LOG2_E + ROUND;
    let n = (shifted.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let nf = shifted - ROUND;
    let y = (xc - nf * LN2_HI) - nf * LN2_LO;
    let p = 1.0
        + y * (1.0
            + y * (0.5
                + y * (1.0 / 6.0
                    + y * (1.0 / 24.0
                        + y * (1.0 / 120.0 + y * (1.0 / 720.0 + y * (1.0 / 5040.0)))))));
    let scale = f32::from_bits(((n + 127) as u32) << 23);
    if x < -87.0 {
        0.0
    } else {
        p * scale
    }
}

/// Elements a parallel task of a row-wise pass handles.
const TASK_ELEMS: usize = 1 << 14;
/// Attention scores a parallel task computes at once (256 KB in f32: the task's temporaries
/// stay in the cache and in the allocator's heap).
const TASK_SCORES: usize = 1 << 16;

/// The layer's shape.
#[derive(Debug, Clone, Copy)]
struct Dims {
    /// Sequences.
    b: usize,
    /// Positions per sequence.
    t: usize,
    /// Width.
    d: usize,
    /// Heads.
    h: usize,
    /// MLP width.
    m: usize,
}

impl Dims {
    fn rows(&self) -> usize {
        self.b * self.t
    }
    fn dh(&self) -> usize {
        self.d / self.h
    }
    /// Offsets of the packed weights, in the order [`pack`] writes them.
    fn offsets(&self) -> Offsets {
        let (d, m) = (self.d, self.m);
        let mut at = 0;
        let mut take = |n: usize| {
            let o = at;
            at += n;
            o
        };
        Offsets {
            ln1_w: take(d),
            ln1_b: take(d),
            wqkv: take(3 * d * d),
            bqkv: take(3 * d),
            wo: take(d * d),
            bo: take(d),
            ln2_w: take(d),
            ln2_b: take(d),
            w1: take(m * d),
            b1: take(m),
            w2: take(d * m),
            b2: take(d),
            total: take(0),
        }
    }
    /// Sequences per attention task: the scores of a task fit `TASK_SCORES`, and there are
    /// enough tasks to keep every thread busy.
    fn seqs_per_task(&self) -> usize {
        let by_size = TASK_SCORES / (self.h * self.t * self.t).max(1);
        let by_threads = self.b / (4 * rayon::current_num_threads()).max(1);
        by_size.min(by_threads).max(1)
    }
}

#[derive(Debug, Clone, Copy)]
struct Offsets {
    ln1_w: usize,
    ln1_b: usize,
    wqkv: usize,
    bqkv: usize,
    wo: usize,
    bo: usize,
    ln2_w: usize,
    ln2_b: usize,
    w1: usize,
    b1: usize,
    w2: usize,
    b2: usize,
    total: usize,
}

/// What the backward pass needs, kept from the forward pass.
#[derive(Debug, Clone)]
struct Saved {
    /// `[R, d]` the first layer norm's output.
    h1: Tensor,
    /// Per row: mean and 1/σ of the first and second layer norms' inputs.
    stats1: Vec<(f64, f64)>,
    stats2: Vec<(f64, f64)>,
    /// `[B, H, T, d_h]` scaled queries, keys and values.
    q: Tensor,
    k: Tensor,
    v: Tensor,
    /// `[R, d]` the heads' outputs (before the output projection).
    o: Tensor,
    /// `[R, d]` the residual stream after attention, and its layer norm.
    x2: Tensor,
    h2: Tensor,
    /// `[R, m]` fc1's product (without its bias) and the GELU of it plus the bias.
    f: Tensor,
    g: Tensor,
}

/// The layer as an op: inputs `x [B, T, d]` and the packed weights `[P]`.
struct FusedLayer {
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
    fn slice<T: WithDType>(&self) -> Result<&[T]> {
        match &*self.storage {
            Storage::Cpu(s) => crate::kernels::contiguous(s, self.layout),
            _ => candle_core::bail!("fused layer: tensor is not on the CPU"),
        }
    }
}

fn tensor<T: WithDType>(v: Vec<T>, shape: impl Into<Shape>) -> Result<Tensor> {
    Tensor::from_vec(v, shape, &candle_core::Device::Cpu)
}

/// Rows per parallel task for rows of `width` elements.
fn rows_per_task(width: usize) -> usize {
    (TASK_ELEMS / width.max(1)).max(1)
}

/// Column sums of `[rows, width]` in f64, split over threads; the partial sums are added in
/// order, so the result does not depend on how rayon scheduled the work.
fn col_sums<T: WithDType>(a: &[T], width: usize) -> Vec<f64> {
    a.par_chunks(rows_per_task(width) * width)
        .map(|c| {
            let mut s = vec![0.0; width];
            for row in c.chunks(width) {
                s.iter_mut().zip(row).for_each(|(s, v)| *s += v.to_f64());
            }
            s
        })
        .collect::<Vec<_>>()
        .into_iter()
        .fold(vec![0.0; width], add_into)
}

fn add_into(mut a: Vec<f64>, b: Vec<f64>) -> Vec<f64> {
    a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
    a
}

/// Layer norm of one row into `out`; returns (mean, 1/σ).
#[inline]
fn norm_row<T: WithDType>(x: &[T], w: &[T], b: &[T], eps: f64, out: &mut [T]) -> (f64, f64) {
    let d = x.len() as f64;
    let mean = x.iter().map(|v| v.to_f64()).sum::<f64>() / d;
    let var = x.iter().map(|v| (v.to_f64() - mean).powi(2)).sum::<f64>() / d;
    let inv = 1.0 / (var + eps).sqrt();
    for (((o, x), w), b) in out.iter_mut().zip(x).zip(w).zip(b) {
        *o = T::from_f64((x.to_f64() - mean) * inv * w.to_f64() + b.to_f64());
    }
    (mean, inv)
}

/// A layer norm's backward for one row, added to `dx`: with x̂ = (x − μ)/σ and ĝ = g⊙w,
/// dx += (ĝ − mean(ĝ) − x̂·mean(ĝ⊙x̂))/σ; dw += g⊙x̂, db += g.
#[inline]
#[allow(clippy::too_many_arguments)]
fn norm_row_grad<T: WithDType>(
    x: &[T],
    (mean, inv): (f64, f64),
    w: &[T],
    g: &[T],
    dx: &mut [f64],
    dw: &mut [f64],
    db: &mut [f64],
) {
    let d = x.len() as f64;
    let (mut m1, mut m2) = (0.0, 0.0);
    for j in 0..x.len() {
        let xh = (x[j].to_f64() - mean) * inv;
        let gj = g[j].to_f64();
        let gh = gj * w[j].to_f64();
        m1 += gh;
        m2 += gh * xh;
        dw[j] += gj * xh;
        db[j] += gj;
    }
    let (m1, m2) = (m1 / d, m2 / d);
    for j in 0..x.len() {
        let xh = (x[j].to_f64() - mean) * inv;
        dx[j] += (g[j].to_f64() * w[j].to_f64() - m1 - xh * m2) * inv;
    }
}

/// GELU (tanh approximation) as `x·σ(2u)`, and its derivative.
#[inline(always)]
fn gelu<T: Elem>(x: T) -> T {
    let (k, c) = (
        T::from(GELU_K).unwrap_or(T::one()),
        T::from(GELU_C).unwrap_or(T::zero()),
    );
    x / (T::one() + (-(k * (x + c * x * x * x))).exp_fast())
}

#[inline(always)]
fn gelu_grad<T: Elem>(x: T) -> T {
    let (k, c) = (
        T::from(GELU_K).unwrap_or(T::one()),
        T::from(GELU_C).unwrap_or(T::zero()),
    );
    let three = T::from(3.0).unwrap_or(T::one());
    let s = T::one() / (T::one() + (-(k * (x + c * x * x * x))).exp_fast());
    s + x * s * (T::one() - s) * k * (T::one() + three * c * x * x)
}

/// Partial sums per lane: a single running sum is a chain of dependent adds that the compiler
/// may not reorder (and so cannot vectorise); eight of them can.
const LANES: usize = 8;

/// Σ v, eight lanes at a time.
#[inline]
fn sum_lanes<T: Elem>(v: &[T]) -> T {
    let mut acc = [T::zero(); LANES];
    let chunks = v.chunks_exact(LANES);
    let tail = chunks.remainder().iter().fold(T::zero(), |a, &b| a + b);
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    acc.iter().fold(tail, |a, &b| a + b)
}

/// Σ a⊙b, eight lanes at a time.
#[inline]
fn dot_lanes<T: Elem>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::zero(); LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .fold(T::zero(), |s, (&x, &y)| s + x * y);
    for (x, y) in ca.zip(cb) {
        for ((s, &x), &y) in acc.iter_mut().zip(x).zip(y) {
            *s += x * y;
        }
    }
    acc.iter().fold(tail, |a, &b| a + b)
}

/// Softmax over rows of `s [c·H·T, T]` plus the key bias of each row's sequence (`rows_per_seq`
/// rows share a bias row), written to `p`.
fn softmax_rows<T: Elem>(s: &[T], p: &mut [T], t: usize, rows_per_seq: usize, bias: Option<&[T]>) {
    for (r, (row, out)) in s.chunks(t).zip(p.chunks_mut(t)).enumerate() {
        match bias {
            Some(b) => {
                let b = &b[(r / rows_per_seq) * t..][..t];
                out.iter_mut()
                    .zip(row.iter().zip(b))
                    .for_each(|(o, (&v, &b))| *o = v + b);
            }
            None => out.copy_from_slice(row),
        }
        let max = out.iter().fold(T::neg_infinity(), |m, &v| Float::max(m, v));
        out.iter_mut().for_each(|v| *v = (*v - max).exp_fast());
        let sum = sum_lanes(out);
        let inv = T::one() / sum;
        out.iter_mut().for_each(|v| *v *= inv);
    }
}

/// Packs the layer's weights in [`Dims::offsets`]' order (a graph node: its backward splits
/// the gradient back to each variable).
fn pack(l: &TransformerLayer) -> Result<Tensor> {
    let a = &l.attn;
    let parts = [
        &l.norm1.weight,
        &l.norm1.bias,
        &a.q.weight,
        &a.k.weight,
        &a.v.weight,
        bias_of(&a.q)?,
        bias_of(&a.k)?,
        bias_of(&a.v)?,
        &a.o.weight,
        bias_of(&a.o)?,
        &l.norm2.weight,
        &l.norm2.bias,
        &l.mlp.fc1.weight,
        bias_of(&l.mlp.fc1)?,
        &l.mlp.fc2.weight,
        bias_of(&l.mlp.fc2)?,
    ];
    let flat = parts
        .iter()
        .map(|t| t.flatten_all())
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&flat, 0)
}

fn bias_of(l: &crate::nn::Linear) -> Result<&Tensor> {
    match &l.bias {
        Some(b) => Ok(b),
        None => candle_core::bail!("fused layer: a projection has no bias"),
    }
}

/// The layer `x + drop(attn(norm1(x)))`, then `+ drop(mlp(norm2(·)))` as one op when `x` is
/// an f32/f64 tensor on the CPU; `None` otherwise (the caller runs the tensor-op version).
/// `x [B, T, d]`, `bias [B, 1, 1, T]` additive key bias; `p` the dropout probability (0 at
/// inference). Draws the layer's two dropout seeds from the layer's generator, in the order
/// the tensor-op version does.
pub(crate) fn forward(
    layer: &TransformerLayer,
    x: &Tensor,
    bias: Option<&Tensor>,
    p: f32,
) -> Result<Option<Tensor>> {
    if !(x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)) {
        return Ok(None);
    }
    let (b, t, d) = x.dims3()?;
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
        let attn = Mask::new(layer.rng.next_seed(), p);
        let mlp = Mask::new(layer.rng.next_seed(), p);
        Some((attn, mlp))
    } else {
        None
    };
    let w = pack(layer)?;
    let x = x.contiguous()?;
    let op = FusedLayer {
        keep: x.track_op() || w.track_op(),
        dims,
        eps: layer.norm1.eps,
        bias,
        drop,
        saved: Mutex::new(None),
    };
    Ok(Some(x.apply_op2(&w, op)?))
}

impl FusedLayer {
    /// Copies `v` (one of the op's storages) into a tensor of `shape`.
    fn input<T: WithDType>(v: &[T], shape: impl Into<Shape>) -> Result<Tensor> {
        Tensor::from_slice(v, shape, &candle_core::Device::Cpu)
    }

    fn forward_t<T: Elem>(&self, xs: &[T], ws: &[T]) -> Result<Vec<T>> {
        let Dims { b, t, d, h, m } = self.dims;
        let (r, dh) = (self.dims.rows(), self.dims.dh());
        let o = self.dims.offsets();
        if xs.len() != r * d || ws.len() != o.total || h == 0 || d % h != 0 {
            candle_core::bail!(
                "fused layer: {} inputs, {} weights for {:?}",
                xs.len(),
                ws.len(),
                self.dims
            );
        }
        let w = Self::input(ws, o.total)?;
        let mat = |at: usize, rows: usize, cols: usize| {
            w.narrow(0, at, rows * cols)?.reshape((rows, cols))
        };
        let rows = rows_per_task(d);

        // norm1
        let mut h1 = vec![T::zero(); r * d];
        let stats1: Vec<(f64, f64)> = h1
            .par_chunks_mut(rows * d)
            .zip(xs.par_chunks(rows * d))
            .flat_map_iter(|(o1, x)| {
                o1.chunks_mut(d)
                    .zip(x.chunks(d))
                    .map(|(o1, x)| {
                        norm_row(x, &ws[o.ln1_w..][..d], &ws[o.ln1_b..][..d], self.eps, o1)
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        let h1 = tensor(h1, (r, d))?;

        // q, k, v: one product, then the bias, the split into heads and q's scale in one pass.
        let qkv = h1.matmul(&mat(o.wqkv, 3 * d, d)?.t()?)?;
        let scale = 1.0 / (dh as f64).sqrt();
        let (mut q, mut k, mut v) = (
            vec![T::zero(); r * d],
            vec![T::zero(); r * d],
            vec![T::zero(); r * d],
        );
        {
            let qkv_v = view(&qkv);
            let qkv_s = qkv_v.slice::<T>()?;
            let bqkv = &ws[o.bqkv..][..3 * d];
            let sc = T::from_f64(scale);
            q.par_chunks_mut(t * d)
                .zip(k.par_chunks_mut(t * d))
                .zip(v.par_chunks_mut(t * d))
                .zip(qkv_s.par_chunks(t * 3 * d))
                .for_each(|(((q, k), v), src)| {
                    for (ti, row) in src.chunks(3 * d).enumerate() {
                        for hi in 0..h {
                            let dst = (hi * t + ti) * dh;
                            for j in 0..dh {
                                let c = hi * dh + j;
                                q[dst + j] = (row[c] + bqkv[c]) * sc;
                                k[dst + j] = row[d + c] + bqkv[d + c];
                                v[dst + j] = row[2 * d + c] + bqkv[2 * d + c];
                            }
                        }
                    }
                });
        }
        drop(qkv);
        let (q, k, v) = (
            tensor(q, (b, h, t, dh))?,
            tensor(k, (b, h, t, dh))?,
            tensor(v, (b, h, t, dh))?,
        );

        // Attention, a few sequences per task; each task writes its rows of `o [R, d]`.
        let spt = self.dims.seqs_per_task();
        let mut oh = vec![T::zero(); r * d];
        {
            let bias_v = self.bias.as_ref().map(view);
            let bias_s = bias_v.as_ref().map(|v| v.slice::<T>()).transpose()?;
            oh.par_chunks_mut(spt * t * d).enumerate().try_for_each(
                |(task, out)| -> Result<()> {
                    let (s0, c) = (task * spt, out.len() / (t * d));
                    let (qc, kc, vc) = (
                        q.narrow(0, s0, c)?,
                        k.narrow(0, s0, c)?,
                        v.narrow(0, s0, c)?,
                    );
                    let p =
                        self.probs::<T>(&qc, &kc, bias_s.map(|bs| &bs[s0 * t..(s0 + c) * t]))?;
                    let y = p.matmul(&vc)?;
                    let y_v = view(&y);
                    merge_heads(y_v.slice::<T>()?, out, c, t, h, dh, 0, d, T::one());
                    Ok(())
                },
            )?;
        }
        let oh = tensor(oh, (r, d))?;

        // Output projection, then bias, dropout, residual and norm2 in one pass per row.
        let a = oh.matmul(&mat(o.wo, d, d)?.t()?)?;
        let mut x2 = vec![T::zero(); r * d];
        let mut h2 = vec![T::zero(); r * d];
        let stats2: Vec<(f64, f64)> = {
            let a_v = view(&a);
            let a_s = a_v.slice::<T>()?;
            let bo = &ws[o.bo..][..d];
            let mask = self.drop.map(|m| m.0);
            x2.par_chunks_mut(rows * d)
                .zip(h2.par_chunks_mut(rows * d))
                .enumerate()
                .flat_map_iter(|(c, (x2, h2))| {
                    let base = c * rows * d;
                    for (j, x2j) in x2.iter_mut().enumerate() {
                        let i = base + j;
                        let av = WithDType::to_f64(a_s[i]) + WithDType::to_f64(bo[j % d]);
                        let av = match mask {
                            Some(mk) => av * mk.factor(i),
                            None => av,
                        };
                        *x2j = T::from_f64(WithDType::to_f64(xs[i]) + av);
                    }
                    x2.chunks(d)
                        .zip(h2.chunks_mut(d))
                        .map(|(x2, h2)| {
                            norm_row(x2, &ws[o.ln2_w..][..d], &ws[o.ln2_b..][..d], self.eps, h2)
                        })
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        drop(a);
        let h2 = tensor(h2, (r, d))?;

        // MLP: fc1, bias + GELU in one pass, fc2, then bias, dropout and residual in one pass.
        let f = h2.matmul(&mat(o.w1, m, d)?.t()?)?;
        let mut g = vec![T::zero(); r * m];
        {
            let f_v = view(&f);
            let f_s = f_v.slice::<T>()?;
            let b1 = &ws[o.b1..][..m];
            g.par_chunks_mut(rows_per_task(m) * m)
                .zip(f_s.par_chunks(rows_per_task(m) * m))
                .for_each(|(g, f)| {
                    for (g, f) in g.chunks_mut(m).zip(f.chunks(m)) {
                        for ((g, &f), &b) in g.iter_mut().zip(f).zip(b1) {
                            *g = gelu(f + b);
                        }
                    }
                });
        }
        let g = tensor(g, (r, m))?;
        let z = g.matmul(&mat(o.w2, d, m)?.t()?)?;
        let mut y = vec![T::zero(); r * d];
        {
            let z_v = view(&z);
            let z_s = z_v.slice::<T>()?;
            let b2 = &ws[o.b2..][..d];
            let mask = self.drop.map(|m| m.1);
            y.par_chunks_mut(rows * d)
                .zip(x2.par_chunks(rows * d))
                .enumerate()
                .for_each(|(c, (y, x2))| {
                    let base = c * rows * d;
                    for (j, (y, x2)) in y.iter_mut().zip(x2).enumerate() {
                        let i = base + j;
                        let zv = WithDType::to_f64(z_s[i]) + WithDType::to_f64(b2[j % d]);
                        let zv = match mask {
                            Some(mk) => zv * mk.factor(i),
                            None => zv,
                        };
                        *y = T::from_f64(WithDType::to_f64(*x2) + zv);
                    }
                });
        }
        let saved = Saved {
            h1,
            stats1,
            stats2,
            q,
            k,
            v,
            o: oh,
            x2: tensor(x2, (r, d))?,
            h2,
            f,
            g,
        };
        if self.keep {
            if let Ok(mut s) = self.saved.lock() {
                *s = Some(saved);
            }
        }
        Ok(y)
    }

    /// Softmax of `q·kᵀ` plus the key bias, `[c, H, T, T]`.
    fn probs<T: Elem>(&self, q: &Tensor, k: &Tensor, bias: Option<&[T]>) -> Result<Tensor> {
        let s = q.matmul(&k.t()?)?;
        let s_v = view(&s);
        let s_s = s_v.slice::<T>()?;
        let mut p = Vec::with_capacity(s_s.len());
        p.resize(s_s.len(), T::zero());
        let t = self.dims.t;
        softmax_rows(s_s, &mut p, t, self.dims.h * t, bias);
        tensor(p, q.dims4().map(|(c, h, t, _)| (c, h, t, t))?)
    }

    /// The gradients of `x` and of the packed weights `w` for the output's gradient `dy`.
    fn backward_t<T: Elem>(
        &self,
        s: &Saved,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let Dims { b, t, d, h, m } = self.dims;
        let (r, dh) = (self.dims.rows(), self.dims.dh());
        let o = self.dims.offsets();
        let rows = rows_per_task(d);
        let w_v = view(w);
        let ws = w_v.slice::<T>()?;
        let mat = |at: usize, rows: usize, cols: usize| {
            w.narrow(0, at, rows * cols)?.reshape((rows, cols))
        };
        let mut grad = vec![0.0f64; o.total];
        let put = |grad: &mut Vec<f64>, at: usize, vals: &[f64]| {
            grad[at..at + vals.len()].copy_from_slice(vals)
        };
        let to_f64 = |t: &Tensor| -> Result<Vec<f64>> {
            t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()
        };
        let dy_v = view(dy);
        let dys = dy_v.slice::<T>()?;

        // y = x2 + drop2(z + b2): dz = drop2(dy), db2 = Σ dz.
        let dz: Vec<T> = match self.drop.map(|m| m.1) {
            Some(mk) => dys
                .par_iter()
                .enumerate()
                .map(|(i, &g)| T::from_f64(WithDType::to_f64(g) * mk.factor(i)))
                .collect(),
            None => dys.to_vec(),
        };
        put(&mut grad, o.b2, &col_sums(&dz, d));
        let dz = tensor(dz, (r, d))?;
        put(&mut grad, o.w2, &to_f64(&dz.t()?.matmul(&s.g)?)?);
        let dg = dz.matmul(&mat(o.w2, d, m)?)?;
        drop(dz);

        // g = gelu(f + b1): df = dg ⊙ gelu'(f + b1), db1 = Σ df.
        let mut df = vec![T::zero(); r * m];
        {
            let (dg_v, f_v) = (view(&dg), view(&s.f));
            let (dg_s, f_s) = (dg_v.slice::<T>()?, f_v.slice::<T>()?);
            let b1 = &ws[o.b1..][..m];
            let n = rows_per_task(m) * m;
            df.par_chunks_mut(n)
                .zip(dg_s.par_chunks(n).zip(f_s.par_chunks(n)))
                .for_each(|(df, (dg, f))| {
                    for (df, (dg, f)) in df.chunks_mut(m).zip(dg.chunks(m).zip(f.chunks(m))) {
                        for j in 0..m {
                            df[j] = dg[j] * gelu_grad(f[j] + b1[j]);
                        }
                    }
                });
        }
        drop(dg);
        put(&mut grad, o.b1, &col_sums(&df, m));
        let df = tensor(df, (r, m))?;
        put(&mut grad, o.w1, &to_f64(&df.t()?.matmul(&s.h2)?)?);
        let dh2 = df.matmul(&mat(o.w1, m, d)?)?;
        drop(df);

        // h2 = norm2(x2); x2 = x + drop1(a + bo): dx2 = dy + norm2'ᵀ dh2, da = drop1(dx2).
        let mut dx2 = vec![T::zero(); r * d];
        let mut da = vec![T::zero(); r * d];
        let (dln2_w, dln2_b) = {
            let (dh2_v, x2_v) = (view(&dh2), view(&s.x2));
            let (dh2_s, x2_s) = (dh2_v.slice::<T>()?, x2_v.slice::<T>()?);
            let w2n = &ws[o.ln2_w..][..d];
            let mask = self.drop.map(|m| m.0);
            let n = rows * d;
            dx2.par_chunks_mut(n)
                .zip(da.par_chunks_mut(n))
                .enumerate()
                .map(|(c, (dx2, da))| {
                    let (mut dw, mut db) = (vec![0.0; d], vec![0.0; d]);
                    let mut acc = vec![0.0; d];
                    let r0 = c * rows;
                    for (ri, (dx2, da)) in dx2.chunks_mut(d).zip(da.chunks_mut(d)).enumerate() {
                        let row = r0 + ri;
                        let at = row * d;
                        acc.iter_mut()
                            .zip(&dys[at..at + d])
                            .for_each(|(a, g)| *a = WithDType::to_f64(*g));
                        norm_row_grad(
                            &x2_s[at..at + d],
                            s.stats2[row],
                            w2n,
                            &dh2_s[at..at + d],
                            &mut acc,
                            &mut dw,
                            &mut db,
                        );
                        for j in 0..d {
                            dx2[j] = T::from_f64(acc[j]);
                            da[j] = T::from_f64(match mask {
                                Some(mk) => acc[j] * mk.factor(at + j),
                                None => acc[j],
                            });
                        }
                    }
                    (dw, db)
                })
                .collect::<Vec<_>>()
                .into_iter()
                .fold((vec![0.0; d], vec![0.0; d]), |a, b| {
                    (add_into(a.0, b.0), add_into(a.1, b.1))
                })
        };
        drop(dh2);
        put(&mut grad, o.ln2_w, &dln2_w);
        put(&mut grad, o.ln2_b, &dln2_b);
        put(&mut grad, o.bo, &col_sums(&da, d));
        let da = tensor(da, (r, d))?;
        put(&mut grad, o.wo, &to_f64(&da.t()?.matmul(&s.o)?)?);
        let doh = da.matmul(&mat(o.wo, d, d)?)?;
        drop(da);

        // Attention, recomputing the probabilities a few sequences at a time; each task writes
        // its rows of dqkv [R, 3d].
        let spt = self.dims.seqs_per_task();
        let scale = 1.0 / (dh as f64).sqrt();
        let mut dqkv = vec![T::zero(); r * 3 * d];
        {
            let bias_v = self.bias.as_ref().map(view);
            let bias_s = bias_v.as_ref().map(|v| v.slice::<T>()).transpose()?;
            let doh_v = view(&doh);
            let doh_s = doh_v.slice::<T>()?;
            dqkv.par_chunks_mut(spt * t * 3 * d)
                .enumerate()
                .try_for_each(|(task, out)| -> Result<()> {
                    let (s0, c) = (task * spt, out.len() / (t * 3 * d));
                    let (qc, kc, vc) = (
                        s.q.narrow(0, s0, c)?,
                        s.k.narrow(0, s0, c)?,
                        s.v.narrow(0, s0, c)?,
                    );
                    let p =
                        self.probs::<T>(&qc, &kc, bias_s.map(|bs| &bs[s0 * t..(s0 + c) * t]))?;
                    // dO in heads: [c, H, T, d_h].
                    let rows_c = &doh_s[s0 * t * d..(s0 + c) * t * d];
                    let mut dyh = vec![T::zero(); c * t * d];
                    for si in 0..c {
                        for ti in 0..t {
                            for hi in 0..h {
                                let src = &rows_c[(si * t + ti) * d + hi * dh..][..dh];
                                dyh[((si * h + hi) * t + ti) * dh..][..dh].copy_from_slice(src);
                            }
                        }
                    }
                    let dyh = tensor(dyh, (c, h, t, dh))?;
                    let dv = p.t()?.matmul(&dyh)?;
                    let dp = dyh.matmul(&vc.t()?)?;
                    // dS = P ⊙ (dP − Σ dP⊙P) per row.
                    let ds = {
                        let (p_v, dp_v) = (view(&p), view(&dp));
                        let (ps, dps) = (p_v.slice::<T>()?, dp_v.slice::<T>()?);
                        let mut ds = vec![T::zero(); ps.len()];
                        for ((ds, p), dp) in ds.chunks_mut(t).zip(ps.chunks(t)).zip(dps.chunks(t)) {
                            let dot = dot_lanes(p, dp);
                            for ((ds, &p), &g) in ds.iter_mut().zip(p).zip(dp) {
                                *ds = p * (g - dot);
                            }
                        }
                        tensor(ds, (c, h, t, t))?
                    };
                    let dq = ds.matmul(&kc)?;
                    let dk = ds.t()?.matmul(&qc)?;
                    let sc = T::from_f64(scale);
                    for (part, (src, mul)) in [(&dq, sc), (&dk, T::one()), (&dv, T::one())]
                        .into_iter()
                        .enumerate()
                    {
                        let sv = view(src);
                        merge_heads(sv.slice::<T>()?, out, c, t, h, dh, part * d, 3 * d, mul);
                    }
                    Ok(())
                })?;
        }
        drop(doh);
        put(&mut grad, o.bqkv, &col_sums(&dqkv, 3 * d));
        let dqkv = tensor(dqkv, (r, 3 * d))?;
        put(&mut grad, o.wqkv, &to_f64(&dqkv.t()?.matmul(&s.h1)?)?);
        let dh1 = dqkv.matmul(&mat(o.wqkv, 3 * d, d)?)?;
        drop(dqkv);

        // h1 = norm1(x): dx = dx2 + norm1'ᵀ dh1.
        let mut dx = vec![T::zero(); r * d];
        let (dln1_w, dln1_b) = {
            let (dh1_v, x_v) = (view(&dh1), view(x));
            let (dh1_s, x_s) = (dh1_v.slice::<T>()?, x_v.slice::<T>()?);
            let w1n = &ws[o.ln1_w..][..d];
            let n = rows * d;
            dx.par_chunks_mut(n)
                .zip(dx2.par_chunks(n))
                .enumerate()
                .map(|(c, (dx, dx2))| {
                    let (mut dw, mut db) = (vec![0.0; d], vec![0.0; d]);
                    let mut acc = vec![0.0; d];
                    for (ri, (dx, dx2)) in dx.chunks_mut(d).zip(dx2.chunks(d)).enumerate() {
                        let row = c * rows + ri;
                        let at = row * d;
                        acc.iter_mut()
                            .zip(dx2)
                            .for_each(|(a, g)| *a = WithDType::to_f64(*g));
                        norm_row_grad(
                            &x_s[at..at + d],
                            s.stats1[row],
                            w1n,
                            &dh1_s[at..at + d],
                            &mut acc,
                            &mut dw,
                            &mut db,
                        );
                        dx.iter_mut()
                            .zip(&acc)
                            .for_each(|(o, &a)| *o = T::from_f64(a));
                    }
                    (dw, db)
                })
                .collect::<Vec<_>>()
                .into_iter()
                .fold((vec![0.0; d], vec![0.0; d]), |a, b| {
                    (add_into(a.0, b.0), add_into(a.1, b.1))
                })
        };
        put(&mut grad, o.ln1_w, &dln1_w);
        put(&mut grad, o.ln1_b, &dln1_b);
        let grad: Vec<T> = grad.into_iter().map(T::from_f64).collect();
        Ok((tensor(dx, (b, t, d))?, tensor(grad, o.total)?))
    }
}

/// Writes heads `src [c, H, T, d_h]` (times `mul`) into columns `col0..col0 + d` of the rows
/// `dst [c·T, width]`.
#[allow(clippy::too_many_arguments)]
fn merge_heads<T: WithDType>(
    src: &[T],
    dst: &mut [T],
    c: usize,
    t: usize,
    h: usize,
    dh: usize,
    col0: usize,
    width: usize,
    mul: T,
) {
    for si in 0..c {
        for hi in 0..h {
            for ti in 0..t {
                let s = &src[((si * h + hi) * t + ti) * dh..][..dh];
                let at = (si * t + ti) * width + col0 + hi * dh;
                for (d, &v) in dst[at..at + dh].iter_mut().zip(s) {
                    *d = v * mul;
                }
            }
        }
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
            DType::F32 => CpuStorage::F32(self.forward_t::<f32>(
                crate::kernels::contiguous(s1, l1)?,
                crate::kernels::contiguous(s2, l2)?,
            )?),
            DType::F64 => CpuStorage::F64(self.forward_t::<f64>(
                crate::kernels::contiguous(s1, l1)?,
                crate::kernels::contiguous(s2, l2)?,
            )?),
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
        let saved = match self.saved.lock() {
            Ok(s) => s.clone(),
            Err(_) => None,
        };
        let Some(saved) = saved else {
            candle_core::bail!("fused layer: backward without a forward pass")
        };
        let g = grad.detach().contiguous()?;
        let (x, w) = (x.detach(), w.detach());
        let (dx, dw) = match x.dtype() {
            DType::F32 => self.backward_t::<f32>(&saved, &x, &w, &g)?,
            DType::F64 => self.backward_t::<f64>(&saved, &x, &w, &g)?,
            dt => candle_core::bail!("fused layer: unsupported dtype {dt:?}"),
        };
        Ok((Some(dx), Some(dw)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dropout::DropoutRng;
    use crate::nn::{key_bias, StackSpec};
    use candle_core::{Device, Var};
    use candle_nn::{VarBuilder, VarMap};

    fn spec(d: usize, h: usize, fused_layer: bool, rng: &DropoutRng) -> StackSpec {
        StackSpec {
            dim: d,
            layers: 2,
            heads: h,
            mlp_dim: 3 * d,
            dropout: 0.25,
            eps: 1e-5,
            fused: true,
            fused_layer,
            rng: rng.clone(),
        }
    }

    fn max_abs(t: &Tensor) -> Result<f64> {
        t.abs()?
            .flatten_all()?
            .max(0)?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()
    }

    /// The fused layer against the tensor-op layer built on the same variables: outputs, and
    /// the gradients of `x` and of every variable, relative to the largest entry.
    fn compare(
        (b, t, d, h): (usize, usize, usize, usize),
        dtype: DType,
        masked: bool,
        train: bool,
        tol: f64,
    ) -> Result<()> {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, dtype, &dev);
        let (ra, rb) = (DropoutRng::new(), DropoutRng::new());
        let fused = TransformerLayer::new(&spec(d, h, true, &ra), vb.pp("layer"))?;
        let plain = TransformerLayer::new(&spec(d, h, false, &rb), vb.pp("layer"))?;
        // At initialisation the biases are 0 and the norms the identity: randomise every
        // variable so that each term of the backward pass matters.
        for var in varmap.all_vars() {
            let r = Tensor::randn(0f32, 0.5, var.shape(), &dev)?.to_dtype(dtype)?;
            var.set(&(r + 0.1)?)?;
        }
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, t, d), &dev)?.to_dtype(dtype)?)?;
        let w = Tensor::randn(0f32, 1.0, (b, t, d), &dev)?.to_dtype(dtype)?;
        // Random keys masked; position 0 always real; the last sequence all padding.
        let mut m = Tensor::rand(0f32, 1.0, (b, t), &dev)?
            .ge(0.3)?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?;
        for (i, row) in m.iter_mut().enumerate() {
            row[0] = 1.0;
            if i == b - 1 {
                row.iter_mut().for_each(|v| *v = 0.0);
            }
        }
        let mask = Tensor::new(m, &dev)?;
        let bias = if masked {
            Some(key_bias(&mask, dtype)?)
        } else {
            None
        };
        ra.reseed(11);
        rb.reseed(11);
        let yf = fused.forward(x.as_tensor(), bias.as_ref(), train)?;
        let yp = plain.forward(x.as_tensor(), bias.as_ref(), train)?;
        let scale = max_abs(&yp)?;
        let diff = max_abs(&(&yf - &yp)?)? / scale;
        assert!(
            diff < tol,
            "{dtype:?} masked={masked} train={train}: output differs by {diff}"
        );
        let gf = (&yf * &w)?.sum_all()?.backward()?;
        let gp = (&yp * &w)?.sum_all()?.backward()?;
        let mut vars: Vec<(String, Var)> = varmap
            .data()
            .lock()
            .map(|d| d.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        assert_eq!(vars.len(), 16);
        vars.push(("x".into(), x));
        let mut global = 0.0f64;
        for (_, var) in &vars {
            if let Some(p) = gp.get(var.as_tensor()) {
                global = global.max(max_abs(p)?);
            }
        }
        for (name, var) in vars {
            let (Some(a), Some(p)) = (gf.get(var.as_tensor()), gp.get(var.as_tensor())) else {
                panic!("{name}: missing gradient")
            };
            if name.ends_with("attn.k.bias") {
                // Adding a vector to every key adds the same q·b to all scores of a row, which
                // the softmax ignores: the true gradient is 0 and both paths give rounding
                // noise.
                assert!(
                    max_abs(a)? < tol * global && max_abs(p)? < tol * global,
                    "{name}"
                );
                continue;
            }
            let scale = max_abs(p)?;
            assert!(scale > 0.0, "{name}: zero gradient");
            let diff = max_abs(&(a - p)?)? / scale;
            assert!(
                diff < tol,
                "{dtype:?} masked={masked} train={train} {name}: gradient differs by {diff}"
            );
        }
        Ok(())
    }

    #[test]
    fn exp_f32_matches_the_exponential() {
        // Every 1/1000 from −90 to 88, against f64's exp.
        let mut worst = 0.0f64;
        for i in -90_000..=88_000 {
            let x = i as f32 / 1000.0;
            let (got, want) = (f64::from(exp_f32(x)), f64::from(x).exp());
            if x < -87.0 {
                assert_eq!(got, 0.0, "{x}");
            } else {
                worst = worst.max((got - want).abs() / want);
            }
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(-1e9), 0.0);
    }

    #[test]
    fn fused_layer_matches_tensor_ops_in_f64() -> Result<()> {
        for (masked, train) in [(true, false), (false, false), (true, true)] {
            compare((3, 7, 8, 2), DType::F64, masked, train, 1e-10)?;
        }
        Ok(())
    }

    #[test]
    fn fused_layer_matches_tensor_ops_in_f32_on_the_parallel_path() -> Result<()> {
        // 12·50 rows of 32: several row tasks and several attention tasks.
        for (masked, train) in [(true, false), (true, true)] {
            compare((12, 50, 32, 4), DType::F32, masked, train, 2e-5)?;
        }
        Ok(())
    }

    #[test]
    fn dropout_seeds_change_the_output_and_inference_ignores_them() -> Result<()> {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let rng = DropoutRng::new();
        let layer = TransformerLayer::new(
            &spec(8, 2, true, &rng),
            VarBuilder::from_varmap(&varmap, DType::F32, &dev),
        )?;
        let x = Tensor::randn(0f32, 1.0, (2, 5, 8), &dev)?;
        let run = |seed: u64, train: bool| -> Result<Vec<f32>> {
            rng.reseed(seed);
            layer
                .forward(&x, None, train)?
                .flatten_all()?
                .to_vec1::<f32>()
        };
        assert_eq!(run(1, true)?, run(1, true)?);
        assert_ne!(run(1, true)?, run(2, true)?);
        assert_eq!(run(1, false)?, run(2, false)?);
        Ok(())
    }
}
