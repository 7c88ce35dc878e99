//! Config files: `PATH` / `file:PATH` (Python, executed by the embedded
//! interpreter like gunicorn's `load_config_from_file`), `python:MODULE`
//! and ferrocorn's own `.toml` files.

use std::path::{Path, PathBuf};

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyList, PyString};

use super::value::py_repr_str;

/// What a config file yields: its `(name, value)` pairs, in definition order.
pub enum FileOutcome<'py> {
    Loaded {
        /// The file that was read (for `python:` configs: the module's
        /// `__file__`, when it has one).
        path: Option<PathBuf>,
        items: Vec<(String, Bound<'py, PyAny>)>,
        /// TOML: unknown keys are errors rather than ignored.
        strict: bool,
    },
    /// The file raised while executing: gunicorn printed
    /// "Failed to read config file" and the traceback, and exits 1.
    Failed,
}

/// Puts `dir` first on `sys.path` unless it is already there, as gunicorn's
/// `Application.chdir()` does before it reads the config file.
pub fn add_sys_path(py: Python<'_>, dir: &Path) -> PyResult<()> {
    let path = py.import("sys")?.getattr("path")?;
    let dir = dir.to_string_lossy();
    if !path.contains(dir.as_ref())? {
        path.call_method1("insert", (0, dir.as_ref()))?;
    }
    Ok(())
}

/// Loads `location` (the `-c` value).
pub fn load<'py>(py: Python<'py>, location: &str) -> Result<FileOutcome<'py>, String> {
    if let Some(module) = location.strip_prefix("python:") {
        return load_module(py, module);
    }
    let filename = location.strip_prefix("file:").unwrap_or(location);
    let path = Path::new(filename);
    if !path.exists() {
        return Err(format!("{} doesn't exist", py_repr_str(filename)));
    }
    if path.extension().is_some_and(|e| e == "toml") {
        return load_toml(py, path);
    }
    load_python_file(py, filename)
}

fn vars<'py>(module: &Bound<'py, PyAny>) -> PyResult<Vec<(String, Bound<'py, PyAny>)>> {
    let d = module.getattr("__dict__")?;
    let d = d.cast::<PyDict>()?;
    Ok(d.iter()
        .filter_map(|(k, v)| k.extract::<String>().ok().map(|k| (k, v)))
        .collect())
}

fn load_module<'py>(py: Python<'py>, name: &str) -> Result<FileOutcome<'py>, String> {
    let module = py
        .import("importlib")
        .and_then(|m| m.call_method1("import_module", (name,)))
        .map_err(|e| format!("cannot import config module {}: {e}", py_repr_str(name)))?;
    let path = module
        .getattr("__file__")
        .ok()
        .and_then(|f| f.extract::<String>().ok())
        .map(PathBuf::from);
    let items = vars(&module).map_err(|e| e.to_string())?;
    Ok(FileOutcome::Loaded {
        path,
        items,
        strict: false,
    })
}

/// gunicorn's `get_config_from_filename`: the file becomes module
/// `__config__` (with `__file__`, `__name__`, ... set by importlib).
fn load_python_file<'py>(py: Python<'py>, filename: &str) -> Result<FileOutcome<'py>, String> {
    let is_py = matches!(
        Path::new(filename).extension().and_then(|e| e.to_str()),
        Some("py" | "pyc")
    );
    if !is_py {
        // gunicorn's util.warn()
        eprintln!("!!!");
        eprintln!("!!! WARNING: configuration file should have a valid Python extension.");
        eprintln!("!!!\n");
    }
    let run = || -> PyResult<Bound<'py, PyAny>> {
        let util = py.import("importlib.util")?;
        let spec = if is_py {
            util.call_method1("spec_from_file_location", ("__config__", filename))?
        } else {
            let loader = py
                .import("importlib.machinery")?
                .getattr("SourceFileLoader")?
                .call1(("__config__", filename))?;
            let kwargs = PyDict::new(py);
            kwargs.set_item("loader", loader)?;
            util.getattr("spec_from_file_location")?
                .call(("__config__", filename), Some(&kwargs))?
        };
        let module = util.call_method1("module_from_spec", (&spec,))?;
        py.import("sys")?
            .getattr("modules")?
            .set_item("__config__", &module)?;
        spec.getattr("loader")?
            .call_method1("exec_module", (&module,))?;
        Ok(module)
    };
    match run() {
        Ok(module) => {
            let items = vars(&module).map_err(|e| e.to_string())?;
            let path = std::path::absolute(filename).unwrap_or_else(|_| PathBuf::from(filename));
            Ok(FileOutcome::Loaded {
                path: Some(path),
                items,
                strict: false,
            })
        }
        Err(e) => {
            eprintln!("Failed to read config file: {filename}");
            e.print(py);
            Ok(FileOutcome::Failed)
        }
    }
}

/// A TOML file: top-level keys are setting names, values are converted to
/// the Python objects a `gunicorn.conf.py` would hold.
fn load_toml<'py>(py: Python<'py>, path: &Path) -> Result<FileOutcome<'py>, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let line = e.span().map(|s| {
            let upto = &text.as_bytes()[..s.start.min(text.len())];
            upto.iter().filter(|&&b| b == b'\n').count() + 1
        });
        let msg = e.message().replace('\n', " ");
        match line {
            Some(l) => format!("invalid TOML in {shown} (line {l}): {}", msg.trim()),
            None => format!("invalid TOML in {shown}: {}", msg.trim()),
        }
    })?;
    let mut items = Vec::new();
    for (k, v) in &table {
        let obj = toml_to_py(py, v).map_err(|e| e.to_string())?;
        items.push((k.clone(), obj));
    }
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    Ok(FileOutcome::Loaded {
        path: Some(path),
        items,
        strict: true,
    })
}

fn toml_to_py<'py>(py: Python<'py>, v: &toml::Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        toml::Value::String(s) => PyString::new(py, s).into_any(),
        toml::Value::Integer(i) => i.into_pyobject(py)?.into_any(),
        toml::Value::Float(f) => PyFloat::new(py, *f).into_any(),
        toml::Value::Boolean(b) => PyBool::new(py, *b).to_owned().into_any(),
        toml::Value::Datetime(d) => PyString::new(py, &d.to_string()).into_any(),
        toml::Value::Array(a) => {
            let list = PyList::empty(py);
            for x in a {
                list.append(toml_to_py(py, x)?)?;
            }
            list.into_any()
        }
        toml::Value::Table(t) => {
            let dict = PyDict::new(py);
            for (k, x) in t {
                dict.set_item(k, toml_to_py(py, x)?)?;
            }
            dict.into_any()
        }
    })
}
