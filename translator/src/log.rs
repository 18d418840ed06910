//! The daemon's log: the system log (`LOG_DAEMON`), the last messages in memory (shown by
//! `bpfipt status`), standard error when it is a terminal or `BPFIPT_LOG_STDERR` is set, and
//! a file when `BPFIPT_LOG_FILE` names one (tests use it; machines without syslog too).

use std::collections::VecDeque;
use std::ffi::CString;
use std::io::Write;
use std::sync::{Mutex, OnceLock};

static TO_STDERR: OnceLock<bool> = OnceLock::new();
static FILE: OnceLock<Option<Mutex<std::fs::File>>> = OnceLock::new();
static RECENT: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());
const RECENT_MAX: usize = 50;

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
    // SAFETY: isatty has no preconditions.
    let tty = unsafe { libc::isatty(2) } == 1;
    let _ = TO_STDERR.set(tty || std::env::var_os("BPFIPT_LOG_STDERR").is_some());
    let _ = FILE.set(std::env::var_os("BPFIPT_LOG_FILE").and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
            .map(Mutex::new)
    }));
}

/// Whether `debug` messages are wanted (`BPFIPT_DEBUG` set).
pub fn debug_enabled() -> bool {
    static D: OnceLock<bool> = OnceLock::new();
    *D.get_or_init(|| std::env::var_os("BPFIPT_DEBUG").is_some())
}

fn emit(prio: libc::c_int, level: &str, msg: &str) {
    if prio != libc::LOG_DEBUG {
        if let Ok(c) = CString::new(msg.replace('\0', " ")) {
            // SAFETY: "%s" with one NUL-terminated argument.
            unsafe { libc::syslog(prio, c"%s".as_ptr(), c.as_ptr()) };
        }
        let mut r = RECENT.lock().unwrap_or_else(|e| e.into_inner());
        if r.len() == RECENT_MAX {
            r.pop_front();
        }
        r.push_back(format!("{level}: {msg}"));
    }
    let line = format!("bpfiptd[{}]: {level}: {msg}\n", std::process::id());
    if *TO_STDERR.get().unwrap_or(&false) {
        let _ = std::io::stderr().write_all(line.as_bytes());
    }
    if let Some(Some(f)) = FILE.get() {
        let _ = f
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_all(line.as_bytes());
    }
}

/// The last messages (not debug), oldest first.
pub fn recent() -> Vec<String> {
    RECENT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .cloned()
        .collect()
}

pub fn debug(msg: &str) {
    if debug_enabled() {
        emit(libc::LOG_DEBUG, "debug", msg);
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
