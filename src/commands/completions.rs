//! `completions`: shell completion scripts.

use clap::CommandFactory;
use talos_dr::Exit;

use crate::cli::Cli;

pub fn run(shell: clap_complete::Shell) -> anyhow::Result<Exit> {
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "talos-dr", &mut buf);
    crate::printer::Printer::new(crate::cli::OutputFormat::Text)
        .text(&String::from_utf8_lossy(&buf));
    Ok(Exit::Success)
}
