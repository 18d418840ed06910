//! Writes the fuzz target's seed inputs (valid tables, `kernel::fuzz::seeds`) into a corpus
//! directory: `cargo run --example fuzz_seeds -- DIR`.

fn main() -> std::io::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .ok_or_else(|| std::io::Error::other("usage: fuzz_seeds DIR"))?;
    std::fs::create_dir_all(&dir)?;
    for (i, s) in translator::kernel::fuzz::seeds().iter().enumerate() {
        std::fs::write(format!("{dir}/seed-{i:02}"), s)?;
    }
    Ok(())
}
