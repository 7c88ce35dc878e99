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
    embed_compat();
}

/// gunicorn_compat/: every `.py` file under it, built into the crate as
/// `COMPAT_SOURCES` (path relative to gunicorn_compat/, source), so that the
/// binary and the wheel serve the compatibility packages without any file
/// on disk (src/python/mod.rs hands them to boot.py's importer).
fn embed_compat() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("gunicorn_compat");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    collect_py(&root, &mut files);
    files.sort();
    let mut out = String::from(
        "/// The compatibility packages' sources: (path under gunicorn_compat/, text).\n\
         pub const COMPAT_SOURCES: &[(&str, &str)] = &[\n",
    );
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
        let rel = f
            .strip_prefix(&root)
            .expect("collected under gunicorn_compat/")
            .to_string_lossy()
            .replace('\\', "/");
        out.push_str(&format!(
            "    ({rel:?}, include_str!({:?})),\n",
            f.display().to_string()
        ));
    }
    out.push_str("];\n");
    let dest = std::path::Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("compat_sources.rs");
    std::fs::write(&dest, out).expect("writing compat_sources.rs into OUT_DIR");
}

fn collect_py(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            println!("cargo:rerun-if-changed={}", p.display());
            collect_py(&p, out);
        } else if p.extension().is_some_and(|x| x == "py") {
            out.push(p);
        }
    }
}
