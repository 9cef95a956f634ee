//! Looking at and changing a running container through its cgroup: `ps`, `events` (stats
//! and OOM), `update`.

use std::path::Path;
use std::time::{Duration, Instant};

use oci_spec::runtime::LinuxResources;
use serde_json::{json, Value};

use crate::cgroups::FsCgroup;
use crate::container::{io_err, live_status, Error};
use crate::state::{check_transition, Operation, Status};
use crate::Runtime;

/// One event of `tug events`, in runc's JSON shape.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// `{"type":"stats","id":..,"data":{cpu, memory, pids, blkio}}`
    Stats(Value),
    /// `{"type":"oom","id":..}`: the OOM killer killed a process of the container.
    Oom,
}

impl Event {
    pub fn to_json(&self, id: &str) -> Value {
        match self {
            Event::Stats(data) => json!({"type": "stats", "id": id, "data": data}),
            Event::Oom => json!({"type": "oom", "id": id}),
        }
    }
}

impl Runtime {
    /// The pids (as the host sees them) of every process in the container's cgroup.
    pub fn ps(&self, id: &str) -> Result<Vec<i32>, Error> {
        let st = self.load(id)?;
        if live_status(&st) == Status::Stopped {
            return Err(Error::Init {
                id: id.to_string(),
                message: "is stopped: it has no processes".into(),
            });
        }
        let mut pids = crate::cgroups::open(&st.cgroup_path)?.pids()?;
        pids.sort_unstable();
        Ok(pids)
    }

    /// The container's resource usage, in runc's `events --stats` shape.
    pub fn stats(&self, id: &str) -> Result<Value, Error> {
        let st = self.load(id)?;
        if live_status(&st) == Status::Stopped {
            return Err(Error::Init {
                id: id.to_string(),
                message: "is stopped: it has no stats".into(),
            });
        }
        if st.cgroup_path.is_empty() {
            return Err(Error::Init {
                id: id.to_string(),
                message: "has no cgroup, so no stats (rootless without a delegated cgroup)".into(),
            });
        }
        Ok(stats_json(&FsCgroup::new(&st.cgroup_path)?))
    }

    /// Streams events until the container stops (or `limit` passes): stats every `interval`,
    /// and an OOM event whenever the kernel's OOM-kill count of its cgroup grows.
    pub fn events(
        &self,
        id: &str,
        interval: Duration,
        limit: Option<Duration>,
        mut emit: impl FnMut(Event) -> std::io::Result<()>,
    ) -> Result<(), Error> {
        let st = self.load(id)?;
        if st.cgroup_path.is_empty() {
            return Err(Error::Init {
                id: id.to_string(),
                message: "has no cgroup, so no events (rootless without a delegated cgroup)".into(),
            });
        }
        let cg = FsCgroup::new(&st.cgroup_path)?;
        let started = Instant::now();
        let tick = interval.min(Duration::from_millis(250));
        let mut ooms = cg.oom_kills();
        let mut next_stats = Instant::now();
        loop {
            let status = live_status(&self.load(id)?);
            let now_ooms = cg.oom_kills();
            for _ in ooms..now_ooms {
                emit(Event::Oom).map_err(io_err("write event"))?;
            }
            ooms = now_ooms;
            if status == Status::Stopped || limit.is_some_and(|l| started.elapsed() >= l) {
                return Ok(());
            }
            if Instant::now() >= next_stats {
                emit(Event::Stats(stats_json(&cg))).map_err(io_err("write event"))?;
                next_stats += interval;
            }
            std::thread::sleep(tick);
        }
    }

    /// Changes the limits of a created, running or paused container.
    pub fn update(&self, id: &str, resources: &LinuxResources) -> Result<(), Error> {
        let st = self.load(id)?;
        check_transition(id, live_status(&st), Operation::Update)?;
        crate::cgroups::open(&st.cgroup_path)?.update(resources)?;
        Ok(())
    }
}

/// Reads `-r resources.json` (an OCI linux.resources object); errors name the file and field.
pub fn resources_from_file(path: &Path) -> Result<LinuxResources, Error> {
    let text = std::fs::read(path).map_err(io_err(format!("-r {}", path.display())))?;
    crate::jsonpath::from_slice(&text).map_err(|(field, message)| {
        Error::Usage(format!("-r {}: {field}: {message}", path.display()))
    })
}

fn stats_json(cg: &FsCgroup) -> Value {
    let s = cg.stats();
    let cpu = s
        .cpu
        .cpu_acct
        .as_ref()
        .map(|c| {
            json!({"total": c.total_usage, "percpu": c.usage_percpu,
                   "kernel": c.system_usage, "user": c.user_usage})
        })
        .or_else(|| {
            // v2 counts no per-CPU time.
            cg.v2_cpu_usage().map(|(total, user, kernel)| {
                json!({"total": total, "percpu": [], "kernel": kernel, "user": user})
            })
        });
    let throttling = s.cpu.cpu_throttling.as_ref().map(|t| {
        json!({"periods": t.periods, "throttledPeriods": t.throttled_periods,
               "throttledTime": t.throttled_time})
    });
    let mem = |m: &Option<cgroups_rs::stats::MemoryStats>| {
        m.as_ref().map(|m| {
            json!({"usage": m.usage, "max": m.max_usage, "limit": m.limit, "failcnt": m.fail_cnt})
        })
    };
    let m = &s.memory;
    let blkio: Vec<Value> = s
        .blkio
        .io_service_bytes_recursive
        .iter()
        .map(|b| json!({"major": b.major, "minor": b.minor, "op": b.op, "value": b.value}))
        .collect();
    json!({
        "cpu": {"usage": cpu, "throttling": throttling},
        "memory": {
            "usage": mem(&m.memory),
            "swap": mem(&m.memory_swap),
            "cache": m.cache,
            "raw": {"rss": m.rss, "cache": m.cache, "shmem": m.shmem, "pgfault": m.pgfault,
                    "pgmajfault": m.pgmajfault, "active_anon": m.active_anon,
                    "inactive_anon": m.inactive_anon},
        },
        "pids": {"current": s.pids.current, "limit": s.pids.limit},
        "blkio": {"ioServiceBytesRecursive": blkio},
        "oomKills": cg.oom_kills(),
    })
}
