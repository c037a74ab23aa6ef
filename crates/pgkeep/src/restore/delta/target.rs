//! What a delta restore refuses before writing anything: a directory that is no data
//! directory, a server running on it (as PostgreSQL decides), another cluster's, a tablespace
//! directory that is not the target's own.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::super::materialize::PG_CONTROL_TEMP;
use super::super::plan::RestorePlan;
use super::super::RestoreError;
use super::werr;
use crate::fsutil;

/// The refusals, before anything is written: not a data directory, a server running on it
/// (as PostgreSQL decides), another cluster's.
pub(super) fn check_target(plan: &RestorePlan) -> Result<(), RestoreError> {
    let pgdata = &plan.map.pgdata;
    let dir = pgdata.display().to_string();
    let control = [pgdata.join("global/pg_control"), pgdata.join(PG_CONTROL_TEMP)];
    // A run interrupted after moving pg_control aside left it under the temporary name.
    let Some(control) = control.iter().find(|p| p.is_file()).filter(|_| pgdata.join("PG_VERSION").is_file()) else {
        return Err(RestoreError::DeltaNotDataDir { dir });
    };
    if let Some(why) = running_server(pgdata) {
        return Err(RestoreError::DeltaRunning { dir, why });
    }
    let bytes =
        fs::read(control).map_err(|e| RestoreError::DeltaControl { dir: dir.clone(), detail: e.to_string() })?;
    let found = pgkeep_wal::parse_pg_control(&bytes)
        .map_err(|e| RestoreError::DeltaControl { dir: dir.clone(), detail: e.to_string() })?
        .system_identifier;
    let m = &plan.manifest;
    if found.to_string() != m.system_identifier {
        return Err(RestoreError::DeltaForeign {
            dir,
            found: found.to_string(),
            id: m.id.clone(),
            expected: m.system_identifier.clone(),
        });
    }
    // A tablespace directory holding anything must be this data directory's own: without a
    // --tablespace-map, a copy's tablespaces would otherwise go to the original location,
    // which the source server may be using right now.
    for (oid, ts) in &plan.map.tablespaces {
        if fsutil::is_absent_or_empty(ts).map_err(|e| werr(ts, e))? {
            continue;
        }
        let link = fs::read_link(pgdata.join(format!("pg_tblspc/{oid}"))).ok();
        let same = |l: &PathBuf| fs::canonicalize(pgdata.join(l)).ok() == fs::canonicalize(ts).ok();
        if !link.as_ref().is_some_and(same) {
            return Err(RestoreError::DeltaTablespace {
                dir,
                oid: *oid,
                ts: ts.display().to_string(),
                link: link.map(|l| l.display().to_string()).unwrap_or_else(|| "nothing".into()),
            });
        }
    }
    Ok(())
}

/// Why `pgdata` is in use, decided as PostgreSQL decides before it takes a data directory
/// (miscinit.c `CreateLockFile`, sysv_shmem.c `PGSharedMemoryIsInUse`): the postmaster.pid
/// names a process that exists (other than this one or its parent), or the shared memory
/// segment it names still has processes attached (backends that outlived a killed
/// postmaster). Otherwise the pid file is stale and is removed with the rest.
fn running_server(pgdata: &Path) -> Option<String> {
    let text = fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
    let mut lines = text.lines();
    // A standalone backend writes its pid negated.
    let pid: i64 = lines.next().and_then(|l| l.trim().parse().ok()).unwrap_or(0);
    let pid = pid.unsigned_abs();
    let own = [std::process::id() as u64, std::os::unix::process::parent_id() as u64];
    if pid > 0 && pid <= i32::MAX as u64 && !own.contains(&pid) {
        // SAFETY: signal 0 only checks that the process exists.
        let alive = unsafe { libc::kill(pid as i32, 0) } == 0
            || !matches!(io::Error::last_os_error().raw_os_error(), Some(libc::ESRCH) | Some(libc::EPERM));
        if alive {
            return Some(format!("postmaster.pid names live process {pid}"));
        }
    }
    // Line 7: shared memory key and id.
    let shmid: i32 = text.lines().nth(6)?.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: IPC_STAT fills the zeroed struct we own; a bad id just fails.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::shmctl(shmid, libc::IPC_STAT, &mut ds) } == 0;
    (ok && ds.shm_nattch > 0).then(|| {
        format!(
            "shared memory segment {shmid} named in postmaster.pid is still attached by {} process(es)",
            ds.shm_nattch
        )
    })
}
