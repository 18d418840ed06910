//! The loaded datapath of one namespace: the eBPF object of `ebpf/` (embedded at build
//! time), its maps, and the primitives `apply` builds a commit from: write an [`Image`]'s
//! changes into a half, flip the generation, wait for a grace period, read counters, keep
//! `ifnames` and `local4` current, and run a program on a packet (BPF_PROG_TEST_RUN).
//!
//! Attaching the programs to interfaces is the caller's (`sys::tcx_attach` with
//! [`Dataplane::prog_fd`]).
//!
//! A commit, as `apply` does it (and [`Dataplane::commit`] for tests):
//! 1. `compile::compile(ruleset, &prev_assignment)` -> (image, assignment); on error fall
//!    back (`set_fallback(true)`, the kernel enforces) and keep the previous state;
//! 2. `changes = image.diff(&prev_image)`; `write(active_half() ^ 1, &changes)` (new rule
//!    slots get zeroed counters);
//! 3. `flip()`; `sync()` (no packet still uses the old half);
//! 4. `write(old_active, &changes)`: both halves equal again; the assignment's freed slots
//!    become reusable at the next compile;
//! 5. counters for GET_ENTRIES: `counter(assignment.rule_slot(chain, i))` and
//!    `counter(assignment.tail_slot(chain))`; SET_ADD_COUNTERS is the daemon's (add to what
//!    the datapath counted).
//!
//! Kept current independently of commits: `set_ifname` (ifindex -> name, from rtnetlink
//! links) and `set_local` (local and broadcast routes of the local table; 127.0.0.0/8 too).

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aya::maps::Map;
use aya::programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions};
use aya::{Ebpf, EbpfLoader};

use crate::compile::{Change, Image};
use crate::layout::{self, Config, Counter, Ifname, LocalFilter, LocalKey, LocalVal, Pod, Reason};
use crate::sys;

/// The compiled datapath (ebpf/bpfipt.c), built by build.rs with clang-19.
pub static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/bpfipt.o"));

/// Map sizes chosen at load time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Rule records and counters (slots); a full replacement needs room for old and new.
    pub slots: u32,
    /// Chunks of candidate lists (both halves).
    pub list_chunks: u32,
    /// Address classes (both halves).
    pub addr_classes: u32,
    pub ifnames: u32,
    pub local_addrs: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            slots: 1 << 16,
            list_chunks: 1 << 18,
            addr_classes: 1 << 18,
            ifnames: 4096,
            local_addrs: 4096,
        }
    }
}

/// The two programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Prog {
    /// TC ingress: INPUT.
    Ingress,
    /// TC egress: FORWARD and OUTPUT.
    Egress,
}

impl Prog {
    pub fn name(self) -> &'static str {
        match self {
            Prog::Ingress => "bpfipt_ingress",
            Prog::Egress => "bpfipt_egress",
        }
    }
}

#[derive(Debug)]
pub enum Error {
    /// aya could not load the object or a program (verifier log inside).
    Load(String),
    /// A map or program the object must have is missing.
    Missing(&'static str),
    /// A bpf(2) call failed.
    Sys { call: &'static str, err: io::Error },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Load(s) => write!(f, "loading the datapath: {s}"),
            Error::Missing(s) => write!(f, "the datapath object has no {s}"),
            Error::Sys { call, err } => write!(f, "{call}: {err}"),
        }
    }
}

impl std::error::Error for Error {}

fn sys_err(call: &'static str) -> impl Fn(io::Error) -> Error {
    move |err| Error::Sys { call, err }
}

/// `struct __sk_buff` fields BPF_PROG_TEST_RUN lets a test set (net/bpf/test_run.c).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SkbCtx {
    pub mark: u32,
    /// The device the program runs on (must exist in the caller's namespace; 0 = lo).
    pub ifindex: u32,
    /// The device a forwarded packet arrived on (0: locally generated).
    pub ingress_ifindex: u32,
}

impl SkbCtx {
    /// The `struct __sk_buff` bytes (192 bytes since Linux 5.16).
    fn bytes(&self) -> [u8; 192] {
        let mut b = [0u8; 192];
        b[8..12].copy_from_slice(&self.mark.to_ne_bytes());
        b[36..40].copy_from_slice(&self.ingress_ifindex.to_ne_bytes());
        b[40..44].copy_from_slice(&self.ifindex.to_ne_bytes());
        b
    }
}

/// What one BPF_PROG_TEST_RUN gave back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunResult {
    /// TC_ACT_* (0 OK, 2 SHOT, 7 REDIRECT).
    pub retval: u32,
    /// The packet as the program left it (a REJECT reply, for one).
    pub packet: Vec<u8>,
    /// Mean time per run as the kernel measured it.
    pub duration: Duration,
}

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

/// The halved maps an [`Image`] writes.
struct Maps {
    config: OwnedFd,
    chains: OwnedFd,
    rules: OwnedFd,
    counters: OwnedFd,
    lists: OwnedFd,
    addrs: OwnedFd,
    ports: OwnedFd,
    ifnames: OwnedFd,
    local4: OwnedFd,
    local4x: OwnedFd,
    local4f: OwnedFd,
    local4_wide: OwnedFd,
    stats: OwnedFd,
}

/// The loaded object of one namespace.
pub struct Dataplane {
    ebpf: Ebpf,
    maps: Maps,
    sync_outer: OwnedFd,
    sync_inner: OwnedFd,
    stripes: CounterStripes,
    pub limits: Limits,
    /// The local routes shorter than /32 outside 127.0.0.0/8 (their number is `local4_wide`).
    wide_locals: std::sync::Mutex<std::collections::BTreeSet<([u8; 4], u8)>>,
    /// The /32 addresses of local4x (their filter is local4f).
    exact_locals: std::sync::Mutex<std::collections::BTreeSet<[u8; 4]>>,
}

/// The counters map, mapped into this process: one stripe of `stride` slots per possible CPU
/// (index `cpu * stride + slot`), each a [`Counter`]. Reading every slot is a walk over
/// memory, where a batch lookup copied each key through the syscall.
pub struct CounterStripes {
    base: *const AtomicU64,
    len: usize,
    cpus: usize,
    stride: usize,
}

// SAFETY: the mapping is shared memory owned by this value and only accessed through
// atomics (the programs' adds are to the same aligned u64s).
unsafe impl Send for CounterStripes {}
// SAFETY: as for Send: every access is an atomic load or store.
unsafe impl Sync for CounterStripes {}

impl CounterStripes {
    /// Maps a counters map whose max_entries is `cpus * stride`.
    pub fn map(fd: &impl AsRawFd, cpus: usize) -> io::Result<CounterStripes> {
        let entries = sys::map_max_entries(fd)? as usize;
        if cpus == 0 || !entries.is_multiple_of(cpus) {
            return Err(io::Error::from(io::ErrorKind::InvalidData));
        }
        let len = entries * 16;
        // SAFETY: a fresh shared mapping of an mmapable BPF array of `len` bytes.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(CounterStripes {
            base: p as *const AtomicU64,
            len,
            cpus,
            stride: entries / cpus,
        })
    }

    /// Packets and bytes of `slot`, summed over CPUs (zero beyond the stride).
    pub fn get(&self, slot: u32) -> Counter {
        let mut c = Counter::default();
        let slot = slot as usize;
        if slot >= self.stride {
            return c;
        }
        for cpu in 0..self.cpus {
            let i = 2 * (cpu * self.stride + slot);
            // SAFETY: i + 1 < 2 * cpus * stride, the mapping's length in u64s.
            let (p, b) = unsafe { (&*self.base.add(i), &*self.base.add(i + 1)) };
            c.packets += p.load(Ordering::Relaxed);
            c.bytes += b.load(Ordering::Relaxed);
        }
        c
    }

    /// Zeroes `slot` on every CPU (a slot no generation references yet).
    pub fn zero(&self, slot: u32) {
        let slot = slot as usize;
        if slot >= self.stride {
            return;
        }
        for cpu in 0..self.cpus {
            let i = 2 * (cpu * self.stride + slot);
            // SAFETY: as in get.
            let (p, b) = unsafe { (&*self.base.add(i), &*self.base.add(i + 1)) };
            p.store(0, Ordering::Relaxed);
            b.store(0, Ordering::Relaxed);
        }
    }
}

impl Drop for CounterStripes {
    fn drop(&mut self) {
        // SAFETY: base and len are this value's own mapping.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) };
    }
}

/// A program load, again when the verifier gave up with EAGAIN: it does when a signal is
/// pending for the loading thread (a child's SIGCHLD), which a second of verification per
/// program makes likely in a busy process.
fn retry_eagain(mut load: impl FnMut() -> Result<(), ProgramError>) -> Result<(), Error> {
    let mut tries = 0;
    loop {
        match load() {
            Ok(()) => return Ok(()),
            Err(ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && tries < 5 =>
            {
                tries += 1;
            }
            Err(e) => return Err(Error::Load(format!("{e:?}"))),
        }
    }
}

fn map_fd(ebpf: &Ebpf, name: &'static str) -> Result<OwnedFd, Error> {
    let m = ebpf.map(name).ok_or(Error::Missing(name))?;
    let data = match m {
        Map::Array(d)
        | Map::HashMap(d)
        | Map::LpmTrie(d)
        | Map::PerCpuArray(d)
        | Map::Unsupported(d) => d,
        _ => return Err(Error::Missing(name)),
    };
    data.fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(sys_err("dup"))
}

impl Dataplane {
    /// Loads the object and its two programs (verified once here).
    pub fn load(limits: Limits) -> Result<Dataplane, Error> {
        let cpus = sys::possible_cpus().map_err(sys_err("possible cpus"))?;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("rules", limits.slots)
            .map_max_entries("counters", limits.slots * cpus as u32)
            .override_global("counter_stride", &limits.slots, true)
            .map_max_entries("lists", limits.list_chunks)
            .map_max_entries("addrs", limits.addr_classes)
            .map_max_entries("ifnames", limits.ifnames)
            .map_max_entries("local4", limits.local_addrs)
            .map_max_entries("local4x", limits.local_addrs)
            .map_max_entries("ct", crate::conntrack::map_entries())
            .map_max_entries("xdp_devs", limits.ifnames)
            .load(OBJECT)
            .map_err(|e| Error::Load(format!("{e:?}")))?;
        for p in [Prog::Ingress, Prog::Egress] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(p.name())
                .ok_or(Error::Missing("program"))?
                .try_into()
                .map_err(|e| Error::Load(format!("{e:?}")))?;
            retry_eagain(|| prog.load())?;
        }
        let xdp: &mut aya::programs::Xdp = ebpf
            .program_mut(crate::xdp::XDP_ROLE)
            .ok_or(Error::Missing("program"))?
            .try_into()
            .map_err(|e| Error::Load(format!("{e:?}")))?;
        retry_eagain(|| xdp.load())?;
        let maps = Maps {
            config: map_fd(&ebpf, "config")?,
            chains: map_fd(&ebpf, "chains")?,
            rules: map_fd(&ebpf, "rules")?,
            counters: map_fd(&ebpf, "counters")?,
            lists: map_fd(&ebpf, "lists")?,
            addrs: map_fd(&ebpf, "addrs")?,
            ports: map_fd(&ebpf, "ports")?,
            ifnames: map_fd(&ebpf, "ifnames")?,
            local4: map_fd(&ebpf, "local4")?,
            local4x: map_fd(&ebpf, "local4x")?,
            local4f: map_fd(&ebpf, "local4f")?,
            local4_wide: map_fd(&ebpf, "local4_wide")?,
            stats: map_fd(&ebpf, "stats")?,
        };
        let sync_inner = sys::map_create(sys::BPF_MAP_TYPE_ARRAY, 4, 4, 1, 0, "bpfipt_sync_in")
            .map_err(sys_err("map_create"))?;
        let sync_outer =
            sys::map_create_of_maps(&sync_inner, "bpfipt_sync").map_err(sys_err("map_create"))?;
        let stripes =
            CounterStripes::map(&maps.counters, cpus).map_err(sys_err("mmap counters"))?;
        let dp = Dataplane {
            ebpf,
            maps,
            sync_outer,
            sync_inner,
            stripes,
            limits,
            wide_locals: Default::default(),
            exact_locals: Default::default(),
        };
        dp.set_config(&Config {
            gen: 0,
            fallback: 0,
            default_ttl: 64,
            lo_ifindex: sys::loopback_ifindex(),
            input_by_nf: 0,
            ct_on: 0,
        })?;
        Ok(dp)
    }

    /// Hooks the count of a skipped INPUT chain's policy at LOCAL_IN (`nfhook`) and hands
    /// that count to it: from here on the TC and XDP programs leave it alone. The hook lasts
    /// as long as the returned value. A packet between TC ingress and LOCAL_IN at this very
    /// moment may be counted by both.
    pub fn hook_input(&self) -> Result<crate::nfhook::InputHook, String> {
        let h = crate::nfhook::attach(
            &self.maps.config,
            &self.maps.chains,
            &self.maps.counters,
            self.limits.slots,
        )?;
        self.set_input_by_nf(true).map_err(|e| e.to_string())?;
        Ok(h)
    }

    /// The config's mirror of the tracker's switch (`conntrack::set_enabled` keeps both).
    pub fn set_ct_on(&self, on: bool) -> Result<(), Error> {
        self.edit_config(|c| c.ct_on = on as u32).map(|_| ())
    }

    /// Whether a skipped INPUT chain's policy is the LOCAL_IN program's to count.
    pub fn set_input_by_nf(&self, on: bool) -> Result<(), Error> {
        self.edit_config(|c| c.input_by_nf = on as u32).map(|_| ())
    }

    /// A map of the object by name (the conntrack maps, which no image writes).
    pub fn map(&self, name: &'static str) -> Result<OwnedFd, Error> {
        map_fd(&self.ebpf, name)
    }

    /// The XDP program's fd (the XDP option, `xdp::ensure`).
    pub fn xdp_prog_fd(&self) -> Result<OwnedFd, Error> {
        let prog: &aya::programs::Xdp = self
            .ebpf
            .program(crate::xdp::XDP_ROLE)
            .ok_or(Error::Missing("program"))?
            .try_into()
            .map_err(|e| Error::Load(format!("{e:?}")))?;
        prog.fd()
            .map_err(|e| Error::Load(format!("{e:?}")))?
            .as_fd()
            .try_clone_to_owned()
            .map_err(sys_err("dup"))
    }

    /// What the XDP fast path knows of an arriving device (`None`: gone, or nothing to know):
    /// its MAC address and `BPFIPT_XDP_DEV_*` flags (struct bpfipt_xdp_dev).
    pub fn set_xdp_dev(&self, ifindex: u32, dev: Option<([u8; 6], u16)>) -> Result<(), Error> {
        let m = self.map("xdp_devs")?;
        match dev {
            Some((mac, flags)) => {
                let v = layout::XdpDev { mac, flags };
                sys::map_update(&m, &ifindex.to_ne_bytes(), v.as_bytes(), sys::BPF_ANY)
                    .map_err(sys_err("update xdp_devs"))
            }
            None => sys::map_delete(&m, &ifindex.to_ne_bytes())
                .map(|_| ())
                .map_err(sys_err("delete xdp_devs")),
        }
    }

    /// The program's fd, for attachment (`sys::tcx_attach`).
    pub fn prog_fd(&self, p: Prog) -> Result<OwnedFd, Error> {
        let prog: &SchedClassifier = self
            .ebpf
            .program(p.name())
            .ok_or(Error::Missing("program"))?
            .try_into()
            .map_err(|e| Error::Load(format!("{e:?}")))?;
        prog.fd()
            .map_err(|e| Error::Load(format!("{e:?}")))?
            .as_fd()
            .try_clone_to_owned()
            .map_err(sys_err("dup"))
    }

    pub fn config(&self) -> Result<Config, Error> {
        let mut v = [0u8; std::mem::size_of::<Config>()];
        sys::map_lookup(&self.maps.config, &0u32.to_ne_bytes(), &mut v)
            .map_err(sys_err("lookup config"))?;
        Ok(Config::from_bytes(&v))
    }

    /// Writes the whole config entry in one update (the generation flip is one of these).
    pub fn set_config(&self, c: &Config) -> Result<(), Error> {
        sys::map_update(
            &self.maps.config,
            &0u32.to_ne_bytes(),
            c.as_bytes(),
            sys::BPF_ANY,
        )
        .map_err(sys_err("update config"))
    }

    /// The half packets use now.
    pub fn active_half(&self) -> Result<u8, Error> {
        Ok((self.config()?.gen & 1) as u8)
    }

    /// Changes the config entry with `f`, written back in one update; returns the new entry.
    fn edit_config(&self, f: impl FnOnce(&mut Config)) -> Result<Config, Error> {
        let mut c = self.config()?;
        f(&mut c);
        self.set_config(&c)?;
        Ok(c)
    }

    /// Makes the other half active.
    pub fn flip(&self) -> Result<u8, Error> {
        let c = self.edit_config(|c| c.gen = c.gen.wrapping_add(1))?;
        Ok((c.gen & 1) as u8)
    }

    /// Sets the fallback flag: non-zero lets every packet pass (the kernel enforces).
    pub fn set_fallback(&self, on: bool) -> Result<(), Error> {
        self.edit_config(|c| c.fallback = on as u32).map(|_| ())
    }

    /// Waits until no program runs with what was visible before the call: an
    /// ARRAY_OF_MAPS update is followed by synchronize_rcu in the kernel.
    pub fn sync(&self) -> Result<(), Error> {
        sys::map_update(
            &self.sync_outer,
            &0u32.to_ne_bytes(),
            &(self.sync_inner.as_raw_fd() as u32).to_ne_bytes(),
            sys::BPF_ANY,
        )
        .map_err(sys_err("sync"))
    }

    /// Writes `changes` (from [`Image::diff`]) into `half`. Rule records are not halved:
    /// a new record's slot also gets its counters zeroed.
    pub fn write(&self, half: u8, changes: &[Change]) -> Result<(), Error> {
        let m = &self.maps;
        let cached = changes
            .iter()
            .any(|c| matches!(c, Change::Addr(..) | Change::List(..)));
        let mut port_keys: Vec<u32> = Vec::new();
        let mut port_vals: Vec<u32> = Vec::new();
        for c in changes {
            match c {
                Change::Chain(id, rec) => {
                    let idx = half as u32 * layout::MAX_CHAINS + id;
                    let v = rec.unwrap_or_default();
                    sys::map_update(&m.chains, &idx.to_ne_bytes(), v.as_bytes(), sys::BPF_ANY)
                        .map_err(sys_err("update chains"))?;
                }
                Change::List(k, v) => {
                    let mut k = *k;
                    k.half = half;
                    match v {
                        Some(v) => {
                            sys::map_update(&m.lists, k.as_bytes(), v.as_bytes(), sys::BPF_ANY)
                                .map_err(sys_err("update lists"))?
                        }
                        None => {
                            sys::map_delete(&m.lists, k.as_bytes())
                                .map_err(sys_err("delete lists"))?;
                        }
                    }
                }
                Change::Addr(k, v) => {
                    let mut k = *k;
                    k.half = half;
                    match v {
                        Some(v) => {
                            sys::map_update(&m.addrs, k.as_bytes(), v.as_bytes(), sys::BPF_ANY)
                                .map_err(sys_err("update addrs"))?
                        }
                        None => {
                            sys::map_delete(&m.addrs, k.as_bytes())
                                .map_err(sys_err("delete addrs"))?;
                        }
                    }
                }
                Change::Port(field, port, cls) => {
                    // A new boundary moves up to 65536 ports: written in one batch below.
                    port_keys.push((half as u32 * 2 + *field as u32) * 65536 + *port as u32);
                    port_vals.push(*cls);
                }
                Change::Rule(slot, rec) => {
                    if let Some(r) = rec {
                        sys::map_update(&m.rules, &slot.to_ne_bytes(), r.as_bytes(), sys::BPF_ANY)
                            .map_err(sys_err("update rules"))?;
                        self.zero_counters(*slot)?;
                    }
                }
            }
        }
        if !port_keys.is_empty() {
            sys::array_update_batch(&m.ports, &port_keys, &port_vals)
                .map_err(sys_err("update ports"))?;
        }
        if cached && self.active_half()? == half {
            // The programs cache the addrs trie's answers and the lists' first chunks per
            // generation (classify.h addr_classes, add_head); a write into the half in use (a
            // fresh dataplane's, tests) is seen once the generation moves on, by 2 to keep
            // the half.
            self.edit_config(|c| c.gen = c.gen.wrapping_add(2))?;
        }
        Ok(())
    }

    /// The same `changes` into the other half after the flip and grace period. Rule records
    /// are not halved and were written (their counters zeroed) before the flip: writing them
    /// again would wipe what the new rules counted since.
    pub fn replay(&self, half: u8, changes: &[Change]) -> Result<(), Error> {
        let halved: Vec<Change> = changes
            .iter()
            .filter(|c| !matches!(c, Change::Rule(..)))
            .cloned()
            .collect();
        self.write(half, &halved)
    }

    /// Everything of `image` into `half` (a fresh dataplane).
    pub fn write_image(&self, half: u8, image: &Image) -> Result<(), Error> {
        self.write(half, &image.diff(&Image::default()))
    }

    /// The whole commit as `apply` does it, for tests and tools: the changes into the
    /// inactive half, flip, grace period, the same changes into the other half.
    pub fn commit(&self, old: &Image, new: &Image) -> Result<(), Error> {
        let changes = new.diff(old);
        let active = self.active_half()?;
        self.write(active ^ 1, &changes)?;
        self.flip()?;
        self.sync()?;
        self.replay(active, &changes)
    }

    fn zero_counters(&self, slot: u32) -> Result<(), Error> {
        self.stripes.zero(slot);
        Ok(())
    }

    /// Packets and bytes counted on `slot`, summed over CPUs.
    pub fn counter(&self, slot: u32) -> Result<Counter, Error> {
        Ok(self.stripes.get(slot))
    }

    /// Packets and bytes of slots `0..count`, summed over CPUs.
    pub fn counters(&self, count: u32) -> Result<Vec<Counter>, Error> {
        Ok((0..count.min(self.limits.slots))
            .map(|s| self.stripes.get(s))
            .collect())
    }

    /// Packets per verdict reason, summed over CPUs.
    pub fn reasons(&self) -> Result<HashMap<Reason, u64>, Error> {
        let mut out = HashMap::new();
        for r in Reason::ALL {
            let mut v = vec![0u8; 8 * self.stripes.cpus];
            sys::map_lookup_percpu(&self.maps.stats, &(r as u32).to_ne_bytes(), &mut v)
                .map_err(sys_err("lookup stats"))?;
            let n: u64 = v.chunks(8).map(u64::from_bytes).sum();
            out.insert(r, n);
        }
        Ok(out)
    }

    /// Records the name of `ifindex` (`None`: the device is gone).
    pub fn set_ifname(&self, ifindex: u32, name: Option<&str>) -> Result<(), Error> {
        match name {
            Some(n) => {
                let mut v = Ifname::default();
                let b = n.as_bytes();
                let l = b.len().min(15);
                v.name[..l].copy_from_slice(&b[..l]);
                v.hash = layout::ifname_hash(&v.name);
                sys::map_update(
                    &self.maps.ifnames,
                    &ifindex.to_ne_bytes(),
                    v.as_bytes(),
                    sys::BPF_ANY,
                )
                .map_err(sys_err("update ifnames"))
            }
            None => sys::map_delete(&self.maps.ifnames, &ifindex.to_ne_bytes())
                .map(|_| ())
                .map_err(sys_err("delete ifnames")),
        }
    }

    /// Adds (`kind` = layout::LOCAL_UNICAST / LOCAL_BROADCAST) or removes (`None`) a local
    /// route's prefix: packets to it go through INPUT.
    pub fn set_local(&self, addr: [u8; 4], plen: u8, kind: Option<u32>) -> Result<(), Error> {
        let k = LocalKey {
            prefixlen: plen as u32,
            addr,
        };
        // The programs look /32s up in local4x and ask the trie only for 127/8 or when
        // local4_wide counts a shorter route: local4x before the trie on adds, after it on
        // removals, and the count raised before the route is added, lowered after it goes.
        let wide = plen < 32 && !(addr[0] == 127 && plen >= 8);
        if kind.is_some() {
            if wide {
                self.set_wide(addr, plen, true)?;
            }
            self.set_local_exact(addr, plen, kind)?;
        }
        let r = self.set_local_trie(&k, kind);
        if kind.is_none() {
            self.set_local_exact(addr, plen, kind)?;
            if wide {
                self.set_wide(addr, plen, false)?;
            }
        }
        r
    }

    fn set_wide(&self, addr: [u8; 4], plen: u8, present: bool) -> Result<(), Error> {
        let mut w = self.wide_locals.lock().unwrap_or_else(|e| e.into_inner());
        if present {
            w.insert((addr, plen));
        } else {
            w.remove(&(addr, plen));
        }
        sys::map_update(
            &self.maps.local4_wide,
            &0u32.to_ne_bytes(),
            &(w.len() as u32).to_ne_bytes(),
            sys::BPF_ANY,
        )
        .map_err(sys_err("update local4_wide"))
    }

    fn set_local_exact(&self, addr: [u8; 4], plen: u8, kind: Option<u32>) -> Result<(), Error> {
        if plen != 32 {
            return Ok(());
        }
        // The filter's bit is set before the address is added and cleared after it goes: a
        // packet never misses an address local4x holds.
        let mut set = self.exact_locals.lock().unwrap_or_else(|e| e.into_inner());
        match kind {
            Some(kind) => {
                if set.insert(addr) {
                    self.write_local_filter(&set)?;
                }
                sys::map_update(
                    &self.maps.local4x,
                    &addr,
                    LocalVal { kind }.as_bytes(),
                    sys::BPF_ANY,
                )
                .map_err(sys_err("update local4x"))
            }
            None => {
                sys::map_delete(&self.maps.local4x, &addr).map_err(sys_err("delete local4x"))?;
                if set.remove(&addr) {
                    self.write_local_filter(&set)?;
                }
                Ok(())
            }
        }
    }

    fn write_local_filter(&self, set: &std::collections::BTreeSet<[u8; 4]>) -> Result<(), Error> {
        sys::map_update(
            &self.maps.local4f,
            &0u32.to_ne_bytes(),
            LocalFilter::of(set).as_bytes(),
            sys::BPF_ANY,
        )
        .map_err(sys_err("update local4f"))
    }

    fn set_local_trie(&self, k: &LocalKey, kind: Option<u32>) -> Result<(), Error> {
        match kind {
            Some(kind) => sys::map_update(
                &self.maps.local4,
                k.as_bytes(),
                LocalVal { kind }.as_bytes(),
                sys::BPF_ANY,
            )
            .map_err(sys_err("update local4")),
            None => sys::map_delete(&self.maps.local4, k.as_bytes())
                .map(|_| ())
                .map_err(sys_err("delete local4")),
        }
    }

    /// Runs `prog` once on `packet` (Ethernet frame) with BPF_PROG_TEST_RUN.
    pub fn test_run(&self, prog: Prog, packet: &[u8], ctx: &SkbCtx) -> Result<RunResult, Error> {
        self.test_run_repeat(prog, packet, ctx, 1)
    }

    /// Runs `prog` `repeat` times; the duration is the kernel's mean per run.
    pub fn test_run_repeat(
        &self,
        prog: Prog,
        packet: &[u8],
        ctx: &SkbCtx,
        repeat: u32,
    ) -> Result<RunResult, Error> {
        let p: &SchedClassifier = self
            .ebpf
            .program(prog.name())
            .ok_or(Error::Missing("program"))?
            .try_into()
            .map_err(|e| Error::Load(format!("{e:?}")))?;
        let mut out = vec![0u8; packet.len().max(600) + 128];
        let ctx_in = ctx.bytes();
        let r = p
            .test_run(TestRunOptions {
                data_in: Some(packet),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx_in),
                ctx_out: None,
                repeat,
                ..Default::default()
            })
            .map_err(|e| Error::Sys {
                call: "BPF_PROG_TEST_RUN",
                err: io::Error::other(format!("{e:?}")),
            })?;
        out.truncate(r.data_size_out as usize);
        Ok(RunResult {
            retval: r.return_value,
            packet: out,
            duration: r.duration,
        })
    }
}
