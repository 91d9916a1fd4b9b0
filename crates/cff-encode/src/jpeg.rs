//! JPEG encoding (ITU T.81 baseline sequential, Huffman) with the pure-Rust `jpeg-encoder`.
//!
//! Only baseline output: the blocks reader (`cff_blocks::jpeg`) finds MCUs in sequential
//! scans, and a progressive scan has no per-MCU stream. `jpeg-encoder`'s `simd` feature is left
//! off: its AVX2 path would make the bytes depend on the processor the data was prepared on.

use jpeg_encoder::{ColorType, Encoder, SamplingFactor};

use crate::image::{Image, PixelKind};
use crate::{Error, Result};

/// Chroma subsampling of colour images (T.81 A.1.1: the sampling factors of Cb and Cr relative
/// to Y). Grayscale images have one component and ignore it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Subsampling {
    /// 4:4:4, no subsampling: an MCU is one 8×8 block per component.
    S444,
    /// 4:2:2, half horizontal chroma resolution: 16×8 MCUs.
    S422,
    /// 4:2:0, half horizontal and vertical: 16×16 MCUs (libjpeg's default).
    #[default]
    S420,
    /// 4:4:0, half vertical: 8×16 MCUs.
    S440,
}

impl Subsampling {
    fn factor(self) -> SamplingFactor {
        match self {
            Subsampling::S444 => SamplingFactor::F_1_1,
            Subsampling::S422 => SamplingFactor::F_2_1,
            Subsampling::S420 => SamplingFactor::F_2_2,
            Subsampling::S440 => SamplingFactor::F_1_2,
        }
    }

    /// Luma sampling factors (H, V): the MCU is 8H × 8V pixels.
    pub fn luma_factors(self) -> (u32, u32) {
        match self {
            Subsampling::S444 => (1, 1),
            Subsampling::S422 => (2, 1),
            Subsampling::S420 => (2, 2),
            Subsampling::S440 => (1, 2),
        }
    }
}

/// JPEG settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct JpegOptions {
    /// 1 (smallest) to 100 (best), scaling the T.81 Annex K tables as libjpeg does.
    pub quality: u8,
    /// Chroma subsampling for colour images.
    pub subsampling: Subsampling,
    /// A restart marker every this many MCUs (T.81 B.2.4.4, DRI), or none.
    pub restart_interval: Option<u16>,
    /// Huffman tables fitted to the image (two passes) instead of the Annex K tables.
    pub optimize_huffman: bool,
}

impl Default for JpegOptions {
    /// Quality 75, 4:2:0, no restart markers, Annex K Huffman tables: `cjpeg`'s defaults.
    fn default() -> Self {
        JpegOptions {
            quality: 75,
            subsampling: Subsampling::S420,
            restart_interval: None,
            optimize_huffman: false,
        }
    }
}

impl JpegOptions {
    /// Default settings at `quality`.
    pub fn with_quality(quality: u8) -> Self {
        JpegOptions {
            quality,
            ..Self::default()
        }
    }

    /// Sets the chroma subsampling.
    pub fn with_subsampling(mut self, subsampling: Subsampling) -> Self {
        self.subsampling = subsampling;
        self
    }

    /// Sets the restart interval, in MCUs (`None` or `Some(0)`: no restart markers).
    pub fn with_restart_interval(mut self, interval: Option<u16>) -> Self {
        self.restart_interval = interval.filter(|&i| i > 0);
        self
    }

    /// Chooses optimised Huffman tables.
    pub fn with_optimize_huffman(mut self, optimize: bool) -> Self {
        self.optimize_huffman = optimize;
        self
    }
}

/// MCUs in a baseline JPEG of `image` under `options` (T.81 A.2: ⌈W / 8H⌉ · ⌈H / 8V⌉ for an
/// interleaved scan, one 8×8 block per MCU for a single component).
pub fn mcu_count(width: u32, height: u32, kind: PixelKind, subsampling: Subsampling) -> u64 {
    let (h, v) = match kind {
        PixelKind::Gray => (1, 1),
        PixelKind::Rgb => subsampling.luma_factors(),
    };
    u64::from(width.div_ceil(8 * h)) * u64::from(height.div_ceil(8 * v))
}

/// Encodes `image` as a baseline JPEG (JFIF). The same pixels and options give the same bytes.
pub fn encode_jpeg(image: &Image, options: &JpegOptions) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(1024 + image.pixels.len() / 4);
    encode_jpeg_into(image, options, &mut out)?;
    Ok(out)
}

/// Encodes `image` as a baseline JPEG, appending to `out`.
pub fn encode_jpeg_into(image: &Image, options: &JpegOptions, out: &mut Vec<u8>) -> Result<()> {
    if !(1..=100).contains(&options.quality) {
        return Err(Error::setting(
            "jpeg quality",
            format!("{} is not in 1..=100", options.quality),
        ));
    }
    let dim = |d: u32, what: &'static str| {
        u16::try_from(d)
            .ok()
            .filter(|&d| d > 0)
            .ok_or_else(|| Error::Unsupported {
                format: "jpeg",
                what: format!("{what} {d} (T.81 B.2.2 allows 1 to 65535)"),
            })
    };
    let (w, h) = (dim(image.width, "width")?, dim(image.height, "height")?);
    if options.optimize_huffman && options.restart_interval.is_some() {
        // jpeg-encoder 0.7 counts symbols for its optimised tables without resetting the DC
        // predictions at restart markers (T.81 F.1.1.5.1), so a DC difference coded after a
        // restart can lack a code: a debug build panics, a release build writes a broken
        // file. Refused until that is fixed upstream.
        return Err(Error::Unsupported {
            format: "jpeg",
            what: "optimised Huffman tables together with a restart interval".into(),
        });
    }
    let mut encoder = Encoder::new(&mut *out, options.quality);
    encoder.set_sampling_factor(options.subsampling.factor());
    if let Some(interval) = options.restart_interval {
        encoder.set_restart_interval(interval);
    }
    encoder.set_optimized_huffman_tables(options.optimize_huffman);
    let color = match image.kind {
        PixelKind::Gray => ColorType::Luma,
        PixelKind::Rgb => ColorType::Rgb,
    };
    encoder
        .encode(&image.pixels, w, h, color)
        .map_err(|e| Error::encoder("jpeg", e))
}
