//! What `train` and `pretrain` share between their flags and their run: the variants raw
//! data is prepared in, opening the data on every rank, and the variants asked to train on.

use std::path::Path;

use tempest::tempest_data::{DataSource, Dataset, Summary, Variant};
use tempest::tempest_train::dist::Comm;
use tempest::tempest_train::Recipe;

type Error = Box<dyn std::error::Error>;

/// The recipe of raw data's kind (`None` for prepared data) and the variants raw data is
/// prepared in: `asked` (`--variants`), else the recipe's.
pub fn preparation(
    source: &DataSource,
    asked: Option<&Vec<Variant>>,
) -> Result<(Option<Recipe>, Vec<Variant>), Error> {
    let layout_recipe = match source {
        DataSource::Raw { layout, input } => Some(Recipe::for_layout(*layout, input)?),
        DataSource::Prepared(_) => None,
    };
    let prepare_in = match (asked, &layout_recipe) {
        (Some(v), _) => v.clone(),
        (None, Some(r)) => r.variants.clone(),
        (None, None) => Vec::new(),
    };
    Ok((layout_recipe, prepare_in))
}

/// Opens the data in `cache` on every rank: rank 0 alone prepares raw data, the others open
/// it once it is there. Rank 0 fails after the barrier (its error ends the job), so the others
/// never wait for it forever. The preparation's summary comes back on rank 0 only.
pub fn open_on_ranks(
    source: &DataSource,
    cache: &Path,
    prepare_in: &[Variant],
    progress: bool,
    comm: &Comm,
) -> Result<(Dataset, Option<Summary>), Error> {
    if !comm.is_root() {
        comm.barrier()?;
    }
    let opened = source.open(cache, prepare_in, progress);
    if comm.is_root() {
        comm.barrier()?;
    }
    let (dataset, summary) = opened?;
    Ok((dataset, summary.filter(|_| comm.is_root())))
}

/// The variants `asked` for training (`--variants`) as names, where the data holds any of
/// them; else none (training then reads every variant of the data).
pub fn train_variants(asked: Option<&Vec<Variant>>, dataset: &Dataset) -> Vec<String> {
    match asked {
        Some(v)
            if dataset
                .variants()
                .iter()
                .any(|d| v.iter().any(|x| x.to_string() == *d)) =>
        {
            v.iter().map(Variant::to_string).collect()
        }
        _ => Vec::new(),
    }
}
