//! `pgkeep demo`: the whole story on a throw-away cluster in a temp directory — load data, back
//! up under write load, restore to a point in time between two known commits, and show that
//! the restored rows are exactly those committed before the target.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::backup::{self, BackupOptions};
use crate::cli::DemoArgs;
use crate::command::init;
use crate::fsutil;
use crate::pg::instance::{free_port, InitdbOptions};
use crate::pg::{Instance, OsUser, PgBin, PgClient, StopMode};
use crate::progress::Progress;
use crate::repo::{layout, RepoLocation, Repository};
use crate::restore::{self, RecoveryTarget, TargetAction};
use crate::Error;

#[derive(Debug, Serialize)]
pub struct DemoReport {
    pub ok: bool,
    pub steps: Vec<String>,
    pub backup_id: String,
    pub target_time: String,
    pub expected_rows: i64,
    pub restored_rows: i64,
    pub expected_sum: String,
    pub restored_sum: String,
    pub rows_written_during_backup: u64,
    pub kept_dir: Option<String>,
}

fn err(e: impl std::fmt::Display) -> Error {
    Error::other(format!("demo: {e}"))
}

/// `pg_bin`: `--pg-bin` / `pg_bin_dir`, else the newest server binaries installed.
pub fn demo(
    args: &DemoArgs,
    pg_bin: Option<&std::path::Path>,
    progress: Arc<dyn Progress>,
    rt: tokio::runtime::Handle,
) -> crate::Result<DemoReport> {
    let owner = OsUser::for_private_servers()?;
    let bin = PgBin::find_any(pg_bin)?;
    let base = tempfile::Builder::new().prefix("pgkeep-demo-").tempdir().map_err(err)?;
    let root = base.path().to_path_buf();
    let mut steps = Vec::new();
    // The steps are the demo's output (stdout); progress shows phases on stderr meanwhile.
    let note = |s: String, steps: &mut Vec<String>| steps.push(s);

    // A directory the server's OS user owns, holding a copy of this binary for archive_command.
    fsutil::set_mode(&root, 0o755).map_err(err)?;
    let exe_dir = root.join("bin");
    std::fs::create_dir(&exe_dir).map_err(err)?;
    let exe = exe_dir.join("pgkeep");
    std::fs::copy(std::env::current_exe().map_err(err)?, &exe).map_err(err)?;
    fsutil::set_mode(&exe, 0o755).map_err(err)?;
    if fsutil::running_as_root() {
        fsutil::chown_tree(&root, owner.uid, owner.gid).map_err(err)?;
    }
    let repo_dir = root.join("repo");
    let src_data = root.join("source");
    let restored_data = root.join("restored");

    let mut src = Instance::new(bin.clone(), &src_data, &root, free_port(), Some(owner.clone()));
    src.initdb(&InitdbOptions { data_checksums: true, wal_segsize_mb: None }).map_err(Error::from)?;
    src.append_conf(&[
        ("wal_level", "replica".into()),
        ("archive_mode", "on".into()),
        ("archive_command", format!("\"{}\" --repo \"{}\" archive-push \"%p\"", exe.display(), repo_dir.display())),
        ("max_wal_size", "256MB".into()),
    ])?;
    src.start(Duration::from_secs(60))?;
    note(format!("started a throw-away PostgreSQL ({}) in {}", bin.dir.display(), src_data.display()), &mut steps);

    let conn = src.conn("postgres");
    let loc = RepoLocation::Local(repo_dir.clone());
    let init_report = init::init(&loc, Some(&conn), Some(&src_data), None, rt.clone())?;
    let repo = Repository::open(&loc, None, rt.clone())?;
    note(
        format!(
            "initialized repository {} for system identifier {}",
            repo_dir.display(),
            init_report.system_identifier
        ),
        &mut steps,
    );

    let client = rt.block_on(conn.connect())?;
    rt.block_on(client.simple(
        "CREATE TABLE orders (id bigserial PRIMARY KEY, amount numeric NOT NULL, note text, created_at timestamptz NOT NULL DEFAULT clock_timestamp());
         INSERT INTO orders (amount, note) SELECT (g % 997) / 10.0, md5(g::text) FROM generate_series(1, 200000) g;
         CREATE INDEX orders_created ON orders (created_at);",
    ))?;
    note("loaded 200000 rows into table orders".into(), &mut steps);

    // Write load during the backup: one row per transaction, counted when committed.
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicU64::new(0));
    let load = {
        let (stop, committed, conn) = (stop.clone(), committed.clone(), conn.clone());
        rt.spawn(async move {
            let c = conn.connect().await?;
            while !stop.load(Ordering::Relaxed) {
                c.simple(
                    "INSERT INTO orders (amount, note) VALUES (round((random() * 100)::numeric, 1), 'during backup')",
                )
                .await?;
                committed.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, crate::pg::PgError>(())
        })
    };
    let load_started = Instant::now();
    let opts = BackupOptions {
        label: Some("pgkeep demo".into()),
        jobs: crate::config::default_jobs(),
        max_rate: None,
        archive_timeout: Duration::from_secs(60),
        compress_level: 1,
        fast_checkpoint: true,
        backup_type: Default::default(),
        incremental_by: Default::default(),
    };
    let b = backup::run(backup::run::BackupInputs {
        repo: &repo,
        conn: &conn,
        pgdata: Some(&src_data),
        options: &opts,
        progress: progress.clone(),
    })?;
    let remaining = Duration::from_secs(args.load_seconds).saturating_sub(load_started.elapsed());
    std::thread::sleep(remaining);
    stop.store(true, Ordering::Relaxed);
    rt.block_on(load).map_err(err)??;
    let during = committed.load(Ordering::Relaxed);
    note(
        format!("backup {} taken while {during} single-row transactions committed ({} files, {:.1}s, pg_backup_start..stop window {:.2}s)", b.id, b.files, b.duration_seconds, b.backup_window_seconds),
        &mut steps,
    );

    // Two known commits with a target time between them.
    rt.block_on(client.simple("INSERT INTO orders (amount, note) VALUES (1.0, 'marker: before target')"))?;
    let (expected_rows, expected_sum) = counts(&rt, &client)?;
    let target = rt.block_on(client.scalar("SELECT clock_timestamp()"))?.unwrap_or_default();
    std::thread::sleep(Duration::from_millis(20));
    rt.block_on(client.simple(
        "INSERT INTO orders (amount, note) VALUES (2.0, 'marker: after target');
         DELETE FROM orders WHERE id % 10 = 0;",
    ))?;
    note(format!("committed a marker, noted target time {target}, then committed a second marker and deleted 10% of the rows"), &mut steps);
    let segment = rt.block_on(client.scalar("SELECT pg_walfile_name(pg_switch_wal())"))?.unwrap_or_default();
    wait_archived(&repo, &segment, Duration::from_secs(60))?;
    note(format!("switched WAL; {segment} is in the archive"), &mut steps);

    let target_time = restore::target::parse_time(&target)?;
    let ropts = restore::RestoreOptions {
        to: restored_data.clone(),
        backup: None,
        target: RecoveryTarget::Time(target_time),
        action: Some(TargetAction::Promote),
        inclusive: true,
        timeline: None,
        tablespace_map: Vec::new(),
        jobs: crate::config::default_jobs(),
        archive_mode: restore::recovery::ArchiveMode::Off,
    };
    let plan = restore::RestorePlan::build(&repo, &ropts)?;
    let r = plan.run(&repo, progress.clone())?;
    note(
        format!(
            "restored backup {} into {} with recovery_target_time = '{}'",
            r.backup,
            r.pgdata,
            restore::target::pg_timestamp(&target_time)
        ),
        &mut steps,
    );

    if fsutil::running_as_root() {
        fsutil::chown_tree(&restored_data, owner.uid, owner.gid).map_err(err)?;
    }
    let mut dst = Instance::new(bin.clone(), &restored_data, &root, free_port(), Some(owner.clone()));
    dst.set("archive_mode", "off");
    dst.start(Duration::from_secs(300))?;
    let dconn = dst.conn("postgres");
    let dclient = rt.block_on(dconn.connect())?;
    wait_promoted(&rt, &dclient, Duration::from_secs(300))?;
    let (restored_rows, restored_sum) = counts(&rt, &dclient)?;
    let before = rt
        .block_on(dclient.scalar("SELECT count(*) FROM orders WHERE note = 'marker: before target'"))?
        .unwrap_or_default();
    let after = rt
        .block_on(dclient.scalar("SELECT count(*) FROM orders WHERE note = 'marker: after target'"))?
        .unwrap_or_default();
    let ok = restored_rows == expected_rows && restored_sum == expected_sum && before == "1" && after == "0";
    note(
        format!(
            "restored cluster recovered and promoted: {restored_rows} rows, sum {restored_sum} (source at target: {expected_rows} rows, sum {expected_sum}); marker before target present: {}, marker after target present: {}",
            before == "1",
            after != "0"
        ),
        &mut steps,
    );
    drop(dclient);
    drop(client);
    dst.stop(StopMode::Fast)?;
    src.stop(StopMode::Fast)?;
    let kept_dir = if args.keep {
        let p = base.keep();
        note(format!("kept {} (both clusters stopped)", p.display()), &mut steps);
        Some(p.display().to_string())
    } else {
        None
    };
    Ok(DemoReport {
        ok,
        steps,
        backup_id: b.id,
        target_time: target,
        expected_rows,
        restored_rows,
        expected_sum,
        restored_sum,
        rows_written_during_backup: during,
        kept_dir,
    })
}

fn counts(rt: &tokio::runtime::Handle, c: &PgClient) -> crate::Result<(i64, String)> {
    let n = rt.block_on(c.scalar("SELECT count(*) FROM orders"))?.unwrap_or_default();
    let s = rt.block_on(c.scalar("SELECT sum(amount)::text FROM orders"))?.unwrap_or_default();
    Ok((n.parse().unwrap_or(-1), s))
}

pub fn wait_archived(repo: &Repository, segment: &str, timeout: Duration) -> crate::Result<()> {
    let deadline = Instant::now() + timeout;
    while repo.storage().head(&layout::wal_key(segment))?.is_none() {
        if Instant::now() > deadline {
            return Err(err(format!("{segment} did not reach the archive within {}s", timeout.as_secs())));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Wait until a restored server has finished recovery and promoted.
pub fn wait_promoted(rt: &tokio::runtime::Handle, c: &PgClient, timeout: Duration) -> crate::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if rt.block_on(c.scalar("SELECT pg_is_in_recovery()"))?.as_deref() == Some("f") {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(err("the restored server did not finish recovery in time"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
