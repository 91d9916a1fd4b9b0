// TEMPEST's CUDA kernels (feature `cuda`): compiled to PTX by build.rs, loaded by
// src/cuda/launch.rs. Each kernel has a plain CPU reference in src/cuda/reference.rs with the
// same semantics; the two are compared on a GPU by `scripts/gpu-check.sh`.
//
// Conventions: T is float or __nv_bfloat16; arithmetic and every accumulator are f32.
// Gradients that several threads add into are f32 buffers zeroed by the caller (atomicAdd);
// the caller casts them to T. Sizes are int (the host checks they fit).
#include <cuda_bf16.h>
#include <stdint.h>

#define MASKED_BIAS (-1.0e8f)  // a key whose additive bias is at or below this is padding

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) {
    return __float2bfloat16(x);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// ---------------------------------------------------------------------------------------------
// Byte embedding: out[t, c] = mask[t] ? table[ids[t], c] + pos[t % L, c] : 0, for t < R·L.
// An id outside the table also gives 0 (the CPU reference does the same).
template <typename T>
__device__ void embed_fwd(const uint32_t* ids, const uint8_t* mask, const T* table, const T* pos,
                          T* out, int n_tok, int L, int d, int vocab) {
    long total = (long)n_tok * d;
    for (long e = blockIdx.x * (long)blockDim.x + threadIdx.x; e < total;
         e += (long)gridDim.x * blockDim.x) {
        int t = (int)(e / d), c = (int)(e % d);
        uint32_t id = ids[t];
        float v = 0.f;
        if (mask[t] && id < (uint32_t)vocab)
            v = to_f(table[(long)id * d + c]) + to_f(pos[(long)(t % L) * d + c]);
        out[e] = from_f<T>(v);
    }
}

// d_table[id, c] += g[t, c] over real tokens. Block = 8 warps, one channel slice of 32 per
// blockIdx.y; each warp takes one token at a time, its 32 lanes 32 channels. The slice of the
// table's gradient lives in shared memory (vocab·32 floats) and is added to d_table once.
template <typename T>
__device__ void embed_bwd_table(const uint32_t* ids, const uint8_t* mask, const T* g, float* dtable,
                                int n_tok, int d, int vocab) {
    extern __shared__ float sh[];
    int c0 = blockIdx.y * 32, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int nw = blockDim.x >> 5;
    for (int i = threadIdx.x; i < vocab * 32; i += blockDim.x) sh[i] = 0.f;
    __syncthreads();
    int c = c0 + lane;
    for (int t = blockIdx.x * nw + warp; t < n_tok; t += gridDim.x * nw) {
        uint32_t id = ids[t];
        if (!mask[t] || id >= (uint32_t)vocab || c >= d) continue;
        atomicAdd(&sh[id * 32 + lane], to_f(g[(long)t * d + c]));
    }
    __syncthreads();
    for (int i = threadIdx.x; i < vocab * 32; i += blockDim.x) {
        int row = i / 32, cc = c0 + (i % 32);
        if (cc < d && sh[i] != 0.f) atomicAdd(&dtable[(long)row * d + cc], sh[i]);
    }
}

// d_pos[i, c] += Σ_r mask[r, i]·g[r, i, c]: blockIdx.x = position i, blockIdx.y = a chunk of
// rows, threads over channels.
template <typename T>
__device__ void embed_bwd_pos(const uint8_t* mask, const T* g, float* dpos, int rows, int L, int d,
                              int rows_per_block) {
    int i = blockIdx.x;
    int r0 = blockIdx.y * rows_per_block, r1 = min(rows, r0 + rows_per_block);
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        float acc = 0.f;
        for (int r = r0; r < r1; ++r) {
            long t = (long)r * L + i;
            if (mask[t]) acc += to_f(g[t * d + c]);
        }
        if (acc != 0.f) atomicAdd(&dpos[(long)i * d + c], acc);
    }
}

// ---------------------------------------------------------------------------------------------
// Attention for short sequences: o = softmax(q·kᵀ + bias)·v per (group, head), q already scaled.
// q [G, H, Tq, DH], k and v [G, H, Tk, DH], bias [G, Tk] or null. One thread per query row, the
// keys streamed through shared memory in tiles of BK, softmax with an online maximum (Milakov &
// Gimelshein 2018; FlashAttention, Dao et al. 2022). Keys whose bias is ≤ MASKED_BIAS are
// skipped, and so are the tiles after the group's last real key; a row without any real key
// gives 0 (the CPU reference says the same).
template <int DH> struct Tile { static const int BK = DH <= 64 ? 64 : 32; };

// The index after the last real key of group g (every key is real without a bias).
__device__ __forceinline__ int key_end(const float* bias_f, int Tk) {
    __shared__ int kend;
    if (threadIdx.x == 0) kend = 0;
    __syncthreads();
    int local = 0;
    for (int j = threadIdx.x; j < Tk; j += blockDim.x)
        if (bias_f == nullptr || bias_f[j] > MASKED_BIAS) local = j + 1;
    atomicMax(&kend, local);
    __syncthreads();
    return kend;
}

template <typename T, int DH>
__device__ void attn_fwd(const T* q, const T* k, const T* v, const T* bias, T* o, int H, int Tq,
                         int Tk) {
    const int BK = Tile<DH>::BK;
    __shared__ float ks[BK][DH + 1];
    __shared__ float vs[BK][DH + 1];
    __shared__ float bs[BK];
    __shared__ float bias_row[512];
    int gh = blockIdx.x, g = gh / H;
    int i = blockIdx.y * blockDim.x + threadIdx.x;
    const T* kg = k + (long)gh * Tk * DH;
    const T* vg = v + (long)gh * Tk * DH;
    for (int j = threadIdx.x; j < Tk; j += blockDim.x)
        bias_row[j] = bias ? to_f(bias[(long)g * Tk + j]) : 0.f;
    __syncthreads();
    int kend = key_end(bias ? bias_row : nullptr, Tk);
    float qr[DH], acc[DH];
    bool active = i < Tq;
    if (active) {
        const T* qi = q + ((long)gh * Tq + i) * DH;
#pragma unroll
        for (int c = 0; c < DH; ++c) { qr[c] = to_f(qi[c]); acc[c] = 0.f; }
    }
    float m = -INFINITY, l = 0.f;
    for (int j0 = 0; j0 < kend; j0 += BK) {
        int nk = min(BK, kend - j0);
        for (int e = threadIdx.x; e < nk * DH; e += blockDim.x) {
            int jj = e / DH, c = e % DH;
            ks[jj][c] = to_f(kg[(long)(j0 + jj) * DH + c]);
            vs[jj][c] = to_f(vg[(long)(j0 + jj) * DH + c]);
        }
        for (int jj = threadIdx.x; jj < nk; jj += blockDim.x) bs[jj] = bias_row[j0 + jj];
        __syncthreads();
        if (active) {
            for (int jj = 0; jj < nk; ++jj) {
                float b = bs[jj];
                if (b <= MASKED_BIAS) continue;
                float s = b;
#pragma unroll
                for (int c = 0; c < DH; ++c) s += qr[c] * ks[jj][c];
                if (s > m) {
                    float corr = __expf(m - s);
                    l *= corr;
#pragma unroll
                    for (int c = 0; c < DH; ++c) acc[c] *= corr;
                    m = s;
                }
                float p = __expf(s - m);
                l += p;
#pragma unroll
                for (int c = 0; c < DH; ++c) acc[c] += p * vs[jj][c];
            }
        }
        __syncthreads();
    }
    if (active) {
        float inv = l > 0.f ? 1.f / l : 0.f;
        T* oi = o + ((long)gh * Tq + i) * DH;
#pragma unroll
        for (int c = 0; c < DH; ++c) oi[c] = from_f<T>(acc[c] * inv);
    }
}

// Backward, part 1, one thread per query row: lse_i = log Σ_j exp(s_ij) over real keys (+∞ for a
// row without any, so that every p_ij below is 0), Δ_i = dO_i·O_i, and
// dq_i = Σ_j p_ij (dO_i·v_j − Δ_i) k_j with p_ij = exp(s_ij − lse_i).
template <typename T, int DH>
__device__ void attn_bwd_q(const T* q, const T* k, const T* v, const T* bias, const T* o,
                           const T* dout, float* dq, float* lse, float* delta, int H, int Tq,
                           int Tk) {
    const int BK = Tile<DH>::BK;
    __shared__ float ks[BK][DH + 1];
    __shared__ float vs[BK][DH + 1];
    __shared__ float bs[BK];
    __shared__ float bias_row[512];
    int gh = blockIdx.x, g = gh / H;
    int i = blockIdx.y * blockDim.x + threadIdx.x;
    const T* kg = k + (long)gh * Tk * DH;
    const T* vg = v + (long)gh * Tk * DH;
    for (int j = threadIdx.x; j < Tk; j += blockDim.x)
        bias_row[j] = bias ? to_f(bias[(long)g * Tk + j]) : 0.f;
    __syncthreads();
    int kend = key_end(bias ? bias_row : nullptr, Tk);
    bool active = i < Tq;
    float qr[DH], dor[DH], acc[DH];
    float dl = 0.f;
    if (active) {
        long base = ((long)gh * Tq + i) * DH;
#pragma unroll
        for (int c = 0; c < DH; ++c) {
            qr[c] = to_f(q[base + c]);
            dor[c] = to_f(dout[base + c]);
            dl += dor[c] * to_f(o[base + c]);
            acc[c] = 0.f;
        }
    }
    float m = -INFINITY, l = 0.f;
    // Pass 1: the log-sum-exp of the row.
    for (int j0 = 0; j0 < kend; j0 += BK) {
        int nk = min(BK, kend - j0);
        for (int e = threadIdx.x; e < nk * DH; e += blockDim.x) {
            int jj = e / DH, c = e % DH;
            ks[jj][c] = to_f(kg[(long)(j0 + jj) * DH + c]);
        }
        for (int jj = threadIdx.x; jj < nk; jj += blockDim.x) bs[jj] = bias_row[j0 + jj];
        __syncthreads();
        if (active) {
            for (int jj = 0; jj < nk; ++jj) {
                float b = bs[jj];
                if (b <= MASKED_BIAS) continue;
                float s = b;
#pragma unroll
                for (int c = 0; c < DH; ++c) s += qr[c] * ks[jj][c];
                if (s > m) { l *= __expf(m - s); m = s; }
                l += __expf(s - m);
            }
        }
        __syncthreads();
    }
    float ls = l > 0.f ? m + __logf(l) : INFINITY;
    // Pass 2: dq.
    for (int j0 = 0; j0 < kend; j0 += BK) {
        int nk = min(BK, kend - j0);
        for (int e = threadIdx.x; e < nk * DH; e += blockDim.x) {
            int jj = e / DH, c = e % DH;
            ks[jj][c] = to_f(kg[(long)(j0 + jj) * DH + c]);
            vs[jj][c] = to_f(vg[(long)(j0 + jj) * DH + c]);
        }
        for (int jj = threadIdx.x; jj < nk; jj += blockDim.x) bs[jj] = bias_row[j0 + jj];
        __syncthreads();
        if (active) {
            for (int jj = 0; jj < nk; ++jj) {
                float b = bs[jj];
                if (b <= MASKED_BIAS) continue;
                float s = b, dp = 0.f;
#pragma unroll
                for (int c = 0; c < DH; ++c) { s += qr[c] * ks[jj][c]; dp += dor[c] * vs[jj][c]; }
                float ds = __expf(s - ls) * (dp - dl);
#pragma unroll
                for (int c = 0; c < DH; ++c) acc[c] += ds * ks[jj][c];
            }
        }
        __syncthreads();
    }
    if (active) {
        long row = (long)gh * Tq + i;
#pragma unroll
        for (int c = 0; c < DH; ++c) dq[row * DH + c] = acc[c];
        lse[row] = ls;
        delta[row] = dl;
    }
}

// Backward, part 2, one thread per key row j, the queries streamed through shared memory:
// dv_j = Σ_i p_ij dO_i, dk_j = Σ_i p_ij (dO_i·v_j − Δ_i) q_i. Padded keys get 0.
template <typename T, int DH>
__device__ void attn_bwd_kv(const T* q, const T* k, const T* v, const T* bias, const T* dout,
                            const float* lse, const float* delta, float* dk, float* dv, int H,
                            int Tq, int Tk) {
    const int BQ = Tile<DH>::BK;
    __shared__ float qs[BQ][DH + 1];
    __shared__ float ds_[BQ][DH + 1];
    __shared__ float ls[BQ], dl[BQ];
    int gh = blockIdx.x, g = gh / H;
    int j = blockIdx.y * blockDim.x + threadIdx.x;
    float b = 0.f;
    bool active = j < Tk;
    if (active && bias) b = to_f(bias[(long)g * Tk + j]);
    if (b <= MASKED_BIAS) active = false;
    float kr[DH], vr[DH], dka[DH], dva[DH];
    if (active) {
        long base = ((long)gh * Tk + j) * DH;
#pragma unroll
        for (int c = 0; c < DH; ++c) {
            kr[c] = to_f(k[base + c]);
            vr[c] = to_f(v[base + c]);
            dka[c] = 0.f;
            dva[c] = 0.f;
        }
    }
    const T* qg = q + (long)gh * Tq * DH;
    const T* dg = dout + (long)gh * Tq * DH;
    for (int i0 = 0; i0 < Tq; i0 += BQ) {
        int nq = min(BQ, Tq - i0);
        for (int e = threadIdx.x; e < nq * DH; e += blockDim.x) {
            int ii = e / DH, c = e % DH;
            qs[ii][c] = to_f(qg[(long)(i0 + ii) * DH + c]);
            ds_[ii][c] = to_f(dg[(long)(i0 + ii) * DH + c]);
        }
        for (int ii = threadIdx.x; ii < nq; ii += blockDim.x) {
            ls[ii] = lse[(long)gh * Tq + i0 + ii];
            dl[ii] = delta[(long)gh * Tq + i0 + ii];
        }
        __syncthreads();
        if (active) {
            for (int ii = 0; ii < nq; ++ii) {
                float s = b, dp = 0.f;
#pragma unroll
                for (int c = 0; c < DH; ++c) { s += qs[ii][c] * kr[c]; dp += ds_[ii][c] * vr[c]; }
                float p = __expf(s - ls[ii]);
                float dsc = p * (dp - dl[ii]);
#pragma unroll
                for (int c = 0; c < DH; ++c) {
                    dva[c] += p * ds_[ii][c];
                    dka[c] += dsc * qs[ii][c];
                }
            }
        }
        __syncthreads();
    }
    if (j < Tk) {
        long base = ((long)gh * Tk + j) * DH;
#pragma unroll
        for (int c = 0; c < DH; ++c) {
            dk[base + c] = active ? dka[c] : 0.f;
            dv[base + c] = active ? dva[c] : 0.f;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Layer norm over rows of d: y = (x − μ)/√(σ² + eps)·w + b. One warp per row; two passes over
// the row (it stays in L1) for a variance without cancellation.
template <typename T>
__device__ void ln_stats(const T* x, int d, float eps, float* mean, float* rstd) {
    int lane = threadIdx.x & 31;
    float s = 0.f;
    for (int c = lane; c < d; c += 32) s += to_f(x[c]);
    float mu = warp_sum(s) / d;
    float v = 0.f;
    for (int c = lane; c < d; c += 32) {
        float t = to_f(x[c]) - mu;
        v += t * t;
    }
    *mean = mu;
    *rstd = rsqrtf(warp_sum(v) / d + eps);
}

template <typename T>
__device__ void ln_fwd(const T* x, const T* w, const T* b, T* y, int rows, int d, float eps) {
    int warps = blockDim.x >> 5, lane = threadIdx.x & 31;
    for (long r = (long)blockIdx.x * warps + (threadIdx.x >> 5); r < rows;
         r += (long)gridDim.x * warps) {
        const T* xr = x + r * d;
        float mu, rs;
        ln_stats(xr, d, eps, &mu, &rs);
        for (int c = lane; c < d; c += 32)
            y[r * d + c] = from_f<T>((to_f(xr[c]) - mu) * rs * to_f(w[c]) + to_f(b[c]));
    }
}

// dx = (ĝ − mean(ĝ) − x̂·mean(ĝ⊙x̂))/σ with ĝ = g⊙w; dw = Σ_rows g⊙x̂, db = Σ_rows g, gathered
// per block in shared memory (2·d floats), then added to dwb = [dw; db] (f32, zeroed).
template <typename T>
__device__ void ln_bwd(const T* x, const T* w, const T* g, float* dx, float* dwb, int rows, int d,
                       float eps) {
    extern __shared__ float sh[];
    for (int c = threadIdx.x; c < 2 * d; c += blockDim.x) sh[c] = 0.f;
    __syncthreads();
    int warps = blockDim.x >> 5, lane = threadIdx.x & 31;
    for (long r = (long)blockIdx.x * warps + (threadIdx.x >> 5); r < rows;
         r += (long)gridDim.x * warps) {
        const T* xr = x + r * d;
        const T* gr = g + r * d;
        float mu, rs;
        ln_stats(xr, d, eps, &mu, &rs);
        float m1 = 0.f, m2 = 0.f;
        for (int c = lane; c < d; c += 32) {
            float xh = (to_f(xr[c]) - mu) * rs, gv = to_f(gr[c]);
            float gh = gv * to_f(w[c]);
            m1 += gh;
            m2 += gh * xh;
            atomicAdd(&sh[c], gv * xh);
            atomicAdd(&sh[d + c], gv);
        }
        m1 = warp_sum(m1) / d;
        m2 = warp_sum(m2) / d;
        for (int c = lane; c < d; c += 32) {
            float xh = (to_f(xr[c]) - mu) * rs;
            dx[r * d + c] = (to_f(gr[c]) * to_f(w[c]) - m1 - xh * m2) * rs;
        }
    }
    __syncthreads();
    for (int c = threadIdx.x; c < 2 * d; c += blockDim.x)
        if (sh[c] != 0.f) atomicAdd(&dwb[c], sh[c]);
}

// ---------------------------------------------------------------------------------------------
// The linear mixer's masked reduction: y[r, j, :] = Σ_i w[j, i]·a_ri·h[r, i, :] with
// a_ri = m_ri / max(1, Σ_i m_ri). h [R, L, d], mask [R, L] (T, 0 or 1), w [LP, L].
// One block per row r, threads over channels; LP ≤ MIX_MAX_LP.
#define MIX_MAX_LP 8

template <typename T>
__device__ float mix_coeffs(const T* mask, int L, float* a) {
    // a[i] = m_i / max(1, Σ m); returns the count.
    __shared__ float cnt;
    if (threadIdx.x == 0) cnt = 0.f;
    __syncthreads();
    float s = 0.f;
    for (int i = threadIdx.x; i < L; i += blockDim.x) s += to_f(mask[i]);
    atomicAdd(&cnt, s);
    __syncthreads();
    float inv = 1.f / fmaxf(1.f, cnt);
    for (int i = threadIdx.x; i < L; i += blockDim.x) a[i] = to_f(mask[i]) * inv;
    __syncthreads();
    return cnt;
}

template <typename T>
__device__ void mix_fwd(const T* h, const T* mask, const T* w, T* y, int L, int d, int LP) {
    extern __shared__ float sh[];  // a [L], then w [LP, L]
    float* a = sh;
    float* ws = sh + L;
    long r = blockIdx.x;
    for (int e = threadIdx.x; e < LP * L; e += blockDim.x) ws[e] = to_f(w[e]);
    mix_coeffs(mask + r * L, L, a);
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        float acc[MIX_MAX_LP];
#pragma unroll
        for (int j = 0; j < MIX_MAX_LP; ++j) acc[j] = 0.f;
        for (int i = 0; i < L; ++i) {
            float ai = a[i];
            if (ai == 0.f) continue;
            float hv = ai * to_f(h[(r * L + i) * d + c]);
#pragma unroll
            for (int j = 0; j < MIX_MAX_LP; ++j)
                if (j < LP) acc[j] += ws[j * L + i] * hv;
        }
        for (int j = 0; j < LP; ++j) y[(r * LP + j) * d + c] = from_f<T>(acc[j]);
    }
}

// dh[r, i, c] = a_ri·Σ_j w[j, i]·g[r, j, c]; dw[j, i] += Σ_r a_ri·(g[r, j, :]·h[r, i, :]) per
// block in shared memory, then into dw (f32, zeroed). Blocks take rows r = blockIdx.x, +gridDim.x…
template <typename T>
__device__ void mix_bwd(const T* h, const T* mask, const T* w, const T* g, float* dh, float* dw,
                        int R, int L, int d, int LP) {
    extern __shared__ float sh[];  // a [L], w [LP, L], dw partial [LP, L]
    float* a = sh;
    float* ws = sh + L;
    float* dws = sh + L + LP * L;
    for (int e = threadIdx.x; e < LP * L; e += blockDim.x) { ws[e] = to_f(w[e]); dws[e] = 0.f; }
    int warps = blockDim.x >> 5, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (long r = blockIdx.x; r < R; r += gridDim.x) {
        __syncthreads();
        mix_coeffs(mask + r * L, L, a);
        // dh: threads over channels.
        for (int c = threadIdx.x; c < d; c += blockDim.x) {
            float gr[MIX_MAX_LP];
#pragma unroll
            for (int j = 0; j < MIX_MAX_LP; ++j) gr[j] = j < LP ? to_f(g[(r * LP + j) * d + c]) : 0.f;
            for (int i = 0; i < L; ++i) {
                float s = 0.f;
#pragma unroll
                for (int j = 0; j < MIX_MAX_LP; ++j)
                    if (j < LP) s += ws[j * L + i] * gr[j];
                dh[(r * L + i) * d + c] = a[i] * s;
            }
        }
        // dw: one warp per byte position i, lanes over channels.
        for (int i = warp; i < L; i += warps) {
            float ai = a[i];
            if (ai == 0.f) continue;
            for (int j = 0; j < LP; ++j) {
                float s = 0.f;
                for (int c = lane; c < d; c += 32)
                    s += to_f(g[(r * LP + j) * d + c]) * to_f(h[(r * L + i) * d + c]);
                s = warp_sum(s);
                if (lane == 0) dws[j * L + i] += ai * s;
            }
        }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < LP * L; e += blockDim.x)
        if (dws[e] != 0.f) atomicAdd(&dw[e], dws[e]);
}

// ---------------------------------------------------------------------------------------------
// Fills n 32-bit or 16-bit words with a bit pattern: zeroes accumulators, and poisons outputs
// with NaN when the GPU check asks for it (so that an element a kernel forgot shows).
extern "C" __global__ void tempest_fill32(uint32_t* p, long n, uint32_t bits) {
    for (long e = blockIdx.x * (long)blockDim.x + threadIdx.x; e < n; e += (long)gridDim.x * blockDim.x)
        p[e] = bits;
}
extern "C" __global__ void tempest_fill16(uint16_t* p, long n, uint32_t bits) {
    for (long e = blockIdx.x * (long)blockDim.x + threadIdx.x; e < n; e += (long)gridDim.x * blockDim.x)
        p[e] = (uint16_t)bits;
}

// ---------------------------------------------------------------------------------------------
// extern "C" entry points, one per kernel, dtype (f32, bf16) and head size.
#define FOR_TYPES(M) M(f32, float) M(bf16, __nv_bfloat16)

#define EMBED(name, T)                                                                             \
    extern "C" __global__ void tempest_embed_fwd_##name(const uint32_t* ids, const uint8_t* mask, \
        const T* table, const T* pos, T* out, int n_tok, int L, int d, int vocab) {               \
        embed_fwd<T>(ids, mask, table, pos, out, n_tok, L, d, vocab);                             \
    }                                                                                              \
    extern "C" __global__ void tempest_embed_bwd_table_##name(const uint32_t* ids,                \
        const uint8_t* mask, const T* g, float* dtable, int n_tok, int d, int vocab) {            \
        embed_bwd_table<T>(ids, mask, g, dtable, n_tok, d, vocab);                                \
    }                                                                                              \
    extern "C" __global__ void tempest_embed_bwd_pos_##name(const uint8_t* mask, const T* g,      \
        float* dpos, int rows, int L, int d, int rows_per_block) {                                 \
        embed_bwd_pos<T>(mask, g, dpos, rows, L, d, rows_per_block);                              \
    }
FOR_TYPES(EMBED)

#define ATTN_DH(name, T, DH)                                                                       \
    extern "C" __global__ void tempest_attn_fwd_##name##_##DH(const T* q, const T* k, const T* v, \
        const T* bias, T* o, int H, int Tq, int Tk) {                                              \
        attn_fwd<T, DH>(q, k, v, bias, o, H, Tq, Tk);                                              \
    }                                                                                              \
    extern "C" __global__ void tempest_attn_bwd_q_##name##_##DH(const T* q, const T* k,           \
        const T* v, const T* bias, const T* o, const T* dout, float* dq, float* lse,               \
        float* delta, int H, int Tq, int Tk) {                                                     \
        attn_bwd_q<T, DH>(q, k, v, bias, o, dout, dq, lse, delta, H, Tq, Tk);                     \
    }                                                                                              \
    extern "C" __global__ void tempest_attn_bwd_kv_##name##_##DH(const T* q, const T* k,          \
        const T* v, const T* bias, const T* dout, const float* lse, const float* delta,            \
        float* dk, float* dv, int H, int Tq, int Tk) {                                             \
        attn_bwd_kv<T, DH>(q, k, v, bias, dout, lse, delta, dk, dv, H, Tq, Tk);                   \
    }
#define ATTN(name, T) ATTN_DH(name, T, 8) ATTN_DH(name, T, 16) ATTN_DH(name, T, 32) \
    ATTN_DH(name, T, 64)
FOR_TYPES(ATTN)

#define LN(name, T)                                                                                \
    extern "C" __global__ void tempest_ln_fwd_##name(const T* x, const T* w, const T* b, T* y,    \
        int rows, int d, float eps) {                                                              \
        ln_fwd<T>(x, w, b, y, rows, d, eps);                                                       \
    }                                                                                              \
    extern "C" __global__ void tempest_ln_bwd_##name(const T* x, const T* w, const T* g,          \
        float* dx, float* dwb, int rows, int d, float eps) {                                       \
        ln_bwd<T>(x, w, g, dx, dwb, rows, d, eps);                                                 \
    }
FOR_TYPES(LN)

#define MIX(name, T)                                                                               \
    extern "C" __global__ void tempest_mix_fwd_##name(const T* h, const T* mask, const T* w,      \
        T* y, int L, int d, int LP) {                                                              \
        mix_fwd<T>(h, mask, w, y, L, d, LP);                                                       \
    }                                                                                              \
    extern "C" __global__ void tempest_mix_bwd_##name(const T* h, const T* mask, const T* w,      \
        const T* g, float* dh, float* dw, int R, int L, int d, int LP) {                           \
        mix_bwd<T>(h, mask, w, g, dh, dw, R, L, d, LP);                                            \
    }
FOR_TYPES(MIX)
