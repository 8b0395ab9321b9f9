//! Prints a binary's type model as JSON: `cargo run -p mcr-typemodel --example dump -- BIN`.
fn main() {
    let path = std::env::args_os().nth(1).expect("usage: dump BINARY");
    match mcr_typemodel::Program::load(std::path::Path::new(&path)) {
        Ok(p) => println!("{}", serde_json::to_string_pretty(&p).unwrap_or_default()),
        Err(e) => {
            eprintln!("dump: {e}");
            std::process::exit(2);
        }
    }
}
