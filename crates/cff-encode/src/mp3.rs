//! MP3 encoding with LAME (feature `mp3`; LAME is LGPL-3.0, so the feature is off by default).
//!
//! `mp3lame-encoder` wraps LAME's builder but not its ABR bounds, the bit reservoir switch or
//! bitrates outside its enum (56 and 144 kbps are legal in MPEG-2); those few setters are
//! called through its `ffi` in [`lame`], the one module of this crate allowed `unsafe`.

use std::num::NonZeroU32;

use mp3lame_encoder::{Builder, FlushGap, Mode, MonoPcm};

use crate::audio::Audio;
use crate::{Error, Result};

/// Legal Layer III bitrates, kbps, for MPEG-1 sample rates (32, 44.1, 48 kHz; ISO 11172-3
/// 2.4.2.3, free format excluded).
pub const MPEG1_BITRATES: [u32; 14] = [
    32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320,
];
/// Legal Layer III bitrates, kbps, for MPEG-2 and MPEG-2.5 sample rates (16, 22.05, 24 kHz and
/// 8, 11.025, 12 kHz; ISO 13818-3 2.4.2.3).
pub const MPEG2_BITRATES: [u32; 14] = [8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160];

/// The legal bitrates at `rate` Hz, or an error for a rate MP3 does not have.
pub fn legal_bitrates(rate: u32) -> Result<&'static [u32; 14]> {
    match rate {
        32_000 | 44_100 | 48_000 => Ok(&MPEG1_BITRATES),
        8_000 | 11_025 | 12_000 | 16_000 | 22_050 | 24_000 => Ok(&MPEG2_BITRATES),
        other => Err(Error::setting(
            "mp3 sample rate",
            format!("{other} Hz is not an MPEG-1/2/2.5 rate; resample first"),
        )),
    }
}

/// How the bitrate is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mp3Bitrate {
    /// Constant bitrate: every frame at this legal bitrate (kbps).
    Cbr(u32),
    /// Average bitrate (LAME `--abr`): frames of different legal bitrates whose mean is the
    /// target (kbps).
    Abr {
        /// The target mean, kbps (8 to 320).
        kbps: u32,
        /// Bound the frames to the legal bitrates just below and above the target (LAME
        /// `--abr 20 -b 16 -B 24`). Unbounded, LAME's ABR overshoots on short clips (a 4 s
        /// clip at 16 kHz: 21.7 kbps for 20); bounded it lands within 3 %.
        bounded: bool,
    },
}

/// MP3 settings. Mono output at the input's sample rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Mp3Options {
    /// CBR or ABR.
    pub bitrate: Mp3Bitrate,
    /// LAME's algorithm quality, 0 (best, slowest) to 9; 3 is the `lame` command's default.
    pub quality: u8,
    /// The bit reservoir (ISO 11172-3 2.4.3.4.2, `main_data_begin`): off makes every frame's
    /// main data start in the frame itself (LAME `--nores`), at some cost in quality.
    pub reservoir: bool,
    /// Write a Xing/Info frame (LAME tag) first. Off by default: it is a frame that holds no
    /// audio, and a tokenizer would see it as a block.
    pub xing: bool,
}

impl Mp3Options {
    /// Constant bitrate `kbps`.
    pub fn cbr(kbps: u32) -> Self {
        Mp3Options {
            bitrate: Mp3Bitrate::Cbr(kbps),
            quality: 3,
            reservoir: true,
            xing: false,
        }
    }

    /// Average bitrate `kbps`, bounded by the legal neighbours of the target.
    pub fn abr(kbps: u32) -> Self {
        Mp3Options {
            bitrate: Mp3Bitrate::Abr {
                kbps,
                bounded: true,
            },
            ..Self::cbr(kbps)
        }
    }

    /// CBR where `kbps` is a legal bitrate at `rate`, bounded ABR otherwise: at 16 kHz, 32 kbps
    /// is CBR and 20 and 26 kbps are ABR, as in the paper's augmentation.
    pub fn for_kbps(kbps: u32, rate: u32) -> Result<Self> {
        Ok(if legal_bitrates(rate)?.contains(&kbps) {
            Self::cbr(kbps)
        } else {
            Self::abr(kbps)
        })
    }

    /// Sets LAME's algorithm quality (0 best … 9).
    pub fn with_quality(mut self, quality: u8) -> Self {
        self.quality = quality;
        self
    }

    /// Turns the bit reservoir on or off.
    pub fn with_reservoir(mut self, reservoir: bool) -> Self {
        self.reservoir = reservoir;
        self
    }

    /// Asks for a Xing/Info frame first.
    pub fn with_xing(mut self, xing: bool) -> Self {
        self.xing = xing;
        self
    }
}

/// Encodes mono `audio` as MP3 at its own sample rate (which must be an MP3 rate). No ID3 tag
/// is written. The same samples and options give the same bytes.
pub fn encode_mp3(audio: &Audio, options: &Mp3Options) -> Result<Vec<u8>> {
    let legal = legal_bitrates(audio.rate)?;
    if options.quality > 9 {
        return Err(Error::setting(
            "mp3 quality",
            format!("{} is not in 0..=9", options.quality),
        ));
    }
    let lame_err = |e: mp3lame_encoder::BuildError| Error::encoder("mp3", e);
    let mut builder = Builder::new().ok_or_else(|| Error::encoder("mp3", "lame_init failed"))?;
    builder.set_num_channels(1).map_err(lame_err)?;
    builder.set_sample_rate(audio.rate).map_err(lame_err)?;
    // Without an explicit output rate LAME may pick another one (and resample).
    builder
        .set_output_sample_rate(NonZeroU32::new(audio.rate))
        .map_err(lame_err)?;
    builder.set_mode(Mode::Mono).map_err(lame_err)?;
    builder
        .set_to_write_vbr_tag(options.xing)
        .map_err(lame_err)?;
    let quality = match options.quality {
        0 => mp3lame_encoder::Quality::Best,
        1 => mp3lame_encoder::Quality::SecondBest,
        2 => mp3lame_encoder::Quality::NearBest,
        3 => mp3lame_encoder::Quality::VeryNice,
        4 => mp3lame_encoder::Quality::Nice,
        5 => mp3lame_encoder::Quality::Good,
        6 => mp3lame_encoder::Quality::Decent,
        7 => mp3lame_encoder::Quality::Ok,
        8 => mp3lame_encoder::Quality::SecondWorst,
        _ => mp3lame_encoder::Quality::Worst,
    };
    builder.set_quality(quality).map_err(lame_err)?;
    match options.bitrate {
        Mp3Bitrate::Cbr(kbps) => {
            if !legal.contains(&kbps) {
                return Err(Error::setting(
                    "mp3 bitrate",
                    format!(
                        "{kbps} kbps is not a legal bitrate at {} Hz ({legal:?}); use ABR",
                        audio.rate
                    ),
                ));
            }
            lame::set_cbr(&mut builder, kbps)?;
        }
        Mp3Bitrate::Abr { kbps, bounded } => {
            if !(8..=320).contains(&kbps) {
                return Err(Error::setting(
                    "mp3 abr",
                    format!("{kbps} kbps is not in 8..=320"),
                ));
            }
            let bounds = bounded.then(|| {
                let low = legal.iter().rev().find(|&&b| b < kbps).copied();
                let high = legal.iter().find(|&&b| b > kbps).copied();
                (
                    low.unwrap_or(legal[0]),
                    high.unwrap_or(legal[legal.len() - 1]),
                )
            });
            lame::set_abr(&mut builder, kbps, bounds)?;
        }
    }
    lame::set_reservoir(&mut builder, options.reservoir)?;
    let mut encoder = builder.build().map_err(lame_err)?;

    let pcm = audio.to_i16();
    // About 4 kB per second at 32 kbps: sized for the output, not LAME's worst case, which
    // `reserve` guarantees per chunk (`encode_to_vec` writes into spare capacity only).
    let mut out = Vec::with_capacity(pcm.len() / 4 + 7200);
    for chunk in pcm.chunks(1 << 16) {
        out.reserve(mp3lame_encoder::max_required_buffer_size(chunk.len()));
        encoder
            .encode_to_vec(MonoPcm(chunk), &mut out)
            .map_err(|e| Error::encoder("mp3", e))?;
    }
    out.reserve(7200);
    encoder
        .flush_to_vec::<FlushGap>(&mut out)
        .map_err(|e| Error::encoder("mp3", e))?;
    if options.xing {
        // LAME reserves the Info frame's place at the start and fills it in only now
        // (lame.h: lame_get_lametag_frame).
        let mut tag = Vec::with_capacity(2880);
        if encoder.lame_tag_encode_to_vec(&mut tag).is_some() {
            if let Some(head) = out.get_mut(..tag.len()) {
                head.copy_from_slice(&tag);
            }
        }
    }
    Ok(out)
}

/// The LAME setters that `mp3lame-encoder` does not wrap.
#[allow(unsafe_code)]
mod lame {
    use std::ffi::c_int;

    use mp3lame_encoder::{ffi, Builder};

    use crate::{Error, Result};

    fn check(what: &'static str, code: c_int) -> Result<()> {
        if code < 0 {
            return Err(Error::encoder("mp3", format!("{what} returned {code}")));
        }
        Ok(())
    }

    fn kbps(k: u32) -> c_int {
        c_int::try_from(k).unwrap_or(c_int::MAX)
    }

    pub(super) fn set_cbr(builder: &mut Builder, k: u32) -> Result<()> {
        // SAFETY: `as_ptr` is the builder's live `lame_global_flags`, which it owns until
        // `build`; these setters only store an integer in it (lame.h).
        unsafe {
            let gfp = builder.as_ptr();
            check(
                "lame_set_VBR",
                ffi::lame_set_VBR(gfp, ffi::vbr_mode::vbr_off),
            )?;
            check("lame_set_brate", ffi::lame_set_brate(gfp, kbps(k)))
        }
    }

    pub(super) fn set_abr(
        builder: &mut Builder,
        mean: u32,
        bounds: Option<(u32, u32)>,
    ) -> Result<()> {
        // SAFETY: as in `set_cbr`. The order follows LAME's frontend (parse.c): `--abr` sets
        // the mode and mean, then `-b`/`-B` the frame bounds.
        unsafe {
            let gfp = builder.as_ptr();
            check(
                "lame_set_VBR",
                ffi::lame_set_VBR(gfp, ffi::vbr_mode::vbr_abr),
            )?;
            check(
                "lame_set_VBR_mean_bitrate_kbps",
                ffi::lame_set_VBR_mean_bitrate_kbps(gfp, kbps(mean)),
            )?;
            if let Some((low, high)) = bounds {
                check(
                    "lame_set_VBR_min_bitrate_kbps",
                    ffi::lame_set_VBR_min_bitrate_kbps(gfp, kbps(low)),
                )?;
                check(
                    "lame_set_VBR_max_bitrate_kbps",
                    ffi::lame_set_VBR_max_bitrate_kbps(gfp, kbps(high)),
                )?;
            }
            Ok(())
        }
    }

    pub(super) fn set_reservoir(builder: &mut Builder, on: bool) -> Result<()> {
        // SAFETY: as in `set_cbr`.
        unsafe {
            check(
                "lame_set_disable_reservoir",
                ffi::lame_set_disable_reservoir(builder.as_ptr(), c_int::from(!on)),
            )
        }
    }
}
