//! The binary's global allocator: mimalloc, asked for an aligned block only when
//! the alignment is more than a plain block has.
//!
//! Rust gives every allocation an alignment, and the `mimalloc` crate passes each
//! one to `mi_malloc_aligned`. mimalloc 3 takes its plain path there only when the
//! block's size is a power of two, or when a free block at hand happens to be
//! aligned; otherwise (a 48-byte string, any block over 1 KiB, or whenever the
//! page's free list has run out) it allocates `size + alignment - 1` bytes and
//! returns a pointer into the block. Under the benchmark's fail-fast load that was
//! seven allocations in sixty per request, each several times the cost of a
//! plain one and in a larger size class.
//!
//! A plain block is already aligned enough for nearly every request: mimalloc
//! rounds sizes of 16 bytes and up to multiples of 16 and starts every page's
//! first block on a 16-byte boundary, and a block under 16 bytes is 8 bytes, on an
//! 8-byte boundary. So a layout whose alignment is at most 16 and at most its size
//! (the same rule the standard library's `System` allocator applies to `malloc`)
//! gets `mi_malloc`, `mi_zalloc` or `mi_realloc`; any other keeps the aligned calls.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The alignment every plain mimalloc block of at least this size has.
const PLAIN_ALIGN: usize = 16;

/// mimalloc, through its plain calls where they give the alignment asked for.
pub struct MiMalloc;

/// Whether a plain block of `layout`'s size is aligned as `layout` asks.
fn plain_fits(layout: Layout) -> bool {
    layout.align() <= PLAIN_ALIGN && layout.align() <= layout.size()
}

// SAFETY: every pointer handed out comes from mimalloc, aligned as the layout asks
// (see the module documentation for plain blocks; the aligned calls guarantee it
// themselves), and `mi_free` and `mi_realloc` accept blocks from either kind of call.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: mimalloc's allocation calls have no preconditions.
        unsafe {
            if plain_fits(layout) {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        unsafe {
            if plain_fits(layout) {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: the caller passes a block this allocator returned.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // The new block keeps the old alignment; a plain one fits it if it fits the
        // new size.
        let fits = Layout::from_size_align(new_size, layout.align()).is_ok_and(plain_fits);
        // SAFETY: the caller passes a block this allocator returned for `layout`,
        // and a non-zero `new_size` that does not overflow when rounded up to it.
        unsafe {
            if fits {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes either side of mimalloc's size classes and of the 1 KiB small limit.
    const SIZES: &[usize] = &[
        1, 2, 3, 7, 8, 9, 15, 16, 17, 24, 40, 48, 56, 72, 100, 1000, 1025, 4097, 70_000,
    ];
    const ALIGNS: &[usize] = &[1, 2, 4, 8, 16, 32, 64, 128, 4096];

    fn layouts() -> impl Iterator<Item = Layout> {
        SIZES.iter().flat_map(|&size| {
            ALIGNS
                .iter()
                .map(move |&align| Layout::from_size_align(size, align).expect("a power-of-two alignment"))
        })
    }

    fn aligned(ptr: *mut u8, align: usize) -> bool {
        !ptr.is_null() && (ptr as usize).is_multiple_of(align)
    }

    #[test]
    fn every_block_is_aligned_as_its_layout_asks_and_holds_its_size() {
        for layout in layouts() {
            // Many at once, so that pages fill up and the allocator's slower paths run.
            let blocks: Vec<*mut u8> = (0..64)
                .map(|n| {
                    // SAFETY: the layout has a non-zero size.
                    let ptr = unsafe { MiMalloc.alloc(layout) };
                    assert!(aligned(ptr, layout.align()), "{layout:?} gave {ptr:p}");
                    // SAFETY: the block holds `layout.size()` bytes.
                    unsafe { ptr.write_bytes(n as u8, layout.size()) };
                    ptr
                })
                .collect();
            for (n, ptr) in blocks.into_iter().enumerate() {
                // SAFETY: written above, `layout.size()` bytes.
                let bytes = unsafe { std::slice::from_raw_parts(ptr, layout.size()) };
                assert!(
                    bytes.iter().all(|b| *b == n as u8),
                    "{layout:?}: a block overlapped another"
                );
                // SAFETY: allocated above with this layout.
                unsafe { MiMalloc.dealloc(ptr, layout) };
            }
        }
    }

    #[test]
    fn zeroed_blocks_are_zero_even_where_a_freed_block_was_written() {
        for layout in layouts() {
            // SAFETY: as above; the block is dirtied, freed, and its room asked for again.
            unsafe {
                let dirty = MiMalloc.alloc(layout);
                dirty.write_bytes(0xAB, layout.size());
                MiMalloc.dealloc(dirty, layout);
                let ptr = MiMalloc.alloc_zeroed(layout);
                assert!(aligned(ptr, layout.align()), "{layout:?} gave {ptr:p}");
                let bytes = std::slice::from_raw_parts(ptr, layout.size());
                assert!(bytes.iter().all(|b| *b == 0), "{layout:?}: not zeroed");
                MiMalloc.dealloc(ptr, layout);
            }
        }
    }

    #[test]
    fn a_reallocated_block_keeps_its_alignment_and_its_bytes() {
        for layout in layouts() {
            for &new_size in SIZES {
                // SAFETY: the block is written over its size, grown or shrunk, and read
                // up to the smaller of the two sizes.
                unsafe {
                    let ptr = MiMalloc.alloc(layout);
                    for i in 0..layout.size() {
                        ptr.add(i).write(i as u8);
                    }
                    let moved = MiMalloc.realloc(ptr, layout, new_size);
                    assert!(
                        aligned(moved, layout.align()),
                        "{layout:?} to {new_size} gave {moved:p}"
                    );
                    let kept = layout.size().min(new_size);
                    let bytes = std::slice::from_raw_parts(moved, kept);
                    assert!(
                        bytes.iter().enumerate().all(|(i, b)| *b == i as u8),
                        "{layout:?} to {new_size}: bytes lost"
                    );
                    let new_layout = Layout::from_size_align(new_size, layout.align()).expect("a valid layout");
                    MiMalloc.dealloc(moved, new_layout);
                }
            }
        }
    }
}
