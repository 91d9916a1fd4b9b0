//! The baseline against an independent filter bank, the AST patch formula, gradients of the
//! ViT, decoders on corrupt files, and one small comparison end to end.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use tempest_baseline::decode::{decode_jpeg, decode_mp3, Limits};
use tempest_baseline::{
    Error, Fbank, FbankConfig, FeatureConfig, Features, Featurizer, PatchBatch, PatchSpec, Vit,
    VitConfig,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn blocks_fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../cff-blocks/tests/fixtures")
        .join(rel)
}

/// The fixture's samples scaled to [-1, 1) (as the reference script does).
fn speech() -> Result<Vec<f32>, Box<dyn std::error::Error>> {
    let reader = hound::WavReader::open(fixtures().join("speech_16k.wav"))?;
    assert_eq!(reader.spec().sample_rate, 16_000);
    Ok(reader
        .into_samples::<i16>()
        .map(|s| s.map(|v| f32::from(v) / 32768.0))
        .collect::<Result<_, _>>()?)
}

fn reference(name: &str) -> Result<Vec<Vec<f32>>, Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(fixtures().join(name))?;
    Ok(text
        .lines()
        .map(|l| l.split_whitespace().map(str::parse::<f32>).collect())
        .collect::<Result<_, _>>()?)
}

/// Largest absolute difference between our log-mel energies and kaldi-native-fbank's.
fn max_diff(bins: usize, frame_ms: f64, name: &str) -> Result<f32, Box<dyn std::error::Error>> {
    let mut config = FbankConfig::default();
    config.num_mel_bins = bins;
    config.frame_length_ms = frame_ms;
    let fbank = Fbank::new(&config)?;
    let ours = fbank.compute(&speech()?);
    let want = reference(name)?;
    assert_eq!(ours.len() / bins, want.len(), "frames");
    let mut worst = 0f32;
    for (row, frame) in ours.chunks_exact(bins).zip(&want) {
        assert_eq!(frame.len(), bins);
        for (a, b) in row.iter().zip(frame) {
            worst = worst.max((a - b).abs());
        }
    }
    Ok(worst)
}

/// Reference: kaldi-native-fbank 1.23.0 (tests/fixtures/make_reference.py), with AST's options.
/// Tolerance 5e-4 in natural-log energy (0.05 %): f32 arithmetic and a different FFT; the
/// largest differences measured were 1.3e-4 (80 bins) and 1.6e-4 (128 bins).
#[test]
fn fbank_matches_kaldi_native_fbank() -> TestResult {
    let d80 = max_diff(80, 25.0, "fbank_80_25ms.txt")?;
    eprintln!("max abs diff, 80 bins: {d80}");
    assert!(d80 < 5e-4, "80 bins, 25 ms: max |diff| {d80}");
    let d128 = max_diff(128, 50.0, "fbank_128_50ms.txt")?;
    eprintln!("max abs diff, 128 bins: {d128}");
    assert!(d128 < 5e-4, "128 bins, 50 ms: max |diff| {d128}");
    Ok(())
}

/// With AST's 128 bins and a 25 ms window some low filters cover no FFT bin (Kaldi refuses
/// them; torchaudio keeps them empty): their output is ln(ε), never NaN or −∞.
#[test]
fn empty_low_filters_give_the_log_floor() -> TestResult {
    let fbank = Fbank::new(&FbankConfig::default())?;
    let out = fbank.compute(&speech()?);
    assert_eq!(fbank.bins(), 128);
    assert!(out.iter().all(|v| v.is_finite() && *v >= f32::EPSILON.ln()));
    Ok(())
}

#[test]
fn one_second_gives_108_ast_patches() -> TestResult {
    let fbank = Fbank::new(&FbankConfig::default())?;
    // Kaldi framing at 16 kHz: 1 + ⌊(16000 − 400)/160⌋ = 98 frames.
    assert_eq!(fbank.num_frames(16_000), 98);
    // ⌊(128 − 16)/10⌋ + 1 = 12 frequency patches, ⌊(98 − 16)/10⌋ + 1 = 9 time patches.
    assert_eq!(PatchSpec::AST.along(128), 12);
    assert_eq!(PatchSpec::AST.along(98), 9);
    assert_eq!(PatchSpec::AST.count(128, 98), 108);
    assert_eq!(
        PatchSpec::AST.count(128, 98),
        tempest_model::cost::ast_patches(1.0)
    );
    // AST's 10 s input of 1024 frames: 12 × 101 = 1212 patches (Gong et al. 2021).
    assert_eq!(PatchSpec::AST.count(128, 1024), 1212);
    assert_eq!(PatchSpec::square(7).count(28, 28), 16);
    assert_eq!(PatchSpec::square(4).count(28, 28), 49);
    Ok(())
}

/// A real MP3 (LAME, 16 kHz mono, 32 kbps) through decode → resample → fbank → patches.
#[test]
fn mp3_file_to_patches() -> TestResult {
    let path = blocks_fixture("mp3/cbr32_16k_mono.mp3");
    let data = std::fs::read(&path)?;
    let audio = decode_mp3(&data, &path, &Limits::default())?;
    assert_eq!(audio.rate, 16_000);
    // MPEG-2 Layer III: 576 samples per frame.
    assert_eq!(audio.samples.len() % 576, 0);
    let f = Featurizer::new(&FeatureConfig::default())?.features(&data, &path)?;
    let frames = 1 + (audio.samples.len() - 400) / 160;
    assert_eq!((f.rows, f.cols, f.channels), (128, frames, 1));
    assert_eq!(f.num_patches(), 12 * ((frames - 16) / 10 + 1));
    assert_eq!(f.patch_dim(), 256);
    assert!(f.data.iter().all(|v| v.is_finite()));
    Ok(())
}

#[test]
fn jpeg_digit_to_patches() -> TestResult {
    let path = blocks_fixture("jpeg/gray28_q75.jpg");
    let data = std::fs::read(&path)?;
    let img = decode_jpeg(&data, &path, &Limits::default())?;
    assert_eq!((img.width, img.height, img.channels), (28, 28, 1));
    let f =
        Featurizer::new(&FeatureConfig::default().with_image_patch(4))?.features(&data, &path)?;
    assert_eq!(f.num_patches(), 49);
    assert!(f.data.iter().all(|v| (-1.0..=1.0).contains(v)));
    // Patch 8 (column-major over a 7×7 grid: row 1, column 1) starts at pixel (4, 4).
    let mut p = vec![0f32; f.patch_dim()];
    assert_eq!(f.write_patch(8, &mut p), 8);
    assert_eq!(p[0], f.data[4 * 28 + 4]);
    assert_eq!(p[15], f.data[7 * 28 + 7]);
    let colour = blocks_fixture("jpeg/c420_q75.jpg");
    let img = decode_jpeg(&std::fs::read(&colour)?, &colour, &Limits::default())?;
    assert_eq!(img.channels, 3);
    Ok(())
}

/// The 4×4-pixel patches of two JPEG digits of the readers' fixtures.
fn two_digits() -> Result<Vec<Features>, Box<dyn std::error::Error>> {
    ["jpeg/gray28_q75.jpg", "jpeg/gray28_q50_rst1.jpg"]
        .iter()
        .map(|rel| {
            let path = blocks_fixture(rel);
            let data = std::fs::read(&path)?;
            Ok(
                Featurizer::new(&FeatureConfig::default().with_image_patch(4))?
                    .features(&data, &path)?,
            )
        })
        .collect()
}

#[test]
fn vit_mixup_mixes_training_items_only() -> TestResult {
    let dev = Device::Cpu;
    let mut tempest = tempest_model::Config::tiny().with_num_classes(3);
    // α = 2 keeps λ near the middle (Beta(2, 2)), so mixing moves the loss whatever the
    // initial weights.
    tempest.mixup = 2.0;
    let cfg = VitConfig::matching(&tempest, 16, 49);
    assert_eq!(cfg.mixup, 2.0);
    let (vit, vars) = Vit::init(&cfg, &dev, DType::F32)?;
    let plain = Vit::new(
        &VitConfig {
            mixup: 0.0,
            ..cfg.clone()
        },
        candle_nn::VarBuilder::from_varmap(&vars, DType::F32, &dev),
    )?;
    let feats = two_digits()?;
    let labels = Tensor::new(&[0u32, 2], &dev)?;
    let scalar = |t: &Tensor| t.to_scalar::<f32>();
    let two: Vec<_> = feats.iter().collect();
    let batch = PatchBatch::collate(&two, &dev)?;
    // Evaluation never mixes; training does, and repeats for the same seed.
    let d = scalar(&vit.loss(&batch, &labels, false)?.0)?
        - scalar(&plain.loss(&batch, &labels, false)?.0)?;
    assert!(d.abs() < 1e-6, "evaluation moved by {d}");
    vit.seed_dropout(5);
    let mixed = scalar(&vit.loss(&batch, &labels, true)?.0)?;
    vit.seed_dropout(5);
    assert_eq!(mixed, scalar(&vit.loss(&batch, &labels, true)?.0)?);
    let unmixed = scalar(&plain.loss(&batch, &labels, true)?.0)?;
    assert!(
        (mixed - unmixed).abs() > 1e-5,
        "mixup left the loss at {unmixed}"
    );
    // An item mixed with a copy of itself is the item.
    let same = PatchBatch::collate(&[&feats[0], &feats[0]], &dev)?;
    let l = Tensor::new(&[1u32, 1], &dev)?;
    let d = scalar(&vit.loss(&same, &l, true)?.0)? - scalar(&plain.loss(&same, &l, true)?.0)?;
    assert!(d.abs() < 1e-5, "a self-mixture moved the loss by {d}");
    Ok(())
}

#[test]
fn every_vit_variable_gets_a_gradient() -> TestResult {
    let dev = Device::Cpu;
    let mut tempest = tempest_model::Config::tiny().with_num_classes(3);
    tempest.execution.fused_kernels = false;
    for fused in [false, true] {
        tempest.execution.fused_kernels = fused;
        let cfg = VitConfig::matching(&tempest, 16, 49);
        let (vit, vars) = Vit::init(&cfg, &dev, DType::F32)?;
        assert_eq!(
            vars.all_vars()
                .iter()
                .map(|v| v.elem_count())
                .sum::<usize>(),
            cfg.params(),
            "parameter count"
        );
        let feats = two_digits()?;
        let refs: Vec<_> = feats.iter().collect();
        let batch = PatchBatch::collate(&refs, &dev)?;
        let (loss, logits) = vit.loss(&batch, &Tensor::new(&[0u32, 2], &dev)?, true)?;
        assert_eq!(logits.dims(), &[2, 3]);
        let grads = loss.backward()?;
        for var in vars.all_vars() {
            let g = grads
                .get(var.as_tensor())
                .ok_or("a variable without a gradient")?;
            let norm = g.sqr()?.sum_all()?.to_scalar::<f32>()?;
            assert!(
                norm > 0.0 && norm.is_finite(),
                "{:?}: |g|² = {norm}",
                var.shape()
            );
        }
    }
    Ok(())
}

fn not_a_panic(e: &Error) -> bool {
    !e.to_string().contains("panicked")
}

/// Truncated and damaged files give errors (or, past the headers, audio and pixels), never
/// a panic; files without a decodable frame or header are errors that name the file.
#[test]
fn corrupt_files_give_errors() -> TestResult {
    let limits = Limits::default();
    let mp3 = blocks_fixture("mp3/cbr32_16k_mono.mp3");
    let data = std::fs::read(&mp3)?;
    for cut in [0, 1, 4, 10, 100] {
        let e = decode_mp3(&data[..cut.min(data.len())], &mp3, &limits)
            .err()
            .ok_or(format!("{cut} bytes of MP3 decoded"))?;
        assert!(
            not_a_panic(&e) && e.to_string().contains("cbr32_16k_mono.mp3"),
            "{e}"
        );
    }
    let mut noise = vec![0u8; 4096];
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for b in &mut noise {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    noise[..2].copy_from_slice(&[0xFF, 0xF3]);
    if let Err(e) = decode_mp3(&noise, Path::new("noise.mp3"), &limits) {
        assert!(not_a_panic(&e), "{e}");
    }
    let jpeg = blocks_fixture("jpeg/gray28_q75.jpg");
    let data = std::fs::read(&jpeg)?;
    for cut in (0..data.len()).step_by(7) {
        match decode_jpeg(&data[..cut], &jpeg, &limits) {
            Err(e) => assert!(not_a_panic(&e), "{e}"),
            // zune-jpeg fills a truncated scan; the headers must have been complete.
            Ok(img) => assert!(cut > 100 && img.width == 28, "{cut}"),
        }
    }
    for i in (2..data.len()).step_by(5) {
        let mut bad = data.clone();
        bad[i] ^= 0x5A;
        if let Err(e) = decode_jpeg(&bad, &jpeg, &limits) {
            assert!(not_a_panic(&e), "{e}");
        }
    }
    let e = decode_jpeg(&data[..2], &jpeg, &limits)
        .err()
        .ok_or("an SOI alone decoded")?;
    assert!(matches!(e, Error::Malformed { .. }), "{e}");
    // The featurizer refuses a file of unknown format with the reader's error.
    let f = Featurizer::new(&FeatureConfig::default())?;
    assert!(f.features(b"RIFF....WAVE", Path::new("x.wav")).is_err());
    Ok(())
}

/// Both models on 20 spoken words (the embedded set) for one epoch: two rows and the ratios;
/// the token rates follow from the formats (MPEG-2 Layer III frames of 576 samples at 16 kHz)
/// and AST's formula, not from the code under test.
#[test]
fn compare_runs_on_the_spoken_words() -> TestResult {
    use tempest_baseline::{compare, CompareOptions, Media};
    use tempest_train::{Dataset, SplitPlan};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/spoken-words");
    let mut dataset = Dataset::from_compressed(tempest_data::Layout::SpeechCommands, &dir)?;
    let plan = SplitPlan::standard(&dataset)?;
    dataset.truncate_splits(&plan.train, 20);
    let mut o = CompareOptions::default();
    o.train.epochs = 1;
    o.train.batch_size = 10;
    o.train.progress = false;
    // The curve's test after the (only) epoch is the final test.
    o.curve_every = 1;
    let cmp = compare(&dataset, &plan, &o)?;
    for (row, report) in cmp.rows.iter().zip(&cmp.reports) {
        assert_eq!(report.curve, [(1, row.accuracy)]);
    }
    assert!(cmp
        .notes()
        .contains("'s accuracy on the tested split by epoch: best"));
    assert_eq!(cmp.media, Media::Audio);
    assert_eq!((cmp.train_items, cmp.test_items), (20, 20));
    let [t, b] = &cmp.rows;
    assert!(
        (t.tokens_per_unit - 16_000.0 / 576.0).abs() < 1e-3,
        "{}",
        t.tokens_per_unit
    );
    // Each file: 30 frames of 576 samples decoded.
    let secs = 30.0 * 576.0 / 16_000.0;
    let patches = tempest_model::cost::ast_patches(secs);
    assert_eq!(patches, 120);
    assert!(
        (b.tokens_per_unit - patches as f64 / secs).abs() < 1e-6,
        "{}",
        b.tokens_per_unit
    );
    assert_eq!(b.attention, 121.0 * 121.0);
    assert_eq!(t.attention, 31.0 * 31.0);
    for r in &cmp.rows {
        assert!((0.0..=1.0).contains(&r.accuracy) && r.train_items_per_s > 0.0);
        assert!(r.prep_us > 0.0 && r.infer_items_per_s > 0.0 && r.params > 0 && r.flops > 0.0);
    }
    let table = cmp.table();
    assert_eq!(table.lines().count(), 5, "{table}");
    assert!(
        table.contains("| TEMPEST/baseline |") && table.contains("| 0.25x |"),
        "{table}"
    );
    // Each model's wall time, from its own run.
    let notes = cmp.notes();
    assert!(
        cmp.reports.iter().all(|r| r.train_seconds() > 0.0),
        "{notes}"
    );
    let shown = format!("TEMPEST trained in {:.0} s", cmp.reports[0].train_seconds());
    assert!(
        notes.contains(&shown) && notes.contains(&b.model),
        "{notes}"
    );
    Ok(())
}

/// libopus through the `opus` feature: the decoded length is the playback length opusinfo
/// reports (2.723 s; `opusinfo speech_mono_24k_20ms.opus`) plus at most the last packet's
/// end padding (the final granule position is not applied), pre-skip removed.
#[cfg(feature = "opus")]
#[test]
fn opus_decodes_to_its_playback_length() -> TestResult {
    let path = blocks_fixture("opus/speech_mono_24k_20ms.opus");
    let data = std::fs::read(&path)?;
    let audio = tempest_baseline::decode::decode_opus(&data, &path, &Limits::default())?;
    assert_eq!(audio.rate, 16_000);
    let secs = audio.duration_seconds();
    assert!((2.723..2.723 + 0.021).contains(&secs), "{secs} s");
    let truncated = tempest_baseline::decode::decode_opus(&data[..60], &path, &Limits::default());
    assert!(truncated.is_err());
    Ok(())
}
