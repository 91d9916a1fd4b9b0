//! The baseline model: a ViT with \[CLS\] over patches (AST for spectrograms, ViT for pixels),
//! built from tempest-model's layers, with E_c's width and depth.
//!
//! ```text
//! patches [B, P, size²·channels] ─► patch_embed (linear) + positions ─► \[CLS\] + P tokens
//!   ─► encoder (pre-norm transformer, E_c's shape) ─► head on \[CLS\]
//! ```
//!
//! The linear patch embedding is AST's strided convolution written as a matrix product over
//! unfolded patches. AST also has a distillation token and ImageNet initialisation; this
//! baseline is AST trained from scratch, the setting of the paper's 41.9 % on ESC-50.

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::{Init, VarBuilder, VarMap};
use serde::{Deserialize, Serialize};
use tempest_model::cost::{stack_flops, stack_params};
use tempest_model::nn::{key_bias, Embedding, Linear, StackSpec, Transformer};
use tempest_model::{cross_entropy, Config, DropoutRng, Mixup, StackConfig};
use tempest_tokenize::ItemShape;

use crate::features::Features;

/// Standard deviation of learned embeddings at initialisation (as TEMPEST's).
const EMBED_STD: f64 = 0.02;

/// The ViT's hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VitConfig {
    /// Values per patch (size²·channels).
    pub patch_dim: usize,
    /// Learned positions (larger indices share the last).
    pub max_positions: usize,
    /// The transformer.
    pub encoder: StackConfig,
    /// Output classes.
    pub num_classes: usize,
    /// Dropout on residual branches while training.
    pub dropout: f32,
    /// Layer-norm epsilon.
    pub layer_norm_eps: f64,
    /// Label smoothing of the loss.
    pub label_smoothing: f64,
    /// Mixup α while training (0 = off): each item's patch embeddings (with their positions)
    /// mixed with the next item's, as TEMPEST mixes its block tokens (`Config::mixup`).
    pub mixup: f64,
    /// Fused CPU kernels (as TEMPEST's `Execution::fused_kernels`).
    pub fused_kernels: bool,
}

impl VitConfig {
    /// A ViT with the width, depth, heads, MLP, dropout and label smoothing of `tempest`'s
    /// context encoder E_c, for patches of `patch_dim` values and up to `max_positions`
    /// patches.
    pub fn matching(tempest: &Config, patch_dim: usize, max_positions: usize) -> Self {
        VitConfig {
            patch_dim,
            max_positions: max_positions.max(1),
            encoder: tempest.context_encoder,
            num_classes: tempest.num_classes,
            dropout: tempest.dropout,
            layer_norm_eps: tempest.layer_norm_eps,
            label_smoothing: tempest.label_smoothing,
            mixup: tempest.mixup,
            fused_kernels: tempest.execution.fused_kernels,
        }
    }

    /// Parameters: patch embedding, positions, \[CLS\], encoder, head.
    pub fn params(&self) -> usize {
        let d = self.encoder.dim;
        self.patch_dim * d
            + d
            + self.max_positions * d
            + d
            + stack_params(&self.encoder)
            + d * self.num_classes
            + self.num_classes
    }

    /// Forward FLOPs of one item of `patches` patches (matrix products, 2 per multiply-add,
    /// as `tempest_model::cost`).
    pub fn flops(&self, patches: usize) -> f64 {
        let d = self.encoder.dim as f64;
        2.0 * patches as f64 * self.patch_dim as f64 * d
            + stack_flops(&self.encoder, 1, patches + 1)
            + 2.0 * d * self.num_classes as f64
    }
}

/// The ViT. Tensor names: `patch_embed.{weight,bias}`, `positions.weight`, `cls`,
/// `encoder.layers.{i}.*`, `encoder.norm`, `head.{weight,bias}`.
#[derive(Debug, Clone)]
pub struct Vit {
    config: VitConfig,
    patch_embed: Linear,
    positions: Embedding,
    cls: Tensor,
    encoder: Transformer,
    head: Linear,
    dtype: DType,
    /// The seeds of the encoder's dropout masks (shared by its layers).
    rng: DropoutRng,
}

impl Vit {
    /// Seeds the dropout masks of the next training pass (a repeatable run reseeds before
    /// every batch).
    pub fn seed_dropout(&self, seed: u64) {
        self.rng.reseed(seed);
    }

    /// Builds the model, creating or loading its variables through `vb`.
    pub fn new(config: &VitConfig, vb: VarBuilder<'_>) -> candle_core::Result<Self> {
        let d = config.encoder.dim;
        let rng = DropoutRng::new();
        let spec = StackSpec {
            dim: d,
            layers: config.encoder.layers,
            heads: config.encoder.heads,
            mlp_dim: config.encoder.mlp_dim,
            dropout: config.dropout,
            eps: config.layer_norm_eps,
            fused: config.fused_kernels,
            fused_layer: config.fused_kernels,
            rng: rng.clone(),
        };
        Ok(Vit {
            patch_embed: Linear::new(config.patch_dim, d, true, None, vb.pp("patch_embed"))?,
            positions: Embedding::new(config.max_positions, d, EMBED_STD, vb.pp("positions"))?,
            cls: vb.get_with_hints(
                (1, d),
                "cls",
                Init::Randn {
                    mean: 0.0,
                    stdev: EMBED_STD,
                },
            )?,
            encoder: Transformer::new(&spec, vb.pp("encoder"))?,
            head: Linear::new(d, config.num_classes, true, Some(EMBED_STD), vb.pp("head"))?,
            config: config.clone(),
            rng,
            dtype: vb.dtype(),
        })
    }

    /// A fresh model and the [`VarMap`] of its variables.
    pub fn init(
        config: &VitConfig,
        device: &Device,
        dtype: DType,
    ) -> candle_core::Result<(Self, VarMap)> {
        let varmap = VarMap::new();
        let model = Vit::new(config, VarBuilder::from_varmap(&varmap, dtype, device))?;
        Ok((model, varmap))
    }

    /// The configuration.
    pub fn config(&self) -> &VitConfig {
        &self.config
    }

    /// `batch` → class logits `[B, classes]`.
    pub fn forward(&self, batch: &PatchBatch, train: bool) -> candle_core::Result<Tensor> {
        let x = self.embed(batch)?;
        self.classify(&x, &batch.mask, train)
    }

    /// The patches' embeddings with their positions, `[B, P, d]`.
    fn embed(&self, batch: &PatchBatch) -> candle_core::Result<Tensor> {
        let last = Tensor::full(
            self.config.max_positions as u32 - 1,
            (),
            batch.patches.device(),
        )?;
        let pos = batch.positions.broadcast_minimum(&last)?;
        self.patch_embed
            .forward(&batch.patches.to_dtype(self.dtype)?)?
            .broadcast_add(&self.positions.forward(&pos)?)
    }

    /// [CLS], the encoder over embeddings `x` whose real patches `mask` marks, and the head.
    fn classify(&self, x: &Tensor, mask: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let (b, _, d) = x.dims3()?;
        let cls = self.cls.unsqueeze(0)?.broadcast_as((b, 1, d))?;
        let x = Tensor::cat(&[&cls, x], 1)?;
        let mask = Tensor::cat(
            &[
                &Tensor::ones((b, 1), self.dtype, x.device())?,
                &mask.to_dtype(self.dtype)?,
            ],
            1,
        )?;
        let y = self
            .encoder
            .forward(&x, Some(&key_bias(&mask, self.dtype)?), train)?;
        self.head.forward(&y.i((.., 0))?)
    }

    /// Mean cross-entropy (label-smoothed as configured) and the logits; with mixup while
    /// training, of the mixed items.
    pub fn loss(
        &self,
        batch: &PatchBatch,
        labels: &Tensor,
        train: bool,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let b = labels.dim(0)?;
        if train && self.config.mixup > 0.0 && b > 1 {
            let mixup = Mixup::draw(&self.rng, self.config.mixup, b, labels.device())?;
            let mixed = mixup.mix(&self.embed(batch)?)?;
            let logits = self.classify(&mixed, &mixup.union(&batch.mask)?, train)?;
            let loss = mixup.cross_entropy(&logits, labels, self.config.label_smoothing)?;
            return Ok((loss, logits));
        }
        let logits = self.forward(batch, train)?;
        let loss = cross_entropy(&logits, labels, self.config.label_smoothing)?;
        Ok((loss, logits))
    }
}

/// Patches of several items, padded to the largest.
#[derive(Debug, Clone)]
pub struct PatchBatch {
    /// `[B, P, patch_dim]` f32.
    pub patches: Tensor,
    /// `[B, P]` u32 position index of each patch.
    pub positions: Tensor,
    /// `[B, P]` u8, 1 at a real patch.
    pub mask: Tensor,
}

impl PatchBatch {
    /// Unfolds and pads the patches of `items` (all with the same patch size and channels).
    pub fn collate(items: &[&Features], device: &Device) -> candle_core::Result<Self> {
        let b = items.len();
        let p = items.iter().map(|f| f.num_patches()).max().unwrap_or(0);
        let dim = items.first().map(|f| f.patch_dim()).unwrap_or(0);
        let mut patches = vec![0f32; b * p * dim];
        let mut positions = vec![0u32; b * p];
        let mut mask = vec![0u8; b * p];
        for (i, f) in items.iter().enumerate() {
            if f.patch_dim() != dim {
                candle_core::bail!(
                    "patches of {} values in a batch of {dim}-value patches",
                    f.patch_dim()
                );
            }
            for k in 0..f.num_patches() {
                let row = i * p + k;
                positions[row] = f.write_patch(k, &mut patches[row * dim..(row + 1) * dim]) as u32;
                mask[row] = 1;
            }
        }
        Ok(PatchBatch {
            patches: Tensor::from_vec(patches, (b, p, dim), device)?,
            positions: Tensor::from_vec(positions, (b, p), device)?,
            mask: Tensor::from_vec(mask, (b, p), device)?,
        })
    }
}

/// SpecAugment's masks (Park et al. 2019) on a spectrogram's training copies: a run of up to
/// `rows` mel bins and a run of up to `cols` frames set to 0 (the normalised mean), drawn
/// anew for every item of every training batch; and a frequency shift: every row moved by one
/// draw from `-shift..=shift` rows, rows with nothing moved into them 0 (as TEMPEST's band
/// shift reads a band position with no band there as silence), before the masks. `compare`
/// sizes them from TEMPEST's band mask, time mask and band shift, so that both models lose
/// the same share of frequencies and the same time and move by the same share of the
/// frequency axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpecMasks {
    /// Most mel bins (rows) masked.
    pub rows: usize,
    /// Most frames (columns) masked.
    pub cols: usize,
    /// Most rows every row is moved by, up or down (0: no shift, and no draw for it).
    pub shift: usize,
}

impl SpecMasks {
    /// A copy of `f` moved by a shift and with one run of rows and one of columns set to 0,
    /// all drawn from `seed` (the masks' draws come first, so a shift of 0 leaves the masks
    /// of a seed as they were without it).
    pub fn apply(&self, f: &Features, seed: u64) -> Features {
        let mut out = f.clone();
        let mut rng = tempest_tokenize::rng::SplitMix64::new(seed);
        let mut draw = |most: usize, len: usize| {
            let width = (rng.below(most as u64 + 1) as usize).min(len);
            let start = rng.below((len - width) as u64 + 1) as usize;
            start..start + width
        };
        let rows = draw(self.rows, f.rows);
        let cols = draw(self.cols, f.cols);
        let ch = f.channels;
        if self.shift > 0 {
            let s = self.shift as i64;
            let by = rng.below(2 * self.shift as u64 + 1) as i64 - s;
            let width = f.cols * ch;
            for r in 0..f.rows {
                // Row r reads row r − by of the original; none there: 0.
                let from = r as i64 - by;
                let dst = &mut out.data[r * width..(r + 1) * width];
                if (0..f.rows as i64).contains(&from) {
                    let from = from as usize;
                    dst.copy_from_slice(&f.data[from * width..(from + 1) * width]);
                } else {
                    dst.fill(0.0);
                }
            }
        }
        for r in 0..f.rows {
            for c in 0..f.cols {
                if rows.contains(&r) || cols.contains(&c) {
                    let at = (r * f.cols + c) * ch;
                    out.data[at..at + ch].fill(0.0);
                }
            }
        }
        out
    }
}

/// The ViT as a [`tempest_train::Learner`] over [`Features`].
#[derive(Debug)]
pub struct VitLearner {
    /// The model.
    pub model: Vit,
    /// Where its tensors live.
    pub device: Device,
    /// Masks on training items (`None`: none).
    pub masks: Option<SpecMasks>,
    /// The current training batch's seed ([`tempest_train::Learner::seed_dropout`]).
    batch_seed: std::sync::atomic::AtomicU64,
}

impl VitLearner {
    /// `model` on `device`, without masks.
    pub fn new(model: Vit, device: Device) -> Self {
        VitLearner {
            model,
            device,
            masks: None,
            batch_seed: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// With `masks` on the items of training batches (none where all three sizes are 0).
    pub fn with_masks(mut self, masks: SpecMasks) -> Self {
        self.masks = (masks.rows > 0 || masks.cols > 0 || masks.shift > 0).then_some(masks);
        self
    }
}

impl tempest_train::Learner for VitLearner {
    type Item = Features;

    fn shape(&self, item: &Features) -> ItemShape {
        let p = item.num_patches();
        ItemShape {
            blocks: p as u32,
            max_block_len: item.patch_dim() as u32,
            bytes: (p * item.patch_dim()) as u64,
        }
    }

    fn loss(
        &self,
        items: &[&Features],
        labels: &[u32],
        train: bool,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let labels = Tensor::new(labels, &self.device)?;
        let batch = match (&self.masks, train) {
            (Some(m), true) => {
                let seed = self.batch_seed.load(std::sync::atomic::Ordering::Relaxed);
                let masked: Vec<Features> = items
                    .iter()
                    .enumerate()
                    .map(|(i, f)| {
                        m.apply(
                            f,
                            tempest_tokenize::rng::SplitMix64::derive(seed, &[i as u64]).next_u64(),
                        )
                    })
                    .collect();
                let refs: Vec<&Features> = masked.iter().collect();
                PatchBatch::collate(&refs, &self.device)?
            }
            _ => PatchBatch::collate(items, &self.device)?,
        };
        self.model.loss(&batch, &labels, train)
    }

    fn logits(&self, items: &[&Features]) -> candle_core::Result<Tensor> {
        self.model
            .forward(&PatchBatch::collate(items, &self.device)?, false)
    }

    fn seed_dropout(&self, seed: u64) {
        self.batch_seed
            .store(seed, std::sync::atomic::Ordering::Relaxed);
        self.model.seed_dropout(seed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::{PatchSpec, Source};

    fn spectrogram(rows: usize, cols: usize) -> Features {
        Features {
            rows,
            cols,
            channels: 1,
            data: (0..rows * cols).map(|i| 1.0 + i as f32).collect(),
            patch: PatchSpec::square(4),
            source: Source::Audio { seconds: 1.0 },
        }
    }

    #[test]
    fn spec_masks_zero_one_run_of_rows_and_one_of_columns_at_most() {
        let f = spectrogram(32, 100);
        let m = SpecMasks {
            rows: 7,
            cols: 18,
            shift: 0,
        };
        let (mut rows_seen, mut cols_seen) = (0, 0);
        for seed in 0..50 {
            let out = m.apply(&f, seed);
            assert_eq!(
                (out.rows, out.cols, out.data.len()),
                (f.rows, f.cols, f.data.len())
            );
            let zero = |r: usize, c: usize| out.data[r * f.cols + c] == 0.0;
            let rows: Vec<usize> = (0..f.rows)
                .filter(|&r| (0..f.cols).all(|c| zero(r, c)))
                .collect();
            let cols: Vec<usize> = (0..f.cols)
                .filter(|&c| (0..f.rows).all(|r| zero(r, c)))
                .collect();
            // One contiguous run each, no longer than asked.
            assert!(rows.len() <= 7 && cols.len() <= 18, "seed {seed}");
            assert!(rows.windows(2).all(|w| w[1] == w[0] + 1));
            assert!(cols.windows(2).all(|w| w[1] == w[0] + 1));
            // Every other value is untouched.
            for r in 0..f.rows {
                for c in 0..f.cols {
                    if !rows.contains(&r) && !cols.contains(&c) {
                        assert_eq!(out.data[r * f.cols + c], f.data[r * f.cols + c]);
                    }
                }
            }
            rows_seen += rows.len();
            cols_seen += cols.len();
            assert_eq!(m.apply(&f, seed), out, "the seed decides");
        }
        assert!(rows_seen > 50 && cols_seen > 200, "{rows_seen} {cols_seen}");
        assert_eq!(SpecMasks::default().apply(&f, 3), f);
    }

    #[test]
    fn spec_shift_moves_every_row_by_one_draw_within_the_bound() {
        // Rows of distinct constant values, so a row's value tells where it came from.
        let (rows, cols) = (20, 6);
        let mut f = spectrogram(rows, cols);
        for r in 0..rows {
            for c in 0..cols {
                f.data[r * cols + c] = 1.0 + r as f32;
            }
        }
        let m = SpecMasks {
            rows: 0,
            cols: 0,
            shift: 3,
        };
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..200 {
            let out = m.apply(&f, seed);
            // The shift that row 10 (away from both edges) shows.
            let by = 11 - out.data[10 * cols] as i64;
            assert!((-3..=3).contains(&by), "seed {seed}: {by}");
            seen.insert(by);
            for r in 0..rows {
                let from = r as i64 - by;
                let want = if (0..rows as i64).contains(&from) {
                    1.0 + from as f32
                } else {
                    0.0
                };
                for c in 0..cols {
                    assert_eq!(out.data[r * cols + c], want, "seed {seed} row {r}");
                }
            }
            assert_eq!(m.apply(&f, seed), out, "the seed decides");
        }
        assert_eq!(seen.len(), 7, "every shift in -3..=3 drawn: {seen:?}");
        // With masks as well, a shift of 0 leaves the masks as they were.
        let masks = SpecMasks {
            rows: 4,
            cols: 2,
            shift: 0,
        };
        let shifted = SpecMasks { shift: 2, ..masks };
        let zero_cols = |g: &Features| -> Vec<usize> {
            (0..cols)
                .filter(|&c| (0..rows).all(|r| g.data[r * cols + c] == 0.0))
                .collect()
        };
        let mut masked = 0;
        for seed in 0..20 {
            let (a, b) = (masks.apply(&f, seed), shifted.apply(&f, seed));
            // The same frames masked with and without the shift.
            assert_eq!(zero_cols(&a), zero_cols(&b), "seed {seed}");
            masked += zero_cols(&a).len();
        }
        assert!(masked > 0);
    }
}
