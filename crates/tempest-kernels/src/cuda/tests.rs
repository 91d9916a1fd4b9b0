//! CPU tests of the ops' references against candle's tensor ops (forward and gradients, f64),
//! and of the hooks' CPU behaviour. The kernels themselves are compared with these references
//! on a GPU by `tests/cuda.rs` and `scripts/gpu-check.sh`.

use candle_core::{DType, Device, Result, Tensor, Var, D};

use super::check::{rel_err, Rng};
use super::*;

/// Output and gradients of `(f(vars)·w).sum()`.
fn value_and_grads(
    vars: &[Var],
    w: &Tensor,
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
) -> Result<Vec<Tensor>> {
    let xs: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&xs)?;
    let g = (&y * w)?.sum_all()?.backward()?;
    let mut out = vec![y];
    for v in vars {
        match g.get(v.as_tensor()) {
            Some(t) => out.push(t.clone()),
            None => candle_core::bail!("no gradient"),
        }
    }
    Ok(out)
}

fn vars(rng: &mut Rng, shapes: &[(&[usize], f64)]) -> Result<Vec<Var>> {
    shapes
        .iter()
        .map(|(s, scale)| Var::from_tensor(&rng.tensor(s, *scale)?.to_dtype(DType::F64)?))
        .collect()
}

fn assert_close(a: &[Tensor], b: &[Tensor], tol: f64, what: &str) -> Result<()> {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.dims(), y.dims(), "{what}: output {i}");
        let e = rel_err(x, y)?;
        assert!(
            e < tol,
            "{what}: output {i} (0 = value, then gradients): relative error {e}"
        );
    }
    Ok(())
}

#[test]
fn embed_reference_matches_gather_and_add() -> Result<()> {
    let mut rng = Rng::new(1);
    let (rows, len, d, vocab, p) = (6, 11, 5, 257, 16);
    let ids: Vec<u32> = (0..rows * len).map(|_| rng.below(vocab) as u32).collect();
    let mask = rng.prefix_mask(rows, len);
    let ids = Tensor::from_vec(ids, (rows, len), &Device::Cpu)?;
    let mask = Tensor::from_vec(mask, (rows, len), &Device::Cpu)?;
    let v = vars(&mut rng, &[(&[vocab, d], 1.0), (&[p, d], 0.5)])?;
    let w = rng.tensor(&[rows, len, d], 1.0)?.to_dtype(DType::F64)?;
    let ours = value_and_grads(&v, &w, |x| embed_bytes(&ids, &mask, &x[0], &x[1]))?;
    let plain = value_and_grads(&v, &w, |x| {
        let e = x[0]
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((rows, len, d))?;
        let e = e.broadcast_add(&x[1].narrow(0, 0, len)?)?;
        e.broadcast_mul(&mask.to_dtype(DType::F64)?.unsqueeze(2)?)
    })?;
    assert_close(&ours, &plain, 1e-12, "embed_bytes")?;
    // Padding embeds to exactly 0, and the first block is all padding.
    let first = ours[0]
        .narrow(0, 0, 1)?
        .abs()?
        .sum_all()?
        .to_scalar::<f64>()?;
    assert_eq!(first, 0.0);
    Ok(())
}

/// The tensor-op attention the model uses elsewhere: softmax(q·kᵀ + bias)·v.
fn plain_attention(q: &Tensor, k: &Tensor, v: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let s = q.matmul(&k.t()?)?;
    let s = match bias {
        Some(b) => {
            let (g, t) = b.dims2()?;
            s.broadcast_add(&b.reshape((g, 1, 1, t))?)?
        }
        None => s,
    };
    candle_nn::ops::softmax(&s, D::Minus1)?.matmul(v)
}

#[test]
fn attention_reference_matches_tensor_ops() -> Result<()> {
    let mut rng = Rng::new(2);
    for (g, h, tq, tk, dh, with_bias) in [
        (4, 2, 7, 7, 4, true),
        (3, 3, 1, 9, 8, true),
        (2, 2, 5, 6, 4, false),
    ] {
        let v = vars(
            &mut rng,
            &[
                (&[g, h, tq, dh], 0.7),
                (&[g, h, tk, dh], 1.0),
                (&[g, h, tk, dh], 1.0),
            ],
        )?;
        // Every group keeps at least one real key here: the tensor ops attend uniformly over
        // padding where there is none, which the next test covers.
        let bias = if with_bias {
            let m: Vec<f64> = (0..g * tk)
                .map(|i| {
                    if i % tk == 0 || rng.uniform() < 0.6 {
                        0.0
                    } else {
                        crate::MASK_BIAS
                    }
                })
                .collect();
            Some(Tensor::from_vec(m, (g, tk), &Device::Cpu)?)
        } else {
            None
        };
        let w = rng.tensor(&[g, h, tq, dh], 1.0)?.to_dtype(DType::F64)?;
        let ours = value_and_grads(&v, &w, |x| attention(&x[0], &x[1], &x[2], bias.as_ref()))?;
        let plain = value_and_grads(&v, &w, |x| {
            plain_attention(&x[0], &x[1], &x[2], bias.as_ref())
        })?;
        assert_close(
            &ours,
            &plain,
            1e-10,
            &format!("attention {g}x{h}x{tq}x{tk}"),
        )?;
    }
    Ok(())
}

#[test]
fn attention_without_real_keys_gives_zero_and_no_gradient() -> Result<()> {
    let mut rng = Rng::new(3);
    let (g, h, t, dh) = (2, 2, 5, 4);
    let v = vars(
        &mut rng,
        &[
            (&[g, h, t, dh], 1.0),
            (&[g, h, t, dh], 1.0),
            (&[g, h, t, dh], 1.0),
        ],
    )?;
    // Group 0 all padding, group 1 all real.
    let m: Vec<f64> = (0..g * t)
        .map(|i| if i < t { crate::MASK_BIAS } else { 0.0 })
        .collect();
    let bias = Tensor::from_vec(m, (g, t), &Device::Cpu)?;
    let w = rng.tensor(&[g, h, t, dh], 1.0)?.to_dtype(DType::F64)?;
    let ours = value_and_grads(&v, &w, |x| attention(&x[0], &x[1], &x[2], Some(&bias)))?;
    for (i, t) in ours.iter().enumerate() {
        let padded = t.narrow(0, 0, 1)?.abs()?.sum_all()?.to_scalar::<f64>()?;
        assert_eq!(padded, 0.0, "output {i} of the padded group");
    }
    let plain = value_and_grads(&v, &w, |x| {
        plain_attention(&x[0], &x[1], &x[2], Some(&bias))
    })?;
    let real: Vec<Tensor> = ours
        .iter()
        .map(|t| t.narrow(0, 1, 1))
        .collect::<Result<_>>()?;
    let real_plain: Vec<Tensor> = plain
        .iter()
        .map(|t| t.narrow(0, 1, 1))
        .collect::<Result<_>>()?;
    assert_close(&real, &real_plain, 1e-10, "the real group")
}

#[test]
fn layer_norm_reference_matches_layer_norm_slow() -> Result<()> {
    let mut rng = Rng::new(4);
    let (rows, d) = (9, 12);
    let v = vars(
        &mut rng,
        &[(&[3, rows / 3, d], 2.0), (&[d], 0.5), (&[d], 0.5)],
    )?;
    let w = rng.tensor(&[3, rows / 3, d], 1.0)?.to_dtype(DType::F64)?;
    let ours = value_and_grads(&v, &w, |x| layer_norm(&x[0], &x[1], &x[2], 1e-5))?;
    let plain = value_and_grads(&v, &w, |x| {
        candle_nn::ops::layer_norm_slow(&x[0], &x[1], &x[2], 1e-5)
    })?;
    assert_close(&ours, &plain, 1e-10, "layer_norm")
}

#[test]
fn masked_mix_reference_matches_the_models_formula() -> Result<()> {
    let mut rng = Rng::new(5);
    let (rows, len, d, lp) = (5, 7, 6, 2);
    let v = vars(&mut rng, &[(&[rows, len, d], 1.0), (&[lp, len], 1.0)])?;
    let m: Vec<f64> = rng
        .prefix_mask(rows, len)
        .iter()
        .map(|&m| m as f64)
        .collect();
    let mask = Tensor::from_vec(m, (rows, len), &Device::Cpu)?;
    let w = rng.tensor(&[rows, lp, d], 1.0)?.to_dtype(DType::F64)?;
    let ours = value_and_grads(&v, &w, |x| masked_mix(&x[0], &mask, &x[1]))?;
    // model.rs, Mixer::forward, the linear mixer.
    let plain = value_and_grads(&v, &w, |x| {
        let count = mask.sum_keepdim(1)?.maximum(1.0)?;
        let weights = x[1]
            .unsqueeze(0)?
            .broadcast_mul(&mask.broadcast_div(&count)?.unsqueeze(1)?)?;
        weights.matmul(&x[0])
    })?;
    assert_close(&ours, &plain, 1e-12, "masked_mix")
}

#[test]
fn references_take_f32_and_bf16() -> Result<()> {
    // The GPU check compares bf16 kernels with these references; here the references run in
    // f32 and bf16 on the same values and must agree to bf16's precision.
    let checks = check::check_kernels(&Device::Cpu, 6, true)?;
    assert!(checks.len() >= 12, "{} cases", checks.len());
    for c in &checks {
        assert!(c.passed(), "{c:?}");
    }
    Ok(())
}

#[test]
fn hooks_leave_the_cpu_to_its_own_path() -> Result<()> {
    let x = Tensor::ones((2, 3, 8), DType::F32, &Device::Cpu)?;
    let w = Tensor::ones(8, DType::F32, &Device::Cpu)?;
    assert!(!available(&Device::Cpu));
    assert!(hook_layer_norm(&x, &w, &w, 1e-5)?.is_none());
    let q = Tensor::ones((1, 1, 3, 8), DType::F32, &Device::Cpu)?;
    assert!(hook_attention(&q, &q, &q, None)?.is_none());
    let m = Tensor::ones((2, 3), DType::F32, &Device::Cpu)?;
    let mw = Tensor::ones((1, 3), DType::F32, &Device::Cpu)?;
    assert!(hook_masked_mix(&x, &m, &mw)?.is_none());
    Ok(())
}
