//! The reflink driver (acceptance 3). Needs root: an XFS file system with reflink=1 is
//! loop-mounted, and the volumes are ext4 image files on it, themselves loop-mounted.

use std::path::PathBuf;
use std::time::Instant;

use pgkeep_testkit::Load;

use crate::common::env;
use crate::snapshot_util::{assert_clean_restore, reflink_images_setup};

/// Acceptance 3 (root): PGDATA and pg_wal on two image files (ext4 inside) stored on a
/// loop-mounted XFS with reflink=1; a backup under load with the snapshots (FICLONE copies of
/// the images) 2 s apart; restore clones the images again and loop-mounts the clones; the
/// copy starts and passes amcheck with exactly the committed rows.
#[test]
fn snapshot_reflink_root_images_on_xfs_round_trip() {
    let began = Instant::now();
    let env = env();
    let (s, outer) = reflink_images_setup(env, 2048);
    s.events_table(None);
    s.pg.pgbench(&["-i", "-s", "1", "-q"]);
    let load = Load::inserts_and_deletes(&s.pg, &s.env.rt, "events", 4);
    load.wait_for(200);
    let b = s.pgkeep(["backup", "--stagger-snapshots", "2"]).json();
    load.wait_for(load.committed() + 200);
    let log = load.stop();
    s.pg.switch_and_wait_archived(&s.repo);

    let snap = &b["snapshot"];
    assert_eq!(snap["state"], "complete");
    assert!(snap["snapshot_spread_seconds"].as_f64().unwrap() >= 2.0, "{b}");
    assert_eq!(snap["layout"]["pgdata"]["volume"], "data");
    assert_eq!(snap["layout"]["pg_wal"]["volume"], "wal");
    for v in snap["snapshots"].as_array().unwrap() {
        let p = PathBuf::from(v["snapshot_id"].as_str().unwrap());
        assert!(p.starts_with(&outer) && p.is_file(), "snapshot {} must be an image on the XFS", p.display());
        assert_eq!(v["detail"]["fstype"], "ext4");
    }
    let id = b["id"].as_str().unwrap().to_string();
    let r = s.pgkeep(["restore", "--backup", &id]).json();
    let pgdata = PathBuf::from(r["pgdata"].as_str().expect("pgdata"));
    let data_mnt = s.env.path(&format!("data-{id}"));
    assert_eq!(pgdata, data_mnt.join("pgdata"));
    assert!(outer.join(format!("data-{id}.img")).is_file());
    assert_eq!(std::fs::read_link(pgdata.join("pg_wal")).unwrap(), s.env.path(&format!("wal-{id}")).join("pg_wal"));
    let restored = s.start_restored("restored", &pgdata);
    assert_clean_restore(&restored, &log);
    eprintln!(
        "reflink snapshot backup {id}: window {:.3}s, spread {:.3}s; test took {:.1}s",
        b["backup_window_seconds"].as_f64().unwrap(),
        snap["snapshot_spread_seconds"].as_f64().unwrap(),
        began.elapsed().as_secs_f64()
    );
    drop(restored);

    // Expire deletes the snapshot images.
    let e = s.pgkeep(["expire", "--backup", &id]).json();
    assert_eq!(e["deleted_snapshots"].as_array().unwrap().len(), 2);
    for v in snap["snapshots"].as_array().unwrap() {
        assert!(!PathBuf::from(v["snapshot_id"].as_str().unwrap()).exists());
    }
    assert!(s.pgkeep(["list"]).json().as_array().unwrap().is_empty());
}
