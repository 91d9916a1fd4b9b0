//! The plain CPU references of the CUDA kernels: straight loops in f64, written for reading,
//! not speed. They define what each kernel computes (`cuda/tempest.cu` says the same in its
//! comments); the GPU check compares the two, and the CPU tests compare these with candle's
//! tensor ops.

/// A key whose additive bias is at or below this is padding and is skipped (the model's bias
/// for padding is [`crate::MASK_BIAS`], −1e9).
pub const MASKED_BIAS: f64 = -1e8;

/// Sizes of a byte embedding: `rows` blocks of `len` bytes, `dim` channels, `vocab` table rows.
#[derive(Debug, Clone, Copy)]
pub struct EmbedDims {
    /// Blocks (R).
    pub rows: usize,
    /// Bytes per block (L).
    pub len: usize,
    /// Channels (d).
    pub dim: usize,
    /// Rows of the byte table.
    pub vocab: usize,
    /// Rows of the position table (≥ L).
    pub positions: usize,
}

/// `out[t, c] = mask[t] ? table[ids[t], c] + pos[t mod L, c] : 0`; an id outside the table
/// also gives 0. `[R·L, d]`.
pub fn embed_fwd(ids: &[u32], mask: &[u8], table: &[f64], pos: &[f64], s: EmbedDims) -> Vec<f64> {
    let d = s.dim;
    let mut out = vec![0.0; s.rows * s.len * d];
    for (t, o) in out.chunks_mut(d).enumerate() {
        let id = ids[t] as usize;
        if mask[t] == 0 || id >= s.vocab {
            continue;
        }
        let i = t % s.len;
        for (c, o) in o.iter_mut().enumerate() {
            *o = table[id * d + c] + pos[i * d + c];
        }
    }
    out
}

/// The embedding's backward: `[vocab·d]` for the byte table, then `[positions·d]` for the
/// position table (rows ≥ L are 0).
pub fn embed_bwd(ids: &[u32], mask: &[u8], g: &[f64], s: EmbedDims) -> Vec<f64> {
    let d = s.dim;
    let mut out = vec![0.0; (s.vocab + s.positions) * d];
    let (dt, dp) = out.split_at_mut(s.vocab * d);
    for (t, gt) in g.chunks(d).enumerate() {
        let id = ids[t] as usize;
        if mask[t] == 0 || id >= s.vocab {
            continue;
        }
        let i = t % s.len;
        for c in 0..d {
            dt[id * d + c] += gt[c];
            dp[i * d + c] += gt[c];
        }
    }
    out
}

/// Sizes of an attention: `groups` × `heads` sequences of `tq` queries and `tk` keys of
/// `head_dim` channels.
#[derive(Debug, Clone, Copy)]
pub struct AttnDims {
    /// G, the leading dimension (blocks or items); the key bias is per group.
    pub groups: usize,
    /// H.
    pub heads: usize,
    /// Queries per sequence.
    pub tq: usize,
    /// Keys per sequence.
    pub tk: usize,
    /// Channels per head.
    pub head_dim: usize,
}

/// Scores of query `i` of sequence `gh` against every key: `None` for a padded key.
fn scores(
    q: &[f64],
    k: &[f64],
    bias: Option<&[f64]>,
    s: AttnDims,
    gh: usize,
    i: usize,
) -> Vec<Option<f64>> {
    let (dh, g) = (s.head_dim, gh / s.heads);
    let qi = &q[(gh * s.tq + i) * dh..][..dh];
    (0..s.tk)
        .map(|j| {
            let b = bias.map_or(0.0, |b| b[g * s.tk + j]);
            if b <= MASKED_BIAS {
                return None;
            }
            let kj = &k[(gh * s.tk + j) * dh..][..dh];
            Some(b + qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>())
        })
        .collect()
}

/// Softmax over the real keys; all zeros when there is none.
fn probabilities(s: &[Option<f64>]) -> Vec<f64> {
    let max = s.iter().flatten().fold(f64::NEG_INFINITY, |m, &v| m.max(v));
    let e: Vec<f64> = s
        .iter()
        .map(|v| v.map_or(0.0, |v| (v - max).exp()))
        .collect();
    let sum: f64 = e.iter().sum();
    if sum > 0.0 {
        e.iter().map(|v| v / sum).collect()
    } else {
        e
    }
}

/// `o = softmax(q·kᵀ + bias)·v` over the real keys (bias > [`MASKED_BIAS`]); a query without
/// any real key gives 0. `q [G, H, Tq, dh]` (already scaled), `k`, `v [G, H, Tk, dh]`,
/// `bias [G, Tk]`.
pub fn attn_fwd(q: &[f64], k: &[f64], v: &[f64], bias: Option<&[f64]>, s: AttnDims) -> Vec<f64> {
    let dh = s.head_dim;
    let mut out = vec![0.0; s.groups * s.heads * s.tq * dh];
    for gh in 0..s.groups * s.heads {
        for i in 0..s.tq {
            let p = probabilities(&scores(q, k, bias, s, gh, i));
            let o = &mut out[(gh * s.tq + i) * dh..][..dh];
            for (j, p) in p.iter().enumerate() {
                let vj = &v[(gh * s.tk + j) * dh..][..dh];
                o.iter_mut().zip(vj).for_each(|(o, v)| *o += p * v);
            }
        }
    }
    out
}

/// The attention's backward: `[dq; dk; dv]`, each the shape of its input. With P the
/// probabilities: dv = Pᵀ·dO, dP = dO·vᵀ, dS = P ⊙ (dP − rowsum(dP ⊙ P)), dq = dS·k,
/// dk = dSᵀ·q.
pub fn attn_bwd(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    bias: Option<&[f64]>,
    dout: &[f64],
    s: AttnDims,
) -> Vec<f64> {
    let dh = s.head_dim;
    let (nq, nk) = (
        s.groups * s.heads * s.tq * dh,
        s.groups * s.heads * s.tk * dh,
    );
    let mut out = vec![0.0; nq + 2 * nk];
    let (dq, rest) = out.split_at_mut(nq);
    let (dk, dv) = rest.split_at_mut(nk);
    for gh in 0..s.groups * s.heads {
        for i in 0..s.tq {
            let p = probabilities(&scores(q, k, bias, s, gh, i));
            let qi = &q[(gh * s.tq + i) * dh..][..dh];
            let doi = &dout[(gh * s.tq + i) * dh..][..dh];
            let dp: Vec<f64> = (0..s.tk)
                .map(|j| {
                    let vj = &v[(gh * s.tk + j) * dh..][..dh];
                    doi.iter().zip(vj).map(|(a, b)| a * b).sum()
                })
                .collect();
            let delta: f64 = p.iter().zip(&dp).map(|(p, d)| p * d).sum();
            for j in 0..s.tk {
                if p[j] == 0.0 {
                    continue;
                }
                let ds = p[j] * (dp[j] - delta);
                let (kj, base) = (&k[(gh * s.tk + j) * dh..][..dh], (gh * s.tk + j) * dh);
                for c in 0..dh {
                    dq[(gh * s.tq + i) * dh + c] += ds * kj[c];
                    dk[base + c] += ds * qi[c];
                    dv[base + c] += p[j] * doi[c];
                }
            }
        }
    }
    out
}

/// Mean and 1/√(σ² + eps) of a row.
fn stats(x: &[f64], eps: f64) -> (f64, f64) {
    let d = x.len() as f64;
    let mean = x.iter().sum::<f64>() / d;
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d;
    (mean, 1.0 / (var + eps).sqrt())
}

/// Layer norm of each row of `d`: `(x − μ)/√(σ² + eps)·w + b`.
pub fn ln_fwd(x: &[f64], w: &[f64], b: &[f64], eps: f64) -> Vec<f64> {
    let d = w.len();
    let mut out = vec![0.0; x.len()];
    for (o, x) in out.chunks_mut(d).zip(x.chunks(d)) {
        let (mean, rstd) = stats(x, eps);
        for c in 0..d {
            o[c] = (x[c] - mean) * rstd * w[c] + b[c];
        }
    }
    out
}

/// The layer norm's backward: `[dx (rows·d); dw (d); db (d)]`.
pub fn ln_bwd(x: &[f64], w: &[f64], g: &[f64], eps: f64) -> Vec<f64> {
    let d = w.len();
    let mut out = vec![0.0; x.len() + 2 * d];
    let (dx, dwb) = out.split_at_mut(x.len());
    for ((o, x), g) in dx.chunks_mut(d).zip(x.chunks(d)).zip(g.chunks(d)) {
        let (mean, rstd) = stats(x, eps);
        let xh: Vec<f64> = x.iter().map(|v| (v - mean) * rstd).collect();
        let m1 = (0..d).map(|c| g[c] * w[c]).sum::<f64>() / d as f64;
        let m2 = (0..d).map(|c| g[c] * w[c] * xh[c]).sum::<f64>() / d as f64;
        for c in 0..d {
            o[c] = (g[c] * w[c] - m1 - xh[c] * m2) * rstd;
            dwb[c] += g[c] * xh[c];
            dwb[d + c] += g[c];
        }
    }
    out
}

/// Sizes of the mixer's reduction: `rows` blocks of `len` bytes of `dim` channels to `tokens`
/// (L') tokens each.
#[derive(Debug, Clone, Copy)]
pub struct MixDims {
    /// R.
    pub rows: usize,
    /// L.
    pub len: usize,
    /// d.
    pub dim: usize,
    /// L'.
    pub tokens: usize,
}

/// `a_ri = m_ri / max(1, Σ_i m_ri)`.
fn coeffs(mask: &[f64]) -> Vec<f64> {
    let count = mask.iter().sum::<f64>().max(1.0);
    mask.iter().map(|m| m / count).collect()
}

/// `y[r, j, :] = Σ_i w[j, i]·a_ri·h[r, i, :]`: `h [R, L, d]`, `mask [R, L]`, `w [L', L]` →
/// `[R, L', d]`.
pub fn mix_fwd(h: &[f64], mask: &[f64], w: &[f64], s: MixDims) -> Vec<f64> {
    let (l, d, lp) = (s.len, s.dim, s.tokens);
    let mut out = vec![0.0; s.rows * lp * d];
    for r in 0..s.rows {
        let a = coeffs(&mask[r * l..][..l]);
        for j in 0..lp {
            let o = &mut out[(r * lp + j) * d..][..d];
            for (i, a) in a.iter().enumerate() {
                let hi = &h[(r * l + i) * d..][..d];
                let wa = w[j * l + i] * a;
                o.iter_mut().zip(hi).for_each(|(o, h)| *o += wa * h);
            }
        }
    }
    out
}

/// The mixer's backward: `[dh (R·L·d); dw (L'·L)]` (the mask gets none).
pub fn mix_bwd(h: &[f64], mask: &[f64], w: &[f64], g: &[f64], s: MixDims) -> Vec<f64> {
    let (l, d, lp) = (s.len, s.dim, s.tokens);
    let nh = s.rows * l * d;
    let mut out = vec![0.0; nh + lp * l];
    let (dh, dw) = out.split_at_mut(nh);
    for r in 0..s.rows {
        let a = coeffs(&mask[r * l..][..l]);
        for j in 0..lp {
            let gj = &g[(r * lp + j) * d..][..d];
            for (i, a) in a.iter().enumerate() {
                let hi = &h[(r * l + i) * d..][..d];
                let wa = w[j * l + i] * a;
                for c in 0..d {
                    dh[(r * l + i) * d + c] += wa * gj[c];
                }
                dw[j * l + i] += a * gj.iter().zip(hi).map(|(g, h)| g * h).sum::<f64>();
            }
        }
    }
    out
}
