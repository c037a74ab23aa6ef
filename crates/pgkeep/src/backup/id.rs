//! Backup ids: UTC start time, `YYYYMMDD-HHMMSSF` (F = full), so lexical order is time order.

use chrono::{DateTime, Utc};

pub fn new_id(now: DateTime<Utc>, taken: &[String]) -> String {
    let mut t = now;
    loop {
        let id = format!("{}F", t.format("%Y%m%d-%H%M%S"));
        if !taken.contains(&id) {
            return id;
        }
        t += chrono::Duration::seconds(1);
    }
}

/// True for strings that look like backup ids (guards `--backup` input and repository listings).
/// Works on bytes: slicing the `str` would panic where a multi-byte character straddles a
/// boundary (`20261121-00000é`).
pub fn is_backup_id(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 16
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'-'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'F'
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn ids_sort_by_time_and_never_collide() {
        let t = Utc.with_ymd_and_hms(2026, 11, 21, 6, 43, 0).unwrap();
        let a = new_id(t, &[]);
        assert_eq!(a, "20261121-064300F");
        assert!(is_backup_id(&a));
        let b = new_id(t, std::slice::from_ref(&a));
        assert_eq!(b, "20261121-064301F");
        assert!(!is_backup_id("latest"));
    }

    /// `--backup` is operator input: a multi-byte character where a digit belongs must be
    /// refused, not panic on a slice that splits it.
    #[test]
    fn non_ascii_ids_are_refused_without_panicking() {
        for s in ["20261121-00000é", "é0261121-000000F", "2026112é-00000F", "20261121-0000é0F", "20261121-000000é"]
        {
            assert!(!is_backup_id(s), "{s:?}");
        }
        assert!(!is_backup_id("20261121_064300F"));
        assert!(!is_backup_id("20261121-064300f"));
        assert!(is_backup_id("20261121-064300F"));
    }
}
