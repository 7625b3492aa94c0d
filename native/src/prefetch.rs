//! Cache prefetch hints for the fan-out: a worker forwards a frame to one consumer after
//! another, and each consumer's state (its record, its transport's, its SRTP context) was
//! last touched a frame ago, so it is mostly out of the cache. Asking for the state of the
//! next few consumers before forwarding them lets those loads overlap instead of each
//! consumer waiting for its own in turn.

/// Ask for the cache lines of `*r` (all of its inline bytes; not what it points to).
#[inline(always)]
pub fn prefetch<T>(r: &T) {
    prefetch_bytes(r as *const T as *const u8, std::mem::size_of::<T>());
}

/// Ask for the cache lines of the elements of `s`, up to `max` bytes of them.
#[inline(always)]
pub fn prefetch_slice<T>(s: &[T], max: usize) {
    prefetch_bytes(s.as_ptr() as *const u8, std::mem::size_of_val(s).min(max));
}

#[inline(always)]
fn prefetch_bytes(p: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let mut off = 0;
        while off < len {
            // SAFETY: a prefetch is a hint: it never faults and changes nothing, whatever the
            // address (wrapping_add keeps the pointer arithmetic itself defined).
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off) as *const i8) };
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, len);
}
