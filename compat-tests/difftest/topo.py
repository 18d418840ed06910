"""The test network, built twice (side "k": the kernel's ip_tables; side "s": the shim):

    src  p-eth0  ---- eth0             fw  veth0           ---- p-veth0   dst
         p-eth10 ---- eth10                uplink-ext-0123 ---- p-uplink

fw routes between the four links and is where the rules are loaded. src and dst are only
injection and observation points: their own stacks are silenced (their kernel filter tables
drop everything; packet sockets see traffic before that), so nothing but fw reacts to a packet.
"""

import ipaddress
import subprocess

# fw interface, peer namespace, peer interface, subnet (fw is .1, the peer .2).
LINKS = [
    ("eth0", "src", "p-eth0", "10.1.0.0/24"),
    ("eth10", "src", "p-eth10", "10.3.0.0/24"),
    ("veth0", "dst", "p-veth0", "10.2.0.0/24"),
    ("uplink-ext-0123", "dst", "p-uplink", "10.4.0.0/24"),  # IFNAMSIZ-1 characters
]
FW_IFACES = [l[0] for l in LINKS]
# Where fw routes what, besides the links: each interface gets a slice of the address space,
# so a generator can aim a forwarded packet (or a reply) at any -o.
ROUTES = [
    ("64.0.0.0/3", "eth0"),
    ("96.0.0.0/3", "eth10"),
    ("128.0.0.0/1", "uplink-ext-0123"),
    ("0.0.0.0/0", "veth0"),
]
# A whole local range (AnyIP) besides the interface addresses, so INPUT rules have room.
LOCAL_RANGE = "10.200.0.0/16"


def fw_mac(i):
    return "02:f0:00:00:00:%02x" % (i + 1)


def peer_mac(i):
    return "02:e0:00:00:00:%02x" % (i + 1)


def host(subnet, n):
    return str(ipaddress.IPv4Network(subnet)[n])


def ns_name(prefix, side, role):
    return "%s-%s-%s" % (prefix, side, role)


def sh(*cmd, check=True, input=None):
    r = subprocess.run(cmd, input=input, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError("%s: exit %d: %s" % (" ".join(cmd), r.returncode, r.stderr.strip()))
    return r


FW_SYSCTLS = [
    "net.ipv4.ip_forward=1",
    # Packets come from any source address on any link; the kernel must not drop them by
    # reverse-path checks (rp_filter is the max of "all" and the interface's value).
    "net.ipv4.conf.all.rp_filter=0",
    "net.ipv4.conf.default.rp_filter=0",
    # A packet forwarded out the link it came in on must not also trigger an ICMP redirect.
    "net.ipv4.conf.all.send_redirects=0",
    "net.ipv4.conf.default.send_redirects=0",
    # The kernel rate-limits ICMP errors (REJECT's among them); bpfipt's datapath does not.
    # An empty ratemask exempts every type from both the per-destination and the global limit.
    "net.ipv4.icmp_ratemask=0",
    "net.ipv4.icmp_ratelimit=0",
    "net.ipv4.icmp_msgs_per_sec=100000",
    "net.ipv4.icmp_msgs_burst=100000",
    # A lone fragment waits for reassembly; when that times out, fw sends an ICMP error at a
    # moment no batch controls (and it would cross OUTPUT then). Never time out during a run.
    "net.ipv4.ipfrag_time=3600",
    "net.ipv4.ipfrag_high_thresh=268435456",
]
NO_IPV6 = ["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"]


def setup(prefix, side):
    """Creates the three namespaces of one side. Raises on any failure (the caller cleans up)."""
    ns = {r: ns_name(prefix, side, r) for r in ("src", "fw", "dst")}
    for r in ("src", "fw", "dst"):
        sh("ip", "netns", "add", ns[r])
        # No IPv6 anywhere: router solicitations and MLD reports would be noise.
        sh("ip", "netns", "exec", ns[r], "sysctl", "-qw", *NO_IPV6)
        sh("ip", "-n", ns[r], "link", "set", "dev", "lo", "up")
    sh("ip", "netns", "exec", ns["fw"], "sysctl", "-qw", *FW_SYSCTLS)
    for i, (fwif, peer, pif, net) in enumerate(LINKS):
        sh("ip", "-n", ns["fw"], "link", "add", fwif, "address", fw_mac(i), "type", "veth",
           "peer", "name", pif, "netns", ns[peer], "address", peer_mac(i))
        plen = ipaddress.IPv4Network(net).prefixlen
        sh("ip", "-n", ns["fw"], "addr", "add", "%s/%d" % (host(net, 1), plen), "dev", fwif)
        sh("ip", "-n", ns[peer], "addr", "add", "%s/%d" % (host(net, 2), plen), "dev", pif)
        sh("ip", "-n", ns["fw"], "link", "set", "dev", fwif, "up")
        sh("ip", "-n", ns[peer], "link", "set", "dev", pif, "up")
        # Static neighbours: no ARP traffic, no resolution delays, no timing.
        sh("ip", "-n", ns["fw"], "neigh", "replace", host(net, 2), "lladdr", peer_mac(i),
           "dev", fwif, "nud", "permanent")
    for dst, dev in ROUTES:
        gw = host(next(l[3] for l in LINKS if l[0] == dev), 2)
        sh("ip", "-n", ns["fw"], "route", "replace", dst, "via", gw, "dev", dev)
    sh("ip", "-n", ns["fw"], "route", "add", "local", LOCAL_RANGE, "dev", "lo")
    for r in ("src", "dst"):
        # The kernel's own ip_tables, no shim: src and dst never answer anything.
        sh("ip", "netns", "exec", ns[r], "iptables-legacy-restore",
           input="*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT DROP [0:0]\nCOMMIT\n")
    return ns


def teardown(prefix, bpfipt):
    """Removes every namespace whose name starts with prefix (stopping a daemon first)."""
    r = sh("ip", "netns", "list", check=False)
    for line in r.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(prefix + "-"):
            continue
        sh("ip", "netns", "exec", name, bpfipt, "daemon", "stop", check=False)
        pids = sh("ip", "netns", "pids", name, check=False).stdout.split()
        for p in pids:
            sh("kill", "-9", p, check=False)
        sh("ip", "netns", "del", name, check=False)
