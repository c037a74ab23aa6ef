//! The thin binary: parse, run, render, map errors to exit codes.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use clap::{CommandFactory, FromArgMatches};
use indicatif::{ProgressBar, ProgressStyle};
use pgkeep::cli::Cli;
use pgkeep::progress::Progress;

fn main() -> ExitCode {
    if let Some(code) = spool_hit() {
        return code;
    }
    // restore_command contract: PostgreSQL ends recovery on a status up to 125 ("not in the
    // archive"), so every failure of archive-get that is not "no such file", from a bad command
    // line to a panic, must exit 126 and stop recovery instead.
    // Built once: restore_command runs this binary once per segment, so start-up counts.
    let command = Cli::command();
    let mut archive_get = names_archive_get(&command, std::env::args_os().skip(1));
    if archive_get {
        fatal_panics();
    }
    let parsed = command.try_get_matches().and_then(|m| Ok((Cli::from_arg_matches(&m)?, m)));
    let (mut cli, matches) = match parsed {
        Ok(p) => p,
        Err(e) if archive_get && e.use_stderr() => {
            let _ = e.print();
            return ExitCode::from(pgkeep::archive::FATAL_EXIT);
        }
        Err(e) => e.exit(),
    };
    if archive_get && matches.subcommand_name() != Some("archive-get") {
        // The guess was wrong (e.g. a value spelt "archive-get"): back to the default hook.
        let _ = std::panic::take_hook();
        archive_get = false;
    }
    // `verify` drills a data directory only when --pgdata was typed, never from PGDATA alone.
    let typed = |m: &clap::ArgMatches| m.value_source("pgdata") == Some(clap::parser::ValueSource::CommandLine);
    cli.global.pgdata_on_command_line = typed(&matches) || matches.subcommand().is_some_and(|(_, m)| typed(m));
    let level = if cli.global.quiet {
        "error"
    } else {
        match cli.global.verbose {
            0 => "warn",
            1 => "info",
            _ => "debug",
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PGKEEP_LOG").unwrap_or_else(|_| filter(level).into()),
        )
        .init();
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            // One line: the library's messages already name the object and end with a hint.
            eprintln!("pgkeep: error: {e:#}");
            if archive_get {
                return ExitCode::from(pgkeep::archive::FATAL_EXIT);
            }
            ExitCode::from(e.downcast_ref::<pgkeep::Error>().map(pgkeep::Error::exit_code).unwrap_or(1))
        }
    }
}

/// restore_command served from the prefetch spool before anything else is set up (see
/// archive/fast_get.rs); None when the full path must run.
fn spool_hit() -> Option<ExitCode> {
    let call = pgkeep::archive::fast_get::FastGet::recognise(std::env::args_os().skip(1))?;
    fatal_panics();
    let Some(outcome) = call.serve() else {
        // The full path installs it again once clap has confirmed the subcommand.
        let _ = std::panic::take_hook();
        return None;
    };
    if call.quiet() {
        return Some(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{}", pgkeep::render::get(&outcome)).and_then(|()| out.flush()) {
        eprintln!("pgkeep: error: cannot write the report to standard output: {e}");
        return Some(ExitCode::from(pgkeep::archive::FATAL_EXIT));
    }
    Some(ExitCode::SUCCESS)
}

/// The default log filter. The AWS SDK warns once per credential provider that found nothing
/// (multi-line dumps of the metadata service's response); the one error line that follows says
/// what matters, so its crates log errors only unless -vv asks for debug.
fn filter(level: &str) -> String {
    if level == "debug" {
        return level.to_string();
    }
    format!("{level},aws_config=error,aws_smithy_runtime=error,aws_smithy_http_client=error,aws_runtime=error")
}

/// Whether the raw arguments name the archive-get subcommand (before clap has parsed them, so
/// that a parse error can be mapped too): the first subcommand name among them decides.
fn names_archive_get(cmd: &clap::Command, args: impl Iterator<Item = std::ffi::OsString>) -> bool {
    for a in args {
        let Some(a) = a.to_str() else { continue };
        if a == "archive-get" {
            return true;
        }
        if cmd.get_subcommands().any(|s| s.get_name() == a) {
            return false;
        }
    }
    false
}

/// A panic anywhere (any thread) ends the process with archive-get's fatal status once the
/// default hook has printed it.
fn fatal_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        let _ = writeln!(
            std::io::stderr(),
            "pgkeep: error: archive-get failed unexpectedly (see above); recovery is stopped rather than ended; hint: report this as a pgkeep bug"
        );
        std::process::exit(pgkeep::archive::FATAL_EXIT.into());
    }));
}

fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let progress: Arc<dyn Progress> = if cli.global.quiet || cli.global.json {
        pgkeep::progress::none()
    } else if std::io::stderr().is_terminal() {
        Arc::new(Bar::default())
    } else {
        Arc::new(Lines(std::time::Instant::now()))
    };
    let outcome = pgkeep::run(cli, progress, rt.handle().clone())?;
    // Let the connection tasks wind down without blocking on them.
    rt.shutdown_background();
    // A failed write of the report is an error like any other (archive-get: exit 126), never a
    // panic; the report may be the only record of what was done.
    let mut out = std::io::stdout().lock();
    if cli.global.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&outcome.json).unwrap_or_default())
    } else if !(outcome.text.is_empty() || cli.global.quiet && outcome.ok) {
        writeln!(out, "{}", outcome.text)
    } else {
        Ok(())
    }
    .and_then(|()| out.flush())
    .context("cannot write the report to standard output")?;
    Ok(if outcome.ok { ExitCode::SUCCESS } else { ExitCode::from(outcome.exit_code) })
}

/// Progress bars on a terminal.
#[derive(Default)]
struct Bar {
    bar: Mutex<Option<ProgressBar>>,
}

impl Progress for Bar {
    fn phase(&self, name: &str, total: Option<u64>) {
        let pb = match total {
            Some(t) => {
                let pb = ProgressBar::new(t);
                pb.set_style(
                    ProgressStyle::with_template("{msg:28} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                );
                pb
            }
            None => {
                let pb = ProgressBar::new_spinner();
                pb.enable_steady_tick(std::time::Duration::from_millis(120));
                pb
            }
        };
        pb.set_message(name.to_string());
        if let Some(old) = self.bar.lock().unwrap_or_else(|p| p.into_inner()).replace(pb) {
            old.finish_and_clear();
        }
    }
    fn advance(&self, bytes: u64) {
        if let Some(b) = self.bar.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            b.inc(bytes);
        }
    }
    fn note(&self, msg: &str) {
        match self.bar.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(b) => b.println(msg),
            None => eprintln!("{msg}"),
        }
    }
    fn finish_phase(&self) {
        if let Some(b) = self.bar.lock().unwrap_or_else(|p| p.into_inner()).take() {
            b.finish_and_clear();
        }
    }
}

/// Plain phase lines with elapsed time when stderr is not a terminal (cron, systemd, CI logs).
struct Lines(std::time::Instant);

impl Progress for Lines {
    fn phase(&self, name: &str, _: Option<u64>) {
        eprintln!("pgkeep: [{:7.3}s] {name}", self.0.elapsed().as_secs_f64());
    }
    fn advance(&self, _: u64) {}
    fn note(&self, msg: &str) {
        eprintln!("pgkeep: [{:7.3}s] {msg}", self.0.elapsed().as_secs_f64());
    }
    fn finish_phase(&self) {}
}
