//! The training step the loop takes ([`tempest_train::train_step`]: the batch in parts, its
//! gradients, AdamW with clipping) on the model: it learns, and with dropout it repeats for a
//! seed and changes with another.

use candle_core::{DType, Device};
use tempest_model::cuda::check::{random_batch, Rng};
use tempest_model::{dropout_seed, Config};
use tempest_train::{init_seeded, train_step, AdamW, AdamWConfig, CosineSchedule};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Memorising 64 random items needs a few hundred steps: fast in release, minutes in debug,
/// so it runs in release builds (`cargo test --release -p tempest-train --test steps`) and is
/// ignored in debug ones. The budget is in steps, not time.
#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "run with --release: a few hundred training steps"
)]
fn tiny_memorises_64_items() -> Result<()> {
    let b = random_batch(&mut Rng::new(42), 64, 4, 8, 10)?;
    let (model, varmap) = init_seeded(&Config::tiny(), &Device::Cpu, DType::F32, 1)?;
    let steps = 600;
    let schedule = CosineSchedule::new(3e-3, steps / 20, steps);
    let no_decay = AdamWConfig {
        weight_decay: 0.0,
        ..AdamWConfig::default()
    };
    let mut opt = AdamW::new(&varmap, no_decay)?;
    let mut taken = 0;
    for k in 0..steps {
        let (sums, _) = train_step(&model, &b, 0, &mut opt, schedule.lr(k), 1.0)?;
        taken = k + 1;
        if sums.mean_loss() < 0.02 && sums.correct == 64.0 {
            break;
        }
    }
    let eval = model.loss(&b, false)?;
    let loss = eval.total.to_scalar::<f32>()?;
    let correct = tempest_model::correct(&eval.logits, &b.labels)?;
    assert!(
        loss < 0.05 && correct == 64,
        "after {taken} steps: loss {loss}, {correct}/64 correct"
    );
    Ok(())
}

#[test]
fn training_with_dropout_repeats_for_a_seed() -> Result<()> {
    let cfg = Config {
        dropout: 0.1,
        ..Config::tiny()
    };
    let b = random_batch(&mut Rng::new(4), 6, 4, 10, 10)?;
    // Three runs of three steps from the same weights: dropout seeds 5, 5 and 6.
    let run = |seed: u64| -> Result<(Vec<f64>, Vec<Vec<f32>>)> {
        let (model, varmap) = init_seeded(&cfg, &Device::Cpu, DType::F32, 3)?;
        let mut opt = AdamW::new(&varmap, AdamWConfig::default())?;
        let mut losses = Vec::new();
        for k in 0..3 {
            model.seed_dropout(dropout_seed(seed, &[k]));
            losses.push(
                train_step(&model, &b, 0, &mut opt, 1e-3, 1.0)?
                    .0
                    .mean_loss(),
            );
        }
        let data = varmap
            .data()
            .lock()
            .map_err(|_| "the variables' lock is poisoned")?;
        let mut named: Vec<_> = data.iter().collect();
        named.sort_by(|a, b| a.0.cmp(b.0));
        let weights = named
            .iter()
            .map(|(_, v)| v.as_tensor().flatten_all()?.to_vec1::<f32>())
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok((losses, weights))
    };
    let (a, b2, c) = (run(5)?, run(5)?, run(6)?);
    assert_eq!(a.0, b2.0, "losses of two runs with seed 5");
    assert_eq!(a.1, b2.1, "weights after two runs with seed 5");
    assert_ne!(a.0, c.0, "seed 6 draws other dropout masks");
    assert!(a.0.iter().all(|l| l.is_finite()));
    Ok(())
}
