//! Handing freed heap back to the kernel.
//!
//! glibc keeps what a thread frees in that thread's arena for reuse, so a
//! burst of large temporaries (reading a 100,000-policy state file, a
//! snapshot's buffers, a long JSON response) would stay in the daemon's RSS
//! for good. After such a burst the store asks glibc to return free pages.

/// Return free heap pages to the kernel (`malloc_trim(3)`); a no-op elsewhere.
pub fn give_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // Safety: malloc_trim only walks glibc's own arenas; any thread may call it.
    unsafe {
        libc::malloc_trim(0);
    }
}
