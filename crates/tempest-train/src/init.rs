//! Seeded initialisation: the same seed gives the same initial weights.
//!
//! candle's CPU device cannot be seeded (`Device::set_seed` fails on the CPU), so a model built
//! with `Tempest::init` starts from different weights on every run. [`init_seeded`] builds the
//! same model through a `VarBuilder` backend that draws each variable from a generator seeded
//! by the run's seed and the variable's name: the weights do not depend on the order in which
//! the model asks for its variables, only on the seed and on the names.

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use tempest_model::{Config, Tempest};
use tempest_tokenize::rng::SplitMix64;

/// A fresh model whose variables are drawn from `seed`, with the [`VarMap`] that holds them.
pub fn init_seeded(
    config: &Config,
    device: &Device,
    dtype: DType,
    seed: u64,
) -> Result<(Tempest, VarMap)> {
    let varmap = VarMap::new();
    let backend = SeededBackend {
        varmap: varmap.clone(),
        seed,
    };
    let vb = VarBuilder::from_backend(Box::new(backend), dtype, device.clone());
    let model = Tempest::new(config, vb)?;
    Ok((model, varmap))
}

/// A [`VarBuilder`] whose variables are drawn from `seed` (each from a stream of its own
/// name, as in [`init_seeded`]), and the [`VarMap`] that holds them: seeded initialisation for
/// models other than TEMPEST (the baseline of the `compare` example).
pub fn seeded_var_builder(
    seed: u64,
    dtype: DType,
    device: &Device,
) -> (VarBuilder<'static>, VarMap) {
    let varmap = VarMap::new();
    let backend = SeededBackend {
        varmap: varmap.clone(),
        seed,
    };
    (
        VarBuilder::from_backend(Box::new(backend), dtype, device.clone()),
        varmap,
    )
}

struct SeededBackend {
    varmap: VarMap,
    seed: u64,
}

/// FNV-1a of a variable's name: its own random stream.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut SplitMix64) -> f64 {
    let u1 = 1.0 - rng.next_f64(); // (0, 1]: the logarithm stays finite
    let u2 = rng.next_f64();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn draw(shape: &Shape, init: Init, rng: &mut SplitMix64) -> Vec<f32> {
    let n = shape.elem_count();
    let (normal_std, uniform) = match init {
        Init::Const(c) => return vec![c as f32; n],
        Init::Randn { mean, stdev } => {
            return (0..n)
                .map(|_| (mean + stdev * normal(rng)) as f32)
                .collect()
        }
        Init::Uniform { lo, up } => {
            return (0..n)
                .map(|_| (lo + (up - lo) * rng.next_f64()) as f32)
                .collect()
        }
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let std = non_linearity.gain() / (fan.for_shape(shape) as f64).sqrt();
            (
                std,
                matches!(dist, candle_nn::init::NormalOrUniform::Uniform),
            )
        }
    };
    if uniform {
        let bound = 3f64.sqrt() * normal_std;
        (0..n)
            .map(|_| (-bound + 2.0 * bound * rng.next_f64()) as f32)
            .collect()
    } else {
        (0..n).map(|_| (normal_std * normal(rng)) as f32).collect()
    }
}

impl SimpleBackend for SeededBackend {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut data =
            self.varmap.data().lock().map_err(|_| {
                candle_core::Error::Msg("the variable map's lock is poisoned".into())
            })?;
        if let Some(var) = data.get(name) {
            if var.shape() != &s {
                candle_core::bail!("variable {name}: shape {:?}, asked {s:?}", var.shape());
            }
            return Ok(var.as_tensor().clone());
        }
        let mut rng = SplitMix64::derive(self.seed, &[name_hash(name)]);
        let values = draw(&s, h, &mut rng);
        let t = Tensor::from_vec(values, s, dev)?.to_dtype(dtype)?;
        let var = Var::from_tensor(&t)?;
        let out = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(out)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        candle_core::bail!("variable {name} has no shape to initialise it from")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.varmap
            .data()
            .lock()
            .map(|d| d.contains_key(name))
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_weights_other_seed_other_weights() -> Result<()> {
        let cfg = Config::tiny();
        let dev = Device::Cpu;
        let (_, a) = init_seeded(&cfg, &dev, DType::F32, 7)?;
        let (_, b) = init_seeded(&cfg, &dev, DType::F32, 7)?;
        let (_, c) = init_seeded(&cfg, &dev, DType::F32, 8)?;
        let get = |m: &VarMap, n: &str| -> Result<Vec<f32>> {
            let d = m
                .data()
                .lock()
                .map_err(|_| candle_core::Error::Msg("lock".into()))?;
            match d.get(n) {
                Some(v) => v.as_tensor().flatten_all()?.to_vec1::<f32>(),
                None => candle_core::bail!("no {n}"),
            }
        };
        let name = "head.weight";
        assert_eq!(get(&a, name)?, get(&b, name)?);
        assert_ne!(get(&a, name)?, get(&c, name)?);
        // A zero-mean normal draw: the sample mean within 4 standard errors of 0.
        let w = get(&a, "embed.bytes.weight")?;
        let mean = w.iter().map(|&x| x as f64).sum::<f64>() / w.len() as f64;
        let var = w.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / w.len() as f64;
        let se = (var / w.len() as f64).sqrt();
        assert!(mean.abs() < 4.0 * se && var > 0.0, "mean {mean} var {var}");
        assert_eq!(
            a.all_vars().len(),
            Tempest::init(&cfg, &dev, DType::F32)?.1.all_vars().len()
        );
        Ok(())
    }
}
