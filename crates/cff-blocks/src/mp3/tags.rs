//! The tags around the frames: ID3v2 (with its v2.4 footer) and APEv2. ID3v1 is a fixed
//! 128-byte block found by the reader.

use super::u32_le_at;

/// Length of the ID3v2 tag at the start of `data`, header, padding and footer included
/// (ID3v2.4 structure §3.1: a 28-bit syncsafe size that excludes the 10-byte header and the
/// 10-byte footer present when flag bit 4 is set). `None` if `data` does not start with a
/// valid ID3v2 header; the length may exceed `data`.
pub(super) fn id3v2_len(data: &[u8]) -> Option<u64> {
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
pub(super) fn id3v2_footer_len(data: &[u8], end: usize) -> Option<u64> {
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
pub(super) const MAX_TRAILING_TAGS: usize = 4;

/// APE tag flags (APEv2 specification, "APE Tags Header"): bit 31 the tag has a header, bit 29
/// this 32-byte block is the header.
pub(super) const APE_HAS_HEADER: u32 = 1 << 31;
pub(super) const APE_IS_HEADER: u32 = 1 << 29;

/// Length of the APE tag whose 32-byte header starts at `pos`. The header's size field counts
/// the items and the footer, not the header.
pub(super) fn ape_header_len(data: &[u8], pos: usize) -> Option<u64> {
    if data.get(pos..pos.checked_add(8)?)? != b"APETAGEX" {
        return None;
    }
    let size = u32_le_at(data, pos + 12)?;
    let flags = u32_le_at(data, pos + 20)?;
    (flags & APE_IS_HEADER != 0 && size >= 32).then_some(u64::from(size) + 32)
}

/// Length of the APE tag whose 32-byte footer ends at `end`, header included when the flags
/// say there is one.
pub(super) fn ape_footer_len(data: &[u8], end: usize) -> Option<u64> {
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
