//! Where a run's tensors live and in which precision: the `--device cpu|cuda|cuda:N` and
//! `--dtype f32|bf16` flags of the examples.
//!
//! A checkpoint does not depend on either: weights are written as f32 safetensors with no
//! device in them (`crate::save`), so a model trained on a GPU loads on the CPU and the
//! reverse.
//!
//! ```
//! use tempest_model::{DeviceChoice, Precision};
//! let d: DeviceChoice = "cuda:1".parse()?;
//! assert_eq!(d, DeviceChoice::Cuda(1));
//! assert_eq!("cpu".parse::<DeviceChoice>()?.open()?.is_cpu(), true);
//! assert!("tpu".parse::<DeviceChoice>().is_err());
//! assert_eq!("bf16".parse::<Precision>()?, Precision::Bf16);
//! # Ok::<(), tempest_model::Error>(())
//! ```

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device};

use crate::{Error, Result};

/// Which device a run uses (`--device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// The CPU (the default).
    #[default]
    Cpu,
    /// The CUDA GPU of this ordinal (`cuda` is `cuda:0`).
    Cuda(usize),
}

impl DeviceChoice {
    /// Opens the device: the CPU always; a GPU only in a build with the `cuda` feature and on
    /// a machine where CUDA finds that GPU. The error says which of the two is missing.
    pub fn open(&self) -> Result<Device> {
        match *self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda(n) => {
                if !cfg!(feature = "cuda") {
                    return Err(Error::Device(format!(
                        "--device {self}: this build has no CUDA support; rebuild with \
                         `--features cuda` (needs the CUDA toolkit's nvcc, \
                         scripts/install-cuda-toolkit.sh) on a machine with an NVIDIA GPU"
                    )));
                }
                Device::new_cuda(n).map_err(|e| {
                    Error::Device(format!(
                        "--device {self}: no usable CUDA GPU with ordinal {n} ({e})"
                    ))
                })
            }
        }
    }

    /// What `device` is, as a choice (the inverse of [`DeviceChoice::open`]).
    pub fn of(device: &Device) -> Self {
        match device.location() {
            candle_core::DeviceLocation::Cuda { gpu_id } => DeviceChoice::Cuda(gpu_id),
            _ => DeviceChoice::Cpu,
        }
    }

    /// The accepted spellings, for usage texts.
    pub const NAMES: &'static str = "cpu|cuda|cuda:N";
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl FromStr for DeviceChoice {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::Device(format!(
                "--device {s:?}: one of {} (N: the GPU's ordinal, from 0)",
                Self::NAMES
            ))
        };
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda(0)),
            other => {
                let n = other.strip_prefix("cuda:").ok_or_else(bad)?;
                n.parse().map(DeviceChoice::Cuda).map_err(|_| bad())
            }
        }
    }
}

/// The precision of the weights and activations (`--dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// 32-bit floats (the default; the fused CPU kernels' type).
    #[default]
    F32,
    /// bfloat16: half the memory and the GPU's tensor cores; for GPUs.
    Bf16,
}

impl Precision {
    /// The candle dtype on `device`. bf16 is refused on the CPU, where training is built,
    /// tested and measured in f32 only (the fused CPU kernels read f32 slices).
    pub fn dtype(&self, device: &Device) -> Result<DType> {
        match self {
            Precision::F32 => Ok(DType::F32),
            Precision::Bf16 if device.is_cpu() => Err(Error::Device(
                "--dtype bf16 is for a GPU (--device cuda); the CPU trains in f32".into(),
            )),
            Precision::Bf16 => Ok(DType::BF16),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}

impl FromStr for Precision {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(Precision::F32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            _ => Err(Error::Device(format!("--dtype {s:?}: one of f32|bf16"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_print_and_open() -> Result<()> {
        for (text, want) in [
            ("cpu", DeviceChoice::Cpu),
            ("CPU", DeviceChoice::Cpu),
            ("cuda", DeviceChoice::Cuda(0)),
            ("cuda:3", DeviceChoice::Cuda(3)),
        ] {
            let d: DeviceChoice = text.parse()?;
            assert_eq!(d, want, "{text}");
            assert_eq!(d.to_string().parse::<DeviceChoice>()?, d);
        }
        for bad in ["", "cuda:", "cuda:x", "cuda:-1", "metal", "cpu:0"] {
            let e = bad.parse::<DeviceChoice>().unwrap_err().to_string();
            assert!(
                e.contains("--device") && e.contains("cpu|cuda|cuda:N"),
                "{bad}: {e}"
            );
        }
        let cpu = DeviceChoice::Cpu.open()?;
        assert!(cpu.is_cpu());
        assert_eq!(DeviceChoice::of(&cpu), DeviceChoice::Cpu);
        Ok(())
    }

    #[test]
    #[cfg(not(feature = "cuda"))]
    fn cuda_without_the_feature_says_so() {
        let e = DeviceChoice::Cuda(0).open().unwrap_err().to_string();
        assert!(
            e.contains("--device cuda:0") && e.contains("--features cuda"),
            "{e}"
        );
    }

    #[test]
    fn bf16_is_refused_on_the_cpu_with_the_flag_named() -> Result<()> {
        assert_eq!(Precision::F32.dtype(&Device::Cpu)?, DType::F32);
        let e = Precision::Bf16.dtype(&Device::Cpu).unwrap_err().to_string();
        assert!(
            e.contains("--dtype bf16") && e.contains("--device cuda"),
            "{e}"
        );
        assert!("f16".parse::<Precision>().is_err());
        assert_eq!("BF16".parse::<Precision>()?.to_string(), "bf16");
        Ok(())
    }
}
