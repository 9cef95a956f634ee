//! `tugboat-monitor --id ID --bundle DIR --runtime-root DIR --dir DIR [--log-max-bytes N]
//! [--log-mode file|ring] [--oci-runtime EXE --oci-root DIR]`: started by the agent, one per
//! container. The work is in the library.

fn main() -> std::process::ExitCode {
    let args = match tugboat_monitor::MonitorArgs::parse(std::env::args_os().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("tugboat-monitor: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    std::process::ExitCode::from(tugboat_monitor::run(&args) as u8)
}
