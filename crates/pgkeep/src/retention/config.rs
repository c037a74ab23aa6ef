//! The `[retention]` and `[backup]` tables of the config file. Values are checked when the
//! file is read, so a typo or a zero count stops the command before anything is deleted.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

/// `[retention]`: every key optional; a backup is kept when any rule keeps it.
#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Keep the newest N complete backups.
    #[serde(default, deserialize_with = "positive")]
    pub full: Option<u32>,
    /// Keep what restores to any point in this window (e.g. "14d").
    #[serde(default, deserialize_with = "window")]
    pub recovery_window: Option<Window>,
    /// Keep the newest N backups whose newest restore drill passed.
    #[serde(default, deserialize_with = "positive")]
    pub verified: Option<u32>,
    /// What happens to WAL no kept backup needs.
    #[serde(default)]
    pub wal: WalRetention,
}

impl RetentionConfig {
    /// True when at least one rule keeps backups: a table without one would keep nothing.
    pub fn has_backup_rule(&self) -> bool {
        self.full.is_some() || self.recovery_window.is_some() || self.verified.is_some()
    }
}

#[derive(Debug, Default, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WalRetention {
    /// WAL older than the oldest kept backup's start is expired.
    #[default]
    Backups,
    /// All WAL is kept.
    None,
}

/// `[backup]`: settings of `pgkeep backup` that belong to retention.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupSettings {
    /// Apply the `[retention]` policy after every successful backup.
    #[serde(default)]
    pub expire_after: bool,
    /// What `pgkeep backup` takes without `--type`: "full" (default), "incr" or "diff".
    #[serde(default, rename = "type")]
    pub backup_type: Option<crate::backup::BackupType>,
}

/// A recovery window as written ("14d") and its length.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Window {
    pub text: String,
    #[serde(skip)]
    pub length: Duration,
}

/// "90s", "30min", "12h", "14d", "2w" (one number, one unit).
pub fn parse_window(s: &str) -> Result<Window, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit_secs = match unit.trim() {
        "s" => 1,
        "min" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => 0,
    };
    let n: u64 = num.parse().unwrap_or(0);
    match n.checked_mul(unit_secs) {
        Some(secs) if secs > 0 => Ok(Window { text: t.to_string(), length: Duration::from_secs(secs) }),
        _ => Err(format!(
            "recovery_window {s:?} is not a positive duration; hint: write a number and one unit of s, min, h, d, w (e.g. \"14d\")"
        )),
    }
}

fn window<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Window>, D::Error> {
    let s = String::deserialize(d)?;
    parse_window(&s).map(Some).map_err(serde::de::Error::custom)
}

fn positive<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    match u32::deserialize(d)? {
        0 => Err(serde::de::Error::custom("a count of 0 keeps nothing; hint: use 1 or more, or leave the key out")),
        n => Ok(Some(n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_with_every_unit() {
        assert_eq!(parse_window("90s").unwrap().length, Duration::from_secs(90));
        assert_eq!(parse_window("30min").unwrap().length, Duration::from_secs(1800));
        assert_eq!(parse_window("12h").unwrap().length, Duration::from_secs(43_200));
        assert_eq!(parse_window("14d").unwrap().length, Duration::from_secs(14 * 86_400));
        assert_eq!(parse_window("2w").unwrap().length, Duration::from_secs(14 * 86_400));
        for bad in ["", "14", "d", "0d", "14m", "1.5d", "-1d"] {
            assert!(parse_window(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_table_is_checked_when_read() {
        let c: RetentionConfig = toml::from_str("full = 3\nrecovery_window = \"14d\"\nwal = \"none\"").unwrap();
        assert_eq!(c.full, Some(3));
        assert_eq!(c.wal, WalRetention::None);
        assert!(toml::from_str::<RetentionConfig>("full = 0").is_err());
        assert!(toml::from_str::<RetentionConfig>("wal = \"some\"").is_err());
        assert!(toml::from_str::<RetentionConfig>("fulll = 2").is_err());
        assert!(toml::from_str::<RetentionConfig>("recovery_window = \"2y\"").is_err());
    }
}
