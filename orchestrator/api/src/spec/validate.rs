//! Checks that serde cannot make: names, ranges, combinations and references between services.

use super::{ConstraintOperator, ProbeSpec, PublishMode, RestartPolicy, ServiceSpec, VolumeKind};
use std::collections::{BTreeMap, HashSet};
use std::fmt;

/// Largest replica count one service may ask for.
pub const MAX_REPLICAS: u32 = 10_000;
/// Most pids one instance may ask for (the kernel's own ceiling).
pub const MAX_PIDS: u32 = 4_194_304;

/// One problem in a spec, at a field path like `services.web.ports[0].published`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpecError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// A DNS label (RFC 1123): 1-63 of a-z, 0-9 and '-', starting and ending with a letter or digit.
pub fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

const DNS_LABEL_RULE: &str =
    "1-63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit";

fn is_label_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
}

struct Checker {
    errors: Vec<SpecError>,
}

impl Checker {
    fn fail(&mut self, path: String, message: impl Into<String>) {
        self.errors.push(SpecError {
            path,
            message: message.into(),
        });
    }
}

/// Validate a set of services that will be stored together. `known` answers whether a service
/// that is not in `services` already exists (affinity rules may name it).
pub fn validate_services(
    services: &BTreeMap<String, ServiceSpec>,
    known: &dyn Fn(&str) -> bool,
) -> Result<(), Vec<SpecError>> {
    let mut c = Checker { errors: vec![] };
    if services.is_empty() {
        c.fail(
            "services".into(),
            "no services: a spec file needs at least one entry under `services`",
        );
    }
    let exists = |name: &str| services.contains_key(name) || known(name);
    for (name, spec) in services {
        let base = format!("services.{name}");
        if !is_dns_label(name) {
            c.fail(
                base.clone(),
                format!("service name `{name}` is not a DNS label: use {DNS_LABEL_RULE}"),
            );
        }
        check_service(&mut c, &base, spec, &exists);
    }
    c.errors
        .extend(ingress_clashes(services, &|_| true, &|_| true));
    if c.errors.is_empty() {
        Ok(())
    } else {
        Err(c.errors)
    }
}

fn check_service(c: &mut Checker, base: &str, spec: &ServiceSpec, exists: &dyn Fn(&str) -> bool) {
    if tug_runtime::signal::parse_signal(&spec.stop.signal).is_err() {
        c.fail(
            format!("{base}.stop.signal"),
            format!(
                "`{}` is not a signal: use a name like TERM, INT, QUIT or a number",
                spec.stop.signal
            ),
        );
    }
    if spec.reschedule.after_seconds > 7 * 24 * 3600 {
        c.fail(
            format!("{base}.reschedule.after_seconds"),
            format!(
                "{} is more than a week (604800); to keep the instances for their node, set `replace: false`",
                spec.reschedule.after_seconds
            ),
        );
    }
    if spec.image.trim().is_empty() || spec.image.contains(char::is_whitespace) {
        c.fail(
            format!("{base}.image"),
            "image must be a non-empty reference without spaces, like `registry/app:1.2`",
        );
    }
    if spec.replicas > MAX_REPLICAS {
        c.fail(
            format!("{base}.replicas"),
            format!(
                "{} replicas is too many: allowed 0 to {MAX_REPLICAS}",
                spec.replicas
            ),
        );
    }
    for key in spec.env.keys() {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            c.fail(
                format!("{base}.env.{key}"),
                "environment variable names must be non-empty and contain no '=' or NUL",
            );
        }
    }
    check_resources(c, base, spec);
    check_ports(c, base, spec);
    check_volumes(c, base, spec);
    check_security(c, base, spec);
    check_secrets(c, base, spec);
    check_network(c, base, spec, exists);
    if let Some(a) = &spec.autoscale {
        let path = format!("{base}.autoscale");
        if a.min == 0 || a.min > a.max || a.max > 10_000 {
            c.fail(
                format!("{path}.min"),
                format!(
                    "min {} and max {}: expected 1 <= min <= max <= 10000",
                    a.min, a.max
                ),
            );
        }
        if a.target.cpu.is_none() && a.target.memory.is_none() {
            c.fail(
                format!("{path}.target"),
                "a target is needed: cpu: 70% and/or memory: 60% (of the requests)",
            );
        }
        if a.target.cpu.is_some() && spec.resources.requests.cpu.is_none() {
            c.fail(
                format!("{path}.target.cpu"),
                "a cpu target is a % of the cpu request: set resources.requests.cpu",
            );
        }
        if a.target.memory.is_some() && spec.resources.requests.memory.is_none() {
            c.fail(
                format!("{path}.target.memory"),
                "a memory target is a % of the memory request: set resources.requests.memory",
            );
        }
        if a.scale_up.max_step == 0 || a.scale_down.max_step == 0 {
            c.fail(
                format!("{path}.scale_up.max_step"),
                "steps are at least 1 instance",
            );
        }
        if a.scale_up.period_seconds == 0 || a.scale_down.period_seconds == 0 {
            c.fail(
                format!("{path}.scale_up.period_seconds"),
                "periods are at least 1 second",
            );
        }
    }
    if let Some(runtime) = &spec.runtime {
        let name_ok = !runtime.is_empty()
            && runtime.len() <= 64
            && runtime
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        let path_ok = runtime.starts_with('/') && !runtime.split('/').any(|p| p == "..");
        if !name_ok && !path_ok {
            c.fail(
                format!("{base}.runtime"),
                format!(
                    "`{runtime}` is not a runtime: write tug, a name on the node's PATH (runc, crun, runsc) or an absolute path"
                ),
            );
        }
    }
    for (kind, probe) in [
        ("liveness", &spec.health.liveness),
        ("readiness", &spec.health.readiness),
    ] {
        if let Some(probe) = probe {
            check_probe(c, &format!("{base}.health.{kind}"), probe);
        }
    }
    if spec.restart.limit.is_some() && spec.restart.policy != RestartPolicy::OnFailure {
        c.fail(
            format!("{base}.restart.limit"),
            "`limit` is only allowed with `policy: on-failure`",
        );
    }
    if spec.update.max_surge.is_zero() && spec.update.max_unavailable.is_zero() {
        c.fail(
            format!("{base}.update"),
            "max_surge and max_unavailable cannot both be 0: a rollout could never make progress",
        );
    }
    if spec.update.progress_deadline_seconds == 0 {
        c.fail(
            format!("{base}.update.progress_deadline_seconds"),
            "must be at least 1 second",
        );
    }
    check_placement(c, base, spec, exists);
    for key in spec.labels.keys() {
        if !is_label_key(key) {
            c.fail(
                format!("{base}.labels.{key}"),
                "label keys use letters, digits, '-', '_', '.' and '/'",
            );
        }
    }
}

fn check_resources(c: &mut Checker, base: &str, spec: &ServiceSpec) {
    let r = &spec.resources;
    let path = format!("{base}.resources");
    for (which, amounts) in [("requests", &r.requests), ("limits", &r.limits)] {
        if let Some(pids) = amounts.pids {
            if pids == 0 || pids > MAX_PIDS {
                c.fail(
                    format!("{path}.{which}.pids"),
                    format!("{pids} pids: allowed 1 to {MAX_PIDS}"),
                );
            }
        }
        if let Some(memory) = amounts.memory {
            if memory.0 < (4 << 20) {
                c.fail(
                    format!("{path}.{which}.memory"),
                    format!("{memory} bytes is too little for a container: at least 4Mi"),
                );
            }
        }
    }
    if let (Some(req), Some(lim)) = (r.requests.cpu, r.limits.cpu) {
        if req > lim {
            c.fail(
                format!("{path}.requests.cpu"),
                format!("request {req} is above the limit {lim}: requests must be <= limits"),
            );
        }
    }
    if let (Some(req), Some(lim)) = (r.requests.memory, r.limits.memory) {
        if req > lim {
            c.fail(
                format!("{path}.requests.memory"),
                format!("request {req} is above the limit {lim}: requests must be <= limits"),
            );
        }
    }
    if let Some(io) = &r.limits.io {
        if io.weight.is_some() {
            c.fail(
                format!("{path}.limits.io.weight"),
                "a weight is a request: put it under requests.io",
            );
        }
        for (field, zero) in [
            ("read_bps", io.read_bps.is_some_and(|m| m.0 == 0)),
            ("write_bps", io.write_bps.is_some_and(|m| m.0 == 0)),
            ("read_iops", io.read_iops == Some(0)),
            ("write_iops", io.write_iops == Some(0)),
        ] {
            if zero {
                c.fail(
                    format!("{path}.limits.io.{field}"),
                    "0 would stop all I/O: leave it out for no limit",
                );
            }
        }
    }
    if let Some(io) = &r.requests.io {
        if io.read_bps.is_some()
            || io.write_bps.is_some()
            || io.read_iops.is_some()
            || io.write_iops.is_some()
        {
            c.fail(
                format!("{path}.requests.io"),
                "rates are limits: put read_bps, write_bps, read_iops, write_iops under limits.io",
            );
        }
        if io.weight.is_some_and(|w| !(10..=1000).contains(&w)) {
            c.fail(
                format!("{path}.requests.io.weight"),
                "a weight is from 10 to 1000 (default 100)",
            );
        }
    }
    if let (Some(req), Some(lim)) = (r.requests.pids, r.limits.pids) {
        if req > lim {
            c.fail(
                format!("{path}.requests.pids"),
                format!("request {req} is above the limit {lim}: requests must be <= limits"),
            );
        }
    }
}

fn check_secrets(c: &mut Checker, base: &str, spec: &ServiceSpec) {
    let mut targets: HashSet<String> = spec.volumes.iter().map(|v| v.target.clone()).collect();
    for (i, s) in spec.secrets.iter().enumerate() {
        let path = format!("{base}.secrets[{i}]");
        if !is_dns_label(&s.secret) {
            c.fail(
                format!("{path}.secret"),
                format!(
                    "secret name `{}` is not valid: use {DNS_LABEL_RULE}",
                    s.secret
                ),
            );
        }
        let target = s.target();
        if !target.starts_with('/') || target.split('/').any(|p| p == "..") {
            c.fail(
                format!("{path}.target"),
                format!("target `{target}` must be an absolute path in the container"),
            );
        } else if !targets.insert(target.clone()) {
            c.fail(
                format!("{path}.target"),
                format!("target `{target}` is mounted twice"),
            );
        }
    }
}

fn check_security(c: &mut Checker, base: &str, spec: &ServiceSpec) {
    let security = &spec.security;
    for (field, names) in [
        ("cap_add", &security.cap_add),
        ("cap_drop", &security.cap_drop),
    ] {
        for (i, name) in names.iter().enumerate() {
            let known = name.eq_ignore_ascii_case("ALL")
                || super::ALL_CAPABILITIES.contains(&super::capability_name(name).as_str());
            if !known {
                c.fail(
                    format!("{base}.security.{field}[{i}]"),
                    format!("`{name}` is not a Linux capability (like NET_ADMIN, SYS_TIME or ALL)"),
                );
            }
        }
    }
    if let Some(user) = &security.user {
        let (u, g) = user.split_once(':').unwrap_or((user, "0"));
        if u.is_empty() || g.is_empty() || user.contains(char::is_whitespace) {
            c.fail(
                format!("{base}.security.user"),
                format!("`{user}` is not a user: write uid, uid:gid, name or name:group"),
            );
        }
    }
}

/// Published ports that another service's ingress port already holds: an ingress port is
/// taken on every node, so no other service can publish it, in either mode. Checked for the
/// services `checked` answers yes for, against those `against` answers yes for (the server
/// checks what is applied against what is stored).
pub fn ingress_clashes(
    services: &BTreeMap<String, ServiceSpec>,
    checked: &dyn Fn(&str) -> bool,
    against: &dyn Fn(&str) -> bool,
) -> Vec<SpecError> {
    let mut errors = vec![];
    for (name, spec) in services.iter().filter(|(n, _)| checked(n)) {
        for (i, port) in spec.ports.iter().enumerate() {
            let Some(host) = port.published else { continue };
            let holder = services
                .iter()
                .filter(|(other, _)| *other != name && against(other))
                .find(|(_, other)| {
                    other.ports.iter().any(|p| {
                        p.mode == PublishMode::Ingress
                            && p.published == Some(host)
                            && p.protocol == port.protocol
                    })
                });
            if let Some((other, _)) = holder {
                let protocol = format!("{:?}", port.protocol).to_lowercase();
                errors.push(SpecError {
                    path: format!("services.{name}.ports[{i}].published"),
                    message: format!(
                        "host port {host}/{protocol} is the ingress port of service `{other}`, held on every node: publish another port"
                    ),
                });
            }
        }
    }
    errors
}

fn check_ports(c: &mut Checker, base: &str, spec: &ServiceSpec) {
    let mut published = HashSet::new();
    for (i, port) in spec.ports.iter().enumerate() {
        if let Some(host) = port.published {
            if !published.insert((host, port.protocol)) {
                c.fail(
                    format!("{base}.ports[{i}].published"),
                    format!(
                        "host port {host}/{:?} is published twice in this service",
                        port.protocol
                    )
                    .to_lowercase(),
                );
            }
        }
    }
}

fn check_volumes(c: &mut Checker, base: &str, spec: &ServiceSpec) {
    let mut targets = HashSet::new();
    for (i, volume) in spec.volumes.iter().enumerate() {
        let path = format!("{base}.volumes[{i}]");
        match volume.kind {
            VolumeKind::Bind if !volume.source.starts_with('/') => {
                c.fail(
                    format!("{path}.source"),
                    format!(
                        "bind source `{}` must be an absolute host path",
                        volume.source
                    ),
                );
            }
            VolumeKind::Volume if !is_dns_label(&volume.source) => {
                c.fail(
                    format!("{path}.source"),
                    format!(
                        "volume name `{}` is not valid: use {DNS_LABEL_RULE}",
                        volume.source
                    ),
                );
            }
            _ => {}
        }
        if !volume.target.starts_with('/') {
            c.fail(
                format!("{path}.target"),
                format!(
                    "target `{}` must be an absolute path in the container",
                    volume.target
                ),
            );
        }
        if !targets.insert(volume.target.as_str()) {
            c.fail(
                format!("{path}.target"),
                format!("target `{}` is mounted twice", volume.target),
            );
        }
    }
}

fn check_probe(c: &mut Checker, path: &str, probe: &ProbeSpec) {
    let kinds = usize::from(probe.exec.is_some())
        + usize::from(probe.http.is_some())
        + usize::from(probe.tcp.is_some());
    if kinds != 1 {
        c.fail(
            path.to_string(),
            format!("a probe has exactly one of `exec`, `http`, `tcp`; this one has {kinds}"),
        );
    }
    if let Some(exec) = &probe.exec {
        if exec.is_empty() {
            c.fail(
                format!("{path}.exec"),
                "exec needs a command, like [\"/bin/check\"]",
            );
        }
    }
    if let Some(http) = &probe.http {
        if !http.path.starts_with('/') {
            c.fail(
                format!("{path}.http.path"),
                "HTTP probe path must start with '/'",
            );
        }
    }
    for (field, value, max) in [
        ("interval_seconds", probe.interval_seconds, 3600),
        ("timeout_seconds", probe.timeout_seconds, 3600),
        ("failure_threshold", probe.failure_threshold, 1000),
        ("success_threshold", probe.success_threshold, 1000),
    ] {
        if value == 0 || value > max {
            c.fail(
                format!("{path}.{field}"),
                format!("{value} is out of range: allowed 1 to {max}"),
            );
        }
    }
    if probe.timeout_seconds > probe.interval_seconds {
        c.fail(
            format!("{path}.timeout_seconds"),
            "timeout must not be longer than the interval",
        );
    }
}

fn check_network(c: &mut Checker, base: &str, spec: &ServiceSpec, exists: &dyn Fn(&str) -> bool) {
    let ingress = spec.network.ingress.iter().flatten().enumerate();
    let egress = spec.network.egress.iter().flatten().enumerate();
    let peers = ingress
        .map(|(i, r)| (format!("{base}.network.ingress[{i}].from"), r.from.as_ref()))
        .chain(egress.map(|(i, r)| (format!("{base}.network.egress[{i}].to"), r.to.as_ref())));
    for (path, peer) in peers {
        let Some(peer) = peer else { continue };
        let given = usize::from(peer.service.is_some())
            + usize::from(!peer.labels.is_empty())
            + usize::from(peer.cidr.is_some());
        if given != 1 {
            c.fail(
                path.clone(),
                "name exactly one of `service`, `labels` or `cidr` (leave the whole field out for anyone)",
            );
        }
        if let Some(name) = &peer.service {
            if !exists(name) {
                c.fail(
                    format!("{path}.service"),
                    format!(
                        "unknown service `{name}`: name a service in this file or one already running"
                    ),
                );
            }
        }
        for key in peer.labels.keys() {
            if !is_label_key(key) {
                c.fail(
                    format!("{path}.labels.{key}"),
                    "label keys use letters, digits, '-', '_', '.' and '/'",
                );
            }
        }
        if let Some(net) = peer.cidr {
            if net.network() != net.ip() {
                c.fail(
                    format!("{path}.cidr"),
                    format!(
                        "{net} has host bits set (did you mean {}/{}?)",
                        net.network(),
                        net.prefix()
                    ),
                );
            }
        }
    }
}

fn check_placement(c: &mut Checker, base: &str, spec: &ServiceSpec, exists: &dyn Fn(&str) -> bool) {
    let p = &spec.placement;
    let path = format!("{base}.placement");
    for (i, constraint) in p.constraints.iter().enumerate() {
        let needs_values = matches!(
            constraint.operator,
            ConstraintOperator::In | ConstraintOperator::NotIn
        );
        if needs_values && constraint.values.is_empty() {
            c.fail(
                format!("{path}.constraints[{i}].values"),
                format!("{:?} needs at least one value", constraint.operator),
            );
        }
        if !needs_values && !constraint.values.is_empty() {
            c.fail(
                format!("{path}.constraints[{i}].values"),
                format!("{:?} takes no values", constraint.operator),
            );
        }
        if !is_label_key(&constraint.key) {
            c.fail(
                format!("{path}.constraints[{i}].key"),
                "label keys use letters, digits, '-', '_', '.' and '/'",
            );
        }
    }
    let mut affine = HashSet::new();
    for (i, rule) in p.affinity.iter().enumerate() {
        if !exists(&rule.service) {
            c.fail(
                format!("{path}.affinity[{i}].service"),
                format!(
                    "unknown service `{}`: name a service in this file or one already running",
                    rule.service
                ),
            );
        }
        affine.insert(rule.service.as_str());
    }
    for (i, rule) in p.anti_affinity.iter().enumerate() {
        if !exists(&rule.service) {
            c.fail(
                format!("{path}.anti_affinity[{i}].service"),
                format!(
                    "unknown service `{}`: name a service in this file or one already running",
                    rule.service
                ),
            );
        }
        if affine.contains(rule.service.as_str()) {
            c.fail(
                format!("{path}.anti_affinity[{i}].service"),
                format!("`{}` is in both affinity and anti_affinity", rule.service),
            );
        }
    }
    if let Some(label) = &p.spread {
        if !is_label_key(label) {
            c.fail(format!("{path}.spread"), "spread names a node label key");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{AffinityRule, Constraint, Cpu, Port, PortSpec, Protocol, PublishMode};

    fn one(name: &str, spec: ServiceSpec) -> BTreeMap<String, ServiceSpec> {
        BTreeMap::from([(name.to_string(), spec)])
    }

    fn errors(services: &BTreeMap<String, ServiceSpec>) -> Vec<String> {
        validate_services(services, &|_| false)
            .err()
            .unwrap_or_default()
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn a_plain_service_is_valid() {
        assert!(errors(&one("web", ServiceSpec::new("nginx:1"))).is_empty());
    }

    #[test]
    fn names_must_be_dns_labels() {
        for bad in ["Web", "-web", "web_1", "", &"a".repeat(64)] {
            let e = errors(&one(bad, ServiceSpec::new("nginx")));
            assert!(
                e.iter().any(|m| m.contains("not a DNS label")),
                "{bad}: {e:?}"
            );
        }
        assert!(is_dns_label("web-1"));
    }

    #[test]
    fn requests_above_limits_are_rejected() {
        let mut spec = ServiceSpec::new("nginx");
        spec.resources.requests.cpu = Some(Cpu(2000));
        spec.resources.limits.cpu = Some(Cpu(1000));
        let e = errors(&one("web", spec));
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("services.web.resources.requests.cpu: request 2 is above the limit 1"),
            "{e:?}"
        );
    }

    #[test]
    fn duplicate_published_ports_are_rejected() {
        let mut spec = ServiceSpec::new("nginx");
        let port = PortSpec {
            container: Port(80),
            published: Some(Port(8080)),
            protocol: Protocol::Tcp,
            mode: Default::default(),
        };
        spec.ports = vec![port.clone(), port];
        let e = errors(&one("web", spec));
        assert!(e[0].starts_with("services.web.ports[1].published"), "{e:?}");
    }

    #[test]
    fn a_host_port_that_is_another_services_ingress_port_is_rejected() {
        let port = |mode| PortSpec {
            container: Port(80),
            published: Some(Port(8080)),
            protocol: Protocol::Tcp,
            mode,
        };
        let mut front = ServiceSpec::new("front");
        front.ports = vec![port(PublishMode::Ingress)];
        let mut admin = ServiceSpec::new("admin");
        admin.ports = vec![port(PublishMode::Host)];
        let services = BTreeMap::from([("front".to_string(), front), ("admin".to_string(), admin)]);
        assert_eq!(
            errors(&services),
            ["services.admin.ports[0].published: host port 8080/tcp is the ingress port of service `front`, held on every node: publish another port"]
        );
        // The server checks only what is applied against what is stored.
        assert!(ingress_clashes(&services, &|n| n == "front", &|n| n == "admin").is_empty());
        assert_eq!(
            ingress_clashes(&services, &|n| n == "admin", &|n| n == "front").len(),
            1
        );
    }

    #[test]
    fn network_rules_name_one_known_peer_and_a_clean_range() {
        use crate::spec::{EgressRule, IngressRule, PeerSpec};
        let mut spec = ServiceSpec::new("pay:1");
        spec.network.ingress = Some(vec![
            IngressRule {
                from: Some(PeerSpec {
                    service: Some("ghost".into()),
                    ..Default::default()
                }),
                ports: vec![],
            },
            IngressRule {
                from: Some(PeerSpec {
                    cidr: Some("192.0.2.1/24".parse().unwrap()),
                    ..Default::default()
                }),
                ports: vec![Port(80)],
            },
            IngressRule {
                from: Some(PeerSpec::default()),
                ports: vec![],
            },
        ]);
        spec.network.egress = Some(vec![EgressRule {
            to: Some(PeerSpec {
                service: Some("pay".into()),
                cidr: Some("10.0.0.0/8".parse().unwrap()),
                ..Default::default()
            }),
            ports: vec![],
        }]);
        let e = errors(&one("pay", spec));
        assert!(
            e.iter().any(|e| e.starts_with(
                "services.pay.network.ingress[0].from.service: unknown service `ghost`"
            )),
            "{e:?}"
        );
        assert!(
            e.iter().any(|e| e.starts_with(
                "services.pay.network.ingress[1].from.cidr: 192.0.2.1/24 has host bits set"
            )),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|e| e.starts_with("services.pay.network.ingress[2].from: name exactly one")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|e| e.starts_with("services.pay.network.egress[0].to: name exactly one")),
            "{e:?}"
        );
        assert_eq!(e.len(), 4, "{e:?}");
    }

    #[test]
    fn affinity_must_name_a_known_service() {
        let mut spec = ServiceSpec::new("nginx");
        spec.placement.affinity = vec![AffinityRule {
            service: "db".into(),
            required: true,
        }];
        let services = one("web", spec);
        let e = errors(&services);
        assert!(e[0].contains("unknown service `db`"), "{e:?}");
        assert!(validate_services(&services, &|name| name == "db").is_ok());
    }

    #[test]
    fn constraint_operators_check_their_values() {
        let mut spec = ServiceSpec::new("nginx");
        spec.placement.constraints = vec![
            Constraint {
                key: "zone".into(),
                operator: ConstraintOperator::In,
                values: vec![],
            },
            Constraint {
                key: "gpu".into(),
                operator: ConstraintOperator::Exists,
                values: vec!["x".into()],
            },
        ];
        assert_eq!(errors(&one("web", spec)).len(), 2);
    }

    #[test]
    fn surge_and_unavailable_cannot_both_be_zero() {
        let mut spec = ServiceSpec::new("nginx");
        spec.update.max_surge = crate::spec::UpdateCount::Percent(0);
        assert!(errors(&one("web", spec))[0].contains("cannot both be 0"));
    }
}
