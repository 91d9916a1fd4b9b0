//! How a file's blocks become a tokenized item.

use cff_blocks::{BlockKind, Format};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The id of the padding byte: bytes are 0–255, so 256 is free.
pub const PAD_ID: u32 = 256;

/// Number of distinct ids: 256 byte values and the padding id.
pub const VOCAB_SIZE: usize = 257;

/// What a block's ids stand for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum BlockTokens {
    /// The block's bytes (or bit windows, see [`TokenizerConfig::bit_stride`]), as in the paper.
    #[default]
    Bytes,
    /// The codec's fields as values ([`crate::fields`]): an MP3 frame's header and side
    /// information, an Opus packet's TOC, frame count and length. JPEG MCUs keep their bytes.
    Fields,
    /// The fields, then the bytes after them in the block (MP3: the frame's bytes after its
    /// side information; Opus: the packet after its TOC byte).
    FieldsAndBytes,
    /// The fields, then the block's own coded data: for MP3 the frame's main data taken from
    /// the bit reservoir ([`cff_blocks::mp3::MainData`]), so that the Huffman data of a
    /// frame's granules follows the side information that describes it (where the reservoir
    /// reaches back before the file's first frame, the bytes after the side information);
    /// Opus as [`BlockTokens::FieldsAndBytes`].
    FieldsAndData,
    /// The fields, then for MP3 one id per scalefactor band of each granule: the level of
    /// its entropy-decoded quantised lines with its scalefactor ([`crate::fields::mp3_line_ids`];
    /// no requantisation, no inverse transform). Opus packets give their fields only.
    FieldsAndLines,
    /// As [`BlockTokens::FieldsAndLines`], but each band id is the band's energy: its
    /// quantised lines requantised with the frame's own gain and scalefactors and summed
    /// ([`crate::fields::BandValue::Energy`]; no inverse transform, no filterbank).
    FieldsAndEnergy,
    /// MP3 frames as their band energies alone, as [`BlockTokens::FieldsAndEnergy`] gives
    /// them after the fields, without the header and side-information fields (what they say of
    /// loudness is in the energies; the rest describes how the encoder spent its bits, which
    /// changes with the bitrate). Opus packets give their fields, JPEG MCUs their bytes.
    Energy,
    /// As [`BlockTokens::FieldsAndEnergy`] at twice the frequency resolution: each
    /// scalefactor band gives two ids, the energies of the lower and the upper half of its
    /// lines ([`crate::fields::BandValue::HalfBandEnergy`]; both halves share the band's
    /// scalefactor, so each is still one step of requantisation and no more). A 16 kHz mono
    /// frame has 17 + 44 ids (long blocks) or 17 + 78 (short).
    FieldsAndHalfBands,
    /// As [`BlockTokens::FieldsAndEnergy`] with one id per band that also says where the
    /// band's strongest quantised line lies (the quarter of the band) and whether it holds
    /// half the band's power ([`crate::fields::BandValue::EnergyPeak`]): finer than a band in
    /// frequency and tonal against noisy, at the same number of ids per frame.
    FieldsAndEnergyPeaks,
    /// As [`BlockTokens::FieldsAndHalfBands`] with both halves of a band in one id
    /// ([`crate::fields::BandValue::PackedHalves`]): the half bands' frequency resolution at
    /// [`BlockTokens::FieldsAndEnergy`]'s number of ids per frame (17 + 22 for a 16 kHz mono
    /// long block), so E_t's cost stays that of the band energies.
    FieldsAndPackedHalves,
}

impl BlockTokens {
    /// Every variant with its name.
    pub const ALL: [(BlockTokens, &'static str); 10] = [
        (BlockTokens::Bytes, "bytes"),
        (BlockTokens::Fields, "fields"),
        (BlockTokens::FieldsAndBytes, "fields+bytes"),
        (BlockTokens::FieldsAndData, "fields+data"),
        (BlockTokens::FieldsAndLines, "fields+lines"),
        (BlockTokens::FieldsAndEnergy, "fields+energy"),
        (BlockTokens::Energy, "energy"),
        (BlockTokens::FieldsAndHalfBands, "fields+half-bands"),
        (BlockTokens::FieldsAndEnergyPeaks, "fields+energy-peaks"),
        (BlockTokens::FieldsAndPackedHalves, "fields+packed-halves"),
    ];

    /// The name: `bytes`, `fields`, `fields+bytes`, `fields+data`, `fields+lines`,
    /// `fields+energy`, `energy`, `fields+half-bands`, `fields+energy-peaks` or
    /// `fields+packed-halves`.
    pub fn name(self) -> &'static str {
        BlockTokens::ALL
            .iter()
            .find(|(t, _)| *t == self)
            .map_or("bytes", |(_, n)| n)
    }

    /// Parses a name given by [`BlockTokens::name`].
    pub fn parse(name: &str) -> Option<BlockTokens> {
        BlockTokens::ALL
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(t, _)| *t)
    }

    /// Every name, for messages: `bytes, fields, fields+bytes, fields+data, fields+lines,
    /// fields+energy, energy, fields+half-bands, fields+energy-peaks, fields+packed-halves`.
    pub fn names() -> String {
        let names: Vec<&str> = BlockTokens::ALL.iter().map(|(_, n)| *n).collect();
        names.join(", ")
    }

    /// Whether field ids are used (the model then needs [`BlockTokens::vocab_size`] ids).
    pub fn has_fields(self) -> bool {
        self != BlockTokens::Bytes
    }

    /// Field ids are read from whole bytes: an error unless `bit_stride` is 8 with fields.
    pub(crate) fn check_bit_stride(self, bit_stride: u8) -> crate::Result<()> {
        if self.has_fields() && bit_stride != 8 {
            return Err(crate::Error::Config(format!(
                "tokens {} read whole bytes: bit_stride {bit_stride} must be 8",
                self.name()
            )));
        }
        Ok(())
    }

    /// Whether MP3 frames give one id per scalefactor band after their fields
    /// (`fields+lines`, `fields+energy`; `energy` gives them alone), which the band and time
    /// masks and the band shift act on.
    pub fn has_bands(self) -> bool {
        self.band_value().is_some()
    }

    /// What the band ids of MP3 frames say ([`crate::fields::mp3_line_ids`]), for the kinds
    /// that have them ([`BlockTokens::has_bands`]).
    pub fn band_value(self) -> Option<crate::fields::BandValue> {
        use crate::fields::BandValue;
        match self {
            BlockTokens::FieldsAndLines => Some(BandValue::LevelScalefac),
            BlockTokens::FieldsAndEnergy | BlockTokens::Energy => Some(BandValue::Energy),
            BlockTokens::FieldsAndHalfBands => Some(BandValue::HalfBandEnergy),
            BlockTokens::FieldsAndEnergyPeaks => Some(BandValue::EnergyPeak),
            BlockTokens::FieldsAndPackedHalves => Some(BandValue::PackedHalves),
            _ => None,
        }
    }

    /// Whether the band ids are energies (`fields+energy`, `energy`, `fields+half-bands`,
    /// `fields+energy-peaks`):
    /// the kinds [`TokenizerConfig::merge_short_windows`] applies to.
    pub fn has_energies(self) -> bool {
        self.band_value()
            .is_some_and(|v| v != crate::fields::BandValue::LevelScalefac)
    }

    /// Ids each scalefactor band gives (of each window, for short blocks): 2 for
    /// [`BlockTokens::FieldsAndHalfBands`], else 1.
    pub fn ids_per_band(self) -> usize {
        self.band_value()
            .map_or(1, crate::fields::BandValue::ids_per_band)
    }

    /// Id ranges whose ids are a value and a class (`fields+energy-peaks`: each band's energy
    /// level and peak class, [`crate::fields::peak_factors`]; `fields+packed-halves`: the
    /// lower and the upper half's level, [`crate::fields::halves_factors`]), as `(start,
    /// values, classes, value_start)`: a model may embed them as the value's row plus the
    /// class's. Empty for the other kinds.
    pub fn id_factors(self) -> Vec<(u32, u32, u32, u32)> {
        use crate::fields::BandValue;
        match self.band_value() {
            Some(BandValue::EnergyPeak) => crate::fields::peak_factors().to_vec(),
            Some(BandValue::PackedHalves) => crate::fields::halves_factors().to_vec(),
            _ => Vec::new(),
        }
    }

    /// The vocabulary a model needs for these ids.
    pub fn vocab_size(self) -> usize {
        use crate::fields::BandValue;
        match self.band_value() {
            Some(BandValue::EnergyPeak) => crate::PEAK_VOCAB_SIZE,
            Some(BandValue::PackedHalves) => crate::HALVES_VOCAB_SIZE,
            Some(BandValue::Energy | BandValue::HalfBandEnergy) => crate::ENERGY_VOCAB_SIZE,
            Some(BandValue::LevelScalefac) => crate::LINES_VOCAB_SIZE,
            None if self.has_fields() => crate::FIELDS_VOCAB_SIZE,
            None => VOCAB_SIZE,
        }
    }
}

impl Serialize for BlockTokens {
    /// As its [`name`](BlockTokens::name).
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for BlockTokens {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        BlockTokens::parse(&name).ok_or_else(|| {
            serde::de::Error::custom(format!("tokens {name:?} (one of {})", BlockTokens::names()))
        })
    }
}

/// Which blocks of a file to keep when there are more than `max_blocks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Crop {
    /// The first `max_blocks` blocks.
    First,
    /// The `max_blocks` blocks around the middle.
    Centre,
    /// A contiguous run of `max_blocks` blocks at a random start, drawn from the seed, the
    /// epoch and the item (see [`CropContext`](crate::CropContext)).
    Random,
    /// `max_blocks` blocks spread evenly over the file (every k-th block, first and last kept).
    Even,
}

/// Which block kinds are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindFilter {
    /// Keep audio blocks (MP3 frames, Opus packets).
    pub audio: bool,
    /// Keep metadata blocks (Xing/Info/VBRI frames, OpusHead, OpusTags).
    pub metadata: bool,
    /// Keep JPEG MCUs.
    pub mcu: bool,
}

impl Default for KindFilter {
    /// Media blocks only: metadata blocks say nothing about the content.
    fn default() -> Self {
        KindFilter {
            audio: true,
            metadata: false,
            mcu: true,
        }
    }
}

impl KindFilter {
    /// Whether blocks of `kind` are kept.
    pub fn keeps(&self, kind: BlockKind) -> bool {
        match kind {
            BlockKind::Audio => self.audio,
            BlockKind::Metadata => self.metadata,
            BlockKind::Mcu => self.mcu,
            _ => false,
        }
    }
}

/// How a file's blocks become a tokenized item.
///
/// A checkpoint saves it as `tokenizer.json` (serde) so that evaluation and classification
/// read files as training did: the fields from `format` to `band_shift` in this order, the
/// options and augmentations that are zero left out; unknown keys are refused. Not saved: the
/// crop, which each use sets ([`TokenizerConfig::train_config`],
/// [`TokenizerConfig::eval_config`]), and the padding id, block kinds and reader options, which
/// keep their defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TokenizerConfig {
    /// The format these settings were chosen for ([`TokenizerConfig::for_format`]); a file is
    /// read by the format detected from its bytes either way.
    #[serde(default, with = "format_name", skip_serializing_if = "Option::is_none")]
    pub format: Option<Format>,
    /// L: bytes kept per block; longer blocks are truncated and the truncation counted.
    pub max_block_bytes: usize,
    /// N: blocks kept per item; longer files are cropped by `crop`.
    pub max_blocks: usize,
    /// How to choose `max_blocks` blocks of a longer file.
    #[serde(skip, default = "first")]
    pub crop: Crop,
    /// The id written at padding positions ([`PAD_ID`] by default).
    #[serde(skip, default = "pad")]
    pub pad_id: u32,
    /// Which block kinds are kept.
    #[serde(skip)]
    pub kinds: KindFilter,
    /// JPEG: keep the file's header (SOI up to the first scan's data: the tables) as one
    /// extra block in front of the MCUs.
    pub jpeg_header_block: bool,
    /// What one id of a block stands for: 8 (the default) gives one id per byte, as in the
    /// paper; 4, 2 or 1 give one id per that many bits, each id being the 8 bits that start
    /// there (bits past the block's end read as 0). Entropy-coded blocks (JPEG MCUs) have codes
    /// that straddle byte boundaries: with a stride below 8 every code of up to `9 − stride`
    /// bits is seen whole by some id, at `8 / stride` times the ids. L (`max_block_bytes`)
    /// then counts ids, not bytes. See [`bit_windows`](crate::bit_windows). Saved
    /// checkpoints without it read as 8.
    #[serde(default = "byte_stride")]
    pub bit_stride: u8,
    /// What a block's ids stand for: its bytes (the default) or the codec's fields. Saved
    /// checkpoints without it read as bytes.
    #[serde(default)]
    pub tokens: BlockTokens,
    /// Training only: N for training items, a random contiguous run of this many blocks (a
    /// random crop in time), while evaluation keeps `max_blocks` around the middle. `None`:
    /// `max_blocks`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_blocks: Option<usize>,
    /// With field tokens of MP3 frames: move every `global_gain` of an item by one offset
    /// drawn uniformly from `-gain_jitter..=gain_jitter` quantiser steps (1.5 dB each), from
    /// the seed, epoch and item of the [`CropContext`](crate::CropContext): a loudness
    /// augmentation done in the compressed domain. 0 (the default) changes nothing.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gain_jitter: u8,
    /// With band ids ([`BlockTokens::has_bands`]): silence a run of up to `band_mask` consecutive
    /// long scalefactor bands (a frequency range) in every frame of an item, the same range
    /// for the whole item, drawn from the seed, epoch and item of the
    /// [`CropContext`](crate::CropContext): their ids read as level 0 with scalefactor 0, as if
    /// the encoder had coded nothing there (short-block bands over the same lines too). A
    /// frequency mask in the compressed domain. 0 (the default) changes nothing.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub band_mask: u8,
    /// With band ids ([`BlockTokens::has_bands`]): move every band id of an item by one shift
    /// drawn uniformly from `-band_shift..=band_shift` band positions (the same for the whole
    /// item; [`crate::fields::mp3_line_ids`]), from the seed, epoch and item of the
    /// [`CropContext`](crate::CropContext): a coarse warp of the frequency axis, as vocal-tract
    /// length perturbation warps a spectrogram, done in the compressed domain. 0 (the default)
    /// changes nothing.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub band_shift: u8,
    /// With band ids ([`BlockTokens::has_bands`]): silence every band of a run of up to
    /// `time_mask` consecutive frames of an item (their band ids read as level 0 with
    /// scalefactor 0; the side-information fields stay), the run drawn from the seed, epoch
    /// and item of the [`CropContext`](crate::CropContext): a time mask in the compressed
    /// domain, as SpecAugment masks a run of spectrogram frames. 0 (the default) changes
    /// nothing.
    #[serde(default, skip_serializing_if = "is_zero_u16")]
    pub time_mask: u16,
    /// With band energies (`fields+energy`, `energy`, `fields+half-bands`, `fields+energy-peaks`): a short-block
    /// granule gives the long bands' ids as a long block does, each long band the mean power
    /// of the short lines of all three windows whose centre lies in it (each line requantised
    /// with its own window's step), so that every frame has one layout and one id range
    /// ([`crate::fields::mp3_line_ids`]); false (the default): short blocks give their 13
    /// bands × 3 windows. Not an augmentation: evaluation reads files the same way.
    #[serde(default, skip_serializing_if = "is_false")]
    pub merge_short_windows: bool,
    /// Per format (by [`Format::name`]), fewer ids per block than `max_block_bytes`: a run over
    /// files of several formats reads each format's share of a block as its own recipe does
    /// (a JPEG MCU's first 8 bytes beside whole MP3 frames;
    /// [`TokenizerConfig::block_bytes_for`]). Empty (the default): `max_block_bytes` for every
    /// format.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub format_block_bytes: std::collections::BTreeMap<String, usize>,
    /// Options of the block readers (limits, CRC checks).
    #[serde(skip)]
    pub reader: cff_blocks::Options,
}

fn first() -> Crop {
    Crop::First
}

fn pad() -> u32 {
    PAD_ID
}

fn byte_stride() -> u8 {
    8
}

fn is_zero(v: &u8) -> bool {
    *v == 0
}

fn is_zero_u16(v: &u16) -> bool {
    *v == 0
}

fn is_false(v: &bool) -> bool {
    !*v
}

/// A format saved by its [`Format::name`] (`mp3`, `ogg-opus`, `jpeg`; `opus` reads as Ogg Opus).
mod format_name {
    use cff_blocks::Format;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(f: &Option<Format>, s: S) -> Result<S::Ok, S::Error> {
        match f {
            Some(f) => s.serialize_str(f.name()),
            None => s.serialize_none(),
        }
    }

    /// The names, for messages.
    pub(super) const NAMES: &str = "mp3, ogg-opus, jpeg";

    /// The format of a name ([`Format::name`]'s, or `opus` for Ogg Opus).
    pub(super) fn parse(name: &str) -> Option<Format> {
        match name {
            "mp3" => Some(Format::Mp3),
            "ogg-opus" | "opus" => Some(Format::OggOpus),
            "jpeg" => Some(Format::Jpeg),
            _ => None,
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Format>, D::Error> {
        let name = String::deserialize(d)?;
        match parse(&name) {
            Some(f) => Ok(Some(f)),
            None => Err(serde::de::Error::custom(format!(
                "format {name:?} (one of {NAMES})"
            ))),
        }
    }
}

impl Default for TokenizerConfig {
    fn default() -> Self {
        TokenizerConfig {
            format: None,
            max_block_bytes: 512,
            max_blocks: 1024,
            crop: Crop::First,
            pad_id: PAD_ID,
            kinds: KindFilter::default(),
            jpeg_header_block: false,
            bit_stride: 8,
            tokens: BlockTokens::Bytes,
            train_blocks: None,
            gain_jitter: 0,
            band_mask: 0,
            band_shift: 0,
            time_mask: 0,
            merge_short_windows: false,
            format_block_bytes: std::collections::BTreeMap::new(),
            reader: cff_blocks::Options::default(),
        }
    }
}

impl TokenizerConfig {
    /// Defaults chosen for a format from measured block sizes (docs/tokenize.md has the
    /// measurements and commands): L covers every frame of a 16 kHz MP3 up to 64 kbps (289
    /// bytes at most), every Opus packet of 64 kbps speech with 20 ms frames (345 measured),
    /// and every MCU of a q95 28×28 MNIST JPEG (71 measured); N covers 36 s of 16 kHz MP3,
    /// 30 s of 20 ms Opus packets, and a 256×256 grayscale or 512×512 4:2:0 image.
    pub fn for_format(format: Format) -> Self {
        let (max_block_bytes, max_blocks) = match format {
            Format::Mp3 => (320, 1024),
            Format::OggOpus => (384, 1536),
            Format::Jpeg => (160, 1024),
            _ => (512, 1024),
        };
        TokenizerConfig {
            format: Some(format),
            max_block_bytes,
            max_blocks,
            ..TokenizerConfig::default()
        }
    }

    /// Defaults for one run over files of several formats: the largest L and N among the
    /// formats' own ([`TokenizerConfig::for_format`]), so that no format's blocks are cut
    /// more than alone; `format` is the one format where `formats` holds one, else `None`.
    /// Caps for one format's blocks go in [`TokenizerConfig::format_block_bytes`].
    pub fn for_formats(formats: &[Format]) -> Self {
        let each: Vec<TokenizerConfig> = formats.iter().map(|&f| Self::for_format(f)).collect();
        match each.as_slice() {
            [] => TokenizerConfig::default(),
            [one] => one.clone(),
            many => TokenizerConfig {
                max_block_bytes: many.iter().map(|c| c.max_block_bytes).max().unwrap_or(512),
                max_blocks: many.iter().map(|c| c.max_blocks).max().unwrap_or(1024),
                ..TokenizerConfig::default()
            },
        }
    }

    /// The tokenizer for training: a random contiguous crop of [`TokenizerConfig::train_blocks`]
    /// (else `max_blocks`) blocks where a file has more (seeded by the run's seed, the epoch
    /// and the item), with the augmentations. An error where the settings make no sense.
    pub fn train_config(&self) -> crate::Result<TokenizerConfig> {
        let mut config = self.clone().with_crop(Crop::Random);
        if let Some(n) = self.train_blocks {
            config.max_blocks = n.max(1);
        }
        config.validate()?;
        Ok(config)
    }

    /// The tokenizer for evaluation and classification: the `max_blocks` blocks around the
    /// middle, read as they are (no augmentation).
    pub fn eval_config(&self) -> crate::Result<TokenizerConfig> {
        let config = TokenizerConfig {
            gain_jitter: 0,
            band_mask: 0,
            band_shift: 0,
            time_mask: 0,
            ..self.clone().with_crop(Crop::Centre)
        };
        config.validate()?;
        Ok(config)
    }

    /// Caps the ids kept per block of `format`'s files at `ids`
    /// ([`TokenizerConfig::format_block_bytes`]).
    pub fn with_format_block_bytes(mut self, format: Format, ids: usize) -> Self {
        self.format_block_bytes
            .insert(format.name().to_string(), ids);
        self
    }

    /// L for blocks of `format`: `max_block_bytes`, or the format's own cap where it is
    /// smaller ([`TokenizerConfig::format_block_bytes`]).
    pub fn block_bytes_for(&self, format: Format) -> usize {
        self.format_block_bytes
            .get(format.name())
            .map_or(self.max_block_bytes, |&l| l.min(self.max_block_bytes))
    }

    /// Sets N for training items ([`TokenizerConfig::train_blocks`]).
    pub fn with_train_blocks(mut self, n: Option<usize>) -> Self {
        self.train_blocks = n;
        self
    }

    /// Sets L.
    pub fn with_max_block_bytes(mut self, l: usize) -> Self {
        self.max_block_bytes = l;
        self
    }

    /// Sets N.
    pub fn with_max_blocks(mut self, n: usize) -> Self {
        self.max_blocks = n;
        self
    }

    /// Sets the crop policy.
    pub fn with_crop(mut self, crop: Crop) -> Self {
        self.crop = crop;
        self
    }

    /// Sets the padding id.
    pub fn with_pad_id(mut self, pad_id: u32) -> Self {
        self.pad_id = pad_id;
        self
    }

    /// Sets which block kinds are kept.
    pub fn with_kinds(mut self, kinds: KindFilter) -> Self {
        self.kinds = kinds;
        self
    }

    /// Keeps (or drops) the JPEG header as an extra block.
    pub fn with_jpeg_header_block(mut self, keep: bool) -> Self {
        self.jpeg_header_block = keep;
        self
    }

    /// Sets what one id stands for (see [`TokenizerConfig::bit_stride`]): 8, 4, 2 or 1 bits.
    pub fn with_bit_stride(mut self, stride: u8) -> Self {
        self.bit_stride = stride;
        self
    }

    /// Sets what a block's ids stand for.
    pub fn with_tokens(mut self, tokens: BlockTokens) -> Self {
        self.tokens = tokens;
        self
    }

    /// Sets whether short blocks give the long bands' energies
    /// ([`TokenizerConfig::merge_short_windows`]).
    pub fn with_merge_short_windows(mut self, merge: bool) -> Self {
        self.merge_short_windows = merge;
        self
    }

    /// Sets the time mask of line tokens ([`TokenizerConfig::time_mask`]).
    pub fn with_time_mask(mut self, frames: u16) -> Self {
        self.time_mask = frames;
        self
    }

    /// Sets the band mask of line tokens ([`TokenizerConfig::band_mask`]).
    pub fn with_band_mask(mut self, bands: u8) -> Self {
        self.band_mask = bands;
        self
    }

    /// Sets the band shift of line tokens ([`TokenizerConfig::band_shift`]).
    pub fn with_band_shift(mut self, bands: u8) -> Self {
        self.band_shift = bands;
        self
    }

    /// Sets the loudness jitter of field tokens ([`TokenizerConfig::gain_jitter`]).
    pub fn with_gain_jitter(mut self, steps: u8) -> Self {
        self.gain_jitter = steps;
        self
    }

    /// Sets the block readers' options.
    pub fn with_reader_options(mut self, options: cff_blocks::Options) -> Self {
        self.reader = options;
        self
    }

    /// Checks that the numbers make sense.
    pub fn validate(&self) -> crate::Result<()> {
        if self.max_block_bytes == 0 || self.max_blocks == 0 {
            return Err(crate::Error::Config(format!(
                "max_block_bytes ({}) and max_blocks ({}) must be at least 1",
                self.max_block_bytes, self.max_blocks
            )));
        }
        for (name, &ids) in &self.format_block_bytes {
            // Keyed by the format's own name (the one `block_bytes_for` looks up).
            let named = format_name::parse(name).is_some_and(|f| f.name() == name);
            if !named || ids == 0 {
                return Err(crate::Error::Config(format!(
                    "format_block_bytes: {name:?} {ids} (a format of {}, and at least 1 id)",
                    format_name::NAMES
                )));
            }
        }
        if !matches!(self.bit_stride, 1 | 2 | 4 | 8) {
            return Err(crate::Error::Config(format!(
                "bit_stride {} is not one of 1, 2, 4, 8",
                self.bit_stride
            )));
        }
        self.tokens.check_bit_stride(self.bit_stride)?;
        if self.merge_short_windows && !self.tokens.has_energies() {
            return Err(crate::Error::Config(format!(
                "merge_short_windows needs band energies (fields+energy, energy, \
                 fields+half-bands or fields+energy-peaks), not tokens {}",
                self.tokens.name()
            )));
        }
        let fields = crate::fields::FIELD_BASE..self.tokens.vocab_size() as u32;
        if self.tokens.has_fields() && fields.contains(&self.pad_id) {
            return Err(crate::Error::Config(format!(
                "pad_id {} collides with a field id ({}-{})",
                self.pad_id,
                fields.start,
                fields.end - 1
            )));
        }
        if self.pad_id < 256 {
            return Err(crate::Error::Config(format!(
                "pad_id {} collides with a byte value (0-255)",
                self.pad_id
            )));
        }
        Ok(())
    }
}
