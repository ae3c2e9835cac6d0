//! Copies that LLVM would otherwise turn into calls to a memmove looping byte by byte:
//! a byte array (a MAC, an address, an Ethernet header) between the packet and a map
//! value, or a struct out of a map value. These are one load and one store per 16-bit
//! word (`halves_*`: every header field they touch lies at an even offset, after 14 or
//! 18 bytes of Ethernet and VLAN in frames the driver aligns, and so does every map-value
//! field they read) or per 64-bit word ([`words`], for 8-aligned structs).

/// `N` bytes as `N / 2` words, by value (no alignment needed).
#[inline(always)]
pub fn halves_of<const N: usize, const H: usize>(bytes: [u8; N]) -> [u16; H] {
    const { assert!(N == 2 * H) };
    let mut halves = [0u16; H];
    let mut i = 0;
    while i < H {
        halves[i] = u16::from_ne_bytes([bytes[2 * i], bytes[2 * i + 1]]);
        i += 1;
    }
    halves
}

/// Writes `halves` at `dst`.
///
/// # Safety
/// `dst` must be valid for `2 * H` bytes of writes and 2-aligned.
#[inline(always)]
#[expect(clippy::cast_ptr_alignment, reason = "2-aligned: the caller's promise")]
pub unsafe fn write_halves<const H: usize>(dst: *mut u8, halves: &[u16; H]) {
    let dst = dst.cast::<u16>();
    let mut i = 0;
    while i < H {
        // SAFETY: in bounds and aligned (the caller's promise). Volatile, so that LLVM
        // neither merges the stores into a memcpy call nor splits them into bytes.
        unsafe { dst.add(i).write_volatile(halves[i]) };
        i += 1;
    }
}

/// Reads `H` words at `src`.
///
/// # Safety
/// `src` must be valid for `2 * H` bytes of reads and 2-aligned.
#[inline(always)]
#[expect(clippy::cast_ptr_alignment, reason = "2-aligned: the caller's promise")]
pub unsafe fn read_halves<const H: usize>(src: *const u8) -> [u16; H] {
    let src = src.cast::<u16>();
    let mut halves = [0u16; H];
    let mut i = 0;
    while i < H {
        // SAFETY: as in `write_halves`.
        halves[i] = unsafe { src.add(i).read_volatile() };
        i += 1;
    }
    halves
}

/// Copies a `T` from `src` to `dst` a 64-bit word at a time.
///
/// # Safety
/// Both must be valid for a `T`, 8-aligned, and not overlap; `T` a multiple of 8 bytes
/// of plain data.
#[inline(always)]
pub unsafe fn words<T: Copy>(dst: *mut T, src: *const T) {
    const { assert!(size_of::<T>().is_multiple_of(8) && align_of::<T>() >= 8) };
    let (dst, src) = (dst.cast::<u64>(), src.cast::<u64>());
    let mut i = 0;
    while i < size_of::<T>() / 8 {
        // SAFETY: in bounds and aligned (the caller's promise); volatile as in
        // `write_halves`.
        unsafe { dst.add(i).write_volatile(src.add(i).read_volatile()) };
        i += 1;
    }
}

/// Zeroes a `T` at `dst` a 64-bit word at a time.
///
/// # Safety
/// `dst` must be valid for a `T` and 8-aligned (a map value is); `T` a multiple of 8 bytes
/// of plain data for which all-zero is valid.
#[inline(always)]
pub unsafe fn zero_words<T>(dst: *mut T) {
    const { assert!(size_of::<T>().is_multiple_of(8)) };
    let dst = dst.cast::<u64>();
    let mut i = 0;
    while i < size_of::<T>() / 8 {
        // SAFETY: in bounds and aligned (the caller's promise); volatile, so that LLVM
        // does not turn the stores back into a call to memset.
        unsafe { dst.add(i).write_volatile(0) };
        i += 1;
    }
}
