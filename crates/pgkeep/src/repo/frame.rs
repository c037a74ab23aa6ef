//! Object framing: every object in a repository is `header | payload | trailer`.
//!
//! ```text
//! header  16 bytes  "PGKF" | version u8 (1) | compression u8 (0 none, 1 zstd, 2 zstd frames)
//!                   | encryption u8 (0)
//!                   | reserved u8 | reserved u64
//! payload           the (compressed) content
//! trailer 60 bytes  plain_size u64 LE | payload_size u64 LE | blake3(plain) [32]
//!                   | crc32c(header and payload) u32 LE | crc32c(previous 52 bytes) u32 LE | "PGKT"
//! ```
//! The BLAKE3-256 hash proves the content (cryptographic, and twice as fast as SHA-256 here, which
//! matters when every byte of a backup is hashed); the CRC over the stored bytes also catches
//! damage that happens not to change the decoded content (e.g. in the compressed stream's own
//! header). The trailer comes last so objects can be written in one streaming pass. The hash of
//! the plain content is checked on every read (invariant 4); it is also what manifests record,
//! so a restored file can be re-checked with `b3sum`. Frames may be concatenated (bundles); a
//! frame is then located by offset and length from the manifest.
//! The format is versioned in docs/repo-format.md.

use std::io::{self, Read, Write};

pub const HEADER_LEN: usize = 16;
pub const TRAILER_LEN: usize = 60;
pub const FRAME_OVERHEAD: u64 = (HEADER_LEN + TRAILER_LEN) as u64;
const MAGIC: &[u8; 4] = b"PGKF";
const TRAILER_MAGIC: &[u8; 4] = b"PGKT";
const VERSION: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Zstd(i32),
}

impl Compression {
    fn code(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Zstd(_) => 1,
        }
    }
}

/// What a finished frame holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameSummary {
    pub plain_size: u64,
    pub framed_size: u64,
    pub blake3: [u8; 32],
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error(
        "{what} is damaged: {detail}; hint: the stored copy cannot be trusted, use another backup or archive copy"
    )]
    Damaged { what: String, detail: String },
    #[error("{what}: read failed: {source}")]
    Io { what: String, source: io::Error },
}

impl FrameError {
    fn damaged(what: &str, detail: impl Into<String>) -> Self {
        FrameError::Damaged { what: what.to_string(), detail: detail.into() }
    }
}

fn header(c: Compression) -> [u8; HEADER_LEN] {
    header_with_code(c.code())
}

/// Compression code 2: zstd frames one after another, compressed independently (in parallel).
const ZSTD_FRAMES: u8 = 2;

fn header_with_code(code: u8) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(MAGIC);
    h[4] = VERSION;
    h[5] = code;
    h
}

fn trailer(plain: u64, payload: u64, digest: &[u8; 32], stored_crc: u32) -> [u8; TRAILER_LEN] {
    let mut t = [0u8; TRAILER_LEN];
    t[0..8].copy_from_slice(&plain.to_le_bytes());
    t[8..16].copy_from_slice(&payload.to_le_bytes());
    t[16..48].copy_from_slice(digest);
    t[48..52].copy_from_slice(&stored_crc.to_le_bytes());
    let crc = crc32c::crc32c(&t[..52]);
    t[52..56].copy_from_slice(&crc.to_le_bytes());
    t[56..60].copy_from_slice(TRAILER_MAGIC);
    t
}

/// The decoded trailer of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    pub plain_size: u64,
    pub payload_size: u64,
    pub blake3: [u8; 32],
    /// CRC-32C of the frame's header and payload as stored.
    pub stored_crc: u32,
}

pub fn parse_trailer(t: &[u8], what: &str) -> Result<Trailer, FrameError> {
    if t.len() != TRAILER_LEN {
        return Err(FrameError::damaged(what, "truncated (no trailer)"));
    }
    if &t[56..60] != TRAILER_MAGIC {
        return Err(FrameError::damaged(what, "truncated or overwritten (trailer magic missing)"));
    }
    let crc = u32::from_le_bytes([t[52], t[53], t[54], t[55]]);
    if crc32c::crc32c(&t[..52]) != crc {
        return Err(FrameError::damaged(what, "trailer checksum mismatch"));
    }
    let mut digest = [0u8; 32];
    digest.copy_from_slice(&t[16..48]);
    Ok(Trailer {
        plain_size: u64::from_le_bytes(t[0..8].try_into().expect("8 bytes")),
        payload_size: u64::from_le_bytes(t[8..16].try_into().expect("8 bytes")),
        blake3: digest,
        stored_crc: u32::from_le_bytes([t[48], t[49], t[50], t[51]]),
    })
}

fn parse_header(h: &[u8], what: &str) -> Result<u8, FrameError> {
    if h.len() < HEADER_LEN || &h[..4] != MAGIC {
        return Err(FrameError::damaged(what, "not a pgkeep object (header magic missing)"));
    }
    if h[4] != VERSION {
        return Err(FrameError::damaged(
            what,
            format!("object format version {} is not supported by this pgkeep", h[4]),
        ));
    }
    if h[6] != 0 {
        return Err(FrameError::damaged(what, "object is encrypted; this pgkeep cannot decrypt it"));
    }
    if h[7..HEADER_LEN].iter().any(|&b| b != 0) {
        return Err(FrameError::damaged(what, "reserved header bytes are not zero"));
    }
    match h[5] {
        0 | 1 | ZSTD_FRAMES => Ok(h[5]),
        c => Err(FrameError::damaged(what, format!("unknown compression code {c}"))),
    }
}

/// Counts and CRCs the bytes passing to the inner writer.
struct Counting<W> {
    inner: W,
    count: u64,
    crc: u32,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(b)?;
        self.count += n as u64;
        self.crc = crc32c::crc32c_append(self.crc, &b[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

enum Sink<W: Write> {
    Raw(Counting<W>),
    Zstd(zstd::stream::write::Encoder<'static, Counting<W>>),
}

/// Streaming frame writer: write plain bytes, `finish` appends the trailer.
pub struct FrameWriter<W: Write> {
    sink: Sink<W>,
    hasher: blake3::Hasher,
    plain: u64,
}

impl<W: Write> FrameWriter<W> {
    pub fn new(mut inner: W, compression: Compression) -> io::Result<Self> {
        let h = header(compression);
        inner.write_all(&h)?;
        let counting = Counting { inner, count: 0, crc: crc32c::crc32c(&h) };
        let sink = match compression {
            Compression::None => Sink::Raw(counting),
            Compression::Zstd(level) => {
                let mut enc = zstd::stream::write::Encoder::new(counting, level)?;
                enc.include_checksum(false)?;
                Sink::Zstd(enc)
            }
        };
        Ok(FrameWriter { sink, hasher: blake3::Hasher::new(), plain: 0 })
    }

    pub fn finish(self) -> io::Result<(W, FrameSummary)> {
        let counting = match self.sink {
            Sink::Raw(c) => c,
            Sink::Zstd(enc) => enc.finish()?,
        };
        let digest: [u8; 32] = self.hasher.finalize().into();
        let Counting { mut inner, count, crc } = counting;
        inner.write_all(&trailer(self.plain, count, &digest, crc))?;
        Ok((inner, FrameSummary { plain_size: self.plain, framed_size: count + FRAME_OVERHEAD, blake3: digest }))
    }
}

impl<W: Write> Write for FrameWriter<W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let n = match &mut self.sink {
            Sink::Raw(c) => c.write(b)?,
            Sink::Zstd(e) => e.write(b)?,
        };
        self.hasher.update(&b[..n]);
        self.plain += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A frame in parts (header, the payload's pieces, trailer), so a large object can be stored
/// without concatenating it.
pub struct Encoded {
    pub header: [u8; HEADER_LEN],
    pub payload: Vec<Vec<u8>>,
    pub trailer: [u8; TRAILER_LEN],
    pub summary: FrameSummary,
}

impl Encoded {
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.summary.framed_size as usize);
        out.extend_from_slice(&self.header);
        for piece in &self.payload {
            out.extend_from_slice(piece);
        }
        out.extend_from_slice(&self.trailer);
        out
    }

    pub fn into_parts(self) -> Vec<bytes::Bytes> {
        let mut parts = vec![bytes::Bytes::copy_from_slice(&self.header)];
        parts.extend(self.payload.into_iter().map(bytes::Bytes::from));
        parts.push(bytes::Bytes::copy_from_slice(&self.trailer));
        parts
    }
}

/// From this size on, `encode` hashes on a second thread and compresses in pieces.
const PARALLEL_MIN: usize = 1024 * 1024;

/// At most this many pieces (and compressing threads) for one object.
const MAX_PIECES: usize = 8;

/// Frame an object held in memory (WAL segments, JSON). A large object is cut into one piece
/// per core (at least two), each compressed into its own zstd frame on its own thread, while
/// the BLAKE3 is computed on another: archive_command latency bounds how fast a busy server
/// can archive. Independent frames rather than zstd's own workers: those copy the input into
/// a buffer of their own and allocate per job, which cost a fifth of a push's CPU here.
pub fn encode_parts(plain: &[u8], compression: Compression) -> Encoded {
    let parallel = plain.len() >= PARALLEL_MIN;
    let hash = || -> [u8; 32] { blake3::hash(plain).into() };
    let compress = || -> Option<Vec<Vec<u8>>> {
        let Compression::Zstd(level) = compression else { return None };
        if !parallel {
            return Some(vec![zstd::bulk::compress(plain, level).ok()?]);
        }
        let pieces = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, MAX_PIECES);
        let piece_len = plain.len().div_ceil(pieces);
        // The first piece on this thread, the others on their own.
        let (first, rest) = plain.split_at(piece_len);
        std::thread::scope(|s| {
            let workers: Vec<_> =
                rest.chunks(piece_len).map(|piece| s.spawn(move || zstd::bulk::compress(piece, level).ok())).collect();
            let first = zstd::bulk::compress(first, level).ok();
            std::iter::once(first).chain(workers.into_iter().map(|w| w.join().ok().flatten())).collect()
        })
    };
    let (digest, compressed) = if parallel {
        std::thread::scope(|s| {
            let hasher = s.spawn(hash);
            let c = compress();
            (hasher.join().unwrap_or_else(|_| hash()), c)
        })
    } else {
        (hash(), compress())
    };
    // zstd only fails on allocation or parameter errors; store uncompressed rather than fail.
    let (header, payload) = match compressed {
        Some(pieces) if pieces.len() > 1 => (header_with_code(ZSTD_FRAMES), pieces),
        Some(pieces) => (header(compression), pieces),
        None => (header(Compression::None), vec![plain.to_vec()]),
    };
    let crc = payload.iter().fold(crc32c::crc32c(&header), |crc, piece| crc32c::crc32c_append(crc, piece));
    let payload_len: u64 = payload.iter().map(|p| p.len() as u64).sum();
    let trailer = trailer(plain.len() as u64, payload_len, &digest, crc);
    let summary =
        FrameSummary { plain_size: plain.len() as u64, framed_size: payload_len + FRAME_OVERHEAD, blake3: digest };
    Encoded { header, payload, trailer, summary }
}

/// Frame an object held in memory into one buffer.
pub fn encode(plain: &[u8], compression: Compression) -> (Vec<u8>, FrameSummary) {
    let e = encode_parts(plain, compression);
    (e.to_vec(), e.summary)
}

/// Decode and verify a whole frame held in memory.
pub fn decode(framed: &[u8], what: &str) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::new();
    let limit = trailer_of(framed, what)?.plain_size;
    let summary = copy_checked(framed, framed.len() as u64, &mut out, what, true, Some(limit))?;
    debug_assert_eq!(summary.plain_size as usize, out.len());
    Ok(out)
}

/// Read just the trailer of an in-memory frame (no payload check).
pub fn trailer_of(framed: &[u8], what: &str) -> Result<Trailer, FrameError> {
    if framed.len() < FRAME_OVERHEAD as usize {
        return Err(FrameError::damaged(what, "truncated"));
    }
    parse_header(framed, what)?;
    let t = parse_trailer(&framed[framed.len() - TRAILER_LEN..], what)?;
    // The trailer's CRC only proves it is as written, not that its sizes are sane.
    if t.payload_size.checked_add(FRAME_OVERHEAD) != Some(framed.len() as u64) {
        return Err(FrameError::damaged(what, "length does not match its trailer (truncated?)"));
    }
    Ok(t)
}

/// Hashes and counts what the decoder produces before handing it on.
struct Verify<'a, W: Write> {
    out: &'a mut W,
    hasher: Option<blake3::Hasher>,
    n: u64,
    limit: u64,
}

impl<W: Write> Write for Verify<'_, W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        if self.n.saturating_add(b.len() as u64) > self.limit {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "decodes to more bytes than its trailer records"));
        }
        let n = self.out.write(b)?;
        if let Some(h) = &mut self.hasher {
            h.update(&b[..n]);
        }
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Stream-decode a frame of `framed_len` bytes from `r` into `out`, verifying size and BLAKE3.
/// `what` names the object (and the file it holds) in errors.
pub fn copy<R: Read, W: Write>(r: R, framed_len: u64, out: &mut W, what: &str) -> Result<FrameSummary, FrameError> {
    copy_checked(r, framed_len, out, what, true, None)
}

/// Decode a whole in-memory frame checking sizes and CRCs but not the BLAKE3: for reads whose
/// content is about to be checked by other means (a previous WAL segment that is re-validated
/// record by record), where hashing 16 MiB would only add latency.
pub fn decode_crc_only(framed: &[u8], what: &str) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::with_capacity(frame_plain_size_hint(framed));
    let limit = trailer_of(framed, what)?.plain_size;
    copy_checked(framed, framed.len() as u64, &mut out, what, false, Some(limit))?;
    Ok(out)
}

fn frame_plain_size_hint(framed: &[u8]) -> usize {
    if framed.len() < TRAILER_LEN {
        return 0;
    }
    let t = &framed[framed.len() - TRAILER_LEN..];
    (u64::from_le_bytes(t[0..8].try_into().expect("8 bytes")) as usize).min(1 << 30)
}

fn copy_checked<R: Read, W: Write>(
    mut r: R,
    framed_len: u64,
    out: &mut W,
    what: &str,
    verify_hash: bool,
    // In-memory decodes stop at the size the (CRC-checked) trailer records, so a forged
    // payload cannot make a reader allocate without bound.
    limit: Option<u64>,
) -> Result<FrameSummary, FrameError> {
    let (compression, payload_len, mut crc_reader) = open_payload(&mut r, framed_len, what)?;
    let mut payload = (&mut crc_reader).take(payload_len);
    let mut v = Verify { out, hasher: verify_hash.then(blake3::Hasher::new), n: 0, limit: limit.unwrap_or(u64::MAX) };
    match compression {
        0 => {
            io::copy(&mut payload, &mut v).map_err(|e| io_or_damaged(e, what))?;
        }
        _ => {
            let mut dec = zstd_decoder(io::BufReader::with_capacity(128 * 1024, &mut payload), compression, what)?;
            io::copy(&mut dec, &mut v).map_err(|e| io_or_damaged(e, what))?;
            // Bytes after the zstd frame end inside the payload mean a damaged object.
            let mut rest = dec.finish();
            let mut extra = [0u8; 1];
            if rest.read(&mut extra).map_err(|e| FrameError::Io { what: what.into(), source: e })? != 0 {
                return Err(FrameError::damaged(what, "payload has trailing bytes after its compressed stream"));
            }
        }
    }
    if payload.limit() != 0 {
        return Err(FrameError::damaged(what, "truncated payload"));
    }
    let stored_crc = crc_reader.crc;
    let plain_n = v.n;
    let digest: Option<[u8; 32]> = v.hasher.map(|h| h.finalize().into());
    let t = check_trailer(&mut r, payload_len, plain_n, stored_crc, digest, what)?;
    Ok(FrameSummary { plain_size: plain_n, framed_size: framed_len, blake3: digest.unwrap_or(t.blake3) })
}

/// A decoder of a zstd payload: one frame (code 1), or frames one after another to the end of
/// the payload (code 2). Either way, bytes that do not decode are damage.
fn zstd_decoder<R: io::BufRead>(
    r: R,
    code: u8,
    what: &str,
) -> Result<zstd::stream::read::Decoder<'static, R>, FrameError> {
    let dec = zstd::stream::read::Decoder::with_buffer(r).map_err(|e| io_or_damaged(e, what))?;
    Ok(if code == ZSTD_FRAMES { dec } else { dec.single_frame() })
}

/// Reads a frame's header: its compression code, payload length, and a reader of the rest
/// that CRCs what passes through (starting from the header's CRC).
fn open_payload<R: Read>(mut r: R, framed_len: u64, what: &str) -> Result<(u8, u64, CrcReader<R>), FrameError> {
    if framed_len < FRAME_OVERHEAD {
        return Err(FrameError::damaged(what, format!("truncated ({framed_len} bytes)")));
    }
    let mut h = [0u8; HEADER_LEN];
    read_exact(&mut r, &mut h, what)?;
    let compression = parse_header(&h, what)?;
    Ok((compression, framed_len - FRAME_OVERHEAD, CrcReader { inner: r, crc: crc32c::crc32c(&h) }))
}

/// Reads the trailer after a payload and checks it against what was decoded.
fn check_trailer<R: Read>(
    r: &mut R,
    payload_len: u64,
    plain_n: u64,
    stored_crc: u32,
    digest: Option<[u8; 32]>,
    what: &str,
) -> Result<Trailer, FrameError> {
    let mut t = [0u8; TRAILER_LEN];
    read_exact(r, &mut t, what)?;
    let t = parse_trailer(&t, what)?;
    if t.payload_size != payload_len {
        return Err(FrameError::damaged(what, "payload length does not match its trailer"));
    }
    if t.plain_size != plain_n {
        return Err(FrameError::damaged(
            what,
            format!("size mismatch: {} bytes decoded, {} recorded", plain_n, t.plain_size),
        ));
    }
    if t.stored_crc != stored_crc {
        return Err(FrameError::damaged(what, "stored bytes do not match their CRC"));
    }
    if digest.is_some_and(|digest| t.blake3 != digest) {
        return Err(FrameError::damaged(
            what,
            "checksum mismatch (BLAKE3 of the content differs from the one recorded)",
        ));
    }
    Ok(t)
}

struct CrcReader<R> {
    inner: R,
    crc: u32,
}

impl<R: Read> Read for CrcReader<R> {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(b)?;
        self.crc = crc32c::crc32c_append(self.crc, &b[..n]);
        Ok(n)
    }
}

/// Pull-style decoding of one frame of `framed_len` bytes: `Read` yields the plain content,
/// and the read that reaches its end checks the sizes, CRC and BLAKE3 and fails instead of
/// returning 0 when any differs, so whoever reads a `FrameReader` to the end has checked
/// every byte it got (several frames can then be merged block by block, as a chain restore
/// does).
pub struct FrameReader<R: Read> {
    what: String,
    body: Option<Body<R>>,
    payload_len: u64,
    /// None: the caller hashes what it reads (e.g. on another core) and compares with the
    /// trailer's BLAKE3 itself; sizes and CRC are still checked here.
    hasher: Option<blake3::Hasher>,
    n: u64,
    summary: Option<FrameSummary>,
}

enum Body<R: Read> {
    Plain(io::Take<CrcReader<R>>),
    Zstd(Box<zstd::stream::read::Decoder<'static, io::BufReader<io::Take<CrcReader<R>>>>>),
}

impl<R: Read> FrameReader<R> {
    pub fn new(r: R, framed_len: u64, what: &str) -> Result<FrameReader<R>, FrameError> {
        Self::open(r, framed_len, what, Some(blake3::Hasher::new()))
    }

    /// A reader that checks sizes and CRC but leaves the BLAKE3 to its caller: the summary
    /// then carries the trailer's hash, which the caller must compare with its own.
    pub fn unhashed(r: R, framed_len: u64, what: &str) -> Result<FrameReader<R>, FrameError> {
        Self::open(r, framed_len, what, None)
    }

    fn open(r: R, framed_len: u64, what: &str, hasher: Option<blake3::Hasher>) -> Result<FrameReader<R>, FrameError> {
        let (compression, payload_len, crc_reader) = open_payload(r, framed_len, what)?;
        let payload = crc_reader.take(payload_len);
        let body = match compression {
            0 => Body::Plain(payload),
            _ => Body::Zstd(Box::new(zstd_decoder(
                io::BufReader::with_capacity(128 * 1024, payload),
                compression,
                what,
            )?)),
        };
        Ok(FrameReader { what: what.to_string(), body: Some(body), payload_len, hasher, n: 0, summary: None })
    }

    /// Sizes and hash of the frame, once it was read to its end.
    pub fn summary(&self) -> Option<FrameSummary> {
        self.summary
    }

    fn finish(&mut self, body: Body<R>) -> Result<FrameSummary, FrameError> {
        let what = self.what.as_str();
        let payload = match body {
            Body::Plain(p) => p,
            Body::Zstd(dec) => {
                let mut rest = dec.finish();
                let mut extra = [0u8; 1];
                if rest.read(&mut extra).map_err(|e| FrameError::Io { what: what.into(), source: e })? != 0 {
                    return Err(FrameError::damaged(what, "payload has trailing bytes after its compressed stream"));
                }
                rest.into_inner()
            }
        };
        if payload.limit() != 0 {
            return Err(FrameError::damaged(what, "truncated payload"));
        }
        let mut crc_reader = payload.into_inner();
        let digest: Option<[u8; 32]> = self.hasher.take().map(|h| h.finalize().into());
        let t = check_trailer(&mut crc_reader.inner, self.payload_len, self.n, crc_reader.crc, digest, what)?;
        Ok(FrameSummary {
            plain_size: self.n,
            framed_size: self.payload_len + FRAME_OVERHEAD,
            blake3: digest.unwrap_or(t.blake3),
        })
    }
}

impl<R: Read> Read for FrameReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || self.summary.is_some() {
            return Ok(0);
        }
        let damaged = |e: FrameError| io::Error::new(io::ErrorKind::InvalidData, e.to_string());
        let Some(body) = self.body.as_mut() else {
            return Err(damaged(FrameError::damaged(&self.what, "read after a failed check")));
        };
        let n = match body {
            Body::Plain(p) => p.read(buf),
            Body::Zstd(d) => d.read(buf),
        }
        .map_err(|e| damaged(io_or_damaged(e, &self.what)))?;
        if n > 0 {
            if let Some(h) = &mut self.hasher {
                h.update(&buf[..n]);
            }
            self.n += n as u64;
            return Ok(n);
        }
        let body = self.body.take().expect("checked above");
        self.summary = Some(self.finish(body).map_err(damaged)?);
        Ok(0)
    }
}

fn read_exact<R: Read>(r: &mut R, buf: &mut [u8], what: &str) -> Result<(), FrameError> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            FrameError::damaged(what, "truncated")
        } else {
            FrameError::Io { what: what.to_string(), source: e }
        }
    })
}

/// zstd reports corrupt input as InvalidData/Other io errors; treat those as damage, not I/O.
fn io_or_damaged(e: io::Error, what: &str) -> FrameError {
    match e.kind() {
        io::ErrorKind::InvalidData | io::ErrorKind::Other | io::ErrorKind::UnexpectedEof => {
            FrameError::damaged(what, format!("cannot decompress: {e}"))
        }
        _ => FrameError::Io { what: what.to_string(), source: e },
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn frame_reader_yields_the_content_and_checks_it_at_the_end() {
        let plain: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        for c in [Compression::None, Compression::Zstd(1)] {
            let (framed, summary) = encode(&plain, c);
            let mut r = FrameReader::new(&framed[..], framed.len() as u64, "t").unwrap();
            let mut out = Vec::new();
            r.read_to_end(&mut out).unwrap();
            assert_eq!(out, plain);
            assert_eq!(r.summary(), Some(summary));
            // A flipped payload byte fails the read that reaches the end (or the decode).
            let mut bad = framed.clone();
            bad[HEADER_LEN + 40] ^= 1;
            let res = FrameReader::new(&bad[..], bad.len() as u64, "t")
                .and_then(|mut r| r.read_to_end(&mut Vec::new()).map_err(|e| FrameError::damaged("t", e.to_string())));
            assert!(res.is_err(), "{c:?}");
        }
    }

    use super::*;

    #[test]
    fn an_unhashed_reader_checks_sizes_and_crc_and_leaves_the_blake3_to_its_caller() {
        let plain: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
        for c in [Compression::None, Compression::Zstd(1)] {
            let (framed, summary) = encode(&plain, c);
            let mut r = FrameReader::unhashed(&framed[..], framed.len() as u64, "t").unwrap();
            let mut out = Vec::new();
            r.read_to_end(&mut out).unwrap();
            assert_eq!(out, plain);
            assert_eq!(r.summary().map(|s| s.blake3), Some(summary.blake3), "the trailer's hash");
            let mut bad = framed.clone();
            bad[HEADER_LEN + 40] ^= 1;
            let mut r = FrameReader::unhashed(&bad[..], bad.len() as u64, "t").unwrap();
            assert!(r.read_to_end(&mut Vec::new()).is_err(), "a flipped stored byte fails the CRC ({c:?})");
            // A trailer recording another hash (its own CRC made to match) passes here: the
            // caller compares the hash of what it read with `summary().blake3`.
            let mut forged = framed.clone();
            let t = forged.len() - TRAILER_LEN;
            forged[t + 16] ^= 1;
            let crc = crc32c::crc32c(&forged[t..t + 52]);
            forged[t + 52..t + 56].copy_from_slice(&crc.to_le_bytes());
            let mut r = FrameReader::unhashed(&forged[..], forged.len() as u64, "t").unwrap();
            r.read_to_end(&mut Vec::new()).unwrap();
            assert_ne!(r.summary().unwrap().blake3, *blake3::hash(&plain).as_bytes());
        }
    }

    #[test]
    fn round_trip_both_compressions() {
        let data: Vec<u8> = (0..200_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        for c in [Compression::None, Compression::Zstd(1)] {
            let (f, s) = encode(&data, c);
            assert_eq!(s.framed_size as usize, f.len());
            assert_eq!(decode(&f, "t").unwrap(), data);
            assert_eq!(trailer_of(&f, "t").unwrap().blake3, s.blake3);
        }
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let data = b"hello pgkeep, every stored object carries a checksum".repeat(50);
        for c in [Compression::None, Compression::Zstd(3)] {
            let (f, _) = encode(&data, c);
            for i in 0..f.len() {
                let mut g = f.clone();
                g[i] ^= 0x20;
                assert!(decode(&g, "obj").is_err(), "flip at {i} of {} ({c:?}) went unnoticed", f.len());
            }
        }
    }

    #[test]
    fn reader_yields_the_content_and_finds_every_flipped_byte_at_its_end() {
        let data = b"pulled block by block by delta restore".repeat(300);
        for c in [Compression::None, Compression::Zstd(3)] {
            let (f, _) = encode(&data, c);
            let mut out = Vec::new();
            FrameReader::new(&f[..], f.len() as u64, "obj").unwrap().read_to_end(&mut out).unwrap();
            assert_eq!(out, data);
            for i in (0..f.len()).step_by(7) {
                let mut g = f.clone();
                g[i] ^= 0x20;
                let res = FrameReader::new(&g[..], g.len() as u64, "obj").and_then(|mut r| {
                    r.read_to_end(&mut Vec::new()).map_err(|e| FrameError::Io { what: "obj".into(), source: e })
                });
                assert!(res.is_err(), "flip at {i} of {} ({c:?}) went unnoticed", f.len());
            }
        }
    }

    #[test]
    fn a_large_object_is_compressed_in_pieces_and_every_reader_checks_all_of_them() {
        // 3 MiB of varied, compressible bytes: more than one piece whatever the core count.
        let data: Vec<u8> = (0..3u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 27) as u8).collect();
        let e = encode_parts(&data, Compression::Zstd(1));
        assert!(e.payload.len() >= 2, "{} pieces", e.payload.len());
        assert_eq!(e.header[5], ZSTD_FRAMES);
        let f = e.to_vec();
        assert!(f.len() < data.len(), "compressed");
        assert_eq!(decode(&f, "obj").unwrap(), data);
        let mut out = Vec::new();
        FrameReader::new(&f[..], f.len() as u64, "obj").unwrap().read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
        // A byte flipped in each piece, and the pieces cut apart: all damage.
        let mut at = HEADER_LEN;
        for piece in &e.payload {
            let mut g = f.clone();
            g[at + piece.len() / 2] ^= 0x01;
            assert!(decode(&g, "obj").is_err(), "flip in the piece at {at}");
            at += piece.len();
        }
        let first = e.payload[0].len();
        let mut cut = f[..HEADER_LEN + first].to_vec();
        cut.extend_from_slice(&f[f.len() - TRAILER_LEN..]);
        assert!(decode(&cut, "obj").is_err(), "the first piece alone");
    }

    #[test]
    fn a_payload_larger_than_its_trailer_says_stops_at_the_recorded_size() {
        let (mut f, _) = encode(&vec![0u8; 64 << 20], Compression::Zstd(1));
        // Forge the trailer: 10 bytes recorded, its own CRC recomputed so it reads as written.
        let t = f.len() - TRAILER_LEN;
        f[t..t + 8].copy_from_slice(&10u64.to_le_bytes());
        let crc = crc32c::crc32c(&f[t..t + 52]);
        f[t + 52..t + 56].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(trailer_of(&f, "t").unwrap().plain_size, 10);
        for err in [decode(&f, "obj").unwrap_err(), decode_crc_only(&f, "obj").unwrap_err()] {
            assert!(err.to_string().contains("more bytes than its trailer records"), "{err}");
        }
    }

    #[test]
    fn truncation_is_detected() {
        let (f, _) = encode(&[7u8; 5000], Compression::Zstd(1));
        for cut in [0, 1, 15, 16, 30, f.len() - 56, f.len() - 1] {
            assert!(decode(&f[..cut], "obj").is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn concatenated_frames_decode_by_offset() {
        let (a, sa) = encode(b"first", Compression::Zstd(1));
        let (b, sb) = encode(b"second file", Compression::Zstd(1));
        let mut bundle = a.clone();
        bundle.extend_from_slice(&b);
        let mut out = Vec::new();
        copy(&bundle[a.len()..], sb.framed_size, &mut out, "b").unwrap();
        assert_eq!(out, b"second file");
        out.clear();
        copy(&bundle[..], sa.framed_size, &mut out, "a").unwrap();
        assert_eq!(out, b"first");
    }
}

#[cfg(test)]
#[path = "frame_fuzz.rs"]
mod fuzz;
