//! `tugboat-monitor --id ID --bundle DIR --runtime-root DIR --dir DIR [--log-max-bytes N]
//! [--log-mode file|ring] [--oci-runtime EXE --oci-root DIR]`: started by the agent, one per
//! container. The work is in the library.

const USAGE: &str = "usage: tugboat-monitor --id ID --bundle DIR --runtime-root DIR --dir DIR \
[--log-max-bytes N] [--log-mode file|ring] [--oci-runtime EXE --oci-root DIR]
The per-container monitor: the agent starts one per container (docs/ARCHITECTURE.md).";

fn main() -> std::process::ExitCode {
    if std::env::args_os()
        .skip(1)
        .any(|a| a == "--help" || a == "-h")
    {
        println!("{USAGE}");
        return std::process::ExitCode::SUCCESS;
    }
    let args = match tugboat_monitor::MonitorArgs::parse(std::env::args_os().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("tugboat-monitor: {e}\n{USAGE}");
            return std::process::ExitCode::from(2);
        }
    };
    std::process::ExitCode::from(tugboat_monitor::run(&args) as u8)
}
