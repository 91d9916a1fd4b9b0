//! The fused layer against the tensor-op layer on the same weights, forward and backward.

use super::*;
use crate::cuda::check::Rng;
use crate::scratch::Pooled;
use crate::testing::normal;
use crate::{key_bias, AttentionWeights, Kernels, LinearView, MlpWeights, NormView, MASK_BIAS};
use candle_core::{Device, Var};

/// A layer's 16 variables, by their names in the model, drawn from N(0.1, 0.5²) with `seed`
/// (not the model's initialisation: its biases are 0 and its norms the identity, so some terms
/// of the backward pass would not matter), of width `d`, `h` heads and MLP width `3d`.
struct TestLayer {
    vars: Vec<(String, Var)>,
    heads: usize,
}

impl TestLayer {
    fn new(d: usize, h: usize, dtype: DType, seed: u64) -> Result<Self> {
        let m = 3 * d;
        let shapes: [(&str, &[usize]); 16] = [
            ("norm1.weight", &[d]),
            ("norm1.bias", &[d]),
            ("attn.q.weight", &[d, d]),
            ("attn.q.bias", &[d]),
            ("attn.k.weight", &[d, d]),
            ("attn.k.bias", &[d]),
            ("attn.v.weight", &[d, d]),
            ("attn.v.bias", &[d]),
            ("attn.o.weight", &[d, d]),
            ("attn.o.bias", &[d]),
            ("norm2.weight", &[d]),
            ("norm2.bias", &[d]),
            ("mlp.fc1.weight", &[m, d]),
            ("mlp.fc1.bias", &[m]),
            ("mlp.fc2.weight", &[d, m]),
            ("mlp.fc2.bias", &[d]),
        ];
        let mut rng = Rng::new(seed);
        let vars = shapes
            .iter()
            .map(|(name, shape)| {
                let t = normal(&mut rng, shape.to_vec(), 0.1, 0.5, dtype)?;
                Ok((name.to_string(), Var::from_tensor(&t)?))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(TestLayer { vars, heads: h })
    }

    fn get(&self, name: &str) -> &Tensor {
        match self.vars.iter().find(|(n, _)| n == name) {
            Some((_, v)) => v.as_tensor(),
            None => panic!("no variable {name}"),
        }
    }

    fn linear(&self, name: &str) -> LinearView<'_> {
        LinearView {
            weight: self.get(&format!("{name}.weight")),
            bias: Some(self.get(&format!("{name}.bias"))),
        }
    }

    fn norm(&self, name: &str) -> NormView<'_> {
        NormView {
            weight: self.get(&format!("{name}.weight")),
            bias: self.get(&format!("{name}.bias")),
            eps: 1e-5,
        }
    }

    fn weights(&self) -> LayerWeights<'_> {
        LayerWeights {
            norm1: self.norm("norm1"),
            attn: AttentionWeights {
                q: self.linear("attn.q"),
                k: self.linear("attn.k"),
                v: self.linear("attn.v"),
                o: self.linear("attn.o"),
                heads: self.heads,
            },
            norm2: self.norm("norm2"),
            mlp: MlpWeights {
                fc1: self.linear("mlp.fc1"),
                fc2: self.linear("mlp.fc2"),
            },
        }
    }

    /// The layer on `x` with dropout 0.25 when training, fused as `layer` says.
    fn forward(
        &self,
        x: &Tensor,
        bias: Option<&Tensor>,
        train: bool,
        rng: &DropoutRng,
        layer: bool,
    ) -> Result<Tensor> {
        let p = if train { 0.25 } else { 0.0 };
        let kernels = Kernels { ops: true, layer };
        crate::layer(x, &self.weights(), bias, p, rng, kernels)
    }
}

fn max_abs(t: &Tensor) -> Result<f64> {
    t.abs()?
        .flatten_all()?
        .max(0)?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()
}

/// The fused layer against the tensor-op layer built on the same variables: outputs, and
/// the gradients of `x` and of every variable, relative to the largest entry.
fn compare(
    (b, t, d, h): (usize, usize, usize, usize),
    dtype: DType,
    masked: bool,
    train: bool,
    tol: f64,
) -> Result<()> {
    compare_with(
        (b, t, d, h),
        dtype,
        masked.then_some(Keys::Random),
        train,
        tol,
    )
}

/// Which keys are real in [`compare_with`].
enum Keys<'a> {
    /// Random keys masked; position 0 always real; the last sequence all padding.
    Random,
    /// Sequence `i` is real on its first `lens[i]` positions (right padding, as batches
    /// are built).
    Prefix(&'a [usize]),
}

/// As [`compare`], with the keys given. Only real positions are compared, and only they
/// carry a loss (the fused layer passes padding rows through, the tensor-op layer computes
/// them): the fused layer's padding rows must equal its input exactly, with the gradient
/// of `x` passed through.
fn compare_with(
    (b, t, d, h): (usize, usize, usize, usize),
    dtype: DType,
    keys: Option<Keys<'_>>,
    train: bool,
    tol: f64,
) -> Result<()> {
    let masked = keys.is_some();
    let dev = Device::Cpu;
    let mut rng = Rng::new((b * 1000 + t * 10 + d) as u64);
    let (ra, rb) = (DropoutRng::new(), DropoutRng::new());
    let layer = TestLayer::new(d, h, dtype, rng.next_u64())?;
    let x = Var::from_tensor(&normal(&mut rng, (b, t, d), 0.0, 1.0, dtype)?)?;
    let m: Vec<Vec<f32>> = match keys {
        None => vec![vec![1.0; t]; b],
        Some(Keys::Random) => {
            let mut m = crate::testing::uniform(&mut rng, (b, t), DType::F32)?
                .ge(0.3)?
                .to_dtype(DType::F32)?
                .to_vec2::<f32>()?;
            for (i, row) in m.iter_mut().enumerate() {
                row[0] = 1.0;
                if i == b - 1 {
                    row.iter_mut().for_each(|v| *v = 0.0);
                }
            }
            m
        }
        Some(Keys::Prefix(lens)) => lens
            .iter()
            .map(|&n| (0..t).map(|j| if j < n { 1.0 } else { 0.0 }).collect())
            .collect(),
    };
    let mask = Tensor::new(m, &dev)?;
    // [B, T, 1] in the model's dtype: 1 on real rows.
    let rows = mask.unsqueeze(2)?.to_dtype(dtype)?;
    let w = normal(&mut rng, (b, t, d), 0.0, 1.0, dtype)?.broadcast_mul(&rows)?;
    let bias = if masked {
        Some(key_bias(&mask, dtype)?)
    } else {
        None
    };
    ra.reseed(11);
    rb.reseed(11);
    let yf = layer.forward(x.as_tensor(), bias.as_ref(), train, &ra, true)?;
    let yp = layer.forward(x.as_tensor(), bias.as_ref(), train, &rb, false)?;
    let scale = max_abs(&yp.broadcast_mul(&rows)?)?;
    let diff = max_abs(&(&yf - &yp)?.broadcast_mul(&rows)?)? / scale;
    assert!(
        diff < tol,
        "{dtype:?} masked={masked} train={train}: output differs by {diff}"
    );
    let padding = rows.affine(-1.0, 1.0)?;
    let passed = (&yf - x.as_tensor())?.broadcast_mul(&padding)?;
    assert_eq!(
        max_abs(&passed)?,
        0.0,
        "padding rows are not passed through"
    );
    let gf = (&yf * &w)?.sum_all()?.backward()?;
    let gp = (&yp * &w)?.sum_all()?.backward()?;
    let mut vars = layer.vars.clone();
    assert_eq!(vars.len(), 16);
    vars.push(("x".into(), x));
    let mut global = 0.0f64;
    for (_, var) in &vars {
        if let Some(p) = gp.get(var.as_tensor()) {
            global = global.max(max_abs(p)?);
        }
    }
    for (name, var) in vars {
        let (Some(a), Some(p)) = (gf.get(var.as_tensor()), gp.get(var.as_tensor())) else {
            panic!("{name}: missing gradient")
        };
        if name.ends_with("attn.k.bias") {
            // Adding a vector to every key adds the same q·b to all scores of a row, which
            // the softmax ignores: the true gradient is 0 and both paths give rounding
            // noise.
            assert!(
                max_abs(a)? < tol * global && max_abs(p)? < tol * global,
                "{name}"
            );
            continue;
        }
        let scale = max_abs(p)?;
        assert!(scale > 0.0, "{name}: zero gradient");
        let diff = max_abs(&(a - p)?)? / scale;
        assert!(
            diff < tol,
            "{dtype:?} masked={masked} train={train} {name}: gradient differs by {diff}"
        );
    }
    Ok(())
}

#[test]
fn exp_f32_matches_the_exponential() {
    // Every 1/1000 from −90 to 88, against f64's exp.
    let mut worst = 0.0f64;
    for i in -90_000..=88_000 {
        let x = i as f32 / 1000.0;
        let (got, want) = (f64::from(exp_f32(x)), f64::from(x).exp());
        if x < -87.0 {
            assert_eq!(got, 0.0, "{x}");
        } else {
            worst = worst.max((got - want).abs() / want);
        }
    }
    assert!(worst < 3e-7, "worst relative error {worst}");
    assert_eq!(exp_f32(0.0), 1.0);
    assert_eq!(exp_f32(-1e9), 0.0);
}

#[test]
fn fused_layer_matches_tensor_ops_in_f64() -> Result<()> {
    for (masked, train) in [(true, false), (false, false), (true, true)] {
        compare((3, 7, 8, 2), DType::F64, masked, train, 1e-10)?;
    }
    Ok(())
}

#[test]
fn fused_layer_matches_tensor_ops_in_f32_on_the_parallel_path() -> Result<()> {
    // 12·50 rows of 32: several row tasks and several attention tasks.
    for (masked, train) in [(true, false), (true, true)] {
        compare((12, 50, 32, 4), DType::F32, masked, train, 2e-5)?;
    }
    Ok(())
}

#[test]
fn recomputed_probabilities_give_the_same_gradients() -> Result<()> {
    // Without a budget every task recomputes its probabilities in the backward pass. Other
    // tests running meanwhile may take either path: both must pass them.
    PROBS_BUDGET_NOW.store(0, std::sync::atomic::Ordering::Relaxed);
    let lens = [3, 1, 24, 0, 2, 40, 17, 1, 3, 9, 33, 2];
    let r = compare_with(
        (12, 40, 8, 2),
        DType::F64,
        Some(Keys::Prefix(&lens)),
        true,
        1e-10,
    )
    .and_then(|()| compare((12, 50, 32, 4), DType::F32, true, true, 2e-5));
    PROBS_BUDGET_NOW.store(PROBS_BUDGET, std::sync::atomic::Ordering::Relaxed);
    r
}

#[test]
fn ragged_sequences_match_tensor_ops_on_their_real_positions() -> Result<()> {
    // Lengths like a batch of JPEG MCUs: many short blocks, a few long ones, an empty
    // (padded) block and a full one; f64 (exact) and f32 on the parallel path, with and
    // without dropout.
    let lens = [3, 1, 24, 0, 2, 40, 17, 1, 3, 9, 33, 2];
    for train in [false, true] {
        compare_with(
            (12, 40, 8, 2),
            DType::F64,
            Some(Keys::Prefix(&lens)),
            train,
            1e-10,
        )?;
    }
    let lens: Vec<usize> = (0..48).map(|i| [1, 2, 3, 15, 42, 0, 7][i % 7]).collect();
    for train in [false, true] {
        compare_with(
            (48, 42, 32, 4),
            DType::F32,
            Some(Keys::Prefix(&lens)),
            train,
            2e-5,
        )?;
    }
    Ok(())
}

#[test]
fn stale_pool_buffers_are_overwritten() -> Result<()> {
    // The scratch pool (which keeps buffers from 1 KB in tests) first holds buffers of
    // NaN of several sizes: any element a pass reads before writing it spoils the
    // comparison. 48 sequences of ragged lengths: attention tasks of several sequences,
    // padded to their longest.
    let poison = || {
        for len in [200, 1_000, 5_000, 20_000, 200_000] {
            for _ in 0..32 {
                f64::pool().give(vec![f64::NAN; len]);
            }
        }
    };
    let lens: Vec<usize> = (0..48).map(|i| [40, 3, 17, 0, 29, 1, 8][i % 7]).collect();
    for train in [false, true] {
        poison();
        compare_with(
            (48, 40, 32, 4),
            DType::F64,
            Some(Keys::Prefix(&lens)),
            train,
            1e-10,
        )?;
    }
    poison();
    compare((48, 40, 32, 4), DType::F64, false, true, 1e-10)?;
    crate::release_scratch();
    Ok(())
}

#[test]
fn only_padding_is_the_identity() -> Result<()> {
    let dev = Device::Cpu;
    let rng = DropoutRng::new();
    let mut draw = Rng::new(5);
    let layer = TestLayer::new(8, 2, DType::F64, 5)?;
    let x = Var::from_tensor(&normal(&mut draw, (3, 5, 8), 0.0, 1.0, DType::F64)?)?;
    let bias = key_bias(&Tensor::zeros((3, 5), DType::F64, &dev)?, DType::F64)?;
    let y = layer.forward(x.as_tensor(), Some(&bias), true, &rng, true)?;
    assert_eq!(max_abs(&(&y - x.as_tensor())?)?, 0.0);
    let w = normal(&mut draw, (3, 5, 8), 0.0, 1.0, DType::F64)?;
    let grads = (&y * &w)?.sum_all()?.backward()?;
    let dx = grads.get(x.as_tensor()).expect("gradient of x");
    assert_eq!(max_abs(&(dx - &w)?)?, 0.0);
    for (_, var) in &layer.vars {
        let g = grads.get(var.as_tensor()).expect("gradient of a weight");
        assert_eq!(max_abs(g)?, 0.0);
    }
    Ok(())
}

#[test]
fn plan_compacts_real_rows_longest_sequence_first() {
    let m = MASK_BIAS;
    // 3 sequences of 4: lengths 2 (with a hole), 0, 4.
    let bias = [0.0, m, 0.0, m, m, m, m, m, 0.0, 0.0, 0.0, 0.0];
    let plan = Plan::new(Some(&bias[..]), 3, 4, 2);
    assert_eq!(plan.row_of, vec![8, 9, 10, 11, 0, 2]);
    assert!(!plan.identity);
    assert_eq!(plan.seq_rows, vec![(4, 2), (0, 0), (0, 4)]);
    let lens: Vec<Vec<usize>> = plan.tasks.iter().map(|t| t.lens.clone()).collect();
    assert_eq!(lens.concat(), vec![4, 2]);
    assert!(plan.tasks.iter().all(|t| t.masked));
    let x: Vec<f64> = (0..12).map(f64::from).collect();
    let g = plan.gather(&x, 1).expect("padding: not the identity");
    assert_eq!(g, [8.0, 9.0, 10.0, 11.0, 0.0, 2.0]);
    let y = plan.scatter(g.iter().map(|v| -v).collect(), &x, 4, 1);
    let want = [
        -0.0, 1.0, -2.0, 3.0, 4.0, 5.0, 6.0, 7.0, -8.0, -9.0, -10.0, -11.0,
    ];
    assert_eq!(y, want);
    let none = Plan::new::<f64>(None, 3, 4, 2);
    assert!(none.identity);
    assert!(none.tasks.iter().all(|t| !t.masked && t.tt == 4));
}

#[test]
fn dropout_seeds_change_the_output_and_inference_ignores_them() -> Result<()> {
    let rng = DropoutRng::new();
    let layer = TestLayer::new(8, 2, DType::F32, 6)?;
    let x = normal(&mut Rng::new(6), (2, 5, 8), 0.0, 1.0, DType::F32)?;
    let run = |seed: u64, train: bool| -> Result<Vec<f32>> {
        rng.reseed(seed);
        layer
            .forward(&x, None, train, &rng, true)?
            .flatten_all()?
            .to_vec1::<f32>()
    };
    assert_eq!(run(1, true)?, run(1, true)?);
    assert_ne!(run(1, true)?, run(2, true)?);
    assert_eq!(run(1, false)?, run(2, false)?);
    Ok(())
}
