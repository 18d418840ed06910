//! What the datapath needs to know about the namespace, from rtnetlink: its interfaces (every
//! one gets the programs; rules match their names) and its local and broadcast routes (which
//! decide INPUT versus FORWARD for a received packet, as the kernel's local routing table does).
//!
//! The watcher does not interpret events: any link, address or route change means "resync",
//! and the caller dumps the (small) current state again. That cannot drift from the kernel.

use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::time::Duration;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteType};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// An interface of the namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Link {
    pub ifindex: u32,
    pub name: String,
}

/// The kind of a route of the local table that means "deliver here".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LocalKind {
    Local,
    Broadcast,
}

/// A route of the local routing table (`ip route show table local`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LocalRoute {
    pub prefix: IpAddr,
    pub len: u8,
    pub kind: LocalKind,
}

/// `RT_TABLE_LOCAL`.
const RT_TABLE_LOCAL: u32 = 255;
// rtnetlink multicast groups (RTMGRP_*).
const RTMGRP_LINK: u32 = 0x1;
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
const RTMGRP_IPV6_IFADDR: u32 = 0x100;
const RTMGRP_IPV6_ROUTE: u32 = 0x400;

fn dump(msg: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
    request(msg, NLM_F_DUMP)
}

/// Sends one rtnetlink request with `flags` and collects the messages of its answer (a dump's
/// parts, or nothing for an acknowledged change).
pub(crate) fn request(
    msg: RouteNetlinkMessage,
    flags: u16,
) -> io::Result<Vec<RouteNetlinkMessage>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut hdr = NetlinkHeader::default();
    hdr.flags = NLM_F_REQUEST | flags;
    hdr.sequence_number = 1;
    let mut packet = NetlinkMessage::new(hdr, NetlinkPayload::from(msg));
    packet.finalize();
    let mut buf = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut buf[..]);
    socket.send(&buf, 0)?;
    let mut out = Vec::new();
    let mut rx = vec![0u8; 1 << 16];
    loop {
        let n = socket.recv(&mut &mut rx[..], 0)?;
        let mut off = 0;
        while off < n {
            let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rx[off..n])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let len = m.header.length as usize;
            match m.payload {
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => {
                    return match e.code {
                        // The acknowledgement of a request that is not a dump.
                        None => Ok(out),
                        Some(c) => Err(io::Error::from_raw_os_error(-c.get())),
                    };
                }
                NetlinkPayload::InnerMessage(inner) => out.push(inner),
                _ => {}
            }
            if len == 0 {
                break;
            }
            off += len;
        }
    }
}

/// All interfaces of the current namespace.
pub fn links() -> io::Result<Vec<Link>> {
    let mut v = Vec::new();
    for m in dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))? {
        if let RouteNetlinkMessage::NewLink(l) = m {
            let name = l.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            });
            if let Some(name) = name {
                v.push(Link {
                    ifindex: l.header.index,
                    name,
                });
            }
        }
    }
    v.sort();
    Ok(v)
}

fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

/// The local and broadcast routes of the local table, for one family.
pub fn local_routes(family: AddressFamily) -> io::Result<Vec<LocalRoute>> {
    let mut req = RouteMessage::default();
    req.header.address_family = family;
    let mut v = Vec::new();
    for m in dump(RouteNetlinkMessage::GetRoute(req))? {
        let RouteNetlinkMessage::NewRoute(r) = m else {
            continue;
        };
        let table = r
            .attributes
            .iter()
            .find_map(|a| match a {
                RouteAttribute::Table(t) => Some(*t),
                _ => None,
            })
            .unwrap_or(r.header.table as u32);
        if table != RT_TABLE_LOCAL || r.header.address_family != family {
            continue;
        }
        let kind = match r.header.kind {
            RouteType::Local => LocalKind::Local,
            RouteType::Broadcast => LocalKind::Broadcast,
            _ => continue,
        };
        let Some(prefix) = r.attributes.iter().find_map(|a| match a {
            RouteAttribute::Destination(d) => route_addr(d),
            _ => None,
        }) else {
            continue;
        };
        v.push(LocalRoute {
            prefix,
            len: r.header.destination_prefix_length,
            kind,
        });
    }
    v.sort();
    v.dedup();
    Ok(v)
}

/// A socket subscribed to link, address and route changes.
pub struct Watcher {
    socket: Socket,
}

impl Watcher {
    pub fn new() -> io::Result<Watcher> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        let groups = RTMGRP_LINK
            | RTMGRP_IPV4_IFADDR
            | RTMGRP_IPV4_ROUTE
            | RTMGRP_IPV6_IFADDR
            | RTMGRP_IPV6_ROUTE;
        socket.bind(&SocketAddr::new(0, groups))?;
        Ok(Watcher { socket })
    }

    /// Waits up to `timeout` for a change; drains everything pending. `Ok(true)` if anything
    /// changed (or the socket overflowed, which means we may have missed changes).
    pub fn wait(&mut self, timeout: Duration) -> io::Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one valid descriptor.
        let r = unsafe {
            libc::poll(
                &mut pfd,
                1,
                timeout.as_millis().min(i32::MAX as u128) as i32,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            };
        }
        if r == 0 {
            return Ok(false);
        }
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match self.socket.recv(&mut &mut buf[..], libc::MSG_DONTWAIT) {
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                // ENOBUFS: events were dropped; a resync covers them.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    /// Runs `f` in a new network namespace on a thread of its own.
    fn in_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(move || {
            // SAFETY: affects this thread only.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
            f()
        })
        .join()
        .unwrap()
    }

    #[test]
    fn fresh_namespace_has_lo_and_its_local_routes_once_up() {
        if !root() {
            eprintln!("skipped: needs root");
            return;
        }
        let (links, routes_down, routes_up) = in_netns(|| {
            let links = links().unwrap();
            let down = local_routes(AddressFamily::Inet).unwrap();
            let st = std::process::Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status()
                .unwrap();
            assert!(st.success());
            (links, down, local_routes(AddressFamily::Inet).unwrap())
        });
        assert_eq!(
            links,
            vec![Link {
                ifindex: 1,
                name: "lo".into()
            }]
        );
        assert!(routes_down.is_empty(), "{routes_down:?}");
        // The kernel makes 127.0.0.0/8 local for lo, plus the /32 and the broadcast.
        assert!(
            routes_up.contains(&LocalRoute {
                prefix: "127.0.0.0".parse().unwrap(),
                len: 8,
                kind: LocalKind::Local
            }),
            "{routes_up:?}"
        );
        assert!(
            routes_up.contains(&LocalRoute {
                prefix: "127.255.255.255".parse().unwrap(),
                len: 32,
                kind: LocalKind::Broadcast
            }),
            "{routes_up:?}"
        );
    }

    #[test]
    fn watcher_sees_a_new_link() {
        if !root() {
            eprintln!("skipped: needs root");
            return;
        }
        let (changed, links) = in_netns(|| {
            let mut w = Watcher::new().unwrap();
            assert!(!w.wait(Duration::from_millis(10)).unwrap());
            let st = std::process::Command::new("ip")
                .args(["link", "add", "d0", "type", "veth", "peer", "name", "d1"])
                .status()
                .unwrap();
            assert!(st.success());
            (w.wait(Duration::from_secs(2)).unwrap(), links().unwrap())
        });
        assert!(changed);
        assert!(links.iter().any(|l| l.name == "d0"), "{links:?}");
    }
}
