//! Doctor's sink checks: the warehouse is writable (a local directory, or the S3 bucket and
//! prefix) and the catalog answers (the SQLite file, or the Glue database). Delta tables are
//! their own catalog: with them only Glue (where they are registered) is checked, and
//! partition specs are held to the plain column names Delta partitions by.

use std::path::Path;

use aws_sdk_glue::error::ProvideErrorMetadata;

use super::Finding;
use crate::cloud;
use crate::config::{CatalogKind, Config, TableFormat};

const PROBE: &str = "_lakewriter_doctor_probe";

pub(super) async fn check(config: &Config, out: &mut Vec<Finding>) {
    match cloud::warehouse_location(config) {
        Err(e) => out.push(Finding::error(e.to_string(), "fix [sink] warehouse")),
        Ok(None) => check_local_dir(Path::new(&config.sink.warehouse), out),
        Ok(Some(location)) => check_s3(config, &location, out).await,
    }
    let delta = config.sink.format == TableFormat::Delta;
    if delta {
        check_delta_partitions(config, out);
    }
    match config.sink.catalog {
        CatalogKind::Sqlite if delta => out.push(Finding::ok(format!(
            "Delta tables need no catalog: each _delta_log is its table's, and readers find \
             the tables under {}/{}",
            config.sink.warehouse.trim_end_matches('/'),
            config.sink.namespace
        ))),
        CatalogKind::Sqlite => {
            let path = config.sqlite_catalog_path();
            match path.parent().filter(|p| !p.as_os_str().is_empty()) {
                Some(dir) if dir != Path::new(&config.sink.warehouse) => check_local_dir(dir, out),
                _ => {}
            }
            out.push(Finding::ok(format!("SQLite catalog at {}", path.display())));
        }
        CatalogKind::Glue => check_glue(config, out).await,
        CatalogKind::S3tables => check_s3tables(config, out).await,
        CatalogKind::Rest => check_rest(config, out).await,
    }
}

/// Delta partitions by plain column names: an Iceberg transform (`day(…)`, `bucket(…)`) in
/// `[sink.tables]` would stop that table when it is created.
fn check_delta_partitions(config: &Config, out: &mut Vec<Finding>) {
    for (table, settings) in &config.sink.tables {
        for expression in &settings.partition_by {
            if expression.contains('(') {
                out.push(Finding::error(
                    format!(
                        "table {table}: partition_by {expression:?} is an Iceberg transform; \
                         Delta tables partition by plain column names"
                    ),
                    format!(
                        "in [sink.tables.\"{table}\"] partition by a column (add a date \
                         column at the source for day(…)), or use format = \"iceberg\""
                    ),
                ));
            }
        }
    }
}

fn check_local_dir(dir: &Path, out: &mut Vec<Finding>) {
    let probe = dir.join(PROBE);
    let result = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&probe, b"probe"))
        .and_then(|()| std::fs::remove_file(&probe));
    match result {
        Ok(()) => out.push(Finding::ok(format!(
            "warehouse {} is writable",
            dir.display()
        ))),
        Err(e) => out.push(Finding::error(
            format!("warehouse {} is not writable: {e}", dir.display()),
            "create the directory and give the user running lakewriter write access, \
             or change [sink] warehouse",
        )),
    }
}

async fn check_s3(config: &Config, location: &cloud::S3Location, out: &mut Vec<Finding>) {
    let s3 = cloud::s3_client(config).await;
    let key = location.key(PROBE);
    let url = format!("s3://{}/{}", location.bucket, key);
    let put = cloud::encrypted(s3.put_object(), &config.sink.s3)
        .bucket(&location.bucket)
        .key(&key)
        .body(b"probe".to_vec().into())
        .send()
        .await;
    if let Err(e) = put {
        let e = e.into_service_error();
        out.push(Finding::error(
            format!(
                "cannot write {url}: {}",
                e.message().or(e.code()).unwrap_or("no answer from S3")
            ),
            format!(
                "check the bucket exists, the region ([sink.s3] region), and that the role may \
                 s3:PutObject, s3:GetObject and s3:DeleteObject on arn:aws:s3:::{}/{}* \
                 (README: Production on AWS)",
                location.bucket,
                location.key("")
            ),
        ));
        return;
    }
    let listed = s3
        .list_objects_v2()
        .bucket(&location.bucket)
        .prefix(location.key(""))
        .max_keys(1)
        .send()
        .await;
    let deleted = s3
        .delete_object()
        .bucket(&location.bucket)
        .key(&key)
        .send()
        .await;
    match (listed, deleted) {
        (Ok(_), Ok(_)) => out.push(Finding::ok(format!(
            "warehouse s3://{}/{} is writable, listable and deletable",
            location.bucket, location.prefix
        ))),
        (Err(e), _) => out.push(Finding::error(
            format!(
                "cannot list s3://{}/{}: {}",
                location.bucket,
                location.prefix,
                e.into_service_error()
                    .message()
                    .unwrap_or("no answer from S3")
            ),
            format!("allow s3:ListBucket on arn:aws:s3:::{}", location.bucket),
        )),
        (_, Err(e)) => out.push(Finding::warning(
            format!(
                "cannot delete {url}: {} — compact cannot remove expired files",
                e.into_service_error()
                    .message()
                    .unwrap_or("no answer from S3")
            ),
            format!(
                "allow s3:DeleteObject on arn:aws:s3:::{}/{}*",
                location.bucket,
                location.key("")
            ),
        )),
    }
}

async fn check_glue(config: &Config, out: &mut Vec<Finding>) {
    let glue = cloud::glue_client(config).await;
    let namespace = &config.sink.namespace;
    let mut request = glue.get_database().name(namespace);
    if let Some(id) = &config.sink.glue.catalog_id {
        request = request.catalog_id(id);
    }
    match request.send().await {
        Ok(_) => out.push(Finding::ok(format!("Glue database {namespace} exists"))),
        Err(e) => {
            let e = e.into_service_error();
            if e.is_entity_not_found_exception() {
                out.push(Finding::ok(format!(
                    "Glue database {namespace} does not exist yet: run creates it \
                     (needs glue:CreateDatabase)"
                )));
            } else {
                out.push(Finding::error(
                    format!(
                        "cannot read Glue database {namespace}: {}",
                        e.message().or(e.code()).unwrap_or("no answer from Glue")
                    ),
                    "check [sink.glue] region and the role's Glue permissions \
                     (README: Production on AWS)",
                ));
            }
        }
    }
}

async fn check_s3tables(config: &Config, out: &mut Vec<Finding>) {
    let client = cloud::s3tables_client(config).await;
    let arn = &config.sink.s3tables.table_bucket_arn;
    let namespace = &config.sink.namespace;
    if let Err(e) = client.get_table_bucket().table_bucket_arn(arn).send().await {
        let e = e.into_service_error();
        out.push(Finding::error(
            format!(
                "cannot read table bucket {arn}: {}",
                e.message()
                    .or(e.code())
                    .unwrap_or("no answer from S3 Tables")
            ),
            "create the table bucket, check [sink.s3tables] table_bucket_arn and region, and \
             the role's s3tables permissions (README: Amazon S3 Tables)",
        ));
        return;
    }
    let answer = client
        .get_namespace()
        .table_bucket_arn(arn)
        .namespace(namespace)
        .send()
        .await;
    match answer {
        Ok(_) => out.push(Finding::ok(format!(
            "S3 Tables namespace {namespace} exists in {arn}"
        ))),
        Err(e) => {
            let e = e.into_service_error();
            if e.code() == Some("NotFoundException") {
                out.push(Finding::ok(format!(
                    "S3 Tables namespace {namespace} does not exist yet in {arn}: run creates it \
                     (needs s3tables:CreateNamespace)"
                )));
            } else {
                out.push(Finding::error(
                    format!(
                        "cannot read S3 Tables namespace {namespace}: {}",
                        e.message()
                            .or(e.code())
                            .unwrap_or("no answer from S3 Tables")
                    ),
                    "check the role's s3tables permissions (README: Amazon S3 Tables)",
                ));
            }
        }
    }
}

async fn check_rest(config: &Config, out: &mut Vec<Finding>) {
    use crate::catalog::RestCatalog;
    let uri = &config.sink.rest.uri;
    let catalog = match RestCatalog::connect(&config.sink.rest).await {
        Ok(catalog) => catalog,
        Err(e) => {
            out.push(Finding::error(
                format!("cannot use the REST catalog at {uri}: {e}"),
                "check [sink.rest] uri and warehouse, that the server answers GET /v1/config, \
                 and the credentials: the token or client credential in the environment \
                 variable [sink.rest] names, or with sigv4 the AWS SDK's credentials and \
                 signing_name (README: Iceberg REST catalog)",
            ));
            return;
        }
    };
    out.push(Finding::ok(format!(
        "REST catalog at {uri} answers its configuration, with {}",
        catalog.auth_description()
    )));
    let namespace = &config.sink.namespace;
    match catalog.namespace_exists(namespace).await {
        Ok(true) => out.push(Finding::ok(format!(
            "REST catalog namespace {namespace} exists"
        ))),
        Ok(false) => out.push(Finding::ok(format!(
            "REST catalog namespace {namespace} does not exist yet: run creates it"
        ))),
        Err(e) => out.push(Finding::error(
            format!("cannot read REST catalog namespace {namespace}: {e}"),
            "check the principal's privileges on the namespace (README: Iceberg REST catalog)",
        )),
    }
}
