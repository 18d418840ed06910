//! The kernel's own ip_tables, in a private scratch network namespace, as a reference.
//!
//! Two uses:
//! - the daemon asks it to check extensions `check` does not model (their checkentry
//!   functions: hundreds of kernel modules): the table is replaced in the scratch namespace and
//!   the kernel's errno is the answer. The user's namespace is never touched, and the scratch
//!   namespace dies with the process that made it;
//! - tests compare every answer of the emulation with the kernel's for the same input.
//!
//! Limits: a check that depends on state of the user's namespace (`-m set` needs the ipset to
//! exist there) cannot be answered here.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::abi::{self, Family, ReplaceHdr};

/// Raw sockets in a namespace of our own.
pub struct Scratch {
    v4: OwnedFd,
    v6: OwnedFd,
}

fn raw_socket(af: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned by the result.
    let fd = unsafe { libc::socket(af, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_RAW) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Scratch {
    /// Makes a new network namespace (in a short-lived thread, so the caller's namespace is
    /// unchanged) and opens the two raw sockets there; they keep the namespace alive.
    pub fn new() -> io::Result<Scratch> {
        std::thread::spawn(|| -> io::Result<Scratch> {
            // SAFETY: unshare of the network namespace affects this thread only.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(Scratch {
                v4: raw_socket(libc::AF_INET)?,
                v6: raw_socket(libc::AF_INET6)?,
            })
        })
        .join()
        .map_err(|_| io::Error::other("scratch namespace thread panicked"))?
    }

    /// A scratch view of the *current* namespace (for tests that run inside a namespace of
    /// their own).
    pub fn here() -> io::Result<Scratch> {
        Ok(Scratch {
            v4: raw_socket(libc::AF_INET)?,
            v6: raw_socket(libc::AF_INET6)?,
        })
    }

    fn fd(&self, f: Family) -> i32 {
        match f {
            Family::V4 => self.v4.as_raw_fd(),
            Family::V6 => self.v6.as_raw_fd(),
        }
    }

    /// getsockopt with a buffer; returns the buffer or the errno.
    pub fn getsockopt(&self, f: Family, opt: i32, mut buf: Vec<u8>) -> Result<Vec<u8>, i32> {
        let mut len = buf.len() as libc::socklen_t;
        // SAFETY: buf is valid for len bytes.
        let r = unsafe {
            libc::getsockopt(
                self.fd(f),
                bpfipt_proto::kabi::sol(f.af()),
                opt,
                buf.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO));
        }
        Ok(buf)
    }

    /// setsockopt with a buffer; returns the errno on failure.
    pub fn setsockopt(&self, f: Family, opt: i32, buf: &[u8]) -> Result<(), i32> {
        // SAFETY: buf is valid for its length.
        let r = unsafe {
            libc::setsockopt(
                self.fd(f),
                bpfipt_proto::kabi::sol(f.af()),
                opt,
                buf.as_ptr().cast(),
                buf.len() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO));
        }
        Ok(())
    }

    /// GET_INFO for `name`.
    pub fn get_info(&self, f: Family, name: &str) -> Result<abi::GetInfo, i32> {
        let mut buf = vec![0u8; abi::GETINFO_SIZE];
        abi::put_c_str(&mut buf[..abi::TABLE_MAXNAMELEN], name.as_bytes());
        let b = self.getsockopt(f, bpfipt_proto::kabi::SO_GET_INFO, buf)?;
        abi::GetInfo::parse(&b).ok_or(libc::EINVAL)
    }

    /// GET_ENTRIES for `name` (size from GET_INFO); the entry table only.
    pub fn get_entries(&self, f: Family, name: &str) -> Result<Vec<u8>, i32> {
        let info = self.get_info(f, name)?;
        let mut buf = vec![0u8; abi::GET_ENTRIES_HDR + info.size as usize];
        abi::put_c_str(&mut buf[..abi::TABLE_MAXNAMELEN], name.as_bytes());
        buf[32..36].copy_from_slice(&info.size.to_ne_bytes());
        let b = self.getsockopt(f, bpfipt_proto::kabi::SO_GET_ENTRIES, buf)?;
        Ok(b[abi::GET_ENTRIES_HDR..].to_vec())
    }

    /// Replaces the table named in `hdr` with `entries` and returns the kernel's errno. Only
    /// the counter count differs from `hdr`: it is set to the scratch table's entry count, so
    /// that the answer is the one the kernel would give in a namespace whose table has
    /// `hdr.num_counters` entries. A count the kernel refuses without allocating (more than
    /// `XT_MAX_TABLE_SIZE` bytes of counters) and the count for an unknown table are kept:
    /// the kernel checks the extensions first and then fails the same way.
    pub fn check_replace(&self, f: Family, hdr: &ReplaceHdr, entries: &[u8]) -> Result<(), i32> {
        let mut h = hdr.clone();
        let refused = h.num_counters as u64 * abi::COUNTERS_SIZE as u64
            > bpfipt_proto::kabi::XT_MAX_TABLE_SIZE;
        let mut counters = Vec::new();
        h.counters_ptr = 0;
        if !refused {
            if let Ok(info) = self.get_info(f, &hdr.name_str()) {
                h.num_counters = info.num_entries;
                counters = vec![0u8; info.num_entries as usize * abi::COUNTERS_SIZE];
                h.counters_ptr = counters.as_mut_ptr() as u64;
            }
        }
        let mut buf = h.emit();
        buf.extend_from_slice(&entries[..(h.size as usize).min(entries.len())]);
        let r = self.setsockopt(f, bpfipt_proto::kabi::SO_SET_REPLACE, &buf);
        drop(counters);
        r
    }

    /// Sends a raw SET_REPLACE buffer unchanged (tests of the exact errno order).
    pub fn raw_replace(&self, f: Family, buf: &[u8]) -> Result<(), i32> {
        self.setsockopt(f, bpfipt_proto::kabi::SO_SET_REPLACE, buf)
    }
}
