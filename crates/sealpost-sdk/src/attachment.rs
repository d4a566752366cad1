//! Attachments: a file encrypted with a fresh key before it leaves the device, in a form that
//! can be written and read a chunk at a time (memory stays bounded however large the file),
//! and that opens under one key only.
//!
//! The blob is `commitment ‖ chunk₀ ‖ chunk₁ ‖ …`:
//! - `commitment` = SHA-256(`"sealpost attachment key commitment v1"` ‖ key ‖ nonce prefix):
//!   AES-GCM is not key-committing (one ciphertext can be made to open, under two keys, to two
//!   different files: "invisible salamanders"). The commitment makes the blob name its key: a
//!   second key that opens it would be a SHA-256 collision.
//! - the chunks are STREAM (Hoang, Reyhanitabar, Rogaway, Vizár 2015; RustCrypto's
//!   `aead_stream::StreamBE32`) over AES-128-GCM, the algorithm the MIMI content draft
//!   requires: 64 KiB of the file each, the last one flagged, so that a blob cut short at a chunk
//!   boundary, or extended, or with chunks reordered, fails to open.
//!
//! The message that carries the file (a MIMI `ExternalPart`) names the key, the 7-octet nonce
//! prefix, the blob's size and SHA-256, and, in a private extension, the SHA-256 of the file
//! itself. A receiver checks the blob's hash, and writes what it decrypts to a file that takes
//! its place only when every check passed. It does not hash the file again: the blob's hash fixes
//! the ciphertext, the commitment fixes the key, and decryption under one key is a function, so
//! the file is the one the sender encrypted (a second SHA-256 pass cost a quarter of the
//! receiving time and checked nothing more).

use std::io::Write;

use aead_stream::{DecryptorBE32, EncryptorBE32};
use aes_gcm::Aes128Gcm;
use aes_gcm::aead::KeyInit as _;
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

/// The file's octets per chunk.
pub const CHUNK: usize = 64 * 1024;
/// AES-GCM's tag, after each chunk.
pub const TAG: usize = 16;
/// The key commitment at the start of a blob.
pub const COMMITMENT: usize = 32;
/// AES-128-GCM in the IANA AEAD registry (the `encAlg` of the MIMI draft).
pub const AES_128_GCM: u16 = 1;
/// The length of a key.
pub const KEY: usize = 16;
/// The length of the nonce prefix (AES-GCM's 12 octets less STREAM's counter and flag).
pub const NONCE_PREFIX: usize = 7;

const COMMITMENT_LABEL: &[u8] = b"sealpost attachment key commitment v1";

/// Why a blob does not open.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    /// Longer than the message said.
    #[error("the file on the server is longer than the message says: it was changed")]
    TooLong,
    /// Shorter than the message said.
    #[error("the file on the server is shorter than the message says: it was cut short")]
    TooShort,
    /// Opened under another key, or altered.
    #[error("the file on the server is not the one the message names: it was replaced or altered")]
    NotThisFile,
    /// What was opened could not be written where it goes.
    #[error("could not write the received file: {0}")]
    Write(String),
}

/// A file too large to seal: STREAM counts chunks in 32 bits (256 TiB of file).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the file is too large to encrypt as one attachment")]
pub struct TooLarge;

/// A file's key and nonce prefix, fresh for each file.
pub struct FileKey {
    key: Zeroizing<[u8; KEY]>,
    nonce: [u8; NONCE_PREFIX],
}

impl FileKey {
    /// A key and nonce prefix from their octets.
    pub fn new(key: [u8; KEY], nonce: [u8; NONCE_PREFIX]) -> FileKey {
        FileKey {
            key: Zeroizing::new(key),
            nonce,
        }
    }

    /// The key.
    pub fn key(&self) -> &[u8; KEY] {
        &self.key
    }

    /// The nonce prefix.
    pub fn nonce(&self) -> &[u8; NONCE_PREFIX] {
        &self.nonce
    }

    fn commitment(&self) -> [u8; COMMITMENT] {
        let mut h = Sha256::new();
        h.update(COMMITMENT_LABEL);
        h.update(*self.key);
        h.update(self.nonce);
        h.finalize().into()
    }

    fn cipher(&self) -> Aes128Gcm {
        Aes128Gcm::new((&*self.key).into())
    }
}

/// The size of the blob of a file of `len` octets.
pub fn sealed_len(len: u64) -> u64 {
    let chunks = len.div_ceil(CHUNK as u64).max(1);
    COMMITMENT as u64 + len + chunks * TAG as u64
}

/// The size of the file whose blob has `sealed` octets; `None` if no file seals to that size.
pub fn plain_len(sealed: u64) -> Option<u64> {
    let rest = sealed.checked_sub(COMMITMENT as u64)?;
    let chunks = rest.div_ceil(CHUNK as u64 + TAG as u64).max(1);
    let len = rest.checked_sub(chunks * TAG as u64)?;
    (sealed_len(len) == sealed).then_some(len)
}

/// What a sealed file is, for the message that carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The blob's size.
    pub size: u64,
    /// SHA-256 of the blob.
    pub blob_hash: [u8; 32],
    /// SHA-256 of the file.
    pub file_hash: [u8; 32],
}

/// Encrypts a file as it is fed, a chunk at a time.
pub struct Sealer {
    stream: Option<EncryptorBE32<Aes128Gcm>>,
    pending: Vec<u8>,
    blob: Sha256,
    file: Option<Sha256>,
    size: u64,
    started: bool,
    commitment: [u8; COMMITMENT],
}

impl Sealer {
    /// Starts sealing a file under `key`.
    pub fn new(key: &FileKey) -> Sealer {
        Sealer {
            stream: Some(EncryptorBE32::from_aead(key.cipher(), key.nonce().into())),
            pending: Vec::with_capacity(CHUNK + TAG),
            blob: Sha256::new(),
            file: Some(Sha256::new()),
            size: 0,
            started: false,
            commitment: key.commitment(),
        }
    }

    /// Like [`Sealer::new`], for a caller that hashes the file itself (on another thread, in
    /// parallel with the encryption) and gives the hash to [`Sealer::finish_hashed`].
    pub fn new_unhashed(key: &FileKey) -> Sealer {
        Sealer {
            file: None,
            ..Sealer::new(key)
        }
    }

    fn emit(&mut self, out: &mut Vec<u8>, bytes: &[u8]) {
        self.blob.update(bytes);
        self.size += bytes.len() as u64;
        out.extend_from_slice(bytes);
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            self.started = true;
            let commitment = self.commitment;
            self.emit(out, &commitment);
        }
    }

    /// Takes more of the file; appends to `out` what of the blob is ready.
    pub fn update(&mut self, mut data: &[u8], out: &mut Vec<u8>) -> Result<(), TooLarge> {
        self.start(out);
        if let Some(file) = &mut self.file {
            file.update(data);
        }
        while !data.is_empty() {
            // A full chunk is held back until more comes: the last chunk is flagged.
            if self.pending.len() == CHUNK {
                self.seal_pending(out, false)?;
            }
            let take = (CHUNK - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        Ok(())
    }

    fn seal_pending(&mut self, out: &mut Vec<u8>, last: bool) -> Result<(), TooLarge> {
        let mut chunk = std::mem::take(&mut self.pending);
        // Encryption fails only past 2^32 chunks.
        let stream = self.stream.take().ok_or(TooLarge)?;
        if last {
            stream
                .encrypt_last_in_place(b"", &mut chunk)
                .map_err(|_| TooLarge)?;
        } else {
            let mut stream = stream;
            stream
                .encrypt_next_in_place(b"", &mut chunk)
                .map_err(|_| TooLarge)?;
            self.stream = Some(stream);
        }
        self.emit(out, &chunk);
        chunk.clear();
        self.pending = chunk;
        Ok(())
    }

    /// Ends the file: appends the last of the blob to `out`.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<Sealed, TooLarge> {
        // Made by `new_unhashed`: only `finish_hashed` knows the file's hash.
        let file_hash = self.file.take().ok_or(TooLarge)?.finalize().into();
        self.finish_hashed(out, file_hash)
    }

    /// [`Sealer::finish`] for a sealer made by [`Sealer::new_unhashed`], with the SHA-256 of
    /// every byte of the file given to `update`.
    pub fn finish_hashed(
        mut self,
        out: &mut Vec<u8>,
        file_hash: [u8; 32],
    ) -> Result<Sealed, TooLarge> {
        self.start(out);
        self.seal_pending(out, true)?;
        Ok(Sealed {
            size: self.size,
            blob_hash: self.blob.finalize().into(),
            file_hash,
        })
    }
}

/// Decrypts a blob as it arrives, a chunk at a time, checking it against what the message says.
pub struct Opener {
    stream: Option<DecryptorBE32<Aes128Gcm>>,
    pending: Vec<u8>,
    commitment: [u8; COMMITMENT],
    /// The commitment at the start was read and checked.
    committed: bool,
    seen: u64,
    expected: Sealed,
    /// The blob's hash, unless the caller computes it (see [`Opener::new_unhashed`]).
    blob: Option<Sha256>,
}

impl Opener {
    /// Starts opening a blob that the message describes as `expected`, under `key`.
    pub fn new(key: &FileKey, expected: Sealed) -> Opener {
        Opener {
            stream: Some(DecryptorBE32::from_aead(key.cipher(), key.nonce().into())),
            pending: Vec::with_capacity(CHUNK + TAG),
            commitment: key.commitment(),
            committed: false,
            seen: 0,
            expected,
            blob: Some(Sha256::new()),
        }
    }

    /// Like [`Opener::new`], for a caller that hashes the blob itself (on another thread, in
    /// parallel with the decryption) and gives the hash to [`Opener::finish_hashed`].
    pub fn new_unhashed(key: &FileKey, expected: Sealed) -> Opener {
        Opener {
            blob: None,
            ..Opener::new(key, expected)
        }
    }

    /// Takes more of the blob; writes to `out` what of the file is decrypted and authentic
    /// (not yet checked as a whole: use it only after [`Opener::finish`]), a chunk at a time
    /// and straight from where it was decrypted.
    pub fn update(&mut self, mut data: &[u8], out: &mut impl Write) -> Result<(), OpenError> {
        self.seen += data.len() as u64;
        if self.seen > self.expected.size {
            return Err(OpenError::TooLong);
        }
        if let Some(blob) = &mut self.blob {
            blob.update(data);
        }
        while !data.is_empty() {
            let room = if self.committed {
                // A full chunk is held back until more comes: the last one is flagged.
                if self.pending.len() == CHUNK + TAG {
                    self.open_pending(out, false)?;
                }
                CHUNK + TAG - self.pending.len()
            } else {
                COMMITMENT - self.pending.len()
            };
            let take = room.min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if !self.committed && self.pending.len() == COMMITMENT {
                if self.pending != self.commitment {
                    return Err(OpenError::NotThisFile);
                }
                self.pending.clear();
                self.committed = true;
            }
        }
        Ok(())
    }

    fn open_pending(&mut self, out: &mut impl Write, last: bool) -> Result<(), OpenError> {
        let mut chunk = std::mem::take(&mut self.pending);
        let stream = self.stream.take().ok_or(OpenError::NotThisFile)?;
        if last {
            stream
                .decrypt_last_in_place(b"", &mut chunk)
                .map_err(|_| OpenError::NotThisFile)?;
        } else {
            let mut stream = stream;
            stream
                .decrypt_next_in_place(b"", &mut chunk)
                .map_err(|_| OpenError::NotThisFile)?;
            self.stream = Some(stream);
        }
        let written = out.write_all(&chunk);
        chunk.clear();
        self.pending = chunk;
        written.map_err(|e| OpenError::Write(e.to_string()))
    }

    /// Ends the blob: checks the whole, then writes the last of the file to `out`.
    pub fn finish(mut self, out: &mut impl Write) -> Result<(), OpenError> {
        let hash = self
            .blob
            .take()
            .map(|h| <[u8; 32]>::from(h.finalize()))
            // Not made by `new_unhashed`; never equal to a real hash.
            .ok_or(OpenError::NotThisFile)?;
        self.finish_hashed(out, hash)
    }

    /// [`Opener::finish`] for an opener made by [`Opener::new_unhashed`], with the SHA-256 of
    /// every byte of the blob given to `update`.
    pub fn finish_hashed(
        mut self,
        out: &mut impl Write,
        blob_hash: [u8; 32],
    ) -> Result<(), OpenError> {
        if self.seen < self.expected.size || !self.committed {
            return Err(OpenError::TooShort);
        }
        if blob_hash != self.expected.blob_hash {
            return Err(OpenError::NotThisFile);
        }
        self.open_pending(out, true)
    }
}

/// A file written front to back on a thread of its own, so that copying into the page cache
/// runs beside the decryption instead of after it, and synced behind the writer: every
/// [`WriteBehind::EVERY`] bytes a third thread has the disk take what was written so far, so
/// that the sync at the end finds little left to do. (Without it the kernel starts writing a
/// large download back only at the final sync, as its background writeback waits for a tenth of
/// memory to be dirty: the disk idles while the file arrives, and the receiver waits for all of
/// it afterwards.) The caller's bytes are gathered into a few buffers that go to the writing
/// thread and come back; memory stays at [`WriteBehind::BUFFERS`] of them.
pub struct WriteBehind {
    buffer: Vec<u8>,
    full: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    empty: std::sync::mpsc::Receiver<Vec<u8>>,
    writer: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl WriteBehind {
    /// Bytes written between two requests to the disk to take them.
    pub const EVERY: u64 = 16 * 1024 * 1024;
    /// Bytes of one buffer.
    pub const BUFFER: usize = 256 * 1024;
    /// Buffers, at most: one being filled, the rest waiting or being written.
    pub const BUFFERS: usize = 4;

    /// Creates `path` for writing (emptying it if it exists).
    pub fn create(path: &std::path::Path) -> std::io::Result<WriteBehind> {
        let file = std::fs::File::create(path)?;
        let behind = file.try_clone()?;
        let (full, to_write) = std::sync::mpsc::sync_channel::<Vec<u8>>(Self::BUFFERS);
        let (give_back, empty) = std::sync::mpsc::sync_channel::<Vec<u8>>(Self::BUFFERS);
        for _ in 1..Self::BUFFERS {
            let _ = give_back.send(Vec::with_capacity(Self::BUFFER));
        }
        let writer = std::thread::Builder::new()
            .name("file-writer".into())
            .spawn(move || write_behind(file, behind, &to_write, &give_back))?;
        Ok(WriteBehind {
            buffer: Vec::with_capacity(Self::BUFFER),
            full: Some(full),
            empty,
            writer: Some(writer),
        })
    }

    /// Writes the rest and syncs the file and its metadata: the file is on the disk when this
    /// returns.
    pub fn finish(mut self) -> std::io::Result<()> {
        if !self.buffer.is_empty() {
            self.hand_over()?;
        }
        // An empty buffer: the end (the file is synced only if it was finished).
        if let Some(full) = self.full.take() {
            let _ = full.send(Vec::new());
        }
        self.stop()
    }

    /// Hands the filled buffer to the writing thread and takes an empty one.
    fn hand_over(&mut self) -> std::io::Result<()> {
        let filled = std::mem::take(&mut self.buffer);
        let sent = self.full.as_ref().map(|full| full.send(filled));
        match (sent, self.empty.recv()) {
            (Some(Ok(())), Ok(empty)) => {
                self.buffer = empty;
                Ok(())
            }
            // The writing thread stopped: its error says why.
            _ => {
                self.full = None;
                self.stop().and(Err(std::io::Error::other(
                    "the file's writing thread stopped",
                )))
            }
        }
    }

    /// Waits for the writing thread to end; its outcome.
    fn stop(&mut self) -> std::io::Result<()> {
        match self.writer.take() {
            Some(writer) => writer
                .join()
                .map_err(|_| std::io::Error::other("the file's writing thread failed"))?,
            None => Ok(()),
        }
    }
}

/// The writing thread of a [`WriteBehind`]: writes what comes from `to_write` to `file`, gives
/// each buffer back, and has a thread of its own sync `behind` (the same file) as it goes;
/// syncs all of it when an empty buffer says the file is finished (not when the writer is
/// dropped: that file is cut short, and deleted).
fn write_behind(
    mut file: std::fs::File,
    behind: std::fs::File,
    to_write: &std::sync::mpsc::Receiver<Vec<u8>>,
    give_back: &std::sync::mpsc::SyncSender<Vec<u8>>,
) -> std::io::Result<()> {
    // One request waits at most; one that comes while the disk is busy is not needed.
    let (sync, requests) = std::sync::mpsc::sync_channel::<()>(1);
    let syncer = std::thread::Builder::new()
        .name("file-syncer".into())
        .spawn(move || {
            while requests.recv().is_ok() {
                behind.sync_data()?;
            }
            Ok(())
        })?;
    let mut unsynced = 0;
    let mut finished = false;
    let written = to_write.iter().try_for_each(|mut buffer| {
        if buffer.is_empty() {
            finished = true;
            return Ok(());
        }
        file.write_all(&buffer)?;
        unsynced += buffer.len() as u64;
        if unsynced >= WriteBehind::EVERY {
            unsynced = 0;
            let _ = sync.try_send(());
        }
        buffer.clear();
        // The other side may have stopped waiting: nothing to give back to.
        let _ = give_back.send(buffer);
        std::io::Result::Ok(())
    });
    drop(sync);
    let synced: std::io::Result<()> = syncer
        .join()
        .map_err(|_| std::io::Error::other("the file's syncing thread failed"))?;
    written?;
    synced?;
    if finished { file.sync_all() } else { Ok(()) }
}

impl Write for WriteBehind {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.buffer.len() == Self::BUFFER {
            self.hand_over()?;
        }
        let n = buf.len().min(Self::BUFFER - self.buffer.len());
        self.buffer.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    /// Does nothing: what is written reaches the file when the buffer fills, and the disk at
    /// [`WriteBehind::finish`].
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for WriteBehind {
    fn drop(&mut self) {
        self.full = None;
        let _ = self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(n: u8) -> FileKey {
        FileKey::new([n; KEY], [n; NONCE_PREFIX])
    }

    fn seal(key: &FileKey, file: &[u8], feed: usize) -> (Vec<u8>, Sealed) {
        let mut sealer = Sealer::new(key);
        let mut blob = Vec::new();
        for piece in file.chunks(feed.max(1)) {
            sealer.update(piece, &mut blob).unwrap();
        }
        let sealed = sealer.finish(&mut blob).unwrap();
        (blob, sealed)
    }

    fn open(
        key: &FileKey,
        blob: &[u8],
        expected: &Sealed,
        feed: usize,
    ) -> Result<Vec<u8>, OpenError> {
        let mut opener = Opener::new(key, expected.clone());
        let mut file = Vec::new();
        for piece in blob.chunks(feed.max(1)) {
            opener.update(piece, &mut file)?;
        }
        opener.finish(&mut file)?;
        Ok(file)
    }

    #[test]
    fn sizes_at_chunk_boundaries_round_trip() {
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK] {
            let file: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let (blob, sealed) = seal(&key(1), &file, 10_000);
            assert_eq!(blob.len() as u64, sealed_len(len as u64), "{len}");
            assert_eq!(sealed.size, blob.len() as u64);
            assert_eq!(open(&key(1), &blob, &sealed, 7_000).unwrap(), file, "{len}");
        }
    }

    /// The blob's octets are fixed: files already sent must open after any change of the
    /// cipher crates. The expected hash was computed outside this code, with RustCrypto's
    /// `aes-gcm` 0.10 and its `aead::stream::EncryptorBE32` (key 7…, nonce prefix 9…).
    #[test]
    fn a_blob_is_the_same_octets_as_it_always_was() {
        let file: Vec<u8> = (0..2 * CHUNK + 100).map(|i| (i * 31) as u8).collect();
        let key = FileKey::new([7; KEY], [9; NONCE_PREFIX]);
        let (blob, sealed) = seal(&key, &file, 5_000);
        assert_eq!(blob.len(), 131_252);
        assert_eq!(
            hex::encode(sealed.blob_hash),
            "ab5af67234f7e2a07d83509f0490936b86c5feda0b971f2bca1fd6807cc3079b"
        );
        assert_eq!(open(&key, &blob, &sealed, 3_000).unwrap(), file);
    }

    #[test]
    fn a_blob_cut_extended_swapped_or_under_another_key_does_not_open() {
        let file = vec![7u8; 2 * CHUNK + 5];
        let (blob, sealed) = seal(&key(1), &file, CHUNK);
        // Cut at a chunk boundary: every remaining chunk authenticates, the flag does not.
        let cut = &blob[..COMMITMENT + CHUNK + TAG];
        let short = Sealed {
            size: cut.len() as u64,
            blob_hash: Sha256::digest(cut).into(),
            ..sealed.clone()
        };
        assert_eq!(
            open(&key(1), cut, &short, 4096),
            Err(OpenError::NotThisFile)
        );
        assert_eq!(open(&key(1), cut, &sealed, 4096), Err(OpenError::TooShort));
        let mut long = blob.clone();
        long.push(0);
        assert_eq!(open(&key(1), &long, &sealed, 4096), Err(OpenError::TooLong));
        // Another blob of the same size under the same key (a member who knows the key, and a
        // server that swaps files for them): the blob's hash tells.
        let (other, _) = seal(&key(1), &vec![8u8; file.len()], CHUNK);
        assert_eq!(
            open(&key(1), &other, &sealed, 4096),
            Err(OpenError::NotThisFile)
        );
        // Another key: the commitment at the start tells at once.
        assert_eq!(
            open(&key(2), &blob, &sealed, 4096),
            Err(OpenError::NotThisFile)
        );
        // The file's own hash is not what makes it this file: the blob's hash and the key are.
        let other_file_hash = Sealed {
            file_hash: [0; 32],
            ..sealed.clone()
        };
        assert_eq!(
            open(&key(1), &blob, &other_file_hash, 4096),
            Ok(file.clone())
        );
        // A flipped bit anywhere.
        for at in [0, COMMITMENT, COMMITMENT + CHUNK + TAG + 3, blob.len() - 1] {
            let mut bad = blob.clone();
            bad[at] ^= 1;
            assert!(open(&key(1), &bad, &sealed, 4096).is_err(), "{at}");
        }
    }

    #[test]
    fn written_behind_is_written_whole_and_a_failed_write_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        // More than the buffers hold and a sync interval, in pieces that do not fit them.
        let len = 2 * WriteBehind::EVERY as usize + 12_345;
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut out = WriteBehind::create(&path).unwrap();
        for piece in data.chunks(100_003) {
            out.write_all(piece).unwrap();
        }
        out.finish().unwrap();
        assert!(std::fs::read(&path).unwrap() == data);

        // Dropped unfinished: it ends, with what was handed over written.
        let mut out = WriteBehind::create(&path).unwrap();
        out.write_all(&data[..WriteBehind::BUFFER + 1]).unwrap();
        drop(out);
        assert_eq!(std::fs::read(&path).unwrap(), &data[..WriteBehind::BUFFER]);

        // A disk that is full: an error, at the latest when finished, never a hang.
        if std::path::Path::new("/dev/full").exists() {
            let mut out = WriteBehind::create(std::path::Path::new("/dev/full")).unwrap();
            let wrote = data.chunks(100_003).try_for_each(|p| out.write_all(p));
            let err = wrote.and_then(|()| out.finish()).unwrap_err();
            assert!(err.to_string().contains("No space"), "{err}");
        }
    }

    proptest! {
        // Each case seals and opens up to 192 KiB: a few dozen cover the boundaries.
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn any_file_fed_in_any_pieces_round_trips(
            file in proptest::collection::vec(any::<u8>(), 0..3 * CHUNK),
            feed in 1usize..2 * CHUNK,
            take in 1usize..2 * CHUNK,
        ) {
            let (blob, sealed) = seal(&key(3), &file, feed);
            prop_assert_eq!(blob.len() as u64, sealed_len(file.len() as u64));
            prop_assert_eq!(open(&key(3), &blob, &sealed, take).unwrap(), file);
        }

        #[test]
        fn hashed_by_the_caller_or_not_a_blob_opens_the_same(
            file in proptest::collection::vec(any::<u8>(), 0..2 * CHUNK),
            flip in any::<usize>(),
        ) {
            let (blob, sealed) = seal(&key(4), &file, 4096);
            let mut opener = Opener::new_unhashed(&key(4), sealed.clone());
            let mut out = Vec::new();
            opener.update(&blob, &mut out).unwrap();
            let hash: [u8; 32] = Sha256::digest(&blob).into();
            let mut wrong = hash;
            wrong[flip % 32] ^= 1;
            let again = Opener::new_unhashed(&key(4), sealed.clone());
            let mut scratch = Vec::new();
            let mut again = again;
            again.update(&blob, &mut scratch).unwrap();
            prop_assert_eq!(again.finish_hashed(&mut scratch, wrong), Err(OpenError::NotThisFile));
            opener.finish_hashed(&mut out, hash).unwrap();
            prop_assert_eq!(out, file);
        }

        #[test]
        fn plain_len_undoes_sealed_len(len in 0u64..1 << 40) {
            prop_assert_eq!(plain_len(sealed_len(len)), Some(len));
            // Sizes between two files' blobs are nobody's.
            if let Some(other) = plain_len(sealed_len(len) + 1) {
                prop_assert_eq!(sealed_len(other), sealed_len(len) + 1);
            }
        }
    }
}
