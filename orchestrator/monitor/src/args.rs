//! What the agent passes to the monitor, as a type and as a command line.

use std::path::PathBuf;

use crate::logring::LogMode;

/// What the agent passes to `tugboat-monitor` (or `tugboat monitor`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorArgs {
    /// The container id (the instance id).
    pub id: String,
    pub bundle: PathBuf,
    /// tug's state root.
    pub runtime_root: PathBuf,
    /// The instance directory: monitor.json, exit.json, container.log live here.
    pub dir: PathBuf,
    /// The log file is rotated (to `container.log.1`) when it grows past this; in ring
    /// mode, the ring's size.
    pub log_max_bytes: u64,
    /// Another OCI runtime's executable and state root (`runtime:` in the service); None:
    /// tug, in this process.
    pub oci: Option<(PathBuf, PathBuf)>,
    /// Where the container's output goes (see [`crate::logring`]).
    pub log_mode: LogMode,
}

/// The default `--log-max-bytes`.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 1 << 20;

impl MonitorArgs {
    /// The command line after `tugboat-monitor` (or `tugboat monitor`).
    pub fn to_args(&self) -> Vec<String> {
        vec![
            "--id".into(),
            self.id.clone(),
            "--bundle".into(),
            self.bundle.display().to_string(),
            "--runtime-root".into(),
            self.runtime_root.display().to_string(),
            "--dir".into(),
            self.dir.display().to_string(),
            "--log-max-bytes".into(),
            self.log_max_bytes.to_string(),
            "--log-mode".into(),
            self.log_mode.to_string(),
        ]
        .into_iter()
        .chain(self.oci.iter().flat_map(|(exe, root)| {
            [
                "--oci-runtime".to_string(),
                exe.display().to_string(),
                "--oci-root".to_string(),
                root.display().to_string(),
            ]
        }))
        .collect()
    }

    /// Reads the command line [`MonitorArgs::to_args`] writes (`--flag value` or
    /// `--flag=value`); an error names the flag.
    pub fn parse<I: IntoIterator<Item = std::ffi::OsString>>(
        args: I,
    ) -> Result<MonitorArgs, String> {
        let (mut id, mut bundle, mut runtime_root, mut dir) = (None, None, None, None);
        let (mut oci_runtime, mut oci_root) = (None::<PathBuf>, None::<PathBuf>);
        let mut log_max_bytes = DEFAULT_LOG_MAX_BYTES;
        let mut log_mode = LogMode::File;
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let arg = arg
                .into_string()
                .map_err(|a| format!("argument {a:?} is not UTF-8"))?;
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.into())),
                _ => (arg, None),
            };
            let known = [
                "--id",
                "--bundle",
                "--runtime-root",
                "--dir",
                "--log-max-bytes",
                "--log-mode",
                "--oci-runtime",
                "--oci-root",
            ];
            if !known.contains(&flag.as_str()) {
                return Err(format!(
                    "unknown argument `{flag}` (expected one of {})",
                    known.join(", ")
                ));
            }
            let value: std::ffi::OsString = match inline {
                Some(v) => v,
                None => args.next().ok_or_else(|| format!("{flag} needs a value"))?,
            };
            let text = || {
                value
                    .to_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("{flag}: {value:?} is not UTF-8"))
            };
            match flag.as_str() {
                "--id" => id = Some(text()?),
                "--bundle" => bundle = Some(PathBuf::from(&value)),
                "--runtime-root" => runtime_root = Some(PathBuf::from(&value)),
                "--dir" => dir = Some(PathBuf::from(&value)),
                "--log-max-bytes" => {
                    let t = text()?;
                    log_max_bytes = t
                        .parse()
                        .map_err(|_| format!("--log-max-bytes: `{t}` is not a number of bytes"))?
                }
                "--log-mode" => {
                    log_mode = text()?.parse().map_err(|e| format!("--log-mode: {e}"))?
                }
                "--oci-runtime" => oci_runtime = Some(PathBuf::from(&value)),
                _ => oci_root = Some(PathBuf::from(&value)),
            }
        }
        let missing = |flag: &str| format!("{flag} is required");
        let oci = match (oci_runtime, oci_root) {
            (Some(exe), Some(root)) => Some((exe, root)),
            (None, None) => None,
            (Some(_), None) => return Err("--oci-runtime needs --oci-root".into()),
            (None, Some(_)) => return Err("--oci-root needs --oci-runtime".into()),
        };
        Ok(MonitorArgs {
            id: id.ok_or_else(|| missing("--id"))?,
            bundle: bundle.ok_or_else(|| missing("--bundle"))?,
            runtime_root: runtime_root.ok_or_else(|| missing("--runtime-root"))?,
            dir: dir.ok_or_else(|| missing("--dir"))?,
            log_max_bytes,
            oci,
            log_mode,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<MonitorArgs, String> {
        MonitorArgs::parse(args.iter().map(std::ffi::OsString::from))
    }

    #[test]
    fn the_command_line_reads_back_as_written() {
        let args = MonitorArgs {
            id: "a".into(),
            bundle: "/b".into(),
            runtime_root: "/r".into(),
            dir: "/d".into(),
            log_max_bytes: 10,
            oci: None,
            log_mode: LogMode::Ring,
        };
        let line = args.to_args();
        assert_eq!(line[1], "a");
        assert_eq!(line.last().map(String::as_str), Some("ring"));
        assert!(!line.contains(&"--oci-runtime".to_string()));
        assert_eq!(
            MonitorArgs::parse(line.iter().map(Into::into)),
            Ok(args.clone())
        );
        let runc = MonitorArgs {
            oci: Some(("/usr/bin/runc".into(), "/r-runc".into())),
            ..args
        };
        assert!(runc.to_args().ends_with(&[
            "--oci-runtime".to_string(),
            "/usr/bin/runc".into(),
            "--oci-root".into(),
            "/r-runc".into()
        ]));
        assert_eq!(
            MonitorArgs::parse(runc.to_args().iter().map(Into::into)),
            Ok(runc)
        );
    }

    #[test]
    fn bad_command_lines_name_the_flag() {
        let base = [
            "--id",
            "x",
            "--bundle",
            "/b",
            "--runtime-root",
            "/r",
            "--dir",
            "/d",
        ];
        let ok = parse(&base).unwrap();
        assert_eq!(ok.log_max_bytes, DEFAULT_LOG_MAX_BYTES);
        assert_eq!(ok.log_mode, LogMode::File);
        assert_eq!(parse(&base[2..]).unwrap_err(), "--id is required");
        let with = |extra: &[&str]| {
            let mut v = base.to_vec();
            v.extend(extra);
            parse(&v)
        };
        assert_eq!(
            with(&["--log-max-bytes", "lots"]).unwrap_err(),
            "--log-max-bytes: `lots` is not a number of bytes"
        );
        assert!(with(&["--log-mode=disk"])
            .unwrap_err()
            .starts_with("--log-mode: "));
        assert_eq!(with(&["--dir"]).unwrap_err(), "--dir needs a value");
        assert!(with(&["--verbose"])
            .unwrap_err()
            .starts_with("unknown argument `--verbose`"));
        assert_eq!(
            with(&["--oci-runtime", "/usr/bin/runc"]).unwrap_err(),
            "--oci-runtime needs --oci-root"
        );
        assert_eq!(with(&["--log-max-bytes=2048"]).unwrap().log_max_bytes, 2048);
    }
}
