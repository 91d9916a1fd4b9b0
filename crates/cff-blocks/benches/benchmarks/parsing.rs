//! Input throughput of the block readers against what a user has today.
//!
//! One criterion group per input (the workspace's `benches/data/`, made by
//! `benches/data/make.sh`), each with
//! `Throughput::Bytes` of the input, so criterion reports MB/s:
//!
//! - `cff-blocks`: `cff_blocks::Reader` over the whole input, every block visited (for Ogg
//!   also `cff-blocks-no-crc`, page CRC verification off); for Ogg also
//!   `cff-blocks-for_each_block` (and `-no-crc`): `OpusReader::for_each_block`, the API for
//!   scanning whole files, which gives a compact record per block instead of a `Block`;
//! - the alternatives for the format: minimp3 full decode and symphonia's MP3 `next_packet`
//!   loop; the `ogg` crate's `PacketReader` (CRC on and off) and symphonia's Ogg
//!   `next_packet` loop; jpeg-decoder and zune-jpeg full decodes;
//! - `memchr-scan`: a `memchr::memmem` search for a needle that does not occur, which reads
//!   every byte once: the memory ceiling.
//!
//! Before anything is timed, each method runs once and is checked against counts that
//! independent tools gave (see `benches/data/README.md`): a bench that silently measures an
//! error path is worthless. Run through `scripts/bench.sh` (`cargo bench -p cff-blocks`, the
//! thread count fixed); `scripts/criterion_table.py` turns the results into a table.

use std::hint::black_box;
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cff_blocks::opus::OpusReader;
use cff_blocks::{BlockKind, Options, Reader};
use criterion::{criterion_group, Criterion, SamplingMode, Throughput};
use symphonia::core::formats::{FormatOptions, FormatReader};
use symphonia::core::io::{MediaSourceStream, MediaSourceStreamOptions};
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;

/// A needle that occurs in none of the inputs (checked before timing).
const NEEDLE: &[u8] = b"tempest-rs: not in any input";

/// An input of `benches/data/` at the workspace's root, which the facade's benches share.
fn data_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../benches/data")
        .join(name)
}

fn load(name: &str) -> Arc<[u8]> {
    let path = data_path(name);
    let data = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run benches/data/make.sh)", path.display()));
    Arc::from(data)
}

/// Splits the container of `mnist1000.jpgs`: records of [u32 little-endian length][bytes].
fn split_container(data: &[u8]) -> Vec<&[u8]> {
    let mut files = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let (len, tail) = rest.split_at(4);
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        let (file, tail) = tail.split_at(len);
        files.push(file);
        rest = tail;
    }
    files
}

// ---------------------------------------------------------------------------------------------
// The methods. Each returns a small summary that the checks compare and the timed loop
// black-boxes, so that no work can be optimised away.

/// What `cff-blocks` found: blocks of the media kind, all blocks, and their total bytes.
#[derive(Debug, Default, Clone, Copy)]
struct CffCount {
    media: usize,
    media_bytes: usize,
    blocks: usize,
    bytes: usize,
}

fn cff_blocks(data: &[u8], options: &Options) -> CffCount {
    let mut count = CffCount::default();
    let reader = Reader::new(data, options).expect("cff-blocks: open");
    for block in reader {
        let block = block.expect("cff-blocks: read");
        count.blocks += 1;
        count.bytes += block.data.len();
        if matches!(block.kind, BlockKind::Audio | BlockKind::Mcu) {
            count.media += 1;
            count.media_bytes += block.data.len();
        }
    }
    count
}

/// The same counts through `OpusReader::for_each_block`, the API a user would call to scan
/// whole Ogg Opus files: one loop per page, a compact record per block instead of a `Block`.
fn cff_opus_for_each(data: &[u8], options: &Options) -> CffCount {
    let mut count = CffCount::default();
    let mut reader = OpusReader::new(data, options).expect("cff-blocks: open");
    reader
        .for_each_block(|block| {
            count.blocks += 1;
            count.bytes += block.data.len();
            if matches!(block.kind, BlockKind::Audio | BlockKind::Mcu) {
                count.media += 1;
                count.media_bytes += block.data.len();
            }
        })
        .expect("cff-blocks: read");
    count
}

/// Frames decoded and samples produced (all channels).
fn minimp3_decode(data: &[u8]) -> (usize, usize) {
    let mut decoder = minimp3::Decoder::new(data);
    let (mut frames, mut samples) = (0, 0);
    loop {
        match decoder.next_frame() {
            Ok(frame) => {
                frames += 1;
                samples += frame.data.len();
            }
            Err(minimp3::Error::Eof) => break,
            Err(e) => panic!("minimp3: {e:?}"),
        }
    }
    (frames, samples)
}

/// Packets read and their total bytes, by a symphonia format reader.
fn symphonia_packets<R: FormatReader>(data: &Arc<[u8]>) -> (usize, usize) {
    let source = MediaSourceStream::new(
        Box::new(Cursor::new(Arc::clone(data))),
        MediaSourceStreamOptions::default(),
    );
    let mut reader = R::try_new(source, &FormatOptions::default()).expect("symphonia: open");
    let (mut packets, mut bytes) = (0, 0);
    loop {
        match reader.next_packet() {
            Ok(packet) => {
                packets += 1;
                bytes += packet.data.len();
            }
            Err(symphonia::core::errors::Error::IoError(e))
                if e.kind() == std::io::ErrorKind::UnexpectedEof =>
            {
                break
            }
            Err(e) => panic!("symphonia: {e}"),
        }
    }
    (packets, bytes)
}

/// Packets read and their total bytes, by the `ogg` crate.
fn ogg_packets(data: &[u8], verify_crc: bool) -> (usize, usize) {
    let mut parse = ogg::PageParsingOptions::default();
    parse.verify_checksum = verify_crc;
    let mut reader = ogg::PacketReader::new_with_page_parse_opts(Cursor::new(data), parse);
    let (mut packets, mut bytes) = (0, 0);
    while let Some(packet) = reader.read_packet().expect("ogg: read") {
        packets += 1;
        bytes += packet.data.len();
    }
    (packets, bytes)
}

/// Decoded bytes (width · height · components).
fn jpeg_decoder_decode(data: &[u8]) -> usize {
    let mut decoder = jpeg_decoder::Decoder::new(data);
    decoder.decode().expect("jpeg-decoder: decode").len()
}

/// Decoded bytes, in the image's own colour space (grayscale stays one channel, as with
/// jpeg-decoder; zune-jpeg's default would expand it to RGB).
fn zune_decode(data: &[u8], gray: bool) -> usize {
    let mut options = DecoderOptions::default();
    if gray {
        options = options.jpeg_set_out_colorspace(ColorSpace::Luma);
    }
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(data, options);
    decoder.decode().expect("zune-jpeg: decode").len()
}

fn memchr_scan(data: &[u8]) -> Option<usize> {
    memchr::memmem::find(data, NEEDLE)
}

/// Checks the blocks `cff-blocks` found against the independent tools' counts.
/// `expected_bytes` is `None` where no independent tool gives the blocks' bytes (JPEG MCUs).
fn check_cff(name: &str, count: CffCount, expected_media: usize, expected_bytes: Option<usize>) {
    assert_eq!(
        count.media, expected_media,
        "{name}: cff-blocks media blocks"
    );
    if let Some(bytes) = expected_bytes {
        assert_eq!(
            count.media_bytes, bytes,
            "{name}: cff-blocks media block bytes"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The groups.

struct Mp3Input {
    group: &'static str,
    file: &'static str,
    /// Audio frames and their total bytes, as `ffprobe -show_packets` lists them (the Info
    /// frame is not a packet there).
    frames: usize,
    frame_bytes: usize,
    channels: usize,
    rate: usize,
    samples_per_frame: usize,
}

fn bench_mp3(c: &mut Criterion) {
    let inputs = [
        Mp3Input {
            group: "mp3-low-16k-mono-abr20",
            file: "speech-music-16k-mono-abr20.mp3",
            frames: 1669,
            frame_bytes: 148_572,
            channels: 1,
            rate: 16000,
            samples_per_frame: 576,
        },
        Mp3Input {
            group: "mp3-high-44k-stereo-128k",
            file: "speech-music-44k-stereo-128k.mp3",
            frames: 2298,
            frame_bytes: 960_470,
            channels: 2,
            rate: 44100,
            samples_per_frame: 1152,
        },
    ];
    for input in &inputs {
        let data = load(input.file);
        let options = Options::default();

        // Checks, outside the timed loops: every method sees the whole file. minimp3 decodes
        // the Info frame as one more (silent) frame; symphonia skips it, as ffprobe does.
        check_cff(
            input.group,
            cff_blocks(&data, &options),
            input.frames,
            Some(input.frame_bytes),
        );
        let (frames, samples) = minimp3_decode(&data);
        let seconds = samples as f64 / (input.channels * input.rate) as f64;
        eprintln!(
            "{}: minimp3 decoded {frames} frames ({seconds:.3} s), ffprobe lists {}",
            input.group, input.frames
        );
        assert!(
            (input.frames..=input.frames + 1).contains(&frames),
            "{}: minimp3 frames",
            input.group
        );
        assert_eq!(
            samples,
            frames * input.samples_per_frame * input.channels,
            "{}: minimp3 samples",
            input.group
        );
        assert!(
            (seconds - 60.0).abs() < 0.2,
            "{}: minimp3 duration",
            input.group
        );
        let (packets, bytes) = symphonia_packets::<symphonia::default::formats::MpaReader>(&data);
        eprintln!(
            "{}: symphonia read {packets} packets ({bytes} bytes)",
            input.group
        );
        assert_eq!(packets, input.frames, "{}: symphonia packets", input.group);
        assert_eq!(bytes, input.frame_bytes, "{}: symphonia bytes", input.group);
        assert_eq!(memchr_scan(&data), None);

        let mut group = c.benchmark_group(input.group);
        group
            .throughput(Throughput::Bytes(data.len() as u64))
            .sampling_mode(SamplingMode::Flat);
        group.bench_function("cff-blocks", |b| {
            b.iter(|| cff_blocks(black_box(&data), &options).bytes)
        });
        group.bench_function("minimp3-decode", |b| {
            b.iter(|| minimp3_decode(black_box(&data)))
        });
        group.bench_function("symphonia-next_packet", |b| {
            b.iter(|| symphonia_packets::<symphonia::default::formats::MpaReader>(black_box(&data)))
        });
        group.bench_function("memchr-scan", |b| b.iter(|| memchr_scan(black_box(&data))));
        group.finish();
    }
}

fn bench_opus(c: &mut Criterion) {
    // (group, file, audio packets and their total bytes as `ffprobe -show_packets` lists
    // them: OpusHead and OpusTags are not packets there)
    let inputs = [
        (
            "opus-low-mono-24k",
            "speech-music-mono-24k.opus",
            3001,
            183_064,
        ),
        (
            "opus-high-stereo-128k",
            "speech-music-stereo-128k.opus",
            3001,
            963_359,
        ),
    ];
    for (name, file, audio_packets, audio_bytes) in inputs {
        let data = load(file);
        let crc_on = Options::default();
        let crc_off = Options::default().with_verify_crc(false);

        check_cff(
            name,
            cff_blocks(&data, &crc_on),
            audio_packets,
            Some(audio_bytes),
        );
        check_cff(
            name,
            cff_blocks(&data, &crc_off),
            audio_packets,
            Some(audio_bytes),
        );
        for options in [&crc_on, &crc_off] {
            check_cff(
                name,
                cff_opus_for_each(&data, options),
                audio_packets,
                Some(audio_bytes),
            );
        }
        for verify in [true, false] {
            let (packets, bytes) = ogg_packets(&data, verify);
            assert_eq!(
                packets,
                audio_packets + 2,
                "{name}: ogg packets (+ head, tags)"
            );
            assert!(bytes > audio_bytes, "{name}: ogg read {bytes} bytes");
        }
        let (packets, bytes) = symphonia_packets::<symphonia::default::formats::OggReader>(&data);
        eprintln!("{name}: symphonia read {packets} packets ({bytes} bytes)");
        assert_eq!(packets, audio_packets, "{name}: symphonia packets");
        assert_eq!(bytes, audio_bytes, "{name}: symphonia bytes");
        assert_eq!(memchr_scan(&data), None);

        let mut group = c.benchmark_group(name);
        group
            .throughput(Throughput::Bytes(data.len() as u64))
            .sampling_mode(SamplingMode::Flat);
        group.bench_function("cff-blocks", |b| {
            b.iter(|| cff_blocks(black_box(&data), &crc_on).bytes)
        });
        group.bench_function("cff-blocks-no-crc", |b| {
            b.iter(|| cff_blocks(black_box(&data), &crc_off).bytes)
        });
        group.bench_function("cff-blocks-for_each_block", |b| {
            b.iter(|| cff_opus_for_each(black_box(&data), &crc_on).bytes)
        });
        group.bench_function("cff-blocks-for_each_block-no-crc", |b| {
            b.iter(|| cff_opus_for_each(black_box(&data), &crc_off).bytes)
        });
        group.bench_function("ogg-PacketReader", |b| {
            b.iter(|| ogg_packets(black_box(&data), true))
        });
        group.bench_function("ogg-PacketReader-no-crc", |b| {
            b.iter(|| ogg_packets(black_box(&data), false))
        });
        group.bench_function("symphonia-next_packet", |b| {
            b.iter(|| symphonia_packets::<symphonia::default::formats::OggReader>(black_box(&data)))
        });
        group.bench_function("memchr-scan", |b| b.iter(|| memchr_scan(black_box(&data))));
        group.finish();
    }
}

fn bench_jpeg(c: &mut Criterion) {
    // One 1920×1080 colour image, 4:2:0: MCUs of 16×16 pixels, 120 × 68 of them.
    let photo = load("landscape-1920x1080-q90.jpg");
    // 1,000 28×28 grayscale images: MCUs of 8×8 pixels, 4 × 4 per image.
    let container = load("mnist1000.jpgs");
    let digits = split_container(&container);
    assert_eq!(digits.len(), 1000, "mnist1000.jpgs holds 1,000 images");
    let digit_bytes: usize = digits.iter().map(|d| d.len()).sum();
    let options = Options::default();

    check_cff(
        "jpeg-1080p-q90",
        cff_blocks(&photo, &options),
        120 * 68,
        None,
    );
    assert_eq!(jpeg_decoder_decode(&photo), 1920 * 1080 * 3);
    assert_eq!(zune_decode(&photo, false), 1920 * 1080 * 3);
    assert_eq!(memchr_scan(&photo), None);

    let total = |f: &dyn Fn(&[u8]) -> usize| digits.iter().map(|d| f(d)).sum::<usize>();
    let mut mnist = CffCount::default();
    for d in &digits {
        let c = cff_blocks(d, &options);
        mnist.media += c.media;
        mnist.media_bytes += c.media_bytes;
        mnist.blocks += c.blocks;
        mnist.bytes += c.bytes;
    }
    check_cff("jpeg-mnist-1000x28x28", mnist, 1000 * 16, None);
    assert_eq!(total(&jpeg_decoder_decode), 1000 * 28 * 28);
    assert_eq!(total(&|d| zune_decode(d, true)), 1000 * 28 * 28);
    assert!(digits.iter().all(|d| memchr_scan(d).is_none()));

    let mut group = c.benchmark_group("jpeg-1080p-q90");
    group
        .throughput(Throughput::Bytes(photo.len() as u64))
        .sampling_mode(SamplingMode::Flat);
    group.bench_function("cff-blocks", |b| {
        b.iter(|| cff_blocks(black_box(&photo), &options).bytes)
    });
    group.bench_function("jpeg-decoder", |b| {
        b.iter(|| jpeg_decoder_decode(black_box(&photo)))
    });
    group.bench_function("zune-jpeg", |b| {
        b.iter(|| zune_decode(black_box(&photo), false))
    });
    group.bench_function("memchr-scan", |b| b.iter(|| memchr_scan(black_box(&photo))));
    group.finish();

    // Every iteration processes all 1,000 images; throughput counts their JPEG bytes.
    let mut group = c.benchmark_group("jpeg-mnist-1000x28x28");
    group
        .throughput(Throughput::Bytes(digit_bytes as u64))
        .sampling_mode(SamplingMode::Flat);
    group.bench_function("cff-blocks", |b| {
        b.iter(|| total(&|d| cff_blocks(black_box(d), &options).bytes))
    });
    group.bench_function("jpeg-decoder", |b| {
        b.iter(|| total(&|d| jpeg_decoder_decode(black_box(d))))
    });
    group.bench_function("zune-jpeg", |b| {
        b.iter(|| total(&|d| zune_decode(black_box(d), true)))
    });
    group.bench_function("memchr-scan", |b| {
        b.iter(|| {
            digits
                .iter()
                .filter(|d| memchr_scan(black_box(d)).is_some())
                .count()
        })
    });
    group.finish();
}

criterion_group! {
    name = parsing;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    targets = bench_mp3, bench_opus, bench_jpeg
}
