//! `libbpfipt.so`: loaded into unmodified iptables binaries with `LD_PRELOAD`, it answers the
//! ip_tables and ip6_tables socket options (`IPT_SO_*`, `IP6T_SO_*`) instead of the kernel, by
//! forwarding them to `bpfiptd`, the daemon of the caller's network namespace.
//!
//! What is interposed and why:
//! - `socket`: a raw `IPPROTO_RAW` socket of AF_INET/AF_INET6 is still created by the kernel
//!   (so permission errors and the fd itself are real); we remember its family.
//! - `getsockopt`/`setsockopt` on such a socket, at the family's level, for the options in
//!   the table range: answered by the daemon. Revision queries go to the kernel unchanged:
//!   they only read the kernel's extension registry, and its answer is the truth about what
//!   can be enforced (rules the eBPF datapath cannot run fall back to the kernel).
//! - `close`: forgets the socket and its daemon connection.
//! - `fopen`/`fopen64` of `/proc/net/ip{,6}_tables_names`: iptables-save lists the tables
//!   from there; the kernel's file only knows tables the kernel holds.
//!
//! Everything else goes to libc untouched. Every export runs under a panic boundary (a panic
//! never unwinds into C; the call fails with EIO) and a re-entrancy guard (our own socket and
//! close calls, made while serving a call, go straight to libc).

use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::CStr;
use std::io::Write;
use std::os::raw::{c_char, c_int, c_void};
use std::os::unix::net::UnixStream;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Mutex, OnceLock};

use bpfipt_proto::kabi;
use bpfipt_proto::{call, locate, Op, Reply, Request};

mod mem;
mod real;

thread_local! {
    static IN_SHIM: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with the re-entrancy guard set and a panic boundary; `on_panic` is returned (with
/// errno EIO) if `f` panics.
fn guarded<T>(on_panic: T, f: impl FnOnce() -> T) -> T {
    let was = IN_SHIM.with(|g| g.replace(true));
    let r = catch_unwind(AssertUnwindSafe(f));
    IN_SHIM.with(|g| g.set(was));
    match r {
        Ok(v) => v,
        Err(_) => {
            set_errno(libc::EIO);
            on_panic
        }
    }
}

fn in_shim() -> bool {
    IN_SHIM.with(|g| g.get())
}

fn set_errno(e: c_int) {
    // SAFETY: __errno_location returns this thread's errno.
    unsafe { *libc::__errno_location() = e };
}

/// A raw socket we answer for.
struct Tracked {
    family: c_int,
    /// Whether the caller may change tables, as the kernel decides it (see `permitted`).
    permitted: Option<bool>,
    conn: Option<UnixStream>,
}

fn tracked() -> &'static Mutex<HashMap<c_int, Tracked>> {
    static T: OnceLock<Mutex<HashMap<c_int, Tracked>>> = OnceLock::new();
    T.get_or_init(|| Mutex::new(HashMap::new()))
}

fn lock_tracked() -> std::sync::MutexGuard<'static, HashMap<c_int, Tracked>> {
    tracked().lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether the kernel lets the caller use the table options on this socket: it asks the
/// kernel a harmless revision question, which `do_ipt_get_ctl` answers with EPERM exactly when
/// the caller lacks CAP_NET_ADMIN over the socket's namespace. Kernels without ip_tables answer
/// ENOPROTOOPT; then the capability set decides.
fn kernel_permits(fd: c_int, family: c_int) -> bool {
    let mut rev = [0u8; 30];
    rev[..5].copy_from_slice(b"ERROR");
    let mut len = rev.len() as libc::socklen_t;
    let opt = if family == libc::AF_INET6 {
        kabi::IP6T_SO_GET_REVISION_TARGET
    } else {
        kabi::IPT_SO_GET_REVISION_TARGET
    };
    let r = real::getsockopt(
        fd,
        kabi::sol(family),
        opt,
        rev.as_mut_ptr().cast(),
        &mut len,
    );
    if r == 0 {
        return true;
    }
    // SAFETY: reading errno of this thread.
    match unsafe { *libc::__errno_location() } {
        libc::EPERM => false,
        _ => has_net_admin(),
    }
}

fn has_net_admin() -> bool {
    // /proc/self/status CapEff, bit 12 (CAP_NET_ADMIN).
    let Ok(s) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    s.lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 12) != 0)
}

/// Sends one request over the socket's daemon connection (made on first use, in the
/// namespace the caller is in now), retrying once on a fresh connection for idempotent reads.
fn exchange(fd: c_int, req: &Request) -> Result<Reply, c_int> {
    let idempotent = matches!(req.op, Op::GetInfo | Op::GetEntries | Op::TableNames);
    for attempt in 0..2 {
        let mut conn = {
            let mut t = lock_tracked();
            match t.get_mut(&fd) {
                Some(tr) => tr.conn.take(),
                None => None,
            }
        };
        if conn.is_none() {
            match locate::connect_or_spawn() {
                Ok(s) => conn = Some(s),
                Err(e) => {
                    report(&e.message);
                    return Err(e.errno);
                }
            }
        }
        let mut s = conn.unwrap();
        match call(&mut s, req) {
            Ok(reply) => {
                if let Some(tr) = lock_tracked().get_mut(&fd) {
                    tr.conn = Some(s);
                }
                return Ok(reply);
            }
            Err(e) => {
                if !idempotent || attempt == 1 {
                    report(&format!(
                        "bpfipt: lost bpfiptd during a table change ({e}); the table is either \
                         unchanged or fully replaced, check with iptables-save and retry"
                    ));
                    return Err(libc::EAGAIN);
                }
            }
        }
    }
    Err(libc::EAGAIN)
}

/// Flags every request of this process carries.
fn request_flags() -> u8 {
    match std::env::var_os("BPFIPT_STRICT") {
        Some(v) if v == "1" => bpfipt_proto::FLAG_STRICT,
        _ => 0,
    }
}

fn report(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

/// The family of a tracked fd, and whether the option at this level is ours.
fn ours(fd: c_int, level: c_int, optname: c_int, set: bool) -> Option<c_int> {
    let t = lock_tracked();
    let tr = t.get(&fd)?;
    if level != kabi::sol(tr.family) {
        return None;
    }
    let range = if set {
        kabi::set_range(tr.family)
    } else {
        kabi::get_range(tr.family)
    };
    if !range.contains(&optname) || (!set && kabi::is_revision_opt(tr.family, optname)) {
        return None;
    }
    Some(tr.family)
}

fn check_permitted(fd: c_int, family: c_int) -> bool {
    if let Some(p) = lock_tracked().get(&fd).and_then(|t| t.permitted) {
        return p;
    }
    let p = kernel_permits(fd, family);
    if let Some(t) = lock_tracked().get_mut(&fd) {
        t.permitted = Some(p);
    }
    p
}

fn fail(e: c_int) -> c_int {
    set_errno(e);
    -1
}

/// `getsockopt` for IPT_SO_GET_INFO / GET_ENTRIES (and out-of-switch options: EINVAL).
fn emulate_get(
    fd: c_int,
    family: c_int,
    optname: c_int,
    optval: *mut c_void,
    optlen: *mut libc::socklen_t,
) -> c_int {
    let Ok(len_bytes) = mem::read(optlen as *const c_void, 4) else {
        return fail(libc::EFAULT);
    };
    let len = i32::from_ne_bytes(len_bytes.try_into().unwrap());
    if len < 0 {
        return fail(libc::EINVAL);
    }
    if !check_permitted(fd, family) {
        return fail(libc::EPERM);
    }
    let len = len as usize;
    let (op, data) = match optname {
        kabi::SO_GET_INFO => {
            match kabi::get_info_read_len(len).and_then(|n| mem::read(optval, n)) {
                Ok(d) => (Op::GetInfo, d),
                Err(e) => return fail(e),
            }
        }
        kabi::SO_GET_ENTRIES => {
            match kabi::get_entries_read_len(len).and_then(|n| mem::read(optval, n)) {
                Ok(d) => (Op::GetEntries, d),
                Err(e) => return fail(e),
            }
        }
        _ => return fail(libc::EINVAL),
    };
    let req = Request {
        op,
        family: family as u8,
        flags: request_flags(),
        optlen: len as u32,
        data,
    };
    let reply = match exchange(fd, &req) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    if reply.errno != 0 {
        return fail(reply.errno);
    }
    let written = match op {
        Op::GetInfo => mem::write(optval, &reply.data[..reply.data.len().min(len)]),
        _ => {
            // The kernel leaves the bytes of each extension name after its NUL as the caller's
            // buffer had them: read the buffer, keep those bytes, write everything at once.
            let base = optval
                .cast::<u8>()
                .wrapping_add(kabi::GET_ENTRIES_HDR)
                .cast::<c_void>();
            let mut data = reply.data;
            match mem::read(base, data.len()) {
                Ok(old) => {
                    let mut prev = 0;
                    for r in kabi::kernel_written_ranges(family, &data) {
                        data[prev..r.start].copy_from_slice(&old[prev..r.start]);
                        prev = r.end;
                    }
                    mem::write(base, &data)
                }
                Err(e) => Err(e),
            }
        }
    };
    match written {
        Ok(()) => 0,
        Err(e) => fail(e),
    }
}

/// `setsockopt` for IPT_SO_SET_REPLACE / SET_ADD_COUNTERS (and out-of-switch options: EINVAL).
fn emulate_set(
    fd: c_int,
    family: c_int,
    optname: c_int,
    optval: *const c_void,
    optlen: libc::socklen_t,
) -> c_int {
    if !check_permitted(fd, family) {
        return fail(libc::EPERM);
    }
    let len = optlen as usize;
    // Each option: its header size, the check that `len` is at least that (the kernel's
    // `<` or `<=`), and how much follows the header.
    let read = |hdr_len: usize,
                body: fn(&[u8], usize) -> Result<usize, c_int>|
     -> Result<Vec<u8>, c_int> {
        let mut hdr = mem::read(optval, hdr_len)?;
        let n = body(&hdr, len)?;
        let src = optval.cast::<u8>().wrapping_add(hdr_len).cast::<c_void>();
        hdr.extend_from_slice(&mem::read(src, n)?);
        Ok(hdr)
    };
    let (op, data) = match optname {
        kabi::SO_SET_REPLACE if len < kabi::REPLACE_HDR => return fail(libc::EINVAL),
        kabi::SO_SET_REPLACE => match read(kabi::REPLACE_HDR, kabi::replace_body_len) {
            Ok(d) => (Op::SetReplace, d),
            Err(e) => return fail(e),
        },
        kabi::SO_SET_ADD_COUNTERS if len <= kabi::COUNTERS_INFO_HDR => return fail(libc::EINVAL),
        kabi::SO_SET_ADD_COUNTERS => {
            match read(kabi::COUNTERS_INFO_HDR, kabi::add_counters_body_len) {
                Ok(d) => (Op::AddCounters, d),
                Err(e) => return fail(e),
            }
        }
        _ => return fail(libc::EINVAL),
    };
    let counters_ptr = if op == Op::SetReplace {
        u64::from_ne_bytes(
            data[kabi::REPLACE_COUNTERS_PTR..kabi::REPLACE_COUNTERS_PTR + 8]
                .try_into()
                .unwrap(),
        )
    } else {
        0
    };
    let req = Request {
        op,
        family: family as u8,
        flags: request_flags(),
        optlen: len as u32,
        data,
    };
    let reply = match exchange(fd, &req) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    if reply.errno != 0 {
        // The daemon explains refusals the kernel has no words for (strict mode).
        if !reply.data.is_empty() {
            report(String::from_utf8_lossy(&reply.data).trim_end());
        }
        return fail(reply.errno);
    }
    if op == Op::SetReplace && !reply.data.is_empty() {
        // The kernel writes the old counters back and ignores a bad pointer (the new table is
        // in place by then).
        let _ = mem::write(counters_ptr as usize as *mut c_void, &reply.data);
    }
    0
}

fn table_names_file(path: *const c_char, family: c_int) -> Option<*mut libc::FILE> {
    // The kernel's file is readable by root only: an unprivileged caller gets its EACCES.
    // SAFETY: access() reads a NUL-terminated path.
    if unsafe { libc::access(path, libc::R_OK) } != 0 {
        return None;
    }
    let req = Request {
        op: Op::TableNames,
        family: family as u8,
        flags: 0,
        optlen: 0,
        data: Vec::new(),
    };
    let reply = match locate::connect_or_spawn() {
        Ok(mut s) => call(&mut s, &req).ok()?,
        Err(e) => {
            report(&e.message);
            return None;
        }
    };
    if reply.errno != 0 {
        return None;
    }
    // SAFETY: plain system calls on a fresh memfd that the returned FILE then owns.
    unsafe {
        let fd = libc::memfd_create(c"ip_tables_names".as_ptr(), libc::MFD_CLOEXEC);
        if fd < 0 {
            return None;
        }
        let ok = libc::write(fd, reply.data.as_ptr().cast(), reply.data.len())
            == reply.data.len() as isize
            && libc::lseek(fd, 0, libc::SEEK_SET) == 0;
        let f = if ok {
            libc::fdopen(fd, c"r".as_ptr())
        } else {
            std::ptr::null_mut()
        };
        if f.is_null() {
            real::close(fd);
            return None;
        }
        Some(f)
    }
}

fn names_family(path: *const c_char) -> Option<c_int> {
    if path.is_null() {
        return None;
    }
    // SAFETY: fopen's path argument is a NUL-terminated string.
    let p = unsafe { CStr::from_ptr(path) }.to_bytes();
    match p {
        b"/proc/net/ip_tables_names" => Some(libc::AF_INET),
        b"/proc/net/ip6_tables_names" => Some(libc::AF_INET6),
        _ => None,
    }
}

// ---- exported symbols -----------------------------------------------------------------------

/// # Safety
/// Called by C code with the arguments of socket(2).
#[no_mangle]
pub unsafe extern "C" fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int {
    let fd = real::socket(domain, ty, protocol);
    if in_shim() || fd < 0 {
        return fd;
    }
    let saved = *libc::__errno_location();
    guarded((), || {
        let mut t = lock_tracked();
        t.remove(&fd);
        if (domain == libc::AF_INET || domain == libc::AF_INET6)
            && ty & 0xf == libc::SOCK_RAW
            && protocol == libc::IPPROTO_RAW
        {
            t.insert(
                fd,
                Tracked {
                    family: domain,
                    permitted: None,
                    conn: None,
                },
            );
        }
    });
    *libc::__errno_location() = saved;
    fd
}

/// # Safety
/// Called by C code with the arguments of getsockopt(2).
#[no_mangle]
pub unsafe extern "C" fn getsockopt(
    fd: c_int,
    level: c_int,
    optname: c_int,
    optval: *mut c_void,
    optlen: *mut libc::socklen_t,
) -> c_int {
    if in_shim() {
        return real::getsockopt(fd, level, optname, optval, optlen);
    }
    let family = guarded(None, || ours(fd, level, optname, false));
    match family {
        Some(f) => guarded(-1, || emulate_get(fd, f, optname, optval, optlen)),
        None => real::getsockopt(fd, level, optname, optval, optlen),
    }
}

/// # Safety
/// Called by C code with the arguments of setsockopt(2).
#[no_mangle]
pub unsafe extern "C" fn setsockopt(
    fd: c_int,
    level: c_int,
    optname: c_int,
    optval: *const c_void,
    optlen: libc::socklen_t,
) -> c_int {
    if in_shim() {
        return real::setsockopt(fd, level, optname, optval, optlen);
    }
    let family = guarded(None, || ours(fd, level, optname, true));
    match family {
        Some(f) => guarded(-1, || emulate_set(fd, f, optname, optval, optlen)),
        None => real::setsockopt(fd, level, optname, optval, optlen),
    }
}

/// # Safety
/// Called by C code with the argument of close(2).
#[no_mangle]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    if !in_shim() {
        guarded((), || {
            // Dropping the entry closes its daemon connection (through the guard).
            let gone = lock_tracked().remove(&fd);
            drop(gone);
        });
    }
    real::close(fd)
}

/// # Safety
/// Called by C code with the arguments of fopen(3).
#[no_mangle]
pub unsafe extern "C" fn fopen(path: *const c_char, mode: *const c_char) -> *mut libc::FILE {
    if !in_shim() {
        if let Some(fam) = names_family(path) {
            if let Some(f) = guarded(None, || table_names_file(path, fam)) {
                return f;
            }
        }
    }
    real::fopen(path, mode)
}

/// # Safety
/// Called by C code with the arguments of fopen64(3).
#[no_mangle]
pub unsafe extern "C" fn fopen64(path: *const c_char, mode: *const c_char) -> *mut libc::FILE {
    if !in_shim() {
        if let Some(fam) = names_family(path) {
            if let Some(f) = guarded(None, || table_names_file(path, fam)) {
                return f;
            }
        }
    }
    real::fopen64(path, mode)
}
