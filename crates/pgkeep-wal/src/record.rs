//! The WAL record format: the fixed header, its CRC, and the block-reference and data
//! headers that follow it. // access/xlogrecord.h, backend/access/transam/xlogreader.c

use std::ops::Range;

use crate::bytes::{u32_at, u64_at, u8_at, Cursor};
use crate::lsn::{Lsn, Oid, TransactionId};
use crate::version::{PgVersion, BKPIMAGE_HAS_HOLE};

/// `SizeOfXLogRecord`: the fixed header, up to and including `xl_crc`. // access/xlogrecord.h
pub const SIZE_OF_XLOG_RECORD: usize = 24;
/// Offset of `xl_crc`; the CRC covers the header bytes before it. // access/xlogrecord.h
pub const XL_CRC_OFFSET: usize = 20;
/// Largest record a reader accepts (`MaxAllocSize`, the limit of PostgreSQL's own reader).
/// // utils/memutils.h
pub const MAX_RECORD_LENGTH: u32 = 0x3fff_ffff;

/// Low bits of `xl_info` used by the WAL machinery; the high bits belong to the rmgr.
/// // access/xlogrecord.h
pub const XLR_INFO_MASK: u8 = 0x0F;
pub const XLR_RMGR_INFO_MASK: u8 = 0xF0;
/// // access/xlogrecord.h
pub const XLR_SPECIAL_REL_UPDATE: u8 = 0x01;
/// // access/xlogrecord.h
pub const XLR_CHECK_CONSISTENCY: u8 = 0x02;

/// Highest block reference id. // access/xlogrecord.h
pub const XLR_MAX_BLOCK_ID: u8 = 32;
/// Main data follows, length in one byte. // access/xlogrecord.h
pub const XLR_BLOCK_ID_DATA_SHORT: u8 = 255;
/// Main data follows, length in four bytes. // access/xlogrecord.h
pub const XLR_BLOCK_ID_DATA_LONG: u8 = 254;
/// Replication origin id follows. // access/xlogrecord.h
pub const XLR_BLOCK_ID_ORIGIN: u8 = 253;
/// Top-level transaction id follows (14+). // access/xlogrecord.h
pub const XLR_BLOCK_ID_TOPLEVEL_XID: u8 = 252;

/// Fork number bits of `fork_flags`. // access/xlogrecord.h
pub const BKPBLOCK_FORK_MASK: u8 = 0x0F;
/// // access/xlogrecord.h
pub const BKPBLOCK_HAS_IMAGE: u8 = 0x10;
/// // access/xlogrecord.h
pub const BKPBLOCK_HAS_DATA: u8 = 0x20;
/// // access/xlogrecord.h
pub const BKPBLOCK_WILL_INIT: u8 = 0x40;
/// The relation is the previous block's; its RelFileNode is omitted. // access/xlogrecord.h
pub const BKPBLOCK_SAME_REL: u8 = 0x80;

/// Data page size the block images are checked against (the default build).
/// // pg_config.h BLCKSZ
pub const BLCKSZ: u32 = 8192;

/// Fixed header of every record. // access/xlogrecord.h
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct XLogRecord {
    /// Length of the whole record, header included.
    pub xl_tot_len: u32,
    pub xl_xid: TransactionId,
    /// Start of the previous record.
    pub xl_prev: Lsn,
    pub xl_info: u8,
    pub xl_rmid: u8,
    pub xl_crc: u32,
}

impl XLogRecord {
    /// Reads the header from the first 24 bytes.
    pub fn parse(b: &[u8]) -> Option<XLogRecord> {
        Some(XLogRecord {
            xl_tot_len: u32_at(b, 0)?,
            xl_xid: u32_at(b, 4)?,
            xl_prev: Lsn(u64_at(b, 8)?),
            xl_info: u8_at(b, 16)?,
            xl_rmid: u8_at(b, 17)?,
            xl_crc: u32_at(b, 20)?,
        })
    }

    /// The rmgr's bits of `xl_info` (`XLogRecGetInfo(r) & ~XLR_INFO_MASK`).
    pub fn rmgr_info(&self) -> u8 {
        self.xl_info & XLR_RMGR_INFO_MASK
    }
}

/// CRC-32C of a whole record as PostgreSQL computes it: the bytes after the header first,
/// then the header up to (not including) `xl_crc`. `None` when `record` is shorter than a
/// header. // backend/access/transam/xlogreader.c ValidXLogRecord
pub fn record_crc(record: &[u8]) -> Option<u32> {
    let head = record.get(..XL_CRC_OFFSET)?;
    let body = record.get(SIZE_OF_XLOG_RECORD..)?;
    Some(crc32c::crc32c_append(crc32c::crc32c(body), head))
}

/// `RelFileNode` (16+: `RelFileLocator`, same layout). // storage/relfilenode.h
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[allow(non_snake_case)]
pub struct RelFileNode {
    pub spcNode: Oid,
    pub dbNode: Oid,
    pub relNode: Oid,
}

/// One block reference of a record, as `DecodeXLogRecord` fills `DecodedBkpBlock`.
/// Ranges index the record's bytes (header included). // access/xlogreader.h
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct DecodedBkpBlock {
    pub block_id: u8,
    pub rnode: RelFileNode,
    pub forknum: u8,
    pub blkno: u32,
    /// `fork_flags` as written.
    pub flags: u8,
    pub has_image: bool,
    pub apply_image: bool,
    pub bimg_info: u8,
    pub bimg_len: u16,
    pub hole_offset: u16,
    pub hole_length: u16,
    pub has_data: bool,
    pub data_len: u16,
    pub bkp_image: Range<usize>,
    pub data: Range<usize>,
}

/// Where the parts of a decoded record lie (ranges into the record's bytes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordLayout {
    pub main_data: Range<usize>,
    pub record_origin: Option<u16>,
    pub toplevel_xid: Option<TransactionId>,
    /// Sum of `bimg_len` over the block images (pg_waldump reports `tot_len - fpi_len` as
    /// the record's own length).
    pub fpi_len: u32,
}

/// What is wrong inside a record whose header and CRC may well be fine. Mirrors the checks
/// of `DecodeXLogRecord`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("block and data headers end past the record's {tot_len} bytes")]
    ShortHeaders { tot_len: u32 },
    #[error("headers and data add up to {sum} bytes but the record is {tot_len} bytes")]
    LengthMismatch { sum: u64, tot_len: u32 },
    #[error("invalid block_id {0}")]
    InvalidBlockId(u8),
    #[error("out-of-order block_id {id} after {previous}")]
    OutOfOrderBlockId { id: u8, previous: u8 },
    #[error("block {0}: BKPBLOCK_HAS_DATA set but no data included")]
    HasDataWithoutData(u8),
    #[error("block {block}: BKPBLOCK_HAS_DATA not set but data length is {len}")]
    DataWithoutHasData { block: u8, len: u16 },
    #[error("block {block}: image header inconsistent (info {bimg_info:02X}, hole offset {hole_offset}, hole length {hole_length}, image length {bimg_len})")]
    BadImage { block: u8, bimg_info: u8, hole_offset: u16, hole_length: u16, bimg_len: u16 },
    #[error("block {0}: BKPBLOCK_SAME_REL set but no previous relation")]
    SameRelWithoutPrevious(u8),
}

/// Parsed block headers before the data pointers are known.
#[derive(Default)]
struct Headers {
    main_data_len: u32,
    datatotal: u64,
    origin: Option<u16>,
    toplevel_xid: Option<TransactionId>,
}

enum Parsed {
    Complete {
        headers: Headers,
        header_end: usize,
    },
    /// The bytes given end inside the headers (a record cut at a segment end).
    Incomplete,
}

/// Walks the block and data headers. `rec` is either the whole record or, when `partial`,
/// a prefix of a record of `tot_len` bytes.
fn parse_headers(
    rec: &[u8],
    tot_len: u32,
    version: &PgVersion,
    partial: bool,
    mut on_block: impl FnMut(DecodedBkpBlock),
) -> Result<Parsed, RecordError> {
    let short = RecordError::ShortHeaders { tot_len };
    let limit = (tot_len as usize).min(rec.len());
    let mut c = Cursor::new(rec.get(SIZE_OF_XLOG_RECORD..limit).unwrap_or(&[]));
    let remaining_total = (tot_len as usize).saturating_sub(SIZE_OF_XLOG_RECORD) as u64;
    let mut h = Headers::default();
    let mut max_block_id: Option<u8> = None;
    let mut have_rel = false;
    let mut last_rel = RelFileNode::default();
    // Reading stops when the headers consumed so far plus the data they announce fill
    // the record, exactly as PostgreSQL's loop does.
    macro_rules! need {
        ($e:expr) => {
            match $e {
                Some(v) => v,
                None if partial && rec.len() < tot_len as usize => return Ok(Parsed::Incomplete),
                None => return Err(short),
            }
        };
    }
    while remaining_total - c.pos() as u64 > h.datatotal {
        let block_id = need!(c.u8());
        match block_id {
            XLR_BLOCK_ID_DATA_SHORT => {
                h.main_data_len = need!(c.u8()) as u32;
                h.datatotal += h.main_data_len as u64;
                break;
            }
            XLR_BLOCK_ID_DATA_LONG => {
                h.main_data_len = need!(c.u32());
                h.datatotal += h.main_data_len as u64;
                break;
            }
            XLR_BLOCK_ID_ORIGIN => h.origin = Some(need!(c.u16())),
            XLR_BLOCK_ID_TOPLEVEL_XID if version.has_toplevel_xid_block => h.toplevel_xid = Some(need!(c.u32())),
            id if id <= XLR_MAX_BLOCK_ID => {
                if let Some(previous) = max_block_id {
                    if id <= previous {
                        return Err(RecordError::OutOfOrderBlockId { id, previous });
                    }
                }
                max_block_id = Some(id);
                let fork_flags = need!(c.u8());
                let data_len = need!(c.u16());
                let has_image = fork_flags & BKPBLOCK_HAS_IMAGE != 0;
                let has_data = fork_flags & BKPBLOCK_HAS_DATA != 0;
                if has_data && data_len == 0 {
                    return Err(RecordError::HasDataWithoutData(id));
                }
                if !has_data && data_len != 0 {
                    return Err(RecordError::DataWithoutHasData { block: id, len: data_len });
                }
                h.datatotal += data_len as u64;
                let mut blk = DecodedBkpBlock {
                    block_id: id,
                    rnode: RelFileNode::default(),
                    forknum: fork_flags & BKPBLOCK_FORK_MASK,
                    blkno: 0,
                    flags: fork_flags,
                    has_image,
                    apply_image: false,
                    bimg_info: 0,
                    bimg_len: 0,
                    hole_offset: 0,
                    hole_length: 0,
                    has_data,
                    data_len,
                    bkp_image: 0..0,
                    data: 0..0,
                };
                if has_image {
                    blk.bimg_len = need!(c.u16());
                    blk.hole_offset = need!(c.u16());
                    blk.bimg_info = need!(c.u8());
                    blk.apply_image = blk.bimg_info & version.bkpimage_apply != 0;
                    let has_hole = blk.bimg_info & BKPIMAGE_HAS_HOLE != 0;
                    let compressed = blk.bimg_info & version.bkpimage_compressed_mask != 0;
                    if compressed {
                        if has_hole {
                            blk.hole_length = need!(c.u16());
                        }
                    } else {
                        blk.hole_length = (BLCKSZ as u16).wrapping_sub(blk.bimg_len);
                    }
                    h.datatotal += blk.bimg_len as u64;
                    let bad = (has_hole
                        && (blk.hole_offset == 0 || blk.hole_length == 0 || blk.bimg_len as u32 == BLCKSZ))
                        || (!has_hole && (blk.hole_offset != 0 || blk.hole_length != 0))
                        || (compressed && blk.bimg_len as u32 == BLCKSZ)
                        || (!has_hole && !compressed && blk.bimg_len as u32 != BLCKSZ)
                        || blk.bimg_len as u32 > BLCKSZ;
                    if bad {
                        return Err(RecordError::BadImage {
                            block: id,
                            bimg_info: blk.bimg_info,
                            hole_offset: blk.hole_offset,
                            hole_length: blk.hole_length,
                            bimg_len: blk.bimg_len,
                        });
                    }
                }
                if fork_flags & BKPBLOCK_SAME_REL == 0 {
                    last_rel = RelFileNode { spcNode: need!(c.u32()), dbNode: need!(c.u32()), relNode: need!(c.u32()) };
                    have_rel = true;
                } else if !have_rel {
                    return Err(RecordError::SameRelWithoutPrevious(id));
                }
                blk.rnode = last_rel;
                blk.blkno = need!(c.u32());
                on_block(blk);
            }
            other => return Err(RecordError::InvalidBlockId(other)),
        }
    }
    let consumed = c.pos() as u64;
    if consumed + h.datatotal != remaining_total {
        return Err(RecordError::LengthMismatch { sum: SIZE_OF_XLOG_RECORD as u64 + consumed + h.datatotal, tot_len });
    }
    Ok(Parsed::Complete { headers: h, header_end: SIZE_OF_XLOG_RECORD + c.pos() })
}

/// Decodes the block references and locates the main data of a complete record (`rec` is
/// exactly `xl_tot_len` bytes). `blocks` is cleared and filled, so a caller scanning many
/// records reuses one allocation. // backend/access/transam/xlogreader.c DecodeXLogRecord
pub fn decode_body(
    rec: &[u8],
    version: &PgVersion,
    blocks: &mut Vec<DecodedBkpBlock>,
) -> Result<RecordLayout, RecordError> {
    blocks.clear();
    let stated = XLogRecord::parse(rec).ok_or(RecordError::ShortHeaders { tot_len: rec.len() as u32 })?.xl_tot_len;
    if stated as usize != rec.len() {
        return Err(RecordError::LengthMismatch { sum: rec.len() as u64, tot_len: stated });
    }
    let tot_len = u32::try_from(rec.len()).map_err(|_| RecordError::ShortHeaders { tot_len: u32::MAX })?;
    let (h, header_end) = match parse_headers(rec, tot_len, version, false, |b| blocks.push(b))? {
        Parsed::Complete { headers, header_end } => (headers, header_end),
        Parsed::Incomplete => return Err(RecordError::ShortHeaders { tot_len }),
    };
    let mut pos = header_end;
    let mut fpi_len = 0u32;
    for b in blocks.iter_mut() {
        if b.has_image {
            b.bkp_image = pos..pos + b.bimg_len as usize;
            pos += b.bimg_len as usize;
            fpi_len += b.bimg_len as u32;
        }
        if b.has_data {
            b.data = pos..pos + b.data_len as usize;
            pos += b.data_len as usize;
        }
    }
    let main_data = pos..pos + h.main_data_len as usize;
    debug_assert_eq!(main_data.end, rec.len());
    Ok(RecordLayout { main_data, record_origin: h.origin, toplevel_xid: h.toplevel_xid, fpi_len })
}

/// Checks the headers of a record of which only the first bytes are at hand (it continues
/// into a segment not given): when all its block and data headers are present they must add
/// up to `tot_len`. Returns `Ok(false)` when the prefix ends inside the headers, so nothing
/// could be concluded.
pub fn check_record_prefix(prefix: &[u8], tot_len: u32, version: &PgVersion) -> Result<bool, RecordError> {
    match parse_headers(prefix, tot_len, version, true, |_| {})? {
        Parsed::Complete { .. } => Ok(true),
        Parsed::Incomplete => Ok(false),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::version::by_major;

    /// Builds a record with the given body (bytes after the fixed header), CRC included.
    pub(crate) fn make_record(rmid: u8, info: u8, xid: u32, prev: u64, body: &[u8]) -> Vec<u8> {
        let tot = (SIZE_OF_XLOG_RECORD + body.len()) as u32;
        let mut r = Vec::with_capacity(tot as usize);
        r.extend_from_slice(&tot.to_le_bytes());
        r.extend_from_slice(&xid.to_le_bytes());
        r.extend_from_slice(&prev.to_le_bytes());
        r.push(info);
        r.push(rmid);
        r.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        r.extend_from_slice(body);
        let crc = record_crc(&r).unwrap();
        r[20..24].copy_from_slice(&crc.to_le_bytes());
        r
    }

    fn v15() -> &'static PgVersion {
        by_major(15).unwrap()
    }

    #[test]
    fn main_data_only() {
        let r = make_record(0, 0x40, 0, 0, &[]);
        assert_eq!(r.len(), 24);
        let mut blocks = Vec::new();
        let l = decode_body(&r, v15(), &mut blocks).unwrap();
        assert_eq!(l.main_data, 24..24);
        let r = make_record(1, 0, 7, 0, &[XLR_BLOCK_ID_DATA_SHORT, 3, 9, 9, 9]);
        let l = decode_body(&r, v15(), &mut blocks).unwrap();
        assert_eq!(&r[l.main_data], &[9, 9, 9]);
        assert_eq!(XLogRecord::parse(&r).unwrap().xl_xid, 7);
    }

    #[test]
    fn block_with_image_and_data() {
        let mut body = vec![0u8, BKPBLOCK_HAS_IMAGE | BKPBLOCK_HAS_DATA, 2, 0];
        body.extend_from_slice(&100u16.to_le_bytes()); // bimg_len
        body.extend_from_slice(&40u16.to_le_bytes()); // hole_offset
        body.push(BKPIMAGE_HAS_HOLE | 0x02); // has hole, apply (15)
        body.extend_from_slice(&1663u32.to_le_bytes());
        body.extend_from_slice(&5u32.to_le_bytes());
        body.extend_from_slice(&16384u32.to_le_bytes());
        body.extend_from_slice(&7u32.to_le_bytes());
        body.extend_from_slice(&[XLR_BLOCK_ID_DATA_SHORT, 1]);
        body.extend(std::iter::repeat_n(0xAA, 100));
        body.extend_from_slice(&[1, 2]);
        body.push(0x55);
        let r = make_record(10, 0, 9, 0, &body);
        let mut blocks = Vec::new();
        let l = decode_body(&r, v15(), &mut blocks).unwrap();
        assert_eq!(blocks.len(), 1);
        let b = &blocks[0];
        assert_eq!((b.rnode.relNode, b.blkno, b.hole_length), (16384, 7, 8092));
        assert!(b.apply_image);
        assert_eq!(&r[b.data.clone()], &[1, 2]);
        assert!(r[b.bkp_image.clone()].iter().all(|&x| x == 0xAA));
        assert_eq!(&r[l.main_data], &[0x55]);
        assert_eq!(l.fpi_len, 100);
        // The prefix check accepts the headers and rejects a wrong total.
        assert_eq!(check_record_prefix(&r[..60], r.len() as u32, v15()), Ok(true));
        assert_eq!(check_record_prefix(&r[..30], r.len() as u32, v15()), Ok(false));
        assert!(check_record_prefix(&r[..60], r.len() as u32 + 8, v15()).is_err());
    }

    #[test]
    fn inconsistent_headers_are_reported() {
        let mut blocks = Vec::new();
        // data length announced but flag missing
        let r = make_record(10, 0, 0, 0, &[0, 0, 1, 0]);
        assert!(matches!(decode_body(&r, v15(), &mut blocks), Err(RecordError::DataWithoutHasData { .. })));
        // same rel on the first block
        let r = make_record(10, 0, 0, 0, &[0, BKPBLOCK_SAME_REL, 0, 0, 1, 0, 0, 0]);
        assert_eq!(decode_body(&r, v15(), &mut blocks), Err(RecordError::SameRelWithoutPrevious(0)));
        // invalid id
        let r = make_record(10, 0, 0, 0, &[200]);
        assert_eq!(decode_body(&r, v15(), &mut blocks), Err(RecordError::InvalidBlockId(200)));
        // main data longer than the record
        let r = make_record(10, 0, 0, 0, &[XLR_BLOCK_ID_DATA_SHORT, 5, 1]);
        assert!(matches!(decode_body(&r, v15(), &mut blocks), Err(RecordError::LengthMismatch { .. })));
        // toplevel xid block does not exist in 13
        let r = make_record(10, 0, 0, 0, &[XLR_BLOCK_ID_TOPLEVEL_XID, 1, 0, 0, 0]);
        assert!(decode_body(&r, v15(), &mut blocks).is_ok());
        assert_eq!(
            decode_body(&r, by_major(13).unwrap(), &mut blocks),
            Err(RecordError::InvalidBlockId(XLR_BLOCK_ID_TOPLEVEL_XID))
        );
    }

    #[test]
    fn crc_covers_body_then_header() {
        let r = make_record(0, 0x40, 0, 0x1234, &[XLR_BLOCK_ID_DATA_SHORT, 1, 7]);
        let stored = XLogRecord::parse(&r).unwrap().xl_crc;
        assert_eq!(record_crc(&r), Some(stored));
        let mut manual = crc32c::crc32c(&r[24..]);
        manual = crc32c::crc32c_append(manual, &r[..20]);
        assert_eq!(manual, stored);
        let mut bad = r.clone();
        bad[25] ^= 1;
        assert_ne!(record_crc(&bad), Some(stored));
        assert_eq!(record_crc(&r[..10]), None);
    }
}
