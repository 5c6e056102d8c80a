//! Lock helpers shared by every module: poisoning is recovered from, never propagated.
//!
//! Every critical section in the broker leaves its data consistent at each step, so a panic
//! elsewhere (a bug) must not take the whole broker down through a poisoned lock.

use std::sync::{Mutex, RwLock};

/// Locks a mutex, recovering from poisoning: every critical section here leaves the data
/// consistent at each step, so a panic elsewhere must not take the broker down with it.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Read-locks an RwLock (see [`lock`] on poisoning).
pub fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

/// Write-locks an RwLock (see [`lock`] on poisoning).
pub fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}
