//! The TEMPEST model: byte embedding, E_t, M, D_t, E_c and the head (arXiv 2510.23665 §3).

use candle_core::{DType, Device, IndexOp, Result, Tensor, D};
use candle_nn::{Init, VarBuilder, VarMap};
use tempest_tokenize::Batch;

use crate::config::{BlockPositionKind, Config, MixerKind, StackConfig};
use crate::mixup::Mixup;
use crate::nn::{key_bias, Attention, Embedding, LayerNorm, Linear, Mlp, StackSpec, Transformer};
use tempest_kernels::{BlockEncoderWeights, DropoutRng, LayerWeights};

/// Sinusoidal features of a block's start time: this many frequencies (sine and cosine each).
pub const TIME_FREQUENCIES: usize = 16;
/// Shortest and longest period of the time features, in seconds: from a few MP3 frames to a
/// long clip.
const TIME_PERIODS: (f64, f64) = (0.01, 100.0);
/// Standard deviation of learned embeddings at initialisation.
const EMBED_STD: f64 = 0.02;

fn spec(cfg: &Config, s: &StackConfig, rng: &DropoutRng, device: &Device) -> StackSpec {
    StackSpec {
        dim: s.dim,
        layers: s.layers,
        heads: s.heads,
        mlp_dim: s.mlp_dim,
        dropout: cfg.dropout,
        eps: cfg.layer_norm_eps,
        fused: cfg.own_kernels(device),
        fused_layer: cfg.execution.fused_kernels && cfg.execution.fused_layers,
        rng: rng.clone(),
    }
}

/// M: a block's L byte vectors `[BN, L, d_t]` to L' tokens `[BN, L', d_c]`.
#[derive(Debug, Clone)]
enum Mix {
    /// `mixer.mix [L', max_block_bytes]`.
    Linear(Tensor),
    /// `mixer.queries [L', d_t]`, `mixer.attn.*`.
    Attention(Tensor, Attention),
    /// `mixer.flat [P · d_t, L' · d_t]`: one d_t × L'·d_t map for each of the first P
    /// positions (`Config::flat_positions`).
    Flatten(Tensor),
}

/// M, the mixer. Tensor names: `mixer.mix`, `mixer.flat` or `mixer.queries` +
/// `mixer.attn.{q,k,v,o}`, then
/// `mixer.norm`, `mixer.mlp.{fc1,fc2}`.
#[derive(Debug, Clone)]
pub struct Mixer {
    mix: Mix,
    /// Our kernels on this device (`Config::own_kernels`).
    own_kernels: bool,
    norm: LayerNorm,
    mlp: Mlp,
}

impl Mixer {
    fn new(cfg: &Config, vb: VarBuilder<'_>) -> Result<Self> {
        let (lt, dt) = (cfg.tokens_per_block, cfg.block_encoder.dim);
        let mix = match cfg.mixer {
            // Ones: the masked mean, which the PyTorch experiment used; the noise makes the L'
            // tokens differ from the start.
            MixerKind::Linear => Mix::Linear(vb.get_with_hints(
                (lt, cfg.max_block_bytes),
                "mix",
                Init::Randn {
                    mean: 1.0,
                    stdev: EMBED_STD,
                },
            )?),
            // Small: M starts as the masked mean and learns what each position adds.
            MixerKind::Flatten => Mix::Flatten(vb.get_with_hints(
                (cfg.flat_positions() * dt, lt * dt),
                "flat",
                Init::Randn {
                    mean: 0.0,
                    stdev: EMBED_STD,
                },
            )?),
            MixerKind::Attention => Mix::Attention(
                vb.get_with_hints(
                    (lt, dt),
                    "queries",
                    Init::Randn {
                        mean: 0.0,
                        stdev: 1.0,
                    },
                )?,
                Attention::new(
                    dt,
                    cfg.block_encoder.heads,
                    1.0 / (dt as f64).sqrt(),
                    cfg.own_kernels(vb.device()),
                    vb.pp("attn"),
                )?,
            ),
        };
        Ok(Mixer {
            mix,
            own_kernels: cfg.own_kernels(vb.device()),
            norm: LayerNorm::new(
                dt,
                cfg.layer_norm_eps,
                cfg.own_kernels(vb.device()),
                vb.pp("norm"),
            )?,
            mlp: Mlp::new(
                dt,
                cfg.mixer_mlp_dim,
                cfg.context_encoder.dim,
                None,
                cfg.own_kernels(vb.device()),
                vb.pp("mlp"),
            )?,
        })
    }

    /// `h [BN, L, d_t]`, `mask [BN, L]` in the model's dtype, `bias [BN, 1, 1, L]` → `[BN, L', d_c]`.
    fn forward(&self, h: &Tensor, mask: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let (bn, _, dt) = h.dims3()?;
        let pooled = match &self.mix {
            // Σ_i w_ji·m_i·h_i / max(1, Σ_i m_i): padded bytes get weight exactly 0.
            Mix::Linear(w) => tempest_kernels::masked_mix(h, mask, w, self.own_kernels)?,
            Mix::Attention(queries, attn) => {
                let q = attn.q().forward(queries)?; // [L', d_t], projected once
                let q = q
                    .unsqueeze(0)?
                    .broadcast_as((bn, q.dim(0)?, dt))?
                    .contiguous()?;
                attn.attend_projected(&q, h, Some(bias))?
            }
            // (Σ_i m_i·h_i·(I + W_i)) / max(1, Σ_i m_i), each of the L' tokens its own columns
            // of W: a position's state reaches the token through a map of its own, so which
            // band (or field) a value came from survives the pooling.
            Mix::Flatten(w) => {
                let count = mask.sum_keepdim(1)?.maximum(1.0)?; // [BN, 1]
                let scaled = h.broadcast_mul(&mask.broadcast_div(&count)?.unsqueeze(2)?)?;
                flatten_pool(w, &scaled)?
            }
        };
        self.after_mix(&pooled)
    }

    /// The norm and MLP after the mix: `[BN, L', d_t]` → `[BN, L', d_c]`.
    fn after_mix(&self, pooled: &Tensor) -> Result<Tensor> {
        self.mlp.forward(&self.norm.forward(pooled)?)
    }
}

/// The flatten mixer's pooling from `scaled [BN, L, d_t]`, each state times `m_i / max(1, Σ
/// m)` (what the fused E_t node gives without a mix): their sum plus the flattened states of
/// the first P positions (the rows of `w [P·d_t, L'·d_t]`) through `w`, `[BN, L', d_t]`.
/// States past P reach the tokens through the sum alone.
///
/// The sum over the first P positions rides in the same product: `Σ_i s_i·(I + W_i)` is the
/// flattened states times `w` plus a tiled identity, one matrix product instead of a product,
/// a sum over L and a broadcast (whose gradients each fill a `[BN, L, d_t]` tensor).
fn flatten_pool(w: &Tensor, scaled: &Tensor) -> Result<Tensor> {
    let (bn, l, dt) = scaled.dims3()?;
    let lt = w.dim(1)? / dt;
    let p = l.min(w.dim(0)? / dt);
    // (A narrow to the whole length is the tensor itself, and `contiguous` of a contiguous
    // tensor too.)
    let head = scaled.narrow(1, 0, p)?.contiguous()?;
    let w = w.narrow(0, 0, p * dt)?;
    // [I I … I] (L' times) for each of the p positions: [p·d_t, L'·d_t].
    let eye = Tensor::eye(dt, w.dtype(), w.device())?.repeat((p, lt))?;
    let mut flat = head
        .reshape((bn, p * dt))?
        .matmul(&(w + eye)?)?
        .reshape((bn, lt, dt))?;
    if p < l {
        let tail = scaled.narrow(1, p, l - p)?.sum(1)?; // [BN, d_t]
        flat = flat.broadcast_add(&tail.unsqueeze(1)?)?;
    }
    Ok(flat)
}

/// D_t, the block decoder: the L' tokens of a block back to its L bytes. Tensor names
/// `block_decoder.input` (d_c → d), `block_decoder.positions [max_block_bytes, d]`,
/// `block_decoder.layers.{i}.*`, `block_decoder.norm`, `block_decoder.output` (d → the ids
/// below padding: 256 bytes, or with field ids every id but padding's, `vocab_size − 1`).
#[derive(Debug, Clone)]
pub struct BlockDecoder {
    input: Linear,
    positions: Tensor,
    stack: Transformer,
    output: Linear,
}

impl BlockDecoder {
    fn new(cfg: &Config, rng: &DropoutRng, vb: VarBuilder<'_>) -> Result<Self> {
        let d = cfg.block_decoder.dim;
        Ok(BlockDecoder {
            input: Linear::new(cfg.context_encoder.dim, d, true, None, vb.pp("input"))?,
            positions: vb.get_with_hints(
                (cfg.max_block_bytes, d),
                "positions",
                Init::Randn {
                    mean: 0.0,
                    stdev: EMBED_STD,
                },
            )?,
            stack: Transformer::new(&spec(cfg, &cfg.block_decoder, rng, vb.device()), vb.clone())?,
            output: Linear::new(d, cfg.vocab_size - 1, true, None, vb.pp("output"))?,
        })
    }

    /// `tokens [BN, L', d_c]` → byte logits `[BN, L, 256]`. The sequence is the L' projected
    /// tokens followed by L position queries; the queries carry no bytes, so only the tokens
    /// inform the reconstruction.
    pub fn forward(&self, tokens: &Tensor, l: usize, train: bool) -> Result<Tensor> {
        self.output(&self.hidden(tokens, l, train)?)
    }

    /// [`BlockDecoder::forward`] before its output layer: `tokens [BN, L', d_c]` → the L
    /// position queries' states `[BN, L, d]` (masked block modelling takes a few positions
    /// of them to [`BlockDecoder::output`]).
    pub fn hidden(&self, tokens: &Tensor, l: usize, train: bool) -> Result<Tensor> {
        let (bn, lt, _) = tokens.dims3()?;
        let d = self.positions.dim(1)?;
        let t = self.input.forward(tokens)?;
        let q = self
            .positions
            .narrow(0, 0, l)?
            .unsqueeze(0)?
            .broadcast_as((bn, l, d))?;
        let x = Tensor::cat(&[&t, &q], 1)?;
        let y = self.stack.forward(&x, None, train)?;
        y.narrow(1, lt, l)
    }

    /// D_t asked for some positions only: `tokens [BN, L', d_c]` and `positions [BN, P]` (u32,
    /// in-block positions below `max_block_bytes`) → those queries' states `[BN, P, d]`. The
    /// sequence is the L' projected tokens followed by the P position queries (instead of all
    /// L of [`BlockDecoder::hidden`]): masked block modelling predicts a few ids of each
    /// masked block, and attention over L' + P instead of L' + L positions is what makes that
    /// cheap.
    pub fn hidden_at(&self, tokens: &Tensor, positions: &Tensor, train: bool) -> Result<Tensor> {
        let (bn, lt, _) = tokens.dims3()?;
        let (_, p) = positions.dims2()?;
        let d = self.positions.dim(1)?;
        let t = self.input.forward(tokens)?;
        let q = self
            .positions
            .index_select(&positions.flatten_all()?, 0)?
            .reshape((bn, p, d))?;
        let x = Tensor::cat(&[&t, &q], 1)?;
        let y = self.stack.forward(&x, None, train)?;
        y.narrow(1, lt, p)
    }

    /// The output layer (d → `vocab_size − 1`).
    pub fn output_layer(&self) -> &Linear {
        &self.output
    }

    /// The output layer: states `[.., d]` → id logits `[.., vocab_size − 1]`.
    pub fn output(&self, hidden: &Tensor) -> Result<Tensor> {
        self.output.forward(hidden)
    }
}

/// What [`Tempest::forward`] returns.
#[derive(Debug, Clone)]
pub struct Output {
    /// `[B, classes]` class logits.
    pub logits: Tensor,
    /// `[B, N, L', d_c]` the block tokens E_c received (before position embeddings).
    pub block_tokens: Tensor,
}

/// The loss and its parts, from [`Tempest::loss`].
#[derive(Debug, Clone)]
pub struct Losses {
    /// L_c + λ·L_r, a scalar.
    pub total: Tensor,
    /// L_c, cross-entropy of the class logits (label-smoothed if configured), a scalar.
    pub classification: Tensor,
    /// L_r, cross-entropy of the reconstructed bytes over real bytes; `None` when λ = 0.
    pub reconstruction: Option<Tensor>,
    /// `[B, classes]` class logits.
    pub logits: Tensor,
}

/// The TEMPEST model. Built by [`Tempest::new`] from a [`Config`] and a `VarBuilder`; tensor
/// names are listed in `docs/model.md` and stay stable across versions.
#[derive(Debug, Clone)]
pub struct Tempest {
    config: Config,
    /// `embed.bytes [vocab, d_t]`.
    bytes: Embedding,
    /// With `factored_ids`: `embed.factors [Σ classes, d_t]` and, for every id, its row of the
    /// byte table and its row of `[0; factors]` (0 for ids that are not factored).
    factors: Option<(Tensor, Tensor, Tensor)>,
    /// With `ordinal_ids`: `embed.ordinal [Σ (values − 1), d_t]`, each range's steps, and
    /// the ranges in id order.
    ordinal: Option<(Tensor, Vec<OrdinalRange>)>,
    /// `embed.positions [max_block_bytes, d_t]`.
    byte_positions: Tensor,
    block_encoder: Transformer,
    mixer: Mixer,
    /// `length [max_block_bytes + 1, d_c]` when `length_embedding`: each block's length in
    /// its file, before truncation (longer ones share the last row).
    length: Option<Embedding>,
    block_decoder: Option<BlockDecoder>,
    /// `context_encoder.cls [1, d_c]`.
    cls: Tensor,
    /// `context_encoder.block_index [max_blocks, d_c]`.
    block_index: Embedding,
    /// `context_encoder.sub_token [L', d_c]` when L' > 1.
    sub_token: Option<Tensor>,
    /// `context_encoder.time` (2·16 → d_c, no bias) with `IndexAndTime`.
    time: Option<Linear>,
    /// `context_encoder.conv.{fc1 [d_c, K·d_c], fc2 [d_c, d_c]}` with `context_conv` K > 0.
    conv: Option<Mlp>,
    context_encoder: Transformer,
    head: Linear,
    dtype: DType,
    /// The seeds of every layer's dropout masks.
    dropout_rng: DropoutRng,
}

impl Tempest {
    /// Builds the model, creating or loading its variables through `vb`.
    pub fn new(config: &Config, vb: VarBuilder<'_>) -> Result<Self> {
        config.validate().map_err(candle_core::Error::msg)?;
        let (dt, dc) = (config.block_encoder.dim, config.context_encoder.dim);
        let ve = vb.pp("embed");
        let vc = vb.pp("context_encoder");
        let rng = DropoutRng::new();
        let time = match config.block_position {
            BlockPositionKind::IndexAndTime => Some(Linear::new(
                2 * TIME_FREQUENCIES,
                dc,
                false,
                Some(EMBED_STD),
                vc.pp("time"),
            )?),
            BlockPositionKind::Index => None,
        };
        let factors = if config.factored_ids.is_empty() {
            None
        } else {
            let mut rows: Vec<u32> = (0..config.vocab_size as u32).collect();
            let mut classes = vec![0u32; config.vocab_size];
            let mut next = 1u32;
            for f in &config.factored_ids {
                for k in 0..f.values * f.classes {
                    let id = (f.start + k) as usize;
                    rows[id] = f.value_start + k / f.classes;
                    classes[id] = next + k % f.classes;
                }
                next += f.classes;
            }
            let table = ve.get_with_hints(
                ((next - 1) as usize, dt),
                "factors",
                Init::Randn {
                    mean: 0.0,
                    stdev: EMBED_STD,
                },
            )?;
            let n = config.vocab_size;
            Some((
                table,
                Tensor::from_vec(rows, n, vb.device())?,
                Tensor::from_vec(classes, n, vb.device())?,
            ))
        };
        // Each range's first step row follows the configuration's order; the table is put
        // together in id order.
        let mut ranges = Vec::with_capacity(config.ordinal_ids.len());
        let mut steps = 0usize;
        for o in &config.ordinal_ids {
            ranges.push((o.start as usize, o.values as usize, steps));
            steps += o.values as usize - 1;
        }
        ranges.sort_unstable();
        let ordinal = if steps == 0 {
            None
        } else {
            // Zero: the model starts as the one without steps.
            let table = ve.get_with_hints((steps, dt), "ordinal", Init::Const(0.0))?;
            Some((table, ranges))
        };
        Ok(Tempest {
            bytes: Embedding::new(config.vocab_size, dt, 1.0, ve.pp("bytes"))?,
            factors,
            ordinal,
            byte_positions: ve.get_with_hints(
                (config.max_block_bytes, dt),
                "positions",
                Init::Randn {
                    mean: 0.0,
                    stdev: EMBED_STD,
                },
            )?,
            block_encoder: Transformer::new(
                &spec(config, &config.block_encoder, &rng, vb.device()),
                vb.pp("block_encoder"),
            )?,
            mixer: Mixer::new(config, vb.pp("mixer"))?,
            length: if config.length_embedding {
                Some(Embedding::new(
                    config.max_block_bytes + 1,
                    dc,
                    EMBED_STD,
                    vb.pp("length"),
                )?)
            } else {
                None
            },
            block_decoder: if config.has_block_decoder() {
                Some(BlockDecoder::new(config, &rng, vb.pp("block_decoder"))?)
            } else {
                None
            },
            cls: vc.get_with_hints(
                (1, dc),
                "cls",
                Init::Randn {
                    mean: 0.0,
                    stdev: EMBED_STD,
                },
            )?,
            block_index: Embedding::new(config.max_blocks, dc, EMBED_STD, vc.pp("block_index"))?,
            sub_token: if config.tokens_per_block > 1 {
                Some(vc.get_with_hints(
                    (config.tokens_per_block, dc),
                    "sub_token",
                    Init::Randn {
                        mean: 0.0,
                        stdev: EMBED_STD,
                    },
                )?)
            } else {
                None
            },
            time,
            conv: match config.context_conv {
                0 => None,
                k => Some(Mlp::new(
                    k * dc,
                    dc,
                    dc,
                    Some(0.0),
                    config.own_kernels(vb.device()),
                    vc.pp("conv"),
                )?),
            },
            context_encoder: Transformer::new(
                &spec(config, &config.context_encoder, &rng, vb.device()),
                vc.clone(),
            )?,
            head: Linear::new(dc, config.num_classes, true, Some(EMBED_STD), vb.pp("head"))?,
            config: config.clone(),
            dtype: vb.dtype(),
            dropout_rng: rng,
        })
    }

    /// A freshly initialised model on `device` in `dtype`, with the [`VarMap`] that holds its
    /// trainable variables (for an optimiser and for [`crate::save`]).
    pub fn init(config: &Config, device: &Device, dtype: DType) -> Result<(Self, VarMap)> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, dtype, device);
        let model = Tempest::new(config, vb)?;
        Ok((model, varmap))
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The dtype of the weights.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device the weights live on (batches must be moved there).
    pub fn device(&self) -> &Device {
        self.cls.device()
    }

    /// Restarts the dropout masks' seeds from `seed`: the masks of the passes that follow depend
    /// only on it (see [`DropoutRng`]). tempest-train's loop does this before every batch with a
    /// seed derived from its run's seed, the epoch and the batch ([`crate::dropout_seed`]).
    pub fn seed_dropout(&self, seed: u64) {
        self.dropout_rng.reseed(seed);
    }

    /// The generator of the dropout masks' seeds (shared by every layer and by clones).
    pub fn dropout_rng(&self) -> &DropoutRng {
        &self.dropout_rng
    }

    /// A copy of the model that shares every variable (gradients reach the same ones) but
    /// draws its dropout masks from a generator of its own, starting at `seed`: parts of a
    /// batch computed at once each get one, so that their masks do not depend on the threads'
    /// timing ([`crate::batch_gradients`]).
    pub fn with_own_dropout(&self, seed: u64) -> Tempest {
        let rng = DropoutRng::new();
        rng.reseed(seed);
        let mut m = self.clone();
        m.block_encoder = self.block_encoder.with_dropout_rng(&rng);
        m.context_encoder = self.context_encoder.with_dropout_rng(&rng);
        if let Some(d) = &self.block_decoder {
            let mut d = d.clone();
            d.stack = d.stack.with_dropout_rng(&rng);
            m.block_decoder = Some(d);
        }
        m.dropout_rng = rng;
        m
    }

    /// The block decoder, when λ > 0.
    pub fn block_decoder(&self) -> Option<&BlockDecoder> {
        self.block_decoder.as_ref()
    }

    /// Byte embedding, E_t and M, each block on its own: `ids [B, N, L] u32`, `byte_mask
    /// [B, N, L] u8`, `block_len [B, N] u32` → block tokens `[B, N, L', d_c]`. A block only sees
    /// its own bytes, so blocks can be encoded as they arrive (streaming).
    pub fn encode_blocks(
        &self,
        ids: &Tensor,
        byte_mask: &Tensor,
        block_len: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let (b, n, l) = ids.dims3()?;
        if l > self.config.max_block_bytes {
            candle_core::bail!(
                "blocks of {l} bytes exceed the model's max_block_bytes {}",
                self.config.max_block_bytes
            );
        }
        let bn = b * n;
        // Blocks that repeat in the batch (silence, blank image areas) are encoded once and
        // their tokens copied: E_t and M see each block alone, so this changes no value, and
        // the copy's backward (index_add) sums the copies' gradients.
        if self.config.execution.dedup_blocks
            && ids.device().is_cpu()
            && !(train && self.config.dropout > 0.0)
        {
            let rows = ids.flatten_all()?.to_vec1::<u32>()?;
            let masks = byte_mask.flatten_all()?.to_vec1::<u8>()?;
            if let Some((first, of)) = distinct_rows(&rows, &masks, l) {
                let u = first.len();
                fn pick<T: Copy>(v: &[T], first: &[u32], l: usize) -> Vec<T> {
                    let row = |r: &u32| &v[*r as usize * l..(*r as usize + 1) * l];
                    first.iter().flat_map(row).copied().collect()
                }
                let (dev, of) = (ids.device(), Tensor::from_vec(of, bn, ids.device())?);
                let tokens = self.encode_distinct(
                    &Tensor::from_vec(pick(&rows, &first, l), (1, u, l), dev)?,
                    &Tensor::from_vec(pick(&masks, &first, l), (1, u, l), dev)?,
                    train,
                )?;
                let tokens = tokens.index_select(&of, 0)?;
                return self.add_length(tokens, block_len, b, n);
            }
        }
        let tokens = self.encode_distinct(ids, byte_mask, train)?;
        self.add_length(tokens, block_len, b, n)
    }

    /// The table E_t's ids embed through: `embed.bytes`, or with `factored_ids` each factored
    /// id's value row plus its class row (`[V, d_t]`, built each call: a gather of V rows).
    fn byte_table(&self) -> Result<Tensor> {
        let bytes = match &self.ordinal {
            None => self.bytes.weight().clone(),
            Some((steps, ranges)) => with_ordinal_steps(self.bytes.weight(), steps, ranges)?,
        };
        let Some((factors, rows, classes)) = &self.factors else {
            return Ok(bytes);
        };
        let zero = Tensor::zeros((1, factors.dim(1)?), factors.dtype(), factors.device())?;
        let factors = Tensor::cat(&[&zero, factors], 0)?;
        bytes
            .index_select(rows, 0)?
            .add(&factors.index_select(classes, 0)?)
    }

    /// The length embedding added to block tokens `[B·N, L', d_c]` → `[B, N, L', d_c]`.
    fn add_length(
        &self,
        mut tokens: Tensor,
        block_len: &Tensor,
        b: usize,
        n: usize,
    ) -> Result<Tensor> {
        if let Some(length) = &self.length {
            // Lengths past the table (blocks longer than max_block_bytes) share its last row.
            let last = Tensor::full(self.config.max_block_bytes as u32, (), block_len.device())?;
            let len = block_len.reshape(b * n)?.broadcast_minimum(&last)?;
            let len = length.forward(&len)?.unsqueeze(1)?;
            tokens = tokens.broadcast_add(&len)?;
        }
        let (_, lt, dc) = tokens.dims3()?;
        tokens.reshape((b, n, lt, dc))
    }

    /// Byte embedding, E_t and M of every block of `ids [B, N, L]` → `[B·N, L', d_c]`.
    fn encode_distinct(&self, ids: &Tensor, byte_mask: &Tensor, train: bool) -> Result<Tensor> {
        let (b, n, l) = ids.dims3()?;
        let bn = b * n;
        let mask = byte_mask.reshape((bn, l))?.to_dtype(self.dtype)?;
        let bias = key_bias(&mask, self.dtype)?;
        // The embedding, E_t, its final norm and the linear mix as one node on the CPU
        // (tempest_kernels::encode_and_mix); else op by op.
        // The fused node's mix: the linear mixer's weights, or none (`[0, L]`) for the flatten
        // mixer, which reads each state times its mask share.
        let fused_mix = match &self.mixer.mix {
            Mix::Linear(w) => Some(w.clone()),
            Mix::Flatten(_) => Some(Tensor::zeros((0, l), self.dtype, ids.device())?),
            Mix::Attention(..) => None,
        };
        let pooled = match &fused_mix {
            Some(w)
                if self.mixer.own_kernels
                    && self.config.execution.fused_layers
                    && self
                        .block_encoder
                        .layers()
                        .iter()
                        .all(|l| l.kernels().layer)
                    && !crate::cuda::available(ids.device()) =>
            {
                let layers: Vec<LayerWeights<'_>> = self
                    .block_encoder
                    .layers()
                    .iter()
                    .map(|l| l.weights())
                    .collect();
                let table = self.byte_table()?;
                let weights = BlockEncoderWeights {
                    table: &table,
                    positions: &self.byte_positions,
                    layers: &layers,
                    norm: self.block_encoder.final_norm().view(),
                    mix: w,
                };
                let (p, rng) = self.block_encoder.dropout();
                let p = if train { p } else { 0.0 };
                tempest_kernels::encode_and_mix(
                    &ids.reshape((bn, l))?,
                    &mask,
                    &bias,
                    &weights,
                    p,
                    rng,
                )?
            }
            _ => None,
        };
        let pooled = match (pooled, &self.mixer.mix) {
            (Some(scaled), Mix::Flatten(w)) => Some(flatten_pool(w, &scaled)?),
            (pooled, _) => pooled,
        };
        match pooled {
            Some(pooled) => self.mixer.after_mix(&pooled),
            None => self.encode_blocks_op_by_op(ids, byte_mask, &mask, &bias, train),
        }
    }

    /// E_t and M op by op: `ids [B, N, L]`, `byte_mask [B, N, L] u8`, `mask [B·N, L]` in the
    /// model's dtype, `bias [B·N, 1, 1, L]` → `[B·N, L', d_c]`.
    pub(crate) fn encode_blocks_op_by_op(
        &self,
        ids: &Tensor,
        byte_mask: &Tensor,
        mask: &Tensor,
        bias: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let (b, n, l) = ids.dims3()?;
        let bn = b * n;
        let (ids, m) = (ids.reshape((bn, l))?, byte_mask.reshape((bn, l))?);
        let own = self.config.own_kernels(ids.device());
        let table = self.byte_table()?;
        let x = tempest_kernels::embed_bytes(&ids, &m, &table, &self.byte_positions, own)?;
        let h = self.block_encoder.forward(&x, Some(bias), train)?;
        self.mixer.forward(&h, mask, bias) // [BN, L', d_c]
    }

    /// E_c and the head: block tokens `[B, N, L', d_c]` with the batch's positions and block
    /// mask → class logits `[B, classes]`.
    pub fn classify_tokens(&self, tokens: &Tensor, batch: &Batch, train: bool) -> Result<Tensor> {
        let y = self.context(tokens, batch, train)?;
        self.head.forward(&y.i((.., 0))?)
    }

    /// E_c alone: block tokens `[B, N, L', d_c]` with the batch's positions and block mask →
    /// its output `[B, 1 + N·L', d_c]`, \[CLS\] first, then each block's L' tokens in order
    /// (what [`Tempest::classify_tokens`] gives the head the first of; masked block modelling
    /// reads the others).
    pub fn context(&self, tokens: &Tensor, batch: &Batch, train: bool) -> Result<Tensor> {
        let (b, n, lt, dc) = tokens.dims4()?;
        let dev = tokens.device();
        let block_mask = batch.block_mask.to_dtype(self.dtype)?; // [B, N], 1 for a real block
        let tokens = match &self.conv {
            Some(mlp) => self.convolve(mlp, tokens, &block_mask)?,
            None => tokens.clone(),
        };
        let last = Tensor::full(self.config.max_blocks as u32 - 1, (), dev)?;
        let index = batch.block_index.broadcast_minimum(&last)?;
        let mut pos = self.block_index.forward(&index)?; // [B, N, d_c]
        if let Some(time) = &self.time {
            pos =
                (pos + time.forward(&time_features(&batch.block_time)?.to_dtype(self.dtype)?)?)?;
        }
        let mut x = tokens.broadcast_add(&pos.unsqueeze(2)?)?;
        if let Some(sub) = &self.sub_token {
            x = x.broadcast_add(sub)?;
        }
        let x = x.reshape((b, n * lt, dc))?;
        let cls = self.cls.unsqueeze(0)?.broadcast_as((b, 1, dc))?;
        let x = Tensor::cat(&[&cls, &x], 1)?;
        // Key mask: [CLS] and every token of a real block.
        let token_mask = block_mask
            .unsqueeze(2)?
            .broadcast_as((b, n, lt))?
            .reshape((b, n * lt))?;
        let mask = Tensor::cat(&[&Tensor::ones((b, 1), self.dtype, dev)?, &token_mask], 1)?;
        self.context_encoder
            .forward(&x, Some(&key_bias(&mask, self.dtype)?), train)
    }

    /// `tokens + mlp(the K block tokens centred on each)` for `tokens [B, N, L', d_c]` (each of
    /// a block's L' tokens with the same token of its neighbours); blocks outside the item,
    /// padding included (0 in `block_mask [B, N]`, in the tokens' dtype), read as zeros.
    fn convolve(&self, mlp: &Mlp, tokens: &Tensor, block_mask: &Tensor) -> Result<Tensor> {
        let n = tokens.dim(1)?;
        let k = self.config.context_conv;
        let padded = tokens
            .broadcast_mul(&block_mask.unsqueeze(2)?.unsqueeze(3)?)?
            .pad_with_zeros(1, k / 2, k / 2)?;
        let window: Vec<Tensor> = (0..k)
            .map(|j| padded.narrow(1, j, n))
            .collect::<Result<_>>()?;
        let window = Tensor::cat(&window, 3)?; // [B, N, L', K·d_c], block i − K/2 first
        tokens + mlp.forward(&window)?
    }

    /// Inference or a training pass without the losses: class logits and block tokens.
    pub fn forward(&self, batch: &Batch, train: bool) -> Result<Output> {
        let block_tokens =
            self.encode_blocks(&batch.ids, &batch.byte_mask, &batch.block_len, train)?;
        let logits = self.classify_tokens(&block_tokens, batch, train)?;
        Ok(Output {
            logits,
            block_tokens,
        })
    }

    /// Class probabilities `[B, classes]` (inference, no dropout).
    pub fn probabilities(&self, batch: &Batch) -> Result<Tensor> {
        candle_nn::ops::softmax(&self.forward(batch, false)?.logits, D::Minus1)
    }

    /// L = L_c + λ·L_r and its parts. D_t runs only when λ > 0.
    ///
    /// With `config.mixup` > 0 and `train`, L_c is computed on mixed block tokens (see
    /// [`Config::mixup`]); L_r and the returned logits' accuracy then refer to the mixture.
    pub fn loss(&self, batch: &Batch, train: bool) -> Result<Losses> {
        let b = batch.labels.dim(0)?;
        if train && self.config.mixup > 0.0 && b > 1 {
            return self.mixup_loss(batch, b);
        }
        let out = self.forward(batch, train)?;
        let classification =
            cross_entropy(&out.logits, &batch.labels, self.config.label_smoothing)?;
        self.with_reconstruction(batch, out, classification, train)
    }

    /// L with mixup of block tokens: item i is mixed with item (i + 1) mod B.
    fn mixup_loss(&self, batch: &Batch, b: usize) -> Result<Losses> {
        let mixup = Mixup::draw(
            self.dropout_rng(),
            self.config.mixup,
            b,
            batch.labels.device(),
        )?;
        let block_tokens =
            self.encode_blocks(&batch.ids, &batch.byte_mask, &batch.block_len, true)?;
        // The mixture has a block wherever either item has one, at the later of their
        // positions (items of one set share their block grid, so this is the longer item's).
        let view = Batch {
            block_mask: mixup.union(&batch.block_mask)?,
            block_index: mixup.union(&batch.block_index)?,
            block_time: mixup.union(&batch.block_time)?,
            ..batch.clone()
        };
        let logits = self.classify_tokens(&mixup.mix(&block_tokens)?, &view, true)?;
        let classification =
            mixup.cross_entropy(&logits, &batch.labels, self.config.label_smoothing)?;
        let out = Output {
            logits,
            block_tokens,
        };
        self.with_reconstruction(batch, out, classification, true)
    }

    /// Adds λ·L_r (when the model has D_t) to L_c.
    fn with_reconstruction(
        &self,
        batch: &Batch,
        out: Output,
        classification: Tensor,
        train: bool,
    ) -> Result<Losses> {
        let (total, reconstruction) = match &self.block_decoder {
            Some(dec) => {
                let (b, n, lt, dc) = out.block_tokens.dims4()?;
                let l = batch.ids.dim(2)?;
                let logits = dec.forward(&out.block_tokens.reshape((b * n, lt, dc))?, l, train)?;
                let lr = reconstruction_loss(
                    &logits,
                    &batch.ids.reshape((b * n, l))?,
                    &batch.byte_mask.reshape((b * n, l))?,
                )?;
                (
                    (&classification + (&lr * self.config.reconstruction_weight)?)?,
                    Some(lr),
                )
            }
            None => (classification.clone(), None),
        };
        Ok(Losses {
            total,
            classification,
            reconstruction,
            logits: out.logits,
        })
    }
}

/// The distinct rows of `ids [R, L]` with their `mask [R, L]` (flattened): `Some((first,
/// of))` where `first` holds the first row of each distinct block in order of appearance and
/// `of[r]` the index in `first` of row `r`'s block; `None` when no row repeats.
fn distinct_rows(ids: &[u32], mask: &[u8], l: usize) -> Option<(Vec<u32>, Vec<u32>)> {
    let rows = ids.len().checked_div(l).unwrap_or(0);
    if rows < 2 {
        return None;
    }
    let mut seen: std::collections::HashMap<(&[u32], &[u8]), u32> =
        std::collections::HashMap::with_capacity(rows);
    let mut first = Vec::new();
    let mut of = Vec::with_capacity(rows);
    for r in 0..rows {
        let key = (&ids[r * l..(r + 1) * l], &mask[r * l..(r + 1) * l]);
        let next = first.len() as u32;
        let k = *seen.entry(key).or_insert(next);
        if k == next {
            first.push(r as u32);
        }
        of.push(k);
    }
    (first.len() < rows).then_some((first, of))
}

/// `[B, N]` seconds → `[B, N, 2·TIME_FREQUENCIES]` sines and cosines at geometrically spaced
/// periods (Vaswani et al. 2017 §3.5, with time in seconds instead of the position).
pub fn time_features(t: &Tensor) -> Result<Tensor> {
    let (lo, hi) = TIME_PERIODS;
    let omegas: Vec<f32> = (0..TIME_FREQUENCIES)
        .map(|k| {
            let period = lo * (hi / lo).powf(k as f64 / (TIME_FREQUENCIES - 1) as f64);
            (2.0 * std::f64::consts::PI / period) as f32
        })
        .collect();
    let w = Tensor::from_vec(omegas, TIME_FREQUENCIES, t.device())?;
    let phase = t
        .to_dtype(DType::F32)?
        .unsqueeze(D::Minus1)?
        .broadcast_mul(&w)?;
    Tensor::cat(&[&phase.sin()?, &phase.cos()?], D::Minus1)
}

/// Mean cross-entropy of `logits [B, C]` against `labels [B] u32`, with label smoothing ε:
/// `(1 − ε)·nll + ε·mean_c(−log p_c)`.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor, smoothing: f64) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let nll = logp.gather(&labels.unsqueeze(1)?, 1)?.neg()?.mean_all()?;
    if smoothing > 0.0 {
        let uniform = logp.mean(D::Minus1)?.neg()?.mean_all()?;
        (nll * (1.0 - smoothing))? + (uniform * smoothing)?
    } else {
        Ok(nll)
    }
}

/// L_r: mean cross-entropy of `logits [BN, L, vocab − 1]` against the ids `ids [BN, L]` over
/// the positions where `mask [BN, L]` is 1 (padding ids never become targets). D_t has an
/// output for every id but the padding id, so ids above it (field ids) are output
/// `id − 1` ([`crate::pretrain::output_index`]); before session 12 they were taken as outputs
/// unmoved, one off, and the highest field id fell outside the outputs.
pub fn reconstruction_loss(logits: &Tensor, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let m = mask.to_dtype(logits.dtype())?;
    let zeros = ids.zeros_like()?;
    let above_pad = ids
        .gt(tempest_tokenize::PAD_ID as f64)?
        .to_dtype(ids.dtype())?;
    let outputs = (ids - above_pad)?;
    let targets = mask.where_cond(&outputs, &zeros)?;
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let nll = logp.gather(&targets.unsqueeze(2)?, 2)?.squeeze(2)?.neg()?;
    let count = m.sum_all()?.maximum(1.0)?;
    (nll * &m)?.sum_all()?.div(&count)
}

/// An ordinal range as the model reads it: (first id, values, its first row of the steps).
type OrdinalRange = (usize, usize, usize);

/// `table` with each ordinal range's rows plus their running sums of `steps`
/// ([`crate::OrdinalIds`]): row `start + k` gains `steps[first] + … + steps[first + k − 1]`,
/// for `ranges` of (start, values, first) in id order.
fn with_ordinal_steps(table: &Tensor, steps: &Tensor, ranges: &[OrdinalRange]) -> Result<Tensor> {
    let rows = table.dim(0)?;
    let mut pieces = Vec::with_capacity(2 * ranges.len() + 1);
    let mut at = 0usize;
    for &(start, values, first) in ranges {
        if start > at {
            pieces.push(table.narrow(0, at, start - at)?);
        }
        // Value 0 gains nothing: a zero row in front of the running sums.
        let sums = steps
            .narrow(0, first, values - 1)?
            .cumsum(0)?
            .pad_with_zeros(0, 1, 0)?;
        pieces.push(table.narrow(0, start, values)?.add(&sums)?);
        at = start + values;
    }
    if at < rows {
        pieces.push(table.narrow(0, at, rows - at)?);
    }
    Tensor::cat(&pieces, 0)
}

#[cfg(test)]
mod tests {
    use super::distinct_rows;

    /// The convolution over blocks of width 3: a block's new token depends on its own token
    /// and its two neighbours' only, and padding blocks are read as zeros whatever they hold.
    #[test]
    fn context_conv_reads_each_block_and_its_neighbours_only() -> candle_core::Result<()> {
        use candle_core::{DType, Device, Tensor};
        let dev = Device::Cpu;
        let mut cfg = crate::Config::tiny();
        cfg.context_conv = 3;
        let (model, varmap) = super::Tempest::init(&cfg, &dev, DType::F64)?;
        // Give the output layer weights (it starts at zero).
        let vars = varmap.data().lock().map(|d| d.clone()).unwrap_or_default();
        let fc2 = &vars["context_encoder.conv.fc2.weight"];
        fc2.set(&Tensor::randn(0.0, 0.3, fc2.dims(), &dev)?)?;
        let mlp = model.conv.as_ref().expect("a convolution");
        let dc = cfg.context_encoder.dim;
        let tokens = Tensor::randn(0.0, 1.0, (2, 6, 1, dc), &dev)?;
        let mask = Tensor::new(
            &[[1f64, 1., 1., 1., 1., 1.], [1., 1., 1., 1., 0., 0.]],
            &dev,
        )?;
        let base = model.convolve(mlp, &tokens, &mask)?;
        // Moves `base` by changing token (item, block); returns which of the item's blocks moved.
        let moved = |item: usize, block: usize| -> candle_core::Result<Vec<bool>> {
            let mut t = tokens.flatten_all()?.to_vec1::<f64>()?;
            for x in &mut t[(item * 6 + block) * dc..(item * 6 + block + 1) * dc] {
                *x += 1.0;
            }
            let t = Tensor::from_vec(t, (2, 6, 1, dc), &dev)?;
            let out = model.convolve(mlp, &t, &mask)?;
            let d = (out - &base)?
                .abs()?
                .sum(3)?
                .sum(2)?
                .get(item)?
                .to_vec1::<f64>()?;
            Ok(d.iter().map(|&x| x > 1e-12).collect())
        };
        assert_eq!(moved(0, 3)?, [false, false, true, true, true, false]);
        assert_eq!(moved(0, 0)?, [true, true, false, false, false, false]);
        assert_eq!(moved(0, 5)?, [false, false, false, false, true, true]);
        // A padding block changes no real block (only itself, through the residual).
        assert_eq!(moved(1, 4)?, [false, false, false, false, true, false]);
        // An even width has no centre: refused.
        cfg.context_conv = 4;
        assert!(cfg.validate().unwrap_err().contains("context_conv"));
        Ok(())
    }

    /// Field ids (above the padding id 256) are scored at output `id − 1`: with outputs for
    /// 258 ids (a vocabulary of 259), ids 100, 257 and 258 are read at outputs 100, 256 and
    /// 257, the last output included; a padded position is not scored.
    #[test]
    fn reconstruction_scores_field_ids_one_output_down() -> candle_core::Result<()> {
        use candle_core::{Device, Tensor};
        let dev = Device::Cpu;
        let outputs = 258usize;
        let mut logits = vec![0f32; 4 * outputs];
        // Position p puts logit 3 on output `hot[p]`.
        let hot = [100usize, 256, 257, 5];
        for (p, &o) in hot.iter().enumerate() {
            logits[p * outputs + o] = 3.0;
        }
        let logits = Tensor::from_vec(logits, (1, 4, outputs), &dev)?;
        let ids = Tensor::new(&[[100u32, 257, 258, 256]], &dev)?;
        let mask = Tensor::new(&[[1u8, 1, 1, 0]], &dev)?;
        let loss = super::reconstruction_loss(&logits, &ids, &mask)?.to_scalar::<f32>()?;
        // Each scored position: −log(e³ / (e³ + 257)).
        let want = -(3f32.exp() / (3f32.exp() + (outputs - 1) as f32)).ln();
        assert!((loss - want).abs() < 1e-5, "{loss} against {want}");
        Ok(())
    }

    #[test]
    fn distinct_rows_maps_each_row_to_its_first_copy() {
        // Rows of 2: A B A C B A, where the third row has A's ids but another mask.
        let ids = [1, 2, 3, 4, 1, 2, 5, 6, 3, 4, 1, 2];
        let mask = [1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1];
        let (first, of) = distinct_rows(&ids, &mask, 2).expect("rows repeat");
        assert_eq!(first, [0, 1, 2, 3]);
        assert_eq!(of, [0, 1, 2, 3, 1, 0]);
        assert_eq!(distinct_rows(&ids[..8], &mask[..8], 2), None);
        assert_eq!(distinct_rows(&[], &[], 0), None);
    }
}
