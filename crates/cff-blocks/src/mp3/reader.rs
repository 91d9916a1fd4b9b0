//! The reader: the first frame, the hot path over confirmed frames, resynchronisation, tags and
//! truncation at the general path.

use std::borrow::Cow;
use std::fmt;

use super::header::{FrameHeader, HeaderError, Layer};
use super::stream::{agrees, Stream};
use super::tags::{ape_footer_len, ape_header_len, id3v2_footer_len, id3v2_len, MAX_TRAILING_TAGS};
use super::vbr::vbr_header;
use super::{word_at, FrameInfo};
use crate::{Block, BlockKind, Detail, Error, Format, Options, Place, Region, RegionKind, Result};

/// Reads blocks (frames) from an MP3 file held in memory.
pub struct Mp3Reader<'a> {
    data: &'a [u8],
    /// Next byte to look at.
    pos: usize,
    /// Where the audio ends: the first tag at the end, or the end of the data.
    audio_end: usize,
    regions: Vec<Region>,
    /// Tags found at the end, reported once the frames are read.
    end_regions: Vec<Region>,
    /// The stream's first header and what follows from it, once it is found: every frame must
    /// agree with it.
    stream: Option<Stream>,
    /// The header word at `pos` and its frame's length, when the last frame yielded was
    /// confirmed by it: a header of the stream, not yet itself confirmed. The hot path in
    /// [`Mp3Reader::next`] starts there; a length of 0 sends it down the general path.
    ahead: (u32, usize),
    /// The hot path yields blocks while `index` is below this: `max_blocks`, or 0 where a frame
    /// of the stream could exceed `max_block_bytes` (the general path then says so).
    fast_blocks: u64,
    index: u64,
    next_sample: i64,
    /// An error found when the reader was opened, yielded first.
    pending: Option<Error>,
    done: bool,
    max_blocks: u64,
    max_block_bytes: u64,
}

impl<'a> Mp3Reader<'a> {
    /// Opens a reader over a whole file held in memory. Tags are located here; frames are
    /// found as the iterator advances.
    pub fn new(data: &'a [u8], options: &Options) -> Result<Self> {
        let limits = &options.limits;
        if data.len() as u64 > limits.max_file_bytes {
            return Err(Error::Limit {
                offset: 0,
                what: "max_file_bytes",
                limit: limits.max_file_bytes,
                found: data.len() as u64,
            });
        }
        let mut reader = Mp3Reader {
            data,
            pos: 0,
            audio_end: data.len(),
            regions: Vec::new(),
            end_regions: Vec::new(),
            stream: None,
            ahead: (0, 0),
            fast_blocks: 0,
            index: 0,
            next_sample: 0,
            pending: None,
            done: false,
            max_blocks: limits.max_blocks,
            max_block_bytes: limits.max_block_bytes,
        };
        reader.find_leading_tags();
        reader.find_trailing_tags();
        Ok(reader)
    }

    /// Ranges of the input seen so far that are not part of any block. Tags at the end of the
    /// file are added when the last frame has been read.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// The first header of the stream, once the first frame has been found: every frame agrees
    /// with it in version, layer, sampling frequency and channel count.
    pub fn stream_header(&self) -> Option<FrameHeader> {
        self.stream.map(|s| FrameHeader(s.key))
    }

    /// ID3v2 tags (several may follow each other) and an APE tag at the start of the file.
    fn find_leading_tags(&mut self) {
        loop {
            let rest = self.data.get(self.pos..).unwrap_or_default();
            let (len, kind) = if let Some(len) = id3v2_len(rest) {
                (len, RegionKind::Id3v2)
            } else if let Some(len) = ape_header_len(self.data, self.pos) {
                (len, RegionKind::Ape)
            } else {
                return;
            };
            if len > rest.len() as u64 {
                self.pending = Some(Error::Truncated {
                    format: Format::Mp3,
                    offset: self.pos as u64,
                    what: if kind == RegionKind::Ape {
                        "APE tag"
                    } else {
                        "ID3v2 tag"
                    },
                    needed: len,
                    available: rest.len() as u64,
                });
                return;
            }
            if let Err(e) = self.push_region(self.pos, len as usize, kind) {
                self.pending = Some(e);
                return;
            }
            self.pos += len as usize;
        }
    }

    /// ID3v1 (the last 128 bytes, starting `TAG`), APE (found by its footer) and an appended
    /// ID3v2.4 tag (found by its footer), in any order, working backwards from the end.
    fn find_trailing_tags(&mut self) {
        let start = self.pos;
        let mut end = self.data.len();
        // A real file ends with at most an APE tag and an ID3v1 tag (and perhaps a Lyrics3 or
        // an appended ID3v2); more is not a tag layout but data that looks like one.
        for _ in 0..MAX_TRAILING_TAGS {
            let room = (end - start) as u64;
            let (len, kind) =
                if room >= 128 && self.data.get(end - 128..end - 125) == Some(b"TAG".as_slice()) {
                    (128, RegionKind::Id3v1)
                } else if let Some(len) = ape_footer_len(self.data, end).filter(|&n| n <= room) {
                    (len, RegionKind::Ape)
                } else if let Some(len) = id3v2_footer_len(self.data, end).filter(|&n| n <= room) {
                    (len, RegionKind::Id3v2)
                } else {
                    break;
                };
            end -= len as usize;
            self.end_regions.push(Region {
                offset: end as u64,
                len,
                kind,
            });
        }
        self.end_regions.reverse();
        self.audio_end = end;
    }

    /// Adds a region. Skipped bytes that touch skipped bytes of the same kind extend the
    /// previous region; tags stay one region each. Regions count against
    /// [`Limits::max_blocks`](crate::Limits::max_blocks), so that a file of tiny tags or of
    /// frames each followed by a byte of garbage cannot grow the list without bound.
    fn push_region(&mut self, offset: usize, len: usize, kind: RegionKind) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        if let Some(last) = self.regions.last_mut() {
            if kind.is_garbage() && last.kind == kind && last.offset + last.len == offset as u64 {
                last.len += len as u64;
                return Ok(());
            }
        }
        if self.regions.len() as u64 >= self.max_blocks {
            return Err(Error::Limit {
                offset: offset as u64,
                what: "max_blocks",
                limit: self.max_blocks,
                found: self.regions.len() as u64 + 1,
            });
        }
        self.regions.push(Region {
            offset: offset as u64,
            len: len as u64,
            kind,
        });
        Ok(())
    }

    /// Length of the frame at `pos` if its header belongs to `stream`.
    #[inline]
    fn stream_frame_at(&self, pos: usize, stream: &Stream) -> Option<(u32, usize)> {
        let word = word_at(self.data, pos)?;
        let len = stream.frame_len(word);
        (len != 0).then_some((word, len))
    }

    /// Whether a frame of the stream `key` that ends at `end` is confirmed: it ends where the
    /// audio ends, or a header of the stream follows it.
    #[inline]
    fn confirmed_end(&self, end: usize, stream: &Stream) -> bool {
        end == self.audio_end
            || (end < self.audio_end && self.stream_frame_at(end, stream).is_some())
    }

    /// Candidate sync positions in `from..to`: bytes 0xFF followed by three set bits.
    fn syncs(&self, from: usize, to: usize) -> impl Iterator<Item = usize> + '_ {
        let to = to.min(self.audio_end);
        let window = self.data.get(from..to).unwrap_or_default();
        window
            .iter()
            .enumerate()
            .filter(|&(_, &b)| b == 0xFF)
            .map(move |(i, _)| from + i)
            .filter(move |&p| self.data.get(p + 1).is_some_and(|b| b & 0xE0 == 0xE0))
    }

    /// The first frame of the stream `key` in `from..to` that is followed by another frame of
    /// the stream (or ends where the audio ends) and fits before the end of the audio.
    fn find_confirmed(&self, from: usize, to: usize, stream: &Stream) -> Option<(usize, u32)> {
        self.syncs(from, to).find_map(|p| {
            let (word, len) = self.stream_frame_at(p, stream)?;
            self.confirmed_end(p + len, stream).then_some((p, word))
        })
    }

    /// Finds the first frame of the stream from `self.pos`, any layer, and fixes the stream's
    /// parameters. Skipped bytes become garbage.
    fn find_first(&mut self) -> Result<Option<(usize, u32)>> {
        let from = self.pos;
        // Each free-format candidate costs a scan of up to 4 KiB; a budget keeps a file full of
        // such headers linear. A real free-format stream is confirmed at its first frame.
        let mut free_format_budget = 16u32;
        let found = self.syncs(from, self.audio_end).find_map(|p| {
            let word = word_at(self.data, p)?;
            match FrameHeader::parse(word) {
                Ok(h) => {
                    let end = p + usize::from(h.frame_bytes());
                    let ok = end == self.audio_end
                        || word_at(self.data, end).is_some_and(|next| {
                            end < self.audio_end
                                && agrees(next, word)
                                && FrameHeader::parse(next).is_ok()
                        });
                    ok.then_some(Ok((p, word, h)))
                }
                Err(HeaderError::FreeFormat) if free_format_budget > 0 => {
                    free_format_budget -= 1;
                    self.free_format_confirmed(p, word).then_some(Err(p))
                }
                Err(_) => None,
            }
        });
        match found {
            None => {
                let end = self.audio_end;
                self.push_region(from, end - from, RegionKind::Garbage)?;
                self.pos = end;
                Err(Error::Malformed {
                    format: Format::Mp3,
                    offset: from as u64,
                    expected: "an MPEG audio frame followed by another",
                    found: format!("none in {} bytes", end - from),
                })
            }
            Some(Err(p)) => {
                self.push_region(from, p - from, RegionKind::Garbage)?;
                Err(Error::Unsupported {
                    format: Format::Mp3,
                    offset: p as u64,
                    what: "free-format bitrate (bitrate index 0)".into(),
                })
            }
            Some(Ok((p, word, h))) => {
                self.push_region(from, p - from, RegionKind::Garbage)?;
                if h.layer() != Layer::III {
                    return Err(Error::Unsupported {
                        format: Format::Mp3,
                        offset: p as u64,
                        what: format!("{} {}", h.version(), h.layer().name()),
                    });
                }
                let stream = Stream::new(word);
                self.fast_blocks = if u64::from(stream.max_frame_bytes()) <= self.max_block_bytes {
                    self.max_blocks
                } else {
                    0
                };
                self.stream = Some(stream);
                Ok(Some((p, word)))
            }
        }
    }

    /// A free-format header counts as a stream when two more headers with the same sync,
    /// version, layer, protection, bitrate index and sampling frequency follow at a constant
    /// distance, give or take the padding byte: a free-format stream keeps one bitrate (ISO
    /// 11172-3 2.4.2.3), so its frames keep one length. The first must lie within 4 KiB, the
    /// longest free-format frame decoders accept (640 kbit/s at 32 kHz is 2880 bytes).
    fn free_format_confirmed(&self, p: usize, word: u32) -> bool {
        const SAME: u32 = 0xFFFF_FC00;
        let same = |at: usize| word_at(self.data, at).is_some_and(|w| w & SAME == word & SAME);
        self.syncs(p + 4 + 9, p + 4096).any(|q| {
            let third = q + (q - p);
            same(q) && (same(third) || same(third - 1) || same(third + 1))
        })
    }

    /// Finds the next frame, its offset and header word: `Ok(None)` at the end of the audio.
    fn next_frame(&mut self) -> Result<Option<(usize, u32)>> {
        loop {
            let Some(stream) = self.stream else {
                // Also where no byte is left: a file without frames is malformed.
                return self.find_first();
            };
            let pos = self.pos;
            let end = self.audio_end;
            if pos >= end {
                return Ok(None);
            }
            // The common path: a header of the stream where the last frame ended, and another
            // where this one ends. Only header words are read.
            if let Some((word, len)) = self.stream_frame_at(pos, &stream) {
                let frame_end = pos + len;
                if self.confirmed_end(frame_end, &stream) {
                    return Ok(Some((pos, word)));
                }
                // No successor. If a confirmed frame starts inside this one, this one was cut
                // short: its bytes are garbage.
                if let Some((q, next)) = self.find_confirmed(pos + 1, frame_end, &stream) {
                    self.push_region(pos, q - pos, RegionKind::Garbage)?;
                    return Ok(Some((q, next)));
                }
                if frame_end <= end {
                    // Whole, followed by garbage or by the last bytes of the file.
                    return Ok(Some((pos, word)));
                }
                return Err(Error::Truncated {
                    format: Format::Mp3,
                    offset: pos as u64,
                    what: "MP3 frame",
                    needed: len as u64,
                    available: (end - pos) as u64,
                });
            }
            // An ID3v2 tag between frames (concatenated files).
            if let Some(len) = id3v2_len(self.data.get(pos..end).unwrap_or_default()) {
                if len <= (end - pos) as u64 {
                    self.push_region(pos, len as usize, RegionKind::Id3v2)?;
                    self.pos = pos + len as usize;
                    continue;
                }
            }
            // Resynchronise on a frame of the stream that another frame confirms.
            match self.find_confirmed(pos + 1, end, &stream) {
                Some((q, word)) => {
                    self.push_region(pos, q - pos, RegionKind::Garbage)?;
                    return Ok(Some((q, word)));
                }
                None => {
                    self.push_region(pos, end - pos, RegionKind::Trailing)?;
                    self.pos = end;
                    return Ok(None);
                }
            }
        }
    }

    /// Builds the block for the frame at `pos` whose validated header is `word`.
    fn block(&mut self, pos: usize, word: u32) -> Result<Block<'a>> {
        let header = FrameHeader(word);
        let len = usize::from(header.frame_bytes());
        if len as u64 > self.max_block_bytes {
            return Err(Error::Limit {
                offset: pos as u64,
                what: "max_block_bytes",
                limit: self.max_block_bytes,
                found: len as u64,
            });
        }
        if self.index >= self.max_blocks {
            return Err(Error::Limit {
                offset: pos as u64,
                what: "max_blocks",
                limit: self.max_blocks,
                found: self.index + 1,
            });
        }
        let frame = self
            .data
            .get(pos..pos + len)
            .ok_or_else(|| Error::Truncated {
                format: Format::Mp3,
                offset: pos as u64,
                what: "MP3 frame",
                needed: len as u64,
                available: self.data.len().saturating_sub(pos) as u64,
            })?;
        let main_data_begin = match &self.stream {
            Some(stream) => stream.main_data_begin(frame, word),
            None => 0,
        };
        // Only the first frame of the stream may be a Xing/Info/VBRI frame.
        let vbr = if self.index == 0 {
            vbr_header(frame, &header)
        } else {
            None
        };
        let (kind, place) = if vbr.is_some() {
            (BlockKind::Metadata, Place::None)
        } else {
            let place = Place::Time {
                start: self.next_sample,
                duration: u32::from(header.samples()),
                rate: header.sample_rate(),
            };
            self.next_sample += i64::from(header.samples());
            (BlockKind::Audio, place)
        };
        let block = Block {
            index: self.index,
            offset: pos as u64,
            bit: 0,
            data: Cow::Borrowed(frame),
            bits: None,
            kind,
            place,
            detail: Detail::Mp3(FrameInfo {
                header,
                main_data_begin,
                side_info_len: header.side_info_len() as u8,
                vbr,
            }),
        };
        self.index += 1;
        self.pos = pos + len;
        Ok(block)
    }
}

impl fmt::Debug for Mp3Reader<'_> {
    // The input is not printed: it may be a whole file.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mp3Reader")
            .field("len", &self.data.len())
            .field("pos", &self.pos)
            .field("audio_end", &self.audio_end)
            .field("stream", &self.stream_header())
            .field("blocks", &self.index)
            .field("regions", &self.regions.len())
            .field("done", &self.done)
            .finish()
    }
}

impl<'a> Mp3Reader<'a> {
    /// The hot path, taken for every frame after the first while the stream runs without a
    /// gap: the header at `pos` is `ahead`, already checked when it confirmed the last frame;
    /// if the word where its frame ends is a header of the stream too (or the audio ends
    /// there), the frame is confirmed and becomes a block. One header word read, one table
    /// lookup. `None` (no successor, a limit reached) sends the caller down the general path,
    /// which looks at `pos` again from scratch and gives the same answer it always did.
    #[inline(always)]
    pub(crate) fn next_confirmed(&mut self) -> Option<Block<'a>> {
        let (word, len) = self.ahead;
        if len == 0 {
            return None;
        }
        let stream = self.stream.as_ref()?;
        let pos = self.pos;
        let end = pos + len;
        let next = if end < self.audio_end {
            let next = word_at(self.data, end)?;
            let next_len = stream.frame_len(next);
            if next_len == 0 {
                return None;
            }
            (next, next_len)
        } else if end == self.audio_end {
            (0, 0)
        } else {
            return None;
        };
        if self.index >= self.fast_blocks {
            return None;
        }
        let frame = self.data.get(pos..end)?;
        let block = Block {
            index: self.index,
            offset: pos as u64,
            bit: 0,
            data: Cow::Borrowed(frame),
            bits: None,
            kind: BlockKind::Audio,
            place: Place::Time {
                start: self.next_sample,
                duration: u32::from(stream.samples),
                rate: stream.rate,
            },
            detail: Detail::Mp3(FrameInfo {
                header: FrameHeader(word),
                main_data_begin: stream.main_data_begin(frame, word),
                side_info_len: stream.side_info_len,
                vbr: None,
            }),
        };
        self.next_sample += i64::from(stream.samples);
        self.index += 1;
        self.pos = end;
        self.ahead = next;
        Some(block)
    }

    /// Everything but the hot path: the first frame, tags and garbage between frames, the end
    /// of the stream, errors.
    #[inline(never)]
    pub(crate) fn next_general(&mut self) -> Option<Result<Block<'a>>> {
        self.ahead = (0, 0);
        if self.done {
            return None;
        }
        if let Some(e) = self.pending.take() {
            self.done = true;
            return Some(Err(e));
        }
        let result = match self.next_frame() {
            Ok(Some((pos, word))) => self.block(pos, word),
            Ok(None) => {
                self.done = true;
                let tags = std::mem::take(&mut self.end_regions);
                self.regions.extend(tags);
                return None;
            }
            Err(e) => Err(e),
        };
        match &result {
            Err(_) => self.done = true,
            // Arm the hot path if a header of the stream lies where this frame ends.
            Ok(_) => {
                if let Some(stream) = &self.stream {
                    if self.pos < self.audio_end {
                        self.ahead = self.stream_frame_at(self.pos, stream).unwrap_or((0, 0));
                    }
                }
            }
        }
        Some(result)
    }
}

impl<'a> Iterator for Mp3Reader<'a> {
    type Item = Result<Block<'a>>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if let Some(block) = self.next_confirmed() {
            return Some(Ok(block));
        }
        self.next_general()
    }
}
