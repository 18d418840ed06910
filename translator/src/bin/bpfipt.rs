//! bpfipt: the command-line tool (status of the namespace's daemon and datapath, control).

use std::process::ExitCode;

const USAGE: &str = "usage: bpfipt status | bpfipt daemon stop";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cmd = match args.as_slice() {
        ["status"] => "status",
        ["daemon", "stop"] => "stop",
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
