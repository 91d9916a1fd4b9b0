//! The hot path and the bulk-scanning API.
//!
//! Most packets of a file lie whole inside one page, on pages where no limit, gap or end
//! trimming applies. For those the iterator takes a hot path ([`State::next_in_page`]) that
//! builds the block with plain arithmetic and leaves the per-page bookkeeping to one call
//! ([`State::sync_fast`]) before the general path runs again; [`OpusReader::for_each_block`]
//! goes further, walking such a page's lacing values in one loop and giving compact
//! [`BlockRecord`]s instead of [`Block`]s.

use std::borrow::Cow;

use super::packet::frames;
use super::reader::PAGE_MAX_BODY;
use super::state::State;
use super::timestamps::PAGE_MAX_SAMPLES;
use super::{OpusReader, PacketInfo, PacketKind, Toc, SAMPLE_RATE};
use crate::{Block, BlockKind, Detail, Place, Result};

impl<'a> State<'a> {
    /// Lets the hot path run on the current page when its simplifications hold there: no
    /// packet is being assembled, the headers are behind, no gap is to be reported, no packet
    /// inside a page can reach the block-size limit, no end trimming applies, and no position
    /// of a packet completed on this page can overflow, so that plain arithmetic gives what
    /// [`State::audio_block`]'s saturating arithmetic would. Called after every call of the
    /// general path.
    pub(super) fn refresh_fast(&mut self) {
        self.fast_end = 0;
        self.fast_start = self.index;
        let link = &self.link;
        if self.done
            || self.pending.is_some()
            || link.packets < 2
            || link.gap
            || self.options.limits.max_block_bytes < PAGE_MAX_BODY
        {
            return;
        }
        let Some(state) = &self.page else { return };
        if state.end_limit.is_some() {
            return;
        }
        // Every packet completed on this page starts and ends in [pos, pos + PAGE_MAX_SAMPLES].
        // audio_block's plain path needs the end, base + start, base + start - pre_skip and
        // that plus the duration to fit: check them at the extremes of that range.
        let pos = state.pos;
        let fits = pos.checked_add(PAGE_MAX_SAMPLES).is_some()
            && link.base.checked_add(pos).is_some_and(|from_base| {
                from_base.checked_sub(link.pre_skip).is_some()
                    && from_base.checked_add(PAGE_MAX_SAMPLES).is_some()
            });
        if !fits {
            return;
        }
        self.out_base = link.base - link.pre_skip;
        let page = &state.page;
        self.fast_info = PacketInfo {
            packet: PacketKind::Audio,
            toc: None,
            frames: None,
            duration: 0,
            trimmed: 0,
            serial: page.serial(),
            link: link.index,
            page_sequence: page.sequence(),
            granule_position: page.granule_position(),
            spans_pages: false,
            after_gap: false,
        };
        self.fast_end = self.options.limits.max_blocks;
    }

    /// The bookkeeping of the blocks the hot path yielded since [`State::refresh_fast`], done
    /// once before the general path runs: what [`State::audio_block`] does per packet.
    pub(super) fn sync_fast(&mut self) {
        let yielded = self.index - self.fast_start;
        self.fast_end = 0;
        self.fast_start = self.index;
        if yielded == 0 {
            return;
        }
        self.link.packets += yielded;
        if let Some(state) = &self.page {
            self.link.next_pos = Some(state.pos);
            let granule = state.page.granule_position();
            if granule != -1 {
                self.link.resync = Some(granule);
            }
            self.output_end = self.out_base + state.pos;
        }
    }

    /// The hot path, taken for every audio packet that lies whole inside the page being read
    /// while [`State::refresh_fast`] allows it: a valid packet on a page where no limit, gap or
    /// end trimming applies. It peeks at the next piece of the page and builds the block that
    /// [`State::complete_packet`] would, leaving the per-page bookkeeping to
    /// [`State::sync_fast`]; `None` (anything else) leaves the reader as it was, for the
    /// general path.
    #[inline(always)]
    pub(super) fn next_in_page(&mut self) -> Option<Block<'a>> {
        if self.index >= self.fast_end {
            return None;
        }
        let state = self.page.as_mut()?;
        let (piece, seg, body_pos) = state.pieces.peek_complete()?;
        // `frames`, not `parse_packet`: its layout stays in registers, where a `Result` written
        // to memory field by field and read back whole stalls store forwarding.
        let toc = Toc::new(*piece.data.first()?);
        let frames = frames(toc, piece.data, self.link.single_stream)?;
        state.pieces.skip_to(seg, body_pos);
        let duration = toc.samples(frames.count);
        let start = state.pos;
        state.pos = start + i64::from(duration);
        let page = &state.page;
        let index = self.index;
        self.index += 1;
        Some(Block {
            index,
            offset: page.body_offset() + piece.start as u64,
            bit: 0,
            data: Cow::Borrowed(piece.data),
            bits: None,
            kind: BlockKind::Audio,
            place: Place::Time {
                start: self.out_base + start,
                duration,
                rate: SAMPLE_RATE,
            },
            detail: Detail::Opus(PacketInfo {
                toc: Some(toc),
                frames: Some(frames),
                duration,
                ..self.fast_info
            }),
        })
    }

    /// The hot path over the rest of the page in one loop, for [`OpusReader::for_each_block`]:
    /// gives `f` the record of every packet that [`State::next_in_page`] would yield, one after
    /// the other, and stops where it would return `None`. The walk's position, the block index
    /// and the time position stay in registers and are written back once.
    #[inline(always)]
    pub(super) fn for_each_in_page<F: FnMut(BlockRecord<'a>)>(&mut self, f: &mut F) {
        let mut index = self.index;
        let Some(allowed) = self.fast_end.checked_sub(index).filter(|&n| n > 0) else {
            return;
        };
        let Some(state) = self.page.as_mut() else {
            return;
        };
        let single = self.link.single_stream;
        let body_offset = state.page.body_offset();
        let (table, body, mut seg, mut body_pos) = state.pieces.parts();
        // Each packet takes at least one lacing value: with the table cut after `allowed` more
        // of them, the loop cannot pass the block limit, and needs no count of its own. A
        // packet cut off by it goes to the general path, as one continued on the next page.
        let allowed = usize::try_from(allowed).unwrap_or(usize::MAX);
        let table = table
            .get(..seg.saturating_add(allowed).min(table.len()))
            .unwrap_or(table);
        // The output sample position (granule-domain position plus out_base) of the next packet.
        let mut start = self.out_base + state.pos;
        'packets: loop {
            // The packet's lacing values: 255 continues it, less ends it (RFC 3533 §5); a run
            // that reaches the end of the table continues on the next page (general path).
            let mut next_seg = seg;
            let mut len = 0usize;
            loop {
                let Some(&lacing) = table.get(next_seg) else {
                    break 'packets;
                };
                next_seg += 1;
                len += usize::from(lacing);
                if lacing < 255 {
                    break;
                }
            }
            let Some(data) = body.get(body_pos..body_pos + len) else {
                break;
            };
            // As in next_in_page; an invalid packet is left to the general path, which reports it.
            let Some(&byte) = data.first() else {
                break;
            };
            let toc = Toc::new(byte);
            let Some(frames) = frames(toc, data, single) else {
                break;
            };
            let duration = toc.samples(frames.count);
            f(BlockRecord {
                index,
                offset: body_offset + body_pos as u64,
                data,
                kind: BlockKind::Audio,
                start,
                duration,
                toc: Some(toc),
            });
            seg = next_seg;
            body_pos += len;
            index += 1;
            start += i64::from(duration);
        }
        state.pieces.skip_to(seg, body_pos);
        state.pos = start - self.out_base;
        self.index = index;
    }
}

/// One block of an Ogg Opus stream as [`OpusReader::for_each_block`] gives it: the facts of the
/// iterator's [`Block`] that a scan reads (index, offset, bytes, kind, time and duration, TOC),
/// in 48 bytes, with times kept in samples and converted on demand.
///
/// The fields equal the iterator's block's: [`BlockRecord::place`] is its [`Block::place`],
/// `toc` the [`PacketInfo::toc`] of its [`Detail::Opus`]. The other facts of [`PacketInfo`]
/// (frame layout, end trimming, serial, link, page sequence and granule position, whether the
/// packet spans pages or follows a gap) are the iterator's only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BlockRecord<'b> {
    /// Position of the block in the file's sequence of blocks, from 0 ([`Block::index`]).
    pub index: u64,
    /// Byte offset in the file of the packet's first byte ([`Block::offset`]).
    pub offset: u64,
    /// The packet's bytes. Borrowed from the input for a packet inside one page; for a packet
    /// assembled from several pages, from the reader's buffer for the duration of the call.
    pub data: &'b [u8],
    /// [`BlockKind::Audio`], or [`BlockKind::Metadata`] for `OpusHead` and `OpusTags`.
    pub kind: BlockKind,
    /// Audio: the index of the block's first sample in the decoded output at 48 kHz, negative
    /// inside the pre-skip (the `start` of [`Place::Time`]); 0 for metadata.
    pub start: i64,
    /// Audio: the samples at 48 kHz the block plays, after end trimming (the `duration` of
    /// [`Place::Time`]); 0 for metadata.
    pub duration: u32,
    /// The TOC byte (audio only).
    pub toc: Option<Toc>,
}

impl BlockRecord<'_> {
    /// When the block plays, as the iterator's [`Block::place`]: [`Place::Time`] at
    /// [`SAMPLE_RATE`] for audio, [`Place::None`] for metadata.
    #[inline]
    pub fn place(&self) -> Place {
        match self.kind {
            BlockKind::Audio => Place::Time {
                start: self.start,
                duration: self.duration,
                rate: SAMPLE_RATE,
            },
            _ => Place::None,
        }
    }

    /// Start time in seconds (audio only).
    pub fn time_seconds(&self) -> Option<f64> {
        self.place().time_seconds()
    }

    /// Duration in seconds (audio only).
    pub fn duration_seconds(&self) -> Option<f64> {
        self.place().duration_seconds()
    }

    /// Bytes of the block.
    #[inline]
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the block has no bytes (never, for a valid stream).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The record of an iterator's block of this reader.
    fn of_block<'b>(block: &'b Block<'_>) -> BlockRecord<'b> {
        let (start, duration) = match block.place {
            Place::Time {
                start, duration, ..
            } => (start, duration),
            _ => (0, 0),
        };
        let toc = match &block.detail {
            Detail::Opus(info) => info.toc,
            _ => None,
        };
        BlockRecord {
            index: block.index,
            offset: block.offset,
            data: &block.data,
            kind: block.kind,
            start,
            duration,
            toc,
        }
    }
}

impl<'a> OpusReader<'a> {
    /// Gives `f` a [`BlockRecord`] of every remaining block, in order, and returns the error
    /// that stops the reader, if one does: the API for scanning whole files.
    ///
    /// The records and the error are exactly what the iterator would yield from here on (the
    /// two can be mixed: blocks taken through [`Iterator::next`] are not visited again), and
    /// [`OpusReader::regions`] ends the same. What it saves is the iterator's cost per packet:
    /// for the packets that lie whole inside a page, which are most of a file, one loop per page
    /// walks the lacing values, checks the TOC and advances the time stamps, with no [`Block`]
    /// built; everything else (page headers and their CRC, `OpusHead` and `OpusTags`, packets
    /// spanning pages, gaps, end trimming, limits, errors) goes through the iterator's own code.
    /// A block given to `f` before an error stands, as with the iterator.
    ///
    /// ```
    /// # fn scan(file: &[u8]) -> cff_blocks::Result<()> {
    /// use cff_blocks::{opus::OpusReader, BlockKind, Options};
    ///
    /// let mut reader = OpusReader::new(file, &Options::default())?;
    /// let (mut packets, mut samples) = (0u64, 0u64);
    /// reader.for_each_block(|block| {
    ///     if block.kind == BlockKind::Audio {
    ///         packets += 1;
    ///         samples += u64::from(block.duration);
    ///     }
    /// })?;
    /// println!("{packets} audio packets, {} s", samples as f64 / 48_000.0);
    /// # Ok(()) }
    /// ```
    #[inline]
    pub fn for_each_block<F>(&mut self, mut f: F) -> Result<()>
    where
        F: FnMut(BlockRecord<'_>),
    {
        loop {
            self.state.for_each_in_page(&mut f);
            match self.next_general_or_page() {
                Some(Ok(Some(block))) => f(BlockRecord::of_block(&block)),
                Some(Ok(None)) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            }
        }
    }

    /// The hot path alone: the next block if it is an audio packet inside the current page
    /// that the hot path may yield.
    #[inline(always)]
    pub(crate) fn next_in_page(&mut self) -> Option<Block<'a>> {
        self.state.next_in_page()
    }

    /// [`OpusReader::next_general`] for [`OpusReader::for_each_block`]: also returns, with
    /// `Some(Ok(None))`, right after loading a page of the stream, so that the page loop can
    /// take its first packet where the hot path may run.
    #[inline(never)]
    fn next_general_or_page(&mut self) -> Option<Result<Option<Block<'a>>>> {
        self.general_step(State::next_block_or_page::<true>)
    }
}
