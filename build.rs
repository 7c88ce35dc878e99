//! Two builds of one crate:
//!
//! - the standalone binary (`cargo build`): pyo3 links it against the shared
//!   libpython it was configured with (PYO3_PYTHON), and this script records
//!   that library's directory as an rpath so that `ferrocorn` starts without
//!   LD_LIBRARY_PATH;
//! - the wheel's extension module (maturin, which sets
//!   PYO3_BUILD_EXTENSION_MODULE): no libpython at all, the symbols come
//!   from the interpreter that loads it, so it also runs on a Python built
//!   without a shared libpython. No rpath either.
fn main() {
    pyo3_build_config::use_pyo3_cfgs();
    let cfg = pyo3_build_config::get();
    println!("cargo:rerun-if-env-changed=PYO3_BUILD_EXTENSION_MODULE");
    let extension = std::env::var_os("PYO3_BUILD_EXTENSION_MODULE").is_some();
    if !extension {
        if let Some(dir) = cfg.lib_dir() {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        }
    }
    println!(
        "cargo:rustc-env=FERROCORN_PYTHON_VERSION={}.{}",
        cfg.version().major,
        cfg.version().minor
    );
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
}
