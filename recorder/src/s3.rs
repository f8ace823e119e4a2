//! A bucket in an S3-compatible store, through aws-sdk-s3: the few operations the chunk store
//! and the object store need. Requests are retried by the SDK (exponential backoff with jitter);
//! whole uploads are retried again here, since a recording may not be lost to a store that is
//! down for a minute.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use bytes::Bytes;
use pipelines::config::S3Config;
use tokio::io::AsyncReadExt;
use tracing::{info, warn};

use crate::RecordError;

/// Files larger than this are uploaded in parts of this size (S3's minimum part is 5 MiB).
pub const PART_SIZE: usize = 8 * 1024 * 1024;

/// Whole-object attempts, on top of the SDK's own retries of each request.
const UPLOAD_ATTEMPTS: u32 = 5;

#[derive(Clone, Debug)]
pub struct Bucket {
    client: Client,
    name: String,
}

impl Bucket {
    /// A client for the bucket `config` names. Nothing is sent until the first request.
    pub async fn connect(config: &S3Config) -> Bucket {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(5)
                    .with_initial_backoff(Duration::from_millis(200)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(Duration::from_secs(120))
                    .build(),
            );
        if !config.region.is_empty() {
            loader = loader.region(Region::new(config.region.clone()));
        }
        if !config.endpoint.is_empty() {
            loader = loader.endpoint_url(&config.endpoint);
        }
        if !config.access_key_id.is_empty() {
            loader = loader.credentials_provider(Credentials::new(
                &config.access_key_id,
                &config.secret_access_key,
                None,
                None,
                "tiercast-config",
            ));
        }
        let shared = loader.load().await;
        let mut s3 = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(config.path_style)
            // Only what S3 requires: many S3-compatible stores reject the newer CRC headers.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if shared.region().is_none() {
            s3 = s3.region(Region::new("us-east-1"));
        }
        Bucket {
            client: Client::from_conf(s3.build()),
            name: config.bucket.clone(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the bucket exists and the credentials reach it.
    pub async fn check(&self) -> Result<(), RecordError> {
        self.client
            .head_bucket()
            .bucket(&self.name)
            .send()
            .await
            .map_err(|e| Self::err("head bucket", &self.name, e))?;
        Ok(())
    }

    fn err(op: &'static str, key: &str, e: impl std::error::Error) -> RecordError {
        RecordError::Store {
            op,
            key: key.to_owned(),
            message: DisplayErrorContext(e).to_string(),
        }
    }

    pub async fn put(&self, key: &str, data: Bytes, content_type: &str) -> Result<(), RecordError> {
        self.client
            .put_object()
            .bucket(&self.name)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| Self::err("put", key, e))?;
        Ok(())
    }

    /// Puts `data` at `key` unless something is there already (`If-None-Match: *`, which S3,
    /// MinIO and Ceph honour): whether it was put.
    pub async fn put_new(
        &self,
        key: &str,
        data: Bytes,
        content_type: &str,
    ) -> Result<bool, RecordError> {
        let put = self
            .client
            .put_object()
            .bucket(&self.name)
            .key(key)
            .content_type(content_type)
            .if_none_match("*")
            .body(ByteStream::from(data))
            .send()
            .await;
        match put {
            Ok(_) => Ok(true),
            // 412 Precondition Failed: it is there; 409: another put of it is under way.
            Err(e)
                if e.raw_response()
                    .is_some_and(|r| matches!(r.status().as_u16(), 409 | 412)) =>
            {
                Ok(false)
            }
            Err(e) => Err(Self::err("put", key, e)),
        }
    }

    /// The object's bytes, or `None` when there is no such key.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, RecordError> {
        let out = match self
            .client
            .get_object()
            .bucket(&self.name)
            .key(key)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => return Ok(None),
            Err(e) => return Err(Self::err("get", key, e)),
        };
        let data = out
            .body
            .collect()
            .await
            .map_err(|e| Self::err("get", key, e))?;
        Ok(Some(data.into_bytes()))
    }

    /// Every key under `prefix`, in key order.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, RecordError> {
        Ok(self
            .list_modified(prefix)
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }

    /// Every key under `prefix` with the time it was last written, in key order.
    pub async fn list_modified(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, SystemTime)>, RecordError> {
        let mut keys = Vec::new();
        let mut token = None;
        loop {
            let out = self
                .client
                .list_objects_v2()
                .bucket(&self.name)
                .prefix(prefix)
                .set_continuation_token(token)
                .send()
                .await
                .map_err(|e| Self::err("list", prefix, e))?;
            keys.extend(out.contents().iter().filter_map(|o| {
                let modified = o
                    .last_modified()
                    .and_then(|t| SystemTime::try_from(*t).ok())
                    .unwrap_or(UNIX_EPOCH);
                Some((o.key()?.to_owned(), modified))
            }));
            token = out.next_continuation_token().map(str::to_owned);
            if token.is_none() || out.is_truncated() == Some(false) {
                break;
            }
        }
        keys.sort();
        Ok(keys)
    }

    /// Deletes `keys`, a thousand per request (S3's limit).
    pub async fn delete(&self, keys: &[String]) -> Result<(), RecordError> {
        for batch in keys.chunks(1000) {
            let objects = batch
                .iter()
                .map(|k| ObjectIdentifier::builder().key(k).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Self::err("delete", &batch[0], e))?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| Self::err("delete", &batch[0], e))?;
            let out = self
                .client
                .delete_objects()
                .bucket(&self.name)
                .delete(delete)
                .send()
                .await
                .map_err(|e| Self::err("delete", &batch[0], e))?;
            if let Some(first) = out.errors().first() {
                return Err(RecordError::Store {
                    op: "delete",
                    key: first.key().unwrap_or_default().to_owned(),
                    message: first.message().unwrap_or("refused").to_owned(),
                });
            }
        }
        Ok(())
    }

    /// A URL anyone can GET the object with for `expires`.
    pub async fn presign_get(&self, key: &str, expires: Duration) -> Result<String, RecordError> {
        let presigning =
            PresigningConfig::expires_in(expires).map_err(|e| Self::err("presign", key, e))?;
        let request = self
            .client
            .get_object()
            .bucket(&self.name)
            .key(key)
            .presigned(presigning)
            .await
            .map_err(|e| Self::err("presign", key, e))?;
        Ok(request.uri().to_owned())
    }

    /// Uploads a file: in one request when small, in [`PART_SIZE`] parts otherwise. The whole
    /// upload is tried again with backoff if the store keeps failing. `progress` hears the
    /// bytes sent so far.
    pub async fn put_file(
        &self,
        key: &str,
        path: &Path,
        content_type: &str,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(), RecordError> {
        let mut delay = Duration::from_secs(1);
        for attempt in 1.. {
            match self.try_put_file(key, path, content_type, progress).await {
                Ok(()) => return Ok(()),
                Err(e @ RecordError::Io { .. }) => return Err(e),
                Err(e) if attempt >= UPLOAD_ATTEMPTS => return Err(e),
                Err(e) => {
                    warn!(%key, attempt, "upload failed, trying again in {delay:?}: {e}");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
        unreachable!("the loop returns")
    }

    async fn try_put_file(
        &self,
        key: &str,
        path: &Path,
        content_type: &str,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(), RecordError> {
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(RecordError::io(path))?;
        let size = file.metadata().await.map_err(RecordError::io(path))?.len();
        if size <= PART_SIZE as u64 {
            let mut data = Vec::with_capacity(size as usize);
            file.read_to_end(&mut data)
                .await
                .map_err(RecordError::io(path))?;
            self.put(key, data.into(), content_type).await?;
            progress(size);
            return Ok(());
        }
        let upload = self
            .client
            .create_multipart_upload()
            .bucket(&self.name)
            .key(key)
            .content_type(content_type)
            .send()
            .await
            .map_err(|e| Self::err("create multipart upload", key, e))?;
        let Some(id) = upload.upload_id() else {
            return Err(RecordError::Store {
                op: "create multipart upload",
                key: key.to_owned(),
                message: "the store returned no upload id".into(),
            });
        };
        let result = self.upload_parts(key, id, &mut file, path, progress).await;
        if result.is_err() {
            // Parts of an abandoned upload are billed until aborted.
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.name)
                .key(key)
                .upload_id(id)
                .send()
                .await;
        }
        result
    }

    async fn upload_parts(
        &self,
        key: &str,
        id: &str,
        file: &mut tokio::fs::File,
        path: &Path,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(), RecordError> {
        let mut parts = Vec::new();
        let mut sent = 0u64;
        loop {
            let mut data = Vec::with_capacity(PART_SIZE);
            (&mut *file)
                .take(PART_SIZE as u64)
                .read_to_end(&mut data)
                .await
                .map_err(RecordError::io(path))?;
            if data.is_empty() {
                break;
            }
            let number = parts.len() as i32 + 1;
            let len = data.len() as u64;
            let out = self
                .client
                .upload_part()
                .bucket(&self.name)
                .key(key)
                .upload_id(id)
                .part_number(number)
                .body(ByteStream::from(data))
                .send()
                .await
                .map_err(|e| Self::err("upload part", key, e))?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(out.e_tag().map(str::to_owned))
                    .build(),
            );
            sent += len;
            progress(sent);
        }
        self.client
            .complete_multipart_upload()
            .bucket(&self.name)
            .key(key)
            .upload_id(id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| Self::err("complete multipart upload", key, e))?;
        info!(%key, bytes = sent, "multipart upload complete");
        Ok(())
    }
}
