//! AWS clients from the configuration: the SDK's own chain (environment, profile, instance or
//! task role, `AWS_ENDPOINT_URL`) unless the config names a region, an endpoint or static keys.

use aws_config::{BehaviorVersion, Region, SdkConfig};

use crate::config::Config;
use crate::error::{Error, Result};

/// An `s3://bucket/prefix` location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    /// The bucket.
    pub bucket: String,
    /// The key prefix, without leading or trailing `/` (may be empty).
    pub prefix: String,
}

impl S3Location {
    /// Parses `s3://bucket/prefix`; `Ok(None)` for a location that is not on S3.
    pub fn parse(url: &str) -> Result<Option<S3Location>, String> {
        let Some(rest) = url.strip_prefix("s3://") else {
            return Ok(None);
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.len() < 3 {
            return Err(format!("{url:?}: a bucket name has at least 3 characters"));
        }
        Ok(Some(S3Location {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        }))
    }

    /// The key of `name` under the prefix.
    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.prefix)
        }
    }
}

async fn sdk_config(region: Option<&str>, endpoint: Option<&str>, config: &Config) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(region) = region {
        loader = loader.region(Region::new(region.to_string()));
    }
    if let Some(endpoint) = endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    let s3 = &config.sink.s3;
    if let Some(key_id) = &s3.access_key_id {
        loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
            key_id.clone(),
            s3.secret_access_key.expose().to_string(),
            None,
            None,
            "lakewriter-config",
        ));
    }
    loader.load().await
}

/// The S3 client for the warehouse.
pub async fn s3_client(config: &Config) -> aws_sdk_s3::Client {
    let s3 = &config.sink.s3;
    let shared = sdk_config(s3.region.as_deref(), s3.endpoint.as_deref(), config).await;
    let conf = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(s3.force_path_style)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// `put` with the server-side encryption of `[sink.s3]`: every object lakewriter writes
/// through the AWS SDK itself (its slot records, doctor's probe) goes through here.
pub fn encrypted(
    put: aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder,
    s3: &crate::config::S3Config,
) -> aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder {
    let Some(sse) = s3.sse else {
        return put;
    };
    let put = put
        .server_side_encryption(aws_sdk_s3::types::ServerSideEncryption::from(sse.header()))
        .set_ssekms_key_id(s3.kms_key_id.clone());
    if s3.bucket_key {
        put.bucket_key_enabled(true)
    } else {
        put
    }
}

/// The Glue client for the catalog.
pub async fn glue_client(config: &Config) -> aws_sdk_glue::Client {
    let glue = &config.sink.glue;
    let shared = sdk_config(glue.region.as_deref(), glue.endpoint.as_deref(), config).await;
    aws_sdk_glue::Client::new(&shared)
}

/// The S3 Tables client for the catalog.
pub async fn s3tables_client(config: &Config) -> aws_sdk_s3tables::Client {
    let s3tables = &config.sink.s3tables;
    let region = s3tables.region();
    let shared = sdk_config(region.as_deref(), s3tables.endpoint.as_deref(), config).await;
    aws_sdk_s3tables::Client::new(&shared)
}

/// The warehouse's S3 location, when it is on S3.
pub fn warehouse_location(config: &Config) -> Result<Option<S3Location>> {
    S3Location::parse(&config.sink.warehouse).map_err(|m| Error::config("sink.warehouse", m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_urls_split_into_bucket_and_prefix() {
        let at = |url| S3Location::parse(url);
        assert_eq!(at("./warehouse"), Ok(None));
        let loc = at("s3://lake-bucket/raw/lakewriter/").ok().flatten();
        assert_eq!(
            loc,
            Some(S3Location {
                bucket: "lake-bucket".into(),
                prefix: "raw/lakewriter".into()
            })
        );
        assert_eq!(
            loc.map(|l| l.key("x")),
            Some("raw/lakewriter/x".to_string())
        );
        assert_eq!(
            at("s3://lake-bucket").ok().flatten().map(|l| l.key("x")),
            Some("x".to_string())
        );
        assert!(at("s3://ab/x").is_err());
    }
}
