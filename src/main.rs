//! The standalone `ferrocorn` binary (`cargo build --release`): it starts
//! its own interpreter, the one of the active virtualenv. The wheel's
//! `ferrocorn` command enters the same main from Python (src/entry.rs).

fn main() {
    std::process::exit(ferrocorn::binary_main());
}
