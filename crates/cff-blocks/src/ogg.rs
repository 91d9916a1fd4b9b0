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
//! [`RegionKind::Garbage`] (or [`RegionKind::Trailing`] when no valid page follows).

use crate::{Error, Format, Region, RegionKind, Result};

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

/// Byte range of the CRC field in the page header (RFC 3533 §6, "CRC checksum").
const CRC_FIELD: std::ops::Range<usize> = 22..26;

/// The CRC-32 generator polynomial of Ogg (RFC 3533 §6): 0x04C11DB7, processed most
/// significant bit first (not reflected), initial value 0, no final xor.
pub const CRC_POLYNOMIAL: u32 = 0x04C1_1DB7;

/// Slicing-by-16 tables: `CRC_TABLES[k][v]` is the CRC register after feeding byte `v` into a
/// zero register and then `k` zero bytes. Built at compile time.
static CRC_TABLES: [[u32; 256]; 16] = crc_tables();

const fn crc_tables() -> [[u32; 256]; 16] {
    let mut t = [[0u32; 256]; 16];
    let mut i = 0;
    while i < 256 {
        let mut c = (i as u32) << 24;
        let mut bit = 0;
        while bit < 8 {
            c = if c & 0x8000_0000 != 0 {
                (c << 1) ^ CRC_POLYNOMIAL
            } else {
                c << 1
            };
            bit += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut k = 1;
    while k < 16 {
        let mut i = 0;
        while i < 256 {
            // One more zero byte through the register: shift it out and fold its top byte.
            let prev = t[k - 1][i];
            t[k][i] = (prev << 8) ^ t[0][(prev >> 24) as usize];
            i += 1;
        }
        k += 1;
    }
    t
}

/// One slicing-by-16 step: sixteen bytes through the register.
#[inline(always)]
fn crc_step16(crc: u32, chunk: &[u8]) -> u32 {
    let t = &CRC_TABLES;
    let &[b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11, b12, b13, b14, b15] = chunk else {
        return crc;
    };
    // The register's four bytes line up with the first four data bytes (MSB first); each byte
    // j of the sixteen then still has 15 - j bytes to travel through the register.
    let w = crc ^ u32::from_be_bytes([b0, b1, b2, b3]);
    t[15][(w >> 24) as usize]
        ^ t[14][((w >> 16) & 0xFF) as usize]
        ^ t[13][((w >> 8) & 0xFF) as usize]
        ^ t[12][(w & 0xFF) as usize]
        ^ t[11][b4 as usize]
        ^ t[10][b5 as usize]
        ^ t[9][b6 as usize]
        ^ t[8][b7 as usize]
        ^ t[7][b8 as usize]
        ^ t[6][b9 as usize]
        ^ t[5][b10 as usize]
        ^ t[4][b11 as usize]
        ^ t[3][b12 as usize]
        ^ t[2][b13 as usize]
        ^ t[1][b14 as usize]
        ^ t[0][b15 as usize]
}

/// `a(x) · b(x) mod P(x)` over GF(2), registers read most significant bit first.
const fn gf2_mulmod(a: u32, b: u32) -> u32 {
    let mut r = 0u32;
    let mut i = 32;
    while i > 0 {
        i -= 1;
        r = if r & 0x8000_0000 != 0 {
            (r << 1) ^ CRC_POLYNOMIAL
        } else {
            r << 1
        };
        if (b >> i) & 1 != 0 {
            r ^= a;
        }
    }
    r
}

/// Half-lengths the two-lane CRC handles, in 16-byte units: a page body is at most 65025 bytes.
const LANE_UNITS: usize = 2048;

/// `SHIFT[k]` = x^(128·k) mod P: multiplying a CRC register by it appends 16·k zero bytes.
static SHIFT: [u32; LANE_UNITS + 1] = shift_table();

const fn shift_table() -> [u32; LANE_UNITS + 1] {
    let mut t = [0u32; LANE_UNITS + 1];
    // The register 0x0000_0001 stands for x^0 = 1; 128 doublings mod P give x^128 mod P.
    t[0] = 1;
    let mut step = 1u32;
    let mut n = 0;
    while n < 128 {
        step = if step & 0x8000_0000 != 0 {
            (step << 1) ^ CRC_POLYNOMIAL
        } else {
            step << 1
        };
        n += 1;
    }
    let mut k = 1;
    while k <= LANE_UNITS {
        t[k] = gf2_mulmod(t[k - 1], step);
        k += 1;
    }
    t
}

/// Continues the Ogg CRC-32 over `data` from the register value `crc`. Start from 0.
///
/// With the `simd-crc` feature (on by default) on x86-64, inputs of 32 bytes or more are
/// folded with carry-less multiplication (module `clmul`: 256-bit VPCLMULQDQ with AVX2, else
/// 128-bit PCLMULQDQ, chosen at run time). Shorter inputs, other processors and every build
/// without the feature use the slicing-by-16 tables of this module. Both give the same register.
pub fn crc32_update(crc: u32, data: &[u8]) -> u32 {
    #[cfg(all(feature = "simd-crc", target_arch = "x86_64"))]
    if let Some(crc) = clmul::update(crc, data, false) {
        return crc;
    }
    table_crc32_update(crc, data)
}

/// The Ogg CRC-32 by carry-less multiplication (feature `simd-crc`, x86-64).
#[cfg(all(feature = "simd-crc", target_arch = "x86_64"))]
mod clmul;

/// Continues the Ogg CRC-32 over `data` from the register value `crc`, in safe Rust.
///
/// Slicing-by-16 (sixteen bytes per step through sixteen 1 KiB tables) on two lanes at once:
/// the two halves of a long input are run as independent CRCs, so that the processor overlaps
/// their table look-ups, and joined with CRC(A‖B) = CRC(A)·x^(8|B|) + CRC(B) mod P (the CRC is
/// linear and has no initial value or final xor, RFC 3533 §6).
fn table_crc32_update(mut crc: u32, mut data: &[u8]) -> u32 {
    loop {
        // Below 256 bytes the join costs more than the second lane saves.
        let units = (data.len() / 32).min(LANE_UNITS);
        if units < 8 {
            break;
        }
        let half = units * 16;
        let (a, rest) = data.split_at(half);
        let (b, tail) = rest.split_at(half);
        let mut crc_b = 0u32;
        for (ca, cb) in a.chunks_exact(16).zip(b.chunks_exact(16)) {
            crc = crc_step16(crc, ca);
            crc_b = crc_step16(crc_b, cb);
        }
        let shift = SHIFT.get(units).copied().unwrap_or(1);
        crc = gf2_mulmod(crc, shift) ^ crc_b;
        data = tail;
    }
    let mut chunks = data.chunks_exact(16);
    for chunk in &mut chunks {
        crc = crc_step16(crc, chunk);
    }
    let t = &CRC_TABLES;
    for &b in chunks.remainder() {
        crc = (crc << 8) ^ t[0][((crc >> 24) as u8 ^ b) as usize];
    }
    crc
}

/// The Ogg CRC-32 of `data` (RFC 3533 §6).
pub fn crc32(data: &[u8]) -> u32 {
    crc32_update(0, data)
}

/// One Ogg page, borrowing its header and body from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page<'a> {
    offset: u64,
    /// The whole page: header, segment table and body.
    bytes: &'a [u8],
    header: &'a [u8],
    body: &'a [u8],
    header_type: u8,
    granule_position: i64,
    serial: u32,
    sequence: u32,
    crc: u32,
}

/// Why the bytes at a position are not a valid page. Kept small and cheap: resynchronisation
/// tries many positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PageFault {
    /// No capture pattern, or a version other than 0.
    NotAPage,
    /// A page starts here but the input ends inside it.
    Truncated { needed: u64, available: u64 },
    /// The stored CRC does not match the page.
    Crc { stored: u32, computed: u32 },
}

impl<'a> Page<'a> {
    /// Parses the page that starts at `data[pos..]`; `pos` is also its byte offset in the file.
    ///
    /// Checks the capture pattern, the version (0, RFC 3533 §6), that the whole page is present,
    /// and, with `verify_crc`, the CRC-32.
    pub fn parse(data: &'a [u8], pos: usize, verify_crc: bool) -> Result<Page<'a>> {
        Self::try_parse(data, pos, verify_crc).map_err(|fault| match fault {
            PageFault::NotAPage => Error::Malformed {
                format: Format::OggOpus,
                offset: pos as u64,
                expected: "an Ogg page (capture pattern OggS, version 0)",
                found: hex_prefix(data.get(pos..).unwrap_or(&[]), 6),
            },
            PageFault::Truncated { needed, available } => Error::Truncated {
                format: Format::OggOpus,
                offset: pos as u64,
                what: "Ogg page",
                needed,
                available,
            },
            PageFault::Crc { stored, computed } => Error::Malformed {
                format: Format::OggOpus,
                offset: pos as u64,
                expected: "an Ogg page whose CRC-32 matches",
                found: format!("stored CRC {stored:08x}, computed {computed:08x}"),
            },
        })
    }

    fn try_parse(
        data: &'a [u8],
        pos: usize,
        verify_crc: bool,
    ) -> std::result::Result<Page<'a>, PageFault> {
        let rest = data.get(pos..).unwrap_or(&[]);
        let available = rest.len() as u64;
        let Some(fixed) = rest.get(..HEADER_LEN) else {
            // A cut-off header still counts as a page start when what is there looks like one.
            let looks_like_page = rest.len() >= 4
                && rest[..4] == CAPTURE_PATTERN
                && rest.get(4).is_none_or(|&v| v == 0);
            return Err(if looks_like_page {
                PageFault::Truncated {
                    needed: HEADER_LEN as u64,
                    available,
                }
            } else {
                PageFault::NotAPage
            });
        };
        let Ok(h) = <&[u8; HEADER_LEN]>::try_from(fixed) else {
            return Err(PageFault::NotAPage);
        };
        if h[..4] != CAPTURE_PATTERN || h[4] != 0 {
            return Err(PageFault::NotAPage);
        }
        let segments = h[26] as usize;
        let header_len = HEADER_LEN + segments;
        let Some(segment_table) = rest.get(HEADER_LEN..header_len) else {
            return Err(PageFault::Truncated {
                needed: header_len as u64,
                available,
            });
        };
        let body_len: usize = segment_table.iter().map(|&l| l as usize).sum();
        let page_len = header_len + body_len;
        let Some(bytes) = rest.get(..page_len) else {
            return Err(PageFault::Truncated {
                needed: page_len as u64,
                available,
            });
        };
        let (header, body) = bytes.split_at(header_len);
        let crc = u32::from_le_bytes([h[22], h[23], h[24], h[25]]);
        let page = Page {
            offset: pos as u64,
            bytes,
            header,
            body,
            header_type: h[5],
            granule_position: i64::from_le_bytes([
                h[6], h[7], h[8], h[9], h[10], h[11], h[12], h[13],
            ]),
            serial: u32::from_le_bytes([h[14], h[15], h[16], h[17]]),
            sequence: u32::from_le_bytes([h[18], h[19], h[20], h[21]]),
            crc,
        };
        if verify_crc {
            let computed = page.computed_crc();
            if computed != crc {
                return Err(PageFault::Crc {
                    stored: crc,
                    computed,
                });
            }
        }
        Ok(page)
    }

    /// Byte offset of the page (its capture pattern) in the file.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Bytes of the whole page: header, segment table and body.
    pub fn len(&self) -> usize {
        self.header.len() + self.body.len()
    }

    /// Always false: a page has at least its 27-byte header.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Byte offset in the file of the first body byte.
    pub fn body_offset(&self) -> u64 {
        self.offset + self.header.len() as u64
    }

    /// The header: the 27 fixed bytes and the segment table.
    pub fn header(&self) -> &'a [u8] {
        self.header
    }

    /// The body: the packet data of the page.
    pub fn body(&self) -> &'a [u8] {
        self.body
    }

    /// The segment table: one lacing value per segment.
    pub fn segment_table(&self) -> &'a [u8] {
        self.header.get(HEADER_LEN..).unwrap_or(&[])
    }

    /// The header-type byte (flags [`FLAG_CONTINUED`], [`FLAG_BOS`], [`FLAG_EOS`]).
    pub fn header_type(&self) -> u8 {
        self.header_type
    }

    /// Whether the first packet on the page continues one from the previous page.
    pub fn is_continued(&self) -> bool {
        self.header_type & FLAG_CONTINUED != 0
    }

    /// Whether this is the first page of its logical stream (BOS).
    pub fn is_bos(&self) -> bool {
        self.header_type & FLAG_BOS != 0
    }

    /// Whether this is the last page of its logical stream (EOS).
    pub fn is_eos(&self) -> bool {
        self.header_type & FLAG_EOS != 0
    }

    /// The granule position: codec-defined (48 kHz samples for Opus); -1 when no packet ends
    /// on this page (RFC 3533 §6).
    pub fn granule_position(&self) -> i64 {
        self.granule_position
    }

    /// The serial number of the page's logical stream.
    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// The page sequence number within its logical stream; a jump means lost pages.
    pub fn sequence(&self) -> u32 {
        self.sequence
    }

    /// The CRC-32 stored in the header.
    pub fn crc(&self) -> u32 {
        self.crc
    }

    /// The CRC-32 of the page computed with the CRC field taken as zero (RFC 3533 §6).
    pub fn computed_crc(&self) -> u32 {
        // With carry-less multiplication, one pass over the page as it lies in the input, the
        // kernel masking the CRC field out of its first vector.
        #[cfg(all(feature = "simd-crc", target_arch = "x86_64"))]
        if let Some(crc) = clmul::update(0, self.bytes, true) {
            return crc;
        }
        // Otherwise (tables, or a page under 32 bytes): the 22 bytes before the CRC field, then
        // the field as zeros, make 26 bytes; behind 6 zero bytes (which leave a register of 0
        // unchanged: the CRC has no initial value, RFC 3533 §6) they are two 16-byte steps. The
        // rest of the page (segment count and table, then the body) lies contiguous in the
        // input: one call.
        let mut head = [0u8; 32];
        if let (Some(dst), Some(src)) = (
            head.get_mut(6..6 + CRC_FIELD.start),
            self.bytes.get(..CRC_FIELD.start),
        ) {
            dst.copy_from_slice(src);
        }
        let (a, b) = head.split_at(16);
        let crc = crc_step16(crc_step16(0, a), b);
        crc32_update(crc, self.bytes.get(CRC_FIELD.end..).unwrap_or(&[]))
    }

    /// Whether the last packet on the page is unfinished (the last lacing value is 255) and
    /// continues on the next page of the stream.
    pub fn ends_with_continued_packet(&self) -> bool {
        self.segment_table().last() == Some(&255)
    }

    /// The pieces of packets on this page, in order.
    pub fn pieces(&self) -> Pieces<'a> {
        Pieces {
            table: self.segment_table(),
            body: self.body,
            seg: 0,
            body_pos: 0,
        }
    }
}

/// A run of segments on one page that belongs to one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece<'a> {
    /// Offset of the piece within the page body.
    pub start: usize,
    /// The bytes.
    pub data: &'a [u8],
    /// Whether the packet ends with this piece (its last lacing value is below 255); if not,
    /// it continues on the next page.
    pub complete: bool,
}

/// Iterator over the packet pieces of a page (RFC 3533 §5: lacing values of 255 continue a
/// packet, a smaller value ends it).
#[derive(Debug, Clone)]
pub struct Pieces<'a> {
    table: &'a [u8],
    body: &'a [u8],
    seg: usize,
    body_pos: usize,
}

impl<'a> Pieces<'a> {
    /// The next piece if it ends a packet (its last lacing value is below 255), without
    /// advancing: the piece, and where the iterator continues after it (segment, body offset).
    /// `None` at the end of the page and for a piece continued on the next page.
    #[inline(always)]
    pub(crate) fn peek_complete(&self) -> Option<(Piece<'a>, usize, usize)> {
        let mut seg = self.seg;
        let mut len = 0usize;
        loop {
            let lacing = *self.table.get(seg)?;
            seg += 1;
            len += usize::from(lacing);
            if lacing < 255 {
                break;
            }
        }
        let start = self.body_pos;
        let end = start + len;
        let data = self.body.get(start..end)?;
        let piece = Piece {
            start,
            data,
            complete: true,
        };
        Some((piece, seg, end))
    }

    /// Continues after a piece that [`Pieces::peek_complete`] returned.
    #[inline(always)]
    pub(crate) fn skip_to(&mut self, seg: usize, body_pos: usize) {
        self.seg = seg;
        self.body_pos = body_pos;
    }

    /// The page's segment table and body, and where the iterator is in them (segment, body
    /// offset): for a loop that walks the lacing values itself and continues with
    /// [`Pieces::skip_to`].
    #[inline(always)]
    pub(crate) fn parts(&self) -> (&'a [u8], &'a [u8], usize, usize) {
        (self.table, self.body, self.seg, self.body_pos)
    }
}

impl<'a> Iterator for Pieces<'a> {
    type Item = Piece<'a>;

    fn next(&mut self) -> Option<Piece<'a>> {
        let rest = self.table.get(self.seg..)?;
        if rest.is_empty() {
            return None;
        }
        let mut len = 0usize;
        let mut complete = false;
        for &lacing in rest {
            self.seg += 1;
            len += lacing as usize;
            if lacing < 255 {
                complete = true;
                break;
            }
        }
        let start = self.body_pos;
        self.body_pos += len;
        // The body length is the sum of the lacing values, so this range always exists.
        let data = self.body.get(start..self.body_pos)?;
        Some(Piece {
            start,
            data,
            complete,
        })
    }
}

/// What the page walker finds next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk<'a> {
    /// A valid page.
    Page(Page<'a>),
    /// Bytes that are not a valid page: [`RegionKind::Garbage`] when a valid page follows,
    /// [`RegionKind::Trailing`] when none does.
    Skipped(Region),
}

/// Walks the pages of an Ogg file held in memory, with no allocation.
///
/// Yields [`Chunk::Page`] for every valid page and [`Chunk::Skipped`] for the bytes between
/// them that are not one. A page whose CRC does not verify is not a page: it is skipped with
/// the garbage around it (RFC 3533 §6 makes the capture pattern plus checksum the sync test).
/// A page cut short by the end of the input, with no valid page after it, ends the walk with
/// [`Error::Truncated`].
#[derive(Debug, Clone)]
pub struct PageWalker<'a> {
    data: &'a [u8],
    pos: usize,
    verify_crc: bool,
    /// A page found by a resynchronisation scan, returned after the garbage before it.
    found: Option<Page<'a>>,
    done: bool,
}

impl<'a> PageWalker<'a> {
    /// A walker over `data`, the whole file, verifying CRCs when `verify_crc` is set.
    pub fn new(data: &'a [u8], verify_crc: bool) -> Self {
        PageWalker {
            data,
            pos: 0,
            verify_crc,
            found: None,
            done: false,
        }
    }

    /// Byte offset where the walk continues.
    pub fn position(&self) -> u64 {
        self.pos as u64
    }

    /// Finds the first valid page that starts after `from`, scanning for the capture pattern.
    fn find_page_after(&self, from: usize) -> Option<Page<'a>> {
        let mut at = from;
        loop {
            let rest = self.data.get(at..)?;
            let i = rest.windows(4).position(|w| w == CAPTURE_PATTERN)?;
            at += i;
            if let Ok(page) = Page::try_parse(self.data, at, self.verify_crc) {
                return Some(page);
            }
            at += 1;
        }
    }
}

impl<'a> Iterator for PageWalker<'a> {
    type Item = Result<Chunk<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if let Some(page) = self.found.take() {
            self.pos = page.offset as usize + page.len();
            return Some(Ok(Chunk::Page(page)));
        }
        if self.pos >= self.data.len() {
            self.done = true;
            return None;
        }
        let fault = match Page::try_parse(self.data, self.pos, self.verify_crc) {
            Ok(page) => {
                self.pos += page.len();
                return Some(Ok(Chunk::Page(page)));
            }
            Err(fault) => fault,
        };
        let start = self.pos;
        if let Some(page) = self.find_page_after(start + 1) {
            let region = Region {
                offset: start as u64,
                len: page.offset - start as u64,
                kind: RegionKind::Garbage,
            };
            self.pos = page.offset as usize;
            self.found = Some(page);
            return Some(Ok(Chunk::Skipped(region)));
        }
        self.done = true;
        self.pos = self.data.len();
        Some(match fault {
            PageFault::Truncated { needed, available } => Err(Error::Truncated {
                format: Format::OggOpus,
                offset: start as u64,
                what: "Ogg page",
                needed,
                available,
            }),
            PageFault::NotAPage | PageFault::Crc { .. } => Ok(Chunk::Skipped(Region {
                offset: start as u64,
                len: (self.data.len() - start) as u64,
                kind: RegionKind::Trailing,
            })),
        })
    }
}

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
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Bit-at-a-time reference CRC straight from the definition (RFC 3533 §6).
    fn crc32_bitwise(data: &[u8]) -> u32 {
        crc32_bitwise_from(0, data)
    }

    /// The same, continuing from the register `crc`.
    fn crc32_bitwise_from(mut crc: u32, data: &[u8]) -> u32 {
        for &b in data {
            crc ^= (b as u32) << 24;
            for _ in 0..8 {
                crc = if crc & 0x8000_0000 != 0 {
                    (crc << 1) ^ CRC_POLYNOMIAL
                } else {
                    crc << 1
                };
            }
        }
        crc
    }

    /// A small deterministic generator (xorshift64*) for test data.
    pub(crate) struct Rng(pub u64);
    impl Rng {
        pub(crate) fn next_u64(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        pub(crate) fn below(&mut self, n: u64) -> u64 {
            self.next_u64() % n
        }
    }

    /// Builds one page with the given lacing values and body, and a correct CRC.
    pub(crate) fn page(
        header_type: u8,
        granule: i64,
        serial: u32,
        sequence: u32,
        lacing: &[u8],
        body: &[u8],
    ) -> Vec<u8> {
        assert_eq!(
            lacing.iter().map(|&l| l as usize).sum::<usize>(),
            body.len()
        );
        let mut p = Vec::new();
        p.extend_from_slice(b"OggS");
        p.push(0);
        p.push(header_type);
        p.extend_from_slice(&granule.to_le_bytes());
        p.extend_from_slice(&serial.to_le_bytes());
        p.extend_from_slice(&sequence.to_le_bytes());
        p.extend_from_slice(&[0; 4]);
        p.push(lacing.len() as u8);
        p.extend_from_slice(lacing);
        p.extend_from_slice(body);
        let crc = crc32_bitwise(&p);
        p[22..26].copy_from_slice(&crc.to_le_bytes());
        p
    }

    /// Lacing values for packets laid whole on one page.
    pub(crate) fn lacing_for(sizes: &[usize]) -> Vec<u8> {
        let mut l = Vec::new();
        for &s in sizes {
            l.extend(std::iter::repeat_n(255u8, s / 255));
            l.push((s % 255) as u8);
        }
        l
    }

    #[test]
    fn crc_check_value() {
        // CRC-32/MPEG-2 in the same catalogue (Greg Cook's "Catalogue of parametrised CRC
        // algorithms", reveng.sourceforge.io/crc-catalogue) is this CRC with an initial
        // register of 0xFFFFFFFF; its check value is 0x0376E6E7.
        assert_eq!(crc32_bitwise_from(0xFFFF_FFFF, b"123456789"), 0x0376_E6E7);
        assert_eq!(crc32_update(0xFFFF_FFFF, b"123456789"), 0x0376_E6E7);
        // CRC-32/CKSUM (same polynomial, init 0, not reflected) has the catalogue check value
        // 0x765E7680 for "123456789" after its final xor with 0xFFFFFFFF; Ogg has no final
        // xor, so its check value is 0x765E7680 ^ 0xFFFFFFFF.
        assert_eq!(crc32_bitwise(b"123456789"), 0x765E_7680 ^ 0xFFFF_FFFF);
        assert_eq!(crc32(b"123456789"), 0x765E_7680 ^ 0xFFFF_FFFF);
        assert_eq!(crc32(&[]), 0);
    }

    /// Random bytes, lengths from 0 to 130 KB at random offsets (alignment), each checked whole
    /// and fed in up to eight pieces cut at random places: `update` must equal the bitwise
    /// reference both ways.
    fn check_against_bitwise(update: fn(u32, &[u8]) -> u32, seed: u64) {
        let mut rng = Rng(seed);
        let mut buf = vec![0u8; 140_000];
        for b in buf.iter_mut() {
            *b = rng.next_u64() as u8;
        }
        for i in 0..200 {
            let start = rng.below(64) as usize;
            // Every short length (the table/SIMD threshold and the SIMD kernels' own block
            // sizes sit below 512), then page-sized ones, then some up to 130 KB.
            let len = match i {
                0..=99 => rng.below(512) as usize,
                100..=189 => rng.below(8000) as usize,
                _ => rng.below(130_001) as usize,
            };
            let slice = &buf[start..start + len];
            let expected = crc32_bitwise(slice);
            assert_eq!(update(0, slice), expected, "len {len}");
            let pieces = 1 + rng.below(8) as usize;
            let mut cuts: Vec<usize> = (1..pieces)
                .map(|_| rng.below(len as u64 + 1) as usize)
                .collect();
            cuts.push(0);
            cuts.push(len);
            cuts.sort_unstable();
            let crc = cuts
                .windows(2)
                .fold(0, |crc, w| update(crc, &slice[w[0]..w[1]]));
            assert_eq!(crc, expected, "len {len} cut at {cuts:?}");
        }
    }

    #[test]
    fn table_crc_matches_bitwise_reference() {
        check_against_bitwise(table_crc32_update, 0x0123_4567_89AB_CDEF);
    }

    #[test]
    fn public_crc_matches_bitwise_reference() {
        check_against_bitwise(crc32_update, 0xFEDC_BA98_7654_3210);
    }

    /// The carry-less-multiply kernels this processor runs; prints which are skipped.
    #[cfg(all(feature = "simd-crc", target_arch = "x86_64"))]
    fn clmul_levels() -> Vec<u8> {
        let levels: Vec<u8> = [clmul::CLMUL128, clmul::CLMUL256]
            .into_iter()
            .filter(|&l| l <= clmul::level())
            .collect();
        if levels.len() < 2 {
            eprintln!(
                "skipped: {} of the 2 carry-less-multiply kernels (this CPU lacks PCLMULQDQ or \
                 VPCLMULQDQ+AVX2)",
                2 - levels.len()
            );
        }
        levels
    }

    #[cfg(all(feature = "simd-crc", target_arch = "x86_64"))]
    #[test]
    fn clmul_kernels_match_bitwise_reference_on_every_length() {
        // Every length from 0 to 600 (the kernels' 16-, 32-, 64- and 128-byte blocks and every
        // tail), three random start offsets (alignments) and initial registers each, with the
        // Ogg CRC field (bytes 22..26) read as it is and taken as zeros.
        let mut rng = Rng(0x5DEE_CE66_D1CE_5EED);
        let buf: Vec<u8> = (0..700).map(|_| rng.next_u64() as u8).collect();
        let mut checked = 0;
        for level in clmul_levels() {
            for len in 0..=600 {
                for _ in 0..3 {
                    let start = rng.below(64) as usize;
                    let init = match rng.below(4) {
                        0 => 0,
                        1 => u32::MAX,
                        _ => rng.next_u64() as u32,
                    };
                    let data = &buf[start..start + len];
                    let got = clmul::update_with(level, init, data, false);
                    let got_zeroed = clmul::update_with(level, init, data, true);
                    if len < 32 {
                        assert_eq!((got, got_zeroed), (None, None), "len {len}");
                        continue;
                    }
                    let expected = crc32_bitwise_from(init, data);
                    assert_eq!(got, Some(expected), "level {level} len {len} start {start}");
                    let mut zeroed = data.to_vec();
                    zeroed[22..26].fill(0);
                    let expected = crc32_bitwise_from(init, &zeroed);
                    assert_eq!(got_zeroed, Some(expected), "level {level} len {len} zeroed");
                    checked += 1;
                }
            }
        }
        if !clmul_levels().is_empty() {
            assert!(checked >= 569 * 3, "{checked}");
        }
    }

    #[cfg(all(feature = "simd-crc", target_arch = "x86_64"))]
    #[test]
    fn clmul_kernels_match_on_big_inputs_and_the_check_value() {
        let mut rng = Rng(0x1234_5678_9ABC_DEF0);
        let buf: Vec<u8> = (0..(1 << 20) + 100).map(|_| rng.next_u64() as u8).collect();
        for level in clmul_levels() {
            for (start, len) in [(0, 1 << 20), (3, 1_000_000), (17, (1 << 20) + 13)] {
                let init = rng.next_u64() as u32;
                let data = &buf[start..start + len];
                let expected = crc32_bitwise_from(init, data);
                assert_eq!(clmul::update_with(level, init, data, false), Some(expected));
                assert_eq!(table_crc32_update(init, data), expected);
            }
            // Leading zero bytes leave a zero register at zero: the check value of "123456789"
            // (see `crc_check_value`) also holds behind 40 zero bytes, long enough for the
            // kernels.
            let mut msg = vec![0u8; 40];
            msg.extend_from_slice(b"123456789");
            assert_eq!(
                clmul::update_with(level, 0, &msg, false),
                Some(0x765E_7680 ^ 0xFFFF_FFFF)
            );
        }
    }

    #[cfg(all(feature = "simd-crc", target_arch = "x86_64"))]
    #[test]
    fn clmul_kernels_match_bitwise_reference_in_pieces() {
        for level in clmul_levels() {
            // The kernel where it takes the input, else the tables (as `crc32_update` does).
            let update: fn(u32, &[u8]) -> u32 = if level == clmul::CLMUL256 {
                |crc, d| {
                    clmul::update_with(clmul::CLMUL256, crc, d, false)
                        .unwrap_or_else(|| table_crc32_update(crc, d))
                }
            } else {
                |crc, d| {
                    clmul::update_with(clmul::CLMUL128, crc, d, false)
                        .unwrap_or_else(|| table_crc32_update(crc, d))
                }
            };
            check_against_bitwise(update, 0x0DDB_A11C_0FFE_E000 + u64::from(level));
        }
    }

    #[test]
    fn page_crc_matches_bitwise_reference() {
        // Random header fields, segment counts from 0 to 255 and random bodies: the page CRC
        // (computed with the CRC field as zeros) equals the bitwise CRC of the page with that
        // field zeroed, and a page parses with verification on only with that CRC stored.
        let mut rng = Rng(0x0BAD_C0FF_EE15_600D);
        for i in 0..300 {
            let segments = match i {
                0 => 0,
                1 => 255,
                _ => rng.below(256) as usize,
            };
            let lacing: Vec<u8> = (0..segments).map(|_| rng.next_u64() as u8).collect();
            let len: usize = lacing.iter().map(|&l| usize::from(l)).sum();
            let body: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            let flags = rng.below(8) as u8;
            let mut p = page(
                flags,
                rng.next_u64() as i64,
                rng.next_u64() as u32,
                rng.next_u64() as u32,
                &lacing,
                &body,
            );
            // `page` stored the bitwise CRC of the page with the field zeroed.
            let stored = u32::from_le_bytes([p[22], p[23], p[24], p[25]]);
            let parsed = Page::parse(&p, 0, true).unwrap();
            assert_eq!(parsed.computed_crc(), stored, "page {i}");
            // Any change to the stored CRC is caught.
            p[22 + i % 4] ^= 1 << (i % 8);
            assert!(Page::parse(&p, 0, true).is_err(), "page {i}");
        }
    }

    #[test]
    fn parses_a_page_and_its_pieces() {
        let body: Vec<u8> = (0..600u32).map(|i| i as u8).collect();
        // Packets of 10, 300 (lacing 255 45) and 290 bytes (lacing 255 35).
        let p = page(FLAG_BOS, 1234, 7, 3, &[10, 255, 45, 255, 35], &body);
        let page = Page::parse(&p, 0, true).unwrap();
        assert_eq!(page.len(), p.len());
        assert_eq!(page.granule_position(), 1234);
        assert_eq!(page.serial(), 7);
        assert_eq!(page.sequence(), 3);
        assert!(page.is_bos() && !page.is_eos() && !page.is_continued());
        assert_eq!(page.body_offset(), 27 + 5);
        let pieces: Vec<_> = page.pieces().collect();
        assert_eq!(pieces.len(), 3);
        assert_eq!((pieces[0].start, pieces[0].data.len()), (0, 10));
        assert_eq!((pieces[1].start, pieces[1].data.len()), (10, 300));
        assert_eq!((pieces[2].start, pieces[2].data.len()), (310, 290));
        assert!(pieces.iter().all(|p| p.complete));
        assert!(!page.ends_with_continued_packet());

        // A page ending with lacing 255 leaves its last piece open.
        let p = page_with_open_end();
        let page = Page::parse(&p, 0, true).unwrap();
        let pieces: Vec<_> = page.pieces().collect();
        assert_eq!(pieces.len(), 2);
        assert!(pieces[0].complete && !pieces[1].complete);
        assert!(page.ends_with_continued_packet());
    }

    fn page_with_open_end() -> Vec<u8> {
        page(0, -1, 7, 4, &[3, 255, 255], &[1u8; 513])
    }

    #[test]
    fn granule_minus_one_and_flags() {
        let p = page(FLAG_CONTINUED | FLAG_EOS, -1, 9, 1, &[255], &[0u8; 255]);
        let page = Page::parse(&p, 0, true).unwrap();
        assert_eq!(page.granule_position(), -1);
        assert!(page.is_continued() && page.is_eos() && !page.is_bos());
        // A page with no segments is legal (RFC 3533 §6 allows an empty page).
        let p = page_empty();
        let page = Page::parse(&p, 0, true).unwrap();
        assert_eq!(page.pieces().count(), 0);
        assert_eq!(page.len(), 27);
    }

    fn page_empty() -> Vec<u8> {
        page(0, -1, 9, 2, &[], &[])
    }

    #[test]
    fn wrong_crc_is_detected_and_accepted_when_verification_is_off() {
        let mut p = page(0, 960, 1, 2, &[4], b"abcd");
        p[30] ^= 0x40; // body byte 2 (27 header bytes, 1 lacing value)
        let err = Page::parse(&p, 0, true).unwrap_err();
        assert!(matches!(err, Error::Malformed { offset: 0, .. }), "{err}");
        assert!(err.to_string().contains("CRC"), "{err}");
        let page = Page::parse(&p, 0, false).unwrap();
        assert_eq!(page.body(), b"ab#d"); // 0x63 ^ 0x40
        assert_ne!(page.computed_crc(), page.crc());
    }

    #[test]
    fn truncated_and_foreign_bytes() {
        let p = page(0, 960, 1, 2, &[4], b"abcd");
        for cut in [5, 26, 27, 30] {
            let err = Page::parse(&p[..cut], 0, true).unwrap_err();
            assert!(
                matches!(err, Error::Truncated { offset: 0, .. }),
                "cut {cut}: {err}"
            );
        }
        let err = Page::parse(b"RIFF....", 0, true).unwrap_err();
        assert!(matches!(err, Error::Malformed { .. }), "{err}");
        let mut v1 = p.clone();
        v1[4] = 1; // version 1 is not Ogg as RFC 3533 defines it
        assert!(Page::parse(&v1, 0, false).is_err());
    }

    #[test]
    fn walker_resynchronises_over_garbage_and_reports_it() {
        let a = page(FLAG_BOS, 0, 5, 0, &[3], b"one");
        let b = page(0, 10, 5, 1, &[3], b"two");
        let c = page(FLAG_EOS, 20, 5, 2, &[5], b"three");
        let mut bad = b.clone();
        bad[28] ^= 1; // corrupt b's body: its CRC no longer verifies
        let mut file = a.clone();
        file.extend_from_slice(b"junk OggS junk"); // a false capture pattern inside garbage
        let garbage_start = file.len();
        file.extend_from_slice(&bad);
        let c_at = file.len();
        file.extend_from_slice(&c);
        file.extend_from_slice(b"tail");

        let chunks: Vec<_> = PageWalker::new(&file, true).collect::<Result<_>>().unwrap();
        assert_eq!(chunks.len(), 4, "{chunks:?}");
        assert!(matches!(chunks[0], Chunk::Page(p) if p.sequence() == 0));
        assert_eq!(
            chunks[1],
            Chunk::Skipped(Region {
                offset: a.len() as u64,
                len: (c_at - a.len()) as u64,
                kind: RegionKind::Garbage
            })
        );
        assert!(garbage_start < c_at);
        assert!(
            matches!(chunks[2], Chunk::Page(p) if p.sequence() == 2 && p.offset() == c_at as u64)
        );
        assert_eq!(
            chunks[3],
            Chunk::Skipped(Region {
                offset: (c_at + c.len()) as u64,
                len: 4,
                kind: RegionKind::Trailing
            })
        );

        // Without CRC verification the corrupted page is accepted as a page.
        let pages = PageWalker::new(&file, false)
            .filter(|c| matches!(c, Ok(Chunk::Page(_))))
            .count();
        assert_eq!(pages, 3);
    }

    #[test]
    fn walker_reports_a_truncated_final_page() {
        let a = page(FLAG_BOS, 0, 5, 0, &[3], b"one");
        let b = page(0, 10, 5, 1, &[100], &[7u8; 100]);
        let mut file = a.clone();
        file.extend_from_slice(&b[..60]);
        let mut w = PageWalker::new(&file, true);
        assert!(matches!(w.next(), Some(Ok(Chunk::Page(_)))));
        let err = w.next().unwrap().unwrap_err();
        assert!(
            matches!(err, Error::Truncated { offset, needed, available: 60, .. }
                if offset == a.len() as u64 && needed == b.len() as u64),
            "{err}"
        );
        assert!(w.next().is_none());
    }
}
