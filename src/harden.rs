//! Process and memory hardening. The only module allowed `unsafe`: each block is a libc-level
//! call on memory this module owns or was handed by the allocator contract.
//!
//! - the process is not dumpable and its core limit is 0;
//! - every freed heap block is zeroed before it returns to the allocator, so transport buffers
//!   (HTTP/2 frames, protobuf encodings) that held a value leave nothing behind;
//! - secret buffers are locked in RAM (mlock) and excluded from dumps (MADV_DONTDUMP), page by
//!   page with reference counts, within the default memlock limit.
#![allow(unsafe_code)]

use parking_lot::Mutex;
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::LazyLock;

/// Makes the process non-dumpable (no core files, no ptrace by same-uid peers) with core limit 0.
pub fn harden_process() -> Result<(), String> {
    nix::sys::prctl::set_dumpable(false).map_err(|e| format!("prctl(PR_SET_DUMPABLE, 0): {e}"))?;
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0)
        .map_err(|e| format!("setrlimit(RLIMIT_CORE, 0): {e}"))?;
    Ok(())
}

/// Keeps the heap in one glibc arena (unless `MALLOC_ARENA_MAX` says otherwise). Per-thread
/// arenas each keep their own freed space, which for a long-running sidecar holding many small
/// cache entries roughly doubles resident memory; the request path allocates little, so one
/// arena costs no measurable throughput. Call before any thread starts.
pub fn compact_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only changes allocator tuning; called before other threads exist.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

/// Whether the process is dumpable (tests check hardening took effect).
pub fn is_dumpable() -> bool {
    nix::sys::prctl::get_dumpable().unwrap_or(true)
}

/// Locks all current and future memory when CAP_IPC_LOCK allows it; returns whether it did.
pub fn lock_all() -> bool {
    use nix::sys::mman::{mlockall, MlockAllFlags};
    mlockall(MlockAllFlags::MCL_CURRENT | MlockAllFlags::MCL_FUTURE).is_ok()
}

static ZERO_ON_FREE: AtomicBool = AtomicBool::new(true);

/// Turns zero-on-free off (benchmarks measure its cost this way).
pub fn set_zero_on_free(on: bool) {
    ZERO_ON_FREE.store(on, Ordering::Relaxed);
}

/// The system allocator, zeroing each block when it is freed or moved.
pub struct ZeroizingAlloc;

/// Zeroes a block about to be freed. A plain memset right before `free` is a dead store the
/// compiler may drop, so the writes are volatile (`zeroize`), eight bytes at a time where the
/// block is aligned for it (a byte-wise volatile loop costs several times more per request).
fn wipe(ptr: *mut u8, len: usize) {
    use zeroize::Zeroize;
    if !ZERO_ON_FREE.load(Ordering::Relaxed) || len == 0 {
        return;
    }
    // SAFETY: the allocator contract gives us `len` writable bytes at `ptr` until dealloc, and
    // nothing else refers to them any more.
    let block = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
    // SAFETY: any bit pattern is a valid u64, and align_to_mut only yields aligned words.
    let (head, words, tail) = unsafe { block.align_to_mut::<u64>() };
    head.zeroize();
    words.zeroize();
    tail.zeroize();
}

// SAFETY: every method forwards to `System` with the caller's layout; `realloc` allocates anew,
// copies, wipes and frees, so no block is ever released unwiped.
unsafe impl GlobalAlloc for ZeroizingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        wipe(ptr, layout.size());
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        let new = unsafe { System.alloc(new_layout) };
        if !new.is_null() {
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
            }
            wipe(ptr, layout.size());
            unsafe { System.dealloc(ptr, layout) };
        }
        new
    }
}

/// The kernel's page size, read once (4 KiB on most x86-64 machines, 16 or 64 KiB elsewhere).
fn page() -> usize {
    static PAGE: LazyLock<usize> = LazyLock::new(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .and_then(|p| usize::try_from(p).ok())
            .filter(|p| p.is_power_of_two())
            .unwrap_or(4096)
    });
    *PAGE
}

/// Pages holding secret bytes, with how many secret buffers use each.
static LOCKED: LazyLock<Mutex<HashMap<usize, u32>>> = LazyLock::new(|| Mutex::new(HashMap::new()));
static LOCK_FAILURES: AtomicU64 = AtomicU64::new(0);

/// Secret buffers that could not be locked (memlock limit reached); they still zeroize.
pub fn lock_failures() -> u64 {
    LOCK_FAILURES.load(Ordering::Relaxed)
}

/// Start addresses of the `page`-sized pages that `len` bytes at `ptr` touch.
fn pages(ptr: *const u8, len: usize, page: usize) -> impl Iterator<Item = usize> {
    let start = ptr as usize & !(page - 1);
    let end = (ptr as usize + len.max(1) - 1) & !(page - 1);
    (start..=end).step_by(page)
}

/// Locks the pages of a secret buffer and marks them excluded from core dumps.
pub fn lock(bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    let page = page();
    let mut locked = LOCKED.lock();
    for p in pages(bytes.as_ptr(), bytes.len(), page) {
        let n = locked.entry(p).or_insert(0);
        if *n == 0 {
            let addr = NonNull::new(p as *mut std::ffi::c_void).expect("page address is not null");
            // SAFETY: `p` is the start of a mapped page that holds part of a live buffer.
            let ok = unsafe { nix::sys::mman::mlock(addr, page) }.is_ok();
            // SAFETY: as above; MADV_DONTDUMP only changes dump behaviour.
            let _ = unsafe {
                nix::sys::mman::madvise(addr, page, nix::sys::mman::MmapAdvise::MADV_DONTDUMP)
            };
            if !ok {
                LOCK_FAILURES.fetch_add(1, Ordering::Relaxed);
            }
        }
        *n += 1;
    }
}

/// Releases a buffer's hold on its pages; a page is unlocked when no secret uses it.
pub fn unlock(bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    let page = page();
    let mut locked = LOCKED.lock();
    for p in pages(bytes.as_ptr(), bytes.len(), page) {
        if let Some(n) = locked.get_mut(&p) {
            *n -= 1;
            if *n == 0 {
                locked.remove(&p);
                let addr =
                    NonNull::new(p as *mut std::ffi::c_void).expect("page address is not null");
                // SAFETY: the page is still mapped (the buffer is being dropped, not yet freed).
                let _ = unsafe { nix::sys::mman::munlock(addr, page) };
            }
        }
    }
}

/// Makes every secret buffer (`sidecred-secret`) lock its pages while it lives. Called first
/// thing at start, before any secret exists.
pub fn install_page_locker() {
    sidecred_secret::set_page_locker(sidecred_secret::PageLocker { lock, unlock });
}

/// Pages currently locked for secrets.
pub fn locked_pages() -> usize {
    LOCKED.lock().len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_ranges() {
        // (start, len, page size) -> pages touched
        let cases: [(usize, usize, usize, &[usize]); 6] = [
            (4096, 1, 4096, &[4096]),
            (4095, 2, 4096, &[0, 4096]),
            (8192, 4096, 4096, &[8192]),
            (16383, 2, 16384, &[0, 16384]),
            (16384, 16384, 16384, &[16384]),
            (65536 + 10, 70000, 65536, &[65536, 131072]),
        ];
        for (start, len, page, want) in cases {
            let v: Vec<usize> = pages(start as *const u8, len, page).collect();
            assert_eq!(v, want, "{start}+{len} on {page}");
        }
        assert!(page().is_power_of_two() && page() >= 4096);
    }

    #[test]
    fn wipe_zeroes_every_byte_whatever_the_alignment() {
        set_zero_on_free(true);
        for (off, len) in [(0, 1), (1, 7), (3, 29), (0, 64), (5, 1000)] {
            let mut buf = vec![0xAAu8; 1100];
            wipe(buf[off..].as_mut_ptr(), len);
            assert!(buf[off..off + len].iter().all(|&b| b == 0), "{off}+{len}");
            assert!(
                buf[off + len..].iter().all(|&b| b == 0xAA),
                "{off}+{len}: past the end"
            );
            assert!(
                buf[..off].iter().all(|&b| b == 0xAA),
                "{off}+{len}: before the start"
            );
        }
    }

    fn uses(p: usize) -> u32 {
        LOCKED.lock().get(&p).copied().unwrap_or(0)
    }

    #[test]
    fn lock_counts_pages_by_use() {
        // A whole page of its own, so no other test's secret shares it.
        let size = page();
        let a = vec![1u8; 3 * size];
        let page = (a.as_ptr() as usize + size) & !(size - 1);
        let mine = &a[page - a.as_ptr() as usize..][..size];
        lock(mine);
        lock(mine);
        assert_eq!(uses(page), 2);
        unlock(mine);
        assert_eq!(uses(page), 1);
        unlock(mine);
        assert_eq!(uses(page), 0);
    }
}
