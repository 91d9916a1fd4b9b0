//! The CPU ops around E_t: the byte embedding and the linear mixer's masked mix, each one
//! autograd node.
//!
//! Around E_t every tensor is `[B·N, L, d_t]`, the largest of the model, and candle's backward
//! pass costs a zero-filled buffer and an add per edge of the graph on top of each op's own
//! work. From tensor ops, the embedding is four nodes (`index_select`, `reshape`, `narrow`,
//! `broadcast_add`) and the mixer eight; here each is one, with a hand-written backward that
//! accumulates the tables' gradients in f64 over fixed chunks of rows, added in order (the
//! result does not depend on the number of threads). They compute what the tensor-op path
//! computes, padding included, so the two paths agree; `tests` compare them.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

/// Elements of `[rows, L, d]` a task of a backward pass reads (each task keeps its own copy
/// of the tables' gradients, so tasks are large).
const TASK_ELEMS: usize = 1 << 16;

fn cpu_float(t: &Tensor) -> bool {
    t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::F64)
}

/// Reads a tensor of the op (not one of its storages) as a slice and hands it to `f`.
fn with_slice<T: WithDType, R>(t: &Tensor, f: impl FnOnce(&[T]) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(s) => f(crate::cpu::contiguous::<T>(s, layout)?),
        _ => candle_core::bail!("block op: tensor is not on the CPU"),
    }
}

/// f64 partial sums, added in order.
fn add_all(parts: Vec<Vec<f64>>, n: usize) -> Vec<f64> {
    parts.into_iter().fold(vec![0.0; n], |mut a, b| {
        a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
        a
    })
}

fn from_f64s<T: WithDType>(v: Vec<f64>, shape: &Shape) -> Result<Tensor> {
    let v: Vec<T> = v.into_iter().map(T::from_f64).collect();
    Tensor::from_vec(v, shape, &candle_core::Device::Cpu)
}

// ------------------------------------------------------------------------------------------
// The byte embedding.

/// `table[ids] + positions[0..L]`: `ids [R, L] u32`, `table [V, d]`, `positions [P, d]`
/// (P ≥ L) → `[R, L, d]`, padding included (as the tensor-op path). `None` unless the tables
/// are f32/f64 on the CPU (the caller runs tensor ops). An id ≥ V is an error.
pub(crate) fn embed_bytes(
    ids: &Tensor,
    table: &Tensor,
    positions: &Tensor,
) -> Result<Option<Tensor>> {
    if !(cpu_float(table) && table.dtype() == positions.dtype() && ids.device().is_cpu()) {
        return Ok(None);
    }
    let (_, len) = ids.dims2()?;
    let (vocab, dim) = table.dims2()?;
    let (p, d2) = positions.dims2()?;
    if d2 != dim || p < len {
        candle_core::bail!(
            "embed_bytes: ids {:?}, table {:?}, positions {:?}",
            ids.dims(),
            table.dims(),
            positions.dims()
        );
    }
    let op = Embed::new(ids, vocab, dim)?;
    Ok(Some(
        table
            .contiguous()?
            .apply_op2(&positions.contiguous()?, op)?,
    ))
}

pub(crate) struct Embed {
    ids: Tensor,
    rows: usize,
    len: usize,
    dim: usize,
}

impl Embed {
    /// The embedding of `ids [R, L]` (any integer dtype) in a table of `vocab` rows of `dim`;
    /// an id ≥ `vocab` is an error.
    pub(crate) fn new(ids: &Tensor, vocab: usize, dim: usize) -> Result<Self> {
        let (rows, len) = ids.dims2()?;
        let ids = ids.to_dtype(DType::U32)?.contiguous()?;
        if let Some(bad) = with_slice::<u32, _>(&ids, |s| {
            Ok(s.iter().copied().find(|&i| i as usize >= vocab))
        })? {
            candle_core::bail!("embed_bytes: id {bad} outside the table of {vocab}");
        }
        Ok(Embed {
            ids,
            rows,
            len,
            dim,
        })
    }

    /// `[R, L, d]` from the table `[V, d]` and the positions `[P ≥ L, d]`.
    pub(crate) fn fwd<T: WithDType>(&self, table: &[T], pos: &[T]) -> Result<Vec<T>> {
        let (l, d) = (self.len, self.dim);
        with_slice::<u32, _>(&self.ids, |ids| {
            let mut out = vec![T::zero(); self.rows * l * d];
            out.par_chunks_mut(l * d)
                .zip(ids.par_chunks(l))
                .for_each(|(out, ids)| {
                    for ((o, &id), p) in out.chunks_mut(d).zip(ids).zip(pos.chunks(d)) {
                        let t = &table[id as usize * d..][..d];
                        for ((o, &t), &p) in o.iter_mut().zip(t).zip(p) {
                            *o = t + p;
                        }
                    }
                });
            Ok(out)
        })
    }

    /// `grad [R, L, d]` → (the table's gradient `[V·d]`, the first L positions' `[L·d]`).
    pub(crate) fn bwd<T: WithDType>(&self, vocab: usize, g: &[T]) -> Result<(Vec<f64>, Vec<f64>)> {
        let (l, d) = (self.len, self.dim);
        let per = (TASK_ELEMS / (l * d).max(1)).max(1);
        with_slice::<u32, _>(&self.ids, |ids| {
            let parts: Vec<(Vec<f64>, Vec<f64>)> = g
                .par_chunks(per * l * d)
                .zip(ids.par_chunks(per * l))
                .map(|(g, ids)| {
                    let (mut dt, mut dp) = (vec![0.0; vocab * d], vec![0.0; l * d]);
                    for (g, &id) in g.chunks(d).zip(ids) {
                        let at = (id as usize) * d;
                        dt[at..at + d]
                            .iter_mut()
                            .zip(g)
                            .for_each(|(a, g)| *a += g.to_f64());
                    }
                    for g in g.chunks(l * d) {
                        dp.iter_mut().zip(g).for_each(|(a, g)| *a += g.to_f64());
                    }
                    (dt, dp)
                })
                .collect();
            let (dt, dp): (Vec<_>, Vec<_>) = parts.into_iter().unzip();
            Ok((add_all(dt, vocab * d), add_all(dp, l * d)))
        })
    }
}

impl CustomOp2 for Embed {
    fn name(&self) -> &'static str {
        "tempest-embed-bytes"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        use crate::cpu::contiguous as c;
        let out = match s1.dtype() {
            DType::F32 => CpuStorage::F32(self.fwd::<f32>(c(s1, l1)?, c(s2, l2)?)?),
            DType::F64 => CpuStorage::F64(self.fwd::<f64>(c(s1, l1)?, c(s2, l2)?)?),
            dt => candle_core::bail!("embed_bytes: unsupported dtype {dt:?}"),
        };
        Ok((out, Shape::from((self.rows, self.len, self.dim))))
    }

    fn bwd(
        &self,
        table: &Tensor,
        positions: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let vocab = table.dim(0)?;
        let g = grad.detach().contiguous()?;
        let (dt, dp) = match g.dtype() {
            DType::F32 => with_slice::<f32, _>(&g, |g| self.bwd(vocab, g))?,
            DType::F64 => with_slice::<f64, _>(&g, |g| self.bwd(vocab, g))?,
            dt => candle_core::bail!("embed_bytes: unsupported dtype {dt:?}"),
        };
        let mut dp = dp;
        dp.resize(positions.elem_count(), 0.0);
        let (dt, dp) = match g.dtype() {
            DType::F32 => (
                from_f64s::<f32>(dt, table.shape())?,
                from_f64s::<f32>(dp, positions.shape())?,
            ),
            _ => (
                from_f64s::<f64>(dt, table.shape())?,
                from_f64s::<f64>(dp, positions.shape())?,
            ),
        };
        Ok((Some(dt), Some(dp)))
    }
}

// ------------------------------------------------------------------------------------------
// The linear mixer.

/// `y[r, j, :] = Σ_i w[j, i]·m_ri·h[r, i, :] / max(1, Σ_i m_ri)`: `h [R, L, d]`, `mask [R, L]`
/// (no gradient), `w [L', P]` (P ≥ L; columns 0..L are used) → `[R, L', d]`. Gradients reach
/// h and w. `None` unless h and w are f32/f64 on the CPU.
pub(crate) fn masked_mix(h: &Tensor, mask: &Tensor, w: &Tensor) -> Result<Option<Tensor>> {
    if !(cpu_float(h) && h.dtype() == w.dtype()) {
        return Ok(None);
    }
    let (rows, len, dim) = h.dims3()?;
    let (tokens, p) = w.dims2()?;
    if mask.dims() != [rows, len] || p < len {
        candle_core::bail!(
            "masked_mix: h {:?}, mask {:?}, w {:?}",
            h.dims(),
            mask.dims(),
            w.dims()
        );
    }
    let op = Mix::new(mask, dim, tokens)?;
    Ok(Some(h.contiguous()?.apply_op2(&w.contiguous()?, op)?))
}

pub(crate) struct Mix {
    /// `[R·L]` m_ri / max(1, Σ_i m_ri).
    pub(crate) scale: Vec<f64>,
    len: usize,
    dim: usize,
    tokens: usize,
}

impl Mix {
    /// The mix of rows of `dim` into `tokens` tokens under `mask [R, L]` (1 real, 0 padding).
    pub(crate) fn new(mask: &Tensor, dim: usize, tokens: usize) -> Result<Self> {
        let (_, len) = mask.dims2()?;
        // Per real byte its weight factor m_ri / max(1, Σ_i m_ri), in f64.
        let m = mask.detach().to_dtype(DType::F64)?.to_vec2::<f64>()?;
        let scale: Vec<f64> = m
            .iter()
            .flat_map(|row| {
                let count = row.iter().sum::<f64>().max(1.0);
                row.iter().map(move |&v| v / count)
            })
            .collect();
        Ok(Mix {
            scale,
            len,
            dim,
            tokens,
        })
    }

    /// `[R, L', d]` from `h [R, L, d]` and the weights `w [L', wp]` (columns 0..L used).
    pub(crate) fn fwd<T: WithDType>(&self, h: &[T], w: &[T], wp: usize) -> Vec<T> {
        let (l, d, lt) = (self.len, self.dim, self.tokens);
        let mut out = vec![T::zero(); h.len() / (l * d).max(1) * lt * d];
        out.par_chunks_mut(lt * d)
            .zip(h.par_chunks(l * d))
            .zip(self.scale.par_chunks(l))
            .for_each(|((out, h), scale)| {
                let mut acc = vec![0.0f64; d];
                for (j, out) in out.chunks_mut(d).enumerate() {
                    acc.iter_mut().for_each(|a| *a = 0.0);
                    for (i, (h, &s)) in h.chunks(d).zip(scale).enumerate() {
                        if s != 0.0 {
                            let c = w[j * wp + i].to_f64() * s;
                            acc.iter_mut()
                                .zip(h)
                                .for_each(|(a, h)| *a += c * h.to_f64());
                        }
                    }
                    out.iter_mut()
                        .zip(&acc)
                        .for_each(|(o, &a)| *o = T::from_f64(a));
                }
            });
        out
    }

    /// (dh `[R, L, d]`, dw `[L'·L]` in f64) for `g [R, L', d]`.
    pub(crate) fn bwd<T: WithDType>(
        &self,
        h: &[T],
        w: &[T],
        wp: usize,
        g: &[T],
    ) -> (Vec<T>, Vec<f64>) {
        let (l, d, lt) = (self.len, self.dim, self.tokens);
        let per = (TASK_ELEMS / (l * d).max(1)).max(1);
        let mut dh = vec![T::zero(); h.len()];
        let dw = dh
            .par_chunks_mut(per * l * d)
            .zip(h.par_chunks(per * l * d))
            .zip(g.par_chunks(per * lt * d))
            .zip(self.scale.par_chunks(per * l))
            .map(|(((dh, h), g), scale)| {
                let mut dw = vec![0.0f64; lt * l];
                for (((dh, h), g), scale) in dh
                    .chunks_mut(l * d)
                    .zip(h.chunks(l * d))
                    .zip(g.chunks(lt * d))
                    .zip(scale.chunks(l))
                {
                    for (i, ((dh, h), &s)) in
                        dh.chunks_mut(d).zip(h.chunks(d)).zip(scale).enumerate()
                    {
                        if s == 0.0 {
                            continue;
                        }
                        for (j, g) in g.chunks(d).enumerate() {
                            let c = w[j * wp + i].to_f64() * s;
                            let mut dot = 0.0;
                            for ((dh, &h), &g) in dh.iter_mut().zip(h).zip(g) {
                                let g = g.to_f64();
                                *dh = T::from_f64(dh.to_f64() + c * g);
                                dot += h.to_f64() * g;
                            }
                            dw[j * l + i] += s * dot;
                        }
                    }
                }
                dw
            })
            .collect();
        (dh, add_all(dw, lt * l))
    }
}

impl CustomOp2 for Mix {
    fn name(&self) -> &'static str {
        "tempest-masked-mix"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        use crate::cpu::contiguous as c;
        let wp = l2.dims()[1];
        let out = match s1.dtype() {
            DType::F32 => CpuStorage::F32(self.fwd::<f32>(c(s1, l1)?, c(s2, l2)?, wp)),
            DType::F64 => CpuStorage::F64(self.fwd::<f64>(c(s1, l1)?, c(s2, l2)?, wp)),
            dt => candle_core::bail!("masked_mix: unsupported dtype {dt:?}"),
        };
        let rows = l1.dims()[0];
        Ok((out, Shape::from((rows, self.tokens, self.dim))))
    }

    fn bwd(
        &self,
        h: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (h, w, g) = (h.detach(), w.detach(), grad.detach().contiguous()?);
        let wp = w.dim(1)?;
        let (dh, dw) = match h.dtype() {
            DType::F32 => {
                let (dh, dw) = with_slice::<f32, _>(&h, |hs| {
                    with_slice::<f32, _>(&w, |ws| {
                        with_slice::<f32, _>(&g, |gs| Ok(self.bwd(hs, ws, wp, gs)))
                    })
                })?;
                (
                    Tensor::from_vec(dh, h.shape(), h.device())?,
                    full_w::<f32>(dw, self, wp)?,
                )
            }
            DType::F64 => {
                let (dh, dw) = with_slice::<f64, _>(&h, |hs| {
                    with_slice::<f64, _>(&w, |ws| {
                        with_slice::<f64, _>(&g, |gs| Ok(self.bwd(hs, ws, wp, gs)))
                    })
                })?;
                (
                    Tensor::from_vec(dh, h.shape(), h.device())?,
                    full_w::<f64>(dw, self, wp)?,
                )
            }
            dt => candle_core::bail!("masked_mix: unsupported dtype {dt:?}"),
        };
        Ok((Some(dh), Some(dw)))
    }
}

/// dw `[L', L]` into the shape of the whole weight `[L', P]` (0 beyond column L).
fn full_w<T: WithDType>(dw: Vec<f64>, op: &Mix, wp: usize) -> Result<Tensor> {
    let mut full = vec![0.0; op.tokens * wp];
    for (j, row) in dw.chunks(op.len).enumerate() {
        full[j * wp..j * wp + op.len].copy_from_slice(row);
    }
    from_f64s::<T>(full, &Shape::from((op.tokens, wp)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::check::Rng;
    use crate::testing::normal;
    use candle_core::{Device, Var};

    fn max_rel(a: &Tensor, b: &Tensor) -> Result<f64> {
        let d = (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
        let s = b.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
        Ok(d / s.max(1e-300))
    }

    #[test]
    fn embedding_matches_index_select_plus_positions() -> Result<()> {
        let dev = Device::Cpu;
        let (r, l, v, d, p) = (37, 9, 11, 6, 12);
        let mut rng = Rng::new(1);
        let table = Var::from_tensor(&normal(&mut rng, (v, d), 0.0, 1.0, DType::F64)?)?;
        let pos = Var::from_tensor(&normal(&mut rng, (p, d), 0.0, 1.0, DType::F64)?)?;
        let ids: Vec<u32> = (0..r * l).map(|i| ((i * 7 + i / 5) % v) as u32).collect();
        let ids = Tensor::from_vec(ids, (r, l), &dev)?;
        let y = embed_bytes(&ids, table.as_tensor(), pos.as_tensor())?.expect("cpu f64");
        let want = table
            .as_tensor()
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((r, l, d))?
            .broadcast_add(&pos.as_tensor().narrow(0, 0, l)?)?;
        assert!(max_rel(&y, &want)? < 1e-15);
        let w = normal(&mut rng, (r, l, d), 0.0, 1.0, DType::F64)?;
        let (ga, gb) = (
            (&y * &w)?.sum_all()?.backward()?,
            (&want * &w)?.sum_all()?.backward()?,
        );
        for var in [&table, &pos] {
            let (a, b) = (
                ga.get(var.as_tensor()).expect("grad"),
                gb.get(var.as_tensor()).expect("grad"),
            );
            assert!(max_rel(a, b)? < 1e-12);
        }
        let bad = Tensor::from_vec(vec![v as u32], (1, 1), &dev)?;
        assert!(embed_bytes(&bad, table.as_tensor(), pos.as_tensor()).is_err());
        Ok(())
    }

    #[test]
    fn masked_mix_matches_the_tensor_op_formula() -> Result<()> {
        let dev = Device::Cpu;
        // 300 rows: several backward tasks; row 3 all padding (count clamped to 1).
        let (r, l, d, lt, p) = (300, 10, 5, 3, 14);
        let mut rng = Rng::new(2);
        let h = Var::from_tensor(&normal(&mut rng, (r, l, d), 0.0, 1.0, DType::F64)?)?;
        let w = Var::from_tensor(&normal(&mut rng, (lt, p), 1.0, 0.5, DType::F64)?)?;
        let mut m: Vec<f64> = (0..r * l)
            .map(|i| ((i * 13 % 7) < 4) as u8 as f64)
            .collect();
        m[3 * l..4 * l].iter_mut().for_each(|v| *v = 0.0);
        let mask = Tensor::from_vec(m, (r, l), &dev)?;
        let y = masked_mix(h.as_tensor(), &mask, w.as_tensor())?.expect("cpu f64");
        // The model's tensor-op formula.
        let wl = w.as_tensor().narrow(1, 0, l)?.unsqueeze(0)?;
        let count = mask.sum_keepdim(1)?.maximum(1.0)?;
        let weights = wl.broadcast_mul(&mask.broadcast_div(&count)?.unsqueeze(1)?)?;
        let want = weights.matmul(h.as_tensor())?;
        assert!(max_rel(&y, &want)? < 1e-13);
        let g = normal(&mut rng, (r, lt, d), 0.0, 1.0, DType::F64)?;
        let (ga, gb) = (
            (&y * &g)?.sum_all()?.backward()?,
            (&want * &g)?.sum_all()?.backward()?,
        );
        for var in [&h, &w] {
            let (a, b) = (
                ga.get(var.as_tensor()).expect("grad"),
                gb.get(var.as_tensor()).expect("grad"),
            );
            assert!(max_rel(a, b)? < 1e-12);
        }
        // Columns beyond L get no gradient.
        let dw = ga.get(w.as_tensor()).expect("grad");
        let tail = dw
            .narrow(1, l, p - l)?
            .abs()?
            .sum_all()?
            .to_scalar::<f64>()?;
        assert_eq!(tail, 0.0);
        Ok(())
    }
}
