//! What a table's checkpoint cannot say: whether the stream carried the table's every change
//! since it. A checkpoint says "the lake holds the table up to this LSN", and a restart
//! streams on from there — but only what the slot still has and the publication still sends.
//! Three things break that silently:
//!
//! - a table leaves the publication (or the `include` list) and comes back: the stream never
//!   carried its changes meanwhile, and the slot moved on;
//! - a table is dropped and created again under its name: its old rows are never deleted;
//! - the slot is dropped and created again out of band (or advanced by hand): the changes
//!   between the old position and the new one are gone.
//!
//! So beside the lake tables, lakewriter keeps a small record per slot (the [`Record`], at
//! `<warehouse>/_lakewriter/<namespace>/<slot>.json`): the highest position it may acknowledge
//! to the slot, and each streamed table's *membership* — the table's OID and the OIDs of the
//! publication entries that put it in the publication. A table removed from a publication and
//! added back gets a new entry, a table created again a new OID, so a changed membership is a
//! break in the table's stream. The slot never confirms past the record's position (the
//! record is written first), so a slot found ahead of it was moved by someone else. Either
//! break means a copy of the table (or of every table) again, logged with the reason.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::cloud::S3Location;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::table::TableId;

/// What lakewriter remembers of one slot between runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The slot the record is about.
    pub slot: String,
    /// The highest position lakewriter may acknowledge to the slot: it writes this first, then
    /// acknowledges up to it. A slot confirmed past it was moved outside lakewriter.
    pub acknowledged: String,
    /// The streamed tables (`schema.table`) and their membership (see [`memberships`]).
    pub tables: BTreeMap<String, String>,
    /// The tables `[sink] on_table_error = "stop_table"` stopped, with the error that stopped
    /// them, for `status` (a restart after the fix clears it).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stopped: BTreeMap<String, String>,
    /// The masking each table with a policy was written with (`Masking::fingerprint`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub masking: BTreeMap<String, String>,
}

impl Record {
    /// The position lakewriter may acknowledge up to.
    pub fn acknowledged(&self) -> Lsn {
        // checked when read (RecordStore::read) and written from an Lsn
        self.acknowledged.parse().unwrap_or(Lsn::ZERO)
    }
}

/// Where a slot's [`Record`] is kept: a local file (written whole and renamed) or an S3
/// object (a put is atomic).
#[derive(Debug)]
pub struct RecordStore {
    place: Place,
    slot: String,
}

#[derive(Debug)]
enum Place {
    Local(PathBuf),
    S3 {
        client: Box<aws_sdk_s3::Client>,
        location: S3Location,
        key: String,
        /// Its encryption settings.
        s3: Box<crate::config::S3Config>,
    },
}

impl RecordStore {
    /// The store of `config`'s slot, in its warehouse.
    pub async fn new(config: &Config) -> Result<RecordStore> {
        let name = format!(
            "_lakewriter/{}/{}.json",
            config.sink.namespace, config.source.slot
        );
        let place = match crate::cloud::warehouse_location(config)? {
            Some(location) => Place::S3 {
                client: Box::new(crate::cloud::s3_client(config).await),
                key: location.key(&name),
                location,
                s3: Box::new(config.sink.s3.clone()),
            },
            None => Place::Local(PathBuf::from(&config.sink.warehouse).join(name)),
        };
        Ok(RecordStore {
            place,
            slot: config.source.slot.clone(),
        })
    }

    /// Where the record is, for messages.
    pub fn describe(&self) -> String {
        match &self.place {
            Place::Local(path) => path.display().to_string(),
            Place::S3 { location, key, .. } => format!("s3://{}/{key}", location.bucket),
        }
    }

    /// The record; `None` when there is none yet (a first run, or one by a version that kept
    /// none).
    pub async fn read(&self) -> Result<Option<Record>> {
        let bytes = match &self.place {
            Place::Local(path) => match std::fs::read(path) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(source) => {
                    return Err(Error::Io {
                        path: path.clone(),
                        source,
                    });
                }
            },
            Place::S3 {
                client,
                location,
                key,
                ..
            } => {
                let got = client
                    .get_object()
                    .bucket(&location.bucket)
                    .key(key)
                    .send()
                    .await;
                match got {
                    Ok(object) => object
                        .body
                        .collect()
                        .await
                        .map_err(|e| self.error(format!("read: {e}")))?
                        .to_vec(),
                    Err(e) => {
                        let e = e.into_service_error();
                        if e.is_no_such_key() {
                            return Ok(None);
                        }
                        return Err(self.error(format!("read: {e}")));
                    }
                }
            }
        };
        let record: Record = serde_json::from_slice(&bytes)
            .map_err(|e| self.error(format!("not a lakewriter slot record: {e}")))?;
        if record.acknowledged.parse::<Lsn>().is_err() {
            return Err(self.error(format!(
                "acknowledged = {:?} is not an LSN",
                record.acknowledged
            )));
        }
        if record.slot != self.slot {
            return Err(self.error(format!(
                "the record is about slot {}, not {}",
                record.slot, self.slot
            )));
        }
        Ok(Some(record))
    }

    /// Replaces the record, whole.
    pub async fn write(&self, record: &Record) -> Result<()> {
        let bytes =
            serde_json::to_vec_pretty(record).map_err(|e| self.error(format!("encode: {e}")))?;
        match &self.place {
            Place::Local(path) => {
                let io = |source| Error::Io {
                    path: path.clone(),
                    source,
                };
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(io)?;
                }
                let partial = path.with_extension("json.partial");
                std::fs::write(&partial, &bytes).map_err(|source| Error::Io {
                    path: partial.clone(),
                    source,
                })?;
                std::fs::rename(&partial, path).map_err(io)?;
            }
            Place::S3 {
                client,
                location,
                key,
                s3,
            } => {
                crate::cloud::encrypted(client.put_object(), s3)
                    .bucket(&location.bucket)
                    .key(key)
                    .body(bytes.into())
                    .send()
                    .await
                    .map_err(|e| self.error(format!("write: {}", e.into_service_error())))?;
            }
        }
        Ok(())
    }

    fn error(&self, message: String) -> Error {
        Error::Sink {
            table: format!("(slot record {})", self.describe()),
            message,
            retryable: true,
        }
    }
}

/// The membership of each table `publication` publishes: `<table OID>/<publication entries>/
/// <schema entries>`, the OIDs of the `pg_publication_rel` rows naming the table (or a
/// partitioned table it belongs to) and of the `pg_publication_namespace` rows naming its
/// schema. A table that leaves and rejoins, or is created again, has another.
/// (`pg_partition_ancestors` names only partitions and partitioned tables, the relation
/// itself among them; an ordinary table is matched on its own OID.)
pub async fn memberships(client: &Client, publication: &str) -> Result<BTreeMap<TableId, String>> {
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map_err(|e| Error::postgres("read the server version", e))?
        .get(0);
    // schemas joined publications in PostgreSQL 15
    let schemas = if version >= 150_000 {
        "coalesce((SELECT string_agg(pn.oid::text, ',' ORDER BY pn.oid) \
           FROM pg_publication_namespace pn \
           WHERE pn.pnpubid = p.oid AND pn.pnnspid = c.relnamespace), '')"
    } else {
        "''"
    };
    let query = format!(
        "SELECT pt.schemaname::text, pt.tablename::text, \
           c.oid::text || '/' || \
           coalesce((SELECT string_agg(pr.oid::text, ',' ORDER BY pr.oid) \
             FROM pg_publication_rel pr \
             WHERE pr.prpubid = p.oid \
               AND (pr.prrelid = c.oid \
                    OR pr.prrelid IN (SELECT relid FROM pg_partition_ancestors(c.oid)))), '') \
           || '/' || {schemas} \
         FROM pg_publication p \
         JOIN pg_publication_tables pt ON pt.pubname = p.pubname \
         JOIN pg_namespace n ON n.nspname = pt.schemaname \
         JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename \
         WHERE p.pubname = $1"
    );
    let rows = client.query(&query, &[&publication]).await.map_err(|e| {
        Error::postgres(
            format!("read the membership of publication {publication}'s tables"),
            e,
        )
    })?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                TableId::new(r.get::<_, String>(0), r.get::<_, String>(1)),
                r.get::<_, String>(2),
            )
        })
        .collect())
}

/// Why `table`, which the lake holds up to a checkpoint, must be copied again; `None` when
/// its stream is unbroken. `record` is the last run's record, `membership` the table's now.
pub fn broken(record: &Record, table: &TableId, membership: Option<&str>) -> Option<String> {
    match (record.tables.get(&table.to_string()), membership) {
        (None, _) => Some(
            "it was not streamed by the last run (out of the publication or the include list): \
             its changes since are not in the slot"
                .into(),
        ),
        (Some(before), Some(now)) if before != now => Some(format!(
            "it left the publication and rejoined it, or was created again, since the last \
             run (membership {before}, now {now}): its changes meanwhile were not streamed"
        )),
        _ => None,
    }
}

/// Why `table`'s checkpoint cannot be continued under the masking `now` (its
/// `Masking::fingerprint`): the last run recorded another (or none, with a policy now), so
/// the lake holds values masked otherwise, or not at all.
pub fn masking_changed(record: &Record, table: &TableId, now: &str) -> Option<String> {
    let before = record
        .masking
        .get(&table.to_string())
        .map(String::as_str)
        .unwrap_or("");
    (before != now).then(|| {
        let policies = |f: &str| {
            let text = f.split(';').next().unwrap_or("");
            if text.is_empty() {
                "none".to_string()
            } else {
                text.to_string()
            }
        };
        let key = if before.contains(";key=") && now.contains(";key=") {
            " (or the masking key)"
        } else {
            ""
        };
        format!(
            "its masking policy changed since the last run (from {} to {}{key}): copying it again \
             replaces every row with one masked the new way (snapshots from before keep the old \
             values until they expire)",
            policies(before),
            policies(now)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(tables: &[(&str, &str)]) -> Record {
        Record {
            slot: "s".into(),
            acknowledged: "0/10".into(),
            tables: tables
                .iter()
                .map(|(t, m)| (t.to_string(), m.to_string()))
                .collect(),
            stopped: BTreeMap::new(),
            masking: BTreeMap::new(),
        }
    }

    #[test]
    fn a_table_streamed_throughout_is_unbroken() {
        let table = TableId::new("public", "a");
        assert_eq!(
            broken(&record(&[("public.a", "1/2/")]), &table, Some("1/2/")),
            None
        );
    }

    #[test]
    fn a_table_missing_from_the_record_or_with_another_membership_is_broken() {
        let table = TableId::new("public", "a");
        let absent = broken(&record(&[("public.b", "1/2/")]), &table, Some("1/2/"));
        assert!(absent.is_some_and(|why| why.contains("not streamed by the last run")));
        let rejoined = broken(&record(&[("public.a", "1/2/")]), &table, Some("1/3/"));
        assert!(rejoined.is_some_and(|why| why.contains("1/2/") && why.contains("1/3/")));
    }

    #[test]
    fn records_round_trip_through_json() -> Result<(), serde_json::Error> {
        let before = record(&[("public.a", "1/2/")]);
        let text = serde_json::to_string(&before)?;
        assert_eq!(serde_json::from_str::<Record>(&text)?, before);
        assert_eq!(before.acknowledged(), Lsn(0x10));
        Ok(())
    }
}
