//! The `palisade` executable: parse arguments, run the command, exit with its code.

use clap::Parser;

fn main() {
    let cli = palisade::cli::Cli::parse();
    match palisade::cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
