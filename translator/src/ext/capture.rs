//! Golden data from the real kernel: blocks of real iptables commands run in fresh network
//! namespaces, then the table read back with GET_INFO and GET_ENTRIES. Used by
//! examples/capture.rs to write testdata/captures.txt and by a root-only test that checks the
//! stored captures are still what the kernel and iptables produce.
//!
//! The commands file holds blocks: a line `@ <ipv4|ipv6> <table>` then one command per line
//! (`#` starts a comment).

use std::io;
use std::process::Command;

use crate::abi::{Family, GetInfo};
use crate::oracle::Scratch;

/// One block of commands and the table they act on.
#[derive(Clone, Debug)]
pub struct Block {
    pub family: Family,
    pub table: String,
    pub commands: Vec<String>,
}

/// Why a commands file or a capture failed.
#[derive(Debug)]
pub enum CaptureError {
    Syntax {
        line: usize,
        what: &'static str,
    },
    Namespace(io::Error),
    Command {
        command: String,
        status: Option<i32>,
        stderr: String,
    },
    Spawn {
        command: String,
        err: io::Error,
    },
    Kernel {
        op: &'static str,
        table: String,
        errno: i32,
    },
}

impl std::fmt::Display for CaptureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CaptureError::Syntax { line, what } => write!(f, "line {line}: {what}"),
            CaptureError::Namespace(e) => write!(f, "network namespace: {e}"),
            CaptureError::Command {
                command,
                status,
                stderr,
            } => {
                write!(f, "{command}: exit {status:?}: {stderr}")
            }
            CaptureError::Spawn { command, err } => write!(f, "{command}: {err}"),
            CaptureError::Kernel { op, table, errno } => write!(f, "{op} {table}: errno {errno}"),
        }
    }
}

impl std::error::Error for CaptureError {}

/// Parses a commands file.
pub fn parse_commands(text: &str) -> Result<Vec<Block>, CaptureError> {
    let mut blocks: Vec<Block> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        let syntax = |what| CaptureError::Syntax { line: i + 1, what };
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(head) = line.strip_prefix('@') {
            let mut w = head.split_whitespace();
            let family = match w.next() {
                Some("ipv4") => Family::V4,
                Some("ipv6") => Family::V6,
                _ => return Err(syntax("family must be ipv4 or ipv6")),
            };
            let table = w.next().ok_or(syntax("no table"))?;
            blocks.push(Block {
                family,
                table: table.to_string(),
                commands: Vec::new(),
            });
        } else {
            let b = blocks
                .last_mut()
                .ok_or(syntax("command before any @ line"))?;
            b.commands.push(line.to_string());
        }
    }
    Ok(blocks)
}

/// Runs the block's commands in a new network namespace (in a thread of its own, so the
/// caller's namespace is unchanged) with a private xtables lock file, then reads the table.
pub fn capture(b: &Block) -> Result<(GetInfo, Vec<u8>), CaptureError> {
    std::thread::scope(|sc| sc.spawn(|| capture_here(b)).join().expect("capture thread"))
}

fn capture_here(b: &Block) -> Result<(GetInfo, Vec<u8>), CaptureError> {
    // SAFETY: unshare of the network namespace affects this thread and its children only.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(CaptureError::Namespace(io::Error::last_os_error()));
    }
    let lock = std::env::temp_dir().join(format!(
        "bpfipt-capture-{}-{:?}.lock",
        std::process::id(),
        std::thread::current().id()
    ));
    let result = run_and_read(b, &lock);
    let _ = std::fs::remove_file(&lock);
    result
}

fn run_and_read(b: &Block, lock: &std::path::Path) -> Result<(GetInfo, Vec<u8>), CaptureError> {
    for c in &b.commands {
        let out = Command::new("sh")
            .arg("-c")
            .arg(c)
            .env("XTABLES_LOCKFILE", lock)
            .output()
            .map_err(|err| CaptureError::Spawn {
                command: c.clone(),
                err,
            })?;
        if !out.status.success() {
            return Err(CaptureError::Command {
                command: c.clone(),
                status: out.status.code(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
    }
    let s = Scratch::here().map_err(CaptureError::Namespace)?;
    let kernel = |op, errno| CaptureError::Kernel {
        op,
        table: b.table.clone(),
        errno,
    };
    let info = s
        .get_info(b.family, &b.table)
        .map_err(|e| kernel("GET_INFO", e))?;
    let entries = s
        .get_entries(b.family, &b.table)
        .map_err(|e| kernel("GET_ENTRIES", e))?;
    Ok((info, entries))
}

/// The captures file: a header, then per block the commands, the GET_INFO fields and the
/// entries in hex.
pub fn render(captured: &[(Block, GetInfo, Vec<u8>)]) -> String {
    let list = |v: &[u32]| {
        v.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut out = String::from(
        "# Golden tables: generated by translator/examples/capture.rs from testdata/commands.txt.\n\
         # Each block: the commands, run with the real iptables-legacy/ip6tables-legacy in a fresh\n\
         # network namespace, then the table read back from the kernel: GET_INFO and GET_ENTRIES (hex).\n",
    );
    for (b, info, blob) in captured {
        let fam = match b.family {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        };
        out += &format!("\n@ {fam} {}\n", b.table);
        for c in &b.commands {
            out += &format!("$ {c}\n");
        }
        out += &format!(
            "info valid_hooks={} hook_entry={} underflow={} num_entries={}\n",
            info.valid_hooks,
            list(&info.hook_entry),
            list(&info.underflow),
            info.num_entries
        );
        let hex: String = blob.iter().map(|x| format!("{x:02x}")).collect();
        out += &format!("entries {hex}\n");
    }
    out
}
