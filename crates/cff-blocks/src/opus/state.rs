//! What the reader tracks between blocks: the logical stream's link, the packet being
//! assembled across pages, the page being yielded; shared by the reader's general path, its
//! hot path (`scan.rs`) and the timestamps (`timestamps.rs`).

use super::headers::{OpusHead, OpusTags};
use super::PacketInfo;
use crate::ogg::{Page, PageWalker, Pieces};
use crate::{Options, Region};

/// A packet being assembled across pages (RFC 3533 §5: lacing value 255 at the end of a page).
#[derive(Debug)]
pub(super) struct Pending {
    /// Byte offset in the file of the packet's first byte.
    pub(super) offset: u64,
    pub(super) buf: Vec<u8>,
}

/// The state of the logical stream being read (one link of a chain).
#[derive(Debug)]
pub(super) struct Link {
    pub(super) serial: u32,
    pub(super) index: u32,
    /// Packets completed so far; 0 and 1 are the headers.
    pub(super) packets: u64,
    /// EOS seen.
    pub(super) ended: bool,
    /// A page without BOS seen: a later BOS page starts a new link (RFC 3533 §4: all BOS pages
    /// of a link come first).
    pub(super) saw_data_page: bool,
    pub(super) last_sequence: Option<u32>,
    /// Granule-domain position (pre-skip included) where the next audio packet starts.
    pub(super) next_pos: Option<i64>,
    /// The granule position of the last page on which an audio packet ended: where the next
    /// page's packets start.
    pub(super) resync: Option<i64>,
    /// Output samples of the links before this one.
    pub(super) base: i64,
    pub(super) pre_skip: i64,
    /// Whether the stream carries one Opus stream per packet, so that RFC 6716 §3.4 length
    /// checks apply.
    pub(super) single_stream: bool,
    pub(super) gap: bool,
}

impl Link {
    pub(super) fn new(serial: u32, index: u32, base: i64) -> Link {
        Link {
            serial,
            index,
            packets: 0,
            ended: false,
            saw_data_page: false,
            last_sequence: None,
            next_pos: None,
            resync: None,
            base,
            pre_skip: 0,
            single_stream: true,
            gap: false,
        }
    }
}

/// The page whose packets are being yielded.
#[derive(Debug)]
pub(super) struct PageState<'a> {
    pub(super) page: Page<'a>,
    pub(super) pieces: Pieces<'a>,
    /// Granule-domain position where the next audio packet completed on this page starts.
    pub(super) pos: i64,
    /// End trimming: no packet on this page plays past this granule-domain position.
    pub(super) end_limit: Option<i64>,
}

/// Everything the reader tracks between blocks.
#[derive(Debug)]
pub(super) struct State<'a> {
    pub(super) data: &'a [u8],
    pub(super) walker: PageWalker<'a>,
    pub(super) options: Options,
    pub(super) regions: Vec<Region>,
    pub(super) head: OpusHead,
    pub(super) tags: Option<OpusTags>,
    pub(super) link: Link,
    pub(super) page: Option<PageState<'a>>,
    pub(super) pending: Option<Pending>,
    /// Output sample position after the last audio block yielded.
    pub(super) output_end: i64,
    pub(super) index: u64,
    pub(super) done: bool,
    /// The hot path ([`State::next_in_page`]) runs while `index` is below this; 0 when it
    /// may not run. Set by [`State::refresh_fast`] after each call of the general path, and
    /// only for a page on which the hot path's simplifications hold.
    pub(super) fast_end: u64,
    /// `index` when [`State::refresh_fast`] let the hot path run: the blocks since are the hot
    /// path's, whose bookkeeping [`State::sync_fast`] does.
    pub(super) fast_start: u64,
    /// While the hot path runs: the link's base less its pre-skip, which turns a
    /// granule-domain position into an output sample position.
    pub(super) out_base: i64,
    /// While the hot path runs: what its blocks' [`PacketInfo`] share (the page's facts), for
    /// it to fill in the packet's own.
    pub(super) fast_info: PacketInfo,
}
