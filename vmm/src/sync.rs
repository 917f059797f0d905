//! Locking as the engine does it everywhere: a mutex poisoned by a panicking thread (a vCPU, a
//! console client, a replication stream) is still used, because its data stays consistent at
//! every unlock and one failed thread must not take the whole VM down with it.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, ignoring poisoning.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
