//! `lakewriter iam-policy`: the least AWS IAM policy a configuration needs — S3 actions on the
//! warehouse prefix only, Glue actions on its database and tables only, KMS actions on its key
//! only — built from the configuration, so what is granted follows what is configured.

use serde_json::{Value, json};

use crate::cloud::S3Location;
use crate::config::{CatalogKind, Config, ServerSideEncryption};
use crate::error::{Error, Result};

/// The policy document for `config`. A local warehouse needs no AWS access: an error says so.
pub fn iam_policy(config: &Config) -> Result<Value> {
    let Some(location) = S3Location::parse(&config.sink.warehouse)
        .map_err(|m| Error::config("sink.warehouse", m))?
    else {
        return Err(Error::config(
            "sink.warehouse",
            format!(
                "{} is a local warehouse: lakewriter needs no AWS permission for it",
                config.sink.warehouse
            ),
        ));
    };
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
    let mut statements = vec![
        json!({
            "Sid": "WarehouseObjects",
            "Effect": "Allow",
            // write and read table files and lakewriter's slot record; delete for compact's
            // orphan removal and expiry, Delta's vacuum, Iceberg's old metadata files
            "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject",
                       "s3:AbortMultipartUpload"],
            "Resource": objects,
        }),
        json!({
            "Sid": "ListTheWarehousePrefix",
            "Effect": "Allow",
            "Action": ["s3:ListBucket"],
            "Resource": format!("arn:aws:s3:::{bucket}"),
            "Condition": {"StringLike": {"s3:prefix": listed}},
        }),
        json!({
            "Sid": "LocateTheBucket",
            "Effect": "Allow",
            "Action": ["s3:GetBucketLocation"],
            "Resource": format!("arn:aws:s3:::{bucket}"),
        }),
    ];
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
        statements.push(json!({
            "Sid": "GlueTablesOfTheNamespace",
            "Effect": "Allow",
            "Action": ["glue:GetDatabase", "glue:CreateDatabase", "glue:GetTable",
                       "glue:GetTables", "glue:CreateTable", "glue:UpdateTable"],
            "Resource": [
                format!("arn:aws:glue:{region}:{account}:catalog"),
                format!("arn:aws:glue:{region}:{account}:database/{namespace}"),
                format!("arn:aws:glue:{region}:{account}:table/{namespace}/*"),
            ],
        }));
    }
    if config.sink.s3.sse == Some(ServerSideEncryption::Kms)
        && let Some(key) = &config.sink.s3.kms_key_id
    {
        // S3 asks KMS for a data key on each write and to decrypt it on each read, as the
        // caller; an alias cannot be a policy's resource, so it becomes a condition
        let mut statement = json!({
            "Sid": "TheWarehouseKey",
            "Effect": "Allow",
            "Action": ["kms:GenerateDataKey", "kms:Decrypt"],
        });
        if key.starts_with("arn:aws:kms:") && key.contains(":key/") {
            statement["Resource"] = json!(key);
        } else if let Some(alias) = key.strip_prefix("arn:aws:kms:").and_then(|rest| {
            rest.split_once(":alias/")
                .map(|(_, name)| format!("alias/{name}"))
        }) {
            statement["Resource"] = json!("*");
            statement["Condition"] = json!({"ForAnyValue:StringEquals":
                {"kms:ResourceAliases": alias}});
        } else if key.starts_with("alias/") {
            statement["Resource"] = json!("*");
            statement["Condition"] = json!({"ForAnyValue:StringEquals":
                {"kms:ResourceAliases": key}});
        } else {
            statement["Resource"] = json!(format!("arn:aws:kms:*:*:key/{key}"));
        }
        statements.push(statement);
    }
    Ok(json!({"Version": "2012-10-17", "Statement": statements}))
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
        iam_policy(&config)
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
