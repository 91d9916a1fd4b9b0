//! Matrix products on raw storages (candle's gemm without tensors) and the moves of an
//! attention task's rows into heads and back.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Result, Shape, WithDType};

use super::math::{softmax_rows, Elem};
use super::plan::Task;

/// A buffer as a storage (no copy).
pub(crate) fn store<T: Elem>(v: Vec<T>) -> CpuStorage {
    T::to_cpu_storage_owned(v)
}

/// A storage's elements.
pub(crate) fn elems<T: Elem>(s: &CpuStorage) -> Result<&[T]> {
    T::cpu_storage_as_slice(s)
}

/// `[rows, cols]` row-major at `offset`.
pub(crate) fn mat_at(rows: usize, cols: usize, offset: usize) -> Layout {
    Layout::new(Shape::from((rows, cols)), vec![cols, 1], offset)
}

/// The transpose `[cols, rows]` of a row-major `[rows, cols]` at `offset`.
pub(crate) fn mat_t_at(rows: usize, cols: usize, offset: usize) -> Layout {
    Layout::new(Shape::from((cols, rows)), vec![1, cols], offset)
}

/// `[c, H, a, b]` contiguous.
pub(crate) fn heads(c: usize, h: usize, a: usize, b: usize) -> Layout {
    Layout::contiguous((c, h, a, b))
}

/// The transpose `[c, H, b, a]` of a contiguous `[c, H, a, b]`.
pub(crate) fn heads_t(c: usize, h: usize, a: usize, b: usize) -> Layout {
    Layout::new(Shape::from((c, h, b, a)), vec![h * a * b, a * b, 1, b], 0)
}

/// The index one past the last element a layout reads.
pub(crate) fn extent(l: &Layout) -> usize {
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
pub(crate) fn mm<T: Elem>(
    a: &CpuStorage,
    la: &Layout,
    b: &CpuStorage,
    lb: &Layout,
) -> Result<Vec<T>> {
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
pub(crate) const MM_CHUNK: usize = if cfg!(test) { 1 << 10 } else { 1 << 18 };

/// `a · b` for the rows `a [rows, k]` at offset `a_at` of `a` and `b [k, n]` seen through
/// `lb`, into a buffer of the scratch pool, a few rows at a time (each part by [`mm`]).
pub(crate) fn mm_rows<T: Elem>(
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
pub(crate) fn to_f64s<T: WithDType>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64()).collect()
}

/// Softmax of `q·kᵀ` plus the key bias `[c, tt]`: `q`, `k` `[c, H, tt, d_h]` →
/// `[c, H, tt, tt]`.
pub(crate) fn probs<T: Elem>(
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
pub(crate) fn split_heads<T: Elem>(
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
pub(crate) fn merge_heads<T: WithDType>(
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
