//! Every encoder's output checked by cff-blocks and, where they are installed, by an
//! independent decoder (ffmpeg, opusdec, djpeg); jpeg-decoder always.
#![allow(clippy::unwrap_used)] // test helpers: a failure to read a fixture should fail loudly

use std::path::{Path, PathBuf};
use std::process::Command;

use cff_encode::audio::{read_wav, Audio};
use cff_encode::image::{Image, PixelKind};
use cff_encode::jpeg::{encode_jpeg, mcu_count, JpegOptions, Subsampling};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The espeak-ng clip (22.05 kHz), resampled to 16 kHz.
#[allow(dead_code)]
fn speech_16k() -> Audio {
    let data = std::fs::read(fixture("speech.wav")).unwrap();
    read_wav(&data).unwrap().resampled(16_000).unwrap()
}

/// Whether `tool` runs; prints why a check is skipped when it does not.
#[allow(dead_code)]
fn have(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("-version")
        .output()
        .or_else(|_| Command::new(tool).arg("--version").output())
        .is_ok();
    if !ok {
        println!("skipped: {tool} is not on PATH");
    }
    ok
}

#[allow(dead_code)]
fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cff-encode-codecs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// 16-bit samples an external decoder writes to stdout as raw s16le.
#[allow(dead_code)]
fn decoded_samples(cmd: &mut Command) -> usize {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout.len() / 2
}

/// Marker codes of a JPEG's header segments up to SOS (T.81 B.1.1.2), walked independently of
/// cff-blocks.
fn markers(jpeg: &[u8]) -> Vec<u8> {
    let mut found = Vec::new();
    let mut i = 2;
    while i + 4 <= jpeg.len() {
        assert_eq!(jpeg[i], 0xFF);
        let m = jpeg[i + 1];
        found.push(m);
        if m == 0xDA {
            break;
        }
        i += 2 + usize::from(u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]));
    }
    found
}

fn test_image(width: u32, height: u32, kind: PixelKind) -> Image {
    let c = kind.channels();
    let mut px = Vec::with_capacity((width * height) as usize * c);
    for y in 0..height {
        for x in 0..width {
            for k in 0..c {
                // Smooth gradients: a JPEG at q90 keeps them within a few levels.
                px.push(((x * 150 / width.max(1)) / (k as u32 + 1) + y * 100 / height) as u8);
            }
        }
    }
    Image::new(width, height, kind, px).unwrap()
}

#[test]
fn jpeg_is_baseline_deterministic_and_decodes_to_the_input() {
    let cases = [
        (
            test_image(28, 28, PixelKind::Gray),
            JpegOptions::with_quality(90),
        ),
        (
            test_image(37, 23, PixelKind::Rgb),
            JpegOptions::with_quality(90).with_subsampling(Subsampling::S420),
        ),
        (
            test_image(40, 17, PixelKind::Rgb),
            JpegOptions::with_quality(90)
                .with_subsampling(Subsampling::S444)
                .with_restart_interval(Some(2)),
        ),
        (
            test_image(24, 31, PixelKind::Gray),
            JpegOptions::with_quality(90).with_optimize_huffman(true),
        ),
        (
            test_image(33, 9, PixelKind::Rgb),
            JpegOptions::with_quality(90).with_subsampling(Subsampling::S422),
        ),
    ];
    for (image, options) in cases {
        let jpeg = encode_jpeg(&image, &options).unwrap();
        assert_eq!(
            jpeg,
            encode_jpeg(&image, &options).unwrap(),
            "not deterministic"
        );
        let m = markers(&jpeg);
        assert!(m.contains(&0xC0), "no SOF0 (baseline) in {m:02x?}");
        assert!(!m
            .iter()
            .any(|&k| matches!(k, 0xC1..=0xC3 | 0xC5..=0xCB | 0xCD..=0xCF)));
        assert_eq!(m.contains(&0xDD), options.restart_interval.is_some(), "DRI");

        let mut dec = jpeg_decoder::Decoder::new(&jpeg[..]);
        let pixels = dec.decode().unwrap();
        let info = dec.info().unwrap();
        assert_eq!(
            (u32::from(info.width), u32::from(info.height)),
            (image.width, image.height)
        );
        assert_eq!(pixels.len(), image.pixels.len());
        let worst = pixels
            .iter()
            .zip(&image.pixels)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        assert!(
            worst <= 24,
            "{}x{} {:?}: a sample is off by {worst}",
            image.width,
            image.height,
            options
        );

        // MCU count as T.81 A.2 predicts it, against the sampling factors in the SOF.
        let (h, v) = if image.kind == PixelKind::Gray {
            (1, 1)
        } else {
            options.subsampling.luma_factors()
        };
        assert_eq!(
            mcu_count(image.width, image.height, image.kind, options.subsampling),
            u64::from(image.width.div_ceil(8 * h) * image.height.div_ceil(8 * v))
        );

        // cff-blocks finds exactly those MCUs, in raster order, each with its data units
        // (T.81 A.2.3: H·V luma blocks and one per chroma component).
        let (blocks, _, err) =
            cff_blocks::read_all(&jpeg, &cff_blocks::Options::default()).unwrap();
        assert!(err.is_none(), "{err:?}");
        let mcus: Vec<_> = blocks
            .iter()
            .filter(|b| b.kind == cff_blocks::BlockKind::Mcu)
            .collect();
        let cols = image.width.div_ceil(8 * h);
        assert_eq!(
            mcus.len() as u64,
            mcu_count(image.width, image.height, image.kind, options.subsampling)
        );
        for (k, b) in mcus.iter().enumerate() {
            assert_eq!(b.place.grid(), Some((k as u32 / cols, k as u32 % cols)));
            let cff_blocks::Detail::Jpeg(info) = &b.detail else {
                panic!()
            };
            let units = if image.kind == PixelKind::Gray {
                1
            } else {
                h * v + 2
            };
            assert_eq!(u32::from(info.data_units), units);
            // The index of the restart interval the MCU lies in (DRI every `interval` MCUs).
            let interval = options.restart_interval.map_or(u32::MAX, u32::from);
            assert_eq!(info.restart_interval, k as u32 / interval);
        }

        if have("djpeg") {
            let path = temp_file("t.jpg", &jpeg);
            let out = Command::new("djpeg").arg(&path).output().unwrap();
            assert!(out.status.success());
            // PGM/PPM: the header, then exactly the samples.
            assert!(out.stdout.len() >= image.pixels.len());
        }
    }
}

#[test]
fn jpeg_refuses_bad_settings() {
    let img = test_image(8, 8, PixelKind::Gray);
    assert!(encode_jpeg(&img, &JpegOptions::with_quality(0)).is_err());
    assert!(encode_jpeg(&img, &JpegOptions::with_quality(101)).is_err());
    let both = JpegOptions::default()
        .with_restart_interval(Some(1))
        .with_optimize_huffman(true);
    assert!(matches!(
        encode_jpeg(&img, &both),
        Err(cff_encode::Error::Unsupported { .. })
    ));
    let wide = Image::new(70_000, 1, PixelKind::Gray, vec![0; 70_000]).unwrap();
    assert!(encode_jpeg(&wide, &JpegOptions::default()).is_err());
}

#[cfg(feature = "mp3")]
mod mp3 {
    use super::*;
    use cff_blocks::mp3::Mp3Reader;
    use cff_blocks::{BlockKind, Detail, Options};
    use cff_encode::mp3::{encode_mp3, Mp3Options};

    struct Stats {
        audio_frames: usize,
        bytes: usize,
        kbps: Vec<u16>,
        main_data_begin_max: u16,
        first_is_metadata: bool,
        regions: usize,
    }

    fn stats(mp3: &[u8]) -> Stats {
        let mut r = Mp3Reader::new(mp3, &Options::default()).unwrap();
        let blocks: Vec<_> = r.by_ref().collect::<Result<_, _>>().unwrap();
        let mut s = Stats {
            audio_frames: 0,
            bytes: 0,
            kbps: Vec::new(),
            main_data_begin_max: 0,
            first_is_metadata: blocks[0].kind == BlockKind::Metadata,
            regions: r.regions().len(),
        };
        for b in &blocks {
            let Detail::Mp3(f) = &b.detail else { panic!() };
            assert_eq!(f.header.sample_rate(), 16_000);
            assert_eq!(f.header.samples(), 576);
            if b.kind == BlockKind::Audio {
                s.audio_frames += 1;
                s.bytes += b.data.len();
                s.kbps.push(f.header.bitrate_kbps());
                s.main_data_begin_max = s.main_data_begin_max.max(f.main_data_begin);
            }
        }
        s
    }

    #[test]
    fn abr_lands_within_five_percent_of_its_target() {
        let audio = speech_16k();
        for (target, low, high) in [(20u32, 16u16, 24u16), (26, 24, 32)] {
            let mp3 = encode_mp3(&audio, &Mp3Options::abr(target)).unwrap();
            assert_eq!(mp3, encode_mp3(&audio, &Mp3Options::abr(target)).unwrap());
            let s = stats(&mp3);
            assert_eq!(s.regions, 0, "no ID3 or other bytes outside frames");
            assert!(!s.first_is_metadata, "no Xing frame unless asked");
            let seconds = s.audio_frames as f64 * 576.0 / 16_000.0;
            // The frames cover the input plus LAME's delay and padding (under 3 frames).
            assert!(seconds >= audio.duration_seconds());
            assert!(seconds < audio.duration_seconds() + 0.2, "{seconds}");
            let mean = s.bytes as f64 * 8.0 / seconds / 1000.0;
            assert!(
                (mean - f64::from(target)).abs() <= 0.05 * f64::from(target),
                "ABR {target}: mean {mean:.2} kbps"
            );
            // Bounded ABR: frames at the two legal neighbours only (LAME may code digital
            // silence at 8 kbps, the lowest rate, whatever the bounds).
            assert!(
                s.kbps.iter().all(|&k| k == 8 || (low..=high).contains(&k)),
                "{:?}",
                s.kbps
            );
            assert!(s.kbps.contains(&low) && s.kbps.contains(&high));
            println!(
                "ABR {target}: {mean:.2} kbps over {} frames",
                s.audio_frames
            );

            if have("ffmpeg") {
                let path = temp_file(&format!("abr{target}.mp3"), &mp3);
                let n = decoded_samples(
                    Command::new("ffmpeg")
                        .args(["-v", "error", "-i"])
                        .arg(&path)
                        .args(["-f", "s16le", "-"]),
                );
                // Without a Xing/LAME tag ffmpeg cannot trim the encoder delay: it decodes
                // every frame whole.
                assert_eq!(n, s.audio_frames * 576);
            }
        }
    }

    #[test]
    fn cbr_reservoir_off_and_xing_on_request() {
        let audio = speech_16k();
        let mp3 = encode_mp3(&audio, &Mp3Options::cbr(32).with_reservoir(false)).unwrap();
        let s = stats(&mp3);
        assert!(s.kbps.iter().all(|&k| k == 32), "{:?}", s.kbps);
        assert_eq!(s.main_data_begin_max, 0, "bit reservoir used");
        // Legal but not in mp3lame-encoder's enum.
        let s144 = stats(&encode_mp3(&audio, &Mp3Options::cbr(144)).unwrap());
        assert!(s144.kbps.iter().all(|&k| k == 144));

        let with_res = stats(&encode_mp3(&audio, &Mp3Options::cbr(32)).unwrap());
        assert!(
            with_res.main_data_begin_max > 0,
            "LAME normally uses the reservoir"
        );

        let tagged = encode_mp3(&audio, &Mp3Options::abr(20).with_xing(true)).unwrap();
        assert!(stats(&tagged).first_is_metadata, "Xing/Info frame first");
        assert!(tagged[..200]
            .windows(4)
            .any(|w| w == b"Xing" || w == b"Info"));

        assert!(
            encode_mp3(&audio, &Mp3Options::cbr(20)).is_err(),
            "20 kbps is not legal"
        );
        let odd = Audio {
            samples: vec![0.0; 100],
            rate: 17_000,
        };
        assert!(encode_mp3(&odd, &Mp3Options::cbr(32)).is_err());
    }
}

#[cfg(feature = "opus")]
mod opus {
    use super::*;
    use cff_blocks::opus::OpusReader;
    use cff_blocks::{BlockKind, Options, Place};
    use cff_encode::opus::{encode_opus, FrameDuration, OpusOptions, RateControl};

    #[test]
    fn ogg_opus_decodes_to_the_input_length() {
        let audio = speech_16k();
        let n = audio.samples.len();
        // Each frame duration once and each rate control at least once (a full matrix costs
        // seconds in a debug build of libopus).
        for (frame, ms, rc) in [
            (FrameDuration::Ms2_5, 2.5, RateControl::ConstrainedVbr),
            (FrameDuration::Ms5, 5.0, RateControl::Vbr),
            (FrameDuration::Ms10, 10.0, RateControl::Cbr),
            (FrameDuration::Ms20, 20.0, RateControl::Vbr),
            (FrameDuration::Ms40, 40.0, RateControl::ConstrainedVbr),
            (FrameDuration::Ms60, 60.0, RateControl::Cbr),
        ] {
            {
                let options = OpusOptions::kbps(24)
                    .with_frame(frame)
                    .with_rate_control(rc)
                    .with_complexity(5);
                let ogg = encode_opus(&audio, &options).unwrap();
                assert_eq!(
                    ogg,
                    encode_opus(&audio, &options).unwrap(),
                    "not deterministic"
                );
                let mut r = OpusReader::new(&ogg, &Options::default()).unwrap();
                let blocks: Vec<_> = r.by_ref().collect::<Result<_, _>>().unwrap();
                assert!(r.regions().is_empty());
                let pre_skip = i64::from(r.head().pre_skip);
                assert!(pre_skip > 0);
                let audio_blocks: Vec<_> = blocks
                    .iter()
                    .filter(|b| b.kind == BlockKind::Audio)
                    .collect();
                let mut played = 0i64;
                let mut sizes = Vec::new();
                for b in &audio_blocks {
                    let Place::Time { duration, rate, .. } = b.place else {
                        panic!()
                    };
                    assert_eq!(rate, 48_000);
                    played += i64::from(duration);
                    sizes.push(b.data.len());
                }
                // Pre-skip plus the input at 48 kHz: the end trimming removed the rest.
                assert_eq!(played, pre_skip + 3 * n as i64, "{ms} ms {rc:?}");
                if rc == RateControl::Cbr {
                    assert!(sizes.iter().all(|&s| s == sizes[0]), "CBR sizes {sizes:?}");
                }
                let seconds = played as f64 / 48_000.0;
                let kbps = sizes.iter().sum::<usize>() as f64 * 8.0 / seconds / 1000.0;
                println!(
                    "opus 24 kbps {ms} ms {rc:?}: {kbps:.1} kbps, {} packets",
                    sizes.len()
                );
            }
        }
    }

    #[test]
    fn external_decoders_agree_on_the_length() {
        let audio = speech_16k();
        let n = audio.samples.len();
        let ogg = encode_opus(&audio, &OpusOptions::kbps(24)).unwrap();
        let path = temp_file("t.opus", &ogg);
        if have("opusdec") {
            let got = decoded_samples(
                Command::new("opusdec")
                    .args(["--quiet", "--rate", "16000", "--force-wav"])
                    .arg(&path)
                    .arg("-"),
            );
            // opusdec writes a 44-byte WAV header, 22 samples' worth.
            assert_eq!(got - 22, n);
        }
        if have("ffmpeg") {
            let got = decoded_samples(
                Command::new("ffmpeg")
                    .args(["-v", "error", "-i"])
                    .arg(&path)
                    .args(["-f", "s16le", "-ar", "48000", "-"]),
            );
            assert_eq!(got, 3 * n);
        }
    }

    #[test]
    fn opus_refuses_bad_settings() {
        let a = Audio {
            samples: vec![0.0; 480],
            rate: 44_100,
        };
        assert!(encode_opus(&a, &OpusOptions::kbps(24)).is_err());
        let b = Audio { rate: 16_000, ..a };
        assert!(encode_opus(&b, &OpusOptions::kbps(24).with_complexity(11)).is_err());
        assert!(encode_opus(&b, &OpusOptions::kbps(0)).is_err());
        // Shorter than one frame and even empty input still make a valid stream.
        for len in [0, 10] {
            let c = Audio {
                samples: vec![0.1; len],
                rate: 16_000,
            };
            let ogg = encode_opus(&c, &OpusOptions::kbps(24)).unwrap();
            let blocks: Vec<_> = OpusReader::new(&ogg, &cff_blocks::Options::default())
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert!(blocks.len() >= 3);
        }
    }
}
