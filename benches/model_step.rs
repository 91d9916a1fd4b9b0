//! Training-step and inference throughput of the `tiny` and `small` presets on the CPU, beside
//! the GFLOP/s of a large candle matmul measured in the same run.
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo bench --bench model_step
//! ```
//!
//! Items are 1 s of 16 kHz MP3 at 32 kbps: N = 28 blocks of L = 144 bytes, 8 per batch.
//! criterion reports items/s; a summary table at the end gives items/s, byte tokens/s and the
//! GFLOP/s the model's matrix products imply (`tempest_model::cost`), as a share of the matmul's.

use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, Criterion, Throughput};
use tempest::tempest_model::{cost, Config, MixerKind, Tempest, TrainConfig, Trainer};
use tempest::tempest_tokenize::{collate, Batch, BlockPosition, TokenizedItem, PAD_ID};

const B: usize = 8;
const N: usize = 28;
const L: usize = 144;
const MATMUL: usize = 1024;

fn batch() -> Batch {
    let mut state = 0x1234_5678_u32;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    };
    let items: Vec<TokenizedItem> = (0..B)
        .map(|_| {
            let mut it = TokenizedItem::new(cff_blocks_format(), 0);
            for k in 0..N {
                let bytes: Vec<u8> = (0..L).map(|_| next() as u8).collect();
                let pos = BlockPosition {
                    index: k as u32,
                    time: k as f32 * 0.036,
                    duration: 0.036,
                    row: 0,
                    col: 0,
                };
                it.push_block(&bytes, pos, L);
            }
            it
        })
        .collect();
    let refs: Vec<&TokenizedItem> = items.iter().collect();
    let labels: Vec<u32> = (0..B as u32).collect();
    collate(&refs, &labels, PAD_ID)
        .to_tensors(&Device::Cpu)
        .expect("batch")
}

fn cff_blocks_format() -> tempest::cff_blocks::Format {
    tempest::cff_blocks::Format::Mp3
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

fn benches(c: &mut Criterion) {
    let (a, b) = matmul_operands();
    let mut g = c.benchmark_group("matmul");
    g.throughput(Throughput::Elements((2 * MATMUL * MATMUL * MATMUL) as u64));
    g.bench_function(
        format!("f32 {MATMUL}x{MATMUL}x{MATMUL} (elements = FLOPs)"),
        |bench| bench.iter(|| a.matmul(&b).expect("matmul")),
    );
    g.finish();

    let batch = batch();
    for name in ["tiny", "small"] {
        let (m, varmap) = model(name);
        let mut trainer =
            Trainer::new(&varmap, TrainConfig::new(1e-4, 1_000_000)).expect("trainer");
        let mut g = c.benchmark_group(format!("{name} (B={B}, N={N}, L={L})"));
        g.throughput(Throughput::Elements(B as u64));
        g.sample_size(10);
        g.bench_function("training step (elements = items)", |bench| {
            bench.iter(|| trainer.step(&m, &batch).expect("step"))
        });
        g.bench_function("inference (elements = items)", |bench| {
            bench.iter(|| {
                m.forward(&batch, false)
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

fn summary() {
    let (a, b) = matmul_operands();
    let mm = median_secs(10, || {
        a.matmul(&b).expect("matmul");
    });
    let mm_rate = 2.0 * (MATMUL as f64).powi(3) / mm;
    println!("\nsummary (median of 5 runs; FLOPs are matrix products per tempest_model::cost)");
    println!("matmul f32 {MATMUL}³: {:.1} GFLOP/s", mm_rate / 1e9);
    let batch = batch();
    // (preset, fused kernels, fused layers, mixer)
    let variants = [
        ("tiny", true, true, MixerKind::Linear),
        ("small", true, true, MixerKind::Linear),
        ("small", true, true, MixerKind::Attention),
        ("small", true, false, MixerKind::Linear),
        ("small", false, false, MixerKind::Linear),
    ];
    for (name, fused, fused_layers, mixer) in variants {
        let mut cfg = Config::preset(name).expect("preset").with_mixer(mixer);
        cfg.fused_kernels = fused;
        cfg.fused_layers = fused_layers;
        let (m, varmap) = Tempest::init(&cfg, &Device::Cpu, DType::F32).expect("model");
        let mut name = name.to_string();
        if mixer == MixerKind::Attention {
            name.push_str(" (attention-pooling mixer)");
        }
        if !fused {
            name.push_str(" (tensor-op GELU/softmax/layer norm)");
        } else if !fused_layers {
            name.push_str(" (fused kernels, layers of tensor ops)");
        }
        let flops = cost::flops(m.config(), N, L);
        let mut trainer =
            Trainer::new(&varmap, TrainConfig::new(1e-4, 1_000_000)).expect("trainer");
        let train = median_secs(5, || {
            trainer.step(&m, &batch).expect("step");
        });
        let infer = median_secs(5, || {
            m.forward(&batch, false)
                .expect("forward")
                .logits
                .to_vec2::<f32>()
                .expect("logits");
        });
        for (what, secs, f) in [
            ("training step", train, flops.training()),
            ("inference", infer, flops.inference()),
        ] {
            let items = B as f64 / secs;
            let rate = f * items;
            println!(
                "{name} {what}: {:.1} ms/batch, {:.1} items/s, {:.0} byte tokens/s, {:.2} GFLOP/s = {:.1} % of the matmul",
                secs * 1e3,
                items,
                items * (N * L) as f64,
                rate / 1e9,
                100.0 * rate / mm_rate
            );
        }
    }
}

criterion_group! {
    name = model_step;
    config = Criterion::default().measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    targets = benches
}

fn main() {
    // `cargo bench --bench model_step -- summary` prints only the summary table.
    if std::env::args().any(|a| a == "summary") {
        summary();
        return;
    }
    // `cargo bench --bench model_step -- profile` runs 5 training steps of `small` only, for
    // `perf record`.
    if std::env::args().any(|a| a == "profile") {
        let batch = batch();
        let (m, varmap) = model("small");
        let mut trainer =
            Trainer::new(&varmap, TrainConfig::new(1e-4, 1_000_000)).expect("trainer");
        for _ in 0..5 {
            let s = Instant::now();
            trainer.step(&m, &batch).expect("step");
            println!("step: {:.1} ms", s.elapsed().as_secs_f64() * 1e3);
        }
        return;
    }
    model_step();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
