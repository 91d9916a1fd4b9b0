//! Launches the kernels of `cuda/tempest.cu` (feature `cuda`). The only unsafe code of the
//! crate: allocating device memory that a kernel writes before anything reads it, and the
//! kernel launches themselves, whose arguments must match the kernels' signatures.
#![allow(unsafe_code)]

use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, CudaView, CudaViewMut, DeviceRepr, LaunchArgs,
    LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, CudaStorageSlice, WrapErr};
use candle_core::{CudaDevice, CudaStorage, DType, Layout, Result, Storage, Tensor};
use half::bf16;
use std::sync::Arc;

use super::reference::{AttnDims, EmbedDims, MixDims};

/// The PTX nvcc made of `cuda/tempest.cu` (build.rs).
const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/tempest.ptx"));
/// The name candle caches the loaded module under.
const MODULE: &str = "tempest-kernels";
/// Threads per block of the row-per-thread attention kernels (the tile of queries or keys).
const ATTN_THREADS: u32 = 64;
/// Blocks that accumulate partial sums in shared memory before adding them to global memory:
/// a few per multiprocessor.
const REDUCE_BLOCKS: usize = 528;

/// The PTX to load: the file `$TEMPEST_PTX` if set (`scripts/gpu-check.sh` compiles the
/// kernels there with the GPU machine's own nvcc), else the PTX embedded at build time.
fn ptx() -> Result<&'static str> {
    static TEXT: std::sync::OnceLock<std::result::Result<String, String>> =
        std::sync::OnceLock::new();
    let text = TEXT.get_or_init(|| match std::env::var_os("TEMPEST_PTX") {
        Some(path) => std::fs::read_to_string(&path)
            .map_err(|e| format!("TEMPEST_PTX={}: {e}", path.to_string_lossy())),
        None => Ok(PTX.to_string()),
    });
    text.as_deref()
        .map_err(|e| candle_core::Error::msg(e.clone()))
}

/// A loaded kernel and the device's stream to launch it on.
struct Loaded {
    func: CudaFunction,
    stream: Arc<CudaStream>,
}

impl Loaded {
    fn builder(&self) -> LaunchArgs<'_> {
        self.stream.launch_builder(&self.func)
    }
}

fn func(dev: &CudaDevice, name: &str) -> Result<Loaded> {
    Ok(Loaded {
        func: dev
            .get_or_load_custom_func(name, MODULE, ptx()?)?
            .into_cuda_function(),
        stream: dev.cuda_stream(),
    })
}

fn config(grid: (u32, u32, u32), block: u32, shared: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: grid,
        block_dim: (block, 1, 1),
        shared_mem_bytes: shared,
    }
}

fn blocks(n: usize, per: usize, cap: usize) -> u32 {
    n.div_ceil(per).clamp(1, cap) as u32
}

fn int(n: usize) -> Result<i32> {
    i32::try_from(n).map_err(|_| candle_core::Error::msg(format!("size {n} exceeds i32")))
}

/// The dtype suffix of a kernel's name.
trait Kernel: CudaDType + DeviceRepr {
    const SUFFIX: &'static str;
}
impl Kernel for f32 {
    const SUFFIX: &'static str = "f32";
}
impl Kernel for bf16 {
    const SUFFIX: &'static str = "bf16";
}

/// The contiguous part of a storage that a layout describes.
fn view<'a, T: CudaDType>(s: &'a CudaStorage, l: &Layout) -> Result<CudaView<'a, T>> {
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("tempest cuda kernel: input is not contiguous")
    };
    Ok(s.as_cuda_slice::<T>()?.slice(a..b))
}

/// Runs `f` on the CUDA storage of a tensor held by an op (a read lock while it runs).
fn with_tensor<R>(t: &Tensor, f: impl FnOnce(&CudaStorage, &Layout) -> Result<R>) -> Result<R> {
    let (guard, layout) = t.storage_and_layout();
    match &*guard {
        Storage::Cuda(s) => f(s, layout),
        _ => candle_core::bail!("tempest cuda kernel: an operand is not on the GPU"),
    }
}

/// `n` elements for a kernel to write; NaN-filled when poisoning is on (the GPU check).
fn output<T: DeviceRepr>(dev: &CudaDevice, n: usize) -> Result<CudaSlice<T>> {
    // SAFETY: every element is written by the kernel the caller launches next (the GPU check
    // poisons the buffer to prove it) before the storage is handed out.
    let mut s = unsafe { dev.alloc::<T>(n.max(1)) }?;
    if super::poison_outputs() {
        fill(dev, &mut s.slice_mut(..), n, u32::MAX)?;
    }
    Ok(s)
}

/// Writes `bits` into each of the first `n` elements (4 or 2 bytes each).
fn fill<T: DeviceRepr>(
    dev: &CudaDevice,
    s: &mut CudaViewMut<'_, T>,
    n: usize,
    bits: u32,
) -> Result<()> {
    let name = match std::mem::size_of::<T>() {
        4 => "tempest_fill32",
        2 => "tempest_fill16",
        w => candle_core::bail!("fill: elements of {w} bytes"),
    };
    let f = func(dev, name)?;
    let n64 = n as i64;
    let mut b = f.builder();
    b.arg(s);
    b.arg(&n64);
    b.arg(&bits);
    // SAFETY: the kernel writes n elements of the buffer, which holds at least n.
    unsafe { b.launch(config((blocks(n, 256, 4096), 1, 1), 256, 0)) }.w()?;
    Ok(())
}

fn wrap<T: Kernel>(s: CudaSlice<T>, dev: &CudaDevice) -> CudaStorage {
    CudaStorage::wrap_cuda_slice(s, dev.clone())
}

/// Calls `$f::<T>(...)` for the storage's dtype (f32 or bf16).
macro_rules! by_dtype {
    ($dtype:expr, $f:ident ( $($arg:expr),* )) => {
        match $dtype {
            DType::F32 => $f::<f32>($($arg),*),
            DType::BF16 => $f::<bf16>($($arg),*),
            d => candle_core::bail!("tempest cuda kernel: unsupported dtype {d:?}"),
        }
    };
}

fn dtype_of(s: &CudaStorage) -> DType {
    match &s.slice {
        CudaStorageSlice::F32(_) => DType::F32,
        CudaStorageSlice::BF16(_) => DType::BF16,
        CudaStorageSlice::F64(_) => DType::F64,
        _ => DType::U8,
    }
}

// ------------------------------------------------------------------------------------------

pub(super) fn embed_fwd(
    ids: &Tensor,
    mask: &Tensor,
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    s: EmbedDims,
) -> Result<CudaStorage> {
    fn run<T: Kernel>(
        ids: &Tensor,
        mask: &Tensor,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s: EmbedDims,
    ) -> Result<CudaStorage> {
        let dev = &s1.device;
        let n = s.rows * s.len * s.dim;
        let mut out = output::<T>(dev, n)?;
        with_tensor(ids, |si, li| {
            with_tensor(mask, |sm, lm| {
                let (ids, mask) = (view::<u32>(si, li)?, view::<u8>(sm, lm)?);
                let (table, pos) = (view::<T>(s1, l1)?, view::<T>(s2, l2)?);
                let f = func(dev, &format!("tempest_embed_fwd_{}", T::SUFFIX))?;
                let (n_tok, l, d, v) = (
                    int(s.rows * s.len)?,
                    int(s.len)?,
                    int(s.dim)?,
                    int(s.vocab)?,
                );
                let mut b = f.builder();
                b.arg(&ids).arg(&mask).arg(&table).arg(&pos).arg(&mut out);
                b.arg(&n_tok).arg(&l).arg(&d).arg(&v);
                // SAFETY: arguments as `tempest_embed_fwd` declares them; sizes checked by the op.
                unsafe { b.launch(config((blocks(n, 256, 65_535), 1, 1), 256, 0)) }.w()?;
                Ok(())
            })
        })?;
        Ok(wrap(out, dev))
    }
    by_dtype!(dtype_of(s1), run(ids, mask, s1, l1, s2, l2, s))
}

pub(super) fn embed_bwd(
    ids: &Tensor,
    mask: &Tensor,
    sg: &CudaStorage,
    lg: &Layout,
    s: EmbedDims,
) -> Result<CudaStorage> {
    fn run<T: Kernel>(
        ids: &Tensor,
        mask: &Tensor,
        sg: &CudaStorage,
        lg: &Layout,
        s: EmbedDims,
    ) -> Result<CudaStorage> {
        let dev = &sg.device;
        let nt = s.vocab * s.dim;
        let mut out = dev.alloc_zeros::<f32>((s.vocab + s.positions) * s.dim)?;
        with_tensor(ids, |si, li| {
            with_tensor(mask, |sm, lm| {
                let (ids, mask, g) = (
                    view::<u32>(si, li)?,
                    view::<u8>(sm, lm)?,
                    view::<T>(sg, lg)?,
                );
                let (n_tok, rows, l, d, v) = (
                    int(s.rows * s.len)?,
                    int(s.rows)?,
                    int(s.len)?,
                    int(s.dim)?,
                    int(s.vocab)?,
                );
                {
                    let mut dt = out.slice_mut(0..nt);
                    let f = func(dev, &format!("tempest_embed_bwd_table_{}", T::SUFFIX))?;
                    let grid = (
                        blocks(s.rows * s.len, 8 * 16, 256),
                        s.dim.div_ceil(32) as u32,
                        1,
                    );
                    let mut b = f.builder();
                    b.arg(&ids)
                        .arg(&mask)
                        .arg(&g)
                        .arg(&mut dt)
                        .arg(&n_tok)
                        .arg(&d)
                        .arg(&v);
                    // SAFETY: as `tempest_embed_bwd_table` declares; vocab·32 floats of shared
                    // memory (vocab ≤ MAX_VOCAB keeps it under 48 KB).
                    unsafe { b.launch(config(grid, 256, (s.vocab * 32 * 4) as u32)) }.w()?;
                }
                let mut dp = out.slice_mut(nt..);
                let f = func(dev, &format!("tempest_embed_bwd_pos_{}", T::SUFFIX))?;
                let per = 64usize;
                let per_i = int(per)?;
                let grid = (s.len as u32, s.rows.div_ceil(per).max(1) as u32, 1);
                let mut b = f.builder();
                b.arg(&mask)
                    .arg(&g)
                    .arg(&mut dp)
                    .arg(&rows)
                    .arg(&l)
                    .arg(&d)
                    .arg(&per_i);
                // SAFETY: as `tempest_embed_bwd_pos` declares.
                unsafe { b.launch(config(grid, s.dim.next_multiple_of(32).min(256) as u32, 0)) }
                    .w()?;
                Ok(())
            })
        })?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }
    by_dtype!(dtype_of(sg), run(ids, mask, sg, lg, s))
}

// ------------------------------------------------------------------------------------------

type Operand<'a> = (&'a CudaStorage, &'a Layout);

/// Runs `f` with the bias's view, or with a null pointer when there is no bias.
fn with_bias<T: Kernel, R>(
    bias: Option<&Tensor>,
    f: impl FnOnce(Option<&CudaView<'_, T>>) -> Result<R>,
) -> Result<R> {
    match bias {
        Some(b) => with_tensor(b, |sb, lb| f(Some(&view::<T>(sb, lb)?))),
        None => f(None),
    }
}

pub(super) fn attn_fwd(
    q: Operand<'_>,
    k: Operand<'_>,
    v: Operand<'_>,
    bias: Option<&Tensor>,
    s: AttnDims,
) -> Result<CudaStorage> {
    fn run<T: Kernel>(
        q: Operand<'_>,
        k: Operand<'_>,
        v: Operand<'_>,
        bias: Option<&Tensor>,
        s: AttnDims,
    ) -> Result<CudaStorage> {
        let dev = &q.0.device;
        let mut out = output::<T>(dev, s.groups * s.heads * s.tq * s.head_dim)?;
        let (qv, kv, vv) = (
            view::<T>(q.0, q.1)?,
            view::<T>(k.0, k.1)?,
            view::<T>(v.0, v.1)?,
        );
        let f = func(
            dev,
            &format!("tempest_attn_fwd_{}_{}", T::SUFFIX, s.head_dim),
        )?;
        let (h, tq, tk) = (int(s.heads)?, int(s.tq)?, int(s.tk)?);
        let grid = (
            (s.groups * s.heads) as u32,
            s.tq.div_ceil(ATTN_THREADS as usize) as u32,
            1,
        );
        with_bias::<T, _>(bias, |b| {
            let null = 0u64;
            let mut l = f.builder();
            l.arg(&qv).arg(&kv).arg(&vv);
            match b {
                Some(b) => l.arg(b),
                None => l.arg(&null),
            };
            l.arg(&mut out).arg(&h).arg(&tq).arg(&tk);
            // SAFETY: as `tempest_attn_fwd_*` declares; Tk ≤ MAX_KEYS and the head size is one
            // the PTX has (checked by the hook), static shared memory under 48 KB.
            unsafe { l.launch(config(grid, ATTN_THREADS, 0)) }.w()?;
            Ok(())
        })?;
        Ok(wrap(out, dev))
    }
    by_dtype!(dtype_of(q.0), run(q, k, v, bias, s))
}

pub(super) fn attn_bwd(
    q: Operand<'_>,
    k: Operand<'_>,
    v: Operand<'_>,
    out: &Tensor,
    dout: &Tensor,
    bias: Option<&Tensor>,
    s: AttnDims,
) -> Result<CudaStorage> {
    fn run<T: Kernel>(
        q: Operand<'_>,
        k: Operand<'_>,
        v: Operand<'_>,
        out: &Tensor,
        dout: &Tensor,
        bias: Option<&Tensor>,
        s: AttnDims,
    ) -> Result<CudaStorage> {
        let dev = &q.0.device;
        let rows = s.groups * s.heads * s.tq;
        let (nq, nk) = (rows * s.head_dim, s.groups * s.heads * s.tk * s.head_dim);
        let mut grads = output::<f32>(dev, nq + 2 * nk)?;
        let mut lse = output::<f32>(dev, rows)?;
        let mut delta = output::<f32>(dev, rows)?;
        let (qv, kv, vv) = (
            view::<T>(q.0, q.1)?,
            view::<T>(k.0, k.1)?,
            view::<T>(v.0, v.1)?,
        );
        let (h, tq, tk) = (int(s.heads)?, int(s.tq)?, int(s.tk)?);
        let gh = (s.groups * s.heads) as u32;
        with_tensor(out, |so, lo| {
            with_tensor(dout, |sd, ld| {
                let (ov, dv) = (view::<T>(so, lo)?, view::<T>(sd, ld)?);
                with_bias::<T, _>(bias, |b| {
                    let null = 0u64;
                    {
                        let mut dq = grads.slice_mut(0..nq);
                        let f = func(
                            dev,
                            &format!("tempest_attn_bwd_q_{}_{}", T::SUFFIX, s.head_dim),
                        )?;
                        let mut l = f.builder();
                        l.arg(&qv).arg(&kv).arg(&vv);
                        match b {
                            Some(b) => l.arg(b),
                            None => l.arg(&null),
                        };
                        l.arg(&ov)
                            .arg(&dv)
                            .arg(&mut dq)
                            .arg(&mut lse)
                            .arg(&mut delta);
                        l.arg(&h).arg(&tq).arg(&tk);
                        let grid = (gh, s.tq.div_ceil(ATTN_THREADS as usize) as u32, 1);
                        // SAFETY: as `tempest_attn_bwd_q_*` declares (see attn_fwd).
                        unsafe { l.launch(config(grid, ATTN_THREADS, 0)) }.w()?;
                    }
                    let (_, mut rest) = grads.split_at_mut(nq);
                    let (mut dk, mut dvv) = rest.split_at_mut(nk);
                    let f = func(
                        dev,
                        &format!("tempest_attn_bwd_kv_{}_{}", T::SUFFIX, s.head_dim),
                    )?;
                    let mut l = f.builder();
                    l.arg(&qv).arg(&kv).arg(&vv);
                    match b {
                        Some(b) => l.arg(b),
                        None => l.arg(&null),
                    };
                    l.arg(&dv).arg(&lse).arg(&delta).arg(&mut dk).arg(&mut dvv);
                    l.arg(&h).arg(&tq).arg(&tk);
                    let grid = (gh, s.tk.div_ceil(ATTN_THREADS as usize) as u32, 1);
                    // SAFETY: as `tempest_attn_bwd_kv_*` declares; lse and delta were written
                    // for every query row by the launch before, on the same stream.
                    unsafe { l.launch(config(grid, ATTN_THREADS, 0)) }.w()?;
                    Ok(())
                })
            })
        })?;
        Ok(CudaStorage::wrap_cuda_slice(grads, dev.clone()))
    }
    by_dtype!(dtype_of(q.0), run(q, k, v, out, dout, bias, s))
}

// ------------------------------------------------------------------------------------------

pub(super) fn ln_fwd(
    x: Operand<'_>,
    w: Operand<'_>,
    b: Operand<'_>,
    rows: usize,
    d: usize,
    eps: f64,
) -> Result<CudaStorage> {
    fn run<T: Kernel>(
        x: Operand<'_>,
        w: Operand<'_>,
        b: Operand<'_>,
        rows: usize,
        d: usize,
        eps: f64,
    ) -> Result<CudaStorage> {
        let dev = &x.0.device;
        let mut out = output::<T>(dev, rows * d)?;
        let (xv, wv, bv) = (
            view::<T>(x.0, x.1)?,
            view::<T>(w.0, w.1)?,
            view::<T>(b.0, b.1)?,
        );
        let f = func(dev, &format!("tempest_ln_fwd_{}", T::SUFFIX))?;
        let (r, dd, e) = (int(rows)?, int(d)?, eps as f32);
        let mut l = f.builder();
        l.arg(&xv)
            .arg(&wv)
            .arg(&bv)
            .arg(&mut out)
            .arg(&r)
            .arg(&dd)
            .arg(&e);
        // SAFETY: as `tempest_ln_fwd` declares; one warp per row, 8 rows per block.
        unsafe { l.launch(config((blocks(rows, 8, 65_535), 1, 1), 256, 0)) }.w()?;
        Ok(wrap(out, dev))
    }
    by_dtype!(dtype_of(x.0), run(x, w, b, rows, d, eps))
}

pub(super) fn ln_bwd(
    x: Operand<'_>,
    w: Operand<'_>,
    g: Operand<'_>,
    rows: usize,
    d: usize,
    eps: f64,
) -> Result<CudaStorage> {
    fn run<T: Kernel>(
        x: Operand<'_>,
        w: Operand<'_>,
        g: Operand<'_>,
        rows: usize,
        d: usize,
        eps: f64,
    ) -> Result<CudaStorage> {
        let dev = &x.0.device;
        let n = rows * d;
        let mut grads = output::<f32>(dev, n + 2 * d)?;
        fill(dev, &mut grads.slice_mut(n..), 2 * d, 0)?;
        let (xv, wv, gv) = (
            view::<T>(x.0, x.1)?,
            view::<T>(w.0, w.1)?,
            view::<T>(g.0, g.1)?,
        );
        let (mut dx, mut dwb) = grads.split_at_mut(n);
        let f = func(dev, &format!("tempest_ln_bwd_{}", T::SUFFIX))?;
        let (r, dd, e) = (int(rows)?, int(d)?, eps as f32);
        let mut l = f.builder();
        l.arg(&xv)
            .arg(&wv)
            .arg(&gv)
            .arg(&mut dx)
            .arg(&mut dwb)
            .arg(&r)
            .arg(&dd)
            .arg(&e);
        // SAFETY: as `tempest_ln_bwd` declares; 2·d floats of shared memory.
        unsafe {
            l.launch(config(
                (blocks(rows, 8, REDUCE_BLOCKS), 1, 1),
                256,
                (2 * d * 4) as u32,
            ))
        }
        .w()?;
        Ok(CudaStorage::wrap_cuda_slice(grads, dev.clone()))
    }
    by_dtype!(dtype_of(x.0), run(x, w, g, rows, d, eps))
}

// ------------------------------------------------------------------------------------------

pub(super) fn mix_fwd(
    h: Operand<'_>,
    mask: Operand<'_>,
    w: Operand<'_>,
    s: MixDims,
) -> Result<CudaStorage> {
    fn run<T: Kernel>(
        h: Operand<'_>,
        mask: Operand<'_>,
        w: Operand<'_>,
        s: MixDims,
    ) -> Result<CudaStorage> {
        let dev = &h.0.device;
        let mut out = output::<T>(dev, s.rows * s.tokens * s.dim)?;
        let (hv, mv, wv) = (
            view::<T>(h.0, h.1)?,
            view::<T>(mask.0, mask.1)?,
            view::<T>(w.0, w.1)?,
        );
        let f = func(dev, &format!("tempest_mix_fwd_{}", T::SUFFIX))?;
        let (l, d, lp) = (int(s.len)?, int(s.dim)?, int(s.tokens)?);
        let mut b = f.builder();
        b.arg(&hv)
            .arg(&mv)
            .arg(&wv)
            .arg(&mut out)
            .arg(&l)
            .arg(&d)
            .arg(&lp);
        let shared = ((s.len + s.tokens * s.len) * 4) as u32;
        let threads = s.dim.next_multiple_of(32).min(256) as u32;
        // SAFETY: as `tempest_mix_fwd` declares; one block per row (grid x < 2³¹), shared
        // memory checked by the hook.
        unsafe { b.launch(config((s.rows.max(1) as u32, 1, 1), threads, shared)) }.w()?;
        Ok(wrap(out, dev))
    }
    by_dtype!(dtype_of(h.0), run(h, mask, w, s))
}

pub(super) fn mix_bwd(
    h: Operand<'_>,
    mask: Operand<'_>,
    w: Operand<'_>,
    grad: &Tensor,
    s: MixDims,
) -> Result<CudaStorage> {
    fn run<T: Kernel>(
        h: Operand<'_>,
        mask: Operand<'_>,
        w: Operand<'_>,
        grad: &Tensor,
        s: MixDims,
    ) -> Result<CudaStorage> {
        let dev = &h.0.device;
        let nh = s.rows * s.len * s.dim;
        let nw = s.tokens * s.len;
        let mut grads = output::<f32>(dev, nh + nw)?;
        fill(dev, &mut grads.slice_mut(nh..), nw, 0)?;
        let (hv, mv, wv) = (
            view::<T>(h.0, h.1)?,
            view::<T>(mask.0, mask.1)?,
            view::<T>(w.0, w.1)?,
        );
        with_tensor(grad, |sg, lg| {
            let gv = view::<T>(sg, lg)?;
            let (mut dh, mut dw) = grads.split_at_mut(nh);
            let f = func(dev, &format!("tempest_mix_bwd_{}", T::SUFFIX))?;
            let (r, l, d, lp) = (int(s.rows)?, int(s.len)?, int(s.dim)?, int(s.tokens)?);
            let mut b = f.builder();
            b.arg(&hv)
                .arg(&mv)
                .arg(&wv)
                .arg(&gv)
                .arg(&mut dh)
                .arg(&mut dw);
            b.arg(&r).arg(&l).arg(&d).arg(&lp);
            let shared = ((s.len + 2 * nw) * 4) as u32;
            // SAFETY: as `tempest_mix_bwd` declares; shared memory checked by the hook.
            unsafe {
                b.launch(config(
                    (blocks(s.rows, 1, REDUCE_BLOCKS), 1, 1),
                    256,
                    shared,
                ))
            }
            .w()?;
            Ok(())
        })?;
        Ok(CudaStorage::wrap_cuda_slice(grads, dev.clone()))
    }
    by_dtype!(dtype_of(h.0), run(h, mask, w, grad, s))
}
