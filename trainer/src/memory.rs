//! The one allocator setting the trainer changes, with an `unsafe` call into mimalloc's C API,
//! which has no safe wrapper.
//!
//! burn-flex allocates every activation and gradient afresh and frees it within the step.
//! mimalloc hands freed memory back to the kernel after a purge delay (1 s by default), so each
//! step faulted its pages in again and the kernel zeroed them: 12% of a `trainer bench` profile
//! went to `clear_page_erms`. With purging off (`MIMALLOC_PURGE_DELAY=-1`) freed memory is kept
//! for the next allocation: 1.79 -> 1.96 images/s in back-to-back runs, peak RSS 1,088 ->
//! 1,123 MB (README, `trainer bench`).
#![allow(unsafe_code)]

/// mimalloc v3's `mi_option_purge_delay` (`include/mimalloc.h`); libmimalloc-sys names only the
/// v2 numbering. [`tests`] checks it against the option's default.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Environment variable mimalloc reads for the purge delay; when set, it wins.
pub const PURGE_DELAY_ENV: &str = "MIMALLOC_PURGE_DELAY";

/// Keeps freed memory for reuse instead of returning it to the kernel, unless
/// `MIMALLOC_PURGE_DELAY` says otherwise. Call once, first thing in `main`.
pub fn keep_freed_memory() {
    if std::env::var_os(PURGE_DELAY_ENV).is_none() {
        // SAFETY: `mi_option_set` stores an integer in mimalloc's option table; it has no
        // pointer arguments and takes any value (-1 means "never purge").
        unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, -1) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The option number is mimalloc's purge delay: its documented default (1000 ms in v3), or
    /// what the environment set.
    #[test]
    fn the_option_is_mimallocs_purge_delay() {
        // SAFETY: reads an integer from mimalloc's option table.
        let value = unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) };
        let want = std::env::var(PURGE_DELAY_ENV).ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
        assert_eq!(value, want);
    }
}
