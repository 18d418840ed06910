"""The bpf(2) system call for the benchmarks' Python tools (tc_empty.py, jitprof.py)."""
import ctypes
import os

SYS_BPF = 321  # x86_64
libc = ctypes.CDLL(None, use_errno=True)


def bpf(cmd, attr, what):
    """bpf(cmd, attr): the result (a file descriptor or 0); OSError naming `what` on failure."""
    buf = ctypes.create_string_buffer(attr, 128)
    r = libc.syscall(SYS_BPF, cmd, buf, 128)
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")
    return r
