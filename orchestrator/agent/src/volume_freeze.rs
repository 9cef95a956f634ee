//! A point-in-time snapshot (`tugboat volume snapshot`, docs/volumes.md): the instances on
//! this node that mount the volume are paused (the cgroup freezer, through their OCI
//! runtime's `pause`: v1's freezer.state or v2's cgroup.freeze, as the runtime finds the
//! host) while its archive is written, and resumed after, always: [`Frozen`] resumes what
//! it paused when it is thawed or dropped (an error, a client gone, a panic).
//!
//! An instance already paused by someone else (`tug pause`) or not running is left as it
//! is: it writes nothing, and it is not ours to resume.

use std::time::{Duration, Instant};

/// Pauses and resumes containers by id (the instance's own runtime; a recording fake in
/// the tests).
pub trait Freezer: Send + 'static {
    /// Freezes container `id`: `Ok(true)` when this call froze it, `Ok(false)` when it was
    /// not running (stopped, or paused already).
    fn pause(&self, id: &str) -> Result<bool, String>;
    fn resume(&self, id: &str) -> Result<(), String>;
}

#[derive(Debug, thiserror::Error)]
pub enum FreezeError {
    #[error("volume {volume}: pausing instance {instance} for a point-in-time snapshot failed: {cause}{undone}; nothing was archived (give --no-freeze to archive without pausing the volume's users)")]
    Pause {
        volume: String,
        instance: String,
        cause: String,
        /// What resuming the instances paused before it could not do (empty when all were).
        undone: String,
    },
}

/// The instances [`freeze`] paused; resumed by [`Frozen::thaw`], or on drop.
pub struct Frozen<F: Freezer> {
    freezer: F,
    volume: String,
    paused: Vec<String>,
    since: Instant,
}

/// Pauses each of `users` (the instances on this node that mount `volume`), in order. If
/// one cannot be paused, those paused before it are resumed and the error names it.
pub fn freeze<F: Freezer>(
    freezer: F,
    volume: &str,
    users: &[String],
) -> Result<Frozen<F>, FreezeError> {
    let mut frozen = Frozen {
        freezer,
        volume: volume.to_string(),
        paused: vec![],
        since: Instant::now(),
    };
    for id in users {
        match frozen.freezer.pause(id) {
            Ok(true) => frozen.paused.push(id.clone()),
            Ok(false) => {}
            Err(cause) => {
                let failures = frozen.resume_all();
                let undone = if failures.is_empty() {
                    String::new()
                } else {
                    format!(" (and resuming: {})", failures.join("; "))
                };
                return Err(FreezeError::Pause {
                    volume: volume.to_string(),
                    instance: id.clone(),
                    cause,
                    undone,
                });
            }
        }
    }
    frozen.since = Instant::now();
    Ok(frozen)
}

/// What a thaw did: how long the instances were paused, and what could not be resumed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thawed {
    pub instances: Vec<String>,
    pub paused_for: Duration,
    pub failures: Vec<String>,
}

impl<F: Freezer> Frozen<F> {
    /// The instances paused, in the order they were.
    pub fn instances(&self) -> &[String] {
        &self.paused
    }

    /// Resumes the paused instances (in reverse order); each failure names its instance.
    fn resume_all(&mut self) -> Vec<String> {
        let mut failures = vec![];
        while let Some(id) = self.paused.pop() {
            if let Err(e) = self.freezer.resume(&id) {
                failures.push(format!("instance {id}: {e}"));
            }
        }
        failures
    }

    /// Resumes every instance paused; how long they were.
    pub fn thaw(mut self) -> Thawed {
        let instances = self.paused.clone();
        let paused_for = self.since.elapsed();
        let failures = self.resume_all();
        Thawed {
            instances,
            paused_for,
            failures,
        }
    }
}

impl<F: Freezer> Drop for Frozen<F> {
    fn drop(&mut self) {
        for failure in self.resume_all() {
            eprintln!(
                "tugboat agent: after the snapshot of volume {}: could not resume {failure}",
                self.volume
            );
        }
    }
}

/// The instances' own runtimes on this node (each instance's `runtime:`), by container id
/// (an instance's container has the instance's id).
pub struct InstanceFreezer {
    pub data_dir: std::path::PathBuf,
    pub runtime_root: std::path::PathBuf,
    pub node: String,
}

impl InstanceFreezer {
    fn oci(&self, id: &str) -> Result<super::oci::Oci, String> {
        let file = super::instance::InstancePaths::new(&self.data_dir, id).record();
        let runtime = super::monitor::read_json::<tugboat_api::model::Instance>(&file)
            .and_then(|i| i.spec.runtime);
        super::oci::Oci::for_name(runtime.as_deref(), &self.runtime_root, &self.node)
    }
}

impl Freezer for InstanceFreezer {
    fn pause(&self, id: &str) -> Result<bool, String> {
        self.oci(id)?.pause(id)
    }

    fn resume(&self, id: &str) -> Result<(), String> {
        self.oci(id)?.resume(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Records the calls; `pause` of `fail_pause` and `resume` of `fail_resume` fail, and
    /// `stopped` are not running.
    #[derive(Clone, Default)]
    struct Recorder {
        calls: Arc<Mutex<Vec<String>>>,
        fail_pause: Option<&'static str>,
        fail_resume: Option<&'static str>,
        stopped: Option<&'static str>,
    }

    impl Freezer for Recorder {
        fn pause(&self, id: &str) -> Result<bool, String> {
            self.calls.lock().unwrap().push(format!("pause {id}"));
            if self.fail_pause == Some(id) {
                return Err("freezer.state: device or resource busy".into());
            }
            Ok(self.stopped != Some(id))
        }

        fn resume(&self, id: &str) -> Result<(), String> {
            self.calls.lock().unwrap().push(format!("resume {id}"));
            if self.fail_resume == Some(id) {
                return Err("no such container".into());
            }
            Ok(())
        }
    }

    fn ids(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_user_is_paused_then_resumed_in_reverse_and_the_time_is_measured() {
        let r = Recorder::default();
        let frozen = freeze(r.clone(), "orders", &ids(&["a", "b"])).unwrap();
        assert_eq!(frozen.instances(), ["a", "b"]);
        std::thread::sleep(Duration::from_millis(20));
        let thawed = frozen.thaw();
        assert!(thawed.paused_for >= Duration::from_millis(20), "{thawed:?}");
        assert!(thawed.failures.is_empty());
        assert_eq!(
            *r.calls.lock().unwrap(),
            ["pause a", "pause b", "resume b", "resume a"]
        );
    }

    #[test]
    fn a_user_that_does_not_run_is_not_resumed_by_us() {
        let r = Recorder {
            stopped: Some("b"),
            ..Default::default()
        };
        let thawed = freeze(r.clone(), "orders", &ids(&["a", "b"]))
            .unwrap()
            .thaw();
        assert_eq!(thawed.instances, ["a"]);
        assert_eq!(*r.calls.lock().unwrap(), ["pause a", "pause b", "resume a"]);
    }

    #[test]
    fn a_failed_pause_resumes_those_paused_before_it_and_names_the_instance() {
        let r = Recorder {
            fail_pause: Some("c"),
            ..Default::default()
        };
        let Err(e) = freeze(r.clone(), "orders", &ids(&["a", "b", "c", "d"])) else {
            panic!("a pause that fails must fail the freeze");
        };
        let text = e.to_string();
        assert!(text.contains("volume orders"), "{text}");
        assert!(text.contains("instance c"), "{text}");
        assert!(text.contains("--no-freeze"), "{text}");
        assert_eq!(
            *r.calls.lock().unwrap(),
            ["pause a", "pause b", "pause c", "resume b", "resume a"]
        );
    }

    #[test]
    fn dropping_the_guard_resumes_everything_even_when_one_resume_fails() {
        let r = Recorder {
            fail_resume: Some("b"),
            ..Default::default()
        };
        {
            let _frozen = freeze(r.clone(), "orders", &ids(&["a", "b", "c"])).unwrap();
            // (an error or a panic while archiving: the guard goes out of scope)
        }
        assert_eq!(
            *r.calls.lock().unwrap(),
            ["pause a", "pause b", "pause c", "resume c", "resume b", "resume a"]
        );
        let r2 = Recorder {
            fail_resume: Some("a"),
            ..Default::default()
        };
        let thawed = freeze(r2, "orders", &ids(&["a"])).unwrap().thaw();
        assert_eq!(thawed.failures, ["instance a: no such container"]);
    }
}
