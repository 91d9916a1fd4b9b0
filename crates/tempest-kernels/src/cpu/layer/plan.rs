//! Which rows of a layer's input are real, and how its attention is cut into tasks.

use candle_core::WithDType;
use rayon::prelude::*;

use super::math::{rows_per_task, Elem};
use super::TASK_SCORES;
use crate::MASK_BIAS;

/// The layer's shape.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dims {
    /// Sequences.
    pub(crate) b: usize,
    /// Positions per sequence.
    pub(crate) t: usize,
    /// Width.
    pub(crate) d: usize,
    /// Heads.
    pub(crate) h: usize,
    /// MLP width.
    pub(crate) m: usize,
}

impl Dims {
    pub(crate) fn rows(&self) -> usize {
        self.b * self.t
    }
    pub(crate) fn dh(&self) -> usize {
        self.d / self.h
    }
    /// Offsets of the packed weights, in the order [`pack`] writes them.
    pub(crate) fn offsets(&self) -> Offsets {
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
pub(crate) struct Offsets {
    pub(crate) ln1_w: usize,
    pub(crate) ln1_b: usize,
    pub(crate) wqkv: usize,
    pub(crate) bqkv: usize,
    pub(crate) wo: usize,
    pub(crate) bo: usize,
    pub(crate) ln2_w: usize,
    pub(crate) ln2_b: usize,
    pub(crate) w1: usize,
    pub(crate) b1: usize,
    pub(crate) w2: usize,
    pub(crate) b2: usize,
    pub(crate) total: usize,
}

/// Which rows of a layer's input are real, and how the attention is cut into tasks.
///
/// A row is real when its key bias is above `MASK_BIAS / 2` (or when there is no bias): the
/// per-token work (layer norms, projections, MLP) runs on the real rows gathered into a compact
/// matrix, and each sequence's attention runs over its real positions only. Compact rows come
/// sequence after sequence, longest sequence first, so that a task of consecutive sequences is
/// padded only to its own longest member.
#[derive(Debug)]
pub(crate) struct Plan {
    /// Compact row → row of `x [B·T, d]`; a sequence's real positions in ascending order.
    pub(crate) row_of: Vec<usize>,
    /// `row_of` is the identity (no padding): nothing to gather or scatter.
    pub(crate) identity: bool,
    /// Per sequence of the batch: its first compact row and its number of real positions.
    pub(crate) seq_rows: Vec<(usize, usize)>,
    pub(crate) tasks: Vec<Task>,
}

/// Consecutive sequences whose attention runs together as `[c, H, tt, d_h]` products.
#[derive(Debug)]
pub(crate) struct Task {
    /// The task's compact rows are `row0..row0 + rows`.
    pub(crate) row0: usize,
    pub(crate) rows: usize,
    /// Real positions of each of its sequences, in order (rows follow one another from row0).
    pub(crate) lens: Vec<usize>,
    /// Positions per sequence in the task's products: its longest sequence.
    pub(crate) tt: usize,
    /// Whether a key must be masked (a key bias, or sequences shorter than `tt`).
    pub(crate) masked: bool,
}

impl Plan {
    /// The plan for `b` sequences of `t` positions with `h` heads, from the key bias `[B·T]`.
    pub(crate) fn new<T: WithDType>(bias: Option<&[T]>, b: usize, t: usize, h: usize) -> Plan {
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
    pub(crate) fn rows(&self) -> usize {
        self.row_of.len()
    }

    /// The real rows of `src [B·T, width]`, compact, in a buffer of the scratch pool; `None`
    /// when there is no padding (`src` itself is compact).
    pub(crate) fn gather<T: Elem>(&self, src: &[T], width: usize) -> Option<Vec<T>> {
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
    pub(crate) fn scatter<T: Elem>(
        &self,
        rows: Vec<T>,
        base: &[T],
        t: usize,
        width: usize,
    ) -> Vec<T> {
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
    pub(crate) fn task_bias<T: WithDType>(
        &self,
        task: &Task,
        bias: Option<&[T]>,
    ) -> Option<Vec<T>> {
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
pub(crate) fn split_tasks<'a, T>(
    mut buf: &'a mut [T],
    tasks: &[Task],
    width: usize,
) -> Vec<&'a mut [T]> {
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        let (head, rest) = buf.split_at_mut(task.rows * width);
        out.push(head);
        buf = rest;
    }
    out
}
