//! Prints the diff of two binaries as JSON: `cargo run -p mcr-typemodel --example diff -- OLD NEW`.
fn main() {
    let a: Vec<_> = std::env::args_os().skip(1).collect();
    let load = |p: &std::ffi::OsString| mcr_typemodel::Program::load(std::path::Path::new(p)).expect("load");
    let d = mcr_typemodel::diff(&load(&a[0]), &load(&a[1]));
    println!("{}", serde_json::to_string_pretty(&d).unwrap_or_default());
}
