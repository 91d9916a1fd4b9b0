//! `prepare` on tiny synthetic datasets in a temporary folder: every layout, a corrupt input
//! that is reported and counted, and a rerun that skips everything.
#![allow(clippy::unwrap_used)] // test helpers: a failure to write a temp file or fixture should fail loudly

use std::fs;
use std::path::{Path, PathBuf};

use tempest_data::{parse_variants, prepare, Layout, PrepareConfig, MANIFEST_HEADER};

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("tempest-data-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn write(path: &Path, bytes: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

fn png(width: u32, height: u32, color: png::ColorType, depth: png::BitDepth) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, width, height);
    enc.set_color(color);
    enc.set_depth(depth);
    let mut w = enc.write_header().unwrap();
    let samples = match color {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        _ => 4,
    } * if depth == png::BitDepth::Sixteen {
        2
    } else {
        1
    };
    let data: Vec<u8> = (0..(width * height) as usize * samples)
        .map(|i| (i * 13 % 251) as u8)
        .collect();
    w.write_image_data(&data).unwrap();
    drop(w);
    out
}

fn manifest(dir: &Path) -> String {
    fs::read_to_string(dir.join("manifest.csv")).unwrap()
}

/// Splits manifest rows into fields (the test data has no quoted fields).
fn rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .skip(1)
        .map(|l| l.split(',').map(String::from).collect())
        .collect()
}

#[test]
fn folder_of_images_to_jpeg_with_a_corrupt_file_and_a_rerun() {
    let tmp = TempDir::new("folder");
    let input = tmp.0.join("in");
    let output = tmp.0.join("out");
    write(
        &input.join("cat/gray.png"),
        &png(28, 28, png::ColorType::Grayscale, png::BitDepth::Eight),
    );
    write(
        &input.join("cat/rgba16.png"),
        &png(20, 9, png::ColorType::Rgba, png::BitDepth::Sixteen),
    );
    write(
        &input.join("dog/rgb.png"),
        &png(17, 33, png::ColorType::Rgb, png::BitDepth::Eight),
    );
    write(
        &input.join("dog/ga.png"),
        &png(8, 8, png::ColorType::GrayscaleAlpha, png::BitDepth::Eight),
    );
    write(
        &input.join("dog/broken.png"),
        b"\x89PNG\r\n\x1a\nnot really",
    );
    write(&input.join("dog/notes.txt"), b"ignored");
    let variants = parse_variants("jpeg:75,jpeg:30").unwrap();
    let config = PrepareConfig::new(Layout::Folder, &input, &output, variants).with_progress(false);

    let first = prepare(&config).unwrap();
    assert_eq!(first.items, 5);
    assert_eq!(first.written, 8);
    assert_eq!(first.skipped, 0);
    assert_eq!(first.failures.len(), 1);
    assert!(
        first.failures[0].input.ends_with("broken.png"),
        "{}",
        first.failures[0]
    );
    assert!(
        first.failures[0].reason.contains("png"),
        "{}",
        first.failures[0]
    );

    let text = manifest(&output);
    assert_eq!(text.lines().next(), Some(MANIFEST_HEADER));
    let table = rows(&text);
    assert_eq!(table.len(), 8);
    let want_dims = [
        ("cat/gray", (28, 28)),
        ("cat/rgba16", (20, 9)),
        ("dog/ga", (8, 8)),
        ("dog/rgb", (17, 33)),
    ];
    for row in &table {
        let [id, label, split, variant, path, bytes, duration] = &row[..] else {
            panic!("{row:?}")
        };
        assert_eq!(split, "all");
        assert!(id.starts_with(&format!("{label}/")));
        assert!(variant == "jpeg:75" || variant == "jpeg:30");
        assert_eq!(duration, "", "images have no duration");
        let data = fs::read(output.join(path)).unwrap();
        assert_eq!(data.len().to_string(), *bytes);
        let mut dec = jpeg_decoder::Decoder::new(&data[..]);
        dec.decode().unwrap();
        let info = dec.info().unwrap();
        let (_, (w, h)) = want_dims.iter().find(|(i, _)| i == id).unwrap();
        assert_eq!(
            (u32::from(info.width), u32::from(info.height)),
            (*w, *h),
            "{id}"
        );
    }
    // Sorted by id, then the variants in the order given.
    assert_eq!(table[0][0], "cat/gray");
    assert_eq!(table[0][3], "jpeg:75");
    assert_eq!(table[1][3], "jpeg:30");
    // No temporary file is left behind.
    let partial = walk(&output)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".partial"))
        .count();
    assert_eq!(partial, 0);

    // A rerun skips every output and writes the same manifest.
    let mtime = fs::metadata(output.join(&table[0][4]))
        .unwrap()
        .modified()
        .unwrap();
    let second = prepare(&config).unwrap();
    assert_eq!(
        (second.written, second.skipped, second.failures.len()),
        (0, 8, 1)
    );
    assert_eq!(manifest(&output), text);
    assert_eq!(
        fs::metadata(output.join(&table[0][4]))
            .unwrap()
            .modified()
            .unwrap(),
        mtime
    );

    // A deleted output is made again, byte for byte the same.
    let victim = output.join(&table[2][4]);
    let before = fs::read(&victim).unwrap();
    fs::remove_file(&victim).unwrap();
    let third = prepare(&config).unwrap();
    assert_eq!((third.written, third.skipped), (1, 7));
    assert_eq!(fs::read(&victim).unwrap(), before);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn idx(dims: &[u32], values: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(values);
    v
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, bytes).unwrap();
    gz.finish().unwrap()
}

#[test]
fn mnist_idx_gz_and_plain_to_jpeg() {
    let tmp = TempDir::new("mnist");
    let input = tmp.0.join("in");
    let output = tmp.0.join("out");
    let pixels: Vec<u8> = (0..5 * 28 * 28).map(|i| (i % 256) as u8).collect();
    write(
        &input.join("train-images-idx3-ubyte.gz"),
        &gzip(&idx(&[3, 28, 28], &pixels[..3 * 784])),
    );
    write(
        &input.join("train-labels-idx1-ubyte.gz"),
        &gzip(&idx(&[3], &[5, 0, 4])),
    );
    write(
        &input.join("t10k-images-idx3-ubyte"),
        &idx(&[2, 28, 28], &pixels[3 * 784..]),
    );
    write(&input.join("t10k-labels-idx1-ubyte"), &idx(&[2], &[7, 2]));
    let config = PrepareConfig::new(
        Layout::Mnist,
        &input,
        &output,
        parse_variants("jpeg:75").unwrap(),
    )
    .with_progress(false)
    .with_threads(Some(2));
    let s = prepare(&config).unwrap();
    assert_eq!((s.items, s.written, s.failures.len()), (5, 5, 0));
    let table = rows(&manifest(&output));
    let ids: Vec<(&str, &str, &str)> = table
        .iter()
        .map(|r| (r[0].as_str(), r[1].as_str(), r[2].as_str()))
        .collect();
    assert_eq!(
        ids,
        [
            ("test-00000", "7", "test"),
            ("test-00001", "2", "test"),
            ("train-00000", "5", "train"),
            ("train-00001", "0", "train"),
            ("train-00002", "4", "train"),
        ]
    );
    assert_eq!(table[2][4], "jpeg-75/train/5/train-00000.jpg");
    // The JPEG of train-00001 decodes to (about) the second 28x28 block of pixels.
    let data = fs::read(output.join(&table[3][4])).unwrap();
    let decoded = jpeg_decoder::Decoder::new(&data[..]).decode().unwrap();
    assert_eq!(decoded.len(), 784);
    // A 28x28 grayscale baseline JPEG has 4·4 = 16 MCUs (T.81 A.2), as cff-blocks finds.
    for row in &table {
        let data = fs::read(output.join(&row[4])).unwrap();
        let (blocks, _, err) =
            cff_blocks::read_all(&data, &cff_blocks::Options::default()).unwrap();
        assert!(err.is_none());
        assert_eq!(
            blocks
                .iter()
                .filter(|b| b.kind == cff_blocks::BlockKind::Mcu)
                .count(),
            16
        );
    }

    // A labels file that disagrees with its images is an error for the whole run.
    write(
        &input.join("t10k-labels-idx1-ubyte"),
        &idx(&[3], &[7, 2, 1]),
    );
    assert!(prepare(&config).is_err());
}

#[cfg(all(feature = "mp3", feature = "opus"))]
mod audio {
    use super::*;
    use cff_blocks::{read_all, BlockKind, Options};

    fn wav(rate: u32, channels: u16, bits: u16, float: bool, seconds: f32) -> Vec<u8> {
        let spec = hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: bits,
            sample_format: if float {
                hound::SampleFormat::Float
            } else {
                hound::SampleFormat::Int
            },
        };
        let mut cursor = std::io::Cursor::new(Vec::new());
        let mut w = hound::WavWriter::new(&mut cursor, spec).unwrap();
        let n = (rate as f32 * seconds) as usize;
        for i in 0..n {
            let v = (i as f32 * 440.0 * std::f32::consts::TAU / rate as f32).sin() * 0.3;
            for _ in 0..channels {
                if float {
                    w.write_sample(v).unwrap();
                } else {
                    let full = (1i64 << (bits - 1)) as f32;
                    w.write_sample((v * full) as i32).unwrap();
                }
            }
        }
        w.finalize().unwrap();
        cursor.into_inner()
    }

    #[test]
    fn esc50_to_mp3_and_opus() {
        let tmp = TempDir::new("esc50");
        let input = tmp.0.join("in");
        let output = tmp.0.join("out");
        write(
            &input.join("meta/esc50.csv"),
            b"filename,fold,target,category,esc10,src_file,take\n\
              1-100-A-0.wav,1,0,dog,True,100,A\n\
              2-200-A-1.wav,2,1,rooster,False,200,A\n\
              3-300-A-0.wav,3,0,dog,True,300,A\n\
              4-400-A-5.wav,4,5,cat,False,400,A\n",
        );
        write(
            &input.join("audio/1-100-A-0.wav"),
            &wav(44_100, 1, 16, false, 0.5),
        );
        write(
            &input.join("audio/2-200-A-1.wav"),
            &wav(22_050, 2, 24, false, 0.25),
        );
        write(
            &input.join("audio/3-300-A-0.wav"),
            &wav(48_000, 3, 32, true, 0.3),
        );
        // A WAV header whose data chunk stops early.
        let mut broken = wav(8_000, 1, 8, false, 0.5);
        broken.truncate(200);
        write(&input.join("audio/4-400-A-5.wav"), &broken);
        let variants = parse_variants("mp3:20,mp3:32,opus:24,jpeg:75").unwrap();
        let config =
            PrepareConfig::new(Layout::Esc50, &input, &output, variants).with_progress(false);
        let s = prepare(&config).unwrap();
        assert_eq!(
            (s.items, s.written, s.failures.len()),
            (4, 9, 1),
            "{:?}",
            s.failures
        );
        assert!(s.failures[0].input.ends_with("4-400-A-5.wav"));
        let table = rows(&manifest(&output));
        assert_eq!(table.len(), 9);
        let durations = [("1-100-A-0", 0.5), ("2-200-A-1", 0.25), ("3-300-A-0", 0.3)];
        for row in &table {
            let (_, want) = durations.iter().find(|(id, _)| *id == row[0]).unwrap();
            let d: f64 = row[6].parse().unwrap();
            assert!((d - want).abs() < 1e-3, "{row:?}");
            assert_eq!(row[2], &row[0][..1], "fold = split");
            let data = fs::read(output.join(&row[4])).unwrap();
            let (blocks, _, err) = read_all(&data, &Options::default()).unwrap();
            assert!(err.is_none(), "{row:?}: {err:?}");
            let played: f64 = blocks
                .iter()
                .filter(|b| b.kind == BlockKind::Audio)
                .filter_map(|b| b.place.duration_seconds())
                .sum();
            if row[3].starts_with("opus") {
                // Pre-skip plus the clip exactly (end trimming); pre-skip is under 10 ms.
                assert!(played >= *want && played < want + 0.01, "{row:?}: {played}");
            } else {
                assert!(played >= *want && played < want + 0.2, "{row:?}: {played}");
            }
        }
        let again = prepare(&config).unwrap();
        assert_eq!((again.written, again.skipped), (0, 9));
    }

    #[test]
    fn speech_commands_splits_and_background_noise() {
        let tmp = TempDir::new("speechcommands");
        let input = tmp.0.join("in");
        let output = tmp.0.join("out");
        for f in [
            "yes/a_nohash_0.wav",
            "yes/b_nohash_0.wav",
            "no/c_nohash_0.wav",
            "no/d_nohash_1.wav",
        ] {
            write(&input.join(f), &wav(16_000, 1, 16, false, 0.2));
        }
        write(
            &input.join("_background_noise_/white_noise.wav"),
            &wav(16_000, 1, 16, false, 0.2),
        );
        write(&input.join("validation_list.txt"), b"yes/b_nohash_0.wav\n");
        write(&input.join("testing_list.txt"), b"no/d_nohash_1.wav\n");
        let config = PrepareConfig::new(
            Layout::SpeechCommands,
            &input,
            &output,
            parse_variants("opus:24").unwrap(),
        )
        .with_progress(false);
        let s = prepare(&config).unwrap();
        assert_eq!((s.items, s.written), (4, 4));
        let got: Vec<(String, String, String)> = rows(&manifest(&output))
            .into_iter()
            .map(|r| (r[0].clone(), r[1].clone(), r[2].clone()))
            .collect();
        let want = [
            ("no/c_nohash_0", "no", "train"),
            ("no/d_nohash_1", "no", "test"),
            ("yes/a_nohash_0", "yes", "train"),
            ("yes/b_nohash_0", "yes", "validation"),
        ];
        assert_eq!(got.len(), 4);
        for ((id, label, split), w) in got.iter().zip(want) {
            assert_eq!((id.as_str(), label.as_str(), split.as_str()), w);
        }
    }
}

#[cfg(not(all(feature = "mp3", feature = "opus")))]
#[test]
fn audio_variants_need_their_features() {
    let tmp = TempDir::new("nofeature");
    let config = PrepareConfig::new(
        Layout::Folder,
        &tmp.0,
        tmp.0.join("out"),
        parse_variants("mp3:20,opus:24").unwrap(),
    )
    .with_progress(false);
    assert!(matches!(
        prepare(&config),
        Err(tempest_data::Error::Encode(
            cff_encode::Error::Unsupported { .. }
        ))
    ));
}

#[test]
fn shifted_jpeg_variants_decode_to_the_moved_image() {
    let tmp = TempDir::new("mnist-shift");
    let input = tmp.0.join("in");
    let output = tmp.0.join("out");
    // A smooth bright square on black, away from the edges.
    let pixels: Vec<u8> = (0..28 * 28)
        .map(|i| {
            let (x, y) = (i % 28, i / 28);
            if (9..19).contains(&x) && (7..17).contains(&y) {
                220
            } else {
                0
            }
        })
        .collect();
    write(
        &input.join("train-images-idx3-ubyte"),
        &idx(&[1, 28, 28], &pixels),
    );
    write(&input.join("train-labels-idx1-ubyte"), &idx(&[1], &[3]));
    let config = PrepareConfig::new(
        Layout::Mnist,
        &input,
        &output,
        parse_variants("jpeg:95,jpeg:95@3/-2").unwrap(),
    )
    .with_progress(false)
    .with_threads(Some(1));
    let s = prepare(&config).unwrap();
    assert_eq!((s.items, s.written, s.failures.len()), (1, 2, 0));
    let table = rows(&manifest(&output));
    assert_eq!(table[1][3], "jpeg:95@3/-2");
    assert_eq!(table[1][4], "jpeg-95-shift3_-2/train/3/train-00000.jpg");
    let decode = |path: &str| {
        let data = fs::read(output.join(path)).unwrap();
        jpeg_decoder::Decoder::new(&data[..]).decode().unwrap()
    };
    let (plain, moved) = (decode(&table[0][4]), decode(&table[1][4]));
    // Decoded by an independent decoder, the shifted file is the plain one moved 3 right and
    // 2 up, and it is not the plain one.
    let mut worst = 0i32;
    let mut differ = 0;
    for y in 0..28i32 {
        for x in 0..28i32 {
            let (sx, sy) = ((x - 3).clamp(0, 27), (y + 2).clamp(0, 27));
            let want = i32::from(pixels[(sy * 28 + sx) as usize]);
            let got = i32::from(moved[(y * 28 + x) as usize]);
            worst = worst.max((want - got).abs());
            differ += usize::from(
                moved[(y * 28 + x) as usize].abs_diff(plain[(y * 28 + x) as usize]) > 60,
            );
        }
    }
    assert!(worst <= 40, "largest error {worst}");
    assert!(differ >= 40, "only {differ} pixels moved");
}

#[test]
fn restart_variants_decode_to_the_same_pixels_with_a_marker_per_mcu() {
    let tmp = TempDir::new("mnist-restart");
    let input = tmp.0.join("in");
    let output = tmp.0.join("out");
    // A diagonal ramp: every MCU has its own DC value.
    let pixels: Vec<u8> = (0..28 * 28)
        .map(|i| (((i % 28) + (i / 28)) * 255 / 54) as u8)
        .collect();
    write(
        &input.join("train-images-idx3-ubyte"),
        &idx(&[1, 28, 28], &pixels),
    );
    write(&input.join("train-labels-idx1-ubyte"), &idx(&[1], &[7]));
    let config = PrepareConfig::new(
        Layout::Mnist,
        &input,
        &output,
        parse_variants("jpeg:75x2,jpeg:75x2r1").unwrap(),
    )
    .with_progress(false)
    .with_threads(Some(1));
    let s = prepare(&config).unwrap();
    assert_eq!((s.items, s.written, s.failures.len()), (1, 2, 0));
    let table = rows(&manifest(&output));
    assert_eq!(table[1][3], "jpeg:75x2r1");
    assert_eq!(table[1][4], "jpeg-75-x2-r1/train/7/train-00000.jpg");
    let read = |path: &str| fs::read(output.join(path)).unwrap();
    let (plain, restarted) = (read(&table[0][4]), read(&table[1][4]));
    // Markers, counted in the bytes: a DRI segment (FF DD, length 4, interval 1) and one RST
    // marker (FF D0 to FF D7) between each two of the 7 × 7 MCUs; none in the plain file.
    let dri = |d: &[u8]| {
        d.windows(6)
            .filter(|w| w[..4] == [0xFF, 0xDD, 0, 4])
            .map(|w| u16::from_be_bytes([w[4], w[5]]))
            .collect::<Vec<_>>()
    };
    let rst = |d: &[u8]| {
        d.windows(2)
            .filter(|w| w[0] == 0xFF && (0xD0..=0xD7).contains(&w[1]))
            .count()
    };
    assert_eq!((dri(&plain), rst(&plain)), (vec![], 0));
    assert_eq!((dri(&restarted), rst(&restarted)), (vec![1], 48));
    // The markers change how DC values are coded, not the values: an independent decoder
    // gives the same pixels from both.
    let decode = |data: &[u8]| jpeg_decoder::Decoder::new(data).decode().unwrap();
    let (a, b) = (decode(&plain), decode(&restarted));
    assert_eq!(a.len(), 56 * 56);
    assert_eq!(a, b);
}

#[test]
fn distorted_jpeg_variants_decode_to_the_warped_image() {
    use cff_encode::image::{Distortion, Image, PixelKind};
    let tmp = TempDir::new("mnist-distort");
    let input = tmp.0.join("in");
    let output = tmp.0.join("out");
    // A bright bar, off-centre, on black: any rotation, shear or move shows.
    let pixels: Vec<u8> = (0..28 * 28)
        .map(|i| {
            let (x, y) = (i % 28, i / 28);
            if (8..12).contains(&x) && (4..24).contains(&y) {
                230
            } else {
                0
            }
        })
        .collect();
    write(
        &input.join("train-images-idx3-ubyte"),
        &idx(&[1, 28, 28], &pixels),
    );
    write(&input.join("train-labels-idx1-ubyte"), &idx(&[1], &[1]));
    let config = PrepareConfig::new(
        Layout::Mnist,
        &input,
        &output,
        parse_variants("jpeg:95,jpeg:95~2").unwrap(),
    )
    .with_progress(false)
    .with_threads(Some(1));
    let s = prepare(&config).unwrap();
    assert_eq!((s.items, s.written, s.failures.len()), (1, 2, 0));
    let table = rows(&manifest(&output));
    assert_eq!(table[1][3], "jpeg:95~2");
    assert_eq!(table[1][4], "jpeg-95-distort2/train/1/train-00000.jpg");
    let decode = |path: &str| {
        let data = fs::read(output.join(path)).unwrap();
        jpeg_decoder::Decoder::new(&data[..]).decode().unwrap()
    };
    let (plain, distorted) = (decode(&table[0][4]), decode(&table[1][4]));
    let image = Image::new(28, 28, PixelKind::Gray, pixels).unwrap();
    let want = image.warped(&Distortion::draw(&image, 2));
    // Decoded by an independent decoder, the file is the warped image (up to JPEG's error at
    // q95) and not the plain one.
    let worst = want
        .pixels
        .iter()
        .zip(&distorted)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    assert!(worst <= 40, "largest error {worst}");
    let differ = plain
        .iter()
        .zip(&distorted)
        .filter(|(a, b)| a.abs_diff(**b) > 60)
        .count();
    assert!(differ >= 20, "only {differ} pixels changed");
}

#[test]
fn a_run_with_other_variants_keeps_the_earlier_variants_in_the_manifest() {
    let tmp = TempDir::new("more-variants");
    let input = tmp.0.join("in");
    let output = tmp.0.join("out");
    for (class, name) in [("cat", "a"), ("cat", "b"), ("dog", "c")] {
        write(
            &input.join(format!("{class}/{name}.png")),
            &png(16, 16, png::ColorType::Grayscale, png::BitDepth::Eight),
        );
    }
    let run = |list: &str| {
        let config = PrepareConfig::new(
            Layout::Folder,
            &input,
            &output,
            parse_variants(list).unwrap(),
        )
        .with_progress(false);
        prepare(&config).unwrap()
    };
    let variants_of = |text: &str| {
        let mut v: Vec<String> = rows(text).into_iter().map(|r| r[3].clone()).collect();
        v.sort();
        v
    };
    assert_eq!(run("jpeg:75").written, 3);
    let second = run("jpeg:90");
    assert_eq!((second.written, second.rows.len()), (3, 3));
    assert_eq!(
        variants_of(&manifest(&output)),
        ["jpeg:75", "jpeg:75", "jpeg:75", "jpeg:90", "jpeg:90", "jpeg:90"]
    );
    // Rerunning a variant replaces its rows rather than doubling them; a file gone from disk
    // leaves the manifest.
    let gone = rows(&manifest(&output))
        .into_iter()
        .find(|r| r[3] == "jpeg:75")
        .unwrap();
    fs::remove_file(output.join(&gone[4])).unwrap();
    run("jpeg:90");
    assert_eq!(
        variants_of(&manifest(&output)),
        ["jpeg:75", "jpeg:75", "jpeg:90", "jpeg:90", "jpeg:90"]
    );
}

#[test]
fn folder_reads_class_folders_at_any_depth_and_refuses_clashing_outputs() {
    let t = TempDir::new("nested");
    let input = t.0.join("in");
    let img = png(4, 4, png::ColorType::Grayscale, png::BitDepth::Eight);
    write(&input.join("cat/a.png"), &img);
    write(&input.join("cat/sub/a.png"), &img);
    write(&input.join("cat/sub/deeper/b.png"), &img);
    write(&input.join("cat/.hidden/c.png"), &img);
    write(&input.join("dog/d.png"), &img);
    let items = tempest_data::scan(Layout::Folder, &input, &Default::default()).unwrap();
    let ids: Vec<(&str, &str)> = items
        .iter()
        .map(|i| (i.id.as_str(), i.label.as_str()))
        .collect();
    assert_eq!(
        ids,
        [
            ("cat/a", "cat"),
            ("cat/sub/a", "cat"),
            ("cat/sub/deeper/b", "cat"),
            ("dog/d", "dog")
        ]
    );
    // Their outputs stay apart: sub/a is written as sub_a.
    let v = parse_variants("jpeg:75").unwrap()[0];
    let out: Vec<PathBuf> = items.iter().map(|i| i.output_path(v)).collect();
    assert!(out[1].ends_with("cat/sub_a.jpg"), "{out:?}");
    assert_ne!(out[0], out[1]);
    // A file whose path-name equals another's output name is refused, naming both.
    write(&input.join("cat/sub_a.png"), &img);
    let err = tempest_data::scan(Layout::Folder, &input, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("sub_a.png") && err.contains("same file"),
        "{err}"
    );
}
