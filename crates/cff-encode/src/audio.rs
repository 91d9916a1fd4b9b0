//! Audio input: WAV and raw PCM, downmixed to mono and resampled with a band-limited
//! resampler.

use std::io::Cursor;

use rubato::{FftFixedInOut, Resampler};

use crate::{Error, Result};

/// Mono audio as 32-bit float samples in [-1, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct Audio {
    /// The samples, one channel.
    pub samples: Vec<f32>,
    /// Samples per second.
    pub rate: u32,
}

impl Audio {
    /// Duration in seconds.
    pub fn duration_seconds(&self) -> f64 {
        if self.rate == 0 {
            return 0.0;
        }
        self.samples.len() as f64 / f64::from(self.rate)
    }

    /// This audio at `rate` samples per second (a copy when the rate is already `rate`).
    pub fn resampled(&self, rate: u32) -> Result<Audio> {
        Ok(Audio {
            samples: resample(&self.samples, self.rate, rate)?,
            rate,
        })
    }

    /// The samples as 16-bit integers, rounded to nearest and clipped: the input of the MP3
    /// and Opus encoders, so that both see the same, platform-independent values.
    pub fn to_i16(&self) -> Vec<i16> {
        to_i16(&self.samples)
    }
}

/// Converts float samples to 16-bit integers, rounded to nearest and clipped.
pub fn to_i16(samples: &[f32]) -> Vec<i16> {
    samples
        .iter()
        .map(|&s| {
            let v = (s * 32768.0).round();
            // NaN maps to 0 (`as` saturates and sends NaN to 0).
            v.clamp(-32768.0, 32767.0) as i16
        })
        .collect()
}

/// Layout of the samples in a raw PCM file (interleaved, little-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SampleFormat {
    /// Unsigned 8-bit, 128 = silence.
    U8,
    /// Signed 16-bit little-endian.
    S16Le,
    /// Signed 24-bit little-endian, packed in 3 bytes.
    S24Le,
    /// Signed 32-bit little-endian.
    S32Le,
    /// IEEE 754 32-bit float little-endian.
    F32Le,
    /// IEEE 754 64-bit float little-endian.
    F64Le,
}

impl SampleFormat {
    /// Bytes per sample of one channel.
    pub fn bytes(self) -> usize {
        match self {
            SampleFormat::U8 => 1,
            SampleFormat::S16Le => 2,
            SampleFormat::S24Le => 3,
            SampleFormat::S32Le | SampleFormat::F32Le => 4,
            SampleFormat::F64Le => 8,
        }
    }

    fn decode(self, b: &[u8]) -> f32 {
        match (self, b) {
            (SampleFormat::U8, [a, ..]) => (f32::from(*a) - 128.0) / 128.0,
            (SampleFormat::S16Le, [a, b, ..]) => f32::from(i16::from_le_bytes([*a, *b])) / 32768.0,
            (SampleFormat::S24Le, [a, b, c, ..]) => {
                // Sign-extend through the top byte of an i32.
                (i32::from_le_bytes([0, *a, *b, *c]) >> 8) as f32 / 8_388_608.0
            }
            (SampleFormat::S32Le, [a, b, c, d, ..]) => {
                i32::from_le_bytes([*a, *b, *c, *d]) as f32 / 2_147_483_648.0
            }
            (SampleFormat::F32Le, [a, b, c, d, ..]) => f32::from_le_bytes([*a, *b, *c, *d]),
            (SampleFormat::F64Le, [a, b, c, d, e, f, g, h, ..]) => {
                f64::from_le_bytes([*a, *b, *c, *d, *e, *f, *g, *h]) as f32
            }
            _ => 0.0,
        }
    }
}

/// How to read a raw PCM file, which carries no header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RawPcm {
    /// Samples per second.
    pub rate: u32,
    /// Interleaved channels.
    pub channels: u16,
    /// Sample layout.
    pub format: SampleFormat,
}

/// Reads raw interleaved PCM and downmixes it to mono (the mean of the channels). A partial
/// last frame is an error: it means the format or channel count is wrong.
pub fn read_raw(data: &[u8], pcm: RawPcm) -> Result<Audio> {
    if pcm.rate == 0 || pcm.channels == 0 {
        return Err(Error::setting(
            "raw pcm",
            "rate and channels must be positive",
        ));
    }
    let frame = pcm.format.bytes() * usize::from(pcm.channels);
    if !data.len().is_multiple_of(frame) {
        return Err(Error::malformed(
            "pcm",
            (data.len() - data.len() % frame) as u64,
            format!(
                "{} bytes is not a whole number of {frame}-byte frames",
                data.len()
            ),
        ));
    }
    let scale = 1.0 / f32::from(pcm.channels);
    let samples = data
        .chunks_exact(frame)
        .map(|f| {
            f.chunks_exact(pcm.format.bytes())
                .map(|s| pcm.format.decode(s))
                .sum::<f32>()
                * scale
        })
        .collect();
    Ok(Audio {
        samples,
        rate: pcm.rate,
    })
}

/// Facts from a WAV header, read without decoding the samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WavInfo {
    /// Samples per second.
    pub rate: u32,
    /// Channels.
    pub channels: u16,
    /// Bits per sample.
    pub bits: u16,
    /// Whether the samples are IEEE floats.
    pub float: bool,
    /// Samples per channel.
    pub frames: u32,
}

impl WavInfo {
    /// Duration in seconds.
    pub fn duration_seconds(&self) -> f64 {
        if self.rate == 0 {
            return 0.0;
        }
        f64::from(self.frames) / f64::from(self.rate)
    }
}

fn wav_error(e: hound::Error) -> Error {
    match e {
        hound::Error::Unsupported => Error::Unsupported {
            format: "wav",
            what: "this sample format".into(),
        },
        hound::Error::IoError(io) => {
            Error::malformed("wav", 0, format!("truncated or unreadable: {io}"))
        }
        other => Error::malformed("wav", 0, other.to_string()),
    }
}

fn wav_reader(data: &[u8]) -> Result<hound::WavReader<Cursor<&[u8]>>> {
    hound::WavReader::new(Cursor::new(data)).map_err(wav_error)
}

fn wav_info_of(reader: &hound::WavReader<Cursor<&[u8]>>) -> Result<WavInfo> {
    let spec = reader.spec();
    let float = spec.sample_format == hound::SampleFormat::Float;
    if spec.channels == 0 || spec.sample_rate == 0 {
        return Err(Error::malformed(
            "wav",
            0,
            format!("{} channels at {} Hz", spec.channels, spec.sample_rate),
        ));
    }
    Ok(WavInfo {
        rate: spec.sample_rate,
        channels: spec.channels,
        bits: spec.bits_per_sample,
        float,
        frames: reader.duration(),
    })
}

/// Reads the header of a WAV file.
pub fn wav_info(data: &[u8]) -> Result<WavInfo> {
    wav_info_of(&wav_reader(data)?)
}

/// Reads a WAV file (8, 16, 24 or 32-bit integer, 32-bit float; any number of channels) and
/// downmixes it to mono (the mean of the channels).
///
/// A file whose data chunk ends early is an error, not a shorter clip: a truncated download
/// should be noticed, not trained on.
pub fn read_wav(data: &[u8]) -> Result<Audio> {
    let mut reader = wav_reader(data)?;
    let info = wav_info_of(&reader)?;
    let channels = usize::from(info.channels);
    // The header's length is not trusted for the allocation: the bytes present bound it.
    let frames = (info.frames as usize).min(data.len() / channels.max(1));
    let mut samples = Vec::with_capacity(frames);
    let scale = 1.0 / channels as f32;
    let mut acc = 0.0f32;
    let mut k = 0usize;
    let mut push = |v: f32| {
        acc += v;
        k += 1;
        if k == channels {
            samples.push(acc * scale);
            acc = 0.0;
            k = 0;
        }
    };
    if info.float {
        if info.bits != 32 {
            return Err(Error::Unsupported {
                format: "wav",
                what: format!("{}-bit float samples", info.bits),
            });
        }
        for s in reader.samples::<f32>() {
            push(s.map_err(wav_error)?);
        }
    } else {
        if !(1..=32).contains(&info.bits) {
            return Err(Error::Unsupported {
                format: "wav",
                what: format!("{}-bit integer samples", info.bits),
            });
        }
        let full = 2f32.powi(i32::from(info.bits) - 1);
        for s in reader.samples::<i32>() {
            push(s.map_err(wav_error)? as f32 / full);
        }
    }
    if samples.len() != info.frames as usize {
        return Err(Error::malformed(
            "wav",
            data.len() as u64,
            format!(
                "the data chunk ends after {} of {} frames",
                samples.len(),
                info.frames
            ),
        ));
    }
    Ok(Audio {
        samples,
        rate: info.rate,
    })
}

/// Resamples mono `samples` from `from` to `to` samples per second with rubato's FFT
/// resampler (band-limited: it low-passes below the lower Nyquist frequency, unlike linear
/// interpolation, which aliases).
///
/// The output has `round(n · to / from)` samples and is aligned with the input: the
/// resampler's delay is removed.
pub fn resample(samples: &[f32], from: u32, to: u32) -> Result<Vec<f32>> {
    if from == 0 || to == 0 {
        return Err(Error::setting("sample rate", "must be positive"));
    }
    if from == to {
        return Ok(samples.to_vec());
    }
    let n = samples.len() as u64;
    let want = ((n * u64::from(to) + u64::from(from) / 2) / u64::from(from)) as usize;
    let mut r = FftFixedInOut::<f32>::new(from as usize, to as usize, 1024, 1)
        .map_err(|e| Error::encoder("resampler", e))?;
    let delay = r.output_delay();
    let mut out = Vec::with_capacity(want + delay + r.output_frames_max());
    let mut buf = vec![vec![0f32; r.output_frames_max()]];
    let mut rest = samples;
    let mut padded = Vec::new();
    while out.len() < want + delay {
        let need = r.input_frames_next();
        let chunk = if rest.len() >= need {
            let (chunk, tail) = rest.split_at(need);
            rest = tail;
            chunk
        } else {
            // The end: zeros after the input also flush the resampler's delayed tail.
            padded.clear();
            padded.extend_from_slice(rest);
            padded.resize(need, 0.0);
            rest = &[];
            &padded[..]
        };
        let (_, written) = r
            .process_into_buffer(&[chunk], &mut buf, None)
            .map_err(|e| Error::encoder("resampler", e))?;
        out.extend_from_slice(buf.first().map_or(&[][..], |b| &b[..written.min(b.len())]));
    }
    out.drain(..delay.min(out.len()));
    out.truncate(want);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(freq: f32, rate: u32, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (2.0 * std::f32::consts::PI * freq * i as f32 / rate as f32).sin() * 0.5)
            .collect()
    }

    fn rms(x: &[f32]) -> f32 {
        (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt()
    }

    #[test]
    fn resampling_keeps_length_phase_and_passband() {
        let x = sine(440.0, 44_100, 44_100);
        let y = resample(&x, 44_100, 16_000).unwrap();
        assert_eq!(y.len(), 16_000);
        let want = sine(440.0, 16_000, 16_000);
        // Away from the edges the output is the same sine, in phase (the delay removed): a
        // shift of one output sample would show as an error of 0.5·2π·440/16000 ≈ 0.086.
        let err: f32 = y[500..15_500]
            .iter()
            .zip(&want[500..15_500])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(err < 0.03, "max error {err}");
    }

    #[test]
    fn resampling_removes_what_lies_above_the_new_nyquist() {
        // 12 kHz cannot exist at 16 kHz: a band-limited resampler removes it, while linear
        // interpolation would fold it to 4 kHz at nearly full level.
        let x = sine(12_000.0, 48_000, 48_000);
        let y = resample(&x, 48_000, 16_000).unwrap();
        assert_eq!(y.len(), 16_000);
        assert!(rms(&y[1000..15_000]) < 0.01 * rms(&x), "{}", rms(&y));
    }

    #[test]
    fn raw_pcm_downmixes_and_checks_frames() {
        // Two channels of s16le: (16384, -16384) and (32767, 32767).
        let data = [0x00, 0x40, 0x00, 0xC0, 0xFF, 0x7F, 0xFF, 0x7F];
        let pcm = RawPcm {
            rate: 8000,
            channels: 2,
            format: SampleFormat::S16Le,
        };
        let a = read_raw(&data, pcm).unwrap();
        assert_eq!(a.samples.len(), 2);
        assert_eq!(a.samples[0], 0.0);
        assert!((a.samples[1] - 32767.0 / 32768.0).abs() < 1e-6);
        assert!(read_raw(&data[..7], pcm).is_err());
        let s24 = RawPcm {
            rate: 8000,
            channels: 1,
            format: SampleFormat::S24Le,
        };
        assert_eq!(read_raw(&[0, 0, 0x80], s24).unwrap().samples, vec![-1.0]);
    }

    #[test]
    fn to_i16_rounds_and_clips() {
        assert_eq!(
            to_i16(&[0.0, 1.0, -1.0, 2.0, f32::NAN, 0.5]),
            vec![0, 32767, -32768, 32767, 0, 16384]
        );
    }
}
