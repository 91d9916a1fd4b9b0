//! Mixup (Zhang et al. 2018) on a model's token embeddings, shared by TEMPEST (block tokens
//! before E_c, [`crate::Config::mixup`]) and the baseline ViT (patch embeddings): each item of
//! a batch is mixed with the next one, `λ·a + (1 − λ)·b`, and the loss with the same λ.

use candle_core::{Device, Result, Tensor};
use tempest_kernels::DropoutRng;
use tempest_tokenize::rng::SplitMix64;

use crate::cross_entropy;

/// One batch's mixup: the weight λ and each item's partner.
#[derive(Debug, Clone)]
pub struct Mixup {
    /// λ = max(x, 1 − x), x ~ Beta(α, α): each item keeps the larger share of itself.
    pub lambda: f64,
    /// `[B]` u32: item i is mixed with item (i + 1) mod B.
    pub partners: Tensor,
}

impl Mixup {
    /// Draws λ from Beta(`alpha`, `alpha`), seeded by the next seed of `rng` (a run that
    /// reseeds its generator per batch repeats it), for a batch of `b` items on `device`.
    pub fn draw(rng: &DropoutRng, alpha: f64, b: usize, device: &Device) -> Result<Mixup> {
        let mut g = SplitMix64::new(rng.next_seed());
        let x = beta_symmetric(&mut g, alpha);
        let next: Vec<u32> = (0..b as u32).map(|i| (i + 1) % b as u32).collect();
        Ok(Mixup {
            lambda: x.max(1.0 - x),
            partners: Tensor::from_vec(next, b, device)?,
        })
    }

    /// `λ·t + (1 − λ)·t[partners]` along the batch (first) dimension.
    pub fn mix(&self, t: &Tensor) -> Result<Tensor> {
        (t * self.lambda)? + (t.index_select(&self.partners, 0)? * (1.0 - self.lambda))?
    }

    /// `max(t, t[partners])`: a mask or position of the mixture, real wherever either item's is.
    pub fn union(&self, t: &Tensor) -> Result<Tensor> {
        t.maximum(&t.index_select(&self.partners, 0)?)
    }

    /// The loss of the mixed items: `λ·CE(labels) + (1 − λ)·CE(labels[partners])`.
    pub fn cross_entropy(
        &self,
        logits: &Tensor,
        labels: &Tensor,
        smoothing: f64,
    ) -> Result<Tensor> {
        let own = cross_entropy(logits, labels, smoothing)?;
        let theirs = cross_entropy(logits, &labels.index_select(&self.partners, 0)?, smoothing)?;
        (own * self.lambda)? + (theirs * (1.0 - self.lambda))?
    }
}

/// A draw from the symmetric Beta(α, α), α in (0, 2], by Jöhnk's rejection method (two
/// uniforms per try; the acceptance rate is 1/2 at α = 1 and above 1/6 at α = 2).
fn beta_symmetric(rng: &mut SplitMix64, alpha: f64) -> f64 {
    for _ in 0..1000 {
        let x = rng.next_f64().powf(1.0 / alpha);
        let y = rng.next_f64().powf(1.0 / alpha);
        if x + y <= 1.0 && x + y > 0.0 {
            return x / (x + y);
        }
    }
    0.5
}

#[cfg(test)]
mod tests {
    use super::beta_symmetric;
    use tempest_tokenize::rng::SplitMix64;

    #[test]
    fn symmetric_beta_draws_have_the_beta_mean_and_variance() {
        // Beta(α, α): mean 1/2, variance 1 / (4(2α + 1)).
        for alpha in [0.2, 0.4, 1.0, 2.0] {
            let mut rng = SplitMix64::new(11);
            let n = 20_000;
            let xs: Vec<f64> = (0..n).map(|_| beta_symmetric(&mut rng, alpha)).collect();
            assert!(xs.iter().all(|x| (0.0..=1.0).contains(x)));
            let mean = xs.iter().sum::<f64>() / n as f64;
            let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
            let want = 1.0 / (4.0 * (2.0 * alpha + 1.0));
            assert!((mean - 0.5).abs() < 0.01, "α {alpha}: mean {mean}");
            assert!(
                (var - want).abs() < 0.1 * want,
                "α {alpha}: variance {var}, want {want}"
            );
        }
    }
}
