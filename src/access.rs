//! `lakewriter iam-policy`: the least AWS IAM policy a configuration needs — S3 actions on the
//! warehouse prefix only, Glue actions on its database and tables only, KMS actions on its key
//! only — built from the configuration, so what is granted follows what is configured.

use serde::Serialize;
use serde_json::{Value, json};

use crate::cloud::S3Location;
use crate::config::{CatalogKind, Config, ServerSideEncryption};
use crate::error::{Error, Result};

/// An IAM policy document, its fields in the order AWS prints them.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Policy {
    /// Always `2012-10-17`.
    pub version: &'static str,
    /// What is allowed.
    pub statement: Vec<Statement>,
}

/// One statement of a [`Policy`].
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Statement {
    /// Its name.
    pub sid: &'static str,
    /// Always `Allow`.
    pub effect: &'static str,
    /// The actions.
    pub action: Vec<&'static str>,
    /// The resources: an ARN or a list of them.
    pub resource: Value,
    /// Conditions, when the resources alone say too much.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub condition: Option<Value>,
}

fn allow(sid: &'static str, action: &[&'static str], resource: Value) -> Statement {
    Statement {
        sid,
        effect: "Allow",
        action: action.to_vec(),
        resource,
        condition: None,
    }
}

/// Reading and writing the objects of the warehouse prefix, and listing it.
fn warehouse_statements(location: &S3Location) -> Vec<Statement> {
    let bucket = &location.bucket;
    let prefix = location.prefix.as_str();
    let objects = if prefix.is_empty() {
        format!("arn:aws:s3:::{bucket}/*")
    } else {
        format!("arn:aws:s3:::{bucket}/{prefix}/*")
    };
    let listed = if prefix.is_empty() {
        json!(["*"])
    } else {
        json!([prefix, format!("{prefix}/*")])
    };
    vec![
        // write and read table files and lakewriter's slot record; delete for compact's
        // orphan removal and expiry, Delta's vacuum, Iceberg's old metadata files
        allow(
            "WarehouseObjects",
            &[
                "s3:GetObject",
                "s3:PutObject",
                "s3:DeleteObject",
                "s3:AbortMultipartUpload",
            ],
            json!(objects),
        ),
        Statement {
            condition: Some(json!({"StringLike": {"s3:prefix": listed}})),
            ..allow(
                "ListTheWarehousePrefix",
                &["s3:ListBucket"],
                json!(format!("arn:aws:s3:::{bucket}")),
            )
        },
        allow(
            "LocateTheBucket",
            &["s3:GetBucketLocation"],
            json!(format!("arn:aws:s3:::{bucket}")),
        ),
    ]
}

/// The policy document for `config`. A local warehouse needs no AWS access (an error says so),
/// except with S3 Tables, whose bucket's tables are then all it needs.
pub fn iam_policy(config: &Config) -> Result<Policy> {
    let location = S3Location::parse(&config.sink.warehouse)
        .map_err(|m| Error::config("sink.warehouse", m))?;
    let s3_tables = config.sink.catalog == CatalogKind::S3tables;
    let mut statements = match location {
        Some(location) => warehouse_statements(&location),
        // S3 Tables' tables are in its bucket: a local warehouse keeps only the slot record
        None if s3_tables => Vec::new(),
        None => {
            // a REST catalog's privileges are granted in the catalog, to its principal
            let rest = match config.sink.catalog {
                CatalogKind::Rest if config.sink.rest.sigv4 => {
                    "; with sink.rest.sigv4 the REST endpoint authorises the signing principal \
                     by the signing service's own IAM actions (those of S3 Tables or Glue on the \
                     catalog, namespace and tables), which this command does not print"
                }
                CatalogKind::Rest => {
                    "; the REST catalog's own privileges (create namespace, register, load \
                     and commit tables) are granted in the catalog to the principal lakewriter \
                     authenticates as"
                }
                _ => "",
            };
            return Err(Error::config(
                "sink.warehouse",
                format!(
                    "{} is a local warehouse: lakewriter needs no AWS permission for it{rest}",
                    config.sink.warehouse
                ),
            ));
        }
    };
    if s3_tables {
        let arn = &config.sink.s3tables.table_bucket_arn;
        // the table storage takes no deletes and no listing: reads and writes of table data
        // are these two actions on the bucket's tables
        statements.push(allow(
            "TablesOfTheTableBucket",
            &[
                "s3tables:GetTableBucket",
                "s3tables:GetNamespace",
                "s3tables:CreateNamespace",
                "s3tables:ListTables",
                "s3tables:CreateTable",
                "s3tables:GetTable",
                "s3tables:GetTableMetadataLocation",
                "s3tables:UpdateTableMetadataLocation",
                "s3tables:GetTableData",
                "s3tables:PutTableData",
            ],
            json!([arn.clone(), format!("{arn}/table/*")]),
        ));
    }
    if config.sink.catalog == CatalogKind::Glue {
        let region = config
            .sink
            .glue
            .region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok().filter(|r| !r.is_empty()))
            .unwrap_or_else(|| "*".to_string());
        let account = config
            .sink
            .glue
            .catalog_id
            .clone()
            .unwrap_or_else(|| "*".to_string());
        let namespace = &config.sink.namespace;
        statements.push(allow(
            "GlueTablesOfTheNamespace",
            &[
                "glue:GetDatabase",
                "glue:CreateDatabase",
                "glue:GetTable",
                "glue:GetTables",
                "glue:CreateTable",
                "glue:UpdateTable",
            ],
            json!([
                format!("arn:aws:glue:{region}:{account}:catalog"),
                format!("arn:aws:glue:{region}:{account}:database/{namespace}"),
                format!("arn:aws:glue:{region}:{account}:table/{namespace}/*"),
            ]),
        ));
    }
    if config.sink.s3.sse == Some(ServerSideEncryption::Kms)
        && let Some(key) = &config.sink.s3.kms_key_id
    {
        // S3 asks KMS for a data key on each write and to decrypt it on each read, as the
        // caller; an alias cannot be a policy's resource, so it becomes a condition
        let mut statement = allow(
            "TheWarehouseKey",
            &["kms:GenerateDataKey", "kms:Decrypt"],
            json!("*"),
        );
        let alias = key
            .strip_prefix("arn:aws:kms:")
            .and_then(|rest| rest.split_once(":alias/"))
            .map(|(_, name)| format!("alias/{name}"))
            .or_else(|| key.starts_with("alias/").then(|| key.clone()));
        if let Some(alias) = alias {
            statement.condition = Some(json!({"ForAnyValue:StringEquals":
                {"kms:ResourceAliases": alias}}));
        } else if key.starts_with("arn:aws:kms:") {
            statement.resource = json!(key);
        } else {
            statement.resource = json!(format!("arn:aws:kms:*:*:key/{key}"));
        }
        statements.push(statement);
    }
    Ok(Policy {
        version: "2012-10-17",
        statement: statements,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn policy(sink: &str) -> Result<Value> {
        let config = Config::parse(
            &format!("[source]\ndatabase = \"a\"\n[sink]\n{sink}"),
            Path::new("t.toml"),
            Vec::new(),
        )?;
        serde_json::to_value(iam_policy(&config)?)
            .map_err(|e| Error::config("t.toml", e.to_string()))
    }

    #[test]
    fn with_a_rest_catalog_the_policy_is_the_warehouse_only() -> Result<()> {
        let p = policy(
            "warehouse = \"s3://lake/lw\"\ncatalog = \"rest\"\n[sink.rest]\n\
             uri = \"https://catalog.example.com/api/catalog\"\n",
        )?;
        let text = p.to_string();
        assert!(text.contains("\"arn:aws:s3:::lake/lw/*\""), "{text}");
        assert!(
            !text.contains("glue:") && !text.contains("s3tables:"),
            "{text}"
        );
        let local = Config::parse(
            "[source]\ndatabase = \"a\"\n[sink]\nwarehouse = \"./w\"\ncatalog = \"rest\"\n\
             [sink.rest]\nuri = \"https://catalog.example.com\"\n",
            Path::new("t.toml"),
            Vec::new(),
        )?;
        let refused = iam_policy(&local).expect_err("a local warehouse needs no AWS policy");
        assert!(
            refused.to_string().contains("granted in the catalog"),
            "{refused}"
        );
        let signed = Config::parse(
            "[source]\ndatabase = \"a\"\n[sink]\nwarehouse = \"./w\"\ncatalog = \"rest\"\n\
             [sink.rest]\nuri = \"https://glue.eu-west-1.amazonaws.com/iceberg\"\nsigv4 = true\n\
             signing_name = \"glue\"\n",
            Path::new("t.toml"),
            Vec::new(),
        )?;
        let refused = iam_policy(&signed).expect_err("the signing service's actions");
        assert!(refused.to_string().contains("signing service"), "{refused}");
        Ok(())
    }

    #[test]
    fn with_s3_tables_the_policy_names_the_table_bucket_and_no_delete() -> Result<()> {
        let arn = "arn:aws:s3tables:eu-west-1:111122223333:bucket/lake";
        let p = policy(&format!(
            "warehouse = \"./w\"\ncatalog = \"s3tables\"\n[sink.s3tables]\n\
             table_bucket_arn = \"{arn}\"\n"
        ))?;
        let text = p.to_string();
        assert!(text.contains(&format!("\"{arn}/table/*\"")), "{text}");
        assert!(
            text.contains("s3tables:UpdateTableMetadataLocation"),
            "{text}"
        );
        assert!(text.contains("s3tables:PutTableData"), "{text}");
        assert!(!text.contains("s3:DeleteObject"), "{text}");
        assert!(!text.contains("glue:"), "{text}");
        Ok(())
    }

    #[test]
    fn the_policy_names_the_prefix_the_database_and_the_key_only() -> Result<()> {
        let p = policy(
            "warehouse = \"s3://lake/prod/lw\"\nnamespace = \"sales\"\ncatalog = \"glue\"\n\
             [sink.glue]\nregion = \"eu-west-1\"\ncatalog_id = \"111122223333\"\n\
             [sink.s3]\nsse = \"aws:kms\"\n\
             kms_key_id = \"arn:aws:kms:eu-west-1:111122223333:key/abcd\"\n",
        )?;
        let text = p.to_string();
        assert!(text.contains("\"arn:aws:s3:::lake/prod/lw/*\""), "{text}");
        assert!(
            text.contains("\"s3:prefix\":[\"prod/lw\",\"prod/lw/*\"]"),
            "{text}"
        );
        assert!(
            text.contains("arn:aws:glue:eu-west-1:111122223333:database/sales\""),
            "{text}"
        );
        assert!(
            text.contains("arn:aws:glue:eu-west-1:111122223333:table/sales/*"),
            "{text}"
        );
        assert!(
            text.contains("\"Resource\":\"arn:aws:kms:eu-west-1:111122223333:key/abcd\""),
            "{text}"
        );
        // nothing on every bucket, every table or every key
        assert!(!text.contains("arn:aws:s3:::*"), "{text}");
        assert!(
            !text.contains("\"s3:*\"") && !text.contains("\"glue:*\""),
            "{text}"
        );
        assert!(!text.contains("glue:DeleteTable"), "{text}");

        let sqlite = policy("warehouse = \"s3://lake/lw\"\n[sink.sqlite]\npath = \"c.db\"\n")?;
        assert!(!sqlite.to_string().contains("glue:"), "{sqlite}");
        assert!(!sqlite.to_string().contains("kms:"), "{sqlite}");
        let alias = policy(
            "warehouse = \"s3://lake/lw\"\n[sink.s3]\nsse = \"aws:kms\"\nkms_key_id = \"alias/lw\"\n",
        )?;
        assert!(
            alias
                .to_string()
                .contains("\"kms:ResourceAliases\":\"alias/lw\""),
            "{alias}"
        );
        assert!(policy("warehouse = \"./w\"\n").is_err());
        Ok(())
    }
}
