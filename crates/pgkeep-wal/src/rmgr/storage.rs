//! Records that change relation files without (or beyond) block references: smgr creates and
//! truncates, database creation by file copy and database drops. A tool that derives changed
//! blocks from block references must treat the files these name as changed as a whole.
//! // catalog/storage_xlog.h, commands/dbcommands_xlog.h

#![allow(non_snake_case)]

use super::RmgrDataError;
use crate::bytes::{i32_at, u32_at};
use crate::lsn::Oid;
use crate::record::{RelFileNode, XLR_RMGR_INFO_MASK};
use crate::version::PgVersion;

/// // access/rmgrlist.h
pub const RM_SMGR_ID: u8 = 2;
/// // access/rmgrlist.h
pub const RM_DBASE_ID: u8 = 4;

/// // catalog/storage_xlog.h
pub const XLOG_SMGR_CREATE: u8 = 0x10;
/// // catalog/storage_xlog.h
pub const XLOG_SMGR_TRUNCATE: u8 = 0x20;
/// `xl_smgr_truncate.flags` bits. // catalog/storage_xlog.h
pub const SMGR_TRUNCATE_HEAP: i32 = 0x0001;
pub const SMGR_TRUNCATE_VM: i32 = 0x0002;
pub const SMGR_TRUNCATE_FSM: i32 = 0x0004;

/// 15+: `XLOG_DBASE_CREATE_FILE_COPY`; 14: `XLOG_DBASE_CREATE` (the only strategy there).
/// // commands/dbcommands_xlog.h
pub const XLOG_DBASE_CREATE_FILE_COPY: u8 = 0x00;
/// 15+. // commands/dbcommands_xlog.h
pub const XLOG_DBASE_CREATE_WAL_LOG: u8 = 0x10;
/// 15+ (0x10 in 14). // commands/dbcommands_xlog.h
pub const XLOG_DBASE_DROP: u8 = 0x20;
/// 14's `XLOG_DBASE_DROP`. // commands/dbcommands_xlog.h
pub const XLOG_DBASE_DROP_14: u8 = 0x10;

/// `ForkNumber`. // common/relpath.h
pub const MAIN_FORKNUM: u8 = 0;
pub const FSM_FORKNUM: u8 = 1;
pub const VISIBILITYMAP_FORKNUM: u8 = 2;
pub const INIT_FORKNUM: u8 = 3;

/// What a storage-level record does to relation files.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize), serde(tag = "kind", rename_all = "snake_case"))]
pub enum StorageChange {
    /// `xl_smgr_create`: the fork's file was created (empty, or by a copy that follows).
    SmgrCreate { rnode: RelFileNode, forkNum: u8 },
    /// `xl_smgr_truncate`: the forks named by `flags` were cut to `blkno` blocks (main fork;
    /// the FSM and VM forks to what covers it).
    SmgrTruncate { blkno: u32, rnode: RelFileNode, flags: i32 },
    /// A database directory created by copying `src_db_id` in `src_tablespace_id` at file
    /// level (no block references for its files): `CREATE DATABASE … STRATEGY FILE_COPY`,
    /// every `CREATE DATABASE` before 15, and `ALTER DATABASE … SET TABLESPACE`.
    DbaseCreateFileCopy { db_id: Oid, tablespace_id: Oid, src_db_id: Oid, src_tablespace_id: Oid },
    /// 15+ `CREATE DATABASE … STRATEGY WAL_LOG`: only the directory; its files are logged one
    /// by one (smgr creates and page images).
    DbaseCreateWalLog { db_id: Oid, tablespace_id: Oid },
    /// The database's directories in these tablespaces were removed.
    DbaseDrop { db_id: Oid, tablespace_ids: Vec<Oid> },
}

fn rnode_at(b: &[u8], off: usize) -> Option<RelFileNode> {
    Some(RelFileNode { spcNode: u32_at(b, off)?, dbNode: u32_at(b, off + 4)?, relNode: u32_at(b, off + 8)? })
}

/// Decodes the records of [`StorageChange`] from a record's rmgr, info and main data;
/// `Ok(None)` for every other record.
pub fn storage_change(
    rmid: u8,
    xl_info: u8,
    main_data: &[u8],
    version: &PgVersion,
) -> Result<Option<StorageChange>, RmgrDataError> {
    let info = xl_info & XLR_RMGR_INFO_MASK;
    let bad = |rmgr: &'static str| RmgrDataError { rmgr, info, len: main_data.len() };
    let b = main_data;
    match rmid {
        RM_SMGR_ID => match info {
            XLOG_SMGR_CREATE => {
                let rnode = rnode_at(b, 0).ok_or_else(|| bad("Storage"))?;
                let fork = i32_at(b, 12).ok_or_else(|| bad("Storage"))?;
                let forkNum = u8::try_from(fork).ok().filter(|f| *f <= INIT_FORKNUM).ok_or_else(|| bad("Storage"))?;
                Ok(Some(StorageChange::SmgrCreate { rnode, forkNum }))
            }
            XLOG_SMGR_TRUNCATE => {
                let blkno = u32_at(b, 0).ok_or_else(|| bad("Storage"))?;
                let rnode = rnode_at(b, 4).ok_or_else(|| bad("Storage"))?;
                let flags = i32_at(b, 16).ok_or_else(|| bad("Storage"))?;
                Ok(Some(StorageChange::SmgrTruncate { blkno, rnode, flags }))
            }
            _ => Err(bad("Storage")),
        },
        RM_DBASE_ID => {
            let fourteen = version.major < 15;
            let drop = if fourteen { XLOG_DBASE_DROP_14 } else { XLOG_DBASE_DROP };
            let oid = |i: usize| u32_at(b, i * 4).ok_or_else(|| bad("Database"));
            if info == XLOG_DBASE_CREATE_FILE_COPY {
                Ok(Some(StorageChange::DbaseCreateFileCopy {
                    db_id: oid(0)?,
                    tablespace_id: oid(1)?,
                    src_db_id: oid(2)?,
                    src_tablespace_id: oid(3)?,
                }))
            } else if info == drop {
                let db_id = oid(0)?;
                let n = i32_at(b, 4).ok_or_else(|| bad("Database"))?;
                let n = usize::try_from(n).map_err(|_| bad("Database"))?;
                let tablespace_ids =
                    (0..n).map(|i| u32_at(b, 8 + i * 4).ok_or_else(|| bad("Database"))).collect::<Result<_, _>>()?;
                Ok(Some(StorageChange::DbaseDrop { db_id, tablespace_ids }))
            } else if !fourteen && info == XLOG_DBASE_CREATE_WAL_LOG {
                Ok(Some(StorageChange::DbaseCreateWalLog { db_id: oid(0)?, tablespace_id: oid(1)? }))
            } else {
                Err(bad("Database"))
            }
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(major: u32) -> &'static PgVersion {
        crate::version::by_major(major).expect("known major")
    }

    fn words(w: &[u32]) -> Vec<u8> {
        w.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn smgr_create_and_truncate() {
        let rnode = RelFileNode { spcNode: 1663, dbNode: 5, relNode: 16384 };
        let c = storage_change(RM_SMGR_ID, XLOG_SMGR_CREATE, &words(&[1663, 5, 16384, 2]), v(15)).unwrap();
        assert_eq!(c, Some(StorageChange::SmgrCreate { rnode, forkNum: VISIBILITYMAP_FORKNUM }));
        let t = storage_change(RM_SMGR_ID, XLOG_SMGR_TRUNCATE, &words(&[7, 1663, 5, 16384, 7]), v(18)).unwrap();
        assert_eq!(t, Some(StorageChange::SmgrTruncate { blkno: 7, rnode, flags: 7 }));
        // Too short, an unknown fork, an unknown info: errors, never a guess.
        assert!(storage_change(RM_SMGR_ID, XLOG_SMGR_CREATE, &words(&[1663, 5, 16384]), v(15)).is_err());
        assert!(storage_change(RM_SMGR_ID, XLOG_SMGR_CREATE, &words(&[1663, 5, 16384, 9]), v(15)).is_err());
        assert!(storage_change(RM_SMGR_ID, 0x30, &words(&[0; 5]), v(15)).is_err());
    }

    #[test]
    fn dbase_records_per_major() {
        let copy = storage_change(RM_DBASE_ID, 0x00, &words(&[16400, 16390, 1, 1663]), v(14)).unwrap();
        let expect = StorageChange::DbaseCreateFileCopy {
            db_id: 16400,
            tablespace_id: 16390,
            src_db_id: 1,
            src_tablespace_id: 1663,
        };
        assert_eq!(copy, Some(expect.clone()));
        assert_eq!(storage_change(RM_DBASE_ID, 0x00, &words(&[16400, 16390, 1, 1663]), v(16)).unwrap(), Some(expect));
        let drop = StorageChange::DbaseDrop { db_id: 16400, tablespace_ids: vec![1663, 16390] };
        assert_eq!(
            storage_change(RM_DBASE_ID, 0x10, &words(&[16400, 2, 1663, 16390]), v(14)).unwrap(),
            Some(drop.clone())
        );
        assert_eq!(storage_change(RM_DBASE_ID, 0x20, &words(&[16400, 2, 1663, 16390]), v(15)).unwrap(), Some(drop));
        assert_eq!(
            storage_change(RM_DBASE_ID, 0x10, &words(&[16400, 1663]), v(17)).unwrap(),
            Some(StorageChange::DbaseCreateWalLog { db_id: 16400, tablespace_id: 1663 })
        );
        assert!(storage_change(RM_DBASE_ID, 0x20, &words(&[16400, 5, 1663]), v(15)).is_err());
        assert!(storage_change(RM_DBASE_ID, 0x20, &words(&[16400, 1]), v(14)).is_err());
        assert_eq!(storage_change(10, 0x00, &[], v(15)).unwrap(), None);
    }
}
