//! Differential test of the emulated ip_tables/ip6_tables against the running kernel: the same
//! SET_REPLACE / SET_ADD_COUNTERS / GET_INFO / GET_ENTRIES calls, valid and malformed, go to
//! the kernel (a private network namespace, `oracle::Scratch`) and to a fresh `kernel::Netns`
//! driven as the shim and the daemon drive it; the errno, the bytes written back and, after a
//! successful change, the table as GET_INFO and GET_ENTRIES show it must be equal.
//!
//! The inputs are the kernel's own tables (the initial tables of every table and family, and
//! tables with user chains, jumps, gotos and RETURNs loaded by the real
//! `iptables-legacy-restore`), random chain graphs, and deterministic pseudo-random mutations
//! of all of them. `BPFIPT_DIFF_SEED` picks the seed (default 1), `BPFIPT_DIFF_CASES` the
//! number of random cases (default 4000).
//!
//! Needs root and ip_tables in the kernel; skips with a message otherwise.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use bpfipt_proto::kabi;
use translator::abi::{self, Family, GetInfo, ReplaceHdr, NUMHOOKS};
use translator::check::{self, ExtCheck, ExtCtx, ExtVerdict};
use translator::ext;
use translator::kernel::{Netns, KNOWN_TABLES};
use translator::oracle::Scratch;

// ---------------------------------------------------------------------------------------------
// Deterministic randomness.

struct Rng(u64);

impl Rng {
    /// splitmix64.
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len())]
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------------------
// Layout facts used to craft entries (include/uapi/linux/netfilter_ipv{4,6}/ip{,6}_tables.h).

struct Layout {
    esz: usize,
    target_offset: usize,
    next_offset: usize,
    comefrom: usize,
    counters: usize,
    /// `ip.proto`, `ip.flags`, `ip.invflags` and the size of the ip header.
    proto: usize,
    flags: usize,
    invflags: usize,
    ip_len: usize,
    /// `IPT_F_GOTO` / `IP6T_F_GOTO`.
    goto_flag: u8,
}

fn layout(f: Family) -> Layout {
    match f {
        Family::V4 => Layout {
            esz: 112,
            target_offset: 88,
            next_offset: 90,
            comefrom: 92,
            counters: 96,
            proto: 80,
            flags: 82,
            invflags: 83,
            ip_len: 84,
            goto_flag: 0x02,
        },
        Family::V6 => Layout {
            esz: 168,
            target_offset: 140,
            next_offset: 142,
            comefrom: 144,
            counters: 152,
            proto: 128,
            flags: 131,
            invflags: 132,
            ip_len: 136,
            goto_flag: 0x04,
        },
    }
}

fn rd16(b: &[u8], off: usize) -> usize {
    b.get(off..off + 2)
        .map(|s| u16::from_ne_bytes([s[0], s[1]]) as usize)
        .unwrap_or(0)
}
fn wr16(b: &mut [u8], off: usize, v: usize) {
    if let Some(s) = b.get_mut(off..off + 2) {
        s.copy_from_slice(&(v as u16).to_ne_bytes());
    }
}
fn put8(b: &mut [u8], off: usize, v: u8) {
    if let Some(x) = b.get_mut(off) {
        *x = v;
    }
}
fn wr32(b: &mut [u8], off: usize, v: u32) {
    if let Some(s) = b.get_mut(off..off + 4) {
        s.copy_from_slice(&v.to_ne_bytes());
    }
}

/// Offsets of the entries of a well-formed blob.
fn entry_offsets(f: Family, blob: &[u8]) -> Vec<usize> {
    abi::entries(f, blob).map(|e| e.offset).collect()
}

// ---------------------------------------------------------------------------------------------
// The two sides.

/// What one call gave: the errno, or the bytes the caller sees written.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Err(i32),
    Ok(Vec<u8>),
}

impl Outcome {
    fn errno(&self) -> i32 {
        match self {
            Outcome::Err(e) => *e,
            Outcome::Ok(_) => 0,
        }
    }
}

fn outcome(r: Result<Vec<u8>, i32>) -> Outcome {
    match r {
        Ok(b) => Outcome::Ok(b),
        Err(e) => Outcome::Err(e),
    }
}

/// A SET_REPLACE call: header, entry table, the caller's length, and whether the old
/// counters go to a NULL pointer (the kernel ignores the failed copy).
#[derive(Clone, Debug)]
struct ReplaceCall {
    f: Family,
    hdr: ReplaceHdr,
    blob: Vec<u8>,
    optlen: usize,
    counters_null: bool,
}

impl ReplaceCall {
    fn new(f: Family, hdr: ReplaceHdr, blob: Vec<u8>) -> ReplaceCall {
        let optlen = abi::REPLACE_HDR + blob.len();
        ReplaceCall {
            f,
            hdr,
            blob,
            optlen,
            counters_null: false,
        }
    }

    /// The caller's buffer, at least `optlen` bytes.
    fn bytes(&self, counters_ptr: u64) -> Vec<u8> {
        let mut h = self.hdr.clone();
        h.counters_ptr = counters_ptr;
        let mut b = h.emit();
        // A name of 32 non-NUL bytes is sent as is (the kernel cuts it at byte 31).
        if self.hdr.name.len() >= abi::TABLE_MAXNAMELEN {
            b[..abi::TABLE_MAXNAMELEN].copy_from_slice(&self.hdr.name[..abi::TABLE_MAXNAMELEN]);
        }
        b.extend_from_slice(&self.blob);
        if b.len() < self.optlen {
            b.resize(self.optlen, 0);
        }
        b
    }
}

fn name_field(name: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; abi::TABLE_MAXNAMELEN];
    let n = name.len().min(abi::TABLE_MAXNAMELEN);
    b[..n].copy_from_slice(&name[..n]);
    b
}

/// The most old counters any table here can have: the kernel writes them only on success.
const MAX_COUNTERS: usize = 1 << 16;

struct Kernel {
    s: Scratch,
}

impl Kernel {
    fn replace(&self, c: &ReplaceCall) -> Outcome {
        let n = (c.hdr.num_counters as usize).min(MAX_COUNTERS);
        let mut counters = vec![0u8; n * abi::COUNTERS_SIZE];
        let ptr = if c.counters_null {
            0
        } else {
            counters.as_mut_ptr() as u64
        };
        let buf = c.bytes(ptr);
        match self
            .s
            .setsockopt(c.f, kabi::SO_SET_REPLACE, &buf[..c.optlen])
        {
            Ok(()) if c.counters_null => Outcome::Ok(Vec::new()),
            Ok(()) => Outcome::Ok(counters),
            Err(e) => Outcome::Err(e),
        }
    }
    fn add_counters(&self, f: Family, buf: &[u8], optlen: usize) -> Outcome {
        outcome(
            self.s
                .setsockopt(f, kabi::SO_SET_ADD_COUNTERS, &buf[..optlen])
                .map(|()| Vec::new()),
        )
    }
    fn get_info(&self, f: Family, buf: Vec<u8>) -> Outcome {
        outcome(self.s.getsockopt(f, kabi::SO_GET_INFO, buf))
    }
    fn get_entries(&self, f: Family, buf: Vec<u8>) -> Outcome {
        outcome(self.s.getsockopt(f, kabi::SO_GET_ENTRIES, buf))
    }
}

/// The emulation as the shim and the daemon run it.
struct Emu {
    name: &'static str,
    ns: Netns,
    ext: Box<dyn ExtCheck>,
    /// The daemon's scratch namespace for extensions `ext` does not model.
    checker: Scratch,
    asked_kernel: usize,
}

impl Emu {
    fn new(name: &'static str, ext: Box<dyn ExtCheck>) -> Emu {
        Emu {
            name,
            ns: Netns::default(),
            ext,
            checker: Scratch::new().expect("scratch namespace"),
            asked_kernel: 0,
        }
    }

    fn replace(&mut self, c: &ReplaceCall) -> Outcome {
        match self.replace_raw(c.f, c.optlen, &c.bytes(0)) {
            Outcome::Ok(_) if c.counters_null => Outcome::Ok(Vec::new()),
            o => o,
        }
    }

    /// SET_REPLACE of the first `optlen` bytes of `buf`; the old counters on success.
    fn replace_raw(&mut self, f: Family, optlen: usize, buf: &[u8]) -> Outcome {
        let Emu {
            ns,
            ext,
            checker,
            asked_kernel,
            ..
        } = self;
        // As daemon.rs does.
        let mut kernel_check = |hdr: &ReplaceHdr, entries: &[u8]| {
            *asked_kernel += 1;
            match checker.check_replace(f, hdr, entries) {
                Ok(()) | Err(libc::ENOPROTOOPT) => Ok(()),
                Err(e) => Err(e),
            }
        };
        match ns.setsockopt_replace(f, optlen, buf, ext.as_ref(), &mut kernel_check) {
            Ok(r) => {
                let old = abi::emit_counters(&r.old_counters);
                ns.install(r.table);
                Outcome::Ok(old)
            }
            Err(e) => Outcome::Err(e),
        }
    }

    fn add_counters(&mut self, f: Family, buf: &[u8], optlen: usize) -> Outcome {
        match self.ns.setsockopt_add_counters(f, optlen, buf) {
            Ok((name, counters)) => {
                self.ns.swap_counters(f, &name, counters);
                Outcome::Ok(Vec::new())
            }
            Err(e) => Outcome::Err(e),
        }
    }
    fn get_info(&mut self, f: Family, buf: Vec<u8>) -> Outcome {
        match self.ns.getsockopt_info(f, buf.len(), &buf) {
            Ok((info, _)) => Outcome::Ok(info),
            Err(e) => Outcome::Err(e),
        }
    }
    /// The caller's buffer after the call: the shim writes only the bytes the kernel writes.
    fn get_entries(&mut self, f: Family, buf: Vec<u8>) -> Outcome {
        match self
            .ns
            .getsockopt_entries(f, buf.len(), &buf, &ext::usersize)
        {
            Ok((blob, _)) => {
                let mut out = buf.clone();
                let base = abi::GET_ENTRIES_HDR;
                for r in kabi::kernel_written_ranges(f.af(), &blob) {
                    out[base + r.start..base + r.end].copy_from_slice(&blob[r]);
                }
                Outcome::Ok(out)
            }
            Err(e) => Outcome::Err(e),
        }
    }
}

fn info_buf(name: &[u8], len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    let n = name.len().min(len).min(abi::TABLE_MAXNAMELEN);
    b[..n].copy_from_slice(&name[..n]);
    b
}

fn entries_buf(name: &[u8], size: u32, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len.max(abi::GET_ENTRIES_HDR)];
    b[..abi::TABLE_MAXNAMELEN].copy_from_slice(&name_field(name));
    b[32..36].copy_from_slice(&size.to_ne_bytes());
    b.truncate(len);
    b
}

fn counters_buf(name: &[u8], num: u32, counters: &[(u64, u64)]) -> Vec<u8> {
    let mut b = name_field(name);
    b.extend_from_slice(&num.to_ne_bytes());
    b.extend_from_slice(&[0u8; 4]);
    for &(p, c) in counters {
        b.extend_from_slice(&p.to_ne_bytes());
        b.extend_from_slice(&c.to_ne_bytes());
    }
    b
}

// ---------------------------------------------------------------------------------------------
// Comparison bookkeeping.

#[derive(Default)]
struct Tally {
    /// The calls under test, per emulation.
    cases: usize,
    agree: usize,
    by_errno: BTreeMap<i32, usize>,
    /// Everything else compared: tables read back after a change, resets.
    checks: usize,
    checks_agree: usize,
    failures: Vec<String>,
}

impl Tally {
    fn compare(&mut self, primary: bool, what: &str, k: &Outcome, e: &Outcome) -> bool {
        let same = k == e;
        if primary {
            self.cases += 1;
            self.agree += usize::from(same);
            if same {
                *self.by_errno.entry(k.errno()).or_default() += 1;
            }
        } else {
            self.checks += 1;
            self.checks_agree += usize::from(same);
        }
        if !same && self.failures.len() < 40 {
            self.failures.push(format!(
                "{what}{}\n    kernel:    {}\n    emulation: {}",
                first_difference(k, e),
                show(k),
                show(e)
            ));
        }
        same
    }
}

fn show(o: &Outcome) -> String {
    match o {
        Outcome::Err(e) => format!("errno {e} ({})", std::io::Error::from_raw_os_error(*e)),
        Outcome::Ok(b) if b.len() > 64 => format!("ok, {} bytes", b.len()),
        Outcome::Ok(b) => format!("ok {b:02x?}"),
    }
}

/// First differing byte of two entry tables, for the report.
fn first_difference(a: &Outcome, b: &Outcome) -> String {
    if let (Outcome::Ok(a), Outcome::Ok(b)) = (a, b) {
        if let Some(i) = a.iter().zip(b.iter()).position(|(x, y)| x != y) {
            return format!(
                " (first difference at byte {i}: {:#x} vs {:#x})",
                a[i], b[i]
            );
        }
        if a.len() != b.len() {
            return format!(" (lengths {} vs {})", a.len(), b.len());
        }
    }
    String::new()
}

struct World {
    k: Kernel,
    emus: Vec<Emu>,
    tally: Tally,
}

impl World {
    /// Runs `call` on every emulation and compares with the kernel's outcome `k`.
    fn against(
        &mut self,
        primary: bool,
        what: &str,
        k: &Outcome,
        mut call: impl FnMut(&mut Emu) -> Outcome,
    ) -> bool {
        let mut all = true;
        for emu in &mut self.emus {
            let e = call(emu);
            all &= self
                .tally
                .compare(primary, &format!("[{}] {what}", emu.name), k, &e);
        }
        all
    }

    /// GET_INFO of `name` on all sides: compared, and parsed from the kernel's answer.
    fn info(&mut self, f: Family, name: &str, what: &str) -> Option<GetInfo> {
        let b = info_buf(name.as_bytes(), abi::GETINFO_SIZE);
        let k = self.k.get_info(f, b.clone());
        self.against(false, &format!("{what}: GET_INFO {f} {name}"), &k, |e| {
            e.get_info(f, b.clone())
        });
        match k {
            Outcome::Ok(b) => GetInfo::parse(&b),
            Outcome::Err(_) => None,
        }
    }

    /// The whole visible state of a table on all sides: GET_INFO and GET_ENTRIES.
    fn compare_table(&mut self, f: Family, name: &str, what: &str) {
        let Some(info) = self.info(f, name, what) else {
            return;
        };
        let len = abi::GET_ENTRIES_HDR + info.size as usize;
        let b = entries_buf(name.as_bytes(), info.size, len);
        let k = self.k.get_entries(f, b.clone());
        self.against(false, &format!("{what}: GET_ENTRIES {f} {name}"), &k, |e| {
            e.get_entries(f, b.clone())
        });
    }

    fn replace(&mut self, primary: bool, c: &ReplaceCall, what: &str) -> Outcome {
        let k = self.k.replace(c);
        let same = self.against(primary, what, &k, |e| e.replace(c));
        if same && matches!(k, Outcome::Ok(_)) {
            self.compare_table(c.f, &String::from_utf8_lossy(&c.hdr.name), what);
        }
        k
    }

    fn add_counters(
        &mut self,
        primary: bool,
        f: Family,
        buf: &[u8],
        len: usize,
        what: &str,
    ) -> Outcome {
        let k = self.k.add_counters(f, buf, len);
        self.against(primary, what, &k, |e| e.add_counters(f, buf, len));
        k
    }

    /// Puts a table back to `base` (valid) on all sides, then adds random counters.
    fn reset(&mut self, rng: &mut Rng, f: Family, base: &Base) {
        let Some(info) = self.info(f, &base.table, "reset") else {
            panic!("{f} table {} missing in the kernel", base.table);
        };
        let mut hdr = base.hdr.clone();
        hdr.num_counters = info.num_entries;
        let c = ReplaceCall::new(f, hdr, base.blob.clone());
        let r = self.replace(
            false,
            &c,
            &format!("reset {f} {} to {}", base.table, base.label),
        );
        assert!(
            matches!(r, Outcome::Ok(_)),
            "reset of {f} {} to {} failed in the kernel: {}",
            base.table,
            base.label,
            show(&r)
        );
        let n = base.hdr.num_entries;
        let counters: Vec<(u64, u64)> = (0..n)
            .map(|_| (rng.next() % 1000, rng.next() % 100_000))
            .collect();
        let buf = counters_buf(base.table.as_bytes(), n, &counters);
        self.add_counters(
            false,
            f,
            &buf,
            buf.len(),
            &format!("reset counters {f} {}", base.table),
        );
    }
}

/// The extensions ip_tables itself registers, modeled exactly: the standard and ERROR targets
/// and the `icmp`/`icmp6` matches (`ipt_builtin_mt`, `icmp6_mt_reg`). Everything else goes to
/// the kernel check. With it, `check` answers the generated tables without help.
struct CoreOnly;

impl ExtCheck for CoreOnly {
    fn check_match(&self, ctx: &ExtCtx<'_>, m: &abi::XtObj<'_>) -> ExtVerdict {
        let (name, proto): (&[u8], u16) = match ctx.family {
            Family::V4 => (b"icmp", 1),
            Family::V6 => (b"icmp6", 58),
        };
        if m.name() != name || m.revision() != 0 {
            return ExtVerdict::Unmodeled;
        }
        // xt_check_match: size of struct ipt_icmp (4, aligned), protocol not inverted
        // (IPT_INV_PROTO), then icmp_checkentry: only IPT_ICMP_INV in invflags.
        let inv_proto = ctx.entry.ip_invflags() & 0x40 != 0;
        if m.size() != abi::XT_HDR + 8 {
            return ExtVerdict::Err(libc::EINVAL);
        }
        if ctx.entry.proto() != proto || inv_proto {
            return ExtVerdict::Err(libc::EINVAL);
        }
        if m.data()[3] & !0x01 != 0 {
            return ExtVerdict::Err(libc::EINVAL);
        }
        ExtVerdict::Ok
    }
    fn check_target(&self, _ctx: &ExtCtx<'_>, t: &abi::XtObj<'_>) -> ExtVerdict {
        check::builtin_target(t).unwrap_or(ExtVerdict::Unmodeled)
    }
}

// ---------------------------------------------------------------------------------------------
// Valid tables to start from.

#[derive(Clone)]
struct Base {
    label: String,
    f: Family,
    table: String,
    hdr: ReplaceHdr,
    blob: Vec<u8>,
}

fn base_from_kernel(s: &Scratch, f: Family, table: &str, label: &str) -> Option<Base> {
    let info = s.get_info(f, table).ok()?;
    let blob = s.get_entries(f, table).ok()?;
    Some(Base {
        label: label.to_string(),
        f,
        table: table.to_string(),
        hdr: ReplaceHdr {
            name: table.as_bytes().to_vec(),
            valid_hooks: info.valid_hooks,
            num_entries: info.num_entries,
            size: info.size,
            hook_entry: info.hook_entry,
            underflow: info.underflow,
            num_counters: info.num_entries,
            counters_ptr: 0,
        },
        blob,
    })
}

/// Rulesets for `iptables-legacy-restore`: user chains, jumps, gotos, RETURNs, negations,
/// an unreachable chain, a chain reached from several hooks, matches.
const RESTORE_V4: &str = "\
*filter
:INPUT DROP [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:common - [0:0]
:leaf - [0:0]
:gone - [0:0]
:unused - [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -s 10.0.0.0/8 -j common
-A INPUT -p tcp --dport 22 -j ACCEPT
-A INPUT -d 192.168.1.1/32 -g gone
-A INPUT ! -s 1.2.3.4/32 -j RETURN
-A INPUT -p icmp --icmp-type 8 -j ACCEPT
-A FORWARD -j common
-A FORWARD -o eth0 -j DROP
-A OUTPUT -p udp -j leaf
-A OUTPUT -j QUEUE
-A common -s 10.1.0.0/16 -j leaf
-A common -p icmp -j RETURN
-A common -f -j DROP
-A common -g leaf
-A leaf -j RETURN
-A gone -j DROP
-A unused -j ACCEPT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:chain1 - [0:0]
:chain2 - [0:0]
-A PREROUTING -s 10.0.0.0/8 -j chain1
-A OUTPUT -j chain1
-A chain1 -d 10.0.0.1/32 -j chain2
-A chain1 -j RETURN
-A chain2 -p tcp -j RETURN
COMMIT
*mangle
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:m1 - [0:0]
-A PREROUTING -j m1
-A FORWARD -j m1
-A POSTROUTING -o lo -j m1
-A m1 -p tcp -j ACCEPT
COMMIT
*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT DROP [0:0]
:r1 - [0:0]
:r2 - [0:0]
-A PREROUTING -g r1
-A r1 -s 1.1.1.1/32 -j r2
-A r2 -j RETURN
COMMIT
";

const RESTORE_V6: &str = "\
*filter
:INPUT DROP [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:common - [0:0]
:leaf - [0:0]
:unused - [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -s fd00::/8 -j common
-A INPUT -p tcp --dport 22 -j ACCEPT
-A INPUT -d fd00::1/128 -g leaf
-A INPUT ! -s fd00::2/128 -j RETURN
-A FORWARD -j common
-A OUTPUT -p udp -j leaf
-A common -s fd01::/16 -j leaf
-A common -p ipv6-icmp -j RETURN
-A common -g leaf
-A leaf -j RETURN
-A unused -j ACCEPT
COMMIT
*mangle
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:m1 - [0:0]
-A PREROUTING -j m1
-A FORWARD -j m1
-A m1 -p tcp -j ACCEPT
COMMIT
*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:r1 - [0:0]
-A PREROUTING -g r1
-A OUTPUT -j r1
-A r1 -j RETURN
COMMIT
";

/// Loads the rulesets with the real tools in a namespace of its own and reads the tables back.
fn bases_from_restore() -> Result<Vec<Base>, String> {
    std::thread::spawn(|| -> Result<Vec<Base>, String> {
        // SAFETY: unshare of the network namespace affects this thread only.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(format!("unshare: {}", std::io::Error::last_os_error()));
        }
        for (tool, rules) in [
            ("iptables-legacy-restore", RESTORE_V4),
            ("ip6tables-legacy-restore", RESTORE_V6),
        ] {
            let mut child = Command::new(tool)
                .env_remove("LD_PRELOAD")
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| format!("{tool}: {e}"))?;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(rules.as_bytes())
                .map_err(|e| format!("{tool}: {e}"))?;
            let out = child
                .wait_with_output()
                .map_err(|e| format!("{tool}: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "{tool} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        let s = Scratch::here().map_err(|e| e.to_string())?;
        let mut v = Vec::new();
        for (f, tables) in [
            (Family::V4, &["filter", "nat", "mangle", "raw"][..]),
            (Family::V6, &["filter", "mangle", "raw"][..]),
        ] {
            for t in tables {
                let b = base_from_kernel(&s, f, t, "iptables-restore ruleset")
                    .ok_or_else(|| format!("reading back {f} {t}"))?;
                v.push(b);
            }
        }
        Ok(v)
    })
    .join()
    .map_err(|_| "restore thread panicked".to_string())?
}

// ---------------------------------------------------------------------------------------------
// Random chain graphs.

#[derive(Clone, Copy, Debug)]
enum GenTarget {
    Verdict(i32),
    /// Jump to the first rule of chain n (or, with `true`, to its head entry).
    Jump(usize, bool),
}

#[derive(Clone, Debug)]
struct GenRule {
    cond: bool,
    goto: bool,
    icmp: bool,
    target: GenTarget,
}

/// One entry of the generated layout before offsets are known.
enum Slot {
    Rule(GenRule),
    Policy(i32),
    Head(String),
    End,
}

fn entry_bytes(
    f: Family,
    slot: &Slot,
    rng: &mut Rng,
    jump: impl Fn(usize, bool) -> i32,
) -> Vec<u8> {
    let l = layout(f);
    match slot {
        Slot::Head(n) => abi::build::error_entry(f, n.as_bytes()),
        Slot::End => abi::build::error_entry(f, b"ERROR"),
        Slot::Policy(v) => abi::build::standard_entry(f, *v),
        Slot::Rule(r) => {
            let v = match r.target {
                GenTarget::Verdict(v) => v,
                GenTarget::Jump(c, head) => jump(c, head),
            };
            let mut e = abi::build::standard_entry(f, v);
            if r.icmp {
                // An icmp match (`ipt_builtin_mt`), any type: struct ipt_icmp is 4 bytes.
                let mut m = vec![0u8; abi::XT_HDR + 8];
                wr16(&mut m, 0, abi::XT_HDR + 8);
                let name: &[u8] = if f == Family::V4 { b"icmp" } else { b"icmp6" };
                m[2..2 + name.len()].copy_from_slice(name);
                m[abi::XT_HDR + 1] = 0;
                m[abi::XT_HDR + 2] = 0xff;
                let t = e.split_off(l.esz);
                e.extend_from_slice(&m);
                e.extend_from_slice(&t);
                wr16(&mut e, l.target_offset, l.esz + m.len());
                let n = e.len();
                wr16(&mut e, l.next_offset, n);
                wr16(&mut e, l.proto, if f == Family::V4 { 1 } else { 58 });
            }
            if r.cond {
                // A source address, or a protocol.
                if rng.chance(50) {
                    e[0] = 10;
                    e[if f == Family::V4 { 8 } else { 32 }] = 0xff;
                } else if !r.icmp {
                    wr16(&mut e, l.proto, 17);
                }
            }
            if r.goto {
                e[l.flags] |= l.goto_flag;
            }
            e
        }
    }
}

/// A random table: the built-in chains of `valid_hooks`, `n` user chains, random rules with
/// jumps and gotos between them (loops included), sometimes a chain without its closing RETURN.
fn generate(rng: &mut Rng, f: Family, table: &str, valid_hooks: u32) -> Base {
    let hooks: Vec<usize> = (0..NUMHOOKS)
        .filter(|h| valid_hooks & (1 << h) != 0)
        .collect();
    let users = rng.below(6);
    let nchains = hooks.len() + users;
    let loopy = rng.chance(30);
    let mut chains: Vec<Vec<GenRule>> = Vec::new();
    for c in 0..nchains {
        let mut rules = Vec::new();
        for _ in 0..rng.below(5) {
            let target = match rng.below(10) {
                0 => GenTarget::Verdict(abi::VERDICT_ACCEPT),
                1 => GenTarget::Verdict(abi::VERDICT_DROP),
                2 => GenTarget::Verdict(abi::VERDICT_RETURN),
                3 => GenTarget::Verdict(abi::VERDICT_QUEUE),
                _ if users == 0 => GenTarget::Verdict(abi::VERDICT_DROP),
                _ => {
                    // Mostly forward jumps into user chains (acyclic), sometimes any chain.
                    let lo = if loopy { 0 } else { (c + 1).max(hooks.len()) };
                    if lo >= nchains {
                        GenTarget::Verdict(abi::VERDICT_RETURN)
                    } else {
                        GenTarget::Jump(lo + rng.below(nchains - lo), rng.chance(10))
                    }
                }
            };
            rules.push(GenRule {
                cond: rng.chance(80),
                goto: matches!(target, GenTarget::Jump(..)) && rng.chance(25),
                icmp: rng.chance(5),
                target,
            });
        }
        chains.push(rules);
    }
    let mut slots = Vec::new();
    // (index of the head or first slot, index of the first rule) per chain.
    let mut starts = Vec::new();
    let mut hook_slots = Vec::new();
    for (c, rules) in chains.iter().enumerate() {
        let head = slots.len();
        if c >= hooks.len() {
            slots.push(Slot::Head(format!("chain{c}")));
        }
        let first = slots.len();
        starts.push((head, first));
        for r in rules {
            slots.push(Slot::Rule(r.clone()));
        }
        if c < hooks.len() {
            let pol = slots.len();
            slots.push(Slot::Policy(
                rng.pick(&[abi::VERDICT_ACCEPT, abi::VERDICT_DROP]),
            ));
            hook_slots.push((first, pol));
        } else if !rng.chance(8) {
            slots.push(Slot::Policy(abi::VERDICT_RETURN));
        }
    }
    slots.push(Slot::End);
    // Offsets: entry sizes do not depend on the verdicts, so one pass with dummy jumps.
    let mut tmp = Rng(rng.0);
    let sizes: Vec<usize> = slots
        .iter()
        .map(|s| entry_bytes(f, s, &mut tmp, |_, _| 0).len())
        .collect();
    let mut offs = Vec::new();
    let mut o = 0;
    for s in &sizes {
        offs.push(o);
        o += s;
    }
    let mut blob = Vec::new();
    for s in &slots {
        blob.extend(entry_bytes(f, s, rng, |c, head| {
            let (h, first) = starts[c];
            offs[if head { h } else { first }] as i32
        }));
    }
    let mut he = [0u32; NUMHOOKS];
    let mut uf = [0u32; NUMHOOKS];
    for (i, &h) in hooks.iter().enumerate() {
        he[h] = offs[hook_slots[i].0] as u32;
        uf[h] = offs[hook_slots[i].1] as u32;
    }
    Base {
        label: format!("generated ({nchains} chains, loopy {loopy})"),
        f,
        table: table.to_string(),
        hdr: ReplaceHdr {
            name: table.as_bytes().to_vec(),
            valid_hooks,
            num_entries: slots.len() as u32,
            size: blob.len() as u32,
            hook_entry: he,
            underflow: uf,
            num_counters: 0,
            counters_ptr: 0,
        },
        blob,
    }
}

// ---------------------------------------------------------------------------------------------
// Mutations.

/// A random entry satisfying `pred`: its offset and target offset.
fn entry_with(
    rng: &mut Rng,
    f: Family,
    blob: &[u8],
    pred: impl Fn(&abi::Entry<'_>) -> bool,
) -> Option<(usize, usize)> {
    let v: Vec<_> = abi::entries(f, blob)
        .filter(|e| pred(e))
        .map(|e| (e.offset, e.target_offset()))
        .collect();
    if v.is_empty() {
        None
    } else {
        Some(v[rng.below(v.len())])
    }
}

/// Applies one random fault to `c`; returns its description.
fn mutate(rng: &mut Rng, c: &mut ReplaceCall) -> String {
    let f = c.f;
    let l = layout(f);
    let offs = entry_offsets(f, &c.blob);
    let size = c.blob.len();
    let any_entry = |rng: &mut Rng| -> usize {
        if offs.is_empty() {
            0
        } else {
            offs[rng.below(offs.len())]
        }
    };
    // Interesting 32-bit positions: entry starts, their middles, the end, impossible values.
    let position = |rng: &mut Rng| -> u32 {
        let e = if offs.is_empty() {
            0
        } else {
            offs[rng.below(offs.len())]
        };
        match rng.below(8) {
            0 => (e + 8) as u32,
            1 => (e + 4) as u32,
            2 => size as u32,
            3 => (size + 8) as u32,
            4 => u32::MAX,
            5 => (e as u32).wrapping_sub(8),
            _ => e as u32,
        }
    };
    match rng.below(32) {
        0 => {
            let e = any_entry(rng);
            let old = rd16(&c.blob, e + l.next_offset);
            let r = rng.below(0x10000);
            let v = rng.pick(&[
                old + 8,
                old.wrapping_sub(8),
                old + 1,
                old.wrapping_sub(4),
                0,
                l.esz,
                l.esz + 31,
                l.esz + 32,
                0xffff,
                r,
            ]);
            wr16(&mut c.blob, e + l.next_offset, v);
            format!("next_offset of entry @{e} {old} -> {v}")
        }
        1 => {
            let e = any_entry(rng);
            let old = rd16(&c.blob, e + l.target_offset);
            let next = rd16(&c.blob, e + l.next_offset);
            let r = rng.below(0x10000);
            let v = rng.pick(&[
                old + 8,
                old.wrapping_sub(8),
                old + 4,
                l.esz - 8,
                l.esz,
                next.wrapping_sub(32),
                next.wrapping_sub(31),
                next.wrapping_sub(24),
                next,
                r,
            ]);
            wr16(&mut c.blob, e + l.target_offset, v);
            format!("target_offset of entry @{e} {old} -> {v}")
        }
        2 => {
            let e = any_entry(rng);
            let t = e + rd16(&c.blob, e + l.target_offset);
            let old = rd16(&c.blob, t);
            let v = rng.pick(&[
                0,
                31,
                32,
                36,
                40,
                48,
                64,
                old + 8,
                old.wrapping_sub(8),
                0xffff,
            ]);
            wr16(&mut c.blob, t, v);
            format!("target size of entry @{e} {old} -> {v}")
        }
        3..=5 => {
            let Some((eo, to)) = entry_with(rng, f, &c.blob, |e| e.standard_verdict().is_some())
            else {
                return "no standard target to change".into();
            };
            let self_off = eo as i32;
            let at = eo + to + abi::XT_HDR;
            let j = any_entry(rng) as i32;
            let v = rng.pick(&[
                abi::VERDICT_ACCEPT,
                abi::VERDICT_DROP,
                abi::VERDICT_QUEUE,
                abi::VERDICT_RETURN,
                0,
                -3,
                -6,
                -abi::NF_MAX_VERDICT - 1,
                -abi::NF_MAX_VERDICT - 2,
                i32::MIN,
                i32::MAX,
                j,
                j,
                j,
                self_off,
                j + 8,
                j + 4,
                size as i32,
                size as i32 - 8,
                *offs.last().unwrap_or(&0) as i32,
            ]);
            wr32(&mut c.blob, at, v as u32);
            format!("verdict of entry @{eo} -> {v}")
        }
        6 => {
            let e = any_entry(rng);
            let t = e + rd16(&c.blob, e + l.target_offset);
            let name: &[u8] = rng.pick(&[
                &b""[..],
                b"ERROR",
                b"ERROR",
                b"",
                b"NOSUCHTARGET",
                b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            ]);
            if let Some(field) = c.blob.get_mut(t + 2..t + 2 + abi::EXTENSION_MAXNAMELEN) {
                field.fill(0);
                field[..name.len()].copy_from_slice(name);
            }
            format!(
                "target name of entry @{e} -> {:?}",
                String::from_utf8_lossy(name)
            )
        }
        7 => {
            let Some((eo, to)) = entry_with(rng, f, &c.blob, |e| e.error_name().is_some()) else {
                return "no ERROR target".into();
            };
            let at = eo + to + abi::XT_HDR;
            c.blob[at..at + abi::FUNCTION_MAXNAMELEN].fill(b'A');
            format!("error name of entry @{eo} without NUL")
        }
        8 => {
            let Some((eo, to)) = entry_with(rng, f, &c.blob, |e| e.error_name().is_some()) else {
                return "no ERROR target".into();
            };
            let v = rng.pick(&[56, 62, 63, 65, 72]);
            wr16(&mut c.blob, eo + to, v);
            format!("error target size of entry @{eo} -> {v}")
        }
        9 => {
            let e = any_entry(rng);
            let (fm, im) = f.flag_masks();
            let (r1, r2) = (rng.below(256) as u8, rng.below(256) as u8);
            let fl = rng.pick(&[0x01, fm, fm + 1, 0x08, 0x80, 0xff, r1]);
            let inv = rng.pick(&[0x00, 0x01, im, 0x80, 0xff, r2]);
            put8(&mut c.blob, e + l.flags, fl);
            put8(&mut c.blob, e + l.invflags, inv);
            format!("flags/invflags of entry @{e} -> {fl:#x}/{inv:#x}")
        }
        10 => {
            let e = any_entry(rng);
            let b = rng.below(l.ip_len);
            let v = rng.next() as u8 | 1;
            put8(&mut c.blob, e + b, v);
            format!("ip header byte {b} of entry @{e} -> {v:#x}")
        }
        11 => {
            let e = any_entry(rng);
            let old = c.blob.get(e + l.flags).copied().unwrap_or(0);
            put8(&mut c.blob, e + l.flags, old ^ l.goto_flag);
            format!("goto flag of entry @{e} toggled")
        }
        12 | 13 => {
            let h = rng.below(NUMHOOKS);
            let other = rng.below(NUMHOOKS);
            let v = if rng.chance(20) {
                c.hdr.hook_entry[other]
            } else {
                position(rng)
            };
            c.hdr.hook_entry[h] = v;
            format!("hook_entry[{h}] -> {v}")
        }
        14 | 15 => {
            let h = rng.below(NUMHOOKS);
            let other = rng.below(NUMHOOKS);
            let v = if rng.chance(20) {
                c.hdr.underflow[other]
            } else {
                position(rng)
            };
            c.hdr.underflow[h] = v;
            format!("underflow[{h}] -> {v}")
        }
        16 => {
            let (a, b) = (rng.below(NUMHOOKS), rng.below(NUMHOOKS));
            if rng.chance(50) {
                c.hdr.hook_entry.swap(a, b);
            } else {
                c.hdr.underflow.swap(a, b);
            }
            format!("hooks {a} and {b} swapped")
        }
        17 => {
            let old = c.hdr.valid_hooks;
            let (r1, r2) = (rng.below(NUMHOOKS), rng.below(32) as u32);
            let v = rng.pick(&[old ^ (1 << r1), r2, 0, old | 0x20, u32::MAX]);
            c.hdr.valid_hooks = v;
            format!("valid_hooks {old:#x} -> {v:#x}")
        }
        18 => {
            let n = c.hdr.num_entries;
            let v = rng.pick(&[
                n.wrapping_add(1),
                n.wrapping_sub(1),
                0,
                (512 << 20) / 4 + 1,
                u32::MAX,
            ]);
            c.hdr.num_entries = v;
            format!("num_entries {n} -> {v}")
        }
        19 => {
            let old = c.hdr.size;
            let e = any_entry(rng) as u32;
            let v = rng.pick(&[
                old.wrapping_sub(8),
                old.wrapping_add(8),
                old.wrapping_sub(1),
                0,
                e,
                e + 8,
            ]);
            c.hdr.size = v;
            if rng.chance(50) && (v as usize) <= c.blob.len() {
                c.blob.truncate(v as usize);
                c.optlen = abi::REPLACE_HDR + c.blob.len();
                format!("size {old} -> {v}, blob truncated")
            } else {
                format!("size {old} -> {v}")
            }
        }
        20 => {
            let full = abi::REPLACE_HDR + c.blob.len();
            let v = rng.pick(&[
                full - 1,
                full - 8,
                abi::REPLACE_HDR,
                abi::REPLACE_HDR - 1,
                0,
                full + 8,
                full + 100,
            ]);
            c.optlen = v;
            format!("optlen {full} -> {v}")
        }
        21 => {
            let n = c.hdr.num_counters;
            let v = rng.pick(&[
                0,
                n.wrapping_sub(1),
                n.wrapping_add(1),
                1 << 20,
                (512 << 20) / 16 + 1,
                (i32::MAX as u32) / 16,
                (i32::MAX as u32) / 16 - 1,
                u32::MAX,
            ]);
            c.hdr.num_counters = v;
            format!("num_counters {n} -> {v}")
        }
        22 => {
            let v: &[u8] = rng.pick(&[
                &b"foo"[..],
                b"",
                b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
                b"filterxxxxxxxxxxxxxxxxxxxxxxxxxx",
                b"filter",
                b"nat",
                b"mangle",
                b"raw",
                b"security",
                b"FILTER",
            ]);
            c.hdr.name = v.to_vec();
            format!("table name -> {:?}", String::from_utf8_lossy(v))
        }
        23 => {
            c.counters_null = true;
            "old counters to NULL".into()
        }
        24 => {
            // Duplicate an entry in place; jumps and hooks after it now point elsewhere.
            let e = any_entry(rng);
            let n = rd16(&c.blob, e + l.next_offset).max(8);
            let copy = c.blob.get(e..e + n).map(|s| s.to_vec()).unwrap_or_default();
            let at = e.min(c.blob.len());
            c.blob.splice(at..at, copy);
            c.hdr.num_entries = c.hdr.num_entries.wrapping_add(1);
            c.hdr.size = c.blob.len() as u32;
            c.optlen = abi::REPLACE_HDR + c.blob.len();
            format!("entry @{e} duplicated")
        }
        25 => {
            let e = any_entry(rng);
            let n = rd16(&c.blob, e + l.next_offset).max(8);
            let end = (e + n).min(c.blob.len());
            c.blob.drain(e.min(end)..end);
            c.hdr.num_entries = c.hdr.num_entries.wrapping_sub(1);
            c.hdr.size = c.blob.len() as u32;
            c.optlen = abi::REPLACE_HDR + c.blob.len();
            format!("entry @{e} removed")
        }
        26 => {
            let Some((eo, _)) = entry_with(rng, f, &c.blob, |e| e.matches().next().is_some())
            else {
                return "no match".into();
            };
            let m = eo + l.esz;
            let old = rd16(&c.blob, m);
            let v = rng.pick(&[0, 31, 32, old + 8, old.wrapping_sub(8), old + 1, old + 4]);
            wr16(&mut c.blob, m, v);
            format!("match size of entry @{eo} {old} -> {v}")
        }
        27 => {
            // Misalign everything after an entry start.
            let e = any_entry(rng);
            let pad = rng.pick(&[4usize, 1, 12]);
            c.blob.splice(e..e, vec![0u8; pad]);
            c.hdr.size = c.blob.len() as u32;
            c.optlen = abi::REPLACE_HDR + c.blob.len();
            format!("{pad} bytes inserted at @{e}")
        }
        28 => {
            // Fields the kernel ignores or overwrites, and the v6 padding it copies back.
            let e = any_entry(rng);
            let what = rng.below(4);
            match what {
                0 => wr32(&mut c.blob, e + l.comefrom, rng.next() as u32),
                1 => wr32(&mut c.blob, e + l.counters, rng.next() as u32),
                2 => wr32(&mut c.blob, e + l.ip_len, rng.next() as u32),
                _ => {
                    let pad = l.comefrom + 4;
                    if let Some(s) = c.blob.get_mut(e + pad..e + l.counters) {
                        s.fill(0x5a);
                    }
                }
            }
            format!("ignored field {what} of entry @{e} changed")
        }
        30 => {
            let Some((eo, _)) = entry_with(rng, f, &c.blob, |e| e.matches().next().is_some())
            else {
                return "no match".into();
            };
            let name: &[u8] = rng.pick(&[
                &b"icmp"[..],
                b"icmp6",
                b"tcp",
                b"",
                b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            ]);
            let m = eo + l.esz;
            if let Some(field) = c.blob.get_mut(m + 2..m + 2 + abi::EXTENSION_MAXNAMELEN) {
                field.fill(0);
                field[..name.len()].copy_from_slice(name);
            }
            format!(
                "match name of entry @{eo} -> {:?}",
                String::from_utf8_lossy(name)
            )
        }
        29 => {
            // Unconditional-looking, also when the entry has matches.
            let e = any_entry(rng);
            if let Some(ip) = c.blob.get_mut(e..e + l.ip_len) {
                ip.fill(0);
            }
            format!("ip header of entry @{e} zeroed")
        }
        _ => {
            let e = any_entry(rng);
            let t = e + rd16(&c.blob, e + l.target_offset);
            if let Some(b) = c.blob.get_mut(t + abi::XT_HDR - 1) {
                *b = rng.pick(&[1u8, 2, 255]);
            }
            format!("target revision of entry @{e} changed")
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Cases other than SET_REPLACE.

fn add_counters_case(rng: &mut Rng, w: &mut World, f: Family, table: &str, n: u32) {
    let mut num = n;
    let mut name = table.as_bytes().to_vec();
    let mut what = format!("ADD_COUNTERS {f} {table}");
    match rng.below(6) {
        0 => {
            num = rng.pick(&[n + 1, n - 1, 0, 1, 1 << 16]);
            what += &format!(", num_counters {num}");
        }
        1 => {
            name = rng
                .pick(&[
                    &b"foo"[..],
                    b"",
                    b"filterxxxxxxxxxxxxxxxxxxxxxxxxxxx",
                    b"nat",
                    b"raw",
                ])
                .to_vec();
            what += &format!(", name {:?}", String::from_utf8_lossy(&name));
        }
        _ => {}
    }
    let counters: Vec<(u64, u64)> = (0..num.min(1 << 16))
        .map(|_| (rng.next() >> rng.below(64), rng.next() % 10_000))
        .collect();
    let buf = counters_buf(&name, num, &counters);
    let len = if rng.chance(25) {
        let v = rng.pick(&[
            0,
            abi::COUNTERS_INFO_HDR - 1,
            abi::COUNTERS_INFO_HDR,
            abi::COUNTERS_INFO_HDR + 1,
            buf.len() - 1,
            buf.len().saturating_sub(abi::COUNTERS_SIZE),
        ]);
        what += &format!(", optlen {v}");
        v.min(buf.len())
    } else {
        buf.len()
    };
    let k = w.add_counters(true, f, &buf, len, &what);
    if matches!(k, Outcome::Ok(_)) {
        w.compare_table(
            f,
            &String::from_utf8_lossy(abi::c_str(&name_field(&name)[..31])),
            &what,
        );
    }
}

fn get_info_case(rng: &mut Rng, w: &mut World, f: Family, table: &str) {
    let len = rng.pick(&[abi::GETINFO_SIZE, abi::GETINFO_SIZE, 0, 1, 83, 85, 200]);
    let name: Vec<u8> = rng
        .pick(&[
            table.as_bytes(),
            table.as_bytes(),
            b"foo",
            b"",
            b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            b"security",
        ])
        .to_vec();
    let b = info_buf(&name, len);
    let k = w.k.get_info(f, b.clone());
    let what = format!(
        "GET_INFO {f} {:?} len {len}",
        String::from_utf8_lossy(&name)
    );
    w.against(true, &what, &k, |e| e.get_info(f, b.clone()));
}

fn get_entries_case(rng: &mut Rng, w: &mut World, f: Family, table: &str, size: u32) {
    let hdr_size = rng.pick(&[size, size, size - 8, size + 8, 0]);
    let good = abi::GET_ENTRIES_HDR + hdr_size as usize;
    let len = rng.pick(&[good, good, 0, 39, 40, good - 1, good + 8]);
    let name: Vec<u8> = rng
        .pick(&[
            table.as_bytes(),
            table.as_bytes(),
            b"foo",
            b"filterxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        ])
        .to_vec();
    let b = entries_buf(&name, hdr_size, len);
    let k = w.k.get_entries(f, b.clone());
    let what = format!(
        "GET_ENTRIES {f} {:?} size {hdr_size} len {len}",
        String::from_utf8_lossy(&name)
    );
    w.against(true, &what, &k, |e| e.get_entries(f, b.clone()));
}

// ---------------------------------------------------------------------------------------------

fn skip(why: &str) {
    eprintln!("kernel_diff: SKIPPED: {why}");
}

#[test]
fn emulation_answers_like_the_kernel() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return skip("needs root (network namespaces and ip_tables)");
    }
    let Ok(ref_ns) = Scratch::new() else {
        return skip("cannot create a network namespace");
    };
    for f in [Family::V4, Family::V6] {
        if let Err(e) = ref_ns.get_info(f, "filter") {
            return skip(&format!(
                "the kernel has no {f} ip_tables ({})",
                std::io::Error::from_raw_os_error(e)
            ));
        }
    }
    let seed = env_u64("BPFIPT_DIFF_SEED", 1);
    let ncases = env_u64("BPFIPT_DIFF_CASES", 4000) as usize;
    let mut rng = Rng(seed);
    // Two emulations: the daemon's, and one whose extension checker models the core
    // extensions, so that `check` itself answers most cases instead of the kernel check.
    let mut w = World {
        k: Kernel { s: ref_ns },
        emus: vec![
            Emu::new("daemon", Box::new(ext::Registry)),
            Emu::new("core", Box::new(CoreOnly)),
        ],
        tally: Tally::default(),
    };

    // The initial tables, read from a namespace nobody touched.
    let fresh = Scratch::new().expect("scratch namespace");
    let mut bases = Vec::new();
    for f in [Family::V4, Family::V6] {
        for (t, _) in KNOWN_TABLES {
            match base_from_kernel(&fresh, f, t, "initial table") {
                Some(b) => bases.push(b),
                None => panic!("the kernel has no {f} table {t}, the emulation has"),
            }
        }
    }
    drop(fresh);
    let initial: BTreeMap<(Family, String), Base> = bases
        .iter()
        .map(|b| ((b.f, b.table.clone()), b.clone()))
        .collect();
    // The initial state of every table, before anything changed it.
    for b in &bases {
        w.compare_table(b.f, &b.table, "initial");
    }
    match bases_from_restore() {
        Ok(v) => bases.extend(v),
        Err(e) => eprintln!("kernel_diff: no iptables-restore rulesets: {e}"),
    }
    let fixed = bases.len();

    for i in 0..ncases {
        let before = w.tally.failures.len();
        let f = rng.pick(&[Family::V4, Family::V6]);
        let (table, hooks) = rng.pick(&KNOWN_TABLES);
        let start = &initial[&(f, table.to_string())];
        // Start from the kernel's table, a restored ruleset, or a random chain graph.
        let fixed_of_family: Vec<&Base> = bases[..fixed]
            .iter()
            .filter(|b| b.f == f && b.table == table)
            .collect();
        let base = if rng.chance(40) {
            generate(&mut rng, f, table, hooks)
        } else {
            (*rng.pick(&fixed_of_family)).clone()
        };
        let op = rng.below(100);
        if op < 80 {
            w.reset(&mut rng, f, start);
            let n = w
                .info(f, table, "before")
                .map(|i| i.num_entries)
                .unwrap_or(0);
            let mut hdr = base.hdr.clone();
            hdr.num_counters = n;
            let mut c = ReplaceCall::new(f, hdr, base.blob.clone());
            let muts = if base.label.starts_with("generated") && rng.chance(50) {
                0
            } else {
                1 + rng.below(2) + usize::from(rng.chance(10))
            };
            let descr: Vec<String> = (0..muts).map(|_| mutate(&mut rng, &mut c)).collect();
            w.replace(
                true,
                &c,
                &format!(
                    "case {i}: SET_REPLACE {f} {table} from {} with [{}]",
                    base.label,
                    descr.join("; ")
                ),
            );
        } else {
            // Counter and read cases on a table in some valid state.
            let valid = if base.label.starts_with("generated") {
                start
            } else {
                &base
            };
            w.reset(&mut rng, f, start);
            if !std::ptr::eq(valid, start) {
                w.reset(&mut rng, f, valid);
            }
            let info = w.info(f, table, "before").expect("table exists");
            if op < 90 {
                add_counters_case(&mut rng, &mut w, f, table, info.num_entries);
            } else if op < 95 {
                get_info_case(&mut rng, &mut w, f, table);
            } else {
                get_entries_case(&mut rng, &mut w, f, table, info.size);
            }
        }
        if w.tally.failures.len() > before {
            eprintln!("kernel_diff: disagreement in case {i} (seed {seed})");
        }
    }

    // Fixed cases that random ones rarely reach.
    early_checks(&mut w, &initial);
    directed_cases(&mut w, &initial);
    let tally = std::mem::take(&mut w.tally);
    w.tally = fresh_namespace_cases(&initial, tally);

    let t = &w.tally;
    let asked: Vec<String> = w
        .emus
        .iter()
        .map(|e| format!("{} {}", e.name, e.asked_kernel))
        .collect();
    eprintln!(
        "kernel_diff: seed {seed}, {ncases} random cases: {} of {} calls agree with the kernel \
         (errnos {:?}), {} of {} tables read back agree; replaces that needed the kernel's \
         extension check: {}",
        t.agree,
        t.cases,
        t.by_errno,
        t.checks_agree,
        t.checks,
        asked.join(", ")
    );
    if !t.failures.is_empty() {
        panic!(
            "{} disagreements with the kernel, first ones:\n{}",
            t.cases + t.checks - t.agree - t.checks_agree,
            t.failures.join("\n")
        );
    }
}

/// A 512 MiB anonymous mapping: pages the kernel never touches cost nothing.
struct BigBuf {
    ptr: *mut u8,
    len: usize,
}

impl BigBuf {
    fn new(len: usize) -> BigBuf {
        // SAFETY: a fresh private anonymous mapping.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        BigBuf { ptr: p.cast(), len }
    }
    fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is readable for len bytes while self lives.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for BigBuf {
    fn drop(&mut self) {
        // SAFETY: unmaps what new mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

fn early_checks(w: &mut World, initial: &BTreeMap<(Family, String), Base>) {
    let base = &initial[&(Family::V4, "filter".to_string())];
    // A blob the kernel refuses to allocate (size + sizeof(xt_table_info) >= 512 MiB), with
    // a buffer long enough that the length check passes: ENOMEM before anything is copied.
    let big = BigBuf::new((512 << 20) + 4096);
    for size in [(512u32 << 20) - 64, (512 << 20) - 8] {
        let mut hdr = base.hdr.clone();
        hdr.size = size;
        hdr.num_counters = 4;
        let hb = hdr.emit();
        // The header goes first: write it into the mapping's first page.
        // SAFETY: the mapping is writable and longer than the header.
        unsafe { std::ptr::copy_nonoverlapping(hb.as_ptr(), big.ptr, hb.len()) };
        let optlen = abi::REPLACE_HDR + size as usize;
        let bytes = &big.bytes()[..optlen];
        let k = outcome(
            w.k.s
                .setsockopt(Family::V4, kabi::SO_SET_REPLACE, bytes)
                .map(|()| Vec::new()),
        );
        w.against(true, &format!("SET_REPLACE with size {size}"), &k, |e| {
            e.replace_raw(Family::V4, optlen, bytes)
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Directed cases: kernel facts random cases rarely reach.

/// A standard-target entry, conditional on `proto` when it is not zero.
fn std_entry(f: Family, proto: u16, verdict: i32) -> Vec<u8> {
    let mut e = abi::build::standard_entry(f, verdict);
    wr16(&mut e, layout(f).proto, proto as usize);
    e
}

/// An entry with an icmp/icmp6 match of `msize` bytes and a standard target of `tsize` bytes
/// right after it, `next_offset` = XT_ALIGN(target_offset + sizeof(xt_standard_target)).
fn icmp_entry(f: Family, proto: u16, msize: usize, tsize: usize, verdict: i32) -> Vec<u8> {
    let l = layout(f);
    let to = l.esz + msize;
    let next = abi::xt_align(to + abi::STANDARD_TARGET_SIZE);
    let mut e = vec![0u8; next];
    wr16(&mut e, l.proto, proto as usize);
    wr16(&mut e, l.target_offset, to);
    wr16(&mut e, l.next_offset, next);
    wr16(&mut e, l.esz, msize);
    let name: &[u8] = if f == Family::V4 { b"icmp" } else { b"icmp6" };
    e[l.esz + 2..l.esz + 2 + name.len()].copy_from_slice(name);
    e[l.esz + abi::XT_HDR + 2] = 0xff;
    wr16(&mut e, to, tsize);
    wr32(&mut e, to + abi::XT_HDR, verdict as u32);
    e
}

/// A filter table from entries; `hooks` gives (entry, underflow) indexes for INPUT, FORWARD,
/// OUTPUT; `jumps` patches the verdict of entry `.0` to the offset of entry `.1`.
fn filter_table(
    f: Family,
    entries: Vec<Vec<u8>>,
    hooks: [(usize, usize); 3],
    jumps: &[(usize, usize)],
) -> (ReplaceHdr, Vec<u8>) {
    let mut offs = Vec::new();
    let mut blob = Vec::new();
    for e in &entries {
        offs.push(blob.len());
        blob.extend_from_slice(e);
    }
    let l = layout(f);
    for &(from, to) in jumps {
        let t = offs[from] + rd16(&blob, offs[from] + l.target_offset);
        wr32(&mut blob, t + abi::XT_HDR, offs[to] as u32);
    }
    let mut he = [u32::MAX; NUMHOOKS];
    let mut uf = [u32::MAX; NUMHOOKS];
    for (i, h) in [1, 2, 3].into_iter().enumerate() {
        he[h] = offs[hooks[i].0] as u32;
        uf[h] = offs[hooks[i].1] as u32;
    }
    let hdr = ReplaceHdr {
        name: b"filter".to_vec(),
        valid_hooks: 0b01110,
        num_entries: entries.len() as u32,
        size: blob.len() as u32,
        hook_entry: he,
        underflow: uf,
        num_counters: 0,
        counters_ptr: 0,
    };
    (hdr, blob)
}

fn directed_cases(w: &mut World, initial: &BTreeMap<(Family, String), Base>) {
    let mut rng = Rng(0);
    for f in [Family::V4, Family::V6] {
        let icmp: u16 = if f == Family::V4 { 1 } else { 58 };
        let acc = abi::VERDICT_ACCEPT;
        let ret = abi::VERDICT_RETURN;
        let cases: Vec<(&str, (ReplaceHdr, Vec<u8>))> = vec![
            (
                // unconditional() also wants target_offset == sizeof(ipt_entry): an entry with
                // a match and an all-zero ip header is conditional and falls through, here
                // into a jump back to it.
                "match with zero ip header falls through into a loop",
                filter_table(
                    f,
                    vec![
                        std_entry(f, 6, acc),
                        icmp_entry(f, 0, 40, 40, abi::VERDICT_DROP),
                        std_entry(f, 0, 0),
                        std_entry(f, 0, acc),
                        std_entry(f, 0, acc),
                        std_entry(f, 0, acc),
                        abi::build::error_entry(f, b"ERROR"),
                    ],
                    [(0, 3), (4, 4), (5, 5)],
                    &[(2, 1)],
                ),
            ),
            (
                // The same entry as a policy is not unconditional: EINVAL in the first pass,
                // before the loop in FORWARD is seen.
                "policy with a match and zero ip header, and a loop",
                filter_table(
                    f,
                    vec![
                        icmp_entry(f, 0, 40, 40, acc),
                        std_entry(f, 17, 0),
                        std_entry(f, 0, acc),
                        std_entry(f, 0, acc),
                        abi::build::error_entry(f, b"ERROR"),
                    ],
                    [(0, 0), (1, 2), (3, 3)],
                    &[(1, 1)],
                ),
            ),
            (
                // An unaligned standard target after a 36-byte match passes
                // xt_check_entry_offsets (sizeof(struct xt_standard_target) is 40, aligned);
                // the loop is found before the sizes are checked.
                "unaligned standard target in a loop",
                filter_table(
                    f,
                    vec![
                        std_entry(f, 6, acc),
                        icmp_entry(f, icmp, 36, 36, 0),
                        std_entry(f, 0, acc),
                        std_entry(f, 0, acc),
                        std_entry(f, 0, acc),
                        abi::build::error_entry(f, b"ERROR"),
                    ],
                    [(0, 2), (3, 3), (4, 4)],
                    &[(1, 1)],
                ),
            ),
            (
                // The verdict is read at its place even when target_size is too short for it.
                "short standard target jumping in a loop",
                filter_table(
                    f,
                    vec![
                        std_entry(f, 6, acc),
                        {
                            let mut e = std_entry(f, 6, 0);
                            wr16(&mut e, layout(f).esz, 32);
                            e
                        },
                        std_entry(f, 0, acc),
                        std_entry(f, 0, acc),
                        std_entry(f, 0, acc),
                        abi::build::error_entry(f, b"ERROR"),
                    ],
                    [(0, 2), (3, 3), (4, 4)],
                    &[(1, 1)],
                ),
            ),
            (
                // comefrom: a chain reached from INPUT (jump) and FORWARD (goto), a rule after
                // its RETURN and a chain nobody reaches (both comefrom 0).
                "chain reached from two hooks, unreachable entries",
                filter_table(
                    f,
                    vec![
                        std_entry(f, 6, 0),
                        std_entry(f, 0, acc),
                        {
                            let mut e = std_entry(f, 0, 0);
                            e[layout(f).flags] = layout(f).goto_flag;
                            e
                        },
                        std_entry(f, 0, abi::VERDICT_DROP),
                        std_entry(f, 0, acc),
                        abi::build::error_entry(f, b"shared"),
                        std_entry(f, 17, acc),
                        std_entry(f, 0, ret),
                        std_entry(f, 6, abi::VERDICT_DROP),
                        abi::build::error_entry(f, b"unused"),
                        std_entry(f, 0, ret),
                        abi::build::error_entry(f, b"ERROR"),
                    ],
                    [(0, 1), (2, 3), (4, 4)],
                    &[(0, 6), (2, 6)],
                ),
            ),
            (
                // A user chain without RETURN falls through the next chain head into the
                // final ERROR entry and off the end.
                "fall-through off the end",
                filter_table(
                    f,
                    vec![
                        std_entry(f, 6, 0),
                        std_entry(f, 0, acc),
                        std_entry(f, 0, acc),
                        std_entry(f, 0, acc),
                        abi::build::error_entry(f, b"open"),
                        std_entry(f, 17, acc),
                        abi::build::error_entry(f, b"ERROR"),
                    ],
                    [(0, 1), (2, 2), (3, 3)],
                    &[(0, 5)],
                ),
            ),
            (
                // No final ERROR entry; the last entry jumps to a RETURN, and moving along
                // one after it leaves the table (`pos + size >= newinfo->size`).
                "return to the last entry",
                filter_table(
                    f,
                    vec![
                        std_entry(f, 0, acc),
                        std_entry(f, 0, acc),
                        std_entry(f, 0, acc),
                        std_entry(f, 0, ret),
                        std_entry(f, 6, 0),
                    ],
                    [(0, 0), (1, 1), (4, 2)],
                    &[(4, 3)],
                ),
            ),
            (
                // The same without the jump: OUTPUT starts at its last entry, which is
                // conditional and falls off the end.
                "hook entry on the last, conditional entry",
                filter_table(
                    f,
                    vec![
                        std_entry(f, 0, acc),
                        std_entry(f, 0, acc),
                        std_entry(f, 0, acc),
                        std_entry(f, 6, acc),
                    ],
                    [(0, 0), (1, 1), (3, 2)],
                    &[],
                ),
            ),
            (
                // xt_request_find_target refuses a name without NUL before any lookup.
                "target name without NUL",
                filter_table(
                    f,
                    vec![
                        {
                            let mut e = std_entry(f, 6, acc);
                            let n = layout(f).esz + 2;
                            e[n..n + abi::EXTENSION_MAXNAMELEN].fill(b'A');
                            e
                        },
                        std_entry(f, 0, acc),
                        std_entry(f, 0, acc),
                        std_entry(f, 0, acc),
                        abi::build::error_entry(f, b"ERROR"),
                    ],
                    [(0, 1), (2, 2), (3, 3)],
                    &[],
                ),
            ),
            (
                "match name without NUL",
                filter_table(
                    f,
                    vec![
                        {
                            let mut e = icmp_entry(f, icmp, 40, 40, acc);
                            let n = layout(f).esz + 2;
                            e[n..n + abi::EXTENSION_MAXNAMELEN].fill(b'A');
                            e
                        },
                        std_entry(f, 0, acc),
                        std_entry(f, 0, acc),
                        std_entry(f, 0, acc),
                        abi::build::error_entry(f, b"ERROR"),
                    ],
                    [(0, 1), (2, 2), (3, 3)],
                    &[],
                ),
            ),
        ];
        let start = initial[&(f, "filter".to_string())].clone();
        for (label, (mut hdr, blob)) in cases {
            w.reset(&mut rng, f, &start);
            hdr.num_counters = start.hdr.num_entries;
            let c = ReplaceCall::new(f, hdr, blob);
            let asked = w.emus[1].asked_kernel;
            let what = format!("directed {f}: {label}");
            w.replace(true, &c, &what);
            // Only core extensions here: `check` must answer without the kernel's help.
            if w.emus[1].asked_kernel != asked {
                w.tally
                    .failures
                    .push(format!("{what}: needed the kernel check"));
            }
        }
    }
}

/// First calls in a namespace where no table exists yet: every option finds its table by
/// instantiating it (`xt_find_table_lock` since 5.x), then answers as for an existing one.
fn fresh_namespace_cases(initial: &BTreeMap<(Family, String), Base>, tally: Tally) -> Tally {
    let mut w = World {
        k: Kernel {
            s: Scratch::new().expect("scratch namespace"),
        },
        emus: vec![
            Emu::new("daemon", Box::new(ext::Registry)),
            Emu::new("core", Box::new(CoreOnly)),
        ],
        tally,
    };
    let base = |f: Family, t: &str| initial[&(f, t.to_string())].clone();
    // SET_REPLACE as the very first call, right count: the table appears and is replaced.
    let b = base(Family::V4, "filter");
    let mut c = ReplaceCall::new(Family::V4, b.hdr.clone(), b.blob.clone());
    c.hdr.num_counters = b.hdr.num_entries;
    w.replace(true, &c, "fresh: first SET_REPLACE ipv4 filter");
    // Wrong count or lying hooks on tables nobody has touched.
    let b = base(Family::V6, "mangle");
    let mut c = ReplaceCall::new(Family::V6, b.hdr.clone(), b.blob.clone());
    c.hdr.num_counters = b.hdr.num_entries + 1;
    w.replace(
        true,
        &c,
        "fresh: first SET_REPLACE ipv6 mangle, stale count",
    );
    let b = base(Family::V4, "nat");
    let mut c = ReplaceCall::new(Family::V4, b.hdr.clone(), b.blob.clone());
    c.hdr.valid_hooks ^= 1;
    c.hdr.num_counters = b.hdr.num_entries;
    w.replace(true, &c, "fresh: first SET_REPLACE ipv4 nat, lying hooks");
    // ADD_COUNTERS and GET_ENTRIES as first calls.
    let raw = base(Family::V4, "raw");
    let n = raw.hdr.num_entries;
    let counters: Vec<(u64, u64)> = (0..n as u64).map(|i| (i + 1, 100 * i)).collect();
    let buf = counters_buf(b"raw", n, &counters);
    w.add_counters(
        true,
        Family::V4,
        &buf,
        buf.len(),
        "fresh: first ADD_COUNTERS ipv4 raw",
    );
    let sec = base(Family::V6, "security");
    let b = entries_buf(
        b"security",
        sec.hdr.size,
        abi::GET_ENTRIES_HDR + sec.hdr.size as usize,
    );
    let k = w.k.get_entries(Family::V6, b.clone());
    w.against(true, "fresh: first GET_ENTRIES ipv6 security", &k, |e| {
        e.get_entries(Family::V6, b.clone())
    });
    for (f, t) in [
        (Family::V4, "filter"),
        (Family::V6, "mangle"),
        (Family::V4, "nat"),
        (Family::V4, "raw"),
        (Family::V6, "security"),
    ] {
        w.compare_table(f, t, "fresh: afterwards");
    }
    w.tally
}
