//! The kernels' part of the GPU check: every op of [`crate::cuda`] on a device against its CPU
//! reference, on fresh random inputs with poisoned outputs, and the speed of the device's
//! matrix products. tempest-model adds the model-level checks (`tempest_model::cuda::check`);
//! `examples/gpu_check.rs` (run by `scripts/gpu-check.sh`) prints them all. Everything here
//! also runs CPU against CPU, which is how the CPU tests keep it compiling and honest.

use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor, Var};
use tempest_tokenize::rng::SplitMix64;

/// Relative error allowed in f32.
pub const TOL_F32: f64 = 1e-5;
/// Relative error allowed in bf16.
pub const TOL_BF16: f64 = 1e-2;

/// The workspace's SplitMix64 with the draws the checks need, so that a failing case can be
/// rerun from its seed.
#[derive(Debug, Clone)]
pub struct Rng(SplitMix64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(SplitMix64::new(seed))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        self.0.next_f64()
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.uniform() * n as f64) as usize % n.max(1)
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u = self.uniform().max(1e-300);
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    /// A CPU f32 tensor of normals times `scale`.
    pub fn tensor(&mut self, shape: &[usize], scale: f64) -> Result<Tensor> {
        let n = shape.iter().product::<usize>();
        let v: Vec<f32> = (0..n).map(|_| (self.normal() * scale) as f32).collect();
        Tensor::from_vec(v, shape, &Device::Cpu)
    }

    /// Block lengths in `1..=len`, with the first block fully padded (length 0), as a
    /// `[rows, len]` 0/1 mask (real bytes first, as the tokenizer pads).
    pub fn prefix_mask(&mut self, rows: usize, len: usize) -> Vec<u8> {
        let mut m = vec![0u8; rows * len];
        for r in 1..rows {
            let n = 1 + self.below(len);
            m[r * len..r * len + n].iter_mut().for_each(|v| *v = 1);
        }
        m
    }
}

/// `max|a − b| / max|b|` over all elements (in f64, on the CPU); NaN if either holds a NaN, so
/// that an unwritten (poisoned) element fails every comparison.
pub fn rel_err(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    let b = b
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    if a.len() != b.len() {
        candle_core::bail!("rel_err: {} and {} elements", a.len(), b.len());
    }
    let (mut diff, mut scale) = (0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(&b) {
        if x.is_nan() || y.is_nan() {
            return Ok(f64::NAN);
        }
        diff = diff.max((x - y).abs());
        scale = scale.max(y.abs());
    }
    Ok(if scale > 0.0 { diff / scale } else { diff })
}

/// One op, one case, one dtype: the largest relative error of its output and of its gradients.
#[derive(Debug, Clone)]
pub struct KernelCheck {
    /// The op and the case, e.g. `attention E_t 64x6x144x144 dh32`.
    pub name: String,
    /// The dtype the device computed in.
    pub dtype: DType,
    /// Relative error of the output.
    pub forward: f64,
    /// The largest relative error of the gradients.
    pub backward: f64,
}

impl KernelCheck {
    /// The tolerance of its dtype.
    pub fn tolerance(&self) -> f64 {
        if self.dtype == DType::BF16 {
            TOL_BF16
        } else {
            TOL_F32
        }
    }

    /// Both errors within the tolerance (NaN fails).
    pub fn passed(&self) -> bool {
        self.forward <= self.tolerance() && self.backward <= self.tolerance()
    }
}

/// A function of an op's inputs, on any device.
type OpFn<'a> = Box<dyn Fn(&[Tensor]) -> Result<Tensor> + 'a>;

/// An op under test: float inputs (the ones that get gradients first, `grads` of them), and
/// a function of them on any device.
struct Case<'a> {
    name: String,
    inputs: Vec<Tensor>,
    grads: usize,
    op: OpFn<'a>,
}

/// Output and gradients of `(op(inputs)·w).sum()` on `dev` in `dtype`; inputs are CPU f32.
fn run_case(case: &Case<'_>, w: &Tensor, dev: &Device, dtype: DType) -> Result<Vec<Tensor>> {
    let mut vars = Vec::new();
    let mut inputs = Vec::new();
    for (i, x) in case.inputs.iter().enumerate() {
        let x = x.to_dtype(dtype)?.to_device(dev)?;
        if i < case.grads {
            let v = Var::from_tensor(&x)?;
            inputs.push(v.as_tensor().clone());
            vars.push(v);
        } else {
            inputs.push(x);
        }
    }
    let y = (case.op)(&inputs)?;
    let w = w.to_dtype(dtype)?.to_device(dev)?;
    let grads = (&y * &w)?.sum_all()?.backward()?;
    let mut out = vec![y];
    for v in &vars {
        match grads.get(v.as_tensor()) {
            Some(g) => out.push(g.clone()),
            None => candle_core::bail!("{}: no gradient for an input", case.name),
        }
    }
    Ok(out)
}

/// The device's results against the CPU reference's, which computes on the same values
/// (rounded to `dtype`, then widened to f32 and computed in f64).
fn compare(case: &Case<'_>, dev: &Device, dtype: DType, rng: &mut Rng) -> Result<KernelCheck> {
    let shape = (case.op)(&case.inputs)?.dims().to_vec();
    let w = rng.tensor(&shape, 1.0)?;
    let rounded = Case {
        name: case.name.clone(),
        inputs: case
            .inputs
            .iter()
            .map(|x| x.to_dtype(dtype)?.to_dtype(x.dtype()))
            .collect::<Result<_>>()?,
        grads: case.grads,
        op: Box::new(|x| (case.op)(x)),
    };
    let w_rounded = w.to_dtype(dtype)?.to_dtype(DType::F32)?;
    super::set_poison_outputs(true);
    let got = run_case(case, &w, dev, dtype);
    super::set_poison_outputs(false);
    let got = got?;
    let want = run_case(&rounded, &w_rounded, &Device::Cpu, DType::F32)?;
    let forward = rel_err(&got[0], &want[0])?;
    let mut backward = 0.0f64;
    for (g, r) in got[1..].iter().zip(&want[1..]) {
        let e = rel_err(g, r)?;
        backward = if e.is_nan() {
            f64::NAN
        } else {
            backward.max(e)
        };
    }
    Ok(KernelCheck {
        name: case.name.clone(),
        dtype,
        forward,
        backward,
    })
}

/// Every op on realistic and edge shapes (fully padded blocks, one query against many keys,
/// the most keys the kernel takes, each compiled head size), in f32 and bf16, on `dev`
/// against the CPU reference. `quick` keeps the shapes small (the CPU-only tests).
pub fn check_kernels(dev: &Device, seed: u64, quick: bool) -> Result<Vec<KernelCheck>> {
    let mut rng = Rng::new(seed);
    let cases = cases(&mut rng, quick)?;
    let mut out = Vec::new();
    for dtype in [DType::F32, DType::BF16] {
        for case in &cases {
            out.push(compare(case, dev, dtype, &mut rng)?);
        }
    }
    Ok(out)
}

fn cases(rng: &mut Rng, quick: bool) -> Result<Vec<Case<'static>>> {
    let cpu = Device::Cpu;
    let mut cases = Vec::new();
    // Byte embedding: the paper preset's E_t width, 1 s of MP3 frames.
    let (rows, len, d, vocab, positions) = if quick {
        (5, 9, 8, 257, 12)
    } else {
        (64, 144, 192, 257, 1024)
    };
    let ids: Vec<u32> = (0..rows * len).map(|_| rng.below(vocab) as u32).collect();
    let mask = rng.prefix_mask(rows, len);
    let ids = Tensor::from_vec(ids, (rows, len), &cpu)?;
    let mask = Tensor::from_vec(mask, (rows, len), &cpu)?;
    cases.push(Case {
        name: format!("embed_bytes {rows}x{len} d{d}"),
        inputs: vec![
            rng.tensor(&[vocab, d], 1.0)?,
            rng.tensor(&[positions, d], 0.02)?,
        ],
        grads: 2,
        op: Box::new(move |x| super::embed_bytes(&ids, &mask, &x[0], &x[1])),
    });
    // Attention: (label, G, H, Tq, Tk, dh, bias).
    let shapes: Vec<(&str, usize, usize, usize, usize, usize, bool)> = if quick {
        vec![
            ("small", 3, 2, 5, 5, 8, true),
            ("pooling", 3, 2, 1, 6, 8, true),
            ("no bias", 2, 2, 4, 4, 8, false),
        ]
    } else {
        vec![
            ("E_t paper", 64, 6, 144, 144, 32, true),
            ("E_c paper", 8, 6, 279, 279, 64, true),
            ("D_t paper", 64, 6, 145, 145, 32, false),
            ("pooling", 64, 6, 1, 144, 32, true),
            ("max keys", 4, 2, 512, 512, 16, true),
            ("dh8", 16, 4, 37, 37, 8, true),
        ]
    };
    for (label, g, h, tq, tk, dh, with_bias) in shapes {
        let bias = if with_bias {
            let m: Vec<f32> = rng
                .prefix_mask(g, tk)
                .iter()
                .map(|&m| if m == 1 { 0.0 } else { crate::MASK_BIAS as f32 })
                .collect();
            Some(Tensor::from_vec(m, (g, tk), &cpu)?)
        } else {
            None
        };
        let scale = 1.0 / (dh as f64).sqrt();
        cases.push(Case {
            name: format!("attention {label} {g}x{h}x{tq}x{tk} dh{dh}"),
            inputs: vec![
                rng.tensor(&[g, h, tq, dh], scale * 2.0)?,
                rng.tensor(&[g, h, tk, dh], 1.0)?,
                rng.tensor(&[g, h, tk, dh], 1.0)?,
            ],
            grads: 3,
            op: Box::new(move |x| {
                let b = match &bias {
                    Some(b) => Some(b.to_dtype(x[0].dtype())?.to_device(x[0].device())?),
                    None => None,
                };
                super::attention(&x[0], &x[1], &x[2], b.as_ref())
            }),
        });
    }
    // Layer norm.
    let norms: Vec<(usize, usize)> = if quick {
        vec![(7, 8)]
    } else {
        vec![(9216, 192), (333, 384), (100, 32)]
    };
    for (rows, d) in norms {
        cases.push(Case {
            name: format!("layer_norm {rows}x{d}"),
            inputs: vec![
                (rng.tensor(&[rows, d], 2.0)? + 0.5)?,
                (rng.tensor(&[d], 0.5)? + 1.0)?,
                rng.tensor(&[d], 0.5)?,
            ],
            grads: 3,
            op: Box::new(move |x| super::layer_norm(&x[0], &x[1], &x[2], 1e-5)),
        });
    }
    // The linear mixer: (R, L, d, L').
    let mixes: Vec<(usize, usize, usize, usize)> = if quick {
        vec![(4, 6, 8, 2)]
    } else {
        vec![(64, 144, 192, 1), (16, 100, 64, 3)]
    };
    for (rows, len, d, lp) in mixes {
        let m: Vec<f32> = rng
            .prefix_mask(rows, len)
            .iter()
            .map(|&m| m as f32)
            .collect();
        let mask = Tensor::from_vec(m, (rows, len), &cpu)?;
        cases.push(Case {
            name: format!("masked_mix {rows}x{len} d{d} L'{lp}"),
            inputs: vec![
                rng.tensor(&[rows, len, d], 1.0)?,
                (rng.tensor(&[lp, len], 0.02)? + 1.0)?,
                mask,
            ],
            grads: 2,
            op: Box::new(|x| super::masked_mix(&x[0], &x[2], &x[1])),
        });
    }
    Ok(cases)
}

/// TFLOP/s of an `n`×`n`×`n` matrix product in `dtype` on `dev` (the mean of `reps` after a
/// warm-up).
pub fn matmul_tflops(dev: &Device, dtype: DType, n: usize, reps: usize) -> Result<f64> {
    let a = Tensor::randn(0f32, 1.0, (n, n), dev)?.to_dtype(dtype)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), dev)?.to_dtype(dtype)?;
    let _ = a.matmul(&b)?;
    dev.synchronize()?;
    let t = Instant::now();
    for _ in 0..reps {
        let _ = a.matmul(&b)?;
    }
    dev.synchronize()?;
    Ok(2.0 * (n as f64).powi(3) * reps as f64 / t.elapsed().as_secs_f64() / 1e12)
}
