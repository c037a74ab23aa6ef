//! The repository's objects as every command sees them: plaintext in, plaintext out, over any
//! [`Storage`] backend. In an encrypted repository each object is sealed here, above the
//! storage contract, so encryption applies to every backend alike and no backend sees a
//! plaintext byte; in a plain repository every call passes straight through.

use std::io::{self, Read, Write};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use super::seal::{self, DataKey};
use super::storage::{Features, ObjectInfo, ObjectWriter as RawWriter, PutOutcome, Storage, StorageError};

#[derive(Clone)]
pub struct Objects {
    raw: Storage,
    key: Option<Arc<DataKey>>,
}

impl Objects {
    pub fn new(raw: Storage, key: Option<DataKey>) -> Objects {
        Objects { raw, key: key.map(Arc::new) }
    }

    /// The backend underneath (unsealed bytes): for `pgkeep.info`, which must be readable
    /// before the key is known.
    pub fn raw(&self) -> &Storage {
        &self.raw
    }

    pub fn is_sealed(&self) -> bool {
        self.key.is_some()
    }

    fn sealed_err(&self, key: &str, e: io::Error) -> StorageError {
        StorageError::Sealed { location: self.raw.location().to_string(), key: key.to_string(), detail: e.to_string() }
    }

    fn seal(&self, key: &str, parts: Vec<Bytes>) -> Result<Vec<Bytes>, StorageError> {
        match &self.key {
            None => Ok(parts),
            Some(dk) => {
                seal::seal_parts(dk, key, &parts).map(|v| vec![Bytes::from(v)]).map_err(|e| self.sealed_err(key, e))
            }
        }
    }

    fn open(&self, key: &str, stored: Bytes) -> Result<Bytes, StorageError> {
        match &self.key {
            None => Ok(stored),
            Some(dk) => seal::open_all(dk, key, &stored).map(Bytes::from).map_err(|e| self.sealed_err(key, e)),
        }
    }

    pub fn put(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        self.put_parts(key, vec![data])
    }

    pub fn put_parts(&self, key: &str, parts: Vec<Bytes>) -> Result<(), StorageError> {
        let parts = self.seal(key, parts)?;
        self.raw.put_parts(key, parts)
    }

    pub fn put_new(&self, key: &str, data: Bytes) -> Result<PutOutcome, StorageError> {
        self.put_new_parts(key, vec![data])
    }

    pub fn put_new_parts(&self, key: &str, parts: Vec<Bytes>) -> Result<PutOutcome, StorageError> {
        let parts = self.seal(key, parts)?;
        self.raw.put_new_parts(key, parts)
    }

    pub fn get(&self, key: &str) -> Result<Bytes, StorageError> {
        let stored = self.raw.get(key)?;
        self.open(key, stored)
    }

    /// `get` that may return a mapping of a local object ([`Storage::get_mapped`]); a sealed
    /// object is opened into memory as by `get`.
    pub fn get_mapped(&self, key: &str) -> Result<Bytes, StorageError> {
        let stored = self.raw.get_mapped(key)?;
        self.open(key, stored)
    }

    /// A byte range of the plaintext. Sealed objects are opened from their start (the chunks
    /// before the range are authenticated and dropped): no caller reads ranges of large
    /// sealed objects today.
    pub fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StorageError> {
        if self.key.is_none() {
            return self.raw.get_range(key, range);
        }
        let mut r = self.open_reader(key, Some(range.clone()))?;
        let mut out = Vec::with_capacity((range.end - range.start) as usize);
        r.read_to_end(&mut out).map_err(|e| self.sealed_err(key, e))?;
        Ok(Bytes::from(out))
    }

    /// A streaming reader over the plaintext of `key` (or a range of it).
    pub fn open_reader(&self, key: &str, range: Option<Range<u64>>) -> Result<Box<dyn Read + Send>, StorageError> {
        let Some(dk) = &self.key else { return self.raw.open_reader(key, range) };
        let inner = self.raw.open_reader(key, None)?;
        let mut r = seal::OpenReader::new(inner, dk, key).map_err(|e| self.sealed_err(key, e))?;
        let Some(range) = range else { return Ok(Box::new(r)) };
        io::copy(&mut (&mut r).take(range.start), &mut io::sink()).map_err(|e| self.sealed_err(key, e))?;
        Ok(Box::new(r.take(range.end.saturating_sub(range.start))))
    }

    /// A streaming writer; the object exists only after [`ObjectWriter::finish`].
    pub fn create_writer(&self, key: &str) -> Result<ObjectWriter, StorageError> {
        let raw = self.raw.create_writer(key)?;
        let sink = match &self.key {
            None => Sink::Plain(raw),
            Some(dk) => Sink::Sealed(seal::SealWriter::new(raw, dk, key).map_err(|e| self.sealed_err(key, e))?),
        };
        Ok(ObjectWriter { sink, key: key.to_string(), written: 0, location: self.raw.location().to_string() })
    }

    // Metadata operations see stored objects as they are (sizes are stored sizes).

    pub fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StorageError> {
        self.raw.head(key)
    }
    pub fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        self.raw.list(prefix)
    }
    pub fn list_dirs(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        self.raw.list_dirs(prefix)
    }
    pub fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.raw.delete(key)
    }
    pub fn delete_durable(&self, key: &str) -> Result<(), StorageError> {
        self.raw.delete_durable(key)
    }
    pub fn delete_prefix(&self, prefix: &str) -> Result<(), StorageError> {
        self.raw.delete_prefix(prefix)
    }
    pub fn sync_object(&self, key: &str) -> Result<(), StorageError> {
        self.raw.sync_object(key)
    }
    pub fn remove_stale_staging(&self, key: &str) -> Result<usize, StorageError> {
        self.raw.remove_stale_staging(key)
    }
    pub fn remove_stale_staging_under(&self, prefix: &str) -> Result<usize, StorageError> {
        self.raw.remove_stale_staging_under(prefix)
    }
    pub fn writer_threads_limit(&self) -> Option<usize> {
        self.raw.writer_threads_limit()
    }
    pub fn features(&self) -> Features {
        self.raw.features()
    }
    pub fn local_root(&self) -> Option<&Path> {
        self.raw.local_root()
    }
    pub fn location(&self) -> &str {
        self.raw.location()
    }
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        self.raw.runtime()
    }
}

// One writer per object being stored: the sealer's size (an expanded AES key schedule) does
// not matter, and boxing it would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Sink {
    Plain(RawWriter),
    Sealed(seal::SealWriter<RawWriter>),
}

/// Streaming writer over plaintext; offsets ([`ObjectWriter::written`]) are plaintext offsets,
/// which is what manifests record for frames inside bundles.
pub struct ObjectWriter {
    sink: Sink,
    key: String,
    written: u64,
    location: String,
}

impl ObjectWriter {
    /// Plaintext bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// Complete the object durably; returns its stored size.
    pub fn finish(self) -> Result<u64, StorageError> {
        let raw = match self.sink {
            Sink::Plain(w) => w,
            Sink::Sealed(s) => s.finish().map_err(|e| StorageError::Io {
                location: self.location.clone(),
                op: "write",
                key: self.key.clone(),
                detail: e.to_string(),
                hint: "check the repository's storage".into(),
            })?,
        };
        raw.finish()
    }
}

impl Write for ObjectWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = match &mut self.sink {
            Sink::Plain(w) => w.write(data)?,
            Sink::Sealed(s) => s.write(data)?,
        };
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Whether a storage error says a sealed object did not authenticate (damage, not absence).
pub fn is_damaged(e: &StorageError) -> bool {
    matches!(e, StorageError::Sealed { .. })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::storage::RepoLocation;

    #[test]
    fn sealed_objects_round_trip_through_every_call_and_store_no_plaintext() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let raw = Storage::open(&RepoLocation::Local(dir.path().to_path_buf()), rt.handle().clone(), false).unwrap();
        let o = Objects::new(raw, Some(DataKey::generate().unwrap()));
        let text = b"plaintext that must not be stored as is".repeat(5000);
        o.put("a/one", Bytes::from(text.clone())).unwrap();
        assert_eq!(o.get("a/one").unwrap(), text);
        assert_eq!(
            o.put_new_parts("a/two", vec![Bytes::from_static(b"x"), Bytes::from(text.clone())]).unwrap(),
            PutOutcome::Created
        );
        assert_eq!(o.put_new("a/two", Bytes::from_static(b"y")).unwrap(), PutOutcome::AlreadyExists);
        let mut w = o.create_writer("a/three").unwrap();
        w.write_all(&text).unwrap();
        assert_eq!(w.written(), text.len() as u64, "plaintext offsets");
        let stored = w.finish().unwrap();
        assert_eq!(stored, seal::sealed_len(text.len() as u64));
        let mut r = o.open_reader("a/three", Some(70_000..70_100)).unwrap();
        let mut part = Vec::new();
        r.read_to_end(&mut part).unwrap();
        assert_eq!(part, &text[70_000..70_100]);
        assert_eq!(o.get_range("a/three", 5..9).unwrap(), &text[5..9]);
        for k in ["a/one", "a/two", "a/three"] {
            let b = std::fs::read(dir.path().join(k)).unwrap();
            assert!(b.starts_with(b"PGKS"));
            assert!(!b.windows(9).any(|w| w == b"plaintext"), "{k} holds plaintext");
        }
        // An object moved to another key does not open, and says which one it is.
        std::fs::copy(dir.path().join("a/one"), dir.path().join("a/four")).unwrap();
        let e = o.get("a/four").unwrap_err();
        assert!(is_damaged(&e) && e.to_string().contains("'a/four' failed authentication"), "{e}");
    }
}
