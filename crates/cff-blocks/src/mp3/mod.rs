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
//!
//! # Where each rule lives
//!
//! The frame header in `header.rs`; the per-stream tables of the hot path in `stream.rs`; ID3v2
//! and APE tags in `tags.rs`; Xing/Info/VBRI headers in `vbr.rs`; the reader in `reader.rs`;
//! side information, main data and its Huffman decoding in `side_info.rs` and `huffman.rs`.

mod header;
mod huffman;
mod huffman_tables;
mod reader;
mod side_info;
mod stream;
mod tags;
mod vbr;

pub use header::{ChannelMode, Emphasis, FrameHeader, HeaderError, Layer, Version};
pub use huffman::{
    decode_granules, long_band_edges, short_band_edges, FrameLines, GranuleLines, LINES,
    MAX_SCALEFACTORS,
};
pub use reader::Mp3Reader;
pub use side_info::{Granule, MainData, SideInfo};
pub use vbr::{VbrHeader, VbrKind};

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

#[cfg(test)]
mod tests;
