//! Large buffers of the CPU ops, reused from one training step to the next.
//!
//! A training step of the fused layers allocates hundreds of megabytes of activations and
//! gradients (`small` on the MP3 bench batch: about 400 MB per E_t layer) and frees them at
//! the end of the step. glibc hands buffers that large back to the kernel (`munmap`, or a trim
//! of the heap's top), so every step paid again for zeroing fresh pages in page faults: in
//! `perf`, page faults and memset were about 12 % of the step. Here freed buffers wait in a
//! pool, by capacity, for the next request of at most their size; a buffer taken from the pool
//! holds stale values, so [`Pool::take`] is only for buffers the caller overwrites whole.
//!
//! The pool holds at most [`MAX_HELD`] bytes per element type; beyond that, buffers go back to
//! the allocator. [`release_scratch`] empties it (for a program that stops training and wants
//! its memory back).

use std::sync::Mutex;

use candle_core::{CpuStorage, WithDType};

/// Buffers smaller than this come and go through the allocator, whose heap keeps them. Tests
/// pool small buffers too, so that small test layers meet stale buffers.
const MIN_BYTES: usize = if cfg!(test) { 1 << 10 } else { 1 << 18 };

/// Bytes the pool of one element type keeps at most.
const MAX_HELD: usize = 2 << 30;

/// Free buffers of one element type.
#[derive(Debug)]
pub(crate) struct Pool<T> {
    free: Mutex<Vec<Vec<T>>>,
}

static F32: Pool<f32> = Pool::new();
static F64: Pool<f64> = Pool::new();

/// The element types with a pool.
pub(crate) trait Pooled: WithDType {
    fn pool() -> &'static Pool<Self>;
}

impl Pooled for f32 {
    fn pool() -> &'static Pool<f32> {
        &F32
    }
}

impl Pooled for f64 {
    fn pool() -> &'static Pool<f64> {
        &F64
    }
}

impl<T: WithDType> Pool<T> {
    const fn new() -> Self {
        Pool {
            free: Mutex::new(Vec::new()),
        }
    }

    /// A buffer of `len` elements whose values are unspecified (stale values of an earlier
    /// use, or zeros): the caller must write every element before reading any.
    pub(crate) fn take(&self, len: usize) -> Vec<T> {
        if len * std::mem::size_of::<T>() >= MIN_BYTES {
            if let Ok(mut free) = self.free.lock() {
                // The smallest buffer that fits.
                let best = free
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| v.capacity() >= len)
                    .min_by_key(|(_, v)| v.capacity())
                    .map(|(i, _)| i);
                if let Some(i) = best {
                    let mut v = free.swap_remove(i);
                    drop(free);
                    // Within the capacity: truncating is free, growing writes the gap only.
                    v.resize(len, T::zero());
                    return v;
                }
            }
        }
        vec![T::zero(); len]
    }

    /// A copy of `src` in a buffer of the pool.
    pub(crate) fn copy_of(&self, src: &[T]) -> Vec<T> {
        let mut v = self.take(src.len());
        v.copy_from_slice(src);
        v
    }

    /// Hands `v` back for a later [`Pool::take`] (or to the allocator when it is small or the
    /// pool is full).
    pub(crate) fn give(&self, v: Vec<T>) {
        let size = std::mem::size_of::<T>();
        if v.capacity() * size < MIN_BYTES {
            return;
        }
        if let Ok(mut free) = self.free.lock() {
            let held: usize = free.iter().map(|b| b.capacity() * size).sum();
            if held + v.capacity() * size <= MAX_HELD {
                free.push(v);
            }
        }
    }

    fn clear(&self) {
        if let Ok(mut free) = self.free.lock() {
            free.clear();
        }
    }

    #[cfg(test)]
    fn held(&self) -> usize {
        self.free
            .lock()
            .map(|f| f.iter().map(|b| b.capacity()).sum())
            .unwrap_or(0)
    }
}

/// Hands the buffer of a CPU storage back to its pool.
pub(crate) fn recycle(s: CpuStorage) {
    match s {
        CpuStorage::F32(v) => F32.give(v),
        CpuStorage::F64(v) => F64.give(v),
        _ => {}
    }
}

/// Frees the buffers the CPU ops keep for reuse between training steps (at most 2 GiB per
/// element type; about the memory of one step's activations). The next step allocates afresh.
pub fn release_scratch() {
    F32.clear();
    F64.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_by_capacity() {
        // A pool of its own: the statics are shared with every other test.
        let pool: Pool<f64> = Pool::new();
        let big = 1 << 16; // 512 KB of f64
        let mut a = pool.take(big);
        assert_eq!(a.len(), big);
        a.iter_mut().for_each(|v| *v = 7.0);
        let ptr = a.as_ptr();
        pool.give(a);
        assert_eq!(pool.held(), big);
        // A smaller request reuses it: same memory, stale values, the requested length.
        let b = pool.take(big / 2);
        assert_eq!((b.as_ptr(), b.len(), b[0]), (ptr, big / 2, 7.0));
        pool.give(b);
        // A larger request cannot.
        let c = pool.take(2 * big);
        assert_ne!(c.as_ptr(), ptr);
        assert!(c.iter().all(|&v| v == 0.0));
        let z = pool.take(big);
        assert_eq!(z.as_ptr(), ptr);
        // Small buffers are not kept.
        pool.give(vec![1.0; 16]);
        assert_eq!(pool.held(), 0);
        pool.give(z);
        pool.clear();
        assert_eq!(pool.held(), 0);
    }
}
