//! The one training loop, [`fit_loop`], and the [`Driver`] trait through which a run says
//! where its batches come from and what happens after each step and epoch ([`crate::fit`]
//! has the drivers' story and the simplest driver).

use std::time::Instant;

use candle_core::backprop::GradStore;

use crate::checkpoint::TrainState;
use crate::metrics::EpochSums;
use crate::optim::{AdamW, CosineSchedule};
use crate::{Error, Result, TrainOptions};

/// One epoch of [`fit_loop`].
#[derive(Debug, Clone, PartialEq)]
pub struct EpochLog {
    /// The epoch, from 1.
    pub epoch: usize,
    /// Items trained on in this process (a resumed epoch counts those after the resume).
    pub items: usize,
    /// Seconds of training (forward, backward, optimiser), in this process.
    pub seconds: f64,
    /// The epoch's item-weighted sums (over the whole epoch, across a resume).
    pub sums: EpochSums,
}

impl EpochLog {
    /// Mean training loss.
    pub fn loss(&self) -> f64 {
        self.sums.mean_loss()
    }

    /// Training accuracy.
    pub fn accuracy(&self) -> f64 {
        self.sums.accuracy()
    }
}

/// One optimiser step of [`fit_loop`], as its driver sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepLog {
    /// The learning rate the step used.
    pub lr: f64,
    /// The global gradient norm before clipping.
    pub norm: f64,
    /// The step closed the epoch's last batch.
    pub end_of_epoch: bool,
    /// The run stops after this step (a stop request or `stop_after_steps`).
    pub stopping: bool,
}

/// How [`fit_loop`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every epoch of the budget ran.
    Finished,
    /// A stop request or `stop_after_steps` ended the run early; its state is resumable.
    Interrupted,
}

/// What a run adds around the one training loop, [`fit_loop`]: where each epoch's batches
/// come from and how their gradients are computed, and what happens after each optimiser step
/// and each epoch. [`crate::train()`] drives it with the loader's batches of files (and
/// checkpoints, evaluation and metrics); [`fit`](crate::fit()) with items prepared in memory
/// (the `compare` example's two models).
pub trait Driver {
    /// One batch, as [`Driver::gradients`] takes it.
    type Batch;

    /// Starts epoch `epoch` (from 0) at its batch `skip` (a resumed run skips the batches it
    /// trained on): the number of batches the whole epoch has.
    fn start_epoch(&mut self, epoch: usize, skip: usize) -> Result<usize>;

    /// The epoch's next batch; `Some(None)` for a batch with nothing to train on (all its
    /// files failed: it still counts as a batch), `None` when the epoch has no more.
    fn next_batch(&mut self) -> Result<Option<Option<Self::Batch>>>;

    /// Seeds the dropout masks of the next [`Driver::gradients`].
    fn seed_dropout(&mut self, seed: u64);

    /// The gradients of the batch's mean loss and its contributions to the epoch's sums.
    fn gradients(&mut self, batch: Self::Batch) -> Result<(GradStore, EpochSums)>;

    /// Data-parallel runs ([`crate::dist`]): the items of the last batch given by
    /// [`Driver::next_batch`] across all ranks (this rank's piece is part of it), by which
    /// [`fit_loop`] weights this rank's gradient. `None` (the default): the driver does not
    /// split batches across ranks, and [`fit_loop`] refuses to run it on several ranks.
    fn global_batch_items(&self) -> Option<usize> {
        None
    }

    /// After each optimiser step (progress, periodic checkpoints).
    fn after_step(&mut self, _state: &TrainState, _opt: &AdamW, _step: &StepLog) -> Result<()> {
        Ok(())
    }

    /// Whether the run was asked to stop (Ctrl-C); checked after each step.
    fn stop_requested(&self) -> bool {
        false
    }

    /// After the epoch's last batch, or after the step that stops the run.
    fn end_batches(&mut self) {}

    /// The run stops inside an epoch: `state` is where it stands (save it to resume).
    fn interrupted(&mut self, _state: &TrainState, _opt: &AdamW, _log: &EpochLog) -> Result<()> {
        Ok(())
    }

    /// Epoch `log.epoch` ended; `state` already points at the next one (evaluate, keep the
    /// best, write metrics, save).
    fn end_epoch(&mut self, state: &mut TrainState, opt: &AdamW, log: &EpochLog) -> Result<()>;
}

/// The training loop, the one every run goes through: from `state` (a fresh
/// [`TrainState`] or a resumed one) to `options.epochs` epochs, each batch's gradients
/// accumulated into `opt` ([`AdamW`]), one optimiser step every `options.accumulate` batches
/// and at the end of each epoch, the learning rate from `schedule`, gradients clipped to
/// `options.max_grad_norm`, dropout masks seeded from the run's seed, the epoch and the batch's
/// place in it (so a resumed run draws the masks an uninterrupted one would), and a stop after
/// `options.stop_after_steps` steps or when the driver asks for it.
///
/// With several ranks (`options.comm`, [`crate::dist`]) each rank trains on its piece of every
/// batch; its gradient is weighted by its share of the batch's items
/// ([`Driver::global_batch_items`]); the step's gradients, metric sums and stop requests are
/// summed across the ranks before the step ([`AdamW::all_reduce`]), and a step comes every
/// `options.accumulate` batches whether or not this rank's piece had items, so every rank takes
/// the same steps on the same gradients. Dropout masks are seeded with the rank too.
pub fn fit_loop<D: Driver>(
    driver: &mut D,
    opt: &mut AdamW,
    schedule: &CosineSchedule,
    state: &mut TrainState,
    options: &TrainOptions,
) -> Result<Outcome> {
    let o = options;
    o.check_batch()?;
    let comm = &o.comm;
    let dist = comm.is_distributed();
    if dist && driver.global_batch_items().is_none() {
        return Err(Error::setting(
            "dist",
            format!(
                "this run does not split its batches across ranks: start it as one process, \
                 not {}",
                comm.world_size()
            ),
        ));
    }
    while state.epoch < o.epochs {
        let epoch = state.epoch;
        let batches = driver.start_epoch(epoch, state.batch_in_epoch)?;
        let start = Instant::now();
        let mut items_here = 0u64;
        let mut batch_pos = state.batch_in_epoch.min(batches);
        let mut stop = false;
        // Data-parallel: batches since the last step (with or without items here) and their
        // metric sums, summed across the ranks at the step.
        let mut pending = 0usize;
        let mut pending_sums = EpochSums::default();
        while let Some(batch) = driver.next_batch()? {
            batch_pos += 1;
            pending += 1;
            if let Some(batch) = batch {
                let mut key = vec![epoch as u64, batch_pos as u64];
                if dist {
                    key.push(comm.rank() as u64);
                }
                driver.seed_dropout(tempest_model::dropout_seed(o.seed, &key));
                let (grads, sums) = driver.gradients(batch)?;
                if dist {
                    let global = driver.global_batch_items().unwrap_or(0).max(1);
                    pending_sums.add(&sums);
                    opt.accumulate_weighted(&grads, sums.items / global as f64)?;
                } else {
                    state.epoch_sums.add(&sums);
                    opt.accumulate(&grads)?;
                }
                items_here += sums.items as u64;
            }
            let end_of_epoch = batch_pos == batches;
            let due = if dist {
                pending >= o.accumulate || (end_of_epoch && pending > 0)
            } else {
                opt.accumulated() >= o.accumulate || (end_of_epoch && opt.accumulated() > 0)
            };
            if due {
                // A stop asked of any rank stops them all, at the same step.
                let mut asked = None;
                if dist {
                    let mut extra: [f64; 6] = [0.0; 6];
                    extra[..5].copy_from_slice(&<[f64; 5]>::from(pending_sums));
                    extra[5] = f64::from(u8::from(driver.stop_requested()));
                    opt.all_reduce(&**comm, pending, &mut extra)?;
                    let mut five = [0.0; 5];
                    five.copy_from_slice(&extra[..5]);
                    state.epoch_sums.add(&EpochSums::from(five));
                    asked = Some(extra[5] > 0.0);
                    pending_sums = EpochSums::default();
                }
                pending = 0;
                let lr = schedule.lr(state.step);
                let norm = opt.step(lr, o.max_grad_norm)?;
                state.step += 1;
                state.batch_in_epoch = batch_pos;
                let budget = o.stop_after_steps.is_some_and(|s| state.step >= s);
                stop = budget || asked.unwrap_or_else(|| driver.stop_requested());
                let step = StepLog {
                    lr,
                    norm,
                    end_of_epoch,
                    stopping: stop,
                };
                driver.after_step(state, opt, &step)?;
                if stop && !end_of_epoch {
                    break;
                }
            }
        }
        driver.end_batches();
        let log = EpochLog {
            epoch: epoch + 1,
            items: items_here as usize,
            seconds: start.elapsed().as_secs_f64(),
            sums: state.epoch_sums,
        };
        if stop && state.batch_in_epoch < batches {
            driver.interrupted(state, opt, &log)?;
            return Ok(Outcome::Interrupted);
        }
        state.epoch += 1;
        state.batch_in_epoch = 0;
        state.epoch_sums = EpochSums::default();
        driver.end_epoch(state, opt, &log)?;
        if stop && state.epoch < o.epochs {
            return Ok(Outcome::Interrupted);
        }
    }
    Ok(Outcome::Finished)
}
