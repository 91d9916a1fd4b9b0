//! Ogg Opus encoding with libopus (feature `opus`: the `opus` crate builds a bundled libopus
//! with cmake).
//!
//! libopus makes packets; the Ogg Opus encapsulation (RFC 7845) is written here: `OpusHead`
//! with the encoder's look-ahead as pre-skip, `OpusTags`, granule positions, and end trimming
//! through the last page's granule position, so that a decoder returns exactly the input's
//! samples.

use opus::{Application, Bitrate, Channels, Encoder};

use crate::audio::Audio;
use crate::ogg::{OggWriter, BOS, EOS};
use crate::{Error, Result};

/// Duration of one Opus frame (RFC 6716 §2.1.4: 2.5, 5, 10, 20, 40 or 60 ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum FrameDuration {
    /// 2.5 ms (CELT only).
    Ms2_5,
    /// 5 ms (CELT only).
    Ms5,
    /// 10 ms.
    Ms10,
    /// 20 ms, the usual choice.
    #[default]
    Ms20,
    /// 40 ms.
    Ms40,
    /// 60 ms.
    Ms60,
}

impl FrameDuration {
    /// The duration in tenths of a millisecond.
    fn tenth_ms(self) -> u32 {
        match self {
            FrameDuration::Ms2_5 => 25,
            FrameDuration::Ms5 => 50,
            FrameDuration::Ms10 => 100,
            FrameDuration::Ms20 => 200,
            FrameDuration::Ms40 => 400,
            FrameDuration::Ms60 => 600,
        }
    }

    /// Samples per frame at `rate` Hz (exact for every Opus rate).
    pub fn samples(self, rate: u32) -> usize {
        (rate as usize * self.tenth_ms() as usize) / 10_000
    }

    /// Parses a duration in milliseconds: `2.5`, `5`, `10`, `20`, `40`, `60`.
    pub fn from_ms(ms: f32) -> Option<Self> {
        [
            FrameDuration::Ms2_5,
            FrameDuration::Ms5,
            FrameDuration::Ms10,
            FrameDuration::Ms20,
            FrameDuration::Ms40,
            FrameDuration::Ms60,
        ]
        .into_iter()
        .find(|d| (d.tenth_ms() as f32 - ms * 10.0).abs() < 0.01)
    }
}

/// Rate control.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum RateControl {
    /// Unconstrained VBR (`opusenc`'s default); on tonal material it can overshoot the target
    /// widely.
    Vbr,
    /// Constrained VBR (`opusenc --cvbr`): varies per packet but holds the target over a short
    /// window.
    #[default]
    ConstrainedVbr,
    /// Hard CBR: every packet of the same size.
    Cbr,
}

/// Ogg Opus settings. Mono output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct OpusOptions {
    /// Target bitrate in bits per second (500 to 512,000).
    pub bitrate: u32,
    /// Frame (packet) duration.
    pub frame: FrameDuration,
    /// VBR, constrained VBR or CBR.
    pub rate_control: RateControl,
    /// Encoder complexity, 0 (fastest) to 10 (best, libopus's default).
    pub complexity: u8,
    /// The Ogg stream's serial number. Fixed (not random) so that outputs are reproducible.
    pub serial: u32,
}

impl OpusOptions {
    /// `kbps` kilobits per second, 20 ms frames, constrained VBR, complexity 10.
    pub fn kbps(kbps: u32) -> Self {
        OpusOptions {
            bitrate: kbps.saturating_mul(1000),
            frame: FrameDuration::Ms20,
            rate_control: RateControl::ConstrainedVbr,
            complexity: 10,
            serial: 0x5445_4D50, // "TEMP"
        }
    }

    /// Sets the frame duration.
    pub fn with_frame(mut self, frame: FrameDuration) -> Self {
        self.frame = frame;
        self
    }

    /// Sets the rate control.
    pub fn with_rate_control(mut self, rate_control: RateControl) -> Self {
        self.rate_control = rate_control;
        self
    }

    /// Sets the complexity (0 to 10).
    pub fn with_complexity(mut self, complexity: u8) -> Self {
        self.complexity = complexity;
        self
    }

    /// Sets the Ogg serial number.
    pub fn with_serial(mut self, serial: u32) -> Self {
        self.serial = serial;
        self
    }
}

/// A page is flushed once it holds this much audio (48 kHz samples): one second, as
/// `opusenc`'s default `--max-delay`.
const PAGE_GRANULES: u64 = 48_000;
/// libopus's recommended packet buffer (opus.h: `opus_encode`, max_data_bytes).
const MAX_PACKET: usize = 4000;

/// Encodes mono `audio` as Ogg Opus. The rate must be one libopus accepts (8, 12, 16, 24 or
/// 48 kHz). The same samples and options give the same bytes on the same build.
pub fn encode_opus(audio: &Audio, options: &OpusOptions) -> Result<Vec<u8>> {
    let rate = audio.rate;
    if ![8_000, 12_000, 16_000, 24_000, 48_000].contains(&rate) {
        return Err(Error::setting(
            "opus sample rate",
            format!("{rate} Hz is not an Opus rate (8, 12, 16, 24, 48 kHz); resample first"),
        ));
    }
    if !(500..=512_000).contains(&options.bitrate) {
        return Err(Error::setting(
            "opus bitrate",
            format!("{} b/s is not in 500..=512000", options.bitrate),
        ));
    }
    if options.complexity > 10 {
        return Err(Error::setting(
            "opus complexity",
            format!("{} is not in 0..=10", options.complexity),
        ));
    }
    let err = |e: opus::Error| Error::encoder("opus", e);
    let mut enc = Encoder::new(rate, Channels::Mono, Application::Audio).map_err(err)?;
    enc.set_bitrate(Bitrate::Bits(options.bitrate as i32))
        .map_err(err)?;
    enc.set_complexity(i32::from(options.complexity))
        .map_err(err)?;
    match options.rate_control {
        RateControl::Vbr => {
            enc.set_vbr(true).map_err(err)?;
            enc.set_vbr_constraint(false).map_err(err)?;
        }
        RateControl::ConstrainedVbr => {
            enc.set_vbr(true).map_err(err)?;
            enc.set_vbr_constraint(true).map_err(err)?;
        }
        RateControl::Cbr => enc.set_vbr(false).map_err(err)?,
    }
    let lookahead = usize::try_from(enc.get_lookahead().map_err(err)?).unwrap_or(0);
    // Granule positions and pre-skip count 48 kHz samples whatever the input rate (RFC 7845
    // §4); every Opus rate divides 48 kHz.
    let scale = (48_000 / rate) as u64;
    let pre_skip = lookahead as u64 * scale;
    let pre_skip_u16 = u16::try_from(pre_skip)
        .map_err(|_| Error::encoder("opus", format!("look-ahead {pre_skip} exceeds 65535")))?;

    let mut ogg = OggWriter::new(options.serial);
    // RFC 7845 §5.1: the identification header, alone on the first page (BOS).
    let mut head = Vec::with_capacity(19);
    head.extend_from_slice(b"OpusHead");
    head.push(1); // version
    head.push(1); // channels
    head.extend_from_slice(&pre_skip_u16.to_le_bytes());
    head.extend_from_slice(&rate.to_le_bytes()); // original input rate, informational
    head.extend_from_slice(&0i16.to_le_bytes()); // output gain
    head.push(0); // channel mapping family 0: mono or stereo, no table
    ogg.write_page(&[&head], 0, BOS)?;
    // RFC 7845 §5.2: the comment header on its own page; audio starts on a fresh page.
    let vendor = opus::version();
    let mut tags = Vec::with_capacity(16 + vendor.len());
    tags.extend_from_slice(b"OpusTags");
    tags.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
    tags.extend_from_slice(vendor.as_bytes());
    tags.extend_from_slice(&0u32.to_le_bytes()); // no user comments
    ogg.write_page(&[&tags], 0, 0)?;

    // The decoder drops the first `pre_skip` samples; to get every input sample out, the
    // encoder is fed `lookahead` more samples than the input (zeros), rounded up to whole
    // frames. The last page's granule position then trims the excess (RFC 7845 §4.4).
    let pcm = audio.to_i16();
    let frame = options.frame.samples(rate);
    let total = pcm.len() + lookahead;
    let packets = total.div_ceil(frame).max(1);
    let end_granule = pre_skip + pcm.len() as u64 * scale;
    let mut input = vec![0i16; frame];
    let mut page: Vec<Vec<u8>> = Vec::new();
    let mut page_segments = 0usize;
    let mut page_start = 0u64;
    let mut granule = 0u64;
    let mut buf = vec![0u8; MAX_PACKET];
    for k in 0..packets {
        let from = (k * frame).min(pcm.len());
        let to = ((k + 1) * frame).min(pcm.len());
        input.fill(0);
        input[..to - from].copy_from_slice(&pcm[from..to]);
        let len = enc.encode(&input, &mut buf).map_err(err)?;
        let packet = buf.get(..len).unwrap_or(&buf[..]).to_vec();
        let segments = OggWriter::segments(packet.len());
        if page_segments + segments > 255 {
            flush(&mut ogg, &mut page, granule, 0)?;
            page_segments = 0;
            page_start = granule;
        }
        page_segments += segments;
        page.push(packet);
        granule += frame as u64 * scale;
        let last = k + 1 == packets;
        if last {
            flush(&mut ogg, &mut page, granule.min(end_granule), EOS)?;
        } else if granule - page_start >= PAGE_GRANULES {
            flush(&mut ogg, &mut page, granule, 0)?;
            page_segments = 0;
            page_start = granule;
        }
    }
    Ok(ogg.finish())
}

fn flush(ogg: &mut OggWriter, page: &mut Vec<Vec<u8>>, granule: u64, flags: u8) -> Result<()> {
    let refs: Vec<&[u8]> = page.iter().map(Vec::as_slice).collect();
    ogg.write_page(&refs, granule as i64, flags)?;
    page.clear();
    Ok(())
}
