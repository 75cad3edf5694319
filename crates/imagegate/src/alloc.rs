//! The global allocator: mimalloc for everything small, glibc malloc for pictures.
//!
//! Small allocations (request handling, JSON, the ledger) are many and short-lived on
//! every thread; mimalloc serves them 1.4-1.6x faster than glibc on the cache-hit path
//! (BENCHMARKS.md, "HTTP under load").
//!
//! Large ones are pixel buffers, encoded pictures and codec buffers (a 1024² RGB
//! image is 3 MB, a 512 px variant 786 KB, an encoded file tens to hundreds of KB),
//! and a miss hands them from thread to thread: drawn or fetched on one, decoded and
//! encoded on a CPU worker, freed after the upload on yet another. mimalloc keeps
//! memory with the thread that allocated it: a block freed by another thread waits in
//! its owner's queue until the owner allocates that size again, and a blocking-pool
//! thread may not do so for a long time. Under 64 concurrent misses mimalloc's share
//! of RSS kept growing for as long as the load lasted (by 100-200 MB in 30 s). From
//! [`LARGE`] up, blocks come from glibc instead, whose arenas take a block back from
//! any thread at once, and which [`tune`] sets to map
//! picture-sized blocks with mmap and unmap them on free.

use std::alloc::{GlobalAlloc, Layout, System};

/// mimalloc's `mi_option_purge_delay` and `mi_option_allow_thp`: their positions in
/// the `mi_option_e` enum of the mimalloc v3 that libmimalloc-sys 0.1.49 builds
/// (`c_src/mimalloc/v3/include/mimalloc.h`); libmimalloc-sys does not name them.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
const MI_OPTION_ALLOW_THP: libmimalloc_sys::mi_option_t = 43;

/// Blocks glibc maps on their own rather than carving from an arena: 1 MiB, below
/// a 1024² picture (3 MB) and above the many small blocks libaom makes per encode.
const MMAP_THRESHOLD: libc::c_int = 1 << 20;

/// Allocator settings for peak memory, before any thread starts. Under 64 concurrent
/// misses they halved peak RSS for no measurable throughput (BENCHMARKS.md):
/// glibc malloc, which the C libraries (libaom, ONNX Runtime) use, kept one arena
/// per thread that touched it, and mimalloc held freed pages for its default 10 ms
/// purge delay while megabyte-sized pictures came and went. The usual environment
/// variables (`MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_`, `MIMALLOC_PURGE_DELAY`,
/// `MIMALLOC_ALLOW_THP`) still win when set.
///
/// Transparent huge pages are off for the process. mimalloc v3 asks for them on its
/// arenas (`MADV_HUGEPAGE`), so a few live blocks kept a whole 2 MiB page resident:
/// under 64 concurrent misses its arena held 50-100 MB where 27 MB do without them.
/// That costs about 5% of the hit rate (BENCHMARKS.md, "Peak RSS, 2026-11-25"). The
/// option alone is too late for the arena mimalloc reserved before `main`, so the
/// process-wide switch (`PR_SET_THP_DISABLE`, which later page faults in every
/// mapping obey) comes with it.
///
/// glibc's mmap threshold is fixed at [`MMAP_THRESHOLD`]: every picture-sized block
/// (ours, and libaom's frame buffers) is mapped on allocation and unmapped on free.
/// Left alone, glibc raises the threshold to the largest block freed so far (up to
/// 32 MB), after which such blocks stay in its arenas once freed.
pub fn tune() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only changes glibc's tunables; no other thread exists yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        // SAFETY: as above.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        }
    }
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: mi_option_set stores an option value; it is safe to call at any time.
        unsafe {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
        }
    }
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: as above; prctl(PR_SET_THP_DISABLE) only sets a flag on this
        // process's memory map. Its failure (a kernel without it) leaves THP as it was.
        unsafe {
            libmimalloc_sys::mi_option_set(MI_OPTION_ALLOW_THP, 0);
            libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
        }
    }
}

/// Blocks of at least this many bytes are served by glibc: mimalloc's largest
/// "medium" size, above which it gives every block a page of its own.
pub const LARGE: usize = 64 << 10;

pub struct SplitAllocator;

fn is_large(size: usize) -> bool {
    size >= LARGE
}

// SAFETY: every block is freed (and reallocated) by the allocator that made it:
// GlobalAlloc's callers pass the block's current layout to dealloc and realloc, and
// its size alone decides which allocator that was. A realloc across the threshold
// moves the block to the other allocator with an allocate, copy, free.
unsafe impl GlobalAlloc for SplitAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_large(layout.size()) {
            System.alloc(layout)
        } else {
            mimalloc::MiMalloc.alloc(layout)
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_large(layout.size()) {
            System.alloc_zeroed(layout)
        } else {
            mimalloc::MiMalloc.alloc_zeroed(layout)
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_large(layout.size()) {
            System.dealloc(ptr, layout)
        } else {
            mimalloc::MiMalloc.dealloc(ptr, layout)
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        match (is_large(layout.size()), is_large(new_size)) {
            (false, false) => mimalloc::MiMalloc.realloc(ptr, layout, new_size),
            (true, true) => System.realloc(ptr, layout, new_size),
            _ => {
                // SAFETY: the caller guarantees new_size, rounded up to the alignment,
                // does not overflow isize (GlobalAlloc::realloc's contract).
                let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
                let new = self.alloc(new_layout);
                if !new.is_null() {
                    std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                    self.dealloc(ptr, layout);
                }
                new
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pattern that tells bytes apart, so a lost or shifted copy shows.
    fn fill(ptr: *mut u8, len: usize) {
        for i in 0..len {
            // SAFETY: the caller owns len bytes at ptr.
            unsafe { ptr.add(i).write((i % 251) as u8) };
        }
    }

    fn check(ptr: *const u8, len: usize) {
        for i in 0..len {
            // SAFETY: the caller owns len bytes at ptr.
            assert_eq!(unsafe { ptr.add(i).read() }, (i % 251) as u8, "byte {i}");
        }
    }

    #[test]
    fn realloc_keeps_contents_across_the_threshold_both_ways() {
        let a = SplitAllocator;
        for align in [8, 64, 4096] {
            let small = Layout::from_size_align(LARGE / 2, align).unwrap();
            // SAFETY: layouts are non-zero; each block is freed once with its layout.
            unsafe {
                let p = a.alloc(small);
                assert!(!p.is_null());
                fill(p, small.size());
                let grown = a.realloc(p, small, LARGE * 3);
                assert!(!grown.is_null());
                assert_eq!(grown as usize % align, 0);
                check(grown, small.size());
                fill(grown, LARGE * 3);
                let big = Layout::from_size_align(LARGE * 3, align).unwrap();
                let shrunk = a.realloc(grown, big, 1000);
                assert!(!shrunk.is_null());
                assert_eq!(shrunk as usize % align, 0);
                check(shrunk, 1000);
                a.dealloc(shrunk, Layout::from_size_align(1000, align).unwrap());
            }
        }
    }

    #[test]
    fn zeroed_blocks_are_zero_on_both_sides() {
        let a = SplitAllocator;
        for size in [100, LARGE - 1, LARGE, LARGE * 2 + 7] {
            let layout = Layout::from_size_align(size, 16).unwrap();
            // SAFETY: non-zero layout, freed once with the same layout.
            unsafe {
                let p = a.alloc_zeroed(layout);
                assert!(!p.is_null());
                assert!(std::slice::from_raw_parts(p, size).iter().all(|&b| b == 0));
                a.dealloc(p, layout);
            }
        }
    }
}
