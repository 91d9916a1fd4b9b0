//! Decoding the compressed files TEMPEST reads as blocks: MP3 with minimp3, JPEG with
//! zune-jpeg, Ogg Opus with libopus (feature `opus`). This is the baseline's work, never
//! TEMPEST's (docs/design.md: the model sees the compressed blocks only).

use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use cff_blocks::Format;
use cff_encode::audio::{resample, Audio};

use crate::{Error, Result};

/// Resource limits of the decoders: a hostile or broken file cannot make them allocate
/// without bound.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Limits {
    /// Longest audio decoded, in seconds (samples beyond are an error, not a truncation).
    pub max_seconds: f64,
    /// Largest image side in pixels.
    pub max_side: usize,
}

impl Default for Limits {
    /// 10 minutes of audio, images up to 16,384 pixels a side.
    fn default() -> Self {
        Limits {
            max_seconds: 600.0,
            max_side: 16_384,
        }
    }
}

/// A decoded image: `height` rows of `width` pixels of `channels` interleaved 8-bit samples
/// (1: grey, 3: RGB).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Pixels per row.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// Samples per pixel.
    pub channels: usize,
    /// `[height, width, channels]`, row-major.
    pub pixels: Vec<u8>,
}

/// What a file decodes to.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// Mono audio (channels averaged), at the file's sample rate.
    Audio(Audio),
    /// An image.
    Image(Image),
}

/// Decodes `data` (the bytes of the file `path`, which only names it in errors), detecting
/// the format from its first bytes.
pub fn decode(data: &[u8], path: &Path, limits: &Limits) -> Result<Decoded> {
    match cff_blocks::detect(data)? {
        Format::Mp3 => decode_mp3(data, path, limits).map(Decoded::Audio),
        Format::Jpeg => decode_jpeg(data, path, limits).map(Decoded::Image),
        Format::OggOpus => decode_opus(data, path, limits).map(Decoded::Audio),
        other => Err(Error::Unsupported {
            path: path.to_path_buf(),
            what: format!("no decoder for {}", other.name()),
        }),
    }
}

/// Decodes an MP3 file to mono samples in [-1, 1] with minimp3. Garbage between frames is
/// skipped as minimp3 does; a file without one decodable frame, or whose sample rate changes
/// between frames, is malformed. minimp3 reports no byte offsets.
pub fn decode_mp3(data: &[u8], path: &Path, limits: &Limits) -> Result<Audio> {
    let run = || -> Result<Audio> {
        let mut dec = minimp3::Decoder::new(Cursor::new(data));
        let mut samples: Vec<f32> = Vec::new();
        let mut rate = 0u32;
        let mut frames = 0usize;
        loop {
            match dec.next_frame() {
                Ok(frame) => {
                    let r = u32::try_from(frame.sample_rate).unwrap_or(0);
                    if frame.channels == 0 || r == 0 {
                        continue;
                    }
                    if rate != 0 && r != rate {
                        return Err(Error::malformed(
                            path,
                            "mp3",
                            None,
                            format!(
                                "the sample rate changes from {rate} to {r} Hz at frame {frames}"
                            ),
                        ));
                    }
                    rate = r;
                    frames += 1;
                    let ch = frame.channels;
                    // Channels averaged, i16 scaled to [-1, 1) as torchaudio.load does.
                    let scale = 1.0 / (32768.0 * ch as f32);
                    samples.extend(
                        frame
                            .data
                            .chunks_exact(ch)
                            .map(|c| c.iter().map(|&s| f32::from(s)).sum::<f32>() * scale),
                    );
                    if samples.len() as f64 > limits.max_seconds * f64::from(rate) {
                        return Err(Error::Limit {
                            path: path.to_path_buf(),
                            what: format!("more than {} s of audio", limits.max_seconds),
                        });
                    }
                }
                Err(minimp3::Error::Eof) => break,
                Err(minimp3::Error::InsufficientData) | Err(minimp3::Error::SkippedData) => {
                    continue
                }
                Err(minimp3::Error::Io(e)) => {
                    return Err(Error::malformed(path, "mp3", None, e.to_string()))
                }
            }
        }
        if frames == 0 {
            return Err(Error::malformed(
                path,
                "mp3",
                None,
                format!("no decodable MPEG audio frame in {} bytes", data.len()),
            ));
        }
        Ok(Audio { samples, rate })
    };
    guarded(path, "mp3", run)
}

/// Decodes a baseline or progressive JPEG with zune-jpeg: grey images stay grey, colour
/// images become RGB.
pub fn decode_jpeg(data: &[u8], path: &Path, limits: &Limits) -> Result<Image> {
    use zune_core::options::DecoderOptions;
    let run = || -> Result<Image> {
        let options = DecoderOptions::default()
            .set_max_width(limits.max_side)
            .set_max_height(limits.max_side);
        let mut dec = zune_jpeg::JpegDecoder::new_with_options(data, options);
        let bad = |e: zune_jpeg::errors::DecodeErrors| {
            Error::malformed(path, "jpeg", None, e.to_string())
        };
        dec.decode_headers().map_err(bad)?;
        let pixels = dec.decode().map_err(bad)?;
        let (width, height) = dec.dimensions().unwrap_or((0, 0));
        let channels = dec
            .get_output_colorspace()
            .map(|c| c.num_components())
            .unwrap_or(0);
        if width == 0 || height == 0 || channels == 0 || pixels.len() != width * height * channels {
            return Err(Error::malformed(
                path,
                "jpeg",
                None,
                format!(
                    "decoded {} samples for {width}x{height} pixels of {channels} channels",
                    pixels.len()
                ),
            ));
        }
        Ok(Image {
            width,
            height,
            channels,
            pixels,
        })
    };
    guarded(path, "jpeg", run)
}

/// Decodes an Ogg Opus file to mono at 16 kHz with libopus (which decodes at 16 kHz itself
/// and downmixes a stereo stream for a mono decoder), dropping the pre-skip (RFC 7845 §4.2).
#[cfg(feature = "opus")]
pub fn decode_opus(data: &[u8], path: &Path, limits: &Limits) -> Result<Audio> {
    const RATE: u32 = 16_000;
    let options = cff_blocks::Options::default();
    let mut dec = opus::Decoder::new(RATE, opus::Channels::Mono)
        .map_err(|e| Error::malformed(path, "ogg-opus", None, e.to_string()))?;
    let mut pre_skip = 0usize;
    let mut samples: Vec<f32> = Vec::new();
    // 120 ms, the longest Opus packet (RFC 6716 §3.2.5).
    let mut buf = vec![0f32; RATE as usize * 120 / 1000];
    for block in cff_blocks::Reader::new(data, &options)? {
        let block = block?;
        match block.kind {
            cff_blocks::BlockKind::Metadata if block.data.starts_with(b"OpusHead") => {
                // Pre-skip: bytes 10–11, little-endian, in 48 kHz samples.
                if let Some(b) = block.data.get(10..12) {
                    pre_skip = usize::from(u16::from_le_bytes([b[0], b[1]])) / 3;
                }
            }
            cff_blocks::BlockKind::Audio => {
                let n = dec
                    .decode_float(&block.data, &mut buf, false)
                    .map_err(|e| {
                        Error::malformed(path, "ogg-opus", Some(block.offset), e.to_string())
                    })?;
                samples.extend_from_slice(&buf[..n.min(buf.len())]);
                if samples.len() as f64 > limits.max_seconds * f64::from(RATE) {
                    return Err(Error::Limit {
                        path: path.to_path_buf(),
                        what: format!("more than {} s of audio", limits.max_seconds),
                    });
                }
            }
            _ => {}
        }
    }
    samples.drain(..pre_skip.min(samples.len()));
    if samples.is_empty() {
        return Err(Error::malformed(path, "ogg-opus", None, "no audio packet"));
    }
    Ok(Audio {
        samples,
        rate: RATE,
    })
}

/// Without the `opus` feature, Ogg Opus files are not decoded.
#[cfg(not(feature = "opus"))]
pub fn decode_opus(_data: &[u8], path: &Path, _limits: &Limits) -> Result<Audio> {
    Err(Error::Unsupported {
        path: path.to_path_buf(),
        what: "decoding Ogg Opus needs the `opus` feature (libopus)".into(),
    })
}

/// Mono audio at `rate` samples per second (resampled with cff-encode's band-limited
/// resampler when the file's rate differs).
pub fn to_rate(audio: Audio, rate: u32) -> Result<Audio> {
    if audio.rate == rate {
        return Ok(audio);
    }
    Ok(Audio {
        samples: resample(&audio.samples, audio.rate, rate)?,
        rate,
    })
}

/// Runs a third-party decoder so that a panic inside it (a bug there, triggered by a file)
/// becomes a malformed-file error instead of ending the program.
fn guarded<T>(path: &Path, format: &'static str, run: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(run)).unwrap_or_else(|_| {
        Err(Error::malformed(
            path,
            format,
            None,
            "the decoder panicked on this file",
        ))
    })
}
