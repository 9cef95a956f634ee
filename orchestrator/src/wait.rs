//! Commands that wait (`rollout status`, `scale --wait`, `get -w`): they long-poll the
//! server's watch API and look again at each change, so they answer as soon as the cluster
//! does, without a polling timer.

use crate::client::{ApiClient, ClientError};
use crate::model::{Instance, InstancePhase, RolloutState, Service};
use crate::wire::{Revision, WatchKind};
use std::time::{Duration, Instant};

/// One long-poll's bound; the watch is taken up again after it.
const POLL: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error(transparent)]
    Api(#[from] ClientError),
    #[error("{what}: not done after {seconds}s ({last})")]
    Timeout {
        what: String,
        seconds: u64,
        last: String,
    },
    #[error("{0}")]
    Failed(String),
}

/// Where a wait stands: done, failed (with why), or still going (with what it waits for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    Done(String),
    Failed(String),
    Waiting(String),
}

/// A rollout: done when every replica runs the new template and is ready, failed when the
/// server rolled it back.
pub fn rollout_progress(service: &Service, instances: &[Instance]) -> Progress {
    let want = service.spec.replicas as usize;
    let hash = &service.rollout.template_hash;
    let current = instances
        .iter()
        .filter(|i| &i.template_hash == hash && i.phase != InstancePhase::Failed)
        .count();
    let ready = instances
        .iter()
        .filter(|i| &i.template_hash == hash && i.ready)
        .count();
    let old = instances
        .iter()
        .filter(|i| &i.template_hash != hash && i.phase != InstancePhase::Failed)
        .count();
    match service.rollout.state {
        RolloutState::RolledBack => Progress::Failed(format!(
            "rollout of {} failed and was rolled back to template {}: {}",
            service.name, hash, service.rollout.message
        )),
        RolloutState::Complete if ready >= want && old == 0 => Progress::Done(format!(
            "service/{} rolled out: {ready}/{want} ready on template {hash}",
            service.name
        )),
        _ => Progress::Waiting(format!(
            "{ready}/{want} ready on template {hash}, {current} created, {old} old still running"
        )),
    }
}

/// A scale: done when exactly `replicas` instances are ready and no others remain.
pub fn scale_progress(service: &Service, instances: &[Instance]) -> Progress {
    let want = service.spec.replicas as usize;
    let ready = instances.iter().filter(|i| i.ready).count();
    // Failed ones wait for their replacement and hold nothing.
    let live = instances
        .iter()
        .filter(|i| i.phase != InstancePhase::Failed)
        .count();
    if ready == want && live == want {
        return Progress::Done(format!("service/{} has {want} ready", service.name));
    }
    let why = instances
        .iter()
        .find_map(|i| i.pending_reason.as_deref())
        .map(|w| format!("; pending: {w}"))
        .unwrap_or_default();
    Progress::Waiting(format!("{ready}/{want} ready, {live} instance(s){why}"))
}

/// Calls `check` on the service and its instances now and after each change the server
/// reports, until it is done or failed, or `timeout` passes. `on_change` sees each new
/// waiting state (to print it once).
pub async fn until(
    api: &ApiClient,
    service: &str,
    timeout: Duration,
    check: impl Fn(&Service, &[Instance]) -> Progress,
    mut on_change: impl FnMut(&str),
) -> Result<String, WaitError> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let described = api.describe_service(service).await?;
        let instances = api.instances(Some(service)).await?;
        match check(&described.service, &instances.items) {
            Progress::Done(message) => return Ok(message),
            Progress::Failed(message) => return Err(WaitError::Failed(message)),
            Progress::Waiting(now) => {
                if now != last {
                    on_change(&now);
                    last = now;
                }
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(WaitError::Timeout {
                what: format!("service/{service}"),
                seconds: timeout.as_secs(),
                last,
            });
        }
        next_change(api, WatchKind::Instances, instances.revision, left).await?;
    }
}

/// Returns when anything of `kind` changed after `revision`, or after `within` (at most one
/// long-poll); the caller looks again either way.
pub async fn next_change(
    api: &ApiClient,
    kind: WatchKind,
    revision: Revision,
    within: Duration,
) -> Result<Revision, ClientError> {
    let poll = within.min(POLL).max(Duration::from_secs(1));
    match api.watch(kind, revision + 1, poll, None).await {
        Ok(batch) => Ok(batch.revision),
        // Compacted away: the caller lists again, which is what it does anyway.
        Err(e) if e.status() == Some(410) => Ok(revision),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::ServiceSpec;

    fn instance(n: u32, hash: &str, ready: bool) -> Instance {
        let mut spec = ServiceSpec::new("web:1");
        spec.replicas = 1;
        Instance {
            id: format!("web-{n}"),
            service: "web".into(),
            template_hash: hash.into(),
            spec,
            node: Some("n1".into()),
            phase: InstancePhase::Running,
            ready,
            pending_reason: None,
            created_at_ms: 0,
            ready_since_ms: None,
            message: String::new(),
            exit_code: None,
            restarts: 0,
            failed_at_ms: None,
            stats: None,
            address: None,
            slot: n,
            carried_restarts: 0,
            last_exit: None,
            crash_looping: false,
        }
    }

    #[test]
    fn a_rollout_is_done_when_only_new_ready_instances_remain() {
        let mut service = Service::new("web", ServiceSpec::new("web:2"), 0);
        service.spec.replicas = 2;
        let new = service.rollout.template_hash.clone();
        let both = [instance(0, &new, true), instance(1, "old", true)];
        assert!(matches!(
            rollout_progress(&service, &both),
            Progress::Waiting(_)
        ));
        service.rollout.state = RolloutState::Complete;
        assert!(matches!(
            rollout_progress(&service, &both),
            Progress::Waiting(_)
        ));
        let done = [instance(0, &new, true), instance(1, &new, true)];
        assert!(matches!(
            rollout_progress(&service, &done),
            Progress::Done(_)
        ));
        service.rollout.state = RolloutState::RolledBack;
        assert!(matches!(
            rollout_progress(&service, &done),
            Progress::Failed(_)
        ));
    }

    #[test]
    fn a_scale_is_done_when_the_count_is_ready() {
        let mut service = Service::new("web", ServiceSpec::new("web:1"), 0);
        service.spec.replicas = 1;
        let h = service.rollout.template_hash.clone();
        assert!(matches!(
            scale_progress(&service, &[instance(0, &h, true), instance(1, &h, true)]),
            Progress::Waiting(_)
        ));
        assert!(matches!(
            scale_progress(&service, &[instance(0, &h, true)]),
            Progress::Done(_)
        ));
    }
}
