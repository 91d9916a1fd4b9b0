//! The walk through the pages of a file held in memory, with resynchronisation over bytes that
//! are not a page (RFC 3533 §6).

use super::page::{Page, PageFault};
use super::CAPTURE_PATTERN;
use crate::{Error, Format, Region, RegionKind, Result};

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
            self.pos = page.offset() as usize + page.len();
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
                len: page.offset() - start as u64,
                kind: RegionKind::Garbage,
            };
            self.pos = page.offset() as usize;
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
