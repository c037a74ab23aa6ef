//! The block-level work of a delta restore: hashing a file on disk, and rewriting only the
//! 8 KiB blocks of a file that differ from the backup's content.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::repo::seal::read_full;

/// PostgreSQL's block size: the unit compared and rewritten.
const BLOCK: usize = 8192;
/// Bytes compared per read of the backup's content and of the file on disk.
const CHUNK: usize = 128 * BLOCK;
/// BLAKE3 of a file, hex.
pub(super) fn hash_file(p: &Path) -> io::Result<String> {
    let mut h = blake3::Hasher::new();
    h.update_reader(File::open(p)?)?;
    Ok(h.finalize().to_hex().to_string())
}

pub(super) struct Written {
    pub bytes: u64,
    pub old_len: u64,
    pub resized: bool,
}

/// Make `file` hold exactly `content` (`size` bytes), writing only the 8 KiB blocks that
/// differ (runs of them in one write), then cutting or extending it to `size`. The content
/// is read to its end, so its checksums are verified before this returns Ok.
pub(super) fn rewrite_differing_blocks<R: Read>(content: &mut R, file: &File, size: u64) -> io::Result<Written> {
    let old_len = file.metadata()?.len();
    let mut new = vec![0u8; CHUNK];
    let mut old = vec![0u8; CHUNK];
    let mut pos = 0u64;
    let mut bytes = 0u64;
    loop {
        let got = read_full(content, &mut new)?;
        if got == 0 {
            break;
        }
        if pos + got as u64 > size {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "content is longer than the manifest records"));
        }
        let have = read_full(&mut Positioned { file, pos }, &mut old[..got])?;
        let same = |i: usize, end: usize| end <= have && new[i..end] == old[i..end];
        let mut i = 0;
        while i < got {
            let end = (i + BLOCK).min(got);
            if same(i, end) {
                i = end;
                continue;
            }
            let start = i;
            i = end;
            while i < got && !same(i, (i + BLOCK).min(got)) {
                i = (i + BLOCK).min(got);
            }
            file.write_all_at(&new[start..i], pos + start as u64)?;
            bytes += (i - start) as u64;
        }
        pos += got as u64;
    }
    if pos != size {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("content has {pos} bytes, the manifest records {size}"),
        ));
    }
    if old_len > size {
        file.set_len(size)?;
    }
    Ok(Written { bytes, old_len, resized: old_len != size })
}

/// Reads `file` from `pos` on without moving a shared cursor.
struct Positioned<'f> {
    file: &'f File,
    pos: u64,
}

impl Read for Positioned<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{self, OpenOptions};

    fn rewrite(old: &[u8], new: &[u8]) -> (Vec<u8>, Written) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        fs::write(&p, old).unwrap();
        let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        let w = rewrite_differing_blocks(&mut &new[..], &f, new.len() as u64).unwrap();
        drop(f);
        (fs::read(&p).unwrap(), w)
    }

    #[test]
    fn only_differing_blocks_are_written() {
        let old: Vec<u8> = (0..40 * BLOCK).map(|i| (i / BLOCK) as u8).collect();
        let mut new = old.clone();
        new[3 * BLOCK + 5] ^= 1;
        new[4 * BLOCK] ^= 1;
        new[39 * BLOCK + 100] ^= 1;
        let (got, w) = rewrite(&old, &new);
        assert_eq!(got, new);
        assert_eq!(w.bytes, 3 * BLOCK as u64);
        assert!(!w.resized);
        let (got, w) = rewrite(&old, &old);
        assert_eq!((got, w.bytes), (old.clone(), 0));
    }

    #[test]
    fn files_are_cut_and_extended_to_the_backup_size() {
        let old = vec![7u8; 3 * BLOCK + 10];
        let (got, w) = rewrite(&old, &old[..BLOCK + 3]);
        assert_eq!(got, &old[..BLOCK + 3]);
        assert_eq!((w.bytes, w.resized), (0, true));
        let mut longer = old.clone();
        longer.extend_from_slice(&[9u8; 2 * BLOCK]);
        let (got, w) = rewrite(&old, &longer);
        assert_eq!(got, longer);
        assert!(w.resized);
        // The partial last block differs (it was short) plus the two new blocks' bytes.
        assert_eq!(w.bytes, (longer.len() - 3 * BLOCK) as u64);
    }
}
