//! Connection tracking in the datapath (ebpf/lib/conntrack.h): `-m conntrack` and
//! `-m state` lowered to match records, the tracker's configuration (the analogue of the
//! `net.netfilter.nf_conntrack_*` sysctls), and the table as `conntrack -L/-D/-F/-C` shows
//! and changes it, with the daemon's garbage collection of expired entries.
//!
//! Layouts mirror include/bpfipt_ct.h. The tables of a namespace are found through the
//! programs attached to its `lo`, as the counters are, so the command needs no daemon.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;

use crate::compile::Why;
use crate::dataplane::Dataplane;
use crate::ext::{Conntrack, CtDirection, CtStates, Match};
use crate::ir::Ruleset;
use crate::layout::{target, MatchRec, RuleRec};
use crate::sys;

/// `BPFIPT_M_CONNTRACK`, `BPFIPT_M_CT_ADDR`.
pub const KIND_CONNTRACK: u8 = 32;
pub const KIND_CT_ADDR: u8 = 33;

/// xt_conntrack's `match_flags` bits.
pub mod flag {
    pub const STATE: u16 = 0x0001;
    pub const PROTO: u16 = 0x0002;
    pub const ORIGSRC: u16 = 0x0004;
    pub const ORIGDST: u16 = 0x0008;
    pub const REPLSRC: u16 = 0x0010;
    pub const REPLDST: u16 = 0x0020;
    pub const STATUS: u16 = 0x0040;
    pub const EXPIRES: u16 = 0x0080;
    pub const ORIGSRC_PORT: u16 = 0x0100;
    pub const ORIGDST_PORT: u16 = 0x0200;
    pub const REPLSRC_PORT: u16 = 0x0400;
    pub const REPLDST_PORT: u16 = 0x0800;
    pub const DIRECTION: u16 = 0x1000;
}

/// State bits as `XT_CONNTRACK_STATE_*`.
fn state_bits(s: &CtStates) -> u16 {
    let b = |x: bool, v: u16| if x { v } else { 0 };
    b(s.invalid, 0x01)
        | b(s.established, 0x02)
        | b(s.related, 0x04)
        | b(s.new, 0x08)
        | b(s.snat, 0x40)
        | b(s.dnat, 0x80)
        | b(s.untracked, 0x100)
}

/// The accept-established shortcut: the states an unconditional `-m conntrack --ctstate S
/// -j ACCEPT` (or `-m state --state S`) accepts, when `rec` is such a rule (no address,
/// interface, protocol or fragment condition, no other match), else 0. Put first in a
/// built-in chain, it is the first rule every packet in S matches, so the datapath accepts
/// those packets and counts them on it without classifying them.
pub fn accept_shortcut(rec: &RuleRec) -> u16 {
    let m = &rec.m[0];
    let u16_at = |off: usize| u16::from_ne_bytes([m.u8_at(off), m.u8_at(off + 1)]);
    if rec.need != 0
        || rec.invflags != 0
        || rec.ipflags != 0
        || rec.proto != 0
        || rec.nmatch != 1
        || rec.target != target::ACCEPT
        || m.kind != KIND_CONNTRACK
        || u16_at(2) != flag::STATE
        || u16_at(4) != 0
    {
        return 0;
    }
    // INVALID, ESTABLISHED, RELATED, NEW: the states the tracker gives (SNAT, DNAT and
    // UNTRACKED never match here, classification or not).
    u16_at(0) & 0x0f
}

/// Whether a ruleset needs the tracker (the kernel registers conntrack for a namespace
/// when such a rule is added).
pub fn uses_conntrack(rs: &Ruleset) -> bool {
    rs.chains.iter().any(|c| {
        c.rules.iter().any(|r| {
            r.matches
                .iter()
                .any(|m| m.name == "conntrack" || m.name == "state")
        })
    })
}

/// The match records of a `-m conntrack` or `-m state` match: one for state, protocol,
/// ports, status, expiry and direction, and one more when addresses are tested.
pub fn lower(m: &Match) -> Result<Vec<MatchRec>, Why> {
    match m {
        Match::State(s) => {
            let mut r = MatchRec {
                kind: KIND_CONNTRACK,
                ..Default::default()
            };
            r.put_u16(0, state_bits(&s.states));
            r.put_u16(2, flag::STATE);
            Ok(vec![r])
        }
        Match::Conntrack(c) => lower_conntrack(c),
        _ => Err(Why::UnknownExtension),
    }
}

fn v4(a: &std::net::IpAddr) -> Result<u32, Why> {
    match a {
        std::net::IpAddr::V4(a) => Ok(u32::from_ne_bytes(a.octets())),
        std::net::IpAddr::V6(_) => Err(Why::Payload),
    }
}

fn lower_conntrack(c: &Conntrack) -> Result<Vec<MatchRec>, Why> {
    let mut r = MatchRec {
        kind: KIND_CONNTRACK,
        ..Default::default()
    };
    let (mut flags, mut inv) = (0u16, 0u16);
    let mut set = |bit: u16, i: bool| {
        flags |= bit;
        if i {
            inv |= bit;
        }
    };
    if let Some(s) = &c.state {
        set(flag::STATE, s.inv);
        r.put_u16(0, state_bits(&s.value));
    }
    if let Some(p) = &c.proto {
        set(flag::PROTO, p.inv);
        r.put_u16(6, p.value);
    }
    if let Some(s) = &c.status {
        set(flag::STATUS, s.inv);
        r.put_u32(8, s.value as u32);
    }
    if let Some(e) = &c.expires {
        set(flag::EXPIRES, e.inv);
        r.put_u32(12, *e.value.start());
        r.put_u32(16, *e.value.end());
    }
    for (bit, off, p) in [
        (flag::ORIGSRC_PORT, 20, &c.origsrc_port),
        (flag::ORIGDST_PORT, 24, &c.origdst_port),
        (flag::REPLSRC_PORT, 28, &c.replsrc_port),
        (flag::REPLDST_PORT, 32, &c.repldst_port),
    ] {
        if let Some(p) = p {
            set(bit, p.inv);
            r.put_u16(off, *p.value.start());
            r.put_u16(off + 2, *p.value.end());
        }
    }
    if let Some(d) = c.direction {
        set(flag::DIRECTION, d == CtDirection::Reply);
    }
    r.put_u16(2, flags);
    r.put_u16(4, inv);
    let mut out = vec![r];
    let mut a = MatchRec {
        kind: KIND_CT_ADDR,
        ..Default::default()
    };
    let (mut aflags, mut ainv) = (0u16, 0u16);
    for (i, (bit, am)) in [
        (flag::ORIGSRC, &c.origsrc),
        (flag::ORIGDST, &c.origdst),
        (flag::REPLSRC, &c.replsrc),
        (flag::REPLDST, &c.repldst),
    ]
    .into_iter()
    .enumerate()
    {
        if let Some(am) = am {
            aflags |= bit;
            if am.inv {
                ainv |= bit;
            }
            a.put_u32(8 * i, v4(&am.value.addr)?);
            a.put_u32(8 * i + 4, v4(&am.value.mask)?);
        }
    }
    if aflags != 0 {
        a.put_u16(32, aflags);
        a.put_u16(34, ainv);
        out.push(a);
    }
    Ok(out)
}

/// The tracker's timeouts, by the name of their sysctl (`nf_conntrack_` + name), with the
/// index in `struct bpfipt_ct_config.timeout` and the kernel's default in seconds.
pub const TIMEOUTS: &[(&str, usize, u32)] = &[
    ("tcp_timeout_syn_sent", 1, 120),
    ("tcp_timeout_syn_recv", 2, 60),
    ("tcp_timeout_established", 3, 432000),
    ("tcp_timeout_fin_wait", 4, 120),
    ("tcp_timeout_close_wait", 5, 60),
    ("tcp_timeout_last_ack", 6, 30),
    ("tcp_timeout_time_wait", 7, 120),
    ("tcp_timeout_close", 8, 10),
    ("tcp_timeout_syn_sent2", 9, 120),
    ("tcp_timeout_max_retrans", 12, 300),
    ("tcp_timeout_unacknowledged", 13, 300),
    ("udp_timeout", 14, 30),
    ("udp_timeout_stream", 15, 120),
    ("icmp_timeout", 16, 30),
    ("generic_timeout", 17, 600),
];

const NTIMEOUTS: usize = 18;

/// `struct bpfipt_ct_config`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CtConfig {
    pub enabled: bool,
    /// `nf_conntrack_max`.
    pub max: u32,
    /// `nf_conntrack_tcp_loose`.
    pub loose: bool,
    /// `nf_conntrack_tcp_be_liberal`: out-of-window segments are not INVALID.
    pub be_liberal: bool,
    pub timeout: [u32; NTIMEOUTS],
    /// `nf_conntrack_tcp_max_retrans`: repeats of a segment before the retrans timeout.
    pub max_retrans: u32,
    /// `nf_conntrack_tcp_ignore_invalid_rst`.
    pub ignore_invalid_rst: bool,
    /// `nf_conntrack_checksum`.
    pub checksum: bool,
}

/// The kernel's default table size when the host does not say (nf_conntrack_core.c
/// derives it from memory; 262144 on the reference machine).
const DEFAULT_MAX: u32 = 262144;

impl Default for CtConfig {
    /// The kernel's defaults; `nf_conntrack_max` is the host's when it has conntrack loaded.
    fn default() -> Self {
        let mut timeout = [0u32; NTIMEOUTS];
        for (_, i, v) in TIMEOUTS {
            timeout[*i] = *v;
        }
        let max = std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_max")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(DEFAULT_MAX);
        CtConfig {
            enabled: false,
            max,
            loose: true,
            be_liberal: false,
            timeout,
            max_retrans: 3,
            ignore_invalid_rst: false,
            checksum: true,
        }
    }
}

pub const CONFIG_SIZE: usize = 16 + 4 * NTIMEOUTS + 16;

impl CtConfig {
    /// Whether a table of `count` entries holds at least 95 % of `max`
    /// (`nf_conntrack_max95 = nf_conntrack_max / 100 * 95`; never for a max below 100, whose
    /// max95 is 0), where the gc worker starts dropping entries early.
    pub fn at_max95(&self, count: u64) -> bool {
        let max95 = u64::from(self.max) / 100 * 95;
        max95 > 0 && count >= max95
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(CONFIG_SIZE);
        b.extend_from_slice(&(self.enabled as u32).to_ne_bytes());
        b.extend_from_slice(&self.max.to_ne_bytes());
        b.extend_from_slice(&(self.loose as u32).to_ne_bytes());
        b.extend_from_slice(&(self.be_liberal as u32).to_ne_bytes());
        for t in self.timeout {
            b.extend_from_slice(&t.to_ne_bytes());
        }
        b.extend_from_slice(&self.max_retrans.to_ne_bytes());
        b.extend_from_slice(&(self.ignore_invalid_rst as u32).to_ne_bytes());
        b.extend_from_slice(&(self.checksum as u32).to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b
    }

    pub fn from_bytes(b: &[u8]) -> CtConfig {
        const TAIL: usize = 16 + 4 * NTIMEOUTS;
        let u = |o: usize| u32::from_ne_bytes(b[o..o + 4].try_into().unwrap());
        let mut timeout = [0u32; NTIMEOUTS];
        for (i, t) in timeout.iter_mut().enumerate() {
            *t = u(16 + 4 * i);
        }
        CtConfig {
            enabled: u(0) != 0,
            max: u(4),
            loose: u(8) != 0,
            be_liberal: u(12) != 0,
            timeout,
            max_retrans: u(TAIL),
            ignore_invalid_rst: u(TAIL + 4) != 0,
            checksum: u(TAIL + 8) != 0,
        }
    }

    /// Sets a value by its sysctl name (`nf_conntrack_` prefix optional): a timeout,
    /// `max`, `tcp_loose`, `tcp_be_liberal`, `tcp_max_retrans`, `tcp_ignore_invalid_rst` or
    /// `checksum`.
    pub fn set(&mut self, name: &str, value: u32) -> Result<(), CtError> {
        let n = name.strip_prefix("nf_conntrack_").unwrap_or(name);
        match n {
            "max" => self.max = value,
            "tcp_loose" => self.loose = value != 0,
            "tcp_be_liberal" => self.be_liberal = value != 0,
            "tcp_max_retrans" => self.max_retrans = value,
            "tcp_ignore_invalid_rst" => self.ignore_invalid_rst = value != 0,
            "checksum" => self.checksum = value != 0,
            _ => {
                let (_, i, _) = TIMEOUTS
                    .iter()
                    .find(|(t, _, _)| *t == n)
                    .ok_or_else(|| CtError::UnknownSetting(name.to_string()))?;
                self.timeout[*i] = value;
            }
        }
        Ok(())
    }

    /// `name value` lines, as the sysctls read.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "nf_conntrack_max {}\nnf_conntrack_checksum {}\nnf_conntrack_tcp_loose {}\n\
             nf_conntrack_tcp_be_liberal {}\nnf_conntrack_tcp_max_retrans {}\n\
             nf_conntrack_tcp_ignore_invalid_rst {}\n",
            self.max,
            self.checksum as u32,
            self.loose as u32,
            self.be_liberal as u32,
            self.max_retrans,
            self.ignore_invalid_rst as u32
        );
        for (n, i, _) in TIMEOUTS {
            s += &format!("nf_conntrack_{n} {}\n", self.timeout[*i]);
        }
        s
    }
}

#[derive(Debug)]
pub enum CtError {
    /// No bpfipt datapath is attached in this namespace.
    NoDatapath,
    UnknownSetting(String),
    Sys(io::Error),
}

impl std::fmt::Display for CtError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CtError::NoDatapath => write!(f, "no bpfipt datapath in this network namespace"),
            CtError::UnknownSetting(s) => write!(f, "unknown setting {s}"),
            CtError::Sys(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for CtError {}

impl From<io::Error> for CtError {
    fn from(e: io::Error) -> Self {
        CtError::Sys(e)
    }
}

pub const KEY_SIZE: usize = 16;
pub const ENTRY_SIZE: usize = 96;

/// IPS_* status bits.
pub mod status {
    pub const EXPECTED: u32 = 0x01;
    pub const SEEN_REPLY: u32 = 0x02;
    pub const ASSURED: u32 = 0x04;
    pub const CONFIRMED: u32 = 0x08;
}

/// One connection (`struct bpfipt_ct_entry` with its key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    pub key: Vec<u8>,
    pub expires_ns: u64,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// ICMP: the id.
    pub sport: u16,
    /// ICMP: type << 8 | code.
    pub dport: u16,
    pub status: u32,
    pub proto: u8,
    pub tcp_state: u8,
}

/// TCP states (include/bpfipt_ct.h enum bpfipt_tcp_state, the kernel's enum tcp_conntrack):
/// the ones named in code here; TCP_STATE_NAMES is indexed by them.
pub mod tcp_state {
    pub const FIN_WAIT: u8 = 4;
    pub const CLOSE: u8 = 8;
}

const TCP_STATE_NAMES: [&str; 10] = [
    "NONE",
    "SYN_SENT",
    "SYN_RECV",
    "ESTABLISHED",
    "FIN_WAIT",
    "CLOSE_WAIT",
    "LAST_ACK",
    "TIME_WAIT",
    "CLOSE",
    "SYN_SENT2",
];

/// The reply type of an ICMP query type (nf_conntrack_proto_icmp.c invmap).
fn icmp_reply_type(t: u8) -> u8 {
    match t {
        8 => 0,
        0 => 8,
        13 => 14,
        14 => 13,
        15 => 16,
        16 => 15,
        17 => 18,
        18 => 17,
        x => x,
    }
}

impl Flow {
    /// gc_worker_can_early_drop: not assured, or a TCP connection that is closing
    /// (tcp_can_early_drop: FIN_WAIT, CLOSE_WAIT, LAST_ACK, TIME_WAIT, CLOSE).
    pub fn can_early_drop(&self) -> bool {
        // FIN_WAIT up to CLOSE: CLOSE_WAIT, LAST_ACK and TIME_WAIT lie between.
        let closing = tcp_state::FIN_WAIT..=tcp_state::CLOSE;
        self.status & status::ASSURED == 0 || (self.proto == 6 && closing.contains(&self.tcp_state))
    }

    pub fn parse(key: &[u8], v: &[u8]) -> Flow {
        let u32n = |o: usize| u32::from_ne_bytes(v[o..o + 4].try_into().unwrap());
        let u16n = |o: usize| u16::from_ne_bytes(v[o..o + 2].try_into().unwrap());
        Flow {
            key: key.to_vec(),
            expires_ns: u64::from_ne_bytes(v[0..8].try_into().unwrap()),
            src: Ipv4Addr::from(<[u8; 4]>::try_from(&v[16..20]).unwrap()),
            dst: Ipv4Addr::from(<[u8; 4]>::try_from(&v[20..24]).unwrap()),
            sport: u16n(24),
            dport: u16n(26),
            status: u32n(28),
            proto: v[36],
            tcp_state: v[37],
        }
    }

    /// Seconds left at `now_ns` (CLOCK_MONOTONIC), as nf_ct_expires() / HZ.
    pub fn remaining(&self, now_ns: u64) -> u64 {
        self.expires_ns.saturating_sub(now_ns) / 1_000_000_000
    }

    /// One line of `conntrack -L` (conntrack-tools' default output, accounting off).
    pub fn format(&self, now_ns: u64) -> String {
        let name = match self.proto {
            1 => "icmp",
            6 => "tcp",
            17 => "udp",
            33 => "dccp",
            47 => "gre",
            132 => "sctp",
            136 => "udplite",
            _ => "unknown",
        };
        let mut s = format!("{:<8} {} {} ", name, self.proto, self.remaining(now_ns));
        if self.proto == 6 {
            let st = TCP_STATE_NAMES
                .get(self.tcp_state as usize)
                .copied()
                .unwrap_or("NONE");
            s += &format!("{st} ");
        }
        let tuple = |src: Ipv4Addr, dst: Ipv4Addr, reply: bool| -> String {
            let mut t = format!("src={src} dst={dst} ");
            match self.proto {
                6 | 17 | 136 | 132 | 33 => {
                    let (a, b) = if reply {
                        (self.dport, self.sport)
                    } else {
                        (self.sport, self.dport)
                    };
                    t += &format!("sport={a} dport={b} ");
                }
                1 => {
                    let ty = (self.dport >> 8) as u8;
                    let ty = if reply { icmp_reply_type(ty) } else { ty };
                    t += &format!("type={ty} code={} id={} ", self.dport & 0xff, self.sport);
                }
                _ => {}
            }
            t
        };
        s += &tuple(self.src, self.dst, false);
        if self.status & status::SEEN_REPLY == 0 {
            s += "[UNREPLIED] ";
        }
        s += &tuple(self.dst, self.src, true);
        if self.status & status::ASSURED != 0 {
            s += "[ASSURED] ";
        }
        s += "mark=0 use=1";
        s
    }
}

/// `-p`, `-s`, `-d` of `conntrack -L/-D`: protocol and original source/destination.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub proto: Option<u8>,
    pub src: Option<Ipv4Addr>,
    pub dst: Option<Ipv4Addr>,
}

impl Filter {
    pub fn matches(&self, f: &Flow) -> bool {
        self.proto.is_none_or(|p| p == f.proto)
            && self.src.is_none_or(|a| a == f.src)
            && self.dst.is_none_or(|a| a == f.dst)
    }
}

/// CLOCK_MONOTONIC in ns, the clock of bpf_ktime_get_ns().
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The conntrack maps of a loaded datapath.
pub struct Table {
    pub ct: OwnedFd,
    pub config: OwnedFd,
    pub count: OwnedFd,
}

impl Table {
    /// The maps of the bpfipt programs attached in this namespace.
    pub fn attached() -> Result<Table, CtError> {
        let lo = sys::loopback_ifindex();
        let (mut ct, mut config, mut count) = (None, None, None);
        for ty in [sys::BPF_TCX_INGRESS, sys::BPF_TCX_EGRESS] {
            for id in sys::tcx_query(lo, ty).unwrap_or_default() {
                let Ok(prog) = sys::prog_fd_by_id(id) else {
                    continue;
                };
                let Ok((_, maps)) = sys::prog_info(&prog) else {
                    continue;
                };
                for m in maps {
                    let Ok(fd) = sys::map_fd_by_id(m) else {
                        continue;
                    };
                    // A datapath of another layout (an older bpfipt) is not read: its
                    // entries and settings would be misread.
                    let size = sys::map_value_size(&fd).unwrap_or(0) as usize;
                    match sys::map_name(&fd).ok().as_deref() {
                        Some("ct") if size == ENTRY_SIZE => ct = Some(fd),
                        Some("ct_config") if size == CONFIG_SIZE => config = Some(fd),
                        Some("ct_count") => count = Some(fd),
                        _ => {}
                    }
                }
                if ct.is_some() && config.is_some() && count.is_some() {
                    break;
                }
            }
        }
        match (ct, config, count) {
            (Some(ct), Some(config), Some(count)) => Ok(Table { ct, config, count }),
            _ => Err(CtError::NoDatapath),
        }
    }

    pub fn config(&self) -> Result<CtConfig, CtError> {
        let mut v = vec![0u8; CONFIG_SIZE];
        sys::map_lookup(&self.config, &0u32.to_ne_bytes(), &mut v)?;
        Ok(CtConfig::from_bytes(&v))
    }

    pub fn set_config(&self, c: &CtConfig) -> Result<(), CtError> {
        sys::map_update(&self.config, &0u32.to_ne_bytes(), &c.to_bytes(), 0)?;
        Ok(())
    }

    /// Every entry, expired ones included (in batches: see sys::hash_lookup_batch).
    pub fn flows(&self) -> Result<Vec<Flow>, CtError> {
        Ok(sys::hash_lookup_batch(&self.ct, KEY_SIZE, ENTRY_SIZE)?
            .iter()
            .map(|(k, v)| Flow::parse(k, v))
            .collect())
    }

    /// Live flows that pass `f`.
    pub fn list(&self, f: &Filter) -> Result<Vec<Flow>, CtError> {
        let now = now_ns();
        Ok(self
            .flows()?
            .into_iter()
            .filter(|x| x.expires_ns > now && f.matches(x))
            .collect())
    }

    /// Deletes the live flows that pass `f`; how many.
    pub fn delete(&self, f: &Filter) -> Result<usize, CtError> {
        let mut n = 0;
        for x in self.list(f)? {
            if sys::map_delete(&self.ct, &x.key)? {
                n += 1;
            }
        }
        self.recount()?;
        Ok(n)
    }

    /// The kernel's gc worker (gc_worker): removes expired entries and, while the table holds
    /// at least 95 % of `max` (`nf_conntrack_max / 100 * 95`, so never below 100), the
    /// entries it may drop early (`gc_worker_can_early_drop`), in the order of the walk, until
    /// it holds less; how many it removed.
    pub fn gc(&self) -> Result<usize, CtError> {
        self.gc_pass().map(|p| p.removed)
    }

    /// [`Table::gc`], and when the next pass is due (`GcPass::next`).
    pub fn gc_pass(&self) -> Result<GcPass, CtError> {
        let now = now_ns();
        let cfg = self.config()?;
        let flows = self.flows()?;
        let mut count = flows.len() as u64;
        let mut next = GcInterval::default();
        for x in &flows {
            let drop = x.expires_ns <= now || (cfg.at_max95(count) && x.can_early_drop());
            if drop && sys::map_delete(&self.ct, &x.key)? {
                count -= 1;
            } else {
                next.add(x.expires_ns.saturating_sub(now));
            }
        }
        // What the walk saw, less what it removed: no second walk of the table.
        self.set_count(count)?;
        Ok(GcPass {
            removed: flows.len() - count as usize,
            next: next.interval(),
            full: cfg.at_max95(count),
        })
    }

    fn set_count(&self, n: u64) -> Result<(), CtError> {
        sys::map_update(&self.count, &0u32.to_ne_bytes(), &n.to_ne_bytes(), 0)?;
        Ok(())
    }

    /// Sets `ct_count` to the entries present (the datapath keeps it exact between runs).
    fn recount(&self) -> Result<(), CtError> {
        self.set_count(self.flows()?.len() as u64)
    }

    pub fn count(&self) -> Result<u64, CtError> {
        let mut v = [0u8; 8];
        sys::map_lookup(&self.count, &0u32.to_ne_bytes(), &mut v)?;
        Ok(u64::from_ne_bytes(v))
    }
}

/// Size of the `ct` map: `nf_conntrack_max` at load (the map is not preallocated, so its
/// memory follows the connections; the count enforces the configured maximum).
pub fn map_entries() -> u32 {
    CtConfig::default().max.max(1)
}

fn table_of(dp: &Dataplane) -> io::Result<Table> {
    let m = |n| dp.map(n).map_err(dp_err);
    Ok(Table {
        ct: m("ct")?,
        config: m("ct_config")?,
        count: m("ct_count")?,
    })
}

fn dp_err(e: crate::dataplane::Error) -> io::Error {
    io::Error::other(e.to_string())
}

fn ct_err(e: CtError) -> io::Error {
    match e {
        CtError::Sys(e) => e,
        e => io::Error::other(e.to_string()),
    }
}

/// Sets a freshly loaded datapath's tracker up: the settings and the connections of the
/// datapath attached now (a previous daemon's), else the kernel's defaults.
pub fn start(dp: &Dataplane, enabled: bool) -> io::Result<()> {
    let new = table_of(dp)?;
    let mut cfg = CtConfig::default();
    if let Ok(old) = Table::attached() {
        if let Ok(c) = old.config() {
            if c.max != 0 {
                cfg = c;
            }
        }
        let mut v = vec![0u8; ENTRY_SIZE];
        for k in sys::map_keys(&old.ct, KEY_SIZE).unwrap_or_default() {
            if sys::map_lookup(&old.ct, &k, &mut v).unwrap_or(false) {
                let _ = sys::map_update(&new.ct, &k, &v, 0);
            }
        }
        new.recount().map_err(ct_err)?;
    }
    cfg.enabled = enabled;
    new.set_config(&cfg).map_err(ct_err)?;
    dp.set_ct_on(enabled).map_err(dp_err)
}

/// Turns the tracker on or off, keeping the other settings. The hooks read the switch's
/// mirror in the datapath's config: it opens after the tracker's own flag and closes before
/// it, so a packet the hooks send to `ct_begin` finds the tracker on, or is told it is off
/// there.
pub fn set_enabled(dp: &Dataplane, on: bool) -> io::Result<()> {
    let t = table_of(dp)?;
    let mut c = t.config().map_err(ct_err)?;
    if !on {
        dp.set_ct_on(false).map_err(dp_err)?;
    }
    if c.enabled != on {
        c.enabled = on;
        t.set_config(&c).map_err(ct_err)?;
    }
    if on {
        dp.set_ct_on(true).map_err(dp_err)?;
    }
    Ok(())
}

/// conntrack-tools' name in its summary lines (the format scripts parse).
const TOOL: &str = "conntrack v1.4.7 (conntrack-tools)";

const CLI_USAGE: &str = "usage: bpfipt conntrack -L|-D [-p PROTO] [-s ADDR] [-d ADDR] | -C | -F \
| --settings | --set NAME VALUE";

fn proto_number(s: &str) -> Option<u8> {
    match s {
        "tcp" => Some(6),
        "udp" => Some(17),
        "icmp" => Some(1),
        "udplite" => Some(136),
        "sctp" => Some(132),
        "dccp" => Some(33),
        "gre" => Some(47),
        _ => s.parse().ok(),
    }
}

/// `bpfipt conntrack ...`: the table of this namespace's datapath, as `conntrack` shows
/// and changes the kernel's. Returns the exit status.
pub fn cli(args: &[&str]) -> i32 {
    let usage = || {
        eprintln!("{CLI_USAGE}");
        2
    };
    let Some((cmd, rest)) = args.split_first() else {
        return usage();
    };
    let mut f = Filter::default();
    let mut set: Option<(&str, u32)> = None;
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        let v = it.next();
        match (*a, v) {
            ("-p" | "--proto", Some(v)) => match proto_number(v) {
                Some(p) => f.proto = Some(p),
                None => return usage(),
            },
            ("-s" | "--src" | "--orig-src", Some(v)) => match v.parse() {
                Ok(a) => f.src = Some(a),
                Err(_) => return usage(),
            },
            ("-d" | "--dst" | "--orig-dst", Some(v)) => match v.parse() {
                Ok(a) => f.dst = Some(a),
                Err(_) => return usage(),
            },
            (name, Some(v)) if *cmd == "--set" && set.is_none() => match v.parse() {
                Ok(n) => set = Some((name, n)),
                Err(_) => return usage(),
            },
            _ => return usage(),
        }
    }
    let t = match Table::attached() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("bpfipt: {e}");
            return 1;
        }
    };
    let r = (|| -> Result<(), CtError> {
        match *cmd {
            "-L" | "--dump" => {
                let now = now_ns();
                let flows = t.list(&f)?;
                for x in &flows {
                    println!("{}", x.format(now));
                }
                eprintln!("{TOOL}: {} flow entries have been shown.", flows.len());
            }
            "-C" | "--count" => println!("{}", t.list(&Filter::default())?.len()),
            "-D" | "--delete" => {
                let n = t.delete(&f)?;
                eprintln!("{TOOL}: {n} flow entries have been deleted.");
            }
            "-F" | "--flush" => {
                t.delete(&Filter::default())?;
                eprintln!("{TOOL}: connection tracking table has been emptied.");
            }
            "--settings" => print!("{}", t.config()?.describe()),
            "--set" => {
                let (name, v) = set.ok_or_else(|| CtError::UnknownSetting(String::new()))?;
                let mut c = t.config()?;
                c.set(name, v)?;
                t.set_config(&c)?;
            }
            _ => return Err(CtError::UnknownSetting(cmd.to_string())),
        }
        Ok(())
    })();
    match r {
        Ok(()) => 0,
        Err(CtError::UnknownSetting(s)) if s.is_empty() || s == *cmd => usage(),
        Err(e) => {
            eprintln!("bpfipt: {e}");
            1
        }
    }
}

/// What one garbage collection pass did.
pub struct GcPass {
    pub removed: usize,
    /// When the next pass is due, as the kernel's gc worker schedules itself.
    pub next: std::time::Duration,
    /// The table still holds at least 95 % of `max`.
    pub full: bool,
}

/// The kernel's gc worker's next run (gc_worker in nf_conntrack_core.c): the running average
/// of the time the live entries have left, each clamped to 1-300 s (GC_SCAN_INTERVAL_MIN,
/// _CLAMP), then to 1-60 s (GC_SCAN_INTERVAL_MAX), 60 s for an empty table. A pass here reads
/// the whole table into user space, so it runs every 5 s at the most (GC_MIN_PERIOD).
#[derive(Default)]
pub struct GcInterval {
    sum_s: u64,
    n: u64,
}

const GC_MIN_PERIOD_S: u64 = 5;
const GC_MAX_PERIOD_S: u64 = 60;

impl GcInterval {
    /// One live entry with `left_ns` to live.
    pub fn add(&mut self, left_ns: u64) {
        self.sum_s += (left_ns / 1_000_000_000).clamp(1, 300);
        self.n += 1;
    }

    pub fn interval(&self) -> std::time::Duration {
        let avg = self.sum_s.checked_div(self.n).unwrap_or(GC_MAX_PERIOD_S);
        std::time::Duration::from_secs(avg.clamp(GC_MIN_PERIOD_S, GC_MAX_PERIOD_S))
    }
}

/// The daemon's garbage collection (the kernel's gc_worker): expired entries are removed at
/// the interval the kernel's worker would choose (GcInterval), and every 5 s while the table
/// is at 95 % of its maximum, so that its memory follows the live connections. The table's
/// count is looked at every second: a table that reaches 95 % is collected within 1 s.
pub fn gc_loop(stop: &std::sync::atomic::AtomicBool) {
    let tick = std::time::Duration::from_secs(1);
    let mut due = std::time::Instant::now() + std::time::Duration::from_secs(GC_MIN_PERIOD_S);
    let mut full = false;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        std::thread::sleep(tick);
        let Ok(t) = Table::attached() else { continue };
        let Ok(c) = t.config() else { continue };
        if !c.enabled {
            continue;
        }
        let now = std::time::Instant::now();
        let near_full = t.count().is_ok_and(|n| c.at_max95(n));
        // Due, or newly at 95 % since the last pass.
        let newly_full = near_full && !full;
        if now < due && !newly_full {
            continue;
        }
        if let Ok(p) = t.gc_pass() {
            full = p.full;
            let next = if full {
                std::time::Duration::from_secs(GC_MIN_PERIOD_S)
            } else {
                p.next
            };
            due = std::time::Instant::now() + next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's clamps (nf_conntrack_core.c: GC_SCAN_INTERVAL_MIN 1 s, _CLAMP 300 s,
    /// _MAX 60 s) under this collection's floor of 5 s.
    #[test]
    fn gc_interval_follows_the_kernels_average_of_time_left() {
        let s = |x: u64| x * 1_000_000_000;
        let of = |lefts: &[u64]| {
            let mut g = GcInterval::default();
            for l in lefts {
                g.add(*l);
            }
            g.interval().as_secs()
        };
        assert_eq!(of(&[]), 60, "an empty table: the longest interval");
        assert_eq!(of(&[s(10), s(30)]), 20, "the average");
        assert_eq!(of(&[s(120); 3]), 60, "at most 60 s");
        assert_eq!(
            of(&[s(1), s(2)]),
            5,
            "at least 5 s here (1 s in the kernel)"
        );
        // Each entry counts at most 300 s: 5 days of an established connection do not hide
        // the closing ones.
        assert_eq!(of(&[s(432_000), s(10), s(10)]), 60);
        assert_eq!(of(&[s(432_000), s(0), s(0), s(0), s(0), s(0)]), 50);
    }

    /// nf_conntrack_max95 = max / 100 * 95 (nf_conntrack_core.c), and 0 turns early drop off.
    #[test]
    fn max95_is_the_kernels_and_off_below_100() {
        let at = |max: u32, count: u64| {
            CtConfig {
                max,
                ..Default::default()
            }
            .at_max95(count)
        };
        assert!(
            !at(99, 0) && !at(99, 1_000_000),
            "max 99: max95 is 0, never"
        );
        assert!(!at(100, 94) && at(100, 95));
        assert!(!at(1000, 949) && at(1000, 950));
        assert!(
            !at(1099, 949) && at(1099, 950),
            "rounded down to a hundred first"
        );
    }

    #[test]
    fn tcp_state_constants_name_their_states() {
        assert_eq!(TCP_STATE_NAMES[tcp_state::FIN_WAIT as usize], "FIN_WAIT");
        assert_eq!(TCP_STATE_NAMES[tcp_state::CLOSE as usize], "CLOSE");
    }

    #[test]
    fn config_round_trip_and_names() {
        let mut c = CtConfig {
            enabled: true,
            ..Default::default()
        };
        c.set("nf_conntrack_udp_timeout", 5).unwrap();
        c.set("tcp_timeout_established", 7).unwrap();
        c.set("max", 10).unwrap();
        c.set("tcp_be_liberal", 1).unwrap();
        c.set("nf_conntrack_tcp_max_retrans", 9).unwrap();
        c.set("checksum", 0).unwrap();
        assert!(matches!(
            c.set("nf_conntrack_bogus", 1),
            Err(CtError::UnknownSetting(_))
        ));
        let b = c.to_bytes();
        assert_eq!(b.len(), CONFIG_SIZE);
        let d = CtConfig::from_bytes(&b);
        assert_eq!(d, c);
        assert_eq!(d.timeout[14], 5);
        assert_eq!(d.timeout[3], 7);
        assert_eq!(d.max, 10);
        assert!(d.be_liberal && !d.checksum);
        assert_eq!(d.max_retrans, 9);
    }

    /// The defaults must be the running kernel's (read from its sysctls in a namespace
    /// with conntrack loaded).
    #[test]
    fn default_timeouts_are_the_kernels() {
        let d = CtConfig::default();
        let dir = std::path::Path::new("/proc/sys/net/netfilter");
        let mut checked = 0;
        for (n, i, _) in TIMEOUTS {
            let Ok(s) = std::fs::read_to_string(dir.join(format!("nf_conntrack_{n}"))) else {
                continue;
            };
            assert_eq!(s.trim().parse::<u32>().unwrap(), d.timeout[*i], "{n}");
            checked += 1;
        }
        for (n, v) in [
            ("checksum", d.checksum as u32),
            ("tcp_loose", d.loose as u32),
            ("tcp_be_liberal", d.be_liberal as u32),
            ("tcp_max_retrans", d.max_retrans),
            ("tcp_ignore_invalid_rst", d.ignore_invalid_rst as u32),
        ] {
            let Ok(s) = std::fs::read_to_string(dir.join(format!("nf_conntrack_{n}"))) else {
                continue;
            };
            assert_eq!(s.trim().parse::<u32>().unwrap(), v, "{n}");
            checked += 1;
        }
        if dir.join("nf_conntrack_max").exists() {
            assert!(checked >= 13, "only {checked} sysctls found");
        }
    }

    /// The byte offsets this module reads and writes are the C structs' (object's BTF).
    #[test]
    fn layouts_match_the_object() {
        let b = crate::layout::alignchecker::btf_structs();
        let off = |s: &str, m: &str| b[s].1[m] as usize;
        assert_eq!(b["bpfipt_ct_key"].0 as usize, KEY_SIZE);
        assert_eq!(b["bpfipt_ct_entry"].0 as usize, ENTRY_SIZE);
        assert_eq!(b["bpfipt_ct_config"].0 as usize, CONFIG_SIZE);
        for (m, o) in [
            ("expires", 0),
            ("orig_src", 16),
            ("orig_dst", 20),
            ("orig_sport", 24),
            ("orig_dport", 26),
            ("status", 28),
            ("proto", 36),
            ("tcp_state", 37),
        ] {
            assert_eq!(off("bpfipt_ct_entry", m), o, "bpfipt_ct_entry.{m}");
        }
        for (m, o) in [
            ("enabled", 0),
            ("max", 4),
            ("loose", 8),
            ("be_liberal", 12),
            ("timeout", 16),
            ("max_retrans", 16 + 4 * NTIMEOUTS),
            ("ignore_invalid_rst", 20 + 4 * NTIMEOUTS),
            ("checksum", 24 + 4 * NTIMEOUTS),
        ] {
            assert_eq!(off("bpfipt_ct_config", m), o, "bpfipt_ct_config.{m}");
        }
    }

    /// Lines as `conntrack -L` (conntrack-tools 1.4.7) printed them for the kernel's table
    /// (6.18) in `unshare -n` after `ping -c1 127.0.0.1` and a socat TCP echo to port 22:
    ///   tcp      6 118 TIME_WAIT src=127.0.0.1 dst=127.0.0.1 sport=48960 dport=22 src=127.0.0.1
    ///     dst=127.0.0.1 sport=22 dport=48960 [ASSURED] mark=0 use=1
    ///   icmp     1 28 src=127.0.0.1 dst=127.0.0.1 type=8 code=0 id=16486 src=127.0.0.1
    ///     dst=127.0.0.1 type=0 code=0 id=16486 mark=0 use=1
    ///   udp      17 28 src=127.0.0.1 dst=127.0.0.1 sport=38844 dport=53 [UNREPLIED] src=...
    #[test]
    fn flow_format_like_conntrack_tools() {
        let mut v = vec![0u8; ENTRY_SIZE];
        v[0..8].copy_from_slice(&(100_000_000_000u64 + 431_999_500_000_000).to_ne_bytes());
        v[16..20].copy_from_slice(&[10, 0, 0, 1]);
        v[20..24].copy_from_slice(&[10, 0, 0, 2]);
        v[24..26].copy_from_slice(&40000u16.to_ne_bytes());
        v[26..28].copy_from_slice(&22u16.to_ne_bytes());
        v[28..32].copy_from_slice(&(status::SEEN_REPLY | status::ASSURED | 8).to_ne_bytes());
        v[36] = 6;
        v[37] = 3;
        let f = Flow::parse(&[0; 16], &v);
        assert_eq!(
            f.format(100_000_000_000),
            "tcp      6 431999 ESTABLISHED src=10.0.0.1 dst=10.0.0.2 sport=40000 dport=22 \
             src=10.0.0.2 dst=10.0.0.1 sport=22 dport=40000 [ASSURED] mark=0 use=1"
        );
        v[36] = 1;
        v[24..26].copy_from_slice(&77u16.to_ne_bytes());
        v[26..28].copy_from_slice(&(8u16 << 8).to_ne_bytes());
        v[28..32].copy_from_slice(&8u32.to_ne_bytes());
        let f = Flow::parse(&[0; 16], &v);
        assert_eq!(
            f.format(100_000_000_000),
            "icmp     1 431999 src=10.0.0.1 dst=10.0.0.2 type=8 code=0 id=77 [UNREPLIED] \
             src=10.0.0.2 dst=10.0.0.1 type=0 code=0 id=77 mark=0 use=1"
        );
    }
}
