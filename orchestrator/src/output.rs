//! What the command line prints: tables and descriptions for people, JSON or YAML for tools.

use crate::model::{Event, Instance, InstancePhase, Node, Resources, Service};
use crate::spec::{human_bytes, human_cpu, PublishMode, ServiceSpec};
use crate::wire::{InstanceDescription, NodeDescription, ServiceDescription};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Table,
    /// The table with more columns (addresses, templates, allocations).
    Wide,
    Json,
    Yaml,
}

impl OutputFormat {
    /// A table for people (`table` or `wide`) rather than data for tools.
    pub fn is_table(self) -> bool {
        matches!(self, OutputFormat::Table | OutputFormat::Wide)
    }
}

/// Serialize for `--output json|yaml`.
pub fn render_data<T: Serialize>(value: &T, format: OutputFormat) -> String {
    match format {
        OutputFormat::Yaml => {
            serde_yaml_ng::to_string(value).unwrap_or_else(|e| format!("cannot render YAML: {e}"))
        }
        _ => {
            serde_json::to_string_pretty(value)
                .unwrap_or_else(|e| format!("cannot render JSON: {e}"))
                + "\n"
        }
    }
}

/// Columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out += &line(row.clone());
    }
    out
}

fn ago(now_ms: u64, then_ms: u64) -> String {
    let s = now_ms.saturating_sub(then_ms) / 1000;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}

/// `8080->80/tcp`, `*:8080->80/tcp` for an ingress port (every node), `80/tcp` unpublished.
pub fn ports_text(spec: &ServiceSpec) -> String {
    let ports: Vec<String> = spec
        .ports
        .iter()
        .map(|p| {
            let protocol = format!("{:?}", p.protocol).to_lowercase();
            match (p.published, p.mode) {
                (Some(host), PublishMode::Ingress) => {
                    format!("*:{host}->{}/{protocol}", p.container)
                }
                (Some(host), PublishMode::Host) => format!("{host}->{}/{protocol}", p.container),
                (None, _) => format!("{}/{protocol}", p.container),
            }
        })
        .collect();
    if ports.is_empty() {
        "-".into()
    } else {
        ports.join(",")
    }
}

pub fn services_table(services: &[Service], instances: &[Instance], wide: bool) -> String {
    let rows: Vec<Vec<String>> = services
        .iter()
        .map(|s| {
            let mine: Vec<&Instance> = instances.iter().filter(|i| i.service == s.name).collect();
            let ready = mine.iter().filter(|i| i.ready).count();
            let mut row = vec![
                s.name.clone(),
                s.spec.image.clone(),
                format!("{ready}/{}", s.spec.replicas),
                s.rollout.state.to_string(),
                s.address.map_or("-".into(), |a| a.to_string()),
                ports_text(&s.spec),
            ];
            if wide {
                row.push(s.generation.to_string());
                row.push(s.rollout.template_hash.clone());
            }
            row
        })
        .collect();
    let mut header = vec!["NAME", "IMAGE", "READY", "ROLLOUT", "ADDRESS", "PORTS"];
    if wide {
        header.extend(["GENERATION", "TEMPLATE"]);
    }
    table(&header, &rows)
}

fn phase(i: &Instance) -> String {
    if i.crash_looping && i.phase == InstancePhase::Running {
        return "crash-looping".into();
    }
    format!("{:?}", i.phase).to_lowercase()
}

pub fn instances_table(instances: &[Instance], now_ms: u64, wide: bool) -> String {
    let rows: Vec<Vec<String>> = instances
        .iter()
        .map(|i| {
            let mut row = vec![
                i.id.clone(),
                i.service.clone(),
                i.node.clone().unwrap_or_else(|| "-".into()),
                phase(i),
                if i.ready { "yes" } else { "no" }.into(),
                ago(now_ms, i.created_at_ms),
                i.restarts.to_string(),
            ];
            if wide {
                row.push(i.address.clone().unwrap_or_else(|| "-".into()));
                row.push(i.spec.image.clone());
                row.push(i.template_hash.clone());
            }
            row.push(
                i.pending_reason
                    .clone()
                    .or_else(|| (!i.ready).then(|| i.message.clone()))
                    .unwrap_or_default(),
            );
            row
        })
        .collect();
    let mut header = vec!["ID", "SERVICE", "NODE", "PHASE", "READY", "AGE", "RESTARTS"];
    if wide {
        header.extend(["ADDRESS", "IMAGE", "TEMPLATE"]);
    }
    header.push("WHY PENDING OR NOT READY");
    table(&header, &rows)
}

/// `tugboat top`: what each instance uses, as its agent last reported.
pub fn top_table(instances: &[Instance], now_ms: u64) -> String {
    let rows: Vec<Vec<String>> = instances
        .iter()
        .filter(|i| i.node.is_some())
        .map(|i| match i.stats {
            Some(s) => vec![
                i.id.clone(),
                i.service.clone(),
                i.node.clone().unwrap_or_default(),
                human_cpu(s.cpu_millis),
                human_bytes(s.memory_bytes),
                s.pids.to_string(),
                ago(now_ms, s.at_ms),
            ],
            None => vec![
                i.id.clone(),
                i.service.clone(),
                i.node.clone().unwrap_or_default(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ],
        })
        .collect();
    table(
        &["ID", "SERVICE", "NODE", "CPU", "MEMORY", "PIDS", "MEASURED"],
        &rows,
    )
}

fn status_word(status: tugboat_api::model::NodeStatus) -> &'static str {
    match status {
        tugboat_api::model::NodeStatus::Ready => "ready",
        tugboat_api::model::NodeStatus::NotReady => "not-ready",
        tugboat_api::model::NodeStatus::Lost => "lost",
    }
}

fn holds_resources(i: &Instance) -> bool {
    !matches!(i.phase, InstancePhase::Failed | InstancePhase::Lost)
}

/// What the instances placed on `node` reserve (their requests), as the scheduler counts.
pub fn allocated_on(node: &str, instances: &[Instance]) -> Resources {
    let mut total = Resources::default();
    for i in instances
        .iter()
        .filter(|i| i.node.as_deref() == Some(node) && holds_resources(i))
    {
        let r = Resources::requested_by(&i.spec);
        total.cpu_millis += r.cpu_millis;
        total.memory_bytes += r.memory_bytes;
        total.pids += r.pids;
    }
    total
}

fn share(used: u64, of: u64) -> String {
    (used * 100)
        .checked_div(of)
        .map_or(String::new(), |p| format!(" ({p}%)"))
}

pub fn nodes_table(nodes: &[Node], instances: &[Instance], now_ms: u64, wide: bool) -> String {
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let scheduling = if n.draining {
                ",draining"
            } else if n.cordoned {
                ",cordoned"
            } else {
                ""
            };
            let mut row = vec![
                n.name.clone(),
                format!("{}{scheduling}", status_word(n.status)),
                human_cpu(n.capacity.cpu_millis),
                human_bytes(n.capacity.memory_bytes),
                ago(now_ms, n.last_heartbeat_ms),
            ];
            if wide {
                let used = allocated_on(&n.name, instances);
                row.push(format!(
                    "{}{}",
                    human_cpu(used.cpu_millis),
                    share(used.cpu_millis, n.capacity.cpu_millis)
                ));
                row.push(format!(
                    "{}{}",
                    human_bytes(used.memory_bytes),
                    share(used.memory_bytes, n.capacity.memory_bytes)
                ));
                row.push(n.address.clone().unwrap_or_else(|| "-".into()));
                row.push(n.subnet.map_or("-".into(), |s| s.to_string()));
            }
            row.push(labels.join(","));
            row
        })
        .collect();
    let mut header = vec!["NAME", "STATUS", "CPU", "MEMORY", "LAST HEARTBEAT"];
    if wide {
        header.extend(["CPU ALLOCATED", "MEMORY ALLOCATED", "ADDRESS", "SUBNET"]);
    }
    header.push("LABELS");
    table(&header, &rows)
}

/// `tugboat get events`: the newest last, as they happened.
pub fn events_table(events: &[Event], now_ms: u64) -> String {
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                ago(now_ms, e.time_ms),
                format!("{:?}", e.kind).to_lowercase(),
                e.name.clone(),
                e.reason.clone(),
                e.message.clone(),
            ]
        })
        .collect();
    table(&["AGE", "KIND", "OBJECT", "REASON", "MESSAGE"], &rows)
}

/// `tugboat rollout history`: the templates kept, oldest first, then the current one.
pub fn history_table(service: &Service) -> String {
    let mut rows: Vec<Vec<String>> = service
        .history
        .iter()
        .enumerate()
        .map(|(n, t)| {
            vec![
                (n + 1).to_string(),
                t.template_hash.clone(),
                t.spec.image.clone(),
                if t.failed { "failed, rolled back" } else { "" }.into(),
            ]
        })
        .collect();
    let status = match service.rollout.state {
        tugboat_api::model::RolloutState::Complete => "current",
        tugboat_api::model::RolloutState::Progressing => "current, rolling out",
        tugboat_api::model::RolloutState::RolledBack => "current, restored by a rollback",
    };
    rows.push(vec![
        (service.history.len() + 1).to_string(),
        service.spec.template_hash(),
        service.spec.image.clone(),
        status.into(),
    ]);
    table(&["REVISION", "TEMPLATE", "IMAGE", "NOTE"], &rows)
}

fn events_text(events: &[Event], now_ms: u64) -> String {
    if events.is_empty() {
        return "Events: none\n".into();
    }
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                ago(now_ms, e.time_ms),
                e.name.clone(),
                e.reason.clone(),
                e.message.clone(),
            ]
        })
        .collect();
    format!(
        "Events:\n{}",
        table(&["AGE", "OBJECT", "REASON", "MESSAGE"], &rows)
    )
}

pub fn describe_service(d: &ServiceDescription, now_ms: u64) -> String {
    let s = &d.service;
    let mut out = format!(
        "Service:     {}\nImage:       {}\nAddress:     {}\nPorts:       {}\nReplicas:    {} ({} ready)\nGeneration:  {}\nRollout:     {} template {}{}\n",
        s.name,
        s.spec.image,
        s.address.map_or("-".into(), |a| a.to_string()),
        ports_text(&s.spec),
        s.spec.replicas,
        d.instances.iter().filter(|i| i.ready).count(),
        s.generation,
        s.rollout.state,
        s.rollout.template_hash,
        if s.rollout.message.is_empty() { String::new() } else { format!(" ({})", s.rollout.message) },
    );
    if let (Some(a), Some(last)) = (&s.spec.autoscale, &d.autoscale) {
        out += &format!("Autoscale:   {} to {}; last: {last}\n", a.min, a.max);
    }
    let pending: Vec<&Instance> = d
        .instances
        .iter()
        .filter(|i| i.phase == InstancePhase::Pending)
        .collect();
    if let Some(first) = pending.first() {
        out += &format!(
            "Pending:     {} instance(s): {}\n",
            pending.len(),
            first
                .pending_reason
                .as_deref()
                .unwrap_or("not scheduled yet")
        );
    }
    out += &format!(
        "\nInstances:\n{}\n",
        instances_table(&d.instances, now_ms, false)
    );
    out + &events_text(&d.events, now_ms)
}

/// A service's network policy for `describe service`: each rule, and the instances (on
/// any node) it lets through now. `services` and `instances` are the whole cluster's.
pub fn network_text(
    spec: &ServiceSpec,
    services: &[Service],
    instances: &[Instance],
    default_deny: bool,
) -> String {
    use crate::spec::PeerSpec;
    let resolve = |peer: &PeerSpec| -> String {
        if let Some(c) = peer.cidr {
            return format!("{c} (outside the cluster)");
        }
        let names: Vec<&str> = services
            .iter()
            .filter(|s| peer.matches_service(&s.name, &s.spec.labels))
            .map(|s| s.name.as_str())
            .collect();
        let found: Vec<String> = instances
            .iter()
            .filter(|i| names.contains(&i.service.as_str()))
            .filter_map(|i| {
                let a = i.address.as_deref()?;
                Some(format!("{} ({a})", i.id))
            })
            .collect();
        if found.is_empty() {
            "no instances now".into()
        } else {
            found.join(", ")
        }
    };
    let ports = |p: &[crate::spec::Port]| -> String {
        if p.is_empty() {
            "any port".into()
        } else {
            let list: Vec<String> = p.iter().map(|p| p.0.to_string()).collect();
            format!("ports {}", list.join(","))
        }
    };
    let mut out = String::from(
        "Network:
",
    );
    match &spec.network.ingress {
        None if default_deny => {
            out += "  ingress: closed (cluster default-deny); only the nodes
";
        }
        None => {
            out += "  ingress: open (no rules)
"
        }
        Some(rules) => {
            out += "  ingress: only these (and the nodes: probes, ingress ports)
";
            for r in rules {
                let from = r
                    .from
                    .as_ref()
                    .map_or("anyone".to_string(), |p| p.to_string());
                let who = r.from.as_ref().map_or("anyone".to_string(), resolve);
                out += &format!(
                    "    from {from} on {}: {who}
",
                    ports(&r.ports)
                );
            }
        }
    }
    match &spec.network.egress {
        None => {
            out += "  egress:  open (no rules)
"
        }
        Some(rules) => {
            out += "  egress:  only these
";
            for r in rules {
                let to =
                    r.to.as_ref()
                        .map_or("anywhere".to_string(), |p| p.to_string());
                let who = r.to.as_ref().map_or("anywhere".to_string(), resolve);
                out += &format!(
                    "    to {to} on {}: {who}
",
                    ports(&r.ports)
                );
            }
        }
    }
    out
}

pub fn describe_instance(d: &InstanceDescription, now_ms: u64) -> String {
    let i = &d.instance;
    let mut out = format!(
        "Instance:    {}\nService:     {}\nTemplate:    {}\nImage:       {}\nNode:        {}\nPhase:       {}\nReady:       {}\n",
        i.id,
        i.service,
        i.template_hash,
        i.spec.image,
        i.node.as_deref().unwrap_or("-"),
        phase(i),
        i.ready
    );
    if let Some(why) = &i.pending_reason {
        out += &format!("Why pending: {why}\n");
    }
    if !i.message.is_empty() {
        out += &format!("Message:     {}\n", i.message);
    }
    out += &format!("Address:     {}\n", i.address.as_deref().unwrap_or("-"));
    out += &format!("Limits:      {}\n", limits_text(&i.spec.resources.limits));
    let carried = if i.carried_restarts > 0 {
        format!(
            " ({} by earlier instances of slot {})",
            i.carried_restarts, i.slot
        )
    } else {
        String::new()
    };
    out += &format!("Restarts:    {}{carried}\n", i.restarts);
    if let Some(exit) = &i.last_exit {
        let code = exit.code.map_or("-".to_string(), |c| c.to_string());
        // `OOMKilled: memory limit 32Mi` names its reason; `exited with code 3` gets it.
        let reason = if exit.message.starts_with(&exit.reason) {
            String::new()
        } else {
            format!(" ({})", exit.reason)
        };
        out += &format!(
            "Last exit:   {} ago, code {code}, {}{reason}\n",
            ago(now_ms, exit.at_ms),
            exit.message
        );
    }
    out + "\n" + &events_text(&d.events, now_ms)
}

/// `cpu 250m, memory 32Mi, pids 64`, or `none`.
fn limits_text(limits: &crate::spec::ResourceAmounts) -> String {
    let mut parts = vec![];
    if let Some(cpu) = limits.cpu {
        parts.push(format!("cpu {cpu}"));
    }
    if let Some(memory) = limits.memory {
        parts.push(format!("memory {memory}"));
    }
    if let Some(pids) = limits.pids {
        parts.push(format!("pids {pids}"));
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

pub fn describe_node(d: &NodeDescription, now_ms: u64) -> String {
    let n = &d.node;
    let used = allocated_on(&n.name, &d.instances);
    let pids = if n.capacity.pids == 0 {
        "pids unlimited".to_string()
    } else {
        format!("pids {}", n.capacity.pids)
    };
    let scheduling = if n.draining {
        "draining"
    } else if n.cordoned {
        "cordoned"
    } else {
        "takes new instances"
    };
    let out = format!(
        "Node:        {}\nStatus:      {}, {scheduling}\nAddress:     {}\nSubnet:      {}\nCapacity:    cpu {}, memory {}, {pids}\nAllocated:   cpu {}{}, memory {}{}, pids {} (requests of {} instance(s))\nFree:        cpu {}, memory {}\nHeartbeat:   {} ago\nLabels:      {}\n\nInstances:\n{}\n",
        n.name,
        status_word(n.status),
        n.address.as_deref().unwrap_or("-"),
        n.subnet.map_or("-".into(), |s| s.to_string()),
        human_cpu(n.capacity.cpu_millis),
        human_bytes(n.capacity.memory_bytes),
        human_cpu(used.cpu_millis),
        share(used.cpu_millis, n.capacity.cpu_millis),
        human_bytes(used.memory_bytes),
        share(used.memory_bytes, n.capacity.memory_bytes),
        used.pids,
        d.instances
            .iter()
            .filter(|i| holds_resources(i))
            .count(),
        human_cpu(n.capacity.cpu_millis.saturating_sub(used.cpu_millis)),
        human_bytes(n.capacity.memory_bytes.saturating_sub(used.memory_bytes)),
        ago(now_ms, n.last_heartbeat_ms),
        n.labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
        instances_table(&d.instances, now_ms, false)
    );
    out + &events_text(&d.events, now_ms)
}

/// A time to come: `in 3h`, `in 45d`, or `EXPIRED`.
fn until(now_ms: u64, then_ms: u64) -> String {
    if then_ms <= now_ms {
        return "EXPIRED".into();
    }
    let s = (then_ms - now_ms) / 1000;
    match s {
        0..=119 => format!("in {s}s"),
        120..=7199 => format!("in {}m", s / 60),
        7200..=172_799 => format!("in {}h", s / 3600),
        _ => format!("in {}d", s / 86400),
    }
}

pub fn tokens_table(tokens: &[tugboat_api::wire::TokenInfo], now_ms: u64) -> String {
    let rows = tokens
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                t.scope.to_string(),
                ago(now_ms, t.created_ms),
                t.expires_ms
                    .map_or_else(|| "never".to_string(), |e| until(now_ms, e)),
                t.description.clone(),
            ]
        })
        .collect::<Vec<_>>();
    table(&["ID", "SCOPE", "CREATED", "EXPIRES", "DESCRIPTION"], &rows)
}

/// `tugboat get servers`: one line per server, the leader's role in capitals.
pub fn servers_table(servers: &[tugboat_api::wire::ServerInfo], now_ms: u64) -> String {
    let rows: Vec<Vec<String>> = servers
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                match s.role {
                    tugboat_api::wire::ServerRole::Leader => "leader".into(),
                    tugboat_api::wire::ServerRole::Follower => "follower".into(),
                },
                s.api_url.clone(),
                s.version.clone(),
                ago(now_ms, s.started_ms),
            ]
        })
        .collect();
    table(&["NAME", "ROLE", "API", "VERSION", "AGE"], &rows)
}

pub fn describe_cluster(d: &tugboat_api::wire::ClusterDescription, now_ms: u64) -> String {
    let servers = if d.servers.is_empty() {
        String::new()
    } else {
        format!("Servers:\n{}\n", servers_table(&d.servers, now_ms))
    };
    if !d.tls {
        return servers + "TLS: off (the server runs with --insecure-plain-http)\n";
    }
    let mut out = servers;
    out += &format!(
        "TLS: on\nCA hash: {} (nodes join with --ca-hash {})\n",
        d.ca_hash.clone().unwrap_or_default(),
        d.ca_hash.clone().unwrap_or_default()
    );
    let mut rows = vec![];
    for (kind, cert) in [("ca", &d.ca), ("server", &d.server)] {
        if let Some(c) = cert {
            rows.push(vec![
                kind.to_string(),
                c.name.clone(),
                c.serial.clone(),
                until(now_ms, c.not_after_ms),
            ]);
        }
    }
    for c in &d.nodes {
        rows.push(vec![
            "node".into(),
            c.name.clone(),
            c.serial.clone(),
            until(now_ms, c.not_after_ms),
        ]);
    }
    out += &table(&["CERTIFICATE", "NAME", "SERIAL", "EXPIRES"], &rows);
    out
}

pub fn secrets_table(secrets: &[tugboat_api::wire::SecretInfo], now_ms: u64) -> String {
    let rows = secrets
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.keys.join(","),
                ago(now_ms, s.created_ms),
                ago(now_ms, s.updated_ms),
            ]
        })
        .collect::<Vec<_>>();
    table(&["NAME", "KEYS", "CREATED", "UPDATED"], &rows)
}

fn volume_size(v: &tugboat_api::model::Volume) -> String {
    v.size_bytes
        .map(tugboat_api::spec::human_bytes)
        .unwrap_or_else(|| "-".into())
}

fn volume_used(u: &tugboat_api::model::VolumeUsage) -> String {
    if u.bytes_total > 0 {
        format!(
            "{} ({}%)",
            tugboat_api::spec::human_bytes(u.bytes_used),
            u.percent()
        )
    } else {
        tugboat_api::spec::human_bytes(u.bytes_used)
    }
}

pub fn volumes_table(volumes: &[tugboat_api::model::Volume]) -> String {
    let rows = volumes
        .iter()
        .map(|v| {
            vec![
                v.name.clone(),
                v.config.driver.to_string(),
                volume_size(v),
                v.config.access_mode().to_string(),
                v.node.clone().unwrap_or_else(|| "-".into()),
                v.usage
                    .iter()
                    .map(volume_used)
                    .max()
                    .unwrap_or_else(|| "-".into()),
                v.users.len().to_string(),
            ]
        })
        .collect::<Vec<_>>();
    table(
        &["NAME", "DRIVER", "SIZE", "ACCESS", "NODE", "USED", "USERS"],
        &rows,
    )
}

pub fn describe_volume(v: &tugboat_api::model::Volume, now_ms: u64) -> String {
    let mut out = String::new();
    let mut line = |k: &str, val: String| out.push_str(&format!("{k:<10} {val}\n"));
    line("Name:", v.name.clone());
    line("Driver:", v.config.driver.to_string());
    line("Size:", volume_size(v));
    line("Access:", v.config.access_mode().to_string());
    line("Node:", v.node.clone().unwrap_or_else(|| "-".into()));
    for (k, val) in &v.config.options {
        line("Option:", format!("{k}={val}"));
    }
    line("Created:", ago(now_ms, v.created_ms));
    line(
        "Users:",
        if v.users.is_empty() {
            "-".into()
        } else {
            v.users.join(", ")
        },
    );
    if v.usage.is_empty() {
        line("Usage:", "- (no node has it mounted)".into());
    }
    for u in &v.usage {
        line(
            "Usage:",
            format!(
                "node {}: {} of {}, {} of {} inodes, {} ({} ago)",
                u.node,
                volume_used(u),
                if u.bytes_total > 0 {
                    tugboat_api::spec::human_bytes(u.bytes_total)
                } else {
                    "the host's disk".into()
                },
                u.inodes_used,
                if u.inodes_total > 0 {
                    u.inodes_total.to_string()
                } else {
                    "-".into()
                },
                u.state,
                ago(now_ms, u.measured_ms)
            ),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn tables_align_columns() {
        let t = super::table(&["A", "LONGER"], &[vec!["xxxx".into(), "y".into()]]);
        assert_eq!(t, "A     LONGER\nxxxx  y\n");
    }
}
