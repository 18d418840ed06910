//! The one place that makes `bpf(2)` system calls for the store and the attachment of
//! programs (maps, program load, TCX attach/query, bind-map). Loading the datapath's ELF
//! objects is aya's job (`apply`); this covers what aya 0.14 does not: TCX attachment without
//! a link (it survives the process), `BPF_PROG_BIND_MAP`, and finding objects by id.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

// enum bpf_cmd
const BPF_MAP_CREATE: u32 = 0;
const BPF_MAP_LOOKUP_ELEM: u32 = 1;
const BPF_MAP_UPDATE_ELEM: u32 = 2;
const BPF_MAP_DELETE_ELEM: u32 = 3;
const BPF_MAP_GET_NEXT_KEY: u32 = 4;
const BPF_PROG_LOAD: u32 = 5;
const BPF_PROG_ATTACH: u32 = 8;
const BPF_PROG_DETACH: u32 = 9;
const BPF_PROG_QUERY: u32 = 16;
const BPF_PROG_GET_FD_BY_ID: u32 = 13;
const BPF_MAP_GET_FD_BY_ID: u32 = 14;
const BPF_OBJ_GET_INFO_BY_FD: u32 = 15;
const BPF_PROG_BIND_MAP: u32 = 35;
const BPF_MAP_LOOKUP_BATCH: u32 = 24;
const BPF_MAP_UPDATE_BATCH: u32 = 26;
const BPF_LINK_CREATE: u32 = 28;

// enum bpf_map_type
pub const BPF_MAP_TYPE_HASH: u32 = 1;
pub const BPF_MAP_TYPE_ARRAY: u32 = 2;
// enum bpf_prog_type
pub const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
/// Linux 6.4 (84601d6ee68a): a program at a netfilter hook, attached by a link.
pub const BPF_PROG_TYPE_NETFILTER: u32 = 32;
pub const BPF_NETFILTER: u32 = 45;
// enum bpf_attach_type: TCX arrived in Linux 6.6 (e420bed02507).
pub const BPF_TCX_INGRESS: u32 = 46;
pub const BPF_TCX_EGRESS: u32 = 47;

pub const BPF_F_NO_PREALLOC: u32 = 1;
pub const BPF_ANY: u64 = 0;
/// `BPF_F_REPLACE` for attach: replace the program given in `replace_bpf_fd`.
pub const BPF_F_REPLACE: u32 = 1 << 2;

/// `union bpf_attr` is at most a few hundred bytes; 256 covers every command used here, and
/// the kernel accepts a larger zero-filled tail.
#[repr(C, align(8))]
struct Attr([u8; 256]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 256])
    }
    fn u32(&mut self, off: usize, v: u32) -> &mut Self {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(&mut self, off: usize, v: u64) -> &mut Self {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn get_u32(&self, off: usize) -> u32 {
        u32::from_ne_bytes(self.0[off..off + 4].try_into().unwrap())
    }
    fn name(&mut self, off: usize, name: &str) -> &mut Self {
        let n = name.len().min(15);
        self.0[off..off + n].copy_from_slice(&name.as_bytes()[..n]);
        self
    }
}

fn bpf(cmd: u32, attr: &mut Attr) -> io::Result<i64> {
    // SAFETY: attr is a valid, sufficiently large bpf_attr buffer.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.0.as_mut_ptr(), attr.0.len()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn fd_result(r: i64) -> OwnedFd {
    // SAFETY: the kernel returned a new file descriptor that we own.
    unsafe { OwnedFd::from_raw_fd(r as RawFd) }
}

pub fn map_create(
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    flags: u32,
    name: &str,
) -> io::Result<OwnedFd> {
    let mut a = Attr::new();
    a.u32(0, map_type)
        .u32(4, key_size)
        .u32(8, value_size)
        .u32(12, max_entries)
        .u32(16, flags)
        .name(28, name);
    bpf(BPF_MAP_CREATE, &mut a).map(fd_result)
}

pub fn map_update(map: &impl AsRawFd, key: &[u8], value: &[u8], flags: u64) -> io::Result<()> {
    let mut a = Attr::new();
    a.u32(0, map.as_raw_fd() as u32)
        .u64(8, key.as_ptr() as u64)
        .u64(16, value.as_ptr() as u64)
        .u64(24, flags);
    bpf(BPF_MAP_UPDATE_ELEM, &mut a).map(|_| ())
}

/// Looks `key` up into `value` (which must be the map's value size). `Ok(false)` if absent.
pub fn map_lookup(map: &impl AsRawFd, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
    let mut a = Attr::new();
    a.u32(0, map.as_raw_fd() as u32)
        .u64(8, key.as_ptr() as u64)
        .u64(16, value.as_mut_ptr() as u64);
    match bpf(BPF_MAP_LOOKUP_ELEM, &mut a) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

pub fn map_delete(map: &impl AsRawFd, key: &[u8]) -> io::Result<bool> {
    let mut a = Attr::new();
    a.u32(0, map.as_raw_fd() as u32).u64(8, key.as_ptr() as u64);
    match bpf(BPF_MAP_DELETE_ELEM, &mut a) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// All keys of a map (each `key_size` bytes), by `BPF_MAP_GET_NEXT_KEY`.
pub fn map_keys(map: &impl AsRawFd, key_size: usize) -> io::Result<Vec<Vec<u8>>> {
    let mut keys = Vec::new();
    let mut cur: Option<Vec<u8>> = None;
    loop {
        let mut next = vec![0u8; key_size];
        let mut a = Attr::new();
        a.u32(0, map.as_raw_fd() as u32);
        if let Some(c) = &cur {
            a.u64(8, c.as_ptr() as u64);
        }
        a.u64(16, next.as_mut_ptr() as u64);
        match bpf(BPF_MAP_GET_NEXT_KEY, &mut a) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(keys),
            Err(e) => return Err(e),
        }
        keys.push(next.clone());
        cur = Some(next);
    }
}

/// Loads a program from raw instructions (8 bytes each).
pub fn prog_load(prog_type: u32, insns: &[u64], name: &str) -> io::Result<OwnedFd> {
    prog_load_for(prog_type, 0, insns, name).map_err(|(e, _)| e)
}

/// `BPF_PROG_LOAD` with an expected attach type. When the verifier refuses the program, its
/// log comes with the error.
pub fn prog_load_for(
    prog_type: u32,
    attach_type: u32,
    insns: &[u64],
    name: &str,
) -> Result<OwnedFd, (io::Error, String)> {
    let license = c"GPL";
    let load = |log: &mut [u8]| {
        let mut a = Attr::new();
        a.u32(0, prog_type)
            .u32(4, insns.len() as u32)
            .u64(8, insns.as_ptr() as u64)
            .u64(16, license.as_ptr() as u64)
            .name(48, name)
            .u32(68, attach_type);
        if !log.is_empty() {
            a.u32(24, 1)
                .u32(28, log.len() as u32)
                .u64(32, log.as_mut_ptr() as u64);
        }
        bpf(BPF_PROG_LOAD, &mut a).map(fd_result)
    };
    load(&mut []).or_else(|e| {
        let mut log = vec![0u8; 1 << 16];
        load(&mut log).map_err(|_| {
            let n = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            (e, String::from_utf8_lossy(&log[..n]).into_owned())
        })
    })
}

/// `BPF_LINK_CREATE` of a netfilter program at hook `hooknum` of protocol family `pf`
/// (`NFPROTO_*`), in the caller's network namespace. The hook stays as long as the link's fd.
pub fn netfilter_link(
    prog: &impl AsRawFd,
    pf: u32,
    hooknum: u32,
    priority: i32,
) -> io::Result<OwnedFd> {
    let mut a = Attr::new();
    // prog_fd, target_fd, attach_type, flags, then netfilter { pf, hooknum, priority, flags }
    a.u32(0, prog.as_raw_fd() as u32)
        .u32(8, BPF_NETFILTER)
        .u32(16, pf)
        .u32(20, hooknum)
        .u32(24, priority as u32);
    bpf(BPF_LINK_CREATE, &mut a).map(fd_result)
}

/// `BPF_PROG_BIND_MAP`: keeps `map` alive as long as `prog` (Linux 5.10, ef15314aa5de).
pub fn prog_bind_map(prog: &impl AsRawFd, map: &impl AsRawFd) -> io::Result<()> {
    let mut a = Attr::new();
    a.u32(0, prog.as_raw_fd() as u32)
        .u32(4, map.as_raw_fd() as u32);
    bpf(BPF_PROG_BIND_MAP, &mut a).map(|_| ())
}

/// Attaches `prog` at TCX `attach_type` of `ifindex` without a link: the attachment belongs
/// to the interface and outlives every process. With `replace`, that program is swapped out
/// atomically.
pub fn tcx_attach(
    ifindex: u32,
    attach_type: u32,
    prog: &impl AsRawFd,
    replace: Option<&OwnedFd>,
) -> io::Result<()> {
    let mut a = Attr::new();
    // target_ifindex, attach_bpf_fd, attach_type, attach_flags, replace_bpf_fd
    a.u32(0, ifindex)
        .u32(4, prog.as_raw_fd() as u32)
        .u32(8, attach_type);
    if let Some(r) = replace {
        a.u32(12, BPF_F_REPLACE).u32(16, r.as_raw_fd() as u32);
    }
    bpf(BPF_PROG_ATTACH, &mut a).map(|_| ())
}

pub fn tcx_detach(ifindex: u32, attach_type: u32, prog: &impl AsRawFd) -> io::Result<()> {
    let mut a = Attr::new();
    a.u32(0, ifindex)
        .u32(4, prog.as_raw_fd() as u32)
        .u32(8, attach_type);
    bpf(BPF_PROG_DETACH, &mut a).map(|_| ())
}

/// Program ids attached at TCX `attach_type` of `ifindex`, in order.
pub fn tcx_query(ifindex: u32, attach_type: u32) -> io::Result<Vec<u32>> {
    let mut ids = vec![0u32; 64];
    let mut a = Attr::new();
    // query: target_ifindex, attach_type, query_flags, attach_flags, prog_ids, prog_cnt
    a.u32(0, ifindex)
        .u32(4, attach_type)
        .u64(16, ids.as_mut_ptr() as u64)
        .u32(24, ids.len() as u32);
    bpf(BPF_PROG_QUERY, &mut a)?;
    let n = a.get_u32(24) as usize;
    ids.truncate(n.min(64));
    Ok(ids)
}

pub fn prog_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    let mut a = Attr::new();
    a.u32(0, id);
    bpf(BPF_PROG_GET_FD_BY_ID, &mut a).map(fd_result)
}

pub fn map_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    let mut a = Attr::new();
    a.u32(0, id);
    bpf(BPF_MAP_GET_FD_BY_ID, &mut a).map(fd_result)
}

/// Name and map ids of a program.
pub fn prog_info(prog: &impl AsRawFd) -> io::Result<(String, Vec<u32>)> {
    // struct bpf_prog_info: nr_map_ids at 52, map_ids at 56, name[16] at 64.
    let mut info = [0u8; 256];
    let mut map_ids = vec![0u32; 64];
    info[52..56].copy_from_slice(&(map_ids.len() as u32).to_ne_bytes());
    info[56..64].copy_from_slice(&(map_ids.as_mut_ptr() as u64).to_ne_bytes());
    let mut a = Attr::new();
    a.u32(0, prog.as_raw_fd() as u32)
        .u32(4, info.len() as u32)
        .u64(8, info.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a)?;
    let n = u32::from_ne_bytes(info[52..56].try_into().unwrap()) as usize;
    map_ids.truncate(n.min(64));
    let name = String::from_utf8_lossy(crate::abi::c_str(&info[64..80])).into_owned();
    Ok((name, map_ids))
}

/// The first N bytes of an object's info (struct bpf_prog_info / bpf_map_info).
fn obj_info<const N: usize>(obj: &impl AsRawFd) -> io::Result<[u8; N]> {
    let mut info = [0u8; N];
    let mut a = Attr::new();
    a.u32(0, obj.as_raw_fd() as u32)
        .u32(4, N as u32)
        .u64(8, info.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a)?;
    Ok(info)
}

/// Id of a program.
pub fn prog_id(prog: &impl AsRawFd) -> io::Result<u32> {
    // struct bpf_prog_info: id at 4.
    let info: [u8; 256] = obj_info(prog)?;
    Ok(u32::from_ne_bytes(info[4..8].try_into().unwrap()))
}

/// Name of a map.
pub fn map_name(map: &impl AsRawFd) -> io::Result<String> {
    // struct bpf_map_info: name[16] at 24.
    let info: [u8; 128] = obj_info(map)?;
    Ok(String::from_utf8_lossy(crate::abi::c_str(&info[24..40])).into_owned())
}

/// A map's max_entries (struct bpf_map_info: max_entries at 16).
pub fn map_max_entries(map: &impl AsRawFd) -> io::Result<u32> {
    let info: [u8; 128] = obj_info(map)?;
    Ok(u32::from_ne_bytes(info[16..20].try_into().unwrap()))
}

/// A map's value_size (struct bpf_map_info: value_size at 12).
pub fn map_value_size(map: &impl AsRawFd) -> io::Result<u32> {
    let info: [u8; 128] = obj_info(map)?;
    Ok(u32::from_ne_bytes(info[12..16].try_into().unwrap()))
}

/// Index of the loopback interface (always 1 in a namespace, but ask).
pub fn loopback_ifindex() -> u32 {
    // SAFETY: if_nametoindex reads a NUL-terminated name.
    let i = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
    if i == 0 {
        1
    } else {
        i
    }
}

// enum bpf_map_type
pub const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;

/// Creates a 1-slot ARRAY_OF_MAPS holding `inner`'s kind of map: an update of it waits for
/// an RCU grace period (kernel/bpf/syscall.c maybe_wait_bpf_programs, since Linux 5.1).
pub fn map_create_of_maps(inner: &impl AsRawFd, name: &str) -> io::Result<OwnedFd> {
    let mut a = Attr::new();
    a.u32(0, BPF_MAP_TYPE_ARRAY_OF_MAPS)
        .u32(4, 4)
        .u32(8, 4)
        .u32(12, 1)
        .u32(20, inner.as_raw_fd() as u32)
        .name(28, name);
    bpf(BPF_MAP_CREATE, &mut a).map(fd_result)
}

/// Looks `key` up in a per-CPU map: `value` holds one value per possible CPU, each
/// rounded up to 8 bytes.
pub fn map_lookup_percpu(map: &impl AsRawFd, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
    map_lookup(map, key, value)
}

/// The values of keys `0..count` of an array map (per-CPU maps: `value_size` is the size of
/// all CPUs' values of one key), with `BPF_MAP_LOOKUP_BATCH` (Linux 5.6, cb4d03ab499d):
/// a few system calls instead of one per key.
pub fn array_lookup_batch(
    map: &impl AsRawFd,
    count: u32,
    value_size: usize,
) -> io::Result<Vec<u8>> {
    let mut values = vec![0u8; count as usize * value_size];
    let mut keys = vec![0u32; count as usize];
    let mut done = 0u32;
    let mut in_batch = 0u32;
    let mut out_batch = 0u32;
    while done < count {
        let mut a = Attr::new();
        // batch: in_batch, out_batch, keys, values, count, map_fd, elem_flags, flags
        if done > 0 {
            a.u64(0, &in_batch as *const u32 as u64);
        }
        a.u64(8, &mut out_batch as *mut u32 as u64)
            .u64(16, keys[done as usize..].as_mut_ptr() as u64)
            .u64(24, values[done as usize * value_size..].as_mut_ptr() as u64)
            .u32(32, count - done)
            .u32(36, map.as_raw_fd() as u32);
        let r = bpf(BPF_MAP_LOOKUP_BATCH, &mut a);
        let got = a.get_u32(32);
        done += got;
        match r {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Err(e) => return Err(e),
        }
        if got == 0 {
            break;
        }
        in_batch = out_batch;
    }
    values.truncate(done as usize * value_size);
    Ok(values)
}

/// Every (key, value) of a hash map, `BPF_MAP_LOOKUP_BATCH` a few thousand at a time: a
/// table of 100000 connections costs tens of system calls instead of two per entry (the
/// daemon's garbage collection walks it every few seconds). The batch cursor of a hash map
/// is a bucket index; a bucket larger than the batch gives ENOSPC, and the batch grows.
pub fn hash_lookup_batch(
    map: &impl AsRawFd,
    key_size: usize,
    value_size: usize,
) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut chunk = 4096usize;
    let mut in_batch = 0u32;
    let mut out_batch = 0u32;
    let mut first = true;
    loop {
        let mut keys = vec![0u8; chunk * key_size];
        let mut values = vec![0u8; chunk * value_size];
        let mut a = Attr::new();
        if !first {
            a.u64(0, &in_batch as *const u32 as u64);
        }
        a.u64(8, &mut out_batch as *mut u32 as u64)
            .u64(16, keys.as_mut_ptr() as u64)
            .u64(24, values.as_mut_ptr() as u64)
            .u32(32, chunk as u32)
            .u32(36, map.as_raw_fd() as u32);
        let r = bpf(BPF_MAP_LOOKUP_BATCH, &mut a);
        let got = a.get_u32(32) as usize;
        for i in 0..got.min(chunk) {
            out.push((
                keys[i * key_size..(i + 1) * key_size].to_vec(),
                values[i * value_size..(i + 1) * value_size].to_vec(),
            ));
        }
        match r {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && got == 0 => {
                chunk *= 2;
                continue;
            }
            Err(e) => return Err(e),
        }
        first = false;
        in_batch = out_batch;
    }
}

/// Updates `keys[i]` to `values[i]` of an array map of u32 values in one
/// `BPF_MAP_UPDATE_BATCH` (as few calls as the kernel needs).
pub fn array_update_batch(map: &impl AsRawFd, keys: &[u32], values: &[u32]) -> io::Result<()> {
    let mut done = 0usize;
    while done < keys.len() {
        let mut a = Attr::new();
        a.u64(16, keys[done..].as_ptr() as u64)
            .u64(24, values[done..].as_ptr() as u64)
            .u32(32, (keys.len() - done) as u32)
            .u32(36, map.as_raw_fd() as u32);
        let r = bpf(BPF_MAP_UPDATE_BATCH, &mut a);
        let got = a.get_u32(32) as usize;
        r?;
        if got == 0 {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        done += got;
    }
    Ok(())
}

/// Number of possible CPUs (/sys/devices/system/cpu/possible), the per-CPU value count.
pub fn possible_cpus() -> io::Result<usize> {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    let mut n = 0;
    for part in s.trim().split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let a: usize = a
            .parse()
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
        let b: usize = b
            .parse()
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
        n = n.max(b + 1);
        let _ = a;
    }
    Ok(n)
}

/// Tests: runs `f` on a thread of its own in a new network namespace (children it spawns are
/// in it too); skipped, with a line on stderr, unless root. A panic in `f` fails the caller.
#[cfg(test)]
pub(crate) fn in_new_netns(f: impl FnOnce() + Send + 'static) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root");
        return;
    }
    std::thread::spawn(move || {
        // SAFETY: affects this thread only.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
        f()
    })
    .join()
    .unwrap();
}
