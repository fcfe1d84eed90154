//! The agent's use of glibc's allocator, tuned for what an agent does: long idle stretches
//! between jobs that move gigabytes through short-lived buffers on many threads.
//!
//! glibc gives each thread that allocates while another holds the lock an arena of its
//! own, up to eight per core, and keeps what is freed in each for that arena's next
//! allocations. A restore decodes chunks on the blocking pool's threads and frees them on
//! the writer's, so every arena ends up holding its own few dozen MiB of free chunk
//! buffers: the agent peaked at 196–237 MiB restoring 2.1 GB where about 110 MiB are live.
//! Two arenas keep that at 108–116 MiB at the same speed; handing freed pages back after
//! each job keeps an idle agent small (BENCHMARKS.md "Memory across scales"). Mapping
//! every chunk buffer instead (`M_MMAP_THRESHOLD` at 256 KiB) went lower still, 80 MiB,
//! but made backups and restores about 30% slower in page faults.

/// Caps the allocator at two arenas unless `MALLOC_ARENA_MAX` says otherwise. Call it
/// first thing in `main`, before any other thread exists.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn limit_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt sets one parameter of the allocator; no other thread runs yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

/// Returns the allocator's free pages to the kernel (after a job: what it freed need not
/// stay resident while the agent idles).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release_free_memory() {
    // SAFETY: malloc_trim takes the allocator's own locks and touches only free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn limit_arenas() {}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_memory() {}
