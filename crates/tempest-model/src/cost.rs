//! Cost accounting: parameters, FLOPs per item and attention sizes, computed from a
//! [`Config`] and an item's shape (N blocks of L bytes). FLOPs count matrix products only
//! (2 per multiply-add); norms, softmax and activations add a few percent.

use crate::config::{BlockPositionKind, Config, MixerKind, StackConfig};
use crate::model::TIME_FREQUENCIES;

/// Parameters of a pre-norm stack: per layer 4 projections (d² + d), the MLP
/// (2·d·m + m + d), two norms (4d); one final norm (2d).
pub fn stack_params(s: &StackConfig) -> usize {
    let (d, m) = (s.dim, s.mlp_dim);
    s.layers * (4 * (d * d + d) + 2 * d * m + m + d + 4 * d) + 2 * d
}

/// Parameters of each part of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// Byte embedding (with the class rows of factored ids) and in-block positions.
    pub embedding: usize,
    /// E_t.
    pub block_encoder: usize,
    /// M.
    pub mixer: usize,
    /// D_t (0 when λ = 0).
    pub block_decoder: usize,
    /// E_c with its \[CLS\], position, time and length embeddings and the convolution over
    /// neighbouring blocks.
    pub context_encoder: usize,
    /// The classification head.
    pub head: usize,
}

impl Params {
    /// All parameters.
    pub fn total(&self) -> usize {
        self.embedding
            + self.block_encoder
            + self.mixer
            + self.block_decoder
            + self.context_encoder
            + self.head
    }

    /// Parameters used at inference (without D_t).
    pub fn inference(&self) -> usize {
        self.total() - self.block_decoder
    }
}

/// Counts the parameters of a model built from `cfg`.
pub fn params(cfg: &Config) -> Params {
    let (dt, dc, lt) = (
        cfg.block_encoder.dim,
        cfg.context_encoder.dim,
        cfg.tokens_per_block,
    );
    let h = cfg.mixer_mlp_dim;
    let mix = match cfg.mixer {
        MixerKind::Linear => lt * cfg.max_block_bytes,
        MixerKind::Attention => lt * dt + 4 * (dt * dt + dt),
        MixerKind::Flatten => cfg.flat_positions() * dt * lt * dt,
    };
    let dd = cfg.block_decoder.dim;
    // D_t predicts every id below the padding id's place: 256 bytes, or the field ids too.
    let out = cfg.vocab_size - 1;
    let block_decoder = if cfg.has_block_decoder() {
        dc * dd + dd + cfg.max_block_bytes * dd + stack_params(&cfg.block_decoder) + dd * out + out
    } else {
        0
    };
    let time = match cfg.block_position {
        BlockPositionKind::IndexAndTime => 2 * TIME_FREQUENCIES * dc,
        BlockPositionKind::Index => 0,
    };
    let length = if cfg.length_embedding {
        (cfg.max_block_bytes + 1) * dc
    } else {
        0
    };
    let sub = if lt > 1 { lt * dc } else { 0 };
    let k = cfg.context_conv;
    let conv = if k > 0 {
        k * dc * dc + dc + dc * dc + dc
    } else {
        0
    };
    Params {
        embedding: cfg.vocab_size * dt
            + cfg.max_block_bytes * dt
            + cfg
                .factored_ids
                .iter()
                .map(|f| f.classes as usize * dt)
                .sum::<usize>()
            + cfg
                .ordinal_ids
                .iter()
                .map(|o| (o.values as usize).saturating_sub(1) * dt)
                .sum::<usize>(),
        block_encoder: stack_params(&cfg.block_encoder),
        mixer: mix + 2 * dt + dt * h + h + h * dc + dc,
        block_decoder,
        context_encoder: dc
            + cfg.max_blocks * dc
            + time
            + length
            + sub
            + conv
            + stack_params(&cfg.context_encoder),
        head: dc * cfg.num_classes + cfg.num_classes,
    }
}

/// Forward FLOPs of a stack over `seqs` sequences of `t` tokens.
pub fn stack_flops(s: &StackConfig, seqs: usize, t: usize) -> f64 {
    let (d, m, t) = (s.dim as f64, s.mlp_dim as f64, t as f64);
    let per_layer = 2.0 * (4.0 * t * d * d + 2.0 * t * t * d + 2.0 * t * d * m);
    seqs as f64 * s.layers as f64 * per_layer
}

/// Forward FLOPs of one item of N blocks of L bytes, by part.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Flops {
    /// E_t over N blocks of L bytes.
    pub block_encoder: f64,
    /// M.
    pub mixer: f64,
    /// D_t (0 when λ = 0).
    pub block_decoder: f64,
    /// E_c over N·L' + 1 tokens, and the head.
    pub context_encoder: f64,
}

impl Flops {
    /// Forward FLOPs of inference (without D_t).
    pub fn inference(&self) -> f64 {
        self.block_encoder + self.mixer + self.context_encoder
    }

    /// Forward FLOPs of a training pass (with D_t when λ > 0).
    pub fn forward(&self) -> f64 {
        self.inference() + self.block_decoder
    }

    /// A training step: forward + backward, the backward costing twice the forward (one
    /// product for the inputs' gradient and one for the weights').
    pub fn training(&self) -> f64 {
        3.0 * self.forward()
    }
}

/// FLOPs of one item of `n` blocks of `l` bytes.
pub fn flops(cfg: &Config, n: usize, l: usize) -> Flops {
    let (dt, dc, lt) = (
        cfg.block_encoder.dim as f64,
        cfg.context_encoder.dim as f64,
        cfg.tokens_per_block,
    );
    let (nf, lf, ltf, h) = (n as f64, l as f64, lt as f64, cfg.mixer_mlp_dim as f64);
    let pool = match cfg.mixer {
        MixerKind::Linear => 2.0 * ltf * lf * dt,
        // k and v over L bytes, the queries' attention, the output projection.
        MixerKind::Attention => 2.0 * (2.0 * lf * dt * dt + 2.0 * ltf * lf * dt + ltf * dt * dt),
        // The masked mean, then the flattened states of the first P positions through
        // their map.
        MixerKind::Flatten => {
            let pf = l.min(cfg.flat_positions()) as f64;
            2.0 * lf * dt + 2.0 * pf * dt * ltf * dt
        }
    };
    let mixer = nf * (pool + 2.0 * ltf * (dt * h + h * dc));
    let block_decoder = if cfg.has_block_decoder() {
        let dd = cfg.block_decoder.dim as f64;
        stack_flops(&cfg.block_decoder, n, lt + l)
            + nf * 2.0 * (ltf * dc * dd + lf * dd * (cfg.vocab_size - 1) as f64)
    } else {
        0.0
    };
    Flops {
        block_encoder: stack_flops(&cfg.block_encoder, n, l),
        mixer,
        block_decoder,
        context_encoder: stack_flops(&cfg.context_encoder, 1, n * lt + 1)
            + nf * ltf * 2.0 * (cfg.context_conv as f64 + 1.0) * dc * dc
            + 2.0 * dc * cfg.num_classes as f64,
    }
}

/// FLOPs of one item whose blocks have the real lengths `block_lens` (bytes): only real bytes
/// count as work, as the fused layers compute them; what a batch spends on padding its blocks
/// to its longest block is not counted. D_t is counted at the real lengths too.
pub fn flops_ragged(cfg: &Config, block_lens: &[usize]) -> Flops {
    let context = flops(cfg, block_lens.len(), 1).context_encoder;
    block_lens.iter().fold(
        Flops {
            block_encoder: 0.0,
            mixer: 0.0,
            block_decoder: 0.0,
            context_encoder: context,
        },
        |mut f, &l| {
            let b = flops(cfg, 1, l);
            f.block_encoder += b.block_encoder;
            f.mixer += b.mixer;
            f.block_decoder += b.block_decoder;
            f
        },
    )
}

/// Tokens of an AST (Gong et al. 2021) over `seconds` of audio: a 128-bin log-mel spectrogram
/// with a 10 ms hop (25 ms window), cut into 16×16 patches with stride 10 in both axes:
/// ⌊(128 − 16)/10⌋ + 1 = 12 frequency patches times ⌊(frames − 16)/10⌋ + 1 time patches.
pub fn ast_patches(seconds: f64) -> usize {
    let samples = (seconds * 16_000.0).round() as usize;
    // Kaldi fbank framing at 16 kHz: 400-sample windows every 160 samples.
    let frames = if samples >= 400 {
        (samples - 400) / 160 + 1
    } else {
        0
    };
    let freq = (128 - 16) / 10 + 1;
    let time = if frames >= 16 {
        (frames - 16) / 10 + 1
    } else {
        0
    };
    freq * time
}

/// MP3 frames per second at sample rate `rate`: 1152 samples per frame for MPEG-1
/// (32–48 kHz) and 576 for MPEG-2/2.5 (ISO 13818-3 2.4.1.1).
pub fn mp3_frames_per_second(rate: u32) -> f64 {
    let samples = if rate >= 32_000 { 1152.0 } else { 576.0 };
    f64::from(rate) / samples
}

/// The attention matrix of E_c for `blocks` blocks: (N·L' + 1)² entries per head and layer.
pub fn context_attention(cfg: &Config, blocks: usize) -> usize {
    let t = blocks * cfg.tokens_per_block + 1;
    t * t
}

/// A printable report of a preset's parameters.
pub fn params_report(name: &str, cfg: &Config) -> String {
    let p = params(cfg);
    format!(
        "{name}: {:.3} M parameters, {:.3} M at inference (embeddings {:.3}, E_t {:.3}, M {:.3}, E_c {:.3}, D_t {:.3})",
        p.total() as f64 / 1e6,
        p.inference() as f64 / 1e6,
        p.embedding as f64 / 1e6,
        p.block_encoder as f64 / 1e6,
        p.mixer as f64 / 1e6,
        p.context_encoder as f64 / 1e6,
        p.block_decoder as f64 / 1e6,
    )
}

/// A printable report of a preset's FLOPs for items of `n` blocks of `l` bytes.
pub fn flops_report(cfg: &Config, n: usize, l: usize) -> String {
    let f = flops(cfg, n, l);
    format!(
        "inference {:.3} GFLOP, training step {:.3} GFLOP per item (forward: E_t {:.1} %, M {:.1} %, E_c {:.1} %, D_t {:.1} %)",
        f.inference() / 1e9,
        f.training() / 1e9,
        100.0 * f.block_encoder / f.forward(),
        100.0 * f.mixer / f.forward(),
        100.0 * f.context_encoder / f.forward(),
        100.0 * f.block_decoder / f.forward(),
    )
}

/// Item shapes the cost table uses: (what, N, L).
pub const SHAPES: [(&str, usize, usize); 3] = [
    ("1 s of 16 kHz MP3 at 32 kbps (28 frames of 144 B)", 28, 144),
    (
        "10 s of 16 kHz MP3 at 32 kbps (278 frames of 144 B)",
        278,
        144,
    ),
    ("28x28 grayscale JPEG (16 MCUs of <= 32 B)", 16, 32),
];

/// The table `examples/cost.rs` prints: each preset's parameters and FLOPs for the
/// [`SHAPES`], then E_c's attention size against an AST's.
pub fn table() -> String {
    let mut out = String::new();
    for name in ["tiny", "small", "paper"] {
        let cfg = Config::preset(name).unwrap_or_default();
        out.push_str(&params_report(name, &cfg));
        out.push('\n');
        for (what, n, l) in SHAPES {
            out.push_str(&format!("  {what}: {}\n", flops_report(&cfg, n, l)));
        }
    }
    out.push_str("\nAttention matrix per head and layer, E_c (L' = 1) against AST (128 mel bins, 16x16 patches, stride 10):\n");
    for seconds in [1.0, 10.0] {
        let ast = ast_patches(seconds);
        for (what, fps) in [
            ("16 kHz MP3 frames", mp3_frames_per_second(16_000)),
            ("tokens at the paper's 32/s", 32.0),
        ] {
            let n = (seconds * fps).ceil() as usize;
            let ec = context_attention(&Config::tiny(), n);
            out.push_str(&format!(
                "  {seconds:>4} s: E_c over {n} {what} + [CLS]: {ec} entries; AST over {ast} patches: {} entries ({:.1}x larger)\n",
                ast * ast,
                (ast * ast) as f64 / ec as f64
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ast_has_108_patches_per_second() {
        // The paper's figure (docs/design.md): 108 tokens for 1 s of audio.
        assert_eq!(ast_patches(1.0), 108);
        // AST's standard 10 s input: 1024 frames → 101 time patches → 1212 (Gong et al.).
        assert_eq!(12 * ((1024 - 16) / 10 + 1), 1212);
        assert!((mp3_frames_per_second(16_000) - 27.777).abs() < 1e-2);
    }

    #[test]
    fn flops_scale_as_expected() {
        let c = Config::tiny();
        let a = flops(&c, 16, 32);
        let b = flops(&c, 32, 32);
        // E_t is per block: doubling N doubles it exactly.
        assert!((b.block_encoder / a.block_encoder - 2.0).abs() < 1e-12);
        assert!(b.context_encoder > 2.0 * a.context_encoder * 0.99);
        assert_eq!(a.block_decoder, 0.0);
        let d = flops(&c.clone().with_reconstruction_weight(0.1), 16, 32);
        assert!(d.block_decoder > 0.0 && d.inference() == a.inference());
    }

    #[test]
    fn ragged_flops_count_real_bytes_only() {
        let c = Config::small().with_reconstruction_weight(0.1);
        let (even, same) = (flops(&c, 16, 40), flops_ragged(&c, &[40; 16]));
        for (a, b) in [
            (even.block_encoder, same.block_encoder),
            (even.mixer, same.mixer),
            (even.block_decoder, same.block_decoder),
            (even.context_encoder, same.context_encoder),
        ] {
            assert!((a / b - 1.0).abs() < 1e-12, "{a} vs {b}");
        }
        // One block of 40 bytes and fifteen of 2: E_t costs far less than 16 blocks of 40,
        // E_c the same.
        let mut lens = [2; 16];
        lens[3] = 40;
        let r = flops_ragged(&c, &lens);
        assert!(r.block_encoder < 0.2 * even.block_encoder);
        assert_eq!(r.context_encoder, even.context_encoder);
    }
}
