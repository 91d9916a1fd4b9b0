//! Masked block modelling on the embedded spoken words: the loss falls over a few steps,
//! pretraining resumes to the same weights, and fine-tuning takes the pretrained tensors over
//! exactly (refusing other shapes by name) and can hold E_t still.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use tempest_data::Layout;
use tempest_model::pretrain::{Masking, Target as PretrainTarget};
use tempest_model::Config;
use tempest_tokenize::{collate, tokenize, CropContext, HostBatch, TokenizerConfig, PAD_ID};
use tempest_train::pretrain::{init_pretrainer, pretrain_config, pretrain_gradients};
use tempest_train::{
    init_from_pretrained, init_seeded, pretrain, train, AdamW, AdamWConfig, Dataset, SplitPlan,
    TrainOptions,
};

mod common;
use common::{repo, scratch, Result};

fn spoken_words() -> Result<Dataset> {
    let mut dataset =
        Dataset::from_compressed(Layout::SpeechCommands, &repo().join("data/spoken-words"))?;
    let plan = SplitPlan::standard(&dataset)?;
    dataset.truncate_splits(&plan.train, 16);
    Ok(dataset)
}

fn quick_options(seed: u64) -> TrainOptions {
    let mut o = TrainOptions::default();
    o.epochs = 2;
    o.batch_size = 8;
    o.seed = seed;
    o.workers = 1;
    o.progress = false;
    o.lr = 3e-3;
    o
}

/// Pretrains `tiny` on `splits` of `dataset` with the default masking into `dir` (fresh).
fn pretrain_tiny(
    dataset: &Dataset,
    splits: &[String],
    o: &TrainOptions,
    dir: &Path,
) -> Result<tempest_train::PretrainReport> {
    Ok(pretrain(
        dataset,
        splits,
        &Config::tiny(),
        o,
        &Masking::default(),
        dir,
        false,
    )?)
}

/// The tokenizer a pretraining checkpoint folder saved.
fn saved_tokenizer(checkpoint: &Path) -> Result<TokenizerConfig> {
    Ok(tempest_train::checkpoint::read_json(
        &checkpoint.join(tempest_train::checkpoint::TOKENIZER_FILE),
    )?)
}

fn tensors(path: &Path) -> Result<std::collections::HashMap<String, Tensor>> {
    Ok(candle_core::safetensors::load(path, &Device::Cpu)?)
}

#[test]
fn the_pretraining_loss_falls_over_a_few_steps_on_one_batch() -> Result<()> {
    let dataset = spoken_words()?;
    let o = quick_options(3);
    let config = pretrain_config(&Config::tiny(), &o, &[cff_blocks::Format::Mp3])?;
    let tok = o
        .tokenizer(cff_blocks::Format::Mp3, &config)?
        .eval_config()?;
    let items: Vec<_> = dataset
        .select(&["train".to_string()])
        .into_iter()
        .take(8)
        .map(|i| {
            let path = &dataset.samples[i].variants[0].1;
            tokenize(&std::fs::read(path)?, path, &tok, CropContext::default())
                .map_err(|e| e.into())
        })
        .collect::<Result<Vec<_>>>()?;
    let refs: Vec<_> = items.iter().collect();
    let host: HostBatch = collate(&refs, &[0; 8], PAD_ID);
    let masking = Masking::default();
    let (model, varmap) = init_pretrainer(&config, masking, &Device::Cpu, DType::F32, 1)?;
    let mut opt = AdamW::new(&varmap, AdamWConfig::default())?;
    let mut losses = Vec::new();
    for _ in 0..12 {
        // The same batch and mask plan every step: the loss must fall as the model fits it.
        let (grads, sums) = pretrain_gradients(
            &model,
            None,
            std::slice::from_ref(&host),
            &[],
            &masking,
            9,
            &Device::Cpu,
        )?;
        losses.push(sums.mean_loss());
        opt.accumulate(&grads)?;
        opt.step(3e-3, 1.0)?;
    }
    // Each id is chosen among its field's ids (8 to 512 of them; bytes among 256): a uniform
    // guess costs ln 8 ≈ 2.1 to ln 512 ≈ 6.2 nats.
    assert!(losses[0] > 2.0 && losses[0] < 6.5, "{losses:?}");
    assert!(losses.iter().all(|l| l.is_finite()));
    let last = losses[losses.len() - 1];
    assert!(last < 0.8 * losses[0], "the loss did not fall: {losses:?}");
    Ok(())
}

#[test]
fn pretraining_resumes_exactly_and_fine_tuning_takes_its_weights_over() -> Result<()> {
    let dataset = spoken_words()?;
    let train_split = ["train".to_string()];
    let masking = Masking::default();
    let o = quick_options(4);
    let cfg = Config::tiny();

    let whole = scratch("pretrain-whole")?;
    let r = pretrain(&dataset, &train_split, &cfg, &o, &masking, &whole, false)?;
    assert!(!r.interrupted);
    assert_eq!((r.epochs, r.steps), (2, 4));
    assert_eq!(r.train_items, 32);
    let lines = std::fs::read_to_string(whole.join("metrics.jsonl"))?;
    assert_eq!(lines.lines().count(), 2, "{lines}");
    for line in lines.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        assert!(
            v["pretrain"]["loss"].as_f64().is_some_and(f64::is_finite),
            "{line}"
        );
        assert_eq!(v["pretrain"]["items"].as_f64(), Some(16.0));
    }
    // The pretraining curve, as `train` draws its own: both epochs read back for the plot.
    #[cfg(feature = "plots")]
    {
        let points = tempest_train::plots::read_metrics(&whole.join("metrics.jsonl"))?.epochs;
        assert_eq!(points.iter().map(|p| p.epoch).collect::<Vec<_>>(), [1, 2]);
        assert!(points
            .iter()
            .all(|p| p.train_loss.is_finite() && (0.0..=1.0).contains(&p.train_accuracy)));
        let png = std::fs::read(whole.join("curves.png"))?;
        assert!(png.starts_with(b"\x89PNG"), "curves.png is not a PNG");
    }
    // Stopped inside the first epoch, then resumed: the same weights to the bit.
    let parted = scratch("pretrain-parted")?;
    let mut stop = o.clone();
    stop.stop_after_steps = Some(1);
    let r1 = pretrain(
        &dataset,
        &train_split,
        &cfg,
        &stop,
        &masking,
        &parted,
        false,
    )?;
    assert!(r1.interrupted);
    assert_eq!(r1.steps, 1);
    let r2 = pretrain(&dataset, &train_split, &cfg, &o, &masking, &parted, true)?;
    assert_eq!(r2.steps, 4);
    let file = |d: &Path| d.join("last").join(tempest_model::WEIGHTS_FILE);
    assert_eq!(std::fs::read(file(&whole))?, std::fs::read(file(&parted))?);
    // The same epochs' losses and accuracies (times differ).
    let parts = |text: &str| -> Result<Vec<(u64, f64, f64)>> {
        text.lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l)?;
                let p = &v["pretrain"];
                Ok((
                    v["epoch"].as_u64().ok_or("epoch")?,
                    p["loss"].as_f64().ok_or("loss")?,
                    p["id_accuracy"].as_f64().ok_or("id_accuracy")?,
                ))
            })
            .collect()
    };
    // The epoch's sums pass through state.json when resuming: equal up to the last bits
    // of serde_json's float parsing.
    let resumed = std::fs::read_to_string(parted.join("metrics.jsonl"))?;
    let (a, b) = (parts(&resumed)?, parts(&lines)?);
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        let close = |p: f64, q: f64| (p - q).abs() <= 1e-12 * q.abs().max(1.0);
        assert!(
            x.0 == y.0 && close(x.1, y.1) && close(x.2, y.2),
            "the resumed run's metrics: {a:?} vs {b:?}"
        );
    }

    // Fine-tuning: every tensor but the head's (and the mask token) taken over, values equal.
    let stored = tensors(&file(&whole))?;
    assert!(stored.contains_key("pretrain.mask_token"));
    // The task's model reads the same field tokens (their vocabulary) with 10 classes.
    let vocab = tempest_model::load_config(&whole.join("last"))?.vocab_size;
    assert_eq!(vocab, tempest_tokenize::ENERGY_VOCAB_SIZE);
    let base = Config {
        vocab_size: vocab,
        ..Config::tiny()
    };
    let task = base
        .clone()
        .with_num_classes(10)
        .with_reconstruction_weight(0.1);
    let (_, varmap) = init_seeded(&task, &Device::Cpu, DType::F32, 8)?;
    let report = init_from_pretrained(&varmap, &whole)?;
    assert_eq!(
        report.unused,
        ["head.bias", "head.weight", "pretrain.mask_token"]
    );
    assert_eq!(report.fresh, ["head.bias", "head.weight"]);
    let vars = varmap.data().lock().map_err(|_| "lock")?.clone();
    assert_eq!(report.loaded.len(), vars.len() - 2);
    for name in &report.loaded {
        let a: Vec<f32> = vars[name].as_tensor().flatten_all()?.to_vec1()?;
        let b: Vec<f32> = stored[name].flatten_all()?.to_vec1()?;
        assert_eq!(a, b, "{name}");
    }
    assert!(report
        .loaded
        .iter()
        .any(|n| n.starts_with("block_decoder.")));
    assert_eq!(vars["head.weight"].dims(), [10, 64]);
    // Without D_t in the task's model, D_t's tensors are left behind.
    let (_, plain) = init_seeded(&base, &Device::Cpu, DType::F32, 8)?;
    let r = init_from_pretrained(&plain, &whole.join("last"))?;
    assert!(r.unused.iter().any(|n| n.starts_with("block_decoder.")));

    // Another shape is refused, naming the tensor and the file.
    let mut wider = base.clone().with_num_classes(10);
    wider.context_encoder.dim = 32;
    wider.context_encoder.mlp_dim = 128;
    let (_, other) = init_seeded(&wider, &Device::Cpu, DType::F32, 8)?;
    let err = init_from_pretrained(&other, &whole)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.safetensors") && err.contains("has shape") && err.contains('"'),
        "{err}"
    );
    let err = init_from_pretrained(&other, &scratch("pretrain-none")?)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no checkpoint"), "{err}");

    // `train` from the pretrained weights with E_t and M held still in its first epoch: after
    // one step they are the pretrained ones, while E_c has moved.
    let plan = SplitPlan::standard(&dataset)?;
    let tuned = scratch("pretrain-tuned")?;
    let mut ft = quick_options(6);
    ft.init = Some(whole.clone());
    ft.freeze_block_encoder = 1;
    ft.stop_after_steps = Some(1);
    // The task's configuration names the flatten mixer (as the audio recipe does): the
    // pretrained model's linear mixer is taken over instead of a fresh one. It also names
    // the recipe's convolution over blocks, which the pretrained model lacks: it is added.
    let flatten = Config {
        mixer: tempest_model::MixerKind::Flatten,
        context_conv: 5,
        ..cfg.clone()
    };
    assert_eq!(cfg.mixer, tempest_model::MixerKind::Linear);
    let run = train(&dataset, &plan, &flatten, &ft, &tuned, false)?;
    assert!(run.interrupted);
    assert_eq!(
        tempest_model::load_config(&tuned.join("last"))?.mixer,
        tempest_model::MixerKind::Linear
    );
    assert_eq!(
        tempest_model::load_config(&tuned.join("last"))?.context_conv,
        5
    );
    let after = tensors(&file(&tuned))?;
    let conv = "context_encoder.conv.fc1.weight";
    assert!(after.contains_key(conv) && !stored.contains_key(conv));
    for name in [
        "embed.bytes.weight",
        "block_encoder.layers.0.attn.q.weight",
        "mixer.mix",
    ] {
        let a: Vec<f32> = after[name].flatten_all()?.to_vec1()?;
        let b: Vec<f32> = stored[name].flatten_all()?.to_vec1()?;
        assert_eq!(a, b, "{name} moved while frozen");
    }
    let name = "context_encoder.layers.0.attn.q.weight";
    let a: Vec<f32> = after[name].flatten_all()?.to_vec1()?;
    let b: Vec<f32> = stored[name].flatten_all()?.to_vec1()?;
    assert_ne!(a, b, "{name} did not train");
    for d in [whole, parted, tuned] {
        let _ = std::fs::remove_dir_all(d);
    }
    Ok(())
}

#[test]
fn an_embedding_target_resumes_exactly_with_its_teacher_and_leaves_its_head_behind() -> Result<()> {
    let dataset = spoken_words()?;
    let train_split = ["train".to_string()];
    let masking = Masking {
        target: PretrainTarget::Both,
        teacher_decay: 0.9,
        ..Masking::default()
    };
    let o = quick_options(5);
    let cfg = Config::tiny();
    let whole = scratch("pretrain-emb-whole")?;
    let r = pretrain(&dataset, &train_split, &cfg, &o, &masking, &whole, false)?;
    assert_eq!((r.epochs, r.steps), (2, 4));
    // Both parts of the loss are logged and add up to it.
    let lines = std::fs::read_to_string(whole.join("metrics.jsonl"))?;
    for line in lines.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let p = &v["pretrain"];
        let (loss, ids, emb) = (
            p["loss"].as_f64().ok_or("loss")?,
            p["ids_loss"].as_f64().ok_or("ids_loss")?,
            p["embedding_loss"].as_f64().ok_or("embedding_loss")?,
        );
        assert!(ids > 0.0 && emb > 0.0, "{line}");
        assert!((loss - ids - emb).abs() < 1e-6 * loss, "{line}");
    }
    let teacher = |d: &Path| d.join("last").join(tempest_train::pretrain::TEACHER_FILE);
    let t = tensors(&teacher(&whole))?;
    let w = tensors(&whole.join("last").join(tempest_model::WEIGHTS_FILE))?;
    // The teacher is the model's variables (no `pretrain.` ones), lagging behind them.
    assert!(t
        .keys()
        .all(|k| !k.starts_with("pretrain.") && w.contains_key(k)));
    assert_eq!(t.len() + 3, w.len());
    let name = "context_encoder.layers.0.attn.q.weight";
    let (a, b): (Vec<f32>, Vec<f32>) = (
        t[name].flatten_all()?.to_vec1()?,
        w[name].flatten_all()?.to_vec1()?,
    );
    assert_ne!(a, b, "the teacher equals the model after 4 steps");

    // Stopped after one step and resumed: the same model and teacher to the bit.
    let parted = scratch("pretrain-emb-parted")?;
    let mut stop = o.clone();
    stop.stop_after_steps = Some(1);
    assert!(
        pretrain(
            &dataset,
            &train_split,
            &cfg,
            &stop,
            &masking,
            &parted,
            false
        )?
        .interrupted
    );
    let saved: Masking = tempest_train::checkpoint::read_json(
        &parted
            .join("last")
            .join(tempest_train::pretrain::MASKING_FILE),
    )?;
    assert_eq!(saved, masking);
    let r2 = pretrain(&dataset, &train_split, &cfg, &o, &masking, &parted, true)?;
    assert_eq!(r2.steps, 4);
    let weights = |d: &Path| d.join("last").join(tempest_model::WEIGHTS_FILE);
    assert_eq!(
        std::fs::read(weights(&whole))?,
        std::fs::read(weights(&parted))?
    );
    assert_eq!(
        std::fs::read(teacher(&whole))?,
        std::fs::read(teacher(&parted))?
    );
    // A checkpoint that lost its teacher is refused by name.
    std::fs::remove_file(teacher(&parted))?;
    let err = pretrain(&dataset, &train_split, &cfg, &o, &masking, &parted, true)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("teacher") && err.contains(tempest_train::pretrain::TEACHER_FILE),
        "{err}"
    );

    // Fine-tuning leaves the head behind with the mask token.
    let task = Config {
        vocab_size: tempest_model::load_config(&whole.join("last"))?.vocab_size,
        ..Config::tiny()
    }
    .with_num_classes(10);
    let (_, varmap) = init_seeded(&task, &Device::Cpu, DType::F32, 8)?;
    let report = init_from_pretrained(&varmap, &whole)?;
    assert!(report
        .unused
        .iter()
        .any(|n| n == "pretrain.embed_head.weight"));
    assert!(report.loaded.iter().all(|n| !n.starts_with("pretrain.")));
    for d in [whole, parted] {
        let _ = std::fs::remove_dir_all(d);
    }
    Ok(())
}

#[test]
fn tokenizer_config_is_saved_with_the_pretrained_checkpoint() -> Result<()> {
    // `train --init` must read files as pretraining did: the checkpoint keeps the tokenizer.
    let dataset = spoken_words()?;
    let dir = scratch("pretrain-tok")?;
    let mut o = quick_options(2);
    o.epochs = 1;
    o.stop_after_steps = Some(1);
    pretrain_tiny(&dataset, &[], &o, &dir)?;
    let last = dir.join("last");
    let tok = saved_tokenizer(&last)?;
    assert_eq!(tok.tokens, tempest_tokenize::BlockTokens::FieldsAndEnergy);
    let masking: Masking =
        tempest_train::checkpoint::read_json(&last.join(tempest_train::pretrain::MASKING_FILE))?;
    assert_eq!(masking, Masking::default());
    let config = tempest_model::load_config(&last)?;
    assert!(config.has_block_decoder());
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

/// One pretraining over MP3 and JPEG files (the spoken words beside real JPEG files): both
/// formats counted, each read as its recipe reads it (MCUs cut to the image recipe's 8
/// bytes), one vocabulary saved with the checkpoint, and a JPEG-only fine-tuning takes the
/// pretrained block encoder over.
#[test]
fn one_pretraining_reads_mp3_and_jpeg_files_together() -> Result<()> {
    use cff_blocks::Format;
    let words = spoken_words()?;
    let fixtures = repo().join("crates/cff-blocks/tests/fixtures/jpeg");
    let jpegs = [
        "gray28_q75.jpg",
        "gray28_q95_opt.jpg",
        "c420_q75.jpg",
        "c444_q75.jpg",
    ];
    let images = Dataset::from_rows(jpegs.iter().map(|name| {
        (
            name.to_string(),
            "picture".to_string(),
            "train".to_string(),
            "jpeg".to_string(),
            fixtures.join(name),
        )
    }));
    let mixed = Dataset::merge(vec![words, images.clone()]);
    let variants: Vec<String> = mixed.variants();
    let formats = tempest_train::detect_formats(&mixed, &variants)?;
    assert_eq!(formats, [Format::Mp3, Format::Jpeg]);
    let mut o = quick_options(5);
    tempest_train::Recipe::for_formats(&formats, &variants)?.apply(&mut o);
    (o.epochs, o.batch_size, o.workers, o.progress) = (1, 4, 1, false);
    o.band_mask = 0;
    o.time_mask = 0;
    o.ordinal = None;
    o.stop_after_steps = Some(2);
    let dir = scratch("pretrain-mixed")?;
    let train_split = ["train".to_string()];
    let r = pretrain_tiny(&mixed, &train_split, &o, &dir)?;
    assert_eq!(r.formats, [(Format::Mp3, 16), (Format::Jpeg, 4)]);
    assert_eq!(r.steps, 2);
    assert_eq!(r.stats.files_skipped(), 0);
    let last = dir.join("last");
    let tok = saved_tokenizer(&last)?;
    assert_eq!(tok.tokens, tempest_tokenize::BlockTokens::FieldsAndEnergy);
    assert_eq!(tok.block_bytes_for(Format::Jpeg), 8);
    assert_eq!(tok.block_bytes_for(Format::Mp3), tok.max_block_bytes);
    assert!(tok.max_block_bytes > 8);
    let config = tempest_model::load_config(&last)?;
    assert_eq!(config.vocab_size, tok.tokens.vocab_size());
    // Fine-tuning on the pictures alone (bytes under the same vocabulary) takes E_t over.
    let mut ft = quick_options(6);
    ft.epochs = 1;
    ft.batch_size = 4;
    ft.tokens = Some(tok.tokens);
    ft.block_bytes = Some(8);
    ft.init = Some(dir.clone());
    let plan = SplitPlan {
        train: vec!["train".into()],
        validation: vec![],
        test: vec!["train".into()],
    };
    let run = scratch("pretrain-mixed-ft")?;
    train(&images, &plan, &Config::tiny(), &ft, &run, false)?;
    // The JPEG model's variables take the mixed model's tensors as they are.
    let jpeg_model = ft.model_config(&Config::tiny(), 1, Format::Jpeg)?;
    let (_, varmap) = init_seeded(&jpeg_model, &Device::Cpu, DType::F32, 6)?;
    let report = init_from_pretrained(&varmap, &dir)?;
    assert!(report.loaded.iter().any(|n| n == "embed.bytes.weight"));
    let pre = tensors(&last.join(tempest_model::WEIGHTS_FILE))?;
    let data = varmap.data().lock().map_err(|_| "lock")?;
    let name = "embed.bytes.weight";
    let (got, want) = (data[name].as_tensor(), &pre[name]);
    assert_eq!(got.dims(), want.dims());
    let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert_eq!(diff, 0.0);
    drop(data);
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(run);
    Ok(())
}
