//! The reader: the walk through the pages of the chosen logical stream, its links, the
//! packets assembled across pages, the headers, and the general path of the iterator.

use std::borrow::Cow;

use super::headers::{OpusHead, OpusTags};
use super::state::{Link, PageState, Pending, State};
use super::timestamps::page_start;
use super::{malformed, parse_packet, PacketInfo, PacketKind};
use crate::ogg::{hex_prefix, Chunk, Page, PageWalker, Piece};
use crate::{Block, BlockKind, Detail, Error, Format, Options, Place, Region, RegionKind, Result};

/// Reads the packets of an Ogg Opus file held in memory.
///
/// Picks the first logical stream whose BOS page starts with `OpusHead`, or the one whose serial
/// is [`Options::ogg_serial`]; pages of other streams become [`RegionKind::OtherStream`]
/// regions. Chained files (a new Opus stream starting after the previous one ended) are
/// followed when no serial was asked for: each link's headers are yielded again and timestamps
/// continue from where the previous link's output ended.
#[derive(Debug)]
pub struct OpusReader<'a> {
    // Boxed: one allocation per file keeps the reader small to move (it sits in an enum with
    // the other readers) and costs nothing per block.
    pub(super) state: Box<State<'a>>,
}

/// The most bytes of a packet's piece on one page: 255 lacing values of 255 (RFC 3533 §6).
pub(super) const PAGE_MAX_BODY: u64 = 255 * 255;

impl<'a> OpusReader<'a> {
    /// Opens a reader over a whole file held in memory: finds the Opus stream and parses its
    /// identification header.
    ///
    /// Fails when the input holds no valid Ogg page, no Opus stream (or none with the requested
    /// serial), or an invalid `OpusHead`.
    pub fn new(data: &'a [u8], options: &Options) -> Result<Self> {
        if data.len() as u64 > options.limits.max_file_bytes {
            return Err(Error::Limit {
                offset: 0,
                what: "max_file_bytes",
                limit: options.limits.max_file_bytes,
                found: data.len() as u64,
            });
        }
        let mut walker = PageWalker::new(data, options.verify_crc);
        let mut regions = Vec::new();
        let mut foreign: Option<Page<'a>> = None;
        let wanted = |serial: u32| options.ogg_serial.is_none_or(|s| s == serial);
        let first = loop {
            match walker.next() {
                Some(Ok(Chunk::Page(p))) => {
                    if p.is_bos() && wanted(p.serial()) && p.body().starts_with(b"OpusHead") {
                        break p;
                    }
                    if foreign.is_none() && p.is_bos() {
                        foreign = Some(p);
                    }
                    push_region(&mut regions, other_stream(&p));
                }
                Some(Ok(Chunk::Skipped(r))) => push_region(&mut regions, r),
                Some(Err(e)) => return Err(e),
                None => return Err(no_stream(data, foreign, options.ogg_serial)),
            }
        };
        let head_packet = first
            .pieces()
            .next()
            .filter(|p| p.complete && !first.is_continued());
        let Some(head_packet) = head_packet else {
            return Err(malformed(
                first.body_offset(),
                "OpusHead complete on the first page of its stream (RFC 7845 §5.1)",
                "a packet continued across pages".into(),
            ));
        };
        let head = OpusHead::parse(head_packet.data, first.body_offset())?;
        let mut state = State {
            data,
            walker,
            options: options.clone(),
            regions,
            head,
            tags: None,
            link: Link::new(first.serial(), 0, 0),
            page: None,
            pending: None,
            output_end: 0,
            index: 0,
            done: false,
            fast_end: 0,
            fast_start: 0,
            out_base: 0,
            fast_info: PacketInfo {
                packet: PacketKind::Audio,
                toc: None,
                frames: None,
                duration: 0,
                trimmed: 0,
                serial: 0,
                link: 0,
                page_sequence: 0,
                granule_position: 0,
                spans_pages: false,
                after_gap: false,
            },
        };
        state.load_page(first)?;
        Ok(OpusReader {
            state: Box::new(state),
        })
    }

    /// Ranges of the input seen so far that are not part of any block: garbage skipped while
    /// resynchronising, pages of other logical streams, trailing bytes. Page headers and the
    /// fragments of packets broken by lost pages are not listed.
    pub fn regions(&self) -> &[Region] {
        &self.state.regions
    }

    /// The identification header of the stream being read (of the current link in a chained
    /// file).
    pub fn head(&self) -> &OpusHead {
        &self.state.head
    }

    /// The comment header of the stream being read, once its block has been yielded.
    pub fn tags(&self) -> Option<&OpusTags> {
        self.state.tags.as_ref()
    }

    /// The serial number of the logical stream being read.
    pub fn serial(&self) -> u32 {
        self.state.link.serial
    }

    /// Everything but the hot path: pages, headers, packets that span pages, the end, errors.
    #[inline(never)]
    pub(crate) fn next_general(&mut self) -> Option<Result<Block<'a>>> {
        self.general_step(State::next_block)
    }

    /// One step of the general path: the hot path's bookkeeping handed back before `step`, the
    /// end or an error remembered, the hot path's conditions decided again after it.
    #[inline(always)]
    pub(super) fn general_step<T>(
        &mut self,
        step: impl FnOnce(&mut State<'a>) -> Result<Option<T>>,
    ) -> Option<Result<T>> {
        let state = &mut *self.state;
        if state.done {
            return None;
        }
        state.sync_fast();
        let item = match step(state) {
            Ok(Some(x)) => Some(Ok(x)),
            Ok(None) => {
                state.done = true;
                None
            }
            Err(e) => {
                state.done = true;
                Some(Err(e))
            }
        };
        state.refresh_fast();
        item
    }
}

impl<'a> State<'a> {
    /// Starts the walk through a page of the stream being read: checks its sequence number and
    /// continuation flag, and places its packets in time.
    fn load_page(&mut self, page: Page<'a>) -> Result<()> {
        let link = &mut self.link;
        // RFC 3533 §6: sequence numbers increase by one per page; a jump means lost pages, and
        // a packet left unfinished before them can never be completed.
        let lost = link
            .last_sequence
            .is_some_and(|s| page.sequence() != s.wrapping_add(1));
        link.last_sequence = Some(page.sequence());
        if !page.is_bos() {
            link.saw_data_page = true;
        }
        if lost {
            link.gap = true;
            self.pending = None;
        }
        let mut pieces = page.pieces();
        if page.is_continued() {
            if self.pending.is_none() {
                // The start of this packet was lost (or never existed): drop the rest of it.
                pieces.next();
                link.gap = true;
            }
        } else if self.pending.take().is_some() {
            // The unfinished packet of the previous page is not continued here (RFC 3533 §6).
            link.gap = true;
        }
        if page.is_eos() {
            link.ended = true;
        }

        let (pos, end_limit) = page_start(link, self.pending.as_ref(), &page, &pieces, lost)?;
        self.page = Some(PageState {
            page,
            pieces,
            pos,
            end_limit,
        });
        Ok(())
    }

    /// Routes a page: the stream being read, the first page of a new link, or another stream.
    fn on_page(&mut self, page: Page<'a>) -> Result<()> {
        if page.serial() == self.link.serial && !self.link.ended {
            return self.load_page(page);
        }
        let new_link = page.is_bos()
            && !page.is_continued()
            && (self.link.ended || self.link.saw_data_page)
            && self.options.ogg_serial.is_none_or(|s| s == page.serial())
            && page.body().starts_with(b"OpusHead");
        if new_link {
            // RFC 3533 §4 (chaining): a new link begins with its own BOS pages once the previous
            // link is over; RFC 7845 §3: it repeats the headers.
            let first = page.pieces().next();
            if !first.is_some_and(|p| p.complete) {
                return Err(malformed(
                    page.body_offset(),
                    "OpusHead complete on the first page of its stream (RFC 7845 §5.1)",
                    "a packet continued across pages".into(),
                ));
            }
            self.pending = None;
            self.link = Link::new(page.serial(), self.link.index + 1, self.output_end);
            return self.load_page(page);
        }
        push_region(&mut self.regions, other_stream(&page));
        Ok(())
    }

    /// Adds an unfinished piece to the packet being assembled, refusing it above the block-size
    /// limit before copying anything.
    fn continue_packet(&mut self, page: &Page<'a>, piece: Piece<'a>) -> Result<()> {
        let (offset, have) = match &self.pending {
            Some(p) => (p.offset, p.buf.len()),
            None => (page.body_offset() + piece.start as u64, 0),
        };
        self.check_block_bytes(offset, have + piece.data.len())?;
        match &mut self.pending {
            Some(p) => p.buf.extend_from_slice(piece.data),
            None => {
                self.pending = Some(Pending {
                    offset,
                    buf: piece.data.to_vec(),
                })
            }
        }
        Ok(())
    }

    fn check_block_bytes(&self, offset: u64, len: usize) -> Result<()> {
        let limit = self.options.limits.max_block_bytes;
        if len as u64 > limit {
            return Err(Error::Limit {
                offset,
                what: "max_block_bytes",
                limit,
                found: len as u64,
            });
        }
        Ok(())
    }

    /// Makes the block of a packet that ends with `piece`.
    fn complete_packet(&mut self, page: Page<'a>, piece: Piece<'a>) -> Result<Block<'a>> {
        let (offset, carried) = match &self.pending {
            Some(p) => (p.offset, p.buf.len()),
            None => (page.body_offset() + piece.start as u64, 0),
        };
        if self.index >= self.options.limits.max_blocks {
            return Err(Error::Limit {
                offset,
                what: "max_blocks",
                limit: self.options.limits.max_blocks,
                found: self.index + 1,
            });
        }
        self.check_block_bytes(offset, carried + piece.data.len())?;
        let (data, spans_pages): (Cow<'a, [u8]>, bool) = match self.pending.take() {
            Some(mut p) => {
                p.buf.extend_from_slice(piece.data);
                (Cow::Owned(p.buf), true)
            }
            None => (Cow::Borrowed(piece.data), false),
        };
        let number = self.link.packets;
        self.link.packets += 1;
        let mut info = PacketInfo {
            packet: PacketKind::Audio,
            toc: None,
            frames: None,
            duration: 0,
            trimmed: 0,
            serial: page.serial(),
            link: self.link.index,
            page_sequence: page.sequence(),
            granule_position: page.granule_position(),
            spans_pages,
            after_gap: std::mem::take(&mut self.link.gap),
        };
        let (kind, place) = match number {
            0 => {
                let head = OpusHead::parse(&data, offset)?;
                self.link.pre_skip = i64::from(head.pre_skip);
                self.link.single_stream = head.streams == 1;
                self.head = head;
                info.packet = PacketKind::Head;
                (BlockKind::Metadata, Place::None)
            }
            1 => {
                self.tags = Some(OpusTags::parse(&data, offset)?);
                info.packet = PacketKind::Tags;
                (BlockKind::Metadata, Place::None)
            }
            _ => {
                let (toc, frames) = parse_packet(&data, self.link.single_stream)
                    .map_err(|expected| malformed(offset, expected, hex_prefix(&data, 4)))?;
                return Ok(self.audio_block(offset, data, info, toc, frames));
            }
        };
        let block = Block {
            index: self.index,
            offset,
            bit: 0,
            data,
            bits: None,
            kind,
            place,
            detail: Detail::Opus(info),
        };
        self.index += 1;
        Ok(block)
    }

    pub(super) fn next_block(&mut self) -> Result<Option<Block<'a>>> {
        self.next_block_or_page::<false>()
            .map(|step| step.flatten())
    }

    /// [`State::next_block`], which with `STOP_AT_PAGE` also returns `Some(None)` right after
    /// loading a page of the stream being read, before its first packet: for
    /// [`OpusReader::for_each_block`], whose page loop can then take that packet too.
    #[inline(always)]
    pub(super) fn next_block_or_page<const STOP_AT_PAGE: bool>(
        &mut self,
    ) -> Result<Option<Option<Block<'a>>>> {
        loop {
            if let Some(state) = self.page.as_mut() {
                let page = state.page;
                match state.pieces.next() {
                    Some(piece) if piece.complete => {
                        return self.complete_packet(page, piece).map(|b| Some(Some(b)))
                    }
                    Some(piece) => self.continue_packet(&page, piece)?,
                    None => self.page = None,
                }
                continue;
            }
            match self.walker.next() {
                Some(Ok(Chunk::Page(page))) => {
                    self.on_page(page)?;
                    if STOP_AT_PAGE && self.page.is_some() {
                        return Ok(Some(None));
                    }
                }
                Some(Ok(Chunk::Skipped(region))) => push_region(&mut self.regions, region),
                Some(Err(e)) => return Err(e),
                None => return self.finish().map(|b| b.map(Some)),
            }
        }
    }

    /// The end of the input: a packet still being assembled was cut off.
    fn finish(&mut self) -> Result<Option<Block<'a>>> {
        if let Some(p) = self.pending.take() {
            let available = (self.data.len() as u64).saturating_sub(p.offset);
            return Err(Error::Truncated {
                format: Format::OggOpus,
                offset: p.offset,
                what: "Opus packet continued past the last page",
                needed: available + 1,
                available,
            });
        }
        Ok(None)
    }
}

impl<'a> Iterator for OpusReader<'a> {
    type Item = Result<Block<'a>>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if let Some(block) = self.state.next_in_page() {
            return Some(Ok(block));
        }
        self.next_general()
    }
}

fn other_stream(page: &Page<'_>) -> Region {
    Region {
        offset: page.offset(),
        len: page.len() as u64,
        kind: RegionKind::OtherStream,
    }
}

/// Appends a region, merging it into the previous one when they touch and agree.
fn push_region(regions: &mut Vec<Region>, region: Region) {
    if let Some(last) = regions.last_mut() {
        if last.kind == region.kind && last.offset + last.len == region.offset {
            last.len += region.len;
            return;
        }
    }
    regions.push(region);
}

/// The error for input without the Opus stream asked for.
fn no_stream(data: &[u8], foreign: Option<Page<'_>>, serial: Option<u32>) -> Error {
    match (foreign, serial) {
        (_, Some(serial)) => Error::Unsupported {
            format: Format::OggOpus,
            offset: 0,
            what: format!("no Opus logical stream with serial {serial}"),
        },
        (Some(page), None) => Error::Unsupported {
            format: Format::OggOpus,
            offset: page.offset(),
            what: format!(
                "Ogg logical stream that is not Opus (first packet starts {})",
                hex_prefix(page.body(), 8)
            ),
        },
        (None, None) => malformed(
            0,
            "an Ogg page beginning an Opus stream (RFC 7845 §3)",
            hex_prefix(data, 8),
        ),
    }
}
