//! Loop-mounted file systems for snapshot tests (root only): btrfs with subvolumes, XFS with
//! reflink=1, ext4 inside image files. Everything mounted below a test's directory is
//! unmounted when the [`Mounts`] guard drops — also when the test failed — deepest first;
//! `mount -o loop` sets autoclear, so the loop devices go with their mounts.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::cluster::{ClusterOptions, TestCluster};
use crate::env::TestEnv;

/// Panic with a clear message unless running as root (these tests must never pass silently).
pub fn require_root(what: &str) {
    if !pgkeep::fsutil::running_as_root() {
        panic!("{what} needs root (loop devices, mount, btrfs/xfs tools); run the test suite as root, as CI does");
    }
}

fn run(prog: &str, args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(prog).args(args).output().unwrap_or_else(|e| panic!("cannot run {prog}: {e}"));
    assert!(
        out.status.success(),
        "{prog} {:?} failed: {}{}",
        args,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Unmounts everything mounted below `root` on drop.
pub struct Mounts {
    root: PathBuf,
}

impl Mounts {
    pub fn new(env: &TestEnv) -> Mounts {
        require_root("a loop-mounted volume");
        Mounts { root: std::fs::canonicalize(env.root()).expect("canonical test root") }
    }

    /// A sparse image file of `size_mb`, formatted with `fstype` ("btrfs", "xfs-reflink",
    /// "xfs", "ext4"), loop-mounted at `mount` (created).
    pub fn loop_fs(&self, image: &Path, mount: &Path, fstype: &str, size_mb: u64) -> PathBuf {
        let f = std::fs::File::create(image).expect("create image");
        f.set_len(size_mb * 1024 * 1024).expect("size image");
        drop(f);
        let img = image.as_os_str();
        match fstype {
            "btrfs" => run("mkfs.btrfs", &["-q".as_ref(), "-f".as_ref(), img]),
            "xfs-reflink" => run("mkfs.xfs", &["-q".as_ref(), "-f".as_ref(), "-m".as_ref(), "reflink=1".as_ref(), img]),
            "xfs" => run("mkfs.xfs", &["-q".as_ref(), "-f".as_ref(), img]),
            "ext4" => run("mkfs.ext4", &["-q".as_ref(), "-F".as_ref(), img]),
            other => panic!("unknown fstype {other}"),
        };
        std::fs::create_dir_all(mount).expect("mkdir mount point");
        run("mount", &["-o".as_ref(), "loop".as_ref(), img, mount.as_os_str()]);
        std::fs::canonicalize(mount).expect("canonical mount")
    }

    /// `btrfs subvolume create`, handed to the server's OS user.
    pub fn subvolume(&self, env: &TestEnv, path: &Path) -> PathBuf {
        run("btrfs", &["subvolume".as_ref(), "create".as_ref(), path.as_os_str()]);
        pgkeep::fsutil::set_mode(path, 0o700).expect("chmod subvolume");
        env.chown(path);
        path.to_path_buf()
    }

    /// Mount points below the test root, newest first (so nested mounts go before the
    /// file systems that hold their images).
    pub fn mounted(&self) -> Vec<PathBuf> {
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut v: Vec<PathBuf> = text
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(|m| PathBuf::from(m.replace("\\040", " ")))
            .filter(|m| m.starts_with(&self.root) && m != &self.root)
            .collect();
        v.reverse();
        v
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        for attempt in 0..5 {
            let m = self.mounted();
            if m.is_empty() {
                return;
            }
            for p in m {
                // A frozen file system cannot be unmounted: thaw first (fails harmlessly if not frozen).
                let _ = Command::new("fsfreeze").arg("--unfreeze").arg(&p).output();
                let mut cmd = Command::new("umount");
                if attempt == 4 {
                    cmd.arg("-l");
                }
                let _ = cmd.arg(&p).output();
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A cluster whose data directory is `pgdata` (created, owned by the server user), with
/// pg_wal moved to `waldir` (a symlink, like `initdb -X`) when given. Not started.
pub fn cluster_at(
    env: &TestEnv,
    name: &str,
    pgdata: &Path,
    waldir: Option<&Path>,
    opts: ClusterOptions,
) -> TestCluster {
    std::fs::create_dir_all(pgdata).expect("mkdir pgdata");
    pgkeep::fsutil::set_mode(pgdata, 0o700).expect("chmod pgdata");
    env.chown(pgdata);
    let c = TestCluster::create_at(env, name, pgdata, opts);
    if let Some(w) = waldir {
        std::fs::create_dir_all(w).expect("mkdir waldir");
        let wal = pgdata.join("pg_wal");
        for e in std::fs::read_dir(&wal).expect("read pg_wal").flatten() {
            let to = w.join(e.file_name());
            let st = Command::new("mv").arg(e.path()).arg(&to).status().expect("mv");
            assert!(st.success(), "mv {} {}", e.path().display(), to.display());
        }
        std::fs::remove_dir(&wal).expect("rmdir pg_wal");
        std::os::unix::fs::symlink(w, &wal).expect("symlink pg_wal");
        pgkeep::fsutil::set_mode(w, 0o700).expect("chmod waldir");
        env.chown(w);
        if let Some(o) = &env.owner {
            let _ = pgkeep::fsutil::chown(&wal, o.uid, o.gid);
        }
    }
    c
}
