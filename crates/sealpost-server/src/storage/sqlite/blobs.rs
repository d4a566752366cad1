//! Encrypted files on the embedded backend: their records in the database, their bytes in one
//! file each in the `blobs` directory beside it.
//!
//! An append writes the bytes (and syncs them) before it records the new offset; a crash in
//! between leaves bytes past the recorded offset, which the next append cuts off. A file whose
//! record is gone (a crash between deleting the record and the file) is removed by the next
//! purge.

use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, params};
use sealpost_proto::{DeviceId, Username};

use super::{SqliteStore, backend, device_id, group_id, now_ms};
use crate::storage::{BlobId, BlobRecord, BlobStore, MIN_BLOB_CHARGE, NewBlob, StoreError};

impl SqliteStore {
    pub(super) fn blob_path(&self, id: &BlobId) -> PathBuf {
        self.blob_dir.join(hex::encode(id))
    }
}

/// The right to append to one upload, given back when dropped.
struct Appending {
    set: Arc<Mutex<std::collections::HashSet<BlobId>>>,
    id: BlobId,
}

impl Drop for Appending {
    fn drop(&mut self) {
        if let Ok(mut set) = self.set.lock() {
            set.remove(&self.id);
        }
    }
}

fn blob_record(conn: &Connection, id: BlobId) -> Result<Option<BlobRecord>, StoreError> {
    conn.prepare_cached(
        "SELECT group_id, uploader, username, length, upload_offset, finished_at IS NOT NULL FROM blobs WHERE id = ?1",
    )
    .map_err(backend)?
    .query_row([&id[..]], |r| {
        Ok((
            r.get::<_, Vec<u8>>(0)?,
            r.get::<_, Vec<u8>>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, u64>(3)?,
            r.get::<_, u64>(4)?,
            r.get::<_, bool>(5)?,
        ))
    })
    .optional()
    .map_err(backend)?
    .map(|(group, uploader, username, length, offset, finished)| {
        Ok(BlobRecord {
            id,
            group: group_id(group)?,
            uploader: device_id(uploader)?,
            username: Username::new(&username).map_err(backend)?,
            length,
            offset,
            finished,
        })
    })
    .transpose()
}

/// Writes `data` at `offset` of the file at `path`, cutting off anything after `offset` first,
/// and syncs it (and, for the first bytes, the directory that holds the new file).
fn write_at(path: &Path, offset: u64, data: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(path)?;
    file.set_len(offset)?;
    file.seek(SeekFrom::Start(offset))?;
    file.write_all(data)?;
    file.sync_data()?;
    if offset == 0
        && let Some(dir) = path.parent()
    {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn remove_file(path: &Path) -> Result<(), StoreError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(backend(e)),
        _ => Ok(()),
    }
}

#[async_trait]
impl BlobStore for SqliteStore {
    async fn create_blob(&self, blob: NewBlob, quota: u64) -> Result<(), StoreError> {
        self.write(move |conn| {
            let used: u64 = conn
                .prepare_cached(
                    "SELECT COALESCE(SUM(MAX(length, ?2)), 0) FROM blobs WHERE username = ?1",
                )
                .map_err(backend)?
                .query_row(params![blob.username.as_str(), MIN_BLOB_CHARGE], |r| {
                    r.get(0)
                })
                .map_err(backend)?;
            if used.saturating_add(blob.length.max(MIN_BLOB_CHARGE)) > quota {
                return Err(StoreError::QuotaExceeded { quota });
            }
            let inserted = conn
                .prepare_cached(
                    "INSERT OR IGNORE INTO blobs (id, group_id, uploader, username, length, upload_offset, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6)",
                )
                .map_err(backend)?
                .execute(params![
                    &blob.id[..],
                    blob.group.as_bytes(),
                    blob.uploader.as_bytes(),
                    blob.username.as_str(),
                    blob.length,
                    now_ms()
                ])
                .map_err(backend)?;
            if inserted == 0 {
                return Err(StoreError::Conflict);
            }
            Ok(())
        })
        .await
    }

    async fn blob(&self, id: BlobId) -> Result<Option<BlobRecord>, StoreError> {
        self.read(move |conn| blob_record(conn, id)).await
    }

    async fn append_blob(&self, id: BlobId, offset: u64, data: Bytes) -> Result<u64, StoreError> {
        // On a task of its own: a request that goes away mid-append does not stop it halfway.
        let store = self.clone();
        tokio::spawn(async move {
            let claim = {
                let mut set = store.appending.lock().map_err(backend)?;
                set.insert(id).then(|| Appending {
                    set: store.appending.clone(),
                    id,
                })
            };
            let record = store
                .blob(id)
                .await?
                .filter(|r| !r.finished)
                .ok_or(StoreError::NotFound)?;
            if claim.is_none() || record.offset != offset {
                return Err(StoreError::OffsetMismatch {
                    current: record.offset,
                });
            }
            let end = offset.saturating_add(data.len() as u64);
            if end > record.length {
                return Err(StoreError::TooLong);
            }
            let path = store.blob_path(&id);
            tokio::task::spawn_blocking(move || write_at(&path, offset, &data))
                .await
                .map_err(backend)?
                .map_err(backend)?;
            let updated = store
                .write(move |conn| {
                    conn.prepare_cached(
                        "UPDATE blobs SET upload_offset = ?3 WHERE id = ?1 AND upload_offset = ?2 AND finished_at IS NULL",
                    )
                    .map_err(backend)?
                    .execute(params![&id[..], offset, end])
                    .map_err(backend)
                })
                .await?;
            drop(claim);
            if updated == 0 {
                return Err(StoreError::NotFound);
            }
            Ok(end)
        })
        .await
        .map_err(backend)?
    }

    async fn finish_blob(&self, id: BlobId, recipients: Vec<DeviceId>) -> Result<(), StoreError> {
        self.write(move |conn| {
            let finished = conn
                .prepare_cached(
                    "UPDATE blobs SET finished_at = ?2 WHERE id = ?1 AND finished_at IS NULL AND upload_offset = length",
                )
                .map_err(backend)?
                .execute(params![&id[..], now_ms()])
                .map_err(backend)?;
            if finished == 0 {
                return Err(StoreError::NotFound);
            }
            let mut insert = conn
                .prepare_cached("INSERT OR IGNORE INTO blob_recipients (id, device_id) VALUES (?1, ?2)")
                .map_err(backend)?;
            for device in &recipients {
                insert
                    .execute(params![&id[..], device.as_bytes()])
                    .map_err(backend)?;
            }
            Ok(())
        })
        .await
    }

    async fn read_blob(&self, id: BlobId, from: u64, max: usize) -> Result<Bytes, StoreError> {
        let record = self
            .blob(id)
            .await?
            .filter(|r| r.finished)
            .ok_or(StoreError::NotFound)?;
        let want = record.length.saturating_sub(from).min(max as u64);
        if want == 0 {
            return Ok(Bytes::new());
        }
        let path = self.blob_path(&id);
        tokio::task::spawn_blocking(move || {
            let mut file = std::fs::File::open(path)?;
            file.seek(SeekFrom::Start(from))?;
            let mut buf = vec![0; usize::try_from(want).unwrap_or(max)];
            file.read_exact(&mut buf)?;
            Ok::<_, std::io::Error>(Bytes::from(buf))
        })
        .await
        .map_err(backend)?
        .map_err(backend)
    }

    async fn blob_received(&self, id: BlobId, device: DeviceId) -> Result<bool, StoreError> {
        let deleted = self
            .write(move |conn| {
                let removed = conn
                    .prepare_cached("DELETE FROM blob_recipients WHERE id = ?1 AND device_id = ?2")
                    .map_err(backend)?
                    .execute(params![&id[..], device.as_bytes()])
                    .map_err(backend)?;
                if removed == 0 {
                    return Ok(false);
                }
                let deleted = conn
                    .prepare_cached(
                        "DELETE FROM blobs WHERE id = ?1 AND finished_at IS NOT NULL
                         AND NOT EXISTS (SELECT 1 FROM blob_recipients WHERE id = ?1)",
                    )
                    .map_err(backend)?
                    .execute([&id[..]])
                    .map_err(backend)?;
                Ok(deleted > 0)
            })
            .await?;
        if deleted {
            remove_file(&self.blob_path(&id))?;
        }
        Ok(deleted)
    }

    async fn delete_blob(&self, id: BlobId) -> Result<(), StoreError> {
        self.write(move |conn| {
            conn.prepare_cached("DELETE FROM blobs WHERE id = ?1")
                .map_err(backend)?
                .execute([&id[..]])
                .map_err(backend)
        })
        .await?;
        remove_file(&self.blob_path(&id))
    }

    async fn purge_blobs(
        &self,
        unfinished_before_ms: u64,
        finished_before_ms: u64,
    ) -> Result<u64, StoreError> {
        let deleted = self
            .write(move |conn| {
                conn.prepare_cached(
                    "DELETE FROM blobs WHERE (finished_at IS NULL AND created_at < ?1) OR finished_at < ?2",
                )
                .map_err(backend)?
                .execute(params![unfinished_before_ms, finished_before_ms])
                .map_err(backend)
            })
            .await?;
        // Remove every file without a record: those just deleted, and any a crash left behind.
        let dir = self.blob_dir.clone();
        let names = tokio::task::spawn_blocking(move || {
            std::fs::read_dir(dir)?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<std::io::Result<Vec<_>>>()
        })
        .await
        .map_err(backend)?
        .map_err(backend)?;
        for name in names {
            let Some(id) = name
                .to_str()
                .and_then(|n| hex::decode(n).ok())
                .and_then(|b| BlobId::try_from(b).ok())
            else {
                continue;
            };
            if self.blob(id).await?.is_none() {
                remove_file(&self.blob_path(&id))?;
            }
        }
        Ok(deleted as u64)
    }
}
