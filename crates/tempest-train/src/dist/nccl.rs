//! The NCCL backend (feature `nccl`): one process per GPU, the collectives run by NCCL on that
//! GPU through cudarc's bindings (the NCCL and CUDA driver libraries are loaded when the
//! backend opens, so a build needs neither).
//!
//! Every operation takes host slices, as [`Communicator`] does: the values are copied to the
//! GPU, reduced or broadcast there by NCCL and copied back, on a thread that owns the
//! communicator. That keeps one training loop for
//! every backend; a run on `--device cuda` pays one copy of the gradients each way per step
//! more than a reduction of the device tensors in place would (docs/distributed.md).
//!
//! The ranks share NCCL's unique id in one of three ways ([`RankEnv`]):
//! - `train --dist nccl --gpus 0,1` ([`super::launch`]) creates the id and starts one process
//!   per GPU with it in the environment ([`super::NCCL_ID_VAR`] and the rank variables);
//! - under `mpirun` (a build with the features `nccl` and `mpi`), rank 0 creates it and MPI
//!   broadcasts it;
//! - alone (no rank variables), the process is rank 0 of 1 on GPU 0 (or
//!   [`super::LOCAL_RANK_VAR`]'s): the wiring without a second GPU.

use std::sync::{mpsc, Arc, Mutex};

use cudarc::driver::{CudaContext, CudaStream, DeviceRepr};
use cudarc::nccl::safe::{Comm, Id, NcclType, ReduceOp};

use super::{Communicator, RankEnv};
use crate::{Error, Result};

fn nccl_err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::setting("dist", format!("nccl: {what}: {e:?}"))
}

/// Runs `f`, turning a panic into an error: cudarc panics when it cannot load libcuda or
/// libnccl (a machine without a GPU driver or NCCL), and a missing library is an error of the
/// run's settings, not a crash.
/// The panic hook is silenced meanwhile (its message becomes the error's; this runs while the
/// backend opens, before training starts any other thread) and restored after.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    match caught {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".into());
            Err(Error::setting(
                "dist",
                format!("nccl: {what}: {msg} (is this a machine with an NVIDIA driver and NCCL?)"),
            ))
        }
    }
}

/// What the NCCL thread is asked to do.
#[derive(Debug, Clone, Copy)]
enum Op {
    Sum,
    Broadcast,
}

/// Values carried to the NCCL thread and back.
enum Buf {
    F32(Vec<f32>),
    F64(Vec<f64>),
    U8(Vec<u8>),
    U64(Vec<u64>),
}

/// The element types the backend moves.
trait Carried: DeviceRepr + NcclType + Copy + Send + 'static {
    fn wrap(v: Vec<Self>) -> Buf;
    fn unwrap(b: Buf) -> Option<Vec<Self>>;
}

macro_rules! carried {
    ($t:ty, $v:ident) => {
        impl Carried for $t {
            fn wrap(v: Vec<Self>) -> Buf {
                Buf::$v(v)
            }
            fn unwrap(b: Buf) -> Option<Vec<Self>> {
                match b {
                    Buf::$v(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}
carried!(f32, F32);
carried!(f64, F64);
carried!(u8, U8);
carried!(u64, U64);

type Job = (Op, Buf, mpsc::Sender<Result<Buf>>);

/// NCCL over every rank of the job, on this process's GPU.
///
/// The communicator lives on a thread of its own, which runs every collective in the order
/// they are asked for (an NCCL communicator is not to be used by two threads at once, and its
/// handle cannot move between threads without `unsafe`, which this crate forbids).
pub struct Nccl {
    rank: usize,
    size: usize,
    ordinal: usize,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    worker: Option<std::thread::JoinHandle<()>>,
    /// Held for the job's life when MPI shared the id (finalised on drop, after NCCL).
    #[cfg(feature = "mpi")]
    _mpi: Option<super::Mpi>,
}

impl Drop for Nccl {
    fn drop(&mut self) {
        // Closing the channel ends the thread, which drops the communicator.
        if let Ok(mut j) = self.jobs.lock() {
            j.take();
        }
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

impl std::fmt::Debug for Nccl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nccl")
            .field("rank", &self.rank)
            .field("size", &self.size)
            .field("gpu", &self.ordinal)
            .finish()
    }
}

/// One collective on the GPU: `data` (not empty: [`Nccl::ask`] sends none) copied there,
/// reduced or broadcast, copied back.
fn run<T: Carried>(comm: &Comm, stream: &Arc<CudaStream>, op: Op, data: &mut [T]) -> Result<()> {
    let mut buf = stream
        .clone_htod(&*data)
        .map_err(|e| nccl_err("copy to the GPU", e))?;
    match op {
        Op::Sum => comm
            .all_reduce_in_place(&mut buf, &ReduceOp::Sum)
            .map_err(|e| nccl_err("ncclAllReduce", e))?,
        Op::Broadcast => comm
            .broadcast_in_place(&mut buf, 0)
            .map_err(|e| nccl_err("ncclBroadcast", e))?,
    };
    stream
        .memcpy_dtoh(&buf, data)
        .map_err(|e| nccl_err("copy from the GPU", e))?;
    stream.synchronize().map_err(|e| nccl_err("synchronize", e))
}

fn serve(comm: Comm, stream: Arc<CudaStream>, jobs: mpsc::Receiver<Job>) {
    fn go<T: Carried>(c: &Comm, s: &Arc<CudaStream>, op: Op, mut v: Vec<T>) -> Result<Buf> {
        run(c, s, op, &mut v)?;
        Ok(T::wrap(v))
    }
    for (op, buf, reply) in jobs {
        let out = match buf {
            Buf::F32(v) => go(&comm, &stream, op, v),
            Buf::F64(v) => go(&comm, &stream, op, v),
            Buf::U8(v) => go(&comm, &stream, op, v),
            Buf::U64(v) => go(&comm, &stream, op, v),
        };
        let _ = reply.send(out);
    }
}

/// A new NCCL unique id (rank 0 makes it; the others must receive it), as bytes.
pub fn new_id() -> Result<Vec<u8>> {
    guarded("creating the unique id", || {
        let id = Id::new().map_err(|e| nccl_err("ncclGetUniqueId", e))?;
        Ok(id.internal().iter().map(|&c| c as u8).collect())
    })
}

fn id_from_bytes(bytes: &[u8]) -> Result<Id> {
    let mut internal = [0 as std::ffi::c_char; 128];
    if bytes.len() != internal.len() {
        return Err(Error::setting(
            "dist",
            format!("nccl: a unique id of {} bytes (128 expected)", bytes.len()),
        ));
    }
    for (c, &b) in internal.iter_mut().zip(bytes) {
        *c = b as std::ffi::c_char;
    }
    Ok(Id::uninit(internal))
}

impl Nccl {
    /// Opens the communicator as the environment says ([`RankEnv::from_env`]): a rank of a
    /// job started by `train --gpus`, by `mpirun` (with the feature `mpi`), or alone.
    pub fn from_env() -> Result<Self> {
        match RankEnv::from_env()? {
            Some(env) => {
                let id = env.nccl_id.as_deref().ok_or_else(|| {
                    Error::setting(
                        "dist",
                        format!(
                            "nccl: rank {} of {} has no unique id in {}",
                            env.rank,
                            env.world_size,
                            super::NCCL_ID_VAR
                        ),
                    )
                })?;
                Self::join(env.rank, env.world_size, env.local_rank, id)
            }
            None if super::started_by_mpirun() => Self::from_mpi(),
            None => {
                let ordinal = super::local_rank_from_env()?.unwrap_or(0);
                let id = new_id()?;
                Self::join(0, 1, ordinal, &id)
            }
        }
    }

    #[cfg(feature = "mpi")]
    fn from_mpi() -> Result<Self> {
        let ordinal = super::local_rank_from_env()?.unwrap_or(0);
        // The GPU first: a machine without one fails here, before MPI is up.
        let ctx = Self::context(ordinal)?;
        let mpi = super::Mpi::init()?;
        let mut id = if mpi.rank() == 0 {
            new_id()?
        } else {
            Vec::new()
        };
        mpi.broadcast_bytes(&mut id)?;
        let mut me = Self::join_on(ctx, mpi.rank(), mpi.world_size(), ordinal, &id)?;
        me._mpi = Some(mpi);
        Ok(me)
    }

    #[cfg(not(feature = "mpi"))]
    fn from_mpi() -> Result<Self> {
        Err(Error::setting(
            "dist",
            "nccl under mpirun shares NCCL's id over MPI, which needs a build with the features \
             `nccl` and `mpi`; or start the ranks with `train --dist nccl --gpus 0,1,...`",
        ))
    }

    fn context(ordinal: usize) -> Result<Arc<CudaContext>> {
        guarded(&format!("GPU {ordinal}"), || {
            CudaContext::new(ordinal).map_err(|e| nccl_err(&format!("GPU {ordinal}"), e))
        })
    }

    /// Rank `rank` of `size` on GPU `ordinal`, with the unique id's bytes.
    pub fn join(rank: usize, size: usize, ordinal: usize, id: &[u8]) -> Result<Self> {
        let ctx = Self::context(ordinal)?;
        Self::join_on(ctx, rank, size, ordinal, id)
    }

    fn join_on(
        ctx: Arc<CudaContext>,
        rank: usize,
        size: usize,
        ordinal: usize,
        id: &[u8],
    ) -> Result<Self> {
        let id = id_from_bytes(id)?;
        let (started_tx, started_rx) = mpsc::channel::<Result<()>>();
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
        let worker = std::thread::Builder::new()
            .name(format!("nccl-rank-{rank}"))
            .spawn(move || {
                let opened = guarded("ncclCommInitRank", || {
                    let stream = ctx.default_stream();
                    let comm = Comm::from_rank(stream.clone(), rank, size, id)
                        .map_err(|e| nccl_err(&format!("rank {rank} of {size}"), e))?;
                    Ok((comm, stream))
                });
                match opened {
                    Ok((comm, stream)) => {
                        let _ = started_tx.send(Ok(()));
                        serve(comm, stream, jobs_rx);
                    }
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| nccl_err("starting its thread", e))?;
        started_rx
            .recv()
            .map_err(|_| Error::setting("dist", "nccl: its thread ended while starting"))??;
        Ok(Nccl {
            rank,
            size,
            ordinal,
            jobs: Mutex::new(Some(jobs_tx)),
            worker: Some(worker),
            #[cfg(feature = "mpi")]
            _mpi: None,
        })
    }

    /// Has the NCCL thread run `op` on `data`.
    fn ask<T: Carried>(&self, op: Op, data: &mut [T]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let (tx, rx) = mpsc::channel();
        {
            let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
            let sender = jobs
                .as_ref()
                .ok_or_else(|| Error::setting("dist", "nccl: closed"))?;
            sender
                .send((op, T::wrap(data.to_vec()), tx))
                .map_err(|_| Error::setting("dist", "nccl: its thread has ended"))?;
        }
        let back = rx
            .recv()
            .map_err(|_| Error::setting("dist", "nccl: its thread has ended"))??;
        let back = T::unwrap(back)
            .ok_or_else(|| Error::setting("dist", "nccl: a reply of another type"))?;
        data.copy_from_slice(&back);
        Ok(())
    }
}

impl Communicator for Nccl {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.size
    }

    fn all_reduce_sum_f32(&self, data: &mut [f32]) -> Result<()> {
        self.ask(Op::Sum, data)
    }

    fn all_reduce_sum_f64(&self, data: &mut [f64]) -> Result<()> {
        self.ask(Op::Sum, data)
    }

    fn broadcast_f32(&self, data: &mut [f32]) -> Result<()> {
        self.ask(Op::Broadcast, data)
    }

    fn broadcast_bytes(&self, data: &mut Vec<u8>) -> Result<()> {
        let mut len = [data.len() as u64];
        self.ask(Op::Broadcast, &mut len)?;
        let len = usize::try_from(len[0])
            .map_err(|_| Error::setting("dist", "a broadcast longer than memory"))?;
        data.resize(len, 0);
        self.ask(Op::Broadcast, &mut data[..])
    }

    fn barrier(&self) -> Result<()> {
        self.ask(Op::Sum, &mut [0u8])
    }

    fn abort(&self, code: i32) -> ! {
        // The launcher (or mpirun) ends the other ranks when one exits with an error.
        std::process::exit(code)
    }

    fn backend(&self) -> &'static str {
        "nccl"
    }

    fn gpu(&self) -> Option<usize> {
        Some(self.ordinal)
    }
}
