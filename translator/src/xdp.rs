//! The XDP option: the namespace's ingress classification in an XDP program on every
//! interface but `lo` (ebpf/lib/xdp.h), on the maps of the TC programs.
//!
//! The TC programs stay attached whatever the option says, and classify everything XDP leaves
//! to them: XDP only ever acts where it gives the TC path's outcome. So attaching, replacing
//! or removing the XDP program can never leave a packet unfiltered, and a switch between the
//! generic and native modes, which the kernel allows only through a detach (a device cannot
//! have both), just sends packets the slow way for an instant.
//!
//! Like the TC attachments, the XDP ones are made without a link (rtnetlink `IFLA_XDP`): they
//! belong to the interface and outlive the daemon.

use std::collections::BTreeSet;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage, LinkXdp};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr};

use crate::{netlink, sys};

/// The name of the XDP program (ebpf/bpfipt.c): how an older bpfipt program is recognised.
pub const XDP_ROLE: &str = "bpfipt_xdp";

// include/uapi/linux/if_link.h
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
const XDP_FLAGS_REPLACE: u32 = 1 << 4;

/// The per-namespace setting (`bpfipt xdp MODE`, kept in the table store's header).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// TC only.
    #[default]
    Off,
    /// XDP in the kernel's generic (skb) mode on every interface: works on every device.
    Generic,
    /// The driver's native XDP where it has one (veth, most NICs), generic elsewhere.
    Native,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "off" | "0" => Some(Mode::Off),
            "generic" | "skb" | "on" | "1" => Some(Mode::Generic),
            "native" | "drv" => Some(Mode::Native),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Generic => "generic",
            Mode::Native => "native",
        }
    }

    pub fn to_u8(self) -> u8 {
        match self {
            Mode::Off => 0,
            Mode::Generic => 1,
            Mode::Native => 2,
        }
    }

    pub fn from_u8(v: u8) -> Mode {
        match v {
            1 => Mode::Generic,
            2 => Mode::Native,
            _ => Mode::Off,
        }
    }
}

/// The namespace's setting as the daemon knows it (one daemon per namespace): read by every
/// resync of the datapath, set at start from the store and by `bpfipt xdp`.
static MODE: AtomicU8 = AtomicU8::new(0);

pub fn mode() -> Mode {
    Mode::from_u8(MODE.load(Ordering::SeqCst))
}

pub fn set_mode(m: Mode) {
    MODE.store(m.to_u8(), Ordering::SeqCst);
}

/// Interfaces whose driver refused native XDP: generic there, without trying again (a device
/// holds one mode at a time, so every try would detach the generic program first).
static NO_NATIVE: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

fn no_native(ifindex: u32) -> bool {
    NO_NATIVE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(&ifindex)
}

/// The XDP state of an interface, from an rtnetlink link dump.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkXdpState {
    pub ifindex: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    /// A veth: what arrives may be an skb of a local sender with CHECKSUM_PARTIAL, whose
    /// transport checksum a native redirect would send unfinished (see `sync_xdp`).
    pub veth: bool,
    /// Program ids attached in generic and in native mode.
    pub skb_prog: Option<u32>,
    pub drv_prog: Option<u32>,
}

/// Every interface with its MAC address and XDP programs.
pub fn links() -> io::Result<Vec<LinkXdpState>> {
    let mut v = Vec::new();
    for m in netlink::request(
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
        NLM_F_DUMP,
    )? {
        let RouteNetlinkMessage::NewLink(l) = m else {
            continue;
        };
        let mut s = LinkXdpState {
            ifindex: l.header.index,
            ..Default::default()
        };
        for a in &l.attributes {
            match a {
                LinkAttribute::IfName(n) => s.name = n.clone(),
                LinkAttribute::Address(b) if b.len() == 6 => {
                    s.mac = Some(b[..6].try_into().unwrap())
                }
                LinkAttribute::LinkInfo(infos) => {
                    s.veth = infos
                        .iter()
                        .any(|i| matches!(i, LinkInfo::Kind(k) if *k == InfoKind::Veth))
                }
                LinkAttribute::Xdp(x) => {
                    for y in x {
                        match y {
                            LinkXdp::SkbProgId(id) if *id != 0 => s.skb_prog = Some(*id),
                            LinkXdp::DrvProgId(id) if *id != 0 => s.drv_prog = Some(*id),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        v.push(s);
    }
    v.sort_by_key(|s| s.ifindex);
    Ok(v)
}

fn set_xdp(ifindex: u32, fd: i32, flags: u32, expected: Option<i32>) -> io::Result<()> {
    let mut x = vec![LinkXdp::Fd(fd), LinkXdp::Flags(flags)];
    if let Some(e) = expected {
        x[1] = LinkXdp::Flags(flags | XDP_FLAGS_REPLACE);
        x.push(LinkXdp::ExpectedFd(e as u32));
    }
    let mut m = LinkMessage::default();
    m.header.index = ifindex;
    m.attributes.push(LinkAttribute::Xdp(x));
    netlink::request(RouteNetlinkMessage::SetLink(m), NLM_F_ACK).map(|_| ())
}

fn is_ours(id: u32) -> bool {
    sys::prog_fd_by_id(id)
        .and_then(|fd| sys::prog_info(&fd))
        .is_ok_and(|(name, _)| name.starts_with(XDP_ROLE))
}

/// Where a program ended up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    Generic,
    Native,
}

/// An interface where the option could not be applied.
#[derive(Debug)]
pub enum XdpError {
    /// Another owner's XDP program is on the interface: left alone (TC still filters).
    Occupied {
        prog_id: u32,
    },
    Sys(io::Error),
}

impl std::fmt::Display for XdpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            XdpError::Occupied { prog_id } => write!(
                f,
                "XDP program {prog_id} of another owner is attached (TC filters this interface)"
            ),
            XdpError::Sys(e) => write!(f, "{e}"),
        }
    }
}

/// Makes sure `prog` is the XDP program of `link` in `mode` (not Off): an older bpfipt
/// program in the same mode is replaced atomically; one in the other mode is removed first.
pub fn ensure(link: &LinkXdpState, prog: BorrowedFd<'_>, mode: Mode) -> Result<Attached, XdpError> {
    let want = sys::prog_id(&prog).map_err(XdpError::Sys)?;
    let fd = prog.as_raw_fd();
    for (id, m) in [
        (link.skb_prog, Attached::Generic),
        (link.drv_prog, Attached::Native),
    ] {
        if let Some(id) = id {
            if !is_ours(id) {
                return Err(XdpError::Occupied { prog_id: id });
            }
        }
        let fits = match m {
            Attached::Native => mode == Mode::Native,
            Attached::Generic => mode == Mode::Generic || no_native(link.ifindex),
        };
        if id == Some(want) && fits {
            return Ok(m);
        }
    }
    let try_mode = |flags: u32, current: Option<u32>, other: Option<(u32, u32)>| {
        let old = current.and_then(|id| sys::prog_fd_by_id(id).ok());
        if let Some((other_id, other_flags)) = other {
            // A device holds one mode at a time: the other mode's program goes first.
            if let Ok(o) = sys::prog_fd_by_id(other_id) {
                set_xdp(link.ifindex, -1, other_flags, Some(o.as_raw_fd()))?;
            }
        }
        set_xdp(link.ifindex, fd, flags, old.as_ref().map(|o| o.as_raw_fd()))
    };
    if mode == Mode::Native && !no_native(link.ifindex) {
        match try_mode(
            XDP_FLAGS_DRV_MODE,
            link.drv_prog,
            link.skb_prog.map(|id| (id, XDP_FLAGS_SKB_MODE)),
        ) {
            Ok(()) => return Ok(Attached::Native),
            Err(e)
                if e.raw_os_error() == Some(libc::EOPNOTSUPP)
                    || e.raw_os_error() == Some(libc::EINVAL) =>
            {
                // No native XDP in this driver: generic below.
                NO_NATIVE
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(link.ifindex);
            }
            Err(e) => return Err(XdpError::Sys(e)),
        }
        let now = links()
            .map_err(XdpError::Sys)?
            .into_iter()
            .find(|l| l.ifindex == link.ifindex)
            .unwrap_or_default();
        return try_mode(XDP_FLAGS_SKB_MODE, now.skb_prog, None)
            .map(|_| Attached::Generic)
            .map_err(XdpError::Sys);
    }
    try_mode(
        XDP_FLAGS_SKB_MODE,
        link.skb_prog,
        link.drv_prog.map(|id| (id, XDP_FLAGS_DRV_MODE)),
    )
    .map(|_| Attached::Generic)
    .map_err(XdpError::Sys)
}

/// Removes bpfipt's XDP program from `link`, if it has one. Returns how many were removed.
pub fn remove(link: &LinkXdpState) -> io::Result<usize> {
    let mut n = 0;
    for (id, flags) in [
        (link.skb_prog, XDP_FLAGS_SKB_MODE),
        (link.drv_prog, XDP_FLAGS_DRV_MODE),
    ] {
        let Some(id) = id else { continue };
        let Ok(fd) = sys::prog_fd_by_id(id) else {
            continue;
        };
        if !sys::prog_info(&fd).is_ok_and(|(name, _)| name.starts_with(XDP_ROLE)) {
            continue;
        }
        match set_xdp(link.ifindex, -1, flags, Some(fd.as_raw_fd())) {
            Ok(()) => n += 1,
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

// Generic netlink: the controller, and the "netdev" family (include/uapi/linux/netdev.h).
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_A_DEV_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;
/// `NETDEV_XDP_ACT_NDO_XMIT`: frames redirected to the device in native mode are sent.
pub const XDP_ACT_NDO_XMIT: u64 = 1 << 2;

/// The netlink attributes of one message body.
fn nlattrs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let ty = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            break;
        }
        out.push((ty, &b[4..len]));
        b = &b[((len + 3) & !3).min(b.len())..];
    }
    out
}

/// One generic netlink request; the bodies (after the genl header) of the replies.
fn genl(ty: u16, flags: u16, cmd: u8, attrs: &[(u16, &[u8])]) -> io::Result<Vec<Vec<u8>>> {
    let mut socket = Socket::new(netlink_sys::protocols::NETLINK_GENERIC)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut body = vec![cmd, 1, 0, 0];
    for (t, v) in attrs {
        body.extend_from_slice(&((4 + v.len()) as u16).to_ne_bytes());
        body.extend_from_slice(&t.to_ne_bytes());
        body.extend_from_slice(v);
        while body.len() % 4 != 0 {
            body.push(0);
        }
    }
    let mut msg = Vec::with_capacity(16 + body.len());
    msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&ty.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&body);
    socket.send(&msg, 0)?;
    let mut out = Vec::new();
    let mut rx = vec![0u8; 1 << 16];
    loop {
        let n = socket.recv(&mut &mut rx[..], 0)?;
        let mut off = 0;
        while off + 16 <= n {
            let len = u32::from_ne_bytes(rx[off..off + 4].try_into().unwrap()) as usize;
            let mty = u16::from_ne_bytes([rx[off + 4], rx[off + 5]]);
            if len < 16 || off + len > n {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "genetlink"));
            }
            match mty {
                // NLMSG_DONE
                3 => return Ok(out),
                // NLMSG_ERROR
                2 => {
                    let code = i32::from_ne_bytes(rx[off + 16..off + 20].try_into().unwrap());
                    return if code == 0 {
                        Ok(out)
                    } else {
                        Err(io::Error::from_raw_os_error(-code))
                    };
                }
                _ => out.push(rx[off + 20..off + len].to_vec()),
            }
            off += (len + 3) & !3;
        }
        if flags & NLM_F_DUMP == 0 && !out.is_empty() {
            return Ok(out);
        }
    }
}

/// Per interface, its XDP features (`NETDEV_XDP_ACT_*`), as the kernel's "netdev" generic
/// netlink family reports them (Linux 6.3 and later; empty before).
pub fn xdp_features() -> io::Result<std::collections::BTreeMap<u32, u64>> {
    let mut out = std::collections::BTreeMap::new();
    let fam = genl(
        GENL_ID_CTRL,
        0,
        CTRL_CMD_GETFAMILY,
        &[(CTRL_ATTR_FAMILY_NAME, b"netdev\0")],
    )?;
    let Some(id) = fam.iter().find_map(|b| {
        nlattrs(b)
            .into_iter()
            .find(|(t, v)| *t == CTRL_ATTR_FAMILY_ID && v.len() >= 2)
            .map(|(_, v)| u16::from_ne_bytes([v[0], v[1]]))
    }) else {
        return Ok(out);
    };
    for b in genl(id, NLM_F_DUMP, NETDEV_CMD_DEV_GET, &[])? {
        let a = nlattrs(&b);
        let ifindex = a
            .iter()
            .find(|(t, v)| *t == NETDEV_A_DEV_IFINDEX && v.len() == 4)
            .map(|(_, v)| u32::from_ne_bytes((*v).try_into().unwrap()));
        let feat = a
            .iter()
            .find(|(t, v)| *t == NETDEV_A_DEV_XDP_FEATURES && v.len() == 8)
            .map(|(_, v)| u64::from_ne_bytes((*v).try_into().unwrap()));
        if let (Some(i), Some(f)) = (ifindex, feat) {
            out.insert(i, f);
        }
    }
    Ok(out)
}

/// Whether forwarded packets arriving on `dev` may take the fast path: with reverse path
/// filtering on (the larger of `all` and the device's `rp_filter`), the kernel's input route
/// validates the source, which bpf_fib_lookup does not.
pub fn fast_path_allowed(dev: &str) -> bool {
    let read = |n: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{n}/rp_filter"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
    };
    matches!((read("all"), read(dev)), (Some(0), Some(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_names_round_trip() {
        for m in [Mode::Off, Mode::Generic, Mode::Native] {
            assert_eq!(Mode::parse(m.name()), Some(m));
            assert_eq!(Mode::from_u8(m.to_u8()), m);
        }
        assert_eq!(Mode::parse("on"), Some(Mode::Generic));
        assert_eq!(Mode::parse("fast"), None);
        assert_eq!(Mode::from_u8(9), Mode::Off);
    }
}
