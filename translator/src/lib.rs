//! bpfipt: iptables rules from unmodified iptables binaries, enforced by eBPF.
//!
//! The path of a rule through this crate is its architecture:
//! `abi` (kernel structures) -> `check` (kernel-equivalent validation) -> `kernel` (the
//! emulated tables of a namespace) -> `store` (persistence in the namespace's own BPF maps);
//! `daemon` serves the shims; `oracle` is the kernel itself, for checks and tests.

pub mod abi;
pub mod apply;
pub mod attach;
pub mod btf;
pub mod check;
pub mod compile;
pub mod conntrack;
pub mod daemon;
pub mod dataplane;
pub mod enforce;
pub mod ext;
pub mod fallback;
pub mod gen;
pub mod ir;
pub mod kernel;
pub mod layout;
pub mod log;
pub mod netlink;
pub mod nfhook;
pub mod oracle;
pub mod store;
pub mod sys;
pub mod xdp;
