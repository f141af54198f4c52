//! Doctor's least-privilege checks of the source role: lakewriter needs REPLICATION and SELECT
//! on the published tables, nothing more. A superuser, or a role that may write to the tables
//! it replicates, works — and is a warning, with the way down to what is needed.

use tokio_postgres::Client;

use super::Finding;
use crate::config::Config;
use crate::source::schema::SourceTable;
use crate::table::quote_ident;

pub(super) async fn check(
    config: &Config,
    client: &Client,
    tables: &[SourceTable],
    out: &mut Vec<Finding>,
) -> crate::Result<()> {
    let row = client
        .query_one(
            "SELECT current_user::text, rolsuper, rolcreatedb, rolcreaterole, rolbypassrls \
             FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map_err(|e| crate::Error::postgres("read the role's attributes", e))?;
    let user: String = row.get(0);
    let setup = format!(
        "psql -d {} -v role=lakewriter -v password=… -v publication={} -f sql/setup.sql\n\
         then set [source] user = \"lakewriter\" (and its password through \
         LAKEWRITER__SOURCE__PASSWORD)",
        config.source.database, config.source.publication
    );
    if row.get::<_, bool>(1) {
        out.push(Finding::warning(
            format!(
                "role {user} is a superuser: lakewriter needs only REPLICATION and SELECT on the \
                 published tables, and its password would open the whole server"
            ),
            setup,
        ));
        return Ok(());
    }
    let extra: Vec<&str> = [(2, "CREATEDB"), (3, "CREATEROLE"), (4, "BYPASSRLS")]
        .into_iter()
        .filter(|(i, _)| row.get::<_, bool>(*i))
        .map(|(_, name)| name)
        .collect();
    if !extra.is_empty() {
        out.push(Finding::warning(
            format!(
                "role {user} has {}, which lakewriter does not need",
                extra.join(", ")
            ),
            format!(
                "ALTER ROLE {} {};",
                quote_ident(&user),
                extra
                    .iter()
                    .map(|a| format!("NO{a}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        ));
    }
    let mut writable = Vec::new();
    for table in tables {
        let may_write: bool = client
            .query_one(
                "SELECT has_table_privilege($1::oid, 'INSERT, UPDATE, DELETE, TRUNCATE')",
                &[&table.oid.0],
            )
            .await
            .map_err(|e| crate::Error::postgres(format!("read the privileges on {}", table.id), e))?
            .get(0);
        if may_write {
            writable.push(table);
        }
    }
    if writable.is_empty() {
        out.push(Finding::ok(format!(
            "role {user} is no superuser and cannot write to the replicated tables"
        )));
    } else {
        out.push(Finding::warning(
            format!(
                "role {user} may write to {} replicated table(s) ({}): lakewriter only reads \
                 them (an owner may also alter or drop them; create_publication needs \
                 ownership, a publication made by sql/setup.sql does not)",
                writable.len(),
                writable
                    .iter()
                    .map(|t| t.id.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            writable
                .iter()
                .map(|t| {
                    format!(
                        "REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON {} FROM {};",
                        t.id.quoted(),
                        quote_ident(&user)
                    )
                })
                .collect::<Vec<_>>()
                .join("\n"),
        ));
    }
    Ok(())
}
