//! Correctness of the model: gradients reach every variable, padding is invisible, analytic
//! gradients match finite differences, a tiny model memorises, checkpoints reload exactly.

mod common;

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::VarMap;
use common::{batch, host, items, scramble_padding};
use tempest_model::{cost, BlockPositionKind, Config, IdFactors, MixerKind, OrdinalIds, Tempest};

fn vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let data = varmap.data().lock().map(|d| d.clone()).unwrap_or_default();
    let mut v: Vec<(String, Var)> = data.into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// A second model of configuration `cfg` on the variables of `varmap` (another way to run
/// the same weights).
fn on_vars(cfg: &Config, varmap: &VarMap, dtype: DType) -> Result<Tempest> {
    Tempest::new(
        cfg,
        candle_nn::VarBuilder::from_varmap(varmap, dtype, &Device::Cpu),
    )
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    (a - b)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()
}

/// Every variable of `varmap` has a gradient in both `a` and `b`, and they differ by less
/// than `tol` relative to the largest of `b`'s (at least `floor`).
fn assert_same_gradients(
    what: &str,
    varmap: &VarMap,
    a: &candle_core::backprop::GradStore,
    b: &candle_core::backprop::GradStore,
    tol: f64,
    floor: f64,
) -> Result<()> {
    for (name, var) in vars(varmap) {
        let (Some(x), Some(y)) = (a.get(var.as_tensor()), b.get(var.as_tensor())) else {
            panic!("{what}: {name}: missing gradient")
        };
        let scale = y
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?
            .max(floor);
        let d = max_abs_diff(x, y)? / scale;
        assert!(
            d < tol,
            "{what}: {name}: gradients differ by {d} (relative)"
        );
    }
    Ok(())
}

fn scalar(t: &Tensor) -> Result<f64> {
    t.to_dtype(DType::F64)?.to_scalar::<f64>()
}

/// Variants that together build every kind of variable: both mixers, L' = 1 and 2, the time
/// projection, the length embedding, the block decoder.
fn variants() -> Vec<(&'static str, Config)> {
    let mut multi = Config::tiny()
        .with_mixer(MixerKind::Attention)
        .with_reconstruction_weight(0.5);
    multi.tokens_per_block = 2;
    multi.block_position = BlockPositionKind::IndexAndTime;
    let mut flat = Config::tiny().with_mixer(MixerKind::Flatten);
    flat.tokens_per_block = 2;
    // Fewer mapped positions than the items' blocks have ids.
    flat.mix_positions = 8;
    flat.factored_ids = vec![factored_bytes()];
    // Ordinal steps under the factored values' rows (0..16) and apart from them.
    flat.ordinal_ids = vec![
        OrdinalIds {
            start: 0,
            values: 40,
        },
        OrdinalIds {
            start: 60,
            values: 8,
        },
    ];
    vec![
        ("tiny", Config::tiny()),
        ("tiny+flatten, L'=2", flat),
        (
            "tiny+decoder",
            Config::tiny().with_reconstruction_weight(0.1),
        ),
        ("tiny+attention-pool, L'=2, time, decoder", multi),
        (
            "small+decoder",
            Config::small().with_reconstruction_weight(0.1),
        ),
        ("paper", Config::paper()),
    ]
}

#[test]
fn every_variable_gets_a_finite_nonzero_gradient() -> Result<()> {
    let data = items(1, 3, 4, 12);
    let b = batch(&data, &[0, 1, 2])?;
    for (name, cfg) in variants() {
        let (model, varmap) = Tempest::init(&cfg, &Device::Cpu, DType::F32)?;
        let losses = model.loss(&b, true)?;
        assert_eq!(
            losses.reconstruction.is_some(),
            cfg.reconstruction_weight > 0.0,
            "{name}"
        );
        let grads = losses.total.backward()?;
        let all = vars(&varmap);
        assert!(all.len() > 20, "{name}: {} variables", all.len());
        for (vname, var) in all {
            let Some(g) = grads.get(var.as_tensor()) else {
                panic!("{name}: {vname} has no gradient")
            };
            let g = g.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
            assert!(
                g.iter().all(|x| x.is_finite()),
                "{name}: {vname} has a non-finite gradient"
            );
            assert!(
                g.iter().any(|&x| x != 0.0),
                "{name}: {vname} has an all-zero gradient"
            );
        }
        // cost::params counts the same variables as the model builds.
        let count: usize = vars(&varmap).iter().map(|(_, v)| v.elem_count()).sum();
        assert_eq!(cost::params(&cfg).total(), count, "{name}: parameter count");
    }
    Ok(())
}

/// A model with the convolution over blocks starts as the model without it (its output layer
/// is zero), every one of its variables learns once that layer has moved, padding stays
/// invisible, its parameters are counted, and a configuration without the key reads as 0.
#[test]
fn context_conv_starts_as_the_model_without_it() -> Result<()> {
    let data = items(5, 4, 6, 20);
    let labels = [1, 2, 3, 4];
    let mut flat = Config::tiny().with_mixer(MixerKind::Flatten);
    flat.tokens_per_block = 2;
    for base in [Config::tiny(), flat] {
        let mut cfg = base.clone();
        cfg.context_conv = 3;
        let (model, varmap) = Tempest::init(&cfg, &Device::Cpu, DType::F32)?;
        let b = batch(&data, &labels)?;
        let with = model.loss(&b, false)?;
        let without = on_vars(&base, &varmap, DType::F32)?.loss(&b, false)?;
        assert_eq!(max_abs_diff(&with.logits, &without.logits)?, 0.0);
        let count: usize = vars(&varmap).iter().map(|(_, v)| v.elem_count()).sum();
        assert_eq!(cost::params(&cfg).total(), count);
        assert!(cost::params(&cfg).total() > cost::params(&base).total());

        let all: std::collections::HashMap<String, Var> = vars(&varmap).into_iter().collect();
        let fc2 = &all["context_encoder.conv.fc2.weight"];
        assert_eq!(fc2.as_tensor().abs()?.sum_all()?.to_scalar::<f32>()?, 0.0);
        fc2.set(&Tensor::randn(0f32, 0.1, fc2.dims(), &Device::Cpu)?)?;
        let moved = model.loss(&b, true)?;
        assert!(max_abs_diff(&moved.logits, &without.logits)? > 1e-4);
        let grads = moved.total.backward()?;
        for (name, var) in vars(&varmap).iter().filter(|(n, _)| n.contains(".conv.")) {
            let g = grads.get(var.as_tensor()).expect("a gradient");
            let g = g.flatten_all()?.to_vec1::<f32>()?;
            assert!(
                g.iter().all(|x| x.is_finite()) && g.iter().any(|&x| x != 0.0),
                "{name}"
            );
        }
        let h = host(&data, &labels);
        let reference = model.forward(
            &h.to_tensors(&Device::Cpu)
                .map_err(candle_core::Error::wrap)?,
            false,
        )?;
        let mut s = h.clone();
        scramble_padding(&mut s, 3);
        let scrambled = model.forward(
            &s.to_tensors(&Device::Cpu)
                .map_err(candle_core::Error::wrap)?,
            false,
        )?;
        assert!(max_abs_diff(&reference.logits, &scrambled.logits)? < 1e-5);
    }
    let json = serde_json::to_string(&Config::tiny()).map_err(candle_core::Error::wrap)?;
    assert!(!json.contains("context_conv"));
    let back: Config = serde_json::from_str(&json).map_err(candle_core::Error::wrap)?;
    assert_eq!(back.context_conv, 0);
    Ok(())
}

#[test]
fn without_lambda_there_is_no_block_decoder() -> Result<()> {
    let (model, varmap) = Tempest::init(&Config::tiny(), &Device::Cpu, DType::F32)?;
    assert!(model.block_decoder().is_none());
    assert!(vars(&varmap)
        .iter()
        .all(|(n, _)| !n.starts_with("block_decoder")));
    Ok(())
}

#[test]
fn padding_is_invisible() -> Result<()> {
    let data = items(7, 4, 6, 20);
    let labels = [1, 2, 3, 4];
    for (name, cfg) in variants().into_iter().take(4) {
        let (model, _) = Tempest::init(&cfg, &Device::Cpu, DType::F32)?;
        let h = host(&data, &labels);
        assert!(
            h.padding_ratio() > 0.3,
            "the batch must have padding to scramble"
        );
        let reference = model.loss(
            &h.to_tensors(&Device::Cpu)
                .map_err(candle_core::Error::wrap)?,
            false,
        )?;
        for seed in [11, 12] {
            let mut s = h.clone();
            scramble_padding(&mut s, seed);
            assert_ne!(s.ids, h.ids);
            let scrambled = model.loss(
                &s.to_tensors(&Device::Cpu)
                    .map_err(candle_core::Error::wrap)?,
                false,
            )?;
            let d = max_abs_diff(&reference.logits, &scrambled.logits)?;
            assert!(d < 1e-5, "{name}: logits moved by {d}");
            let d = (scalar(&reference.total)? - scalar(&scrambled.total)?).abs();
            assert!(d < 1e-5, "{name}: loss moved by {d}");
        }
        // An item alone gives the same logits as inside a batch padded to larger shapes.
        for (k, item) in data.iter().enumerate() {
            let alone = model.forward(&batch(std::slice::from_ref(item), &[labels[k]])?, false)?;
            let d = max_abs_diff(&alone.logits.squeeze(0)?, &reference.logits.get(k)?)?;
            assert!(d < 1e-5, "{name}: item {k} differs alone by {d}");
        }
    }
    Ok(())
}

#[test]
fn gradients_match_finite_differences_in_f64() -> Result<()> {
    let mut cfg = Config::tiny().with_reconstruction_weight(0.3);
    cfg.label_smoothing = 0.1;
    cfg.block_position = BlockPositionKind::IndexAndTime;
    for mixer in [MixerKind::Linear, MixerKind::Attention, MixerKind::Flatten] {
        let cfg = cfg.clone().with_mixer(mixer);
        let (model, varmap) = Tempest::init(&cfg, &Device::Cpu, DType::F64)?;
        let b = batch(&items(3, 3, 4, 10), &[0, 5, 9])?;
        let loss = |m: &Tempest| -> Result<f64> { scalar(&m.loss(&b, false)?.total) };
        let grads = model.loss(&b, false)?.total.backward()?;
        let mut names = vec![
            "embed.bytes.weight",
            "embed.positions",
            "block_encoder.layers.0.attn.q.weight",
            "block_encoder.layers.0.mlp.fc1.weight",
            "block_encoder.norm.weight",
            "mixer.mlp.fc2.weight",
            "length.weight",
            "context_encoder.time.weight",
            "context_encoder.layers.1.attn.k.weight",
            "context_encoder.layers.0.norm2.bias",
            "context_encoder.cls",
            "block_decoder.positions",
            "block_decoder.layers.0.mlp.fc1.bias",
            "head.weight",
        ];
        if mixer == MixerKind::Flatten {
            names.push("mixer.flat");
        }
        let all: std::collections::HashMap<String, Var> = vars(&varmap).into_iter().collect();
        for name in names {
            let var = &all[name];
            let g = grads
                .get(var.as_tensor())
                .map(|g| g.flatten_all())
                .transpose()?;
            let g = g
                .map(|g| g.to_vec1::<f64>())
                .transpose()?
                .unwrap_or_default();
            // The entry with the largest gradient, so the comparison is meaningful.
            let (i, &gi) = g
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
                .unwrap_or((0, &0.0));
            assert!(gi.abs() > 1e-8, "{name}: gradient {gi}");
            let base = var.as_tensor().flatten_all()?.to_vec1::<f64>()?;
            let h = 1e-6;
            let at = |delta: f64| -> Result<f64> {
                let mut v = base.clone();
                v[i] += delta;
                var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu)?)?;
                loss(&model)
            };
            let fd = (at(h)? - at(-h)?) / (2.0 * h);
            var.set(&Tensor::from_vec(base.clone(), var.shape(), &Device::Cpu)?)?;
            let rel = (fd - gi).abs() / gi.abs().max(1e-6);
            assert!(
                rel < 1e-5,
                "{mixer:?} {name}[{i}]: analytic {gi}, finite difference {fd}"
            );
        }
    }
    Ok(())
}

/// Bytes 128–255 as 16 values × 8 classes sharing rows 0–15 (the test items' ids are bytes).
fn factored_bytes() -> IdFactors {
    IdFactors {
        start: 128,
        values: 16,
        classes: 8,
        value_start: 0,
    }
}

/// Sets every variable of a plain model (`plain`) to the one of the same name in `from`, but
/// its byte table to `table`: the plain model that an embedding variant (factored, ordinal)
/// should compute the same as.
fn set_plain_vars(
    plain: &VarMap,
    from: &std::collections::HashMap<String, Var>,
    table: Vec<Vec<f64>>,
) -> Result<()> {
    let table = Tensor::new(table, &Device::Cpu)?;
    for (name, var) in vars(plain) {
        if name == "embed.bytes.weight" {
            var.set(&table)?;
        } else {
            var.set(from[&name].as_tensor())?;
        }
    }
    Ok(())
}

#[test]
fn factored_ids_embed_as_their_value_row_plus_their_class_row() -> Result<()> {
    // A model with factored ids computes what a plain model computes whose byte table holds,
    // for each factored id, the sum of its value's row and its class's row; and it learns
    // through both rows, on both E_t paths (the fused node and op by op).
    for fused in [true, false] {
        let mut cfg = Config::tiny();
        cfg.factored_ids = vec![factored_bytes()];
        cfg.execution.fused_layers = fused;
        let (model, varmap) = Tempest::init(&cfg, &Device::Cpu, DType::F64)?;
        let all: std::collections::HashMap<String, Var> = vars(&varmap).into_iter().collect();
        let (bytes, factors) = (&all["embed.bytes.weight"], &all["embed.factors"]);
        assert_eq!(factors.as_tensor().dims(), &[8, cfg.block_encoder.dim]);
        let b = batch(&items(11, 4, 5, 16), &[1, 2, 3, 4])?;
        let factored = model.loss(&b, false)?;
        let grads = factored.total.backward()?;
        for var in [bytes, factors] {
            let g = grads.get(var.as_tensor()).expect("a gradient");
            assert!(g.abs()?.sum_all()?.to_scalar::<f64>()? > 0.0);
        }
        // The factored ids' own rows are not used.
        let g = grads.get(bytes.as_tensor()).expect("a gradient");
        assert_eq!(
            g.narrow(0, 128, 128)?
                .abs()?
                .sum_all()?
                .to_scalar::<f64>()?,
            0.0
        );

        let table = bytes.as_tensor().to_vec2::<f64>()?;
        let rows = factors.as_tensor().to_vec2::<f64>()?;
        let mut merged = table.clone();
        for (k, row) in merged.iter_mut().enumerate().skip(128).take(128) {
            let (v, c) = ((k - 128) / 8, (k - 128) % 8);
            *row = table[v].iter().zip(&rows[c]).map(|(a, b)| a + b).collect();
        }
        let mut plain_cfg = cfg.clone();
        plain_cfg.factored_ids.clear();
        let (plain, plain_vars) = Tempest::init(&plain_cfg, &Device::Cpu, DType::F64)?;
        set_plain_vars(&plain_vars, &all, merged)?;
        let same = plain.loss(&b, false)?;
        assert!(
            max_abs_diff(&factored.logits, &same.logits)? < 1e-12,
            "fused {fused}"
        );
    }
    // A range past the vocabulary is refused.
    let mut bad = Config::tiny();
    bad.factored_ids = vec![IdFactors {
        start: 200,
        ..factored_bytes()
    }];
    assert!(Tempest::init(&bad, &Device::Cpu, DType::F64).is_err());
    Ok(())
}

#[test]
fn ordinal_ids_embed_as_their_row_plus_the_steps_below_their_value() -> Result<()> {
    // A model with ordinal ranges computes what a plain model computes whose byte table holds,
    // for value k of a range, its row plus the range's first k steps; it starts as the plain
    // model (steps at 0) and learns the steps, on both E_t paths.
    let ranges = [
        OrdinalIds {
            start: 100,
            values: 20,
        },
        OrdinalIds {
            start: 10,
            values: 32,
        },
    ];
    for fused in [true, false] {
        let mut cfg = Config::tiny();
        cfg.ordinal_ids = ranges.to_vec();
        cfg.execution.fused_layers = fused;
        let (model, varmap) = Tempest::init(&cfg, &Device::Cpu, DType::F64)?;
        let all: std::collections::HashMap<String, Var> = vars(&varmap).into_iter().collect();
        let (bytes, steps) = (&all["embed.bytes.weight"], &all["embed.ordinal"]);
        let d = cfg.block_encoder.dim;
        assert_eq!(steps.as_tensor().dims(), &[19 + 31, d]);
        let b = batch(&items(11, 4, 5, 16), &[1, 2, 3, 4])?;
        let mut plain_cfg = cfg.clone();
        plain_cfg.ordinal_ids.clear();
        let (plain, plain_vars) = Tempest::init(&plain_cfg, &Device::Cpu, DType::F64)?;
        let copy = |table: Vec<Vec<f64>>| set_plain_vars(&plain_vars, &all, table);
        // At initialisation (steps 0) the two models agree.
        copy(bytes.as_tensor().to_vec2::<f64>()?)?;
        let at_init = max_abs_diff(
            &model.loss(&b, false)?.logits,
            &plain.loss(&b, false)?.logits,
        )?;
        assert!(at_init < 1e-12, "fused {fused}: {at_init}");
        // With steps of their own, value k gains the sum of its range's first k steps.
        steps.set(&(Tensor::randn(0.0, 0.05, (50, d), &Device::Cpu)?.to_dtype(DType::F64)?))?;
        let ordinal = model.loss(&b, false)?;
        let grads = ordinal.total.backward()?;
        let g = grads.get(steps.as_tensor()).expect("a gradient");
        assert!(g.abs()?.sum_all()?.to_scalar::<f64>()? > 0.0);
        let table = bytes.as_tensor().to_vec2::<f64>()?;
        let rows = steps.as_tensor().to_vec2::<f64>()?;
        let mut merged = table.clone();
        // Steps in the configuration's order: the range at 100 has rows 0..19, the one at 10
        // rows 19..50.
        for (start, values, first) in [(100usize, 20usize, 0usize), (10, 32, 19)] {
            for k in 1..values {
                for j in 0..d {
                    merged[start + k][j] += (0..k).map(|i| rows[first + i][j]).sum::<f64>();
                }
            }
        }
        assert_ne!(merged, table);
        copy(merged)?;
        let same = plain.loss(&b, false)?;
        let diff = max_abs_diff(&ordinal.logits, &same.logits)?;
        assert!(diff < 1e-12, "fused {fused}: {diff}");
    }
    // Overlapping ranges, a range past the vocabulary and a range of one value are refused.
    for bad_ranges in [
        vec![
            OrdinalIds {
                start: 10,
                values: 32,
            },
            OrdinalIds {
                start: 41,
                values: 4,
            },
        ],
        vec![OrdinalIds {
            start: 250,
            values: 64,
        }],
        vec![OrdinalIds {
            start: 5,
            values: 1,
        }],
    ] {
        let mut bad = Config::tiny();
        bad.ordinal_ids = bad_ranges.clone();
        assert!(
            Tempest::init(&bad, &Device::Cpu, DType::F64).is_err(),
            "{bad_ranges:?}"
        );
    }
    Ok(())
}

#[test]
fn fused_kernels_model_matches_plain_model() -> Result<()> {
    let cfg = Config::tiny().with_reconstruction_weight(0.2);
    let (model, varmap) = Tempest::init(&cfg, &Device::Cpu, DType::F64)?;
    let mut plain_cfg = cfg.clone();
    plain_cfg.execution.fused_kernels = false;
    let plain = on_vars(&plain_cfg, &varmap, DType::F64)?;
    let b = batch(&items(5, 4, 5, 16), &[1, 2, 3, 4])?;
    let (a, p) = (model.loss(&b, false)?, plain.loss(&b, false)?);
    assert!(max_abs_diff(&a.logits, &p.logits)? < 1e-12);
    // candle's own GELU backward rounds its constants to 6 digits.
    assert_same_gradients(
        "fused and plain",
        &varmap,
        &a.total.backward()?,
        &p.total.backward()?,
        1e-4,
        1e-12,
    )
}

#[test]
fn checkpoints_reload_bit_identical() -> Result<()> {
    let mut cfg = Config::tiny()
        .with_mixer(MixerKind::Attention)
        .with_reconstruction_weight(0.1);
    cfg.tokens_per_block = 2;
    cfg.block_position = BlockPositionKind::IndexAndTime;
    let (model, varmap) = Tempest::init(&cfg, &Device::Cpu, DType::F32)?;
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("tempest-model-checkpoint");
    let _ = std::fs::remove_dir_all(&dir);
    tempest_model::save(&dir, &cfg, &varmap).map_err(candle_core::Error::wrap)?;

    let b = batch(&items(9, 3, 5, 12), &[0, 1, 2])?;
    let before = model.loss(&b, false)?;
    let loaded =
        tempest_model::load(&dir, &Device::Cpu, DType::F32).map_err(candle_core::Error::wrap)?;
    assert_eq!(loaded.config(), &cfg);
    let after = loaded.loss(&b, false)?;
    assert_eq!(
        before.logits.to_vec2::<f32>()?,
        after.logits.to_vec2::<f32>()?
    );
    assert_eq!(
        before.total.to_scalar::<f32>()?,
        after.total.to_scalar::<f32>()?
    );
    let (trainable, _) = tempest_model::load_trainable(&dir, &Device::Cpu, DType::F32)
        .map_err(candle_core::Error::wrap)?;
    assert_eq!(
        before.logits.to_vec2::<f32>()?,
        trainable.forward(&b, false)?.logits.to_vec2::<f32>()?
    );

    // The documented names are the file's names.
    let tensors =
        candle_core::safetensors::load(dir.join(tempest_model::WEIGHTS_FILE), &Device::Cpu)?;
    for name in [
        "embed.bytes.weight",
        "embed.positions",
        "block_encoder.layers.0.norm1.weight",
        "block_encoder.layers.0.attn.q.weight",
        "block_encoder.layers.0.attn.o.bias",
        "block_encoder.layers.0.mlp.fc2.weight",
        "block_encoder.norm.bias",
        "mixer.queries",
        "mixer.attn.v.weight",
        "mixer.norm.weight",
        "mixer.mlp.fc1.weight",
        "length.weight",
        "block_decoder.input.weight",
        "block_decoder.positions",
        "block_decoder.layers.0.attn.k.weight",
        "block_decoder.output.weight",
        "context_encoder.cls",
        "context_encoder.block_index.weight",
        "context_encoder.sub_token",
        "context_encoder.time.weight",
        "context_encoder.layers.1.mlp.fc1.bias",
        "context_encoder.norm.weight",
        "head.weight",
        "head.bias",
    ] {
        assert!(
            tensors.contains_key(name),
            "{name} missing from the checkpoint"
        );
    }
    assert_eq!(tensors.len(), vars(&varmap).len());
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn blocks_longer_than_the_model_allows_are_an_error() -> Result<()> {
    let mut cfg = Config::tiny();
    cfg.max_block_bytes = 8;
    let (model, _) = Tempest::init(&cfg, &Device::Cpu, DType::F32)?;
    let b = batch(&items(2, 2, 3, 40), &[0, 1])?;
    assert!(b.ids.dim(2)? > 8);
    assert!(model.forward(&b, false).is_err());
    Ok(())
}

#[test]
fn fused_layers_match_tensor_op_layers_with_dropout() -> Result<()> {
    // The flatten mixer reads the fused E_t node's states without a mix.
    for mixer in [MixerKind::Linear, MixerKind::Flatten] {
        fused_layers_match_with(mixer)?;
    }
    Ok(())
}

fn fused_layers_match_with(mixer: MixerKind) -> Result<()> {
    let mut cfg = Config::tiny()
        .with_reconstruction_weight(0.2)
        .with_mixer(mixer);
    cfg.dropout = 0.2;
    let (model, varmap) = Tempest::init(&cfg, &Device::Cpu, DType::F64)?;
    let mut layers_off = cfg.clone();
    layers_off.execution.fused_layers = false;
    let other = on_vars(&layers_off, &varmap, DType::F64)?;
    let b = batch(&items(5, 4, 5, 16), &[1, 2, 3, 4])?;
    model.seed_dropout(9);
    other.seed_dropout(9);
    let (a, p) = (model.loss(&b, true)?, other.loss(&b, true)?);
    assert!(max_abs_diff(&a.logits, &p.logits)? < 1e-12);
    // Dropout is on: another seed gives other logits.
    model.seed_dropout(10);
    let c = model.loss(&b, true)?;
    assert!(max_abs_diff(&a.logits, &c.logits)? > 1e-6);
    let (ga, gp) = (a.total.backward()?, p.total.backward()?);
    for (name, var) in vars(&varmap) {
        let (Some(x), Some(y)) = (ga.get(var.as_tensor()), gp.get(var.as_tensor())) else {
            panic!("{name}: missing gradient")
        };
        let scale = y
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f64>()?
            .max(1e-12);
        let d = max_abs_diff(x, y)? / scale;
        // attn.k.bias has a true gradient of 0 (softmax ignores a shift shared by all keys).
        let tol = if name.ends_with("attn.k.bias") {
            1e-3
        } else {
            1e-9
        };
        assert!(
            d < tol,
            "{mixer:?}: {name}: gradients differ by {d} (relative)"
        );
    }
    Ok(())
}

#[test]
fn a_copy_with_its_own_dropout_shares_the_variables_not_the_masks() -> Result<()> {
    let data = items(4, 4, 5, 12);
    let b = batch(&data, &[0, 1, 2, 3])?;
    let cfg = Config {
        dropout: 0.3,
        ..Config::tiny()
    };
    let (model, varmap) = Tempest::init(&cfg, &Device::Cpu, DType::F32)?;
    let loss = |m: &Tempest| -> Result<f64> { scalar(&m.loss(&b, true)?.total) };
    // The copy seeded like the model draws the same masks; its own sequence moves on without
    // the model's (the model, reseeded, repeats its loss after the copy ran).
    model.seed_dropout(9);
    let own = loss(&model)?;
    let copy = model.with_own_dropout(9);
    assert_eq!(loss(&copy)?, own);
    assert_ne!(loss(&copy)?, own, "the copy's second pass draws new masks");
    assert_ne!(loss(&model.with_own_dropout(10))?, own);
    model.seed_dropout(9);
    assert_eq!(loss(&model)?, own);
    // Its gradients reach the model's variables.
    let grads = copy.loss(&b, true)?.total.backward()?;
    for (name, var) in vars(&varmap) {
        assert!(
            grads.get(var.as_tensor()).is_some(),
            "{name} has no gradient"
        );
    }
    Ok(())
}

/// Items whose blocks repeat, within an item and across items: each block is one of
/// `palette` random byte strings (or, one time in four, a fresh one).
fn items_with_repeats(
    seed: u64,
    count: usize,
    palette: usize,
) -> Vec<tempest_tokenize::TokenizedItem> {
    use cff_blocks::Format;
    use tempest_tokenize::{BlockPosition, TokenizedItem};
    let mut rng = common::Rng::new(seed);
    let word = |rng: &mut common::Rng| -> Vec<u8> {
        let len = 1 + rng.below(12) as usize;
        (0..len).map(|_| rng.below(256) as u8).collect()
    };
    let words: Vec<Vec<u8>> = (0..palette).map(|_| word(&mut rng)).collect();
    (0..count)
        .map(|_| {
            let mut it = TokenizedItem::new(Format::Jpeg, 0);
            for k in 0..2 + rng.below(6) as usize {
                let bytes = match rng.below(4) {
                    0 => word(&mut rng),
                    _ => words[rng.below(palette as u64) as usize].clone(),
                };
                let pos = BlockPosition {
                    index: k as u32,
                    time: 0.0,
                    duration: 0.0,
                    row: 0,
                    col: k as u32,
                };
                it.push_block(&bytes, pos, 16);
            }
            it
        })
        .collect()
}

#[test]
fn repeated_blocks_encoded_once_give_the_same_logits_and_gradients() -> Result<()> {
    let data = items_with_repeats(11, 6, 3);
    let h = host(&data, &[0, 1, 2, 3, 0, 1]);
    let rows: Vec<&[u32]> = h.ids.chunks(h.block_bytes).collect();
    let distinct: std::collections::HashSet<&[u32]> = rows.iter().copied().collect();
    assert!(
        distinct.len() + 8 < rows.len(),
        "the batch must repeat blocks"
    );
    let b = batch(&data, &[0, 1, 2, 3, 0, 1])?;
    let mut attention = Config::tiny().with_mixer(MixerKind::Attention);
    attention.tokens_per_block = 2;
    for (name, cfg) in [
        ("tiny", Config::tiny()),
        (
            "tiny+decoder",
            Config::tiny().with_reconstruction_weight(0.3),
        ),
        ("tiny+attention-pool, L'=2 (op by op)", attention),
        (
            "tiny+flatten (op by op)",
            Config::tiny().with_mixer(MixerKind::Flatten),
        ),
    ] {
        let (model, varmap) = Tempest::init(&cfg, &Device::Cpu, DType::F64)?;
        let mut every_cfg = cfg.clone();
        every_cfg.execution.dedup_blocks = false;
        let every = on_vars(&every_cfg, &varmap, DType::F64)?;
        let (a, e) = (model.loss(&b, true)?, every.loss(&b, true)?);
        let d = max_abs_diff(&a.logits, &e.logits)?;
        assert!(d < 1e-12, "{name}: logits differ by {d}");
        assert!(
            (scalar(&a.total)? - scalar(&e.total)?).abs() < 1e-12,
            "{name}: losses differ"
        );
        // E_t's key bias has a gradient of 0 up to rounding (a softmax ignores a shift
        // common to all keys): its differences are measured on the others' scale (1e-4).
        assert_same_gradients(
            name,
            &varmap,
            &a.total.backward()?,
            &e.total.backward()?,
            1e-10,
            1e-4,
        )?;
    }
    Ok(())
}

/// A block cut short by the tokenizer keeps its length in the file: the length embedding
/// sees it (lengths past the table share its last row), so the cut changes the logits only
/// through the bytes that are gone.
#[test]
fn lengths_past_the_table_share_its_last_row() -> Result<()> {
    let mut cfg = Config::tiny();
    cfg.max_block_bytes = 16;
    let (model, _) = Tempest::init(&cfg, &Device::Cpu, DType::F32)?;
    let data = items(3, 2, 4, 12);
    let h = host(&data, &[0, 1]);
    let logits = |h: &tempest_tokenize::HostBatch| -> Result<Tensor> {
        model
            .forward(
                &h.to_tensors(&Device::Cpu)
                    .map_err(candle_core::Error::wrap)?,
                false,
            )
            .map(|o| o.logits)
    };
    let (mut at_16, mut past) = (h.clone(), h.clone());
    for k in 0..h.block_len.len() {
        if h.block_mask[k] == 1 {
            at_16.block_len[k] = 16;
            past.block_len[k] = 1000 + k as u32;
        }
    }
    let d = max_abs_diff(&logits(&at_16)?, &logits(&past)?)?;
    assert!(
        d == 0.0,
        "lengths past the table differ from its last row by {d}"
    );
    let d = max_abs_diff(&logits(&h)?, &logits(&past)?)?;
    assert!(d > 1e-6, "the length embedding must see the lengths");
    Ok(())
}

#[test]
fn mixup_mixes_training_items_and_leaves_evaluation_alone() -> Result<()> {
    let mut cfg = Config::tiny().with_reconstruction_weight(0.3);
    // α = 2 keeps λ near the middle (Beta(2, 2)), so mixing moves the loss whatever the
    // initial weights.
    cfg.mixup = 2.0;
    assert!(cfg.validate().is_ok());
    let (mixing, varmap) = Tempest::init(&cfg, &Device::Cpu, DType::F32)?;
    let plain_cfg = Config {
        mixup: 0.0,
        ..cfg.clone()
    };
    let plain = on_vars(&plain_cfg, &varmap, DType::F32)?;
    let data = items(7, 4, 4, 10);
    let b = batch(&data, &[0, 1, 2, 3])?;
    // Evaluation never mixes.
    let d =
        (scalar(&mixing.loss(&b, false)?.total)? - scalar(&plain.loss(&b, false)?.total)?).abs();
    assert!(d < 1e-6, "evaluation loss moved by {d}");
    // Training mixes: the loss moves, and repeats for the same dropout seed.
    mixing.seed_dropout(3);
    let first = mixing.loss(&b, true)?;
    mixing.seed_dropout(3);
    let again = scalar(&mixing.loss(&b, true)?.total)?;
    assert_eq!(scalar(&first.total)?, again);
    let unmixed = scalar(&plain.loss(&b, true)?.total)?;
    assert!(
        (scalar(&first.total)? - unmixed).abs() > 1e-4,
        "mixup left the loss at {unmixed}"
    );
    // An item mixed with a copy of itself is the item.
    let same = batch(
        &[data[1].clone(), data[1].clone(), data[1].clone()],
        &[2, 2, 2],
    )?;
    let d = (scalar(&mixing.loss(&same, true)?.total)? - scalar(&plain.loss(&same, true)?.total)?)
        .abs();
    assert!(d < 1e-5, "a self-mixture moved the loss by {d}");
    // Every variable the plain loss reaches gets a finite gradient through the mixture.
    let grads = first.total.backward()?;
    for (name, var) in vars(&varmap) {
        if let Some(g) = grads.get(var.as_tensor()) {
            let s = g.abs()?.sum_all()?.to_scalar::<f32>()?;
            assert!(s.is_finite(), "{name}: gradient {s}");
        }
    }
    cfg.mixup = 2.5;
    assert!(cfg.validate().is_err());
    Ok(())
}

/// A flatten mixer with maps for the first P positions only (`Config::mix_positions`) is the
/// full-size mixer whose rows past P are zero: states at later positions reach the tokens
/// through the mean alone. Blocks of up to 16 ids, P = 8, fused E_t node and op by op.
#[test]
fn flatten_mixer_with_fewer_positions_is_the_full_one_with_zero_rows_past_them() -> Result<()> {
    let full = Config::tiny()
        .with_mixer(MixerKind::Flatten)
        .with_reconstruction_weight(0.2);
    let mut short = full.clone();
    short.mix_positions = 8;
    assert_eq!(short.flat_positions(), 8);
    assert_eq!(full.flat_positions(), full.max_block_bytes);
    let dt = full.block_encoder.dim;
    let (a, a_vars) = Tempest::init(&full, &Device::Cpu, DType::F64)?;
    let (b, b_vars) = Tempest::init(&short, &Device::Cpu, DType::F64)?;
    let a_all: std::collections::HashMap<String, Var> = vars(&a_vars).into_iter().collect();
    for (name, var) in vars(&b_vars) {
        let src = a_all[&name].as_tensor();
        if name == "mixer.flat" {
            assert_eq!(var.dims(), &[8 * dt, dt]);
            assert_eq!(src.dims(), &[full.max_block_bytes * dt, dt]);
            var.set(&src.narrow(0, 0, 8 * dt)?)?;
            // Past P, the full mixer's rows are zero.
            let rows = full.max_block_bytes * dt;
            let kept = src.narrow(0, 0, 8 * dt)?;
            let zeros = Tensor::zeros((rows - 8 * dt, dt), DType::F64, &Device::Cpu)?;
            a_all[&name].set(&Tensor::cat(&[&kept, &zeros], 0)?)?;
        } else {
            var.set(src)?;
        }
    }
    let data = items(21, 4, 5, 16);
    assert!(data.iter().any(|i| i.max_block_len() > 8));
    let bt = batch(&data, &[0, 1, 2, 3])?;
    let (la, lb) = (a.loss(&bt, false)?, b.loss(&bt, false)?);
    assert!(max_abs_diff(&la.logits, &lb.logits)? < 1e-12);
    // And op by op (no fused E_t node).
    let mut off = short.clone();
    off.execution.fused_layers = false;
    let c = on_vars(&off, &b_vars, DType::F64)?;
    assert!(max_abs_diff(&c.loss(&bt, false)?.logits, &lb.logits)? < 1e-12);
    // The parameter count follows P.
    assert_eq!(
        cost::params(&full).total() - cost::params(&short).total(),
        (full.max_block_bytes - 8) * dt * dt
    );
    // Older files (no key) read as 0: every position.
    let json = serde_json::to_string(&full).map_err(candle_core::Error::wrap)?;
    assert!(!json.contains("mix_positions"));
    let json = serde_json::to_string(&short).map_err(candle_core::Error::wrap)?;
    assert!(json.contains("\"mix_positions\":8"));
    Ok(())
}
