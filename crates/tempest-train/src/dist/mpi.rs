//! The MPI backend (feature `mpi`): the `mpi` crate (rsmpi) over the system's MPI library,
//! Open MPI on Debian. Processes are started by `mpirun`; every collective works on
//! `MPI_COMM_WORLD`, from the thread that initialised MPI (`MPI_THREAD_FUNNELED`: the
//! loader's and rayon's threads never call MPI).

use std::sync::atomic::{AtomicBool, Ordering};

use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
use mpi::environment::{Threading, Universe};
use mpi::topology::{Communicator as _, SimpleCommunicator};

use super::Communicator;
use crate::{Error, Result};

/// Whether MPI is initialised and not yet finalised (the panic hook aborts only then).
static LIVE: AtomicBool = AtomicBool::new(false);

/// MPI's world communicator. [`Mpi::init`] initialises MPI (once per process); dropping the
/// value finalises it. A panic on any thread while it lives ends the whole job
/// (`MPI_Abort`), after the panic's message.
pub struct Mpi {
    rank: usize,
    size: usize,
    /// Finalises MPI when dropped.
    _universe: Universe,
}

impl std::fmt::Debug for Mpi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mpi")
            .field("rank", &self.rank)
            .field("size", &self.size)
            .finish()
    }
}

impl Mpi {
    /// Initialises MPI on this thread (the one that will call every collective operation).
    /// Fails when MPI was initialised already in this process.
    pub fn init() -> Result<Self> {
        let (universe, _threading) = mpi::initialize_with_threading(Threading::Funneled)
            .ok_or_else(|| Error::setting("dist", "MPI is initialised already"))?;
        let world = universe.world();
        let (rank, size) = (world.rank(), world.size());
        LIVE.store(true, Ordering::SeqCst);
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            previous(info);
            if LIVE.load(Ordering::SeqCst) {
                eprintln!("rank {rank}: panicked; ending the job");
                SimpleCommunicator::world().abort(101);
            }
        }));
        Ok(Mpi {
            rank: rank as usize,
            size: size as usize,
            _universe: universe,
        })
    }
}

impl Drop for Mpi {
    fn drop(&mut self) {
        // `_universe` is dropped after this: MPI_Finalize.
        LIVE.store(false, Ordering::SeqCst);
    }
}

/// MPI counts are C ints.
fn check_len(len: usize) -> Result<()> {
    if len > i32::MAX as usize {
        return Err(Error::setting(
            "dist",
            format!("{len} values in one MPI message (at most {})", i32::MAX),
        ));
    }
    Ok(())
}

impl Communicator for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.size
    }

    fn all_reduce_sum_f32(&self, data: &mut [f32]) -> Result<()> {
        check_len(data.len())?;
        let send = data.to_vec();
        SimpleCommunicator::world().all_reduce_into(&send[..], data, SystemOperation::sum());
        Ok(())
    }

    fn all_reduce_sum_f64(&self, data: &mut [f64]) -> Result<()> {
        check_len(data.len())?;
        let send = data.to_vec();
        SimpleCommunicator::world().all_reduce_into(&send[..], data, SystemOperation::sum());
        Ok(())
    }

    fn broadcast_f32(&self, data: &mut [f32]) -> Result<()> {
        check_len(data.len())?;
        SimpleCommunicator::world()
            .process_at_rank(0)
            .broadcast_into(data);
        Ok(())
    }

    fn broadcast_bytes(&self, data: &mut Vec<u8>) -> Result<()> {
        let world = SimpleCommunicator::world();
        let root = world.process_at_rank(0);
        let mut len = data.len() as u64;
        root.broadcast_into(&mut len);
        let len = usize::try_from(len)
            .map_err(|_| Error::setting("dist", "a broadcast longer than memory"))?;
        check_len(len)?;
        data.resize(len, 0);
        root.broadcast_into(&mut data[..]);
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        SimpleCommunicator::world().barrier();
        Ok(())
    }

    fn abort(&self, code: i32) -> ! {
        SimpleCommunicator::world().abort(code)
    }

    fn backend(&self) -> &'static str {
        "mpi"
    }
}
