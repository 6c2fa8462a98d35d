//! Link options that only the build script can set for every way of building.
//! Set here rather than in `.cargo/config.toml`, which a `RUSTFLAGS` variable
//! would override. Both apply to the static musl build, what the container
//! image ships and the benchmarks measure.
//!
//! - Packed relative relocations. The static build is a static PIE: at start
//!   it relocates itself from a table of its own. `DT_RELR` (musl 1.2.4+, GNU
//!   ld 2.38+, lld 15+) shrinks that table from about 400 KiB to 5 KiB, and
//!   the table is read, so mapped, by every process: about 0.3 MiB less
//!   resident memory per sidecar, with address-space randomization kept.
//! - `hot-text.ld`: the functions a sidecar runs, placed together at the
//!   start of the code. The kernel maps code in windows of 64 KiB around each
//!   page that runs (fault-around), so code that runs spread over the whole
//!   6 MB text makes most of it resident. The script only orders sections
//!   (`INSERT BEFORE .text` keeps the linker's default layout); names that no
//!   longer exist match nothing. `scripts/hot-text` regenerates it from what
//!   a real run executes; `SIDECAR_LINK_MAP=FILE` makes the link write the map
//!   that script reads.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=hot-text.ld");
    println!("cargo::rerun-if-env-changed=SIDECAR_LINK_MAP");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "musl" {
        println!("cargo::rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
        // -Xlinker, not -Wl,: a path may hold commas, which -Wl, splits on.
        let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
        for arg in ["-Xlinker", "-T", "-Xlinker", &format!("{dir}/hot-text.ld")] {
            println!("cargo::rustc-link-arg-bins={arg}");
        }
        if let Ok(map) = std::env::var("SIDECAR_LINK_MAP") {
            println!("cargo::rustc-link-arg-bins=-Xlinker");
            println!("cargo::rustc-link-arg-bins=-Map={map}");
        }
    }
}
