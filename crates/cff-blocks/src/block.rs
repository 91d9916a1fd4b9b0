//! The block: the one type every reader produces and every tokenizer consumes.

use std::borrow::Cow;
use std::fmt;

/// A compressed format this crate reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Format {
    /// MPEG-1/2/2.5 Layer III.
    Mp3,
    /// Opus in Ogg (RFC 7845).
    OggOpus,
    /// Baseline or extended sequential Huffman JPEG (ITU T.81).
    Jpeg,
}

impl Format {
    /// A short, stable name: `mp3`, `ogg-opus`, `jpeg`.
    pub fn name(self) -> &'static str {
        match self {
            Format::Mp3 => "mp3",
            Format::OggOpus => "ogg-opus",
            Format::Jpeg => "jpeg",
        }
    }

    /// A small stable integer per format, for models that mix formats (a format embedding).
    pub fn id(self) -> u8 {
        match self {
            Format::Mp3 => 0,
            Format::OggOpus => 1,
            Format::Jpeg => 2,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Mp3 => "MP3",
            Format::OggOpus => "Ogg Opus",
            Format::Jpeg => "JPEG",
        })
    }
}

/// What a block holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BlockKind {
    /// Coded audio: an MP3 frame or an Opus packet.
    Audio,
    /// A block of the stream that carries no media: a Xing/Info/VBRI frame, OpusHead, OpusTags.
    Metadata,
    /// One minimum coded unit of a JPEG scan.
    Mcu,
}

impl BlockKind {
    /// `audio`, `metadata` or `mcu`.
    pub fn name(self) -> &'static str {
        match self {
            BlockKind::Audio => "audio",
            BlockKind::Metadata => "metadata",
            BlockKind::Mcu => "mcu",
        }
    }
}

/// When or where a block plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Place {
    /// Audio: a span of samples. Kept in samples so that nothing is rounded.
    Time {
        /// First sample the block produces, counted from the start of the decoded output
        /// (negative inside an Opus pre-skip).
        start: i64,
        /// Samples the block produces.
        duration: u32,
        /// Samples per second of `start` and `duration` (48,000 for Opus).
        rate: u32,
    },
    /// An image MCU: its row and column in the MCU grid (T.81 A.2).
    Grid {
        /// MCU row, from the top.
        row: u32,
        /// MCU column, from the left.
        col: u32,
    },
    /// Nowhere in particular (metadata).
    None,
}

impl Place {
    /// Start time in seconds, for audio.
    pub fn time_seconds(&self) -> Option<f64> {
        match *self {
            Place::Time { start, rate, .. } if rate > 0 => Some(start as f64 / rate as f64),
            _ => None,
        }
    }

    /// Duration in seconds, for audio.
    pub fn duration_seconds(&self) -> Option<f64> {
        match *self {
            Place::Time { duration, rate, .. } if rate > 0 => Some(duration as f64 / rate as f64),
            _ => None,
        }
    }

    /// MCU row and column, for images.
    pub fn grid(&self) -> Option<(u32, u32)> {
        match *self {
            Place::Grid { row, col } => Some((row, col)),
            _ => None,
        }
    }
}

/// Format-specific facts about a block.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Detail {
    /// An MP3 frame.
    Mp3(crate::mp3::FrameInfo),
    /// An Ogg Opus packet.
    Opus(crate::opus::PacketInfo),
    /// A JPEG MCU.
    Jpeg(crate::jpeg::McuInfo),
}

/// One block of a compressed file.
///
/// `data` borrows from the input where the block's bytes lie contiguous in it (MP3 frames, Opus
/// packets inside one Ogg page); it is owned where the reader had to assemble it (an Opus
/// packet spanning pages, a JPEG MCU re-packed from its bit position with stuffing removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block<'a> {
    /// Position of the block in its file's sequence of blocks, from 0.
    pub index: u64,
    /// Byte offset in the file of the block's first byte (JPEG: of the byte holding its first
    /// bit).
    pub offset: u64,
    /// Bit within the byte at `offset` where the block starts, 0 = most significant. Always 0
    /// for MP3 and Opus.
    pub bit: u8,
    /// The block's bytes as a tokenizer sees them.
    pub data: Cow<'a, [u8]>,
    /// JPEG: the MCU's entropy-coded bits, stuffing not counted. `None` for audio.
    pub bits: Option<u64>,
    /// What the block holds.
    pub kind: BlockKind,
    /// When or where it plays.
    pub place: Place,
    /// Format-specific facts.
    pub detail: Detail,
}

impl Block<'_> {
    /// The format the block came from.
    pub fn format(&self) -> crate::Format {
        match self.detail {
            Detail::Mp3(_) => Format::Mp3,
            Detail::Opus(_) => Format::OggOpus,
            Detail::Jpeg(_) => Format::Jpeg,
        }
    }

    /// Bytes of the block as the tokenizer sees them.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the block has no bytes.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// A copy that owns its bytes, free of the input's lifetime.
    pub fn into_owned(self) -> Block<'static> {
        Block {
            data: Cow::Owned(self.data.into_owned()),
            ..self
        }
    }
}

/// Why a range of the input is not part of any block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RegionKind {
    /// Bytes that are not a valid block, skipped to resynchronise.
    Garbage,
    /// An ID3v2 tag (MP3).
    Id3v2,
    /// An ID3v1 tag (MP3).
    Id3v1,
    /// An APE tag (MP3).
    Ape,
    /// Ogg pages of a logical stream other than the one read.
    OtherStream,
    /// Bytes after the end of the stream (after the last frame, the last page, or EOI).
    Trailing,
}

impl RegionKind {
    /// Whether the region holds data the reader could not make sense of (as opposed to known
    /// non-block structures such as tags).
    pub fn is_garbage(self) -> bool {
        matches!(self, RegionKind::Garbage | RegionKind::Trailing)
    }
}

/// A range of the input that is not part of any block, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// Byte offset of the range.
    pub offset: u64,
    /// Its length in bytes.
    pub len: u64,
    /// What it is.
    pub kind: RegionKind,
}
