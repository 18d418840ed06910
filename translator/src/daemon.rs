//! `bpfiptd`: the resident part of bpfipt in one network namespace.
//!
//! It owns the namespace's emulated tables (`kernel::Netns`), commits them to the `store`
//! before answering, and serves the shims of every iptables process in the namespace over the
//! abstract socket `@bpfiptd.v1`. Requests are handled one at a time under one lock, so two
//! commits never interleave.
//!
//! Lifetime: started on demand by the first shim (`--spawned`), or by systemd for the host
//! namespace. A process inside a namespace keeps that namespace alive, so a daemon in any
//! namespace but the host's exits once nothing else holds the namespace (no other process in
//! it, no bind mount such as `ip netns add` makes, no open namespace file): `ip netns del`
//! and the end of an `unshare -n` then destroy the namespace as they would without bpfipt.

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bpfipt_proto::{read_frame, write_frame, Op, Reply, Request, DAEMON_SOCKET, PROTOCOL_VERSION};

use crate::abi::{self, Family};
use crate::apply;
use crate::enforce::{Decision, Enforcer, Mode};
use crate::ext;
use crate::kernel::Netns;
use crate::log;
use crate::oracle::Scratch;
use crate::store::Store;

/// Everything the daemon owns, behind one lock.
pub struct State {
    pub ns: Netns,
    pub store: Store,
    pub enf: Enforcer,
    scratch: Option<Scratch>,
    pub started: Instant,
    pub commits: u64,
}

pub struct Daemon {
    state: Mutex<State>,
    stop: AtomicBool,
    /// The rtnetlink watcher runs (started with the datapath).
    watching: AtomicBool,
}

/// Binds the daemon socket of the current namespace. `Ok(None)` if another daemon has it.
pub fn bind() -> io::Result<Option<UnixListener>> {
    let addr = SocketAddr::from_abstract_name(DAEMON_SOCKET)?;
    match UnixListener::bind_addr(&addr) {
        Ok(l) => Ok(Some(l)),
        Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => Ok(None),
        Err(e) => Err(e),
    }
}

impl Daemon {
    /// Recovers the namespace's tables from the store (or creates the store).
    pub fn recover() -> io::Result<Daemon> {
        let store = Store::open_or_create()
            .map_err(|e| io::Error::new(e.kind(), format!("opening the table store: {e}")))?;
        let (mut ns, problems) = store.load()?;
        // The XDP option before the datapath starts, so its first resync applies it.
        let mut store = store;
        let mut mode = crate::xdp::Mode::from_u8(store.xdp_setting());
        if let Some(m) = std::env::var("BPFIPT_XDP")
            .ok()
            .and_then(|v| crate::xdp::Mode::parse(&v))
        {
            mode = m;
            if let Err(e) = store.set_xdp_setting(m.to_u8()) {
                log::error(&format!("storing the XDP setting: {e}"));
            }
        }
        crate::xdp::set_mode(mode);
        for p in problems {
            log::error(&p);
        }
        let slots = store
            .slots(Family::V4, "filter")
            .ok()
            .flatten()
            .map(|b| apply::decode_slots(&b));
        let mut enf = Enforcer::new();
        for (f, t, e) in enf.recover(&mut ns, slots) {
            log::error(&format!("enforcing the stored {f} {t} table: {e}"));
        }
        if let (Some(dp), Some(t)) = (enf.dp.as_ref(), ns.v4.tables.get("filter")) {
            // Persist the folded counters with the new datapath's slots.
            let slots = apply::encode_slots(&dp.slots);
            if let Err(e) = store.commit_table_with_slots(t, Some(&slots)) {
                log::error(&format!("storing the recovered filter table: {e}"));
            }
        }
        Ok(Daemon {
            state: Mutex::new(State {
                ns,
                store,
                enf,
                scratch: None,
                started: Instant::now(),
                commits: 0,
            }),
            stop: AtomicBool::new(false),
            watching: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serves connections until told to stop or orphaned.
    pub fn serve(self: Arc<Self>, listener: UnixListener) -> io::Result<()> {
        {
            let me = self.clone();
            std::thread::spawn(move || me.watch_namespace());
        }
        self.clone().watch_links();
        {
            let me = self.clone();
            std::thread::spawn(move || crate::conntrack::gc_loop(&me.stop));
        }
        for conn in listener.incoming() {
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            match conn {
                Ok(s) => {
                    let me = self.clone();
                    std::thread::spawn(move || {
                        if let Err(e) = me.connection(s) {
                            if e.kind() != io::ErrorKind::UnexpectedEof
                                && e.kind() != io::ErrorKind::BrokenPipe
                            {
                                log::warn(&format!("client connection: {e}"));
                            }
                        }
                    });
                }
                Err(e) => log::warn(&format!("accept: {e}")),
            }
        }
        if let Some(dp) = self.lock().enf.dp.as_mut() {
            dp.release_input_hook();
        }
        Ok(())
    }

    /// Once the datapath runs, keeps it attached to every interface and told of every
    /// address: a resync on each rtnetlink change (an interface added after the last commit is
    /// filtered within milliseconds), and every few seconds in case an event was lost.
    fn watch_links(self: Arc<Self>) {
        if self.lock().enf.dp.is_none() || self.watching.swap(true, Ordering::SeqCst) {
            return;
        }
        std::thread::spawn(move || {
            let mut w = match crate::netlink::Watcher::new() {
                Ok(w) => w,
                Err(e) => {
                    log::error(&format!(
                        "rtnetlink: {e}; new interfaces are not filtered until the next commit"
                    ));
                    return;
                }
            };
            let mut last = Instant::now();
            loop {
                let changed = w.wait(Duration::from_secs(1)).unwrap_or(true);
                if !changed && last.elapsed() < Duration::from_secs(5) {
                    continue;
                }
                last = Instant::now();
                let mut st = self.lock();
                if let Some(dp) = st.enf.dp.as_mut() {
                    if let Err(e) = dp.resync() {
                        log::error(&format!("following interface changes: {e}"));
                    }
                }
            }
        });
    }

    fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        if let Ok(addr) = SocketAddr::from_abstract_name(DAEMON_SOCKET) {
            let _ = UnixStream::connect_addr(&addr);
        }
    }

    fn connection(self: &Arc<Self>, mut s: UnixStream) -> io::Result<()> {
        let privileged = peer_privileged(&s);
        let Some(first) = read_frame(&mut s)? else {
            return Ok(());
        };
        let hello = Request::decode(&first)?;
        let version = hello
            .data
            .get(..4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()));
        if hello.op != Op::Hello || version != Some(PROTOCOL_VERSION) {
            let msg =
                format!("protocol version {version:?}, this bpfiptd speaks {PROTOCOL_VERSION}");
            write_frame(
                &mut s,
                &Reply {
                    errno: libc::EPROTO,
                    data: msg.into_bytes(),
                }
                .encode(),
            )?;
            return Ok(());
        }
        write_frame(&mut s, &Reply::ok(Vec::new()).encode())?;
        while let Some(req) = Request::read(&mut s)? {
            let reply = if !privileged && req.op != Op::TableNames && req.op != Op::Control {
                Reply::err(libc::EPERM)
            } else {
                self.handle_and_watch(&req)
            };
            reply.write(&mut s)?;
            if self.stop.load(Ordering::SeqCst) {
                self.request_stop();
                break;
            }
        }
        Ok(())
    }

    /// Answers one request.
    pub fn handle(&self, req: &Request) -> Reply {
        if req.op == Op::Control {
            return self.control(&String::from_utf8_lossy(&req.data));
        }
        let Some(f) = Family::from_af(req.family as i32) else {
            return Reply::err(libc::EAFNOSUPPORT);
        };
        let mut st = self.lock();
        let st = &mut *st;
        let known = st.ns.family(f).order.len();
        let reply = self.answer(st, f, req);
        // Any option naming a table instantiates it, even one that then fails (as in
        // xt_find_table_lock); the listing order must survive a daemon restart.
        let order = &st.ns.family(f).order;
        if order.len() > known {
            for name in &order[known..] {
                if let Err(e) = st.store.note_instantiated(f, name) {
                    log::warn(&format!("storing that {f} table {name} exists: {e}"));
                }
            }
        }
        reply
    }

    /// `handle`, then the link watcher if this request started the datapath.
    pub fn handle_and_watch(self: &Arc<Self>, req: &Request) -> Reply {
        let r = self.handle(req);
        if !self.watching.load(Ordering::SeqCst) {
            self.clone().watch_links();
        }
        r
    }

    fn answer(&self, st: &mut State, f: Family, req: &Request) -> Reply {
        match req.op {
            Op::TableNames => Reply::ok(st.ns.table_names(f).into_bytes()),
            Op::GetInfo => match st.ns.getsockopt_info(f, req.optlen as usize, &req.data) {
                Ok((info, _)) => Reply::ok(info),
                Err(e) => Reply::err(e),
            },
            Op::GetEntries => {
                // Counters as counted now, for the duration of the answer.
                let name = table_name(&req.data);
                let live = st.enf.live_counters(&st.ns, f, &name);
                let saved = live.map(|c| st.ns.swap_counters(f, &name, c));
                let r = st
                    .ns
                    .getsockopt_entries(f, req.optlen as usize, &req.data, &ext::usersize);
                if let Some(c) = saved {
                    st.ns.swap_counters(f, &name, c);
                }
                match r {
                    Ok((blob, _)) => Reply::ok(blob),
                    Err(e) => Reply::err(e),
                }
            }
            Op::SetReplace => self.replace(st, f, req),
            Op::AddCounters => {
                match st
                    .ns
                    .setsockopt_add_counters(f, req.optlen as usize, &req.data)
                {
                    Ok((name, counters)) => {
                        // In place (the entries are not copied); the old counters come back
                        // if the kernel or the store refuses.
                        let old = st.ns.swap_counters(f, &name, counters);
                        let t = &st.ns.family(f).tables[&name];
                        match st
                            .enf
                            .add_counters(
                                f,
                                t,
                                &abi::parse_counters(&req.data[abi::COUNTERS_INFO_HDR..]),
                            )
                            .map_err(io::Error::other)
                            .and_then(|()| st.store.commit_counters(t))
                        {
                            Ok(()) => Reply::ok(Vec::new()),
                            Err(e) => {
                                log::error(&format!("storing counters of {f} table {name}: {e}"));
                                st.ns.swap_counters(f, &name, old);
                                Reply::err(libc::ENOMEM)
                            }
                        }
                    }
                    Err(e) => Reply::err(e),
                }
            }
            Op::Hello | Op::Control => Reply::err(libc::EINVAL),
        }
    }

    fn replace(&self, st: &mut State, f: Family, req: &Request) -> Reply {
        let t0 = Instant::now();
        // The old counters the caller gets back are the live ones.
        let name = table_name(&req.data);
        let live = st.enf.live_counters(&st.ns, f, &name);
        let saved = live.map(|c| st.ns.swap_counters(f, &name, c));
        let r = self.validate(st, f, req);
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                if let Some(c) = saved {
                    st.ns.swap_counters(f, &name, c);
                }
                return Reply::err(e);
            }
        };
        let t1 = Instant::now();
        if let Some(dp) = st.enf.dp.as_mut() {
            if let Err(e) = dp.settle() {
                log::error(&format!("finishing the previous datapath commit: {e}"));
            }
        }
        let decision = st.enf.decide(&st.ns, f, &r.table);
        let t_decide = Instant::now();
        if let Decision::Kernel(why) = &decision {
            if req.flags & bpfipt_proto::FLAG_STRICT != 0 {
                if let Some(c) = saved {
                    st.ns.swap_counters(f, &name, c);
                }
                let msg = format!("bpfipt: {f} {} table not committed: {why} (BPFIPT_STRICT=1 forbids the kernel fallback)\n", r.table.name);
                return Reply {
                    errno: libc::EOPNOTSUPP,
                    data: msg.into_bytes(),
                };
            }
        }
        let outcome = match st.enf.enforce(&mut st.ns, f, &r.table, decision, None) {
            Ok(o) => o,
            Err(e) => {
                // Fail closed: what the datapath cannot take, the kernel must.
                log::error(&format!(
                    "{f} {}: {e}; handing the family to the kernel",
                    r.table.name
                ));
                match st
                    .enf
                    .enforce(&mut st.ns, f, &r.table, Decision::Kernel(e.clone()), None)
                {
                    Ok(o) => o,
                    Err(e2) => {
                        log::error(&format!(
                            "{f} {}: the kernel refused too: {e2}; the table is unchanged",
                            r.table.name
                        ));
                        if let Some(c) = saved {
                            st.ns.swap_counters(f, &name, c);
                        }
                        return Reply::err(libc::ENOMEM);
                    }
                }
            }
        };
        let t2 = Instant::now();
        if let Err(e) = st
            .store
            .commit_table_with_slots(&r.table, outcome.slots.as_deref())
        {
            log::error(&format!(
                "storing {f} table {}: {e}; it is enforced but a restarted daemon would not know it",
                r.table.name
            ));
            return Reply::err(libc::ENOMEM);
        }
        let t3 = Instant::now();
        log::debug(&format!(
            "replace {f} {}: {} entries, validate {:?}, decide+compile {:?}, enforce {:?}, store {:?}",
            r.table.name,
            r.table.number,
            t1 - t0,
            t_decide - t1,
            t2 - t_decide,
            t3 - t2
        ));
        let old = outcome.kernel_old_counters.unwrap_or(r.old_counters);
        st.ns.install(r.table);
        st.commits += 1;
        Reply::ok(abi::emit_counters(&old))
    }

    fn validate(
        &self,
        st: &mut State,
        f: Family,
        req: &Request,
    ) -> Result<crate::kernel::Replaced, i32> {
        let State { ns, scratch, .. } = st;
        let mut kernel_check = |hdr: &abi::ReplaceHdr, entries: &[u8]| {
            if scratch.is_none() {
                match Scratch::new() {
                    Ok(s) => *scratch = Some(s),
                    Err(e) => log::warn(&format!("no scratch namespace for kernel checks ({e}); extensions not modeled by bpfipt are accepted unchecked")),
                }
            }
            match scratch.as_ref().map(|s| s.check_replace(f, hdr, entries)) {
                // The kernel has no ip_tables at all: nothing to ask.
                None | Some(Ok(())) | Some(Err(libc::ENOPROTOOPT)) => Ok(()),
                Some(Err(e)) => Err(e),
            }
        };
        ns.setsockopt_replace(
            f,
            req.optlen as usize,
            &req.data,
            &ext::Registry,
            &mut kernel_check,
        )
    }

    fn control(&self, cmd: &str) -> Reply {
        match cmd.trim() {
            "stop" => {
                self.stop.store(true, Ordering::SeqCst);
                Reply::ok(b"stopping\n".to_vec())
            }
            "status" => Reply::ok(self.status().into_bytes()),
            "xdp" => Reply::ok(self.xdp_status().into_bytes()),
            c if c.starts_with("xdp ") => self.set_xdp(c["xdp ".len()..].trim()),
            other => Reply {
                errno: libc::EINVAL,
                data: format!("unknown control command {other:?}\n").into_bytes(),
            },
        }
    }

    /// `bpfipt xdp MODE`: stored first (a daemon started later applies it), then applied.
    fn set_xdp(&self, arg: &str) -> Reply {
        let Some(mode) = crate::xdp::Mode::parse(arg) else {
            return Reply {
                errno: libc::EINVAL,
                data: format!("unknown XDP mode {arg:?} (off, generic, native)\n").into_bytes(),
            };
        };
        let mut st = self.lock();
        if let Err(e) = st.store.set_xdp_setting(mode.to_u8()) {
            return Reply {
                errno: e.raw_os_error().unwrap_or(libc::EIO),
                data: format!("storing the XDP setting: {e}\n").into_bytes(),
            };
        }
        crate::xdp::set_mode(mode);
        log::info(&format!("XDP option: {}", mode.name()));
        if let Some(dp) = st.enf.dp.as_mut() {
            if let Err(e) = dp.resync() {
                return Reply {
                    errno: libc::EIO,
                    data: format!("applying the XDP setting: {e}\n").into_bytes(),
                };
            }
        }
        drop(st);
        Reply::ok(self.xdp_status().into_bytes())
    }

    /// One line: the setting, and where the program is attached in which mode.
    fn xdp_status(&self) -> String {
        let st = self.lock();
        let mode = crate::xdp::mode();
        let mut s = format!("xdp: {}", mode.name());
        match &st.enf.dp {
            Some(dp) if mode != crate::xdp::Mode::Off => {
                let on: Vec<String> = dp
                    .xdp_attached
                    .iter()
                    .map(|(n, a)| match a {
                        crate::xdp::Attached::Generic => format!("{n}(generic)"),
                        crate::xdp::Attached::Native => format!("{n}(native)"),
                    })
                    .collect();
                s += &format!(", attached to: {}", on.join(" "));
            }
            None if mode != crate::xdp::Mode::Off => {
                s += " (applied when the datapath loads with the first rule)"
            }
            _ => {}
        }
        s.push('\n');
        s
    }

    fn status(&self) -> String {
        let st = self.lock();
        let mut s = String::new();
        s.push_str(&format!(
            "namespace: {}\n",
            netns_id().map(|i| format!("net:[{i}]")).unwrap_or_default()
        ));
        s.push_str(&format!(
            "daemon: pid {} up {}s, {} commits, store generation {}\n",
            std::process::id(),
            st.started.elapsed().as_secs(),
            st.commits,
            st.store.generation()
        ));
        match &st.enf.dp {
            None => s.push_str("datapath: not loaded (nothing to enforce yet)\n"),
            Some(dp) => {
                // Where the ingress program is off by design, an interface with only the
                // egress program is complete.
                let want_in = dp.ingress_on();
                let hooks: Vec<String> = dp
                    .hooks()
                    .into_iter()
                    .map(|(n, i, e)| match (i, e) {
                        (true, true) if want_in => n,
                        (true, true) => format!("{n}(ingress still on)"),
                        (false, true) if !want_in => n,
                        (true, false) => format!("{n}(ingress only)"),
                        (false, true) => format!("{n}(egress only)"),
                        (false, false) => format!("{n}(NOT ATTACHED)"),
                    })
                    .collect();
                let tc = if want_in {
                    "tc ingress+egress"
                } else {
                    "tc egress"
                };
                let fallback = if dp.fallback {
                    ", passing everything (fallback)"
                } else {
                    ""
                };
                s.push_str(&format!(
                    "datapath: loaded, generation {}{fallback}\n  {tc}: {}\n",
                    dp.generation(),
                    hooks.join(" ")
                ));
                if !want_in {
                    s.push_str(
                        "  tc ingress: off (INPUT has nothing to classify; its policy is \
                         counted at the LOCAL_IN hook)\n",
                    );
                }
                let mut x: Vec<String> = dp
                    .xdp_attached
                    .iter()
                    .map(|(n, a)| format!("{n}({a:?})").to_lowercase())
                    .collect();
                if x.is_empty() {
                    x.push("none".into());
                }
                s.push_str(&format!(
                    "  xdp ({}): {}\n",
                    crate::xdp::mode().name(),
                    x.join(" ")
                ));
                let r: Vec<String> = dp
                    .reasons()
                    .into_iter()
                    .filter(|(_, n)| *n > 0)
                    .map(|(k, n)| format!("{k}={n}"))
                    .collect();
                if !r.is_empty() {
                    s.push_str(&format!("  verdicts: {}\n", r.join(" ")));
                }
            }
        }
        for f in [Family::V4, Family::V6] {
            match &st.enf.mode[crate::enforce::idx(f)] {
                Mode::Datapath if f == Family::V6 => {
                    s.push_str(&format!("{f}: no rules to enforce\n"))
                }
                Mode::Datapath => s.push_str(&format!("{f}: enforced by the eBPF datapath\n")),
                Mode::Kernel(why) => s.push_str(&format!(
                    "{f}: enforced by the kernel's ip_tables (fallback): {why}\n"
                )),
            }
        }
        let recent = log::recent();
        if !recent.is_empty() {
            s.push_str("recent events:\n");
            for l in recent {
                s.push_str(&format!("  {l}\n"));
            }
        }
        for f in [Family::V4, Family::V6] {
            for name in st.ns.family(f).order.iter() {
                let t = &st.ns.family(f).tables[name];
                s.push_str(&format!(
                    "{f} {name}: {} entries, {} bytes\n",
                    t.number,
                    t.size()
                ));
                if let Ok(rs) = crate::ir::Ruleset::from_table(t) {
                    for c in &rs.chains {
                        let policy = c
                            .policy
                            .map(|p| format!(" policy {p:?}"))
                            .unwrap_or_default();
                        s.push_str(&format!("  {}: {} rules{policy}\n", c.name, c.rules.len()));
                    }
                }
            }
        }
        s
    }

    /// Exits the process once nothing but us holds the namespace.
    fn watch_namespace(&self) {
        let Some(me) = netns_id() else { return };
        if Some(me) == init_netns_id() {
            return;
        }
        let mut idle = 0;
        loop {
            std::thread::sleep(Duration::from_secs(1));
            if netns_held_by_others(me) {
                idle = 0;
                continue;
            }
            idle += 1;
            if idle >= 2 {
                // Hold the lock so no commit is cut in half.
                let _st = self.lock();
                log::info("namespace is no longer used by anything else; exiting");
                std::process::exit(0);
            }
        }
    }
}

/// The table name a socket option buffer starts with (NUL-terminated within 32 bytes).
fn table_name(data: &[u8]) -> String {
    let n = data.len().min(abi::TABLE_MAXNAMELEN);
    let mut b = data[..n].to_vec();
    if let Some(last) = b.last_mut() {
        if n == abi::TABLE_MAXNAMELEN {
            *last = 0;
        }
    }
    String::from_utf8_lossy(abi::c_str(&b)).into_owned()
}

/// Whether the peer may change tables: root, or CAP_NET_ADMIN in its effective set.
fn peer_privileged(s: &UnixStream) -> bool {
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED fills a ucred.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return false;
    }
    if cred.uid == 0 {
        return true;
    }
    std::fs::read_to_string(format!("/proc/{}/status", cred.pid))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|c| c & (1 << 12) != 0)
}

/// Inode of the current network namespace.
pub fn netns_id() -> Option<u64> {
    std::fs::metadata("/proc/self/ns/net")
        .ok()
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
}

fn init_netns_id() -> Option<u64> {
    std::fs::metadata("/proc/1/ns/net")
        .ok()
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
}

/// Whether anything besides this process keeps the namespace `ino` alive: another process in
/// it, a bind mount of it, or another process's open file of it.
pub fn netns_held_by_others(ino: u64) -> bool {
    let me = std::process::id().to_string();
    let tag = format!("net:[{ino}]");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return true;
    };
    let pids: Vec<String> = dir
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()) && *n != me)
        .collect();
    for p in &pids {
        if let Ok(m) = std::fs::metadata(format!("/proc/{p}/ns/net")) {
            if std::os::unix::fs::MetadataExt::ino(&m) == ino {
                return true;
            }
        }
    }
    for f in ["/proc/self/mountinfo", "/proc/1/mountinfo"] {
        if let Ok(s) = std::fs::read_to_string(f) {
            if s.lines().any(|l| l.contains(&tag)) {
                return true;
            }
        }
    }
    for p in &pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{p}/fd")) else {
            continue;
        };
        for fd in fds.filter_map(|e| e.ok()) {
            if let Ok(t) = std::fs::read_link(fd.path()) {
                if t.as_os_str().as_encoded_bytes() == tag.as_bytes() {
                    return true;
                }
            }
        }
    }
    false
}

/// Entry point of `bpfiptd`. With `spawned`, the socket is bound first, then the process forks
/// into the background and the parent exits (the shim waits for that exit).
pub fn main(spawned: bool) -> i32 {
    if spawned {
        // Nothing inherited from the iptables process may stay open (the xtables lock).
        // SAFETY: closes descriptors we do not use.
        unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    }
    log::open("bpfiptd");
    // Tables of megabytes come and go with every request: keep them in the heap instead of
    // fresh mmaps, whose page faults and zeroing cost more than the work itself.
    // SAFETY: mallopt only tunes the allocator.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
    }
    let listener = match bind() {
        Ok(Some(l)) => l,
        Ok(None) => return 0,
        Err(e) => {
            log::error(&format!(
                "cannot bind @{}: {e}",
                String::from_utf8_lossy(DAEMON_SOCKET)
            ));
            return 1;
        }
    };
    if spawned {
        // SAFETY: single-threaded here; the child continues with the bound socket.
        match unsafe { libc::fork() } {
            -1 => {
                log::error(&format!("fork: {}", io::Error::last_os_error()));
                return 1;
            }
            0 => {
                unsafe { libc::setsid() };
            }
            _ => return 0,
        }
    }
    let daemon = match Daemon::recover() {
        Ok(d) => Arc::new(d),
        Err(e) => {
            log::error(&format!("cannot start: {e}"));
            return 1;
        }
    };
    log::info(&format!(
        "serving namespace net:[{}]",
        netns_id().unwrap_or(0)
    ));
    match daemon.clone().serve(listener) {
        Ok(()) => {
            // Let a commit in progress finish before the process ends.
            let _st = daemon.lock();
            log::info("stopped");
            0
        }
        Err(e) => {
            log::error(&format!("serving: {e}"));
            1
        }
    }
}

/// Sends a control command to the daemon of the current namespace (no spawning).
pub fn control(cmd: &str) -> io::Result<String> {
    let mut s = bpfipt_proto::locate::connect_existing()?;
    let hello = Request {
        op: Op::Hello,
        family: 0,
        flags: 0,
        optlen: 0,
        data: bpfipt_proto::hello_payload(),
    };
    bpfipt_proto::call(&mut s, &hello)?;
    let r = bpfipt_proto::call(
        &mut s,
        &Request {
            op: Op::Control,
            family: 0,
            flags: 0,
            optlen: 0,
            data: cmd.as_bytes().to_vec(),
        },
    )?;
    let _ = s.flush();
    if r.errno != 0 {
        return Err(io::Error::other(
            String::from_utf8_lossy(&r.data).into_owned(),
        ));
    }
    Ok(String::from_utf8_lossy(&r.data).into_owned())
}
