//! The fast path's tables: what every frame of a stream shares, fixed by its first header, so
//! that each later frame costs one header read and two lookups.

use super::header::{FrameHeader, Version, L3_FRAME_BYTES};
use super::word_at;

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
pub(super) struct Stream {
    /// The first header of the stream.
    pub(super) key: u32,
    /// Frame bytes by [`Stream::length_index`]: bitrate index and padding bit.
    pub(super) frame_bytes: [u16; 32],
    /// `0xFFFF` by [`Stream::mode_index`] where mode and emphasis are acceptable, else 0.
    pub(super) mode_ok: [u16; 16],
    /// Samples per frame (576 or 1152) and the sampling frequency.
    pub(super) samples: u16,
    pub(super) rate: u32,
    /// Side information bytes (fixed by version and channel count).
    pub(super) side_info_len: u8,
    /// How far to shift the 16 bits that open the side information to get `main_data_begin`:
    /// 7 for its 9 bits in MPEG-1, 8 for its 8 bits in MPEG-2/2.5.
    pub(super) main_data_begin_shift: u8,
}

impl Stream {
    /// The stream whose first header is `key`, a valid Layer III header.
    pub(super) fn new(key: u32) -> Stream {
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
    pub(super) fn frame_len(&self, word: u32) -> usize {
        if (word ^ self.key) & STREAM_MASK != 0 {
            return 0;
        }
        let bytes = self.frame_bytes[Self::length_index(word) & 31];
        usize::from(bytes & self.mode_ok[Self::mode_index(word) & 15])
    }

    /// The largest frame of the stream.
    pub(super) fn max_frame_bytes(&self) -> u16 {
        self.frame_bytes.iter().copied().max().unwrap_or(0)
    }

    /// `main_data_begin`, which opens the side information after the header and the optional
    /// CRC (ISO 11172-3 2.4.1.7: 9 bits; ISO 13818-3 2.4.1.7: 8 bits), of the frame `frame`
    /// whose header is `word`. Every Layer III frame is longer than header, CRC and side
    /// information (the shortest, 8 kbit/s at 24 kHz, has 24 bytes), so the bytes exist; a
    /// shorter slice reads as zeros.
    #[inline(always)]
    pub(super) fn main_data_begin(&self, frame: &[u8], word: u32) -> u16 {
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
pub(super) fn agrees(word: u32, key: u32) -> bool {
    word & STREAM_MASK == key & STREAM_MASK && (word & 0xC0 == 0xC0) == (key & 0xC0 == 0xC0)
}
