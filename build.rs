//! Links the binary against the shared libpython that pyo3 was configured
//! with, and records its directory as an rpath so that `ferrocorn` starts
//! without LD_LIBRARY_PATH.
fn main() {
    pyo3_build_config::use_pyo3_cfgs();
    let cfg = pyo3_build_config::get();
    if let Some(dir) = cfg.lib_dir() {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    println!(
        "cargo:rustc-env=FERROCORN_PYTHON_VERSION={}.{}",
        cfg.version().major,
        cfg.version().minor
    );
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
}
