//! One file's blocks as a tokenized item.

use std::path::Path;

use cff_blocks::mp3::{decode_granules, MainData, SideInfo};
use cff_blocks::{Block, Detail, Format, Place, Reader};

use crate::fields;
use crate::rng::SplitMix64;
use crate::{BlockTokens, Crop, Error, Result, TokenizerConfig};

/// Where a block sits: its index among the file's kept blocks and when or where it plays.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockPosition {
    /// Index among the file's kept blocks, before cropping (so a crop keeps true indices).
    pub index: u32,
    /// Audio: start time in seconds (0 for images).
    pub time: f32,
    /// Audio: duration in seconds (0 for images).
    pub duration: f32,
    /// Images: MCU row (0 for audio).
    pub row: u32,
    /// Images: MCU column (0 for audio).
    pub col: u32,
}

impl BlockPosition {
    /// The position of block `index` that plays at `place`.
    pub fn of(index: u32, place: &Place) -> Self {
        let (row, col) = place.grid().unwrap_or((0, 0));
        BlockPosition {
            index,
            time: place.time_seconds().unwrap_or(0.0) as f32,
            duration: place.duration_seconds().unwrap_or(0.0) as f32,
            row,
            col,
        }
    }
}

/// What the random crop depends on, so that it is the same for a given seed, epoch and item
/// whatever thread or process tokenizes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CropContext {
    /// The run's seed.
    pub seed: u64,
    /// The epoch.
    pub epoch: u64,
    /// A stable id of the item (its row in the dataset).
    pub item: u64,
}

/// A file's kept blocks: their ids (up to L each: bytes 0–255, or field ids, see
/// [`crate::fields`]), lengths and positions.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizedItem {
    /// The file's format.
    pub format: Format,
    /// Kept ids of all blocks, one after another.
    ids: Vec<u16>,
    /// Start of each block in `ids`, and the end of the last: `blocks + 1` entries.
    starts: Vec<u32>,
    /// Position of each block.
    pub positions: Vec<BlockPosition>,
    /// Each block's length in the file (ids), before truncation to L.
    lens: Vec<u32>,
    /// Blocks of the kept kinds in the file, before cropping.
    pub source_blocks: u32,
    /// Blocks longer than L, whose tails were dropped.
    pub truncated_blocks: u32,
    /// Bytes dropped by truncation.
    pub truncated_bytes: u64,
    /// Size of the file the item came from.
    pub input_bytes: u64,
}

impl TokenizedItem {
    /// An item without blocks yet, for a file of `input_bytes` bytes.
    pub fn new(format: Format, input_bytes: u64) -> Self {
        TokenizedItem {
            format,
            ids: Vec::new(),
            starts: vec![0],
            positions: Vec::new(),
            lens: Vec::new(),
            source_blocks: 0,
            truncated_blocks: 0,
            truncated_bytes: 0,
            input_bytes,
        }
    }

    /// Appends a block, keeping at most `max_block_bytes` of its bytes and counting the
    /// truncation. Blocks can be appended as they arrive (streaming).
    pub fn push_block(&mut self, bytes: &[u8], position: BlockPosition, max_block_bytes: usize) {
        let take = bytes.len().min(max_block_bytes);
        self.ids.extend(bytes[..take].iter().map(|&b| u16::from(b)));
        self.finish_block(bytes.len(), bytes.len(), position, take);
    }

    /// Appends a block given as ids (bytes 0–255 or field ids), keeping at most
    /// `max_block_bytes` of them and counting the truncation; `source_len` is the block's
    /// length in its file (bytes), which the model's length embedding sees.
    pub fn push_ids(
        &mut self,
        ids: &[u16],
        source_len: usize,
        position: BlockPosition,
        max_block_bytes: usize,
    ) {
        let take = ids.len().min(max_block_bytes);
        self.ids.extend_from_slice(&ids[..take]);
        self.finish_block(ids.len(), source_len, position, take);
    }

    fn finish_block(
        &mut self,
        len: usize,
        source_len: usize,
        position: BlockPosition,
        take: usize,
    ) {
        if take < len {
            self.truncated_blocks += 1;
            self.truncated_bytes += (len - take) as u64;
        }
        self.starts.push(self.ids.len() as u32);
        self.positions.push(position);
        self.lens
            .push(u32::try_from(source_len).unwrap_or(u32::MAX));
    }

    /// Blocks in the item (at most N).
    pub fn num_blocks(&self) -> usize {
        self.positions.len()
    }

    /// The kept ids of block `i` (its bytes, where the ids are bytes).
    ///
    /// # Panics
    /// If `i >= self.num_blocks()`.
    pub fn block(&self, i: usize) -> &[u16] {
        &self.ids[self.starts[i] as usize..self.starts[i + 1] as usize]
    }

    /// Kept bytes of block `i`.
    ///
    /// # Panics
    /// If `i >= self.num_blocks()`.
    pub fn block_len(&self, i: usize) -> usize {
        (self.starts[i + 1] - self.starts[i]) as usize
    }

    /// Length of block `i` in the file, before truncation to L (what the model's length
    /// embedding sees: a block's size says how much it holds even where its tail was cut).
    ///
    /// # Panics
    /// If `i >= self.num_blocks()`.
    pub fn source_len(&self, i: usize) -> usize {
        self.lens[i] as usize
    }

    /// The longest kept block.
    pub fn max_block_len(&self) -> usize {
        self.starts
            .windows(2)
            .map(|w| (w[1] - w[0]) as usize)
            .max()
            .unwrap_or(0)
    }

    /// Kept ids of all blocks.
    pub fn total_bytes(&self) -> usize {
        self.ids.len()
    }

    /// The item's shape, for samplers.
    pub fn shape(&self) -> crate::ItemShape {
        crate::ItemShape {
            blocks: self.num_blocks() as u32,
            max_block_len: self.max_block_len() as u32,
            bytes: self.ids.len() as u64,
        }
    }
}

/// Indices of the blocks a crop keeps, in order.
pub fn crop_indices(total: usize, keep: usize, crop: Crop, ctx: CropContext) -> Vec<usize> {
    if total <= keep {
        return (0..total).collect();
    }
    match crop {
        Crop::First => (0..keep).collect(),
        Crop::Centre => {
            let start = (total - keep) / 2;
            (start..start + keep).collect()
        }
        Crop::Random => {
            let mut rng = SplitMix64::derive(ctx.seed, &[ctx.epoch, ctx.item]);
            let start = rng.below((total - keep + 1) as u64) as usize;
            (start..start + keep).collect()
        }
        Crop::Even => {
            if keep == 1 {
                return vec![0];
            }
            // Rounded positions i·(total−1)/(keep−1): strictly increasing since total > keep.
            (0..keep)
                .map(|i| (i * (total - 1) + (keep - 1) / 2) / (keep - 1))
                .collect()
        }
    }
}

/// Mixed into the seed of the loudness jitter so that it is drawn apart from the crop.
const GAIN_STREAM: u64 = 0x6761_696E;

/// Mixed into the seed of the band mask.
const MASK_STREAM: u64 = 0x6D61_736B;
/// The stream of the band shift ("shft").
const SHIFT_STREAM: u64 = 0x7368_6674;
/// The stream of the time mask ("time").
const TIME_STREAM: u64 = 0x7469_6D65;

/// Tokenizes a file held in memory. `path` only names the file in errors.
pub fn tokenize(
    data: &[u8],
    path: &Path,
    config: &TokenizerConfig,
    ctx: CropContext,
) -> Result<TokenizedItem> {
    let blocks_err = |source| Error::Blocks {
        path: path.to_path_buf(),
        source,
    };
    let mut reader = Reader::new(data, &config.reader).map_err(blocks_err)?;
    let format = reader.format();
    let header = if config.jpeg_header_block {
        header_block(&reader)
    } else {
        None
    };
    let mut kept: Vec<Block<'_>> = Vec::new();
    for block in reader.by_ref() {
        let block = block.map_err(blocks_err)?;
        if config.kinds.keeps(block.kind) {
            kept.push(block);
        }
    }
    let header_blocks = usize::from(header.is_some());
    if kept.len() + header_blocks == 0 {
        return Err(Error::Empty {
            path: path.to_path_buf(),
        });
    }
    let source_blocks = (kept.len() + header_blocks) as u32;
    let keep = config.max_blocks.saturating_sub(header_blocks).max(1);
    let chosen = crop_indices(kept.len(), keep, config.crop, ctx);

    let l = config.block_bytes_for(format);
    let stride = config.bit_stride;
    if !(1..=8).contains(&stride) {
        // `bit_windows` would panic: a setting is not a reason to.
        return Err(Error::Config(format!("bit_stride {stride} not in 1..=8")));
    }
    let mut item = TokenizedItem::new(format, data.len() as u64);
    item.source_blocks = source_blocks;
    if config.tokens.has_fields() {
        config.tokens.check_bit_stride(stride)?;
        let gain_offset = match config.gain_jitter {
            0 => 0,
            g => {
                // Its own stream, apart from the crop's.
                let mut rng = SplitMix64::derive(ctx.seed, &[ctx.epoch, ctx.item, GAIN_STREAM]);
                rng.below(2 * u64::from(g) + 1) as i32 - i32::from(g)
            }
        };
        let mask = draw_band_mask(config.band_mask, ctx);
        let shift = draw_band_shift(config.band_shift, ctx);
        let frames = draw_time_mask(config.time_mask, ctx, kept.len());
        let lines = LineAugment {
            mask,
            shift,
            frames,
        };
        let ids = field_ids(&kept, config, gain_offset, &lines).map_err(blocks_err)?;
        if let Some(h) = header {
            item.push_block(h, BlockPosition::of(0, &Place::None), l);
        }
        for i in chosen {
            let b = &kept[i];
            let at = BlockPosition::of((i + header_blocks) as u32, &b.place);
            item.push_ids(&ids[i], b.data.len(), at, l);
        }
        return Ok(item);
    }
    let mut windows = Vec::new();
    let mut push = |item: &mut TokenizedItem, bytes: &[u8], bits: Option<u64>, at| {
        if stride == 8 {
            item.push_block(bytes, at, l);
        } else {
            let bits = bits.unwrap_or(bytes.len() as u64 * 8);
            bit_windows(bytes, bits, stride, &mut windows);
            item.push_block(&windows, at, l);
        }
    };
    if let Some(h) = header {
        push(&mut item, h, None, BlockPosition::of(0, &Place::None));
    }
    for i in chosen {
        let b = &kept[i];
        let index = (i + header_blocks) as u32;
        push(
            &mut item,
            &b.data,
            b.bits,
            BlockPosition::of(index, &b.place),
        );
    }
    Ok(item)
}

/// The long bands a band mask of up to `k` bands silences for the item of `ctx` (empty for
/// `k` 0): [`TokenizerConfig::band_mask`].
fn draw_band_mask(k: u8, ctx: CropContext) -> std::ops::Range<usize> {
    if k == 0 {
        return 0..0;
    }
    let mut rng = SplitMix64::derive(ctx.seed, &[ctx.epoch, ctx.item, MASK_STREAM]);
    let width = rng.below(u64::from(k) + 1) as usize;
    let start = rng.below((fields::LONG_BANDS - width.min(fields::LONG_BANDS)) as u64 + 1);
    start as usize..start as usize + width
}

/// The shift of every band position for the item of `ctx`, in `-k..=k` (0 for `k` 0):
/// [`TokenizerConfig::band_shift`].
fn draw_band_shift(k: u8, ctx: CropContext) -> i32 {
    if k == 0 {
        return 0;
    }
    let mut rng = SplitMix64::derive(ctx.seed, &[ctx.epoch, ctx.item, SHIFT_STREAM]);
    rng.below(2 * u64::from(k) + 1) as i32 - i32::from(k)
}

/// The frames (of `blocks`) a time mask of up to `k` frames silences for the item of `ctx`
/// (empty for `k` 0): [`TokenizerConfig::time_mask`].
fn draw_time_mask(k: u16, ctx: CropContext, blocks: usize) -> std::ops::Range<usize> {
    if k == 0 {
        return 0..0;
    }
    let mut rng = SplitMix64::derive(ctx.seed, &[ctx.epoch, ctx.item, TIME_STREAM]);
    let width = (rng.below(u64::from(k) + 1) as usize).min(blocks);
    let start = rng.below((blocks - width) as u64 + 1) as usize;
    start..start + width
}

impl TokenizedItem {
    /// A copy with the band shift and the band and time masks of `config`
    /// ([`TokenizerConfig::band_shift`], [`TokenizerConfig::band_mask`],
    /// [`TokenizerConfig::time_mask`]) drawn for `ctx` and applied to the band ids of an item
    /// tokenized without them: for items tokenized once and trained on many times (`compare`
    /// does so), where [`tokenize`] would apply them while reading. The draws are the
    /// tokenizer's, the shift before the masks as there; the time mask counts the item's
    /// blocks (the tokenizer counts the file's frames before a crop). Every granule and
    /// channel of a frame is shifted and masked alike. One difference: a short-block band is silenced when its share
    /// of the 22 long-band positions (band `p` of 13 covers positions `22p/13..22(p+1)/13`)
    /// meets the band mask, where the tokenizer, which knows the sampling rate, compares
    /// their lines. Items without band ids come back unchanged.
    pub fn with_band_masks(&self, config: &TokenizerConfig, ctx: CropContext) -> TokenizedItem {
        let mut out = self.clone();
        let augments = config.band_mask > 0 || config.time_mask > 0 || config.band_shift > 0;
        if !config.tokens.has_bands() || !augments {
            return out;
        }
        let bands = draw_band_mask(config.band_mask, ctx);
        let frames = draw_time_mask(config.time_mask, ctx, self.num_blocks());
        let shift = draw_band_shift(config.band_shift, ctx);
        let silent = |name: &str| fields::field_range(name).map_or(0, |r| r.start as u16);
        let Some(value) = config.tokens.band_value() else {
            return out;
        };
        let (long, short) = value.field_names();
        let (long_silent, short_silent) = (silent(long), silent(short));
        let (long_ids, short_ids) = (
            fields::field_range(long).unwrap_or(0..0),
            fields::field_range(short).unwrap_or(0..0),
        );
        let n = fields::LONG_BANDS;
        // Ids per band (two for half bands; a short band has three windows of them).
        let parts = config.tokens.ids_per_band();
        let (long_group, short_group) = (parts, 3 * parts);
        let (mut at_long, mut at_short) = (Vec::new(), Vec::new());
        for b in 0..self.num_blocks() {
            let whole = frames.contains(&b);
            let range = self.starts[b] as usize..self.starts[b + 1] as usize;
            // Where the block's long and short band ids sit: runs of one granule and channel
            // each (22 or 13 bands), in order.
            at_long.clear();
            at_short.clear();
            for (k, &id) in self.ids[range.clone()].iter().enumerate() {
                let v = u32::from(id);
                if long_ids.contains(&v) {
                    at_long.push(range.start + k);
                } else if short_ids.contains(&v) {
                    at_short.push(range.start + k);
                }
            }
            // The shift first (position p of a run reads band p − shift, as the tokenizer
            // reads it; none there: silence), then the masks on positions.
            let mut shifted = |at: &[usize], bands_per_run: usize, group: usize, quiet: u16| {
                if shift == 0 {
                    return;
                }
                for run in at.chunks(bands_per_run * group) {
                    for (k, &to) in run.iter().enumerate() {
                        let from = (k / group) as i64 - i64::from(shift);
                        out.ids[to] = if (0..(run.len() / group) as i64).contains(&from) {
                            self.ids[run[from as usize * group + k % group]]
                        } else {
                            quiet
                        };
                    }
                }
            };
            shifted(&at_long, n, long_group, long_silent);
            shifted(&at_short, fields::SHORT_BANDS, short_group, short_silent);
            for (k, &to) in at_long.iter().enumerate() {
                if whole || bands.contains(&((k / long_group) % n)) {
                    out.ids[to] = long_silent;
                }
            }
            for (k, &to) in at_short.iter().enumerate() {
                let p = (k / short_group) % fields::SHORT_BANDS;
                let (lo, hi) = (
                    n * p / fields::SHORT_BANDS,
                    (n * (p + 1)).div_ceil(fields::SHORT_BANDS),
                );
                if whole || (lo < bands.end && bands.start < hi) {
                    out.ids[to] = short_silent;
                }
            }
        }
        out
    }
}

/// The ids of each block for a [`BlockTokens`] with fields: the codec's fields, then (by the
/// variant) the block's bytes after them or its own coded data. MP3 frames go through the bit
/// reservoir in file order, so every kept frame is read, not only the cropped ones.
/// What training changes in an item's band-line ids: a masked run of bands, a shift, and a
/// run of frames (indices into the item's blocks in file order) whose bands are all masked.
struct LineAugment {
    mask: std::ops::Range<usize>,
    shift: i32,
    frames: std::ops::Range<usize>,
}

fn field_ids(
    blocks: &[Block<'_>],
    config: &TokenizerConfig,
    gain_offset: i32,
    lines_aug: &LineAugment,
) -> cff_blocks::Result<Vec<Vec<u16>>> {
    let tokens = config.tokens;
    let mut reservoir = MainData::new();
    let mut out = Vec::with_capacity(blocks.len());
    for (i, b) in blocks.iter().enumerate() {
        let data: &[u8] = &b.data;
        let mut ids = Vec::new();
        match &b.detail {
            Detail::Mp3(_) => {
                let side = SideInfo::parse(data, b.offset)?;
                if tokens != BlockTokens::Energy {
                    fields::mp3_field_ids(&side, gain_offset, &mut ids);
                }
                let own = reservoir.push(data, &side, b.offset)?;
                if let Some(value) = tokens.band_value() {
                    if let Some(own) = own {
                        let lines = decode_granules(&side, own, b.offset)?;
                        fields::mp3_line_ids(
                            &side,
                            &lines,
                            if lines_aug.frames.contains(&i) {
                                0..fields::LONG_BANDS
                            } else {
                                lines_aug.mask.clone()
                            },
                            lines_aug.shift,
                            value,
                            gain_offset,
                            config.merge_short_windows,
                            &mut ids,
                        );
                    } else if tokens == BlockTokens::Energy {
                        // The frame's main data lies before the file's first frame: with no
                        // fields to stand for it, it reads as silence.
                        let silent = fields::field_range("mp3.band_energy").map_or(0, |r| r.start);
                        ids.resize(fields::LONG_BANDS, silent as u16);
                    }
                }
                let tail = match (tokens, own) {
                    (BlockTokens::FieldsAndData, Some(own)) => own,
                    (BlockTokens::FieldsAndData | BlockTokens::FieldsAndBytes, _) => {
                        &data[side.data_start()..]
                    }
                    _ => &[],
                };
                ids.extend(tail.iter().map(|&x| u16::from(x)));
            }
            Detail::Opus(info) => {
                fields::opus_field_ids(info, data, &mut ids);
                if matches!(
                    tokens,
                    BlockTokens::FieldsAndBytes | BlockTokens::FieldsAndData
                ) {
                    ids.extend(data.iter().skip(1).map(|&x| u16::from(x)));
                }
            }
            _ => ids.extend(data.iter().map(|&x| u16::from(x))),
        }
        out.push(ids);
    }
    Ok(out)
}

/// Replaces `out` with the ids of a block read `stride` bits at a time: id `j` is the 8 bits
/// that start at bit `j·stride` of `bytes` (bit 0 = the most significant bit of the first
/// byte), with bits at or past `bits` (the block's length in bits, at most `8·bytes.len()`)
/// read as 0. There are `ceil(bits / stride)` ids. With `stride` 8 and `bits = 8·len` the ids
/// are the bytes themselves.
///
/// ```
/// let mut ids = Vec::new();
/// // 1010_1100 0101_0000, 12 bits long, read 4 bits at a time.
/// tempest_tokenize::bit_windows(&[0b1010_1100, 0b0101_1111], 12, 4, &mut ids);
/// assert_eq!(ids, vec![0b1010_1100, 0b1100_0101, 0b0101_0000]);
/// ```
///
/// # Panics
/// If `stride` is 0 or above 8.
pub fn bit_windows(bytes: &[u8], bits: u64, stride: u8, out: &mut Vec<u8>) {
    assert!(
        (1..=8).contains(&stride),
        "bit stride {stride} not in 1..=8"
    );
    out.clear();
    let bits = bits.min(bytes.len() as u64 * 8);
    let byte = |i: u64| -> u32 {
        let b = bytes.get(i as usize).copied().unwrap_or(0) as u32;
        // Keep only the bits before `bits`.
        let valid = bits.saturating_sub(i * 8).min(8) as u32;
        b & (0xFF00u32 >> valid) & 0xFF
    };
    let stride = u64::from(stride);
    let mut p = 0;
    while p < bits {
        let i = p / 8;
        let pair = (byte(i) << 8) | byte(i + 1);
        out.push((pair >> (8 - (p % 8))) as u8);
        p += stride;
    }
}

/// The JPEG header (tables) as one block, where the reader exposes it.
fn header_block<'a>(reader: &Reader<'a>) -> Option<&'a [u8]> {
    match reader {
        Reader::Jpeg(r) => Some(r.header()),
        _ => None,
    }
}

/// Reads and tokenizes a file, refusing files above the reader's size limit before reading.
pub fn tokenize_file(
    path: &Path,
    config: &TokenizerConfig,
    ctx: CropContext,
) -> Result<TokenizedItem> {
    let data = cff_blocks::load(path, &config.reader.limits).map_err(|source| Error::Blocks {
        path: path.to_path_buf(),
        source,
    })?;
    tokenize(&data, path, config, ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crops_keep_the_right_count_in_order() {
        let ctx = CropContext::default();
        for crop in [Crop::First, Crop::Centre, Crop::Random, Crop::Even] {
            for (total, keep) in [(10, 3), (10, 10), (3, 10), (100, 7), (2, 1), (5, 4)] {
                let idx = crop_indices(total, keep, crop, ctx);
                assert_eq!(idx.len(), keep.min(total), "{crop:?} {total} {keep}");
                assert!(idx.windows(2).all(|w| w[0] < w[1]), "{crop:?} {idx:?}");
                assert!(idx.iter().all(|&i| i < total));
            }
        }
        assert_eq!(crop_indices(10, 3, Crop::Centre, ctx), vec![3, 4, 5]);
        assert_eq!(crop_indices(10, 4, Crop::Even, ctx), vec![0, 3, 6, 9]);
        assert_eq!(crop_indices(10, 2, Crop::First, ctx), vec![0, 1]);
    }

    #[test]
    fn random_crop_depends_on_seed_epoch_and_item_only() {
        let a = CropContext {
            seed: 1,
            epoch: 2,
            item: 3,
        };
        let starts: Vec<usize> = (0..20)
            .map(|e| crop_indices(1000, 10, Crop::Random, CropContext { epoch: e, ..a })[0])
            .collect();
        assert!(
            starts.iter().any(|&s| s != starts[0]),
            "epochs move the crop"
        );
        assert_eq!(
            crop_indices(1000, 10, Crop::Random, a),
            crop_indices(1000, 10, Crop::Random, a)
        );
    }
}
