//! `regulator`: the regulator action engine's command line.

mod cli;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc rather than the system allocator: the sequencer's serial path allocates and frees
/// for every decision (states, records, Cedar requests), and glibc's malloc took about 40% of
/// its thread's time in a batch profile (`docs/ordering.md`, "Where the time goes").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    cli::Cli::parse().run()
}
