//! Replica autoscaling (docs/spec.md, `autoscale`): a pure decision from a service's
//! spec, its instances' latest usage and a short history, in the manner of Kubernetes' HPA:
//! the replicas that would bring the average use of ready instances to the target, a ±10%
//! tolerance band so a steady load never flaps, scale-up steps bounded per period,
//! scale-down only to the highest recommendation of the stabilization window (and only
//! once the autoscaler has watched a whole window), never down on missing metrics, and
//! instances that are not ready do not drag the average.

use std::collections::VecDeque;
use tugboat_api::model::InstanceStats;
use tugboat_api::spec::{AutoscaleSpec, ResourceAmounts};

/// Within this fraction of the target, nothing changes.
pub const TOLERANCE: f64 = 0.1;

/// What the autoscaler sees of one instance of the service.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observed {
    pub ready: bool,
    /// Its latest usage; None: no report yet.
    pub usage: Option<InstanceStats>,
}

/// What the autoscaler sees of the instances of `service`'s current template (not failed) at
/// `now_ms`: readiness, and the usage last reported within a minute (an older report says
/// nothing about now).
pub fn observe<'a>(
    cp: &crate::controlplane::ControlPlane,
    service: &tugboat_api::model::Service,
    instances: impl Iterator<Item = &'a tugboat_api::model::Instance>,
    now_ms: u64,
) -> Vec<Observed> {
    let hash = &service.rollout.template_hash;
    instances
        .filter(|i| {
            i.service == service.name
                && &i.template_hash == hash
                && i.phase != tugboat_api::model::InstancePhase::Failed
        })
        .map(|i| Observed {
            ready: i.ready,
            usage: cp
                .usage_of(&i.id)
                .filter(|u| u.at_ms.saturating_add(60_000) >= now_ms),
        })
        .collect()
}

/// The average use of the ready instances that reported, as a fraction of what each
/// requests (`request`); None without numbers.
pub fn utilization(
    request: u64,
    observed: &[Observed],
    used: impl Fn(&InstanceStats) -> u64,
) -> Option<f64> {
    let reported: Vec<u64> = observed
        .iter()
        .filter(|o| o.ready)
        .filter_map(|o| o.usage.as_ref().map(&used))
        .collect();
    if request == 0 || reported.is_empty() {
        return None;
    }
    let average = reported.iter().sum::<u64>() as f64 / reported.len() as f64;
    Some(average / request as f64)
}

/// What the autoscaler remembers of a service (in memory: after a server restart it
/// watches a whole window again before scaling down).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    /// (time, recommended replicas), oldest first, no older than the stabilization window.
    pub recommendations: VecDeque<(u64, u32)>,
    /// When the autoscaler first looked at the service.
    pub since_ms: Option<u64>,
    pub last_up_ms: Option<u64>,
    pub last_down_ms: Option<u64>,
    /// The last decision, in words, for `describe service`.
    pub last: Option<String>,
}

/// A change of replicas and why, with the numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub replicas: u32,
    pub reason: String,
}

/// The replicas one metric asks for, and the words for it; None: nothing to go on.
fn recommend_one(
    name: &str,
    target_pct: u32,
    request: u64,
    current: u32,
    observed: &[Observed],
    used: impl Fn(&InstanceStats) -> u64,
) -> Option<(u32, String)> {
    if request == 0 {
        return None;
    }
    let ready: Vec<&Observed> = observed.iter().filter(|o| o.ready).collect();
    let reported: Vec<u64> = ready
        .iter()
        .filter_map(|o| o.usage.as_ref().map(&used))
        .collect();
    let used_fraction = utilization(request, observed, &used)?;
    let total: u64 = reported.iter().sum();
    let target = request as f64 * f64::from(target_pct) / 100.0;
    let ratio = used_fraction * 100.0 / f64::from(target_pct);
    let words = format!(
        "{name} {:.0}% of request (target {target_pct}%)",
        used_fraction * 100.0
    );
    if (ratio - 1.0).abs() <= TOLERANCE {
        return Some((current, words));
    }
    let missing = ready.len() - reported.len();
    if ratio < 1.0 && missing > 0 {
        // An instance without numbers may be the busy one: never down on missing metrics.
        return Some((current, format!("{words}, {missing} not reported")));
    }
    // Up: instances not ready or not reported count as idle (they will take load), so the
    // rise is not overstated. Down: the average of those that reported.
    let counted = if ratio > 1.0 {
        observed.len().max(reported.len())
    } else {
        reported.len()
    };
    let padded_ratio = total as f64 / counted as f64 / target;
    if ratio > 1.0 && padded_ratio <= 1.0 + TOLERANCE {
        return Some((current, words));
    }
    let needed = (total as f64 / target).ceil().max(1.0) as u32;
    Some((needed, words))
}

/// The replicas the metrics ask for (the largest of the targets), with the words of the
/// metric that asks most.
pub fn recommend(
    spec: &AutoscaleSpec,
    requests: &ResourceAmounts,
    current: u32,
    observed: &[Observed],
) -> Option<(u32, String)> {
    let mut best: Option<(u32, String)> = None;
    let candidates = [
        spec.target.cpu.and_then(|t| {
            recommend_one(
                "cpu",
                t.0,
                requests.cpu.map_or(0, |c| c.0),
                current,
                observed,
                |s| s.cpu_millis,
            )
        }),
        spec.target.memory.and_then(|t| {
            recommend_one(
                "memory",
                t.0,
                requests.memory.map_or(0, |m| m.0),
                current,
                observed,
                |s| s.memory_bytes,
            )
        }),
    ];
    for c in candidates.into_iter().flatten() {
        if best.as_ref().is_none_or(|b| c.0 > b.0) {
            best = Some(c);
        }
    }
    best
}

/// The autoscaler's decision for a service at `now_ms`, updating its history. None: keep
/// `current`.
pub fn decide(
    spec: &AutoscaleSpec,
    requests: &ResourceAmounts,
    current: u32,
    observed: &[Observed],
    history: &mut History,
    now_ms: u64,
) -> Option<Decision> {
    let since = *history.since_ms.get_or_insert(now_ms);
    // Out of bounds (min or max changed): back in at once.
    if current < spec.min || current > spec.max {
        let replicas = current.clamp(spec.min, spec.max);
        return Some(Decision {
            replicas,
            reason: format!(
                "{current} -> {replicas} replicas: within min {} and max {}",
                spec.min, spec.max
            ),
        });
    }
    let (wanted, words) = recommend(spec, requests, current, observed)?;
    let wanted = wanted.clamp(spec.min, spec.max);
    let window = u64::from(spec.scale_down.stabilization_seconds) * 1000;
    history.recommendations.push_back((now_ms, wanted));
    while history
        .recommendations
        .front()
        .is_some_and(|(t, _)| now_ms.saturating_sub(*t) > window)
    {
        history.recommendations.pop_front();
    }
    let elapsed = |last: Option<u64>, period: u32| {
        last.is_none_or(|t| now_ms.saturating_sub(t) >= u64::from(period) * 1000)
    };
    if wanted > current {
        if !elapsed(history.last_up_ms, spec.scale_up.period_seconds) {
            return None;
        }
        let replicas = wanted.min(current.saturating_add(spec.scale_up.max_step));
        history.last_up_ms = Some(now_ms);
        return Some(Decision {
            replicas,
            reason: format!("{current} -> {replicas} replicas: {words}"),
        });
    }
    if wanted < current {
        // Only after a whole window watched, and only to the window's highest.
        if now_ms.saturating_sub(since) < window {
            return None;
        }
        let highest = history
            .recommendations
            .iter()
            .map(|(_, r)| *r)
            .max()
            .unwrap_or(current);
        if highest >= current || !elapsed(history.last_down_ms, spec.scale_down.period_seconds) {
            return None;
        }
        let replicas = highest.max(current.saturating_sub(spec.scale_down.max_step));
        history.last_down_ms = Some(now_ms);
        return Some(Decision {
            replicas,
            reason: format!(
                "{current} -> {replicas} replicas: {words}, the highest need of the last {}s",
                spec.scale_down.stabilization_seconds
            ),
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tugboat_api::spec::{AutoscaleTarget, Cpu, Percent, ScaleDownSpec, ScaleUpSpec};

    fn spec(min: u32, max: u32, target: u32) -> AutoscaleSpec {
        AutoscaleSpec {
            min,
            max,
            target: AutoscaleTarget {
                cpu: Some(Percent(target)),
                memory: None,
            },
            scale_up: ScaleUpSpec::default(),
            scale_down: ScaleDownSpec::default(),
        }
    }

    fn requests(cpu: u64) -> ResourceAmounts {
        ResourceAmounts {
            cpu: Some(Cpu(cpu)),
            ..Default::default()
        }
    }

    fn at(cpu: u64) -> Observed {
        Observed {
            ready: true,
            usage: Some(InstanceStats {
                cpu_millis: cpu,
                memory_bytes: 0,
                pids: 1,
                at_ms: 0,
            }),
        }
    }

    #[test]
    fn a_busy_service_scales_out_in_bounded_steps_with_its_numbers() {
        // 2 instances at 142% of a 100m request, target 70%: 284m needs 5 at 70m each.
        let mut h = History::default();
        let d = decide(
            &spec(2, 10, 70),
            &requests(100),
            2,
            &[at(142), at(142)],
            &mut h,
            0,
        )
        .unwrap();
        assert_eq!(d.replicas, 5);
        assert_eq!(
            d.reason,
            "2 -> 5 replicas: cpu 142% of request (target 70%)"
        );
        // Within the scale-up period: no second step.
        assert_eq!(
            decide(
                &spec(2, 10, 70),
                &requests(100),
                5,
                &[at(300); 5],
                &mut h,
                5_000
            ),
            None
        );
        // Steps of at most 4.
        let mut h = History::default();
        let d = decide(&spec(1, 100, 50), &requests(100), 1, &[at(1000)], &mut h, 0).unwrap();
        assert_eq!(d.replicas, 5);
    }

    #[test]
    fn scale_in_waits_a_whole_window_and_takes_its_highest_need() {
        let s = spec(1, 10, 50);
        let mut h = History::default();
        // Idle from the start: nothing before 300 s.
        for t in (0..300_000).step_by(10_000) {
            assert_eq!(
                decide(&s, &requests(100), 4, &[at(5); 4], &mut h, t),
                None,
                "{t}"
            );
        }
        let d = decide(&s, &requests(100), 4, &[at(5); 4], &mut h, 300_000).unwrap();
        assert_eq!(d.replicas, 3, "one step down");
    }

    #[test]
    fn missing_metrics_never_scale_down_and_unready_instances_do_not_drag() {
        let s = spec(1, 10, 50);
        let mut h = History {
            since_ms: Some(0),
            ..Default::default()
        };
        let silent = Observed {
            ready: true,
            usage: None,
        };
        assert_eq!(
            decide(
                &s,
                &requests(100),
                3,
                &[at(1), at(1), silent],
                &mut h,
                400_000
            ),
            None
        );
        // Two starting instances (not ready) and one busy: the busy one's numbers are the
        // average; counting the starting ones as idle, 3 instances at 100m are still below
        // 1.1 x target... no: 300m over 3 = 100% of request, target 50%: up to 6.
        let starting = Observed {
            ready: false,
            usage: None,
        };
        let mut h = History::default();
        let d = decide(
            &s,
            &requests(100),
            3,
            &[at(300), starting, starting],
            &mut h,
            0,
        )
        .unwrap();
        assert_eq!(d.replicas, 6);
        // No ready instance: nothing to go on.
        assert_eq!(
            decide(&s, &requests(100), 3, &[starting; 3], &mut h, 0),
            None
        );
    }

    proptest! {
        #[test]
        fn decisions_stay_within_min_and_max(
            min in 1u32..5, extra in 0u32..10, current in 0u32..20,
            usage in proptest::collection::vec(0u64..5000, 0..12), target in 10u32..200,
            now in 0u64..1_000_000,
        ) {
            let s = spec(min, min + extra, target);
            let observed: Vec<Observed> = usage.iter().map(|u| at(*u)).collect();
            let mut h = History { since_ms: Some(0), ..Default::default() };
            if let Some(d) = decide(&s, &requests(100), current, &observed, &mut h, now) {
                prop_assert!(d.replicas >= s.min && d.replicas <= s.max, "{d:?}");
                prop_assert_ne!(d.replicas, current);
            }
        }

        #[test]
        fn a_steady_load_within_the_band_never_changes_anything(
            n in 1u32..10, target in 20u32..100, wobble in -9i64..9,
        ) {
            // Every instance within ±9% of the target, to a thousandth of the request (a
            // request of 100m truncated 45% - 9% to 40m: 11% off, outside the band).
            let per = 10 * i64::from(target) * (100 + wobble) / 100;
            let observed = vec![at(per.max(0) as u64); n as usize];
            let s = spec(1, 20, target);
            let mut h = History::default();
            for t in 0..40u64 {
                prop_assert_eq!(
                    decide(&s, &requests(1000), n, &observed, &mut h, t * 15_000),
                    None
                );
            }
        }
    }
}
