//! Ogg pages (RFC 3533) and their CRC-32.
//!
//! An Ogg physical bitstream is a sequence of pages. Each page starts with a 27-byte header
//! (RFC 3533 §6): the capture pattern `OggS`, a version (0), a header-type byte (continued /
//! beginning of stream / end of stream), a 64-bit granule position, the logical stream's serial
//! number, a page sequence number, a CRC-32 and the number of segments; then the segment table
//! (one lacing value per segment) and the body, whose length is the sum of the lacing values.
//! A lacing value below 255 ends a packet; a page whose last lacing value is 255 leaves its last
//! packet unfinished, to be continued on the next page of the same logical stream.
//!
//! [`PageWalker`] walks a file held in memory page by page without allocating. It verifies each
//! page's CRC when asked to, and resynchronises over bytes that are not a valid page (RFC 3533
//! §6: a reader looks for the next capture pattern whose checksum verifies), reporting them as
//! [`RegionKind::Garbage`](crate::RegionKind::Garbage) (or [`RegionKind::Trailing`](crate::RegionKind::Trailing) when no valid page follows).
//!
//! The parts: the page and its packet pieces in `page.rs`, the walker in `walker.rs`, the CRC-32
//! in `crc.rs` (with its carry-less-multiply kernels in `clmul.rs`).

/// The Ogg CRC-32 by carry-less multiplication (feature `simd-crc`, x86-64).
#[cfg(all(feature = "simd-crc", target_arch = "x86_64"))]
mod clmul;
mod crc;
mod page;
mod walker;

pub use crc::{crc32, crc32_update, CRC_POLYNOMIAL};
pub use page::{Page, Piece, Pieces};
pub use walker::{Chunk, PageWalker};

/// The capture pattern that starts every page (RFC 3533 §6).
pub const CAPTURE_PATTERN: [u8; 4] = *b"OggS";

/// Bytes of a page header before the segment table (RFC 3533 §6).
pub const HEADER_LEN: usize = 27;

/// The largest page: a full header, 255 lacing values of 255 bytes each.
pub const MAX_PAGE_LEN: usize = HEADER_LEN + 255 + 255 * 255;

/// Header-type flag: the page's first packet continues one from the previous page.
pub const FLAG_CONTINUED: u8 = 0x01;
/// Header-type flag: first page of a logical stream (BOS).
pub const FLAG_BOS: u8 = 0x02;
/// Header-type flag: last page of a logical stream (EOS).
pub const FLAG_EOS: u8 = 0x04;

/// The first bytes of `data` in hex, for error messages.
pub(crate) fn hex_prefix(data: &[u8], n: usize) -> String {
    if data.is_empty() {
        return "end of input".to_string();
    }
    data.iter()
        .take(n)
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
pub(crate) mod tests;
