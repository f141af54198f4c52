//! Column masking in the configuration: `[sink.tables."s.t"] columns = { email = "hash" }`
//! names a policy per column, and `[sink.masking]` says where the hashing key comes from (the
//! environment or a file — never the configuration itself). What the policies do is
//! `crate::masking`'s; here they are typed and checked against the rest of the file.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Config;
use crate::source::schema::partition_source_column;

/// What happens to a column's values before they are buffered, spilled, logged or written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnPolicy {
    /// Keyed HMAC-SHA-256 of the value's PostgreSQL text form, as 64 lowercase hex digits in a
    /// string column: deterministic (joins and keys still work), not reversible without the key.
    Hash,
    /// Always NULL; the column keeps its type.
    Redact,
    /// Not in the lake at all.
    Drop,
}

impl ColumnPolicy {
    /// The policy's name as the configuration writes it.
    pub fn name(self) -> &'static str {
        match self {
            ColumnPolicy::Hash => "hash",
            ColumnPolicy::Redact => "redact",
            ColumnPolicy::Drop => "drop",
        }
    }
}

/// `[sink.masking]`: where the key of the `hash` policy comes from. Only read when a column is
/// hashed.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MaskingConfig {
    /// The environment variable holding the key (at least 32 bytes).
    /// Default: `"LAKEWRITER_MASKING_KEY"`.
    #[serde(default = "default_key_env")]
    pub key_env: String,
    /// A file holding the key instead (trailing whitespace ignored), e.g. a mounted secret.
    /// Default: none (the environment variable is read).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

impl Default for MaskingConfig {
    fn default() -> Self {
        MaskingConfig {
            key_env: default_key_env(),
            key_file: None,
        }
    }
}

fn default_key_env() -> String {
    "LAKEWRITER_MASKING_KEY".into()
}

/// Checks the policies against the rest of the configuration: a key column may be hashed but
/// not dropped or redacted (a row would lose its identity), and a table is not partitioned on a
/// masked column. The table's own key (replica identity) is checked at start, against the
/// catalog.
pub(super) fn validate(config: &Config) -> Result<(), String> {
    if config.sink.masking.key_env.trim().is_empty() {
        return Err("sink.masking.key_env is empty: name an environment variable".into());
    }
    for (table, settings) in &config.sink.tables {
        for (column, policy) in &settings.columns {
            if column.is_empty() {
                return Err(format!(
                    "sink.tables.\"{table}\".columns names an empty column"
                ));
            }
            let key = config.source.tables.get(table).and_then(|t| t.key.as_ref());
            if *policy != ColumnPolicy::Hash && key.is_some_and(|k| k.contains(column)) {
                return Err(key_policy_refused(table, column, *policy));
            }
        }
        for expression in &settings.partition_by {
            let column = partition_source_column(expression);
            if let Some(policy) = settings.columns.get(column) {
                return Err(format!(
                    "sink.tables.\"{table}\" partitions on {column}, whose policy is \"{}\": \
                     partition on an unmasked column (the partition values would show what \
                     the policy hides)",
                    policy.name()
                ));
            }
        }
    }
    Ok(())
}

/// The message refusing `policy` on a key column.
pub fn key_policy_refused(table: &str, column: &str, policy: ColumnPolicy) -> String {
    format!(
        "sink.tables.\"{table}\".columns: {column} = \"{}\", but {column} is a key column of \
         {table}: a key column may be hashed (upserts and deletes then use the hashed key and \
         stay exact), never dropped or redacted, or rows could not be told apart",
        policy.name()
    )
}
