//! The client verbs that are more than one call: `get` (with a name, `-w`), `logs` of a
//! service, `apply` (with `--dry-run`), `diff`, `delete -f`, the rollout verbs and
//! `scale --wait`. The binary parses their arguments and calls one function here.

use crate::client::{ApiClient, ClientError};
use crate::diff::{self, Change};
use crate::model::{now_ms, Event, Instance, Node, Service};
use crate::output::{self, OutputFormat};
use crate::spec::{SpecFile, SpecFileError};
use crate::wait::{self, WaitError};
use crate::wire::{Listed, Revision, ServerInfo, WatchKind};
use reqwest::Method;
use serde::Serialize;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Api(#[from] ClientError),
    #[error(transparent)]
    Spec(#[from] SpecFileError),
    #[error(transparent)]
    Wait(#[from] WaitError),
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{kind} `{name}` not found")]
    NotFound { kind: &'static str, name: String },
    #[error("{0}")]
    Refused(String),
}

pub type Result<T> = std::result::Result<T, CommandError>;

/// What `get`, `describe` and `delete` act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    #[value(alias = "service", alias = "svc")]
    Services,
    #[value(alias = "instance", alias = "inst")]
    Instances,
    #[value(alias = "node", alias = "no")]
    Nodes,
    #[value(alias = "event", alias = "ev")]
    Events,
    Cluster,
    #[value(alias = "server")]
    Servers,
}

/// Prints data as a table for people or as JSON/YAML for tools.
pub fn print<T: Serialize>(value: &T, format: OutputFormat, table: impl FnOnce() -> String) {
    if format.is_table() {
        print!("{}", table());
    } else {
        print!("{}", output::render_data(value, format));
    }
}

/// A spec file read and checked; `known` answers for services not in it (affinity rules).
pub fn read_spec(path: &Path, known: &dyn Fn(&str) -> bool) -> Result<SpecFile> {
    let text = std::fs::read_to_string(path).map_err(|source| CommandError::Read {
        path: path.display().to_string(),
        source,
    })?;
    Ok(crate::spec::parse_spec_file(
        &path.display().to_string(),
        &text,
        known,
    )?)
}

async fn service_names(api: &ApiClient) -> std::collections::HashSet<String> {
    match api.services().await {
        Ok(list) => list.items.into_iter().map(|s| s.name).collect(),
        Err(_) => Default::default(),
    }
}

/// `get KIND [NAME]`, once or (`watch`) again after each change the server reports.
pub async fn get(
    api: &ApiClient,
    kind: Kind,
    name: Option<&str>,
    service: Option<&str>,
    format: OutputFormat,
    watch: bool,
) -> Result<()> {
    // Events printed so far by a watch (the server keeps only the recent ones, so an index
    // into its list would drift).
    let mut shown: std::collections::HashSet<(u64, String, String, String)> = Default::default();
    loop {
        let revision = match kind {
            Kind::Events => {
                let events = events(api, name).await?;
                if watch && format.is_table() {
                    // A watch of events prints each once, as they come.
                    let first = shown.is_empty();
                    let new: Vec<Event> = events
                        .items
                        .iter()
                        .filter(|e| {
                            shown.insert((
                                e.time_ms,
                                e.name.clone(),
                                e.reason.clone(),
                                e.message.clone(),
                            ))
                        })
                        .cloned()
                        .collect();
                    let text = output::events_table(&new, now_ms());
                    if first {
                        print!("{text}");
                    } else if !new.is_empty() {
                        print!("{}", text.split_once('\n').map_or("", |(_, rows)| rows));
                    }
                } else {
                    print(&events, format, || {
                        output::events_table(&events.items, now_ms())
                    });
                }
                events.revision
            }
            _ => show(api, kind, name, service, format).await?,
        };
        if !watch {
            return Ok(());
        }
        wait_for_change(api, kind, revision).await?;
        if format.is_table() && kind != Kind::Events {
            println!();
        }
    }
}

async fn wait_for_change(api: &ApiClient, kind: Kind, revision: Revision) -> Result<()> {
    let kinds: &[WatchKind] = match kind {
        // The services table counts ready instances too.
        Kind::Services => &[WatchKind::Services, WatchKind::Instances],
        Kind::Instances => &[WatchKind::Instances],
        Kind::Nodes => &[WatchKind::Nodes, WatchKind::Instances],
        Kind::Events => &[WatchKind::Events],
        Kind::Cluster | Kind::Servers => {
            return Err(CommandError::Refused(
                "`get cluster -w`, `get servers -w`: nothing to watch".into(),
            ))
        }
    };
    loop {
        let polls = kinds.iter().map(|k| {
            Box::pin(wait::next_change(
                api,
                *k,
                revision,
                Duration::from_secs(30),
            ))
        });
        let (changed, _, _) = futures_util::future::select_all(polls).await;
        if changed? > revision {
            return Ok(());
        }
    }
}

async fn events(api: &ApiClient, name: Option<&str>) -> Result<Listed<Event>> {
    let path = match name {
        Some(name) => format!("/v1/events?name={name}"),
        None => "/v1/events".to_string(),
    };
    Ok(api.call(Method::GET, &path, None).await?)
}

/// Keeps the one named item (an error when there is none).
fn only<T>(
    items: Vec<T>,
    name: Option<&str>,
    kind: &'static str,
    key: impl Fn(&T) -> &str,
) -> Result<Vec<T>> {
    let Some(name) = name else { return Ok(items) };
    let found: Vec<T> = items.into_iter().filter(|i| key(i) == name).collect();
    if found.is_empty() {
        return Err(CommandError::NotFound {
            kind,
            name: name.into(),
        });
    }
    Ok(found)
}

/// Prints the list once; the revision it was read at.
async fn show(
    api: &ApiClient,
    kind: Kind,
    name: Option<&str>,
    service: Option<&str>,
    format: OutputFormat,
) -> Result<Revision> {
    let now = now_ms();
    let wide = format == OutputFormat::Wide;
    match kind {
        Kind::Services => {
            let list = api.services().await?;
            let instances = api.instances(None).await?.items;
            let items = only(list.items, name, "service", |s: &Service| &s.name)?;
            let listed = Listed {
                revision: list.revision,
                items,
            };
            print(&listed, format, || {
                output::services_table(&listed.items, &instances, wide)
            });
            Ok(listed.revision)
        }
        Kind::Instances => {
            let list = api.instances(service).await?;
            let items = only(list.items, name, "instance", |i: &Instance| &i.id)?;
            let listed = Listed {
                revision: list.revision,
                items,
            };
            print(&listed, format, || {
                output::instances_table(&listed.items, now, wide)
            });
            Ok(listed.revision)
        }
        Kind::Nodes => {
            let list = api.nodes().await?;
            let instances = if wide {
                api.instances(None).await?.items
            } else {
                vec![]
            };
            let items = only(list.items, name, "node", |n: &Node| &n.name)?;
            let listed = Listed {
                revision: list.revision,
                items,
            };
            print(&listed, format, || {
                output::nodes_table(&listed.items, &instances, now, wide)
            });
            Ok(listed.revision)
        }
        Kind::Servers => {
            let servers = api.servers().await?;
            let items = only(servers, name, "server", |s: &ServerInfo| &s.name)?;
            print(&items, format, || output::servers_table(&items, now));
            Ok(0)
        }
        Kind::Events | Kind::Cluster => Err(CommandError::Refused(
            "`get cluster`: use `describe cluster`".into(),
        )),
    }
}

/// `logs TARGET`: an instance's log, or the logs of every placed instance of a service,
/// each line prefixed with its instance.
pub async fn logs(
    api: &ApiClient,
    target: &str,
    options: &tugboat_api::wire::LogOptions,
) -> Result<()> {
    let instances = api.instances(None).await?.items;
    if instances.iter().any(|i| i.id == target) {
        api.logs(target, options, &mut std::io::stdout()).await?;
        return Ok(());
    }
    let ids: Vec<String> = instances
        .iter()
        .filter(|i| i.service == target && i.node.is_some())
        .map(|i| i.id.clone())
        .collect();
    if ids.is_empty() {
        if service_names(api).await.contains(target) {
            return Err(CommandError::Refused(format!(
                "service `{target}` has no instance on a node yet (`tugboat get instances --service {target}` says why)"
            )));
        }
        return Err(CommandError::NotFound {
            kind: "instance or service",
            name: target.into(),
        });
    }
    crate::service_logs::stream(api, &ids, options).await?;
    Ok(())
}

/// Images the file names that no node will pull (no registry in the reference) and that are
/// not in this host's image store: they start nowhere unless imported or built on the nodes.
pub fn image_warnings(spec: &SpecFile, data_dir: &Path) -> Vec<String> {
    // A host without an image store of its own (a client away from the nodes) cannot
    // tell: no warning rather than a wrong one.
    let Some(store) = data_dir
        .join("images")
        .is_dir()
        .then(|| tug_image::ImageStore::open(data_dir).ok())
        .flatten()
    else {
        return vec![];
    };
    let mut warnings = vec![];
    for (name, service) in &spec.services {
        let image = &service.image;
        // With `build:`, apply has built it into that store (a dry run builds nothing).
        if crate::spec::names_a_registry(image) || service.build.is_some() {
            continue;
        }
        let here = store.resolve(image).is_ok();
        if !here {
            warnings.push(format!(
                "service {name}: image `{image}` names no registry (nodes do not pull it) and is not in the image store under {}: import or build it on the nodes (`tugboat image import`, `tugboat build`)",
                data_dir.display()
            ));
        }
    }
    warnings
}

/// `apply -f FILE` (`dry_run`: say what would change, change nothing).
pub async fn apply(
    api: &ApiClient,
    file: &Path,
    data_dir: &Path,
    format: OutputFormat,
    dry_run: bool,
) -> Result<()> {
    let known = service_names(api).await;
    let spec = read_spec(file, &|n| known.contains(n))?;
    for warning in image_warnings(&spec, data_dir) {
        eprintln!("warning: {warning}");
    }
    if dry_run {
        let services = api.services().await?.items;
        let plan = diff::plan(&services, &spec);
        let outcome: std::collections::BTreeMap<&String, &Change> = plan
            .iter()
            .map(|(name, (change, _))| (name, change))
            .collect();
        print(&outcome, format, || {
            outcome
                .iter()
                .map(|(name, what)| format!("service/{name} {what} (dry run)\n"))
                .collect()
        });
        return Ok(());
    }
    let outcome = match api.apply(&spec.without_build()).await {
        Ok(outcome) => outcome,
        // The server's own checks (against the services it stores), located in the file.
        Err(ClientError::Api { details, .. }) if !details.is_empty() => {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            let name = file.display().to_string();
            let problems = details
                .into_iter()
                .map(|e| crate::spec::file::SpecProblem {
                    file: name.clone(),
                    line: crate::spec::locate::line_of(&text, &e.path),
                    field: e.path,
                    message: e.message,
                })
                .collect();
            return Err(SpecFileError { problems }.into());
        }
        Err(e) => return Err(e.into()),
    };
    print(&outcome, format, || {
        outcome
            .services
            .iter()
            .map(|(name, what)| format!("service/{name} {what}\n"))
            .collect()
    });
    Ok(())
}

/// `diff -f FILE`: what apply would change, as a unified diff per service. True when
/// something would change.
pub async fn diff(api: &ApiClient, file: &Path) -> Result<bool> {
    let known = service_names(api).await;
    let spec = read_spec(file, &|n| known.contains(n))?;
    let services = api.services().await?.items;
    let mut changed = false;
    for (_, (change, text)) in diff::plan(&services, &spec) {
        if change != Change::Unchanged {
            changed = true;
            print!("{text}");
        }
    }
    Ok(changed)
}

/// `delete -f FILE`: the file's services (and their instances).
pub async fn delete_file(api: &ApiClient, file: &Path, format: OutputFormat) -> Result<()> {
    let spec = read_spec(file, &|_| true)?;
    let mut outcome = std::collections::BTreeMap::new();
    for name in spec.services.keys() {
        let what = match api.delete_service(name).await {
            Ok(_) => "deleted",
            Err(e) if e.status() == Some(404) => "not found",
            Err(e) => return Err(e.into()),
        };
        outcome.insert(name.clone(), what);
    }
    print(&outcome, format, || {
        outcome
            .iter()
            .map(|(name, what)| format!("service/{name} {what}\n"))
            .collect()
    });
    Ok(())
}

/// `rollout status`: waits until the rollout is done (Ok) or rolled back (an error).
pub async fn rollout_status(api: &ApiClient, service: &str, timeout: Duration) -> Result<()> {
    let done = wait::until(api, service, timeout, wait::rollout_progress, |now| {
        eprintln!("waiting for service/{service}: {now}")
    })
    .await?;
    println!("{done}");
    Ok(())
}

/// `rollout history`: the templates the server keeps (the last few), oldest first.
pub async fn rollout_history(api: &ApiClient, service: &str, format: OutputFormat) -> Result<()> {
    let described = api.describe_service(service).await?;
    let s = &described.service;
    print(&s.history, format, || output::history_table(s));
    Ok(())
}

/// `rollout undo`: back to the last good template (one that did not fail).
pub async fn rollout_undo(api: &ApiClient, service: &str, format: OutputFormat) -> Result<()> {
    let updated = api.rollout_undo(service).await?;
    print(&updated.rollout, format, || {
        format!(
            "service/{service} rolling back to template {} ({})\n",
            updated.rollout.template_hash, updated.spec.image
        )
    });
    Ok(())
}

/// `scale SERVICE N`, and with `wait` until N instances are ready.
pub async fn scale(
    api: &ApiClient,
    service: &str,
    replicas: u32,
    wait_for: Option<Duration>,
    format: OutputFormat,
) -> Result<()> {
    let updated = api.scale(service, replicas).await?;
    print(&updated, format, || {
        format!("service/{service} scaled to {replicas}\n")
    });
    if let Some(timeout) = wait_for {
        let done = wait::until(api, service, timeout, wait::scale_progress, |now| {
            eprintln!("waiting for service/{service}: {now}")
        })
        .await?;
        eprintln!("{done}");
    }
    Ok(())
}

/// `volume snapshot NAME -f FILE [--no-freeze]`: the volume's tar archive into FILE
/// (written beside it and renamed, so a failed snapshot leaves no partial archive), or
/// stdout with `-`. With `freeze`, the volume's users on its node are paused while it is
/// written; which were, and for how long, goes to stderr.
pub async fn volume_snapshot(
    api: &ApiClient,
    name: &str,
    out: &std::path::Path,
    freeze: bool,
) -> Result<()> {
    let said = |s: &crate::wire::VolumeSnapshot| {
        if s.paused.is_empty() {
            return String::new();
        }
        format!(
            "; paused while archived ({:.2} s): instance {}",
            s.paused_about.as_secs_f64(),
            s.paused.join(", ")
        )
    };
    if out == std::path::Path::new("-") {
        let mut stdout = std::io::stdout();
        let s = api.snapshot_volume_with(name, freeze, &mut stdout).await?;
        eprintln!("volume/{name}: {} bytes archived{}", s.bytes, said(&s));
        return Ok(());
    }
    let failed = |e: std::io::Error| {
        CommandError::Refused(format!("writing the archive {}: {e}", out.display()))
    };
    let mut partial_name = out.as_os_str().to_owned();
    partial_name.push(".partial");
    let partial = std::path::PathBuf::from(partial_name);
    let mut file = std::fs::File::create(&partial).map_err(failed)?;
    let written = match api.snapshot_volume_with(name, freeze, &mut file).await {
        Ok(s) => file.sync_all().map(|_| s).map_err(failed),
        Err(e) => Err(e.into()),
    };
    let placed = written.and_then(|s| std::fs::rename(&partial, out).map(|_| s).map_err(failed));
    let s = match placed {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    eprintln!(
        "volume/{name}: {} bytes archived to {}{}",
        s.bytes,
        out.display(),
        said(&s)
    );
    Ok(())
}

/// `volume restore NAME -i FILE [--node N] [--force]`: a tar archive (a file, or stdin with
/// `-`, read into memory first) into the volume.
pub async fn volume_restore(
    api: &ApiClient,
    name: &str,
    input: &std::path::Path,
    node: Option<&str>,
    force: bool,
) -> Result<tugboat_api::wire::VolumeRestored> {
    let failed = |e: std::io::Error| {
        CommandError::Refused(format!("reading the archive {}: {e}", input.display()))
    };
    let restored = if input == std::path::Path::new("-") {
        let mut all = vec![];
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut all).map_err(failed)?;
        api.restore_volume(name, node, force, || reqwest::Body::from(all.clone()))
            .await?
    } else {
        // Opened once here so a missing file is said before any request.
        let file = std::fs::File::open(input).map_err(failed)?;
        let reopen = || {
            let file = file.try_clone().and_then(|mut f| {
                std::io::Seek::rewind(&mut f)?;
                Ok(f)
            });
            match file {
                Ok(f) => reqwest::Body::from(tokio::fs::File::from_std(f)),
                Err(_) => reqwest::Body::from(Vec::new()),
            }
        };
        api.restore_volume(name, node, force, reopen).await?
    };
    Ok(restored)
}
