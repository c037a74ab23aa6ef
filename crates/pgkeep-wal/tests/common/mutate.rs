//! Shared by the property tests of pgkeep-wal (`tests/fuzz.rs`) and of pgkeep's frame
//! decoding (`src/repo/frame_fuzz.rs` includes this file by path): the bounded, seeded run
//! configuration and the byte mutations applied to real inputs.
#![allow(dead_code)]

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngSeed};

/// `cases` per property (times `PGKEEP_FUZZ_SCALE`), a fixed seed unless
/// `PROPTEST_RNG_SEED` gives one, no persisted failures (the seed reproduces them).
pub fn config(cases: u32) -> Config {
    let base = Config::default();
    let scale: u32 = std::env::var("PGKEEP_FUZZ_SCALE").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    Config {
        cases: cases.saturating_mul(scale.max(1)),
        rng_seed: match base.rng_seed {
            RngSeed::Random => RngSeed::Fixed(0x5EED_F022),
            fixed => fixed,
        },
        failure_persistence: None,
        max_shrink_iters: 512,
        ..base
    }
}

/// One change to a byte string. Positions are `Index`es so they scale to any length.
#[derive(Clone, Debug)]
pub enum Mutation {
    Flip(Index, u8),
    Set(Index, u8),
    Truncate(Index),
    /// Copies `len` bytes from one place over another (a torn or misplaced write).
    Splice {
        from: Index,
        to: Index,
        len: usize,
    },
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    /// Overwrites 1-8 bytes with an extreme little-endian value (0, all ones, sign bit).
    Extreme(Index, u8, u8),
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<Index>(), 0..8u8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        3 => (any::<Index>(), any::<u8>()).prop_map(|(i, v)| Mutation::Set(i, v)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), any::<Index>(), 1..64usize).prop_map(|(from, to, len)| Mutation::Splice { from, to, len }),
        1 => (any::<Index>(), proptest::collection::vec(any::<u8>(), 1..16)).prop_map(|(i, v)| Mutation::Insert(i, v)),
        1 => (any::<Index>(), 1..64usize).prop_map(|(i, n)| Mutation::Delete(i, n)),
        2 => (any::<Index>(), 1..=8u8, 0..3u8).prop_map(|(i, w, k)| Mutation::Extreme(i, w, k)),
    ]
}

pub fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    proptest::collection::vec(mutation(), 1..6)
}

/// Mutations that keep every byte where it was (so page and record positions still mean
/// something afterwards).
pub fn in_place(m: &Mutation) -> bool {
    matches!(m, Mutation::Flip(..) | Mutation::Set(..) | Mutation::Splice { .. } | Mutation::Extreme(..))
}

pub fn apply(data: &mut Vec<u8>, muts: &[Mutation]) {
    for m in muts {
        if data.is_empty() {
            data.push(0);
        }
        let n = data.len();
        match m {
            Mutation::Flip(i, b) => data[i.index(n)] ^= 1 << b,
            Mutation::Set(i, v) => data[i.index(n)] = *v,
            Mutation::Truncate(i) => data.truncate(i.index(n)),
            Mutation::Splice { from, to, len } => {
                let (f, t) = (from.index(n), to.index(n));
                let len = (*len).min(n - f).min(n - t);
                data.copy_within(f..f + len, t);
            }
            Mutation::Insert(i, v) => {
                let at = i.index(n + 1);
                data.splice(at..at, v.iter().copied());
            }
            Mutation::Delete(i, len) => {
                let at = i.index(n);
                data.drain(at..(at + len).min(n));
            }
            Mutation::Extreme(i, w, k) => {
                let v: u64 = match k {
                    0 => 0,
                    1 => u64::MAX,
                    _ => 1 << (*w as u64 * 8 - 1),
                };
                let at = i.index(n);
                let w = (*w as usize).min(n - at);
                data[at..at + w].copy_from_slice(&v.to_le_bytes()[..w]);
            }
        }
    }
}

pub fn mutated(base: &[u8], muts: &[Mutation]) -> Vec<u8> {
    let mut d = base.to_vec();
    apply(&mut d, muts);
    d
}
