//! INPUT's policy counter at the kernel's own LOCAL_IN hook, so that forwarded packets need
//! no ingress program at all when INPUT has nothing to classify.
//!
//! The TC ingress program sees every arriving packet and must look each destination up to
//! find the local ones (INPUT); for a forwarder that is a program run per packet for nothing.
//! When the INPUT chain is skipped (empty, policy ACCEPT) and the tracker is off, its only
//! work is to count INPUT's policy, and this program does that instead: a
//! BPF_PROG_TYPE_NETFILTER program at NF_INET_LOCAL_IN with ip_tables' filter priority, run
//! only for packets the kernel delivers locally, after defragmentation, as ipt_do_table
//! would be. The daemon then detaches the ingress program (`apply`). It counts only while
//! the config's `input_by_nf` is set, the active INPUT chain is skipped, and the kernel does
//! not enforce (fallback); with `input_by_nf` set, the TC and XDP programs leave that count
//! to it.
//!
//! aya 0.14 cannot load netfilter programs (nor parse their ELF section), so the program is
//! a few instructions built here, on the datapath's maps.

use std::mem::offset_of;
use std::os::fd::{AsRawFd, OwnedFd};

use crate::layout::{ChainRec, Config, CHAIN_INPUT, MAX_CHAINS};

const NFPROTO_IPV4: u32 = 2;
const NF_INET_LOCAL_IN: u32 = 1;
/// NF_IP_PRI_FILTER: where ip_tables' filter table sits.
const NF_IP_PRI_FILTER: i32 = 0;
const NF_ACCEPT: i32 = 1;

/// The hook as long as this lives (the link holds the program).
pub struct InputHook {
    _link: OwnedFd,
}

fn ins(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    code as u64
        | (dst as u64) << 8
        | (src as u64) << 12
        | (off as u16 as u64) << 16
        | (imm as u32 as u64) << 32
}

// eBPF opcodes used below.
const LDX_DW: u8 = 0x79;
const LDX_W: u8 = 0x61;
const LDX_B: u8 = 0x71;
const ST_W: u8 = 0x62;
const STX_W: u8 = 0x63;
const STX_DW: u8 = 0x7b;
const LD_IMM64: u8 = 0x18;
const MOV_REG: u8 = 0xbf;
const MOV_IMM: u8 = 0xb7;
const ADD_IMM: u8 = 0x07;
const ADD_REG: u8 = 0x0f;
const AND_IMM: u8 = 0x57;
const MUL_IMM: u8 = 0x27;
const JEQ_IMM: u8 = 0x15;
const JNE_IMM: u8 = 0x55;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;
const PSEUDO_MAP_FD: u8 = 1;
const MAP_LOOKUP_ELEM: i32 = 1;
const GET_SMP_PROCESSOR_ID: i32 = 8;

/// Instructions with forward jumps to the common exit, patched at the end.
struct Asm {
    code: Vec<u64>,
    to_out: Vec<usize>,
}

impl Asm {
    fn op(&mut self, code: u8, dst: u8, src: u8, off: i16, imm: i32) {
        self.code.push(ins(code, dst, src, off, imm));
    }
    fn goto_out_if(&mut self, code: u8, reg: u8, imm: i32) {
        self.to_out.push(self.code.len());
        self.op(code, reg, 0, 0, imm);
    }
    /// r0 = bpf_map_lookup_elem(map, fp - 4), out when NULL.
    fn lookup(&mut self, map: i32) {
        self.op(LD_IMM64, 1, PSEUDO_MAP_FD, 0, map);
        self.op(0, 0, 0, 0, 0);
        self.op(MOV_REG, 2, 10, 0, 0);
        self.op(ADD_IMM, 2, 0, 0, -4);
        self.op(CALL, 0, 0, 0, MAP_LOOKUP_ELEM);
        self.goto_out_if(JEQ_IMM, 0, 0);
    }
}

/// The program: `config`, `chains` and `counters` are the datapath's map fds, `stride` the
/// counter stripe of one CPU (`counter_stride`), `skb_len` where `struct sk_buff` keeps
/// `len` (from the kernel's BTF). The counting is `count_slot` of ebpf/lib/counters.h.
pub fn program(config: i32, chains: i32, counters: i32, stride: u32, skb_len: u32) -> Vec<u64> {
    let mut a = Asm {
        code: Vec::new(),
        to_out: Vec::new(),
    };
    // r6 = ctx->skb (struct bpf_nf_ctx { state; skb; }); r6 = skb->len: what ipt_do_table
    // counts, the datagram from its IP header.
    a.op(LDX_DW, 6, 1, 8, 0);
    a.op(LDX_W, 6, 6, skb_len as i16, 0);
    a.op(ST_W, 10, 0, -4, 0);
    a.lookup(config);
    a.op(LDX_W, 1, 0, offset_of!(Config, fallback) as i16, 0);
    a.goto_out_if(JNE_IMM, 1, 0);
    a.op(LDX_W, 1, 0, offset_of!(Config, input_by_nf) as i16, 0);
    a.goto_out_if(JEQ_IMM, 1, 0);
    // The active half's INPUT chain.
    a.op(LDX_W, 1, 0, offset_of!(Config, gen) as i16, 0);
    a.op(AND_IMM, 1, 0, 0, 1);
    a.op(MUL_IMM, 1, 0, 0, MAX_CHAINS as i32);
    a.op(ADD_IMM, 1, 0, 0, CHAIN_INPUT as i32);
    a.op(STX_W, 10, 1, -4, 0);
    a.lookup(chains);
    a.op(LDX_B, 1, 0, offset_of!(ChainRec, skip) as i16, 0);
    a.goto_out_if(JEQ_IMM, 1, 0);
    a.op(LDX_W, 7, 0, offset_of!(ChainRec, tail_slot) as i16, 0);
    // counters[cpu * stride + tail_slot]: packets += 1, bytes += len.
    a.op(CALL, 0, 0, 0, GET_SMP_PROCESSOR_ID);
    a.op(MUL_IMM, 0, 0, 0, stride as i32);
    a.op(ADD_REG, 0, 7, 0, 0);
    a.op(STX_W, 10, 0, -4, 0);
    a.lookup(counters);
    a.op(LDX_DW, 1, 0, 0, 0);
    a.op(ADD_IMM, 1, 0, 0, 1);
    a.op(STX_DW, 0, 1, 0, 0);
    a.op(LDX_DW, 1, 0, 8, 0);
    a.op(ADD_REG, 1, 6, 0, 0);
    a.op(STX_DW, 0, 1, 8, 0);
    let out = a.code.len();
    a.op(MOV_IMM, 0, 0, 0, NF_ACCEPT);
    a.op(EXIT, 0, 0, 0, 0);
    for i in a.to_out {
        let off = (out - i - 1) as u64;
        a.code[i] |= (off & 0xffff) << 16;
    }
    a.code
}

/// Loads the program on the datapath's maps and hooks it at LOCAL_IN in the caller's
/// network namespace.
pub fn attach(
    config: &OwnedFd,
    chains: &OwnedFd,
    counters: &OwnedFd,
    stride: u32,
) -> Result<InputHook, String> {
    let skb_len = crate::btf::kernel_member_offset("sk_buff", "len")?;
    let insns = program(
        config.as_raw_fd(),
        chains.as_raw_fd(),
        counters.as_raw_fd(),
        stride,
        skb_len,
    );
    let prog = crate::sys::prog_load_for(
        crate::sys::BPF_PROG_TYPE_NETFILTER,
        crate::sys::BPF_NETFILTER,
        &insns,
        "bpfipt_input_nf",
    )
    .map_err(|(e, log)| format!("loading the LOCAL_IN program: {e}\n{log}"))?;
    let link = crate::sys::netfilter_link(&prog, NFPROTO_IPV4, NF_INET_LOCAL_IN, NF_IP_PRI_FILTER)
        .map_err(|e| format!("hooking the LOCAL_IN program (BPF_LINK_CREATE): {e}"))?;
    Ok(InputHook { _link: link })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::Change;
    use crate::dataplane::{Dataplane, Limits};
    use std::net::UdpSocket;

    /// Sends `n` UDP datagrams of `len` payload bytes to 127.0.0.1 (LOCAL_IN via lo).
    fn send_local(n: usize, len: usize) {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..n {
            tx.send_to(&vec![0u8; len], rx.local_addr().unwrap())
                .unwrap();
        }
    }

    #[test]
    fn counts_a_skipped_input_policy_at_local_in() {
        crate::sys::in_new_netns(|| {
            let up = std::process::Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status()
                .unwrap();
            assert!(up.success());
            let limits = Limits {
                slots: 64,
                list_chunks: 64,
                addr_classes: 64,
                ifnames: 16,
                local_addrs: 16,
            };
            let dp = Dataplane::load(limits).unwrap();
            let input = |skip: u8| ChainRec {
                tail_slot: 5,
                policy: crate::layout::target::ACCEPT,
                skip,
                ..Default::default()
            };
            for half in 0..2 {
                dp.write(half, &[Change::Chain(CHAIN_INPUT, Some(input(1)))])
                    .unwrap();
            }
            // Not hooked yet, then hooked: 3 datagrams of 20 + 8 + 100 bytes.
            send_local(2, 100);
            assert_eq!(dp.counter(5).unwrap().packets, 0);
            let hook = dp.hook_input().unwrap();
            assert_eq!(dp.config().unwrap().input_by_nf, 1);
            send_local(3, 100);
            let c = dp.counter(5).unwrap();
            assert_eq!((c.packets, c.bytes), (3, 3 * 128));
            // A chain with rules is the TC program's to count; so is everything under
            // fallback.
            for half in 0..2 {
                dp.write(half, &[Change::Chain(CHAIN_INPUT, Some(input(0)))])
                    .unwrap();
            }
            send_local(1, 100);
            assert_eq!(dp.counter(5).unwrap().packets, 3);
            for half in 0..2 {
                dp.write(half, &[Change::Chain(CHAIN_INPUT, Some(input(1)))])
                    .unwrap();
            }
            dp.set_fallback(true).unwrap();
            send_local(1, 100);
            assert_eq!(dp.counter(5).unwrap().packets, 3);
            dp.set_fallback(false).unwrap();
            send_local(1, 10);
            let c = dp.counter(5).unwrap();
            assert_eq!((c.packets, c.bytes), (4, 3 * 128 + 38));
            // Gone with its value.
            drop(hook);
            send_local(1, 100);
            assert_eq!(dp.counter(5).unwrap().packets, 4);
        });
    }
}
