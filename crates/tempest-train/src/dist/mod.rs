//! Data-parallel training across processes ("ranks"): the collective operations a run needs
//! ([`Communicator`]), the one-process backend ([`Single`], today's behaviour, no
//! communication), with the feature `mpi` an MPI backend (`Mpi`, processes started by
//! `mpirun`) and with the feature `nccl` an NCCL backend (`Nccl`, one process per GPU,
//! started by [`launch`] for `train --dist nccl --gpus 0,1`, or by `mpirun`).
//!
//! A run holds its communicator in [`TrainOptions::comm`](crate::TrainOptions::comm) ([`Comm`],
//! [`Single`] by default). With more than one rank, [`crate::train()`]:
//! - cuts every batch of the sampler's epoch plan (batches of `batch_size × world` items, the
//!   same plan on every rank for a given seed) into `world` consecutive pieces, and each rank
//!   trains on its own piece ([`tempest_tokenize::rank_piece`]): every item once per epoch
//!   across the ranks;
//! - weights each rank's gradient by its share of the batch's items and sums the shares across
//!   the ranks before clipping and the optimiser step (one all-reduce of one flat f32 buffer per
//!   step, [`crate::AdamW::all_reduce`]), so every rank steps on the gradient of the whole
//!   batch and holds the same weights;
//! - sums the epoch's metric sums across the ranks (f64), with each step;
//! - broadcasts the model configuration, the training state and the weights (and, resuming,
//!   the optimiser state) from rank 0, which alone reads and writes checkpoints, metrics and
//!   plots, and evaluates;
//! - ends the whole job ([`Communicator::abort`]) when any rank fails, instead of leaving the
//!   others waiting.

use std::fmt;
use std::sync::Arc;

use crate::{Error, Result};

#[cfg(feature = "mpi")]
mod mpi;
#[cfg(feature = "mpi")]
pub use self::mpi::Mpi;
#[cfg(feature = "nccl")]
mod nccl;
#[cfg(feature = "nccl")]
pub use self::nccl::{new_id as new_nccl_id, Nccl};
mod launch;
pub use self::launch::{launch, run_ranks};

/// The collective operations of data-parallel training. Every rank must call the same
/// operations in the same order with buffers of the same length (as MPI's collectives).
pub trait Communicator: Send + Sync + fmt::Debug {
    /// This process's rank, from 0.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn world_size(&self) -> usize;
    /// Replaces `data` by its element-wise sum over all ranks.
    fn all_reduce_sum_f32(&self, data: &mut [f32]) -> Result<()>;
    /// Replaces `data` by its element-wise sum over all ranks.
    fn all_reduce_sum_f64(&self, data: &mut [f64]) -> Result<()>;
    /// Replaces `data` by rank 0's.
    fn broadcast_f32(&self, data: &mut [f32]) -> Result<()>;
    /// Replaces `data` (of any length) by rank 0's.
    fn broadcast_bytes(&self, data: &mut Vec<u8>) -> Result<()>;
    /// Returns when every rank has called it.
    fn barrier(&self) -> Result<()>;
    /// Ends every rank of the job with `code` (a rank that failed calls this so that the
    /// others do not wait for it forever).
    fn abort(&self, code: i32) -> !;
    /// The backend's name (`none`, `mpi`, `nccl`).
    fn backend(&self) -> &'static str;
    /// The GPU this rank's collectives are bound to (NCCL's), which its training must use;
    /// `None` where any device will do.
    fn gpu(&self) -> Option<usize> {
        None
    }
}

/// One process: rank 0 of 1; every operation leaves its data as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct Single;

impl Communicator for Single {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_sum_f32(&self, _data: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn all_reduce_sum_f64(&self, _data: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn broadcast_f32(&self, _data: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn broadcast_bytes(&self, _data: &mut Vec<u8>) -> Result<()> {
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
    fn backend(&self) -> &'static str {
        "none"
    }
}

/// A shared handle on a run's [`Communicator`] ([`Single`] by default), as
/// [`TrainOptions::comm`](crate::TrainOptions::comm) holds it. Two handles are equal when they
/// name the same backend, rank and world size.
#[derive(Clone)]
pub struct Comm(Arc<dyn Communicator>);

impl Comm {
    /// A handle on `c`.
    pub fn new(c: impl Communicator + 'static) -> Self {
        Comm(Arc::new(c))
    }

    /// Whether there is more than one rank.
    pub fn is_distributed(&self) -> bool {
        self.0.world_size() > 1
    }

    /// Whether this is rank 0 (the rank that writes).
    pub fn is_root(&self) -> bool {
        self.0.rank() == 0
    }
}

impl Default for Comm {
    fn default() -> Self {
        Comm::new(Single)
    }
}

impl std::ops::Deref for Comm {
    type Target = dyn Communicator;
    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Comm({}, rank {} of {})",
            self.backend(),
            self.rank(),
            self.world_size()
        )
    }
}

impl PartialEq for Comm {
    fn eq(&self, other: &Self) -> bool {
        (self.backend(), self.rank(), self.world_size())
            == (other.backend(), other.rank(), other.world_size())
    }
}

/// How a run communicates (`train --dist none|mpi`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// One process ([`Single`]).
    #[default]
    None,
    /// MPI (`Mpi`, feature `mpi`): one process per rank, started by `mpirun`.
    Mpi,
    /// NCCL (`Nccl`, feature `nccl`): one process per GPU, started by [`launch`] or `mpirun`.
    Nccl,
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "none" => Ok(Backend::None),
            "mpi" => Ok(Backend::Mpi),
            "nccl" => Ok(Backend::Nccl),
            other => Err(format!("{other:?}: none, mpi or nccl")),
        }
    }
}

impl Backend {
    /// Opens the backend: [`Single`], or MPI initialised once per process (an error in a build
    /// without the feature `mpi`, or when MPI was initialised already).
    pub fn open(self) -> Result<Comm> {
        match self {
            Backend::None => Ok(Comm::default()),
            #[cfg(feature = "mpi")]
            Backend::Mpi => Ok(Comm::new(Mpi::init()?)),
            #[cfg(not(feature = "mpi"))]
            Backend::Mpi => Err(Error::setting(
                "dist",
                "mpi needs a build with the feature `mpi` (cargo build --features mpi; \
                 docs/distributed.md)",
            )),
            #[cfg(feature = "nccl")]
            Backend::Nccl => Ok(Comm::new(Nccl::from_env()?)),
            #[cfg(not(feature = "nccl"))]
            Backend::Nccl => Err(Error::setting(
                "dist",
                "nccl needs a build with the feature `nccl` (cargo build --features nccl, with \
                 nvcc or CUDARC_CUDA_VERSION set; docs/distributed.md)",
            )),
        }
    }
}

/// The environment variable that gives a process its rank (set by [`launch`]).
pub const RANK_VAR: &str = "TEMPEST_RANK";
/// The environment variable that gives the number of ranks (set by [`launch`]).
pub const WORLD_SIZE_VAR: &str = "TEMPEST_WORLD_SIZE";
/// The environment variable that gives a rank its GPU ordinal (set by [`launch`]; `mpirun`'s
/// `OMPI_COMM_WORLD_LOCAL_RANK` stands in where it is missing).
pub const LOCAL_RANK_VAR: &str = "TEMPEST_LOCAL_RANK";
/// The environment variable that carries NCCL's unique id to the ranks, as 256 hex digits
/// (set by [`launch`]).
pub const NCCL_ID_VAR: &str = "TEMPEST_NCCL_ID";

/// What the environment says about this process's place in a job that [`launch`] started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankEnv {
    /// This process's rank.
    pub rank: usize,
    /// The number of ranks.
    pub world_size: usize,
    /// The GPU ordinal of this rank (its rank where not given).
    pub local_rank: usize,
    /// NCCL's unique id, decoded from [`NCCL_ID_VAR`].
    pub nccl_id: Option<Vec<u8>>,
}

impl RankEnv {
    /// Reads [`RANK_VAR`], [`WORLD_SIZE_VAR`], [`LOCAL_RANK_VAR`] and [`NCCL_ID_VAR`] through
    /// `var`: `None` where the rank is not set; an error naming the variable where a value is
    /// malformed or the rank is not below the world size.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        let Some(rank) = var(RANK_VAR) else {
            return Ok(None);
        };
        let rank = whole_number(RANK_VAR, &rank)?;
        let world_size = match var(WORLD_SIZE_VAR) {
            Some(v) => whole_number(WORLD_SIZE_VAR, &v)?,
            None => {
                return Err(Error::setting(
                    "dist",
                    format!("{RANK_VAR} is set but {WORLD_SIZE_VAR} is not"),
                ))
            }
        };
        if rank >= world_size {
            return Err(Error::setting(
                "dist",
                format!("{RANK_VAR}={rank} is not below {WORLD_SIZE_VAR}={world_size}"),
            ));
        }
        let local_rank = match var(LOCAL_RANK_VAR) {
            Some(v) => whole_number(LOCAL_RANK_VAR, &v)?,
            None => rank,
        };
        let nccl_id = match var(NCCL_ID_VAR) {
            Some(v) => Some(hex_decode(&v).ok_or_else(|| {
                Error::setting(
                    "dist",
                    format!("{NCCL_ID_VAR}: not an even number of hex digits"),
                )
            })?),
            None => None,
        };
        Ok(Some(RankEnv {
            rank,
            world_size,
            local_rank,
            nccl_id,
        }))
    }

    /// [`RankEnv::from_vars`] on this process's environment.
    pub fn from_env() -> Result<Option<Self>> {
        Self::from_vars(|k| std::env::var(k).ok())
    }
}

/// Whether `mpirun` (Open MPI's or a PMI launcher) started this process.
pub fn started_by_mpirun() -> bool {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"]
        .iter()
        .any(|k| std::env::var_os(k).is_some())
}

/// This process's GPU ordinal from [`LOCAL_RANK_VAR`] or Open MPI's
/// `OMPI_COMM_WORLD_LOCAL_RANK`, if either is set.
pub fn local_rank_from_env() -> Result<Option<usize>> {
    for k in [LOCAL_RANK_VAR, "OMPI_COMM_WORLD_LOCAL_RANK"] {
        if let Ok(v) = std::env::var(k) {
            return whole_number(k, &v).map(Some);
        }
    }
    Ok(None)
}

/// The value `v` of environment variable `name` as a whole number, or an error naming both.
fn whole_number(name: &str, v: &str) -> Result<usize> {
    v.trim()
        .parse()
        .map_err(|_| Error::setting("dist", format!("{name}={v:?}: not a whole number")))
}

/// `bytes` as lower-case hex digits.
pub fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of an even number of hex digits; `None` for anything else.
pub fn hex_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim().as_bytes();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok())
        .collect()
}

/// Sends `data`'s f32 values from rank 0 to every rank, as one buffer: `data` are the
/// tensors of every rank in the same order and shapes; each is replaced by rank 0's, in its
/// own dtype and on its own device.
pub(crate) fn broadcast_tensors(
    comm: &dyn Communicator,
    data: &[candle_core::Tensor],
) -> Result<Vec<candle_core::Tensor>> {
    let mut buf = Vec::with_capacity(data.iter().map(|t| t.elem_count()).sum());
    for t in data {
        buf.extend(
            t.flatten_all()?
                .to_dtype(candle_core::DType::F32)?
                .to_vec1::<f32>()?,
        );
    }
    comm.broadcast_f32(&mut buf)?;
    let mut off = 0;
    data.iter()
        .map(|t| {
            let n = t.elem_count();
            let part = buf.get(off..off + n).ok_or_else(|| {
                Error::setting("dist", "a broadcast buffer shorter than its tensors")
            })?;
            off += n;
            Ok(
                candle_core::Tensor::from_slice(part, t.shape(), &candle_core::Device::Cpu)?
                    .to_dtype(t.dtype())?
                    .to_device(t.device())?,
            )
        })
        .collect()
}

/// Runs `f` on a communicator with several ranks and ends the whole job when it fails on this
/// rank (its error on standard error, then [`Communicator::abort`]): the other ranks would
/// otherwise wait for this one in their next collective operation forever. With one rank, or
/// on success, returns `f`'s result.
pub fn abort_on_error<T, E: fmt::Display>(
    comm: &Comm,
    f: impl FnOnce() -> std::result::Result<T, E>,
) -> std::result::Result<T, E> {
    match f() {
        Err(e) if comm.is_distributed() => {
            eprintln!(
                "rank {} of {}: {e}; ending the job",
                comm.rank(),
                comm.world_size()
            );
            comm.abort(1)
        }
        r => r,
    }
}

/// Ranks as threads of one process, for tests of what runs across ranks without MPI: each
/// collective meets at a barrier and sums (or copies rank 0's data) through shared buffers.
#[cfg(test)]
pub(crate) mod threads {
    use std::sync::{Arc, Barrier, Mutex};

    use super::Communicator;
    use crate::Result;

    #[derive(Debug)]
    struct Shared {
        barrier: Barrier,
        f32s: Mutex<Vec<f32>>,
        f64s: Mutex<Vec<f64>>,
        bytes: Mutex<Vec<u8>>,
    }

    /// One rank of [`ranks`].
    #[derive(Debug, Clone)]
    pub(crate) struct ThreadRank {
        rank: usize,
        world: usize,
        shared: Arc<Shared>,
    }

    /// `world` ranks that meet through shared memory; give each to a thread of its own.
    pub(crate) fn ranks(world: usize) -> Vec<ThreadRank> {
        let shared = Arc::new(Shared {
            barrier: Barrier::new(world),
            f32s: Mutex::new(Vec::new()),
            f64s: Mutex::new(Vec::new()),
            bytes: Mutex::new(Vec::new()),
        });
        (0..world)
            .map(|rank| ThreadRank {
                rank,
                world,
                shared: Arc::clone(&shared),
            })
            .collect()
    }

    /// Runs `f` on `world` ranks, each on a thread of its own; their results in rank order
    /// (the first error if any failed).
    pub(crate) fn run<T: Send>(
        world: usize,
        f: impl Fn(ThreadRank) -> Result<T> + Sync,
    ) -> Result<Vec<T>> {
        let f = &f;
        std::thread::scope(|s| {
            let handles: Vec<_> = ranks(world)
                .into_iter()
                .map(|rank| s.spawn(move || f(rank)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .map_err(|_| crate::Error::setting("threads", "a rank's thread panicked"))?
                })
                .collect()
        })
    }

    fn sum<T: Copy + Default + std::ops::AddAssign>(
        r: &ThreadRank,
        buf: &Mutex<Vec<T>>,
        data: &mut [T],
    ) {
        if r.rank == 0 {
            *buf.lock().expect("buffer") = vec![T::default(); data.len()];
        }
        r.shared.barrier.wait();
        for (s, d) in buf.lock().expect("buffer").iter_mut().zip(data.iter()) {
            *s += *d;
        }
        r.shared.barrier.wait();
        data.copy_from_slice(&buf.lock().expect("buffer"));
        r.shared.barrier.wait();
    }

    impl Communicator for ThreadRank {
        fn rank(&self) -> usize {
            self.rank
        }
        fn world_size(&self) -> usize {
            self.world
        }
        fn all_reduce_sum_f32(&self, data: &mut [f32]) -> Result<()> {
            sum(self, &self.shared.f32s, data);
            Ok(())
        }
        fn all_reduce_sum_f64(&self, data: &mut [f64]) -> Result<()> {
            sum(self, &self.shared.f64s, data);
            Ok(())
        }
        fn broadcast_f32(&self, data: &mut [f32]) -> Result<()> {
            if self.rank == 0 {
                *self.shared.f32s.lock().expect("buffer") = data.to_vec();
            }
            self.shared.barrier.wait();
            data.copy_from_slice(&self.shared.f32s.lock().expect("buffer"));
            self.shared.barrier.wait();
            Ok(())
        }
        fn broadcast_bytes(&self, data: &mut Vec<u8>) -> Result<()> {
            if self.rank == 0 {
                *self.shared.bytes.lock().expect("buffer") = data.clone();
            }
            self.shared.barrier.wait();
            *data = self.shared.bytes.lock().expect("buffer").clone();
            self.shared.barrier.wait();
            Ok(())
        }
        fn barrier(&self) -> Result<()> {
            self.shared.barrier.wait();
            Ok(())
        }
        fn abort(&self, code: i32) -> ! {
            std::process::exit(code)
        }
        fn backend(&self) -> &'static str {
            "threads"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_leaves_data_alone_and_is_rank_zero_of_one() -> Result<()> {
        let c = Comm::default();
        assert_eq!((c.rank(), c.world_size(), c.backend()), (0, 1, "none"));
        assert!(!c.is_distributed() && c.is_root());
        let mut a = [1.5f32, -2.0];
        c.all_reduce_sum_f32(&mut a)?;
        c.broadcast_f32(&mut a)?;
        assert_eq!(a, [1.5, -2.0]);
        let mut b = vec![7u8, 8];
        c.broadcast_bytes(&mut b)?;
        assert_eq!(b, [7, 8]);
        Ok(())
    }

    #[test]
    fn backend_names_parse_and_mpi_needs_its_feature() {
        assert_eq!("none".parse::<Backend>(), Ok(Backend::None));
        assert_eq!("mpi".parse::<Backend>(), Ok(Backend::Mpi));
        assert_eq!("nccl".parse::<Backend>(), Ok(Backend::Nccl));
        assert!("gloo"
            .parse::<Backend>()
            .is_err_and(|e| e.contains("none, mpi or nccl")));
        #[cfg(not(feature = "mpi"))]
        assert!(Backend::Mpi
            .open()
            .is_err_and(|e| e.to_string().contains("feature `mpi`")));
        #[cfg(not(feature = "nccl"))]
        assert!(Backend::Nccl
            .open()
            .is_err_and(|e| e.to_string().contains("feature `nccl`")));
        // With the feature: rank 0 of 1 on a machine with a GPU and NCCL; elsewhere an error
        // that names NCCL (cudarc's panic on a missing library caught), never a crash.
        #[cfg(feature = "nccl")]
        match Backend::Nccl.open() {
            Ok(c) => assert_eq!((c.backend(), c.world_size(), c.gpu()), ("nccl", 1, Some(0))),
            Err(e) => assert!(e.to_string().contains("nccl"), "{e}"),
        }
    }

    #[test]
    fn rank_variables_are_read_and_checked() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(RankEnv::from_vars(vars(&[])).unwrap(), None);
        let env = RankEnv::from_vars(vars(&[
            (RANK_VAR, "1"),
            (WORLD_SIZE_VAR, "2"),
            (LOCAL_RANK_VAR, "3"),
            (NCCL_ID_VAR, "00ff7a"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            env,
            RankEnv {
                rank: 1,
                world_size: 2,
                local_rank: 3,
                nccl_id: Some(vec![0, 255, 0x7a]),
            }
        );
        // The GPU defaults to the rank.
        let env = RankEnv::from_vars(vars(&[(RANK_VAR, "1"), (WORLD_SIZE_VAR, "4")]))
            .unwrap()
            .unwrap();
        assert_eq!((env.local_rank, env.nccl_id), (1, None));
        for (bad, names) in [
            (&[(RANK_VAR, "x"), (WORLD_SIZE_VAR, "2")][..], RANK_VAR),
            (&[(RANK_VAR, "0")][..], WORLD_SIZE_VAR),
            (
                &[(RANK_VAR, "2"), (WORLD_SIZE_VAR, "2")][..],
                WORLD_SIZE_VAR,
            ),
            (
                &[(RANK_VAR, "0"), (WORLD_SIZE_VAR, "2"), (NCCL_ID_VAR, "abc")][..],
                NCCL_ID_VAR,
            ),
        ] {
            let owned: Vec<(String, String)> = bad
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let err =
                RankEnv::from_vars(|k| owned.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
                    .unwrap_err()
                    .to_string();
            assert!(err.contains(names), "{err}");
        }
    }

    #[test]
    fn hex_round_trips_an_id() {
        let id: Vec<u8> = (0..128u8).map(|i| i.wrapping_mul(37)).collect();
        let hex = hex_encode(&id);
        assert_eq!(hex.len(), 256);
        assert_eq!(hex_decode(&hex), Some(id));
        assert_eq!(hex_decode("0g"), None);
        assert_eq!(hex_decode("abc"), None);
    }
}
