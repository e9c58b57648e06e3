//! Giving configuration-loading memory back to the operating system.
//!
//! Reading a configuration decodes the Envoy descriptor pool and builds reflection trees: tens of
//! MiB that are freed once the snapshot is compiled. glibc keeps freed heap pages mapped, so an
//! idle proxy would look as large as the peak of its last load. After each load the descriptor
//! cache is dropped and the heap is trimmed.

/// Drop the descriptor cache and return free heap pages to the operating system.
pub fn release_after_load() {
    sluice_proto::release_descriptor_pool();
    trim_heap();
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_heap() {
    // SAFETY: `malloc_trim` is glibc's own allocator maintenance call. It takes no pointers, has
    // no preconditions, is thread-safe (it locks each arena while trimming), and only releases
    // memory that is free; no live allocation is moved or invalidated.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() {}
