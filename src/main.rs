//! The `cedar-pdp` binary: parse configuration, start logging, run the chosen command.

use std::process::ExitCode;

use clap::Parser;

use cedar_pdp::cli;

// Cedar's evaluator allocates heavily; under many concurrent streams glibc's allocator fragments and
// spends more time than the evaluation itself (see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use cedar_pdp::config::{Cli, Command};

fn main() -> ExitCode {
    let args = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let traces = match &args.command {
        Command::Serve(config) => Some(&config.traces),
        _ => None,
    };
    // Inside the runtime: the trace exporter's connection lives on it.
    let _log_guard = match runtime.block_on(async { cedar_pdp::telemetry::init(&args.log, traces) }) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match args.command {
        Command::Serve(config) => return runtime.block_on(cli::serve(config)),
        Command::Validate(args) => cli::validate(&args),
        Command::Check(args) => runtime.block_on(cli::check(&args)),
        Command::Test(args) => cli::test(&args),
        Command::Replay(args) => runtime.block_on(cli::replay(&args)),
        Command::Status(args) => runtime.block_on(cli::status(&args)),
        Command::Reload(args) => runtime.block_on(cli::reload(&args)),
        Command::Health(args) => runtime.block_on(cli::health(&args)),
        Command::Entities(args) => runtime.block_on(cli::entities(&args)),
        Command::Audit(args) => runtime.block_on(cli::audit(&args)),
    };
    cli::exit(result)
}
