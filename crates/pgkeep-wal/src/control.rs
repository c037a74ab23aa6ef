//! pg_control: the cluster's control file. // catalog/pg_control.h

#![allow(non_snake_case)]

use std::fmt;

use crate::bytes::{i32_at, i64_at, u32_at, u64_at, u8_at};
use crate::lsn::{pg_time_t, Lsn, TimeLineID};
use crate::rmgr::xlog::CheckPoint;
use crate::version::{self, ControlLayout};

/// Size of the file on disk; the struct fills only its start. // catalog/pg_control.h
pub const PG_CONTROL_FILE_SIZE: usize = 8192;
/// `MOCK_AUTH_NONCE_LEN`. // catalog/pg_control.h
pub const MOCK_AUTH_NONCE_LEN: usize = 32;
/// `FLOATFORMAT_VALUE`, stored to detect an incompatible float format. // catalog/pg_control.h
pub const FLOATFORMAT_VALUE: f64 = 1234567.0;

/// Offsets in `ControlFileData` for PG_CONTROL_VERSION 1300, 1700 and 1800 (x86-64/aarch64
/// alignment: 8-byte integers and doubles aligned to 8); 1800 differs only from
/// `DEFAULT_CHAR_SIGNEDNESS` on. // catalog/pg_control.h
mod off {
    pub const SYSTEM_IDENTIFIER: usize = 0;
    pub const PG_CONTROL_VERSION: usize = 8;
    pub const CATALOG_VERSION_NO: usize = 12;
    pub const STATE: usize = 16;
    pub const TIME: usize = 24; // after 4 bytes of padding
    pub const CHECKPOINT: usize = 32;
    pub const CHECKPOINT_COPY: usize = 40;
    pub const UNLOGGED_LSN: usize = 128;
    pub const MIN_RECOVERY_POINT: usize = 136;
    pub const MIN_RECOVERY_POINT_TLI: usize = 144;
    pub const BACKUP_START_POINT: usize = 152;
    pub const BACKUP_END_POINT: usize = 160;
    pub const BACKUP_END_REQUIRED: usize = 168;
    pub const WAL_LEVEL: usize = 172;
    pub const WAL_LOG_HINTS: usize = 176;
    pub const MAX_CONNECTIONS: usize = 180;
    pub const MAX_WORKER_PROCESSES: usize = 184;
    pub const MAX_WAL_SENDERS: usize = 188;
    pub const MAX_PREPARED_XACTS: usize = 192;
    pub const MAX_LOCKS_PER_XACT: usize = 196;
    pub const TRACK_COMMIT_TIMESTAMP: usize = 200;
    pub const MAX_ALIGN: usize = 204;
    pub const FLOAT_FORMAT: usize = 208;
    pub const BLCKSZ: usize = 216;
    pub const RELSEG_SIZE: usize = 220;
    pub const XLOG_BLCKSZ: usize = 224;
    pub const XLOG_SEG_SIZE: usize = 228;
    pub const NAME_DATA_LEN: usize = 232;
    pub const INDEX_MAX_KEYS: usize = 236;
    pub const TOAST_MAX_CHUNK_SIZE: usize = 240;
    pub const LOBLKSIZE: usize = 244;
    pub const FLOAT8_BY_VAL: usize = 248;
    pub const DATA_CHECKSUM_VERSION: usize = 252;
    pub const MOCK_AUTHENTICATION_NONCE: usize = 256;
    /// `offsetof(ControlFileData, crc)`: the CRC covers everything before it.
    pub const CRC: usize = 288;
    /// 1800: a bool after `data_checksum_version`; the nonce follows unaligned and the CRC is
    /// aligned to 4 after it. // catalog/pg_control.h (REL_18_STABLE)
    pub const DEFAULT_CHAR_SIGNEDNESS_1800: usize = 256;
    pub const MOCK_AUTHENTICATION_NONCE_1800: usize = 257;
    pub const CRC_1800: usize = 292;
}

/// Cluster state. // catalog/pg_control.h
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[allow(non_camel_case_types)]
pub enum DBState {
    DB_STARTUP,
    DB_SHUTDOWNED,
    DB_SHUTDOWNED_IN_RECOVERY,
    DB_SHUTDOWNING,
    DB_IN_CRASH_RECOVERY,
    DB_IN_ARCHIVE_RECOVERY,
    DB_IN_PRODUCTION,
    Unknown(u32),
}

impl DBState {
    pub fn from_u32(v: u32) -> DBState {
        match v {
            0 => DBState::DB_STARTUP,
            1 => DBState::DB_SHUTDOWNED,
            2 => DBState::DB_SHUTDOWNED_IN_RECOVERY,
            3 => DBState::DB_SHUTDOWNING,
            4 => DBState::DB_IN_CRASH_RECOVERY,
            5 => DBState::DB_IN_ARCHIVE_RECOVERY,
            6 => DBState::DB_IN_PRODUCTION,
            n => DBState::Unknown(n),
        }
    }

    /// True when the server stopped cleanly (no crash recovery needed on start).
    pub fn is_clean_shutdown(self) -> bool {
        matches!(self, DBState::DB_SHUTDOWNED | DBState::DB_SHUTDOWNED_IN_RECOVERY)
    }
}

impl fmt::Display for DBState {
    /// The words pg_controldata prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DBState::DB_STARTUP => "starting up",
            DBState::DB_SHUTDOWNED => "shut down",
            DBState::DB_SHUTDOWNED_IN_RECOVERY => "shut down in recovery",
            DBState::DB_SHUTDOWNING => "shutting down",
            DBState::DB_IN_CRASH_RECOVERY => "in crash recovery",
            DBState::DB_IN_ARCHIVE_RECOVERY => "in archive recovery",
            DBState::DB_IN_PRODUCTION => "in production",
            DBState::Unknown(_) => "unrecognized status code",
        })
    }
}

/// Contents of pg_control. // catalog/pg_control.h
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct ControlFileData {
    pub system_identifier: u64,
    pub pg_control_version: u32,
    pub catalog_version_no: u32,
    pub state: DBState,
    /// Last update of the file.
    pub time: pg_time_t,
    /// The last checkpoint record.
    pub checkPoint: Lsn,
    pub checkPointCopy: CheckPoint,
    pub unloggedLSN: Lsn,
    pub minRecoveryPoint: Lsn,
    pub minRecoveryPointTLI: TimeLineID,
    pub backupStartPoint: Lsn,
    pub backupEndPoint: Lsn,
    pub backupEndRequired: bool,
    pub wal_level: i32,
    pub wal_log_hints: bool,
    pub MaxConnections: i32,
    pub max_worker_processes: i32,
    pub max_wal_senders: i32,
    pub max_prepared_xacts: i32,
    pub max_locks_per_xact: i32,
    pub track_commit_timestamp: bool,
    pub maxAlign: u32,
    pub floatFormat: f64,
    pub blcksz: u32,
    pub relseg_size: u32,
    pub xlog_blcksz: u32,
    pub xlog_seg_size: u32,
    pub nameDataLen: u32,
    pub indexMaxKeys: u32,
    pub toast_max_chunk_size: u32,
    pub loblksize: u32,
    pub float8ByVal: bool,
    pub data_checksum_version: u32,
    /// 18+ only (`None` before): `char` was signed where initdb ran.
    pub default_char_signedness: Option<bool>,
    pub mock_authentication_nonce: [u8; MOCK_AUTH_NONCE_LEN],
    pub crc: u32,
}

impl ControlFileData {
    /// The major that wrote the file, when its control and catalog versions say so.
    pub fn pg_major(&self) -> Option<u32> {
        match ControlLayout::from_pg_control_version(self.pg_control_version)? {
            ControlLayout::V1700 => Some(17),
            ControlLayout::V1800 => Some(18),
            ControlLayout::V1300 => version::by_catalog_version(self.catalog_version_no).map(|v| v.major),
        }
    }

    /// `wal_level` as a word, as pg_controldata prints it. // access/xlog.h WalLevel
    pub fn wal_level_name(&self) -> &'static str {
        wal_level_name(self.wal_level)
    }
}

/// Name of a `WalLevel` value. // access/xlog.h
pub fn wal_level_name(v: i32) -> &'static str {
    match v {
        0 => "minimal",
        1 => "replica",
        2 => "logical",
        _ => "unrecognized wal_level",
    }
}

/// Why a pg_control file was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("pg_control is {len} bytes, too short for a control file ({need} needed)")]
    TooShort { len: usize, need: usize },
    #[error("pg_control has format version {found}, which pgkeep does not know (1300: PostgreSQL 13–16, 1700: 17, 1800: 18)")]
    UnknownVersion { found: u32 },
    #[error("pg_control was written on a big-endian machine, which pgkeep does not support")]
    BigEndian,
    #[error("pg_control checksum mismatch (the file is damaged)")]
    Crc { stored: u32, computed: u32 },
}

/// Parses a pg_control file (its first bytes at least), checking version and CRC-32C.
pub fn parse_pg_control(bytes: &[u8]) -> Result<ControlFileData, ControlError> {
    let short = |n| ControlError::TooShort { len: bytes.len(), need: n };
    let version = u32_at(bytes, off::PG_CONTROL_VERSION).ok_or(short(off::CRC + 4))?;
    let layout = match ControlLayout::from_pg_control_version(version) {
        Some(l) => l,
        None if ControlLayout::from_pg_control_version(version.swap_bytes()).is_some() => {
            return Err(ControlError::BigEndian)
        }
        None => return Err(ControlError::UnknownVersion { found: version }),
    };
    let (crc_off, nonce_off) = if layout.has_default_char_signedness() {
        (off::CRC_1800, off::MOCK_AUTHENTICATION_NONCE_1800)
    } else {
        (off::CRC, off::MOCK_AUTHENTICATION_NONCE)
    };
    let need = crc_off + 4;
    let covered = bytes.get(..crc_off).ok_or(short(need))?;
    let stored = u32_at(bytes, crc_off).ok_or(short(need))?;
    let computed = crc32c::crc32c(covered);
    if stored != computed {
        return Err(ControlError::Crc { stored, computed });
    }
    let b = bytes;
    let u32f = |o| u32_at(b, o).ok_or(short(need));
    let i32f = |o| i32_at(b, o).ok_or(short(need));
    let u64f = |o| u64_at(b, o).ok_or(short(need));
    let boolf = |o| u8_at(b, o).map(|v| v != 0).ok_or(short(need));
    let mut nonce = [0u8; MOCK_AUTH_NONCE_LEN];
    nonce.copy_from_slice(b.get(nonce_off..nonce_off + MOCK_AUTH_NONCE_LEN).ok_or(short(need))?);
    let default_char_signedness = match layout.has_default_char_signedness() {
        true => Some(boolf(off::DEFAULT_CHAR_SIGNEDNESS_1800)?),
        false => None,
    };
    let cp_bytes = b.get(off::CHECKPOINT_COPY..off::UNLOGGED_LSN).ok_or(short(need))?;
    Ok(ControlFileData {
        system_identifier: u64f(off::SYSTEM_IDENTIFIER)?,
        pg_control_version: version,
        catalog_version_no: u32f(off::CATALOG_VERSION_NO)?,
        state: DBState::from_u32(u32f(off::STATE)?),
        time: i64_at(b, off::TIME).ok_or(short(need))?,
        checkPoint: Lsn(u64f(off::CHECKPOINT)?),
        checkPointCopy: CheckPoint::parse(cp_bytes, layout).ok_or(short(need))?,
        unloggedLSN: Lsn(u64f(off::UNLOGGED_LSN)?),
        minRecoveryPoint: Lsn(u64f(off::MIN_RECOVERY_POINT)?),
        minRecoveryPointTLI: u32f(off::MIN_RECOVERY_POINT_TLI)?,
        backupStartPoint: Lsn(u64f(off::BACKUP_START_POINT)?),
        backupEndPoint: Lsn(u64f(off::BACKUP_END_POINT)?),
        backupEndRequired: boolf(off::BACKUP_END_REQUIRED)?,
        wal_level: i32f(off::WAL_LEVEL)?,
        wal_log_hints: boolf(off::WAL_LOG_HINTS)?,
        MaxConnections: i32f(off::MAX_CONNECTIONS)?,
        max_worker_processes: i32f(off::MAX_WORKER_PROCESSES)?,
        max_wal_senders: i32f(off::MAX_WAL_SENDERS)?,
        max_prepared_xacts: i32f(off::MAX_PREPARED_XACTS)?,
        max_locks_per_xact: i32f(off::MAX_LOCKS_PER_XACT)?,
        track_commit_timestamp: boolf(off::TRACK_COMMIT_TIMESTAMP)?,
        maxAlign: u32f(off::MAX_ALIGN)?,
        floatFormat: f64::from_bits(u64f(off::FLOAT_FORMAT)?),
        blcksz: u32f(off::BLCKSZ)?,
        relseg_size: u32f(off::RELSEG_SIZE)?,
        xlog_blcksz: u32f(off::XLOG_BLCKSZ)?,
        xlog_seg_size: u32f(off::XLOG_SEG_SIZE)?,
        nameDataLen: u32f(off::NAME_DATA_LEN)?,
        indexMaxKeys: u32f(off::INDEX_MAX_KEYS)?,
        toast_max_chunk_size: u32f(off::TOAST_MAX_CHUNK_SIZE)?,
        loblksize: u32f(off::LOBLKSIZE)?,
        float8ByVal: boolf(off::FLOAT8_BY_VAL)?,
        data_checksum_version: u32f(off::DATA_CHECKSUM_VERSION)?,
        default_char_signedness,
        mock_authentication_nonce: nonce,
        crc: stored,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synthetic(version: u32) -> Vec<u8> {
        let mut b = vec![0u8; PG_CONTROL_FILE_SIZE];
        b[0..8].copy_from_slice(&7u64.to_le_bytes());
        b[8..12].copy_from_slice(&version.to_le_bytes());
        b[12..16].copy_from_slice(&202209061u32.to_le_bytes());
        b[16..20].copy_from_slice(&6u32.to_le_bytes());
        b[40 + 20..40 + 24].copy_from_slice(&2i32.to_le_bytes());
        b[208..216].copy_from_slice(&FLOATFORMAT_VALUE.to_bits().to_le_bytes());
        let crc_at = if version == 1800 {
            b[256] = 1;
            b[257] = 0xAB;
            292
        } else {
            288
        };
        let crc = crc32c::crc32c(&b[..crc_at]);
        b[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
        b
    }

    #[test]
    fn parses_and_checks_crc() {
        let c = parse_pg_control(&synthetic(1300)).unwrap();
        assert_eq!(c.system_identifier, 7);
        assert_eq!(c.state, DBState::DB_IN_PRODUCTION);
        assert_eq!(c.floatFormat, FLOATFORMAT_VALUE);
        assert_eq!(c.pg_major(), Some(15));
        assert_eq!(c.checkPointCopy.wal_level, None);
        let c17 = parse_pg_control(&synthetic(1700)).unwrap();
        assert_eq!(c17.checkPointCopy.wal_level, Some(2));
        assert_eq!(c17.pg_major(), Some(17));
        assert_eq!(c17.default_char_signedness, None);
        let c18 = parse_pg_control(&synthetic(1800)).unwrap();
        assert_eq!(c18.pg_major(), Some(18));
        assert_eq!(c18.checkPointCopy.wal_level, Some(2));
        assert_eq!(c18.default_char_signedness, Some(true));
        assert_eq!(c18.mock_authentication_nonce[0], 0xAB);
        for n in 0..296 {
            assert!(parse_pg_control(&synthetic(1800)[..n]).is_err());
        }

        let mut bad = synthetic(1300);
        bad[100] ^= 1;
        let e = parse_pg_control(&bad).unwrap_err();
        assert_eq!(e.to_string(), "pg_control checksum mismatch (the file is damaged)");
        assert_eq!(parse_pg_control(&synthetic(1201)), Err(ControlError::UnknownVersion { found: 1201 }));
        assert_eq!(parse_pg_control(&synthetic(1300u32.swap_bytes())), Err(ControlError::BigEndian));
        for n in 0..292 {
            assert!(parse_pg_control(&synthetic(1300)[..n]).is_err());
        }
    }
}
