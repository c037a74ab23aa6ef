//! The EBS driver against moto_server (acceptance 4). moto checks the API calls (it marks
//! snapshots completed at once; pending paths are tested with the command driver). The
//! volumes' "mount points" are plain directories here: pgkeep maps PostgreSQL's paths onto
//! volumes by path. Needs the moto venv that scripts/setup.sh creates (not root).

use std::path::Path;

use pgkeep_testkit::MotoServer;
use serde_json::Value;

use crate::common::env;
use crate::snapshot_util::{backup_history_label, failed_backup_id, listed, pgkeep_sessions, SnapSetup};

pub fn ebs_config(vols: &[(&str, &str, &Path)], extra: &str) -> String {
    let mut t = String::from(extra);
    for (name, id, path) in vols {
        t.push_str(&format!(
            "\n[[volume]]\nname = \"{name}\"\ndriver = \"ebs\"\nvolume_id = \"{id}\"\npath = \"{}\"\n",
            path.display()
        ));
    }
    t
}

pub fn with_aws(mut c: pgkeep_testkit::PgkeepCmd, moto: &MotoServer) -> pgkeep_testkit::PgkeepCmd {
    for (k, v) in moto.aws_env() {
        c = c.env(&k, v);
    }
    c
}

/// Snapshots moto holds for a backup, by the `pgkeep:backup-id` tag: (volume tag, volume id, state).
pub fn tagged_snapshots(moto: &MotoServer, id: &str) -> Vec<(String, String, String)> {
    let v = moto.json(&format!(
        "r = ec2().describe_snapshots(Filters=[{{'Name': 'tag:pgkeep:backup-id', 'Values': ['{id}']}}])['Snapshots']\n\
         print(json.dumps([[{{t['Key']: t['Value'] for t in s.get('Tags', [])}}.get('pgkeep:volume', ''), s['VolumeId'], s['State']] for s in r]))"
    ));
    let mut out: Vec<(String, String, String)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x[0].as_str().unwrap().into(), x[1].as_str().unwrap().into(), x[2].as_str().unwrap().into()))
        .collect();
    out.sort();
    out
}

/// Acceptance 4: one multi-volume `CreateSnapshots` call for the instance's three configured
/// volumes (the boot volume excluded), tagged with backup id and volume role, waited for;
/// restore creates a volume per snapshot in the availability zone and attaches each at its
/// recorded device on another instance, then runs the post-attach hook; a failure from the
/// API mid-way (an invalid volume id among valid ones, per-volume `CreateSnapshot` calls)
/// leaves no usable backup, pg_backup_stop called, and the snapshots it created deleted;
/// `expire` deletes a backup's snapshots.
#[test]
fn snapshot_ebs_against_moto() {
    let env = env();
    let moto = MotoServer::start(env.root());
    let ids = moto.json(
        "c = ec2()\n\
         ami = c.describe_images()['Images'][0]['ImageId']\n\
         run = lambda: c.run_instances(ImageId=ami, MinCount=1, MaxCount=1, InstanceType='t3.micro', Placement={'AvailabilityZone': 'us-east-1a'})['Instances'][0]['InstanceId']\n\
         src, dst = run(), run()\n\
         vols = []\n\
         for dev in ['/dev/sdf', '/dev/sdg', '/dev/sdh']:\n\
         \x20   v = c.create_volume(AvailabilityZone='us-east-1a', Size=10)['VolumeId']\n\
         \x20   c.attach_volume(VolumeId=v, InstanceId=src, Device=dev)\n\
         \x20   vols.append(v)\n\
         print(json.dumps({'src': src, 'dst': dst, 'vols': vols}))",
    );
    let src = ids["src"].as_str().unwrap().to_string();
    let dst = ids["dst"].as_str().unwrap().to_string();
    let vols: Vec<String> = ids["vols"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();

    let (m_data, m_wal, m_ts) = (env.owned_dir("mnt-data"), env.owned_dir("mnt-wal"), env.owned_dir("mnt-ts"));
    let s = SnapSetup::new(env, None, &m_data.join("pgdata"), Some(&m_wal.join("pg_wal")));
    s.tablespace("ts1", &m_ts.join("tbs"));
    s.pg.sql("CREATE TABLE t (id int PRIMARY KEY) TABLESPACE ts1; INSERT INTO t SELECT generate_series(1, 1000)");
    let hook_env = s.env.path("post-attach.env");
    let good = [
        ("data", vols[0].as_str(), m_data.as_path()),
        ("wal", vols[1].as_str(), m_wal.as_path()),
        ("ts", vols[2].as_str(), m_ts.as_path()),
    ];
    s.configure(&ebs_config(
        &good,
        &format!(
            "[ebs]\ninstance_id = \"{src}\"\navailability_zone = \"us-east-1a\"\n\n[hooks]\npost-attach = \"env | grep ^PGKEEP_ | sort > {}\"\n",
            hook_env.display()
        ),
    ));

    // Backup: CreateSnapshots for the instance, tags, waiting.
    let b = with_aws(s.pgkeep(["backup"]), &moto).json();
    let id = b["id"].as_str().unwrap().to_string();
    assert_eq!(b["driver"], "ebs");
    assert_eq!(b["snapshot"]["state"], "complete");
    let recs = b["snapshot"]["snapshots"].as_array().unwrap();
    assert_eq!(recs.len(), 3, "{b}");
    for (r, (name, vol, _)) in recs.iter().zip(&good) {
        assert_eq!(r["volume"], *name);
        assert_eq!(r["volume_id"], *vol);
        assert!(r["snapshot_id"].as_str().unwrap().starts_with("snap-"));
        assert_eq!(r["state"], "completed");
    }
    let devices: Vec<&str> = recs.iter().map(|r| r["device"].as_str().unwrap_or("")).collect();
    assert_eq!(devices, ["/dev/sdf", "/dev/sdg", "/dev/sdh"]);
    let tagged = tagged_snapshots(&moto, &id);
    let mut want: Vec<(String, String, String)> =
        good.iter().map(|(n, v, _)| (n.to_string(), v.to_string(), "completed".to_string())).collect();
    want.sort();
    assert_eq!(tagged, want, "exactly the configured volumes, tagged with backup id and role (boot volume excluded)");

    // Restore: CreateVolume per snapshot, AttachVolume at the recorded devices, post-attach hook.
    let r = with_aws(s.pgkeep(["restore", "--backup", &id, "--attach-to", &dst]), &moto).json();
    let restored: Vec<Value> = r["volumes"].as_array().unwrap().clone();
    assert_eq!(restored.len(), 3);
    let attached = moto.json(&format!(
        "r = ec2().describe_volumes(Filters=[{{'Name': 'tag:pgkeep:backup-id', 'Values': ['{id}']}}])['Volumes']\n\
         print(json.dumps(sorted([[v['VolumeId'], v['AvailabilityZone'], v['SnapshotId'], v['Attachments'][0]['InstanceId'], v['Attachments'][0]['Device']] for v in r])))"
    ));
    let attached = attached.as_array().unwrap();
    assert_eq!(attached.len(), 3, "{attached:?}");
    for a in attached {
        assert_eq!(a[1], "us-east-1a");
        assert_eq!(a[3], dst.as_str());
        let rec =
            recs.iter().find(|x| x["snapshot_id"] == a[2]).expect("volume made from one of the backup's snapshots");
        assert_eq!(a[4], rec["device"]);
        assert!(restored.iter().any(|v| v["created"] == a[0]));
    }
    let hook = std::fs::read_to_string(&hook_env).expect("post-attach hook ran");
    assert!(hook.contains(&format!("PGKEEP_BACKUP_ID={id}")), "{hook}");
    assert!(hook.contains(&format!("PGKEEP_INSTANCE_ID={dst}")), "{hook}");
    for a in attached {
        assert!(hook.contains(a[0].as_str().unwrap()), "{hook}");
    }
    // The restored volumes are not mounted here; the live PGDATA at the original path is
    // never touched.
    assert!(r["pgdata"].is_null(), "{r}");
    assert!(!s.pg.pgdata().join("backup_label").exists());

    // A failure mid-way: per-volume CreateSnapshot, one invalid volume id among valid ones.
    let bad = "vol-0badbadbadbadbad0";
    s.configure(&ebs_config(&[good[0], ("wal", bad, m_wal.as_path()), good[2]], ""));
    let out = with_aws(s.pgkeep(["backup"]), &moto).fails();
    let line = out.one_error_line().to_string();
    eprintln!("{line}");
    assert!(line.contains(bad) && line.contains("pg_backup_stop was called"), "{line}");
    assert!(line.contains("deleted snapshot(s)") && line.contains("no usable backup"), "{line}");
    let failed_id = failed_backup_id(&line);
    assert!(tagged_snapshots(&moto, &failed_id).is_empty(), "the failed backup's snapshots must be deleted");
    assert_eq!(listed(&s), vec![(id.clone(), "complete".to_string())]);
    assert_eq!(pgkeep_sessions(&s.pg), 0);
    assert!(backup_history_label(&m_wal.join("pg_wal"), &failed_id).is_some(), "pg_backup_stop must have run");

    // A restore drill of an EBS backup is refused before any volume is created (the new
    // volumes would have to be attached and mounted here); the refusal says what to do instead.
    s.configure(&ebs_config(&good, "[ebs]\navailability_zone = \"us-east-1a\"\n"));
    let volumes_before = moto.json("print(json.dumps(len(ec2().describe_volumes()['Volumes'])))");
    let out = with_aws(s.pgkeep(["verify", &id]), &moto).fails();
    assert_eq!(out.code, Some(1));
    let line = out.one_error_line();
    assert!(line.contains("EBS snapshot backup") && line.contains("nothing was created"), "{line}");
    assert!(
        line.contains(&format!("pgkeep restore --backup {id} --attach-to")) && line.contains("verify --pgdata"),
        "{line}"
    );
    assert_eq!(moto.json("print(json.dumps(len(ec2().describe_volumes()['Volumes'])))"), volumes_before);
    assert!(s.pgkeep(["list"]).json()[0]["verified"].is_null());

    // expire deletes the snapshots of a backup.
    s.configure(&ebs_config(&good, ""));
    let e = with_aws(s.pgkeep(["expire", "--backup", &id]), &moto).json();
    assert_eq!(e["deleted_snapshots"].as_array().unwrap().len(), 3);
    assert!(tagged_snapshots(&moto, &id).is_empty());
    assert!(listed(&s).is_empty());
}
