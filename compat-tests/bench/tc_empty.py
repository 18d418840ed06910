#!/usr/bin/env python3
"""tc_empty.py: attaches a program that only returns TC_ACT_OK (r0 = 0; exit) at TCX ingress
and egress of every interface of the current network namespace but lo, where bpfipt attaches
its two programs. Backend `tc-empty` of the benchmarks: the cost of running any TC program at
those hooks, which no TC datapath can go below. The attachments (BPF_PROG_ATTACH, no link)
belong to the interfaces and go with the namespace."""
import ctypes
import socket
import struct

from bpfsys import bpf

BPF_PROG_LOAD, BPF_PROG_ATTACH = 5, 8
BPF_PROG_TYPE_SCHED_CLS = 3
BPF_TCX_INGRESS, BPF_TCX_EGRESS = 46, 47


def load():
    # mov64 r0, 0 (TC_ACT_OK); exit
    insns = struct.pack("<BBhi", 0xB7, 0, 0, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0)
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(b"GPL")
    attr = struct.pack("<IIQQIIQII16s", BPF_PROG_TYPE_SCHED_CLS, 2, ctypes.addressof(code),
                       ctypes.addressof(lic), 0, 0, 0, 0, 0, b"tc_empty")
    return bpf(BPF_PROG_LOAD, attr, "BPF_PROG_LOAD")


def attach(fd, ifindex, hook):
    attr = struct.pack("<IIIIIIQ", ifindex, fd, hook, 0, 0, 0, 0)
    bpf(BPF_PROG_ATTACH, attr, f"BPF_PROG_ATTACH ifindex {ifindex}")


def main():
    fd = load()
    # if_nameindex asks the namespace itself: nsenter --net leaves /sys the caller's.
    for ifindex, name in socket.if_nameindex():
        if name == "lo":
            continue
        for hook in (BPF_TCX_INGRESS, BPF_TCX_EGRESS):
            attach(fd, ifindex, hook)


if __name__ == "__main__":
    main()
