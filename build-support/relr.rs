// Included by the build scripts of the crates with binaries (tug, tugboat, tugboat-monitor).
//
// Packed relative relocations (DT_RELR): a PIE binary's ~9,000 relative relocations become a
// few KB the loader applies in a loop, instead of 220 KB of RELA entries it reads one by
// one. Measured on `tug run`: binary 3.11 -> 2.89 MB, peak RSS 4216 -> 3888 KiB. It needs
// binutils >= 2.38 and glibc >= 2.36 (Debian 12, Ubuntu 22.10): probed by linking and
// running a C program with the flag, so older hosts build without it.

/// Whether `cc` links and the host runs a binary with packed relative relocations.
fn relr_supported() -> bool {
    use std::process::{Command, Stdio};
    let (Ok(target), Ok(host), Ok(out)) = (
        std::env::var("TARGET"),
        std::env::var("HOST"),
        std::env::var("OUT_DIR"),
    ) else {
        return false;
    };
    if target != host || !target.contains("linux") {
        return false;
    }
    let dir = std::path::Path::new(&out);
    let src = dir.join("relr_probe.c");
    let exe = dir.join("relr_probe");
    if std::fs::write(&src, "int main(void) { return 0; }\n").is_err() {
        return false;
    }
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let linked = Command::new(cc)
        .arg("-fPIE")
        .arg("-pie")
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .arg("-Wl,-z,pack-relative-relocs")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    linked && Command::new(&exe).status().is_ok_and(|s| s.success())
}

/// Links `bin` with packed relative relocations where the host supports them.
fn link_with_relr(bin: &str) {
    println!("cargo:rerun-if-changed=build.rs");
    // This file, from the crate that includes it (one or two levels below the workspace).
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let relr = std::path::Path::new(&manifest)
        .ancestors()
        .map(|d| d.join("build-support/relr.rs"))
        .find(|p| p.is_file());
    if let Some(relr) = relr {
        println!("cargo:rerun-if-changed={}", relr.display());
    }
    println!("cargo:rerun-if-env-changed=CC");
    if relr_supported() {
        println!("cargo:rustc-link-arg-bin={bin}=-Wl,-z,pack-relative-relocs");
    }
}
