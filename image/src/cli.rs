//! `tugboat image ...`: each subcommand parses its arguments and calls one store method.
//!
//! `prune` from the command line keeps only what instances use: the manifest digests
//! recorded in `<data_dir>/rootfs/*/image.json` by `prepare_rootfs` (the store adds those
//! to any in-use set itself), so it passes an empty set.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Subcommand;

use crate::error::{Error, Result};
use crate::import::ImportOptions;
use crate::oci::Platform;
use crate::progress::Progress;
use crate::pull::PullOptions;
use crate::store::ImageStore;

#[derive(Debug, Clone, Subcommand)]
pub enum ImageCommand {
    /// Pull an image from a registry (OCI distribution protocol).
    Pull {
        /// e.g. busybox, ghcr.io/org/app:1.2, 127.0.0.1:5000/app@sha256:...
        reference: String,
        /// A registry (host or host:port) to reach over plain http. Repeatable.
        #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
        insecure_registries: Vec<String>,
        /// A `docker login` style auth file (default: $REGISTRY_AUTH_FILE,
        /// $XDG_RUNTIME_DIR/containers/auth.json, ~/.docker/config.json).
        #[arg(long, value_name = "FILE")]
        auth_file: Option<PathBuf>,
        /// The platform to choose from a multi-platform image (default: this host's).
        #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
        platform: Option<String>,
        /// Print nothing but errors.
        #[arg(short, long)]
        quiet: bool,
        /// Keep layers only unpacked, not also as blobs (saves flash; each still verified).
        #[arg(long)]
        no_layer_blobs: bool,
    },
    /// Import an OCI layout directory, an oci-archive or a docker-archive (gzip/zstd ok).
    Import {
        path: PathBuf,
        /// Name the image (otherwise the name recorded in the file).
        #[arg(long)]
        name: Option<String>,
        /// The platform to choose from a multi-platform image (default: this host's).
        #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
        platform: Option<String>,
        /// Keep layers only unpacked, not also as blobs (saves flash).
        #[arg(long)]
        no_layer_blobs: bool,
    },
    /// List local images.
    Ls {
        /// Output format.
        #[arg(short, long, default_value = "table", value_parser = ["table", "json"])]
        format: String,
        /// Print references only.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Remove images by reference or digest, then content nothing else needs.
    Rm {
        #[arg(required = true)]
        references: Vec<String>,
    },
    /// Remove every image no instance uses, and all unreferenced blobs and layers.
    Prune,
    /// Show an image's config, layers and digests as JSON.
    Inspect { reference: String },
}

fn platform(arg: &Option<String>) -> Result<Option<Platform>> {
    match arg {
        None => Ok(None),
        Some(s) => Platform::parse(s)
            .map(Some)
            .ok_or_else(|| Error::InvalidDocument {
                what: "platform",
                name: s.clone(),
                reason: "expected OS/ARCH or OS/ARCH/VARIANT, e.g. linux/arm64".into(),
            }),
    }
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn out(s: &str) -> Result<()> {
    let mut o = std::io::stdout().lock();
    writeln!(o, "{s}").map_err(|e| Error::io("stdout", e))
}

/// Run one `image` subcommand against the store under `data_dir`.
pub async fn run(cmd: ImageCommand, data_dir: &Path) -> Result<()> {
    let store = ImageStore::open(data_dir)?;
    match cmd {
        ImageCommand::Pull {
            reference,
            insecure_registries,
            auth_file,
            platform: p,
            quiet,
            no_layer_blobs,
        } => {
            let store = store.keep_layer_blobs(!no_layer_blobs);
            let opts = PullOptions {
                insecure_registries,
                auth_file,
                platform: platform(&p)?,
                progress: if quiet {
                    Progress::Quiet
                } else {
                    Progress::Auto
                },
                max_concurrent_downloads: 0,
                download_retries: None,
            };
            let image = store.pull(&reference, &opts).await?;
            out(&format!("{} {}", image.reference, image.digest))?;
        }
        ImageCommand::Import {
            path,
            name,
            platform: p,
            no_layer_blobs,
        } => {
            let store = store.keep_layer_blobs(!no_layer_blobs);
            let opts = ImportOptions {
                platform: platform(&p)?,
                name,
            };
            let images = store.import_with(&path, &opts)?;
            for image in images {
                out(&format!("{} {}", image.reference, image.digest))?;
            }
        }
        ImageCommand::Ls { format, quiet } => {
            let images = store.list()?;
            if quiet {
                for i in &images {
                    out(&i.reference)?;
                }
            } else if format == "json" {
                let details: Vec<_> = images
                    .iter()
                    .map(|i| store.inspect(&i.reference))
                    .collect::<Result<_>>()?;
                out(&serde_json::to_string_pretty(&details).expect("serialises"))?;
            } else {
                let mut rows = vec![[
                    "REFERENCE".to_string(),
                    "DIGEST".to_string(),
                    "LAYERS".to_string(),
                    "SIZE".to_string(),
                ]];
                for i in &images {
                    let d = store.inspect(&i.reference)?;
                    let size: u64 = d.layers.iter().map(|l| l.size).sum();
                    let short = i.digest.split(':').nth(1).unwrap_or(&i.digest);
                    rows.push([
                        i.reference.clone(),
                        short[..12.min(short.len())].to_string(),
                        i.layers.len().to_string(),
                        human(size),
                    ]);
                }
                let widths: Vec<usize> = (0..4)
                    .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
                    .collect();
                for r in rows {
                    out(&format!(
                        "{:w0$}  {:w1$}  {:>w2$}  {:>w3$}",
                        r[0],
                        r[1],
                        r[2],
                        r[3],
                        w0 = widths[0],
                        w1 = widths[1],
                        w2 = widths[2],
                        w3 = widths[3]
                    ))?;
                }
            }
        }
        ImageCommand::Rm { references } => {
            for r in references {
                store.remove(&r)?;
                out(&format!("removed {r}"))?;
            }
        }
        ImageCommand::Prune => {
            let report = store.prune(&HashSet::new())?;
            for i in &report.images {
                out(&format!("removed {i}"))?;
            }
            out(&format!(
                "{} images, {} blobs ({}), {} unpacked layers removed",
                report.images.len(),
                report.blobs,
                human(report.blob_bytes),
                report.layers
            ))?;
        }
        ImageCommand::Inspect { reference } => {
            let d = store.inspect(&reference)?;
            out(&serde_json::to_string_pretty(&d).expect("serialises"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: ImageCommand,
    }

    #[test]
    fn parses() {
        let c = Cli::try_parse_from([
            "x",
            "pull",
            "--insecure-registry",
            "127.0.0.1:5000",
            "--platform",
            "linux/arm64",
            "127.0.0.1:5000/a:1",
        ])
        .unwrap();
        match c.cmd {
            ImageCommand::Pull {
                reference,
                insecure_registries,
                platform,
                ..
            } => {
                assert_eq!(reference, "127.0.0.1:5000/a:1");
                assert_eq!(insecure_registries, vec!["127.0.0.1:5000"]);
                assert_eq!(platform.as_deref(), Some("linux/arm64"));
            }
            _ => panic!(),
        }
        assert!(Cli::try_parse_from(["x", "rm"]).is_err());
        assert!(matches!(
            Cli::try_parse_from(["x", "prune"]).unwrap().cmd,
            ImageCommand::Prune
        ));
        assert_eq!(human(999), "999 B");
        assert_eq!(human(1_500_000), "1.5 MB");
    }
}
