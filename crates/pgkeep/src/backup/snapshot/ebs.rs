//! ebs: AWS EBS volumes through the official AWS SDK for Rust (feature `ebs`).
//!
//! - With `[ebs] instance_id`, all configured volumes are snapshotted by one multi-volume
//!   `CreateSnapshots` call (one point in time for all of them; other volumes of the instance
//!   are excluded). Without it, `CreateSnapshot` is called per volume, concurrently (striped
//!   members are then frozen with fsfreeze around the calls).
//! - Snapshots are tagged `pgkeep:backup-id`, `pgkeep:volume` (the volume's role/name) and
//!   `pgkeep:system-identifier`. A snapshot is acknowledged when the API returns its id
//!   (state `pending`); `DescribeSnapshots` is polled until `completed`.
//! - Restore: `CreateVolume` per snapshot in an availability zone (tagged likewise), wait until
//!   `available`, optionally `AttachVolume` to an instance at the recorded device names and
//!   wait until attached.
//!
//! Credentials come from the standard AWS chain only (environment, profile, web identity,
//! ECS/IMDS). The endpoint can be overridden with `[ebs] endpoint_url` or `AWS_ENDPOINT_URL`.
//! IAM permissions: ec2:CreateSnapshot, ec2:CreateSnapshots, ec2:CreateTags,
//! ec2:DescribeSnapshots, ec2:DeleteSnapshot, ec2:DescribeVolumes, ec2:DescribeInstances,
//! and for restore ec2:CreateVolume, ec2:AttachVolume.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_ec2::types::{
    Filter, InstanceSpecification, ResourceType, SnapshotState as AwsSnapshotState, Tag, TagSpecification, VolumeState,
    VolumeType,
};
use aws_sdk_ec2::Client;
use chrono::{DateTime, Utc};
use tokio::runtime::Handle;

use super::{
    DriverFeatures, DriverKind, RestoreRequest, RestoreSetOptions, RestoredVolume, SnapContext, SnapshotConfig,
    SnapshotDriver, SnapshotError, SnapshotFailure, SnapshotRecord, SnapshotState, VolumeConfig,
};

pub struct Ebs {
    client: Client,
    rt: Handle,
    instance_id: Option<String>,
    volume_type: Option<String>,
    availability_zone: Option<String>,
}

/// "Code: message" of an API error (never credentials: the SDK does not put them in errors).
fn api_err<E, R>(e: aws_sdk_ec2::error::SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match (e.code(), e.message()) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c.to_string(),
        _ => DisplayErrorContext(&e).to_string().replace('\n', " "),
    }
}

fn chrono_of(t: Option<&aws_sdk_ec2::primitives::DateTime>) -> Option<DateTime<Utc>> {
    t.and_then(|t| DateTime::from_timestamp(t.secs(), t.subsec_nanos()))
}

fn tag(k: &str, v: &str) -> Tag {
    Tag::builder().key(k).value(v).build()
}

fn state_of(s: Option<&AwsSnapshotState>) -> SnapshotState {
    match s {
        Some(AwsSnapshotState::Completed) => SnapshotState::Completed,
        Some(AwsSnapshotState::Error) => SnapshotState::Error,
        _ => SnapshotState::Pending,
    }
}

impl Ebs {
    pub fn new(cfg: &SnapshotConfig, rt: Handle) -> Result<Ebs, SnapshotError> {
        use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
        let https =
            aws_smithy_http_client::Builder::new().tls_provider(Provider::Rustls(CryptoMode::Ring)).build_https();
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(https);
        if let Some(r) = &cfg.ebs.region {
            loader = loader.region(aws_config::Region::new(r.clone()));
        }
        if let Some(u) = &cfg.ebs.endpoint_url {
            loader = loader.endpoint_url(u.clone());
        }
        let sdk = rt.block_on(loader.load());
        if sdk.region().is_none() {
            return Err(SnapshotError::Config(
                "ebs: no AWS region; hint: set [ebs] region, AWS_REGION, or a region in the AWS profile".into(),
            ));
        }
        Ok(Ebs {
            client: Client::new(&sdk),
            rt,
            instance_id: cfg.ebs.instance_id.clone(),
            volume_type: cfg.ebs.volume_type.clone(),
            availability_zone: cfg.ebs.availability_zone.clone(),
        })
    }

    fn tags(&self, ctx: &SnapContext, vol: Option<&str>, rt: ResourceType) -> TagSpecification {
        let mut b = TagSpecification::builder()
            .resource_type(rt)
            .tags(tag("pgkeep:backup-id", &ctx.backup_id))
            .tags(tag("pgkeep:system-identifier", &ctx.system_identifier.to_string()));
        if let Some(v) = vol {
            b = b.tags(tag("pgkeep:volume", v));
        }
        b.build()
    }

    /// volume id → device name, for volumes attached to `instance` (or any instance).
    async fn devices(&self, ids: &[String]) -> Result<BTreeMap<String, String>, String> {
        let out = self
            .client
            .describe_volumes()
            .filters(Filter::builder().name("volume-id").set_values(Some(ids.to_vec())).build())
            .send()
            .await
            .map_err(api_err)?;
        let mut m = BTreeMap::new();
        for v in out.volumes() {
            if let (Some(id), Some(a)) = (v.volume_id(), v.attachments().first()) {
                if let Some(d) = a.device() {
                    m.insert(id.to_string(), d.to_string());
                }
            }
        }
        Ok(m)
    }

    fn record(
        vol: &VolumeConfig,
        snapshot_id: &str,
        state: SnapshotState,
        started_at: DateTime<Utc>,
        device: Option<String>,
    ) -> SnapshotRecord {
        let mut detail = BTreeMap::new();
        detail.insert("path".to_string(), vol.path().display().to_string());
        SnapshotRecord {
            volume: vol.name.clone(),
            driver: DriverKind::Ebs,
            snapshot_id: snapshot_id.to_string(),
            source: vol.volume_id.clone().unwrap_or_default(),
            volume_id: vol.volume_id.clone(),
            device: vol.device.clone().or(device),
            stripe_group: vol.stripe_group.clone(),
            started_at,
            acknowledged_at: Utc::now(),
            state,
            detail,
        }
    }

    /// One `CreateSnapshots` call for all `vols` (attached to the configured instance).
    fn snapshot_instance(
        &self,
        instance: &str,
        vols: &[&VolumeConfig],
        ctx: &SnapContext,
    ) -> Result<Vec<SnapshotRecord>, SnapshotFailure> {
        let wanted: Vec<String> = vols.iter().filter_map(|v| v.volume_id.clone()).collect();
        let first = vols.first().map(|v| (*v).clone()).unwrap_or_default();
        let fail = |detail: String| {
            SnapshotFailure::new(SnapshotError::driver(&first, "snapshot (CreateSnapshots)", detail), Vec::new())
        };
        // Which volumes does the instance have? Exclude everything not configured.
        let inst = self
            .rt
            .block_on(self.client.describe_instances().instance_ids(instance).send())
            .map_err(|e| fail(format!("DescribeInstances {instance}: {}", api_err(e))))?;
        let instance_desc = inst.reservations().iter().flat_map(|r| r.instances()).next().cloned();
        let Some(desc) = instance_desc else { return Err(fail(format!("instance {instance} not found"))) };
        let root_dev = desc.root_device_name().unwrap_or_default().to_string();
        let mut attached: BTreeMap<String, String> = BTreeMap::new(); // volume id → device
        let mut root_vol = None;
        for m in desc.block_device_mappings() {
            if let (Some(dev), Some(id)) = (m.device_name(), m.ebs().and_then(|e| e.volume_id())) {
                attached.insert(id.to_string(), dev.to_string());
                if dev == root_dev {
                    root_vol = Some(id.to_string());
                }
            }
        }
        for id in &wanted {
            if !attached.contains_key(id) {
                return Err(fail(format!("volume {id} is not attached to instance {instance}")));
            }
        }
        let exclude: Vec<String> =
            attached.keys().filter(|id| !wanted.contains(id) && Some(*id) != root_vol.as_ref()).cloned().collect();
        let exclude_boot = root_vol.as_ref().is_none_or(|r| !wanted.contains(r));
        let mut spec = InstanceSpecification::builder().instance_id(instance).exclude_boot_volume(exclude_boot);
        if !exclude.is_empty() {
            spec = spec.set_exclude_data_volume_ids(Some(exclude));
        }
        let started_at = Utc::now();
        let out = self
            .rt
            .block_on(
                self.client
                    .create_snapshots()
                    .instance_specification(spec.build())
                    .description(format!("pgkeep backup {}", ctx.backup_id))
                    .tag_specifications(self.tags(ctx, None, ResourceType::Snapshot))
                    .send(),
            )
            .map_err(|e| fail(api_err(e)))?;
        let mut taken = Vec::new();
        for s in out.snapshots() {
            let (Some(sid), Some(vid)) = (s.snapshot_id(), s.volume_id()) else { continue };
            let Some(vol) = vols.iter().find(|v| v.volume_id.as_deref() == Some(vid)) else {
                // Not ours (should have been excluded): do not keep it.
                let _ = self.rt.block_on(self.client.delete_snapshot().snapshot_id(sid).send());
                continue;
            };
            let mut r = Self::record(
                vol,
                sid,
                state_of(s.state()),
                chrono_of(s.start_time()).unwrap_or(started_at),
                attached.get(vid).cloned(),
            );
            r.started_at = started_at;
            taken.push(r);
        }
        for v in vols {
            if !taken.iter().any(|r| r.volume == v.name) {
                return Err(SnapshotFailure::new(
                    SnapshotError::driver(
                        v,
                        "snapshot (CreateSnapshots)",
                        "the call returned no snapshot for this volume",
                    ),
                    taken,
                ));
            }
        }
        // The role of each snapshot (CreateSnapshots tags all of them alike).
        for r in &taken {
            let res = self.rt.block_on(
                self.client.create_tags().resources(&r.snapshot_id).tags(tag("pgkeep:volume", &r.volume)).send(),
            );
            if let Err(e) = res {
                let vol = vols.iter().find(|v| v.name == r.volume).map(|v| (*v).clone()).unwrap_or_default();
                return Err(SnapshotFailure::new(SnapshotError::driver(&vol, "tag (CreateTags)", api_err(e)), taken));
            }
        }
        Ok(taken)
    }

    /// `CreateSnapshot` per volume, all requests in flight at once.
    fn snapshot_each(&self, vols: &[&VolumeConfig], ctx: &SnapContext) -> Result<Vec<SnapshotRecord>, SnapshotFailure> {
        let futs = vols.iter().map(|v| {
            let client = self.client.clone();
            let tags = self.tags(ctx, Some(&v.name), ResourceType::Snapshot);
            let desc = format!("pgkeep backup {} volume {}", ctx.backup_id, v.name);
            let vid = v.volume_id.clone().unwrap_or_default();
            async move {
                let started_at = Utc::now();
                let r = client.create_snapshot().volume_id(vid).description(desc).tag_specifications(tags).send().await;
                (started_at, r)
            }
        });
        let results = self.rt.block_on(futures::future::join_all(futs));
        let mut taken = Vec::new();
        let mut first_err = None;
        for (v, (started_at, r)) in vols.iter().zip(results) {
            match r {
                Ok(o) => match o.snapshot_id() {
                    Some(sid) => taken.push(Self::record(v, sid, state_of(o.state()), started_at, None)),
                    None => {
                        first_err.get_or_insert_with(|| {
                            SnapshotError::driver(v, "snapshot (CreateSnapshot)", "no snapshot id in the response")
                        });
                    }
                },
                Err(e) => {
                    let vid = v.volume_id.clone().unwrap_or_default();
                    first_err.get_or_insert_with(|| {
                        SnapshotError::driver(v, "snapshot (CreateSnapshot)", format!("{vid}: {}", api_err(e)))
                    });
                }
            }
        }
        match first_err {
            Some(error) => Err(SnapshotFailure::new(error, taken)),
            None => Ok(taken),
        }
    }

    async fn wait_volumes(&self, ids: &[String], want: VolumeState, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(200);
        loop {
            let out =
                self.client.describe_volumes().set_volume_ids(Some(ids.to_vec())).send().await.map_err(api_err)?;
            let pending: Vec<String> = out
                .volumes()
                .iter()
                .filter(|v| v.state() != Some(&want))
                .map(|v| format!("{} {}", v.volume_id().unwrap_or("?"), v.state().map(|s| s.as_str()).unwrap_or("?")))
                .collect();
            if pending.is_empty() && out.volumes().len() == ids.len() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "volumes not {} after {}s: {}",
                    want.as_str(),
                    timeout.as_secs(),
                    pending.join(", ")
                ));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }
}

impl SnapshotDriver for Ebs {
    fn kind(&self) -> DriverKind {
        DriverKind::Ebs
    }

    fn features(&self) -> DriverFeatures {
        DriverFeatures { atomic_multi_volume: self.instance_id.is_some(), async_completion: true, local_restore: false }
    }

    fn root(&self, vol: &VolumeConfig) -> Result<PathBuf, SnapshotError> {
        let p = vol.mount.as_deref().unwrap_or(vol.path());
        std::fs::canonicalize(p)
            .map_err(|e| SnapshotError::driver(vol, "find the mount point", format!("{}: {e}", p.display())))
    }

    fn preflight(&self, _vols: &[&VolumeConfig], _ctx: &SnapContext) -> Result<(), SnapshotError> {
        // Volume ids are checked by the snapshot calls themselves; a bad one fails there and
        // everything already created is deleted.
        Ok(())
    }

    fn snapshot(&self, vols: &[&VolumeConfig], ctx: &SnapContext) -> Result<Vec<SnapshotRecord>, SnapshotFailure> {
        match &self.instance_id {
            Some(i) => self.snapshot_instance(i, vols, ctx),
            None => self.snapshot_each(vols, ctx),
        }
    }

    fn refresh(&self, recs: &mut [SnapshotRecord], _cfg: &SnapshotConfig) -> Result<(), SnapshotError> {
        let ids: Vec<String> = recs.iter().map(|r| r.snapshot_id.clone()).collect();
        if ids.is_empty() {
            return Ok(());
        }
        let out = self
            .rt
            .block_on(self.client.describe_snapshots().set_snapshot_ids(Some(ids)).send())
            .map_err(|e| SnapshotError::rec(&recs[0], "refresh (DescribeSnapshots)", api_err(e)))?;
        for r in recs.iter_mut() {
            match out.snapshots().iter().find(|s| s.snapshot_id() == Some(r.snapshot_id.as_str())) {
                Some(s) => r.state = state_of(s.state()),
                None => r.state = SnapshotState::Error,
            }
        }
        // Device names for restore (per-volume mode learns them here, after pg_backup_stop).
        let missing: Vec<String> =
            recs.iter().filter(|r| r.device.is_none()).filter_map(|r| r.volume_id.clone()).collect();
        if !missing.is_empty() {
            if let Ok(devs) = self.rt.block_on(self.devices(&missing)) {
                for r in recs.iter_mut().filter(|r| r.device.is_none()) {
                    r.device = r.volume_id.as_ref().and_then(|v| devs.get(v).cloned());
                }
            }
        }
        Ok(())
    }

    fn delete(&self, rec: &SnapshotRecord, _cfg: &SnapshotConfig) -> Result<(), SnapshotError> {
        match self.rt.block_on(self.client.delete_snapshot().snapshot_id(&rec.snapshot_id).send()) {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("InvalidSnapshot.NotFound") => Ok(()),
            Err(e) => Err(SnapshotError::rec(rec, "delete (DeleteSnapshot)", api_err(e))),
        }
    }

    fn restore(
        &self,
        reqs: &[RestoreRequest<'_>],
        opts: &RestoreSetOptions,
        _cfg: &SnapshotConfig,
    ) -> Result<Vec<RestoredVolume>, SnapshotError> {
        let Some(first) = reqs.first() else { return Ok(Vec::new()) };
        let az = opts.availability_zone.clone().or_else(|| self.availability_zone.clone()).ok_or_else(|| {
            SnapshotError::Config("restoring EBS snapshots needs an availability zone; hint: pass --availability-zone or set [ebs] availability_zone".into())
        })?;
        let ctx = SnapContext { backup_id: opts.backup_id.clone(), system_identifier: 0 };
        let vtype = VolumeType::from(self.volume_type.as_deref().unwrap_or("gp3"));
        let mut created: Vec<(usize, String)> = Vec::new();
        for (i, r) in reqs.iter().enumerate() {
            let tags = TagSpecification::builder()
                .resource_type(ResourceType::Volume)
                .tags(tag("pgkeep:backup-id", &ctx.backup_id))
                .tags(tag("pgkeep:volume", &r.record.volume))
                .tags(tag("pgkeep:restored-from", &r.record.snapshot_id))
                .build();
            let out = self
                .rt
                .block_on(
                    self.client
                        .create_volume()
                        .snapshot_id(&r.record.snapshot_id)
                        .availability_zone(&az)
                        .volume_type(vtype.clone())
                        .tag_specifications(tags)
                        .send(),
                )
                .map_err(|e| {
                    let made: Vec<&str> = created.iter().map(|(_, v)| v.as_str()).collect();
                    SnapshotError::rec(
                        r.record,
                        "restore (CreateVolume)",
                        format!(
                            "{}; volumes created so far: {}",
                            api_err(e),
                            if made.is_empty() { "none".into() } else { made.join(", ") }
                        ),
                    )
                })?;
            let vid = out.volume_id().unwrap_or_default().to_string();
            created.push((i, vid));
        }
        let ids: Vec<String> = created.iter().map(|(_, v)| v.clone()).collect();
        self.rt
            .block_on(self.wait_volumes(&ids, VolumeState::Available, Duration::from_secs(1800)))
            .map_err(|e| SnapshotError::rec(first.record, "restore (wait for available)", e))?;
        let mut out = Vec::new();
        for (i, vid) in &created {
            let r = &reqs[*i];
            let device = r.config.and_then(|c| c.device.clone()).or_else(|| r.record.device.clone());
            if let Some(inst) = &opts.attach_to {
                let Some(dev) = &device else {
                    return Err(SnapshotError::rec(
                        r.record,
                        "restore (AttachVolume)",
                        format!("no device name is recorded for volume {vid}"),
                    )
                    .with_hint("set device = \"/dev/sdX\" for this volume in the config"));
                };
                self.rt
                    .block_on(self.client.attach_volume().volume_id(vid).instance_id(inst).device(dev).send())
                    .map_err(|e| {
                        SnapshotError::rec(
                            r.record,
                            "restore (AttachVolume)",
                            format!("{vid} → {inst} {dev}: {}", api_err(e)),
                        )
                    })?;
            }
            let path = r.target.clone().or_else(|| r.record.detail.get("path").map(PathBuf::from));
            out.push(RestoredVolume {
                volume: r.record.volume.clone(),
                snapshot_id: r.record.snapshot_id.clone(),
                root: if opts.attach_to.is_some() { path.map(|p| p.display().to_string()) } else { None },
                created: vid.clone(),
                device,
                attached_to: opts.attach_to.clone(),
            });
        }
        if opts.attach_to.is_some() {
            self.rt
                .block_on(self.wait_volumes(&ids, VolumeState::InUse, Duration::from_secs(600)))
                .map_err(|e| SnapshotError::rec(first.record, "restore (wait for attachment)", e))?;
        }
        Ok(out)
    }

    /// Restore drills refuse EBS backups before creating anything (the new volumes would have
    /// to be attached and mounted here), so there is never a drill's EBS volume to discard;
    /// volumes `pgkeep restore` created belong to the operator.
    fn discard(
        &self,
        rec: &SnapshotRecord,
        restored: &RestoredVolume,
        _cfg: &SnapshotConfig,
    ) -> Result<(), SnapshotError> {
        Err(SnapshotError::rec(
            rec,
            "discard the restored volume",
            format!("pgkeep does not delete restored EBS volumes; {} is left in place", restored.created),
        )
        .with_hint("detach and delete it with the AWS console or CLI when it is no longer needed"))
    }
}
