//! Timestamps (RFC 7845 §4): where the packets of a page start in the granule domain, how long
//! each plays, and end trimming on the last page. A block's time is its first sample's index in
//! the decoded output at 48 kHz: the granule-domain position less the pre-skip, plus the output
//! of the links before it in a chained file.

use std::borrow::Cow;

use super::state::{Link, Pending, State};
use super::{malformed, Frames, PacketInfo, Toc, MAX_PACKET_SAMPLES, SAMPLE_RATE};
use crate::ogg::{Page, Pieces};
use crate::{Block, BlockKind, Detail, Place, Result};

/// The most samples the packets completed on one page can hold: at most 255 of them (one per
/// lacing value), each of at most 120 ms (RFC 6716 §3.4 R5).
pub(super) const PAGE_MAX_SAMPLES: i64 = 255 * MAX_PACKET_SAMPLES as i64;

/// The duration in 48 kHz samples of a packet whose first two bytes are given, or `None` when
/// it has none (empty, code 3 without its count byte or with zero frames, over 120 ms).
pub(super) fn packet_samples(b0: Option<u8>, b1: Option<u8>) -> Option<u32> {
    let toc = Toc::new(b0?);
    let frames = toc.frame_count(b1)?;
    let samples = toc.samples(frames);
    (frames > 0 && samples <= MAX_PACKET_SAMPLES).then_some(samples)
}

/// Counts the audio packets completed in `pieces` and their samples; `packets` is the number of
/// packets of the stream completed before them (0 and 1 are the headers) and `pending` the
/// packet the first piece completes, if one is being assembled.
fn page_samples(packets: u64, pending: Option<&Pending>, pieces: &Pieces<'_>) -> (u32, i64) {
    let mut samples = 0i64;
    let mut audio = 0u32;
    let mut carried: &[u8] = pending.map_or(&[], |p| &p.buf);
    for (number, piece) in (packets..).zip(pieces.clone()) {
        if !piece.complete {
            break;
        }
        if number >= 2 {
            let mut bytes = carried.iter().chain(piece.data).copied();
            let (b0, b1) = (bytes.next(), bytes.next());
            samples += i64::from(packet_samples(b0, b1).unwrap_or(0));
            audio += 1;
        }
        carried = &[];
    }
    (audio, samples)
}

/// Where the first audio packet completed on `page` starts in the granule domain, and the end
/// trimming that applies to the page's packets (a granule-domain position none may play past).
/// `pieces` are the page's packets still to read, `pending` the packet the first of them
/// completes, `lost` whether pages were lost just before this one.
pub(super) fn page_start(
    link: &mut Link,
    pending: Option<&Pending>,
    page: &Page<'_>,
    pieces: &Pieces<'_>,
    lost: bool,
) -> Result<(i64, Option<i64>)> {
    // Where the first audio packet completed on this page starts (RFC 7845 §4). A page's
    // granule position counts the samples of every packet completed up to and including
    // it. Within a stream, the packets of a page therefore start at the previous page's
    // granule position (as ffmpeg counts); on the first audio page, or after lost pages,
    // they start at this page's granule position less the durations of its packets.
    if let Some(granule) = link.resync.take() {
        link.next_pos = Some(granule);
    }
    let granule = page.granule_position();
    let pos = match link.next_pos {
        Some(next) if !lost || granule == -1 => next,
        known => {
            let (audio, samples) = page_samples(link.packets, pending, pieces);
            match known {
                // No audio packet ends here (headers, or a page in the middle of a long
                // packet), or packets end on a page without a granule position (against
                // RFC 3533 §6): carry on.
                _ if audio == 0 || granule == -1 => known.unwrap_or(0),
                Some(_) => granule.saturating_sub(samples),
                None if granule >= samples => granule - samples,
                // RFC 7845 §4.5: on a first audio page that is also the last, a granule
                // position below its samples is end trimming from a start at 0.
                None if page.is_eos() => 0,
                None => {
                    return Err(malformed(
                        page.offset(),
                        "a first audio page whose granule position is at least the \
                         samples of its packets (RFC 7845 §4.5)",
                        format!("granule position {granule} for {samples} samples"),
                    ))
                }
            }
        }
    };
    // RFC 7845 §4.4: on the last page, a granule position below the end of its packets
    // trims the end; no packet plays past it.
    let end_limit = (page.is_eos() && granule != -1).then_some(granule);
    Ok((pos, end_limit))
}

impl<'a> State<'a> {
    /// The block of a valid audio packet, placed in time (RFC 7845 §4): it starts where the
    /// last packet of the page ended, lasts what its TOC says, and is cut by end trimming.
    /// `info` is filled in but for the audio facts.
    #[inline(always)]
    pub(super) fn audio_block(
        &mut self,
        offset: u64,
        data: Cow<'a, [u8]>,
        mut info: PacketInfo,
        toc: Toc,
        frames: Frames,
    ) -> Block<'a> {
        let duration = toc.samples(frames.count);
        let samples = i64::from(duration);
        let state = self.page.as_mut();
        let (start, end_limit) = state.as_ref().map_or((0, None), |s| (s.pos, s.end_limit));
        let (base, pre_skip) = (self.link.base, self.link.pre_skip);
        // Positions saturate at the ends of i64 (granule positions come from the file). Where
        // nothing overflows and no end trimming applies, plain arithmetic gives the same.
        let plain = match (
            end_limit,
            start.checked_add(samples),
            base.checked_add(start),
        ) {
            (None, Some(end), Some(from_base)) => from_base
                .checked_sub(pre_skip)
                .and_then(|out_start| Some((end, out_start, out_start.checked_add(samples)?))),
            _ => None,
        };
        let (end, played, out_start, output_end) = match plain {
            Some((end, out_start, output_end)) => (end, duration, out_start, output_end),
            None => {
                let end = start.saturating_add(samples);
                let played_end = end_limit.map_or(end, |limit| end.min(limit));
                let played = played_end.saturating_sub(start).clamp(0, samples) as u32;
                let out_start = base.saturating_add(start).saturating_sub(pre_skip);
                (
                    end,
                    played,
                    out_start,
                    out_start.saturating_add(i64::from(played)),
                )
            }
        };
        if let Some(s) = state {
            s.pos = end;
        }
        self.link.next_pos = Some(end);
        if info.granule_position != -1 {
            self.link.resync = Some(info.granule_position);
        }
        self.output_end = output_end;
        info.toc = Some(toc);
        info.frames = Some(frames);
        info.duration = duration;
        info.trimmed = duration - played;
        let block = Block {
            index: self.index,
            offset,
            bit: 0,
            data,
            bits: None,
            kind: BlockKind::Audio,
            place: Place::Time {
                start: out_start,
                duration: played,
                rate: SAMPLE_RATE,
            },
            detail: Detail::Opus(info),
        };
        self.index += 1;
        block
    }
}
