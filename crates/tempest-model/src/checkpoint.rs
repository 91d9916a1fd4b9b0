//! Checkpoints: a directory holding `config.json` (the [`Config`]), `model.safetensors`
//! (every variable under its stable name, see `docs/model.md`) and [`CHECKSUMS_FILE`].

use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};

use crate::{Config, Error, Result, Tempest};

/// The configuration's file name inside a checkpoint directory.
pub const CONFIG_FILE: &str = "config.json";
/// The weights' file name inside a checkpoint directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The class names of checkpoints written before `config.json` held them (`id2label`): a
/// JSON array of strings.
pub const CLASSES_FILE: &str = "classes.json";

/// The file of a checkpoint that records each other file's length and CRC-32 (written last
/// by [`save`] and by `tempest_train::checkpoint::save`, checked by [`verify`] whenever a
/// checkpoint is loaded): the safetensors format has no checksum, so a flipped bit in a tensor
/// would otherwise load as a silently different model.
pub const CHECKSUMS_FILE: &str = "checksums.json";

/// One file's record in [`CHECKSUMS_FILE`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCheck {
    /// Its length in bytes.
    pub bytes: u64,
    /// The CRC-32 (IEEE) of its bytes.
    pub crc32: u32,
}

fn file_check(path: &Path) -> Result<FileCheck> {
    let data = std::fs::read(path).map_err(io(path))?;
    Ok(FileCheck {
        bytes: data.len() as u64,
        crc32: crc32fast::hash(&data),
    })
}

/// Writes [`CHECKSUMS_FILE`] into `dir`, listing every other file in it.
pub fn write_checksums(dir: &Path) -> Result<()> {
    let mut files = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string);
        if let Some(name) = name.filter(|n| n != CHECKSUMS_FILE && path.is_file()) {
            files.insert(name, file_check(&path)?);
        }
    }
    let path = dir.join(CHECKSUMS_FILE);
    let json = serde_json::to_string_pretty(&files).map_err(|source| Error::Json {
        path: path.clone(),
        source,
    })?;
    std::fs::write(&path, json).map_err(io(&path))
}

/// Checks the files of the checkpoint folder `dir` against its [`CHECKSUMS_FILE`]: each file
/// listed must be there with its recorded length and CRC-32, else the error names the file
/// and what differs. A checkpoint written before checksums existed (no such file) passes.
pub fn verify(dir: &Path) -> Result<()> {
    let list = dir.join(CHECKSUMS_FILE);
    if !list.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(&list).map_err(io(&list))?;
    let files: std::collections::BTreeMap<String, FileCheck> = serde_json::from_str(&text)
        .map_err(|source| Error::Json {
            path: list.clone(),
            source,
        })?;
    for (name, want) in &files {
        let path = dir.join(name);
        if !path.exists() {
            return Err(Error::Config(format!(
                "{}: missing; {CHECKSUMS_FILE} lists it",
                path.display()
            )));
        }
        let got = file_check(&path)?;
        if got.bytes != want.bytes {
            return Err(Error::Config(format!(
                "{}: {} bytes where {CHECKSUMS_FILE} says {}: the file was cut or changed after \
                 it was written",
                path.display(),
                got.bytes,
                want.bytes
            )));
        }
        if got.crc32 != want.crc32 {
            return Err(Error::Config(format!(
                "{}: CRC-32 {:08x} where {CHECKSUMS_FILE} says {:08x}: the file was damaged \
                 after it was written",
                path.display(),
                got.crc32,
                want.crc32
            )));
        }
    }
    Ok(())
}

/// Wraps a candle error about a weights file with the file's path.
fn weights(path: &Path) -> impl FnOnce(candle_core::Error) -> Error + '_ {
    move |source| Error::Weights {
        path: path.to_path_buf(),
        source,
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `config` and the variables of `varmap` into `dir` (created if missing). The weights
/// are written as f32 whatever the variables' dtype and device, so the files are the same
/// for a run on the CPU or on a GPU, and load on either.
pub fn save(dir: &Path, config: &Config, varmap: &VarMap) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let config_path = dir.join(CONFIG_FILE);
    let json = serde_json::to_string_pretty(config).map_err(|source| Error::Json {
        path: config_path.clone(),
        source,
    })?;
    std::fs::write(&config_path, json).map_err(io(&config_path))?;
    let tensors = {
        let data = varmap
            .data()
            .lock()
            .map_err(|_| Error::Config("the variables' lock is poisoned".into()))?;
        data.iter()
            .map(|(name, var)| {
                let t = var
                    .as_tensor()
                    .to_dtype(DType::F32)?
                    .to_device(&Device::Cpu)?;
                Ok((name.clone(), t))
            })
            .collect::<Result<std::collections::HashMap<String, candle_core::Tensor>>>()?
    };
    let path = dir.join(WEIGHTS_FILE);
    candle_core::safetensors::save(&tensors, &path).map_err(weights(&path))?;
    write_checksums(dir)
}

/// Reads the `config.json` of a checkpoint directory.
pub fn load_config(dir: &Path) -> Result<Config> {
    Config::from_file(&dir.join(CONFIG_FILE))
}

/// The class names of the checkpoint in `dir` whose configuration is `config`: its
/// `id2label`, else, in older checkpoints, [`CLASSES_FILE`] when present (one name per class,
/// or an error naming the file); `None` where neither names them.
pub fn class_names(dir: &Path, config: &Config) -> Result<Option<Vec<String>>> {
    if let Some(names) = config.class_names() {
        return Ok(Some(names));
    }
    let path = dir.join(CLASSES_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    let names: Vec<String> = serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.clone(),
        source,
    })?;
    if names.len() != config.num_classes {
        return Err(Error::Config(format!(
            "{}: {} class names for a model of {} classes",
            path.display(),
            names.len(),
            config.num_classes
        )));
    }
    Ok(Some(names))
}

/// Loads a checkpoint for inference: the weights are plain tensors, not variables.
pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Tempest> {
    verify(dir)?;
    let config = load_config(dir)?;
    let path = dir.join(WEIGHTS_FILE);
    let data = std::fs::read(&path).map_err(io(&path))?;
    let vb = VarBuilder::from_buffered_safetensors(data, dtype, device).map_err(weights(&path))?;
    Tempest::new(&config, vb).map_err(weights(&path))
}

/// Loads a checkpoint to train on: the model and the [`VarMap`] of its variables, on `device`
/// in `dtype` (the file's f32 weights are converted).
pub fn load_trainable(dir: &Path, device: &Device, dtype: DType) -> Result<(Tempest, VarMap)> {
    verify(dir)?;
    let config = load_config(dir)?;
    let (model, varmap) = Tempest::init(&config, device, dtype)?;
    let path = dir.join(WEIGHTS_FILE);
    let stored = candle_core::safetensors::load(&path, &Device::Cpu).map_err(weights(&path))?;
    {
        let data = varmap
            .data()
            .lock()
            .map_err(|_| Error::Config("the variables' lock is poisoned".into()))?;
        for (name, var) in data.iter() {
            let t = stored
                .get(name)
                .ok_or_else(|| Error::Config(format!("{}: no weight {name:?}", path.display())))?;
            var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
        }
    }
    Ok((model, varmap))
}
