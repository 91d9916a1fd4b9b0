//! The fused CPU ops against candle's tensor ops, forward and backward.

use candle_core::{DType, Device, Result, Tensor, Var};

use super::gelu::{gelu_f64, gelu_grad_f64};
use super::*;
use crate::cuda::check::Rng;
use crate::testing::{normal, uniform};

fn sample(n: usize, dtype: DType) -> Result<Tensor> {
    // Values spanning GELU's interesting range (−8..8), including 0.
    let v: Vec<f64> = (0..n)
        .map(|i| (i as f64 / (n - 1) as f64) * 16.0 - 8.0)
        .collect();
    Tensor::from_vec(v, n, &Device::Cpu)?.to_dtype(dtype)
}

#[test]
fn forward_matches_candle() -> Result<()> {
    for (n, dtype, tol) in [(101, DType::F64, 1e-12), (50_001, DType::F32, 2e-6)] {
        let x = sample(n, dtype)?;
        let diff = (gelu(&x)? - x.gelu()?)?
            .abs()?
            .max(0)?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        assert!(diff < tol, "{dtype:?} n={n}: max diff {diff}");
    }
    Ok(())
}

#[test]
fn backward_matches_candle() -> Result<()> {
    for (n, dtype, tol) in [(101, DType::F64, 1e-5), (50_001, DType::F32, 1e-4)] {
        let x = Var::from_tensor(&sample(n, dtype)?)?;
        let w = sample(n, dtype)?.cos()?; // non-uniform upstream gradient
        let fused = (gelu(x.as_tensor())? * &w)?.sum_all()?.backward()?;
        let plain = (x.as_tensor().gelu()? * &w)?.sum_all()?.backward()?;
        let (a, b) = (fused.get(&x).cloned(), plain.get(&x).cloned());
        let (Some(a), Some(b)) = (a, b) else {
            candle_core::bail!("no gradient")
        };
        // candle's backward rounds its constants to 6 digits: compare loosely to it, and
        // tightly to a central finite difference in f64.
        let diff = (a - b)?
            .abs()?
            .max(0)?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        assert!(diff < tol, "{dtype:?}: max diff {diff}");
    }
    let h = 1e-6;
    for x in [-3.0, -0.7, 0.0, 0.3, 1.1, 4.0] {
        let fd = (gelu_f64(x + h) - gelu_f64(x - h)) / (2.0 * h);
        assert!(
            (fd - gelu_grad_f64(x)).abs() < 1e-8,
            "x={x}: {fd} vs {}",
            gelu_grad_f64(x)
        );
    }
    Ok(())
}

#[test]
fn non_contiguous_input_is_handled() -> Result<()> {
    let x = sample(64, DType::F32)?.reshape((8, 8))?.t()?;
    let diff = (gelu(&x)? - x.gelu()?)?
        .abs()?
        .max_keepdim(0)?
        .max(1)?
        .to_vec1::<f32>()?;
    assert!(diff[0] < 1e-6);
    Ok(())
}

fn grads_of(x: &Var, y: &Tensor, w: &Tensor) -> Result<Tensor> {
    let g = (y * w)?.sum_all()?.backward()?;
    match g.get(x.as_tensor()) {
        Some(t) => Ok(t.clone()),
        None => candle_core::bail!("no gradient"),
    }
}

fn max_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    (a - b)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()
}

#[test]
fn softmax_matches_candle_forward_and_backward() -> Result<()> {
    // 2·3·40 rows of 100: above PAR_MIN, so the parallel path runs; 5×7 rows: the serial one.
    // Fixed inputs (uniform in ±6 and ±2), so a run cannot draw an unlucky row; the f32
    // bound allows for summing 100 terms in another order (≈ 100 ε).
    let mut rng = tempest_tokenize::rng::SplitMix64::new(11);
    let mut uniform = |shape: &[usize], half: f64, dtype| -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n)
            .map(|_| half * (2.0 * rng.next_f64() - 1.0))
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu)?.to_dtype(dtype)
    };
    for (shape, dtype, tol) in [
        (vec![2usize, 3, 40, 100], DType::F32, 1e-5),
        (vec![5, 7], DType::F64, 1e-14),
    ] {
        let x = Var::from_tensor(&uniform(&shape, 6.0, dtype)?)?;
        let w = uniform(&shape, 2.0, dtype)?;
        let fused = softmax(x.as_tensor())?;
        let plain = candle_nn::ops::softmax(x.as_tensor(), candle_core::D::Minus1)?;
        assert!(max_diff(&fused, &plain)? < tol);
        let (gf, gp) = (grads_of(&x, &fused, &w)?, grads_of(&x, &plain, &w)?);
        assert!(
            max_diff(&gf, &gp)? < tol,
            "{dtype:?}: {}",
            max_diff(&gf, &gp)?
        );
    }
    Ok(())
}

#[test]
fn layer_norm_matches_candle_forward_and_backward() -> Result<()> {
    for (shape, dtype, tol) in [
        (vec![4usize, 50, 96], DType::F32, 2e-5),
        (vec![3, 8], DType::F64, 1e-12),
    ] {
        let d = shape[shape.len() - 1];
        let mut rng = Rng::new(shape.len() as u64);
        let x = Var::from_tensor(&normal(&mut rng, shape.clone(), 1.0, 2.0, dtype)?)?;
        let a = Var::from_tensor(&normal(&mut rng, d, 1.0, 0.5, dtype)?)?;
        let b = Var::from_tensor(&normal(&mut rng, d, 0.0, 0.5, dtype)?)?;
        let w = normal(&mut rng, shape, 0.0, 1.0, dtype)?;
        let fused = layer_norm(x.as_tensor(), a.as_tensor(), b.as_tensor(), 1e-5)?;
        let Some(fused) = fused else {
            candle_core::bail!("no fused layer norm on the CPU")
        };
        let plain =
            candle_nn::ops::layer_norm_slow(x.as_tensor(), a.as_tensor(), b.as_tensor(), 1e-5)?;
        assert!(max_diff(&fused, &plain)? < tol);
        let gf = (&fused * &w)?.sum_all()?.backward()?;
        let gp = (&plain * &w)?.sum_all()?.backward()?;
        for v in [&x, &a, &b] {
            let (Some(f), Some(p)) = (gf.get(v.as_tensor()), gp.get(v.as_tensor())) else {
                candle_core::bail!("missing gradient")
            };
            let scale = p
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?
                .max(1.0);
            assert!(
                max_diff(f, p)? / scale < tol,
                "{dtype:?}: {}",
                max_diff(f, p)?
            );
        }
    }
    Ok(())
}

#[test]
fn biased_softmax_matches_softmax_of_the_sum() -> Result<()> {
    for (g, h, t, dtype, tol) in [
        (6usize, 4usize, 30usize, DType::F32, 1e-6),
        (2, 3, 5, DType::F64, 1e-14),
    ] {
        let mut rng = Rng::new(g as u64);
        let x = Var::from_tensor(&normal(&mut rng, (g, h, t, t), 0.0, 2.0, dtype)?)?;
        let mask = uniform(&mut rng, (g, t), DType::F32)?.ge(0.3)?;
        let bias = crate::key_bias(&mask, dtype)?; // [g, 1, 1, t]
        let w = normal(&mut rng, (g, h, t, t), 0.0, 1.0, dtype)?;
        let fused = biased_softmax(x.as_tensor(), &bias.reshape((g, t))?)?;
        let plain =
            candle_nn::ops::softmax(&x.as_tensor().broadcast_add(&bias)?, candle_core::D::Minus1)?;
        assert!(max_diff(&fused, &plain)? < tol);
        assert!(max_diff(&grads_of(&x, &fused, &w)?, &grads_of(&x, &plain, &w)?)? < tol);
    }
    Ok(())
}

#[test]
fn fused_attention_matches_tensor_ops_across_chunks() -> Result<()> {
    // (G, H, Tq, Tk): 5 groups of 2·512·512 scores span 3 chunks; Tq ≠ Tk as in pooling.
    for (g, h, tq, tk, dtype, tol) in [
        (5usize, 2usize, 512usize, 512usize, DType::F32, 2e-5),
        (3, 2, 2, 7, DType::F64, 1e-12),
    ] {
        let dh = 4;
        let mut rng = Rng::new(tk as u64);
        let mut var = |t: usize| -> Result<Var> {
            Var::from_tensor(&normal(&mut rng, (g, h, t, dh), 0.0, 1.0, dtype)?)
        };
        let (q, k, v) = (var(tq)?, var(tk)?, var(tk)?);
        let mask = uniform(&mut rng, (g, tk), DType::F32)?.ge(0.3)?;
        let bias = crate::key_bias(&mask, dtype)?;
        let w = normal(&mut rng, (g, h, tq, dh), 0.0, 1.0, dtype)?;
        let Some(fused) = attention(
            q.as_tensor(),
            k.as_tensor(),
            v.as_tensor(),
            Some(&bias.reshape((g, tk))?),
        )?
        else {
            candle_core::bail!("no fused attention on the CPU")
        };
        let s = q
            .as_tensor()
            .matmul(&k.as_tensor().t()?)?
            .broadcast_add(&bias)?;
        let plain = candle_nn::ops::softmax(&s, candle_core::D::Minus1)?.matmul(v.as_tensor())?;
        assert!(
            max_diff(&fused, &plain)? < tol,
            "forward {}",
            max_diff(&fused, &plain)?
        );
        let gf = (&fused * &w)?.sum_all()?.backward()?;
        let gp = (&plain * &w)?.sum_all()?.backward()?;
        for x in [&q, &k, &v] {
            let (Some(a), Some(b)) = (gf.get(x.as_tensor()), gp.get(x.as_tensor())) else {
                candle_core::bail!("missing gradient")
            };
            // Relative to the gradient's size: a sum over 512 keys in f32 can reach a few
            // 1e-5 in absolute terms.
            let scale = b.abs()?.flatten_all()?.max(0)?.to_dtype(DType::F64)?;
            let scale = scale.to_scalar::<f64>()?.max(1.0);
            assert!(
                max_diff(a, b)? < tol * scale,
                "backward {} (scale {scale})",
                max_diff(a, b)?
            );
        }
    }
    Ok(())
}
