//! Everything that differs between PostgreSQL majors, in one table.
//!
//! A WAL page announces its format through `xlp_magic` (`XLOG_PAGE_MAGIC`, bumped whenever
//! the WAL format changes) and pg_control through `pg_control_version`. Values here were
//! checked against each release's `access/xlog_internal.h`, `access/xlogrecord.h` and
//! `catalog/pg_control.h` (REL_13_STABLE … REL_18_STABLE), and against real clusters of 14–18
//! (the e2e `majors` tests and the per-major fixtures in testdata/). An unknown magic or
//! control version is reported as such, never parsed by guesswork.

/// Layout of `ControlFileData` / `CheckPoint`, keyed by `PG_CONTROL_VERSION`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlLayout {
    /// PG_CONTROL_VERSION 1300 (PostgreSQL 13–16). // catalog/pg_control.h
    V1300,
    /// PG_CONTROL_VERSION 1700 (PostgreSQL 17): `CheckPoint` gains `wal_level`, placed in
    /// what was padding after `fullPageWrites`, so no other offset moves.
    /// // catalog/pg_control.h
    V1700,
    /// PG_CONTROL_VERSION 1800 (PostgreSQL 18): `ControlFileData` gains
    /// `bool default_char_signedness` after `data_checksum_version`, moving the nonce to 257
    /// and the CRC to 292; `CheckPoint` is 17's. // catalog/pg_control.h (REL_18_STABLE)
    V1800,
}

impl ControlLayout {
    pub const fn pg_control_version(self) -> u32 {
        match self {
            ControlLayout::V1300 => 1300,
            ControlLayout::V1700 => 1700,
            ControlLayout::V1800 => 1800,
        }
    }

    /// `CheckPoint` carries `wal_level` (17+). // catalog/pg_control.h (REL_17_STABLE)
    pub const fn checkpoint_has_wal_level(self) -> bool {
        !matches!(self, ControlLayout::V1300)
    }

    /// `ControlFileData` carries `default_char_signedness` (18+). // catalog/pg_control.h
    pub const fn has_default_char_signedness(self) -> bool {
        matches!(self, ControlLayout::V1800)
    }

    pub fn from_pg_control_version(v: u32) -> Option<ControlLayout> {
        match v {
            1300 => Some(ControlLayout::V1300),
            1700 => Some(ControlLayout::V1700),
            1800 => Some(ControlLayout::V1800),
            _ => None,
        }
    }
}

/// Facts about one PostgreSQL major's on-disk formats.
#[derive(Debug, PartialEq, Eq)]
pub struct PgVersion {
    pub major: u32,
    /// `XLOG_PAGE_MAGIC`. // access/xlog_internal.h
    pub xlog_page_magic: u16,
    pub control_layout: ControlLayout,
    /// `CATALOG_VERSION_NO` of the release, used only to name the major of a pg_control
    /// file when several majors share a control version (13–16). `None` where the control
    /// version alone identifies the major. // catalog/catversion.h
    pub catalog_version_no: Option<u32>,
    /// `XLP_ALL_FLAGS`: every defined `xlp_info` bit. // access/xlog_internal.h
    pub xlp_all_flags: u16,
    /// `XLP_FIRST_IS_OVERWRITE_CONTRECORD`. 13–18 still carry `XLP_BKP_REMOVABLE` at 0x0004,
    /// so the overwrite flag is 0x0008 there. // access/xlog_internal.h
    pub xlp_first_is_overwrite_contrecord: u16,
    /// `BKPIMAGE_APPLY` in `bimg_info`. // access/xlogrecord.h
    pub bkpimage_apply: u8,
    /// Every `bimg_info` bit meaning "the image is compressed" (`BKPIMAGE_IS_COMPRESSED`
    /// before 15, `BKPIMAGE_COMPRESS_PGLZ|LZ4|ZSTD` since). // access/xlogrecord.h
    pub bkpimage_compressed_mask: u8,
    /// All defined `bimg_info` bits.
    pub bkpimage_all_flags: u8,
    /// `XLR_BLOCK_ID_TOPLEVEL_XID` exists (14+). // access/xlogrecord.h
    pub has_toplevel_xid_block: bool,
    /// Custom resource managers (ids 128–255) can be registered (15+). // access/rmgr.h
    pub has_custom_rmgrs: bool,
    /// `sizeof(CheckPoint)`, the main data of a checkpoint record. // catalog/pg_control.h
    pub sizeof_checkpoint: usize,
    /// `sizeof(xl_xact_stats_item)` (dropped statistics in commit/abort records, 15+): 12,
    /// then 16 in 18, whose `objid` is 64 bits (`objid_lo`, `objid_hi`). // access/xact.h
    pub sizeof_xact_stats_item: usize,
}

/// `BKPIMAGE_HAS_HOLE`, the same bit in every supported major. // access/xlogrecord.h
pub const BKPIMAGE_HAS_HOLE: u8 = 0x01;

const V13_14_BIMG_COMPRESSED: u8 = 0x02; // BKPIMAGE_IS_COMPRESSED, access/xlogrecord.h (13, 14)
const V13_14_BIMG_APPLY: u8 = 0x04; // BKPIMAGE_APPLY, access/xlogrecord.h (13, 14)
const V15_BIMG_APPLY: u8 = 0x02; // BKPIMAGE_APPLY, access/xlogrecord.h (15+)
const V15_BIMG_COMPRESSED: u8 = 0x04 | 0x08 | 0x10; // BKPIMAGE_COMPRESS_PGLZ|LZ4|ZSTD (15+)

/// The majors this crate understands, oldest first.
pub static KNOWN_VERSIONS: [PgVersion; 6] = [
    PgVersion {
        major: 13,
        xlog_page_magic: 0xD106, // access/xlog_internal.h (REL_13_STABLE)
        control_layout: ControlLayout::V1300,
        catalog_version_no: Some(202007201), // catalog/catversion.h (REL_13_STABLE)
        xlp_all_flags: 0x000F,
        xlp_first_is_overwrite_contrecord: 0x0008,
        bkpimage_apply: V13_14_BIMG_APPLY,
        bkpimage_compressed_mask: V13_14_BIMG_COMPRESSED,
        bkpimage_all_flags: BKPIMAGE_HAS_HOLE | V13_14_BIMG_COMPRESSED | V13_14_BIMG_APPLY,
        has_toplevel_xid_block: false,
        has_custom_rmgrs: false,
        sizeof_checkpoint: 88,
        sizeof_xact_stats_item: 12,
    },
    PgVersion {
        major: 14,
        xlog_page_magic: 0xD10D, // access/xlog_internal.h (REL_14_STABLE)
        control_layout: ControlLayout::V1300,
        catalog_version_no: Some(202107181), // catalog/catversion.h (REL_14_STABLE)
        xlp_all_flags: 0x000F,
        xlp_first_is_overwrite_contrecord: 0x0008,
        bkpimage_apply: V13_14_BIMG_APPLY,
        bkpimage_compressed_mask: V13_14_BIMG_COMPRESSED,
        bkpimage_all_flags: BKPIMAGE_HAS_HOLE | V13_14_BIMG_COMPRESSED | V13_14_BIMG_APPLY,
        has_toplevel_xid_block: true,
        has_custom_rmgrs: false,
        sizeof_checkpoint: 88,
        sizeof_xact_stats_item: 12,
    },
    PgVersion {
        major: 15,
        xlog_page_magic: 0xD110, // access/xlog_internal.h (REL_15_STABLE)
        control_layout: ControlLayout::V1300,
        catalog_version_no: Some(202209061), // catalog/catversion.h (REL_15_STABLE)
        xlp_all_flags: 0x000F,
        xlp_first_is_overwrite_contrecord: 0x0008,
        bkpimage_apply: V15_BIMG_APPLY,
        bkpimage_compressed_mask: V15_BIMG_COMPRESSED,
        bkpimage_all_flags: BKPIMAGE_HAS_HOLE | V15_BIMG_APPLY | V15_BIMG_COMPRESSED,
        has_toplevel_xid_block: true,
        has_custom_rmgrs: true,
        sizeof_checkpoint: 88,
        sizeof_xact_stats_item: 12,
    },
    PgVersion {
        major: 16,
        xlog_page_magic: 0xD113, // access/xlog_internal.h (REL_16_STABLE)
        control_layout: ControlLayout::V1300,
        catalog_version_no: Some(202307071), // catalog/catversion.h (REL_16_STABLE)
        xlp_all_flags: 0x000F,
        xlp_first_is_overwrite_contrecord: 0x0008,
        bkpimage_apply: V15_BIMG_APPLY,
        bkpimage_compressed_mask: V15_BIMG_COMPRESSED,
        bkpimage_all_flags: BKPIMAGE_HAS_HOLE | V15_BIMG_APPLY | V15_BIMG_COMPRESSED,
        has_toplevel_xid_block: true,
        has_custom_rmgrs: true,
        sizeof_checkpoint: 88,
        sizeof_xact_stats_item: 12,
    },
    PgVersion {
        major: 17,
        xlog_page_magic: 0xD116, // access/xlog_internal.h (REL_17_STABLE)
        control_layout: ControlLayout::V1700,
        catalog_version_no: None,
        xlp_all_flags: 0x000F,
        xlp_first_is_overwrite_contrecord: 0x0008,
        bkpimage_apply: V15_BIMG_APPLY,
        bkpimage_compressed_mask: V15_BIMG_COMPRESSED,
        bkpimage_all_flags: BKPIMAGE_HAS_HOLE | V15_BIMG_APPLY | V15_BIMG_COMPRESSED,
        has_toplevel_xid_block: true,
        has_custom_rmgrs: true,
        sizeof_checkpoint: 88,
        sizeof_xact_stats_item: 12,
    },
    // 18 keeps 15's record, block-image and page-flag layouts (XLP_BKP_REMOVABLE still 0x0004);
    // what changed is the page magic and pg_control. // access/xlog_internal.h,
    // access/xlogrecord.h (REL_18_STABLE)
    PgVersion {
        major: 18,
        xlog_page_magic: 0xD118, // access/xlog_internal.h (REL_18_STABLE)
        control_layout: ControlLayout::V1800,
        catalog_version_no: None,
        xlp_all_flags: 0x000F,
        xlp_first_is_overwrite_contrecord: 0x0008,
        bkpimage_apply: V15_BIMG_APPLY,
        bkpimage_compressed_mask: V15_BIMG_COMPRESSED,
        bkpimage_all_flags: BKPIMAGE_HAS_HOLE | V15_BIMG_APPLY | V15_BIMG_COMPRESSED,
        has_toplevel_xid_block: true,
        has_custom_rmgrs: true,
        sizeof_checkpoint: 88,
        sizeof_xact_stats_item: 16,
    },
];

/// The major whose layouts a decoder assumes before the first page header names one (the
/// WAL fixtures with the most edge cases are 15's).
pub const TESTED_MAJOR: u32 = 15;

pub fn by_major(major: u32) -> Option<&'static PgVersion> {
    KNOWN_VERSIONS.iter().find(|v| v.major == major)
}

pub fn by_page_magic(magic: u16) -> Option<&'static PgVersion> {
    KNOWN_VERSIONS.iter().find(|v| v.xlog_page_magic == magic)
}

/// The major a pg_control file belongs to, when its catalog version is a release's.
pub fn by_catalog_version(catalog_version_no: u32) -> Option<&'static PgVersion> {
    KNOWN_VERSIONS.iter().find(|v| v.catalog_version_no == Some(catalog_version_no))
}

/// "13, 14, 15, 16, 17, 18", for error messages.
pub fn known_majors() -> String {
    KNOWN_VERSIONS.iter().map(|v| v.major.to_string()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magics_are_distinct_and_ordered() {
        for w in KNOWN_VERSIONS.windows(2) {
            assert!(w[0].xlog_page_magic < w[1].xlog_page_magic);
            assert!(w[0].major < w[1].major);
        }
        assert_eq!(by_major(15).unwrap().xlog_page_magic, 0xD110);
        assert_eq!(by_major(16).unwrap().xlog_page_magic, 0xD113);
        assert_eq!(by_major(17).unwrap().xlog_page_magic, 0xD116);
        assert_eq!(by_major(18).unwrap().xlog_page_magic, 0xD118);
        assert_eq!(by_major(18).unwrap().control_layout.pg_control_version(), 1800);
        assert_eq!(by_page_magic(0xD106).unwrap().major, 13);
        assert!(by_page_magic(0).is_none());
        assert!(by_major(12).is_none());
        assert_eq!(known_majors(), "13, 14, 15, 16, 17, 18");
    }
}
