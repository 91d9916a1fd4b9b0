//! Starting one process per rank on this machine (`train --dist nccl --gpus 0,1`) and ending
//! them all when one fails, as `mpirun` does for MPI jobs.

use std::ffi::OsString;
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use crate::{Error, Result};

/// Starts `commands`, one process each, and waits for them: 0 when every one exits with
/// success; otherwise, as soon as one fails, the others are killed and the failed one's exit
/// code comes back (128 + the signal's number where a signal ended it). `poll` is how often
/// the processes are looked at.
pub fn run_ranks(commands: Vec<Command>, poll: Duration) -> Result<i32> {
    let mut children: Vec<Option<Child>> = Vec::with_capacity(commands.len());
    for (rank, mut c) in commands.into_iter().enumerate() {
        match c.spawn() {
            Ok(child) => children.push(Some(child)),
            Err(e) => {
                end_all(&mut children);
                return Err(Error::setting(
                    "dist",
                    format!("starting rank {rank} ({:?}): {e}", c.get_program()),
                ));
            }
        }
    }
    loop {
        let mut running = 0;
        for (rank, slot) in children.iter_mut().enumerate() {
            let Some(child) = slot else { continue };
            match child.try_wait() {
                Ok(None) => running += 1,
                Ok(Some(status)) if status.success() => *slot = None,
                Ok(Some(status)) => {
                    let code = status.code().unwrap_or_else(|| {
                        #[cfg(unix)]
                        {
                            use std::os::unix::process::ExitStatusExt;
                            128 + status.signal().unwrap_or(0)
                        }
                        #[cfg(not(unix))]
                        {
                            1
                        }
                    });
                    eprintln!("rank {rank} ended with {status}; ending the other ranks");
                    *slot = None;
                    end_all(&mut children);
                    return Ok(if code == 0 { 1 } else { code });
                }
                Err(e) => {
                    end_all(&mut children);
                    return Err(Error::setting(
                        "dist",
                        format!("waiting for rank {rank}: {e}"),
                    ));
                }
            }
        }
        if running == 0 {
            return Ok(0);
        }
        std::thread::sleep(poll);
    }
}

/// Kills and reaps every process still running.
fn end_all(children: &mut [Option<Child>]) {
    for child in children.iter_mut().flatten() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Runs `program args` once per GPU of `gpus`, rank i on GPU `gpus[i]`, with NCCL's unique id
/// (created here) and the rank variables ([`super::RANK_VAR`], [`super::WORLD_SIZE_VAR`],
/// [`super::LOCAL_RANK_VAR`], [`super::NCCL_ID_VAR`]) in each one's environment, and waits for
/// them as [`run_ranks`] does. Needs the feature `nccl` (and libnccl at run time).
pub fn launch(gpus: &[usize], program: &Path, args: &[OsString]) -> Result<i32> {
    if gpus.is_empty() {
        return Err(Error::setting("gpus", "no GPU listed"));
    }
    let mut seen = gpus.to_vec();
    seen.sort_unstable();
    seen.dedup();
    if seen.len() != gpus.len() {
        return Err(Error::setting(
            "gpus",
            format!("{gpus:?} lists a GPU twice (NCCL takes one rank per GPU)"),
        ));
    }
    let id = nccl_id()?;
    // Ctrl-C in a terminal reaches every rank (one process group): they save their checkpoint
    // and stop, and the launcher waits for them instead of dying first. (Where the process
    // has a handler already, that one stays.)
    let _ = ctrlc::set_handler(|| {});
    let id = super::hex_encode(&id);
    let commands = gpus
        .iter()
        .enumerate()
        .map(|(rank, gpu)| {
            let mut c = Command::new(program);
            c.args(args)
                .env(super::RANK_VAR, rank.to_string())
                .env(super::WORLD_SIZE_VAR, gpus.len().to_string())
                .env(super::LOCAL_RANK_VAR, gpu.to_string())
                .env(super::NCCL_ID_VAR, &id);
            c
        })
        .collect();
    run_ranks(commands, Duration::from_millis(100))
}

#[cfg(feature = "nccl")]
fn nccl_id() -> Result<Vec<u8>> {
    super::new_nccl_id()
}

#[cfg(not(feature = "nccl"))]
fn nccl_id() -> Result<Vec<u8>> {
    Err(Error::setting(
        "dist",
        "--gpus starts NCCL ranks, which needs a build with the feature `nccl` \
         (docs/distributed.md)",
    ))
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::time::Instant;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    #[test]
    fn every_rank_succeeding_gives_zero() {
        let code = run_ranks(
            vec![sh("exit 0"), sh("sleep 0.2")],
            Duration::from_millis(20),
        );
        assert_eq!(code.unwrap(), 0);
    }

    #[test]
    fn a_failed_rank_ends_the_others_and_gives_its_code() {
        let start = Instant::now();
        // Without the launcher ending it, the second rank would run for ten minutes.
        let code = run_ranks(
            vec![sh("sleep 0.3; exit 7"), sh("sleep 600")],
            Duration::from_millis(20),
        )
        .unwrap();
        assert_eq!(code, 7);
        assert!(start.elapsed() < Duration::from_secs(300));
        // A killed rank (SIGKILL) gives 128 + 9.
        let code = run_ranks(
            vec![sh("kill -9 $$"), sh("sleep 600")],
            Duration::from_millis(20),
        )
        .unwrap();
        assert_eq!(code, 137);
    }

    #[test]
    fn a_rank_that_cannot_start_is_an_error() {
        let err = run_ranks(
            vec![sh("sleep 600"), Command::new("/nonexistent/tempest-rank")],
            Duration::from_millis(20),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("starting rank 1"), "{err}");
    }

    #[test]
    fn launch_checks_its_gpu_list() {
        let err = launch(&[], Path::new("true"), &[]).unwrap_err().to_string();
        assert!(err.contains("no GPU"), "{err}");
        let err = launch(&[0, 1, 0], Path::new("true"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("twice"), "{err}");
        #[cfg(not(feature = "nccl"))]
        assert!(launch(&[0], Path::new("true"), &[])
            .is_err_and(|e| e.to_string().contains("feature `nccl`")));
    }
}
