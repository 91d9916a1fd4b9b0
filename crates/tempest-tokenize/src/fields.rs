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

use cff_blocks::mp3::{long_band_edges, short_band_edges, FrameLines, Granule, SideInfo, LINES};
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
pub const FIELDS: [Field; 30] = [
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
    Field {
        name: "mp3.band(level,scalefac)",
        size: (BAND_LEVELS * BAND_SCALEFACS) as u32,
    },
    Field {
        name: "mp3.short_band(level,scalefac)",
        size: (BAND_LEVELS * BAND_SCALEFACS) as u32,
    },
    Field {
        name: "mp3.band_energy",
        size: ENERGY_LEVELS as u32,
    },
    Field {
        name: "mp3.short_band_energy",
        size: ENERGY_LEVELS as u32,
    },
    Field {
        name: "mp3.band_energy_peak",
        size: (ENERGY_LEVELS * PEAK_CLASSES) as u32,
    },
    Field {
        name: "mp3.short_band_energy_peak",
        size: (ENERGY_LEVELS * PEAK_CLASSES) as u32,
    },
    Field {
        name: "mp3.band_energy_halves",
        size: (ENERGY_LEVELS * ENERGY_LEVELS) as u32,
    },
    Field {
        name: "mp3.short_band_energy_halves",
        size: (ENERGY_LEVELS * ENERGY_LEVELS) as u32,
    },
];

/// Index in [`FIELDS`] of the first field that only [`crate::BlockTokens::FieldsAndLines`] uses.
const FIRST_LINE_FIELD: usize = 22;

/// Index in [`FIELDS`] of the first field that only [`crate::BlockTokens::FieldsAndEnergy`]
/// uses.
const FIRST_ENERGY_FIELD: usize = 24;

/// Index in [`FIELDS`] of the first field that only [`crate::BlockTokens::FieldsAndEnergyPeaks`]
/// uses.
const FIRST_PEAK_FIELD: usize = 26;

/// Index in [`FIELDS`] of the first field that only
/// [`crate::BlockTokens::FieldsAndPackedHalves`] uses.
const FIRST_HALVES_FIELD: usize = 28;

/// Long scalefactor bands of a granule (the last, above the highest scalefactor band, too).
pub const LONG_BANDS: usize = 22;
/// Short scalefactor bands of each window.
pub const SHORT_BANDS: usize = 13;
/// Levels of a band's summed quantised magnitudes ([`band_level`]).
pub const BAND_LEVELS: usize = 16;
/// Scalefactor values a band id tells apart (higher ones share the last).
pub const BAND_SCALEFACS: usize = 8;

/// Ids of the header and side-information fields: bytes, padding and those fields' ranges
/// (the vocabulary of [`crate::BlockTokens::Fields`], `FieldsAndBytes`, `FieldsAndData`).
pub const FIELDS_VOCAB_SIZE: usize = FIELD_STARTS[FIRST_LINE_FIELD] as usize;

/// Ids up to the bands of [`mp3_line_ids`]: the vocabulary of
/// [`crate::BlockTokens::FieldsAndLines`].
pub const LINES_VOCAB_SIZE: usize = FIELD_STARTS[FIRST_ENERGY_FIELD] as usize;

/// Ids up to the band energies of [`BandValue::Energy`]: the vocabulary of
/// [`crate::BlockTokens::FieldsAndEnergy`] (it holds the line ids' ranges too, unused).
pub const ENERGY_VOCAB_SIZE: usize = FIELD_STARTS[FIRST_PEAK_FIELD] as usize;

/// Ids up to the band energies and peaks of [`BandValue::EnergyPeak`]: the vocabulary of
/// [`crate::BlockTokens::FieldsAndEnergyPeaks`].
pub const PEAK_VOCAB_SIZE: usize = FIELD_STARTS[FIRST_HALVES_FIELD] as usize;

/// Ids in all, with the packed half-band energies of [`BandValue::PackedHalves`]: the
/// vocabulary of [`crate::BlockTokens::FieldsAndPackedHalves`].
pub const HALVES_VOCAB_SIZE: usize = FIELD_STARTS[FIELDS.len()] as usize;

/// Classes of where a band's strongest line lies and how much of the band's power it holds
/// ([`peak_class`]): the quarter of the band (4) times whether it holds half the power (2).
pub const PEAK_CLASSES: usize = 8;

/// Levels of a band's energy ([`band_energy_level`]): 0 for a band coded as all zeros, then
/// steps of [`ENERGY_STEP_DB`] from [`ENERGY_FLOOR_DB`] up.
pub const ENERGY_LEVELS: usize = 64;
/// Width of one energy level, in dB.
pub const ENERGY_STEP_DB: f64 = 1.5;
/// The mean power per line, in dB relative to a line of amplitude 1, that level 1 stands for
/// (and every quieter band that is not all zeros).
pub const ENERGY_FLOOR_DB: f64 = -96.0;

/// What one band id of [`mp3_line_ids`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BandValue {
    /// The level of the band's summed quantised magnitudes ([`band_level`]) with its
    /// scalefactor: symbols as coded, nothing requantised.
    LevelScalefac,
    /// The band's mean power per line in dB ([`band_energy_level`]): its quantised lines
    /// requantised with the frame's own `global_gain`, scalefactor, `scalefac_scale`,
    /// `preflag` and subblock gain (ISO 11172-3 2.4.3.4.7.1) and summed, nothing else of the
    /// decoder (no stereo processing, alias reduction, inverse MDCT or filterbank).
    Energy,
    /// As [`BandValue::Energy`] for the lower and the upper half of the band's lines, two ids
    /// per band (lower first; the lower half has `width / 2` lines): the same requantisation,
    /// twice the frequency resolution.
    HalfBandEnergy,
    /// As [`BandValue::Energy`], and in the same id where the band's strongest line lies and
    /// whether it stands out ([`peak_class`]): `level · PEAK_CLASSES + class`, one id per
    /// band, so a frame keeps its number of ids while each band says more than its mean power
    /// (a harmonic's position within the band, a tonal band against a noisy one).
    EnergyPeak,
    /// The energies of [`BandValue::HalfBandEnergy`]'s two halves in one id per band,
    /// `lower · ENERGY_LEVELS + upper`: twice the frequency resolution at the number of ids
    /// of [`BandValue::Energy`] (a model embeds the id as the lower half's energy row plus a
    /// row for the upper half's level, [`halves_factors`]).
    PackedHalves,
}

impl BandValue {
    /// The fields its ids lie in, for long and for short blocks.
    pub fn field_names(self) -> (&'static str, &'static str) {
        match self {
            BandValue::LevelScalefac => {
                ("mp3.band(level,scalefac)", "mp3.short_band(level,scalefac)")
            }
            BandValue::Energy | BandValue::HalfBandEnergy => {
                ("mp3.band_energy", "mp3.short_band_energy")
            }
            BandValue::EnergyPeak => ("mp3.band_energy_peak", "mp3.short_band_energy_peak"),
            BandValue::PackedHalves => ("mp3.band_energy_halves", "mp3.short_band_energy_halves"),
        }
    }

    /// The index in [`FIELDS`] of its long blocks' field (the short blocks' is the next).
    fn first_field(self) -> usize {
        match self {
            BandValue::LevelScalefac => FIRST_LINE_FIELD,
            BandValue::Energy | BandValue::HalfBandEnergy => FIRST_ENERGY_FIELD,
            BandValue::EnergyPeak => FIRST_PEAK_FIELD,
            BandValue::PackedHalves => FIRST_HALVES_FIELD,
        }
    }

    /// Ids per band: 2 for [`BandValue::HalfBandEnergy`], else 1.
    pub fn ids_per_band(self) -> usize {
        if self == BandValue::HalfBandEnergy {
            2
        } else {
            1
        }
    }
}

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

/// Appends the field ids of an MP3 frame from its side information `side` (which holds the
/// frame's header, for the bitrate index), each `global_gain` moved by `gain_offset`
/// quantiser steps (clamped to 0–255): a step is 2^(1/4) in amplitude, 1.5 dB, so one offset
/// for all frames of a clip reads it as if it were that much louder or quieter
/// ([`crate::TokenizerConfig::gain_jitter`]).
pub fn mp3_field_ids(side: &SideInfo, gain_offset: i32, out: &mut Vec<u16>) {
    out.push(id(0, side.header.bitrate_index() as u32));
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

/// The level of a band whose quantised lines sum to `sum` in magnitude: 0–3 as they are,
/// then two levels per octave (4–5 → 4, 6–7 → 5, 8–11 → 6, …), 15 from 192 up.
pub fn band_level(sum: u32) -> u32 {
    if sum < 4 {
        return sum;
    }
    let octave = 31 - sum.leading_zeros(); // ≥ 2
    let half = (sum >> (octave - 1)) & 1;
    (4 + 2 * (octave - 2) + half).min(BAND_LEVELS as u32 - 1)
}

/// Pre-emphasis added to the long bands' scalefactors when `preflag` is set (ISO 11172-3,
/// table B.6), with a 0 for the band above the last scalefactor band.
const PRETAB: [u8; LONG_BANDS] = [
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 3, 3, 3, 2, 0,
];

/// The energy level of a band: `sum8_3` is Σ|q|^(8/3) over its `width` quantised lines and
/// `log2_scale` the base-2 logarithm of the squared requantisation step, `0.5·(global_gain −
/// 210 − 8·subblock_gain) − 2·m·(scalefac + preflag·pretab)` with `m` 0.5 or 1 by
/// `scalefac_scale`. The band's mean power per line is `sum8_3 / width · 2^log2_scale`; level
/// 0 when the band is all zeros, else 1 + its dB above [`ENERGY_FLOOR_DB`] in steps of
/// [`ENERGY_STEP_DB`], clamped to the levels there are.
pub fn band_energy_level(sum8_3: f64, width: usize, log2_scale: f64) -> u32 {
    if sum8_3 <= 0.0 || width == 0 {
        return 0;
    }
    let db = 10.0 * std::f64::consts::LOG10_2 * ((sum8_3 / width as f64).log2() + log2_scale);
    let step = ((db - ENERGY_FLOOR_DB) / ENERGY_STEP_DB).floor();
    (1.0 + step).clamp(1.0, (ENERGY_LEVELS - 1) as f64) as u32
}

/// The id ranges of [`BandValue::EnergyPeak`] as factors, long bands' then short bands': for
/// each, `(start, values, classes, value_start)`: ids `start + level · classes + class`,
/// `values` levels and `classes` peak classes, and `value_start` the first id of the matching
/// [`BandValue::Energy`] field, whose level ids mean the same levels. A model may embed a peak
/// id as its energy id's row plus a row for its class (`tempest_model::IdFactors`).
pub fn peak_factors() -> [(u32, u32, u32, u32); 2] {
    [0, 1].map(|k| {
        (
            FIELD_STARTS[FIRST_PEAK_FIELD + k],
            ENERGY_LEVELS as u32,
            PEAK_CLASSES as u32,
            FIELD_STARTS[FIRST_ENERGY_FIELD + k],
        )
    })
}

/// The id ranges of [`BandValue::PackedHalves`] as factors, long bands' then short bands', in
/// the form of [`peak_factors`]: ids `start + lower · ENERGY_LEVELS + upper`, the lower half's
/// level sharing the [`BandValue::Energy`] field's rows, the upper half's level a factor of
/// [`ENERGY_LEVELS`] classes.
pub fn halves_factors() -> [(u32, u32, u32, u32); 2] {
    [0, 1].map(|k| {
        (
            FIELD_STARTS[FIRST_HALVES_FIELD + k],
            ENERGY_LEVELS as u32,
            ENERGY_LEVELS as u32,
            FIELD_STARTS[FIRST_ENERGY_FIELD + k],
        )
    })
}

/// The peak class of a band whose lines have the powers `powers` (in any one unit): 0 for a
/// band with no power, else `2 · quarter + stands_out`, where `quarter` (0–3) is the quarter
/// of the band that holds its strongest line (the first of equals) and `stands_out` is 1 when
/// that line holds at least half of the band's power. Below [`PEAK_CLASSES`].
pub fn peak_class(powers: impl IntoIterator<Item = f64>) -> u32 {
    let (mut n, mut sum, mut max, mut at) = (0usize, 0.0f64, 0.0f64, 0usize);
    for (k, p) in powers.into_iter().enumerate() {
        n = k + 1;
        sum += p;
        if p > max {
            (max, at) = (p, k);
        }
    }
    if sum <= 0.0 || n == 0 {
        return 0;
    }
    let quarter = (4 * at / n) as u32;
    2 * quarter + u32::from(max >= 0.5 * sum)
}

/// The value of an energy band id within its field, from the powers of the band's lines (one
/// per line, `width` of them; `log2_scale` as [`band_energy_level`] takes it): the level, and
/// for [`BandValue::EnergyPeak`] the level times [`PEAK_CLASSES`] plus the [`peak_class`].
fn energy_value(
    value: BandValue,
    powers: impl Iterator<Item = f64> + Clone,
    width: usize,
    log2_scale: f64,
) -> u32 {
    let level = band_energy_level(powers.clone().sum(), width, log2_scale);
    if value == BandValue::EnergyPeak {
        level * PEAK_CLASSES as u32 + peak_class(powers)
    } else {
        level
    }
}

/// `|v|^(8/3)`, the power of a quantised line before its step: a table for the small values
/// that make up nearly all lines (computed once by the same `powf`, so the same numbers),
/// `powf` past it.
fn power8_3(v: i16) -> f64 {
    const TABLE: usize = 256;
    static POWERS: std::sync::OnceLock<[f64; TABLE]> = std::sync::OnceLock::new();
    let a = v.unsigned_abs();
    match POWERS
        .get_or_init(|| std::array::from_fn(|i| (i as f64).powf(8.0 / 3.0)))
        .get(usize::from(a))
    {
        Some(&p) => p,
        None => f64::from(a).powf(8.0 / 3.0),
    }
}

/// The base-2 logarithm of the squared requantisation step of a band of granule `g`: its
/// `global_gain` moved by `gain_offset`, its scalefactor `sf` and `extra` = (subblock gain,
/// pre-emphasis), the parts of the step in scalefactor units (ISO 11172-3 2.4.3.4.7.1).
fn log2_step(g: &Granule, gain_offset: i32, sf: u8, extra: (u8, u8)) -> f64 {
    let m = if g.scalefac_scale { 1.0 } else { 0.5 };
    let (subblock_gain, pre) = extra;
    0.5 * (f64::from((i32::from(g.global_gain) + gain_offset).clamp(0, 255))
        - 210.0
        - 8.0 * f64::from(subblock_gain))
        - 2.0 * m * (f64::from(sf) + f64::from(pre))
}

/// The first short line (of 192) whose centre lies at or above long line `x`: a short line
/// `k` spans long lines `3k..3k + 3`, so its centre is `3k + 1`.
fn first_short_line_from(x: u16) -> usize {
    (usize::from(x) + 1) / 3
}

/// Appends one id per scalefactor band of each granule and channel of an MP3 frame, from its
/// entropy-decoded main data ([`cff_blocks::mp3::decode_granules`]): the band's level
/// ([`band_level`] of the summed magnitudes of its quantised lines) together with its
/// scalefactor (clamped to 7), one id range shared by all bands: which band an id describes
/// is its position in the block. Long blocks give [`LONG_BANDS`] ids, short blocks
/// [`SHORT_BANDS`] × 3 (band, then window; their own range); mixed blocks are read as long
/// ones. Nothing is requantised: the level counts quantiser steps, and `global_gain` and
/// `scalefac_scale`, which say what a step is worth, are fields of their own. The frame's
/// sampling rate (`side.header`) picks the band edges. `mask`, a range of long bands: those
/// bands, and the short bands over the same lines, read as empty (level 0, scalefactor 0).
/// `shift` moves every band's id `shift` positions up (down when negative) within its block
/// type's bands, a coarse warp of the frequency axis; positions left without a band read as
/// empty. The mask applies to positions, after the shift. `value` says what an id tells:
/// level and scalefactor ([`BandValue::LevelScalefac`], in the fields
/// `mp3.band(level,scalefac)` and `mp3.short_band(level,scalefac)`) or the band's energy
/// ([`BandValue::Energy`], in `mp3.band_energy` and `mp3.short_band_energy`; with
/// [`BandValue::HalfBandEnergy`] two ids per band, its halves, short blocks ordered band,
/// window, half; masks and shifts count whole bands); energies read each `global_gain`
/// moved by `gain_offset` steps as [`mp3_field_ids`] does, so that a loudness jitter moves
/// the fields and the energies alike. `merge_short` (energies only):
/// a short-block granule gives the long bands' ids, as a long block does, each long band the
/// mean power of the short lines (of all three windows, each requantised with its own
/// window's step) whose centre lies in it, so that every granule has one layout; without
/// it, short blocks give their own 13 × 3 ids.
#[allow(clippy::too_many_arguments)]
pub fn mp3_line_ids(
    side: &SideInfo,
    lines: &FrameLines,
    mask: std::ops::Range<usize>,
    shift: i32,
    value: BandValue,
    gain_offset: i32,
    merge_short: bool,
    out: &mut Vec<u16>,
) {
    let rate = side.header.sample_rate();
    let (Some(long), Some(short)) = (long_band_edges(rate), short_band_edges(rate)) else {
        return;
    };
    let masked_lines = if mask.is_empty() {
        0..0
    } else {
        usize::from(long[mask.start.min(LONG_BANDS)])..usize::from(long[mask.end.min(LONG_BANDS)])
    };
    let first = value.first_field();
    let parts = value.ids_per_band();
    // MPEG-2 and 2.5 imply preflag by a scalefac_compress of 500 or more (ISO 13818-3
    // 2.4.3.2; the right channel of intensity stereo never has it).
    let lsf = side.header.version() != cff_blocks::mp3::Version::Mpeg1;
    let intensity = side.header.channel_mode() == cff_blocks::mp3::ChannelMode::JointStereo
        && side.header.mode_extension() & 1 == 1;
    // `extra`: the subblock gain's and pre-emphasis' part of the step, in scalefactor units.
    let band_id = |field: usize, q: &[i16], sf: u8, extra: (u8, u8), g: &Granule, masked: bool| {
        if masked {
            return id(field, 0);
        }
        match value {
            BandValue::LevelScalefac => {
                let sum: u32 = q.iter().map(|&v| u32::from(v.unsigned_abs())).sum();
                let sf = u32::from(sf).min(BAND_SCALEFACS as u32 - 1);
                id(field, band_level(sum) * BAND_SCALEFACS as u32 + sf)
            }
            BandValue::Energy | BandValue::HalfBandEnergy | BandValue::EnergyPeak => {
                let powers = q.iter().map(|&v| power8_3(v));
                let log2_scale = log2_step(g, gain_offset, sf, extra);
                id(field, energy_value(value, powers, q.len(), log2_scale))
            }
            BandValue::PackedHalves => {
                // The halves as `push_band` splits them for half bands: the lower has n / 2.
                let log2_scale = log2_step(g, gain_offset, sf, extra);
                let level = |h: &[i16]| {
                    band_energy_level(h.iter().map(|&v| power8_3(v)).sum(), h.len(), log2_scale)
                };
                let (lower, upper) = q.split_at(q.len() / 2);
                id(field, level(lower) * ENERGY_LEVELS as u32 + level(upper))
            }
        }
    };
    // A band's ids: one, or (half bands) one per half of its lines.
    let push_band = |out: &mut Vec<u16>,
                     field: usize,
                     q: &[i16],
                     sf: u8,
                     extra: (u8, u8),
                     g: &Granule,
                     masked: bool| {
        if parts == 2 {
            let (lower, upper) = q.split_at(q.len() / 2);
            out.push(band_id(field, lower, sf, extra, g, masked));
            out.push(band_id(field, upper, sf, extra, g, masked));
        } else {
            out.push(band_id(field, q, sf, extra, g, masked));
        }
    };
    // Position p reads band p − shift; a position with no band there reads as silence.
    let source = |p: usize, bands: usize| -> Option<usize> {
        let b = p as i64 - i64::from(shift);
        (0..bands as i64).contains(&b).then_some(b as usize)
    };
    let (granules, channels) = (usize::from(side.granules), usize::from(side.channels));
    for (sides, decoded) in side.granule.iter().zip(lines.iter()).take(granules) {
        for (ch, (g, l)) in sides.iter().zip(decoded.iter()).take(channels).enumerate() {
            let sf = |k: usize| l.scalefac.get(k).copied().unwrap_or(0);
            let short_block = g.window_switching && g.block_type == 2 && !g.mixed_block;
            if short_block && merge_short && value != BandValue::LevelScalefac {
                // Each short line's power, requantised with its own window's step and summed
                // over the three windows; a long band then reads the short lines whose centre
                // falls in it, its mean power per long line (three per short line).
                let mut power = [0.0f64; LINES / 3];
                for b in 0..SHORT_BANDS {
                    let (lo, hi) = (usize::from(short[b]), usize::from(short[b + 1]));
                    for w in 0..3 {
                        let scale =
                            log2_step(g, gain_offset, sf(b * 3 + w), (g.subblock_gain[w], 0))
                                .exp2();
                        let start = 3 * lo + w * (hi - lo);
                        for (k, &v) in (lo..hi).zip(&l.lines[start..start + (hi - lo)]) {
                            power[k] += power8_3(v) * scale;
                        }
                    }
                }
                for p in 0..LONG_BANDS {
                    let Some(b) = source(p, LONG_BANDS) else {
                        out.extend(std::iter::repeat_n(id(first, 0), parts));
                        continue;
                    };
                    let (lo, hi) = (
                        first_short_line_from(long[b]),
                        first_short_line_from(long[b + 1]),
                    );
                    let level = |span: std::ops::Range<usize>| {
                        if mask.contains(&p) {
                            return 0;
                        }
                        let width = 3 * span.len();
                        energy_value(value, power[span].iter().copied(), width, 0.0)
                    };
                    // As `push_band` splits a band's lines: the lower half has `n / 2`.
                    let cut = lo + (hi - lo) / 2;
                    if parts == 2 {
                        out.push(id(first, level(lo..cut)));
                        out.push(id(first, level(cut..hi)));
                    } else if value == BandValue::PackedHalves {
                        let v = level(lo..cut) * ENERGY_LEVELS as u32 + level(cut..hi);
                        out.push(id(first, v));
                    } else {
                        out.push(id(first, level(lo..hi)));
                    }
                }
            } else if short_block {
                for p in 0..SHORT_BANDS {
                    let (plo, phi) = (usize::from(short[p]), usize::from(short[p + 1]));
                    // A short line k sits where long line 3k does.
                    let masked = 3 * plo < masked_lines.end && masked_lines.start < 3 * phi;
                    for w in 0..3 {
                        let Some(b) = source(p, SHORT_BANDS) else {
                            out.extend(std::iter::repeat_n(id(first + 1, 0), parts));
                            continue;
                        };
                        let (lo, hi) = (usize::from(short[b]), usize::from(short[b + 1]));
                        let start = 3 * lo + w * (hi - lo);
                        let q = &l.lines[start..start + (hi - lo)];
                        let extra = (g.subblock_gain[w], 0);
                        push_band(out, first + 1, q, sf(b * 3 + w), extra, g, masked);
                    }
                }
            } else {
                let preflag = if lsf {
                    g.scalefac_compress >= 500 && !(intensity && ch == 1)
                } else {
                    g.preflag
                };
                for p in 0..LONG_BANDS {
                    let Some(b) = source(p, LONG_BANDS) else {
                        out.extend(std::iter::repeat_n(id(first, 0), parts));
                        continue;
                    };
                    let q = &l.lines[usize::from(long[b])..usize::from(long[b + 1])];
                    let extra = (0, if preflag { PRETAB[b] } else { 0 });
                    push_band(out, first, q, sf(b), extra, g, mask.contains(&p));
                }
            }
        }
    }
}

/// Which fields' ids a model may embed as ordered values (`tempest_model::OrdinalIds`): the
/// field's id `start + k` stands for the value k of one quantity, so neighbouring ids mean
/// neighbouring amounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrdinalFields {
    /// The MP3 band energy levels (`mp3.band_energy`, `mp3.short_band_energy`): 1.5 dB steps.
    Levels,
    /// The levels and every side-information field that counts or measures something:
    /// [`ORDINAL_SIDE_FIELDS`].
    All,
}

/// The fields [`OrdinalFields::Levels`] names.
pub const ORDINAL_LEVEL_FIELDS: [&str; 2] = ["mp3.band_energy", "mp3.short_band_energy"];

/// The side-information fields whose values are amounts (a length, a gain, a count), in the
/// order of [`FIELDS`]: not the codes (`scalefac_compress`, block kind, table selects,
/// flags, `scfsi`, Opus's configuration, stereo flag and frame-count code).
pub const ORDINAL_SIDE_FIELDS: [&str; 12] = [
    "mp3.bitrate_index",
    "mp3.main_data_begin/4",
    "mp3.part2_3_length/16",
    "mp3.big_values",
    "mp3.global_gain",
    "mp3.subblock_gain[0]",
    "mp3.subblock_gain[1]",
    "mp3.subblock_gain[2]",
    "mp3.region0_count",
    "mp3.region1_count",
    "opus.frames",
    "opus.bytes/4",
];

impl OrdinalFields {
    /// The `(start, values)` id ranges of these fields that lie below `vocab_size`, in id
    /// order.
    pub fn ranges(self, vocab_size: usize) -> Vec<(u32, u32)> {
        let side: &[&str] = match self {
            OrdinalFields::Levels => &[],
            OrdinalFields::All => &ORDINAL_SIDE_FIELDS,
        };
        let mut out: Vec<(u32, u32)> = side
            .iter()
            .chain(ORDINAL_LEVEL_FIELDS.iter())
            .filter_map(|name| field_range(name))
            .filter(|r| r.end as usize <= vocab_size)
            .map(|r| (r.start, r.end - r.start))
            .collect();
        out.sort_unstable();
        out
    }

    /// `levels` or `all`.
    pub fn name(self) -> &'static str {
        match self {
            OrdinalFields::Levels => "levels",
            OrdinalFields::All => "all",
        }
    }

    /// The choice named `name` (`levels`, `all`).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "levels" => Some(OrdinalFields::Levels),
            "all" => Some(OrdinalFields::All),
            _ => None,
        }
    }
}

/// The ids of the field named `name` (as [`Field::name`] spells it).
pub fn field_range(name: &str) -> Option<std::ops::Range<u32>> {
    let i = FIELDS.iter().position(|f| f.name == name)?;
    Some(FIELD_STARTS[i]..FIELD_STARTS[i + 1])
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
        assert_eq!(seen.len() + FIELD_BASE as usize, HALVES_VOCAB_SIZE);
        assert_eq!(FIELD_STARTS[FIRST_HALVES_FIELD] as usize, PEAK_VOCAB_SIZE);
        assert_eq!(FIELD_STARTS[FIRST_PEAK_FIELD] as usize, ENERGY_VOCAB_SIZE);
        assert_eq!(FIELD_STARTS[FIRST_ENERGY_FIELD] as usize, LINES_VOCAB_SIZE);
        assert_eq!(FIELD_STARTS[FIRST_LINE_FIELD] as usize, FIELDS_VOCAB_SIZE);
        // The header and side-information fields keep the ids they had before the bands
        // came (checkpoints trained on them stay readable).
        assert_eq!(FIELDS_VOCAB_SIZE, 2234);
        assert!(ENERGY_VOCAB_SIZE < usize::from(u16::MAX));
        // The line ids keep theirs when the energies came (session 13).
        assert_eq!(LINES_VOCAB_SIZE, 2490);
        assert_eq!(ENERGY_VOCAB_SIZE, LINES_VOCAB_SIZE + 2 * ENERGY_LEVELS);
        // And the energies theirs when the peaks came (session 15).
        assert_eq!(
            PEAK_VOCAB_SIZE,
            ENERGY_VOCAB_SIZE + 2 * ENERGY_LEVELS * PEAK_CLASSES
        );
        // And the peaks theirs when the packed halves came (session 19).
        assert_eq!(
            HALVES_VOCAB_SIZE,
            PEAK_VOCAB_SIZE + 2 * ENERGY_LEVELS * ENERGY_LEVELS
        );
        assert!(HALVES_VOCAB_SIZE < usize::from(u16::MAX));
        assert_eq!(
            LINES_VOCAB_SIZE,
            FIELDS_VOCAB_SIZE + 2 * BAND_LEVELS * BAND_SCALEFACS
        );
        assert_eq!(field_name(255), None);
        assert_eq!(field_name(256), None);
        assert_eq!(field_name(HALVES_VOCAB_SIZE as u32), None);
    }

    #[test]
    fn peak_classes_tell_where_the_strongest_line_is_and_whether_it_stands_out() {
        assert_eq!(peak_class([0.0; 6]), 0, "no power");
        assert_eq!(peak_class([]), 0);
        // One line alone: its quarter, and it holds all the power.
        assert_eq!(peak_class([9.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]), 1);
        assert_eq!(peak_class([0.0, 0.0, 9.0, 0.0, 0.0, 0.0, 0.0, 0.0]), 3);
        assert_eq!(peak_class([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 9.0]), 7);
        // A flat band: the first line, not standing out.
        assert_eq!(peak_class([1.0; 8]), 0);
        // The strongest line in the third quarter with 40 % of the power: 2·2 + 0.
        assert_eq!(peak_class([1.0, 1.0, 1.0, 1.0, 4.0, 1.0, 1.0, 0.0]), 4);
        assert!((0..64).all(|k| {
            let mut p = vec![1.0; 64];
            p[k] = 100.0;
            peak_class(p) < PEAK_CLASSES as u32
        }));
    }

    #[test]
    fn ordinal_fields_are_named_fields_inside_the_vocabulary() {
        for name in ORDINAL_SIDE_FIELDS.iter().chain(&ORDINAL_LEVEL_FIELDS) {
            assert!(field_range(name).is_some(), "{name} is not a field");
        }
        let energy = field_range("mp3.band_energy").map(|r| (r.start, r.end - r.start));
        let all = OrdinalFields::All.ranges(FIELD_STARTS[FIELDS.len()] as usize);
        let levels = OrdinalFields::Levels.ranges(FIELD_STARTS[FIELDS.len()] as usize);
        assert_eq!(levels.len(), 2);
        assert_eq!(all.len(), 14);
        assert!(energy.is_some_and(|e| levels.contains(&e) && all.contains(&e)));
        assert!(levels.iter().all(|&(_, v)| v == ENERGY_LEVELS as u32));
        // In id order, apart from each other.
        assert!(all.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0));
        // A vocabulary that ends before the energy fields (fields tokens alone) has none.
        assert!(OrdinalFields::Levels.ranges(FIELDS_VOCAB_SIZE).is_empty());
        assert_eq!(OrdinalFields::All.ranges(FIELDS_VOCAB_SIZE).len(), 12);
        for o in [OrdinalFields::Levels, OrdinalFields::All] {
            assert_eq!(OrdinalFields::from_name(o.name()), Some(o));
        }
    }

    #[test]
    fn peak_factors_cover_the_peak_fields_and_point_at_the_energy_fields() {
        let names = [
            ("mp3.band_energy_peak", "mp3.band_energy"),
            ("mp3.short_band_energy_peak", "mp3.short_band_energy"),
        ];
        for ((start, values, classes, value_start), (peak, energy)) in
            peak_factors().into_iter().zip(names)
        {
            assert_eq!(field_range(peak), Some(start..start + values * classes));
            assert_eq!(field_range(energy), Some(value_start..value_start + values));
            assert_eq!(classes, PEAK_CLASSES as u32);
        }
    }

    #[test]
    fn energy_levels_step_by_1_5_db_from_the_floor() {
        // A band of 4 lines each ±1 with a squared step of 2^−10: −30.1 dB per line.
        let level = band_energy_level(4.0, 4, -10.0);
        assert_eq!(
            level,
            1 + ((-30.103 - ENERGY_FLOOR_DB) / ENERGY_STEP_DB) as u32
        );
        // 2 steps of global_gain (log2 scale −1) halve the power: 3 dB, two levels.
        assert_eq!(band_energy_level(4.0, 4, -11.0), level - 2);
        // Twice the lines at the same power per line: the same level.
        assert_eq!(band_energy_level(8.0, 8, -10.0), level);
        assert_eq!(band_energy_level(0.0, 4, 0.0), 0, "all zeros: silent");
        assert_eq!(
            band_energy_level(1.0, 4, -200.0),
            1,
            "quieter than the floor"
        );
        assert_eq!(band_energy_level(1.0, 4, 200.0), ENERGY_LEVELS as u32 - 1);
    }

    #[test]
    fn band_levels_rise_by_half_octaves_and_stop_at_15() {
        let got: Vec<u32> = [0, 1, 3, 4, 5, 6, 7, 8, 11, 12, 16, 191, 192, 10_000]
            .iter()
            .map(|&s| band_level(s))
            .collect();
        assert_eq!(got, [0, 1, 3, 4, 4, 5, 5, 6, 6, 7, 8, 14, 15, 15]);
        assert!((0..5000).all(|s| band_level(s) <= band_level(s + 1)));
    }
}
