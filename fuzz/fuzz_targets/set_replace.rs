//! IPT_SO_SET_REPLACE through the kernel-order parser and validator
//! (`Netns::setsockopt_replace` with a fixed extension checker): any input gives Ok or an
//! errno, never a panic; an accepted table walks cleanly and is accepted again when read back.
//! The input layout is documented at `translator::kernel::fuzz::set_replace`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    translator::kernel::fuzz::set_replace(data);
});
