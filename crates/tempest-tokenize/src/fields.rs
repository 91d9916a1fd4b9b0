//! Codec fields as ids: each field of a block's header and side information becomes one id
//! that stands for its value, in an id range of its own, instead of the bytes that the field
//! straddles.
//!
//! Ids 0–255 are bytes and 256 is padding ([`PAD_ID`](crate::PAD_ID)); field ids follow from
//! [`FIELD_BASE`], field after field, up to [`FIELDS_VOCAB_SIZE`]. A field whose values are
//! many (12-bit `part2_3_length`) is quantised into at most a few hundred ids; every value keeps
//! its own id where that is cheap.
//!
//! An MP3 frame gives, in this order: its bitrate index and `main_data_begin` (÷ 4), then for
//! each granule and channel ([`MP3_GRANULE_FIELDS`] ids): `part2_3_length` (÷ 16),
//! `big_values`, `global_gain`, `scalefac_compress`, the block kind (window switching, block
//! type, mixed), the three table selects, the three subblock gains, the two region counts,
//! the three flags (preflag, scalefac_scale, count1table_select) and `scfsi`. An Ogg Opus
//! packet gives its TOC's configuration, stereo flag and frame-count code, its frame count
//! and its length in bytes (÷ 4). JPEG MCUs have no fields here yet.

use cff_blocks::mp3::SideInfo;
use cff_blocks::opus::PacketInfo;

/// The first field id: after the 256 bytes and the padding id.
pub const FIELD_BASE: u32 = 257;

/// One kind of field: its name and how many ids it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// The name, as the standard spells it.
    pub name: &'static str,
    /// Number of ids (values after quantisation).
    pub size: u32,
}

/// Every field, in id order.
pub const FIELDS: [Field; 22] = [
    Field {
        name: "mp3.bitrate_index",
        size: 16,
    },
    Field {
        name: "mp3.main_data_begin/4",
        size: 128,
    },
    Field {
        name: "mp3.part2_3_length/16",
        size: 256,
    },
    Field {
        name: "mp3.big_values",
        size: 289,
    },
    Field {
        name: "mp3.global_gain",
        size: 256,
    },
    Field {
        name: "mp3.scalefac_compress",
        size: 512,
    },
    Field {
        name: "mp3.block_kind",
        size: 9,
    },
    Field {
        name: "mp3.table_select[0]",
        size: 32,
    },
    Field {
        name: "mp3.table_select[1]",
        size: 32,
    },
    Field {
        name: "mp3.table_select[2]",
        size: 32,
    },
    Field {
        name: "mp3.subblock_gain[0]",
        size: 8,
    },
    Field {
        name: "mp3.subblock_gain[1]",
        size: 8,
    },
    Field {
        name: "mp3.subblock_gain[2]",
        size: 8,
    },
    Field {
        name: "mp3.region0_count",
        size: 16,
    },
    Field {
        name: "mp3.region1_count",
        size: 8,
    },
    Field {
        name: "mp3.flags",
        size: 8,
    },
    Field {
        name: "mp3.scfsi",
        size: 16,
    },
    Field {
        name: "opus.config",
        size: 32,
    },
    Field {
        name: "opus.stereo",
        size: 2,
    },
    Field {
        name: "opus.code",
        size: 4,
    },
    Field {
        name: "opus.frames",
        size: 49,
    },
    Field {
        name: "opus.bytes/4",
        size: 256,
    },
];

/// Ids in all: bytes, padding and every field's range.
pub const FIELDS_VOCAB_SIZE: usize = FIELD_STARTS[FIELDS.len()] as usize;

/// The first id of each field, and one past the last field's: computed once, at compile time.
const FIELD_STARTS: [u32; FIELDS.len() + 1] = field_starts();

const fn field_starts() -> [u32; FIELDS.len() + 1] {
    let mut starts = [FIELD_BASE; FIELDS.len() + 1];
    let mut i = 0;
    while i < FIELDS.len() {
        starts[i + 1] = starts[i] + FIELDS[i].size;
        i += 1;
    }
    starts
}

/// Ids per MP3 granule and channel.
pub const MP3_GRANULE_FIELDS: usize = 15;

/// The id of value `value` of field `index` (values past the range take its last id).
fn id(index: usize, value: u32) -> u16 {
    let v = value.min(FIELDS[index].size - 1);
    (FIELD_STARTS[index] + v) as u16
}

/// Appends the field ids of an MP3 frame with header byte 2 `header2` (bitrate index in its
/// top four bits) and side information `side`, each `global_gain` moved by `gain_offset`
/// quantiser steps (clamped to 0–255): a step is 2^(1/4) in amplitude, 1.5 dB, so one offset
/// for all frames of a clip reads it as if it were that much louder or quieter
/// ([`crate::TokenizerConfig::gain_jitter`]).
pub fn mp3_field_ids(header2: u8, side: &SideInfo, gain_offset: i32, out: &mut Vec<u16>) {
    out.push(id(0, u32::from(header2 >> 4)));
    out.push(id(1, u32::from(side.main_data_begin) / 4));
    for (k, g) in side.granules().enumerate() {
        let ch = k % usize::from(side.channels.max(1));
        out.push(id(2, u32::from(g.part2_3_length) / 16));
        out.push(id(3, u32::from(g.big_values)));
        let gain = (i32::from(g.global_gain) + gain_offset).clamp(0, 255);
        out.push(id(4, gain as u32));
        out.push(id(5, u32::from(g.scalefac_compress)));
        let kind = if g.window_switching {
            1 + 2 * u32::from(g.block_type) + u32::from(g.mixed_block)
        } else {
            0
        };
        out.push(id(6, kind.min(8)));
        for (j, &t) in g.table_select.iter().enumerate() {
            out.push(id(7 + j, u32::from(t)));
        }
        for (j, &s) in g.subblock_gain.iter().enumerate() {
            out.push(id(10 + j, u32::from(s)));
        }
        out.push(id(13, u32::from(g.region0_count)));
        out.push(id(14, u32::from(g.region1_count)));
        let flags = u32::from(g.preflag)
            | u32::from(g.scalefac_scale) << 1
            | u32::from(g.count1table_select) << 2;
        out.push(id(15, flags));
        out.push(id(16, u32::from(side.scfsi[ch.min(1)])));
    }
}

/// Appends the field ids of an Ogg Opus audio packet (`packet`, TOC byte first).
pub fn opus_field_ids(info: &PacketInfo, packet: &[u8], out: &mut Vec<u16>) {
    let toc = packet.first().copied().unwrap_or(0);
    out.push(id(17, u32::from(toc >> 3)));
    out.push(id(18, u32::from((toc >> 2) & 1)));
    out.push(id(19, u32::from(toc & 3)));
    out.push(id(20, info.frames.map_or(0, |f| u32::from(f.count))));
    out.push(id(21, (packet.len() / 4) as u32));
}

/// The name of field id `id`, or `None` for a byte or the padding id.
pub fn field_name(id: u32) -> Option<&'static str> {
    FIELDS
        .iter()
        .zip(FIELD_STARTS.windows(2))
        .find(|(_, range)| (range[0]..range[1]).contains(&id))
        .map(|(f, _)| f.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_ranges_do_not_overlap_and_fit_u16() {
        let mut seen = std::collections::HashSet::new();
        for (i, f) in FIELDS.iter().enumerate() {
            for v in 0..f.size {
                assert!(seen.insert(id(i, v)), "{} {v}", f.name);
                assert_eq!(field_name(u32::from(id(i, v))), Some(f.name));
            }
            // Values past the range clamp to the last id.
            assert_eq!(id(i, f.size + 5), id(i, f.size - 1));
        }
        assert_eq!(seen.len() + FIELD_BASE as usize, FIELDS_VOCAB_SIZE);
        assert!(FIELDS_VOCAB_SIZE < usize::from(u16::MAX));
        assert_eq!(field_name(255), None);
        assert_eq!(field_name(256), None);
        assert_eq!(field_name(FIELDS_VOCAB_SIZE as u32), None);
    }
}
