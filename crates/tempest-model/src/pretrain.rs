//! Masked block modelling: self-supervised pretraining of TEMPEST on unlabelled files
//! (issue #22, docs/pretraining.md).
//!
//! A fraction of each item's blocks is chosen ([`MaskPlan::draw`]; in runs of consecutive
//! blocks, spans, for audio), their tokens out of E_t and M are replaced by one learned mask
//! token before E_c, and the model learns to give back each masked block's ids from E_c's
//! output at its place, through the block decoder D_t. Only masked blocks go through D_t, and
//! D_t is asked for a few positions of each ([`crate::BlockDecoder::hidden_at`]), so its
//! attention spans L' + P instead of L' + L queries and its output layer (a vocabulary of up
//! to 2,232 ids with MP3 field tokens) runs on P positions: every position of every block was
//! what made λ > 0 slow on the CPU. The positions are drawn afresh in every batch, so every
//! position is a target over the epochs.
//!
//! ```text
//! ids ─► E_t, M ─► tokens ─► (masked blocks: mask token) ─► E_c ─► masked places ─► D_t
//!                                                     ─► P positions ─► ids, cross-entropy
//! ```

use candle_core::{DType, Device, Result, Tensor, D};
use candle_nn::{Init, VarBuilder, VarMap};
use serde::{Deserialize, Serialize};
use tempest_tokenize::rng::SplitMix64;
use tempest_tokenize::{Batch, HostBatch};

use crate::nn::Linear;
use crate::{Config, Tempest};

/// The mask token's variable name (`pretrain.mask_token [d_c]`); `train --init` leaves every
/// `pretrain.*` tensor behind.
pub const MASK_TOKEN: &str = "pretrain.mask_token";
/// The prefix of the variables that exist only while pretraining.
pub const PRETRAIN_PREFIX: &str = "pretrain.";
/// The prefix of the embedding target's head (`pretrain.embed_head.weight [d_c, d_c]`,
/// `.bias`), which predicts the teacher's output from the model's.
pub const EMBED_HEAD: &str = "pretrain.embed_head";

/// What is masked and what is predicted.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Masking {
    /// Fraction of each item's real blocks replaced by the mask token (rounded; at least one
    /// block, and at least one left unmasked when the item has two or more).
    pub fraction: f64,
    /// Blocks per span: masked blocks come in runs of up to this many consecutive blocks
    /// (1: blocks chosen one by one, for images; audio frames are ~26–36 ms, and a single
    /// missing frame is easy to interpolate from its neighbours).
    pub span: usize,
    /// Positions of each masked block whose ids are predicted, drawn among its real ones
    /// (all of them when the block has fewer); 0: every real position.
    pub positions: usize,
    /// What a masked block is asked for: its ids through D_t (the default), the teacher's
    /// output at its place (an embedding target), or both ([`Target`]).
    #[serde(default)]
    pub target: Target,
    /// The teacher's decay: after step t its weights move towards the model's by
    /// `1 − min(teacher_decay, (1 + t) / (10 + t))` (read only with an embedding target).
    #[serde(default = "default_teacher_decay")]
    pub teacher_decay: f64,
}

/// The decay of a moving average of weights after update `t`: `min(decay, (1 + t) / (10 + t))`,
/// so that the first updates follow the weights closely (the pretraining teacher's, counting
/// from 0, and `tempest_train::AdamW`'s weight average, counting from 1).
pub fn average_decay(decay: f64, t: usize) -> f64 {
    let t = t as f64;
    decay.min((1.0 + t) / (10.0 + t))
}

fn default_teacher_decay() -> f64 {
    0.996
}

/// What masked block modelling predicts of each masked block.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// The block's ids, through the block decoder D_t (cross-entropy over each position's
    /// field).
    #[default]
    Ids,
    /// The teacher's E_c output at the block's place, the whole item unmasked, each feature
    /// standardised over the item's real blocks (data2vec's kind of target, from the last
    /// layer; [`Teacher::targets`]):
    /// predicted from the model's E_c output there through a linear head
    /// ([`EMBED_HEAD`]), mean squared error. The teacher is a moving average of the model
    /// ([`Teacher`]).
    Embedding,
    /// Both losses, added.
    Both,
}

impl Target {
    /// Whether the ids are a target.
    pub fn ids(self) -> bool {
        matches!(self, Target::Ids | Target::Both)
    }

    /// Whether the teacher's embedding is a target.
    pub fn embedding(self) -> bool {
        matches!(self, Target::Embedding | Target::Both)
    }

    /// The names `--target` takes.
    pub const NAMES: &'static [&'static str] = &["ids", "embedding", "both"];

    /// `ids`, `embedding` or `both`.
    pub fn parse(name: &str) -> std::result::Result<Target, String> {
        match name {
            "ids" => Ok(Target::Ids),
            "embedding" => Ok(Target::Embedding),
            "both" => Ok(Target::Both),
            other => Err(format!(
                "unknown pretraining target {other:?}: one of {}",
                Target::NAMES.join(", ")
            )),
        }
    }
}

impl Default for Masking {
    /// 30 % of the blocks in spans of 3, 32 positions each (docs/pretraining.md).
    fn default() -> Self {
        Masking {
            fraction: 0.3,
            span: 3,
            positions: 32,
            target: Target::Ids,
            teacher_decay: default_teacher_decay(),
        }
    }
}

impl Masking {
    /// Checks the settings; the error names the one that is wrong.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if !(self.fraction > 0.0 && self.fraction < 1.0) {
            return Err(format!(
                "mask fraction must be in (0, 1), not {}",
                self.fraction
            ));
        }
        if self.span == 0 {
            return Err("mask span must be at least 1 block".into());
        }
        if !(0.0..1.0).contains(&self.teacher_decay) {
            return Err(format!(
                "teacher decay must be in [0, 1), not {}",
                self.teacher_decay
            ));
        }
        Ok(())
    }
}

/// Chooses the blocks to mask among `real` blocks (in order): `round(fraction · real)` of
/// them, clamped to at least 1 and, with two or more blocks, at most `real − 1`, as runs of up
/// to `span` consecutive blocks starting at random places (runs may touch or overlap; the last
/// one is cut so the count is exact). Returns one flag per block.
pub fn choose_spans(real: usize, fraction: f64, span: usize, rng: &mut SplitMix64) -> Vec<bool> {
    let mut masked = vec![false; real];
    if real == 0 {
        return masked;
    }
    let upper = if real >= 2 { real - 1 } else { 1 };
    let k = ((fraction * real as f64).round() as usize).clamp(1, upper);
    let span = span.max(1);
    let mut count = 0;
    while count < k {
        let start = rng.below(real as u64) as usize;
        for flag in masked.iter_mut().skip(start).take(span) {
            if count == k {
                break;
            }
            if !*flag {
                *flag = true;
                count += 1;
            }
        }
    }
    masked
}

/// Which blocks of a batch are masked and which of their ids are predicted: drawn on the host
/// from the batch and a seed ([`MaskPlan::draw`]).
#[derive(Debug, Clone, PartialEq)]
pub struct MaskPlan {
    /// B, N and L of the batch.
    pub shape: (usize, usize, usize),
    /// `[B·N]` 1 where the block is masked (never at padding).
    pub masked: Vec<u8>,
    /// The masked blocks' rows in `B·N`, ascending.
    pub rows: Vec<u32>,
    /// Positions predicted per masked block (P).
    pub per_row: usize,
    /// `[rows · P]` the predicted positions in their blocks (below L), ascending per block.
    pub positions: Vec<u32>,
    /// `[rows · P]` the ids there as D_t's outputs ([`output_index`]; 0 where the weight
    /// is 0).
    pub targets: Vec<u32>,
    /// `[rows · P]` for a real position 1 / the number of its item's predicted ids, 0 for
    /// a filler (blocks with fewer than P ids).
    pub weights: Vec<f32>,
    /// `[rows · P]` the outputs each target is chosen among ([`id_range`]: its field's ids,
    /// or the 256 bytes, as [`output_index`]es).
    pub ranges: Vec<(u32, u32)>,
}

/// The ids a block position holding `id` chooses among: the ids of its codec field
/// ([`tempest_tokenize::fields`]: MP3 and Opus field ids, MP3 band-line ids), or the 256
/// bytes. What a field's value is, not which field sits where (that follows from the block's
/// layout), is what masked block modelling asks for; and a softmax over a field's ids instead
/// of the whole vocabulary (up to 2,232 ids) is cheap.
pub fn id_range(id: u32) -> (u32, u32) {
    tempest_tokenize::fields::field_name(id)
        .and_then(tempest_tokenize::fields::field_range)
        .map_or((0, 256), |r| (r.start, r.end))
}

/// D_t's output for id `id`: its outputs are every id but the padding id
/// ([`tempest_tokenize::PAD_ID`], 256), so the field ids above it move down by one.
pub fn output_index(id: u32) -> u32 {
    if id > tempest_tokenize::PAD_ID {
        id - 1
    } else {
        id
    }
}

impl MaskPlan {
    /// Draws the masked blocks of each item of `batch` ([`choose_spans`] over its real blocks)
    /// and the predicted positions of each masked block (`masking.positions` of its real ones,
    /// without repetition), from `seed` alone: the same batch and seed give the same plan.
    /// The items are keyed by their place in the batch ([`MaskPlan::draw_keyed`]).
    pub fn draw(batch: &HostBatch, masking: &Masking, seed: u64) -> MaskPlan {
        let keys: Vec<u64> = (0..batch.batch as u64).collect();
        MaskPlan::draw_keyed(batch, masking, seed, &keys)
    }

    /// [`MaskPlan::draw`] with each item's masks and positions drawn from `seed` and its own
    /// key (`keys[i]` for item i, e.g. its id in the dataset) alone: an item gets the same
    /// plan whichever batch, part or rank it is in, so a batch cut into pieces (data-parallel
    /// ranks, `--parallel` parts) is masked as the whole batch is. Keys beyond `keys`' length
    /// are the items' places.
    pub fn draw_keyed(batch: &HostBatch, masking: &Masking, seed: u64, keys: &[u64]) -> MaskPlan {
        let (b, n, l) = (batch.batch, batch.blocks, batch.block_bytes);
        let key = |item: usize| keys.get(item).copied().unwrap_or(item as u64);
        let mut rngs: Vec<SplitMix64> = (0..b)
            .map(|item| SplitMix64::derive(seed, &[0x6d61_736b, key(item)]))
            .collect();
        let mut masked = vec![0u8; b * n];
        for item in 0..b {
            let real: Vec<usize> = (0..n)
                .filter(|&j| batch.block_mask[item * n + j] != 0)
                .collect();
            let flags = choose_spans(real.len(), masking.fraction, masking.span, &mut rngs[item]);
            for (j, f) in real.iter().zip(flags) {
                if f {
                    masked[item * n + j] = 1;
                }
            }
        }
        let rows: Vec<u32> = (0..b * n)
            .filter(|&r| masked[r] != 0)
            .map(|r| r as u32)
            .collect();
        let longest = rows
            .iter()
            .map(|&r| {
                let r = r as usize;
                batch.byte_mask[r * l..(r + 1) * l]
                    .iter()
                    .filter(|&&m| m != 0)
                    .count()
            })
            .max()
            .unwrap_or(0);
        let per_row = match masking.positions {
            0 => longest.max(1),
            p => p.min(longest.max(1)),
        };
        let mut positions = Vec::with_capacity(rows.len() * per_row);
        let mut targets = Vec::with_capacity(rows.len() * per_row);
        let mut weights = Vec::with_capacity(rows.len() * per_row);
        let mut ranges = Vec::with_capacity(rows.len() * per_row);
        for &r in &rows {
            let r = r as usize;
            let mut real: Vec<usize> = (0..l)
                .filter(|&p| batch.byte_mask[r * l + p] != 0)
                .collect();
            // The first `per_row` of a partial Fisher–Yates shuffle: a uniform draw without
            // repetition.
            let take = per_row.min(real.len());
            let rng = &mut rngs[r / n];
            for k in 0..take {
                let j = k + rng.below((real.len() - k) as u64) as usize;
                real.swap(k, j);
            }
            let mut chosen = real[..take].to_vec();
            chosen.sort_unstable();
            for k in 0..per_row {
                match chosen.get(k) {
                    Some(&p) => {
                        positions.push(p as u32);
                        let id = batch.ids[r * l + p];
                        let (a, b) = id_range(id);
                        targets.push(output_index(id));
                        weights.push(1.0);
                        ranges.push((output_index(a), output_index(b - 1) + 1));
                    }
                    None => {
                        positions.push(0);
                        targets.push(0);
                        weights.push(0.0);
                        ranges.push((0, 1));
                    }
                }
            }
        }
        // Each item's predicted ids weigh 1 / their count: the loss is the mean over the
        // items of each item's mean, so a batch's loss is the item-weighted mean of its
        // pieces' losses whatever the cut.
        let mut count = vec![0usize; b];
        for (i, &r) in rows.iter().enumerate() {
            let real = weights[i * per_row..(i + 1) * per_row]
                .iter()
                .filter(|&&w| w > 0.0)
                .count();
            count[r as usize / n] += real;
        }
        for (i, &r) in rows.iter().enumerate() {
            let c = count[r as usize / n].max(1) as f32;
            for w in &mut weights[i * per_row..(i + 1) * per_row] {
                *w /= c;
            }
        }
        MaskPlan {
            shape: (b, n, l),
            masked,
            rows,
            per_row,
            positions,
            targets,
            weights,
            ranges,
        }
    }

    /// Masked blocks in the batch.
    pub fn masked_blocks(&self) -> usize {
        self.rows.len()
    }

    /// Predicted ids (real positions) in the batch.
    pub fn predicted(&self) -> usize {
        self.weights.iter().filter(|&&w| w > 0.0).count()
    }

    /// Items of the batch with at least one predicted id (the loss averages over them).
    pub fn items_predicted(&self) -> usize {
        let (_, n, _) = self.shape;
        let mut items: Vec<usize> = self
            .rows
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                self.weights[i * self.per_row..(i + 1) * self.per_row]
                    .iter()
                    .any(|&w| w > 0.0)
            })
            .map(|(_, &r)| r as usize / n.max(1))
            .collect();
        items.dedup();
        items.len()
    }
}

/// The pretraining loss of one batch, from [`MaskedBlockModel::loss`].
#[derive(Debug, Clone)]
pub struct PretrainLoss {
    /// The loss the gradients come from (a scalar): the ids' part plus the embedding's,
    /// whichever the target has.
    pub loss: Tensor,
    /// The ids' part: cross-entropy of the predicted ids of the masked blocks, each item's
    /// mean over its predicted ids, averaged over the items (0 without ids in the target).
    pub ids: f64,
    /// Fraction of the predicted ids whose arg-max was right (each item's, averaged over the
    /// items; 0 without ids in the target).
    pub accuracy: f64,
    /// The embedding's part: the mean squared error between the head's prediction and the
    /// teacher's standardised output, each item's mean over its masked blocks, averaged over
    /// the items (0 without an embedding target).
    pub embedding: f64,
    /// The targets' spread: their variance across the batch's masked blocks, averaged over
    /// the features (0 without an embedding target). A teacher that gives every block the
    /// same output (a collapse) drives it to 0.
    pub target_spread: f64,
}

/// TEMPEST with a mask token, for masked block modelling. Its variables are the model's
/// (built from a configuration that has a block decoder, λ > 0), [`MASK_TOKEN`] and, with an
/// embedding target, the head [`EMBED_HEAD`].
#[derive(Debug, Clone)]
pub struct MaskedBlockModel {
    model: Tempest,
    mask_token: Tensor,
    masking: Masking,
    embed_head: Option<Linear>,
}

/// The slowly updated copy of the model whose output an embedding target asks for
/// ([`Target::Embedding`]): its own variables (the model's names, without the `pretrain.`
/// ones), started as a copy of the model's and moved towards them after every optimiser step
/// ([`Teacher::update`]), as data2vec's and BYOL's teachers are. It never trains and never
/// drops out.
pub struct Teacher {
    model: Tempest,
    varmap: VarMap,
    decay: f64,
}

impl std::fmt::Debug for Teacher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Teacher")
            .field("variables", &self.varmap.all_vars().len())
            .field("decay", &self.decay)
            .finish()
    }
}

impl Teacher {
    /// A teacher for `config` whose weights are a copy of `student`'s.
    pub fn new(
        config: &Config,
        student: &VarMap,
        decay: f64,
        device: &Device,
        dtype: DType,
    ) -> Result<Teacher> {
        let varmap = VarMap::new();
        let model = Tempest::new(config, VarBuilder::from_varmap(&varmap, dtype, device))?;
        let teacher = Teacher {
            model,
            varmap,
            decay,
        };
        teacher.blend(student, 0.0)?;
        Ok(teacher)
    }

    /// The teacher's variables (saved beside a resumable checkpoint).
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// The decay after optimiser step `step` (counted from 0): `min(decay, (1 + t) / (10 + t))`,
    /// so that the first steps follow the model closely.
    pub fn decay_at(&self, step: usize) -> f64 {
        average_decay(self.decay, step)
    }

    /// Moves the weights towards `student`'s after optimiser step `step`:
    /// `w ← d·w + (1 − d)·w_student` with `d` = [`Teacher::decay_at`].
    pub fn update(&self, student: &VarMap, step: usize) -> Result<()> {
        self.blend(student, self.decay_at(step))
    }

    fn blend(&self, student: &VarMap, d: f64) -> Result<()> {
        let theirs = student.data().lock().map_err(|_| {
            candle_core::Error::Msg("the model's variables: a poisoned lock".into())
        })?;
        let ours = self.varmap.data().lock().map_err(|_| {
            candle_core::Error::Msg("the teacher's variables: a poisoned lock".into())
        })?;
        for (name, var) in ours.iter() {
            let Some(s) = theirs.get(name) else {
                candle_core::bail!("the teacher's {name} is not among the model's variables");
            };
            let s = s.as_tensor().detach();
            let new = if d == 0.0 {
                s
            } else {
                ((var.as_tensor().detach() * d)? + (s * (1.0 - d))?)?
            };
            var.set(&new)?;
        }
        Ok(())
    }

    /// The targets of `plan`'s masked blocks, `[rows, L', d_c]`: E_c's output at each
    /// masked block's place with the whole item unmasked, each feature standardised over the
    /// item's real blocks (mean 0, variance 1 across its tokens: an instance norm over time,
    /// as data2vec normalises its targets, so that what every block of an item shares is not
    /// a target), without gradients.
    pub fn targets(&self, batch: &Batch, plan: &MaskPlan) -> Result<Tensor> {
        let x = self
            .model
            .encode_blocks(&batch.ids, &batch.byte_mask, &batch.block_len, false)?;
        let (b, n, lt, dc) = x.dims4()?;
        let y = self.model.context(&x, batch, false)?.detach();
        let y = y.narrow(1, 1, n * lt)?; // [B, N·L', d_c]
        let real = batch
            .block_mask
            .to_dtype(y.dtype())?
            .unsqueeze(2)?
            .broadcast_as((b, n, lt))?
            .reshape((b, n * lt, 1))?;
        let count = real.sum_keepdim(1)?.clamp(1.0, f64::INFINITY)?; // [B, 1, 1]
        let mean = y
            .broadcast_mul(&real)?
            .sum_keepdim(1)?
            .broadcast_div(&count)?;
        let centred = y.broadcast_sub(&mean)?;
        let var = centred
            .broadcast_mul(&real)?
            .sqr()?
            .sum_keepdim(1)?
            .broadcast_div(&count)?;
        let z = centred.broadcast_div(&(var + 1e-6)?.sqrt()?)?;
        let rows = Tensor::from_vec(plan.rows.clone(), plan.rows.len(), z.device())?;
        z.reshape((b * n, lt, dc))?.index_select(&rows, 0)
    }
}

impl MaskedBlockModel {
    /// Builds the model and its mask token through `vb`. The configuration must have a block
    /// decoder (`reconstruction_weight` > 0; the value itself is not used).
    pub fn new(config: &Config, masking: Masking, vb: VarBuilder<'_>) -> Result<Self> {
        masking.validate().map_err(candle_core::Error::msg)?;
        if !config.has_block_decoder() {
            candle_core::bail!(
                "masked block modelling predicts blocks through D_t: the configuration needs \
                 reconstruction_weight > 0"
            );
        }
        let model = Tempest::new(config, vb.clone())?;
        let dc = config.context_encoder.dim;
        let mask_token = vb.get_with_hints(
            dc,
            MASK_TOKEN,
            Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
        )?;
        let embed_head = if masking.target.embedding() {
            Some(Linear::new(dc, dc, true, None, vb.pp(EMBED_HEAD))?)
        } else {
            None
        };
        Ok(MaskedBlockModel {
            model,
            mask_token,
            masking,
            embed_head,
        })
    }

    /// The model (E_t, M, D_t, E_c and an unused head).
    pub fn model(&self) -> &Tempest {
        &self.model
    }

    /// A copy that shares every variable but draws its dropout masks from a generator of its
    /// own ([`Tempest::with_own_dropout`]).
    pub fn with_own_dropout(&self, seed: u64) -> MaskedBlockModel {
        MaskedBlockModel {
            model: self.model.with_own_dropout(seed),
            ..self.clone()
        }
    }

    /// The masking settings.
    pub fn masking(&self) -> &Masking {
        &self.masking
    }

    /// The mask token `[d_c]`.
    pub fn mask_token(&self) -> &Tensor {
        &self.mask_token
    }

    /// The block tokens `[B, N, L', d_c]` with the masked blocks' replaced by the mask token.
    pub fn masked_tokens(&self, batch: &Batch, plan: &MaskPlan, train: bool) -> Result<Tensor> {
        let tokens =
            self.model
                .encode_blocks(&batch.ids, &batch.byte_mask, &batch.block_len, train)?;
        let (b, n, _, dc) = tokens.dims4()?;
        if plan.shape.0 != b || plan.shape.1 != n {
            candle_core::bail!(
                "a mask plan of {:?} for a batch of {b} items of {n} blocks",
                plan.shape
            );
        }
        let dev = tokens.device();
        let m =
            Tensor::from_vec(plan.masked.clone(), (b, n, 1, 1), dev)?.to_dtype(tokens.dtype())?;
        let keep = m.affine(-1.0, 1.0)?;
        let token = self.mask_token.reshape((1, 1, 1, dc))?;
        tokens.broadcast_mul(&keep)? + m.broadcast_mul(&token)?
    }

    /// The loss of `batch` masked as `plan` says: E_t and M encode every block, the masked
    /// ones' tokens are replaced by the mask token, E_c reads them all, and from E_c's output
    /// at each masked block D_t predicts the ids of the plan's positions (target `ids`) and/or
    /// the head predicts `teacher`'s output there (target `embedding`; the teacher is needed
    /// then, and not read otherwise).
    pub fn loss(
        &self,
        batch: &Batch,
        plan: &MaskPlan,
        teacher: Option<&Teacher>,
        train: bool,
    ) -> Result<PretrainLoss> {
        let x = self.masked_tokens(batch, plan, train)?;
        let (b, n, lt, dc) = x.dims4()?;
        let l = batch.ids.dim(2)?;
        if plan.shape.2 != l || plan.rows.is_empty() {
            candle_core::bail!("a mask plan without masked blocks or of another L");
        }
        let y = self.model.context(&x, batch, train)?;
        let dev = y.device();
        let rows = Tensor::from_vec(plan.rows.clone(), plan.rows.len(), dev)?;
        let at = y
            .narrow(1, 1, n * lt)?
            .reshape((b * n, lt, dc))?
            .index_select(&rows, 0)?;
        let target = self.masking.target;
        let ids = if target.ids() {
            Some(self.ids_loss(&at, plan, train)?)
        } else {
            None
        };
        let embedding = if target.embedding() {
            let teacher = teacher.ok_or_else(|| {
                candle_core::Error::Msg("an embedding target needs a teacher".into())
            })?;
            Some(self.embedding_loss(&at, batch, plan, teacher)?)
        } else {
            None
        };
        let (loss, ids_value, accuracy) = match ids {
            Some((loss, accuracy)) => {
                let v = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                (Some(loss), v, accuracy)
            }
            None => (None, 0.0, 0.0),
        };
        let (loss, embedding, target_spread) = match (loss, embedding) {
            (Some(a), Some((e, v, spread))) => ((a + e)?, v, spread),
            (Some(a), None) => (a, 0.0, 0.0),
            (None, Some((e, v, spread))) => (e, v, spread),
            (None, None) => candle_core::bail!("a pretraining target of nothing"),
        };
        Ok(PretrainLoss {
            loss,
            ids: ids_value,
            accuracy,
            embedding,
            target_spread,
        })
    }

    /// The embedding target's loss from E_c's output `at [rows, L', d_c]` at the masked
    /// blocks: the head's prediction against the teacher's, mean squared error per block,
    /// each item's blocks weighing 1 / their count, averaged over the items; with its value
    /// and the targets' spread.
    fn embedding_loss(
        &self,
        at: &Tensor,
        batch: &Batch,
        plan: &MaskPlan,
        teacher: &Teacher,
    ) -> Result<(Tensor, f64, f64)> {
        let head = self
            .embed_head
            .as_ref()
            .ok_or_else(|| candle_core::Error::Msg("no embedding head".into()))?;
        let target = teacher.targets(batch, plan)?;
        let pred = head.forward(at)?;
        let m = plan.rows.len();
        let per_row = (pred - &target)?.sqr()?.flatten_from(1)?.mean(1)?; // [rows]
        let (_, n, _) = plan.shape;
        let mut count = vec![0usize; plan.shape.0];
        for &r in &plan.rows {
            count[r as usize / n.max(1)] += 1;
        }
        let items = count.iter().filter(|&&c| c > 0).count().max(1) as f32;
        let weights: Vec<f32> = plan
            .rows
            .iter()
            .map(|&r| 1.0 / (count[r as usize / n.max(1)] as f32 * items))
            .collect();
        let weights = Tensor::from_vec(weights, m, at.device())?.to_dtype(per_row.dtype())?;
        let loss = (per_row * weights)?.sum_all()?;
        let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let spread = if m >= 2 {
            target
                .flatten_from(1)?
                .to_dtype(DType::F64)?
                .var_keepdim(0)?
                .mean_all()?
                .to_scalar::<f64>()?
        } else {
            0.0
        };
        Ok((loss, value, spread))
    }

    /// The ids target's loss from E_c's output `at [rows, L', d_c]` at the masked blocks:
    /// D_t predicts the plan's positions; the item-weighted cross-entropy and the fraction
    /// right.
    fn ids_loss(&self, at: &Tensor, plan: &MaskPlan, train: bool) -> Result<(Tensor, f64)> {
        let dev = at.device();
        let decoder = self
            .model
            .block_decoder()
            .ok_or_else(|| candle_core::Error::Msg("no block decoder".into()))?;
        let m = plan.rows.len();
        let count = plan.positions.len();
        let positions = Tensor::from_vec(plan.positions.clone(), (m, plan.per_row), dev)?;
        let hidden = decoder.hidden_at(at, &positions, train)?.flatten_to(1)?; // [rows·P, d]
        let weights = Tensor::from_vec(plan.weights.clone(), count, dev)?;
        let out = match decoder.output_layer().bias.as_ref() {
            Some(bias)
                if self.model.config().own_kernels(dev)
                    && dev.is_cpu()
                    && hidden.dtype() == DType::F32 =>
            {
                let weight = decoder.output_layer().weight();
                fused_output_nll(&hidden, weight, bias, &plan.targets, &plan.ranges)?
            }
            _ => {
                let logits = decoder.output(&hidden)?; // [rows·P, V − 1]
                ranged_cross_entropy(&logits, &plan.targets, &plan.ranges)?
            }
        };
        // The weights of each item's predicted ids sum to 1: the items that have any.
        let total = plan.items_predicted().max(1) as f64;
        let nll = out.narrow(1, 0, 1)?.squeeze(1)?;
        let loss = ((nll * weights.to_dtype(out.dtype())?)?.sum_all()? / total)?;
        let right = out
            .narrow(1, 1, 1)?
            .squeeze(1)?
            .detach()
            .to_dtype(DType::F32)?
            .mul(&weights)?
            .sum_all()?
            .to_scalar::<f32>()? as f64;
        Ok((loss, right / total))
    }
}

/// Cross-entropy of each row `r` of `logits [R, V]` against `targets[r]`, its softmax taken
/// over the ids `ranges[r]` only: `[R, 2]`, column 0 `−log p(target)` (differentiable),
/// column 1 1 where the arg-max over the range is the target, else 0 (no gradient). Tensor
/// ops on logits with −∞ outside each range (any device; [`fused_output_nll`] is the CPU's
/// path, with the output layer).
pub fn ranged_cross_entropy(
    logits: &Tensor,
    targets: &[u32],
    ranges: &[(u32, u32)],
) -> Result<Tensor> {
    let (r, v) = logits.dims2()?;
    if targets.len() != r || ranges.len() != r {
        candle_core::bail!(
            "ranged cross-entropy: {} targets and {} ranges for {r} rows",
            targets.len(),
            ranges.len()
        );
    }
    check_ranges(targets, ranges, v)?;
    let dev = logits.device();
    let mut outside = vec![-1e30f32; r * v];
    for (row, &(a, b)) in ranges.iter().enumerate() {
        outside[row * v + a as usize..row * v + b as usize].fill(0.0);
    }
    let z =
        logits.broadcast_add(&Tensor::from_vec(outside, (r, v), dev)?.to_dtype(logits.dtype())?)?;
    let t = Tensor::from_vec(targets.to_vec(), (r, 1), dev)?;
    let nll = candle_nn::ops::log_softmax(&z, D::Minus1)?
        .gather(&t, 1)?
        .neg()?;
    let right = z
        .argmax_keepdim(D::Minus1)?
        .eq(&t)?
        .to_dtype(logits.dtype())?;
    Tensor::cat(&[&nll, &right], 1)
}

/// D_t's output layer and [`ranged_cross_entropy`] as one op on the CPU: `hidden [R, d]`,
/// the layer's `weight [V, d]` and `bias [V]` → the same `[R, 2]`, computing each row's
/// logits over its range only (a field has 8 to 512 ids, the vocabulary up to 2,489), forward
/// and backward.
pub fn fused_output_nll(
    hidden: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    targets: &[u32],
    ranges: &[(u32, u32)],
) -> Result<Tensor> {
    let (r, d) = hidden.dims2()?;
    let (v, wd) = weight.dims2()?;
    if wd != d || bias.dims1()? != v || targets.len() != r || ranges.len() != r {
        candle_core::bail!(
            "fused output: hidden {:?}, weight {:?}, bias {:?}, {} targets, {} ranges",
            hidden.dims(),
            weight.dims(),
            bias.dims(),
            targets.len(),
            ranges.len()
        );
    }
    check_ranges(targets, ranges, v)?;
    let op = OutputNll {
        targets: std::sync::Arc::new(targets.to_vec()),
        ranges: std::sync::Arc::new(ranges.to_vec()),
    };
    hidden
        .contiguous()?
        .apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)
}

fn check_ranges(targets: &[u32], ranges: &[(u32, u32)], v: usize) -> Result<()> {
    for (&t, &(a, b)) in targets.iter().zip(ranges) {
        if !(a <= t && t < b && b as usize <= v) {
            candle_core::bail!(
                "ranged cross-entropy: target {t} outside its range {a}..{b} of {v} ids"
            );
        }
    }
    Ok(())
}

/// [`fused_output_nll`]'s op.
struct OutputNll {
    targets: std::sync::Arc<Vec<u32>>,
    ranges: std::sync::Arc<Vec<(u32, u32)>>,
}

impl OutputNll {
    /// Row `i`'s logits over its range `a..b`: `h·W_jᵀ + b_j`.
    fn logits(&self, i: usize, h: &[f32], w: &[f32], b: &[f32], d: usize) -> Vec<f32> {
        let (lo, hi) = self.ranges[i];
        let h = &h[i * d..(i + 1) * d];
        (lo as usize..hi as usize)
            .map(|j| {
                let wj = &w[j * d..(j + 1) * d];
                b[j] + h.iter().zip(wj).map(|(x, y)| x * y).sum::<f32>()
            })
            .collect()
    }
}

/// The log-sum-exp of `z` and its arg-max.
fn lse_argmax(z: &[f32]) -> (f64, usize) {
    let (mut best, mut at) = (f32::NEG_INFINITY, 0);
    for (j, &x) in z.iter().enumerate() {
        if x > best {
            (best, at) = (x, j);
        }
    }
    let sum: f64 = z.iter().map(|&x| f64::from(x - best).exp()).sum();
    (f64::from(best) + sum.ln(), at)
}

fn f32_slice<'a>(s: &'a candle_core::CpuStorage, l: &candle_core::Layout) -> Result<&'a [f32]> {
    let Some((lo, hi)) = l.contiguous_offsets() else {
        candle_core::bail!("fused output: an input is not contiguous")
    };
    Ok(&s.as_slice::<f32>()?[lo..hi])
}

impl candle_core::CustomOp3 for OutputNll {
    fn name(&self) -> &'static str {
        "tempest-output-nll"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
        s3: &candle_core::CpuStorage,
        l3: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (h, w, b) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        let d = l1.dims().get(1).copied().unwrap_or(1);
        let rows = self.targets.len();
        let mut out = Vec::with_capacity(rows * 2);
        for i in 0..rows {
            let z = self.logits(i, h, w, b, d);
            let (lse, at) = lse_argmax(&z);
            let t = (self.targets[i] - self.ranges[i].0) as usize;
            out.push((lse - f64::from(z[t])) as f32);
            out.push(if at == t { 1.0 } else { 0.0 });
        }
        Ok((
            candle_core::CpuStorage::F32(out),
            candle_core::Shape::from((rows, 2)),
        ))
    }

    fn bwd(
        &self,
        hidden: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g: Vec<f32> = grad.narrow(1, 0, 1)?.flatten_all()?.to_vec1()?;
        let h: Vec<f32> = hidden.flatten_all()?.to_vec1()?;
        let w: Vec<f32> = weight.flatten_all()?.to_vec1()?;
        let b: Vec<f32> = bias.to_vec1()?;
        let d = hidden.dim(1)?;
        let (mut dh, mut dw, mut db) = (
            vec![0f32; h.len()],
            vec![0f32; w.len()],
            vec![0f32; b.len()],
        );
        for (i, &gi) in g.iter().enumerate() {
            if gi == 0.0 {
                continue;
            }
            let z = self.logits(i, &h, &w, &b, d);
            let (lse, _) = lse_argmax(&z);
            let lo = self.ranges[i].0 as usize;
            let t = self.targets[i] as usize;
            let hi_row = &h[i * d..(i + 1) * d];
            for (k, &zk) in z.iter().enumerate() {
                let j = lo + k;
                let p = (f64::from(zk) - lse).exp();
                let dz = (f64::from(gi) * (p - if j == t { 1.0 } else { 0.0 })) as f32;
                db[j] += dz;
                let wj = &w[j * d..(j + 1) * d];
                for (x, (dhx, wx)) in dh[i * d..(i + 1) * d].iter_mut().zip(wj).enumerate() {
                    *dhx += dz * wx;
                    dw[j * d + x] += dz * hi_row[x];
                }
            }
        }
        let dev = hidden.device();
        Ok((
            Some(Tensor::from_vec(dh, hidden.shape(), dev)?),
            Some(Tensor::from_vec(dw, weight.shape(), dev)?),
            Some(Tensor::from_vec(db, bias.shape(), dev)?),
        ))
    }
}

/// Moves a host batch to `device` and draws its plan: the two things [`MaskedBlockModel::loss`]
/// takes.
pub fn prepare(
    host: &HostBatch,
    masking: &Masking,
    seed: u64,
    keys: &[u64],
    device: &Device,
) -> Result<(Batch, MaskPlan)> {
    let batch = host
        .to_tensors(device)
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    Ok((batch, MaskPlan::draw_keyed(host, masking, seed, keys)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_mask_the_fraction_in_runs() {
        for (real, fraction, span) in [(40, 0.3, 3), (100, 0.15, 5), (7, 0.5, 1), (2, 0.9, 4)] {
            for seed in 0..20 {
                let mut rng = SplitMix64::new(seed);
                let m = choose_spans(real, fraction, span, &mut rng);
                let k = m.iter().filter(|&&f| f).count();
                let want = ((fraction * real as f64).round() as usize).clamp(1, real - 1);
                assert_eq!(k, want, "real {real} fraction {fraction} seed {seed}");
                // Runs of masked blocks: spans join blocks (fewer runs than blocks).
                let runs = m.windows(2).filter(|w| !w[0] && w[1]).count() + usize::from(m[0]);
                if span > 1 && real >= 40 {
                    assert!(
                        runs < k,
                        "spans of {span} should join blocks: {runs} runs for {k}"
                    );
                }
            }
        }
        // One block: masked (predicted from its place alone); none: nothing.
        assert_eq!(choose_spans(1, 0.3, 3, &mut SplitMix64::new(1)), [true]);
        assert!(choose_spans(0, 0.3, 3, &mut SplitMix64::new(1)).is_empty());
    }

    fn host(blocks: &[usize], n: usize, l: usize) -> HostBatch {
        // Item i has blocks[i] real blocks; block j of it has j % l + 1 real ids, byte ids
        // (10·j + p) mod 256.
        let b = blocks.len();
        let mut hb = HostBatch {
            batch: b,
            blocks: n,
            block_bytes: l,
            ids: vec![tempest_tokenize::PAD_ID; b * n * l],
            byte_mask: vec![0; b * n * l],
            block_mask: vec![0; b * n],
            block_len: vec![0; b * n],
            block_index: vec![0; b * n],
            block_time: vec![0.0; b * n],
            block_duration: vec![0.0; b * n],
            block_row: vec![0; b * n],
            block_col: vec![0; b * n],
            block_format: vec![0; b * n],
            labels: vec![0; b],
        };
        for (i, &real) in blocks.iter().enumerate() {
            for j in 0..real {
                let r = i * n + j;
                hb.block_mask[r] = 1;
                hb.block_index[r] = j as u32;
                let len = j % l + 1;
                hb.block_len[r] = len as u32;
                for p in 0..len {
                    hb.ids[r * l + p] = ((10 * j + p) % 256) as u32;
                    hb.byte_mask[r * l + p] = 1;
                }
            }
        }
        hb
    }

    #[test]
    fn plans_mask_real_blocks_only_and_predict_real_ids() {
        let (n, l) = (30, 6);
        let hb = host(&[30, 12, 1, 5], n, l);
        let masking = Masking {
            fraction: 0.3,
            span: 3,
            positions: 4,
            ..Masking::default()
        };
        let plan = MaskPlan::draw(&hb, &masking, 7);
        assert_eq!(
            plan,
            MaskPlan::draw(&hb, &masking, 7),
            "same seed, same plan"
        );
        assert_ne!(plan.masked, MaskPlan::draw(&hb, &masking, 8).masked);
        for (r, &m) in plan.masked.iter().enumerate() {
            assert!(m == 0 || hb.block_mask[r] == 1, "padding block {r} masked");
        }
        let per_item: Vec<usize> = (0..4)
            .map(|i| {
                plan.masked[i * n..(i + 1) * n]
                    .iter()
                    .filter(|&&m| m != 0)
                    .count()
            })
            .collect();
        assert_eq!(per_item, [9, 4, 1, 2]);
        assert_eq!(plan.per_row, 4);
        assert_eq!(plan.positions.len(), plan.rows.len() * 4);
        for (i, &r) in plan.rows.iter().enumerate() {
            let r = r as usize;
            let real = (r % n) % l + 1;
            let slots = &plan.positions[i * 4..(i + 1) * 4];
            let w = &plan.weights[i * 4..(i + 1) * 4];
            assert_eq!(w.iter().filter(|&&x| x > 0.0).count(), real.min(4));
            for (k, (&pos, &wk)) in slots.iter().zip(w).enumerate() {
                let p = pos as usize;
                assert!(p < l, "position {pos} outside the block");
                if wk > 0.0 {
                    assert_eq!(hb.byte_mask[r * l + p], 1, "padding position predicted");
                    assert_eq!(plan.targets[i * 4 + k], hb.ids[r * l + p]);
                    assert_eq!(plan.ranges[i * 4 + k], (0, 256), "byte ids");
                }
            }
        }
        // 0 positions: every real one.
        let all = MaskPlan::draw(
            &hb,
            &Masking {
                positions: 0,
                ..masking
            },
            7,
        );
        assert_eq!(all.per_row, l);
        let real: usize = all
            .rows
            .iter()
            .map(|&r| {
                hb.byte_mask[r as usize * l..(r as usize + 1) * l]
                    .iter()
                    .filter(|&&m| m != 0)
                    .count()
            })
            .sum();
        assert_eq!(all.predicted(), real);
    }

    /// Per item, its masked blocks and its predicted positions, ids and weights.
    #[allow(clippy::type_complexity)]
    fn per_item(plan: &MaskPlan, hb: &HostBatch) -> Vec<(Vec<u8>, Vec<(u32, u32, u32, f32)>)> {
        let (b, n, _) = plan.shape;
        (0..b)
            .map(|i| {
                let mut chosen = Vec::new();
                for (k, &r) in plan.rows.iter().enumerate() {
                    if r as usize / n != i {
                        continue;
                    }
                    for q in k * plan.per_row..(k + 1) * plan.per_row {
                        if plan.weights[q] > 0.0 {
                            chosen.push((
                                r % n as u32,
                                plan.positions[q],
                                plan.targets[q],
                                plan.weights[q],
                            ));
                        }
                    }
                }
                assert_eq!(hb.batch, b);
                (plan.masked[i * n..(i + 1) * n].to_vec(), chosen)
            })
            .collect()
    }

    #[test]
    fn keyed_plans_mask_an_item_alike_in_any_piece_and_weigh_items_equally() {
        let (n, l) = (30, 6);
        let masking = Masking {
            fraction: 0.3,
            span: 3,
            positions: 4,
            ..Masking::default()
        };
        let whole = host(&[30, 12, 1, 5], n, l);
        let keys = [40, 41, 42, 43];
        let plan = MaskPlan::draw_keyed(&whole, &masking, 9, &keys);
        let items = per_item(&plan, &whole);
        // The same items cut into two pieces (two ranks): each item's plan is the whole's.
        let (a, b) = (host(&[30, 12], n, l), host(&[1, 5], n, l));
        let pa = MaskPlan::draw_keyed(&a, &masking, 9, &keys[..2]);
        let pb = MaskPlan::draw_keyed(&b, &masking, 9, &keys[2..]);
        let mut cut = per_item(&pa, &a);
        cut.extend(per_item(&pb, &b));
        assert_eq!(items, cut);
        // Other keys, other plans (the key is used).
        let other = MaskPlan::draw_keyed(&whole, &masking, 9, &[1, 2, 3, 4]);
        assert_ne!(per_item(&other, &whole), items);
        // Each item's weights sum to 1; four items predict.
        for (i, (_, chosen)) in items.iter().enumerate() {
            let sum: f32 = chosen.iter().map(|c| c.3).sum();
            assert!((sum - 1.0).abs() < 1e-5, "item {i}: weights sum to {sum}");
        }
        assert_eq!(plan.items_predicted(), 4);
        assert_eq!(pa.items_predicted() + pb.items_predicted(), 4);
    }

    #[test]
    fn the_fused_output_matches_tensor_ops_in_value_and_gradient() -> Result<()> {
        let (r, d, v) = (5, 3, 12);
        let mut rng = SplitMix64::new(4);
        let mut draw = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| (rng.next_f64() * 4.0 - 2.0) as f32)
                .collect()
        };
        let (h0, w0, b0) = (draw(r * d), draw(v * d), draw(v));
        let targets = [3, 0, 11, 7, 5];
        let ranges = [(2, 6), (0, 12), (8, 12), (7, 8), (4, 10)];
        let weights = Tensor::new(&[1f32, 0.5, 2.0, 1.0, 0.0], &Device::Cpu)?;
        let mut outs = Vec::new();
        for fused in [true, false] {
            let var = |x: &Vec<f32>, shape: &[usize]| {
                candle_core::Var::from_tensor(&Tensor::from_vec(x.clone(), shape, &Device::Cpu)?)
            };
            let (h, w, b) = (var(&h0, &[r, d])?, var(&w0, &[v, d])?, var(&b0, &[v])?);
            let out = if fused {
                fused_output_nll(&h, &w, &b, &targets, &ranges)?
            } else {
                let logits = h.matmul(&w.t()?)?.broadcast_add(&b)?;
                ranged_cross_entropy(&logits, &targets, &ranges)?
            };
            let loss = (out.narrow(1, 0, 1)?.squeeze(1)? * &weights)?.sum_all()?;
            let grads = loss.backward()?;
            let mut flat = vec![out.flatten_all()?.to_vec1::<f32>()?];
            for x in [&h, &w, &b] {
                let g = grads
                    .get(x.as_tensor())
                    .ok_or(candle_core::Error::Msg("no gradient".into()))?;
                flat.push(g.flatten_all()?.to_vec1::<f32>()?);
            }
            outs.push(flat);
        }
        for (k, (a, b)) in outs[0].iter().zip(&outs[1]).enumerate() {
            assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(b) {
                assert!((x - y).abs() < 1e-5, "part {k}: {a:?} vs {b:?}");
            }
        }
        let (out, dh) = (&outs[0][0], &outs[0][1]);
        // A one-id range is certain: no loss, no gradient, always right.
        assert!(out[6].abs() < 1e-6 && out[7] == 1.0);
        assert!(dh[3 * d..4 * d].iter().all(|&x| x.abs() < 1e-6));
        // The zero-weight row gets no gradient; ids outside every range none either.
        assert!(dh[4 * d..].iter().all(|&x| x == 0.0));
        assert!(outs[0][3].iter().all(|&x| x.is_finite()));
        // A target outside its range is refused.
        let x = Tensor::zeros((1, 4), DType::F32, &Device::Cpu)?;
        assert!(ranged_cross_entropy(&x, &[3], &[(0, 2)]).is_err());
        assert!(ranged_cross_entropy(&x, &[3], &[(0, 9)]).is_err());
        // Field ids choose among their field's ids, bytes among the 256 bytes.
        let gain = tempest_tokenize::fields::field_range("mp3.global_gain")
            .ok_or(candle_core::Error::Msg("field".into()))?;
        assert_eq!(id_range(gain.start + 3), (gain.start, gain.end));
        assert_eq!(id_range(17), (0, 256));
        assert_eq!((output_index(255), output_index(257)), (255, 256));
        Ok(())
    }

    /// `tiny` with D_t as a masked block model with `masking`, its variables and
    /// configuration.
    fn tiny_masked(masking: Masking) -> Result<(MaskedBlockModel, candle_nn::VarMap, Config)> {
        let config = Config::tiny().with_reconstruction_weight(1.0);
        let varmap = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let mbm = MaskedBlockModel::new(&config, masking, vb)?;
        Ok((mbm, varmap, config))
    }

    #[test]
    fn masked_tokens_replace_exactly_the_masked_blocks() -> Result<()> {
        let hb = host(&[8, 5], 8, 4);
        let (mbm, varmap, _) = tiny_masked(Masking::default())?;
        let (batch, plan) = prepare(&hb, mbm.masking(), 3, &[], &Device::Cpu)?;
        let plain =
            mbm.model()
                .encode_blocks(&batch.ids, &batch.byte_mask, &batch.block_len, false)?;
        let masked = mbm.masked_tokens(&batch, &plan, false)?;
        let token: Vec<f32> = mbm.mask_token().to_vec1()?;
        let (plain, masked) = (plain.flatten_to(2)?, masked.flatten_to(2)?); // [B·N·L', d_c], L' = 1
        for r in 0..16 {
            let a: Vec<f32> = masked.get(r)?.to_vec1()?;
            let want: Vec<f32> = if plan.masked[r] == 1 {
                token.clone()
            } else {
                plain.get(r)?.to_vec1()?
            };
            assert_eq!(a, want, "block {r}");
        }
        assert!(plan.masked.contains(&1));
        // A configuration without D_t is refused.
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let err = MaskedBlockModel::new(&Config::tiny(), Masking::default(), vb).unwrap_err();
        assert!(err.to_string().contains("reconstruction_weight"), "{err}");
        Ok(())
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    #[test]
    fn the_teacher_gives_the_unmasked_output_standardised_and_follows_the_model() -> Result<()> {
        let hb = host(&[8, 5], 8, 4);
        let (mbm, varmap, config) = tiny_masked(Masking {
            target: Target::Both,
            ..Masking::default()
        })?;
        let teacher = Teacher::new(&config, &varmap, 0.9, &Device::Cpu, DType::F32)?;
        // The teacher holds the model's variables, not the pretraining ones.
        let names = teacher.varmap().data().lock().map(|d| d.len()).unwrap_or(0);
        let all = varmap.data().lock().map(|d| d.len()).unwrap_or(0);
        assert_eq!(names + 3, all, "all but the mask token and the head's two");
        let (batch, plan) = prepare(&hb, mbm.masking(), 3, &[], &Device::Cpu)?;
        // By hand: the model's own E_c output on the unmasked item at the masked rows.
        let x = mbm
            .model()
            .encode_blocks(&batch.ids, &batch.byte_mask, &batch.block_len, false)?;
        let y = mbm.model().context(&x, &batch, false)?;
        // Each item's real blocks (8 and 5 of 8), each feature standardised over them.
        let mut want = Vec::new();
        for &r in &plan.rows {
            let (item, block) = (r as usize / 8, r as usize % 8);
            let real = [8, 5][item];
            let own = y.get(item)?.narrow(0, 1, real)?; // [real, d_c]
            let mean = own.mean_keepdim(0)?;
            let sd = (own.broadcast_sub(&mean)?.sqr()?.mean_keepdim(0)? + 1e-6)?.sqrt()?;
            want.push(
                y.get(item)?
                    .get(1 + block)?
                    .unsqueeze(0)?
                    .broadcast_sub(&mean)?
                    .broadcast_div(&sd)?
                    .squeeze(0)?,
            );
        }
        let want = Tensor::stack(&want, 0)?; // [rows, d_c], L' = 1
        let got = teacher.targets(&batch, &plan)?.squeeze(1)?;
        assert!(max_abs_diff(&got, &want)? < 1e-4);

        // The loss: both parts, each positive; the teacher is required.
        let l = mbm.loss(&batch, &plan, Some(&teacher), true)?;
        let total = l.loss.to_scalar::<f32>()? as f64;
        assert!(
            l.ids > 0.0 && l.embedding > 0.0 && l.target_spread > 0.0,
            "{l:?}"
        );
        assert!((total - (l.ids + l.embedding)).abs() < 1e-4 * total);
        let err = mbm.loss(&batch, &plan, None, true).unwrap_err();
        assert!(err.to_string().contains("teacher"), "{err}");
        // Gradients reach the head and the model, none of the teacher's variables.
        let grads = l.loss.backward()?;
        let head = varmap.get(
            (64, 64),
            "pretrain.embed_head.weight",
            candle_nn::Init::Const(0.0),
            DType::F32,
            &Device::Cpu,
        )?;
        assert!(grads.get(&head).is_some());
        for var in teacher.varmap().all_vars() {
            assert!(grads.get(var.as_tensor()).is_none());
        }

        // The model moves; the teacher follows by 1 − d of the way: d = min(0.9, 1/10) at
        // step 0, min(0.9, 21/30) = 0.7 at step 20.
        let name = "context_encoder.cls";
        let var_of = |map: &candle_nn::VarMap| {
            map.data()
                .lock()
                .map(|d| d[name].clone())
                .map_err(|_| candle_core::Error::Msg("lock".into()))
        };
        let before = var_of(teacher.varmap())?.as_tensor().clone();
        let old = before.detach().copy()?;
        let var = var_of(&varmap)?;
        let moved = (var.as_tensor().detach() + 1.0)?;
        var.set(&moved)?;
        assert!((teacher.decay_at(0) - 0.1).abs() < 1e-12);
        assert!((teacher.decay_at(20) - 0.7).abs() < 1e-12);
        teacher.update(&varmap, 20)?;
        let want = ((&old * 0.7)? + (&moved * 0.3)?)?;
        assert!(max_abs_diff(&before, &want)? < 1e-6);
        Ok(())
    }

    #[test]
    fn targets_parse_and_old_masking_files_read_as_ids() {
        assert_eq!(Target::parse("both"), Ok(Target::Both));
        assert!(Target::parse("bytes")
            .unwrap_err()
            .contains("ids, embedding, both"));
        let old: Masking =
            serde_json::from_str(r#"{"fraction":0.3,"span":3,"positions":32}"#).unwrap();
        assert_eq!(old, Masking::default());
        let bad = Masking {
            teacher_decay: 1.0,
            ..Masking::default()
        };
        assert!(bad.validate().unwrap_err().contains("teacher decay"));
    }
}
