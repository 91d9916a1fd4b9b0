//! Fused CPU ops with their own backward passes: GELU, softmax, attention and layer norm
//! (one op each), the byte embedding and the linear mixer's masked mix (`block_ops`), a whole
//! transformer layer (`layer`), and the embedding, E_t, its final norm and the mix as one
//! node (`block_encoder`). Each runs on f32/f64 CPU tensors; the dispatch functions of the
//! crate root choose between them, the CUDA kernels and candle's tensor ops.

use candle_core::{CpuStorage, Layout, Result};

mod attention;
pub(crate) mod block_encoder;
pub(crate) mod block_ops;
mod gelu;
pub(crate) mod layer;
mod layer_norm;
mod softmax;
#[cfg(test)]
mod tests;

pub use attention::attention;
pub use gelu::gelu;
pub use layer_norm::layer_norm;
pub use softmax::{biased_softmax, softmax};

/// Below this many elements a single thread is faster than waking the pool.
const PAR_MIN: usize = 1 << 14;
/// Elements per parallel chunk.
const CHUNK: usize = 1 << 12;

/// The elements of a contiguous CPU input (our ops take no strided views); an error for a
/// strided view.
pub fn contiguous<'a, T: candle_core::WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<T>()?[a..b]),
        None => candle_core::bail!("fused kernel: input is not contiguous"),
    }
}

/// Rows of `x` processed per parallel task.
fn rows_per_task(rows: usize, d: usize) -> usize {
    (CHUNK / d.max(1)).max(1).min(rows.max(1))
}
