//! bpfipt: the command-line tool (status of the namespace's daemon and datapath, control).

use std::process::ExitCode;

const USAGE: &str = "usage: bpfipt status | bpfipt daemon stop | bpfipt kernel-dump {-4|-6} TABLE \
| bpfipt conntrack -L|-C|-D|-F|--settings|--set ... | bpfipt xdp [off|generic|native]";

/// Writes the kernel's own table (GET_INFO then the entries) of the current namespace as hex,
/// for capturing golden data and debugging: `ipt_getinfo` on the first line, entries after.
fn kernel_dump(fam: &str, table: &str) -> ExitCode {
    let f = if fam == "-6" {
        translator::abi::Family::V6
    } else {
        translator::abi::Family::V4
    };
    let k = match translator::oracle::Scratch::here() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("bpfipt: raw socket: {e}");
            return ExitCode::from(1);
        }
    };
    let info = k.get_info(f, table);
    let entries = k.get_entries(f, table);
    match (info, entries) {
        (Ok(i), Ok(e)) => {
            println!("{}", hex(&i.emit()));
            println!("{}", hex(&e));
            ExitCode::SUCCESS
        }
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("bpfipt: {}", std::io::Error::from_raw_os_error(e));
            ExitCode::from(1)
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    if let ["kernel-dump", fam, table] = args.as_slice() {
        return kernel_dump(fam, table);
    }
    if let ["conntrack", rest @ ..] = args.as_slice() {
        return ExitCode::from(translator::conntrack::cli(rest) as u8);
    }
    let xdp;
    let cmd = match args.as_slice() {
        ["status"] => "status",
        ["daemon", "stop"] => "stop",
        ["xdp"] => "xdp",
        ["xdp", mode] => {
            xdp = format!("xdp {mode}");
            xdp.as_str()
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match translator::daemon::control(cmd) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e)
            if e.kind() == std::io::ErrorKind::ConnectionRefused
                || e.kind() == std::io::ErrorKind::NotFound =>
        {
            if cmd == "stop" {
                return ExitCode::SUCCESS;
            }
            eprintln!("bpfipt: no bpfiptd runs in this network namespace (it starts with the first iptables command under libbpfipt.so)");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("bpfipt: {e}");
            ExitCode::from(1)
        }
    }
}
