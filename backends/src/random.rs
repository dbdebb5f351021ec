//! Random numbers for ids and placement; not for secrets.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

/// A random `u64`: the standard library's randomly keyed SipHash over a counter.
pub(crate) fn random_u64() -> u64 {
    let mut hasher = KEYS.with(RandomState::build_hasher);
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.finish()
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static KEYS: RandomState = RandomState::new();
}
