//! Training-step and inference throughput of the `tiny` and `small` presets on the CPU, beside
//! the GFLOP/s of a large candle matmul measured in the same run.
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo bench --bench bench_main -- 'matmul|tiny|small'   # criterion, then the summary
//! RAYON_NUM_THREADS=2 cargo bench --bench bench_main -- summary [WORD]        # the summary alone
//! ```
//!
//! Two workloads. MP3: items are 1 s of 16 kHz MP3 at 32 kbps, N = 28 blocks of L = 144 bytes,
//! 8 per batch, no padding. JPEG: items shaped like the quickstart's MNIST digits, N = 16 MCUs
//! whose lengths are drawn from the lengths of real q75 MCUs (see `MCU_LENGTHS`), 32 per batch,
//! padded to the batch's longest block as the loader does.
//! criterion reports items/s; a summary table at the end gives items/s, real byte tokens/s and
//! the GFLOP/s the model's matrix products imply (`tempest_model::cost`), as a share of the
//! matmul's. Only products over real bytes count as work (`cost::flops_ragged`): what a batch
//! spends on its padding is not.

use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, Criterion, Throughput};
use tempest::tempest_model::{cost, Config, MixerKind, Tempest};
use tempest::tempest_tokenize::{collate, Batch, BlockPosition, TokenizedItem, PAD_ID};
use tempest::tempest_train::{train_step, AdamW, AdamWConfig};

const B: usize = 8;
const N: usize = 28;
const L: usize = 144;
const MATMUL: usize = 1024;

/// JPEG items per batch (the quickstart's batch size) and MCUs per item (a 28×28 digit).
const JPEG_B: usize = 32;
const JPEG_N: usize = 16;

/// (length in bytes, count) of 6,400 real MCUs: the first 400 training digits of
/// `data/mnist` (by path) as q75 grayscale JPEG, as the quickstart encodes them, listed with
/// `target/release/examples/blocks --json FILE...` (a block's tokens are ⌈bits/8⌉ bytes).
/// Mean 16.6 bytes, 47 % of them 1–3 bytes (background), longest 41.
const MCU_LENGTHS: [(usize, u32); 41] = [
    (1, 1467),
    (2, 1084),
    (3, 454),
    (4, 5),
    (5, 9),
    (6, 6),
    (7, 15),
    (8, 12),
    (9, 11),
    (10, 4),
    (11, 23),
    (12, 26),
    (13, 15),
    (14, 12),
    (15, 19),
    (16, 19),
    (17, 26),
    (18, 19),
    (19, 19),
    (20, 27),
    (21, 43),
    (22, 70),
    (23, 67),
    (24, 106),
    (25, 113),
    (26, 149),
    (27, 159),
    (28, 153),
    (29, 186),
    (30, 199),
    (31, 217),
    (32, 253),
    (33, 336),
    (34, 300),
    (35, 267),
    (36, 244),
    (37, 160),
    (38, 70),
    (39, 31),
    (40, 4),
    (41, 1),
];

/// A workload: a batch and the real block lengths of each of its items.
struct Workload {
    name: &'static str,
    batch: Batch,
    lens: Vec<Vec<usize>>,
}

impl Workload {
    fn items(&self) -> usize {
        self.lens.len()
    }
    /// Real bytes per item, on average.
    fn bytes_per_item(&self) -> f64 {
        self.lens.iter().flatten().sum::<usize>() as f64 / self.items() as f64
    }
    /// Matrix-product FLOPs per item over real bytes only.
    fn flops(&self, cfg: &Config) -> (f64, f64) {
        let all: Vec<cost::Flops> = self
            .lens
            .iter()
            .map(|l| cost::flops_ragged(cfg, l))
            .collect();
        let n = all.len() as f64;
        (
            all.iter().map(|f| f.training()).sum::<f64>() / n,
            all.iter().map(|f| f.inference()).sum::<f64>() / n,
        )
    }
}

fn xorshift(mut state: u32) -> impl FnMut() -> u32 {
    move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    }
}

/// Random bytes in blocks of the given lengths, one item per entry, as a collated batch.
fn batch_of(format: tempest::cff_blocks::Format, lens: &[Vec<usize>], seed: u32) -> Batch {
    let mut next = xorshift(seed);
    let items: Vec<TokenizedItem> = lens
        .iter()
        .map(|item| {
            let mut it = TokenizedItem::new(format, 0);
            for (k, &l) in item.iter().enumerate() {
                let bytes: Vec<u8> = (0..l).map(|_| next() as u8).collect();
                let pos = BlockPosition {
                    index: k as u32,
                    time: k as f32 * 0.036,
                    duration: 0.036,
                    row: (k / 4) as u32,
                    col: (k % 4) as u32,
                };
                it.push_block(&bytes, pos, 1024);
            }
            it
        })
        .collect();
    let refs: Vec<&TokenizedItem> = items.iter().collect();
    let labels: Vec<u32> = (0..lens.len() as u32).map(|i| i % 10).collect();
    collate(&refs, &labels, PAD_ID)
        .to_tensors(&Device::Cpu)
        .expect("batch")
}

/// MP3: B items of N blocks of L bytes, no padding.
fn mp3() -> Workload {
    let lens = vec![vec![L; N]; B];
    Workload {
        name: "MP3",
        batch: batch_of(tempest::cff_blocks::Format::Mp3, &lens, 0x1234_5678),
        lens,
    }
}

/// JPEG: JPEG_B digits of JPEG_N MCUs with lengths drawn from `MCU_LENGTHS`.
fn jpeg() -> Workload {
    let total: u32 = MCU_LENGTHS.iter().map(|&(_, c)| c).sum();
    let mut next = xorshift(0x9e37_79b9);
    let mut draw = move || {
        let mut u = next() % total;
        for &(l, c) in &MCU_LENGTHS {
            if u < c {
                return l;
            }
            u -= c;
        }
        MCU_LENGTHS[MCU_LENGTHS.len() - 1].0
    };
    let lens: Vec<Vec<usize>> = (0..JPEG_B)
        .map(|_| (0..JPEG_N).map(|_| draw()).collect())
        .collect();
    Workload {
        name: "JPEG",
        batch: batch_of(tempest::cff_blocks::Format::Jpeg, &lens, 0x0bad_cafe),
        lens,
    }
}

fn matmul_operands() -> (Tensor, Tensor) {
    let a = Tensor::randn(0f32, 1.0, (MATMUL, MATMUL), &Device::Cpu).expect("a");
    let b = Tensor::randn(0f32, 1.0, (MATMUL, MATMUL), &Device::Cpu).expect("b");
    (a, b)
}

fn model(name: &str) -> (Tempest, candle_nn::VarMap) {
    let cfg = Config::preset(name).expect("preset");
    Tempest::init(&cfg, &Device::Cpu, DType::F32).expect("model")
}

/// The training step `train` takes (tempest-train's `fit_loop`: the batch in parts computed
/// at once, gradients, AdamW with clipping at 1), at a fixed learning rate.
struct Stepper {
    opt: AdamW,
}

impl Stepper {
    fn new(varmap: &candle_nn::VarMap) -> Self {
        Stepper {
            opt: AdamW::new(varmap, AdamWConfig::default()).expect("optimiser"),
        }
    }

    fn step(&mut self, model: &Tempest, batch: &Batch) {
        train_step(model, batch, 0, &mut self.opt, 1e-4, 1.0).expect("step");
    }
}

fn benches(c: &mut Criterion) {
    let (a, b) = matmul_operands();
    let mut g = c.benchmark_group("matmul");
    g.throughput(Throughput::Elements((2 * MATMUL * MATMUL * MATMUL) as u64));
    g.bench_function(
        format!("f32 {MATMUL}x{MATMUL}x{MATMUL} (elements = FLOPs)"),
        |bench| bench.iter(|| a.matmul(&b).expect("matmul")),
    );
    g.finish();

    for (name, w) in [("tiny", mp3()), ("small", mp3()), ("tiny", jpeg())] {
        let batch = &w.batch;
        let (m, varmap) = model(name);
        let mut trainer = Stepper::new(&varmap);
        let (b, n, l) = batch.ids.dims3().expect("ids");
        let mut g = c.benchmark_group(format!("{name} {} (B={b}, N={n}, L={l})", w.name));
        g.throughput(Throughput::Elements(b as u64));
        g.sample_size(10);
        g.bench_function("training step (elements = items)", |bench| {
            bench.iter(|| trainer.step(&m, batch))
        });
        g.bench_function("inference (elements = items)", |bench| {
            bench.iter(|| {
                m.forward(batch, false)
                    .expect("forward")
                    .logits
                    .to_vec2::<f32>()
            })
        });
        g.finish();
    }
}

/// Median seconds of `runs` calls of `f` after one warm-up call.
fn median_secs(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// The summary table: items/s, byte tokens/s and GFLOP/s per preset and workload.
pub fn summary() {
    let (a, b) = matmul_operands();
    // On a loaded machine the matmul's rate moves with the load: each row divides by a rate
    // measured just before it.
    let matmul_rate = || {
        let mm = median_secs(5, || {
            a.matmul(&b).expect("matmul");
        });
        2.0 * (MATMUL as f64).powi(3) / mm
    };
    println!("\nsummary (median of 5 runs; FLOPs are matrix products over real bytes per tempest_model::cost;");
    println!("each row's share is of the f32 {MATMUL}³ matmul rate measured just before that row)");
    let (mp3, jpeg) = (mp3(), jpeg());
    let (_, _, jl) = jpeg.batch.ids.dims3().expect("ids");
    println!(
        "JPEG batch: {} items of {JPEG_N} MCUs, {:.1} real bytes per MCU, padded to {jl} ({:.0} % padding)",
        jpeg.items(),
        jpeg.bytes_per_item() / JPEG_N as f64,
        100.0 * (1.0 - jpeg.bytes_per_item() / (JPEG_N * jl) as f64)
    );
    // (workload, preset, fused kernels, fused layers, mixer)
    let variants = [
        (&mp3, "tiny", true, true, MixerKind::Linear),
        (&mp3, "small", true, true, MixerKind::Linear),
        (&mp3, "small", true, true, MixerKind::Attention),
        (&mp3, "small", true, false, MixerKind::Linear),
        (&mp3, "small", false, false, MixerKind::Linear),
        (&jpeg, "tiny", true, true, MixerKind::Linear),
        (&jpeg, "tiny", true, false, MixerKind::Linear),
        (&jpeg, "small", true, true, MixerKind::Linear),
    ];
    // `-- summary WORD`: only the rows whose name contains WORD.
    let only: Vec<String> = std::env::args()
        .skip_while(|a| a != "summary")
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    for (w, name, fused, fused_layers, mixer) in variants {
        let mut cfg = Config::preset(name).expect("preset").with_mixer(mixer);
        cfg.execution.fused_kernels = fused;
        cfg.execution.fused_layers = fused_layers;
        let (m, varmap) = Tempest::init(&cfg, &Device::Cpu, DType::F32).expect("model");
        let mut name = format!("{} {name}", w.name);
        if mixer == MixerKind::Attention {
            name.push_str(" (attention-pooling mixer)");
        }
        if !fused {
            name.push_str(" (tensor-op GELU/softmax/layer norm)");
        } else if !fused_layers {
            name.push_str(" (fused kernels, layers of tensor ops)");
        }
        if !only.iter().all(|o| name.contains(o.as_str())) {
            continue;
        }
        let (train_flops, infer_flops) = w.flops(m.config());
        let mut trainer = Stepper::new(&varmap);
        let mm_train = matmul_rate();
        let train = median_secs(5, || {
            trainer.step(&m, &w.batch);
        });
        let mm_infer = matmul_rate();
        let infer = median_secs(5, || {
            m.forward(&w.batch, false)
                .expect("forward")
                .logits
                .to_vec2::<f32>()
                .expect("logits");
        });
        for (what, secs, f, mm_rate) in [
            ("training step", train, train_flops, mm_train),
            ("inference", infer, infer_flops, mm_infer),
        ] {
            let items = w.items() as f64 / secs;
            let rate = f * items;
            println!(
                "{name} {what}: {:.1} ms/batch, {:.1} items/s, {:.0} byte tokens/s, {:.2} GFLOP/s = {:.1} % of the matmul ({:.1} GFLOP/s)",
                secs * 1e3,
                items,
                items * w.bytes_per_item(),
                rate / 1e9,
                100.0 * rate / mm_rate,
                mm_rate / 1e9
            );
        }
    }
}

criterion_group! {
    name = model_step;
    config = Criterion::default().measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    targets = benches
}

/// The start of every benchmark id of this group (for `bench_main`'s choice of groups).
pub const IDS: &[&str] = &["matmul/", "tiny ", "small "];

/// The modes that replace the criterion run: `-- summary [WORD]` prints only the summary table
/// (rows whose name contains WORD); `-- profile` runs 5 training steps of `small` on the MP3
/// batch, `-- profile-jpeg` 20 of `tiny` on the JPEG batch, for `perf record`. Returns whether
/// one ran.
pub fn run_mode() -> bool {
    if std::env::args().any(|a| a == "summary") {
        summary();
        return true;
    }
    let jpeg_profile = std::env::args().any(|a| a == "profile-jpeg");
    if jpeg_profile || std::env::args().any(|a| a == "profile") {
        let (batch, preset, steps) = if jpeg_profile {
            (jpeg().batch, "tiny", 20)
        } else {
            (mp3().batch, "small", 5)
        };
        let (m, varmap) = model(preset);
        let mut trainer = Stepper::new(&varmap);
        for _ in 0..steps {
            let s = Instant::now();
            trainer.step(&m, &batch);
            println!("step: {:.1} ms", s.elapsed().as_secs_f64() * 1e3);
        }
        return true;
    }
    false
}
