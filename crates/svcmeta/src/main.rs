//! The `svcmeta` binary: parse arguments, load configuration, dispatch, map exit codes.
//!
//! Exit codes: 0 success, 1 a rejected request or a failure (reason on stderr), 2 a usage
//! error (clap's own code for bad arguments).

/// mimalloc: markedly less time in malloc/free and less fragmentation than glibc's allocator
/// for the registry's many small strings. It is built without transparent huge pages
/// (`libmimalloc-sys`'s `no_thp` feature, in Cargo.toml): with them, memory mimalloc handed
/// back to the kernel came back as a fresh 2 MiB page zeroed whole, which cost a bulk write
/// of 1M instances a quarter of its time (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod backend;
mod cli;
mod cmd;
mod config;

use std::process::ExitCode;

use clap::Parser;

use crate::backend::{Backend, CommandError};
use crate::cli::{Cli, Command};
use crate::config::{Config, Overrides};

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SVCMETA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: a log file or a pipe gets plain text.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn run(cli: Cli) -> Result<(), CommandError> {
    let mut overrides = Overrides {
        data_dir: cli.data_dir.clone(),
        store: cli.store.clone(),
        redis_url: cli.redis_url.clone(),
        key_prefix: cli.key_prefix.clone(),
        ..Overrides::default()
    };
    if let Command::Serve(serve) = &cli.command {
        overrides.listen = serve.listen.clone();
    }
    let config = Config::load(cli.config.as_deref(), &overrides)?;
    match &cli.command {
        Command::Serve(_) => {
            init_tracing();
            cmd::serve::run(&config)
        }
        Command::Gen {
            instances,
            seed,
            out,
        } => cmd::gen(*instances, *seed, out.as_deref()),
        Command::Bench(args) => cmd::bench::run(args),
        Command::BenchRedis(args) => cmd::bench::scale_out::run(args),
        command => {
            let creates = matches!(command, Command::Import(_) | Command::Register { .. });
            let backend = Backend::open(cli.server.as_deref(), &config, creates)?;
            match command {
                Command::Import(args) => cmd::import::run(&backend, args, &config.catalog.limits),
                Command::Register { file } => cmd::register(&backend, file),
                Command::Deregister { id } => cmd::deregister(&backend, id),
                Command::Query(args) => cmd::query::run(&backend, args),
                Command::Watch(args) => cmd::watch::run(&backend, args),
                Command::Services { output } => cmd::services(&backend, *output),
                Command::Stats { output } => cmd::stats(&backend, *output),
                Command::Serve(_)
                | Command::Gen { .. }
                | Command::Bench(_)
                | Command::BenchRedis(_) => Ok(()),
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CommandError::Rejected(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(1)
        }
        Err(CommandError::Failed(error)) => {
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    }
}
