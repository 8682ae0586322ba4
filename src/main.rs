//! The `talos-dr` binary: parse → tracing → tokio runtime → command → exit code.

#![allow(clippy::print_stderr)]

mod cli;
mod commands;
mod printer;
mod term;

use std::process::ExitCode;

use clap::Parser;
use talos_dr::Exit;

use crate::cli::{Cli, ColorChoice};

fn main() -> ExitCode {
    let cli = Cli::parse();
    #[cfg(feature = "demo")]
    if let crate::cli::Command::Sim { args } = &cli.command {
        return sim(args);
    }
    setup_color(cli.global.color);
    setup_tracing(cli.global.verbose, cli.global.quiet);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(Exit::Failed.code());
        }
    };
    let result = runtime.block_on(async {
        tokio::select! {
            r = commands::run(cli) => r,
            _ = tokio::signal::ctrl_c() => Ok(Exit::Interrupted),
        }
    });
    match result {
        Ok(exit) => {
            if exit == Exit::Interrupted {
                eprintln!("interrupted");
            }
            ExitCode::from(exit.code())
        }
        Err(err) => {
            let (exit, hints) = talos_dr::error::classify(&err);
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            for hint in hints {
                eprintln!("hint: {hint}");
            }
            ExitCode::from(exit.code())
        }
    }
}

#[cfg(feature = "demo")]
fn sim(args: &[String]) -> ExitCode {
    let (tool, rest) = args
        .split_first()
        .map_or(("", &[][..]), |(t, r)| (t.as_str(), r));
    let code = match tool {
        "talosctl" => talos_dr::sim::talosctl::main(
            rest,
            &mut std::io::stdout().lock(),
            &mut std::io::stderr().lock(),
        ),
        "kubectl" => talos_dr::sim::kubectl::main(
            rest,
            &mut std::io::stdout().lock(),
            &mut std::io::stderr().lock(),
        ),
        other => {
            eprintln!("simulator: unknown tool {other:?}");
            2
        }
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn setup_color(choice: ColorChoice) {
    let enabled = match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => {
            std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                && console::Term::stderr().features().colors_supported()
        }
    };
    console::set_colors_enabled(enabled);
    console::set_colors_enabled_stderr(enabled);
}

fn setup_tracing(verbose: u8, quiet: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (_, 0) => "warn",
        (_, 1) => "info",
        (_, 2) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("talos_dr={default},{default}"))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
