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
pub fn is_backup_id(s: &str) -> bool {
    s.len() == 16
        && s.as_bytes()[8] == b'-'
        && s[..8].bytes().all(|b| b.is_ascii_digit())
        && s[9..15].bytes().all(|b| b.is_ascii_digit())
        && s.ends_with('F')
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
}
