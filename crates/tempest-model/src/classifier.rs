//! End-to-end classification: file bytes → blocks → tokens → model → labels with probabilities.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use tempest_tokenize::{collate, tokenize, CropContext, TokenizedItem, TokenizerConfig};

use crate::{checkpoint, Error, Result, Tempest};

/// One class and its probability.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The class index.
    pub class: usize,
    /// Its name, from the checkpoint's class names, or the index as text.
    pub label: String,
    /// Its probability.
    pub probability: f32,
}

/// A loaded model that classifies files and byte buffers. Inference runs without D_t.
#[derive(Debug, Clone)]
pub struct Classifier {
    model: Tempest,
    classes: Vec<String>,
    tokenizer: Option<TokenizerConfig>,
    device: Device,
}

impl Classifier {
    /// Wraps a model; classes are named by their index.
    pub fn new(model: Tempest, device: Device) -> Self {
        let classes = (0..model.config().num_classes)
            .map(|c| c.to_string())
            .collect();
        Classifier {
            model,
            classes,
            tokenizer: None,
            device,
        }
    }

    /// Loads a checkpoint directory ([`checkpoint::save`]'s layout) in f32, with the class
    /// names of its `config.json` (`id2label`) or, in checkpoints written before those, of an
    /// optional `classes.json`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let model = checkpoint::load(dir, device, DType::F32)?;
        let names = checkpoint::class_names(dir, model.config())?;
        let c = Classifier::new(model, device.clone());
        match names {
            Some(names) => c.with_class_names(names),
            None => Ok(c),
        }
    }

    /// Names the classes (one per class).
    pub fn with_class_names(mut self, names: Vec<String>) -> Result<Self> {
        if names.len() != self.model.config().num_classes {
            return Err(Error::Config(format!(
                "{} class names for {} classes",
                names.len(),
                self.model.config().num_classes
            )));
        }
        self.classes = names;
        Ok(self)
    }

    /// Tokenizes with `config` instead of the format's defaults (use the training settings).
    pub fn with_tokenizer(mut self, config: TokenizerConfig) -> Self {
        self.tokenizer = Some(config);
        self
    }

    /// The model.
    pub fn model(&self) -> &Tempest {
        &self.model
    }

    /// The class names, by class index.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// The tokenizer settings for `data`: the configured ones, or the format's defaults with
    /// L capped at the model's `max_block_bytes` and N centred on the middle of the file.
    fn tokenizer_for(&self, data: &[u8]) -> Result<TokenizerConfig> {
        if let Some(t) = &self.tokenizer {
            return Ok(t.clone());
        }
        let format = cff_blocks::detect(data)?;
        let t = TokenizerConfig::for_format(format);
        let l = t.max_block_bytes.min(self.model.config().max_block_bytes);
        Ok(t.with_max_block_bytes(l)
            .with_crop(tempest_tokenize::Crop::Centre))
    }

    /// Classifies a file held in memory; `path` only names it in errors. Predictions are
    /// sorted by falling probability.
    pub fn classify_bytes(&self, data: &[u8], path: &Path) -> Result<Vec<Prediction>> {
        let config = self.tokenizer_for(data)?;
        let item = tokenize(data, path, &config, CropContext::default())?;
        Ok(self.classify_items(&[&item])?.pop().unwrap_or_default())
    }

    /// Reads and classifies a file.
    pub fn classify_file(&self, path: &Path) -> Result<Vec<Prediction>> {
        let limits = match &self.tokenizer {
            Some(t) => t.reader.limits.clone(),
            None => cff_blocks::Options::default().limits,
        };
        let data = cff_blocks::load(path, &limits)?;
        self.classify_bytes(&data, path)
    }

    /// Classifies tokenized items in one batch; one sorted prediction list per item.
    pub fn classify_items(&self, items: &[&TokenizedItem]) -> Result<Vec<Vec<Prediction>>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let labels = vec![0; items.len()];
        let batch = collate(items, &labels, tempest_tokenize::PAD_ID).to_tensors(&self.device)?;
        let probs = self.model.probabilities(&batch)?.to_dtype(DType::F32)?;
        self.rank(&probs)
    }

    fn rank(&self, probs: &Tensor) -> Result<Vec<Vec<Prediction>>> {
        let rows = probs.to_vec2::<f32>()?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let mut p: Vec<Prediction> = row
                    .into_iter()
                    .enumerate()
                    .map(|(class, probability)| Prediction {
                        class,
                        label: self
                            .classes
                            .get(class)
                            .cloned()
                            .unwrap_or_else(|| class.to_string()),
                        probability,
                    })
                    .collect();
                p.sort_by(|a, b| b.probability.total_cmp(&a.probability));
                p
            })
            .collect())
    }
}
