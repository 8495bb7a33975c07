//! The `layerfs` binary: parse arguments, install logging, run, map errors to exit codes.

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = layerfs::cli::parse();
    layerfs::cli::init_logging(&cli);
    match layerfs::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            eprintln!("layerfs: {}", layerfs::cli::format_error(&err));
            ExitCode::from(layerfs::cli::exit_code(&err))
        }
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
