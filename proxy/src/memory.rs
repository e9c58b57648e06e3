//! Giving configuration-loading memory back to the operating system.
//!
//! Reading a configuration decodes the Envoy descriptor pool and builds reflection trees: tens of
//! MiB that are freed once the snapshot is compiled. glibc keeps freed heap pages mapped, so an
//! idle proxy would look as large as the peak of its last load. After each load the descriptor
//! cache is dropped, the heap is trimmed, and the embedded descriptor bytes (read-only data of the
//! executable, read in full by each load) are taken out of the resident set.

/// Drop the descriptor cache and return free heap pages to the operating system.
pub fn release_after_load() {
    sluice_proto::release_descriptor_pool();
    trim_heap();
    drop_read_only_pages(sluice_proto::descriptor_bytes());
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

/// Take the pages wholly inside `bytes` (3.3 MB of embedded descriptors, read once per load) out of
/// the resident set.
#[cfg(target_os = "linux")]
fn drop_read_only_pages(bytes: &'static [u8]) {
    // SAFETY: `sysconf` takes no pointers.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let Ok(page) = usize::try_from(page) else {
        return;
    };
    if page == 0 {
        return;
    }
    let start = (bytes.as_ptr() as usize).div_ceil(page) * page;
    let end = (bytes.as_ptr() as usize + bytes.len()) / page * page;
    if end <= start {
        return;
    }
    // SAFETY: [start, end) lies wholly inside `bytes`, a `&'static [u8]` that the compiler placed
    // in the executable's read-only data (`include_bytes!` into a `static`), mapped privately from
    // the file and never written. MADV_DONTNEED on such a mapping only drops the resident copies of
    // clean pages; the next read faults the same bytes back in from the file, so every reader,
    // including one running concurrently, still sees identical contents. Rounding inward keeps
    // pages shared with neighbouring (possibly writable) data untouched.
    unsafe {
        libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
    }
}

#[cfg(not(target_os = "linux"))]
fn drop_read_only_pages(_: &'static [u8]) {}
