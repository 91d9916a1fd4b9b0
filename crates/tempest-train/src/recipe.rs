//! Named recipes: what `train` and `quickstart` choose where the command line leaves a
//! choice open, by kind of data. Each value was measured: the image recipe on the shipped
//! MNIST digits (docs/quickstart.md), the audio recipe on the spoken-word and instrument
//! development sets (docs/audio.md).

use std::path::Path;

use cff_blocks::Format;
use tempest_data::{holds_images, Layout, Variant};
use tempest_model::{Config, MixerKind};
use tempest_tokenize::fields::OrdinalFields;

use crate::{EvalVariants, Result, TrainOptions};

/// The MP3 bitrates (kbps) raw audio is prepared in by default: training sees each clip at
/// one of them per epoch (docs/audio.md, row 28: six bitrates beat three by 5 points; row 29:
/// ten beat six by 2.9 points on validation over two seeds).
pub const AUDIO_BITRATES: [u32; 10] = [16, 18, 20, 22, 24, 26, 28, 32, 36, 40];

/// The bitrates whose ensemble evaluates audio (one prediction per clip from its class
/// probabilities averaged over them; docs/audio.md row 10: +4.4 points on validation): three
/// of the ten, so that each epoch's evaluation costs what it did with three (the ensemble of
/// all ten was within noise of these three on validation: docs/audio.md).
pub const AUDIO_ENSEMBLE: [u32; 3] = [20, 26, 32];

/// Which field ids the audio recipe embeds as ordered values (docs/audio.md rows 55–56 on the
/// spoken words, 26–27 on the instruments; session 20).
pub const AUDIO_ORDINAL: OrdinalFields = OrdinalFields::All;

/// The width of the audio recipe's convolution over neighbouring frames before E_c
/// (`tempest_model::Config::context_conv`; docs/audio.md rows 57–58 on the spoken words,
/// 29 on the instruments; session 23): five MP3 frames, 180 ms at 16 kHz.
pub const AUDIO_CONTEXT_CONV: usize = 5;

/// How images are encoded for the image recipe (the quickstart's flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecipe {
    /// JPEG qualities: the first, unmoved, is evaluated and tested; the others augment
    /// training.
    pub qualities: Vec<u8>,
    /// Each image is enlarged this many times (bilinear) before encoding: 2 turns a 28×28
    /// digit into 49 MCUs instead of 16.
    pub scale: u8,
    /// Training also sees copies moved by up to this many pixels in each direction.
    pub shifts: u8,
    /// A restart marker after every this many MCUs (0: none), so each MCU codes its own DC.
    pub restart: u16,
    /// Test each image as the ensemble of its unmoved version and its moved copies.
    pub tta: bool,
    /// Randomly rotated, scaled, sheared and moved versions added to training.
    pub distort: u16,
}

impl Default for ImageRecipe {
    /// The quickstart's recipe: quality 75, 2× size, ±1 pixel shifts, a restart marker after
    /// every MCU, the shifted copies' ensemble at test time, no distortions.
    fn default() -> Self {
        ImageRecipe {
            qualities: vec![75],
            scale: 2,
            shifts: 1,
            restart: 1,
            tta: true,
            distort: 0,
        }
    }
}

/// Training choices for one kind of data; [`Recipe::apply`] writes them into
/// [`TrainOptions`], after which command-line flags may override any of them.
#[derive(Debug, Clone)]
pub struct Recipe {
    /// `images` or `audio`.
    pub name: &'static str,
    /// What raw inputs are prepared into (empty: the recipe was chosen for data that is
    /// already prepared, whose variants stand).
    pub variants: Vec<Variant>,
    /// Each epoch's evaluation.
    pub eval_variants: EvalVariants,
    /// The final test (`None`: as the evaluation).
    pub test_variants: Option<EvalVariants>,
    /// Epochs.
    pub epochs: usize,
    /// Items per batch.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// The first bytes of each block that E_t reads (`None`: the model's limit).
    pub block_bytes: Option<usize>,
    /// Per format, fewer bytes of its blocks ([`TrainOptions::format_block_bytes`]; a recipe
    /// for several formats, [`Recipe::for_formats`]).
    pub format_block_bytes: Vec<(Format, usize)>,
    /// Decay of the moving average of the weights that evaluation and the best checkpoint
    /// read ([`crate::AdamWConfig::ema`]; 0: none).
    pub ema: f64,
    /// Band mask while training ([`TrainOptions::band_mask`]; 0: none).
    pub band_mask: u8,
    /// Time mask while training ([`TrainOptions::time_mask`]; 0: none).
    pub time_mask: u16,
    /// Evaluate after every this many epochs and after the last
    /// ([`TrainOptions::eval_every`]).
    pub eval_every: usize,
    /// Field ids embedded as ordered values ([`TrainOptions::ordinal`]; `None`: none).
    pub ordinal: Option<OrdinalFields>,
    /// The model.
    pub config: Config,
}

impl Recipe {
    /// The image recipe with the encoding `r`: 30 epochs, batches of 32, learning rate 2e-3,
    /// each MCU's first 8 bytes (its DC value and first AC codes; the length embedding sees
    /// the whole length), `tiny` with a third E_c layer.
    pub fn images(r: &ImageRecipe) -> Result<Recipe> {
        let first = *r
            .qualities
            .first()
            .ok_or_else(|| crate::Error::setting("qualities", "give at least one JPEG quality"))?;
        let mut variants: Vec<Variant> = r
            .qualities
            .iter()
            .map(|&q| Variant::jpeg(q, r.scale, 0, 0)?.with_restart(r.restart))
            .collect::<std::result::Result<_, _>>()?;
        for v in Variant::jpeg_shifts(first, r.scale, r.shifts) {
            variants.push(v.with_restart(r.restart)?);
        }
        let shifted = variants.len();
        for k in 1..=r.distort {
            variants.push(variants[0].with_distortion(k)?);
        }
        let tested = variants[0].to_string();
        // The unmoved image and its moved copies (the first quality's), one prediction each,
        // their class probabilities averaged.
        let moved: Vec<String> = std::iter::once(tested.clone())
            .chain(
                variants[r.qualities.len()..shifted]
                    .iter()
                    .map(Variant::to_string),
            )
            .collect();
        let test_variants = (r.tta && moved.len() > 1).then_some(EvalVariants::Ensemble(moved));
        let mut config = Config::tiny();
        config.context_encoder.layers = 3;
        Ok(Recipe {
            name: "images",
            variants,
            eval_variants: EvalVariants::Named(tested),
            test_variants,
            epochs: 30,
            batch_size: 32,
            lr: 2e-3,
            block_bytes: Some(8),
            format_block_bytes: Vec::new(),
            ema: 0.0,
            band_mask: 0,
            time_mask: 0,
            eval_every: 1,
            ordinal: None,
            config,
        })
    }

    /// The audio recipe: MP3 at [`AUDIO_BITRATES`], evaluated as the ensemble of
    /// [`AUDIO_ENSEMBLE`], 80 epochs, batches of 16, learning rate 5e-4 (at 2e-3 the line
    /// tokens never left chance), the `tiny` preset with label smoothing 0.1 (docs/audio.md
    /// row 31), a band mask and a time mask of up to 5 bands and 5 frames while training
    /// (row 35), the flatten mixer (row 48; sized by the data, [`crate::size_mixer`]), a
    /// convolution over [`AUDIO_CONTEXT_CONV`] neighbouring frames before E_c (row 57) and an
    /// evaluation after every second epoch (and the last), which kept a set of 2,000 clips of
    /// 3 s within 20 minutes on two cores until the convolution (docs/audio.md: 17 min 45 s in
    /// session 17, 21 min 29 s with the convolution in session 23); the tokens are
    /// [`crate::default_tokens`]'s for the format (fields and band energies for MP3).
    pub fn audio() -> Recipe {
        Recipe {
            name: "audio",
            variants: AUDIO_BITRATES.iter().map(|&k| Variant::Mp3(k)).collect(),
            eval_variants: EvalVariants::Ensemble(
                AUDIO_ENSEMBLE
                    .iter()
                    .map(|&k| Variant::Mp3(k).to_string())
                    .collect(),
            ),
            test_variants: None,
            epochs: 80,
            batch_size: 16,
            lr: 5e-4,
            block_bytes: None,
            format_block_bytes: Vec::new(),
            ema: 0.0,
            band_mask: 5,
            time_mask: 5,
            eval_every: 2,
            ordinal: Some(AUDIO_ORDINAL),
            config: Config {
                label_smoothing: 0.1,
                mixer: MixerKind::Flatten,
                context_conv: AUDIO_CONTEXT_CONV,
                ..Config::tiny()
            },
        }
    }

    /// The recipe for a raw layout: images (MNIST, or a folder of PNG files) get
    /// [`Recipe::images`] with the quickstart's encoding, everything else the audio recipe.
    pub fn for_layout(layout: Layout, input: &Path) -> Result<Recipe> {
        if holds_images(layout, input) {
            Recipe::images(&ImageRecipe::default())
        } else {
            Ok(Recipe::audio())
        }
    }

    /// The recipe for data already compressed or prepared in `format`, without its variants
    /// (the data's stand): the training settings of [`Recipe::images`] or
    /// [`Recipe::audio`], evaluating as [`Recipe::audio_evaluation`] says for audio and on
    /// the first variant for images.
    pub fn for_format(format: Format, trained: &[String]) -> Result<Recipe> {
        let mut r = if format == Format::Jpeg {
            Recipe::images(&ImageRecipe::default())?
        } else {
            Recipe::audio()
        };
        r.variants.clear();
        r.test_variants = None;
        r.eval_variants = if format == Format::Jpeg {
            EvalVariants::First
        } else {
            Recipe::audio_evaluation(trained)
        };
        Ok(r)
    }

    /// The recipe for one run over files of `formats` (pretraining on a mixed folder): one
    /// format's [`Recipe::for_format`]; audio with images: the audio recipe of the first
    /// audio format, which reads JPEG MCUs as the image recipe does (its block bytes, in
    /// [`Recipe::format_block_bytes`]). The audio recipe's learning rate and batch hold for
    /// both (measured for mixed runs in docs/pretraining.md).
    pub fn for_formats(formats: &[Format], trained: &[String]) -> Result<Recipe> {
        let audio = formats.iter().copied().find(|&f| f != Format::Jpeg);
        match (formats, audio) {
            ([one], _) => Recipe::for_format(*one, trained),
            (_, Some(a)) if formats.contains(&Format::Jpeg) => {
                let mut r = Recipe::for_format(a, trained)?;
                let images = Recipe::images(&ImageRecipe::default())?;
                if let Some(bytes) = images.block_bytes {
                    r.format_block_bytes.push((Format::Jpeg, bytes));
                }
                Ok(r)
            }
            (_, Some(a)) => Recipe::for_format(a, trained),
            (_, None) => Recipe::for_format(Format::Jpeg, trained),
        }
    }

    /// How audio trained on `trained` is evaluated: the ensemble of [`AUDIO_ENSEMBLE`] when
    /// it was trained on those and more, else of every variant trained on, else (one
    /// variant) that one.
    pub fn audio_evaluation(trained: &[String]) -> EvalVariants {
        let ensemble: Vec<String> = AUDIO_ENSEMBLE
            .iter()
            .map(|&k| Variant::Mp3(k).to_string())
            .collect();
        let measured = ensemble.iter().all(|v| trained.iter().any(|t| t == v));
        match trained.len() {
            0 | 1 => EvalVariants::First,
            n if measured && n > ensemble.len() => EvalVariants::Ensemble(ensemble),
            _ => EvalVariants::Ensemble(trained.to_vec()),
        }
    }

    /// Writes the recipe's training choices into `o` (epochs, batch size, learning rate,
    /// block bytes (per format too), weight average, band and time masks, ordinal ids, evaluation and test
    /// variants); the model is [`Recipe::config`].
    pub fn apply(&self, o: &mut TrainOptions) {
        o.adamw.ema = self.ema;
        o.ordinal = self.ordinal;
        o.band_mask = self.band_mask;
        o.time_mask = self.time_mask;
        o.eval_every = self.eval_every;
        o.epochs = self.epochs;
        o.batch_size = self.batch_size;
        o.lr = self.lr;
        o.block_bytes = self.block_bytes;
        o.format_block_bytes = self.format_block_bytes.clone();
        o.eval_variants = self.eval_variants.clone();
        o.test_variants = self.test_variants.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_recipe_is_the_quickstarts() -> Result<()> {
        let r = Recipe::images(&ImageRecipe::default())?;
        // q75 at 2×, restart after every MCU, then its 8 moved copies.
        assert_eq!(r.variants.len(), 9);
        assert_eq!(r.variants[0].to_string(), "jpeg:75x2r1");
        let EvalVariants::Named(tested) = &r.eval_variants else {
            panic!("{:?}", r.eval_variants)
        };
        assert_eq!(tested, "jpeg:75x2r1");
        let Some(EvalVariants::Ensemble(moved)) = &r.test_variants else {
            panic!("{:?}", r.test_variants)
        };
        assert_eq!(moved.len(), 9);
        assert_eq!((r.epochs, r.batch_size, r.block_bytes), (30, 32, Some(8)));
        assert_eq!(r.config.context_encoder.layers, 3);
        // Without shifts there is nothing to ensemble.
        let plain = Recipe::images(&ImageRecipe {
            shifts: 0,
            ..ImageRecipe::default()
        })?;
        assert_eq!(plain.variants.len(), 1);
        assert!(plain.test_variants.is_none());
        assert!(Recipe::images(&ImageRecipe {
            qualities: vec![],
            ..ImageRecipe::default()
        })
        .is_err());
        Ok(())
    }

    #[test]
    fn a_mixed_recipe_is_audio_s_with_the_image_recipe_s_mcu_bytes() -> Result<()> {
        let trained = vec!["mp3:32".to_string(), "jpeg:75x2r1".to_string()];
        let mixed = Recipe::for_formats(&[Format::Jpeg, Format::Mp3], &trained)?;
        let audio = Recipe::for_format(Format::Mp3, &trained)?;
        assert_eq!(mixed.name, "audio");
        assert_eq!((mixed.lr, mixed.batch_size), (audio.lr, audio.batch_size));
        assert_eq!(mixed.block_bytes, None);
        assert_eq!(mixed.format_block_bytes, vec![(Format::Jpeg, 8)]);
        let mut o = TrainOptions::default();
        mixed.apply(&mut o);
        assert_eq!(o.format_block_bytes, vec![(Format::Jpeg, 8)]);
        // One format: that format's recipe, no caps.
        let one = Recipe::for_formats(&[Format::Jpeg], &trained[1..])?;
        assert_eq!((one.name, one.block_bytes), ("images", Some(8)));
        assert!(one.format_block_bytes.is_empty());
        let audio_only = Recipe::for_formats(&[Format::OggOpus, Format::Mp3], &trained)?;
        assert!(audio_only.format_block_bytes.is_empty());
        assert_eq!(audio_only.name, "audio");
        Ok(())
    }

    #[test]
    fn audio_evaluates_the_measured_ensemble_when_it_can() {
        let ten: Vec<String> = AUDIO_BITRATES
            .iter()
            .map(|&k| Variant::Mp3(k).to_string())
            .collect();
        assert_eq!(
            Recipe::audio_evaluation(&ten),
            EvalVariants::Ensemble(vec!["mp3:20".into(), "mp3:26".into(), "mp3:32".into()])
        );
        let two = vec!["mp3:24".to_string(), "mp3:40".to_string()];
        assert_eq!(
            Recipe::audio_evaluation(&two),
            EvalVariants::Ensemble(two.clone())
        );
        assert_eq!(Recipe::audio_evaluation(&two[..1]), EvalVariants::First);
        let r = Recipe::audio();
        let mut o = TrainOptions::default();
        r.apply(&mut o);
        assert_eq!((o.epochs, o.batch_size, o.lr), (80, 16, 5e-4));
        assert_eq!((o.band_mask, o.time_mask), (5, 5));
        assert_eq!(o.ordinal, Some(AUDIO_ORDINAL));
        assert_eq!(r.variants.len(), 10);
        assert_eq!(r.config.label_smoothing, 0.1);
        assert_eq!(r.config.mixer, MixerKind::Flatten);
        assert_eq!(r.config.context_conv, AUDIO_CONTEXT_CONV);
        // Evaluated after epochs 2, 4, …, 80, never after an odd one.
        assert_eq!(o.eval_every, 2);
        let due: Vec<usize> = (1..=o.epochs).filter(|&e| o.eval_due(e)).collect();
        assert_eq!(due, (1..=40).map(|k| 2 * k).collect::<Vec<_>>());
        // The image recipe evaluates every epoch; a last odd epoch is always evaluated.
        let mut images = TrainOptions::default();
        Recipe::images(&ImageRecipe::default())
            .unwrap()
            .apply(&mut images);
        assert!((1..=images.epochs).all(|e| images.eval_due(e)));
        images.eval_every = 4;
        images.epochs = 7;
        let due: Vec<usize> = (1..=7).filter(|&e| images.eval_due(e)).collect();
        assert_eq!(due, [4, 7]);
    }
}
