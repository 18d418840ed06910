//! Keeping the datapath's programs attached at TCX ingress and egress of every interface of
//! the namespace, without links: an attachment belongs to the interface and outlives the
//! daemon, so a namespace is never left unfiltered when a bpfipt process dies.
//!
//! An older bpfipt program found at a hook (from a daemon that was replaced, or an earlier
//! load) is swapped out atomically with `BPF_F_REPLACE`; programs of other owners are left
//! alone. The store's anchor program on `lo` is not part of the datapath and is never touched.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use crate::netlink::Link;
use crate::store::ANCHOR_PROG;
use crate::sys;

/// The programs to attach. `ingress` is `None` when no interface needs it (`apply`: INPUT
/// has nothing to classify): ours are then removed from the ingress hooks.
pub struct Programs<'a> {
    pub ingress: Option<BorrowedFd<'a>>,
    pub egress: BorrowedFd<'a>,
}

/// What is attached where, as last synced.
#[derive(Debug, Default)]
pub struct Attacher {
    pub attached: BTreeMap<u32, String>,
}

/// A hook where attaching failed.
#[derive(Debug)]
pub struct AttachError {
    pub ifindex: u32,
    pub name: String,
    pub hook: &'static str,
    pub error: io::Error,
}

fn prog_id(fd: BorrowedFd<'_>) -> io::Result<u32> {
    sys::prog_id(&fd)
}

/// Makes sure `prog` is attached at `attach_type` of `ifindex`, replacing an older bpfipt
/// program with the same role (`role` is the program name prefix).
pub fn ensure(ifindex: u32, attach_type: u32, prog: BorrowedFd<'_>, role: &str) -> io::Result<()> {
    let want = prog_id(prog)?;
    let mut old = None;
    for id in sys::tcx_query(ifindex, attach_type)? {
        if id == want {
            return Ok(());
        }
        let Ok(fd) = sys::prog_fd_by_id(id) else {
            continue;
        };
        let (name, _) = sys::prog_info(&fd)?;
        if name.starts_with(role) && name != ANCHOR_PROG {
            old = Some(fd);
        }
    }
    sys::tcx_attach(ifindex, attach_type, &prog.as_fd(), old.as_ref())
}

/// Removes every bpfipt program with `role` from a hook (used when the datapath is replaced
/// by the kernel's ip_tables, and by `bpfipt datapath detach`).
pub fn remove(ifindex: u32, attach_type: u32, role: &str) -> io::Result<usize> {
    let mut n = 0;
    for id in sys::tcx_query(ifindex, attach_type)? {
        let Ok(fd) = sys::prog_fd_by_id(id) else {
            continue;
        };
        let (name, _) = sys::prog_info(&fd)?;
        if name.starts_with(role) && name != ANCHOR_PROG {
            sys::tcx_detach(ifindex, attach_type, &fd)?;
            n += 1;
        }
    }
    Ok(n)
}

impl Attacher {
    /// Attaches the programs to every link (and removes an ingress program not wanted);
    /// returns the hooks that failed (an interface that vanished meanwhile is not an
    /// error).
    pub fn sync(
        &mut self,
        links: &[Link],
        progs: &Programs<'_>,
        ingress_role: &str,
        egress_role: &str,
    ) -> Vec<AttachError> {
        let mut errors = Vec::new();
        let mut now = BTreeMap::new();
        for l in links {
            let mut ok = true;
            for (hook, ty, fd, role) in [
                ("ingress", sys::BPF_TCX_INGRESS, progs.ingress, ingress_role),
                (
                    "egress",
                    sys::BPF_TCX_EGRESS,
                    Some(progs.egress),
                    egress_role,
                ),
            ] {
                let r = match fd {
                    Some(fd) => ensure(l.ifindex, ty, fd, role),
                    None => remove(l.ifindex, ty, role).map(|_| ()),
                };
                if let Err(e) = r {
                    if e.raw_os_error() == Some(libc::ENODEV) {
                        ok = false;
                        continue;
                    }
                    ok = false;
                    errors.push(AttachError {
                        ifindex: l.ifindex,
                        name: l.name.clone(),
                        hook,
                        error: e,
                    });
                }
            }
            if ok {
                now.insert(l.ifindex, l.name.clone());
            }
        }
        self.attached = now;
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass_prog(name: &str) -> std::os::fd::OwnedFd {
        // r0 = TCX_NEXT; exit
        let insns = [0xb7u64 | ((-1i32 as u32 as u64) << 32), 0x95];
        sys::prog_load(sys::BPF_PROG_TYPE_SCHED_CLS, &insns, name).unwrap()
    }

    #[test]
    fn ensure_attaches_once_and_replaces_older_bpfipt_programs() {
        sys::in_new_netns(|| {
            let lo = sys::loopback_ifindex();
            let other = pass_prog("someone_else");
            sys::tcx_attach(lo, sys::BPF_TCX_EGRESS, &other, None).unwrap();
            let a = pass_prog("bpfipt_egress");
            ensure(lo, sys::BPF_TCX_EGRESS, a.as_fd(), "bpfipt_egress").unwrap();
            ensure(lo, sys::BPF_TCX_EGRESS, a.as_fd(), "bpfipt_egress").unwrap();
            let ids = sys::tcx_query(lo, sys::BPF_TCX_EGRESS).unwrap();
            assert_eq!(
                ids,
                vec![sys::prog_id(&other).unwrap(), sys::prog_id(&a).unwrap()]
            );
            let b = pass_prog("bpfipt_egress");
            ensure(lo, sys::BPF_TCX_EGRESS, b.as_fd(), "bpfipt_egress").unwrap();
            let ids = sys::tcx_query(lo, sys::BPF_TCX_EGRESS).unwrap();
            assert_eq!(
                ids,
                vec![sys::prog_id(&other).unwrap(), sys::prog_id(&b).unwrap()]
            );
            assert_eq!(remove(lo, sys::BPF_TCX_EGRESS, "bpfipt_egress").unwrap(), 1);
            assert_eq!(
                sys::tcx_query(lo, sys::BPF_TCX_EGRESS).unwrap(),
                vec![sys::prog_id(&other).unwrap()]
            );
        });
    }
}
