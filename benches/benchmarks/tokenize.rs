//! The data pipeline's throughput: compressed MB/s from MP3 files on disk to padded batches.
//!
//! The 60 s bench inputs (`benches/data/`) are cut at frame boundaries into 5 s clips (the
//! length of an ESC-50 clip), written to a temporary folder, and read back by
//! `tempest_tokenize::Loader` in batches of 32: file read, block finding, crop, collation to
//! `[B, N, L]` ids and masks. `workers = 0` runs everything on the calling thread (one core);
//! 1 and 2 run worker threads. Throughput counts the compressed bytes of the files.
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo bench --bench bench_main -- tokenize/
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cff_blocks::{BlockKind, Format, Options, Reader};
use criterion::{criterion_group, Criterion, SamplingMode, Throughput};
use tempest_tokenize::{BucketSampler, Entry, ItemShape, Loader, LoaderConfig, TokenizerConfig};

/// Cuts an MP3 into clips of `frames` audio frames (whole frames, metadata frames left out)
/// and writes `copies` copies of each into `dir`.
fn write_clips(src: &Path, dir: &Path, frames: usize, copies: usize) -> (Vec<Entry>, u64) {
    let data = std::fs::read(src).expect("run benches/data/make.sh");
    let mut reader = Reader::new(&data, &Options::default()).expect("an MP3");
    let spans: Vec<(usize, usize)> = reader
        .by_ref()
        .map(|b| b.expect("a valid bench input"))
        .filter(|b| b.kind == BlockKind::Audio)
        .map(|b| (b.offset as usize, b.len()))
        .collect();
    let mut entries = Vec::new();
    let mut total = 0;
    for (c, clip) in spans.chunks(frames).enumerate() {
        let (start, _) = clip[0];
        let (last, len) = clip[clip.len() - 1];
        for k in 0..copies {
            let path = dir.join(format!("clip{c:03}-{k}.mp3"));
            std::fs::write(&path, &data[start..last + len]).expect("temp dir writable");
            total += (last + len - start) as u64;
            entries.push(Entry {
                path,
                label: (c % 10) as u32,
                item: entries.len() as u64,
            });
        }
    }
    (entries, total)
}

fn bench_pipeline(c: &mut Criterion) {
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/data");
    let tmp = std::env::temp_dir().join(format!("tempest-bench-tokenize-{}", std::process::id()));
    let inputs = [
        (
            "mp3-16k-mono-abr20",
            "speech-music-16k-mono-abr20.mp3",
            139,
            8,
            320,
        ),
        (
            "mp3-44k-stereo-128k",
            "speech-music-44k-stereo-128k.mp3",
            191,
            2,
            1024,
        ),
    ];
    for (name, file, frames, copies, l) in inputs {
        let dir = tmp.join(name);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let (entries, bytes) = write_clips(&data.join(file), &dir, frames, copies);
        let entries = Arc::new(entries);
        let config = TokenizerConfig::for_format(Format::Mp3).with_max_block_bytes(l);
        let plan = BucketSampler::new(32, 0).batches(&vec![ItemShape::default(); entries.len()], 0);

        // Checked once before timing: every file becomes an item, nothing is truncated.
        let mut check = Loader::new(
            entries.clone(),
            plan.clone(),
            config.clone(),
            &LoaderConfig::default(),
        );
        let ids: usize = check
            .by_ref()
            .filter_map(|b| b.batch)
            .map(|b| b.real_ids())
            .sum();
        let stats = check.stats().clone();
        assert_eq!(stats.files_used as usize, entries.len(), "{stats:?}");
        assert_eq!(stats.truncated_blocks, 0, "{stats:?}");
        assert_eq!(stats.input_bytes, bytes);
        assert!(
            ids as u64 <= bytes && ids as u64 > bytes * 9 / 10,
            "{ids} ids of {bytes} bytes"
        );

        let mut group = c.benchmark_group(format!("tokenize/{name}"));
        group
            .throughput(Throughput::Bytes(bytes))
            .sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(4));
        for workers in [0usize, 1, 2] {
            group.bench_function(format!("workers-{workers}"), |b| {
                b.iter(|| {
                    let loader = Loader::new(
                        entries.clone(),
                        plan.clone(),
                        config.clone(),
                        &LoaderConfig::default()
                            .with_workers(workers)
                            .with_queue_depth(4),
                    );
                    let n: usize = loader.filter_map(|b| b.batch).map(|b| b.ids.len()).sum();
                    std::hint::black_box(n)
                })
            });
        }
        group.finish();
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

/// The start of every benchmark id of this group (for `bench_main`'s choice of groups).
pub const IDS: &[&str] = &["tokenize/"];

criterion_group!(tokenize, bench_pipeline);
