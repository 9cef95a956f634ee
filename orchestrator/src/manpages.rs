//! `tugboat man DIR`: man pages from the command line's own definition (clap_mangen), so they
//! never disagree with `--help`.

use std::path::Path;

/// Writes `tugboat.1` and `tugboat-<command>.1` for each visible subcommand into `dir`
/// (created if missing); how many pages were written.
pub fn write_all(command: clap::Command, dir: &Path) -> std::io::Result<usize> {
    std::fs::create_dir_all(dir)?;
    let command = command.name("tugboat");
    let mut written = 0;
    let mut page = |cmd: &clap::Command, file: String| -> std::io::Result<()> {
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd.clone()).render(&mut out)?;
        std::fs::write(dir.join(file), out)?;
        written += 1;
        Ok(())
    };
    page(&command, "tugboat.1".into())?;
    for sub in command.get_subcommands().filter(|c| !c.is_hide_set()) {
        let name = format!("tugboat-{}", sub.get_name());
        page(&sub.clone().name(name.clone()), format!("{name}.1"))?;
    }
    Ok(written)
}
