//! The fused layer's hand-written backward pass.

use super::*;

impl FusedLayer {
    /// The gradients of `x` and of the packed weights `w` for the output's gradient `dy`.
    pub(super) fn backward_t<T: Elem>(
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
