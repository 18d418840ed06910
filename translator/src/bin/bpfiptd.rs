//! bpfiptd: the daemon of one network namespace. Normally started by libbpfipt.so on demand
//! (`--spawned`); run in the foreground for the host namespace by systemd.

fn main() {
    let spawned = std::env::args().any(|a| a == "--spawned");
    std::process::exit(translator::daemon::main(spawned));
}
