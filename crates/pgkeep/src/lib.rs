//! pgkeep: application-consistent, verified backup and point-in-time recovery for PostgreSQL.
//!
//! The library never prints and never exits: commands return typed reports, [`run`] turns a
//! parsed command line into an [`Outcome`] (text, JSON, success), and `src/main.rs` renders it.
//! Layout (kept in docs/architecture.md): `repo` (storage, framing, manifests, catalog, locks),
//! `pg` (connections, backup session, data-directory rules, local instances), `backup`,
//! `archive`, `restore`, `report` (list, rpo), `wal` (wal verify, wal inspect), `command` (init,
//! check, demo).

pub mod archive;
pub mod backup;
pub mod cli;
pub mod command;
pub mod config;
pub mod error;
pub mod fsutil;
pub mod pg;
pub mod progress;
pub mod render;
pub mod repo;
pub mod report;
pub mod restore;
pub mod retention;
pub mod verify;
pub mod wal;

use std::sync::Arc;

pub use error::{Error, Result};

use cli::{Cli, Command};
use config::Config;
use pg::ConnParams;
use progress::Progress;
use repo::Repository;

/// What a command produced: the binary prints `json` with --json, else `text`.
pub struct Outcome {
    pub text: String,
    pub json: serde_json::Value,
    /// False when the command ran but found problems (check, archive-get of a missing file).
    pub ok: bool,
    /// Exit status when not ok (default 1).
    pub exit_code: u8,
}

impl Outcome {
    fn new<T: serde::Serialize>(report: &T, text: String, ok: bool) -> Outcome {
        Outcome {
            text,
            json: serde_json::to_value(report).unwrap_or(serde_json::Value::Null),
            ok,
            exit_code: if ok { 0 } else { 1 },
        }
    }
}

/// The machine's host name (for lock files and backup markers).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// Run one parsed command.
pub fn run(cli: &Cli, progress: Arc<dyn Progress>, rt: tokio::runtime::Handle) -> Result<Outcome> {
    let cfg = Config::load(&cli.global)?;
    // By value: the command arms below borrow it as they always did.
    let outcome = dispatch(cli, cfg.clone(), progress, rt.clone());
    if let Some(path) = &cfg.file.metrics_textfile {
        refresh_metrics(path, cli, &cfg, &outcome, rt);
    }
    outcome
}

fn dispatch(cli: &Cli, cfg: Config, progress: Arc<dyn Progress>, rt: tokio::runtime::Handle) -> Result<Outcome> {
    let conn = || ConnParams::resolve(cfg.pg.as_deref());
    let key = cfg.encryption_key_file.as_deref();
    let open_repo = || -> Result<Repository> { Repository::open(&cfg.repo_location()?, key, rt.clone()) };
    match &cli.command {
        Command::Init(_) => {
            let loc = cfg.repo_location()?;
            let c = conn()?;
            let r = command::init::init(&loc, Some(&c), cfg.pgdata.as_deref(), key, rt.clone())?;
            Ok(Outcome::new(&r, render::init(&r), true))
        }
        Command::Check(a) => {
            let loc = cfg.repo_location()?;
            let timeout = a.archive_timeout.map(std::time::Duration::from_secs).unwrap_or(cfg.archive_timeout);
            let r = command::check::check(&loc, key, &conn()?, cfg.pgdata.as_deref(), timeout, rt.clone());
            Ok(Outcome::new(&r, render::check(&r), r.ok))
        }
        Command::ArchivePush(a) => {
            let t = archive::Transport::from_config(&cfg);
            let r = if t.archive_async {
                archive::async_push::push_async(&t, &cfg.repo_location()?, open_repo, &a.path)?
            } else {
                archive::push(&open_repo()?, &a.path)?
            };
            Ok(Outcome::new(&r, render::push(&r), true))
        }
        Command::ArchiveGet(a) => {
            // The repository is opened only when the spool cannot serve the file.
            let t = archive::Transport::from_config(&cfg);
            let loc = cfg.repo_location()?;
            let pgdata = cfg.pgdata.as_deref();
            let r = archive::prefetch::get_prefetching(&t, &loc, pgdata, open_repo, &a.name, &a.dest, a.prefetch_only)?;
            let ok = !matches!(r, archive::GetOutcome::NotFound { .. });
            // Errors never get here: the binary maps them (and panics) to FATAL_EXIT.
            Ok(Outcome { exit_code: archive::NOT_FOUND_EXIT, ..Outcome::new(&r, render::get(&r), ok) })
        }
        Command::Backup(a) => {
            let repo = open_repo()?;
            let c = conn()?;
            let max_rate = match &a.max_rate {
                Some(s) => Some(config::parse_rate(s)?),
                None => cfg.max_rate,
            };
            let opts = backup::BackupOptions {
                label: a.label.clone(),
                jobs: a.jobs.unwrap_or(cfg.jobs).max(1),
                max_rate,
                archive_timeout: a.archive_timeout.map(std::time::Duration::from_secs).unwrap_or(cfg.archive_timeout),
                compress_level: a.compress_level.unwrap_or(cfg.compress_level),
                fast_checkpoint: !a.spread_checkpoint,
                backup_type: a
                    .backup_type
                    .or_else(|| cfg.file.backup.as_ref().and_then(|b| b.backup_type))
                    .unwrap_or_default(),
                incremental_by: a.incremental_by.unwrap_or_default(),
            };
            let snap = backup::snapshot::SnapshotConfig::from_file(&cfg.file);
            if a.finish {
                let r = backup::snapshot::run::finish_pending(&repo, &snap, true, opts.archive_timeout)?;
                let ok = r.iter().all(|f| f.state == "complete");
                return Ok(Outcome::new(&r, render::finished(&r), ok));
            }
            let inputs = backup::run::BackupInputs {
                repo: &repo,
                conn: &c,
                pgdata: cfg.pgdata.as_deref(),
                options: &opts,
                progress: progress.clone(),
            };
            let r = if snap.volumes.is_empty() || a.driver == Some(cli::DriverArg::Files) {
                if a.no_wait || a.stagger_snapshots.is_some() {
                    return Err(backup::snapshot::SnapshotError::Config(
                        "--no-wait and --stagger-snapshots apply to snapshot backups; hint: configure [[volume]]s in the config file".into(),
                    )
                    .into());
                }
                backup::run(inputs)?
            } else {
                if opts.backup_type != backup::BackupType::Full {
                    return Err(backup::snapshot::SnapshotError::Config(format!(
                        "--type {} applies to the files driver (a snapshot backup copies whole volumes); hint: add --driver files, or set [backup] type = \"full\"",
                        opts.backup_type.as_str()
                    ))
                    .into());
                }
                let sopts = backup::snapshot::run::SnapshotRunOptions {
                    stagger: a.stagger_snapshots.map(|s| std::time::Duration::from_secs_f64(s.max(0.0))),
                    no_wait: a.no_wait,
                };
                backup::snapshot::run::backup(inputs, &snap, &sopts)?
            };
            // A pending snapshot backup is not complete yet: expiring now could leave none.
            let pending = r.snapshot.as_ref().is_some_and(|s| s.state == "pending");
            let expire_after = cfg.file.backup.as_ref().is_some_and(|b| b.expire_after) && !pending;
            if !a.verify {
                let out = Outcome::new(&r, render::backup(&r), true);
                return if expire_after { run_expire_after(&repo, &cfg, &snap, &r.id, out) } else { Ok(out) };
            }
            // `backup --verify`: the restore drill right after the backup.
            let vopts = verify::VerifyOptions {
                jobs: opts.jobs,
                snapshot: snap.clone(),
                pg_bin: cfg.pg_bin_dir.clone(),
                ..Default::default()
            };
            let interrupt = verify::Interrupt::install(&rt);
            let d = verify::verify_backup(&repo, &r.id, &vopts, progress, &interrupt).map_err(|e| match e {
                Error::Verify(v @ verify::VerifyError::Interrupted { .. }) => Error::Verify(v),
                e => Error::other(format!("backup {} is complete, but its restore drill could not run: {e}", r.id)),
            })?;
            let mut json = serde_json::to_value(&r).unwrap_or(serde_json::Value::Null);
            json["verify"] = serde_json::to_value(&d).unwrap_or(serde_json::Value::Null);
            let text = format!("{}\n{}", render::backup(&r), render::verify(&d));
            let out = Outcome { text, json, ok: d.ok, exit_code: if d.ok { 0 } else { 1 } };
            if expire_after {
                return run_expire_after(&repo, &cfg, &snap, &r.id, out);
            }
            Ok(out)
        }
        Command::Restore(a) => {
            let repo = open_repo()?;
            let mut opts = restore_options(a, &cfg)?;
            let id =
                restore::plan::choose_backup_id(&repo, opts.backup.as_deref(), &opts.target, opts.timeline.as_deref())?;
            let manifest = repo.manifest(&id)?;
            // Restore starts no server, but binaries the operator named must fit the backup:
            // refused before anything is written.
            if let Some(dir) = &cfg.pg_bin_dir {
                pg::PgBin::for_major(manifest.pg_major, Some(dir), &format!("backup {id}"))?;
            }
            if manifest.snapshot_layout.is_some() {
                if a.to.is_some() {
                    return Err(backup::snapshot::SnapshotError::Config(format!(
                        "backup {id} is a snapshot backup ({}): it is restored by cloning its volumes, not into --to; hint: use --volume NAME=PATH to choose where each clone goes",
                        manifest.driver
                    ))
                    .into());
                }
                let snap = backup::snapshot::SnapshotConfig::from_file(&cfg.file);
                let mut volumes = Vec::new();
                for v in &a.volume {
                    volumes.push(restore::snapshot::parse_volume_arg(v)?);
                }
                let sopts = restore::snapshot::SnapshotRestoreOptions {
                    volumes,
                    availability_zone: a.availability_zone.clone(),
                    attach_to: a.attach_to.clone(),
                };
                let r = restore::snapshot::restore(&repo, &snap, &manifest, &opts, &sopts)?;
                return Ok(Outcome::new(&r, render::snapshot_restore(&r), true));
            }
            if a.to.is_none() || !a.volume.is_empty() {
                return Err(config::ConfigError::Invalid(format!(
                    "backup {id} is a files backup: pass --to DIR (an empty directory){}",
                    if a.volume.is_empty() { "" } else { "; --volume applies to snapshot backups only" }
                ))
                .into());
            }
            opts.backup = Some(id);
            if a.delta {
                let r = restore::delta::restore(&repo, &opts, progress)?;
                return Ok(Outcome::new(&r, render::delta_restore(&r), true));
            }
            let plan = restore::RestorePlan::build(&repo, &opts)?;
            let r = plan.run(&repo, progress)?;
            Ok(Outcome::new(&r, render::restore(&r), true))
        }
        Command::List(_) => {
            let repo = open_repo()?;
            // Pending snapshot backups whose snapshots completed are committed now.
            let snap = backup::snapshot::SnapshotConfig::from_file(&cfg.file);
            if let Err(e) = backup::snapshot::run::finish_pending(&repo, &snap, false, cfg.archive_timeout) {
                tracing::warn!("could not refresh pending snapshot backups: {e}");
            }
            let r = report::list::list(&repo, cfg.file.retention.as_ref())?;
            Ok(Outcome::new(&r, render::list(&r), true))
        }
        Command::Verify(a) => verify_command(cli, a, &cfg, progress, rt),
        Command::Expire(a) => {
            let repo = open_repo()?;
            let snap = backup::snapshot::SnapshotConfig::from_file(&cfg.file);
            if let Some(id) = &a.backup {
                let r = retention::run::expire_one(&repo, &snap, cfg.file.retention.as_ref(), id, a.force)?;
                return Ok(Outcome::new(&r, render::expire(&r), true));
            }
            let policy = retention::run::policy(cfg.file.retention.as_ref())?;
            let r = retention::run::expire(&repo, &snap, policy, a.dry_run)?;
            Ok(Outcome::new(&r, render::expire_policy(&r), r.failed.is_empty()))
        }
        Command::Pin(a) => {
            let r = retention::pins::pin(&open_repo()?, &a.id)?;
            Ok(Outcome::new(&r, format!("backup {} pinned: expire keeps it and its WAL", r.backup), true))
        }
        Command::Unpin(a) => {
            let r = retention::pins::unpin(&open_repo()?, &a.id)?;
            Ok(Outcome::new(&r, format!("backup {} unpinned: the [retention] policy decides again", r.backup), true))
        }
        Command::Demo(a) => {
            let r = command::demo::demo(a, cfg.pg_bin_dir.as_deref(), progress, rt.clone())?;
            Ok(Outcome::new(&r, render::demo(&r), r.ok))
        }
        Command::Key(cli::KeyCommand::Rotate(a)) => {
            let r = command::key::rotate(&open_repo()?, &a.new_key_file)?;
            Ok(Outcome::new(&r, render::key_rotate(&r), true))
        }
        Command::Wal(cli::WalCommand::Verify(_)) => {
            let r = wal::verify::verify(&open_repo()?)?;
            Ok(Outcome::new(&r, wal::verify::render(&r), r.ok))
        }
        Command::Wal(cli::WalCommand::Inspect(a)) => {
            let pgdata = match &a.dir {
                Some(d) => d.clone(),
                None => cfg.require_pgdata()?.to_path_buf(),
            };
            let repo = cfg.repo.as_ref().map(|_| open_repo());
            let source = match &repo {
                None => wal::inspect::ArchiveSource::None,
                Some(Ok(r)) => wal::inspect::ArchiveSource::Repo(r),
                Some(Err(e)) => wal::inspect::ArchiveSource::Unavailable {
                    location: cfg.repo.clone().unwrap_or_default(),
                    why: e.to_string(),
                },
            };
            let r = wal::inspect::inspect(&pgdata, source)?;
            Ok(Outcome::new(&r, wal::inspect::render(&r), r.ok))
        }
        Command::Rpo(_) => {
            let repo = cfg.repo.as_ref().map(|_| open_repo());
            let source = match &repo {
                None => report::rpo::RepoSource::None,
                Some(Ok(r)) => report::rpo::RepoSource::Repo(r),
                Some(Err(e)) => report::rpo::RepoSource::Unavailable {
                    location: cfg.repo.clone().unwrap_or_default(),
                    why: e.to_string(),
                },
            };
            let r = report::rpo::rpo(&conn()?, source, &rt)?;
            Ok(Outcome::new(&r, report::rpo::render(&r), r.ok))
        }
        Command::Metrics(_) => {
            let repo = open_repo()?;
            let mut families = report::metrics::repository(&repo, chrono::Utc::now())?;
            let server = conn()
                .map_err(Error::from)
                .and_then(|c| report::rpo::rpo(&c, report::rpo::RepoSource::Repo(&repo), &rt));
            families.extend(report::metrics::server(server.as_ref().ok(), &repo));
            if let Err(e) = &server {
                tracing::info!("no server figures: {e}");
            }
            if let Some(path) = &cfg.file.metrics_textfile {
                families.extend(report::metrics::archive_push_from_textfile(path, &repo.location().to_string()));
            }
            families.retain(|f| !f.samples.is_empty());
            Ok(Outcome::new(&families, report::metrics::render(&families), true))
        }
        Command::Generate(g) => {
            let r = match g {
                cli::GenerateCommand::Man { dir } => command::generate::man(dir)?,
                cli::GenerateCommand::Completions { shell, dir } => command::generate::completions(*shell, dir)?,
            };
            let text = r.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join("\n");
            Ok(Outcome::new(&r, text, true))
        }
    }
}

/// `metrics_textfile`: after the commands whose figures it carries, refresh it. A failure is
/// a warning: the command's own work is done and must not be reported as failed.
fn refresh_metrics(
    path: &std::path::Path,
    cli: &Cli,
    cfg: &Config,
    outcome: &Result<Outcome>,
    rt: tokio::runtime::Handle,
) {
    use report::metrics::{self, Refresh};
    let refresh = match (&cli.command, outcome) {
        // Every run counts, failed ones too; and no repository listing on this hot path.
        (Command::ArchivePush(a), _) => match cfg.repo_location() {
            Ok(loc) => Refresh::ArchivePush { repo: loc.to_string(), wal_file: &a.path, ok: outcome.is_ok() },
            Err(_) => return,
        },
        (Command::Backup(_) | Command::Verify(_) | Command::Expire(_) | Command::Rpo(_), Ok(out))
            if cfg.repo.is_some() =>
        {
            let families = cfg
                .repo_location()
                .and_then(|loc| Repository::open(&loc, cfg.encryption_key_file.as_deref(), rt))
                .and_then(|repo| {
                    let mut f = metrics::repository(&repo, chrono::Utc::now())?;
                    if matches!(cli.command, Command::Rpo(_)) {
                        f.extend(metrics::rpo_from_json(&out.json, &repo));
                    }
                    Ok(f)
                });
            match families {
                Ok(f) => Refresh::Families(f),
                Err(e) => {
                    tracing::warn!("metrics textfile {} not refreshed: {e}", path.display());
                    return;
                }
            }
        }
        _ => return,
    };
    if let Err(e) = metrics::refresh_textfile(path, refresh) {
        tracing::warn!("{e}");
    }
}

/// `backup.expire_after = true`: the policy runs after the backup succeeded; its report is
/// the backup's `expire` field (a failed drill does not stop it: the policy decides).
fn run_expire_after(
    repo: &Repository,
    cfg: &Config,
    snap: &backup::snapshot::SnapshotConfig,
    id: &str,
    mut out: Outcome,
) -> Result<Outcome> {
    let failed = |e: Error| Error::other(format!("backup {id} is complete, but backup.expire_after failed: {e}"));
    let policy = retention::run::policy(cfg.file.retention.as_ref()).map_err(failed)?;
    let x = retention::run::expire(repo, snap, policy, false).map_err(failed)?;
    out.json["expire"] = serde_json::to_value(&x).unwrap_or(serde_json::Value::Null);
    out.text = format!("{}\n{}", out.text, render::expire_policy(&x));
    if !x.failed.is_empty() {
        out.ok = false;
        out.exit_code = 1;
    }
    Ok(out)
}

/// `pgkeep verify`: a backup (ID, `latest`, `all`), or with an explicit `--pgdata` and no
/// backup named, a copy of a data directory.
fn verify_command(
    cli: &Cli,
    a: &cli::VerifyArgs,
    cfg: &Config,
    progress: Arc<dyn Progress>,
    rt: tokio::runtime::Handle,
) -> Result<Outcome> {
    let opts = verify::VerifyOptions {
        target_time: a.target_time.as_deref().map(restore::target::parse_time).transpose()?,
        asserts: a.assert.clone(),
        dump: a.dump.clone(),
        memory_mb: verify::parse_memory(&a.memory)?,
        jobs: a.jobs.unwrap_or(cfg.jobs).max(1),
        scratch: a.scratch.clone(),
        snapshot: backup::snapshot::SnapshotConfig::from_file(&cfg.file),
        pg_bin: cfg.pg_bin_dir.clone(),
        ..Default::default()
    };
    let pgdata_mode = a.backup.is_none() && (cli.global.pgdata_on_command_line || a.wal_dir.is_some());
    let interrupt = verify::Interrupt::install(&rt);
    if pgdata_mode {
        let dir = cfg.require_pgdata()?;
        let r = verify::verify_pgdata(dir, a.wal_dir.as_deref(), &opts, progress, rt.clone(), &interrupt)?;
        return Ok(Outcome::new(&r, render::verify(&r), r.ok));
    }
    let repo = Repository::open(&cfg.repo_location()?, cfg.encryption_key_file.as_deref(), rt.clone())?;
    let reports = verify::verify_backups(&repo, a.backup.as_deref(), &opts, progress, &interrupt)?;
    let ok = reports.iter().all(|r| r.ok);
    if a.backup.as_deref() == Some("all") {
        Ok(Outcome::new(&reports, verify::report::render_all(&reports), ok))
    } else {
        let r = reports.into_iter().next().ok_or_else(|| Error::other("no backup was verified"))?;
        Ok(Outcome::new(&r, render::verify(&r), ok))
    }
}

fn restore_options(a: &cli::RestoreArgs, cfg: &Config) -> Result<restore::RestoreOptions> {
    use restore::target::{parse_lsn, parse_time, parse_timeline, parse_xid};
    use restore::{RecoveryTarget, TargetAction};
    let target = if let Some(t) = &a.target_time {
        RecoveryTarget::Time(parse_time(t)?)
    } else if let Some(l) = &a.target_lsn {
        RecoveryTarget::Lsn(parse_lsn(l)?)
    } else if let Some(x) = &a.target_xid {
        RecoveryTarget::Xid(parse_xid(x)?)
    } else if let Some(n) = &a.target_name {
        RecoveryTarget::Name(n.clone())
    } else if a.target.is_some() {
        RecoveryTarget::Immediate
    } else {
        RecoveryTarget::End
    };
    let action = a.target_action.map(|t| match t {
        cli::TargetActionArg::Pause => TargetAction::Pause,
        cli::TargetActionArg::Promote => TargetAction::Promote,
        cli::TargetActionArg::Shutdown => TargetAction::Shutdown,
    });
    let mut map = Vec::new();
    for m in &a.tablespace_map {
        map.push(restore::plan::parse_tablespace_map(m)?);
    }
    Ok(restore::RestoreOptions {
        to: a.to.clone().unwrap_or_default(),
        backup: a.backup.clone(),
        target,
        action,
        inclusive: !a.target_exclusive,
        timeline: a.target_timeline.as_deref().map(parse_timeline).transpose()?,
        tablespace_map: map,
        jobs: a.jobs.unwrap_or(cfg.jobs).max(1),
        archive_mode: match a.archive_mode {
            cli::ArchiveModeArg::Off => restore::recovery::ArchiveMode::Off,
            cli::ArchiveModeArg::Preserve => restore::recovery::ArchiveMode::Preserve,
        },
    })
}
