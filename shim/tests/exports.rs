//! The shim must interpose exactly the functions it means to: a new exported symbol would
//! silently replace libc's in every iptables process. Compares `nm -D --defined-only` of the
//! built library with the list below (STYLE.md: rustls-ffi's symbol snapshot).

use std::path::PathBuf;
use std::process::Command;

const EXPECTED: &[&str] = &[
    "close",
    "fopen",
    "fopen64",
    "getsockopt",
    "setsockopt",
    "socket",
];

fn library() -> Option<PathBuf> {
    // target/<profile>/deps/exports-<hash> -> target/<profile>/libbpfipt.so
    let exe = std::env::current_exe().ok()?;
    let profile_dir = exe.parent()?.parent()?;
    let lib = profile_dir.join("libbpfipt.so");
    if !lib.exists() {
        // `cargo test` does not build a cdylib-only crate for its integration tests.
        let release = profile_dir.file_name()? == "release";
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "-p", "libbpfipt"]);
        if release {
            cmd.arg("--release");
        }
        if !cmd.status().ok()?.success() {
            return None;
        }
    }
    lib.exists().then_some(lib)
}

#[test]
fn exported_symbols_are_exactly_the_interposed_ones() {
    let Some(lib) = library() else {
        panic!("libbpfipt.so not built next to the test binary; run `cargo build` first");
    };
    let out = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&lib)
        .output()
        .expect("nm (binutils) is installed");
    assert!(
        out.status.success(),
        "nm failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut syms: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_string))
        .collect();
    syms.sort();
    assert_eq!(syms, EXPECTED, "exported symbols of {}", lib.display());
}
