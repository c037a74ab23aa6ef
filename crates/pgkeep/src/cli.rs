//! Command-line definitions. The doc comments are the `--help` text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Application-consistent, verified backup and point-in-time recovery for PostgreSQL.
///
/// Connection: libpq environment (PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD) or --pg.
/// Repository: --repo or PGKEEP_REPO. Data directory: --pgdata or PGDATA. Everything can also
/// live in a TOML config file (--config, PGKEEP_CONFIG, or /etc/pgkeep/pgkeep.toml).
/// Flags beat environment beat file.
#[derive(Debug, Parser)]
#[command(name = "pgkeep", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args, Default)]
pub struct GlobalArgs {
    /// TOML configuration file.
    #[arg(long, global = true, env = "PGKEEP_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Repository: a local path, s3://BUCKET/PREFIX, az://CONTAINER/PREFIX or gs://BUCKET/PREFIX.
    #[arg(long, global = true, env = "PGKEEP_REPO", value_name = "REPO")]
    pub repo: Option<String>,
    /// Key file of an encrypted repository: 32 random bytes, readable by its owner only
    /// (`head -c 32 /dev/urandom > FILE; chmod 600 FILE`). With `init`: encrypt the new
    /// repository.
    #[arg(long, global = true, env = "PGKEEP_ENCRYPTION_KEY_FILE", value_name = "FILE")]
    pub encryption_key_file: Option<PathBuf>,
    /// libpq connection string or URI (e.g. "host=/var/run/postgresql user=postgres").
    #[arg(long, global = true, value_name = "CONNINFO")]
    pub pg: Option<String>,
    /// The cluster's data directory.
    #[arg(long, global = true, env = "PGDATA", value_name = "DIR")]
    pub pgdata: Option<PathBuf>,
    /// PostgreSQL server binaries (initdb, pg_ctl, postgres) for servers pgkeep starts
    /// (verify, demo); they must be of the backup's or the copy's major. Default: Debian's
    /// /usr/lib/postgresql/<major>/bin, /opt/pgkeep-pg/<major>/bin, or `pg_config --bindir`
    /// when it reports that major.
    #[arg(long = "pg-bin", global = true, env = "PGKEEP_PG_BINDIR", value_name = "DIR")]
    pub pg_bin: Option<PathBuf>,
    /// Machine-readable JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// More detail on stderr (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Set by the binary: --pgdata was typed on the command line (not taken from PGDATA or
    /// the config file). `verify` drills a data directory only when asked this explicitly.
    #[arg(skip)]
    pub pgdata_on_command_line: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the repository and bind it to this cluster's system identifier.
    Init(InitArgs),
    /// Check settings, connectivity and a WAL archive round-trip; one line per problem.
    Check(CheckArgs),
    /// Archive one WAL file (for archive_command = 'pgkeep archive-push %p').
    ArchivePush(ArchivePushArgs),
    /// Fetch one WAL file from the archive (for restore_command = 'pgkeep archive-get %f "%p"').
    ArchiveGet(ArchiveGetArgs),
    /// Take a backup (files driver by default).
    Backup(BackupArgs),
    /// Restore a backup into an empty directory, optionally to a point in time.
    Restore(RestoreArgs),
    /// List backups with their LSNs, times, sizes and state (commits finished pending snapshot backups).
    List(ListArgs),
    /// Restore drill: prove a backup (or, with --pgdata, any copy of a data directory)
    /// restores clean — amcheck, full read, duplicate keys, page LSNs, assertions.
    Verify(VerifyArgs),
    /// Apply the [retention] policy: delete the backups (with their snapshots) and the WAL it
    /// does not keep; or, with --backup, delete one backup.
    Expire(ExpireArgs),
    /// Keep a backup (and the WAL it needs) whatever the [retention] policy says.
    Pin(PinArgs),
    /// Let the [retention] policy decide about a pinned backup again.
    Unpin(PinArgs),
    /// The whole story on a throw-away cluster: load, back up under writes, restore to a point in time.
    Demo(DemoArgs),
    /// WAL integrity and forensics: check the archive, inspect a data directory's WAL.
    #[command(subcommand)]
    Wal(WalCommand),
    /// Encryption keys of an encrypted repository.
    #[command(subcommand)]
    Key(KeyCommand),
    /// How much a failure could cost now: checkpoint interval, archive lag, backup ages, worst-case loss.
    Rpo(RpoArgs),
    /// Prometheus metrics (text format) of the repository and, when it answers, the server
    /// (docs/metrics.md); `metrics_textfile` in the config file keeps a file of them fresh.
    Metrics(MetricsArgs),
    /// Man pages and shell completions from these definitions (for packaging).
    #[command(subcommand, hide = true)]
    Generate(GenerateCommand),
}

#[derive(Debug, Args)]
pub struct MetricsArgs {}

#[derive(Debug, Subcommand)]
pub enum GenerateCommand {
    /// Write pgkeep.1 and one page per subcommand (pgkeep-backup.1, …) into DIR.
    Man {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// Write the completion script for SHELL into DIR.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum WalCommand {
    /// Check the archive: no gap per timeline from the oldest backup on, every record of every
    /// segment valid, each backup's WAL present. Exit 1 naming every missing or damaged file.
    Verify(WalVerifyArgs),
    /// For a cluster that will not start: read pg_control and pg_wal (no server needed), name
    /// the damaged segments, the commits at risk, and whether the archive has intact copies.
    /// Exit 0 only when nothing is damaged.
    Inspect(WalInspectArgs),
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Rewrap the repository's data key under a new key file (the current one comes from
    /// --encryption-key-file); no data is rewritten, and afterwards only the new key opens
    /// the repository.
    Rotate(KeyRotateArgs),
}

#[derive(Debug, Args)]
pub struct KeyRotateArgs {
    /// The new key file (32 random bytes, mode 0600 or 0400).
    #[arg(long, value_name = "FILE")]
    pub new_key_file: PathBuf,
}

#[derive(Debug, Args)]
pub struct WalVerifyArgs {}

#[derive(Debug, Args)]
pub struct WalInspectArgs {
    /// Data directory (default: --pgdata, PGDATA or the config file).
    #[arg(value_name = "PGDATA")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RpoArgs {}

#[derive(Debug, Args)]
pub struct InitArgs {}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Seconds to wait for a switched WAL segment to arrive in the archive.
    #[arg(long, value_name = "SECONDS")]
    pub archive_timeout: Option<u64>,
}

#[derive(Debug, Args)]
pub struct ArchivePushArgs {
    /// Path of the WAL file (%p); relative paths are resolved against the current directory.
    pub path: PathBuf,
}

#[derive(Debug, Args)]
pub struct ArchiveGetArgs {
    /// WAL file name (%f), e.g. 000000010000000000000003 or 00000002.history.
    pub name: String,
    /// Where to write it (%p).
    pub dest: PathBuf,
    /// Internal: only fill the prefetch spool with the segments after NAME (the detached
    /// process archive-get starts while PostgreSQL replays).
    #[arg(long, hide = true)]
    pub prefetch_only: bool,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Parallel file workers (default: number of cores).
    #[arg(long, short = 'j', value_name = "N")]
    pub jobs: Option<usize>,
    /// Label passed to pg_backup_start.
    #[arg(long)]
    pub label: Option<String>,
    /// Limit the read rate, e.g. 50M or 1G (bytes per second, suffixes K, M, G).
    #[arg(long, value_name = "RATE")]
    pub max_rate: Option<String>,
    /// Seconds to wait for the WAL of the backup to be archived.
    #[arg(long, value_name = "SECONDS")]
    pub archive_timeout: Option<u64>,
    /// zstd level for data objects (1 = fastest).
    #[arg(long, value_name = "LEVEL")]
    pub compress_level: Option<i32>,
    /// Let the starting checkpoint spread out instead of forcing it now.
    #[arg(long)]
    pub spread_checkpoint: bool,
    /// full (default, or the config's `[backup] type`), incr (only the blocks changed since the
    /// newest complete backup) or diff (since the newest full). Files driver only.
    #[arg(long = "type", value_enum, value_name = "TYPE")]
    pub backup_type: Option<crate::backup::BackupType>,
    /// How incr/diff find changed blocks: wal (block references in the archived WAL, files it
    /// cannot vouch for read whole) or checksum (every block read, kept when its page LSN is
    /// newer than the reference's start).
    #[arg(long, value_enum, value_name = "HOW")]
    pub incremental_by: Option<crate::backup::IncrementalBy>,
    /// Backup driver: files copies PGDATA through pgkeep (also when snapshot volumes are
    /// configured; without this flag, configured [[volume]]s mean a snapshot backup).
    #[arg(long, value_enum)]
    pub driver: Option<DriverArg>,
    /// Run a restore drill on the new backup right away (`pgkeep verify ID`); the exit status
    /// is 0 only when it passes.
    #[arg(long)]
    pub verify: bool,
    /// Snapshot backups: do not wait for snapshots to complete; the backup is listed as
    /// `pending` and committed later by `pgkeep list` or `pgkeep backup --finish`.
    #[arg(long)]
    pub no_wait: bool,
    /// Finish pending snapshot backups (wait for their snapshots, then commit) instead of
    /// taking a new backup.
    #[arg(long, conflicts_with_all = ["no_wait", "driver"])]
    pub finish: bool,
    /// Test knob: seconds to wait between volume snapshots.
    #[arg(long, hide = true, value_name = "SECONDS")]
    pub stagger_snapshots: Option<f64>,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum DriverArg {
    Files,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Target data directory; must be absent or empty unless --delta (files backups; snapshot
    /// backups are cloned volume by volume, see --volume).
    #[arg(long, value_name = "DIR")]
    pub to: Option<PathBuf>,
    /// Snapshot backups: clone volume NAME to PATH (repeatable; default: beside the original,
    /// suffixed with the backup id; reflink: PATH is the clone image).
    #[arg(long = "volume", value_name = "NAME=PATH")]
    pub volume: Vec<String>,
    /// EBS snapshot backups: availability zone for the new volumes (or [ebs] availability_zone).
    #[arg(long, value_name = "AZ")]
    pub availability_zone: Option<String>,
    /// EBS snapshot backups: attach the new volumes to this instance at the recorded device
    /// names, then run the post-attach hook.
    #[arg(long, value_name = "INSTANCE_ID")]
    pub attach_to: Option<String>,
    /// Backup id, or `latest` (default: the newest backup that can reach the target).
    #[arg(long, value_name = "ID")]
    pub backup: Option<String>,
    /// Recover up to this time (e.g. "2026-11-21 10:15:00+00"); without a zone, local time.
    #[arg(long, value_name = "TIME", group = "target_kind")]
    pub target_time: Option<String>,
    /// Recover up to this WAL location (X/Y).
    #[arg(long, value_name = "LSN", group = "target_kind")]
    pub target_lsn: Option<String>,
    /// Recover up to this transaction id.
    #[arg(long, value_name = "XID", group = "target_kind")]
    pub target_xid: Option<String>,
    /// Recover up to this restore point (pg_create_restore_point).
    #[arg(long, value_name = "NAME", group = "target_kind")]
    pub target_name: Option<String>,
    /// `immediate`: stop as soon as the backup is consistent.
    #[arg(long, value_enum, group = "target_kind")]
    pub target: Option<TargetArg>,
    /// What the server does at the target (PostgreSQL's default: pause).
    #[arg(long, value_enum)]
    pub target_action: Option<TargetActionArg>,
    /// Stop just before the target instead of just after it.
    #[arg(long)]
    pub target_exclusive: bool,
    /// Timeline to recover along (`latest`, `current` or a number).
    #[arg(long, value_name = "TLI")]
    pub target_timeline: Option<String>,
    /// `off` (default): write archive_mode = 'off' into the copy's postgresql.auto.conf, so it
    /// cannot archive into the source's repository; `preserve`: keep the source's archiving
    /// (for a restore that becomes the new primary).
    #[arg(long, value_enum, default_value = "off")]
    pub archive_mode: ArchiveModeArg,
    /// Restore tablespace OID into DIR instead of its original location (repeatable).
    #[arg(long = "tablespace-map", value_name = "OID=DIR")]
    pub tablespace_map: Vec<String>,
    /// Parallel file workers (default: number of cores).
    #[arg(long, short = 'j', value_name = "N")]
    pub jobs: Option<usize>,
    /// --to names an existing, stopped data directory of the same cluster (a copy to refresh,
    /// a former primary to rewind): write only the blocks and files that differ from the
    /// backup and remove what it does not have.
    #[arg(long)]
    pub delta: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum ArchiveModeArg {
    Off,
    Preserve,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum TargetArg {
    Immediate,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetActionArg {
    Pause,
    Promote,
    Shutdown,
}

#[derive(Debug, Args)]
pub struct ListArgs {}

/// `pgkeep verify [ID|latest|all]`, or `pgkeep verify --pgdata DIR [--wal-dir DIR]`.
///
/// Restores the backup into a scratch directory (recovering to its consistency point, or to
/// --target-time, with the archive), starts a private PostgreSQL on it (Unix socket in the
/// scratch directory only, no archiving), and checks every database: amcheck on every btree
/// index and every table, every row read, duplicate keys, page LSNs beyond the end of WAL,
/// transaction IDs beyond the next one, and each --assert query. Stores the verdict with the
/// backup (`pgkeep list` shows it). Exit status 0 only when every check passed.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Backup id, `latest` (the default) or `all`. Without it, an explicit global --pgdata DIR
    /// verifies that copy of a data directory instead (never modified: the drill works on a
    /// reflink clone or a copy).
    #[arg(value_name = "ID|latest|all")]
    pub backup: Option<String>,
    /// SQL file whose statements must each return true (`\connect DB` lines switch database;
    /// default postgres). Repeatable.
    #[arg(long = "assert", value_name = "FILE.sql")]
    pub assert: Vec<PathBuf>,
    /// Write a logical dump of every database (pg_dump -Fc) and the globals here, taken from
    /// the drill's copy (`verify all`: one subdirectory per backup).
    #[arg(long, value_name = "DIR")]
    pub dump: Option<PathBuf>,
    /// Recover to this time instead of the backup's consistency point (picks the newest
    /// backup that ended before it unless an ID is given).
    #[arg(long, value_name = "TIME")]
    pub target_time: Option<String>,
    /// With --pgdata: take pg_wal from this directory (a WAL volume copied separately).
    #[arg(long, value_name = "DIR")]
    pub wal_dir: Option<PathBuf>,
    /// Memory for the drill's PostgreSQL (shared buffers plus the checking sessions), e.g.
    /// 256 (MB), 512M, 1G.
    #[arg(long, value_name = "SIZE", default_value = "256")]
    pub memory: String,
    /// Checks run in parallel (default: number of cores).
    #[arg(long, short = 'j', value_name = "N")]
    pub jobs: Option<usize>,
    /// Parent directory for the scratch copy (default: TMPDIR; for --pgdata, the copy's
    /// parent directory first, so reflink clones work). Snapshot backups are cloned beside
    /// their volumes instead (`<volume>.pgkeep-verify-<id>-<pid>`, removed afterwards).
    #[arg(long, value_name = "DIR")]
    pub scratch: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ExpireArgs {
    /// Delete this one backup (snapshot backups: its snapshots too) instead of applying the
    /// policy.
    #[arg(long, value_name = "ID")]
    pub backup: Option<String>,
    /// With --backup: delete the last backup the policy keeps, or a pinned one; or a damaged
    /// snapshot backup (its manifest unreadable, so its snapshots unknown) after you deleted
    /// its snapshots by hand.
    #[arg(long, requires = "backup")]
    pub force: bool,
    /// Print what the policy would delete (the same plan a run executes), delete nothing.
    #[arg(long, conflicts_with = "backup")]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct PinArgs {
    /// Backup id (`pgkeep list` shows them).
    #[arg(value_name = "ID")]
    pub id: String,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the demo's directory (clusters stopped) for inspection.
    #[arg(long)]
    pub keep: bool,
    /// Seconds of write load during the backup.
    #[arg(long, default_value_t = 3)]
    pub load_seconds: u64,
}
