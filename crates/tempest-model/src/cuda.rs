//! Our CUDA kernels (tempest-kernels' [`tempest_kernels::cuda`], feature `cuda`), and in
//! [`check`] the GPU check with the model-level comparisons.

pub use tempest_kernels::cuda::*;

pub mod check;
