//! The training flags shared by the `train`, `quickstart` and `compare` examples, parsed by
//! clap and applied onto a [`TrainOptions`].
//!
//! Included by each of them with `#[path = "common/train_args.rs"] mod train_args;` (a file in
//! a subfolder of `examples/` without a `main.rs` is not an example of its own). Every field is
//! an `Option` (or a switch that is off unless given), so that an example can tell the flags
//! given from those left open: [`TrainArgs::apply`] sets the given ones only, and `train`'s
//! audio recipe fills the rest.

use clap::{ArgMatches, Args, Command, CommandFactory, FromArgMatches};
use tempest::tempest_model::{DeviceChoice, MixerKind, Precision};
use tempest::tempest_tokenize::fields::OrdinalFields;
use tempest::tempest_tokenize::BlockTokens;
use tempest::tempest_train::TrainOptions;

/// The training flags (the defaults shown in `--help` are the example's).
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Training")]
pub struct TrainArgs {
    /// Passes over the training split
    #[arg(long, value_name = "N")]
    pub epochs: Option<usize>,
    /// Items per micro-batch
    #[arg(long, value_name = "B")]
    pub batch: Option<usize>,
    /// Micro-batches whose gradients are summed before each optimiser step
    #[arg(long, value_name = "K")]
    pub accumulate: Option<usize>,
    /// Peak learning rate (linear warm-up, then cosine decay)
    #[arg(long, value_name = "LR")]
    pub lr: Option<f64>,
    /// Label smoothing, overriding the model configuration's
    #[arg(long, value_name = "X")]
    pub label_smoothing: Option<f64>,
    /// Mixup of block tokens while training: α of Beta(α, α), in (0, 2]; 0 = off (overrides
    /// the model configuration's)
    #[arg(long, value_name = "ALPHA")]
    pub mixup: Option<f64>,
    /// Dropout in E_t, E_c and D_t while training, in [0, 1) (overrides the model
    /// configuration's)
    #[arg(long, value_name = "P")]
    pub dropout: Option<f64>,
    /// How M pools a block's id states into its token: linear, attention or flatten
    /// (docs/model.md), overriding the model configuration's
    #[arg(long, value_name = "M", value_parser = parse_mixer)]
    pub mixer: Option<MixerKind>,
    /// Width K (odd) of a convolution over neighbouring block tokens before E_c, overriding
    /// the model configuration's (0 = none; docs/model.md)
    #[arg(long, value_name = "K")]
    pub context_conv: Option<usize>,
    /// λ, the weight of the block reconstruction loss L_r, overriding the model configuration's
    #[arg(long, value_name = "X")]
    pub lambda: Option<f64>,
    /// AdamW's decoupled weight decay (on matrices only)
    #[arg(long, value_name = "X")]
    pub weight_decay: Option<f64>,
    /// Decay of a moving average of the weights, which evaluation and the best checkpoint
    /// read (e.g. 0.999; 0 = off)
    #[arg(long, value_name = "D")]
    pub ema: Option<f64>,
    /// Seed of the initial weights, the batches, the variants, the crops and dropout
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
    /// Loader worker threads (0: tokenize on the training thread)
    #[arg(long, value_name = "W")]
    pub workers: Option<usize>,
    /// Parts each batch is split into whose passes run at the same time (0: 2 on the CPU with
    /// 2 or more rayon threads, else 1)
    #[arg(long, value_name = "P")]
    pub parallel: Option<usize>,
    /// Keep the JPEG header (its tables) as one block in front of the MCUs
    #[arg(long)]
    pub header_block: bool,
    /// Bits per id: 8 (one id per byte), 4, 2 or 1
    #[arg(long, value_name = "8|4|2|1")]
    pub bit_stride: Option<u8>,
    /// L: ids kept of each block, its first ones (blocks cut short keep their true length for
    /// the length embedding)
    #[arg(long, value_name = "L")]
    pub block_bytes: Option<usize>,
    /// What a block's ids stand for: bytes, fields, fields+bytes, fields+data, fields+lines,
    /// fields+energy, energy, fields+half-bands, fields+energy-peaks or fields+packed-halves
    /// (docs/tokenize.md)
    #[arg(long, value_name = "T", value_parser = parse_tokens)]
    pub tokens: Option<BlockTokens>,
    /// Blocks of each training item kept as a random contiguous run (a random crop in time)
    #[arg(long, value_name = "N")]
    pub crop: Option<usize>,
    /// MP3 field tokens: loudness jitter while training, in steps of global_gain (1.5 dB)
    #[arg(long, value_name = "K")]
    pub gain_jitter: Option<u8>,
    /// MP3 band tokens (lines or energies): silence a random run of up to K scalefactor bands
    /// of a clip while training
    #[arg(long, value_name = "K")]
    pub band_mask: Option<u8>,
    /// MP3 band tokens: silence every band of a random run of up to K frames of a clip while
    /// training (a time mask)
    #[arg(long, value_name = "K")]
    pub time_mask: Option<u16>,
    /// MP3 band energies: short-block frames give the long bands' energies (their three
    /// windows merged), one layout for every frame
    #[arg(long)]
    pub merge_short_windows: bool,
    /// MP3 band tokens: move every band id of a clip by a random shift of up to K band
    /// positions while training (`compare`: the ViT's mel bins move by the same share of
    /// the frequency axis)
    #[arg(long, value_name = "K")]
    pub band_shift: Option<u8>,
    /// Field ids embedded as ordered values (each id's row plus the running sum of its
    /// field's learned steps, docs/model.md): levels (the MP3 band energies), all (those and
    /// the side-information amounts: gains, lengths, counts) or none
    #[arg(long, value_name = "W", value_parser = parse_ordinal)]
    pub ordinal: Option<Ordinal>,
    /// Batches per sorting window of the length-bucketing sampler (1: plain shuffled batches)
    #[arg(long, value_name = "K")]
    pub bucket: Option<usize>,
    /// Where the model trains and evaluates (cuda needs a build with --features cuda)
    #[arg(long, value_name = "cpu|cuda|cuda:N")]
    pub device: Option<DeviceChoice>,
    /// The weights' precision (bf16 on a GPU only)
    #[arg(long, value_name = "f32|bf16")]
    pub dtype: Option<Precision>,
    /// Stop, saving the resumable checkpoint, after N optimiser steps in all
    #[arg(long, value_name = "N")]
    pub max_steps: Option<usize>,
    /// Also save the resumable checkpoint every N optimiser steps (besides after each epoch)
    #[arg(long, value_name = "N")]
    pub checkpoint_every: Option<usize>,
    /// Evaluate (and keep the best checkpoint) after every N epochs and after the last
    #[arg(long, value_name = "N")]
    pub eval_every: Option<usize>,
    /// Start afresh in a run folder that already holds a run (its files are replaced)
    #[arg(long)]
    pub overwrite: bool,
    /// No progress bars on standard error
    #[arg(long)]
    pub no_progress: bool,
}

impl TrainArgs {
    /// Sets the options of the flags given onto `o`, leaving the others as they are.
    pub fn apply(&self, o: &mut TrainOptions) {
        fn set<T: Clone>(given: &Option<T>, field: &mut T) {
            if let Some(v) = given {
                *field = v.clone();
            }
        }
        set(&self.epochs, &mut o.epochs);
        set(&self.batch, &mut o.batch_size);
        set(&self.accumulate, &mut o.accumulate);
        set(&self.lr, &mut o.lr);
        set(&self.weight_decay, &mut o.adamw.weight_decay);
        set(&self.ema, &mut o.adamw.ema);
        set(&self.seed, &mut o.seed);
        set(&self.workers, &mut o.workers);
        set(&self.parallel, &mut o.parallel_parts);
        set(&self.bit_stride, &mut o.bit_stride);
        set(&self.gain_jitter, &mut o.gain_jitter);
        set(&self.band_mask, &mut o.band_mask);
        set(&self.time_mask, &mut o.time_mask);
        o.merge_short_windows |= self.merge_short_windows;
        set(&self.band_shift, &mut o.band_shift);
        if let Some(Ordinal(w)) = self.ordinal {
            o.ordinal = w;
        }
        set(&self.bucket, &mut o.bucket_batches);
        set(&self.device, &mut o.device);
        set(&self.dtype, &mut o.dtype);
        if self.label_smoothing.is_some() {
            o.label_smoothing = self.label_smoothing;
        }
        if self.lambda.is_some() {
            o.reconstruction_weight = self.lambda;
        }
        if self.mixup.is_some() {
            o.mixup = self.mixup;
        }
        if self.dropout.is_some() {
            o.dropout = self.dropout;
        }
        if self.mixer.is_some() {
            o.mixer = self.mixer;
        }
        if self.context_conv.is_some() {
            o.context_conv = self.context_conv;
        }
        if self.block_bytes.is_some() {
            o.block_bytes = self.block_bytes;
        }
        if self.tokens.is_some() {
            o.tokens = self.tokens;
        }
        if self.crop.is_some() {
            o.train_blocks = self.crop;
        }
        if self.max_steps.is_some() {
            o.stop_after_steps = self.max_steps;
        }
        if let Some(n) = self.checkpoint_every {
            o.checkpoint_every = n;
        }
        set(&self.eval_every, &mut o.eval_every);
        if self.header_block {
            o.jpeg_header_block = true;
        }
        if self.overwrite {
            o.overwrite = true;
        }
        if self.no_progress {
            o.progress = false;
        }
    }

    /// `cmd` with `o`'s values shown as the training flags' defaults in its help; `notes`
    /// replace the shown default of some flags (by their ids: `("epochs", "10; audio: 80")`).
    pub fn show_defaults(cmd: Command, o: &TrainOptions, notes: &[(&str, &str)]) -> Command {
        let or = |v: Option<String>, none: &str| v.unwrap_or_else(|| none.to_string());
        let defaults = [
            ("epochs", o.epochs.to_string()),
            ("batch", o.batch_size.to_string()),
            ("accumulate", o.accumulate.to_string()),
            ("lr", o.lr.to_string()),
            ("weight_decay", o.adamw.weight_decay.to_string()),
            ("ema", o.adamw.ema.to_string()),
            (
                "label_smoothing",
                or(
                    o.label_smoothing.map(|v| v.to_string()),
                    "the model configuration's",
                ),
            ),
            (
                "mixup",
                or(o.mixup.map(|v| v.to_string()), "the model configuration's"),
            ),
            (
                "dropout",
                or(
                    o.dropout.map(|v| v.to_string()),
                    "the model configuration's",
                ),
            ),
            (
                "mixer",
                or(
                    o.mixer.map(|m| m.name().to_string()),
                    "the model configuration's",
                ),
            ),
            (
                "context_conv",
                or(
                    o.context_conv.map(|v| v.to_string()),
                    "the model configuration's",
                ),
            ),
            (
                "lambda",
                or(
                    o.reconstruction_weight.map(|v| v.to_string()),
                    "the model configuration's",
                ),
            ),
            ("seed", o.seed.to_string()),
            ("workers", o.workers.to_string()),
            ("parallel", o.parallel_parts.to_string()),
            ("bit_stride", o.bit_stride.to_string()),
            (
                "block_bytes",
                or(
                    o.block_bytes.map(|v| v.to_string()),
                    "the format's, at most the model's max_block_bytes",
                ),
            ),
            (
                "tokens",
                or(
                    o.tokens.map(|t| t.name().to_string()),
                    "fields+energy for MP3, fields for Ogg Opus, bytes for JPEG",
                ),
            ),
            ("crop", or(o.train_blocks.map(|v| v.to_string()), "no crop")),
            ("gain_jitter", o.gain_jitter.to_string()),
            ("band_mask", o.band_mask.to_string()),
            ("time_mask", o.time_mask.to_string()),
            ("merge_short_windows", o.merge_short_windows.to_string()),
            ("band_shift", o.band_shift.to_string()),
            (
                "ordinal",
                o.ordinal.map_or("none", |w| w.name()).to_string(),
            ),
            ("bucket", o.bucket_batches.to_string()),
            ("device", o.device.to_string()),
            ("dtype", o.dtype.to_string()),
            (
                "max_steps",
                or(o.stop_after_steps.map(|v| v.to_string()), "no limit"),
            ),
            ("eval_every", o.eval_every.to_string()),
            (
                "checkpoint_every",
                match o.checkpoint_every {
                    0 => "0: after each epoch only".to_string(),
                    n => n.to_string(),
                },
            ),
        ];
        let mut cmd = cmd;
        for (id, value) in defaults {
            let value = notes
                .iter()
                .find(|(n, _)| *n == id)
                .map_or(value, |(_, v)| v.to_string());
            cmd = cmd.mut_arg(id, |a| {
                let help = a.get_help().map(ToString::to_string).unwrap_or_default();
                a.help(format!("{help} [default: {value}]"))
            });
        }
        cmd
    }
}

/// Parses the command line of an example whose arguments are `C`, with the help changed by
/// `help` (e.g. [`TrainArgs::show_defaults`]); on a usage error, `--help` or `--version` it
/// prints and exits as clap does (2 for usage errors, 0 otherwise).
pub fn parse_with<C: CommandFactory + FromArgMatches>(help: impl FnOnce(Command) -> Command) -> C {
    let matches: ArgMatches = help(C::command()).get_matches();
    C::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// `--mixer`: linear, attention or flatten.
fn parse_mixer(name: &str) -> Result<MixerKind, String> {
    MixerKind::parse(name).ok_or_else(|| "one of linear, attention, flatten".to_string())
}

/// `--ordinal`'s value: which fields, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ordinal(pub Option<OrdinalFields>);

/// `--ordinal`: levels, all or none.
fn parse_ordinal(name: &str) -> Result<Ordinal, String> {
    match name {
        "none" => Ok(Ordinal(None)),
        _ => OrdinalFields::from_name(name)
            .map(|w| Ordinal(Some(w)))
            .ok_or_else(|| "one of levels, all, none".to_string()),
    }
}

/// `--tokens`: one of [`BlockTokens::names`].
fn parse_tokens(name: &str) -> Result<BlockTokens, String> {
    BlockTokens::parse(name).ok_or_else(|| format!("one of {}", BlockTokens::names()))
}
