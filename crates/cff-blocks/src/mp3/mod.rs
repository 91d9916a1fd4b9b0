//! MP3 frames: MPEG-1 (ISO 11172-3), MPEG-2 (ISO 13818-3) and MPEG-2.5 Layer III.
//!
//! A block is one frame, header included, borrowed from the input. Audio frames carry
//! [`Place::Time`] in samples at the stream's sample rate (1152 samples per MPEG-1 frame, 576
//! per MPEG-2/2.5 frame); a Xing/Info or VBRI frame at the start of the stream is a
//! [`BlockKind::Metadata`] block with [`Place::None`] that does not advance the time.
//!
//! # How frames are found
//!
//! - Tags around the frames are reported as [`Region`]s: ID3v2 at the start (several in a row
//!   are allowed, and one between frames), an APE tag at the start, and ID3v1, APE and an
//!   appended ID3v2.4 (with footer) at the end.
//! - The first frame is a header (ISO 11172-3 2.4.2.3) whose successor, `frame_bytes` later,
//!   is a header of the same version, layer, sample rate and channel count; or a frame that
//!   ends exactly where the audio ends (end of data, or the first tag at the end). That frame
//!   fixes the stream's parameters.
//! - Then the common path: the header where the previous frame ended agrees with the stream,
//!   and so does the header after it; jump. Nothing is read inside a frame but its header and
//!   the first bytes of its side information. Once a frame is confirmed, the header that
//!   confirmed it is kept: the next frame costs one header read where it ends and two lookups
//!   in small tables built for the stream (frame length by bitrate index and padding; valid
//!   channel mode and emphasis). Anything else goes through the general path below.
//! - Where that fails the reader resynchronises: it scans for the next header that agrees with
//!   the stream *and* is followed by one that agrees, so a false sync inside garbage is not
//!   taken. The bytes skipped become one [`RegionKind::Garbage`] region; bytes after the last
//!   frame that are not a tag become [`RegionKind::Trailing`].
//! - A frame whose successor is missing is still a frame, unless a confirmed frame starts
//!   inside it (then it was cut short and its bytes are garbage).
//!
//! # Truncation
//!
//! When the frame that follows the last good one declares more bytes than remain before the
//! end of the audio (and no confirmed frame starts inside it), the reader yields
//! [`Error::Truncated`] after all the complete frames: a partial result, the usual state of
//! a download cut short. A header of the stream's shape found only while resynchronising and
//! running past the end is not trusted; its bytes are reported as trailing.
//!
//! # Unsupported streams
//!
//! A Layer I or II stream gives [`Error::Unsupported`] ("MPEG-1 Layer II") once its first
//! header is confirmed the same way as a Layer III one. A free-format stream (bitrate index 0:
//! the header does not give the frame length) gives it once three such headers are found at
//! one spacing, give or take the padding byte. A lone header of either kind is garbage.
//!
//! # Limits
//!
//! Frames count against [`Limits::max_blocks`](crate::Limits::max_blocks) and are checked
//! against [`Limits::max_block_bytes`](crate::Limits::max_block_bytes); regions count against
//! `max_blocks` too. The reader allocates nothing per frame; it holds the list of regions.

use std::borrow::Cow;
use std::fmt;

use crate::{Block, BlockKind, Detail, Error, Format, Options, Place, Region, RegionKind, Result};

mod huffman;
mod huffman_tables;
mod side_info;
pub use huffman::{
    decode_granules, long_band_edges, short_band_edges, FrameLines, GranuleLines, LINES,
    MAX_SCALEFACTORS,
};
pub use side_info::{Granule, MainData, SideInfo};

/// Writes `(value, bits)` pairs most significant bit first: frames and side information built
/// bit by bit for the tests of this module.
#[cfg(test)]
pub(crate) fn pack_bits(fields: &[(u32, usize)]) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut acc, mut n) = (0u64, 0);
    for &(v, bits) in fields {
        acc = (acc << bits) | u64::from(v);
        n += bits;
        while n >= 8 {
            out.push((acc >> (n - 8)) as u8);
            n -= 8;
        }
    }
    if n > 0 {
        out.push((acc << (8 - n)) as u8);
    }
    out
}

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
pub struct FrameHeader(u32);

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
const L3_FRAME_BYTES: [[[u16; 16]; 3]; 3] = {
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

    fn version_row(self) -> usize {
        VERSION_ROW[((self.0 >> 19) & 3) as usize]
    }

    fn rate_index(self) -> usize {
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

/// Which VBR header a metadata frame holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VbrKind {
    /// `Xing` (variable bitrate, written by LAME and Xing).
    Xing,
    /// `Info` (the same structure, written by LAME for constant bitrate).
    Info,
    /// `VBRI` (Fraunhofer).
    Vbri,
}

/// What a Xing/Info or VBRI header says about the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VbrHeader {
    /// Which header.
    pub kind: VbrKind,
    /// Audio frames in the stream, this frame not counted, where the header gives it.
    pub frames: Option<u32>,
    /// Bytes of the stream, where the header gives it.
    pub bytes: Option<u32>,
    /// Samples the encoder added at the start (LAME tag, or VBRI `delay`), where given.
    pub encoder_delay: Option<u16>,
    /// Samples the encoder added at the end (LAME tag), where given.
    pub encoder_padding: Option<u16>,
}

/// Format-specific facts about one MP3 frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct FrameInfo {
    /// The frame header.
    pub header: FrameHeader,
    /// Where this frame's main data begins: that many bytes before the first byte after its
    /// side information, counting only the main-data bytes of earlier frames (their headers
    /// and side information are skipped). 9 bits in MPEG-1 (ISO 11172-3 2.4.1.7 syntax,
    /// 2.4.2.7 semantics), 8 bits in MPEG-2/2.5 (ISO 13818-3 2.4.1.7). 0 when the bit
    /// reservoir is not used (LAME `--nores`).
    pub main_data_begin: u16,
    /// Bytes of side information (after the header and the CRC).
    pub side_info_len: u8,
    /// The Xing/Info/VBRI header, for the metadata frame that holds one.
    pub vbr: Option<VbrHeader>,
}

/// What every frame of a stream shares, fixed by its first frame, and what follows from it.
///
/// The reader's hot path asks one question per frame: is the word where the last frame ended a
/// header of this stream, and how long is its frame? Sync, version, layer and sampling
/// frequency must equal the first header's: one masked compare. The rest is two lookups in
/// small tables. With version and sampling frequency fixed, the length depends only on the
/// bitrate index and the padding bit: a table indexed by them gives it, 0 for a bitrate index
/// of 0 or 15. The channel mode must keep the stream's channel count and the emphasis must be
/// valid: a table indexed by those four bits gives a mask, all ones or 0.
#[derive(Clone, Copy)]
struct Stream {
    /// The first header of the stream.
    key: u32,
    /// Frame bytes by [`Stream::length_index`]: bitrate index and padding bit.
    frame_bytes: [u16; 32],
    /// `0xFFFF` by [`Stream::mode_index`] where mode and emphasis are acceptable, else 0.
    mode_ok: [u16; 16],
    /// Samples per frame (576 or 1152) and the sampling frequency.
    samples: u16,
    rate: u32,
    /// Side information bytes (fixed by version and channel count).
    side_info_len: u8,
    /// How far to shift the 16 bits that open the side information to get `main_data_begin`:
    /// 7 for its 9 bits in MPEG-1, 8 for its 8 bits in MPEG-2/2.5.
    main_data_begin_shift: u8,
}

impl Stream {
    /// The stream whose first header is `key`, a valid Layer III header.
    fn new(key: u32) -> Stream {
        let header = FrameHeader(key);
        let mut frame_bytes = [0u16; 32];
        let row = L3_FRAME_BYTES
            .get(header.version_row())
            .and_then(|row| row.get(header.rate_index()));
        for (i, slot) in frame_bytes.iter_mut().enumerate() {
            let (bitrate, pad) = (i >> 1, (i & 1) as u16);
            let bytes = row.and_then(|row| row.get(bitrate)).copied().unwrap_or(0);
            *slot = if bytes == 0 { 0 } else { bytes + pad };
        }
        let mut mode_ok = [0u16; 16];
        for (i, slot) in mode_ok.iter_mut().enumerate() {
            let (mode, emphasis) = ((i >> 2) as u32, (i & 3) as u32);
            if agrees(mode << 6, key & 0xFF) && emphasis != 2 {
                *slot = 0xFFFF;
            }
        }
        Stream {
            key,
            frame_bytes,
            mode_ok,
            samples: header.samples(),
            rate: header.sample_rate(),
            side_info_len: header.side_info_len() as u8,
            main_data_begin_shift: if header.version() == Version::Mpeg1 {
                7
            } else {
                8
            },
        }
    }

    /// Bitrate index (bits 15..12) and padding bit (bit 9) of a header, side by side.
    #[inline(always)]
    fn length_index(word: u32) -> usize {
        (((word >> 11) & 0x1E) | ((word >> 9) & 1)) as usize
    }

    /// Channel mode (bits 7..6) and emphasis (bits 1..0) of a header, side by side.
    #[inline(always)]
    fn mode_index(word: u32) -> usize {
        (((word >> 4) & 0xC) | (word & 3)) as usize
    }

    /// Length of the Layer III frame whose header is `word`, if `word` is a valid header of
    /// this stream: it [`agrees`] with the first header, and its bitrate index (not 0 or 15)
    /// and emphasis (not `10`) are valid. The same rules as [`FrameHeader::parse`], without
    /// building the header. 0 if it is not.
    #[inline(always)]
    fn frame_len(&self, word: u32) -> usize {
        if (word ^ self.key) & STREAM_MASK != 0 {
            return 0;
        }
        let bytes = self.frame_bytes[Self::length_index(word) & 31];
        usize::from(bytes & self.mode_ok[Self::mode_index(word) & 15])
    }

    /// The largest frame of the stream.
    fn max_frame_bytes(&self) -> u16 {
        self.frame_bytes.iter().copied().max().unwrap_or(0)
    }

    /// `main_data_begin`, which opens the side information after the header and the optional
    /// CRC (ISO 11172-3 2.4.1.7: 9 bits; ISO 13818-3 2.4.1.7: 8 bits), of the frame `frame`
    /// whose header is `word`. Every Layer III frame is longer than header, CRC and side
    /// information (the shortest, 8 kbit/s at 24 kHz, has 24 bytes), so the bytes exist; a
    /// shorter slice reads as zeros.
    #[inline(always)]
    fn main_data_begin(&self, frame: &[u8], word: u32) -> u16 {
        // Bytes 4..8: the CRC and the first side information bytes, or the side information.
        // protection_bit 1 (no CRC): the high half; 0: the low half.
        let after_header = word_at(frame, 4).unwrap_or(0);
        let opening = (after_header >> ((word >> 12) & 16)) as u16;
        opening >> self.main_data_begin_shift
    }
}

/// Sync, version, layer and sampling frequency: what every frame of a stream shares.
const STREAM_MASK: u32 = 0xFFFE_0C00;

/// Whether header word `word` belongs to the stream whose first header was `key`: same
/// version, layer and sampling frequency, and the same number of channels (the side
/// information's length depends on it). Stereo and joint stereo may alternate.
#[inline]
fn agrees(word: u32, key: u32) -> bool {
    word & STREAM_MASK == key & STREAM_MASK && (word & 0xC0 == 0xC0) == (key & 0xC0 == 0xC0)
}

#[inline]
fn word_at(data: &[u8], pos: usize) -> Option<u32> {
    let b = data.get(pos..pos.checked_add(4)?)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

#[inline]
fn u32_le_at(data: &[u8], pos: usize) -> Option<u32> {
    let b = data.get(pos..pos.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn u16_be_at(data: &[u8], pos: usize) -> Option<u16> {
    let b = data.get(pos..pos.checked_add(2)?)?;
    Some(u16::from_be_bytes([b[0], b[1]]))
}

/// Length of the ID3v2 tag at the start of `data`, header, padding and footer included
/// (ID3v2.4 structure §3.1: a 28-bit syncsafe size that excludes the 10-byte header and the
/// 10-byte footer present when flag bit 4 is set). `None` if `data` does not start with a
/// valid ID3v2 header; the length may exceed `data`.
fn id3v2_len(data: &[u8]) -> Option<u64> {
    let h = data.get(..10)?;
    if &h[..3] != b"ID3" || h[3] == 0xFF || h[4] == 0xFF || h[6..10].iter().any(|b| b & 0x80 != 0) {
        return None;
    }
    let size = h[6..10]
        .iter()
        .fold(0u64, |acc, &b| (acc << 7) | u64::from(b));
    let footer = if h[3] >= 4 && h[5] & 0x10 != 0 { 10 } else { 0 };
    Some(10 + size + footer)
}

/// Length of an ID3v2.4 tag whose footer (`3DI`) ends at `end` (ID3v2.4 structure §3.4: a tag
/// appended at the end of a file carries a footer so that it can be found from the end).
fn id3v2_footer_len(data: &[u8], end: usize) -> Option<u64> {
    let f = data.get(end.checked_sub(10)?..end)?;
    if &f[..3] != b"3DI" || f[3] == 0xFF || f[4] == 0xFF || f[6..10].iter().any(|b| b & 0x80 != 0) {
        return None;
    }
    let size = f[6..10]
        .iter()
        .fold(0u64, |acc, &b| (acc << 7) | u64::from(b));
    Some(20 + size)
}

/// Most tags looked for at the end of a file.
const MAX_TRAILING_TAGS: usize = 4;

/// APE tag flags (APEv2 specification, "APE Tags Header"): bit 31 the tag has a header, bit 29
/// this 32-byte block is the header.
const APE_HAS_HEADER: u32 = 1 << 31;
const APE_IS_HEADER: u32 = 1 << 29;

/// Length of the APE tag whose 32-byte header starts at `pos`. The header's size field counts
/// the items and the footer, not the header.
fn ape_header_len(data: &[u8], pos: usize) -> Option<u64> {
    if data.get(pos..pos.checked_add(8)?)? != b"APETAGEX" {
        return None;
    }
    let size = u32_le_at(data, pos + 12)?;
    let flags = u32_le_at(data, pos + 20)?;
    (flags & APE_IS_HEADER != 0 && size >= 32).then_some(u64::from(size) + 32)
}

/// Length of the APE tag whose 32-byte footer ends at `end`, header included when the flags
/// say there is one.
fn ape_footer_len(data: &[u8], end: usize) -> Option<u64> {
    let pos = end.checked_sub(32)?;
    if data.get(pos..pos + 8)? != b"APETAGEX" {
        return None;
    }
    let size = u32_le_at(data, pos + 12)?;
    let flags = u32_le_at(data, pos + 20)?;
    if flags & APE_IS_HEADER != 0 || size < 32 {
        return None;
    }
    let header = if flags & APE_HAS_HEADER != 0 { 32 } else { 0 };
    Some(u64::from(size) + header)
}

/// Reads the Xing/Info or VBRI header in `frame`, if it holds one.
fn vbr_header(frame: &[u8], header: &FrameHeader) -> Option<VbrHeader> {
    // LAME and FFmpeg place the Xing tag right after the side information as if there were no
    // CRC (LAME's VbrTag.c; verified on `lame -p` output); also accept it after the CRC.
    let plain = 4 + header.side_info_len();
    let at = [plain, plain + 2];
    let candidates = if header.crc() { &at[..] } else { &at[..1] };
    for &x in candidates {
        let kind = match frame.get(x..x + 4) {
            Some(b"Xing") => VbrKind::Xing,
            Some(b"Info") => VbrKind::Info,
            _ => continue,
        };
        let flags = word_at(frame, x + 4)?;
        let mut p = x + 8;
        let mut field = |bit: u32, len: usize| -> Option<u32> {
            if flags & bit == 0 {
                return None;
            }
            let v = word_at(frame, p);
            p += len;
            v
        };
        let frames = field(1, 4);
        let bytes = field(2, 4);
        let _toc = field(4, 100);
        let _quality = field(8, 4);
        // The LAME tag follows (LAME's "Mp3 Info Tag rev 1" specification): a 9-byte encoder
        // string, then at byte 21 the encoder delay and padding, 12 bits each.
        let (mut encoder_delay, mut encoder_padding) = (None, None);
        if let Some(lame) = frame.get(p..p + 24) {
            if lame.starts_with(b"LAME") || lame.starts_with(b"Lavf") || lame.starts_with(b"Lavc") {
                let (a, b, c) = (lame[21], lame[22], lame[23]);
                encoder_delay = Some((u16::from(a) << 4) | u16::from(b >> 4));
                encoder_padding = Some((u16::from(b & 0x0F) << 8) | u16::from(c));
            }
        }
        return Some(VbrHeader {
            kind,
            frames,
            bytes,
            encoder_delay,
            encoder_padding,
        });
    }
    // VBRI: always 32 bytes after the header (Fraunhofer's VBRI specification): version,
    // delay, quality (u16 each), then bytes and frames (u32 each), big-endian.
    if frame.get(36..40) == Some(b"VBRI") {
        return Some(VbrHeader {
            kind: VbrKind::Vbri,
            frames: word_at(frame, 50),
            bytes: word_at(frame, 46),
            encoder_delay: u16_be_at(frame, 42),
            encoder_padding: None,
        });
    }
    None
}

/// Reads blocks (frames) from an MP3 file held in memory.
pub struct Mp3Reader<'a> {
    data: &'a [u8],
    /// Next byte to look at.
    pos: usize,
    /// Where the audio ends: the first tag at the end, or the end of the data.
    audio_end: usize,
    regions: Vec<Region>,
    /// Tags found at the end, reported once the frames are read.
    end_regions: Vec<Region>,
    /// The stream's first header and what follows from it, once it is found: every frame must
    /// agree with it.
    stream: Option<Stream>,
    /// The header word at `pos` and its frame's length, when the last frame yielded was
    /// confirmed by it: a header of the stream, not yet itself confirmed. The hot path in
    /// [`Mp3Reader::next`] starts there; a length of 0 sends it down the general path.
    ahead: (u32, usize),
    /// The hot path yields blocks while `index` is below this: `max_blocks`, or 0 where a frame
    /// of the stream could exceed `max_block_bytes` (the general path then says so).
    fast_blocks: u64,
    index: u64,
    next_sample: i64,
    /// An error found when the reader was opened, yielded first.
    pending: Option<Error>,
    done: bool,
    max_blocks: u64,
    max_block_bytes: u64,
}

impl<'a> Mp3Reader<'a> {
    /// Opens a reader over a whole file held in memory. Tags are located here; frames are
    /// found as the iterator advances.
    pub fn new(data: &'a [u8], options: &Options) -> Result<Self> {
        let limits = &options.limits;
        if data.len() as u64 > limits.max_file_bytes {
            return Err(Error::Limit {
                offset: 0,
                what: "max_file_bytes",
                limit: limits.max_file_bytes,
                found: data.len() as u64,
            });
        }
        let mut reader = Mp3Reader {
            data,
            pos: 0,
            audio_end: data.len(),
            regions: Vec::new(),
            end_regions: Vec::new(),
            stream: None,
            ahead: (0, 0),
            fast_blocks: 0,
            index: 0,
            next_sample: 0,
            pending: None,
            done: false,
            max_blocks: limits.max_blocks,
            max_block_bytes: limits.max_block_bytes,
        };
        reader.find_leading_tags();
        reader.find_trailing_tags();
        Ok(reader)
    }

    /// Ranges of the input seen so far that are not part of any block. Tags at the end of the
    /// file are added when the last frame has been read.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// The first header of the stream, once the first frame has been found: every frame agrees
    /// with it in version, layer, sampling frequency and channel count.
    pub fn stream_header(&self) -> Option<FrameHeader> {
        self.stream.map(|s| FrameHeader(s.key))
    }

    /// ID3v2 tags (several may follow each other) and an APE tag at the start of the file.
    fn find_leading_tags(&mut self) {
        loop {
            let rest = self.data.get(self.pos..).unwrap_or_default();
            let (len, kind) = if let Some(len) = id3v2_len(rest) {
                (len, RegionKind::Id3v2)
            } else if let Some(len) = ape_header_len(self.data, self.pos) {
                (len, RegionKind::Ape)
            } else {
                return;
            };
            if len > rest.len() as u64 {
                self.pending = Some(Error::Truncated {
                    format: Format::Mp3,
                    offset: self.pos as u64,
                    what: if kind == RegionKind::Ape {
                        "APE tag"
                    } else {
                        "ID3v2 tag"
                    },
                    needed: len,
                    available: rest.len() as u64,
                });
                return;
            }
            if let Err(e) = self.push_region(self.pos, len as usize, kind) {
                self.pending = Some(e);
                return;
            }
            self.pos += len as usize;
        }
    }

    /// ID3v1 (the last 128 bytes, starting `TAG`), APE (found by its footer) and an appended
    /// ID3v2.4 tag (found by its footer), in any order, working backwards from the end.
    fn find_trailing_tags(&mut self) {
        let start = self.pos;
        let mut end = self.data.len();
        // A real file ends with at most an APE tag and an ID3v1 tag (and perhaps a Lyrics3 or
        // an appended ID3v2); more is not a tag layout but data that looks like one.
        for _ in 0..MAX_TRAILING_TAGS {
            let room = (end - start) as u64;
            let (len, kind) =
                if room >= 128 && self.data.get(end - 128..end - 125) == Some(b"TAG".as_slice()) {
                    (128, RegionKind::Id3v1)
                } else if let Some(len) = ape_footer_len(self.data, end).filter(|&n| n <= room) {
                    (len, RegionKind::Ape)
                } else if let Some(len) = id3v2_footer_len(self.data, end).filter(|&n| n <= room) {
                    (len, RegionKind::Id3v2)
                } else {
                    break;
                };
            end -= len as usize;
            self.end_regions.push(Region {
                offset: end as u64,
                len,
                kind,
            });
        }
        self.end_regions.reverse();
        self.audio_end = end;
    }

    /// Adds a region. Skipped bytes that touch skipped bytes of the same kind extend the
    /// previous region; tags stay one region each. Regions count against
    /// [`Limits::max_blocks`](crate::Limits::max_blocks), so that a file of tiny tags or of
    /// frames each followed by a byte of garbage cannot grow the list without bound.
    fn push_region(&mut self, offset: usize, len: usize, kind: RegionKind) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        if let Some(last) = self.regions.last_mut() {
            if kind.is_garbage() && last.kind == kind && last.offset + last.len == offset as u64 {
                last.len += len as u64;
                return Ok(());
            }
        }
        if self.regions.len() as u64 >= self.max_blocks {
            return Err(Error::Limit {
                offset: offset as u64,
                what: "max_blocks",
                limit: self.max_blocks,
                found: self.regions.len() as u64 + 1,
            });
        }
        self.regions.push(Region {
            offset: offset as u64,
            len: len as u64,
            kind,
        });
        Ok(())
    }

    /// Length of the frame at `pos` if its header belongs to `stream`.
    #[inline]
    fn stream_frame_at(&self, pos: usize, stream: &Stream) -> Option<(u32, usize)> {
        let word = word_at(self.data, pos)?;
        let len = stream.frame_len(word);
        (len != 0).then_some((word, len))
    }

    /// Whether a frame of the stream `key` that ends at `end` is confirmed: it ends where the
    /// audio ends, or a header of the stream follows it.
    #[inline]
    fn confirmed_end(&self, end: usize, stream: &Stream) -> bool {
        end == self.audio_end
            || (end < self.audio_end && self.stream_frame_at(end, stream).is_some())
    }

    /// Candidate sync positions in `from..to`: bytes 0xFF followed by three set bits.
    fn syncs(&self, from: usize, to: usize) -> impl Iterator<Item = usize> + '_ {
        let to = to.min(self.audio_end);
        let window = self.data.get(from..to).unwrap_or_default();
        window
            .iter()
            .enumerate()
            .filter(|&(_, &b)| b == 0xFF)
            .map(move |(i, _)| from + i)
            .filter(move |&p| self.data.get(p + 1).is_some_and(|b| b & 0xE0 == 0xE0))
    }

    /// The first frame of the stream `key` in `from..to` that is followed by another frame of
    /// the stream (or ends where the audio ends) and fits before the end of the audio.
    fn find_confirmed(&self, from: usize, to: usize, stream: &Stream) -> Option<(usize, u32)> {
        self.syncs(from, to).find_map(|p| {
            let (word, len) = self.stream_frame_at(p, stream)?;
            self.confirmed_end(p + len, stream).then_some((p, word))
        })
    }

    /// Finds the first frame of the stream from `self.pos`, any layer, and fixes the stream's
    /// parameters. Skipped bytes become garbage.
    fn find_first(&mut self) -> Result<Option<(usize, u32)>> {
        let from = self.pos;
        // Each free-format candidate costs a scan of up to 4 KiB; a budget keeps a file full of
        // such headers linear. A real free-format stream is confirmed at its first frame.
        let mut free_format_budget = 16u32;
        let found = self.syncs(from, self.audio_end).find_map(|p| {
            let word = word_at(self.data, p)?;
            match FrameHeader::parse(word) {
                Ok(h) => {
                    let end = p + usize::from(h.frame_bytes());
                    let ok = end == self.audio_end
                        || word_at(self.data, end).is_some_and(|next| {
                            end < self.audio_end
                                && agrees(next, word)
                                && FrameHeader::parse(next).is_ok()
                        });
                    ok.then_some(Ok((p, word, h)))
                }
                Err(HeaderError::FreeFormat) if free_format_budget > 0 => {
                    free_format_budget -= 1;
                    self.free_format_confirmed(p, word).then_some(Err(p))
                }
                Err(_) => None,
            }
        });
        match found {
            None => {
                let end = self.audio_end;
                self.push_region(from, end - from, RegionKind::Garbage)?;
                self.pos = end;
                Err(Error::Malformed {
                    format: Format::Mp3,
                    offset: from as u64,
                    expected: "an MPEG audio frame followed by another",
                    found: format!("none in {} bytes", end - from),
                })
            }
            Some(Err(p)) => {
                self.push_region(from, p - from, RegionKind::Garbage)?;
                Err(Error::Unsupported {
                    format: Format::Mp3,
                    offset: p as u64,
                    what: "free-format bitrate (bitrate index 0)".into(),
                })
            }
            Some(Ok((p, word, h))) => {
                self.push_region(from, p - from, RegionKind::Garbage)?;
                if h.layer() != Layer::III {
                    return Err(Error::Unsupported {
                        format: Format::Mp3,
                        offset: p as u64,
                        what: format!("{} {}", h.version(), h.layer().name()),
                    });
                }
                let stream = Stream::new(word);
                self.fast_blocks = if u64::from(stream.max_frame_bytes()) <= self.max_block_bytes {
                    self.max_blocks
                } else {
                    0
                };
                self.stream = Some(stream);
                Ok(Some((p, word)))
            }
        }
    }

    /// A free-format header counts as a stream when two more headers with the same sync,
    /// version, layer, protection, bitrate index and sampling frequency follow at a constant
    /// distance, give or take the padding byte: a free-format stream keeps one bitrate (ISO
    /// 11172-3 2.4.2.3), so its frames keep one length. The first must lie within 4 KiB, the
    /// longest free-format frame decoders accept (640 kbit/s at 32 kHz is 2880 bytes).
    fn free_format_confirmed(&self, p: usize, word: u32) -> bool {
        const SAME: u32 = 0xFFFF_FC00;
        let same = |at: usize| word_at(self.data, at).is_some_and(|w| w & SAME == word & SAME);
        self.syncs(p + 4 + 9, p + 4096).any(|q| {
            let third = q + (q - p);
            same(q) && (same(third) || same(third - 1) || same(third + 1))
        })
    }

    /// Finds the next frame, its offset and header word: `Ok(None)` at the end of the audio.
    fn next_frame(&mut self) -> Result<Option<(usize, u32)>> {
        loop {
            let Some(stream) = self.stream else {
                // Also where no byte is left: a file without frames is malformed.
                return self.find_first();
            };
            let pos = self.pos;
            let end = self.audio_end;
            if pos >= end {
                return Ok(None);
            }
            // The common path: a header of the stream where the last frame ended, and another
            // where this one ends. Only header words are read.
            if let Some((word, len)) = self.stream_frame_at(pos, &stream) {
                let frame_end = pos + len;
                if self.confirmed_end(frame_end, &stream) {
                    return Ok(Some((pos, word)));
                }
                // No successor. If a confirmed frame starts inside this one, this one was cut
                // short: its bytes are garbage.
                if let Some((q, next)) = self.find_confirmed(pos + 1, frame_end, &stream) {
                    self.push_region(pos, q - pos, RegionKind::Garbage)?;
                    return Ok(Some((q, next)));
                }
                if frame_end <= end {
                    // Whole, followed by garbage or by the last bytes of the file.
                    return Ok(Some((pos, word)));
                }
                return Err(Error::Truncated {
                    format: Format::Mp3,
                    offset: pos as u64,
                    what: "MP3 frame",
                    needed: len as u64,
                    available: (end - pos) as u64,
                });
            }
            // An ID3v2 tag between frames (concatenated files).
            if let Some(len) = id3v2_len(self.data.get(pos..end).unwrap_or_default()) {
                if len <= (end - pos) as u64 {
                    self.push_region(pos, len as usize, RegionKind::Id3v2)?;
                    self.pos = pos + len as usize;
                    continue;
                }
            }
            // Resynchronise on a frame of the stream that another frame confirms.
            match self.find_confirmed(pos + 1, end, &stream) {
                Some((q, word)) => {
                    self.push_region(pos, q - pos, RegionKind::Garbage)?;
                    return Ok(Some((q, word)));
                }
                None => {
                    self.push_region(pos, end - pos, RegionKind::Trailing)?;
                    self.pos = end;
                    return Ok(None);
                }
            }
        }
    }

    /// Builds the block for the frame at `pos` whose validated header is `word`.
    fn block(&mut self, pos: usize, word: u32) -> Result<Block<'a>> {
        let header = FrameHeader(word);
        let len = usize::from(header.frame_bytes());
        if len as u64 > self.max_block_bytes {
            return Err(Error::Limit {
                offset: pos as u64,
                what: "max_block_bytes",
                limit: self.max_block_bytes,
                found: len as u64,
            });
        }
        if self.index >= self.max_blocks {
            return Err(Error::Limit {
                offset: pos as u64,
                what: "max_blocks",
                limit: self.max_blocks,
                found: self.index + 1,
            });
        }
        let frame = self
            .data
            .get(pos..pos + len)
            .ok_or_else(|| Error::Truncated {
                format: Format::Mp3,
                offset: pos as u64,
                what: "MP3 frame",
                needed: len as u64,
                available: self.data.len().saturating_sub(pos) as u64,
            })?;
        let main_data_begin = match &self.stream {
            Some(stream) => stream.main_data_begin(frame, word),
            None => 0,
        };
        // Only the first frame of the stream may be a Xing/Info/VBRI frame.
        let vbr = if self.index == 0 {
            vbr_header(frame, &header)
        } else {
            None
        };
        let (kind, place) = if vbr.is_some() {
            (BlockKind::Metadata, Place::None)
        } else {
            let place = Place::Time {
                start: self.next_sample,
                duration: u32::from(header.samples()),
                rate: header.sample_rate(),
            };
            self.next_sample += i64::from(header.samples());
            (BlockKind::Audio, place)
        };
        let block = Block {
            index: self.index,
            offset: pos as u64,
            bit: 0,
            data: Cow::Borrowed(frame),
            bits: None,
            kind,
            place,
            detail: Detail::Mp3(FrameInfo {
                header,
                main_data_begin,
                side_info_len: header.side_info_len() as u8,
                vbr,
            }),
        };
        self.index += 1;
        self.pos = pos + len;
        Ok(block)
    }
}

impl fmt::Debug for Mp3Reader<'_> {
    // The input is not printed: it may be a whole file.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mp3Reader")
            .field("len", &self.data.len())
            .field("pos", &self.pos)
            .field("audio_end", &self.audio_end)
            .field("stream", &self.stream_header())
            .field("blocks", &self.index)
            .field("regions", &self.regions.len())
            .field("done", &self.done)
            .finish()
    }
}

impl<'a> Mp3Reader<'a> {
    /// The hot path, taken for every frame after the first while the stream runs without a
    /// gap: the header at `pos` is `ahead`, already checked when it confirmed the last frame;
    /// if the word where its frame ends is a header of the stream too (or the audio ends
    /// there), the frame is confirmed and becomes a block. One header word read, one table
    /// lookup. `None` (no successor, a limit reached) sends the caller down the general path,
    /// which looks at `pos` again from scratch and gives the same answer it always did.
    #[inline(always)]
    pub(crate) fn next_confirmed(&mut self) -> Option<Block<'a>> {
        let (word, len) = self.ahead;
        if len == 0 {
            return None;
        }
        let stream = self.stream.as_ref()?;
        let pos = self.pos;
        let end = pos + len;
        let next = if end < self.audio_end {
            let next = word_at(self.data, end)?;
            let next_len = stream.frame_len(next);
            if next_len == 0 {
                return None;
            }
            (next, next_len)
        } else if end == self.audio_end {
            (0, 0)
        } else {
            return None;
        };
        if self.index >= self.fast_blocks {
            return None;
        }
        let frame = self.data.get(pos..end)?;
        let block = Block {
            index: self.index,
            offset: pos as u64,
            bit: 0,
            data: Cow::Borrowed(frame),
            bits: None,
            kind: BlockKind::Audio,
            place: Place::Time {
                start: self.next_sample,
                duration: u32::from(stream.samples),
                rate: stream.rate,
            },
            detail: Detail::Mp3(FrameInfo {
                header: FrameHeader(word),
                main_data_begin: stream.main_data_begin(frame, word),
                side_info_len: stream.side_info_len,
                vbr: None,
            }),
        };
        self.next_sample += i64::from(stream.samples);
        self.index += 1;
        self.pos = end;
        self.ahead = next;
        Some(block)
    }

    /// Everything but the hot path: the first frame, tags and garbage between frames, the end
    /// of the stream, errors.
    #[inline(never)]
    pub(crate) fn next_general(&mut self) -> Option<Result<Block<'a>>> {
        self.ahead = (0, 0);
        if self.done {
            return None;
        }
        if let Some(e) = self.pending.take() {
            self.done = true;
            return Some(Err(e));
        }
        let result = match self.next_frame() {
            Ok(Some((pos, word))) => self.block(pos, word),
            Ok(None) => {
                self.done = true;
                let tags = std::mem::take(&mut self.end_regions);
                self.regions.extend(tags);
                return None;
            }
            Err(e) => Err(e),
        };
        match &result {
            Err(_) => self.done = true,
            // Arm the hot path if a header of the stream lies where this frame ends.
            Ok(_) => {
                if let Some(stream) = &self.stream {
                    if self.pos < self.audio_end {
                        self.ahead = self.stream_frame_at(self.pos, stream).unwrap_or((0, 0));
                    }
                }
            }
        }
        Some(result)
    }
}

impl<'a> Iterator for Mp3Reader<'a> {
    type Item = Result<Block<'a>>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if let Some(block) = self.next_confirmed() {
            return Some(Ok(block));
        }
        self.next_general()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::Limits;

    /// MPEG-1 Layer III, 128 kbit/s, 44.1 kHz, joint stereo, no CRC: 417 bytes.
    const MPEG1_128K: u32 = 0xFFFB_9064;
    /// MPEG-2 Layer III, 32 kbit/s, 16 kHz, mono: 144 bytes.
    const MPEG2_32K: u32 = 0xFFF3_48C4;
    /// MPEG-2.5 Layer III, 16 kbit/s, 8 kHz, mono: 144 bytes.
    const MPEG25_16K: u32 = 0xFFE3_28C4;

    /// A frame of zeros behind the header `word`.
    fn frame(word: u32) -> Vec<u8> {
        let h = FrameHeader::parse(word).unwrap();
        let mut f = vec![0u8; usize::from(h.frame_bytes())];
        f[..4].copy_from_slice(&word.to_be_bytes());
        f
    }

    fn frames(word: u32, n: usize) -> Vec<u8> {
        frame(word).repeat(n)
    }

    fn read(data: &[u8]) -> (Vec<Block<'_>>, Vec<Region>, Option<Error>) {
        read_with(data, &Options::default())
    }

    fn read_with<'a>(
        data: &'a [u8],
        options: &Options,
    ) -> (Vec<Block<'a>>, Vec<Region>, Option<Error>) {
        let mut reader = Mp3Reader::new(data, options).unwrap();
        let mut blocks = Vec::new();
        let mut error = None;
        for item in reader.by_ref() {
            match item {
                Ok(b) => blocks.push(b),
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        assert!(reader.next().is_none(), "nothing after the end or an error");
        (blocks, reader.regions().to_vec(), error)
    }

    fn offsets(blocks: &[Block<'_>]) -> Vec<u64> {
        blocks.iter().map(|b| b.offset).collect()
    }

    fn region(offset: usize, len: usize, kind: RegionKind) -> Region {
        Region {
            offset: offset as u64,
            len: len as u64,
            kind,
        }
    }

    fn id3v2(major: u8, flags: u8, size: u32) -> Vec<u8> {
        let mut t = vec![b'I', b'D', b'3', major, 0, flags];
        t.extend([21, 14, 7, 0].map(|s| ((size >> s) & 0x7F) as u8));
        t.resize(10 + size as usize, 0);
        t
    }

    #[test]
    fn parses_an_mpeg1_header() {
        let h = FrameHeader::parse(MPEG1_128K).unwrap();
        assert_eq!(h.version(), Version::Mpeg1);
        assert_eq!(h.layer(), Layer::III);
        assert!(!h.crc());
        assert_eq!(h.bitrate_kbps(), 128);
        assert_eq!(h.sample_rate(), 44_100);
        assert!(!h.padding());
        assert_eq!(h.channel_mode(), ChannelMode::JointStereo);
        assert_eq!(h.mode_extension(), 2);
        assert!(!h.copyright());
        assert!(h.original());
        assert_eq!(h.emphasis(), Emphasis::None);
        // 144 · 128000 / 44100 = 417.96…, rounded down.
        assert_eq!(h.frame_bytes(), 417);
        assert_eq!(h.samples(), 1152);
        assert_eq!(h.side_info_len(), 32);
        assert_eq!(h.side_info_offset(), 4);
    }

    #[test]
    fn parses_mpeg2_and_mpeg25_headers() {
        let h = FrameHeader::parse(MPEG2_32K).unwrap();
        assert_eq!(
            (
                h.version(),
                h.bitrate_kbps(),
                h.sample_rate(),
                h.frame_bytes(),
                h.samples()
            ),
            (Version::Mpeg2, 32, 16_000, 144, 576)
        );
        assert_eq!(h.channel_mode(), ChannelMode::Mono);
        assert_eq!(h.side_info_len(), 9);
        let h = FrameHeader::parse(MPEG25_16K).unwrap();
        assert_eq!(
            (
                h.version(),
                h.bitrate_kbps(),
                h.sample_rate(),
                h.frame_bytes(),
                h.samples()
            ),
            (Version::Mpeg25, 16, 8_000, 144, 576)
        );
        // MPEG-2, 22.05 kHz, 48 kbit/s, stereo: 17 bytes of side information.
        let h = FrameHeader::parse(0xFFF3_6000).unwrap();
        assert_eq!(
            (h.sample_rate(), h.bitrate_kbps(), h.frame_bytes()),
            (22_050, 48, 156)
        );
        assert_eq!(h.side_info_len(), 17);
    }

    #[test]
    fn bitrate_and_sample_rate_tables() {
        // Layer III bitrates per index (ISO 11172-3 2.4.2.3, ISO 13818-3 2.4.2.3).
        let mpeg1 = [
            32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320,
        ];
        let lsf = [8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160];
        let versions = [
            (0b11u32, &mpeg1, [44_100u32, 48_000, 32_000], 144u32),
            (0b10, &lsf, [22_050, 24_000, 16_000], 72),
            (0b00, &lsf, [11_025, 12_000, 8_000], 72),
        ];
        for (v, kbps, rates, k) in versions {
            for (i, &rate) in rates.iter().enumerate() {
                for (b, &br) in kbps.iter().enumerate() {
                    for pad in 0..2u32 {
                        let word = 0xFFE0_0000
                            | v << 19
                            | 1 << 17
                            | 1 << 16
                            | (b as u32 + 1) << 12
                            | (i as u32) << 10
                            | pad << 9;
                        let h = FrameHeader::parse(word).unwrap();
                        assert_eq!(u32::from(h.bitrate_kbps()), br);
                        assert_eq!(h.sample_rate(), rate);
                        assert_eq!(h.padding(), pad == 1);
                        assert_eq!(u32::from(h.frame_bytes()), k * br * 1000 / rate + pad);
                    }
                }
            }
        }
        // Extremes: the longest and the shortest Layer III frames.
        assert_eq!(FrameHeader::parse(0xFFFB_EA00).unwrap().frame_bytes(), 1441);
        assert_eq!(FrameHeader::parse(0xFFF3_1400).unwrap().frame_bytes(), 24);
    }

    #[test]
    fn the_stream_tables_follow_the_header_rules() {
        // For every shape of stream (version, sampling frequency, mono or not), every header
        // word with the sync bits set (bits 5..2 fixed: mode extension, copyright and original
        // change nothing) gets from the hot path's tables exactly what FrameHeader::parse and
        // agrees give: the Layer III frame length, or 0.
        let mut keys = 0;
        for version in [0b11u32, 0b10, 0b00] {
            for rate in 0..3u32 {
                for mode in [0b01u32, 0b11] {
                    let key = 0xFFE0_0000
                        | version << 19
                        | 1 << 17
                        | 1 << 16
                        | 9 << 12
                        | rate << 10
                        | mode << 6;
                    let stream = Stream::new(key);
                    keys += 1;
                    for bits in 0..1u32 << 17 {
                        let word = 0xFFE0_0000 | (bits >> 2) << 6 | 0b1010 << 2 | (bits & 3);
                        let expected = match FrameHeader::parse(word) {
                            Ok(h) if h.layer() == Layer::III && agrees(word, key) => {
                                usize::from(h.frame_bytes())
                            }
                            _ => 0,
                        };
                        assert_eq!(stream.frame_len(word), expected, "{key:#x} {word:#x}");
                    }
                    // A word without the sync is never a header of the stream.
                    assert_eq!(stream.frame_len(key & !(1 << 25)), 0);
                    assert_eq!(
                        stream.frame_len(key),
                        usize::from(FrameHeader(key).frame_bytes())
                    );
                }
            }
        }
        assert_eq!(keys, 18);
    }

    #[test]
    fn padding_adds_one_byte() {
        let plain = FrameHeader::parse(MPEG1_128K).unwrap();
        let padded = FrameHeader::parse(MPEG1_128K | 1 << 9).unwrap();
        assert!(padded.padding());
        assert_eq!(padded.frame_bytes(), plain.frame_bytes() + 1);
    }

    #[test]
    fn invalid_headers_are_refused() {
        assert_eq!(FrameHeader::parse(0x7FFB_9064), Err(HeaderError::NoSync));
        assert_eq!(
            FrameHeader::parse(0xFFEB_9064),
            Err(HeaderError::ReservedVersion)
        );
        assert_eq!(
            FrameHeader::parse(0xFFF9_9064),
            Err(HeaderError::ReservedLayer)
        );
        assert_eq!(
            FrameHeader::parse(0xFFFB_F064),
            Err(HeaderError::ForbiddenBitrate)
        );
        assert_eq!(
            FrameHeader::parse(0xFFFB_9C64),
            Err(HeaderError::ReservedSampleRate)
        );
        assert_eq!(
            FrameHeader::parse(0xFFFB_9066),
            Err(HeaderError::ReservedEmphasis)
        );
        assert_eq!(
            FrameHeader::parse(0xFFFB_0064),
            Err(HeaderError::FreeFormat)
        );
        // Layers I and II parse (so that the reader can name them).
        let h = FrameHeader::parse(0xFFFD_9064).unwrap();
        // 144 · 160000 / 44100 = 522.4…
        assert_eq!(
            (h.layer(), h.bitrate_kbps(), h.frame_bytes()),
            (Layer::II, 160, 522)
        );
        let h = FrameHeader::parse(0xFFFF_9064).unwrap();
        // 4 · floor(12 · 288000 / 44100) = 4 · 78.
        assert_eq!(
            (h.layer(), h.bitrate_kbps(), h.frame_bytes()),
            (Layer::I, 288, 312)
        );
    }

    #[test]
    fn crc_shifts_the_side_information() {
        // MPEG-1 with CRC: main_data_begin is the first 9 bits after the 2 CRC bytes.
        let word = MPEG1_128K & !(1 << 16);
        let mut f = frame(word);
        f[4..8].copy_from_slice(&[0xAB, 0xCD, 0b1000_0000, 0b1000_0000]);
        let data = f.repeat(3);
        let (blocks, _, err) = read(&data);
        assert!(err.is_none());
        // The first frame comes from the general path, the others from the hot path.
        assert_eq!(blocks.len(), 3);
        for block in &blocks {
            let Detail::Mp3(info) = block.detail else {
                unreachable!()
            };
            assert!(info.header.crc());
            assert_eq!(info.header.side_info_offset(), 6);
            assert_eq!(info.main_data_begin, 257);
            assert_eq!(info.side_info_len, 32);
        }
    }

    #[test]
    fn main_data_begin_is_9_bits_in_mpeg1_and_8_in_lsf() {
        let mut f = frame(MPEG1_128K);
        f[4..6].copy_from_slice(&[0xFF, 0xFF]);
        let data = f.repeat(2);
        let (blocks, _, _) = read(&data);
        let Detail::Mp3(info) = blocks[1].detail else {
            unreachable!()
        };
        assert_eq!(info.main_data_begin, 511);

        let mut f = frame(MPEG2_32K);
        f[4..6].copy_from_slice(&[0xFF, 0xFF]);
        let data = f.repeat(2);
        let (blocks, _, _) = read(&data);
        let Detail::Mp3(info) = blocks[1].detail else {
            unreachable!()
        };
        assert_eq!(info.main_data_begin, 255);
    }

    #[test]
    fn frames_carry_time_in_samples() {
        let data = frames(MPEG1_128K, 3);
        let (blocks, regions, err) = read(&data);
        assert!(err.is_none() && regions.is_empty());
        assert_eq!(offsets(&blocks), [0, 417, 834]);
        for (i, b) in blocks.iter().enumerate() {
            assert_eq!(b.index, i as u64);
            assert_eq!(b.bit, 0);
            assert_eq!(b.bits, None);
            assert_eq!(b.kind, BlockKind::Audio);
            assert!(matches!(b.data, Cow::Borrowed(_)));
            assert_eq!(
                b.place,
                Place::Time {
                    start: 1152 * i as i64,
                    duration: 1152,
                    rate: 44_100
                }
            );
        }
    }

    #[test]
    fn id3v2_tags_with_footer_and_in_a_row() {
        let mut data = id3v2(4, 0x10, 30);
        data.extend(b"3DI\x04\x00\x10\x00\x00\x00\x1e");
        let first = data.len();
        assert_eq!(first, 50);
        data.extend(id3v2(3, 0, 5));
        data.extend(frames(MPEG2_32K, 2));
        let (blocks, regions, err) = read(&data);
        assert!(err.is_none());
        assert_eq!(offsets(&blocks), [65, 209]);
        assert_eq!(
            regions,
            [
                region(0, 50, RegionKind::Id3v2),
                region(50, 15, RegionKind::Id3v2)
            ]
        );
    }

    #[test]
    fn an_id3v2_tag_larger_than_the_file_is_truncated() {
        // Syncsafe 0x7F7F7F7F: 256 MiB.
        let mut data = b"ID3\x04\x00\x00\x7f\x7f\x7f\x7f".to_vec();
        data.extend(frames(MPEG2_32K, 2));
        let (blocks, _, err) = read(&data);
        assert!(blocks.is_empty());
        match err {
            Some(Error::Truncated {
                offset: 0, needed, ..
            }) => assert_eq!(needed, 10 + (1 << 28) - 1),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tags_at_the_end() {
        let mut data = frames(MPEG2_32K, 3);
        // APEv2 tag with header: 32-byte header, 8 bytes of items, 32-byte footer.
        let ape_at = data.len();
        let mut ape = Vec::new();
        for flags in [APE_HAS_HEADER | APE_IS_HEADER, APE_HAS_HEADER] {
            let mut h = b"APETAGEX".to_vec();
            for v in [2000u32, 40, 1, flags, 0, 0] {
                h.extend(v.to_le_bytes());
            }
            ape.push(h);
        }
        data.extend(&ape[0]);
        data.extend([0u8; 8]);
        data.extend(&ape[1]);
        let id3v1_at = data.len();
        let mut v1 = b"TAG".to_vec();
        v1.resize(128, b' ');
        data.extend(v1);
        let (blocks, regions, err) = read(&data);
        assert!(err.is_none());
        assert_eq!(blocks.len(), 3);
        assert_eq!(
            regions,
            [
                region(ape_at, 72, RegionKind::Ape),
                region(id3v1_at, 128, RegionKind::Id3v1)
            ]
        );
    }

    #[test]
    fn an_ape_tag_at_the_start() {
        let mut data = b"APETAGEX".to_vec();
        for v in [2000u32, 32, 0, APE_HAS_HEADER | APE_IS_HEADER, 0, 0] {
            data.extend(v.to_le_bytes());
        }
        let mut footer = data.clone();
        footer[20..24].copy_from_slice(&APE_HAS_HEADER.to_le_bytes());
        data.extend(footer);
        data.extend(frames(MPEG2_32K, 2));
        let (blocks, regions, _) = read(&data);
        assert_eq!(offsets(&blocks), [64, 208]);
        assert_eq!(regions, [region(0, 64, RegionKind::Ape)]);
    }

    #[test]
    fn resynchronises_over_garbage_and_reports_it() {
        let mut data = frames(MPEG2_32K, 2);
        data.extend([0x12; 30]);
        data.extend(frames(MPEG2_32K, 2));
        data.extend([0x34; 5]);
        let (blocks, regions, err) = read(&data);
        assert!(err.is_none());
        assert_eq!(offsets(&blocks), [0, 144, 318, 462]);
        assert_eq!(
            regions,
            [
                region(288, 30, RegionKind::Garbage),
                region(606, 5, RegionKind::Trailing)
            ]
        );
        // The time line has no hole.
        assert_eq!(
            blocks[2].place,
            Place::Time {
                start: 2 * 576,
                duration: 576,
                rate: 16_000
            }
        );
    }

    #[test]
    fn garbage_before_the_first_frame() {
        let mut data = vec![0xFF, 0xFF, 0x00, 0xFF, 0xF3, 0x48];
        data.extend(frames(MPEG2_32K, 2));
        let (blocks, regions, err) = read(&data);
        assert!(err.is_none());
        assert_eq!(offsets(&blocks), [6, 150]);
        let mut reader = Mp3Reader::new(&data, &Options::default()).unwrap();
        assert_eq!(reader.stream_header(), None);
        reader.next();
        assert_eq!(
            reader.stream_header().map(FrameHeader::word),
            Some(MPEG2_32K)
        );
        assert!(format!("{reader:?}").contains("pos: 150"));
        assert_eq!(regions, [region(0, 6, RegionKind::Garbage)]);
    }

    #[test]
    fn false_syncs_in_garbage_are_rejected() {
        let mut garbage = vec![0x11; 200];
        // A header of another version and one of the stream's own shape, neither followed by
        // a header where its frame would end.
        garbage[10..14].copy_from_slice(&MPEG1_128K.to_be_bytes());
        garbage[20..24].copy_from_slice(&MPEG2_32K.to_be_bytes());
        let mut data = frames(MPEG2_32K, 2);
        data.extend(&garbage);
        data.extend(frames(MPEG2_32K, 2));
        let (blocks, regions, err) = read(&data);
        assert!(err.is_none());
        assert_eq!(offsets(&blocks), [0, 144, 488, 632]);
        assert_eq!(regions, [region(288, 200, RegionKind::Garbage)]);
    }

    #[test]
    fn a_stream_of_another_shape_does_not_lock_once_locked() {
        // MPEG-2 frames, then a run of MPEG-1 frames that confirm each other, then MPEG-2.
        let mut data = frames(MPEG2_32K, 2);
        data.extend(frames(MPEG1_128K, 3));
        data.extend(frames(MPEG2_32K, 2));
        let (blocks, regions, _) = read(&data);
        assert_eq!(offsets(&blocks), [0, 144, 1539, 1683]);
        assert_eq!(regions, [region(288, 1251, RegionKind::Garbage)]);
    }

    #[test]
    fn a_frame_cut_short_becomes_garbage() {
        let f = frame(MPEG2_32K);
        let mut data = f.repeat(2);
        data.extend(&f[..50]);
        data.extend(f.repeat(2));
        let (blocks, regions, err) = read(&data);
        assert!(err.is_none());
        assert_eq!(offsets(&blocks), [0, 144, 338, 482]);
        assert_eq!(regions, [region(288, 50, RegionKind::Garbage)]);
    }

    #[test]
    fn a_truncated_last_frame_is_an_error_after_the_whole_ones() {
        let mut data = frames(MPEG2_32K, 3);
        data.truncate(3 * 144 - 10);
        let (blocks, _, err) = read(&data);
        assert_eq!(blocks.len(), 2);
        match err {
            Some(Error::Truncated {
                offset: 288,
                needed: 144,
                available: 134,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_prefix_reads_without_panic() {
        let mut data = id3v2(3, 0, 20);
        data.extend(frames(MPEG1_128K, 3));
        data.extend(b"TAG");
        for n in 0..data.len() {
            let (blocks, regions, err) = read(&data[..n]);
            let covered: u64 = blocks.iter().map(|b| b.len() as u64).sum::<u64>()
                + regions.iter().map(|r| r.len).sum::<u64>();
            assert!(covered <= n as u64);
            if err.is_none() {
                assert_eq!(covered, n as u64, "prefix {n}");
            }
        }
    }

    #[test]
    fn layer_ii_and_free_format_are_unsupported() {
        let layer2 = 0xFFFD_9064;
        let (_, _, err) = read(&frames(layer2, 3));
        match err {
            Some(Error::Unsupported {
                what, offset: 0, ..
            }) => {
                assert_eq!(what, "MPEG-1 Layer II");
            }
            other => panic!("{other:?}"),
        }
        // Three free-format headers 500 bytes apart, the last one padded: a stream.
        let mut data = vec![0u8; 1600];
        for at in [0, 500, 1001] {
            data[at..at + 4].copy_from_slice(&0xFFFB_0064u32.to_be_bytes());
        }
        let (_, _, err) = read(&data);
        match err {
            Some(Error::Unsupported {
                what, offset: 0, ..
            }) => {
                assert!(what.contains("free-format"), "{what}");
            }
            other => panic!("{other:?}"),
        }
        // Two are not: the lone pair is garbage.
        data[1001] = 0;
        let (_, _, err) = read(&data);
        assert!(matches!(err, Some(Error::Malformed { .. })), "{err:?}");
    }

    #[test]
    fn files_without_frames_are_malformed() {
        for data in [&[][..], &[0xFF; 500][..], &[0x00, 0x01, 0x02][..]] {
            let (blocks, _, err) = read(data);
            assert!(blocks.is_empty());
            assert!(matches!(err, Some(Error::Malformed { .. })), "{err:?}");
        }
        // A lone header that announces a frame longer than the file.
        let (_, _, err) = read(&MPEG1_128K.to_be_bytes());
        assert!(matches!(err, Some(Error::Malformed { .. })), "{err:?}");
    }

    #[test]
    fn a_xing_frame_is_metadata() {
        let mut xing = frame(MPEG1_128K);
        // After 32 bytes of side information: "Xing", flags (frames, bytes), then the fields.
        xing[36..40].copy_from_slice(b"Xing");
        xing[40..44].copy_from_slice(&3u32.to_be_bytes());
        xing[44..48].copy_from_slice(&2u32.to_be_bytes());
        xing[48..52].copy_from_slice(&(3 * 417u32).to_be_bytes());
        xing[52..56].copy_from_slice(b"LAME");
        // Delay 576 = 0x240, padding 1000 = 0x3E8 at byte 21 of the LAME tag.
        xing[73..76].copy_from_slice(&[0x24, 0x03, 0xE8]);
        let mut data = xing;
        data.extend(frames(MPEG1_128K, 2));
        let (blocks, _, err) = read(&data);
        assert!(err.is_none());
        assert_eq!(blocks[0].kind, BlockKind::Metadata);
        assert_eq!(blocks[0].place, Place::None);
        let Detail::Mp3(info) = blocks[0].detail else {
            unreachable!()
        };
        assert_eq!(
            info.vbr,
            Some(VbrHeader {
                kind: VbrKind::Xing,
                frames: Some(2),
                bytes: Some(1251),
                encoder_delay: Some(576),
                encoder_padding: Some(1000),
            })
        );
        assert_eq!(blocks[1].kind, BlockKind::Audio);
        assert_eq!(
            blocks[1].place,
            Place::Time {
                start: 0,
                duration: 1152,
                rate: 44_100
            }
        );
        // Only the first frame may be one.
        let mut data = frames(MPEG1_128K, 1);
        data.extend(&blocks[0].data[..]);
        let (blocks, _, _) = read(&data);
        assert!(blocks.iter().all(|b| b.kind == BlockKind::Audio));
    }

    #[test]
    fn a_vbri_frame_is_metadata() {
        let mut vbri = frame(MPEG2_32K);
        vbri[36..40].copy_from_slice(b"VBRI");
        vbri[40..42].copy_from_slice(&1u16.to_be_bytes());
        vbri[42..44].copy_from_slice(&1105u16.to_be_bytes());
        vbri[46..50].copy_from_slice(&432u32.to_be_bytes());
        vbri[50..54].copy_from_slice(&2u32.to_be_bytes());
        let mut data = vbri;
        data.extend(frames(MPEG2_32K, 2));
        let (blocks, _, _) = read(&data);
        let Detail::Mp3(info) = blocks[0].detail else {
            unreachable!()
        };
        assert_eq!(blocks[0].kind, BlockKind::Metadata);
        let vbr = info.vbr.unwrap();
        assert_eq!(
            (vbr.kind, vbr.frames, vbr.bytes, vbr.encoder_delay),
            (VbrKind::Vbri, Some(2), Some(432), Some(1105))
        );
    }

    #[test]
    fn limits_stop_the_reader() {
        let data = frames(MPEG2_32K, 5);
        let options = Options::default().with_limits(Limits::default().with_max_blocks(3));
        let (blocks, _, err) = read_with(&data, &options);
        assert_eq!(blocks.len(), 3);
        assert!(
            matches!(
                err,
                Some(Error::Limit {
                    what: "max_blocks",
                    limit: 3,
                    found: 4,
                    ..
                })
            ),
            "{err:?}"
        );
        // A limit that every frame meets, though the stream's largest frame (160 kbit/s, 721
        // bytes) would not: all frames are read.
        let options = Options::default().with_limits(Limits::default().with_max_block_bytes(144));
        let (blocks, _, err) = read_with(&data, &options);
        assert!(err.is_none() && blocks.len() == 5, "{err:?}");
        // A larger frame in the middle is refused there.
        let mut mixed = frames(MPEG2_32K, 2);
        mixed.extend(frames(MPEG2_32K | 0x1000, 1));
        mixed.extend(frames(MPEG2_32K, 2));
        let (blocks, _, err) = read_with(&mixed, &options);
        assert_eq!(blocks.len(), 2);
        assert!(
            matches!(
                err,
                Some(Error::Limit {
                    what: "max_block_bytes",
                    offset: 288,
                    found: 180,
                    ..
                })
            ),
            "{err:?}"
        );
        let options = Options::default().with_limits(Limits::default().with_max_block_bytes(100));
        let (blocks, _, err) = read_with(&data, &options);
        assert!(blocks.is_empty());
        assert!(
            matches!(
                err,
                Some(Error::Limit {
                    what: "max_block_bytes",
                    found: 144,
                    ..
                })
            ),
            "{err:?}"
        );
        // Regions count too: five empty ID3v2 tags in a row.
        let mut tags = id3v2(3, 0, 0).repeat(5);
        tags.extend(&data);
        let options = Options::default().with_limits(Limits::default().with_max_blocks(3));
        let (blocks, regions, err) = read_with(&tags, &options);
        assert!(blocks.is_empty());
        assert_eq!(regions.len(), 3);
        assert!(
            matches!(
                err,
                Some(Error::Limit {
                    what: "max_blocks",
                    offset: 30,
                    ..
                })
            ),
            "{err:?}"
        );
        let options = Options::default().with_limits(Limits::default().with_max_file_bytes(100));
        assert!(Mp3Reader::new(&data, &options).is_err());
    }
}
