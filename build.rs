//! Embeds an rpath to libtorch's `lib/` folder so the `tune` binary, tests and benches run
//! without `LD_LIBRARY_PATH`, and links the C++ runtime and zlib that ALE (`atari` feature) needs.
use std::path::PathBuf;

fn main() {
    // The published `ale-sys` builds ALE (C++) as a static library but does not link the C++
    // runtime or zlib (ALE's state serialisation), so the final link needs them from us.
    if std::env::var_os("CARGO_FEATURE_ATARI").is_some() {
        println!("cargo:rustc-link-lib=stdc++");
        println!("cargo:rustc-link-lib=z");
    }
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let Ok(libtorch) = std::env::var("LIBTORCH") else {
        return;
    };
    let lib = PathBuf::from(libtorch).join("lib");
    let lib = lib.canonicalize().unwrap_or(lib);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
}
