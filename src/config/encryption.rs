//! Server-side encryption of what lakewriter writes to S3: `[sink.s3] sse = "AES256"` (S3's own
//! keys) or `"aws:kms"` with `kms_key_id` and `bucket_key`. The settings are typed and checked
//! here; every writer (the Iceberg files, the Delta tables, lakewriter's own objects) reads them
//! from [`super::S3Config`].

use serde::{Deserialize, Serialize};

use super::{S3Config, TableFormat};

/// The `x-amz-server-side-encryption` of every object lakewriter writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum ServerSideEncryption {
    /// SSE-S3: keys S3 manages.
    #[serde(rename = "AES256")]
    Aes256,
    /// SSE-KMS: a KMS key (`kms_key_id`, else the account's `aws/s3` key).
    #[serde(rename = "aws:kms")]
    Kms,
}

impl ServerSideEncryption {
    /// The header's value.
    pub fn header(self) -> &'static str {
        match self {
            ServerSideEncryption::Aes256 => "AES256",
            ServerSideEncryption::Kms => "aws:kms",
        }
    }
}

/// `kms_key_id` and `bucket_key` belong to SSE-KMS, and the Iceberg writer cannot ask for a
/// bucket key.
pub(super) fn validate(s3: &S3Config, format: TableFormat) -> Result<(), String> {
    if s3.bucket_key && format == TableFormat::Iceberg {
        return Err(
            "sink.s3.bucket_key: the S3 client Iceberg files are written with (opendal) cannot \
             send the bucket-key header; enable S3 Bucket Keys in the bucket's default \
             encryption instead (an object sent with aws:kms and no bucket-key header takes \
             the bucket's setting), and leave bucket_key out"
                .into(),
        );
    }
    let kms = s3.sse == Some(ServerSideEncryption::Kms);
    if s3.kms_key_id.is_some() && !kms {
        return Err("sink.s3.kms_key_id needs sse = \"aws:kms\"".into());
    }
    if s3.bucket_key && !kms {
        return Err("sink.s3.bucket_key needs sse = \"aws:kms\"".into());
    }
    if s3.kms_key_id.as_ref().is_some_and(|k| k.trim().is_empty()) {
        return Err("sink.s3.kms_key_id is empty: name the key (id, ARN or alias)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    fn parse(s3: &str) -> Result<Config, String> {
        Config::parse(
            &format!("[source]\ndatabase = \"a\"\n[sink]\nformat = \"delta\"\n[sink.s3]\n{s3}"),
            Path::new("t.toml"),
            Vec::new(),
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn kms_settings_need_kms_and_iceberg_cannot_ask_for_bucket_keys() {
        let kms = parse("sse = \"aws:kms\"\nkms_key_id = \"alias/k\"\nbucket_key = true\n");
        assert_eq!(
            kms.map(|c| c.sink.s3.sse),
            Ok(Some(ServerSideEncryption::Kms))
        );
        let message = parse("sse = \"AES256\"\nkms_key_id = \"alias/k\"\n").err();
        assert!(message.is_some_and(|m| m.contains("kms_key_id needs sse")));
        let message = parse("bucket_key = true\n").err();
        assert!(message.is_some_and(|m| m.contains("bucket_key needs sse")));
        let message = parse("sse = \"aes256\"\n").err();
        assert!(message.is_some_and(|m| m.contains("sse")));
        let iceberg = Config::parse(
            "[source]\ndatabase = \"a\"\n[sink.s3]\nsse = \"aws:kms\"\nbucket_key = true\n",
            Path::new("t.toml"),
            Vec::new(),
        )
        .err()
        .map(|e| e.to_string());
        assert!(iceberg.is_some_and(|m| m.contains("bucket's default encryption")));
    }
}
