//! Captures tables from the real kernel after real iptables commands, for golden-byte tests
//! (see `translator::ext::capture`). Needs root.
//!
//!     cargo run --example capture -- translator/src/ext/testdata/commands.txt \
//!         > translator/src/ext/testdata/captures.txt

use translator::ext::capture;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1) else {
        eprintln!("usage: capture COMMANDS-FILE > CAPTURES-FILE");
        std::process::exit(2);
    };
    let fail = |e: &dyn std::fmt::Display| -> ! {
        eprintln!("{path}: {e}");
        std::process::exit(1)
    };
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| fail(&e));
    let blocks = capture::parse_commands(&text).unwrap_or_else(|e| fail(&e));
    let mut captured = Vec::new();
    for b in blocks {
        let (info, entries) = capture::capture(&b).unwrap_or_else(|e| fail(&e));
        captured.push((b, info, entries));
    }
    print!("{}", capture::render(&captured));
}
