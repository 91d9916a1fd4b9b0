//! Opus packets in Ogg (RFC 7845).
//!
//! A block is one Ogg packet of the Opus logical stream: the identification header
//! (`OpusHead`) and the comment header (`OpusTags`) as [`BlockKind::Metadata`] blocks, then every
//! audio packet as a [`BlockKind::Audio`] block (RFC 7845 §3). Packets that lie inside one page
//! borrow their bytes from the input; packets that span pages are assembled into an owned buffer,
//! after checking [`Limits::max_block_bytes`](crate::Limits::max_block_bytes).
//!
//! Timestamps follow RFC 7845 §4: the granule position of a page is the number of 48 kHz
//! samples decoded (pre-skip included) after the last packet completed on that page, so the
//! first packet completed on a page starts at the granule position minus the durations of all
//! packets completed on the page; each packet's duration comes from its TOC byte (RFC 6716
//! §3.1). A block's [`Place::Time`](crate::Place::Time) start is that position minus the
//! pre-skip: it is the index of the block's first sample in the decoded output, negative inside
//! the pre-skip. On the last page (EOS), a granule position smaller than the samples of its
//! packets trims the end (RFC 7845 §4.4): the blocks' durations are cut so that no block plays
//! past it.
//!
//! To scan whole files, [`OpusReader::for_each_block`] gives the same blocks as compact
//! [`BlockRecord`]s (index, offset, bytes, kind, time, duration, TOC) through one loop per page,
//! faster than the iterator (`docs/benchmarks.md` has the numbers).
//!
//! See `docs/formats.md` for every rule with its clause.
//!
//! Where each rule lives: the TOC byte and the frame-count rule (RFC 6716 §3.1–3.2,
//! [`Toc::frame_count`]) in `toc.rs`; a packet's frame layout and its requirements (§3.4) in
//! `packet.rs`; `OpusHead` and `OpusTags` in `headers.rs`; the page walk, links and packet
//! assembly in `reader.rs`; timestamps and end trimming (RFC 7845 §4) in `timestamps.rs`; the hot
//! path and [`OpusReader::for_each_block`] in `scan.rs`.

mod headers;
mod packet;
mod reader;
mod scan;
mod state;
mod timestamps;
mod toc;

pub use headers::{OpusHead, OpusTags};
pub use packet::{parse_packet, Frames};
pub use reader::OpusReader;
pub use scan::BlockRecord;
pub use toc::{Bandwidth, Mode, Toc};

use crate::{Error, Format};

/// The rate of every Opus timestamp and duration, whatever the input's rate (RFC 7845 §4).
pub const SAMPLE_RATE: u32 = 48_000;

/// The most audio one Opus packet may hold: 120 ms at 48 kHz (RFC 6716 §3.4 R5).
pub const MAX_PACKET_SAMPLES: u32 = 5760;

/// The largest frame (RFC 6716 §3.2.1, §3.4 R2).
pub const MAX_FRAME_BYTES: usize = 1275;

/// Which header, or audio, a packet is (RFC 7845 §3: packet 0 is `OpusHead`, packet 1
/// `OpusTags`, the rest audio).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketKind {
    /// The identification header.
    Head,
    /// The comment header.
    Tags,
    /// An audio packet.
    Audio,
}

/// Facts about one packet of an Ogg Opus stream: the [`Detail::Opus`](crate::Detail::Opus)
/// payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PacketInfo {
    /// Header or audio.
    pub packet: PacketKind,
    /// The TOC byte decoded (audio packets only).
    pub toc: Option<Toc>,
    /// Number of frames and padding (audio packets only): the count byte for code 3.
    pub frames: Option<Frames>,
    /// Samples at 48 kHz the packet decodes to, before end trimming (0 for headers).
    pub duration: u32,
    /// Samples cut from the end of this packet by end trimming (RFC 7845 §4.4); the block's
    /// [`Place::Time`](crate::Place::Time) duration is `duration - trimmed`.
    pub trimmed: u32,
    /// Serial number of the logical stream.
    pub serial: u32,
    /// Which link of a chained file (RFC 3533 §4) the packet belongs to, from 0.
    pub link: u32,
    /// Sequence number of the page on which the packet ends.
    pub page_sequence: u32,
    /// Granule position of the page on which the packet ends.
    pub granule_position: i64,
    /// Whether the packet started on an earlier page (its bytes were assembled).
    pub spans_pages: bool,
    /// Whether data of this stream was lost just before this packet: a jump in page sequence
    /// numbers (RFC 3533 §6), a page dropped for a bad CRC, or a packet whose other part is
    /// missing. The bytes of such an incomplete packet are not part of any block.
    pub after_gap: bool,
}

fn malformed(offset: u64, expected: &'static str, found: String) -> Error {
    Error::Malformed {
        format: Format::OggOpus,
        offset,
        expected,
        found,
    }
}

#[cfg(test)]
mod tests;
