#!/usr/bin/env python3
"""Probes for compat-tests/stateful.sh: each prints one word, what the caller saw.

  ctprobe.py serve                       TCP echo on 22, 80, 8080; UDP echo on 53 (forever)
  ctprobe.py tcp HOST PORT [--sport N] [--rst]
        connect, send, read the echo, close (FIN, or RST with --rst):
        echo | noecho | refused | timeout | unreach
  ctprobe.py udp HOST PORT [--sport N]   send one datagram, wait for the answer:
        reply | refused (ICMP port unreachable came back) | timeout | unreach
  ctprobe.py raw HOST PORT FLAGS [--sport N]
        send one TCP segment with FLAGS (letters S A F R P) outside any socket, and report
        the first segment that comes back from HOST:PORT: rst | synack | ack | other | none
"""
import os
import select
import socket
import struct
import sys
import threading
import time

WAIT = 1.5


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


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


def raw(host, port, flags, sport):
    bits = {"F": 1, "S": 2, "R": 4, "P": 8, "A": 16}
    f = sum(bits[c] for c in flags)
    src = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    src.connect((host, port))
    me = src.getsockname()[0]
    src.close()
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    seq, ack = 0x1000, 0x2000 if f & 16 else 0
    hdr = struct.pack("!HHIIBBHHH", sport, port, seq, ack, 5 << 4, f, 1000, 0, 0)
    pseudo = socket.inet_aton(me) + socket.inet_aton(host) + struct.pack("!BBH", 0, 6, len(hdr))
    c = csum(pseudo + hdr)
    hdr = hdr[:16] + struct.pack("!H", c) + hdr[18:]
    s.sendto(hdr, (host, 0))
    end = time.time() + WAIT
    while time.time() < end:
        r, _, _ = select.select([s], [], [], end - time.time())
        if not r:
            break
        d, a = s.recvfrom(65535)
        ihl = (d[0] & 0xF) * 4
        sp, dp = struct.unpack("!HH", d[ihl : ihl + 4])
        if a[0] != host or sp != port or dp != sport:
            continue
        g = d[ihl + 13]
        if g & 4:
            return "rst"
        if g & 2 and g & 16:
            return "synack"
        if g & 16:
            return "ack"
        return "other"
    return "none"


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
        print(raw(a[0], int(a[1]), a[2], sport or 40000 + os.getpid() % 20000))
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
