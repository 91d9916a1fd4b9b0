//! Seeded inputs for the tests: a test draws the same numbers on every run, so a tolerance
//! that passes once passes always.

use candle_core::{DType, Device, Result, Shape, Tensor};

use crate::cuda::check::Rng;

/// A CPU tensor of normals N(`mean`, `std`²) from `rng`, in `dtype`.
pub(crate) fn normal(
    rng: &mut Rng,
    shape: impl Into<Shape>,
    mean: f64,
    std: f64,
    dtype: DType,
) -> Result<Tensor> {
    let shape = shape.into();
    let v: Vec<f64> = (0..shape.elem_count())
        .map(|_| mean + std * rng.normal())
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu)?.to_dtype(dtype)
}

/// A CPU tensor uniform in [0, 1) from `rng`, in `dtype`.
pub(crate) fn uniform(rng: &mut Rng, shape: impl Into<Shape>, dtype: DType) -> Result<Tensor> {
    let shape = shape.into();
    let v: Vec<f64> = (0..shape.elem_count()).map(|_| rng.uniform()).collect();
    Tensor::from_vec(v, shape, &Device::Cpu)?.to_dtype(dtype)
}
