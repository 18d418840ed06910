//! The extension registry against the running kernel (root only): the extensions it lists,
//! their revisions, the lookup errnos, the payload sizes, and the table, hook and protocol
//! restrictions.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use bpfipt_proto::kabi;
use common::{agrees, kernel, native, scratch_or_skip, Native};
use translator::abi::{self, xt_align, Family, Hook};
use translator::ext::build::{xt_obj, Action, Ip, Rule, Table};
use translator::ext::registry::{self, ExtInfo, EXTENSIONS};
use translator::ext::Kind;
use translator::oracle::Scratch;

const FAMILIES: [Family; 2] = [Family::V4, Family::V6];
const KINDS: [Kind; 2] = [Kind::Match, Kind::Target];

fn proc_file(f: Family, k: Kind) -> String {
    let fam = match f {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    };
    let kind = match k {
        Kind::Match => "matches",
        Kind::Target => "targets",
    };
    format!("/proc/net/{fam}_tables_{kind}")
}

/// Registrations of the registry a table of `f` can use, per name.
fn registry_counts(f: Family, k: Kind) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for e in EXTENSIONS
        .iter()
        .filter(|e| e.kind == k && e.family.serves(f))
    {
        *m.entry(e.name.to_string()).or_insert(0) += 1;
    }
    m
}

#[test]
fn every_extension_the_kernel_lists_is_registered() {
    let Some(_s) = scratch_or_skip("every_extension_the_kernel_lists_is_registered") else {
        return;
    };
    for f in FAMILIES {
        for k in KINDS {
            let path = proc_file(f, k);
            let text = std::fs::read_to_string(&path).unwrap();
            // One line per registration (a name per revision); the standard target is "".
            let mut listed = BTreeMap::new();
            for line in text.lines() {
                *listed.entry(line.to_string()).or_insert(0) += 1;
            }
            let mut ours = registry_counts(f, k);
            // The listing skips nameless registrations: the standard target.
            ours.remove("");
            let missing: Vec<_> = listed
                .iter()
                .filter(|(n, c)| ours.get(*n) != Some(c))
                .collect();
            let extra: Vec<_> = ours.keys().filter(|n| !listed.contains_key(*n)).collect();
            assert!(
                missing.is_empty() && extra.is_empty(),
                "{path}: kernel registrations (name, count) not in the registry: {missing:?}; \
                 registry names the kernel does not list: {extra:?}"
            );
        }
    }
}

fn revision_opt(f: Family, k: Kind) -> i32 {
    match (f, k) {
        (Family::V4, Kind::Match) => kabi::IPT_SO_GET_REVISION_MATCH,
        (Family::V4, Kind::Target) => kabi::IPT_SO_GET_REVISION_TARGET,
        (Family::V6, Kind::Match) => kabi::IP6T_SO_GET_REVISION_MATCH,
        (Family::V6, Kind::Target) => kabi::IP6T_SO_GET_REVISION_TARGET,
    }
}

/// `IPT_SO_GET_REVISION_*`: whether the kernel has exactly this revision.
fn kernel_has_revision(s: &Scratch, f: Family, k: Kind, name: &str, rev: u8) -> bool {
    let mut buf = vec![0u8; abi::EXTENSION_MAXNAMELEN + 1];
    abi::put_c_str(&mut buf[..abi::EXTENSION_MAXNAMELEN], name.as_bytes());
    buf[abi::EXTENSION_MAXNAMELEN] = rev;
    match s.getsockopt(f, revision_opt(f, k), buf) {
        Ok(_) => true,
        Err(libc::EPROTONOSUPPORT) => false,
        Err(e) => panic!("GET_REVISION {name}.{rev}: errno {e}"),
    }
}

#[test]
fn revisions_are_the_kernels() {
    let Some(s) = scratch_or_skip("revisions_are_the_kernels") else {
        return;
    };
    for f in FAMILIES {
        for k in KINDS {
            let names: BTreeSet<&str> = EXTENSIONS
                .iter()
                .filter(|e| e.kind == k && e.family.serves(f) && !e.name.is_empty())
                .map(|e| e.name)
                .collect();
            for name in names {
                for rev in 0..=6u8 {
                    let ours = registry::find_for(f, k, name.as_bytes(), rev).is_some();
                    assert_eq!(
                        kernel_has_revision(&s, f, k, name, rev),
                        ours,
                        "{f} {k:?} {name} revision {rev}"
                    );
                }
            }
        }
    }
}

/// A table in which the rule with `obj` runs in an unreachable user chain (no hook
/// restriction applies), in a table and with a protocol the extension allows.
fn probe_table(f: Family, e: &ExtInfo, obj: Vec<u8>) -> Table {
    let table = e.table.unwrap_or("filter");
    let ip = if e.proto != 0 {
        Ip::proto(f, e.proto)
    } else {
        Ip::default()
    };
    let rule = match e.kind {
        Kind::Match => Rule {
            ip,
            matches: vec![obj],
            action: Action::Verdict(abi::VERDICT_ACCEPT),
        },
        Kind::Target => Rule {
            ip,
            matches: vec![],
            action: Action::Target(obj),
        },
    };
    Table::new(f, table).user_rule("probe", rule)
}

fn check(s: &Scratch, t: &Table) -> (Native, Result<(), i32>) {
    let (hdr, blob) = t.build();
    (
        native(t.family, &hdr, &blob),
        kernel(s, t.family, &hdr, &blob),
    )
}

/// Every registered name with a revision that does not exist, a name with no NUL and an unknown
/// name: the lookup errno (the payload is never looked at).
#[test]
fn lookup_errnos_are_the_kernels() {
    let Some(s) = scratch_or_skip("lookup_errnos_are_the_kernels") else {
        return;
    };
    let mut seen = BTreeSet::new();
    let mut prototype = 0;
    for f in FAMILIES {
        for e in EXTENSIONS.iter().filter(|e| e.family.serves(f)) {
            if !seen.insert((f, e.kind, e.name)) {
                continue;
            }
            let obj = xt_obj(e.name, 200, &vec![0; xt_align(e.size)]);
            let (n, k) = check(&s, &probe_table(f, e, obj));
            assert!(
                matches!(n, Native::Err(_)) && agrees(n, k),
                "{f} {e:?} revision 200: native {n:?}, kernel {k:?}"
            );
            if k == Err(libc::EPROTOTYPE) {
                prototype += 1;
            }
        }
        for kind in KINDS {
            let info = EXTENSIONS.iter().find(|e| e.kind == kind).unwrap();
            let mut no_nul = xt_obj("x", 0, &[]);
            no_nul[2..2 + abi::EXTENSION_MAXNAMELEN].fill(b'a');
            let unknown = xt_obj("bpfipt-no-such-ext", 0, &[]);
            for (what, obj) in [("no NUL", no_nul), ("unknown", unknown)] {
                let (n, k) = check(&s, &probe_table(f, info, obj));
                assert!(
                    matches!(n, Native::Err(_)) && agrees(n, k),
                    "{f} {kind:?} {what} name: native {n:?}, kernel {k:?}"
                );
            }
        }
    }
    // Both outcomes occur: EPROTOTYPE only through the NFPROTO_UNSPEC list.
    assert!(prototype > 0);
}

/// Reads the kernel log records written since the last call (non-blocking /dev/kmsg).
struct Kmsg(std::fs::File);

impl Kmsg {
    fn open() -> Option<Kmsg> {
        use std::io::Seek;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .ok()?;
        f.seek(std::io::SeekFrom::End(0)).ok()?;
        Some(Kmsg(f))
    }

    fn drain(&mut self) -> Vec<String> {
        use std::io::Read;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 8192];
        loop {
            match self.0.read(&mut buf) {
                Ok(n) if n > 0 => out.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Ok(_) => break,
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(_) => break,
            }
        }
        out
    }
}

/// The registered size is what the kernel wants: a payload of `XT_ALIGN(size) + 8` bytes is
/// EINVAL, and a zeroed one of `XT_ALIGN(size)` bytes passes the size check, which shows when
/// the kernel's errno is not EINVAL (then it comes from the checkentry). Where it is EINVAL, the
/// kernel log line of the size check for the wrong payload ("invalid size N (kernel) != (user)
/// M") must name the registered size.
#[test]
fn payload_sizes_are_the_kernels() {
    let Some(s) = scratch_or_skip("payload_sizes_are_the_kernels") else {
        return;
    };
    let prefix = |f: Family| match f {
        Family::V4 => "ip_tables",
        Family::V6 => "ip6_tables",
    };
    // (log line wanted, the wrong-size table)
    let mut pending = Vec::new();
    for f in FAMILIES {
        for e in EXTENSIONS.iter().filter(|e| e.family.serves(f)) {
            if e.name.is_empty() || e.name == "ERROR" {
                // Their sizes are checked by xt_check_entry_offsets before any lookup.
                continue;
            }
            let size = xt_align(e.size);
            let wrong = probe_table(f, e, xt_obj(e.name, e.revision, &vec![0; size + 8]));
            let (n, k) = check(&s, &wrong);
            assert_eq!(n, Native::Err(libc::EINVAL), "{f} {e:?} native, size +8");
            assert_eq!(k, Err(libc::EINVAL), "{f} {e:?} kernel, size +8");
            let right = probe_table(f, e, xt_obj(e.name, e.revision, &vec![0; size]));
            let (n, k) = check(&s, &right);
            assert!(agrees(n, k), "{f} {e:?}: native {n:?}, kernel {k:?}");
            if k == Err(libc::EINVAL) {
                let what = match e.kind {
                    Kind::Match => "match",
                    Kind::Target => "target",
                };
                let want = format!(
                    "{}: {}.{} {what}: invalid size {size} (kernel) != (user) {}",
                    prefix(f),
                    e.name,
                    e.revision,
                    size + 8
                );
                pending.push((want, wrong));
            }
        }
    }
    // Ambiguous: the kernel log names its size for the wrong payload. The message is rate
    // limited (10 per 5 s per call site), so ask in rounds.
    let Some(mut log) = Kmsg::open() else {
        panic!("{} sizes need /dev/kmsg to be confirmed", pending.len());
    };
    let ambiguous = pending.len();
    for _ in 0..30 {
        log.drain();
        for (_, wrong) in &pending {
            let _ = check(&s, wrong);
        }
        let lines = log.drain();
        pending.retain(|(want, _)| !lines.iter().any(|l| l.contains(want)));
        if pending.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5500));
    }
    let missing: Vec<&String> = pending.iter().map(|(w, _)| w).collect();
    assert!(missing.is_empty(), "kernel log lines not seen: {missing:?}");
    eprintln!("{ambiguous} sizes confirmed through the kernel log");
}

/// The tables a probe may go to.
const TABLES: [&str; 4] = ["filter", "nat", "mangle", "raw"];

/// Table, hook and protocol restrictions, with zeroed payloads of the right size: wherever the
/// registry says the generic checks fail, the kernel says EINVAL; wherever they pass, the
/// kernel gives the errno it gives in the unrestricted probe (its checkentry's), when that is
/// not EINVAL (else the two cannot be told apart).
#[test]
fn restrictions_are_the_kernels() {
    let Some(s) = scratch_or_skip("restrictions_are_the_kernels") else {
        return;
    };
    let mut compared = 0;
    for f in FAMILIES {
        for e in EXTENSIONS.iter().filter(|e| e.family.serves(f)) {
            if e.name.is_empty() || e.name == "ERROR" {
                continue;
            }
            let obj = xt_obj(e.name, e.revision, &vec![0; xt_align(e.size)]);
            let base = probe_table(f, e, obj.clone());
            let (n, k_base) = check(&s, &base);
            assert!(
                agrees(n, k_base),
                "{f} {e:?}: native {n:?}, kernel {k_base:?}"
            );
            let mut variants: Vec<(String, Table, bool)> = Vec::new();
            for table in TABLES {
                let mut t = base.clone();
                t.name = table.to_string();
                let ok = e.table.is_none_or(|r| r == table);
                variants.push((format!("table {table}"), t, ok));
            }
            let rule = base.user[0].1[0].clone();
            let table = e.table.unwrap_or("filter");
            for h in Hook::ALL {
                if translator::ext::build::valid_hooks(table) & h.bit() == 0 {
                    continue;
                }
                let t = Table::new(f, table).rule(h, rule.clone());
                let ok = e.hooks == 0 || e.hooks & h.bit() != 0;
                variants.push((format!("hook {h:?}"), t, ok));
            }
            if e.proto != 0 {
                for (what, proto, inv) in [("other", 0xfd, 0), ("!", e.proto, 0x40)] {
                    let mut r = rule.clone();
                    r.ip.proto = proto;
                    r.ip.invflags = inv;
                    let t = Table::new(f, table).user_rule("probe", r);
                    variants.push((format!("proto {what}"), t, false));
                }
            }
            for (what, t, ok) in variants {
                let (n, k) = check(&s, &t);
                assert!(agrees(n, k), "{f} {e:?} {what}: native {n:?}, kernel {k:?}");
                if !ok {
                    assert_eq!(n, Native::Err(libc::EINVAL), "{f} {e:?} {what}: native");
                }
                if k_base != Err(libc::EINVAL) {
                    let want = if ok { k_base } else { Err(libc::EINVAL) };
                    assert_eq!(k, want, "{f} {e:?} {what}: kernel (probe: {k_base:?})");
                    compared += 1;
                }
            }
        }
    }
    eprintln!("{compared} restriction cases told apart by the kernel");
}

/// The stored golden captures are still what iptables and the kernel produce.
#[test]
fn golden_captures_are_current() {
    use translator::ext::capture;
    let Some(_s) = scratch_or_skip("golden_captures_are_current") else {
        return;
    };
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/ext/testdata/");
    let commands = std::fs::read_to_string(format!("{dir}commands.txt")).unwrap();
    let stored = std::fs::read_to_string(format!("{dir}captures.txt")).unwrap();
    let mut captured = Vec::new();
    for b in capture::parse_commands(&commands).unwrap() {
        let (info, entries) = capture::capture(&b).unwrap_or_else(|e| panic!("{e}"));
        captured.push((b, info, entries));
    }
    let fresh = capture::render(&captured);
    for (i, (a, b)) in fresh.lines().zip(stored.lines()).enumerate() {
        assert_eq!(
            a,
            b,
            "captures.txt line {} differs from a fresh capture",
            i + 1
        );
    }
    assert_eq!(fresh.lines().count(), stored.lines().count());
}

/// GET_ENTRIES gives back what the kernel gives back: payload bytes past each extension's
/// user-visible size (alignment padding, kernel-private state) read as zeroes, the rest as set.
#[test]
fn read_back_hides_what_the_kernel_hides() {
    use translator::ext;
    use translator::kernel::Netns;
    let Some(s) = scratch_or_skip("read_back_hides_what_the_kernel_hides") else {
        return;
    };
    // (name, revision, payload size, user-visible size, protocol)
    let objs: &[(&str, u8, usize, usize, u16)] = &[
        ("tcp", 0, 16, 12, 6),
        ("udp", 0, 16, 10, 17),
        ("length", 0, 8, 6, 0),
        ("mark", 1, 16, 12, 0),
        ("limit", 0, 40, 8, 0),
        ("statistic", 0, 24, 16, 0),
        ("quota", 0, 24, 16, 0),
        ("comment", 0, 256, 256, 0),
    ];
    for f in FAMILIES {
        let mut t = Table::new(f, "filter");
        for &(name, rev, size, visible, proto) in objs {
            let mut payload = vec![0u8; size];
            // A valid payload: zero where the kernel looks, garbage where it does not.
            payload[visible..].fill(0xaa);
            if name == "limit" {
                payload[..8].copy_from_slice(&[16, 39, 0, 0, 5, 0, 0, 0]);
            }
            let m = xt_obj(name, rev, &payload);
            let rule = Rule {
                ip: if proto != 0 {
                    Ip::proto(f, proto)
                } else {
                    Ip::default()
                },
                matches: vec![m],
                action: Action::Target(xt_obj(
                    "",
                    0,
                    &[0xfe, 0xff, 0xff, 0xff, 0xaa, 0xaa, 0xaa, 0xaa],
                )),
            };
            t = t.rule(Hook::LocalIn, rule);
        }
        let (mut hdr, blob) = t.build();
        s.check_replace(f, &hdr, &blob)
            .unwrap_or_else(|e| panic!("{f}: the kernel refused the table: errno {e}"));
        let theirs = s.get_entries(f, "filter").unwrap();

        let mut ns = Netns::default();
        let mut getinfo = vec![0u8; abi::GETINFO_SIZE];
        abi::put_c_str(&mut getinfo[..abi::TABLE_MAXNAMELEN], b"filter");
        let (info, _) = ns.get_info(f, &getinfo).unwrap();
        hdr.num_counters = abi::GetInfo::parse(&info).unwrap().num_entries;
        let mut req = hdr.emit();
        req.extend_from_slice(&blob);
        let r = ns.prepare_replace(f, &req, &ext::Registry).unwrap();
        ns.install(r.table);
        let mut ge = vec![0u8; abi::GET_ENTRIES_HDR];
        abi::put_c_str(&mut ge[..abi::TABLE_MAXNAMELEN], b"filter");
        ge[32..36].copy_from_slice(&(blob.len() as u32).to_ne_bytes());
        let (ours, _) = ns
            .get_entries(f, &ge, abi::GET_ENTRIES_HDR + blob.len(), &ext::usersize)
            .unwrap();
        assert_eq!(ours.len(), theirs.len());
        if let Some(i) = ours.iter().zip(&theirs).position(|(a, b)| a != b) {
            panic!("{f}: GET_ENTRIES differs from the kernel's at byte {i}: ours {:02x?}, kernel {:02x?}", &ours[i - 6..i + 40], &theirs[i - 6..i + 40]);
        }
        // The test means something only if the kernel hid some of the garbage.
        assert!(
            theirs.iter().filter(|&&b| b == 0xaa).count()
                < blob.iter().filter(|&&b| b == 0xaa).count()
        );
    }
}
