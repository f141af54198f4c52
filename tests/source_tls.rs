//! TLS to the source (`source.sslmode`, `source.sslrootcert`) against the stack's PostgreSQL,
//! which serves a certificate for 127.0.0.1 signed by a throwaway CA (`scripts/stack`): the
//! writer's sessions and its walsender are encrypted when asked, and a server whose certificate
//! does not chain to the trusted roots is refused with an error that says so.

mod support;

use support::writer::{caught_up, command, duck_query, start_with, stop};
use support::{TestDb, stack};

/// `verify-full` with the stack's CA: the snapshot, the stream and `verify` all run, and
/// PostgreSQL reports every lakewriter session of this database as TLS.
#[tokio::test]
async fn run_and_verify_work_over_verified_tls_and_every_session_is_encrypted() {
    let db = TestDb::new("source_tls").await;
    db.psql(&["-v", "rows=2000", "-f", "sql/orders.sql"]);
    let ca = stack().var("LAKEWRITER_PG_CA").to_string();
    let settings = [
        ("SOURCE__SSLMODE", "verify-full"),
        ("SOURCE__SSLROOTCERT", ca.as_str()),
    ];
    let mut child = start_with(&db, &settings);
    db.workload(2, 200);
    caught_up(&db, &mut child).await;

    let sessions: Vec<(String, bool)> = db
        .client()
        .await
        .query(
            "SELECT a.backend_type, coalesce(s.ssl, false) FROM pg_stat_activity a \
             LEFT JOIN pg_stat_ssl s ON s.pid = a.pid \
             WHERE a.application_name LIKE 'lakewriter%' AND a.datname = $1",
            &[&db.name],
        )
        .await
        .expect("read the sessions")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(
        sessions.iter().any(|(kind, _)| kind == "walsender"),
        "no replication session of the writer: {sessions:?}"
    );
    assert!(
        sessions.iter().all(|(_, ssl)| *ssl),
        "a session of the writer is not encrypted: {sessions:?}"
    );
    stop(child);

    support::writer::command_ok(&db, &["verify"], &settings);
    let postgres: (i64, i64) = {
        let row = db
            .client()
            .await
            .query_one(
                "SELECT count(*), coalesce(sum(order_id), 0)::bigint FROM orders",
                &[],
            )
            .await
            .expect("count orders");
        (row.get(0), row.get(1))
    };
    assert_eq!(
        duck_query(&db, "orders", "SELECT count(*), sum(order_id) FROM {scan}"),
        vec![format!("{}|{}", postgres.0, postgres.1)],
        "the lake read by DuckDB differs from PostgreSQL"
    );
}

/// A server certificate that does not chain to `sslrootcert` stops the writer before anything
/// is read, with an error naming the server and the certificate; a certificate that does not
/// name the host is refused by `verify-full` only; `require` checks no certificate.
#[tokio::test]
async fn an_untrusted_server_certificate_is_refused_with_a_named_error() {
    let db = TestDb::new("source_tls_refused").await;
    db.psql(&["-v", "rows=10", "-f", "sql/orders.sql"]);
    let other = stack().var("LAKEWRITER_PG_OTHER_CA").to_string();
    let refused = command(
        &db,
        &["run"],
        &[
            ("SOURCE__SSLMODE", "verify-full"),
            ("SOURCE__SSLROOTCERT", other.as_str()),
        ],
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success(),
        "a run trusting another CA started"
    );
    assert!(
        stderr.contains("127.0.0.1") && stderr.contains("certificate"),
        "the error names neither the server nor its certificate: {stderr}"
    );
    assert_eq!(
        db.client()
            .await
            .query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
                &[&db.slot],
            )
            .await
            .expect("read the slots")
            .get::<_, i64>(0),
        0,
        "the refused run created its slot"
    );

    // the stack's CA, the server reached as "localhost", which its certificate does not name:
    // verify-full refuses it; verify-ca checks the chain only, require nothing
    let ca = stack().var("LAKEWRITER_PG_CA").to_string();
    for (mode, root, connects) in [
        ("verify-full", ca.as_str(), false),
        ("verify-ca", ca.as_str(), true),
        ("require", other.as_str(), true),
    ] {
        let doctor = command(
            &db,
            &["doctor"],
            &[
                ("SOURCE__SSLMODE", mode),
                ("SOURCE__SSLROOTCERT", root),
                ("SOURCE__HOST", "localhost"),
            ],
        );
        let out = String::from_utf8_lossy(&doctor.stdout);
        let over_tls = out.contains("connected to postgres@localhost") && out.contains("over TLS");
        assert_eq!(
            over_tls,
            connects,
            "sslmode = {mode}, server reached as localhost: {out}{}",
            String::from_utf8_lossy(&doctor.stderr)
        );
        if !connects {
            assert!(
                out.contains("certificate") && out.contains("sslrootcert"),
                "sslmode = {mode}: the refusal does not say why and what to fix: {out}"
            );
        }
    }
}

/// `sslcert` and `sslkey`: a role the server admits only with a client certificate (`cert` in
/// pg_hba.conf) runs the writer, replication included; without the certificate it is refused.
#[tokio::test]
async fn a_client_certificate_logs_in_where_pg_hba_asks_for_one() {
    let db = TestDb::new("source_tls_cert").await;
    db.psql(&["-v", "rows=500", "-f", "sql/orders.sql"]);
    let ca = stack().var("LAKEWRITER_PG_CA").to_string();
    let cert = stack().var("LAKEWRITER_PG_CLIENT_CERT").to_string();
    let key = stack().var("LAKEWRITER_PG_CLIENT_KEY").to_string();
    let without = [
        ("SOURCE__USER", "lakewriter_cert"),
        ("SOURCE__SSLMODE", "verify-full"),
        ("SOURCE__SSLROOTCERT", ca.as_str()),
    ];
    let refused = command(&db, &["run"], &without);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("lakewriter_cert"),
        "the certificate-only role connected without a certificate: {stderr}"
    );

    let with: Vec<(&str, &str)> = without
        .iter()
        .copied()
        .chain([
            ("SOURCE__SSLCERT", cert.as_str()),
            ("SOURCE__SSLKEY", key.as_str()),
        ])
        .collect();
    let mut child = start_with(&db, &with);
    db.workload(1, 100);
    caught_up(&db, &mut child).await;
    stop(child);
    support::writer::command_ok(&db, &["verify"], &with);
}
