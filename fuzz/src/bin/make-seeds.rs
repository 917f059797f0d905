//! Writes the seed corpus of every fuzz target to fuzz/seeds/TARGET/ (replacing what is
//! there), from the project's own encoders: `cargo run --manifest-path fuzz/Cargo.toml --bin
//! make-seeds`.

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("seeds");
    for (name, _) in havms_fuzz::TARGETS {
        let dir = root.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let seeds = havms_fuzz::seeds::for_target(name);
        for (file, bytes) in &seeds {
            std::fs::write(dir.join(file), bytes)?;
        }
        println!("{name}: {} seeds in {}", seeds.len(), dir.display());
    }
    Ok(())
}
