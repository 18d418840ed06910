//! The datapath of a namespace as the daemon runs it: loaded once, attached to every
//! interface, kept current with the interfaces and local routes, and given each commit of the
//! IPv4 filter table as a small set of map changes behind a generation flip.
//!
//! Counters: a rule keeps its counter slot while it does not change, and the datapath never
//! resets a slot it reuses, so what a table entry reports is
//! `base + counted(slot) - offset`, where `base` is what iptables gave it (SET_ADD_COUNTERS,
//! `iptables-restore -c`) and `offset` is what the slot had counted when the entry was
//! installed. The slot and offset of every entry are stored with the table, so a daemon that
//! dies loses no count: the next one folds what the old maps counted into the bases.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use crate::abi::{Counters, Family};
use crate::attach::{self, Attacher, Programs};
use crate::compile::{self, Change, CompileError, Image, SlotAssignment, SlotSet};
use crate::dataplane::{self, Dataplane, Limits, Prog};
use crate::ir::Ruleset;
use crate::layout::{self, Pod};
use crate::log;
use crate::netlink::{self, LocalKind};
use crate::sys;
use crate::xdp::{self, Mode};

pub const INGRESS_ROLE: &str = "bpfipt_ingress";
pub const EGRESS_ROLE: &str = "bpfipt_egress";

/// Where an entry's datapath count lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntrySlot {
    pub slot: u32,
    /// Packets and bytes the slot had counted when the entry was installed.
    pub offset: Counters,
}

/// Encodes the per-entry slots for the store: per entry, `slot` (u32::MAX for none) and the
/// offset's packets and bytes.
pub fn encode_slots(slots: &[Option<EntrySlot>]) -> Vec<u8> {
    let mut b = Vec::with_capacity(slots.len() * 20);
    for s in slots {
        let s = s.unwrap_or(EntrySlot {
            slot: u32::MAX,
            offset: Counters::default(),
        });
        b.extend_from_slice(&s.slot.to_ne_bytes());
        b.extend_from_slice(&s.offset.pcnt.to_ne_bytes());
        b.extend_from_slice(&s.offset.bcnt.to_ne_bytes());
    }
    b
}

pub fn decode_slots(b: &[u8]) -> Vec<Option<EntrySlot>> {
    b.chunks_exact(20)
        .map(|c| {
            let slot = u32::from_ne_bytes(c[..4].try_into().unwrap());
            (slot != u32::MAX).then(|| EntrySlot {
                slot,
                offset: Counters {
                    pcnt: u64::from_ne_bytes(c[4..12].try_into().unwrap()),
                    bcnt: u64::from_ne_bytes(c[12..20].try_into().unwrap()),
                },
            })
        })
        .collect()
}

/// The slot of every entry of a compiled table, in entry order.
fn entry_slots(rs: &Ruleset, asg: &SlotAssignment, entries: usize) -> Vec<Option<u32>> {
    let mut v = vec![None; entries];
    for c in &rs.chains {
        for (i, r) in c.rules.iter().enumerate() {
            if let Some(s) = asg.rule_slot(&c.name, i) {
                v[r.entry] = Some(s);
            }
        }
        if let Some(s) = asg.tail_slot(&c.name) {
            v[c.tail_entry] = Some(s);
        }
    }
    v
}

/// Why the datapath cannot take a commit.
#[derive(Debug)]
pub enum ApplyError {
    Compile(CompileError),
    Dataplane(dataplane::Error),
    Io(io::Error),
}

impl std::fmt::Display for ApplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApplyError::Compile(e) => write!(f, "{e}"),
            ApplyError::Dataplane(e) => write!(f, "datapath: {e}"),
            ApplyError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl From<dataplane::Error> for ApplyError {
    fn from(e: dataplane::Error) -> Self {
        ApplyError::Dataplane(e)
    }
}

impl From<io::Error> for ApplyError {
    fn from(e: io::Error) -> Self {
        ApplyError::Io(e)
    }
}

/// A compiled filter table, ready to be applied.
pub struct Prepared {
    image: Image,
    asg: SlotAssignment,
    slots: Vec<Option<u32>>,
    /// The table has conntrack/state rules: the tracker runs.
    ct: bool,
}

/// The namespace's running datapath.
pub struct Datapath {
    dp: std::sync::Arc<Dataplane>,
    /// The replay of the last commit onto the other half, running after its grace period.
    replay: Option<std::thread::JoinHandle<Result<(), dataplane::Error>>>,
    /// The slots' counts as last read for the old counters of a replace (see `counted`).
    last_read: Option<Vec<Counters>>,
    ingress: OwnedFd,
    egress: OwnedFd,
    xdp: OwnedFd,
    /// Per interface, where the XDP program is as last synced (the XDP option).
    pub xdp_attached: BTreeMap<String, xdp::Attached>,
    xdp_known: Vec<u32>,
    image: Image,
    asg: SlotAssignment,
    /// Slot and offset of each entry of the IPv4 filter table.
    pub slots: Vec<Option<EntrySlot>>,
    pub attacher: Attacher,
    pub fallback: bool,
    locals: Vec<netlink::LocalRoute>,
    /// INPUT's policy counted at LOCAL_IN (`nfhook`): what lets the ingress program go when
    /// INPUT has nothing to classify. `None` where the kernel has no netfilter programs.
    input_hook: Option<crate::nfhook::InputHook>,
    /// Whether the ingress program is on the interfaces (see `ingress_needed`).
    ingress_on: bool,
    /// Hooks the last resync failed to attach to.
    attach_errors: usize,
}

/// The counters map of the bpfipt programs attached now (from a previous daemon or load).
fn attached_counters_map() -> Option<OwnedFd> {
    let lo = sys::loopback_ifindex();
    for ty in [sys::BPF_TCX_EGRESS, sys::BPF_TCX_INGRESS] {
        for id in sys::tcx_query(lo, ty).ok()? {
            let Ok(prog) = sys::prog_fd_by_id(id) else {
                continue;
            };
            let Ok((name, maps)) = sys::prog_info(&prog) else {
                continue;
            };
            if name != INGRESS_ROLE && name != EGRESS_ROLE {
                continue;
            }
            for m in maps {
                let Ok(fd) = sys::map_fd_by_id(m) else {
                    continue;
                };
                if sys::map_name(&fd).ok().as_deref() == Some("counters") {
                    return Some(fd);
                }
            }
        }
    }
    None
}

/// Packets and bytes of `slot` in a per-CPU counters map (an older bpfiptd's datapath).
fn read_counter(map: &OwnedFd, cpus: usize, slot: u32) -> Counters {
    let mut v = vec![0u8; 16 * cpus];
    if sys::map_lookup_percpu(map, &slot.to_ne_bytes(), &mut v).is_err() {
        return Counters::default();
    }
    let mut c = Counters::default();
    for cpu in v.chunks(16) {
        let x = layout::Counter::from_bytes(cpu);
        c.pcnt += x.packets;
        c.bcnt += x.bytes;
    }
    c
}

fn sub(a: Counters, b: Counters) -> Counters {
    Counters {
        pcnt: a.pcnt.wrapping_sub(b.pcnt),
        bcnt: a.bcnt.wrapping_sub(b.bcnt),
    }
}

impl Datapath {
    /// Compiles a filter table against the current assignment (nothing is written).
    pub fn prepare(&self, rs: &Ruleset, entries: usize) -> Result<Prepared, ApplyError> {
        prepare(rs, &self.asg, entries)
    }

    /// Loads a fresh datapath with `p` (compiled by [`prepare_fresh`]) and puts it in place of
    /// whatever bpfipt programs are attached now. The counts of the programs it replaces
    /// (`old`: their slot per entry and counters map) are folded into `counters`.
    pub fn start(
        p: Prepared,
        counters: &mut [Counters],
        old: Option<(&[Option<EntrySlot>], &OwnedFd)>,
        limits: Limits,
    ) -> Result<Datapath, ApplyError> {
        let dp = Dataplane::load(limits)?;
        dp.write_image(0, &p.image)?;
        dp.write_image(1, &p.image)?;
        // Connections and settings of the datapath this one replaces carry over.
        crate::conntrack::start(&dp, p.ct).map_err(ApplyError::Io)?;
        let ingress = dp.prog_fd(Prog::Ingress)?;
        let egress = dp.prog_fd(Prog::Egress)?;
        let xdp = dp.xdp_prog_fd()?;
        let mut d = Datapath {
            dp: std::sync::Arc::new(dp),
            replay: None,
            last_read: None,
            ingress,
            egress,
            xdp,
            xdp_attached: BTreeMap::new(),
            xdp_known: Vec::new(),
            image: p.image,
            asg: p.asg,
            slots: p
                .slots
                .iter()
                .map(|s| {
                    s.map(|slot| EntrySlot {
                        slot,
                        offset: Counters::default(),
                    })
                })
                .collect(),
            attacher: Attacher::default(),
            fallback: false,
            locals: Vec::new(),
            input_hook: None,
            ingress_on: true,
            attach_errors: 0,
        };
        d.resync()?;
        // The old programs are gone from every interface now; once no packet is still in
        // them, what they counted is final.
        d.dp.sync()?;
        if let Some((old_slots, map)) = old {
            let cpus = sys::possible_cpus()?;
            // A datapath of this version is read through its mapping; one loaded by an
            // older bpfiptd (a PERCPU_ARRAY) by lookups.
            let stripes = dataplane::CounterStripes::map(map, cpus).ok();
            for (i, s) in old_slots.iter().enumerate() {
                if let (Some(s), Some(c)) = (s, counters.get_mut(i)) {
                    let now = match &stripes {
                        Some(st) => {
                            let x = st.get(s.slot);
                            Counters {
                                pcnt: x.packets,
                                bcnt: x.bytes,
                            }
                        }
                        None => read_counter(map, cpus, s.slot),
                    };
                    c.add(sub(now, s.offset));
                }
            }
        }
        // With the old programs gone, INPUT's policy can move to LOCAL_IN, and the ingress
        // program off the interfaces if INPUT leaves it nothing to do.
        match d.dp.hook_input() {
            Ok(h) => d.input_hook = Some(h),
            Err(e) => log::info(&format!(
                "INPUT stays with the ingress program on every interface: {e}"
            )),
        }
        if !d.ingress_needed(&d.image, p.ct) {
            d.set_ingress(false)?;
        }
        Ok(d)
    }

    /// Whether a table needs the ingress program: unless the LOCAL_IN program counts a
    /// skipped INPUT chain's policy, always; else when INPUT has rules or a policy other
    /// than ACCEPT (to classify), or the tracker runs (it follows every arriving packet).
    /// The XDP option does not need it: what XDP accepts through INPUT, TC ingress would
    /// only have passed.
    fn ingress_needed(&self, image: &Image, ct: bool) -> bool {
        let input_skipped = image
            .chains
            .get(&layout::CHAIN_INPUT)
            .is_some_and(|c| c.rec.skip != 0);
        self.input_hook.is_none() || ct || !input_skipped
    }

    /// Before the daemon exits on purpose: the ingress program back on every interface and
    /// INPUT's policy count back with the TC and XDP programs, which outlive the process;
    /// the LOCAL_IN hook does not. (A daemon killed leaves an empty INPUT's policy
    /// uncounted until the next one starts.)
    pub fn release_input_hook(&mut self) {
        if self.input_hook.is_none() {
            return;
        }
        if let Err(e) = self.set_ingress(true) {
            log::error(&format!("putting the ingress program back: {e}"));
            return;
        }
        if let Err(e) = self.dp.set_input_by_nf(false) {
            log::error(&format!("handing INPUT's policy count back: {e}"));
            return;
        }
        self.input_hook = None;
    }

    /// Whether the ingress program is meant to be on the interfaces now.
    pub fn ingress_on(&self) -> bool {
        self.ingress_on
    }

    /// Puts the ingress program on every interface or takes it off. Putting it on fails
    /// unless every interface has it: the table that needs it is not committed then.
    fn set_ingress(&mut self, on: bool) -> Result<(), ApplyError> {
        if self.ingress_on != on {
            self.ingress_on = on;
            self.resync()?;
            if on && self.attach_errors > 0 {
                return Err(ApplyError::Io(io::Error::other(format!(
                    "the ingress program (INPUT) could not be attached to {} interface(s); \
                     see `bpfipt status` for which",
                    self.attach_errors
                ))));
            }
        }
        Ok(())
    }

    /// The counters map of whatever bpfipt datapath is attached in the namespace now.
    pub fn attached_counters() -> Option<OwnedFd> {
        attached_counters_map()
    }

    /// Applies a prepared table: the changes into the inactive half, flip, grace period, the
    /// same changes into the other half. `table`'s counters must already hold the old
    /// entries' totals (the daemon folds them before a replace).
    pub fn commit(&mut self, p: Prepared) -> Result<(), ApplyError> {
        self.settle()?;
        // The ingress program is on before the first ruleset that needs it, and off after
        // the flip away from the last one.
        let ingress = self.ingress_needed(&p.image, p.ct);
        if ingress {
            self.set_ingress(true)?;
        }
        let t0 = std::time::Instant::now();
        let changes = p.image.diff(&self.image);
        let t1 = std::time::Instant::now();
        let active = self.dp.active_half()?;
        self.dp.write(active ^ 1, &changes)?;
        // A slot new to this table that is not a new rule record (whose counters `write`
        // zeroed) is a chain's tail reusing a freed slot: what it counted before is its
        // offset. Read before the flip, while no packet can reach it.
        let kept: SlotSet = self.slots.iter().flatten().map(|s| s.slot).collect();
        let zeroed: SlotSet = changes
            .iter()
            .filter_map(|c| match c {
                Change::Rule(slot, Some(_)) => Some(*slot),
                _ => None,
            })
            .collect();
        let mut stale: HashMap<u32, Counters> = HashMap::default();
        for slot in p.slots.iter().flatten() {
            if !kept.contains(*slot) && !zeroed.contains(*slot) && !stale.contains_key(slot) {
                let c = self.dp.counter(*slot).unwrap_or_default();
                stale.insert(
                    *slot,
                    Counters {
                        pcnt: c.packets,
                        bcnt: c.bytes,
                    },
                );
            }
        }
        // The tracker runs before the first ruleset that needs it and after the last.
        if p.ct {
            crate::conntrack::set_enabled(&self.dp, true).map_err(ApplyError::Io)?;
        }
        self.dp.flip()?;
        if !p.ct {
            crate::conntrack::set_enabled(&self.dp, false).map_err(ApplyError::Io)?;
        }
        if !ingress {
            // Left on, it only costs time: the new table is in force either way.
            if let Err(e) = self.set_ingress(false) {
                log::error(&format!("taking the ingress program off: {e}"));
            }
        }
        log::debug(&format!(
            "datapath commit: {} changes, diff {:?}, write+flip {:?}",
            changes.len(),
            t1 - t0,
            t1.elapsed()
        ));
        // The grace period and the replay onto the old half need not hold up the caller: the
        // next commit (or compile, which reuses freed slots) waits for them in `settle`.
        let dp = self.dp.clone();
        self.replay = Some(std::thread::spawn(move || {
            dp.sync()?;
            dp.replay(active, &changes)
        }));
        // Slots kept from the previous image continue counting: remember where they are.
        let raw = match self.last_read.take() {
            Some(r) => r,
            None => {
                let n = p.slots.iter().flatten().max().map_or(0, |m| m + 1);
                self.dp
                    .counters(n)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|c| Counters {
                        pcnt: c.packets,
                        bcnt: c.bytes,
                    })
                    .collect()
            }
        };
        let now = |slot: u32| raw.get(slot as usize).copied().unwrap_or_default();
        self.slots = p
            .slots
            .iter()
            .map(|s| {
                s.map(|slot| {
                    let offset = if kept.contains(slot) {
                        now(slot)
                    } else {
                        stale.get(&slot).copied().unwrap_or_default()
                    };
                    EntrySlot { slot, offset }
                })
            })
            .collect();
        // The previous image and assignment hold the only references to the records of
        // removed rules: freed on another thread, like the rule representation.
        crate::enforce::drop_later((
            std::mem::replace(&mut self.image, p.image),
            std::mem::replace(&mut self.asg, p.asg),
        ));
        Ok(())
    }

    /// Waits for the previous commit's grace period and replay: afterwards both halves are
    /// equal and the slots that commit freed are reusable.
    pub fn settle(&mut self) -> Result<(), ApplyError> {
        if let Some(h) = self.replay.take() {
            h.join()
                .map_err(|_| ApplyError::Io(io::Error::other("datapath replay panicked")))??;
        }
        Ok(())
    }

    /// What each entry counted since it was installed. The slots' values read here become
    /// the offsets of the entries the next commit keeps: the packets counted between this read
    /// (the old counters iptables is told) and that commit belong to the new entries.
    pub fn counted(&mut self) -> Vec<Counters> {
        let slots: Vec<Option<u32>> = self.slots.iter().map(|s| s.map(|s| s.slot)).collect();
        let n = slots.iter().flatten().max().map_or(0, |m| m + 1);
        let raw: Vec<Counters> = self
            .dp
            .counters(n)
            .unwrap_or_default()
            .into_iter()
            .map(|c| Counters {
                pcnt: c.packets,
                bcnt: c.bytes,
            })
            .collect();
        let out = self
            .slots
            .iter()
            .map(|s| {
                s.map(|s| {
                    sub(
                        raw.get(s.slot as usize).copied().unwrap_or_default(),
                        s.offset,
                    )
                })
                .unwrap_or_default()
            })
            .collect();
        self.last_read = Some(raw);
        out
    }

    /// Lets every packet pass (the kernel enforces the family) or takes over again.
    pub fn set_fallback(&mut self, on: bool) -> Result<(), ApplyError> {
        // Counts read before the kernel took over are no offsets for what comes after.
        self.last_read = None;
        self.dp.set_fallback(on)?;
        self.fallback = on;
        Ok(())
    }

    pub fn generation(&self) -> u32 {
        self.dp.config().map(|c| c.gen).unwrap_or(0)
    }

    pub fn reasons(&self) -> Vec<(String, u64)> {
        self.dp
            .reasons()
            .map(|r| {
                let mut v: Vec<(String, u64)> =
                    r.into_iter().map(|(k, n)| (format!("{k:?}"), n)).collect();
                v.sort();
                v
            })
            .unwrap_or_default()
    }

    /// Makes the datapath match the namespace: programs on every interface, device names,
    /// local and broadcast routes. Called at start and on every rtnetlink change.
    pub fn resync(&mut self) -> Result<(), ApplyError> {
        let links = netlink::links()?;
        for l in &links {
            self.dp.set_ifname(l.ifindex, Some(&l.name))?;
        }
        for gone in self
            .attacher
            .attached
            .keys()
            .filter(|i| !links.iter().any(|l| l.ifindex == **i))
            .copied()
            .collect::<Vec<_>>()
        {
            let _ = self.dp.set_ifname(gone, None);
        }
        let locals = netlink::local_routes(netlink_packet_route::AddressFamily::Inet)?;
        for r in &self.locals {
            if !locals.contains(r) {
                if let std::net::IpAddr::V4(a) = r.prefix {
                    self.dp.set_local(a.octets(), r.len, None)?;
                }
            }
        }
        for r in &locals {
            if let std::net::IpAddr::V4(a) = r.prefix {
                let kind = match r.kind {
                    LocalKind::Local => layout::LOCAL_UNICAST,
                    LocalKind::Broadcast => layout::LOCAL_BROADCAST,
                };
                self.dp.set_local(a.octets(), r.len, Some(kind))?;
            }
        }
        self.locals = locals;
        let progs = Programs {
            ingress: self.ingress_on.then(|| self.ingress.as_fd()),
            egress: self.egress.as_fd(),
        };
        let errors = self
            .attacher
            .sync(&links, &progs, INGRESS_ROLE, EGRESS_ROLE);
        self.attach_errors = errors.len();
        for e in errors {
            log::error(&format!(
                "attaching to {} ({}) {}: {}",
                e.name, e.ifindex, e.hook, e.error
            ));
        }
        self.sync_xdp();
        Ok(())
    }

    /// The XDP option on every interface but lo, after the TC programs are in place (they
    /// classify whatever XDP leaves to them, so no order of these steps leaves a gap).
    fn sync_xdp(&mut self) {
        let mode = xdp::mode();
        let lo = sys::loopback_ifindex();
        let links = match xdp::links() {
            Ok(l) => l,
            Err(e) => {
                log::error(&format!("XDP: listing interfaces: {e}"));
                return;
            }
        };
        // Native redirects need the target's NDO_XMIT (a veth's peer must have XDP or GRO).
        let features = if mode == Mode::Native {
            xdp::xdp_features().unwrap_or_default()
        } else {
            Default::default()
        };
        let mut now = BTreeMap::new();
        for l in &links {
            if l.ifindex == lo {
                continue;
            }
            let mut base = 0;
            if xdp::fast_path_allowed(&l.name) {
                base |= layout::XDP_DEV_FAST;
            }
            if features
                .get(&l.ifindex)
                .is_some_and(|f| f & xdp::XDP_ACT_NDO_XMIT != 0)
            {
                base |= layout::XDP_DEV_NDO_XMIT;
            }
            // What a native program must check: the target's NDO_XMIT, and on a veth the
            // checksum (a native redirect loses the skb's CHECKSUM_PARTIAL, a local sender's
            // unfinished transport checksum: the receiver would drop it, UdpInCsumErrors
            // measured). Generic XDP keeps the skb and needs neither.
            let native = layout::XDP_DEV_NATIVE
                | if l.veth {
                    layout::XDP_DEV_VERIFY_CSUM
                } else {
                    0
                };
            // Until the attachment is settled, the checks of either mode: a native program
            // being replaced must never run with a generic device's flags.
            let pre = if mode == Mode::Native || l.drv_prog.is_some() {
                base | native
            } else {
                base
            };
            let dev = match (mode, l.mac) {
                (Mode::Off, _) | (_, None) => None,
                (_, Some(mac)) => Some((mac, pre)),
            };
            if let Err(e) = self.dp.set_xdp_dev(l.ifindex, dev) {
                if dev.is_some() {
                    log::error(&format!("XDP: {}: {e}", l.name));
                }
            }
            let r = if mode == Mode::Off {
                xdp::remove(l).map(|_| None).map_err(xdp::XdpError::Sys)
            } else {
                xdp::ensure(l, self.xdp.as_fd(), mode).map(Some)
            };
            match r {
                Ok(Some(a)) => {
                    let fin = if a == xdp::Attached::Native {
                        base | native
                    } else {
                        base
                    };
                    if let (Some(mac), true) = (l.mac, fin != pre) {
                        // A native program just detached may still be running on another
                        // CPU: wait for it before relaxing the checks.
                        if self.dp.sync().is_ok() {
                            let _ = self.dp.set_xdp_dev(l.ifindex, Some((mac, fin)));
                        }
                    }
                    now.insert(l.name.clone(), a);
                }
                Ok(None) => {}
                Err(xdp::XdpError::Sys(e)) if e.raw_os_error() == Some(libc::ENODEV) => {}
                Err(e) => {
                    if self.xdp_attached.contains_key(&l.name) || mode != Mode::Off {
                        log::error(&format!("XDP on {} ({}): {e}", l.name, l.ifindex));
                    }
                }
            }
        }
        for gone in self.xdp_known.iter() {
            if !links.iter().any(|l| l.ifindex == *gone) {
                let _ = self.dp.set_xdp_dev(*gone, None);
            }
        }
        self.xdp_known = links.iter().map(|l| l.ifindex).collect();
        self.xdp_attached = now;
    }

    /// Per interface, whether our programs are attached at ingress and egress, as the kernel
    /// reports it (`BPF_PROG_QUERY`), not as we remember it.
    pub fn hooks(&self) -> Vec<(String, bool, bool)> {
        let ids = |fd: &OwnedFd| sys::prog_id(fd).ok();
        let (i, e) = (ids(&self.ingress), ids(&self.egress));
        netlink::links()
            .unwrap_or_default()
            .into_iter()
            .map(|l| {
                let has = |ty, id: Option<u32>| {
                    id.is_some_and(|id| {
                        sys::tcx_query(l.ifindex, ty)
                            .unwrap_or_default()
                            .contains(&id)
                    })
                };
                (
                    l.name,
                    has(sys::BPF_TCX_INGRESS, i),
                    has(sys::BPF_TCX_EGRESS, e),
                )
            })
            .collect()
    }

    /// Removes the programs from every interface (`bpfipt datapath detach`, tests).
    pub fn detach_all() -> io::Result<usize> {
        let mut n = 0;
        for l in netlink::links()? {
            n += attach::remove(l.ifindex, sys::BPF_TCX_INGRESS, INGRESS_ROLE)?;
            n += attach::remove(l.ifindex, sys::BPF_TCX_EGRESS, EGRESS_ROLE)?;
        }
        // XDP last: until the TC programs are gone it only ever did what they would.
        for l in xdp::links()? {
            n += xdp::remove(&l)?;
        }
        Ok(n)
    }

    pub fn family() -> Family {
        Family::V4
    }
}

/// Compiles a filter table for a datapath that is not loaded yet.
pub fn prepare_fresh(rs: &Ruleset, entries: usize) -> Result<Prepared, ApplyError> {
    prepare(rs, &SlotAssignment::default(), entries)
}

fn prepare(rs: &Ruleset, prev: &SlotAssignment, entries: usize) -> Result<Prepared, ApplyError> {
    let (image, asg) = compile::compile(rs, prev).map_err(ApplyError::Compile)?;
    let slots = entry_slots(rs, &asg, entries);
    let ct = crate::conntrack::uses_conntrack(rs);
    Ok(Prepared {
        image,
        asg,
        slots,
        ct,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_round_trip() {
        let v = vec![
            None,
            Some(EntrySlot {
                slot: 7,
                offset: Counters { pcnt: 3, bcnt: 300 },
            }),
            None,
        ];
        assert_eq!(decode_slots(&encode_slots(&v)), v);
    }
}
