//! The Layer III frame header (ISO 11172-3 2.4.1.3, 2.4.2.3; ISO 13818-3 2.4.2.3): its fields
//! and the frame length, sample rate and duration they give.

use std::fmt;

/// MPEG audio version (ISO 11172-3 2.4.2.3 `ID`, ISO 13818-3 2.4.2.3; MPEG-2.5 is the
/// Fraunhofer extension that gives the second sync bit a meaning).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// MPEG-1 (32, 44.1, 48 kHz).
    Mpeg1,
    /// MPEG-2 low sampling frequencies (16, 22.05, 24 kHz).
    Mpeg2,
    /// MPEG-2.5 (8, 11.025, 12 kHz).
    Mpeg25,
}

impl Version {
    /// `MPEG-1`, `MPEG-2` or `MPEG-2.5`.
    pub fn name(self) -> &'static str {
        match self {
            Version::Mpeg1 => "MPEG-1",
            Version::Mpeg2 => "MPEG-2",
            Version::Mpeg25 => "MPEG-2.5",
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// MPEG audio layer (ISO 11172-3 2.4.2.3 `layer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layer {
    /// Layer I (384 samples per frame). Not read by this crate.
    I,
    /// Layer II (1152 samples per frame). Not read by this crate.
    II,
    /// Layer III, "MP3".
    III,
}

impl Layer {
    /// `Layer I`, `Layer II` or `Layer III`.
    pub fn name(self) -> &'static str {
        match self {
            Layer::I => "Layer I",
            Layer::II => "Layer II",
            Layer::III => "Layer III",
        }
    }
}

/// Channel mode (ISO 11172-3 2.4.2.3 `mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelMode {
    /// Two independent channels.
    Stereo,
    /// Intensity and/or M/S stereo, chosen by `mode_extension`.
    JointStereo,
    /// Two unrelated mono channels.
    DualChannel,
    /// One channel.
    Mono,
}

impl ChannelMode {
    /// Channels coded in the frame.
    pub fn channels(self) -> u8 {
        match self {
            ChannelMode::Mono => 1,
            _ => 2,
        }
    }
}

/// De-emphasis to apply after decoding (ISO 11172-3 2.4.2.3 `emphasis`; the value `10` is
/// reserved and makes the header invalid).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Emphasis {
    /// None.
    None,
    /// 50/15 µs.
    Us50_15,
    /// CCITT J.17.
    CcittJ17,
}

/// Why four bytes are not a usable MPEG audio frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HeaderError {
    /// The 11 sync bits are not all set.
    NoSync,
    /// Version bits `01`, reserved.
    ReservedVersion,
    /// Layer bits `00`, reserved.
    ReservedLayer,
    /// Bitrate index 15, forbidden.
    ForbiddenBitrate,
    /// Sampling frequency index 3, reserved.
    ReservedSampleRate,
    /// Emphasis `10`, reserved.
    ReservedEmphasis,
    /// Bitrate index 0: a free-format stream, whose frame length the header does not give.
    FreeFormat,
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HeaderError::NoSync => "no frame sync",
            HeaderError::ReservedVersion => "reserved version",
            HeaderError::ReservedLayer => "reserved layer",
            HeaderError::ForbiddenBitrate => "forbidden bitrate index 15",
            HeaderError::ReservedSampleRate => "reserved sampling frequency index 3",
            HeaderError::ReservedEmphasis => "reserved emphasis",
            HeaderError::FreeFormat => "free-format bitrate",
        })
    }
}

/// A validated MPEG audio frame header (ISO 11172-3 2.4.1.3 and 2.4.2.3, ISO 13818-3 2.4.2.3).
///
/// It keeps the header's 32 bits, checked once by [`FrameHeader::parse`]; every field is read
/// through a method. Four bytes per frame and no decoding on the reader's hot path: a field
/// costs a shift, a mask and at most a table lookup when it is asked for.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameHeader(pub(super) u32);

/// Bitrates in kbit/s by index 1..=14 (ISO 11172-3 2.4.2.3, ISO 13818-3 2.4.2.3): MPEG-1
/// Layers I, II, III, then the low sampling frequencies' Layer I and Layers II/III.
const KBPS: [[u16; 14]; 5] = [
    [
        32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448,
    ],
    [
        32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384,
    ],
    [
        32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320,
    ],
    [
        32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256,
    ],
    [8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160],
];

/// Sampling frequencies by version row (MPEG-1, MPEG-2, MPEG-2.5) and index 0..=2.
const RATES: [[u32; 3]; 3] = [
    [44_100, 48_000, 32_000],
    [22_050, 24_000, 16_000],
    [11_025, 12_000, 8_000],
];

/// Row of [`RATES`] and [`L3_FRAME_BYTES`] by the header's version bits (`00` MPEG-2.5,
/// `10` MPEG-2, `11` MPEG-1; `01` is reserved and has no row).
const VERSION_ROW: [usize; 4] = [2, 3, 1, 0];

/// Layer III frame bytes without padding by version row, sampling frequency index and bitrate
/// index (0 where the index is not a bitrate): 144·bitrate/rate for MPEG-1 (ISO 11172-3
/// 2.4.3.1), 72·bitrate/rate for MPEG-2 and 2.5 (ISO 13818-3 2.4.3.1, one granule per frame).
/// A table keeps the division off the reader's hot path.
pub(super) const L3_FRAME_BYTES: [[[u16; 16]; 3]; 3] = {
    let mut t = [[[0u16; 16]; 3]; 3];
    let mut v = 0;
    while v < 3 {
        let (kbps, slots) = if v == 0 {
            (&KBPS[2], 144)
        } else {
            (&KBPS[4], 72)
        };
        let mut r = 0;
        while r < 3 {
            let mut b = 1;
            while b < 15 {
                t[v][r][b] = (slots * kbps[b - 1] as u32 * 1000 / RATES[v][r]) as u16;
                b += 1;
            }
            r += 1;
        }
        v += 1;
    }
    t
};

impl FrameHeader {
    /// Bytes in a frame header.
    pub const LEN: usize = 4;

    /// Checks the four header bytes, most significant first.
    pub fn parse(word: u32) -> std::result::Result<FrameHeader, HeaderError> {
        if word >> 21 != 0x7FF {
            return Err(HeaderError::NoSync);
        }
        if (word >> 19) & 3 == 1 {
            return Err(HeaderError::ReservedVersion);
        }
        if (word >> 17) & 3 == 0 {
            return Err(HeaderError::ReservedLayer);
        }
        if (word >> 10) & 3 == 3 {
            return Err(HeaderError::ReservedSampleRate);
        }
        if word & 3 == 2 {
            return Err(HeaderError::ReservedEmphasis);
        }
        match (word >> 12) & 15 {
            0 => Err(HeaderError::FreeFormat),
            15 => Err(HeaderError::ForbiddenBitrate),
            _ => Ok(FrameHeader(word)),
        }
    }

    /// The header's 32 bits.
    pub fn word(self) -> u32 {
        self.0
    }

    /// The header's four bytes.
    pub fn to_bytes(self) -> [u8; 4] {
        self.0.to_be_bytes()
    }

    pub(super) fn version_row(self) -> usize {
        VERSION_ROW[((self.0 >> 19) & 3) as usize]
    }

    pub(super) fn rate_index(self) -> usize {
        ((self.0 >> 10) & 3) as usize
    }

    /// The 4-bit bitrate index (0 free format, 15 forbidden; [`FrameHeader::bitrate_kbps`]
    /// gives its meaning).
    pub fn bitrate_index(self) -> usize {
        ((self.0 >> 12) & 15) as usize
    }

    /// MPEG-1, MPEG-2 or MPEG-2.5.
    pub fn version(self) -> Version {
        match (self.0 >> 19) & 3 {
            3 => Version::Mpeg1,
            2 => Version::Mpeg2,
            _ => Version::Mpeg25,
        }
    }

    /// Layer I, II or III.
    pub fn layer(self) -> Layer {
        match (self.0 >> 17) & 3 {
            1 => Layer::III,
            2 => Layer::II,
            _ => Layer::I,
        }
    }

    /// Whether a 16-bit CRC follows the header (`protection_bit` = 0).
    pub fn crc(self) -> bool {
        (self.0 >> 16) & 1 == 0
    }

    /// Bitrate in kbit/s.
    pub fn bitrate_kbps(self) -> u16 {
        let table = match (self.version(), self.layer()) {
            (Version::Mpeg1, Layer::I) => 0,
            (Version::Mpeg1, Layer::II) => 1,
            (Version::Mpeg1, Layer::III) => 2,
            (_, Layer::I) => 3,
            (_, _) => 4,
        };
        let index = self.bitrate_index().wrapping_sub(1);
        KBPS[table].get(index).copied().unwrap_or(0)
    }

    /// Sampling frequency in Hz.
    pub fn sample_rate(self) -> u32 {
        RATES
            .get(self.version_row())
            .and_then(|row| row.get(self.rate_index()))
            .copied()
            .unwrap_or(0)
    }

    /// Whether the frame carries one padding slot.
    pub fn padding(self) -> bool {
        (self.0 >> 9) & 1 == 1
    }

    /// The private bit, free for applications.
    pub fn private(self) -> bool {
        (self.0 >> 8) & 1 == 1
    }

    /// Channel mode.
    pub fn channel_mode(self) -> ChannelMode {
        match (self.0 >> 6) & 3 {
            0 => ChannelMode::Stereo,
            1 => ChannelMode::JointStereo,
            2 => ChannelMode::DualChannel,
            _ => ChannelMode::Mono,
        }
    }

    /// `mode_extension`: which joint-stereo tools are on (Layer III: bit 1 M/S stereo, bit 0
    /// intensity stereo).
    pub fn mode_extension(self) -> u8 {
        ((self.0 >> 4) & 3) as u8
    }

    /// The copyright bit.
    pub fn copyright(self) -> bool {
        (self.0 >> 3) & 1 == 1
    }

    /// The original/home bit.
    pub fn original(self) -> bool {
        (self.0 >> 2) & 1 == 1
    }

    /// De-emphasis.
    pub fn emphasis(self) -> Emphasis {
        match self.0 & 3 {
            1 => Emphasis::Us50_15,
            3 => Emphasis::CcittJ17,
            _ => Emphasis::None,
        }
    }

    /// Bytes in the frame, header included (ISO 11172-3 2.4.3.1: a Layer I slot is 4 bytes,
    /// 12·bitrate/rate slots; Layers II and III 144·bitrate/rate one-byte slots; ISO 13818-3
    /// 2.4.3.1 halves the Layer III count at the low sampling frequencies; plus the padding
    /// slot).
    pub fn frame_bytes(self) -> u16 {
        let pad = u16::from(self.padding());
        if self.layer() == Layer::III {
            return L3_FRAME_BYTES
                .get(self.version_row())
                .and_then(|row| row.get(self.rate_index()))
                .and_then(|row| row.get(self.bitrate_index()))
                .map_or(0, |&n| n + pad);
        }
        let bps = u32::from(self.bitrate_kbps()) * 1000;
        let rate = self.sample_rate().max(1);
        // At most 4·(12·448000/32000 + 1) = 676 (Layer I), 144·384000/32000 + 1 = 1729 (II).
        if self.layer() == Layer::I {
            ((12 * bps / rate) as u16 + pad) * 4
        } else {
            (144 * bps / rate) as u16 + pad
        }
    }

    /// Samples per channel the frame decodes to: 384 (Layer I), 1152 (Layer II, MPEG-1
    /// Layer III), 576 (Layer III at the low sampling frequencies, one granule).
    pub fn samples(self) -> u16 {
        match (self.layer(), self.version()) {
            (Layer::I, _) => 384,
            (Layer::II, _) | (Layer::III, Version::Mpeg1) => 1152,
            (Layer::III, _) => 576,
        }
    }

    /// Channels coded in the frame.
    pub fn channels(self) -> u8 {
        self.channel_mode().channels()
    }

    /// Byte offset of the side information (Layer III) or audio data from the frame start:
    /// after the header and the optional CRC (ISO 11172-3 2.4.1.2).
    pub fn side_info_offset(self) -> usize {
        if self.crc() {
            6
        } else {
            4
        }
    }

    /// Bytes of Layer III side information (ISO 11172-3 2.4.1.7: 17 mono, 32 stereo;
    /// ISO 13818-3 2.4.1.7: 9 mono, 17 stereo). 0 for Layers I and II.
    pub fn side_info_len(self) -> usize {
        let mono = self.0 & 0xC0 == 0xC0;
        match (self.layer(), self.version(), mono) {
            (Layer::III, Version::Mpeg1, true) => 17,
            (Layer::III, Version::Mpeg1, false) => 32,
            (Layer::III, _, true) => 9,
            (Layer::III, _, false) => 17,
            _ => 0,
        }
    }
}

impl fmt::Debug for FrameHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameHeader")
            .field("word", &format_args!("{:#010x}", self.0))
            .field("version", &self.version())
            .field("layer", &self.layer())
            .field("crc", &self.crc())
            .field("bitrate_kbps", &self.bitrate_kbps())
            .field("sample_rate", &self.sample_rate())
            .field("padding", &self.padding())
            .field("private", &self.private())
            .field("channel_mode", &self.channel_mode())
            .field("mode_extension", &self.mode_extension())
            .field("copyright", &self.copyright())
            .field("original", &self.original())
            .field("emphasis", &self.emphasis())
            .field("frame_bytes", &self.frame_bytes())
            .field("samples", &self.samples())
            .finish()
    }
}
