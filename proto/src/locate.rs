//! Finding, starting and connecting to the daemon of the caller's network namespace.
//!
//! The first command in a namespace finds nobody listening on `@bpfiptd.v1`, starts `bpfiptd
//! --spawned` and connects. `bpfiptd --spawned` binds the socket before it forks into the
//! background and before its parent exits, so once our `waitpid` returns, a connect succeeds
//! (queued in the listen backlog until the daemon has recovered its state). Two commands racing
//! to start a daemon both spawn one; the second bind fails with `EADDRINUSE` and that process
//! exits quietly, so there is only ever one daemon per namespace.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{call, hello_payload, Op, Request, DAEMON_SOCKET};

/// Environment variable naming the daemon binary explicitly.
pub const ENV_DAEMON: &str = "BPFIPT_DAEMON";

/// How long a client waits for one reply. A 50000-rule commit takes well under this; a
/// daemon that does not answer in this time is treated as gone (the operation fails closed).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(300);

fn daemon_addr() -> io::Result<SocketAddr> {
    SocketAddr::from_abstract_name(DAEMON_SOCKET)
}

/// Connects to the daemon of the current network namespace, if one listens.
pub fn connect_existing() -> io::Result<UnixStream> {
    let s = UnixStream::connect_addr(&daemon_addr()?)?;
    s.set_read_timeout(Some(REPLY_TIMEOUT))?;
    Ok(s)
}

/// The directory holding the shared object or executable that contains this function.
fn own_object_dir() -> Option<PathBuf> {
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    let addr = own_object_dir as *const libc::c_void;
    // SAFETY: dladdr only reads the address and fills `info`.
    if unsafe { libc::dladdr(addr, &mut info) } == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dli_fname is a NUL-terminated string owned by the dynamic loader.
    let name = unsafe { CStr::from_ptr(info.dli_fname) };
    let path = Path::new(OsStr::from_bytes(name.to_bytes()));
    let path = std::fs::canonicalize(path).ok()?;
    path.parent().map(Path::to_path_buf)
}

/// Where `bpfiptd` is looked for, in order.
pub fn daemon_candidates() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(p) = std::env::var_os(ENV_DAEMON) {
        v.push(PathBuf::from(p));
    }
    if let Some(dir) = own_object_dir() {
        v.push(dir.join("bpfiptd"));
        v.push(dir.join("../sbin/bpfiptd"));
        v.push(dir.join("../libexec/bpfipt/bpfiptd"));
        v.push(dir.join("../../sbin/bpfiptd"));
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            v.push(dir.join("bpfiptd"));
        }
    }
    v.push(PathBuf::from("/usr/sbin/bpfiptd"));
    v.push(PathBuf::from("/usr/local/sbin/bpfiptd"));
    v
}

pub fn find_daemon() -> Option<PathBuf> {
    daemon_candidates().into_iter().find(|p| {
        let c = match CString::new(p.as_os_str().as_bytes()) {
            Ok(c) => c,
            Err(_) => return false,
        };
        // SAFETY: access() reads a NUL-terminated path.
        unsafe { libc::access(c.as_ptr(), libc::X_OK) == 0 }
    })
}

/// Starts `bpfiptd --spawned` and waits until it has bound its socket (the spawned process
/// exits as soon as the socket is bound and the daemon proper runs in the background).
pub fn spawn_daemon(path: &Path) -> io::Result<()> {
    let prog = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let argv_s = [prog.clone(), CString::new("--spawned").unwrap()];
    let mut argv: Vec<*const libc::c_char> = argv_s.iter().map(|c| c.as_ptr()).collect();
    argv.push(std::ptr::null());
    // The daemon must not load the shim into itself (it makes real socket calls when it falls
    // back to the kernel), so LD_PRELOAD is dropped.
    let env_s: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| k != "LD_PRELOAD")
        .filter_map(|(k, v)| {
            let mut b = k.as_bytes().to_vec();
            b.push(b'=');
            b.extend_from_slice(v.as_bytes());
            CString::new(b).ok()
        })
        .collect();
    let mut envp: Vec<*const libc::c_char> = env_s.iter().map(|c| c.as_ptr()).collect();
    envp.push(std::ptr::null());
    let devnull = c"/dev/null";

    // SAFETY: between fork and execve the child only calls async-signal-safe functions on
    // memory prepared before the fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        unsafe {
            libc::setsid();
            let fd = libc::open(devnull.as_ptr(), libc::O_RDWR);
            if fd >= 0 {
                libc::dup2(fd, 0);
                libc::dup2(fd, 1);
                libc::dup2(fd, 2);
            }
            // Nothing of the caller's may leak into the daemon: above all not the xtables
            // lock file, which would otherwise stay locked for the daemon's lifetime.
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            libc::execve(prog.as_ptr(), argv.as_ptr(), envp.as_ptr());
            libc::_exit(127);
        }
    }
    let mut status = 0;
    loop {
        // SAFETY: waits for the child we just forked.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        if r < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return Err(io::Error::last_os_error());
        }
    }
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{} --spawned failed (wait status {status:#x}); see the system log",
            path.display()
        )))
    }
}

/// Why connecting to the daemon failed, in words for the user.
#[derive(Debug)]
pub struct ConnectError {
    pub errno: i32,
    pub message: String,
}

/// How often a client tries again when the daemon it reached went away before answering.
const HELLO_ATTEMPTS: u32 = 5;

/// Connects to the namespace's daemon, starting it if nobody listens, and exchanges hellos.
///
/// A daemon that is ending (killed, or leaving an unused namespace) keeps its listening socket
/// until the very end of its exit (the kernel tears the address space down before it closes
/// the files), so a connect can be queued on a socket that then closes: the hello fails with
/// a reset. Nothing was asked of that daemon yet, so the client connects again (and starts a
/// new daemon if nobody listens any more).
pub fn connect_or_spawn() -> Result<UnixStream, ConnectError> {
    let mut attempt = 0;
    loop {
        match connect_once() {
            Err(Attempt::Final(e)) => return Err(e),
            Ok(s) => return Ok(s),
            Err(Attempt::Gone(e)) => {
                attempt += 1;
                if attempt >= HELLO_ATTEMPTS {
                    return Err(ConnectError {
                        errno: libc::ECONNRESET,
                        message: format!(
                            "bpfipt: bpfiptd did not answer ({attempt} attempts, last: {e}); \
                             see the system log, or start it by hand with `bpfiptd` to see why"
                        ),
                    });
                }
                std::thread::sleep(Duration::from_millis(10 << attempt));
            }
        }
    }
}

/// Why one connection attempt failed: for good, or because the daemon went away.
enum Attempt {
    Final(ConnectError),
    Gone(io::Error),
}

fn connect_once() -> Result<UnixStream, Attempt> {
    let mut stream = match connect_existing() {
        Ok(s) => s,
        Err(_) => {
            let Some(path) = find_daemon() else {
                return Err(Attempt::Final(ConnectError {
                    errno: libc::ENOENT,
                    message: format!(
                        "bpfipt: cannot find bpfiptd (looked in {}); install it or set {ENV_DAEMON}",
                        daemon_candidates()
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                }));
            };
            if let Err(e) = spawn_daemon(&path) {
                return Err(Attempt::Final(ConnectError {
                    errno: libc::ECONNREFUSED,
                    message: format!("bpfipt: cannot start {}: {e}", path.display()),
                }));
            }
            // The socket is bound before the spawned process exits; retry briefly anyway in
            // case a racing daemon won the bind and is still starting to listen.
            let mut last = None;
            let mut got = None;
            for i in 0..50 {
                match connect_existing() {
                    Ok(s) => {
                        got = Some(s);
                        break;
                    }
                    Err(e) => last = Some(e),
                }
                std::thread::sleep(Duration::from_millis(2 + i * 2));
            }
            match got {
                Some(s) => s,
                None => {
                    return Err(Attempt::Final(ConnectError {
                        errno: libc::ECONNREFUSED,
                        message: format!(
                            "bpfipt: started {} but cannot connect to it: {}",
                            path.display(),
                            last.map(|e| e.to_string()).unwrap_or_default()
                        ),
                    }))
                }
            }
        }
    };
    let hello = Request {
        op: Op::Hello,
        family: 0,
        flags: 0,
        optlen: 0,
        data: hello_payload(),
    };
    match call(&mut stream, &hello) {
        Ok(r) if r.errno == 0 => Ok(stream),
        Ok(r) => Err(Attempt::Final(ConnectError {
            errno: r.errno,
            message: format!(
                "bpfipt: the running bpfiptd refused this client: {}; restart it with `bpfipt daemon restart`",
                String::from_utf8_lossy(&r.data)
            ),
        })),
        Err(e) => Err(Attempt::Gone(e)),
    }
}
