//! Copies between the caller's buffers and ours that fail with EFAULT instead of crashing, as
//! the kernel's copy_from_user/copy_to_user do: `process_vm_readv`/`writev` on our own pid.
//! Where those calls are forbidden (some seccomp profiles), plain copies are used.

use std::ops::Range;
use std::os::raw::c_void;

const IOV_BATCH: usize = 512;

fn vm_unavailable(e: i32) -> bool {
    e == libc::EPERM || e == libc::ENOSYS
}

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EFAULT)
}

/// Reads `len` bytes at `src` of this process.
pub fn read(src: *const c_void, len: usize) -> Result<Vec<u8>, i32> {
    let mut buf = vec![0u8; len];
    if len == 0 {
        return Ok(buf);
    }
    if src.is_null() {
        return Err(libc::EFAULT);
    }
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: len,
    };
    let remote = libc::iovec {
        iov_base: src as *mut c_void,
        iov_len: len,
    };
    // SAFETY: the kernel checks the remote range; the local one is our buffer.
    let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    if n == len as isize {
        return Ok(buf);
    }
    if n < 0 && vm_unavailable(errno()) {
        // SAFETY: no way to check the range; trust the caller as libc would.
        unsafe { std::ptr::copy_nonoverlapping(src.cast::<u8>(), buf.as_mut_ptr(), len) };
        return Ok(buf);
    }
    Err(libc::EFAULT)
}

/// Writes `data` to `dst` of this process.
pub fn write(dst: *mut c_void, data: &[u8]) -> Result<(), i32> {
    write_ranges(dst, data, std::slice::from_ref(&(0..data.len())))
}

/// Writes the given ranges of `data` to the same offsets from `dst`.
fn write_ranges(dst: *mut c_void, data: &[u8], ranges: &[Range<usize>]) -> Result<(), i32> {
    if data.is_empty() {
        return Ok(());
    }
    if dst.is_null() {
        return Err(libc::EFAULT);
    }
    for batch in ranges.chunks(IOV_BATCH) {
        let local: Vec<libc::iovec> = batch
            .iter()
            .map(|r| libc::iovec {
                iov_base: data[r.clone()].as_ptr() as *mut c_void,
                iov_len: r.len(),
            })
            .collect();
        let remote: Vec<libc::iovec> = batch
            .iter()
            .map(|r| libc::iovec {
                iov_base: dst.cast::<u8>().wrapping_add(r.start).cast(),
                iov_len: r.len(),
            })
            .collect();
        let want: usize = batch.iter().map(|r| r.len()).sum();
        // SAFETY: the kernel checks the remote ranges; the local ones are inside `data`.
        let n = unsafe {
            libc::process_vm_writev(
                libc::getpid(),
                local.as_ptr(),
                local.len() as u64,
                remote.as_ptr(),
                remote.len() as u64,
                0,
            )
        };
        if n == want as isize {
            continue;
        }
        if n < 0 && vm_unavailable(errno()) {
            for r in batch {
                // SAFETY: as in `read`, trusted like a libc copy.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        data[r.clone()].as_ptr(),
                        dst.cast::<u8>().add(r.start),
                        r.len(),
                    )
                };
            }
            continue;
        }
        return Err(libc::EFAULT);
    }
    Ok(())
}
