//! The few things the core asks of the C library directly.

/// Returns the allocator's free pages to the kernel. glibc keeps memory a
/// thread freed in that thread's arena, and only trims an arena from its top:
/// after a burst (a compaction, a snapshot) resident memory would otherwise
/// stay at the burst's high-water mark although the heap is mostly free.
/// It walks every arena's free chunks with that arena locked, so callers run
/// it after such bursts (a maintenance run that copied or deleted segments),
/// never per message. Measured need (the workspace forbids `unsafe` without
/// one): in a 60-minute soak RSS stepped up ~2 MiB at every segment roll
/// without it and stopped stepping with it (RELIABILITY.md, "Soak").
#[allow(unsafe_code)]
pub(crate) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: malloc_trim takes no pointers and is thread-safe (it locks
        // each arena); 0 keeps no extra padding at the top of the heap.
        unsafe {
            malloc_trim(0);
        }
    }
}
