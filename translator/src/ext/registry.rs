//! Every xtables extension the kernel registers for ip_tables and ip6_tables: one row per
//! `struct xt_match`/`struct xt_target` (name, revision, family), with what
//! `xt_check_match`/`xt_check_target` of net/netfilter/x_tables.c enforce before the
//! extension's own checkentry runs, and what `xt_data_to_user` copies back.
//!
//! Facts from the kernel sources (net/netfilter/xt_*.c, net/ipv{4,6}/netfilter/ip*t_*.c), sizes
//! from the uapi structs on x86_64; the set of names and revisions is the running kernel's
//! (/proc/net/ip{,6}_tables_{matches,targets} and GET_REVISION, checked by tests). Not built
//! there: CLUSTERIP (removed in 6.3), LED, ipvs.

use super::{addr, conntrack, log, meta, multiport, nat, reject, tcpudp};
use crate::abi::{Family, XtObj, EXTENSION_MAXNAMELEN, XT_HDR};
use crate::check::{Errno, ExtCtx};

/// Match or target: the kernel keeps them in separate lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Match,
    Target,
}

/// The family an extension registers for (`NFPROTO_*`): one family, or every family
/// (`NFPROTO_UNSPEC`), which the lookup searches second.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NfProto {
    Ipv4,
    Ipv6,
    Unspec,
}

impl NfProto {
    fn of(f: Family) -> NfProto {
        match f {
            Family::V4 => NfProto::Ipv4,
            Family::V6 => NfProto::Ipv6,
        }
    }

    /// Whether a table of family `f` can use the extension.
    pub fn serves(self, f: Family) -> bool {
        self == NfProto::Unspec || self == NfProto::of(f)
    }
}

/// An extension's own checkentry, natively: on the payload the generic checks let through.
pub type CheckFn = fn(&ExtCtx<'_>, &[u8]) -> Result<(), Errno>;

/// A checkentry modeled only in part: None where the kernel must be asked.
pub type PartialCheckFn = fn(&ExtCtx<'_>, &[u8]) -> Option<Result<(), Errno>>;

/// What bpfipt knows about an extension's `checkentry`.
#[derive(Clone, Copy)]
pub enum Checkentry {
    /// The kernel has none: the generic checks decide.
    None,
    /// The kernel has one that bpfipt does not model: the kernel must be asked.
    Unmodeled,
    /// Modeled here, with the kernel's errnos.
    Native(CheckFn),
    /// Modeled where the answer does not depend on what user space cannot see.
    Partial(PartialCheckFn),
}

/// One registered extension (`struct xt_match` / `struct xt_target`).
#[derive(Clone, Copy)]
pub struct ExtInfo {
    pub name: &'static str,
    pub revision: u8,
    pub family: NfProto,
    pub kind: Kind,
    /// `matchsize`/`targetsize`: the payload must be `XT_ALIGN(size)` bytes. No ip_tables
    /// extension uses the variable size (-1) that ebtables' `among` has.
    pub size: usize,
    /// `usersize`: 0 when the whole payload is the user's; otherwise the bytes from here on are
    /// kernel-private and read back as zeroes.
    pub usersize: usize,
    /// Only valid in this table.
    pub table: Option<&'static str>,
    /// Only valid from these hooks (bit per `NF_INET_*`); 0 for all.
    pub hooks: u32,
    /// Only valid with `-p` this protocol, not inverted; 0 for any.
    pub proto: u16,
    pub checkentry: Checkentry,
}

impl ExtInfo {
    /// The payload bytes `xt_data_to_user` copies back; the rest up to `XT_ALIGN(size)` reads
    /// as zeroes.
    pub fn user_visible(&self) -> usize {
        if self.usersize != 0 {
            self.usersize
        } else {
            self.size
        }
    }
}

impl std::fmt::Debug for ExtInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} {}.{} ({:?})",
            self.kind, self.name, self.revision, self.family
        )
    }
}

const PRE: u32 = 1 << 0;
const IN: u32 = 1 << 1;
const FWD: u32 = 1 << 2;
const OUT: u32 = 1 << 3;
const POST: u32 = 1 << 4;

const ICMP: u16 = 1;
const TCP: u16 = 6;
const UDP: u16 = 17;
const DCCP: u16 = 33;
const ESP: u16 = 50;
const AH: u16 = 51;
const ICMPV6: u16 = 58;
const COMP: u16 = 108;
const SCTP: u16 = 132;
const MH: u16 = 135;
const UDPLITE: u16 = 136;

const V4: NfProto = NfProto::Ipv4;
const V6: NfProto = NfProto::Ipv6;
const ANY: NfProto = NfProto::Unspec;

const fn ext(
    kind: Kind,
    name: &'static str,
    revision: u8,
    family: NfProto,
    size: usize,
) -> ExtInfo {
    ExtInfo {
        name,
        revision,
        family,
        kind,
        size,
        usersize: 0,
        table: None,
        hooks: 0,
        proto: 0,
        checkentry: Checkentry::Unmodeled,
    }
}
const fn m(name: &'static str, revision: u8, family: NfProto, size: usize) -> ExtInfo {
    ext(Kind::Match, name, revision, family, size)
}
const fn t(name: &'static str, revision: u8, family: NfProto, size: usize) -> ExtInfo {
    ext(Kind::Target, name, revision, family, size)
}

impl ExtInfo {
    const fn usersize(mut self, n: usize) -> Self {
        self.usersize = n;
        self
    }
    const fn table(mut self, t: &'static str) -> Self {
        self.table = Some(t);
        self
    }
    const fn hooks(mut self, h: u32) -> Self {
        self.hooks = h;
        self
    }
    const fn proto(mut self, p: u16) -> Self {
        self.proto = p;
        self
    }
    const fn no_checkentry(mut self) -> Self {
        self.checkentry = Checkentry::None;
        self
    }
    const fn native(mut self, f: CheckFn) -> Self {
        self.checkentry = Checkentry::Native(f);
        self
    }
    const fn partial(mut self, f: PartialCheckFn) -> Self {
        self.checkentry = Checkentry::Partial(f);
        self
    }
}

/// The registrations, as `xt_register_match(es)`/`xt_register_target(s)` make them. Each row
/// names the payload struct and the kernel file.
#[rustfmt::skip]
pub static EXTENSIONS: &[ExtInfo] = &[
    // int; ip_tables.c
    t("", 0, V4, 4).no_checkentry(),
    // XT_FUNCTION_MAXNAMELEN; ip_tables.c
    t("ERROR", 0, V4, 30).no_checkentry(),
    // struct ipt_icmp; ip_tables.c
    m("icmp", 0, V4, 4).proto(ICMP).native(tcpudp::check_icmp),
    // struct ipt_ECN_info; ipt_ECN.c
    t("ECN", 0, V4, 3).table("mangle"),
    // struct ipt_reject_info; ipt_REJECT.c
    t("REJECT", 0, V4, 4).table("filter").hooks(IN | FWD | OUT).native(reject::check_v4),
    // struct xt_synproxy_info; ipt_SYNPROXY.c
    t("SYNPROXY", 0, V4, 4).hooks(IN | FWD),
    // struct ipt_ah; ipt_ah.c
    m("ah", 0, V4, 12).proto(AH),
    // struct xt_rpfilter_info; ipt_rpfilter.c
    m("rpfilter", 0, V4, 1).hooks(PRE),
    // int; ip6_tables.c
    t("", 0, V6, 4).no_checkentry(),
    // XT_FUNCTION_MAXNAMELEN; ip6_tables.c
    t("ERROR", 0, V6, 30).no_checkentry(),
    // struct ip6t_icmp; ip6_tables.c
    m("icmp6", 0, V6, 4).proto(ICMPV6).native(tcpudp::check_icmp),
    // struct ip6t_npt_tginfo; ip6t_NPT.c
    t("SNPT", 0, V6, 36).usersize(34).table("mangle").hooks(IN | POST),
    // struct ip6t_npt_tginfo; ip6t_NPT.c
    t("DNPT", 0, V6, 36).usersize(34).table("mangle").hooks(PRE | OUT),
    // struct ip6t_reject_info; ip6t_REJECT.c
    t("REJECT", 0, V6, 4).table("filter").hooks(IN | FWD | OUT).native(reject::check_v6),
    // struct xt_synproxy_info; ip6t_SYNPROXY.c
    t("SYNPROXY", 0, V6, 4).hooks(IN | FWD),
    // struct ip6t_ah; ip6t_ah.c
    m("ah", 0, V6, 16),
    // int; ip6t_eui64.c
    m("eui64", 0, V6, 4).hooks(PRE | IN | FWD).no_checkentry(),
    // struct ip6t_frag; ip6t_frag.c
    m("frag", 0, V6, 16),
    // struct ip6t_opts; ip6t_hbh.c
    m("hbh", 0, V6, 40),
    // struct ip6t_opts; ip6t_hbh.c
    m("dst", 0, V6, 40),
    // struct ip6t_ipv6header_info; ip6t_ipv6header.c
    m("ipv6header", 0, V6, 3),
    // struct ip6t_mh; ip6t_mh.c
    m("mh", 0, V6, 3).proto(MH),
    // struct xt_rpfilter_info; ip6t_rpfilter.c
    m("rpfilter", 0, V6, 1).hooks(PRE),
    // struct ip6t_rt; ip6t_rt.c
    m("rt", 0, V6, 280),
    // struct ip6t_srh; ip6t_srh.c
    m("srh", 0, V6, 10),
    // struct ip6t_srh1; ip6t_srh.c
    m("srh", 1, V6, 108),
    // struct xt_audit_info; xt_AUDIT.c
    t("AUDIT", 0, ANY, 1),
    // struct xt_CHECKSUM_info; xt_CHECKSUM.c
    t("CHECKSUM", 0, V4, 1).table("mangle"),
    // struct xt_CHECKSUM_info; xt_CHECKSUM.c
    t("CHECKSUM", 0, V6, 1).table("mangle"),
    // struct xt_classify_target_info; xt_CLASSIFY.c
    t("CLASSIFY", 0, V4, 4).hooks(OUT | FWD | POST).no_checkentry(),
    // struct xt_classify_target_info; xt_CLASSIFY.c
    t("CLASSIFY", 0, V6, 4).hooks(OUT | FWD | POST).no_checkentry(),
    // struct xt_connsecmark_target_info; xt_CONNSECMARK.c
    t("CONNSECMARK", 0, V4, 1),
    // struct xt_connsecmark_target_info; xt_CONNSECMARK.c
    t("CONNSECMARK", 0, V6, 1),
    // 0; xt_CT.c
    t("NOTRACK", 0, V4, 0).table("raw").no_checkentry(),
    // struct xt_ct_target_info; xt_CT.c
    t("CT", 0, V4, 40).usersize(32).table("raw"),
    // struct xt_ct_target_info_v1; xt_CT.c
    t("CT", 1, V4, 72).usersize(32).table("raw"),
    // struct xt_ct_target_info_v1; xt_CT.c
    t("CT", 2, V4, 72).usersize(32).table("raw"),
    // 0; xt_CT.c
    t("NOTRACK", 0, V6, 0).table("raw").no_checkentry(),
    // struct xt_ct_target_info; xt_CT.c
    t("CT", 0, V6, 40).usersize(32).table("raw"),
    // struct xt_ct_target_info_v1; xt_CT.c
    t("CT", 1, V6, 72).usersize(32).table("raw"),
    // struct xt_ct_target_info_v1; xt_CT.c
    t("CT", 2, V6, 72).usersize(32).table("raw"),
    // struct xt_DSCP_info; xt_DSCP.c
    t("DSCP", 0, V4, 1).table("mangle"),
    // struct xt_DSCP_info; xt_DSCP.c
    t("DSCP", 0, V6, 1).table("mangle"),
    // struct xt_tos_target_info; xt_DSCP.c
    t("TOS", 1, V4, 2).table("mangle").no_checkentry(),
    // struct xt_tos_target_info; xt_DSCP.c
    t("TOS", 1, V6, 2).table("mangle").no_checkentry(),
    // struct ipt_TTL_info; xt_HL.c
    t("TTL", 0, V4, 2).table("mangle"),
    // struct ip6t_HL_info; xt_HL.c
    t("HL", 0, V6, 2).table("mangle"),
    // struct xt_hmark_info; xt_HMARK.c
    t("HMARK", 0, V4, 60),
    // struct xt_hmark_info; xt_HMARK.c
    t("HMARK", 0, V6, 60),
    // struct idletimer_tg_info; xt_IDLETIMER.c
    t("IDLETIMER", 0, V4, 40).usersize(32),
    // struct idletimer_tg_info_v1; xt_IDLETIMER.c
    t("IDLETIMER", 1, V4, 48).usersize(40),
    // struct idletimer_tg_info; xt_IDLETIMER.c
    t("IDLETIMER", 0, V6, 40).usersize(32),
    // struct idletimer_tg_info_v1; xt_IDLETIMER.c
    t("IDLETIMER", 1, V6, 48).usersize(40),
    // struct xt_log_info; xt_LOG.c
    t("LOG", 0, V4, 32).native(log::check),
    // struct xt_log_info; xt_LOG.c
    t("LOG", 0, V6, 32).native(log::check),
    // struct nf_nat_range; xt_MASQUERADE.c
    t("MASQUERADE", 0, V6, 40).table("nat").hooks(POST).native(nat::check_range_no_map_ips),
    // struct nf_nat_ipv4_multi_range_compat; xt_MASQUERADE.c
    t("MASQUERADE", 0, V4, 20).table("nat").hooks(POST).native(nat::check_compat),
    // struct nf_nat_range; xt_NETMAP.c
    t("NETMAP", 0, V6, 40).table("nat").hooks(PRE | POST | OUT | IN),
    // struct nf_nat_ipv4_multi_range_compat; xt_NETMAP.c
    t("NETMAP", 0, V4, 20).table("nat").hooks(PRE | POST | OUT | IN),
    // struct xt_nflog_info; xt_NFLOG.c
    t("NFLOG", 0, V4, 76),
    // struct xt_nflog_info; xt_NFLOG.c
    t("NFLOG", 0, V6, 76),
    // struct xt_NFQ_info; xt_NFQUEUE.c
    t("NFQUEUE", 0, ANY, 2).no_checkentry(),
    // struct xt_NFQ_info_v1; xt_NFQUEUE.c
    t("NFQUEUE", 1, ANY, 4),
    // struct xt_NFQ_info_v2; xt_NFQUEUE.c
    t("NFQUEUE", 2, ANY, 6),
    // struct xt_NFQ_info_v3; xt_NFQUEUE.c
    t("NFQUEUE", 3, ANY, 6),
    // struct xt_rateest_target_info; xt_RATEEST.c
    t("RATEEST", 0, V4, 32).usersize(24),
    // struct xt_rateest_target_info; xt_RATEEST.c
    t("RATEEST", 0, V6, 32).usersize(24),
    // struct nf_nat_range; xt_REDIRECT.c
    t("REDIRECT", 0, V6, 40).table("nat").hooks(PRE | OUT).native(nat::check_range_no_map_ips),
    // struct nf_nat_ipv4_multi_range_compat; xt_REDIRECT.c
    t("REDIRECT", 0, V4, 20).table("nat").hooks(PRE | OUT).native(nat::check_compat),
    // struct xt_secmark_target_info; xt_SECMARK.c
    t("SECMARK", 0, V4, 264),
    // struct xt_secmark_target_info_v1; xt_SECMARK.c
    t("SECMARK", 1, V4, 264).usersize(260),
    // struct xt_secmark_target_info; xt_SECMARK.c
    t("SECMARK", 0, V6, 264),
    // struct xt_secmark_target_info_v1; xt_SECMARK.c
    t("SECMARK", 1, V6, 264).usersize(260),
    // struct xt_tcpmss_info; xt_TCPMSS.c
    t("TCPMSS", 0, V4, 2).proto(TCP),
    // struct xt_tcpmss_info; xt_TCPMSS.c
    t("TCPMSS", 0, V6, 2).proto(TCP),
    // struct xt_tcpoptstrip_target_info; xt_TCPOPTSTRIP.c
    t("TCPOPTSTRIP", 0, V4, 32).table("mangle").proto(TCP).no_checkentry(),
    // struct xt_tcpoptstrip_target_info; xt_TCPOPTSTRIP.c
    t("TCPOPTSTRIP", 0, V6, 32).table("mangle").proto(TCP).no_checkentry(),
    // struct xt_tee_tginfo; xt_TEE.c
    t("TEE", 1, V4, 40).usersize(32),
    // struct xt_tee_tginfo; xt_TEE.c
    t("TEE", 1, V6, 40).usersize(32),
    // struct xt_tproxy_target_info; xt_TPROXY.c
    t("TPROXY", 0, V4, 16).table("mangle").hooks(PRE),
    // struct xt_tproxy_target_info_v1; xt_TPROXY.c
    t("TPROXY", 1, V4, 28).table("mangle").hooks(PRE),
    // struct xt_tproxy_target_info_v1; xt_TPROXY.c
    t("TPROXY", 1, V6, 28).table("mangle").hooks(PRE),
    // 0; xt_TRACE.c
    t("TRACE", 0, V4, 0).table("raw"),
    // 0; xt_TRACE.c
    t("TRACE", 0, V6, 0).table("raw"),
    // struct xt_addrtype_info; xt_addrtype.c
    m("addrtype", 0, V4, 12).no_checkentry(),
    // struct xt_addrtype_info_v1; xt_addrtype.c
    m("addrtype", 1, V4, 8).native(addr::check_addrtype_v1),
    // struct xt_addrtype_info_v1; xt_addrtype.c
    m("addrtype", 1, V6, 8).native(addr::check_addrtype_v1),
    // struct xt_bpf_info; xt_bpf.c
    m("bpf", 0, ANY, 528).usersize(520),
    // struct xt_bpf_info_v1; xt_bpf.c
    m("bpf", 1, ANY, 528).usersize(520),
    // struct xt_cgroup_info_v0; xt_cgroup.c
    m("cgroup", 0, ANY, 8).hooks(OUT | POST | IN),
    // struct xt_cgroup_info_v1; xt_cgroup.c
    m("cgroup", 1, ANY, 4112).usersize(4104).hooks(OUT | POST | IN),
    // struct xt_cgroup_info_v2; xt_cgroup.c
    m("cgroup", 2, ANY, 528).usersize(520).hooks(OUT | POST | IN),
    // struct xt_cluster_match_info; xt_cluster.c
    m("cluster", 0, V4, 16),
    // struct xt_cluster_match_info; xt_cluster.c
    m("cluster", 0, V6, 16),
    // struct xt_comment_info; xt_comment.c
    m("comment", 0, ANY, 256).no_checkentry(),
    // struct xt_connbytes_info; xt_connbytes.c
    m("connbytes", 0, ANY, 24),
    // struct xt_connlabel_mtinfo; xt_connlabel.c
    m("connlabel", 0, ANY, 4),
    // struct xt_connlimit_info; xt_connlimit.c
    m("connlimit", 1, V4, 32).usersize(24),
    // struct xt_connlimit_info; xt_connlimit.c
    m("connlimit", 1, V6, 32).usersize(24),
    // struct xt_connmark_tginfo1; xt_connmark.c
    t("CONNMARK", 1, V4, 16),
    // struct xt_connmark_tginfo2; xt_connmark.c
    t("CONNMARK", 2, V4, 16),
    // struct xt_connmark_tginfo1; xt_connmark.c
    t("CONNMARK", 1, V6, 16),
    // struct xt_connmark_tginfo2; xt_connmark.c
    t("CONNMARK", 2, V6, 16),
    // struct xt_connmark_mtinfo1; xt_connmark.c
    m("connmark", 1, ANY, 12),
    // struct xt_conntrack_mtinfo1; xt_conntrack.c
    m("conntrack", 1, ANY, 152).native(conntrack::check),
    // struct xt_conntrack_mtinfo2; xt_conntrack.c
    m("conntrack", 2, ANY, 156).native(conntrack::check),
    // struct xt_conntrack_mtinfo3; xt_conntrack.c
    m("conntrack", 3, ANY, 164).native(conntrack::check),
    // struct xt_cpu_info; xt_cpu.c
    m("cpu", 0, ANY, 8),
    // struct xt_dccp_info; xt_dccp.c
    m("dccp", 0, V4, 16).proto(DCCP),
    // struct xt_dccp_info; xt_dccp.c
    m("dccp", 0, V6, 16).proto(DCCP),
    // struct xt_devgroup_info; xt_devgroup.c
    m("devgroup", 0, ANY, 20),
    // struct xt_dscp_info; xt_dscp.c
    m("dscp", 0, V4, 2),
    // struct xt_dscp_info; xt_dscp.c
    m("dscp", 0, V6, 2),
    // struct xt_tos_match_info; xt_dscp.c
    m("tos", 1, V4, 3).no_checkentry(),
    // struct xt_tos_match_info; xt_dscp.c
    m("tos", 1, V6, 3).no_checkentry(),
    // struct xt_ecn_info; xt_ecn.c
    m("ecn", 0, V4, 4),
    // struct xt_ecn_info; xt_ecn.c
    m("ecn", 0, V6, 4),
    // struct xt_esp; xt_esp.c
    m("esp", 0, V4, 12).proto(ESP),
    // struct xt_esp; xt_esp.c
    m("esp", 0, V6, 12).proto(ESP),
    // struct xt_hashlimit_mtinfo1; xt_hashlimit.c
    m("hashlimit", 1, V4, 56).usersize(48),
    // struct xt_hashlimit_mtinfo2; xt_hashlimit.c
    m("hashlimit", 2, V4, 304).usersize(296),
    // struct xt_hashlimit_mtinfo3; xt_hashlimit.c
    m("hashlimit", 3, V4, 312).usersize(304),
    // struct xt_hashlimit_mtinfo1; xt_hashlimit.c
    m("hashlimit", 1, V6, 56).usersize(48),
    // struct xt_hashlimit_mtinfo2; xt_hashlimit.c
    m("hashlimit", 2, V6, 304).usersize(296),
    // struct xt_hashlimit_mtinfo3; xt_hashlimit.c
    m("hashlimit", 3, V6, 312).usersize(304),
    // struct xt_helper_info; xt_helper.c
    m("helper", 0, ANY, 36),
    // struct ipt_ttl_info; xt_hl.c. 6.1's ttl_mt_check refused a mode above 3; the reference
    // kernel accepts any mode (checked by the kernel tests).
    m("ttl", 0, V4, 2).no_checkentry(),
    // struct ip6t_hl_info; xt_hl.c; as ttl.
    m("hl", 0, V6, 2).no_checkentry(),
    // struct xt_ipcomp; xt_ipcomp.c
    m("ipcomp", 0, V4, 12).proto(COMP),
    // struct xt_ipcomp; xt_ipcomp.c
    m("ipcomp", 0, V6, 12).proto(COMP),
    // struct xt_iprange_mtinfo; xt_iprange.c
    m("iprange", 1, V4, 68).no_checkentry(),
    // struct xt_iprange_mtinfo; xt_iprange.c
    m("iprange", 1, V6, 68).no_checkentry(),
    // XT_ALIGN(struct xt_l2tp_info); xt_l2tp.c
    m("l2tp", 0, V4, 16).hooks(PRE | IN | OUT | FWD),
    // XT_ALIGN(struct xt_l2tp_info); xt_l2tp.c
    m("l2tp", 0, V6, 16).hooks(PRE | IN | OUT | FWD),
    // struct xt_length_info; xt_length.c
    m("length", 0, V4, 6).no_checkentry(),
    // struct xt_length_info; xt_length.c
    m("length", 0, V6, 6).no_checkentry(),
    // struct xt_rateinfo; xt_limit.c
    m("limit", 0, ANY, 40).usersize(8).partial(meta::check_limit),
    // struct xt_mac_info; xt_mac.c
    m("mac", 0, V4, 12).hooks(PRE | IN | FWD).no_checkentry(),
    // struct xt_mac_info; xt_mac.c
    m("mac", 0, V6, 12).hooks(PRE | IN | FWD).no_checkentry(),
    // struct xt_mark_tginfo2; xt_mark.c
    t("MARK", 2, V4, 8).no_checkentry(),
    // struct xt_mark_tginfo2; xt_mark.c
    t("MARK", 2, V6, 8).no_checkentry(),
    // struct xt_mark_mtinfo1; xt_mark.c
    m("mark", 1, ANY, 12).no_checkentry(),
    // struct xt_multiport_v1; xt_multiport.c
    m("multiport", 1, V4, 48).native(multiport::check),
    // struct xt_multiport_v1; xt_multiport.c
    m("multiport", 1, V6, 48).native(multiport::check),
    // struct nf_nat_ipv4_multi_range_compat; xt_nat.c
    t("SNAT", 0, V4, 20).table("nat").hooks(POST | IN).native(nat::check_nat_v0),
    // struct nf_nat_ipv4_multi_range_compat; xt_nat.c
    t("DNAT", 0, V4, 20).table("nat").hooks(PRE | OUT).native(nat::check_nat_v0),
    // struct nf_nat_range; xt_nat.c
    t("SNAT", 1, ANY, 40).table("nat").hooks(POST | IN).native(nat::check_nat),
    // struct nf_nat_range; xt_nat.c
    t("DNAT", 1, ANY, 40).table("nat").hooks(PRE | OUT).native(nat::check_nat),
    // struct nf_nat_range2; xt_nat.c
    t("SNAT", 2, ANY, 44).table("nat").hooks(POST | IN).native(nat::check_nat),
    // struct nf_nat_range2; xt_nat.c
    t("DNAT", 2, ANY, 44).table("nat").hooks(PRE | OUT).native(nat::check_nat),
    // struct xt_nfacct_match_info; xt_nfacct.c
    m("nfacct", 0, ANY, 40).usersize(32),
    // struct xt_nfacct_match_info_v1; xt_nfacct.c
    m("nfacct", 1, ANY, 40).usersize(32),
    // struct xt_osf_info; xt_osf.c
    m("osf", 0, V4, 48).hooks(IN | PRE | FWD).proto(TCP).no_checkentry(),
    // struct xt_owner_match_info; xt_owner.c
    m("owner", 1, V4, 20).hooks(OUT | POST),
    // struct xt_owner_match_info; xt_owner.c
    m("owner", 1, V6, 20).hooks(OUT | POST),
    // struct xt_physdev_info; xt_physdev.c
    m("physdev", 0, V4, 66),
    // struct xt_physdev_info; xt_physdev.c
    m("physdev", 0, V6, 66),
    // struct xt_pkttype_info; xt_pkttype.c
    m("pkttype", 0, ANY, 8).no_checkentry(),
    // struct xt_policy_info; xt_policy.c
    m("policy", 0, V4, 308),
    // struct xt_policy_info; xt_policy.c
    m("policy", 0, V6, 308),
    // struct xt_quota_info; xt_quota.c
    m("quota", 0, ANY, 24).usersize(16),
    // struct xt_rateest_match_info; xt_rateest.c
    m("rateest", 0, ANY, 72).usersize(56),
    // struct xt_realm_info; xt_realm.c
    m("realm", 0, V4, 12).hooks(POST | FWD | OUT | IN).no_checkentry(),
    // struct xt_recent_mtinfo; xt_recent.c
    m("recent", 0, V4, 212),
    // struct xt_recent_mtinfo; xt_recent.c
    m("recent", 0, V6, 212),
    // struct xt_recent_mtinfo_v1; xt_recent.c
    m("recent", 1, V4, 228),
    // struct xt_recent_mtinfo_v1; xt_recent.c
    m("recent", 1, V6, 228),
    // struct xt_sctp_info; xt_sctp.c
    m("sctp", 0, V4, 292).proto(SCTP),
    // struct xt_sctp_info; xt_sctp.c
    m("sctp", 0, V6, 292).proto(SCTP),
    // struct xt_set_info_match_v0; xt_set.c
    m("set", 0, V4, 32),
    // struct xt_set_info_match_v1; xt_set.c
    m("set", 1, V4, 4),
    // struct xt_set_info_match_v1; xt_set.c
    m("set", 1, V6, 4),
    // struct xt_set_info_match_v1; xt_set.c
    m("set", 2, V4, 4),
    // struct xt_set_info_match_v1; xt_set.c
    m("set", 2, V6, 4),
    // struct xt_set_info_match_v3; xt_set.c
    m("set", 3, V4, 48),
    // struct xt_set_info_match_v3; xt_set.c
    m("set", 3, V6, 48),
    // struct xt_set_info_match_v4; xt_set.c
    m("set", 4, V4, 48),
    // struct xt_set_info_match_v4; xt_set.c
    m("set", 4, V6, 48),
    // struct xt_set_info_target_v0; xt_set.c
    t("SET", 0, V4, 64),
    // struct xt_set_info_target_v1; xt_set.c
    t("SET", 1, V4, 8),
    // struct xt_set_info_target_v1; xt_set.c
    t("SET", 1, V6, 8),
    // struct xt_set_info_target_v2; xt_set.c
    t("SET", 2, V4, 16),
    // struct xt_set_info_target_v2; xt_set.c
    t("SET", 2, V6, 16),
    // struct xt_set_info_target_v3; xt_set.c
    t("SET", 3, V4, 20),
    // struct xt_set_info_target_v3; xt_set.c
    t("SET", 3, V6, 20),
    // 0; xt_socket.c
    m("socket", 0, V4, 0).hooks(PRE | IN).no_checkentry(),
    // struct xt_socket_mtinfo1; xt_socket.c
    m("socket", 1, V4, 1).hooks(PRE | IN),
    // struct xt_socket_mtinfo1; xt_socket.c
    m("socket", 1, V6, 1).hooks(PRE | IN),
    // struct xt_socket_mtinfo1; xt_socket.c
    m("socket", 2, V4, 1).hooks(PRE | IN),
    // struct xt_socket_mtinfo1; xt_socket.c
    m("socket", 2, V6, 1).hooks(PRE | IN),
    // struct xt_socket_mtinfo1; xt_socket.c
    m("socket", 3, V4, 1).hooks(PRE | IN),
    // struct xt_socket_mtinfo1; xt_socket.c
    m("socket", 3, V6, 1).hooks(PRE | IN),
    // struct xt_state_info; xt_state.c
    m("state", 0, ANY, 4).native(conntrack::check),
    // struct xt_statistic_info; xt_statistic.c
    m("statistic", 0, ANY, 24).usersize(16).native(meta::check_statistic),
    // struct xt_string_info; xt_string.c
    m("string", 1, ANY, 160).usersize(152),
    // struct xt_tcpmss_match_info; xt_tcpmss.c
    m("tcpmss", 0, V4, 6).proto(TCP).no_checkentry(),
    // struct xt_tcpmss_match_info; xt_tcpmss.c
    m("tcpmss", 0, V6, 6).proto(TCP).no_checkentry(),
    // struct xt_tcp; xt_tcpudp.c
    m("tcp", 0, V4, 12).proto(TCP).native(tcpudp::check_tcp),
    // struct xt_tcp; xt_tcpudp.c
    m("tcp", 0, V6, 12).proto(TCP).native(tcpudp::check_tcp),
    // struct xt_udp; xt_tcpudp.c
    m("udp", 0, V4, 10).proto(UDP).native(tcpudp::check_udp),
    // struct xt_udp; xt_tcpudp.c
    m("udp", 0, V6, 10).proto(UDP).native(tcpudp::check_udp),
    // struct xt_udp; xt_tcpudp.c
    m("udplite", 0, V4, 10).proto(UDPLITE).native(tcpudp::check_udp),
    // struct xt_udp; xt_tcpudp.c
    m("udplite", 0, V6, 10).proto(UDPLITE).native(tcpudp::check_udp),
    // struct xt_time_info; xt_time.c
    m("time", 0, ANY, 24),
    // struct xt_u32; xt_u32.c
    m("u32", 0, ANY, 1984),
];

/// `XT_INV_PROTO`: `! -p` in `ipt_ip.invflags`/`ip6t_ip6.invflags`.
pub const XT_INV_PROTO: u8 = 0x40;

fn find(kind: Kind, nf: NfProto, name: &[u8], revision: u8) -> (Option<&'static ExtInfo>, bool) {
    // Every rule of every commit looks its extensions up: index the table once.
    type Index = crate::layout::FxMap<(Kind, NfProto, &'static [u8]), Vec<&'static ExtInfo>>;
    static INDEX: std::sync::OnceLock<Index> = std::sync::OnceLock::new();
    let index = INDEX.get_or_init(|| {
        let mut m = Index::default();
        for e in EXTENSIONS {
            m.entry((e.kind, e.family, e.name.as_bytes()))
                .or_default()
                .push(e);
        }
        m
    });
    match index.get(&(kind, nf, name)) {
        None => (None, false),
        Some(revs) => (revs.iter().copied().find(|e| e.revision == revision), true),
    }
}

/// `xt_find_match`/`xt_find_target` for a header's 29-byte name field: EINVAL when the name has
/// no NUL, else the family's list then the `NFPROTO_UNSPEC` list. The fallback returns the
/// second search's error, so a name registered only for the family with another revision
/// is ENOENT, and EPROTOTYPE needs the other revision in the `NFPROTO_UNSPEC` list.
pub fn lookup(
    family: Family,
    kind: Kind,
    name_field: &[u8],
    revision: u8,
) -> Result<&'static ExtInfo, Errno> {
    let field = &name_field[..name_field.len().min(EXTENSION_MAXNAMELEN)];
    let Some(nul) = field.iter().position(|&c| c == 0) else {
        return Err(libc::EINVAL);
    };
    let name = &field[..nul];
    if let (Some(e), _) = find(kind, NfProto::of(family), name, revision) {
        return Ok(e);
    }
    match find(kind, NfProto::Unspec, name, revision) {
        (Some(e), _) => Ok(e),
        (None, true) => Err(libc::EPROTOTYPE),
        (None, false) => Err(libc::ENOENT),
    }
}

/// Looks up the extension of a match or target header.
pub fn lookup_obj(family: Family, kind: Kind, obj: &XtObj<'_>) -> Result<&'static ExtInfo, Errno> {
    let field = obj.bytes.get(2..2 + EXTENSION_MAXNAMELEN).unwrap_or(&[]);
    if field.len() < EXTENSION_MAXNAMELEN {
        return Err(libc::EINVAL);
    }
    lookup(family, kind, field, obj.revision())
}

/// The part of `xt_check_match`/`xt_check_target` before the checkentry: size, table, hooks,
/// protocol, each EINVAL, in this order.
pub fn generic_check(info: &ExtInfo, ctx: &ExtCtx<'_>, obj_size: usize) -> Result<(), Errno> {
    if crate::abi::xt_align(info.size) != obj_size.saturating_sub(XT_HDR) {
        return Err(libc::EINVAL);
    }
    if let Some(t) = info.table {
        if t.as_bytes() != ctx.table {
            return Err(libc::EINVAL);
        }
    }
    if info.hooks != 0 && ctx.hook_mask & !info.hooks != 0 {
        return Err(libc::EINVAL);
    }
    if info.proto != 0
        && (info.proto != ctx.entry.proto() || ctx.entry.ip_invflags() & XT_INV_PROTO != 0)
    {
        return Err(libc::EINVAL);
    }
    Ok(())
}

/// The extension a table of `family` would use for `name` and `revision` (no errno): for
/// `usersize` and for the typed values.
pub fn find_for(family: Family, kind: Kind, name: &[u8], revision: u8) -> Option<&'static ExtInfo> {
    find(kind, NfProto::of(family), name, revision)
        .0
        .or_else(|| find(kind, NfProto::Unspec, name, revision).0)
}
