//! The daemon's log: the system log (`LOG_DAEMON`), and standard error when it is a terminal
//! or `BPFIPT_LOG_STDERR` is set.

use std::ffi::CString;
use std::sync::OnceLock;

static TO_STDERR: OnceLock<bool> = OnceLock::new();

pub fn open(ident: &'static str) {
    let id = CString::new(ident).unwrap();
    // openlog keeps the pointer: leak the identity string.
    let id = Box::leak(id.into_boxed_c_str());
    // SAFETY: openlog with a 'static NUL-terminated identity.
    unsafe {
        libc::openlog(
            id.as_ptr(),
            libc::LOG_PID | libc::LOG_NDELAY,
            libc::LOG_DAEMON,
        )
    };
    let tty = unsafe { libc::isatty(2) } == 1;
    let _ = TO_STDERR.set(tty || std::env::var_os("BPFIPT_LOG_STDERR").is_some());
}

fn emit(prio: libc::c_int, level: &str, msg: &str) {
    if let Ok(c) = CString::new(msg.replace('\0', " ")) {
        // SAFETY: "%s" with one NUL-terminated argument.
        unsafe { libc::syslog(prio, c"%s".as_ptr(), c.as_ptr()) };
    }
    if *TO_STDERR.get().unwrap_or(&false) {
        eprintln!("bpfiptd: {level}: {msg}");
    }
}

pub fn info(msg: &str) {
    emit(libc::LOG_INFO, "info", msg);
}

pub fn warn(msg: &str) {
    emit(libc::LOG_WARNING, "warning", msg);
}

pub fn error(msg: &str) {
    emit(libc::LOG_ERR, "error", msg);
}
