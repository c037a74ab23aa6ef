//! The streaming [`SegmentValidator`] against whole-segment validation on every fixture, fed
//! in odd chunk sizes, with and without the previous segment. The damage cases are covered by
//! damage.rs, decoder.rs and fixtures.rs, whose `validate_segment` (tests/common) makes the
//! same comparison on every call.

mod common;

use common::*;
use pgkeep_wal::{WalFileName, XLOG_BLCKSZ};

#[test]
fn streamed_validation_equals_whole_validation_on_every_fixture() {
    let files = files();
    let mut compared = 0;
    for (name, kind) in &files {
        let (WalFileName::Segment { tli, segno } | WalFileName::Partial { tli, segno }) = *kind else { continue };
        let data = read(name);
        let mut strict = expect(name);
        strict.system_identifier = Some(sysid());
        strict.pg_major = Some(15);
        let previous = files.iter().find_map(|(n, k)| match k {
            WalFileName::Segment { tli: t, segno: s } if *t == tli && *s + 1 == segno => Some(read(n)),
            _ => None,
        });
        let partial = matches!(kind, WalFileName::Partial { .. });
        for e in [&expect(name), &strict] {
            for prev in [None, previous.as_deref()] {
                let whole = if partial {
                    pgkeep_wal::validate_partial_segment(&data, e, prev)
                } else {
                    pgkeep_wal::validate_segment(&data, e, prev)
                };
                assert!(whole.is_ok(), "{name}: {whole:?}");
                assert_streamed_same(&data, e, prev, partial, &whole);
                compared += 1;
            }
        }
    }
    assert!(compared >= 8, "only {compared} fixture comparisons");
}

#[test]
fn streamed_validation_refuses_a_segment_fed_too_long_or_short() {
    let (name, _, _) = segments().into_iter().next().expect("a fixture segment");
    let mut data = read(&name);
    data.extend_from_slice(&[0u8; XLOG_BLCKSZ]);
    let long = validate_segment(&data, &expect(&name), None);
    assert!(matches!(long, Err(pgkeep_wal::SegmentError::WrongLength { .. })), "{long:?}");
    data.truncate(data.len() - 3 * XLOG_BLCKSZ + 5);
    let short = validate_segment(&data, &expect(&name), None);
    assert!(matches!(short, Err(pgkeep_wal::SegmentError::WrongLength { .. })), "{short:?}");
}
