//! The byte embedding, E_t, its final layer norm and the linear mixer's masked mix as one
//! autograd node on the CPU.
//!
//! Each of those is already one op (`block_ops`, `layer`, [`crate::cpu::layer_norm`]), but
//! between them every edge of candle's graph carries a `[B·N, L, d_t]` tensor, the largest of
//! the model, and candle's backward pass gives every edge a zero-filled buffer and an add (a
//! pass over three such tensors on its spinning thread pool) before the next op sees its
//! gradient. In a `perf` profile of the quickstart (JPEG, `tiny`) those adds and their waits
//! were about a fifth of the samples. Here the chain runs inside one [`CustomOp1`] over all of
//! its weights packed into one vector (the embedding table, the positions, each layer's packed
//! weights, the final norm's weight and bias, the mix weights: candle's backward of `cat` hands
//! each variable its slice), and the gradients pass from one stage to the next as plain
//! buffers.
//!
//! It computes what the chain of ops computes: the same functions run in the same order on
//! the same values (the final norm's rows of padding, which the mix weighs by 0, are skipped).
//! The model's tests (tempest-model, `fused_tests.rs`) compare it with the chain on a model's
//! weights, forward and backward.

use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::block_ops::{Embed, Mix};
use super::layer::{
    norm_row, norm_row_grad, pack, rows_per_task, with_saved, Elem, FusedLayer, SumPairs,
};
use crate::dropout::DropoutRng;
use crate::views::{LayerWeights, NormView};

/// Where each part of the packed weights starts.
#[derive(Debug, Clone)]
struct Offsets {
    positions: usize,
    layers: Vec<usize>,
    norm_w: usize,
    norm_b: usize,
    mix: usize,
    total: usize,
}

/// What the backward pass needs.
struct Saved {
    /// Each layer's input `[R, L, d]`, then the last layer's output.
    xs: Vec<Tensor>,
    /// The final norm's output `[R·L, d]` (0 on padding) and its rows' (mean, 1/σ).
    h: Tensor,
    stats: Vec<(f64, f64)>,
}

struct BlockEncoder {
    embed: Embed,
    layers: Vec<FusedLayer>,
    mix: Mix,
    o: Offsets,
    vocab: usize,
    /// Rows of the position table.
    positions: usize,
    /// `[R, L, d]`.
    dims: (usize, usize, usize),
    tokens: usize,
    /// Columns of the mix weights (≥ L).
    wp: usize,
    eps: f64,
    keep: bool,
    saved: Mutex<Option<Saved>>,
}

/// The weights of [`encode_and_mix`]: the byte embedding, E_t's layers and final norm, and
/// the linear mixer's weights.
#[derive(Debug, Clone, Copy)]
pub struct BlockEncoderWeights<'a> {
    /// The byte table `[V, d]`.
    pub table: &'a Tensor,
    /// The in-block positions `[P, d]` (P ≥ L).
    pub positions: &'a Tensor,
    /// E_t's pre-norm layers, first to last.
    pub layers: &'a [LayerWeights<'a>],
    /// E_t's final layer norm.
    pub norm: NormView<'a>,
    /// The mix weights `[L', P']` (P' ≥ L). With no rows (`[0, P']`) there is no mix: the
    /// node gives each state times its mask share `m_i / max(1, Σ m)`, `[R, L, d]` (what the
    /// flatten mixer reads).
    pub mix: &'a Tensor,
}

/// The embedding of `ids [R, L]` (`table` + `positions`), the pre-norm layers, the final layer
/// norm and the masked mix under `mask [R, L]` (1 real, 0 padding, in the weights' dtype;
/// `bias [R, 1, 1, L]` its key bias) → `[R, L', d]`, as one node on the CPU. The layers'
/// dropout of probability `p` (0 at inference) draws its seeds from `rng`, two per layer in
/// layer order, as the layer-by-layer path does.
///
/// `None` unless the weights are f32/f64 on the CPU: the caller then runs the ops one by one
/// ([`crate::embed_bytes`], [`crate::layer`], [`crate::layer_norm`], [`crate::masked_mix`]),
/// which compute the same.
pub fn encode_and_mix(
    ids: &Tensor,
    mask: &Tensor,
    bias: &Tensor,
    w: &BlockEncoderWeights<'_>,
    p: f32,
    rng: &DropoutRng,
) -> Result<Option<Tensor>> {
    let BlockEncoderWeights {
        table,
        positions,
        layers,
        norm,
        mix: mix_w,
    } = *w;
    let dtype = table.dtype();
    let cpu_float = |t: &Tensor| t.device().is_cpu() && t.dtype() == dtype;
    if !(matches!(dtype, DType::F32 | DType::F64)
        && cpu_float(table)
        && cpu_float(positions)
        && cpu_float(mix_w)
        && cpu_float(norm.weight)
        && ids.device().is_cpu())
    {
        return Ok(None);
    }
    let (rows, len) = ids.dims2()?;
    let (vocab, d) = table.dims2()?;
    let (npos, d2) = positions.dims2()?;
    let (tokens, wp) = mix_w.dims2()?;
    if d2 != d || npos < len || wp < len || mask.dims() != [rows, len] {
        candle_core::bail!(
            "encode_and_mix: ids {:?}, mask {:?}, table {:?}, positions {:?}, mix {:?}",
            ids.dims(),
            mask.dims(),
            table.dims(),
            positions.dims(),
            mix_w.dims()
        );
    }
    let mut parts = vec![table.flatten_all()?, positions.flatten_all()?];
    for l in layers {
        parts.push(pack(l)?);
    }
    parts.extend([
        norm.weight.flatten_all()?,
        norm.bias.flatten_all()?,
        mix_w.flatten_all()?,
    ]);
    let packed = Tensor::cat(&parts, 0)?;
    let keep = packed.track_op();
    // The layers' ops, drawing their dropout seeds in the order the layer-by-layer path does.
    let ops = layers
        .iter()
        .map(|l| FusedLayer::new(l, (rows, len, d), Some(bias), (p, rng), keep))
        .collect::<Result<Vec<_>>>()?;
    let mut at = vocab * d + npos * d;
    let positions_at = vocab * d;
    let mut layer_at = Vec::with_capacity(ops.len());
    for op in &ops {
        layer_at.push(at);
        at += op.packed_len();
    }
    let o = Offsets {
        positions: positions_at,
        layers: layer_at,
        norm_w: at,
        norm_b: at + d,
        mix: at + 2 * d,
        total: at + 2 * d + tokens * wp,
    };
    if o.total != packed.elem_count() {
        candle_core::bail!(
            "encode_and_mix: packed {} ≠ {}",
            packed.elem_count(),
            o.total
        );
    }
    let op = BlockEncoder {
        embed: Embed::new(ids, vocab, d)?,
        layers: ops,
        mix: Mix::new(mask, d, tokens)?,
        o,
        vocab,
        positions: npos,
        dims: (rows, len, d),
        tokens,
        wp,
        eps: norm.eps,
        keep,
        saved: Mutex::new(None),
    };
    Ok(Some(packed.apply_op1(op)?))
}

impl BlockEncoder {
    fn fwd<T: Elem>(&self, st: &CpuStorage, layout: &Layout) -> Result<Vec<T>> {
        let (rows, len, d) = self.dims;
        let o = &self.o;
        let ws = crate::cpu::contiguous::<T>(st, layout)?;
        let w0 = layout.start_offset();
        let mut x = self.embed.fwd::<T>(
            &ws[..self.vocab * d],
            &ws[o.positions..][..self.positions * d],
        )?;
        let mut xs = Vec::with_capacity(self.layers.len() + 1);
        for (layer, &at) in self.layers.iter().zip(&o.layers) {
            let y = layer.run_forward::<T>(&x, st, w0 + at)?;
            if self.keep {
                xs.push(Tensor::from_vec(
                    x,
                    (rows, len, d),
                    &candle_core::Device::Cpu,
                )?);
            }
            x = y;
        }
        // The final norm on the rows the mix reads (padding is weighed by 0).
        let (nw, nb) = (&ws[o.norm_w..][..d], &ws[o.norm_b..][..d]);
        let mut h = vec![T::zero(); x.len()];
        let per = rows_per_task(d);
        let stats: Vec<(f64, f64)> = h
            .par_chunks_mut(per * d)
            .zip(x.par_chunks(per * d))
            .zip(self.mix.scale.par_chunks(per))
            .flat_map_iter(|((h, x), scale)| {
                h.chunks_mut(d)
                    .zip(x.chunks(d))
                    .zip(scale)
                    .map(|((h, x), &s)| {
                        if s == 0.0 {
                            (0.0, 0.0)
                        } else {
                            norm_row(x, nw, nb, self.eps, h)
                        }
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        let out = if self.tokens == 0 {
            // No mix: each state times its share (0 on padding).
            let mut out = vec![T::zero(); h.len()];
            out.par_chunks_mut(per * d)
                .zip(h.par_chunks(per * d))
                .zip(self.mix.scale.par_chunks(per))
                .for_each(|((out, h), scale)| {
                    for ((out, h), &s) in out.chunks_mut(d).zip(h.chunks(d)).zip(scale) {
                        out.iter_mut().zip(h).for_each(|(o, h)| {
                            *o = T::from_f64(candle_core::WithDType::to_f64(*h) * s)
                        });
                    }
                });
            out
        } else {
            self.mix
                .fwd::<T>(&h, &ws[o.mix..][..self.tokens * self.wp], self.wp)
        };
        if self.keep {
            let dev = &candle_core::Device::Cpu;
            xs.push(Tensor::from_vec(x, (rows, len, d), dev)?);
            let saved = Saved {
                xs,
                h: Tensor::from_vec(h, (rows * len, d), dev)?,
                stats,
            };
            if let Ok(mut s) = self.saved.lock() {
                *s = Some(saved);
            }
        }
        Ok(out)
    }

    /// The packed weights' gradient for the output's gradient `g [R, L', d]`.
    fn bwd<T: Elem>(&self, saved: &Saved, packed: &Tensor, g: &Tensor) -> Result<Vec<T>> {
        let (rows, len, d) = self.dims;
        let o = &self.o;
        let (st, layout) = packed.storage_and_layout();
        let ws = match &*st {
            candle_core::Storage::Cpu(s) => crate::cpu::contiguous::<T>(s, layout)?,
            _ => candle_core::bail!("encode_and_mix: weights are not on the CPU"),
        };
        let (gs, gl) = g.storage_and_layout();
        let gs = match &*gs {
            candle_core::Storage::Cpu(s) => crate::cpu::contiguous::<T>(s, gl)?,
            _ => candle_core::bail!("encode_and_mix: gradient is not on the CPU"),
        };
        let hv = saved.h.storage_and_layout();
        let h = match &*hv.0 {
            candle_core::Storage::Cpu(s) => crate::cpu::contiguous::<T>(s, hv.1)?,
            _ => candle_core::bail!("encode_and_mix: activations are not on the CPU"),
        };
        let mut grad = vec![T::zero(); o.total];
        let put = |grad: &mut Vec<T>, at: usize, vals: &[f64]| {
            grad[at..at + vals.len()]
                .iter_mut()
                .zip(vals)
                .for_each(|(g, &v)| *g = T::from_f64(v));
        };

        // The mix: dh and the weights' gradient [L', L] into the columns 0..L of [L', P'].
        let (dh, dmix) = if self.tokens == 0 {
            let dh: Vec<T> = gs
                .chunks(d)
                .zip(&self.mix.scale)
                .flat_map(|(g, &s)| {
                    g.iter()
                        .map(move |g| T::from_f64(candle_core::WithDType::to_f64(*g) * s))
                })
                .collect();
            (dh, Vec::new())
        } else {
            self.mix
                .bwd::<T>(h, &ws[o.mix..][..self.tokens * self.wp], self.wp, gs)
        };
        for (j, row) in dmix.chunks(len).enumerate() {
            put(&mut grad, o.mix + j * self.wp, row);
        }

        // The final norm, on the rows the mix read.
        let y = saved
            .xs
            .last()
            .ok_or_else(|| candle_core::Error::msg("encode_and_mix: nothing saved"))?;
        let yv = y.storage_and_layout();
        let ys = match &*yv.0 {
            candle_core::Storage::Cpu(s) => crate::cpu::contiguous::<T>(s, yv.1)?,
            _ => candle_core::bail!("encode_and_mix: activations are not on the CPU"),
        };
        let nw = &ws[o.norm_w..][..d];
        let per = rows_per_task(d);
        let mut dy = vec![T::zero(); rows * len * d];
        let (dnw, dnb) = dy
            .par_chunks_mut(per * d)
            .zip(ys.par_chunks(per * d))
            .zip(dh.par_chunks(per * d))
            .zip(saved.stats.par_chunks(per))
            .zip(self.mix.scale.par_chunks(per))
            .map(|((((dy, ys), dh), stats), scale)| {
                let (mut dw, mut db) = (vec![0.0; d], vec![0.0; d]);
                let mut acc = vec![0.0f64; d];
                for ((((dy, y), dh), &st), &s) in dy
                    .chunks_mut(d)
                    .zip(ys.chunks(d))
                    .zip(dh.chunks(d))
                    .zip(stats)
                    .zip(scale)
                {
                    if s == 0.0 {
                        continue;
                    }
                    acc.iter_mut().for_each(|a| *a = 0.0);
                    norm_row_grad(y, st, nw, dh, &mut acc, &mut dw, &mut db);
                    dy.iter_mut()
                        .zip(&acc)
                        .for_each(|(o, &a)| *o = T::from_f64(a));
                }
                (dw, db)
            })
            .collect::<Vec<_>>()
            .sum_pairs(d);
        put(&mut grad, o.norm_w, &dnw);
        put(&mut grad, o.norm_b, &dnb);

        // The layers, last first.
        let mut dy = Tensor::from_vec(dy, (rows, len, d), &candle_core::Device::Cpu)?;
        for (i, layer) in self.layers.iter().enumerate().rev() {
            let w = packed.narrow(0, o.layers[i], layer.packed_len())?;
            let (dx, dw) = layer.run_backward::<T>(&saved.xs[i], &w, &dy)?;
            let dw = dw.to_vec1::<T>()?;
            grad[o.layers[i]..][..dw.len()].copy_from_slice(&dw);
            dy = dx;
        }

        // The embedding.
        let dyv = dy.storage_and_layout();
        let dys = match &*dyv.0 {
            candle_core::Storage::Cpu(s) => crate::cpu::contiguous::<T>(s, dyv.1)?,
            _ => candle_core::bail!("encode_and_mix: gradient is not on the CPU"),
        };
        let (dtable, dpos) = self.embed.bwd::<T>(self.vocab, dys)?;
        put(&mut grad, 0, &dtable);
        put(&mut grad, o.positions, &dpos);
        Ok(grad)
    }
}

impl CustomOp1 for BlockEncoder {
    fn name(&self) -> &'static str {
        "tempest-block-encoder"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = match s.dtype() {
            DType::F32 => CpuStorage::F32(self.fwd::<f32>(s, l)?),
            DType::F64 => CpuStorage::F64(self.fwd::<f64>(s, l)?),
            dt => candle_core::bail!("encode_and_mix: unsupported dtype {dt:?}"),
        };
        let (rows, len, d) = self.dims;
        let tokens = if self.tokens == 0 { len } else { self.tokens };
        Ok((out, Shape::from((rows, tokens, d))))
    }

    fn bwd(&self, packed: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = grad.detach().contiguous()?;
        let packed = packed.detach().contiguous()?;
        let n = self.o.total;
        let dev = &candle_core::Device::Cpu;
        let dw = with_saved(&self.saved, "encode_and_mix", |saved| {
            match packed.dtype() {
                DType::F32 => Tensor::from_vec(self.bwd::<f32>(saved, &packed, &g)?, n, dev),
                DType::F64 => Tensor::from_vec(self.bwd::<f64>(saved, &packed, &g)?, n, dev),
                dt => candle_core::bail!("encode_and_mix: unsupported dtype {dt:?}"),
            }
        })?;
        Ok(Some(dw))
    }
}
