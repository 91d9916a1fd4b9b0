//! The loader over real files on disk: order, determinism across thread counts, and skipped
//! files counted by reason.

#![allow(clippy::unwrap_used)] // test fixtures: a failure to write a temp file should fail loudly

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tempest_tokenize::{
    BucketSampler, Crop, Entry, HostBatch, ItemShape, Loader, LoaderConfig, TokenizerConfig,
};

/// An MPEG-2 Layer III stream (16 kHz, 32 kbps, mono: 144-byte frames) whose payload bytes
/// say which file and frame they belong to.
fn mp3(id: u8, frames: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(frames * 144);
    for f in 0..frames {
        out.extend_from_slice(&[0xFF, 0xF3, 0x48, 0xC4]);
        out.extend((0..140).map(|p| id.wrapping_mul(17).wrapping_add((f * 3 + p) as u8)));
    }
    out
}

struct Dataset {
    dir: PathBuf,
    entries: Vec<Entry>,
    good: Vec<(usize, Vec<u8>)>,
}

fn dataset(name: &str) -> Dataset {
    let dir = std::env::temp_dir().join(format!("tempest-loader-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut entries = Vec::new();
    let mut good = Vec::new();
    for id in 0..24u8 {
        let data = mp3(id, 3 + (id as usize * 7) % 20);
        let path = dir.join(format!("{id}.mp3"));
        std::fs::write(&path, &data).unwrap();
        good.push((entries.len(), data));
        entries.push(Entry {
            path,
            label: u32::from(id % 5),
            item: u64::from(id),
        });
    }
    let bad: [(&str, &[u8]); 3] = [
        ("random.bin", b"this is not audio at all"),
        ("empty.mp3", b""),
        // A JPEG whose SOF claims 65535x65535 pixels.
        (
            "huge.jpg",
            &[
                0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x0B, 0x08, 0xFF, 0xFF, 0xFF, 0xFF, 0x01, 0x01, 0x11,
                0x00, 0xFF, 0xD9,
            ],
        ),
    ];
    for (name, bytes) in bad {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        entries.push(Entry {
            path,
            label: 0,
            item: 100,
        });
    }
    entries.push(Entry {
        path: dir.join("missing.mp3"),
        label: 0,
        item: 101,
    });
    Dataset { dir, entries, good }
}

fn run(ds: &Dataset, workers: usize, seed: u64) -> (Vec<(usize, Vec<usize>, HostBatch)>, Loader) {
    let shapes = vec![ItemShape::default(); ds.entries.len()];
    let plan = BucketSampler::new(5, seed).batches(&shapes, 0);
    let config = TokenizerConfig::default()
        .with_max_blocks(8)
        .with_crop(Crop::Random);
    let mut loader = Loader::new(
        Arc::new(ds.entries.clone()),
        plan,
        config,
        &LoaderConfig::default()
            .with_workers(workers)
            .with_queue_depth(2)
            .with_seed(seed),
    );
    let mut out = Vec::new();
    for b in loader.by_ref() {
        if let Some(batch) = b.batch {
            out.push((b.seq, b.entries, batch));
        }
    }
    (out, loader)
}

fn cleanup(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn loader_keeps_order_and_content_and_counts_skips() {
    let ds = dataset("order");
    let (batches, loader) = run(&ds, 2, 7);
    // Batches arrive in plan order.
    let seqs: Vec<usize> = batches.iter().map(|b| b.0).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    // Every good file once, with its own bytes (a random crop of whole frames).
    let mut seen: Vec<usize> = batches.iter().flat_map(|b| b.1.clone()).collect();
    seen.sort_unstable();
    assert_eq!(seen, ds.good.iter().map(|g| g.0).collect::<Vec<_>>());
    for (_, entries, batch) in &batches {
        for (row, &e) in entries.iter().enumerate() {
            let file = &ds.good[e].1;
            let n = batch.blocks;
            for k in 0..n {
                if batch.block_mask[row * n + k] == 0 {
                    continue;
                }
                let frame = batch.block_index[row * n + k] as usize;
                let at = (row * n + k) * batch.block_bytes;
                let ids: Vec<u8> = batch.ids[at..at + 144].iter().map(|&v| v as u8).collect();
                assert_eq!(
                    ids,
                    file[frame * 144..frame * 144 + 144],
                    "entry {e} frame {frame}"
                );
            }
            assert_eq!(batch.labels[row], ds.entries[e].label);
        }
    }
    let stats = loader.stats();
    assert_eq!(stats.files_used, 24);
    assert_eq!(stats.files_skipped(), 4, "{stats:?}");
    assert_eq!(stats.skipped.get("io"), Some(&1), "{stats:?}");
    assert_eq!(stats.skipped.get("limit"), Some(&1), "{stats:?}");
    assert_eq!(stats.skipped.get("malformed"), Some(&2), "{stats:?}");
    cleanup(&ds.dir);
}

#[test]
fn same_seed_same_batches_whatever_the_threads() {
    let ds = dataset("determinism");
    let (a, _) = run(&ds, 0, 11);
    let (b, _) = run(&ds, 3, 11);
    let (c, _) = run(&ds, 2, 12);
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.1, y.1);
        assert_eq!(x.2, y.2);
    }
    let ids =
        |v: &[(usize, Vec<usize>, HostBatch)]| v.iter().map(|b| b.1.clone()).collect::<Vec<_>>();
    assert_ne!(ids(&a), ids(&c), "another seed gives other batches");
    cleanup(&ds.dir);
}
