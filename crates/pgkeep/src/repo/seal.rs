//! Encryption at rest: the key file, the wrapped data key in `pgkeep.info`, and the sealed
//! envelope every object of an encrypted repository is stored in (docs/repo-format.md,
//! "Sealed objects").
//!
//! Key hierarchy: the operator's key file (32 random bytes) only wraps a random per-repository
//! data key; objects are sealed under a per-object key derived from the data key and a random
//! 192-bit salt, so nonces are a plain chunk counter that can never repeat under one key, and
//! rotating the key file rewraps 32 bytes instead of rewriting the repository.
//!
//! Envelope (AES-256-GCM, ring): `header | chunk...`, each chunk at most 64 KiB of plaintext
//! sealed with nonce = 88-bit big-endian chunk counter | last-chunk flag (the STREAM
//! construction, as in age), associated data = header | object key. The last-chunk flag makes
//! truncation at a chunk boundary detectable; the object key in the associated data makes an
//! object stored under another name fail to open.

use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

pub const KEY_LEN: usize = 32;
const TAG_LEN: usize = 16;
const MAGIC: &[u8; 4] = b"PGKS";
const VERSION: u8 = 1;
/// Algorithm code 1: AES-256-GCM chunks under an HKDF-SHA256 per-object key.
const ALG_AES256GCM: u8 = 1;
const SALT_LEN: usize = 24;
pub const HEADER_LEN: usize = 8 + SALT_LEN;
/// log2 of the plaintext bytes per chunk.
const CHUNK_SHIFT: u8 = 16;
pub const CHUNK: usize = 1 << CHUNK_SHIFT;
const SEALED_CHUNK: usize = CHUNK + TAG_LEN;
pub const ALGORITHM: &str = "aes-256-gcm";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("repository {location} is encrypted and no key was given; hint: pass --encryption-key-file FILE, set PGKEEP_ENCRYPTION_KEY_FILE, or set `encryption_key_file` in the config file")]
    Required { location: String },
    #[error("the key in {file} does not open repository {location}; hint: use the key the repository was initialized or last rotated with")]
    Wrong { location: String, file: String },
    #[error("repository {location} is not encrypted but an encryption key was given ({file}); hint: an existing repository cannot be encrypted in place: initialize a new repository with --encryption-key-file, or drop the key option for this one")]
    NotEncrypted { location: String, file: String },
    #[error("key file {file}: {detail}; hint: create it with `head -c 32 /dev/urandom > {file}; chmod 600 {file}`")]
    BadFile { file: String, detail: String },
    #[error("key file {file} can be read by users other than its owner (mode {mode:04o}); hint: chmod 600 {file}")]
    Exposed { file: String, mode: u32 },
    #[error("the new key in {file} is the repository's current key; hint: create a new key file with `head -c 32 /dev/urandom > FILE; chmod 600 FILE`")]
    SameKey { file: String },
    #[error("repository {location}: the wrapped data key in pgkeep.info is damaged ({detail}); hint: restore pgkeep.info from a copy of the repository")]
    Damaged { location: String, detail: String },
    #[error("cannot draw random bytes from the operating system for {what}")]
    Random { what: &'static str },
}

impl KeyError {
    /// Usage and configuration problems the operator fixes (exit 2); damage is 1.
    pub fn is_usage(&self) -> bool {
        !matches!(self, KeyError::Damaged { .. } | KeyError::Random { .. })
    }
}

/// The operator's key: 32 bytes from a file only its owner can read. Never printed.
pub struct KeyFile {
    path: PathBuf,
    key: [u8; KEY_LEN],
    owner_uid: u32,
}

impl std::fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyFile").field("path", &self.path).finish_non_exhaustive()
    }
}

impl KeyFile {
    /// Read and check a key file: a regular file, no group/other permission bits, 32 bytes.
    pub fn load(path: &Path) -> Result<KeyFile, KeyError> {
        let path = crate::fsutil::absolute(path);
        let file = path.display().to_string();
        let bad = |detail: String| KeyError::BadFile { file: file.clone(), detail };
        let meta = std::fs::metadata(&path).map_err(|e| bad(format!("cannot read it: {e}")))?;
        if !meta.is_file() {
            return Err(bad("not a regular file".into()));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(KeyError::Exposed { file, mode: meta.mode() & 0o7777 });
        }
        let mut bytes = Vec::with_capacity(KEY_LEN + 1);
        std::fs::File::open(&path)
            .and_then(|f| f.take(KEY_LEN as u64 + 1).read_to_end(&mut bytes))
            .map_err(|e| bad(format!("cannot read it: {e}")))?;
        if bytes.len() != KEY_LEN {
            let n = if bytes.len() > KEY_LEN { "more than 32".to_string() } else { bytes.len().to_string() };
            return Err(bad(format!("holds {n} bytes, a key is exactly 32 random bytes")));
        }
        let mut key = [0u8; KEY_LEN];
        key.copy_from_slice(&bytes);
        bytes.fill(0);
        Ok(KeyFile { path, key, owner_uid: meta.uid() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's owner: with no group/other bits, the only non-root user who can read it.
    pub fn owner_uid(&self) -> u32 {
        self.owner_uid
    }

    /// A public fingerprint of the key (HKDF output): tells "wrong key" from "damaged wrap".
    fn check_value(&self) -> String {
        hex::encode(derive::<16>(&self.key, b"", b"pgkeep key check v1"))
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        self.key.fill(0);
    }
}

/// The `encryption` section of `pgkeep.info`: what is needed to open the data key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EncryptionInfo {
    /// `aes-256-gcm` (docs/repo-format.md).
    pub algorithm: String,
    /// hex(nonce 12 | AES-256-GCM(data key) 32 | tag 16) under a key derived from the key file.
    pub wrapped_key: String,
    /// hex(HKDF-SHA256(key file, "pgkeep key check v1"), 16 bytes).
    pub key_check: String,
    pub wrapped_at: chrono::DateTime<chrono::Utc>,
}

fn derive<const N: usize>(ikm: &[u8], salt: &[u8], info: &[u8]) -> [u8; N] {
    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let mut out = [0u8; N];
    let infos = [info];
    // N is at most 32 here, far below HKDF-SHA256's 255 * 32 limit: neither step can fail,
    // and a silently unfilled (zero) key must never be used.
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(ikm);
    let okm = prk.expand(&infos, Len(N)).expect("HKDF-SHA256 output of at most 32 bytes");
    okm.fill(&mut out).expect("HKDF-SHA256 output of at most 32 bytes");
    out
}

fn random<const N: usize>(what: &'static str) -> Result<[u8; N], KeyError> {
    let mut b = [0u8; N];
    SystemRandom::new().fill(&mut b).map_err(|_| KeyError::Random { what })?;
    Ok(b)
}

fn aead_key(bytes: &[u8; KEY_LEN]) -> LessSafeKey {
    // A 32-byte key is always valid for AES-256-GCM.
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).expect("32-byte AES-256 key"))
}

/// What the wrap authenticates besides the data key: the repository's identity, so a
/// `pgkeep.info` edited to claim another cluster no longer opens.
fn wrap_aad(system_identifier: &str) -> Vec<u8> {
    let mut v = b"pgkeep data key v1\0".to_vec();
    v.extend_from_slice(system_identifier.as_bytes());
    v
}

/// The unwrapped per-repository data key. Never printed, never stored in clear.
#[derive(Clone)]
pub struct DataKey {
    key: [u8; KEY_LEN],
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl Drop for DataKey {
    fn drop(&mut self) {
        self.key.fill(0);
    }
}

impl DataKey {
    pub fn generate() -> Result<DataKey, KeyError> {
        Ok(DataKey { key: random("a new data key")? })
    }

    /// Wrap under `kf` for the repository of `system_identifier`.
    pub fn wrap(&self, kf: &KeyFile, system_identifier: &str) -> Result<EncryptionInfo, KeyError> {
        let kek = aead_key(&derive::<KEY_LEN>(&kf.key, b"", b"pgkeep key wrap v1"));
        let nonce: [u8; 12] = random("a key-wrap nonce")?;
        let mut buf = self.key.to_vec();
        let tag = kek
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(wrap_aad(system_identifier)),
                &mut buf,
            )
            .map_err(|_| KeyError::Random { what: "the key wrap" })?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        out.extend_from_slice(tag.as_ref());
        Ok(EncryptionInfo {
            algorithm: ALGORITHM.into(),
            wrapped_key: hex::encode(out),
            key_check: kf.check_value(),
            wrapped_at: chrono::Utc::now(),
        })
    }

    /// Unwrap the data key of a repository; a key file that is not this repository's is
    /// [`KeyError::Wrong`], anything else that fails is damage.
    pub fn unwrap(
        enc: &EncryptionInfo,
        kf: &KeyFile,
        system_identifier: &str,
        location: &str,
    ) -> Result<DataKey, KeyError> {
        let damaged = |detail: &str| KeyError::Damaged { location: location.into(), detail: detail.into() };
        if enc.algorithm != ALGORITHM {
            return Err(damaged(&format!("unknown algorithm {:?}", enc.algorithm)));
        }
        if enc.key_check != kf.check_value() {
            return Err(KeyError::Wrong { location: location.into(), file: kf.path.display().to_string() });
        }
        let raw = hex::decode(&enc.wrapped_key).map_err(|_| damaged("wrapped_key is not hex"))?;
        if raw.len() != 12 + KEY_LEN + TAG_LEN {
            return Err(damaged("wrapped_key has the wrong length"));
        }
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&raw[..12]);
        let mut buf = raw[12..].to_vec();
        let kek = aead_key(&derive::<KEY_LEN>(&kf.key, b"", b"pgkeep key wrap v1"));
        let plain = kek
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(wrap_aad(system_identifier)), &mut buf)
            .map_err(|_| damaged("authentication failed"))?;
        let mut key = [0u8; KEY_LEN];
        key.copy_from_slice(plain);
        buf.fill(0);
        Ok(DataKey { key })
    }

    /// Whether `kf` is the key this info was wrapped with (by its check value).
    pub fn is_wrapped_by(enc: &EncryptionInfo, kf: &KeyFile) -> bool {
        enc.key_check == kf.check_value()
    }

    fn object_key(&self, salt: &[u8]) -> LessSafeKey {
        aead_key(&derive::<KEY_LEN>(&self.key, salt, b"pgkeep object v1"))
    }
}

fn nonce(counter: u64, last: bool) -> Nonce {
    let mut n = [0u8; 12];
    n[3..11].copy_from_slice(&counter.to_be_bytes());
    n[11] = last as u8;
    Nonce::assume_unique_for_key(n)
}

fn aad(header: &[u8; HEADER_LEN], object: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER_LEN + object.len());
    v.extend_from_slice(header);
    v.extend_from_slice(object.as_bytes());
    v
}

/// Stored size of a sealed object holding `plain` bytes.
pub fn sealed_len(plain: u64) -> u64 {
    let chunks = plain.div_ceil(CHUNK as u64).max(1);
    HEADER_LEN as u64 + plain + chunks * TAG_LEN as u64
}

/// Streaming sealer: plaintext in, sealed envelope out to `inner`. A full chunk is held back
/// until more data arrives, because only the writer's `finish` knows which chunk is last.
pub struct SealWriter<W: Write> {
    inner: W,
    key: LessSafeKey,
    aad: Vec<u8>,
    buf: Vec<u8>,
    counter: u64,
}

impl<W: Write> SealWriter<W> {
    pub fn new(mut inner: W, dk: &DataKey, object: &str) -> io::Result<Self> {
        let salt: [u8; SALT_LEN] = random("an object salt").map_err(io::Error::other)?;
        let mut header = [0u8; HEADER_LEN];
        header[..4].copy_from_slice(MAGIC);
        header[4] = VERSION;
        header[5] = ALG_AES256GCM;
        header[6] = CHUNK_SHIFT;
        header[8..].copy_from_slice(&salt);
        inner.write_all(&header)?;
        Ok(SealWriter {
            inner,
            key: dk.object_key(&salt),
            aad: aad(&header, object),
            buf: Vec::with_capacity(SEALED_CHUNK),
            counter: 0,
        })
    }

    fn seal_chunk(&mut self, last: bool) -> io::Result<()> {
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(self.counter, last), Aad::from(&self.aad[..]), &mut self.buf)
            .map_err(|_| io::Error::other("sealing failed"))?;
        self.counter += 1;
        self.inner.write_all(&self.buf)?;
        self.inner.write_all(tag.as_ref())?;
        self.buf.clear();
        Ok(())
    }

    /// Seal the last chunk; returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.seal_chunk(true)?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for SealWriter<W> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let n = data.len();
        while !data.is_empty() {
            if self.buf.len() == CHUNK {
                self.seal_chunk(false)?;
            }
            let take = (CHUNK - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Seal an object given in parts into one buffer.
pub fn seal_parts(dk: &DataKey, object: &str, parts: &[bytes::Bytes]) -> io::Result<Vec<u8>> {
    let plain: usize = parts.iter().map(|p| p.len()).sum();
    let mut w = SealWriter::new(Vec::with_capacity(sealed_len(plain as u64) as usize), dk, object)?;
    for p in parts {
        w.write_all(p)?;
    }
    w.finish()
}

/// Why a sealed object does not open; the caller names the object.
fn auth_failed(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// Streaming opener: sealed envelope in, authenticated plaintext out. No byte of a chunk is
/// released before the chunk's tag is checked.
pub struct OpenReader<R: Read> {
    inner: R,
    key: LessSafeKey,
    aad: Vec<u8>,
    /// Sealed bytes read ahead (one chunk plus one byte, to know whether it is the last).
    sealed: Vec<u8>,
    plain: Vec<u8>,
    pos: usize,
    counter: u64,
    done: bool,
    object: String,
}

impl<R: Read> OpenReader<R> {
    pub fn new(mut inner: R, dk: &DataKey, object: &str) -> io::Result<Self> {
        let mut header = [0u8; HEADER_LEN];
        let got = read_full(&mut inner, &mut header)?;
        let fail = |d: &str| auth_failed(&format!("sealed object '{object}' {d}"));
        if got < HEADER_LEN || &header[..4] != MAGIC {
            return Err(fail("has no sealed-object header (not encrypted, or truncated)"));
        }
        if header[4] != VERSION || header[5] != ALG_AES256GCM || header[6] != CHUNK_SHIFT || header[7] != 0 {
            return Err(fail(&format!(
                "uses an unsupported envelope (version {}, algorithm {}, chunk 2^{})",
                header[4], header[5], header[6]
            )));
        }
        Ok(OpenReader {
            inner,
            key: dk.object_key(&header[8..]),
            aad: aad(&header, object),
            sealed: Vec::with_capacity(SEALED_CHUNK + 1),
            plain: Vec::new(),
            pos: 0,
            counter: 0,
            done: false,
            object: object.to_string(),
        })
    }

    fn next_chunk(&mut self) -> io::Result<()> {
        // Fill to one sealed chunk plus one byte: more bytes after a full chunk mean it is
        // not the last one.
        let want = SEALED_CHUNK + 1;
        let have = self.sealed.len();
        self.sealed.resize(want, 0);
        let got = read_full(&mut self.inner, &mut self.sealed[have..])?;
        self.sealed.truncate(have + got);
        let last = self.sealed.len() <= SEALED_CHUNK;
        let len = self.sealed.len().min(SEALED_CHUNK);
        if len < TAG_LEN {
            return Err(auth_failed(&format!("sealed object '{}' is truncated", self.object)));
        }
        // At most one byte read ahead; the buffers are swapped, not reallocated, per chunk.
        let extra = (self.sealed.len() > len).then(|| self.sealed[len]);
        self.sealed.truncate(len);
        let opened = self
            .key
            .open_in_place(nonce(self.counter, last), Aad::from(&self.aad[..]), &mut self.sealed)
            .map(|p| p.len());
        let n = opened.map_err(|_| {
            auth_failed(&format!(
                "sealed object '{}' failed authentication at chunk {} (damaged, truncated, altered, or stored under another name)",
                self.object, self.counter
            ))
        })?;
        self.sealed.truncate(n);
        std::mem::swap(&mut self.plain, &mut self.sealed);
        self.sealed.clear();
        self.sealed.extend(extra);
        self.pos = 0;
        self.counter += 1;
        self.done = last;
        Ok(())
    }
}

impl<R: Read> Read for OpenReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.plain.len() {
            if self.done {
                return Ok(0);
            }
            self.next_chunk()?;
        }
        let n = out.len().min(self.plain.len() - self.pos);
        out[..n].copy_from_slice(&self.plain[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Fill `buf` from `r` as far as it goes; fewer bytes only at the end of the stream.
pub(crate) fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Open a whole sealed object held in memory.
pub fn open_all(dk: &DataKey, object: &str, sealed: &[u8]) -> io::Result<Vec<u8>> {
    let mut r = OpenReader::new(sealed, dk, object)?;
    let mut out = Vec::with_capacity(sealed.len());
    r.read_to_end(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dk() -> DataKey {
        DataKey { key: [9u8; KEY_LEN] }
    }

    #[test]
    fn round_trip_at_chunk_boundaries() {
        for n in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 17] {
            let data: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
            let sealed = seal_parts(&dk(), "wal/x/k", &[bytes::Bytes::from(data.clone())]).unwrap();
            assert_eq!(sealed.len() as u64, sealed_len(n as u64), "size of {n}");
            assert_eq!(open_all(&dk(), "wal/x/k", &sealed).unwrap(), data, "n={n}");
        }
    }

    #[test]
    fn every_flip_truncation_and_rename_is_refused() {
        let data = vec![42u8; 2 * CHUNK + 100];
        let sealed = seal_parts(&dk(), "a", &[bytes::Bytes::from(data)]).unwrap();
        // Every byte of the header and a sample of the chunks.
        for i in (0..sealed.len()).filter(|i| *i < 64 || i % 997 == 0 || *i >= sealed.len() - 20) {
            let mut s = sealed.clone();
            s[i] ^= 1;
            assert!(open_all(&dk(), "a", &s).is_err(), "flip at {i}");
        }
        for cut in [0, HEADER_LEN, HEADER_LEN + SEALED_CHUNK, 2 * SEALED_CHUNK + HEADER_LEN, sealed.len() - 1] {
            assert!(open_all(&dk(), "a", &sealed[..cut]).is_err(), "cut at {cut}");
        }
        assert!(open_all(&dk(), "b", &sealed).is_err(), "object moved to another key");
        assert!(open_all(&DataKey { key: [8u8; KEY_LEN] }, "a", &sealed).is_err(), "other data key");
    }

    #[test]
    fn exact_multiple_of_chunk_has_a_last_flag() {
        let data = vec![1u8; 2 * CHUNK];
        let sealed = seal_parts(&dk(), "a", &[bytes::Bytes::from(data)]).unwrap();
        // Dropping the last full chunk must not leave a valid object.
        assert!(open_all(&dk(), "a", &sealed[..HEADER_LEN + SEALED_CHUNK]).is_err());
    }

    #[test]
    fn wrap_unwrap_and_wrong_key() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, b: &[u8], mode: u32| {
            use std::os::unix::fs::PermissionsExt;
            let p = dir.path().join(name);
            std::fs::write(&p, b).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            p
        };
        let a = KeyFile::load(&write("a", &[1u8; 32], 0o600)).unwrap();
        let b = KeyFile::load(&write("b", &[2u8; 32], 0o400)).unwrap();
        assert!(matches!(KeyFile::load(&write("c", &[3u8; 32], 0o644)), Err(KeyError::Exposed { .. })));
        assert!(matches!(KeyFile::load(&write("d", &[3u8; 33], 0o600)), Err(KeyError::BadFile { .. })));
        assert!(matches!(KeyFile::load(&write("e", &[3u8; 31], 0o600)), Err(KeyError::BadFile { .. })));
        let d = DataKey::generate().unwrap();
        let enc = d.wrap(&a, "42").unwrap();
        assert!(!enc.wrapped_key.contains(&hex::encode(d.key)));
        let back = DataKey::unwrap(&enc, &a, "42", "r").unwrap();
        assert_eq!(back.key, d.key);
        assert!(matches!(DataKey::unwrap(&enc, &b, "42", "r"), Err(KeyError::Wrong { .. })));
        assert!(matches!(DataKey::unwrap(&enc, &a, "43", "r"), Err(KeyError::Damaged { .. })));
        assert!(!format!("{a:?}{back:?}").contains("1, 1"), "debug output shows no key bytes");
    }
}
