//! `tugboat image ...` without tugboat: the same `ImageCommand`s, for trying the store out.
//!
//! cargo run -p tug-image --bin tug-image -- --data-dir /tmp/d pull 127.0.0.1:5000/app:1 --insecure-registry 127.0.0.1:5000

use std::path::PathBuf;

use clap::Parser;
use tug_image::cli::{run, ImageCommand};

#[derive(Parser)]
struct Cli {
    /// Where the store lives (images/ and rootfs/ under it).
    #[arg(long, default_value = "/var/lib/tug")]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: ImageCommand,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli.command, &cli.data_dir).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tug-image: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
