//! The fused layer's forward pass.

use super::*;

impl FusedLayer {
    /// The forward pass: `xs [B·T, d]` and the packed weights `wst` (seen through `wl`).
    pub(super) fn forward_t<T: Elem>(
        &self,
        xs: &[T],
        wst: &CpuStorage,
        wl: &Layout,
    ) -> Result<Vec<T>> {
        let Dims { b, t, d, h, m } = self.dims;
        let dh = self.dims.dh();
        let o = self.dims.offsets();
        let ws = crate::cpu::contiguous::<T>(wst, wl)?;
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
    pub(super) fn save(&self, saved: Saved) {
        if self.keep {
            if let Ok(mut s) = self.saved.lock() {
                *s = Some(saved);
            }
        }
    }
}
