//! From decoded media to the baseline's input: AST log-mel maps and pixel maps, cut into
//! patches.

use std::path::Path;

use crate::decode::{decode, to_rate, Decoded, Limits};
use crate::fbank::{Fbank, FbankConfig};
use crate::{Error, Result};

/// Square patches of `size`×`size` cells taken every `stride` cells in both axes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatchSpec {
    /// Side of a patch.
    pub size: usize,
    /// Step between patches.
    pub stride: usize,
}

impl PatchSpec {
    /// AST's patches: 16×16, stride 10 (overlap 6) in time and frequency.
    pub const AST: PatchSpec = PatchSpec {
        size: 16,
        stride: 10,
    };

    /// Non-overlapping `size`×`size` patches (ViT's, for images).
    pub const fn square(size: usize) -> Self {
        PatchSpec { size, stride: size }
    }

    /// Patches along an axis of `len` cells: `⌊(len − size)/stride⌋ + 1` (0 when shorter
    /// than a patch).
    pub fn along(&self, len: usize) -> usize {
        if len < self.size || self.stride == 0 {
            0
        } else {
            (len - self.size) / self.stride + 1
        }
    }

    /// Patches of a `rows`×`cols` map.
    pub fn count(&self, rows: usize, cols: usize) -> usize {
        self.along(rows) * self.along(cols)
    }
}

/// What a feature map came from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Source {
    /// Audio of this many seconds (the decoded samples, at the feature rate).
    Audio {
        /// Duration in seconds.
        seconds: f64,
    },
    /// An image.
    Image,
}

/// A normalised feature map `[rows, cols, channels]` and its patches. Audio: rows are the
/// mel bins, columns the frames (AST feeds its patch embedding `[1, mel, time]`); images:
/// rows and columns of pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Values per cell.
    pub channels: usize,
    /// `[rows, cols, channels]`, row-major.
    pub data: Vec<f32>,
    /// How it is cut.
    pub patch: PatchSpec,
    /// What it came from.
    pub source: Source,
}

impl Features {
    /// Patch rows and columns.
    pub fn grid(&self) -> (usize, usize) {
        (self.patch.along(self.rows), self.patch.along(self.cols))
    }

    /// Patches.
    pub fn num_patches(&self) -> usize {
        let (r, c) = self.grid();
        r * c
    }

    /// Values per patch: size²·channels.
    pub fn patch_dim(&self) -> usize {
        self.patch.size * self.patch.size * self.channels
    }

    /// Writes patch `k` (column-major over the grid: for audio, all frequency patches of the
    /// first time step, then the next) into `out` (`patch_dim` values, `[dr, dc, channel]`
    /// order), and returns its position index `col·grid_rows + row`.
    pub fn write_patch(&self, k: usize, out: &mut [f32]) -> usize {
        let (gr, _) = self.grid();
        let (pr, pc) = (k % gr.max(1), k / gr.max(1));
        let (r0, c0) = (pr * self.patch.stride, pc * self.patch.stride);
        let (s, ch) = (self.patch.size, self.channels);
        for dr in 0..s {
            let src = ((r0 + dr) * self.cols + c0) * ch;
            out[dr * s * ch..(dr + 1) * s * ch].copy_from_slice(&self.data[src..src + s * ch]);
        }
        k
    }
}

/// How files become [`Features`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct FeatureConfig {
    /// The filter bank (AST's by default, at 16 kHz: audio is resampled to its rate).
    pub fbank: FbankConfig,
    /// Audio patches (AST: 16×16, stride 10).
    pub audio_patch: PatchSpec,
    /// Image patches (default 7×7: 16 patches for a 28×28 digit, as many tokens as its 16
    /// JPEG MCUs).
    pub image_patch: PatchSpec,
    /// Audio normalisation `(x − mean)/(2·std)` with AST's AudioSet statistics
    /// (mean −4.2677393, std 4.5689974).
    pub audio_mean_std: (f32, f32),
    /// Decoder limits.
    pub limits: Limits,
}

impl Default for FeatureConfig {
    fn default() -> Self {
        FeatureConfig {
            fbank: FbankConfig::default(),
            audio_patch: PatchSpec::AST,
            image_patch: PatchSpec::square(7),
            audio_mean_std: (-4.267_739_3, 4.568_997_4),
            limits: Limits::default(),
        }
    }
}

impl FeatureConfig {
    /// The same with image patches of `size`×`size`.
    pub fn with_image_patch(mut self, size: usize) -> Self {
        self.image_patch = PatchSpec::square(size);
        self
    }
}

/// Decodes files and computes their features.
#[derive(Debug, Clone)]
pub struct Featurizer {
    config: FeatureConfig,
    fbank: Fbank,
}

impl Featurizer {
    /// A featurizer for `config`.
    pub fn new(config: &FeatureConfig) -> Result<Self> {
        if config.audio_patch.size == 0 || config.image_patch.size == 0 {
            return Err(Error::setting("patch", "patches need a side of 1 or more"));
        }
        Ok(Featurizer {
            fbank: Fbank::new(&config.fbank)?,
            config: config.clone(),
        })
    }

    /// The options.
    pub fn config(&self) -> &FeatureConfig {
        &self.config
    }

    /// Decodes `data` (the file `path`) and computes its features: audio → mono at the
    /// filter bank's rate, mean removed (as AST does), log-mel `[128, frames]`, zero-padded
    /// (in the log domain, as AST pads) to one patch when shorter, normalised; images →
    /// pixels scaled to [-1, 1], zero-padded to one patch when smaller.
    pub fn features(&self, data: &[u8], path: &Path) -> Result<Features> {
        match decode(data, path, &self.config.limits)? {
            Decoded::Audio(audio) => {
                let audio = to_rate(audio, self.fbank.config().sample_rate)?;
                let seconds = audio.duration_seconds();
                let mut samples = audio.samples;
                let mean = samples.iter().map(|&s| f64::from(s)).sum::<f64>()
                    / samples.len().max(1) as f64;
                samples.iter_mut().for_each(|s| *s -= mean as f32);
                let fb = self.fbank.compute(&samples);
                let bins = self.fbank.bins();
                let frames = fb.len() / bins.max(1);
                let cols = frames.max(self.config.audio_patch.size);
                let (m, s) = self.config.audio_mean_std;
                let scale = 1.0 / (2.0 * s);
                // Transposed to [bins, frames]; padded frames hold log energy 0.
                let mut map = vec![(0.0 - m) * scale; bins * cols];
                for (t, frame) in fb.chunks_exact(bins).enumerate() {
                    for (b, &v) in frame.iter().enumerate() {
                        map[b * cols + t] = (v - m) * scale;
                    }
                }
                let f = Features {
                    rows: bins,
                    cols,
                    channels: 1,
                    data: map,
                    patch: self.config.audio_patch,
                    source: Source::Audio { seconds },
                };
                if f.num_patches() == 0 {
                    return Err(Error::setting(
                        "audio patch",
                        format!("{bins} mel bins are fewer than a patch's side"),
                    ));
                }
                Ok(f)
            }
            Decoded::Image(img) => {
                let p = self.config.image_patch.size;
                let (rows, cols, ch) = (img.height.max(p), img.width.max(p), img.channels);
                let mut data = vec![0f32; rows * cols * ch];
                for r in 0..img.height {
                    for c in 0..img.width {
                        for k in 0..ch {
                            let v = img.pixels[(r * img.width + c) * ch + k];
                            data[(r * cols + c) * ch + k] = f32::from(v) / 127.5 - 1.0;
                        }
                    }
                }
                Ok(Features {
                    rows,
                    cols,
                    channels: ch,
                    data,
                    patch: self.config.image_patch,
                    source: Source::Image,
                })
            }
        }
    }
}
