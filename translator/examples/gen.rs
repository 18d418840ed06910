//! Prints an iptables-restore file of ClassBench-like rules (`translator::gen`), for the
//! benchmarks in compat-tests/bench:
//!
//!   cargo run --release -p bpfipt-translator --example gen -- \
//!       [--seed 1] [--rules 5000] [--chain FORWARD] [--policy DROP] [--no-flow]
//!
//! The filter table gets `--rules` random rules in `--chain` (never matching traffic from
//! 192.0.2.0/24 to 198.51.100.0/24), then, unless `--no-flow`, the rule that accepts the
//! measured flow (UDP 192.0.2.1 -> 198.51.100.1 port 9); the chain's policy is `--policy`,
//! the other built-in chains' ACCEPT. The same seed gives the same file.

use translator::gen;

fn usage(msg: &str) -> ! {
    eprintln!("gen: {msg}\nusage: gen [--seed S] [--rules N] [--chain C] [--policy P] [--no-flow]");
    std::process::exit(2)
}

fn main() {
    let (mut seed, mut n, mut flow) = (1u64, 5000usize, true);
    let (mut chain, mut policy) = ("FORWARD".to_string(), "DROP".to_string());
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--no-flow" {
            flow = false;
            continue;
        }
        let v = args
            .next()
            .unwrap_or_else(|| usage(&format!("{a} needs a value")));
        let bad = format!("bad {a} {v}");
        match a.as_str() {
            "--seed" => seed = v.parse().unwrap_or_else(|_| usage(&bad)),
            "--rules" => n = v.parse().unwrap_or_else(|_| usage(&bad)),
            "--chain" => chain = v.clone(),
            "--policy" => policy = v.clone(),
            _ => usage(&format!("unknown argument {a}")),
        }
    }
    let mut rules = gen::classbench(n, seed);
    if flow {
        rules.push(gen::flow_rule());
    }
    print!("{}", gen::restore_file(&chain, &rules, &policy));
}
