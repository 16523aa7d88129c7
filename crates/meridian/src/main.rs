//! `meridian`: every role of the system, the all-in-one dev cluster, and the admin commands.

mod check;
mod cli;
mod config;
mod dev;
mod roles;
mod status;
mod telemetry;

use clap::Parser;

fn main() -> std::process::ExitCode {
    // A --config file's settings join the command line before clap reads it.
    let args = match config::with_file(std::env::args_os().collect()) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let cli = cli::Cli::parse_from(args);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let _telemetry = telemetry::init(cli.command.is_server())?;
        cli.run().await
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
