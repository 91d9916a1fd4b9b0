//! One Ogg page (RFC 3533 §6) and the packet pieces its segment table lays out (§5).

use super::crc::page_crc;
use super::{hex_prefix, CAPTURE_PATTERN, FLAG_BOS, FLAG_CONTINUED, FLAG_EOS, HEADER_LEN};
use crate::{Error, Format, Result};

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
pub(super) enum PageFault {
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

    pub(super) fn try_parse(
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
        page_crc(self.bytes)
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
