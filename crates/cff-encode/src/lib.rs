//! Makes the compressed files TEMPEST learns from: PCM/WAV to MP3 and Ogg Opus, pixels to
//! JPEG. The encoders only: whole datasets are prepared with them by `tempest-data`.
//!
//! TEMPEST (arXiv 2510.23665) reads the blocks of compressed files; its augmentation is the
//! same clip at several bitrates (MP3 at 20, 26 and 32 kbps in the paper). Users arrive with
//! WAV and PNG/IDX datasets; this crate turns them into compressed files, fast and
//! reproducibly: the same input and settings give the same bytes.
//!
//! - Input: [`audio::read_wav`] (8/16/24/32-bit integer and 32-bit float, any channels),
//!   [`audio::read_raw`], downmixed to mono and resampled band-limited with rubato
//!   ([`audio::resample`]); [`image::read_png`] and [`image::read_idx`] (MNIST, gz or not).
//! - [`jpeg::encode_jpeg`]: baseline JPEG, pure Rust (always built).
//! - `mp3::encode_mp3`: LAME, CBR and ABR (feature `mp3`; LAME is LGPL-3.0).
//! - `opus::encode_opus`: libopus in an Ogg container written here (feature `opus`; the
//!   bundled libopus builds with cmake).
//!
//! ```
//! use cff_encode::image::{Image, PixelKind};
//! use cff_encode::jpeg::{encode_jpeg, JpegOptions};
//!
//! let digit = Image::new(28, 28, PixelKind::Gray, vec![128; 28 * 28])?;
//! let jpeg = encode_jpeg(&digit, &JpegOptions::with_quality(75))?;
//! assert_eq!(&jpeg[..2], &[0xFF, 0xD8]);
//! # Ok::<(), cff_encode::Error>(())
//! ```
#![deny(missing_docs)]
// Only the LAME setters that `mp3lame-encoder` does not wrap need `unsafe` (module
// `mp3::lame`); without the `mp3` feature the crate has none at all.
#![cfg_attr(not(feature = "mp3"), forbid(unsafe_code))]
#![cfg_attr(feature = "mp3", deny(unsafe_code))]

pub mod audio;
mod error;
pub mod image;
pub mod jpeg;
#[cfg(feature = "mp3")]
pub mod mp3;
pub mod ogg;
#[cfg(feature = "opus")]
pub mod opus;

pub use error::{Error, Result};

/// Resource limits for reading inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Largest input file read, in bytes (default 2 GiB: an IDX file of 60,000 digits is
    /// 47 MB, an hour of 48 kHz stereo 16-bit WAV 691 MB).
    pub max_file_bytes: u64,
    /// Largest image, in pixels (default 64 Mpixel).
    pub max_pixels: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file_bytes: 2 << 30,
            max_pixels: 64 << 20,
        }
    }
}

impl Limits {
    /// Sets the largest input file.
    pub fn with_max_file_bytes(mut self, bytes: u64) -> Self {
        self.max_file_bytes = bytes;
        self
    }

    /// Sets the largest image.
    pub fn with_max_pixels(mut self, pixels: u64) -> Self {
        self.max_pixels = pixels;
        self
    }
}

/// Reads a whole file, refusing one above `limits.max_file_bytes` before reading it.
pub fn load(path: &std::path::Path, limits: &Limits) -> Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(Error::io(path))?;
    let len = file.metadata().map_err(Error::io(path))?.len();
    if len > limits.max_file_bytes {
        return Err(Error::Limit {
            what: "input file bytes",
            limit: limits.max_file_bytes,
            found: len,
        });
    }
    let mut data = Vec::with_capacity(len as usize);
    file.take(limits.max_file_bytes)
        .read_to_end(&mut data)
        .map_err(Error::io(path))?;
    Ok(data)
}
