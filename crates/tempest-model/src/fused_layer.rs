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
//! [`crate::kernels::attention`]; those small
//! products run in parallel over sequences (each is below gemm's threading threshold and would
//! otherwise run on one thread).
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
//! agree for any seed; `tests` compare them, forward and backward.

use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp2, DType, Layout, Result, Shape, Storage, StorageRef, Tensor, WithDType,
};
use num_traits::Float;
use rayon::prelude::*;

use crate::dropout::Mask;
use crate::nn::{TransformerLayer, MASK_BIAS};

/// √(2/π) and the cubic coefficient of GELU's tanh approximation (as in [`crate::kernels`]).
const GELU_K: f64 = 2.0 * 0.797_884_560_802_865_4;
const GELU_C: f64 = 0.044_715;

/// The element types of the fused layer, with the exponential it uses: for f32 a polynomial
/// that the compiler vectorises (libm's `expf` is a scalar call per element, and the softmax
/// and GELU take hundreds of millions of them per training step); f64 keeps `exp`, so the f64
/// path stays exact for the gradient checks.
pub(crate) trait Elem:
    WithDType + Float + std::ops::AddAssign + std::ops::MulAssign + crate::scratch::Pooled
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

/// Bytes of attention probabilities a layer keeps from its forward pass for its backward pass
/// (all of its tasks' or none): `small` on the MP3 bench batch (8 items of 28 blocks of 144
/// bytes) needs 74 MB per E_t layer, 600 MB at 64 items, where recomputing is the better deal.
const PROBS_BUDGET: usize = 128 << 20;

static PROBS_BUDGET_NOW: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(PROBS_BUDGET);

fn probs_budget() -> usize {
    PROBS_BUDGET_NOW.load(std::sync::atomic::Ordering::Relaxed)
}

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

/// Which rows of a layer's input are real, and how the attention is cut into tasks.
///
/// A row is real when its key bias is above `MASK_BIAS / 2` (or when there is no bias): the
/// per-token work (layer norms, projections, MLP) runs on the real rows gathered into a compact
/// matrix, and each sequence's attention runs over its real positions only. Compact rows come
/// sequence after sequence, longest sequence first, so that a task of consecutive sequences is
/// padded only to its own longest member.
#[derive(Debug)]
struct Plan {
    /// Compact row → row of `x [B·T, d]`; a sequence's real positions in ascending order.
    row_of: Vec<usize>,
    /// `row_of` is the identity (no padding): nothing to gather or scatter.
    identity: bool,
    /// Per sequence of the batch: its first compact row and its number of real positions.
    seq_rows: Vec<(usize, usize)>,
    tasks: Vec<Task>,
}

/// Consecutive sequences whose attention runs together as `[c, H, tt, d_h]` products.
#[derive(Debug)]
struct Task {
    /// The task's compact rows are `row0..row0 + rows`.
    row0: usize,
    rows: usize,
    /// Real positions of each of its sequences, in order (rows follow one another from row0).
    lens: Vec<usize>,
    /// Positions per sequence in the task's products: its longest sequence.
    tt: usize,
    /// Whether a key must be masked (a key bias, or sequences shorter than `tt`).
    masked: bool,
}

impl Plan {
    /// The plan for `b` sequences of `t` positions with `h` heads, from the key bias `[B·T]`.
    fn new<T: WithDType>(bias: Option<&[T]>, b: usize, t: usize, h: usize) -> Plan {
        let real = |i: usize| bias.is_none_or(|bs| bs[i].to_f64() > MASK_BIAS / 2.0);
        let lens: Vec<usize> = (0..b)
            .map(|s| (0..t).filter(|&j| real(s * t + j)).count())
            .collect();
        let mut order: Vec<usize> = (0..b).filter(|&s| lens[s] > 0).collect();
        // Stable: without padding the order (and so every product) is the batch's own.
        order.sort_by_key(|&s| std::cmp::Reverse(lens[s]));
        let mut row_of = Vec::with_capacity(lens.iter().sum());
        let mut seq_rows = vec![(0, 0); b];
        for &s in &order {
            seq_rows[s] = (row_of.len(), lens[s]);
            row_of.extend((0..t).filter(|&j| real(s * t + j)).map(|j| s * t + j));
        }
        let identity = row_of.len() == b * t && row_of.iter().enumerate().all(|(i, &r)| i == r);
        // Tasks: at most TASK_SCORES scores, and at least 4 tasks per thread where there are
        // enough sequences.
        let max_seqs = (order.len() / (4 * rayon::current_num_threads()).max(1)).max(1);
        let mut tasks = Vec::new();
        let mut at = 0;
        let mut row0 = 0;
        while at < order.len() {
            let tt = lens[order[at]];
            let by_size = (TASK_SCORES / (h * tt * tt).max(1)).max(1);
            let c = by_size.min(max_seqs).min(order.len() - at);
            let task_lens: Vec<usize> = order[at..at + c].iter().map(|&s| lens[s]).collect();
            let rows = task_lens.iter().sum();
            tasks.push(Task {
                row0,
                rows,
                masked: bias.is_some() || task_lens.iter().any(|&n| n < tt),
                lens: task_lens,
                tt,
            });
            at += c;
            row0 += rows;
        }
        Plan {
            row_of,
            identity,
            seq_rows,
            tasks,
        }
    }

    /// Real rows.
    fn rows(&self) -> usize {
        self.row_of.len()
    }

    /// The real rows of `src [B·T, width]`, compact, in a buffer of the scratch pool; `None`
    /// when there is no padding (`src` itself is compact).
    fn gather<T: Elem>(&self, src: &[T], width: usize) -> Option<Vec<T>> {
        if self.identity {
            return None;
        }
        let mut out = T::pool().take(self.rows() * width);
        let per = rows_per_task(width);
        out.par_chunks_mut(per * width)
            .enumerate()
            .for_each(|(c, out)| {
                for (i, row) in out.chunks_mut(width).enumerate() {
                    let r = self.row_of[c * per + i];
                    row.copy_from_slice(&src[r * width..][..width]);
                }
            });
        Some(out)
    }

    /// `base [B·T, width]` with its real rows replaced by the compact rows of `rows`.
    fn scatter<T: Elem>(&self, rows: Vec<T>, base: &[T], t: usize, width: usize) -> Vec<T> {
        if self.identity {
            return rows;
        }
        let mut out = T::pool().copy_of(base);
        out.par_chunks_mut(t * width)
            .enumerate()
            .for_each(|(s, out)| {
                let (r0, n) = self.seq_rows[s];
                for r in r0..r0 + n {
                    let at = (self.row_of[r] - s * t) * width;
                    out[at..at + width].copy_from_slice(&rows[r * width..][..width]);
                }
            });
        T::pool().give(rows);
        out
    }

    /// The task's key bias `[c, tt]`: the layer's bias at real positions, `MASK_BIAS` where a
    /// sequence is shorter than `tt`.
    fn task_bias<T: WithDType>(&self, task: &Task, bias: Option<&[T]>) -> Option<Vec<T>> {
        if !task.masked {
            return None;
        }
        let mut out = vec![T::from_f64(MASK_BIAS); task.lens.len() * task.tt];
        let mut r = task.row0;
        for (si, &n) in task.lens.iter().enumerate() {
            for j in 0..n {
                out[si * task.tt + j] = bias.map_or(T::zero(), |bs| bs[self.row_of[r + j]]);
            }
            r += n;
        }
        Some(out)
    }
}

/// Splits `buf` into consecutive pieces of `rows · width` elements, one per task.
fn split_tasks<'a, T>(mut buf: &'a mut [T], tasks: &[Task], width: usize) -> Vec<&'a mut [T]> {
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        let (head, rest) = buf.split_at_mut(task.rows * width);
        out.push(head);
        buf = rest;
    }
    out
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

/// A buffer as a storage (no copy).
fn store<T: Elem>(v: Vec<T>) -> CpuStorage {
    T::to_cpu_storage_owned(v)
}

/// A storage's elements.
fn elems<T: Elem>(s: &CpuStorage) -> Result<&[T]> {
    T::cpu_storage_as_slice(s)
}

/// `[rows, cols]` row-major at `offset`.
fn mat_at(rows: usize, cols: usize, offset: usize) -> Layout {
    Layout::new(Shape::from((rows, cols)), vec![cols, 1], offset)
}

/// The transpose `[cols, rows]` of a row-major `[rows, cols]` at `offset`.
fn mat_t_at(rows: usize, cols: usize, offset: usize) -> Layout {
    Layout::new(Shape::from((cols, rows)), vec![1, cols], offset)
}

/// `[c, H, a, b]` contiguous.
fn heads(c: usize, h: usize, a: usize, b: usize) -> Layout {
    Layout::contiguous((c, h, a, b))
}

/// The transpose `[c, H, b, a]` of a contiguous `[c, H, a, b]`.
fn heads_t(c: usize, h: usize, a: usize, b: usize) -> Layout {
    Layout::new(Shape::from((c, h, b, a)), vec![h * a * b, a * b, 1, b], 0)
}

/// The index one past the last element a layout reads.
fn extent(l: &Layout) -> usize {
    if l.dims().contains(&0) {
        return l.start_offset();
    }
    l.start_offset()
        + l.dims()
            .iter()
            .zip(l.stride())
            .map(|(&n, &s)| (n - 1) * s)
            .sum::<usize>()
        + 1
}

/// `a · b` by candle's CPU matmul (gemm) on storages seen through layouts, without tensors or
/// copies: `a [.., m, k]`, `b [.., k, n]` with the same leading dimensions → `[.., m, n]`
/// row-major. Layouts must be contiguous batches of matrices with unit row or column stride.
fn mm<T: Elem>(a: &CpuStorage, la: &Layout, b: &CpuStorage, lb: &Layout) -> Result<Vec<T>> {
    let (ad, bd) = (la.dims(), lb.dims());
    let r = ad.len();
    if r < 2 || bd.len() != r || ad[..r - 2] != bd[..r - 2] || ad[r - 1] != bd[r - 2] {
        candle_core::bail!("fused layer: matmul of {ad:?} and {bd:?}");
    }
    // candle's matmul trusts the layouts: check that they stay inside the storages.
    if extent(la) > elems::<T>(a)?.len() || extent(lb) > elems::<T>(b)?.len() {
        candle_core::bail!("fused layer: matmul layout outside its storage");
    }
    let (m, k, n) = (ad[r - 2], ad[r - 1], bd[r - 1]);
    let batch: usize = ad[..r - 2].iter().product();
    if batch * m * n * k == 0 {
        return Ok(vec![T::zero(); batch * m * n]);
    }
    T::cpu_storage_data(a.matmul(b, (batch, m, n, k), la, lb)?)
}

/// Elements of a product [`mm_rows`] computes at once (1 MB in f32): outputs this small are
/// recycled by the allocator's heap, where whole products of `[R', ·]` would be fresh pages.
/// Tests cut their small products into several parts too.
const MM_CHUNK: usize = if cfg!(test) { 1 << 10 } else { 1 << 18 };

/// `a · b` for the rows `a [rows, k]` at offset `a_at` of `a` and `b [k, n]` seen through
/// `lb`, into a buffer of the scratch pool, a few rows at a time (each part by [`mm`]).
fn mm_rows<T: Elem>(
    a: &CpuStorage,
    a_at: usize,
    (rows, k): (usize, usize),
    b: &CpuStorage,
    lb: &Layout,
) -> Result<Vec<T>> {
    let n = lb.dims().get(1).copied().unwrap_or(0);
    let mut out = T::pool().take(rows * n);
    if out.is_empty() {
        return Ok(out);
    }
    let step = (MM_CHUNK / n).max(1);
    for (c, dst) in out.chunks_mut(step * n).enumerate() {
        let part = mm::<T>(a, &mat_at(dst.len() / n, k, a_at + c * step * k), b, lb)?;
        dst.copy_from_slice(&part);
    }
    Ok(out)
}

/// A product's elements in f64 (the weight gradient is put together in f64).
fn to_f64s<T: WithDType>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64()).collect()
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
            Storage::Cpu(s) => crate::kernels::contiguous(s, self.layout),
            _ => candle_core::bail!("fused layer: tensor is not on the CPU"),
        }
    }
}

fn tensor<T: WithDType>(v: Vec<T>, shape: impl Into<Shape>) -> Result<Tensor> {
    Tensor::from_vec(v, shape, &candle_core::Device::Cpu)
}

/// Rows per parallel task for rows of `width` elements.
pub(crate) fn rows_per_task(width: usize) -> usize {
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

/// Runs `f` on what an op's forward pass kept in `saved`, holding the lock through it; an
/// error naming `op` when a backward pass panicked with it held or no forward pass ran.
pub(crate) fn with_saved<S, R>(
    saved: &Mutex<Option<S>>,
    op: &str,
    f: impl FnOnce(&S) -> Result<R>,
) -> Result<R> {
    let guard = saved
        .lock()
        .map_err(|_| candle_core::Error::msg(format!("{op}: a backward pass panicked")))?;
    let Some(saved) = guard.as_ref() else {
        candle_core::bail!("{op}: backward without a forward pass")
    };
    f(saved)
}

pub(crate) fn add_into(mut a: Vec<f64>, b: Vec<f64>) -> Vec<f64> {
    a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
    a
}

/// The per-task (weight, bias) gradient sums of a norm's backward pass, added in task order.
pub(crate) trait SumPairs {
    /// The two sums, each `d` long.
    fn sum_pairs(self, d: usize) -> (Vec<f64>, Vec<f64>);
}

impl SumPairs for Vec<(Vec<f64>, Vec<f64>)> {
    fn sum_pairs(self, d: usize) -> (Vec<f64>, Vec<f64>) {
        self.into_iter().fold((vec![0.0; d], vec![0.0; d]), |a, b| {
            (add_into(a.0, b.0), add_into(a.1, b.1))
        })
    }
}

/// Layer norm of one row into `out`; returns (mean, 1/σ).
#[inline]
pub(crate) fn norm_row<T: WithDType>(
    x: &[T],
    w: &[T],
    b: &[T],
    eps: f64,
    out: &mut [T],
) -> (f64, f64) {
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
pub(crate) fn norm_row_grad<T: WithDType>(
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
pub(crate) fn pack(l: &TransformerLayer) -> Result<Tensor> {
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
    let w = pack(layer)?;
    let x = x.contiguous()?;
    let op = FusedLayer::new(layer, x.dims3()?, bias, p, x.track_op() || w.track_op())?;
    Ok(Some(x.apply_op2(&w, op)?))
}

impl FusedLayer {
    /// The op of `layer` on `x [B, T, d]` (`dims`), with the key bias and dropout probability
    /// of [`forward`]; `keep`: whether a backward pass can follow. Draws the layer's dropout
    /// seeds.
    pub(crate) fn new(
        layer: &TransformerLayer,
        (b, t, d): (usize, usize, usize),
        bias: Option<&Tensor>,
        p: f32,
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
            let attn = Mask::new(layer.rng.next_seed(), p);
            let mlp = Mask::new(layer.rng.next_seed(), p);
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

impl FusedLayer {
    /// The forward pass: `xs [B·T, d]` and the packed weights `wst` (seen through `wl`).
    fn forward_t<T: Elem>(&self, xs: &[T], wst: &CpuStorage, wl: &Layout) -> Result<Vec<T>> {
        let Dims { b, t, d, h, m } = self.dims;
        let dh = self.dims.dh();
        let o = self.dims.offsets();
        let ws = crate::kernels::contiguous::<T>(wst, wl)?;
        let w0 = wl.start_offset();
        if xs.len() != self.dims.rows() * d || ws.len() != o.total || h == 0 || d % h != 0 {
            candle_core::bail!(
                "fused layer: {} inputs, {} weights for {:?}",
                xs.len(),
                ws.len(),
                self.dims
            );
        }
        let pool = T::pool();
        let bias_v = self.bias.as_ref().map(view);
        let bias_s = bias_v.as_ref().map(|v| v.slice::<T>()).transpose()?;
        let plan = Arc::new(Plan::new(bias_s, b, t, h));
        let r = plan.rows();
        if r == 0 {
            // Only padding: the layer passes its input through.
            self.save(Saved { plan, acts: None });
            return Ok(pool.copy_of(xs));
        }
        let xs_full = xs;
        let gathered = plan.gather(xs_full, d);
        let xs: &[T] = gathered.as_deref().unwrap_or(xs_full);
        let row_of = &plan.row_of;
        // `x·Wᵀ` for the weight `W [rows, cols]` at `at` of the packed vector.
        let wt = |at: usize, rows: usize, cols: usize| mat_t_at(rows, cols, w0 + at);
        let rows = rows_per_task(d);

        // norm1
        let mut h1 = pool.take(r * d);
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
        let h1 = store(h1);

        // q, k, v: one product; then per attention task the bias, the split into heads and
        // q's scale in one pass, the attention, and the heads merged into the task's rows of
        // `o [R', d]`.
        let qkv = mm_rows::<T>(&h1, 0, (r, d), wst, &wt(o.wqkv, 3 * d, d))?;
        let scale = 1.0 / (dh as f64).sqrt();
        let mut oh = pool.take(r * d);
        // Keep the probabilities for the backward pass (one product and one softmax fewer per
        // task there) when all of the layer's fit the budget.
        let scores: usize = plan
            .tasks
            .iter()
            .map(|task| task.lens.len() * h * task.tt * task.tt)
            .sum();
        let keep_probs = self.keep && scores * std::mem::size_of::<T>() <= probs_budget();
        let qkv_saved = {
            let bqkv = &ws[o.bqkv..][..3 * d];
            let sc = T::from_f64(scale);
            plan.tasks
                .par_iter()
                .zip(split_tasks(&mut oh, &plan.tasks, d))
                .map(|(task, out)| -> Result<TaskActs> {
                    let (c, tt) = (task.lens.len(), task.tt);
                    let src = &qkv[task.row0 * 3 * d..][..task.rows * 3 * d];
                    let heads_of = |part: usize, mul: T| {
                        let add = &bqkv[part * d..][..d];
                        store(split_heads(
                            src,
                            3 * d,
                            part * d,
                            Some(add),
                            mul,
                            task,
                            h,
                            dh,
                        ))
                    };
                    let (q, k, v) = (
                        heads_of(0, sc),
                        heads_of(1, T::one()),
                        heads_of(2, T::one()),
                    );
                    let tb = plan.task_bias(task, bias_s);
                    let p = probs::<T>(&q, &k, (c, h, tt, dh), tb.as_deref())?;
                    let y = mm::<T>(&p, &heads(c, h, tt, tt), &v, &heads(c, h, tt, dh))?;
                    merge_heads(&y, out, task, h, dh, 0, d, T::one());
                    let p = if keep_probs {
                        Some(p)
                    } else {
                        crate::scratch::recycle(p);
                        None
                    };
                    Ok(TaskActs { q, k, v, p })
                })
                .collect::<Result<Vec<_>>>()?
        };
        pool.give(qkv);
        let oh = store(oh);

        // Output projection, then bias, dropout, residual and norm2 in one pass per row.
        let a = mm_rows::<T>(&oh, 0, (r, d), wst, &wt(o.wo, d, d))?;
        let mut x2 = pool.take(r * d);
        let mut h2 = pool.take(r * d);
        let stats2: Vec<(f64, f64)> = {
            let bo = &ws[o.bo..][..d];
            let mask = self.drop.map(|m| m.0);
            x2.par_chunks_mut(rows * d)
                .zip(h2.par_chunks_mut(rows * d))
                .enumerate()
                .flat_map_iter(|(c, (x2, h2))| {
                    let base = c * rows * d;
                    for (j, x2j) in x2.iter_mut().enumerate() {
                        let i = base + j;
                        let av = WithDType::to_f64(a[i]) + WithDType::to_f64(bo[j % d]);
                        let av = match mask {
                            // The mask of the element's place in the full layout, as the
                            // tensor-op path draws it.
                            Some(mk) => av * mk.factor(row_of[i / d] * d + i % d),
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
        pool.give(a);
        let h2 = store(h2);

        // MLP: fc1, bias + GELU in one pass, fc2, then bias, dropout and residual in one pass.
        let f = mm_rows::<T>(&h2, 0, (r, d), wst, &wt(o.w1, m, d))?;
        let mut g = pool.take(r * m);
        {
            let b1 = &ws[o.b1..][..m];
            g.par_chunks_mut(rows_per_task(m) * m)
                .zip(f.par_chunks(rows_per_task(m) * m))
                .for_each(|(g, f)| {
                    for (g, f) in g.chunks_mut(m).zip(f.chunks(m)) {
                        for ((g, &f), &b) in g.iter_mut().zip(f).zip(b1) {
                            *g = gelu(f + b);
                        }
                    }
                });
        }
        let g = store(g);
        let z = mm_rows::<T>(&g, 0, (r, m), wst, &wt(o.w2, d, m))?;
        let mut y = pool.take(r * d);
        {
            let b2 = &ws[o.b2..][..d];
            let mask = self.drop.map(|m| m.1);
            y.par_chunks_mut(rows * d)
                .zip(x2.par_chunks(rows * d))
                .enumerate()
                .for_each(|(c, (y, x2))| {
                    let base = c * rows * d;
                    for (j, (y, x2)) in y.iter_mut().zip(x2).enumerate() {
                        let i = base + j;
                        let zv = WithDType::to_f64(z[i]) + WithDType::to_f64(b2[j % d]);
                        let zv = match mask {
                            Some(mk) => zv * mk.factor(row_of[i / d] * d + i % d),
                            None => zv,
                        };
                        *y = T::from_f64(WithDType::to_f64(*x2) + zv);
                    }
                });
        }
        pool.give(z);
        let y = plan.scatter(y, xs_full, t, d);
        if let Some(v) = gathered {
            pool.give(v);
        }
        let acts = Activations {
            h1,
            stats1,
            stats2,
            qkv: qkv_saved,
            o: oh,
            x2: store(x2),
            h2,
            f: store(f),
            g,
        };
        self.save(Saved {
            plan,
            acts: Some(acts),
        });
        Ok(y)
    }

    /// Keeps what the backward pass needs, when one can follow (otherwise the activations'
    /// buffers go back to the pool here).
    fn save(&self, saved: Saved) {
        if self.keep {
            if let Ok(mut s) = self.saved.lock() {
                *s = Some(saved);
            }
        }
    }

    /// The gradients of `x` and of the packed weights `w` for the output's gradient `dy`.
    fn backward_t<T: Elem>(
        &self,
        saved: &Saved,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let Dims { b, t, d, h, m } = self.dims;
        let dh = self.dims.dh();
        let o = self.dims.offsets();
        let pool = T::pool();
        let plan = &saved.plan;
        let row_of = &plan.row_of;
        let r = plan.rows();
        let dy_v = view(dy);
        let dys_full = dy_v.slice::<T>()?;
        let Some(s) = &saved.acts else {
            // The identity: dx = dy, no weight gradient.
            let zeros = vec![T::zero(); o.total];
            return Ok((
                tensor(pool.copy_of(dys_full), (b, t, d))?,
                tensor(zeros, o.total)?,
            ));
        };
        let rows = rows_per_task(d);
        let w_v = view(w);
        let ws = w_v.slice::<T>()?;
        let (wst, w0) = (w_v.cpu()?, w_v.layout.start_offset());
        let mut grad = vec![0.0f64; o.total];
        let put = |grad: &mut Vec<f64>, at: usize, vals: &[f64]| {
            grad[at..at + vals.len()].copy_from_slice(vals)
        };
        // The output's gradient at the real rows, as a storage and an offset into it.
        let dy_st = dy_v.cpu()?;
        let gathered = plan.gather(dys_full, d).map(store);
        let (dys_st, dys_at) = match &gathered {
            Some(g) => (g, 0),
            None => (dy_st, dy_v.layout.start_offset()),
        };
        let dys = &elems::<T>(dys_st)?[dys_at..][..r * d];

        // y = x2 + drop2(z + b2): dz = drop2(dy), db2 = Σ dz.
        let masked = self.drop.map(|m| m.1).map(|mk| {
            let mut dz = pool.take(r * d);
            dz.par_iter_mut()
                .zip(dys.par_iter())
                .enumerate()
                .for_each(|(i, (o, &g))| {
                    *o = T::from_f64(WithDType::to_f64(g) * mk.factor(row_of[i / d] * d + i % d))
                });
            store(dz)
        });
        let (dz_st, dz_at) = match &masked {
            Some(s) => (s, 0),
            None => (dys_st, dys_at),
        };
        put(
            &mut grad,
            o.b2,
            &col_sums(&elems::<T>(dz_st)?[dz_at..][..r * d], d),
        );
        let dw2 = mm::<T>(dz_st, &mat_t_at(r, d, dz_at), &s.g, &mat_at(r, m, 0))?;
        put(&mut grad, o.w2, &to_f64s(&dw2));
        let dg = mm_rows::<T>(dz_st, dz_at, (r, d), wst, &mat_at(d, m, w0 + o.w2))?;
        if let Some(s) = masked {
            crate::scratch::recycle(s);
        }

        // g = gelu(f + b1): df = dg ⊙ gelu'(f + b1), db1 = Σ df.
        let mut df = pool.take(r * m);
        {
            let f_s = elems::<T>(&s.f)?;
            let b1 = &ws[o.b1..][..m];
            let n = rows_per_task(m) * m;
            df.par_chunks_mut(n)
                .zip(dg.par_chunks(n).zip(f_s.par_chunks(n)))
                .for_each(|(df, (dg, f))| {
                    for (df, (dg, f)) in df.chunks_mut(m).zip(dg.chunks(m).zip(f.chunks(m))) {
                        for j in 0..m {
                            df[j] = dg[j] * gelu_grad(f[j] + b1[j]);
                        }
                    }
                });
        }
        pool.give(dg);
        put(&mut grad, o.b1, &col_sums(&df, m));
        let df = store(df);
        let dw1 = mm::<T>(&df, &mat_t_at(r, m, 0), &s.h2, &mat_at(r, d, 0))?;
        put(&mut grad, o.w1, &to_f64s(&dw1));
        let dh2 = mm_rows::<T>(&df, 0, (r, m), wst, &mat_at(m, d, w0 + o.w1))?;
        crate::scratch::recycle(df);

        // h2 = norm2(x2); x2 = x + drop1(a + bo): dx2 = dy + norm2'ᵀ dh2, da = drop1(dx2).
        let mut dx2 = pool.take(r * d);
        let mut da = pool.take(r * d);
        let (dln2_w, dln2_b) = {
            let x2_s = elems::<T>(&s.x2)?;
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
                            &dh2[at..at + d],
                            &mut acc,
                            &mut dw,
                            &mut db,
                        );
                        let full = row_of[row] * d;
                        for j in 0..d {
                            dx2[j] = T::from_f64(acc[j]);
                            da[j] = T::from_f64(match mask {
                                Some(mk) => acc[j] * mk.factor(full + j),
                                None => acc[j],
                            });
                        }
                    }
                    (dw, db)
                })
                .collect::<Vec<_>>()
                .sum_pairs(d)
        };
        pool.give(dh2);
        if let Some(g) = gathered {
            crate::scratch::recycle(g);
        }
        put(&mut grad, o.ln2_w, &dln2_w);
        put(&mut grad, o.ln2_b, &dln2_b);
        put(&mut grad, o.bo, &col_sums(&da, d));
        let da = store(da);
        let dwo = mm::<T>(&da, &mat_t_at(r, d, 0), &s.o, &mat_at(r, d, 0))?;
        put(&mut grad, o.wo, &to_f64s(&dwo));
        let doh = mm_rows::<T>(&da, 0, (r, d), wst, &mat_at(d, d, w0 + o.wo))?;
        crate::scratch::recycle(da);

        // Attention, with the kept probabilities or recomputing them task by task; each task
        // writes its rows of dqkv [R', 3d].
        let scale = 1.0 / (dh as f64).sqrt();
        let mut dqkv = pool.take(r * 3 * d);
        {
            let bias_v = self.bias.as_ref().map(view);
            let bias_s = bias_v.as_ref().map(|v| v.slice::<T>()).transpose()?;
            plan.tasks
                .par_iter()
                .zip(s.qkv.par_iter())
                .zip(split_tasks(&mut dqkv, &plan.tasks, 3 * d))
                .try_for_each(|((task, acts), out)| -> Result<()> {
                    let (c, tt) = (task.lens.len(), task.tt);
                    let fresh = match &acts.p {
                        Some(_) => None,
                        None => Some(probs::<T>(
                            &acts.q,
                            &acts.k,
                            (c, h, tt, dh),
                            plan.task_bias(task, bias_s).as_deref(),
                        )?),
                    };
                    let Some(p) = acts.p.as_ref().or(fresh.as_ref()) else {
                        candle_core::bail!("fused layer: no attention probabilities")
                    };
                    // dO in heads: [c, H, tt, d_h], zero beyond each sequence's length.
                    let src = &doh[task.row0 * d..][..task.rows * d];
                    let dyh = store(split_heads(src, d, 0, None, T::one(), task, h, dh));
                    let dv = mm::<T>(p, &heads_t(c, h, tt, tt), &dyh, &heads(c, h, tt, dh))?;
                    let dp = mm::<T>(&dyh, &heads(c, h, tt, dh), &acts.v, &heads_t(c, h, tt, dh))?;
                    crate::scratch::recycle(dyh);
                    // dS = P ⊙ (dP − Σ dP⊙P) per row.
                    let ds = {
                        let ps = elems::<T>(p)?;
                        let mut ds = T::pool().take(ps.len());
                        for ((ds, p), dp) in ds.chunks_mut(tt).zip(ps.chunks(tt)).zip(dp.chunks(tt))
                        {
                            let dot = dot_lanes(p, dp);
                            for ((ds, &p), &g) in ds.iter_mut().zip(p).zip(dp) {
                                *ds = p * (g - dot);
                            }
                        }
                        store(ds)
                    };
                    drop(dp);
                    if let Some(p) = fresh {
                        crate::scratch::recycle(p);
                    }
                    let dq = mm::<T>(&ds, &heads(c, h, tt, tt), &acts.k, &heads(c, h, tt, dh))?;
                    let dk = mm::<T>(&ds, &heads_t(c, h, tt, tt), &acts.q, &heads(c, h, tt, dh))?;
                    crate::scratch::recycle(ds);
                    let sc = T::from_f64(scale);
                    for (part, (src, mul)) in [(&dq, sc), (&dk, T::one()), (&dv, T::one())]
                        .into_iter()
                        .enumerate()
                    {
                        merge_heads(src, out, task, h, dh, part * d, 3 * d, mul);
                    }
                    Ok(())
                })?;
        }
        pool.give(doh);
        put(&mut grad, o.bqkv, &col_sums(&dqkv, 3 * d));
        let dqkv = store(dqkv);
        let dwqkv = mm::<T>(&dqkv, &mat_t_at(r, 3 * d, 0), &s.h1, &mat_at(r, d, 0))?;
        put(&mut grad, o.wqkv, &to_f64s(&dwqkv));
        let dh1 = mm_rows::<T>(&dqkv, 0, (r, 3 * d), wst, &mat_at(3 * d, d, w0 + o.wqkv))?;
        crate::scratch::recycle(dqkv);

        // h1 = norm1(x): dx = dx2 + norm1'ᵀ dh1.
        let mut dx = pool.take(r * d);
        let x_v = view(x);
        let xs_full = x_v.slice::<T>()?;
        let xs_gathered = plan.gather(xs_full, d);
        let xs: &[T] = xs_gathered.as_deref().unwrap_or(xs_full);
        let (dln1_w, dln1_b) = {
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
                            &xs[at..at + d],
                            s.stats1[row],
                            w1n,
                            &dh1[at..at + d],
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
                .sum_pairs(d)
        };
        pool.give(dx2);
        pool.give(dh1);
        if let Some(v) = xs_gathered {
            pool.give(v);
        }
        put(&mut grad, o.ln1_w, &dln1_w);
        put(&mut grad, o.ln1_b, &dln1_b);
        let grad: Vec<T> = grad.into_iter().map(T::from_f64).collect();
        // Padding rows pass their input through: their gradient passes through too.
        let dx = plan.scatter(dx, dys_full, t, d);
        Ok((tensor(dx, (b, t, d))?, tensor(grad, o.total)?))
    }
}

/// Softmax of `q·kᵀ` plus the key bias `[c, tt]`: `q`, `k` `[c, H, tt, d_h]` →
/// `[c, H, tt, tt]`.
fn probs<T: Elem>(
    q: &CpuStorage,
    k: &CpuStorage,
    (c, h, tt, dh): (usize, usize, usize, usize),
    bias: Option<&[T]>,
) -> Result<CpuStorage> {
    let s = mm::<T>(q, &heads(c, h, tt, dh), k, &heads_t(c, h, tt, dh))?;
    let mut p = T::pool().take(s.len());
    softmax_rows(&s, &mut p, tt, h * tt, bias);
    Ok(store(p))
}

/// Reads columns `col0..col0 + d` of a task's compact rows `src [rows, width]`, plus `add`,
/// times `mul`, into heads `[c, H, tt, d_h]`; positions beyond a sequence's length are 0.
#[allow(clippy::too_many_arguments)]
fn split_heads<T: Elem>(
    src: &[T],
    width: usize,
    col0: usize,
    add: Option<&[T]>,
    mul: T,
    task: &Task,
    h: usize,
    dh: usize,
) -> Vec<T> {
    let tt = task.tt;
    let mut out = T::pool().take(task.lens.len() * h * tt * dh);
    let mut row = 0;
    for (si, &n) in task.lens.iter().enumerate() {
        for hi in 0..h {
            let head = (si * h + hi) * tt * dh;
            out[head + n * dh..head + tt * dh].fill(T::zero());
        }
        for ti in 0..n {
            let s = &src[(row + ti) * width + col0..][..h * dh];
            for hi in 0..h {
                let dst = &mut out[((si * h + hi) * tt + ti) * dh..][..dh];
                let s = &s[hi * dh..][..dh];
                match add {
                    Some(a) => {
                        let a = &a[hi * dh..][..dh];
                        for ((o, &v), &a) in dst.iter_mut().zip(s).zip(a) {
                            *o = (v + a) * mul;
                        }
                    }
                    None => dst.iter_mut().zip(s).for_each(|(o, &v)| *o = v * mul),
                }
            }
        }
        row += n;
    }
    out
}

/// Writes heads `src [c, H, tt, d_h]` (times `mul`) into columns `col0..col0 + d` of a task's
/// compact rows `dst [rows, width]`: each sequence's real positions only.
#[allow(clippy::too_many_arguments)]
fn merge_heads<T: WithDType>(
    src: &[T],
    dst: &mut [T],
    task: &Task,
    h: usize,
    dh: usize,
    col0: usize,
    width: usize,
    mul: T,
) {
    let tt = task.tt;
    let mut row = 0;
    for (si, &n) in task.lens.iter().enumerate() {
        for hi in 0..h {
            for ti in 0..n {
                let s = &src[((si * h + hi) * tt + ti) * dh..][..dh];
                let at = (row + ti) * width + col0 + hi * dh;
                for (d, &v) in dst[at..at + dh].iter_mut().zip(s) {
                    *d = v * mul;
                }
            }
        }
        row += n;
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
                s2,
                l2,
            )?),
            DType::F64 => CpuStorage::F64(self.forward_t::<f64>(
                crate::kernels::contiguous(s1, l1)?,
                s2,
                l2,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dropout::DropoutRng;
    use crate::nn::{key_bias, StackSpec};
    use crate::scratch::Pooled;
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
        compare_with(
            (b, t, d, h),
            dtype,
            masked.then_some(Keys::Random),
            train,
            tol,
        )
    }

    /// Which keys are real in [`compare_with`].
    enum Keys<'a> {
        /// Random keys masked; position 0 always real; the last sequence all padding.
        Random,
        /// Sequence `i` is real on its first `lens[i]` positions (right padding, as batches
        /// are built).
        Prefix(&'a [usize]),
    }

    /// As [`compare`], with the keys given. Only real positions are compared, and only they
    /// carry a loss (the fused layer passes padding rows through, the tensor-op layer computes
    /// them): the fused layer's padding rows must equal its input exactly, with the gradient
    /// of `x` passed through.
    fn compare_with(
        (b, t, d, h): (usize, usize, usize, usize),
        dtype: DType,
        keys: Option<Keys<'_>>,
        train: bool,
        tol: f64,
    ) -> Result<()> {
        let masked = keys.is_some();
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
        let m: Vec<Vec<f32>> = match keys {
            None => vec![vec![1.0; t]; b],
            Some(Keys::Random) => {
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
                m
            }
            Some(Keys::Prefix(lens)) => lens
                .iter()
                .map(|&n| (0..t).map(|j| if j < n { 1.0 } else { 0.0 }).collect())
                .collect(),
        };
        let mask = Tensor::new(m, &dev)?;
        // [B, T, 1] in the model's dtype: 1 on real rows.
        let rows = mask.unsqueeze(2)?.to_dtype(dtype)?;
        let w = Tensor::randn(0f32, 1.0, (b, t, d), &dev)?
            .to_dtype(dtype)?
            .broadcast_mul(&rows)?;
        let bias = if masked {
            Some(key_bias(&mask, dtype)?)
        } else {
            None
        };
        ra.reseed(11);
        rb.reseed(11);
        let yf = fused.forward(x.as_tensor(), bias.as_ref(), train)?;
        let yp = plain.forward(x.as_tensor(), bias.as_ref(), train)?;
        let scale = max_abs(&yp.broadcast_mul(&rows)?)?;
        let diff = max_abs(&(&yf - &yp)?.broadcast_mul(&rows)?)? / scale;
        assert!(
            diff < tol,
            "{dtype:?} masked={masked} train={train}: output differs by {diff}"
        );
        let padding = rows.affine(-1.0, 1.0)?;
        let passed = (&yf - x.as_tensor())?.broadcast_mul(&padding)?;
        assert_eq!(
            max_abs(&passed)?,
            0.0,
            "padding rows are not passed through"
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
    fn recomputed_probabilities_give_the_same_gradients() -> Result<()> {
        // Without a budget every task recomputes its probabilities in the backward pass. Other
        // tests running meanwhile may take either path: both must pass them.
        PROBS_BUDGET_NOW.store(0, std::sync::atomic::Ordering::Relaxed);
        let lens = [3, 1, 24, 0, 2, 40, 17, 1, 3, 9, 33, 2];
        let r = compare_with(
            (12, 40, 8, 2),
            DType::F64,
            Some(Keys::Prefix(&lens)),
            true,
            1e-10,
        )
        .and_then(|()| compare((12, 50, 32, 4), DType::F32, true, true, 2e-5));
        PROBS_BUDGET_NOW.store(PROBS_BUDGET, std::sync::atomic::Ordering::Relaxed);
        r
    }

    #[test]
    fn ragged_sequences_match_tensor_ops_on_their_real_positions() -> Result<()> {
        // Lengths like a batch of JPEG MCUs: many short blocks, a few long ones, an empty
        // (padded) block and a full one; f64 (exact) and f32 on the parallel path, with and
        // without dropout.
        let lens = [3, 1, 24, 0, 2, 40, 17, 1, 3, 9, 33, 2];
        for train in [false, true] {
            compare_with(
                (12, 40, 8, 2),
                DType::F64,
                Some(Keys::Prefix(&lens)),
                train,
                1e-10,
            )?;
        }
        let lens: Vec<usize> = (0..48).map(|i| [1, 2, 3, 15, 42, 0, 7][i % 7]).collect();
        for train in [false, true] {
            compare_with(
                (48, 42, 32, 4),
                DType::F32,
                Some(Keys::Prefix(&lens)),
                train,
                2e-5,
            )?;
        }
        Ok(())
    }

    #[test]
    fn stale_pool_buffers_are_overwritten() -> Result<()> {
        // The scratch pool (which keeps buffers from 1 KB in tests) first holds buffers of
        // NaN of several sizes: any element a pass reads before writing it spoils the
        // comparison. 48 sequences of ragged lengths: attention tasks of several sequences,
        // padded to their longest.
        let poison = || {
            for len in [200, 1_000, 5_000, 20_000, 200_000] {
                for _ in 0..32 {
                    f64::pool().give(vec![f64::NAN; len]);
                }
            }
        };
        let lens: Vec<usize> = (0..48).map(|i| [40, 3, 17, 0, 29, 1, 8][i % 7]).collect();
        for train in [false, true] {
            poison();
            compare_with(
                (48, 40, 32, 4),
                DType::F64,
                Some(Keys::Prefix(&lens)),
                train,
                1e-10,
            )?;
        }
        poison();
        compare((48, 40, 32, 4), DType::F64, false, true, 1e-10)?;
        crate::release_scratch();
        Ok(())
    }

    #[test]
    fn only_padding_is_the_identity() -> Result<()> {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let rng = DropoutRng::new();
        let layer = TransformerLayer::new(
            &spec(8, 2, true, &rng),
            VarBuilder::from_varmap(&varmap, DType::F64, &dev),
        )?;
        let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, (3, 5, 8), &dev)?)?;
        let bias = key_bias(&Tensor::zeros((3, 5), DType::F64, &dev)?, DType::F64)?;
        let y = layer.forward(x.as_tensor(), Some(&bias), true)?;
        assert_eq!(max_abs(&(&y - x.as_tensor())?)?, 0.0);
        let w = Tensor::randn(0f64, 1.0, (3, 5, 8), &dev)?;
        let grads = (&y * &w)?.sum_all()?.backward()?;
        let dx = grads.get(x.as_tensor()).expect("gradient of x");
        assert_eq!(max_abs(&(dx - &w)?)?, 0.0);
        for var in varmap.all_vars() {
            let g = grads.get(var.as_tensor()).expect("gradient of a weight");
            assert_eq!(max_abs(g)?, 0.0);
        }
        Ok(())
    }

    #[test]
    fn plan_compacts_real_rows_longest_sequence_first() {
        let m = MASK_BIAS;
        // 3 sequences of 4: lengths 2 (with a hole), 0, 4.
        let bias = [0.0, m, 0.0, m, m, m, m, m, 0.0, 0.0, 0.0, 0.0];
        let plan = Plan::new(Some(&bias[..]), 3, 4, 2);
        assert_eq!(plan.row_of, vec![8, 9, 10, 11, 0, 2]);
        assert!(!plan.identity);
        assert_eq!(plan.seq_rows, vec![(4, 2), (0, 0), (0, 4)]);
        let lens: Vec<Vec<usize>> = plan.tasks.iter().map(|t| t.lens.clone()).collect();
        assert_eq!(lens.concat(), vec![4, 2]);
        assert!(plan.tasks.iter().all(|t| t.masked));
        let x: Vec<f64> = (0..12).map(f64::from).collect();
        let g = plan.gather(&x, 1).expect("padding: not the identity");
        assert_eq!(g, [8.0, 9.0, 10.0, 11.0, 0.0, 2.0]);
        let y = plan.scatter(g.iter().map(|v| -v).collect(), &x, 4, 1);
        let want = [
            -0.0, 1.0, -2.0, 3.0, 4.0, 5.0, 6.0, 7.0, -8.0, -9.0, -10.0, -11.0,
        ];
        assert_eq!(y, want);
        let none = Plan::new::<f64>(None, 3, 4, 2);
        assert!(none.identity);
        assert!(none.tasks.iter().all(|t| !t.masked && t.tt == 4));
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
