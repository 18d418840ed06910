#!/usr/bin/env python3
"""Probes for compat-tests/stateful.sh: each prints one word, what the caller saw.

  ctprobe.py serve                       TCP echo on 22, 80, 8080; UDP echo on 53 (forever)
  ctprobe.py tcp HOST PORT [--sport N] [--rst]
        connect, send, read the echo, close (FIN, or RST with --rst):
        echo | noecho | refused | timeout | unreach
  ctprobe.py udp HOST PORT [--sport N]   send one datagram, wait for the answer:
        reply | refused (ICMP port unreachable came back) | timeout | unreach
  ctprobe.py raw HOST PORT FLAGS [--sport N] [--bad-csum]
        send one TCP segment with FLAGS (letters S A F R P) outside any socket, and report
        the first segment that comes back from HOST:PORT: rst | synack | ack | other | none
        (--bad-csum: with a wrong TCP checksum)
  ctprobe.py udpraw HOST PORT [--sport N] [--bad-csum]
        one UDP datagram whose checksum is ours (right, or wrong): reply | timeout
  ctprobe.py icmpraw HOST [--bad-csum]
        one ICMP echo request whose checksum is ours: reply | timeout
  ctprobe.py seg HOST PORT --sport N [--teardown none|fin|rst] [--seq D] [--ack D]
                 [--flags A] [--len L] [--win W] [--repeat N]
        a real connection (connect, "ping" echoed), whose sequence numbers are learnt from
        the SYN/ACK a raw socket sees; then its teardown (none: kept open, aborted after;
        fin: close; rst: abort), then one raw segment with FLAGS, L bytes of data, window W, sequence
        number the client's next one + D and acknowledgment the server's next one + D,
        sent N times.
        Reports the first segment from HOST:PORT after it (as raw). With $CTPROBE_STATE
        set, the connection's numbers are saved there for segback.
  ctprobe.py segback [--seq D] [--ack D] [--flags A] [--len L]
        on the server's side of the connection seg saved: one raw segment from the server
        to the client, numbers relative to the server's next and the client's next.
"""
import os
import select
import socket
import struct
import sys
import threading
import time

from rawnet import (
    csum,
    flags_of,
    parse_tcp,
    source_for,
    tcp_raw_socket,
    tcp_segment,
    udp_datagram,
)

WAIT = 1.5


def arg(args, name, default=None):
    if name in args:
        i = args.index(name)
        v = args[i + 1]
        del args[i : i + 2]
        return v
    return default


def serve():
    def tcp(port):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        s.listen(64)
        while True:
            c, _ = s.accept()

            def echo(c=c):
                try:
                    c.settimeout(5)
                    while True:
                        d = c.recv(4096)
                        if not d:
                            break
                        c.sendall(d)
                except OSError:
                    pass
                finally:
                    c.close()

            threading.Thread(target=echo, daemon=True).start()

    def udp(port):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", port))
        while True:
            d, a = s.recvfrom(4096)
            s.sendto(d, a)

    for p in (22, 80, 8080):
        threading.Thread(target=tcp, args=(p,), daemon=True).start()
    threading.Thread(target=udp, args=(53,), daemon=True).start()
    while True:
        time.sleep(3600)


def err_word(e):
    if isinstance(e, socket.timeout):
        return "timeout"
    if isinstance(e, ConnectionRefusedError):
        return "refused"
    if isinstance(e, OSError) and e.errno in (113, 101):  # EHOSTUNREACH, ENETUNREACH
        return "unreach"
    if isinstance(e, PermissionError):
        return "eperm"
    return "error"


def tcp(host, port, sport, rst):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if sport:
        s.bind(("0.0.0.0", sport))
    s.settimeout(WAIT)
    try:
        s.connect((host, port))
        s.sendall(b"ping")
        d = s.recv(16)
        word = "echo" if d == b"ping" else "noecho"
    except OSError as e:
        word = err_word(e)
    if rst:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    # Let the teardown cross the firewall before the next probe.
    time.sleep(0.2)
    return word


def udp(host, port, sport):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if sport:
        s.bind(("0.0.0.0", sport))
    s.settimeout(WAIT)
    try:
        s.connect((host, port))
        s.send(b"ping")
        s.recv(16)
        return "reply"
    except OSError as e:
        return err_word(e)


def answer(s, host, port, sport, end):
    """The word for the first segment from host:port to sport before time end."""
    while time.time() < end:
        r, _, _ = select.select([s], [], [], max(0, end - time.time()))
        if not r:
            break
        d, a = s.recvfrom(65535)
        src, sp, dp, _, _, g, _ = parse_tcp(d)
        if src != host or sp != port or dp != sport:
            continue
        if g & 4:
            return "rst"
        if g & 2 and g & 16:
            return "synack"
        if g & 16:
            return "ack"
        return "other"
    return "none"


def drain(s):
    while select.select([s], [], [], 0)[0]:
        s.recvfrom(65535)


def raw(host, port, flags, sport, bad=False):
    f = flags_of(flags)
    me = source_for(host, port)
    s = tcp_raw_socket()
    seq, ack = 0x1000, 0x2000 if f & 16 else 0
    s.sendto(tcp_segment(me, host, sport, port, seq, ack, f, bad_csum=bad), (host, 0))
    return answer(s, host, port, sport, time.time() + WAIT)


def udpraw(host, port, sport, bad):
    """A datagram sent through a raw socket, so the kernel leaves its checksum alone; the
    answer comes to a UDP socket bound to the same port."""
    me = source_for(host, port)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("0.0.0.0", sport))
    u.settimeout(WAIT)
    r = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
    r.sendto(udp_datagram(me, host, sport, port, b"ping", "bad" if bad else "good"), (host, 0))
    try:
        u.recv(16)
        return "reply"
    except OSError as e:
        return err_word(e)


def icmpraw(host, bad):
    """An echo request with our checksum; the reply is looked for on the same raw socket."""
    r = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident = os.getpid() & 0xFFFF
    m = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + b"ctprobe"
    c = csum(m)
    if bad:
        c ^= 0x5A5A
    r.sendto(m[:2] + struct.pack("!H", c) + m[4:], (host, 0))
    end = time.time() + WAIT
    while time.time() < end:
        if not select.select([r], [], [], max(0, end - time.time()))[0]:
            break
        d, a = r.recvfrom(65535)
        ihl = (d[0] & 0xF) * 4
        t, _, _, i = struct.unpack("!BBHH", d[ihl : ihl + 6])
        if a[0] == host and t == 0 and i == ident:
            return "reply"
    return "timeout"


def seg(host, port, sport, teardown, dseq, dack, flags, length, win, repeat=1):
    """See the usage: a forged segment with numbers relative to a live (or just closed)
    connection, so that being in or out of the window does not depend on random ISNs."""
    me = source_for(host, port)
    r = tcp_raw_socket()
    c = socket.socket()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    c.bind(("0.0.0.0", sport))
    c.settimeout(WAIT)
    try:
        c.connect((host, port))
        c.sendall(b"ping")
        if c.recv(16) != b"ping":
            return "noecho"
    except OSError as e:
        return err_word(e)
    isn = None
    while select.select([r], [], [], 0)[0]:
        d, _ = r.recvfrom(65535)
        src, sp, dp, sq, ak, g, _ = parse_tcp(d)
        if src == host and sp == port and dp == sport and g & 0x12 == 0x12:
            isn = (ak - 1, sq)
    if isn is None:
        return "nosynack"
    # next sequence numbers: SYN + "ping" (+ FIN) each way
    cn, sn = isn[0] + 5, isn[1] + 5
    if teardown == "fin":
        c.close()
        cn, sn = cn + 1, sn + 1
    elif teardown == "rst":
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
    # Let the teardown (or the last ACK) cross the firewall.
    time.sleep(0.3)
    state = os.environ.get("CTPROBE_STATE")
    if state:
        with open(state, "w") as fh:
            fh.write("%s %d %s %d %d %d\n" % (me, sport, host, port, cn, sn))
    drain(r)
    pkt = tcp_segment(me, host, sport, port, cn + dseq, sn + dack, flags_of(flags), win,
                      b"x" * length)
    for _ in range(repeat):
        r.sendto(pkt, (host, 0))
    word = answer(r, host, port, sport, time.time() + WAIT)
    # What the segment set off (an echo, a challenge ACK) settles before the close, and the
    # close before the next probe, so that a firewall's counters do not depend on timing.
    time.sleep(0.3)
    if teardown == "none":
        # Aborted: a forged segment may have put the two ends out of step, and a FIN
        # teardown would then retransmit for seconds, into the next probe's counts.
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
        time.sleep(0.3)
    return word


def segback(dseq, dack, flags, length, win):
    with open(os.environ["CTPROBE_STATE"]) as fh:
        client, cport, me, sport, cn, sn = fh.read().split()
    cport, sport, cn, sn = int(cport), int(sport), int(cn), int(sn)
    r = tcp_raw_socket()
    pkt = tcp_segment(me, client, sport, cport, sn + dseq, cn + dack, flags_of(flags), win,
                      b"x" * length)
    r.sendto(pkt, (client, 0))
    word = answer(r, client, cport, sport, time.time() + WAIT)
    time.sleep(0.3)
    return word


def main():
    a = sys.argv[1:]
    if not a:
        print(__doc__)
        return 2
    cmd = a.pop(0)
    if cmd == "serve":
        serve()
    sport = int(arg(a, "--sport", "0"))
    rst = "--rst" in a
    if rst:
        a.remove("--rst")
    if cmd == "tcp":
        print(tcp(a[0], int(a[1]), sport, rst))
    elif cmd == "udp":
        print(udp(a[0], int(a[1]), sport))
    elif cmd == "raw":
        bad = "--bad-csum" in a
        if bad:
            a.remove("--bad-csum")
        print(raw(a[0], int(a[1]), a[2], sport or 40000 + os.getpid() % 20000, bad))
    elif cmd in ("udpraw", "icmpraw"):
        bad = "--bad-csum" in a
        if bad:
            a.remove("--bad-csum")
        if cmd == "udpraw":
            print(udpraw(a[0], int(a[1]), sport or 40000 + os.getpid() % 20000, bad))
        else:
            print(icmpraw(a[0], bad))
    elif cmd in ("seg", "segback"):
        teardown = arg(a, "--teardown", "none")
        dseq = int(arg(a, "--seq", "0"))
        dack = int(arg(a, "--ack", "0"))
        flags = arg(a, "--flags", "A")
        length = int(arg(a, "--len", "0"))
        win = int(arg(a, "--win", "502"))
        if cmd == "seg":
            repeat = int(arg(a, "--repeat", "1"))
            print(seg(a[0], int(a[1]), sport, teardown, dseq, dack, flags, length, win, repeat))
        else:
            print(segback(dseq, dack, flags, length, win))
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
