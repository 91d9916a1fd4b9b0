//! The model's hyper-parameters, serialised as `config.json` beside the weights.

use serde::{Deserialize, Serialize};

/// The shape of one transformer stack (E_t, D_t or E_c).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackConfig {
    /// Width d.
    pub dim: usize,
    /// Number of pre-norm layers.
    pub layers: usize,
    /// Attention heads (`dim` must be a multiple).
    pub heads: usize,
    /// Hidden width of each layer's MLP.
    pub mlp_dim: usize,
}

impl StackConfig {
    /// A stack of `layers` layers of width `dim`, `heads` heads and an MLP 4× as wide.
    pub const fn new(dim: usize, layers: usize, heads: usize) -> Self {
        StackConfig {
            dim,
            layers,
            heads,
            mlp_dim: 4 * dim,
        }
    }
}

/// How M reduces a block's L byte vectors to L' tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum MixerKind {
    /// A learned linear mix over byte positions, restricted to the block's real bytes and
    /// normalised by their count (initialised as the masked mean), then an MLP over channels.
    Linear,
    /// Attention pooling: L' learned queries attend over the block's real bytes, then the same
    /// channel MLP.
    Attention,
    /// The masked mean plus a learned linear map of the block's flattened states (each
    /// position its own d_t × L'·d_t matrix, initialised small), normalised by the count of
    /// real ids, then the same channel MLP: where ids mean different things by position (an
    /// MP3 frame's fields and bands), what a position says is not averaged away.
    Flatten,
}

impl MixerKind {
    /// Every kind with its name (as `config.json` spells it).
    pub const ALL: [(MixerKind, &'static str); 3] = [
        (MixerKind::Linear, "linear"),
        (MixerKind::Attention, "attention"),
        (MixerKind::Flatten, "flatten"),
    ];

    /// The name: `linear`, `attention` or `flatten`.
    pub fn name(self) -> &'static str {
        MixerKind::ALL
            .iter()
            .find(|(k, _)| *k == self)
            .map_or("linear", |(_, n)| n)
    }

    /// Parses a name given by [`MixerKind::name`].
    pub fn parse(name: &str) -> Option<MixerKind> {
        MixerKind::ALL
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(k, _)| *k)
    }
}

/// What the context encoder is told about where each block sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BlockPositionKind {
    /// A learned embedding of the block's index in its file (clamped to `max_blocks − 1`).
    Index,
    /// The index embedding plus a projection of sinusoidal features of the block's start time
    /// in seconds (audio; 0 for images).
    IndexAndTime,
}

/// All hyper-parameters of a TEMPEST model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Ids of the byte vocabulary: 256 bytes + padding ([`tempest_tokenize::VOCAB_SIZE`]).
    pub vocab_size: usize,
    /// The largest L the model has in-block positions for.
    pub max_block_bytes: usize,
    /// The largest block index with its own position embedding (larger indices share the last).
    pub max_blocks: usize,
    /// Output classes.
    pub num_classes: usize,
    /// E_t, the block encoder (its width is the byte embedding's).
    pub block_encoder: StackConfig,
    /// M's variant.
    pub mixer: MixerKind,
    /// L': tokens per block out of M.
    pub tokens_per_block: usize,
    /// Hidden width of M's channel MLP.
    pub mixer_mlp_dim: usize,
    /// In-block positions the flatten mixer has a map of their own for (`mixer.flat` has
    /// `mix_positions · d_t` rows); states at later positions reach the tokens through the
    /// masked mean alone. 0 (the default, and what older files hold): `max_block_bytes`.
    /// `train` sets it from the longest block of the data (`tempest_train::size_mixer`).
    #[serde(skip_serializing_if = "is_zero")]
    pub mix_positions: usize,
    /// D_t, the block decoder (used only when `reconstruction_weight > 0`).
    pub block_decoder: StackConfig,
    /// E_c, the context encoder (its width is the block tokens').
    pub context_encoder: StackConfig,
    /// How E_c sees block positions.
    pub block_position: BlockPositionKind,
    /// Width K of a convolution over neighbouring blocks before E_c (0, the default and what
    /// older files hold: none; else odd). Each block token gains `Mlp(concat of the K block
    /// tokens centred on it)` (`context_encoder.conv`, K·d_c → d_c → d_c with GELU, its output
    /// layer initialised to 0, so the model starts as the one without it; blocks outside the
    /// item read as zeros): what changes from one block to the next (a note's attack and decay
    /// across MP3 frames) reaches E_c as a token feature instead of through attention alone.
    #[serde(skip_serializing_if = "is_zero")]
    pub context_conv: usize,
    /// Add a learned embedding of each block's byte length to its tokens. Not in the paper:
    /// on MNIST-JPEG the 16 MCU lengths alone carry 57 % accuracy (docs/design.md).
    pub length_embedding: bool,
    /// λ, the weight of the reconstruction loss L_r. 0 removes D_t from the model.
    pub reconstruction_weight: f64,
    /// Label smoothing of L_c (0 = plain cross-entropy).
    pub label_smoothing: f64,
    /// Mixup of block tokens while training (0 = off): each item's block tokens (the output
    /// of M, before E_c) are mixed with the next item's of its batch part as
    /// `λ·a + (1 − λ)·b`, λ = max(x, 1 − x) with x drawn from Beta(α, α) once per part, and
    /// L_c is mixed with the same λ. The value is α, in (0, 2].
    pub mixup: f64,
    /// Dropout on residual branches while training.
    pub dropout: f32,
    /// Layer-norm epsilon.
    pub layer_norm_eps: f64,
    /// Class names by index, as Hugging Face configurations name them (`"0": "dog"`); empty
    /// when the names are not known (older checkpoints keep them in `classes.json`).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub id2label: std::collections::BTreeMap<u32, String>,
    /// The inverse of `id2label`.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub label2id: std::collections::BTreeMap<String, u32>,
    /// Id ranges whose ids embed as the sum of two learned rows instead of a row of their
    /// own ([`IdFactors`]); empty (the default): every id has its own row.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub factored_ids: Vec<IdFactors>,
    /// Id ranges whose ids are the values 0, 1, 2 … of one ordered quantity (an MP3 band's
    /// energy level, `global_gain`): such an id embeds as its own row plus the sum of the
    /// range's learned steps up to its value ([`OrdinalIds`]), so that neighbouring values
    /// share what is learned about either; empty (the default): rows alone.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ordinal_ids: Vec<OrdinalIds>,
    /// How the model runs (kernels, deduplication): not part of the model, so not written to
    /// `config.json` (the keys in older files are ignored; every choice defaults to on).
    #[serde(skip)]
    pub execution: Execution,
}

/// A range of ids `start..start + values` that stand for the values 0..values of one ordered
/// quantity. Id `start + k` embeds as its byte-table row plus `steps[0] + … + steps[k − 1]`
/// (`embed.ordinal`, `values − 1` rows per range, in order, initialised to 0): the model at
/// initialisation is the one without it, and a gradient that reaches value k also moves
/// every value above the steps it shares with k, a thermometer code of the value beside its
/// own row. Ranges may not overlap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrdinalIds {
    /// The id of value 0.
    pub start: u32,
    /// Values in the range (at least 2).
    pub values: u32,
}

/// A range of ids that each say two things, a value and a class (`id = start + value · classes
/// + class`): such an id embeds as the byte table's row `value_start + value` plus a learned
/// row of its class (`embed.factors`, one block of rows per range, in order), so that ids of
/// the same value share what is learned about the value. The ids' own rows in the byte table
/// are then unused. An MP3 band id of `fields+energy-peaks` is its energy level (shared with
/// `fields+energy`'s row of that level) and its peak class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdFactors {
    /// The first id of the range.
    pub start: u32,
    /// Values of the first factor: the range is `start..start + values · classes`.
    pub values: u32,
    /// Values of the second factor.
    pub classes: u32,
    /// The byte table's row that value 0 shares.
    pub value_start: u32,
}

/// Choices of how a model runs that leave what it computes unchanged up to rounding: the
/// speed-ups that can be turned off for comparison. Kept out of `config.json`: a checkpoint
/// says what the model is, not how the machine that trained it ran it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Execution {
    /// Use the fused CPU kernels for GELU, softmax and layer norm (the same functions with
    /// one-pass forward and backward; see `kernels`). Other devices use tensor ops anyway.
    pub fused_kernels: bool,
    /// Run each transformer layer as one op with a hand-written backward on the CPU
    /// (`fused_layer`; needs `fused_kernels` too). Other devices use tensor ops anyway.
    pub fused_layers: bool,
    /// On a CUDA device, use our CUDA kernels ([`crate::cuda`]: byte embedding, attention,
    /// layer norm, the linear mixer's reduction) where they apply; off, candle's stock ops run
    /// (for comparison). Needs the crate's feature `cuda`; ignored on the CPU.
    pub cuda_kernels: bool,
    /// On the CPU, encode each distinct block of a batch once (E_t and M see a block alone,
    /// so repeats, such as silence or blank image areas, need no second pass) and copy its
    /// token to the repeats. Exact; skipped while training with dropout (its masks differ by
    /// position). Off: every block is encoded (for comparison).
    pub dedup_blocks: bool,
}

impl Default for Execution {
    /// Everything on.
    fn default() -> Self {
        Execution {
            fused_kernels: true,
            fused_layers: true,
            cuda_kernels: true,
            dedup_blocks: true,
        }
    }
}

impl Default for Config {
    /// The `small` preset.
    fn default() -> Self {
        Config::small()
    }
}

impl Config {
    /// For tests and the CPU quickstart: E_t 1×32, E_c 2×64, D_t 1×32, about 0.1 M parameters.
    pub fn tiny() -> Self {
        Config {
            vocab_size: tempest_tokenize::VOCAB_SIZE,
            max_block_bytes: 512,
            max_blocks: 256,
            num_classes: 10,
            block_encoder: StackConfig::new(32, 1, 2),
            mixer: MixerKind::Linear,
            tokens_per_block: 1,
            mixer_mlp_dim: 64,
            block_decoder: StackConfig::new(32, 1, 2),
            context_encoder: StackConfig::new(64, 2, 4),
            block_position: BlockPositionKind::Index,
            length_embedding: true,
            reconstruction_weight: 0.0,
            label_smoothing: 0.0,
            mixup: 0.0,
            dropout: 0.0,
            layer_norm_eps: 1e-5,
            id2label: Default::default(),
            label2id: Default::default(),
            factored_ids: Vec::new(),
            ordinal_ids: Vec::new(),
            execution: Execution::default(),
            mix_positions: 0,
            context_conv: 0,
        }
    }

    /// A CPU-trainable model: E_t 2×64, E_c 4×128, D_t 1×64 (the shape of the PyTorch
    /// experiment in docs/design.md), about 1 M parameters.
    pub fn small() -> Self {
        Config {
            max_block_bytes: 1024,
            max_blocks: 512,
            block_encoder: StackConfig::new(64, 2, 4),
            mixer_mlp_dim: 256,
            block_decoder: StackConfig::new(64, 1, 4),
            context_encoder: StackConfig::new(128, 4, 4),
            dropout: 0.1,
            ..Config::tiny()
        }
    }

    /// Our reading of the paper, which publishes no hyper-parameters: a ViT/AST-Small-like
    /// context encoder (6×384, 6 heads) over block tokens, a 4-layer E_t of width 192, D_t 2×192,
    /// λ = 0.1, label smoothing 0.1, block index and time positions, no length embedding
    /// (the paper has none). See `docs/model.md` for the reasons.
    pub fn paper() -> Self {
        Config {
            max_block_bytes: 1024,
            max_blocks: 1024,
            block_encoder: StackConfig::new(192, 4, 6),
            mixer_mlp_dim: 768,
            block_decoder: StackConfig::new(192, 2, 6),
            context_encoder: StackConfig::new(384, 6, 6),
            block_position: BlockPositionKind::IndexAndTime,
            length_embedding: false,
            reconstruction_weight: 0.1,
            label_smoothing: 0.1,
            dropout: 0.1,
            ..Config::tiny()
        }
    }

    /// A preset by name: `tiny`, `small` or `paper`.
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "tiny" => Some(Config::tiny()),
            "small" => Some(Config::small()),
            "paper" => Some(Config::paper()),
            _ => None,
        }
    }

    /// [`Config::preset`], with an error that lists the presets (for command lines).
    ///
    /// ```
    /// assert!(tempest_model::Config::named("tiny").is_ok());
    /// let e = tempest_model::Config::named("huge").unwrap_err().to_string();
    /// assert!(e.contains("huge") && e.contains("tiny, small or paper"));
    /// ```
    pub fn named(name: &str) -> crate::Result<Self> {
        Self::preset(name).ok_or_else(|| {
            crate::Error::Config(format!("no preset {name:?} (tiny, small or paper)"))
        })
    }

    /// In-block positions with a map of their own in the flatten mixer:
    /// [`Config::mix_positions`], or `max_block_bytes` where that is 0.
    pub fn flat_positions(&self) -> usize {
        match self.mix_positions {
            0 => self.max_block_bytes,
            p => p.min(self.max_block_bytes),
        }
    }

    /// The same configuration for `classes` classes.
    pub fn with_num_classes(mut self, classes: usize) -> Self {
        self.num_classes = classes;
        self
    }

    /// The same configuration with λ = `weight`.
    pub fn with_reconstruction_weight(mut self, weight: f64) -> Self {
        self.reconstruction_weight = weight;
        self
    }

    /// The same configuration with mixer `kind`.
    pub fn with_mixer(mut self, kind: MixerKind) -> Self {
        self.mixer = kind;
        self
    }

    /// Whether the model uses its own kernels on `device`: [`Execution::cuda_kernels`] on a
    /// CUDA device, [`Execution::fused_kernels`] elsewhere.
    pub fn own_kernels(&self, device: &candle_core::Device) -> bool {
        if device.is_cuda() {
            self.execution.cuda_kernels
        } else {
            self.execution.fused_kernels
        }
    }

    /// Whether the model has a block decoder (λ > 0).
    pub fn has_block_decoder(&self) -> bool {
        self.reconstruction_weight > 0.0
    }

    /// Checks the shapes fit together; the error says which field is wrong.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let stacks = [
            ("block_encoder", &self.block_encoder),
            ("block_decoder", &self.block_decoder),
            ("context_encoder", &self.context_encoder),
        ];
        for (name, s) in stacks {
            if s.heads == 0 || s.dim == 0 || s.dim % s.heads != 0 {
                return Err(format!(
                    "{name}: dim {} is not a positive multiple of heads {}",
                    s.dim, s.heads
                ));
            }
        }
        if self.vocab_size <= 256 {
            return Err(format!(
                "vocab_size {} leaves no padding id",
                self.vocab_size
            ));
        }
        if self.tokens_per_block == 0
            || self.max_block_bytes == 0
            || self.max_blocks == 0
            || self.num_classes == 0
        {
            return Err(
                "tokens_per_block, max_block_bytes, max_blocks and num_classes must be positive"
                    .into(),
            );
        }
        if !(0.0..1.0).contains(&self.label_smoothing) || self.reconstruction_weight < 0.0 {
            return Err("label_smoothing must be in [0, 1) and reconstruction_weight ≥ 0".into());
        }
        if let Some(e) = self.class_names_error() {
            return Err(e);
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("dropout must be in [0, 1), not {}", self.dropout));
        }
        if !(0.0..=2.0).contains(&self.mixup) {
            return Err(format!("mixup (α) must be in [0, 2], not {}", self.mixup));
        }
        if self.context_conv.is_multiple_of(2) && self.context_conv != 0 {
            return Err(format!(
                "context_conv must be 0 or odd (centred on each block), not {}",
                self.context_conv
            ));
        }
        if self.mix_positions > self.max_block_bytes {
            return Err(format!(
                "mix_positions {} exceeds max_block_bytes {}",
                self.mix_positions, self.max_block_bytes
            ));
        }
        let vocab = self.vocab_size as u64;
        for f in &self.factored_ids {
            let end = u64::from(f.start) + u64::from(f.values) * u64::from(f.classes);
            if f.values == 0
                || f.classes == 0
                || end > vocab
                || u64::from(f.value_start) + u64::from(f.values) > vocab
            {
                return Err(format!(
                    "factored_ids {f:?} reach past the vocabulary of {vocab} ids (or are empty)"
                ));
            }
        }
        let mut ordinal: Vec<(u64, u64)> = Vec::with_capacity(self.ordinal_ids.len());
        for (k, o) in self.ordinal_ids.iter().enumerate() {
            let end = u64::from(o.start) + u64::from(o.values);
            if o.values < 2 || end > vocab {
                return Err(format!(
                    "ordinal_ids[{k}] {o:?} reaches past the vocabulary of {vocab} ids (or has fewer than 2 values)"
                ));
            }
            ordinal.push((u64::from(o.start), end));
        }
        ordinal.sort_unstable();
        if let Some(w) = ordinal.windows(2).find(|w| w[1].0 < w[0].1) {
            return Err(format!(
                "ordinal_ids overlap: ids {}..{} and {}..{}",
                w[0].0, w[0].1, w[1].0, w[1].1
            ));
        }
        Ok(())
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Keys that `config.json` files written before the execution options left the model
/// configuration hold ([`Execution`]'s fields): read and ignored.
pub const LEGACY_KEYS: &[&str] = &[
    "fused_kernels",
    "fused_layers",
    "cuda_kernels",
    "dedup_blocks",
];

impl Config {
    /// A configuration from JSON text. Keys missing take the `small` preset's values; unknown
    /// keys are refused (a misspelt key would otherwise leave its default in place silently),
    /// except `LEGACY_KEYS`. Errors give the line and column. Not validated.
    pub fn from_json(text: &str) -> serde_json::Result<Config> {
        match serde_json::from_str::<serde_json::Value>(text)? {
            serde_json::Value::Object(mut map)
                if LEGACY_KEYS.iter().any(|k| map.contains_key(*k)) =>
            {
                for k in LEGACY_KEYS {
                    map.remove(*k);
                }
                serde_json::from_value(serde_json::Value::Object(map))
            }
            _ => serde_json::from_str(text),
        }
    }

    /// [`Config::from_json`] on a file, then [`Config::validate`]; errors name the file.
    pub fn from_file(path: &std::path::Path) -> crate::Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|source| crate::Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let config = Config::from_json(&text).map_err(|source| crate::Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
        config
            .validate()
            .map_err(|e| crate::Error::Config(format!("{}: {e}", path.display())))?;
        Ok(config)
    }

    /// The configuration with class names (`id2label` and `label2id`); their number should
    /// be `num_classes` ([`Config::validate`] checks).
    pub fn with_class_names(mut self, names: &[String]) -> Config {
        self.id2label = names
            .iter()
            .enumerate()
            .map(|(i, n)| (i as u32, n.clone()))
            .collect();
        self.label2id = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i as u32))
            .collect();
        self
    }

    /// The class names in index order, when `id2label` holds them.
    pub fn class_names(&self) -> Option<Vec<String>> {
        (!self.id2label.is_empty()).then(|| self.id2label.values().cloned().collect())
    }

    fn class_names_error(&self) -> Option<String> {
        if self.id2label.is_empty() && self.label2id.is_empty() {
            return None;
        }
        let n = self.num_classes;
        let complete = self.id2label.len() == n
            && self.id2label.keys().copied().eq(0..n as u32)
            && self.label2id.len() == n
            && self
                .label2id
                .iter()
                .all(|(name, &i)| self.id2label.get(&i) == Some(name));
        (!complete).then(|| {
            format!(
                "id2label and label2id must name each of the {n} classes once ({} and {} entries)",
                self.id2label.len(),
                self.label2id.len()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixer_names_round_trip_and_match_the_json_spelling() {
        for (kind, name) in MixerKind::ALL {
            assert_eq!(kind.name(), name);
            assert_eq!(MixerKind::parse(name), Some(kind));
            assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{name}\""));
        }
        assert_eq!(MixerKind::parse("mean"), None);
    }

    #[test]
    fn class_names_round_trip_as_id2label_and_label2id() {
        let names = ["dog".to_string(), "rain".to_string(), "bird".to_string()];
        let c = Config::tiny().with_num_classes(3).with_class_names(&names);
        assert_eq!(c.validate(), Ok(()));
        let json = serde_json::to_string(&c).unwrap_or_default();
        assert!(
            json.contains(r#""id2label":{"0":"dog","1":"rain","2":"bird"}"#),
            "{json}"
        );
        assert!(
            json.contains(r#""label2id":{"bird":2,"dog":0,"rain":1}"#),
            "{json}"
        );
        let back = Config::from_json(&json).unwrap_or_default();
        assert_eq!(back.class_names(), Some(names.to_vec()));
        // Without names nothing is written, and nothing is read back.
        let plain = serde_json::to_string(&Config::tiny()).unwrap_or_default();
        assert!(!plain.contains("id2label"));
        assert_eq!(Config::tiny().class_names(), None);
        // Names that do not cover the classes are refused.
        assert!(Config::tiny()
            .with_num_classes(4)
            .with_class_names(&names)
            .validate()
            .is_err());
        let twice = ["a".to_string(), "a".to_string(), "b".to_string()];
        assert!(Config::tiny()
            .with_num_classes(3)
            .with_class_names(&twice)
            .validate()
            .is_err());
    }

    #[test]
    fn unknown_keys_are_refused_with_their_line_and_legacy_keys_ignored() {
        let err = Config::from_json("{\n  \"num_classes\": 3,\n  \"dropuot\": 0.1\n}")
            .err()
            .map(|e| (e.to_string(), e.line()));
        let (msg, line) = err.unwrap_or_default();
        assert!(msg.contains("dropuot"), "{msg}");
        assert_eq!(line, 3, "{msg}");
        let nested = Config::from_json(r#"{"context_encoder": {"layers": 2, "hedas": 4}}"#);
        assert!(nested.is_err());
        let old = Config::from_json(
            r#"{"num_classes": 4, "fused_kernels": true, "dedup_blocks": false}"#,
        );
        assert_eq!(old.map(|c| c.num_classes).ok(), Some(4));
        let json = serde_json::to_string(&Config::tiny()).unwrap_or_default();
        assert_eq!(Config::from_json(&json).ok(), Some(Config::tiny()));
    }

    #[test]
    fn presets_validate_and_round_trip_through_json() {
        for name in ["tiny", "small", "paper"] {
            let c = Config::preset(name).unwrap_or_default();
            assert_eq!(c.validate(), Ok(()), "{name}");
            let json = serde_json::to_string_pretty(&c).unwrap_or_default();
            let back: Config =
                serde_json::from_str(&json).unwrap_or_else(|_| Config::tiny().with_num_classes(1));
            assert_eq!(back, c, "{name}");
        }
        // Missing fields take the default preset's values, so old config files keep loading.
        let partial: Config =
            serde_json::from_str(r#"{"num_classes": 3, "mixer": "attention"}"#).unwrap_or_default();
        assert_eq!(partial.num_classes, 3);
        assert_eq!(partial.mixer, MixerKind::Attention);
        assert_eq!(partial.context_encoder, Config::small().context_encoder);
        assert!(Config::tiny().with_num_classes(0).validate().is_err());
        let mut bad = Config::tiny();
        bad.context_encoder.heads = 3;
        assert!(bad.validate().is_err());
    }
}
