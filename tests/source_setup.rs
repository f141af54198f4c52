//! Publication and slot before a run: created when the config allows it, refused with the SQL
//! that creates them when it does not, refused when the slot exists in an unusable form.

mod support;

use std::path::Path;

use lakewriter::config::Config;
use lakewriter::source::connection::connect;
use lakewriter::source::setup::{Readiness, ensure_publication, slot_state};
use support::TestDb;

fn config(db: &TestDb, env: &[(&str, &str)]) -> Config {
    Config::parse(
        &db.config_toml(""),
        Path::new("test.toml"),
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
    .expect("config")
}

#[tokio::test]
async fn a_missing_publication_is_created_for_the_selected_tables_only_when_allowed() {
    let db = TestDb::new("setup_publication").await;
    let admin = db.client().await;
    admin
        .batch_execute(
            "CREATE TABLE orders (id int PRIMARY KEY); CREATE TABLE orders_tmp (id int PRIMARY KEY);",
        )
        .await
        .expect("schema");

    let refused = config(&db, &[("LAKEWRITER__SOURCE__CREATE_PUBLICATION", "false")]);
    let client = connect(&refused.source).await.expect("connect");
    let err = ensure_publication(&client, &refused)
        .await
        .expect_err("no publication, not allowed to create one");
    let message = err.to_string();
    assert!(message.contains(&db.publication), "{message}");
    assert!(message.contains("CREATE PUBLICATION"), "{message}");

    let allowed = config(
        &db,
        &[("LAKEWRITER__SOURCE__EXCLUDE", "[\"public.*_tmp\"]")],
    );
    assert_eq!(
        ensure_publication(&client, &allowed).await.expect("create"),
        Readiness::Created
    );
    assert_eq!(
        ensure_publication(&client, &allowed).await.expect("again"),
        Readiness::Existing
    );
    let published: Vec<String> = admin
        .query(
            "SELECT tablename::text FROM pg_publication_tables WHERE pubname = $1",
            &[&db.publication],
        )
        .await
        .expect("read")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        published,
        vec!["orders".to_string()],
        "excluded tables stay out"
    );
}

#[tokio::test]
async fn an_unusable_or_forbidden_slot_is_refused_clearly() {
    let db = TestDb::new("setup_slot").await;
    let allowed = config(&db, &[]);
    let client = connect(&allowed.source).await.expect("connect");
    assert_eq!(
        slot_state(&client, &allowed).await.expect("state"),
        Readiness::Missing
    );

    let refused = config(&db, &[("LAKEWRITER__SOURCE__CREATE_SLOT", "false")]);
    let message = slot_state(&client, &refused)
        .await
        .expect_err("missing and not to be created")
        .to_string();
    assert!(
        message.contains("pg_create_logical_replication_slot"),
        "{message}"
    );

    client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'test_decoding')",
            &[&db.slot],
        )
        .await
        .expect("slot");
    let message = slot_state(&client, &allowed)
        .await
        .expect_err("wrong plugin")
        .to_string();
    assert!(message.contains("test_decoding"), "{message}");
}
