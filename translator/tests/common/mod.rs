//! Shared helpers of the root-only tests that compare the emulation with the kernel.
#![allow(dead_code)]

use translator::abi::{Family, ReplaceHdr};
use translator::check::{self, Errno, ExtVerdict};
use translator::ext;
use translator::oracle::Scratch;

/// A scratch namespace, or None (with a message) when the test cannot run here.
pub fn scratch_or_skip(test: &str) -> Option<Scratch> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("{test}: skipped: needs root (network namespaces and raw sockets)");
        return None;
    }
    match Scratch::new() {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("{test}: skipped: no scratch namespace: {e}");
            None
        }
    }
}

/// What the emulation says about a table: the errno, Ok, or "ask the kernel".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Native {
    Ok,
    Err(Errno),
    Unmodeled,
}

pub fn native(family: Family, hdr: &ReplaceHdr, blob: &[u8]) -> Native {
    match check::translate(family, hdr, blob, &ext::Registry) {
        Ok(t) if t.needs_kernel_check => Native::Unmodeled,
        Ok(_) => Native::Ok,
        Err(e) => Native::Err(e),
    }
}

impl From<ExtVerdict> for Native {
    fn from(v: ExtVerdict) -> Native {
        match v {
            ExtVerdict::Ok => Native::Ok,
            ExtVerdict::Err(e) => Native::Err(e),
            ExtVerdict::Unmodeled => Native::Unmodeled,
        }
    }
}

pub fn kernel(s: &Scratch, family: Family, hdr: &ReplaceHdr, blob: &[u8]) -> Result<(), Errno> {
    s.check_replace(family, hdr, blob)
}

/// Whether a native answer agrees with the kernel's (Unmodeled agrees with anything).
pub fn agrees(n: Native, k: Result<(), Errno>) -> bool {
    match n {
        Native::Ok => k.is_ok(),
        Native::Err(e) => k == Err(e),
        Native::Unmodeled => true,
    }
}

pub fn errno_name(e: Errno) -> String {
    std::io::Error::from_raw_os_error(e).to_string()
}
