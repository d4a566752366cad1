//! Encrypted files on PostgreSQL, where every node reaches them: a record per file and its
//! bytes in chunks, one row per append.
//!
//! Each operation is one statement, atomic on its own, on a reader connection (so that files
//! never wait in, or hold up, the writer's batches of messages). Two nodes appending to one
//! upload at once are serialised by the row lock of its record: the second finds the offset
//! moved and is refused.

use async_trait::async_trait;
use bytes::Bytes;
use sealpost_proto::{DeviceId, Username};

use super::{PostgresStore, backend, device_id, group_id, now_ms, sql_error};
use crate::storage::{BlobId, BlobRecord, BlobStore, MIN_BLOB_CHARGE, NewBlob, StoreError};

fn signed(n: u64) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::TooLong)
}

#[async_trait]
impl BlobStore for PostgresStore {
    async fn create_blob(&self, blob: NewBlob, quota: u64) -> Result<(), StoreError> {
        let conn = self.reader().await?;
        let inserted = conn
            .execute(
                "INSERT INTO blobs (id, group_id, uploader, username, length, upload_offset, created_at)
                 SELECT $1, $2, $3, $4, $5, 0, $6
                 WHERE (SELECT COALESCE(SUM(GREATEST(length, $7)), 0) FROM blobs WHERE username = $4)::BIGINT
                       + GREATEST($5, $7) <= $8",
                &[
                    &&blob.id[..],
                    &blob.group.as_bytes().as_slice(),
                    &blob.uploader.as_bytes().as_slice(),
                    &blob.username.as_str(),
                    &signed(blob.length)?,
                    &now_ms(),
                    &signed(MIN_BLOB_CHARGE)?,
                    &signed(quota).unwrap_or(i64::MAX),
                ],
            )
            .await
            .map_err(sql_error)?;
        if inserted == 0 {
            return Err(StoreError::QuotaExceeded { quota });
        }
        Ok(())
    }

    async fn blob(&self, id: BlobId) -> Result<Option<BlobRecord>, StoreError> {
        let conn = self.reader().await?;
        let row = conn
            .query_opt(
                "SELECT group_id, uploader, username, length, upload_offset, finished_at IS NOT NULL FROM blobs WHERE id = $1",
                &[&&id[..]],
            )
            .await
            .map_err(sql_error)?;
        row.map(|r| {
            Ok(BlobRecord {
                id,
                group: group_id(r.get(0))?,
                uploader: device_id(r.get(1))?,
                username: Username::new(r.get(2)).map_err(backend)?,
                length: r.get::<_, i64>(3).try_into().map_err(backend)?,
                offset: r.get::<_, i64>(4).try_into().map_err(backend)?,
                finished: r.get(5),
            })
        })
        .transpose()
    }

    async fn append_blob(&self, id: BlobId, offset: u64, data: Bytes) -> Result<u64, StoreError> {
        let end = offset.saturating_add(data.len() as u64);
        let conn = self.reader().await?;
        let appended = conn
            .execute(
                "WITH moved AS (
                     UPDATE blobs SET upload_offset = $3
                     WHERE id = $1 AND upload_offset = $2 AND finished_at IS NULL AND $3 <= length
                     RETURNING id)
                 INSERT INTO blob_chunks (id, chunk_offset, data) SELECT id, $2, $4 FROM moved",
                &[&&id[..], &signed(offset)?, &signed(end)?, &&data[..]],
            )
            .await
            .map_err(sql_error)?;
        if appended == 1 {
            return Ok(end);
        }
        let record = self
            .blob(id)
            .await?
            .filter(|r| !r.finished)
            .ok_or(StoreError::NotFound)?;
        Err(if record.offset != offset {
            StoreError::OffsetMismatch {
                current: record.offset,
            }
        } else {
            StoreError::TooLong
        })
    }

    async fn finish_blob(&self, id: BlobId, recipients: Vec<DeviceId>) -> Result<(), StoreError> {
        let devices: Vec<&[u8]> = recipients.iter().map(|d| d.as_bytes().as_slice()).collect();
        let conn = self.reader().await?;
        let finished: i64 = conn
            .query(
                "WITH done AS (
                     UPDATE blobs SET finished_at = $2
                     WHERE id = $1 AND finished_at IS NULL AND upload_offset = length
                     RETURNING id),
                 listed AS (
                     INSERT INTO blob_recipients (id, device_id)
                     SELECT done.id, d FROM done, unnest($3::bytea[]) AS d
                     ON CONFLICT DO NOTHING)
                 SELECT COUNT(*) FROM done",
                &[&&id[..], &now_ms(), &devices],
            )
            .await
            .map_err(sql_error)?
            .first()
            .map_or(0, |r| r.get(0));
        if finished == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn read_blob(&self, id: BlobId, from: u64, max: usize) -> Result<Bytes, StoreError> {
        let conn = self.reader().await?;
        let row = conn
            .query_opt(
                "SELECT b.length, c.chunk_offset, c.data FROM blobs b
                 LEFT JOIN LATERAL (
                     SELECT chunk_offset, data FROM blob_chunks
                     WHERE id = b.id AND chunk_offset <= $2
                     ORDER BY chunk_offset DESC LIMIT 1) c ON TRUE
                 WHERE b.id = $1 AND b.finished_at IS NOT NULL",
                &[&&id[..], &signed(from)?],
            )
            .await
            .map_err(sql_error)?
            .ok_or(StoreError::NotFound)?;
        let length = u64::try_from(row.get::<_, i64>(0)).map_err(backend)?;
        if from >= length {
            return Ok(Bytes::new());
        }
        let start = row
            .get::<_, Option<i64>>(1)
            .and_then(|s| u64::try_from(s).ok())
            .ok_or_else(|| backend("a stored file has a gap"))?;
        let data: Vec<u8> = row.get(2);
        let skip = usize::try_from(from - start).map_err(backend)?;
        if skip >= data.len() {
            return Err(backend("a stored file has a gap"));
        }
        let end = data.len().min(skip.saturating_add(max));
        Ok(Bytes::from(data).slice(skip..end))
    }

    async fn blob_received(&self, id: BlobId, device: DeviceId) -> Result<bool, StoreError> {
        let conn = self.reader().await?;
        // The statement sees the table as it was before it: the recipient being removed still
        // counts there, so it is left out by hand.
        let deleted = conn
            .execute(
                "WITH gone AS (
                     DELETE FROM blob_recipients WHERE id = $1 AND device_id = $2 RETURNING id)
                 DELETE FROM blobs b WHERE b.id IN (SELECT id FROM gone)
                     AND b.finished_at IS NOT NULL
                     AND NOT EXISTS (SELECT 1 FROM blob_recipients r WHERE r.id = b.id AND r.device_id <> $2)",
                &[&&id[..], &device.as_bytes().as_slice()],
            )
            .await
            .map_err(sql_error)?;
        Ok(deleted > 0)
    }

    async fn delete_blob(&self, id: BlobId) -> Result<(), StoreError> {
        let conn = self.reader().await?;
        conn.execute("DELETE FROM blobs WHERE id = $1", &[&&id[..]])
            .await
            .map_err(sql_error)?;
        Ok(())
    }

    async fn purge_blobs(
        &self,
        unfinished_before_ms: u64,
        finished_before_ms: u64,
    ) -> Result<u64, StoreError> {
        let conn = self.reader().await?;
        conn.execute(
            "DELETE FROM blobs WHERE (finished_at IS NULL AND created_at < $1) OR finished_at < $2",
            &[&signed(unfinished_before_ms)?, &signed(finished_before_ms)?],
        )
        .await
        .map_err(sql_error)
    }
}
