//! Commit with retry: reload the pointer after a lost compare-and-swap, let the caller re-apply
//! its change on the metadata that won, and try again after a growing, jittered pause — the
//! "reload, re-apply, retry with backoff" half of invariant 9.

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use iceberg::spec::TableMetadata;

use super::{Catalog, CatalogError, CatalogTable, Pointer};

/// How [`commit_with_retry`] spaces and bounds its attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Commits tried before giving up with [`CatalogError::TooManyConflicts`]. Default: 10.
    pub max_attempts: u32,
    /// Pause after the first lost attempt; it doubles after each one. Default: 50 ms.
    pub initial_backoff: Duration,
    /// Longest pause between two attempts. Default: 5 s.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The pause after losing attempt `attempt` (1-based): exponential, capped, and drawn from
    /// its upper half at random, so two writers that collided do not collide again in step.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(20);
        let full = self
            .initial_backoff
            .saturating_mul(1u32 << doublings)
            .min(self.max_backoff);
        let half = full / 2;
        let nanos = u64::try_from((full - half).as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(random() % nanos.max(1))
    }
}

/// A random number from the standard library's per-process hash keys: enough for jitter,
/// without a dependency.
fn random() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos().into())
            .unwrap_or(0),
    );
    hasher.finish()
}

/// A metadata file an attempt has written and wants to commit.
#[derive(Debug, Clone)]
pub struct StagedMetadata {
    /// Where the file is (`…/metadata/00002-<uuid>.metadata.json`).
    pub location: String,
    /// What it holds.
    pub metadata: TableMetadata,
}

/// Commits a change to `table`, retrying lost races: loads the pointer, calls `attempt` with
/// it, commits what `attempt` staged against that pointer, and on a conflict (or a transient
/// failure) reloads and calls `attempt` again, pausing per `policy` between attempts.
///
/// `attempt` must build its change from the pointer it is given — read that metadata file and
/// re-apply the change on it — never from metadata it read earlier: the pointer it gets after a
/// conflict names the metadata another writer committed, and a change built on the old one
/// would silently undo the winner's. Each attempt writes a new metadata file; the files of
/// lost attempts are orphans for `compact` to remove. `attempt` may fail with its own error to
/// give up (for example when the winner's change makes its own impossible).
///
/// A transient failure may hide a commit that landed (the answer was lost): the reloaded
/// pointer then names the staged file, and that counts as success. A catalog that writes its
/// own metadata files ([`Catalog::writes_metadata`], REST) never names the staged file: it
/// settles a lost answer itself, reloading and looking for the change before it fails, and
/// `attempt` is the last guard (the sink looks for an earlier attempt's snapshot in the table
/// it is given before staging again).
pub async fn commit_with_retry<C, F, Fut, E>(
    catalog: &C,
    table: &CatalogTable,
    policy: &RetryPolicy,
    mut attempt: F,
) -> Result<Pointer, E>
where
    C: Catalog + ?Sized,
    F: FnMut(Pointer) -> Fut,
    Fut: Future<Output = Result<StagedMetadata, E>>,
    E: From<CatalogError>,
{
    let not_found = || CatalogError::TableNotFound {
        catalog: catalog.describe().to_string(),
        table: table.clone(),
    };
    let mut current = catalog.load(table).await?.ok_or_else(not_found)?;
    let attempts = policy.max_attempts.max(1);
    for n in 1..=attempts {
        let staged = attempt(current.clone()).await?;
        let error = match catalog
            .commit(table, &current, &staged.location, &staged.metadata)
            .await
        {
            Ok(pointer) => return Ok(pointer),
            Err(e) if e.is_retryable() => e,
            Err(e) => return Err(e.into()),
        };
        let reloaded = catalog.load(table).await?.ok_or_else(not_found)?;
        if reloaded.metadata_location == staged.location {
            return Ok(reloaded);
        }
        if n == attempts {
            if error.is_conflict() {
                break;
            }
            return Err(error.into());
        }
        let pause = policy.backoff(n);
        if let Some(m) = crate::metrics::installed() {
            m.commit_retry(&table.to_string(), error.is_conflict());
        }
        tracing::info!(
            catalog = %catalog.describe(),
            table = %table,
            attempt = n,
            ?pause,
            error = %error,
            "commit lost, retrying on the reloaded table"
        );
        current = reloaded;
        tokio::time::sleep(pause).await;
    }
    Err(CatalogError::TooManyConflicts {
        catalog: catalog.describe().to_string(),
        table: table.clone(),
        attempts,
    }
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_its_cap_and_jitters_in_the_upper_half() {
        let policy = RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
        };
        for (attempt, full) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (40, 1000),
        ] {
            let full = Duration::from_millis(full);
            for _ in 0..50 {
                let pause = policy.backoff(attempt);
                assert!(pause >= full / 2 && pause <= full, "{attempt}: {pause:?}");
            }
        }
        let pauses: std::collections::HashSet<Duration> =
            (0..20).map(|_| policy.backoff(3)).collect();
        assert!(pauses.len() > 1, "no jitter: {pauses:?}");
    }
}
