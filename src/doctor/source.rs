//! Doctor's source checks: server settings, the role's privileges, the publication, the
//! replicated tables' keys and replica identities, and the slot with the WAL it retains.

use tokio_postgres::Client;

use super::Finding;
use crate::config::{Config, TableMode};
use crate::source::connection;
use crate::source::schema::{self, ReplicaIdentity, SourceTable};
use crate::table::{TableId, quote_ident, quote_literal};

/// Retained WAL above this is worth a warning: the slot is holding disk on the primary.
const RETAINED_WAL_WARNING: i64 = 1 << 30;

pub(super) async fn check(config: &Config, out: &mut Vec<Finding>) {
    let source = &config.source;
    let target = connection::describe(source);
    let client = match connection::connect(source).await {
        Ok(client) => client,
        Err(e) => {
            let text = e.to_string();
            let fix = if text.contains("certificate") || text.contains("TLS") {
                "check [source] sslmode and sslrootcert: the file must hold the CA that signed \
                 the server's certificate (and verify-full needs that certificate to name host)"
            } else {
                "check [source] host, port, database and user, the password \
                 (LAKEWRITER__SOURCE__PASSWORD), and that pg_hba.conf admits this host"
            };
            out.push(Finding::error(format!("cannot connect: {text}"), fix));
            return;
        }
    };
    let tls = client
        .query_opt(
            "SELECT version FROM pg_stat_ssl WHERE pid = pg_backend_pid() AND ssl",
            &[],
        )
        .await
        .ok()
        .flatten()
        .map(|row| row.get::<_, Option<String>>(0).unwrap_or_default());
    out.push(Finding::ok(match tls {
        Some(version) => format!(
            "connected to {target} over TLS {version} (sslmode = {})",
            source.sslmode
        ),
        None => format!(
            "connected to {target} without TLS (sslmode = {})",
            source.sslmode
        ),
    }));
    if let Err(e) = check_connected(config, &client, out).await {
        out.push(Finding::error(
            format!("a catalog query failed: {e}"),
            "run doctor as the role lakewriter uses; the failing query is named above",
        ));
    }
}

async fn check_connected(
    config: &Config,
    client: &Client,
    out: &mut Vec<Finding>,
) -> crate::Result<()> {
    let q = |e| crate::Error::postgres("read server settings", e);
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int, current_setting('wal_level'), \
               current_setting('max_replication_slots')::int, \
               (SELECT count(*) FROM pg_replication_slots)::int, \
               current_setting('max_wal_senders')::int, \
               (SELECT count(*) FROM pg_stat_replication)::int, \
               pg_is_in_recovery(), current_user::text, \
               (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user), \
               EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rds_replication' \
                       AND pg_has_role(current_user, oid, 'member'))",
            &[],
        )
        .await
        .map_err(q)?;
    let version: i32 = row.get(0);
    let wal_level: String = row.get(1);
    let (max_slots, used_slots): (i32, i32) = (row.get(2), row.get(3));
    let (max_senders, used_senders): (i32, i32) = (row.get(4), row.get(5));
    let standby: bool = row.get(6);
    let user: String = row.get(7);
    let can_replicate = row.get::<_, Option<bool>>(8).unwrap_or(false) || row.get::<_, bool>(9);

    if version < 100_000 {
        out.push(Finding::error(
            format!("server version {version}: pgoutput needs PostgreSQL 10 or later"),
            "upgrade PostgreSQL",
        ));
    } else {
        out.push(Finding::ok(format!(
            "PostgreSQL {}.{}",
            version / 10_000,
            version % 10_000
        )));
    }
    if standby && version < 160_000 {
        out.push(Finding::error(
            "the server is a standby: logical decoding on a standby needs PostgreSQL 16",
            "point [source] host at the primary",
        ));
    }
    if wal_level == "logical" {
        out.push(Finding::ok("wal_level = logical"));
    } else {
        out.push(Finding::error(
            format!("wal_level = {wal_level}: logical decoding needs wal_level = logical"),
            "ALTER SYSTEM SET wal_level = logical;  -- then restart PostgreSQL\n\
             (RDS and Aurora: set rds.logical_replication = 1 in the parameter group and reboot)",
        ));
    }
    let slot = read_slot(client, &config.source.slot, version).await?;
    if slot.is_none() && used_slots >= max_slots {
        out.push(Finding::error(
            format!(
                "max_replication_slots = {max_slots}, all in use: no room for slot {}",
                config.source.slot
            ),
            format!(
                "ALTER SYSTEM SET max_replication_slots = {};  -- then restart PostgreSQL\n\
                 or drop an unused slot: SELECT pg_drop_replication_slot('…');",
                max_slots + 4
            ),
        ));
    } else {
        out.push(Finding::ok(format!(
            "max_replication_slots = {max_slots} ({used_slots} in use)"
        )));
    }
    if used_senders >= max_senders {
        out.push(Finding::error(
            format!("max_wal_senders = {max_senders}, all in use"),
            format!(
                "ALTER SYSTEM SET max_wal_senders = {};  -- then restart PostgreSQL",
                max_senders + 4
            ),
        ));
    } else {
        out.push(Finding::ok(format!(
            "max_wal_senders = {max_senders} ({used_senders} in use)"
        )));
    }
    if can_replicate {
        out.push(Finding::ok(format!("role {user} may start replication")));
    } else {
        out.push(Finding::error(
            format!("role {user} lacks the REPLICATION attribute"),
            format!(
                "ALTER ROLE {} REPLICATION;\n(RDS and Aurora: GRANT rds_replication TO {};)",
                quote_ident(&user),
                quote_ident(&user)
            ),
        ));
    }

    let tables = check_publication(config, client, out).await?;
    for table in &tables {
        check_table(config, table, &user, out);
    }
    check_config_tables(config, &tables, out);
    super::masking::check(config, client, &tables, version, out).await?;
    super::privileges::check(config, client, &tables, out).await?;
    check_slot(config, slot, out);
    Ok(())
}

/// The replicated tables (selected by the config and in the publication, or about to be),
/// described.
async fn check_publication(
    config: &Config,
    client: &Client,
    out: &mut Vec<Finding>,
) -> crate::Result<Vec<SourceTable>> {
    let name = &config.source.publication;
    let publication = client
        .query_opt(
            "SELECT pubinsert, pubupdate, pubdelete, pubtruncate FROM pg_publication \
             WHERE pubname = $1",
            &[name],
        )
        .await
        .map_err(|e| crate::Error::postgres(format!("read publication {name}"), e))?;
    let selected = schema::selected_tables(client, config).await?;
    let list = |tables: &[TableId]| {
        tables
            .iter()
            .map(TableId::quoted)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let replicated: Vec<TableId> = match publication {
        None if config.source.create_publication => {
            out.push(Finding::ok(format!(
                "publication {name} does not exist yet: run creates it for the selected tables \
                 (create_publication = true; the role must own them)"
            )));
            selected.clone()
        }
        None => {
            out.push(Finding::error(
                format!("publication {name} does not exist"),
                format!(
                    "CREATE PUBLICATION {} FOR TABLE {};\n\
                     (or sql/setup.sql, or set [source] create_publication = true)",
                    quote_ident(name),
                    if selected.is_empty() {
                        "…".to_string()
                    } else {
                        list(&selected)
                    }
                ),
            ));
            selected.clone()
        }
        Some(row) => {
            let (insert, update, delete, truncate): (bool, bool, bool, bool) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            if insert && update && delete {
                out.push(Finding::ok(format!(
                    "publication {name} publishes inserts, updates and deletes"
                )));
            } else {
                out.push(Finding::error(
                    format!(
                        "publication {name} leaves out some of insert, update and delete: \
                         the lake would miss changes"
                    ),
                    format!(
                        "ALTER PUBLICATION {} SET (publish = 'insert, update, delete, truncate');",
                        quote_ident(name)
                    ),
                ));
            }
            if !truncate {
                out.push(Finding::warning(
                    format!("publication {name} does not publish TRUNCATE: a truncated table would keep its rows in the lake"),
                    format!(
                        "ALTER PUBLICATION {} SET (publish = 'insert, update, delete, truncate');",
                        quote_ident(name)
                    ),
                ));
            }
            let published = schema::publication_tables(client, name).await?;
            let missing: Vec<TableId> = selected
                .iter()
                .filter(|t| !published.contains(t))
                .cloned()
                .collect();
            if !missing.is_empty() {
                out.push(Finding::warning(
                    format!(
                        "{} selected table(s) are not in publication {name}, so not replicated: {}",
                        missing.len(),
                        missing
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    format!(
                        "ALTER PUBLICATION {} ADD TABLE {};\n(or exclude them in [source] exclude)",
                        quote_ident(name),
                        list(&missing)
                    ),
                ));
            }
            selected
                .into_iter()
                .filter(|t| published.contains(t))
                .collect()
        }
    };
    if let Err(e) = crate::sink::refuse_shared_lake_names(&config.sink.namespace, &replicated) {
        out.push(Finding::error(
            e.to_string(),
            "leave one of the tables out in [source] exclude (or rename it in PostgreSQL)"
                .to_string(),
        ));
    }
    if replicated.is_empty() {
        out.push(Finding::error(
            format!(
                "no table to replicate: none matches include = [{}] (minus exclude) in publication {name}",
                config
                    .source
                    .include
                    .iter()
                    .map(|p| format!("\"{p}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "fix [source] include and exclude, or add the tables to the publication",
        ));
    } else {
        out.push(Finding::ok(format!(
            "{} table(s) to replicate: {}",
            replicated.len(),
            replicated
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let mut described = Vec::with_capacity(replicated.len());
    for table in &replicated {
        if let Some(t) = schema::describe_table(client, table).await? {
            described.push(t);
        }
    }
    Ok(described)
}

fn check_table(config: &Config, table: &SourceTable, user: &str, out: &mut Vec<Finding>) {
    let id = &table.id;
    let settings = config.source.tables.get(&id.to_string());
    let mode = settings.map(|s| s.mode).unwrap_or_default();
    let mut problems = 0;
    if !table.selectable {
        problems += 1;
        out.push(Finding::error(
            format!(
                "table {id}: role {user} cannot SELECT it (the initial snapshot and verify read it)"
            ),
            format!("GRANT SELECT ON {} TO {};", id.quoted(), quote_ident(user)),
        ));
    }
    if table.replica_identity == ReplicaIdentity::Nothing {
        problems += 1;
        out.push(Finding::error(
            format!(
                "table {id}: REPLICA IDENTITY NOTHING — UPDATE and DELETE on it fail on the primary \
                 once it is published, and the lake could not apply them"
            ),
            format!(
                "ALTER TABLE {} REPLICA IDENTITY {};",
                id.quoted(),
                if table.primary_key.is_empty() { "FULL" } else { "DEFAULT" }
            ),
        ));
    }
    let key = table.key_columns(config);
    if let Some(missing) = key.iter().find(|k| table.column(k).is_none()) {
        problems += 1;
        out.push(Finding::error(
            format!("table {id}: key column {missing} (from [source.tables.\"{id}\"] key) does not exist"),
            format!("fix [source.tables.\"{id}\"] key"),
        ));
    } else if mode == TableMode::Upsert {
        if key.is_empty() {
            problems += 1;
            out.push(Finding::error(
                format!(
                    "table {id}: no primary key or replica identity index, so no key to upsert on"
                ),
                format!(
                    "ALTER TABLE {} ADD PRIMARY KEY (…);\n\
                     or name unique columns in [source.tables.\"{id}\"] key = [\"…\"] and run\n\
                     ALTER TABLE {} REPLICA IDENTITY FULL;\n\
                     or keep every change instead: [source.tables.\"{id}\"] mode = \"changelog\"",
                    id.quoted(),
                    id.quoted()
                ),
            ));
        } else {
            let logged = table.logged_old_columns();
            if let Some(unlogged) = key.iter().find(|k| !logged.contains(k)) {
                problems += 1;
                out.push(Finding::error(
                    format!(
                        "table {id}: key column {unlogged} is not in the replica identity, so \
                         deletes would not say which row they remove"
                    ),
                    format!("ALTER TABLE {} REPLICA IDENTITY FULL;", id.quoted()),
                ));
            }
        }
    }
    if let Some(spec) = config.sink.tables.get(&id.to_string()) {
        let logged = table.logged_old_columns();
        for expression in &spec.partition_by {
            let column = schema::partition_source_column(expression);
            if table.column(column).is_none() {
                problems += 1;
                out.push(Finding::error(
                    format!("table {id}: partition expression {expression:?} names no column of the table"),
                    format!("fix [sink.tables.\"{id}\"] partition_by"),
                ));
            } else if mode == TableMode::Upsert && !logged.iter().any(|c| c == column) {
                problems += 1;
                out.push(Finding::error(
                    format!(
                        "table {id}: partitioned on {column}, which is outside its replica identity: \
                         a delete must go to the old row's partition, so the old row must be logged whole"
                    ),
                    format!("ALTER TABLE {} REPLICA IDENTITY FULL;", id.quoted()),
                ));
            }
        }
    }
    if problems == 0 {
        let key_text = if mode == TableMode::Changelog {
            "changelog mode".to_string()
        } else {
            format!("key ({})", key.join(", "))
        };
        out.push(Finding::ok(format!(
            "table {id}: {} columns, {key_text}, replica identity {:?}",
            table.columns.len(),
            table.replica_identity
        )));
    }
}

/// Per-table settings that match no replicated table are most likely typos.
fn check_config_tables(config: &Config, tables: &[SourceTable], out: &mut Vec<Finding>) {
    let known: Vec<String> = tables.iter().map(|t| t.id.to_string()).collect();
    let configured = config
        .source
        .tables
        .keys()
        .map(|k| ("source", k))
        .chain(config.sink.tables.keys().map(|k| ("sink", k)));
    for (section, name) in configured {
        if !known.contains(name) {
            out.push(Finding::warning(
                format!("[{section}.tables.\"{name}\"] matches no replicated table"),
                "check the name (schema.table, as in the catalog) or remove the section",
            ));
        }
    }
}

/// The replication slot as the server reports it.
struct SlotState {
    plugin: String,
    database: Option<String>,
    active_pid: Option<i32>,
    confirmed_flush: Option<String>,
    retained_bytes: Option<i64>,
    wal_status: Option<String>,
}

async fn read_slot(client: &Client, slot: &str, version: i32) -> crate::Result<Option<SlotState>> {
    // wal_status exists from PostgreSQL 13 on
    let wal_status = if version >= 130_000 {
        "wal_status::text"
    } else {
        "NULL::text"
    };
    let row = client
        .query_opt(
            &format!(
                "SELECT coalesce(plugin::text, ''), database::text, active_pid, \
                   confirmed_flush_lsn::text, \
                   pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
                                   ELSE pg_current_wal_lsn() END, restart_lsn)::bigint, \
                   {wal_status} \
                 FROM pg_replication_slots WHERE slot_name = $1"
            ),
            &[&slot],
        )
        .await
        .map_err(|e| crate::Error::postgres(format!("read replication slot {slot}"), e))?;
    Ok(row.map(|r| SlotState {
        plugin: r.get(0),
        database: r.get(1),
        active_pid: r.get(2),
        confirmed_flush: r.get(3),
        retained_bytes: r.get(4),
        wal_status: r.get(5),
    }))
}

fn check_slot(config: &Config, slot: Option<SlotState>, out: &mut Vec<Finding>) {
    let name = &config.source.slot;
    let create = format!(
        "SELECT pg_create_logical_replication_slot({}, 'pgoutput');",
        quote_literal(name)
    );
    let Some(slot) = slot else {
        if config.source.create_slot {
            out.push(Finding::ok(format!(
                "slot {name} does not exist yet: run creates it (create_slot = true)"
            )));
        } else {
            out.push(Finding::error(
                format!("slot {name} does not exist and create_slot = false"),
                format!("{create}\n(or set [source] create_slot = true)"),
            ));
        }
        return;
    };
    let drop_and_create = format!(
        "SELECT pg_drop_replication_slot({});\n{create}\n\
         (the lake's tables then need a new snapshot: drop them too)",
        quote_literal(name)
    );
    if slot.plugin != "pgoutput" {
        out.push(Finding::error(
            format!(
                "slot {name} uses the {:?} plugin, not pgoutput",
                slot.plugin
            ),
            format!("use another [source] slot name, or:\n{drop_and_create}"),
        ));
        return;
    }
    if slot.database.as_deref() != Some(config.source.database.as_str()) {
        out.push(Finding::error(
            format!(
                "slot {name} belongs to database {}, not {}",
                slot.database.as_deref().unwrap_or("(none)"),
                config.source.database
            ),
            "use another [source] slot name",
        ));
        return;
    }
    if slot.wal_status.as_deref() == Some("lost") {
        out.push(Finding::error(
            format!(
                "slot {name} has lost WAL it needed (max_slot_wal_keep_size was exceeded): \
                 changes are gone and the lake cannot be caught up from it"
            ),
            drop_and_create,
        ));
        return;
    }
    if let Some(pid) = slot.active_pid {
        out.push(Finding::error(
            format!("slot {name} is in use by another connection (pid {pid}): only one reader can stream a slot"),
            format!(
                "stop the other reader (another lakewriter?), or SELECT pg_terminate_backend({pid});"
            ),
        ));
        return;
    }
    let retained = slot.retained_bytes.unwrap_or(0);
    let lsn = slot.confirmed_flush.unwrap_or_else(|| "unknown".into());
    let message = format!(
        "slot {name}: pgoutput, confirmed up to {lsn}, retaining {} of WAL",
        human_bytes(retained)
    );
    if retained > RETAINED_WAL_WARNING {
        out.push(Finding::warning(
            message,
            "start lakewriter run to consume it; if the slot is abandoned, drop it:\n\
             SELECT pg_drop_replication_slot('…');",
        ));
    } else {
        out.push(Finding::ok(message));
    }
}

fn human_bytes(bytes: i64) -> String {
    let bytes = bytes.max(0) as f64;
    for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if bytes >= size as f64 {
            return format!("{:.1} {unit}", bytes / size as f64);
        }
    }
    format!("{bytes} B")
}
