//! Column masking: the per-column policies of `[sink.tables."s.t"] columns` (hash, redact,
//! drop) resolved once per process, with the key of the `hash` policy. The source applies them
//! where values are decoded (`source::changes` for the stream, `source::snapshot` for COPY), so
//! nothing after it — buffers, spill files, logs, errors, the lake — ever holds an unmasked
//! value of a masked column.
//!
//! The hash is HMAC-SHA-256 of the value's PostgreSQL text output, keyed with a secret from the
//! environment or a file, written as 64 lowercase hex digits. The same value always hashes the
//! same way (joins and keys keep working, across tables too), and without the key nobody can
//! hash a dictionary of guesses to find it. With pgcrypto, PostgreSQL computes the same:
//! `encode(hmac(col::text, key, 'sha256'), 'hex')`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::config::{ColumnPolicy, Config, MaskingConfig, key_policy_refused};
use crate::error::{Error, Result};
use crate::table::{RelationId, TableId};

/// The shortest key accepted, in bytes: a 256-bit key, as `openssl rand -hex 32` gives (64 hex
/// characters, used as they are).
pub const MIN_KEY_BYTES: usize = 32;

/// The Arrow field metadata key that marks a masked column of a table's shape (`"hash"` or
/// `"redact"`), so a COPY of that shape selects and stores the column masked.
pub const MASK_METADATA_KEY: &str = "lakewriter.masking";

/// The keyed hash of the `hash` policy, and the sealing of the few plaintext values of hashed
/// columns lakewriter must keep (a chunked copy's key bounds). Its key never prints.
#[derive(Clone)]
pub struct Hasher {
    key: Arc<ring::hmac::Key>,
    /// AES-256-GCM, keyed with the HMAC of [`SEALING_LABEL`] under the masking key: one secret
    /// to keep, and a sealing key that is no hash a column holds.
    sealing: Arc<ring::aead::LessSafeKey>,
}

/// What the sealing key is derived from (with the masking key).
const SEALING_LABEL: &[u8] = b"lakewriter sealing key v1";

/// The prefix of a sealed value: `sealed:` and the nonce, ciphertext and tag in hex.
pub const SEALED_PREFIX: &str = "sealed:";

impl Hasher {
    /// A hasher keyed with `secret`.
    pub fn new(secret: &[u8]) -> Self {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
        let derived = ring::hmac::sign(&key, SEALING_LABEL);
        // 32 bytes: the length AES-256 takes
        let sealing = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, derived.as_ref())
            .map(ring::aead::LessSafeKey::new)
            .unwrap_or_else(|_| unreachable!("an HMAC-SHA-256 tag is an AES-256 key"));
        Hasher {
            key: Arc::new(key),
            sealing: Arc::new(sealing),
        }
    }

    /// `plain` encrypted and authenticated under the masking key, as `sealed:` and hex: for a
    /// plaintext value of a hashed column lakewriter must keep in the lake (a chunked copy's
    /// last key), which nobody without the key can read. A random nonce each time.
    pub fn seal(&self, plain: &str) -> Result<String> {
        use ring::rand::SecureRandom;
        let mut nonce = [0u8; ring::aead::NONCE_LEN];
        ring::rand::SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| Error::Source {
                message: "no random nonce to seal a value of a hashed column".into(),
            })?;
        let mut data = plain.as_bytes().to_vec();
        self.sealing
            .seal_in_place_append_tag(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::from(SEALED_PREFIX.as_bytes()),
                &mut data,
            )
            .map_err(|_| Error::Source {
                message: "seal a value of a hashed column".into(),
            })?;
        let mut out = String::with_capacity(SEALED_PREFIX.len() + 2 * (nonce.len() + data.len()));
        out.push_str(SEALED_PREFIX);
        for byte in nonce.iter().chain(&data) {
            out.push_str(&format!("{byte:02x}"));
        }
        Ok(out)
    }

    /// The plaintext of what [`Hasher::seal`] made; `None` when it is not sealed text, or was
    /// sealed under another key, or altered.
    pub fn open(&self, sealed: &str) -> Option<String> {
        let hex = sealed.strip_prefix(SEALED_PREFIX)?;
        if !hex.len().is_multiple_of(2) {
            return None;
        }
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| {
                hex.get(i..i + 2)
                    .and_then(|d| u8::from_str_radix(d, 16).ok())
            })
            .collect::<Option<_>>()?;
        if bytes.len() < ring::aead::NONCE_LEN {
            return None;
        }
        let (nonce, data) = bytes.split_at(ring::aead::NONCE_LEN);
        let nonce = ring::aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut data = data.to_vec();
        let plain = self
            .sealing
            .open_in_place(
                nonce,
                ring::aead::Aad::from(SEALED_PREFIX.as_bytes()),
                &mut data,
            )
            .ok()?;
        String::from_utf8(plain.to_vec()).ok()
    }

    /// HMAC-SHA-256 of `value`, as 64 lowercase hex digits.
    pub fn hex(&self, value: &[u8]) -> [u8; 64] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let tag = ring::hmac::sign(&self.key, value);
        let mut out = [0u8; 64];
        for (i, byte) in tag.as_ref().iter().enumerate() {
            out[2 * i] = DIGITS[usize::from(byte >> 4)];
            out[2 * i + 1] = DIGITS[usize::from(byte & 0x0f)];
        }
        out
    }
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Hasher(HMAC-SHA-256, key ***)")
    }
}

/// The masking policies of a configuration, with the key when a column is hashed.
#[derive(Debug, Default)]
pub struct Masking {
    hasher: Option<Hasher>,
    /// The configuration's policies, by table and column name.
    tables: BTreeMap<TableId, BTreeMap<String, ColumnPolicy>>,
    /// Policies bound to column numbers, and those that followed a rename.
    bound: Mutex<Bound>,
}

/// Where the policies are, beyond the configuration's names.
#[derive(Debug, Default)]
struct Bound {
    /// By relation and column number (`attnum`), which a rename keeps.
    attnums: HashMap<RelationId, HashMap<i16, ColumnPolicy>>,
    /// By table and the new name of a column renamed since the start, so a later copy of the
    /// table masks it under that name too.
    followed: HashMap<TableId, BTreeMap<String, ColumnPolicy>>,
}

impl Masking {
    /// No policy at all.
    pub fn none() -> Arc<Masking> {
        Arc::new(Masking::default())
    }

    /// The policies of `config`, with the key read from the environment or the key file when a
    /// column is hashed. A hashed column without a usable key is an error naming the table,
    /// the column and where the key was looked for (never the key).
    pub fn from_config(config: &Config) -> Result<Arc<Masking>> {
        let mut tables = BTreeMap::new();
        let mut hashed: Option<(TableId, String)> = None;
        for (name, settings) in &config.sink.tables {
            if settings.columns.is_empty() {
                continue;
            }
            let Some((schema, table)) = name.split_once('.') else {
                continue;
            };
            let id = TableId::new(schema, table);
            if hashed.is_none()
                && let Some((column, _)) = settings
                    .columns
                    .iter()
                    .find(|(_, p)| **p == ColumnPolicy::Hash)
            {
                hashed = Some((id.clone(), column.clone()));
            }
            tables.insert(id, settings.columns.clone());
        }
        let hasher = match hashed {
            Some((table, column)) => {
                let mut secret = read_key(&config.sink.masking, &table, &column)?;
                let hasher = Hasher::new(&secret);
                secret.fill(0);
                Some(hasher)
            }
            None => None,
        };
        Ok(Arc::new(Masking {
            hasher,
            tables,
            bound: Mutex::default(),
        }))
    }

    /// Whether `table` has any policy.
    pub fn masks(&self, table: &TableId) -> bool {
        self.tables.contains_key(table)
    }

    /// Whether any table has a policy.
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// The hasher, when a column is hashed.
    pub fn hasher(&self) -> Option<&Hasher> {
        self.hasher.as_ref()
    }

    /// The policy of each column of `table` by name: the configuration's, and those that
    /// followed a rename.
    pub fn policies(&self, table: &TableId) -> BTreeMap<String, ColumnPolicy> {
        let mut policies = self.tables.get(table).cloned().unwrap_or_default();
        if let Ok(bound) = self.bound.lock()
            && let Some(renamed) = bound.followed.get(table)
        {
            for (column, policy) in renamed {
                policies.entry(column.clone()).or_insert(*policy);
            }
        }
        policies
    }

    /// The policy of each of `columns` (its name, and its number in the table, `attnum`, when
    /// the catalog has it) of `table`, whose relation is `relation`: by name, or, for a column
    /// renamed since, by the policy its number was bound to. Binds every named policy to its
    /// column's number, so the policy follows a later rename; the start binds them all (the
    /// configuration's names are checked then), before any row is read.
    pub fn resolve(
        &self,
        table: &TableId,
        relation: RelationId,
        columns: &[(&str, Option<i16>)],
    ) -> BTreeMap<String, ColumnPolicy> {
        let mut policies = self.policies(table);
        let Ok(mut bound) = self.bound.lock() else {
            return policies;
        };
        let numbers = bound.attnums.entry(relation).or_default();
        for (name, attnum) in columns {
            if let (Some(policy), Some(attnum)) = (policies.get(*name), attnum) {
                numbers.entry(*attnum).or_insert(*policy);
            }
        }
        let mut renamed = Vec::new();
        for (name, attnum) in columns {
            if policies.contains_key(*name) {
                continue;
            }
            if let Some(policy) = attnum.and_then(|a| numbers.get(&a)) {
                renamed.push((name.to_string(), *policy));
            }
        }
        for (name, policy) in renamed {
            tracing::info!(
                table = %table,
                column = %name,
                policy = policy.name(),
                "a masked column was renamed: its policy follows it"
            );
            bound
                .followed
                .entry(table.clone())
                .or_default()
                .insert(name.clone(), policy);
            policies.insert(name, policy);
        }
        policies
    }

    /// The numbers (`attnum`) of the columns of `relation` a policy is bound to.
    pub fn bound_columns(&self, relation: RelationId) -> Vec<i16> {
        self.bound
            .lock()
            .ok()
            .and_then(|b| {
                b.attnums
                    .get(&relation)
                    .map(|n| n.keys().copied().collect())
            })
            .unwrap_or_default()
    }

    /// What the lake of `table` was written with, for the slot record: its policies, and when
    /// a column is hashed a check value of the key (an HMAC of a fixed text, which tells keys
    /// apart and nothing of them). Empty when the table has no policy. A table whose record
    /// says otherwise is copied again, so the lake never mixes two maskings.
    pub fn fingerprint(&self, table: &TableId) -> String {
        let Some(policies) = self.tables.get(table) else {
            return String::new();
        };
        let mut text = policies
            .iter()
            .map(|(c, p)| format!("{c}={}", p.name()))
            .collect::<Vec<_>>()
            .join(",");
        if let Some(hasher) = &self.hasher
            && policies.values().any(|p| *p == ColumnPolicy::Hash)
        {
            let check = hasher.hex(b"lakewriter masking key check");
            text.push_str(";key=");
            text.push_str(&String::from_utf8_lossy(&check[..16]));
        }
        text
    }

    /// [`Masking::fingerprint`] of every table with a policy, by `schema.table`.
    pub fn fingerprints(&self) -> BTreeMap<String, String> {
        self.tables
            .keys()
            .map(|t| (t.to_string(), self.fingerprint(t)))
            .collect()
    }

    /// Checks the policies of `table` against its columns (as the catalog has them) and the key
    /// it is upserted on: every column named must exist, and a key column may only be hashed.
    pub fn check_table(&self, table: &TableId, columns: &[&str], key: &[String]) -> Result<()> {
        let Some(policies) = self.tables.get(table) else {
            return Ok(());
        };
        for (column, policy) in policies {
            if !columns.contains(&column.as_str()) {
                return Err(Error::Source {
                    message: format!(
                        "sink.tables.\"{table}\".columns names column {column}, which table \
                         {table} does not have (its columns: {}); if it was renamed, name it \
                         as it is called now",
                        columns.join(", ")
                    ),
                });
            }
            if *policy != ColumnPolicy::Hash && key.contains(column) {
                return Err(Error::Source {
                    message: key_policy_refused(&table.to_string(), column, *policy),
                });
            }
        }
        Ok(())
    }
}

/// Reads the key for the hashed `column` of `table`: from the key file when one is set, else
/// from the environment variable.
fn read_key(config: &MaskingConfig, table: &TableId, column: &str) -> Result<Vec<u8>> {
    let missing = |what: String| {
        Error::config(
            "sink.masking",
            format!(
                "table {table} hashes column {column}, but {what}: put a key of at least \
                 {MIN_KEY_BYTES} bytes (e.g. `openssl rand -hex 32`) in the environment variable \
                 {} or in a file named by sink.masking.key_file",
                config.key_env
            ),
        )
    };
    let (mut secret, source) = match &config.key_file {
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|e| {
                missing(format!(
                    "the key file {} cannot be read ({})",
                    path.display(),
                    e.kind()
                ))
            })?;
            (bytes, format!("key file {}", path.display()))
        }
        None => match std::env::var_os(&config.key_env) {
            Some(value) => (
                value.into_encoded_bytes(),
                format!("environment variable {}", config.key_env),
            ),
            None => {
                return Err(missing(format!(
                    "the environment variable {} is not set",
                    config.key_env
                )));
            }
        },
    };
    while secret.last().is_some_and(|b| b.is_ascii_whitespace()) {
        secret.pop();
    }
    if secret.len() < MIN_KEY_BYTES {
        let len = secret.len();
        secret.fill(0);
        return Err(missing(format!("the {source} holds {len} bytes")));
    }
    Ok(secret)
}

/// Where the masking key of `config` is read from, for `doctor` (never the key).
pub fn key_source(config: &MaskingConfig) -> String {
    match &config.key_file {
        Some(path) => format!("key file {}", PathBuf::from(path).display()),
        None => format!("environment variable {}", config.key_env),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn the_hash_is_hmac_sha256_in_lowercase_hex() {
        // RFC 4231, test case 2
        let hasher = Hasher::new(b"Jefe");
        assert_eq!(
            std::str::from_utf8(&hasher.hex(b"what do ya want for nothing?")).ok(),
            Some("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        );
        // another key, another hash: a dictionary without the key finds nothing
        let other = Hasher::new(b"another key of the same kind....");
        assert_ne!(
            other.hex(b"what do ya want for nothing?"),
            hasher.hex(b"what do ya want for nothing?")
        );
        assert!(!format!("{hasher:?}").contains("Jefe"));
    }

    #[test]
    fn sealed_values_open_under_their_key_only_and_show_nothing() -> Result<()> {
        let hasher = Hasher::new(b"a masking key of thirty-two bytes");
        let plain = "acct-41@plain.example, l'été";
        let sealed = hasher.seal(plain)?;
        assert!(sealed.starts_with(SEALED_PREFIX), "{sealed}");
        assert!(!sealed.contains("plain"), "{sealed}");
        assert_eq!(hasher.open(&sealed).as_deref(), Some(plain));
        // a random nonce: the same value seals differently, and both open
        let again = hasher.seal(plain)?;
        assert_ne!(again, sealed);
        assert_eq!(hasher.open(&again).as_deref(), Some(plain));
        // another key, an altered digit, a cut, a plain value: nothing opens
        let other = Hasher::new(b"another masking key, also long..");
        assert_eq!(other.open(&sealed), None);
        let last = sealed.len() - 1;
        let flipped = if sealed.ends_with('0') { "1" } else { "0" };
        assert_eq!(hasher.open(&format!("{}{flipped}", &sealed[..last])), None);
        assert_eq!(hasher.open(&sealed[..last]), None);
        assert_eq!(hasher.open(&sealed[..SEALED_PREFIX.len() + 10]), None);
        assert_eq!(hasher.open(plain), None);
        assert_eq!(hasher.open(""), None);
        Ok(())
    }

    fn config(text: &str) -> Result<Config> {
        Config::parse(text, Path::new("test.toml"), Vec::new())
    }

    #[test]
    fn a_hashed_column_needs_a_key_of_32_bytes_and_the_error_names_where() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::config("test", e.to_string()))?;
        let short = dir.path().join("short");
        let good = dir.path().join("good");
        std::fs::write(&short, "too short\n").map_err(|e| Error::config("t", e.to_string()))?;
        std::fs::write(&good, format!("{}\n", "k".repeat(40)))
            .map_err(|e| Error::config("t", e.to_string()))?;
        let base = "[source]\ndatabase = \"a\"\n[sink.tables.\"public.customers\"]\n\
                    columns = { email = \"hash\", notes = \"drop\" }\n";
        let with_file = |file: &Path| {
            config(&format!(
                "{base}[sink.masking]\nkey_file = \"{}\"\n",
                file.display()
            ))
        };
        let message = Masking::from_config(&with_file(&short)?)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(message.contains("public.customers"), "{message}");
        assert!(message.contains("email"), "{message}");
        assert!(message.contains("holds 9 bytes"), "{message}");
        assert!(
            !message.contains("too short"),
            "the key itself leaked: {message}"
        );
        let missing = config(&format!(
            "{base}[sink.masking]\nkey_env = \"LAKEWRITER_TEST_KEY_THAT_IS_NOT_SET\"\n"
        ))?;
        let message = Masking::from_config(&missing)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            message.contains("LAKEWRITER_TEST_KEY_THAT_IS_NOT_SET is not set"),
            "{message}"
        );
        let masking = Masking::from_config(&with_file(&good)?)?;
        assert!(masking.hasher().is_some());
        let customers = TableId::new("public", "customers");
        assert_eq!(
            masking.policies(&customers).get("notes"),
            Some(&ColumnPolicy::Drop)
        );
        // without a hashed column no key is needed
        let redact_only = config(
            "[source]\ndatabase = \"a\"\n[sink.tables.\"public.t\"]\ncolumns = { a = \"redact\" }\n\
             [sink.masking]\nkey_env = \"LAKEWRITER_TEST_KEY_THAT_IS_NOT_SET\"\n",
        )?;
        assert!(Masking::from_config(&redact_only)?.hasher().is_none());
        Ok(())
    }

    #[test]
    fn key_columns_may_be_hashed_but_not_dropped_or_redacted() {
        let refused = config(
            "[source]\ndatabase = \"a\"\n[source.tables.\"public.t\"]\nkey = [\"id\"]\n\
             [sink.tables.\"public.t\"]\ncolumns = { id = \"drop\" }\n",
        );
        let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            message.contains("id is a key column of public.t"),
            "{message}"
        );
        let partitioned = config(
            "[source]\ndatabase = \"a\"\n[sink.tables.\"public.t\"]\n\
             partition_by = [\"day(born)\"]\ncolumns = { born = \"redact\" }\n",
        );
        let message = partitioned.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("partitions on born"), "{message}");

        let masking = Masking {
            tables: BTreeMap::from([(
                TableId::new("public", "t"),
                BTreeMap::from([
                    ("id".to_string(), ColumnPolicy::Hash),
                    ("ssn".to_string(), ColumnPolicy::Redact),
                ]),
            )]),
            ..Masking::default()
        };
        let t = TableId::new("public", "t");
        let key = vec!["id".to_string()];
        assert!(masking.check_table(&t, &["id", "ssn"], &key).is_ok());
        let unknown = masking
            .check_table(&t, &["id", "social"], &key)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(unknown.contains("names column ssn"), "{unknown}");
        let keyed_on_ssn = masking
            .check_table(&t, &["id", "ssn"], &["ssn".to_string()])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            keyed_on_ssn.contains("ssn is a key column"),
            "{keyed_on_ssn}"
        );
    }
}
