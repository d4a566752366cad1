//! Files: sent encrypted under a fresh key to the server's file store, and named, with the key,
//! in an ordinary message (so the server holds a blob it cannot open, and only the
//! conversation's members learn what and where it is).
//!
//! Sending: the file is read and sealed a piece at a time (see `attachment`) and uploaded in
//! segments, each its own request; an interrupted upload continues from where the server says
//! it stands. Sealing is deterministic under the file's key, so the bytes before that point are
//! sealed again (to keep the hashes) but not sent again. Memory stays within a few segments
//! whatever the file's size. An upload that breaks off for good is remembered (see
//! [`Unfinished`]) and taken up when the same file is sent to the same conversation again.
//!
//! Receiving: `download` fetches the blob and opens it as it arrives into `NAME.partial`,
//! checks the key commitment, every chunk, the size and the blob's hash, and only then renames it
//! into place. A blob the server swapped, cut or extended is refused, and nothing is left. A
//! broken connection is taken up where it stopped, with a range request.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use sha2::Digest as _;

use super::*;
use crate::attachment::{self, FileKey, Opener, Sealed, Sealer};
use crate::content::FileRef;
use crate::model::Progress;

/// Bytes of an upload sent in one request.
const SEGMENT: usize = 4 * 1024 * 1024;
/// Bytes of the file read at a time.
const READ: usize = 256 * 1024;
/// Pieces of the file read and not yet hashed, at most.
const HASHED_PIECES: usize = 4;
/// How often an interrupted upload or download is taken up again before giving up.
const RETRIES: u32 = 4;
/// The meta record of the uploads that broke off (sealed, as it holds their keys).
const UNFINISHED: &str = "unfinished_uploads";
/// Unfinished uploads remembered at most; the oldest is forgotten first.
const MAX_UNFINISHED: usize = 16;

/// An upload that broke off (the server could not be reached, or the process ended): sending
/// the same file to the same conversation again takes it up where the server stands, under the
/// same key, instead of starting again. The server deletes an upload left unfinished for a day,
/// and then it starts again.
// Not `Debug`: it holds a key, which must not reach a log line.
#[derive(Clone, Serialize, Deserialize)]
struct Unfinished {
    /// The conversation's group, in hex.
    group: String,
    /// The file, as it was when its sending started.
    path: String,
    len: u64,
    /// Its modification time (nanoseconds since 1970), if the system gives one.
    modified: Option<u128>,
    /// The upload's id.
    upload: String,
    /// The file's key and nonce prefix, in hex.
    key: String,
    nonce: String,
}

impl Unfinished {
    /// Whether it sends the file at `path` (see [`Source::identity`]) to `group` (in hex).
    fn goes_where(&self, group: &str, path: &str) -> bool {
        self.group == group && self.path == path
    }

    /// Whether the file is still as it was when this upload started.
    fn is_still(&self, source: &Source) -> bool {
        self.len == source.len && self.modified == source.modified_ns()
    }

    fn key(&self) -> Result<FileKey, Error> {
        let stored = "an unfinished upload";
        Ok(FileKey::new(
            hex_array(&self.key, stored)?,
            hex_array(&self.nonce, stored)?,
        ))
    }
}

/// A file being sent, as it was when its sending started.
pub(super) struct Source {
    path: PathBuf,
    pub(super) len: u64,
    modified: Option<SystemTime>,
}

impl Source {
    pub(super) fn open(path: &Path) -> Result<Source, Error> {
        let meta = std::fs::metadata(path).map_err(|e| io_error(path, &e))?;
        if !meta.is_file() {
            return Err(Error::NotAFile(path.display().to_string()));
        }
        Ok(Source {
            path: path.to_owned(),
            len: meta.len(),
            modified: meta.modified().ok(),
        })
    }

    /// The file's path as it names it wherever the sending started (absolute where it can be).
    fn identity(&self) -> String {
        std::fs::canonicalize(&self.path)
            .unwrap_or_else(|_| self.path.clone())
            .to_string_lossy()
            .into_owned()
    }

    fn modified_ns(&self) -> Option<u128> {
        self.modified
            .and_then(|m| m.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
    }

    /// Refuses a file that changed since its sending started (its sealed bytes would differ
    /// from those already uploaded).
    fn unchanged(&self) -> Result<(), Error> {
        let meta = std::fs::metadata(&self.path).map_err(|e| io_error(&self.path, &e))?;
        if meta.len() != self.len || meta.modified().ok() != self.modified {
            return Err(Error::FileChanged(self.path.display().to_string()));
        }
        Ok(())
    }
}

fn io_error(path: &Path, e: &std::io::Error) -> Error {
    Error::File(format!("{}: {e}", path.display()))
}

/// Whether a failed transfer is worth taking up again (the server or the way to it failed).
pub(super) fn retryable(e: &Error) -> bool {
    matches!(
        e,
        Error::ServerUnreachable { .. }
            | Error::Server {
                code: ErrorCode::Unavailable | ErrorCode::Conflict | ErrorCode::BadRequest,
                ..
            }
    )
}

/// A media type for a file name, from its extension (what receivers show and open it as).
pub(super) fn media_type(name: &str) -> &'static str {
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "heic" => "image/heic",
        "svg" => "image/svg+xml",
        "pdf" => "application/pdf",
        "txt" => "text/plain",
        "md" => "text/markdown",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "mov" => "video/quicktime",
        "mp3" => "audio/mpeg",
        "ogg" | "opus" => "audio/ogg",
        "m4a" => "audio/mp4",
        "zip" => "application/zip",
        _ => "application/octet-stream",
    }
}

/// A name under which a received file can be saved: the sender's, without directories,
/// control characters or a leading dot, or `file` if nothing is left.
pub(crate) fn safe_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let clean: String = base
        .chars()
        .filter(|c| !c.is_control())
        .collect::<String>()
        .trim()
        .trim_start_matches('.')
        .chars()
        .take(200)
        .collect();
    if clean.is_empty() {
        "file".into()
    } else {
        clean
    }
}

/// `N` octets kept in hex in this profile (`what` names them in the error if they are not).
pub(super) fn hex_array<const N: usize>(s: &str, what: &str) -> Result<[u8; N], Error> {
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).map_err(|_| Error::Store(format!("{what} is damaged")))?;
    Ok(out)
}

/// Seals the file at `path` (of `len` bytes, sealing to `total`) and hands its sealed bytes from
/// `from` on to `tx`, in segments, the last one marked (perhaps empty). Ends early, with an
/// error, when nobody takes them any more.
fn seal_segments(
    path: &Path,
    len: u64,
    key: &FileKey,
    from: u64,
    total: u64,
    tx: &tokio::sync::mpsc::Sender<(bytes::Bytes, bool)>,
) -> Result<Sealed, Error> {
    let changed = || Error::FileChanged(path.display().to_string());
    let too_large = |_| Error::FileTooLarge {
        size: len,
        limit: u64::MAX,
    };
    let mut file = std::fs::File::open(path).map_err(|e| io_error(path, &e))?;
    let mut sealer = Sealer::new_unhashed(key);
    // Sealed bytes not yet handed over, and where they start in the blob.
    let mut out = Vec::with_capacity(SEGMENT + READ);
    let mut at = 0u64;
    let hand_over = |out: &mut Vec<u8>, at: &mut u64, last: bool| {
        let skip = usize::try_from(from.saturating_sub(*at)).unwrap_or(usize::MAX);
        *at += out.len() as u64;
        let segment = if skip == 0 {
            // Handed over as it is, not copied: one segment less in memory.
            bytes::Bytes::from(std::mem::replace(out, Vec::with_capacity(SEGMENT + READ)))
        } else {
            let rest = bytes::Bytes::copy_from_slice(out.get(skip..).unwrap_or_default());
            out.clear();
            rest
        };
        if segment.is_empty() && !last {
            return Ok(());
        }
        tx.blocking_send((segment, last))
            .map_err(|_| Error::File("the upload stopped".into()))
    };
    // The file is hashed on a thread of its own, a piece behind the encryption (which hashes
    // the blob): two cores, not one. The pieces go there and back, not copied: four of them.
    let hashing_failed = || Error::File("hashing the file failed".into());
    std::thread::scope(|scope| {
        let (to_hash, pieces) = std::sync::mpsc::sync_channel::<Vec<u8>>(HASHED_PIECES);
        let (give_back, returned) = std::sync::mpsc::sync_channel(HASHED_PIECES);
        for _ in 0..HASHED_PIECES {
            let _ = give_back.send(Vec::with_capacity(READ));
        }
        let hasher = scope.spawn(move || {
            let mut hash = sha2::Sha256::new();
            for mut piece in pieces {
                hash.update(&piece);
                piece.clear();
                // Never full: there are only so many pieces.
                let _ = give_back.try_send(piece);
            }
            <[u8; 32]>::from(hash.finalize())
        });
        loop {
            let mut read: Vec<u8> = returned.recv().map_err(|_| hashing_failed())?;
            let n = (&mut file)
                .take(READ as u64)
                .read_to_end(&mut read)
                .map_err(|e| io_error(path, &e))?;
            if n == 0 {
                drop(to_hash);
                let file_hash = hasher.join().map_err(|_| hashing_failed())?;
                let sealed = sealer
                    .finish_hashed(&mut out, file_hash)
                    .map_err(too_large)?;
                if sealed.size != total {
                    return Err(changed());
                }
                hand_over(&mut out, &mut at, true)?;
                return Ok(sealed);
            }
            sealer.update(&read, &mut out).map_err(too_large)?;
            to_hash.send(read).map_err(|_| hashing_failed())?;
            if at + (out.len() as u64) > total {
                return Err(changed());
            }
            if out.len() >= SEGMENT {
                hand_over(&mut out, &mut at, false)?;
            }
        }
    })
}

impl Client {
    /// Sends the file at `path` to `target`, with a caption (perhaps empty), perhaps in answer
    /// to the message `reply_to`. `progress` hears of every segment the server has stored.
    pub async fn send_file(
        &mut self,
        target: &str,
        path: &Path,
        caption: &str,
        reply_to: Option<&str>,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<Event, Error> {
        let source = Source::open(path)?;
        let group = self.conversation_to_send(target).await?;
        if let Some(to) = reply_to {
            // Refused before the upload, not after it (which would leave the file on the server).
            self.reply_target(group, to)?;
        }
        let file = self.upload_file(group, &source, progress).await?;
        let content = content::file(self.salt()?, &file, caption);
        let mut item = Item::text(
            at(&self.identity.username),
            caption.to_owned(),
            String::new(),
            now_ms(),
        );
        if let Item::Message { file: f, .. } = &mut item {
            *f = Some(Box::new(file));
        }
        self.send_shown(group, content, item, reply_to).await
    }

    /// Encrypts the file `source` under a fresh key and uploads it for the members of `group`:
    /// what a message needs to name it.
    pub(super) async fn upload_file(
        &mut self,
        group: GroupId,
        source: &Source,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<FileRef, Error> {
        let total = attachment::sealed_len(source.len);
        if let Some(limits) = self.api.limits().await?
            && total > limits.max_file_bytes
        {
            return Err(Error::FileTooLarge {
                size: source.len,
                limit: attachment::plain_len(limits.max_file_bytes).unwrap_or(
                    limits
                        .max_file_bytes
                        .saturating_sub(attachment::sealed_len(0)),
                ),
            });
        }
        let (key, id, start) = match self.unfinished_upload(group, source, total).await? {
            Some(resumed) => resumed,
            None => {
                let rand = self.profile.mls.provider.rand();
                let key = FileKey::new(
                    rand.random_array()
                        .map_err(|_| Error::Crypto("no randomness"))?,
                    rand.random_array()
                        .map_err(|_| Error::Crypto("no randomness"))?,
                );
                let upload = self.api.create_upload(&self.identity, group, total).await?;
                // Kept before the first byte goes: a process that ends mid-way takes it up
                // again the next time.
                self.remember_unfinished(
                    Some(Unfinished {
                        group: hex::encode(group.as_bytes()),
                        path: source.identity(),
                        len: source.len,
                        modified: source.modified_ns(),
                        upload: upload.id.clone(),
                        key: hex::encode(key.key()),
                        nonce: hex::encode(key.nonce()),
                    }),
                    &upload.id,
                )?;
                (key, upload.id, (0, false))
            }
        };
        let sealed = match self.upload(source, &key, &id, start, total, progress).await {
            Ok(sealed) => sealed,
            Err(e) if retryable(&e) => {
                // Kept, with its key, for the next time this file is sent here.
                return Err(e);
            }
            Err(e) => {
                // Not worth keeping. (If this fails too, the server deletes the unfinished
                // upload after a day.)
                let _ = self.api.cancel_upload(&self.identity, &id).await;
                self.remember_unfinished(None, &id)?;
                return Err(e);
            }
        };
        self.remember_unfinished(None, &id)?;
        let name = source
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(FileRef {
            url: format!("{}/v1/blobs/{}", self.identity.server, id),
            blob: id,
            key: hex::encode(key.key()),
            nonce: hex::encode(key.nonce()),
            size: sealed.size,
            blob_hash: hex::encode(sealed.blob_hash),
            file_hash: hex::encode(sealed.file_hash),
            media_type: media_type(&name).to_owned(),
            name,
        })
    }

    /// The upload of this file to this conversation that broke off earlier, if the server still
    /// has it: its key, its id, and where it stands (bytes stored, and whether it is finished).
    /// One the server no longer knows is forgotten.
    async fn unfinished_upload(
        &mut self,
        group: GroupId,
        source: &Source,
        total: u64,
    ) -> Result<Option<(FileKey, String, (u64, bool))>, Error> {
        let all: Vec<Unfinished> = store::get_meta_json(
            self.profile.conn(),
            &self.profile.sealer,
            UNFINISHED,
            "unfinished uploads",
        )?;
        let (group, path) = (hex::encode(group.as_bytes()), source.identity());
        let Some(unfinished) = all.into_iter().find(|u| u.goes_where(&group, &path)) else {
            return Ok(None);
        };
        if !unfinished.is_still(source) {
            // The file changed since: what the server has is of no use.
            let _ = self
                .api
                .cancel_upload(&self.identity, &unfinished.upload)
                .await;
            self.remember_unfinished(None, &unfinished.upload)?;
            return Ok(None);
        }
        match self
            .api
            .upload_status(&self.identity, &unfinished.upload)
            .await
        {
            Ok(status) if status.length == total && status.offset <= total => {
                tracing::debug!(offset = status.offset, "taking up an unfinished upload");
                let start = if status.finished {
                    (total, true)
                } else {
                    (status.offset, false)
                };
                Ok(Some((unfinished.key()?, unfinished.upload, start)))
            }
            Err(e) if retryable(&e) => Err(e),
            // Gone (deleted after its time), or not what it was: sent again from the start.
            _ => {
                self.remember_unfinished(None, &unfinished.upload)?;
                Ok(None)
            }
        }
    }

    /// Forgets the unfinished upload `id`, and remembers `new` (the newest last).
    fn remember_unfinished(&mut self, new: Option<Unfinished>, id: &str) -> Result<(), Error> {
        self.profile.atomically(|tx, sealer, _| {
            let mut all: Vec<Unfinished> =
                store::get_meta_json(tx, sealer, UNFINISHED, "unfinished uploads")?;
            let before = all.len();
            all.retain(|u| u.upload != id);
            if new.is_none() && all.len() == before {
                return Ok(());
            }
            all.extend(new);
            let excess = all.len().saturating_sub(MAX_UNFINISHED);
            all.drain(..excess);
            let json =
                Zeroizing::new(serde_json::to_vec(&all).map_err(|e| Error::Store(e.to_string()))?);
            put_meta(tx, sealer, UNFINISHED, &json)
        })
    }

    /// Uploads the sealed file from `start` (bytes the server has, and whether it is
    /// finished), taking the upload up again where the server says it stands after an
    /// interruption.
    async fn upload(
        &mut self,
        source: &Source,
        key: &FileKey,
        id: &str,
        (mut from, mut finished): (u64, bool),
        total: u64,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<Sealed, Error> {
        let mut tries = 0;
        loop {
            match self
                .upload_from(source, key, id, (from, finished), total, progress)
                .await
            {
                Ok(sealed) => return Ok(sealed),
                Err(e) if retryable(&e) && tries < RETRIES => {
                    tries += 1;
                    tracing::debug!(error = %e, tries, "upload interrupted; taking it up again");
                    tokio::time::sleep(Duration::from_millis(250 << tries)).await;
                    source.unchanged()?;
                    let status = self.api.upload_status(&self.identity, id).await?;
                    if status.finished {
                        // Finished as the answer was lost: only the hashes are still needed.
                        from = total;
                        finished = true;
                    } else {
                        from = status.offset;
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Seals the whole file and sends its bytes from `from` on (none if the upload is
    /// `finished`; an upload whose every byte is there but that is not finished is finished by
    /// an empty last request). The file is sealed on a thread of its own while the segment
    /// before is on its way.
    async fn upload_from(
        &mut self,
        source: &Source,
        key: &FileKey,
        id: &str,
        (from, finished): (u64, bool),
        total: u64,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<Sealed, Error> {
        // One segment on its way, one waiting, one being sealed: memory stays at a few
        // segments whatever the file's size.
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let sealing = {
            let (path, len) = (source.path.clone(), source.len);
            let key = FileKey::new(*key.key(), *key.nonce());
            tokio::task::spawn_blocking(move || seal_segments(&path, len, &key, from, total, &tx))
        };
        let mut sent = from;
        progress(Progress { done: sent, total });
        let mut failed = None;
        while let Some((segment, last)) = rx.recv().await {
            if (segment.is_empty() && !last) || (last && finished) {
                continue;
            }
            match self
                .api
                .append_upload(&self.identity, id, sent, segment, last)
                .await
            {
                Ok(status) => {
                    sent = status.offset;
                    progress(Progress { done: sent, total });
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        // Stops the sealing thread if it is still at work.
        drop(rx);
        let sealed = sealing.await.map_err(|e| Error::File(e.to_string()));
        if let Some(e) = failed {
            return Err(e);
        }
        let sealed = sealed??;
        if sent != total {
            return Err(Error::Protocol(
                "the server did not take the whole file".into(),
            ));
        }
        Ok(sealed)
    }

    /// Fetches, opens and checks the file of the message `message` (its id, or the start of
    /// it) and saves it at `out` (a file, or a directory to save it in under the sender's name
    /// for it); by default in the current directory. Never overwrites a file. The path it was
    /// saved at.
    pub async fn download(
        &mut self,
        message: &str,
        out: Option<&Path>,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<PathBuf, Error> {
        let found = self.find_message(message)?;
        let Item::Message {
            file: Some(file),
            deleted: false,
            ..
        } = &found.item
        else {
            return Err(Error::NoFile(message.to_owned()));
        };
        let file = (**file).clone();
        let name = safe_name(&file.name);
        let target = match out {
            Some(p) if p.is_dir() => p.join(&name),
            Some(p) => p.to_owned(),
            None => PathBuf::from(&name),
        };
        self.save_file(&file, &target, progress).await?;
        Ok(target)
    }

    /// Fetches, opens and checks `file` and saves it at `target` (which must not exist).
    pub(super) async fn save_file(
        &mut self,
        file: &FileRef,
        target: &Path,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<(), Error> {
        if target.exists() {
            return Err(Error::FileExists(target.display().to_string()));
        }
        let mut partial = target.to_owned().into_os_string();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        if let Err(e) = self.fetch_into(file, &partial, progress).await {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
        if target.exists() {
            let _ = std::fs::remove_file(&partial);
            return Err(Error::FileExists(target.display().to_string()));
        }
        std::fs::rename(&partial, target).map_err(|e| io_error(target, &e))?;
        // The server may delete it once every recipient has it. Not fatal: it is deleted after
        // its retention time anyway.
        if let Err(e) = self.api.blob_received(&self.identity, &file.blob).await {
            tracing::debug!(error = %e, "could not tell the server the file arrived");
        }
        Ok(())
    }

    /// Fetches the blob into `partial`, opening and checking it as it comes (on a thread of
    /// its own, while the next bytes are on their way).
    async fn fetch_into(
        &mut self,
        file: &FileRef,
        partial: &Path,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<(), Error> {
        let stored = "a stored file reference";
        let key = FileKey::new(
            hex_array(&file.key, stored)?,
            hex_array(&file.nonce, stored)?,
        );
        let expected = Sealed {
            size: file.size,
            blob_hash: hex_array(&file.blob_hash, stored)?,
            file_hash: hex_array(&file.file_hash, stored)?,
        };
        let (tx, rx) = tokio::sync::mpsc::channel::<Feed>(8);
        let opening = {
            let path = partial.to_owned();
            tokio::task::spawn_blocking(move || open_into(&path, &key, expected, rx))
        };
        let mut done = 0u64;
        // Pieces as they came (not copied into one buffer), handed over a few at a time.
        let mut batch = Vec::new();
        let mut batched = 0;
        // The blob is hashed here while the opener decrypts: two cores, not one.
        let mut blob_hash = sha2::Sha256::new();
        progress(Progress {
            done,
            total: file.size,
        });
        // A broken connection is taken up where it stopped (the opener and the hash go on with
        // what comes next), as often as it makes progress in between.
        let mut answer = None;
        let mut tries = 0;
        let fetched = loop {
            let next = match answer.as_mut() {
                Some(resp) => self.api.next_piece(resp).await,
                None => match self.api.fetch_blob(&self.identity, &file.blob, done).await {
                    Ok(resp) => {
                        answer = Some(resp);
                        continue;
                    }
                    Err(e) => Err(e),
                },
            };
            match next {
                Ok(Some(piece)) => {
                    tries = 0;
                    done += piece.len() as u64;
                    blob_hash.update(&piece);
                    batched += piece.len();
                    batch.push(piece);
                    if batched >= READ {
                        batched = 0;
                        if tx
                            .send(Feed::Bytes(std::mem::take(&mut batch)))
                            .await
                            .is_err()
                        {
                            // The opener stopped: its error says why.
                            break Ok(());
                        }
                    }
                    progress(Progress {
                        done: done.min(file.size),
                        total: file.size,
                    });
                }
                Ok(None) => {
                    if !batch.is_empty() {
                        let _ = tx.send(Feed::Bytes(batch)).await;
                    }
                    let _ = tx.send(Feed::End(blob_hash.finalize().into())).await;
                    break Ok(());
                }
                Err(e) if retryable(&e) && tries < RETRIES => {
                    tries += 1;
                    tracing::debug!(error = %e, tries, done, "download interrupted; going on from there");
                    answer = None;
                    tokio::time::sleep(Duration::from_millis(250 << tries)).await;
                }
                Err(e) => break Err(e),
            }
        };
        drop(tx);
        let opened = opening.await.map_err(|e| Error::File(e.to_string()))?;
        // A fetch that failed for good cuts the blob short: its own error says more.
        fetched.and(opened)
    }
}

/// What the fetching task hands the opener.
enum Feed {
    /// More of the blob, in the pieces it came in.
    Bytes(Vec<bytes::Bytes>),
    /// The blob ended; its SHA-256.
    End([u8; 32]),
}

/// Opens the blob's bytes as they come from `rx` into the file at `path`, checking everything,
/// and syncs it (as it is written, and at the end).
fn open_into(
    path: &Path,
    key: &FileKey,
    expected: Sealed,
    mut rx: tokio::sync::mpsc::Receiver<Feed>,
) -> Result<(), Error> {
    let mut opener = Opener::new_unhashed(key, expected);
    let mut out = attachment::WriteBehind::create(path).map_err(|e| io_error(path, &e))?;
    let refused = |e: attachment::OpenError| match e {
        attachment::OpenError::Write(e) => Error::File(format!("{}: {e}", path.display())),
        e => Error::FileRefused(e.to_string()),
    };
    let blob_hash = loop {
        match rx.blocking_recv() {
            Some(Feed::Bytes(pieces)) => {
                for piece in pieces {
                    opener.update(&piece, &mut out).map_err(refused)?;
                }
            }
            Some(Feed::End(hash)) => break hash,
            // The fetch broke off: what came is cut short.
            None => return Err(refused(attachment::OpenError::TooShort)),
        }
    };
    opener.finish_hashed(&mut out, blob_hash).map_err(refused)?;
    out.finish().map_err(|e| io_error(path, &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_names_cannot_leave_the_directory_or_hide() {
        assert_eq!(safe_name("photo.jpg"), "photo.jpg");
        assert_eq!(safe_name("../../etc/passwd"), "passwd");
        assert_eq!(safe_name("..\\..\\boot.ini"), "boot.ini");
        assert_eq!(safe_name(".bashrc"), "bashrc");
        assert_eq!(safe_name("a\u{1b}[2Jb\n.txt"), "a[2Jb.txt");
        assert_eq!(safe_name(""), "file");
        assert_eq!(safe_name("dir/"), "file");
        assert_eq!(safe_name(".."), "file");
    }

    #[test]
    fn media_types_follow_the_extension() {
        assert_eq!(media_type("Photo.JPG"), "image/jpeg");
        assert_eq!(media_type("notes"), "application/octet-stream");
        assert_eq!(media_type("a.tar.gz"), "application/octet-stream");
    }

    /// Seals a file of `len` bytes through `seal_segments`, from `from` on: what it handed over,
    /// and what it says of the file.
    fn sealed_through_segments(
        path: &Path,
        len: u64,
        key: &FileKey,
        from: u64,
    ) -> (Vec<u8>, Vec<bool>, Sealed) {
        let total = attachment::sealed_len(len);
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let (path, key2) = (path.to_owned(), FileKey::new(*key.key(), *key.nonce()));
        let sealing =
            std::thread::spawn(move || seal_segments(&path, len, &key2, from, total, &tx));
        let (mut blob, mut marks) = (Vec::new(), Vec::new());
        while let Some((segment, last)) = rx.blocking_recv() {
            blob.extend_from_slice(&segment);
            marks.push(last);
        }
        let sealed = sealing.join().unwrap().unwrap();
        (blob, marks, sealed)
    }

    #[test]
    fn segments_carry_the_blob_from_where_the_server_stands_and_the_files_own_hash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        // Across several reads, chunks and segments, and ending in a partial chunk.
        let file: Vec<u8> = (0..SEGMENT + 3 * READ + 1001)
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&path, &file).unwrap();
        let len = file.len() as u64;
        let key = FileKey::new([3; attachment::KEY], [4; attachment::NONCE_PREFIX]);
        // The same as sealing in one piece, on one thread.
        let mut whole = Vec::new();
        let mut sealer = Sealer::new(&key);
        sealer.update(&file, &mut whole).unwrap();
        let expected = sealer.finish(&mut whole).unwrap();
        assert_eq!(
            expected.file_hash,
            <[u8; 32]>::from(sha2::Sha256::digest(&file))
        );

        let (blob, marks, sealed) = sealed_through_segments(&path, len, &key, 0);
        assert_eq!(sealed, expected);
        assert_eq!(blob, whole);
        assert_eq!(marks.last(), Some(&true));
        assert!(marks.len() >= 2 && marks[..marks.len() - 1].iter().all(|l| !l));

        // Taken up again: only what the server does not have, and the same hashes.
        let from = SEGMENT as u64 + 12_345;
        let (rest, _, again) = sealed_through_segments(&path, len, &key, from);
        assert_eq!(again, expected);
        assert_eq!(rest, whole[usize::try_from(from).unwrap()..]);

        // A file that grew since: refused, not sent as another file.
        std::fs::write(&path, [&file[..], b"more"].concat()).unwrap();
        let total = attachment::sealed_len(len);
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let p = path.clone();
        let sealing = std::thread::spawn(move || seal_segments(&p, len, &key, 0, total, &tx));
        while rx.blocking_recv().is_some() {}
        assert!(matches!(
            sealing.join().unwrap(),
            Err(Error::FileChanged(_))
        ));
    }
}
