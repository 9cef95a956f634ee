//! The container lifecycle: create, start, state, kill, delete, run, list.
//!
//! Each command is one function over the state directory `<root>/<id>/`. Commands that change a
//! container hold an exclusive flock on that directory, so two `tug` processes never interleave.

use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{open, OFlag};
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::sys::stat::Mode;
use nix::unistd::Pid;
use oci_spec::runtime::LinuxNamespaceType;

use crate::cgroups::{self, CgroupError, CgroupManager, FsCgroup};
use crate::channel::{Channel, InitMsg, ParentMsg};
use crate::clone::{clone_child, single_threaded, Forked};
use crate::hooks::{self, HookError};
use crate::init::{self, InitConfig};
use crate::signal::BadSignal;
use crate::spec::{Bundle, SpecError};
use crate::state::{
    check_transition, now_rfc3339, process_alive, process_start_time, validate_id, write_atomic,
    ContainerState, Operation, StateError, Status,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Hook(#[from] HookError),
    #[error(transparent)]
    Signal(#[from] BadSignal),
    #[error("container {id}: {message}")]
    Init { id: String, message: String },
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("{0}")]
    Usage(String),
    #[error("{error}; cleanup could not undo: {leftovers}")]
    CleanupFailed {
        error: Box<Error>,
        leftovers: String,
    },
}

/// A connection to the seccomp agent on linux.seccomp.listenerPath, when the container's
/// filter has SCMP_ACT_NOTIFY rules (the spec: no state is sent otherwise).
pub(crate) fn seccomp_agent(bundle: &crate::spec::Bundle) -> Result<Option<OwnedFd>, Error> {
    if !bundle.seccomp.as_ref().is_some_and(|p| p.notifies()) {
        return Ok(None);
    }
    let path = bundle
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.seccomp().as_ref())
        .and_then(|s| s.listener_path().as_deref())
        .ok_or_else(|| Error::Usage("linux.seccomp.listenerPath: is needed".into()))?;
    crate::seccomp::notify::connect(path)
        .map(Some)
        .map_err(Error::Usage)
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// Options of `create` and `run`, with runc's names.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    pub bundle: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub no_pivot: bool,
    pub preserve_fds: u32,
}

/// A container as `list` reports it.
#[derive(Debug, Clone)]
pub struct Listed {
    pub state: ContainerState,
    pub status: Status,
}

/// `tug list`'s table: ID, PID, STATUS, BUNDLE, CREATED, each column as wide as its widest
/// cell (runc's tabwriter layout), so long ids and bundle paths keep the columns straight.
pub fn list_table(list: &[Listed]) -> String {
    let header = ["ID", "PID", "STATUS", "BUNDLE", "CREATED"].map(String::from);
    let rows: Vec<[String; 5]> = list
        .iter()
        .map(|c| {
            let pid = match c.status {
                Status::Stopped => 0,
                _ => c.state.pid.unwrap_or(0),
            };
            [
                c.state.id.clone(),
                pid.to_string(),
                c.status.to_string(),
                c.state.bundle.display().to_string(),
                c.state.created.clone(),
            ]
        })
        .collect();
    let mut widths = [0usize; 5];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out += cells.join("   ").trim_end();
        out.push('\n');
    }
    out
}

/// The runtime: a state root and the operations on containers under it.
#[derive(Debug, Clone)]
pub struct Runtime {
    root: PathBuf,
}

/// Undoes a half-made container; disarmed once create succeeds.
struct Undo {
    dir: PathBuf,
    cgroup: Option<Box<dyn CgroupManager>>,
    child: Option<i32>,
    /// linux.netDevices moved so far, and the namespace they are in: moved back first, as
    /// the namespace (and a virtual device with it) ends with the child.
    net_devices: Vec<crate::netdev::NetDevice>,
    /// Held open, so the namespace outlives an init that died during setup.
    netns: Option<OwnedFd>,
    armed: bool,
}

impl Undo {
    fn run(mut self, error: Error) -> Error {
        let mut left = Vec::new();
        if let Some(netns) = &self.netns {
            if let Err(e) = crate::netdev::move_out(netns, &self.net_devices) {
                left.push(e);
            }
        }
        if let Some(pid) = self.child.take() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), None);
        }
        if let Some(mut cg) = self.cgroup.take() {
            if let Err(e) = cg.destroy() {
                left.push(e.to_string());
            }
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            if e.kind() != io::ErrorKind::NotFound {
                left.push(format!("state dir {}: {e}", self.dir.display()));
            }
        }
        self.armed = false;
        if left.is_empty() {
            error
        } else {
            Error::CleanupFailed {
                error: Box::new(error),
                leftovers: left.join("; "),
            }
        }
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        debug_assert!(
            !self.armed || std::thread::panicking(),
            "Undo dropped while armed"
        );
    }
}

/// An exclusive flock on a container's state directory, released on drop.
struct DirLock(fs::File);

fn lock_dir(dir: &Path, id: &str) -> Result<DirLock, Error> {
    let f = fs::File::open(dir).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            Error::State(StateError::NotFound(id.to_string()))
        } else {
            io_err(format!("open {}", dir.display()))(e)
        }
    })?;
    // SAFETY: flock on an fd we own; released when the file is closed.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) } != 0 {
        return Err(io_err(format!("lock {}", dir.display()))(
            io::Error::last_os_error(),
        ));
    }
    Ok(DirLock(f))
}

/// The fifo whose end of file tells `start` that init has exec'd the user's process.
const EXEC_DONE: &str = "exec.done";

/// Reads `done` (opened non-blocking) to its end in blocking mode; returns what was written.
fn wait_for_exec(done: &fs::File) -> io::Result<String> {
    use std::io::Read;
    let flags = nix::fcntl::fcntl(done, nix::fcntl::FcntlArg::F_GETFL)?;
    let flags = OFlag::from_bits_retain(flags) & !OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(done, nix::fcntl::FcntlArg::F_SETFL(flags))?;
    let mut text = String::new();
    let mut f = done;
    loop {
        match f.read_to_string(&mut text) {
            Ok(_) => return Ok(text),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The status a container is in now, from its saved state and its process.
pub fn live_status(st: &ContainerState) -> Status {
    match (st.pid, st.pid_start_time) {
        (Some(pid), Some(t)) if process_alive(pid, t) => match st.status {
            Status::Creating => Status::Creating,
            Status::Created => Status::Created,
            Status::Paused => Status::Paused,
            _ => Status::Running,
        },
        (Some(_), _) => Status::Stopped,
        (None, _) => st.status,
    }
}

fn ns_flag(t: LinuxNamespaceType) -> CloneFlags {
    match t {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::Time => CloneFlags::from_bits_retain(libc::CLONE_NEWTIME),
    }
}

impl Runtime {
    pub fn new(root: impl Into<PathBuf>) -> Runtime {
        Runtime { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Loads a container's saved state.
    pub fn load(&self, id: &str) -> Result<ContainerState, Error> {
        validate_id(id)?;
        let dir = self.dir(id);
        if !dir.is_dir() {
            return Err(StateError::NotFound(id.to_string()).into());
        }
        Ok(ContainerState::load(&dir)?)
    }

    /// The OCI state document of a container.
    pub fn state(&self, id: &str) -> Result<serde_json::Value, Error> {
        let st = self.load(id)?;
        Ok(st.to_oci(live_status(&st)))
    }

    /// Creates a container from a bundle; its init waits for [`Runtime::start`].
    ///
    /// Must be called from a single-threaded process (the `tug` binary is one).
    pub fn create(&self, id: &str, opts: &CreateOptions) -> Result<ContainerState, Error> {
        self.create_with(id, opts, None).map(|(st, _)| st)
    }

    /// `create`, where `own_console` (one end of a socket pair the caller keeps the other end
    /// of) receives the terminal of a `process.terminal` container that has no
    /// `--console-socket`; it is unused otherwise. Also says whether there is a terminal.
    fn create_with(
        &self,
        id: &str,
        opts: &CreateOptions,
        own_console: Option<OwnedFd>,
    ) -> Result<(ContainerState, bool), Error> {
        validate_id(id)?;
        let bundle = Bundle::load(&opts.bundle)?;
        // Checked here, not with the rest of config.json: once moved, a device is in the
        // container's namespace, and `exec` loads the same config.
        if let Some(linux) = bundle.spec.linux() {
            crate::netdev::check_present(&crate::netdev::devices(linux)).map_err(|message| {
                Error::Usage(format!("{}: {message}", bundle.config_path().display()))
            })?;
        }
        let terminal = bundle
            .spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        match (terminal, &opts.console_socket) {
            (true, None) if own_console.is_none() => {
                return Err(Error::Usage(format!(
                    "{}: process.terminal is true: give --console-socket to receive the terminal",
                    bundle.config_path().display()
                )))
            }
            (false, Some(s)) => {
                return Err(Error::Usage(format!(
                    "--console-socket {} was given but {} has process.terminal false",
                    s.display(),
                    bundle.config_path().display()
                )))
            }
            _ => {}
        }
        if !single_threaded() {
            return Err(Error::Usage(
                "create must be called from a single-threaded process".into(),
            ));
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(io_err(format!("state root {}", self.root.display())))?;
        let dir = self.dir(id);
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(StateError::Exists(id.to_string()).into())
            }
            Err(e) => return Err(io_err(format!("state dir {}", dir.display()))(e)),
        }
        let mut undo = Undo {
            dir: dir.clone(),
            cgroup: None,
            child: None,
            net_devices: Vec::new(),
            netns: None,
            armed: true,
        };
        let result = lock_dir(&dir, id).and_then(|lock| {
            let lock_fd = std::os::fd::AsRawFd::as_raw_fd(&lock.0);
            let console = if terminal { own_console } else { None };
            self.create_inner(id, &bundle, opts, &mut undo, lock_fd, console)
                .map(|s| (s, lock))
        });
        match result {
            Ok((st, _lock)) => {
                undo.armed = false;
                Ok((st, terminal))
            }
            Err(e) => Err(undo.run(e)),
        }
    }

    fn create_inner(
        &self,
        id: &str,
        bundle: &Bundle,
        opts: &CreateOptions,
        undo: &mut Undo,
        lock_fd: std::os::fd::RawFd,
        own_console: Option<OwnedFd>,
    ) -> Result<ContainerState, Error> {
        let dir_buf = undo.dir.clone();
        let dir: &Path = &dir_buf;
        let spec = &bundle.spec;
        let linux = spec.linux().as_ref().expect("validated");
        let cgroup_path = linux
            .cgroups_path()
            .as_ref()
            .map(|p| {
                let s = p.to_string_lossy().into_owned();
                if s.starts_with('/') {
                    s
                } else {
                    format!("/{s}")
                }
            })
            .unwrap_or_else(|| cgroups::default_path(id));
        // Rootless without a delegated cgroup: no cgroup, and "" in the state says so.
        let cgroup_path = if cgroups::can_make_cgroups() {
            cgroup_path
        } else {
            String::new()
        };
        let mut st = ContainerState {
            oci_version: spec.version().clone(),
            id: id.to_string(),
            status: Status::Creating,
            pid: None,
            pid_start_time: None,
            bundle: bundle.dir.clone(),
            rootfs: bundle.rootfs.clone(),
            created: now_rfc3339(),
            annotations: spec.annotations().clone().unwrap_or_default(),
            cgroup_path: cgroup_path.clone(),
            owner: String::new(),
            hooks: spec.hooks().clone(),
            net_devices: Vec::new(),
        };
        st.save(dir)?;

        let fifo_path = dir.join("exec.fifo");
        nix::unistd::mkfifo(&fifo_path, Mode::from_bits_truncate(0o600))
            .map_err(|e| io_err(format!("mkfifo {}", fifo_path.display()))(e.into()))?;
        let fifo = open(&fifo_path, OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|e| io_err(format!("open {}", fifo_path.display()))(e.into()))?;
        let done_path = dir.join(EXEC_DONE);
        nix::unistd::mkfifo(&done_path, Mode::from_bits_truncate(0o600))
            .map_err(|e| io_err(format!("mkfifo {}", done_path.display()))(e.into()))?;
        let exec_done = open(&done_path, OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|e| io_err(format!("open {}", done_path.display()))(e.into()))?;

        let mut cg: Box<dyn CgroupManager> = cgroups::open(&cgroup_path)?;
        let created = cg.create(linux.resources().as_ref());
        undo.cgroup = Some(cg);
        created?;
        let cg = undo.cgroup.as_mut().expect("just set");

        let mut clone_flags = CloneFlags::empty();
        let mut join = Vec::new();
        let mut pid_ns: Option<OwnedFd> = None;
        let mut new_cgroup_ns = false;
        let mut new_time_ns = false;
        for ns in linux.namespaces().iter().flatten() {
            let flag = ns_flag(ns.typ());
            match ns.path() {
                None if ns.typ() == LinuxNamespaceType::Cgroup => new_cgroup_ns = true,
                None if ns.typ() == LinuxNamespaceType::Time => new_time_ns = true,
                None => clone_flags |= flag,
                Some(p) => {
                    let fd = open(
                        p.as_path(),
                        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(|e| io_err(format!("namespace {}", p.display()))(e.into()))?;
                    if ns.typ() == LinuxNamespaceType::Pid {
                        pid_ns = Some(fd);
                    } else {
                        join.push((fd, flag));
                    }
                }
            }
        }

        // A user namespace joined by path comes first: it decides what the others may do.
        join.sort_by_key(|(_, f)| *f != CloneFlags::CLONE_NEWUSER);

        let console = match &opts.console_socket {
            None => own_console,
            Some(path) => {
                let s = std::os::unix::net::UnixStream::connect(path)
                    .map_err(io_err(format!("--console-socket {}", path.display())))?;
                Some(OwnedFd::from(s))
            }
        };

        // Idmapped bind mounts: a user namespace per mount, made here where tug is still in
        // the host's namespaces.
        let mut idmaps = Vec::new();
        for (i, m) in spec.mounts().iter().flatten().enumerate() {
            let uids = m.uid_mappings().as_deref().unwrap_or(&[]);
            if uids.is_empty() {
                continue;
            }
            let gids = m.gid_mappings().as_deref().unwrap_or(&[]);
            let userns = crate::rootless::userns_fd(uids, gids)
                .map_err(|message| Error::Usage(format!("mounts[{i}].uidMappings: {message}")))?;
            // The idmapped copy itself is made here too: mount_setattr needs CAP_SYS_ADMIN
            // over the source's filesystem, which init in a user namespace of its own lacks.
            let source = bundle
                .dir
                .join(m.source().as_deref().unwrap_or(Path::new("")));
            let recursive = m
                .options()
                .iter()
                .flatten()
                .any(|o| o == "rbind" || o == "ridmap");
            let tree = crate::syscall::idmapped_tree(&source, userns.as_fd(), recursive).map_err(
                io_err(format!(
                    "mounts[{i}]: an idmapped copy of {}",
                    source.display()
                )),
            )?;
            idmaps.push((i, tree));
        }
        // A notifying seccomp filter's agent, reached here, where its path is the host's.
        let seccomp_agent = seccomp_agent(bundle)?;
        let (parent_ch, init_ch) = Channel::pair().map_err(io_err("socketpair"))?;
        let own_pid_ns = match &pid_ns {
            Some(target) => {
                let own = open(
                    "/proc/self/ns/pid",
                    OFlag::O_RDONLY | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| io_err("open /proc/self/ns/pid")(e.into()))?;
                nix::sched::setns(target.as_fd(), CloneFlags::CLONE_NEWPID)
                    .map_err(|e| io_err("join pid namespace")(e.into()))?;
                Some(own)
            }
            None => None,
        };
        if new_time_ns {
            enter_time_ns_for_children(linux)?;
        }
        // A new user namespace with network, ipc or uts namespaces joined by path (owned by
        // this user namespace): init could not join them from inside its new one (setns
        // needs CAP_SYS_ADMIN over their owner), so they are joined here, in this process,
        // and the clone inherits them, as runc joins before it unshares the user namespace.
        // This process goes back to its own right after the clone.
        let mut own_namespaces = Vec::new();
        if clone_flags.contains(CloneFlags::CLONE_NEWUSER) {
            let inherit = [
                (CloneFlags::CLONE_NEWNET, "net"),
                (CloneFlags::CLONE_NEWIPC, "ipc"),
                (CloneFlags::CLONE_NEWUTS, "uts"),
            ];
            let mut kept = Vec::with_capacity(join.len());
            for (fd, flag) in join {
                let Some((_, name)) = inherit.iter().find(|(f, _)| *f == flag) else {
                    kept.push((fd, flag));
                    continue;
                };
                let path = format!("/proc/self/ns/{name}");
                let own = open(
                    path.as_str(),
                    OFlag::O_RDONLY | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| io_err(format!("open {path}"))(e.into()))?;
                nix::sched::setns(fd.as_fd(), flag)
                    .map_err(|e| io_err(format!("join the {name} namespace"))(e.into()))?;
                own_namespaces.push((own, flag));
            }
            join = kept;
        }
        // The same for process.oomScoreAdj: in a new user namespace init may raise its score
        // but not lower it, nor write the host's /proc; the clone inherits this process's,
        // which goes back right after.
        let mut own_oom_score_adj = None;
        if clone_flags.contains(CloneFlags::CLONE_NEWUSER) {
            if let Some(process) = spec
                .process()
                .as_ref()
                .filter(|p| p.oom_score_adj().is_some())
            {
                let own = fs::read_to_string("/proc/self/oom_score_adj")
                    .map_err(io_err("/proc/self/oom_score_adj"))?;
                crate::finalize::set_oom_score_adj(process).map_err(Error::Usage)?;
                own_oom_score_adj = Some(own);
            }
        }
        let cgroup_fd = cg.clone_into_fd();
        let parent_pid = std::process::id() as i32;
        let forked = clone_child(
            clone_flags.bits() as u64,
            cgroup_fd.as_ref().map(|f| f.as_fd()),
        );
        if let Some(own) = &own_pid_ns {
            let _ = nix::sched::setns(own.as_fd(), CloneFlags::CLONE_NEWPID);
        }
        if !matches!(forked, Ok((Forked::Child, _))) {
            if let Some(own) = &own_oom_score_adj {
                fs::write("/proc/self/oom_score_adj", own.trim())
                    .map_err(io_err("/proc/self/oom_score_adj"))?;
            }
            for (own, flag) in &own_namespaces {
                nix::sched::setns(own.as_fd(), *flag)
                    .map_err(|e| io_err("return to tug's own namespaces")(e.into()))?;
            }
        }
        let (pid, placed) = match forked.map_err(io_err("clone the container's init"))? {
            (Forked::Child, _) => {
                drop(parent_ch);
                // The parent's flock must not live on in init, or `start` would wait forever.
                // SAFETY: closing our copy of an fd the parent keeps open.
                unsafe { libc::close(lock_fd) };
                init::run(InitConfig {
                    bundle,
                    channel: init_ch,
                    fifo,
                    exec_done,
                    join,
                    new_cgroup_ns,
                    new_user_ns: clone_flags.contains(CloneFlags::CLONE_NEWUSER),
                    idmaps,
                    cgroup_mounts: cg.mounts(),
                    no_pivot: opts.no_pivot,
                    console,
                    preserve_fds: opts.preserve_fds,
                    parent_pid,
                    seccomp_agent,
                })
            }
            (Forked::Parent { child }, placed) => (child, placed),
        };
        undo.child = Some(pid);
        drop((
            init_ch,
            fifo,
            exec_done,
            join,
            console,
            cgroup_fd,
            seccomp_agent,
        ));

        if clone_flags.contains(CloneFlags::CLONE_NEWUSER) {
            crate::rootless::write_maps(
                pid,
                linux.uid_mappings().as_deref().unwrap_or(&[]),
                linux.gid_mappings().as_deref().unwrap_or(&[]),
            )
            .map_err(|message| Error::Usage(format!("user namespace of pid {pid}: {message}")))?;
        }
        if !placed {
            cg.add_process(pid)?;
        }
        st.pid = Some(pid);
        st.pid_start_time = process_start_time(pid);
        // linux.netDevices, before any hook or the container's process can look for them.
        let devices = crate::netdev::devices(linux);
        if !devices.is_empty() {
            let path = crate::netdev::container_netns(linux, pid);
            let netns = undo
                .netns
                .insert(crate::netdev::open_netns(&path).map_err(Error::Usage)?);
            for d in &devices {
                crate::netdev::move_in(netns, std::slice::from_ref(d)).map_err(Error::Usage)?;
                undo.net_devices.push(d.clone());
            }
            st.net_devices = devices;
        }
        let state_json = st.to_oci(Status::Creating).to_string();
        parent_ch
            .send(&ParentMsg::CgroupJoined {
                state: state_json.clone(),
            })
            .map_err(|e| init_error(id, &parent_ch, e, cg.as_ref(), linux))?;
        loop {
            match parent_ch.recv::<InitMsg>() {
                Ok(InitMsg::RunHooks) => {
                    if let Some(h) = spec.hooks() {
                        hooks::run_hooks(
                            "prestart",
                            h.prestart().as_deref().unwrap_or(&[]),
                            &state_json,
                        )?;
                        hooks::run_hooks(
                            "createRuntime",
                            h.create_runtime().as_deref().unwrap_or(&[]),
                            &state_json,
                        )?;
                    }
                    parent_ch
                        .send(&ParentMsg::HooksDone)
                        .map_err(|e| init_error(id, &parent_ch, e, cg.as_ref(), linux))?;
                }
                Ok(InitMsg::Ready) => break,
                Ok(InitMsg::Error(message)) => {
                    return Err(Error::Init {
                        id: id.to_string(),
                        message,
                    })
                }
                Err(e) => {
                    return Err(Error::Init {
                        id: id.to_string(),
                        message: died_during_setup(&e.to_string(), cg.as_ref(), linux),
                    })
                }
            }
        }

        st.status = Status::Created;
        st.save(dir)?;
        if let Some(pf) = &opts.pid_file {
            write_atomic(pf, pid.to_string().as_bytes())?;
        }
        Ok(st)
    }

    /// Lets a created container's init exec the user's process.
    pub fn start(&self, id: &str) -> Result<(), Error> {
        validate_id(id)?;
        let dir = self.dir(id);
        let _lock = lock_dir(&dir, id)?;
        let mut st = ContainerState::load(&dir)?;
        check_transition(id, live_status(&st), Operation::Start)?;
        // Open exec.done before the go byte, so its end of file means init has exec'd.
        let done_path = dir.join(EXEC_DONE);
        let done = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&done_path)
            .ok();
        let fifo_path = dir.join("exec.fifo");
        let fifo = fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&fifo_path)
            .map_err(|e| Error::Init {
                id: id.to_string(),
                message: format!("init is not waiting on {}: {e}", fifo_path.display()),
            })?;
        (&fifo)
            .write_all(&[0])
            .map_err(io_err(format!("write {}", fifo_path.display())))?;
        drop(fifo);
        let _ = fs::remove_file(&fifo_path);
        if let Some(done) = done {
            // Blocks until init's copy closes: at its exec, or when it dies. Anything written
            // is init's error (a startContainer hook or the exec failed).
            let failure =
                wait_for_exec(&done).map_err(io_err(format!("read {}", done_path.display())))?;
            let _ = fs::remove_file(&done_path);
            if !failure.is_empty() {
                st.status = Status::Stopped;
                st.save(&dir)?;
                return Err(Error::Init {
                    id: id.to_string(),
                    message: failure,
                });
            }
        }
        st.status = Status::Running;
        st.save(&dir)?;
        if let Some(h) = st.hooks.as_ref().and_then(|h| h.poststart().clone()) {
            let state_json = st.to_oci(Status::Running).to_string();
            for e in hooks::run_hooks_lenient("poststart", &h, &state_json) {
                tracing::warn!("{e}");
            }
        }
        Ok(())
    }

    /// Sends a signal to the container's init, or with `all` to every process in its cgroup.
    pub fn kill(&self, id: &str, signal: Signal, all: bool) -> Result<(), Error> {
        let st = self.load(id)?;
        let status = live_status(&st);
        check_transition(id, status, Operation::Kill)?;
        if all {
            if st.cgroup_path.is_empty() {
                // No cgroup to list: the init and, in its own pid namespace, all with it.
                let pid = st.pid.expect("a live container has a pid");
                let _ = kill(Pid::from_raw(pid), signal);
                return Ok(());
            }
            let cg = FsCgroup::new(&st.cgroup_path)?;
            for pid in cg.pids()? {
                let _ = kill(Pid::from_raw(pid), signal);
            }
            return Ok(());
        }
        let pid = st.pid.expect("a live container has a pid");
        kill(Pid::from_raw(pid), signal)
            .map_err(|e| io_err(format!("signal {signal} to container {id} (pid {pid})"))(e.into()))
    }

    /// Freezes every process of a running container (cgroup freezer, v1 or v2).
    pub fn pause(&self, id: &str) -> Result<(), Error> {
        self.set_frozen(id, Operation::Pause, true)
    }

    /// Thaws a paused container.
    pub fn resume(&self, id: &str) -> Result<(), Error> {
        self.set_frozen(id, Operation::Resume, false)
    }

    fn set_frozen(&self, id: &str, op: Operation, frozen: bool) -> Result<(), Error> {
        validate_id(id)?;
        let dir = self.dir(id);
        let _lock = lock_dir(&dir, id)?;
        let mut st = ContainerState::load(&dir)?;
        check_transition(id, live_status(&st), op)?;
        cgroups::open(&st.cgroup_path)?.freeze(frozen)?;
        st.status = if frozen {
            Status::Paused
        } else {
            Status::Running
        };
        st.save(&dir)?;
        Ok(())
    }

    /// Removes a container: its processes (with `force`), cgroup and state.
    pub fn delete(&self, id: &str, force: bool) -> Result<(), Error> {
        validate_id(id)?;
        let dir = self.dir(id);
        let _lock = lock_dir(&dir, id)?;
        let st = ContainerState::load(&dir)?;
        let status = live_status(&st);
        let op = if force {
            Operation::ForceDelete
        } else {
            Operation::Delete
        };
        check_transition(id, status, op)?;
        let mut cg = cgroups::open(&st.cgroup_path)?;
        if status != Status::Stopped {
            if let (Some(pid), false) = (st.pid, st.net_devices.is_empty()) {
                // While init holds the namespace: the devices go back under their own names.
                let netns = crate::netdev::open_netns(Path::new(&format!("/proc/{pid}/ns/net")));
                if let Err(e) = netns.and_then(|n| crate::netdev::move_out(&n, &st.net_devices)) {
                    tracing::warn!("container {id}: {e}");
                }
            }
            if let Some(pid) = st.pid {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                if status == Status::Paused {
                    let _ = cg.freeze(false);
                }
            }
        }
        // Whatever else is left in the cgroup (a container sharing the host's pid namespace).
        for pid in cg.pids().unwrap_or_default() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if let Some(pid) = st.pid {
            if status != Status::Stopped && !hooks::wait_exit(pid, Duration::from_secs(10)) {
                return Err(Error::Init {
                    id: id.to_string(),
                    message: format!("pid {pid} did not exit after SIGKILL"),
                });
            }
        }
        cg.destroy()?;
        if let Some(h) = st.hooks.as_ref().and_then(|h| h.poststop().clone()) {
            let state_json = st.to_oci(Status::Stopped).to_string();
            for e in hooks::run_hooks_lenient("poststop", &h, &state_json) {
                tracing::warn!("{e}");
            }
        }
        fs::remove_dir_all(&dir).map_err(io_err(format!("remove {}", dir.display())))?;
        Ok(())
    }

    /// Every container under the root, sorted by id.
    pub fn list(&self) -> Result<Vec<Listed>, Error> {
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(io_err(format!("read {}", self.root.display()))(e)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if !path.is_dir() {
                continue;
            }
            match ContainerState::load(&path) {
                Ok(state) => {
                    let status = live_status(&state);
                    out.push(Listed { state, status });
                }
                Err(e) => tracing::warn!("skipping {}: {e}", path.display()),
            }
        }
        out.sort_by(|a, b| a.state.id.cmp(&b.state.id));
        Ok(out)
    }

    /// `run`: create and start; in the foreground, wait for the process, forward signals to
    /// it, delete the container and return its exit code (128+n when killed by signal n).
    pub fn run(&self, id: &str, opts: &CreateOptions, detach: bool) -> Result<i32, Error> {
        if detach {
            self.create(id, opts)?;
            if let Err(e) = self.start(id) {
                let _ = self.delete(id, true);
                return Err(e);
            }
            return Ok(0);
        }
        let forwarded = forwarded_signals();
        forwarded
            .thread_block()
            .map_err(|e| io_err("block signals")(e.into()))?;
        // A terminal with no --console-socket comes to tug, which relays it (runc does too).
        let (ours, theirs) = match &opts.console_socket {
            None => {
                let (a, b) =
                    std::os::unix::net::UnixStream::pair().map_err(io_err("socketpair"))?;
                (Some(OwnedFd::from(a)), Some(OwnedFd::from(b)))
            }
            Some(_) => (None, None),
        };
        let (st, terminal) = self.create_with(id, opts, theirs)?;
        let pid = Pid::from_raw(st.pid.expect("created"));
        let master = match &ours {
            Some(sock) if terminal => match crate::tty::receive_master(sock) {
                Ok(m) => Some(m),
                Err(e) => {
                    let _ = self.delete(id, true);
                    return Err(io_err("receive the container's terminal")(e));
                }
            },
            _ => None,
        };
        drop(ours);
        if let Err(e) = self.start(id) {
            let _ = self.delete(id, true);
            return Err(e);
        }
        if let Some(master) = master {
            let code = crate::tty::relay(master, pid, &forwarded);
            self.delete(id, true)?;
            return code.map_err(io_err("relay the terminal"));
        }
        let code = wait_forwarding(&forwarded, pid)?;
        self.delete(id, true)?;
        Ok(code)
    }
}

/// The error for a failed send to init: init's own report when it sent one before exiting.
fn init_error(
    id: &str,
    ch: &Channel,
    send_error: io::Error,
    cg: &dyn CgroupManager,
    linux: &oci_spec::runtime::Linux,
) -> Error {
    let message = match ch.recv::<InitMsg>() {
        Ok(InitMsg::Error(m)) => m,
        _ => died_during_setup(&format!("sending to it: {send_error}"), cg, linux),
    };
    Error::Init {
        id: id.to_string(),
        message,
    }
}

/// Why init went away before Ready without a word: the OOM killer, when the cgroup counts a
/// kill and config.json has a memory limit (a limit below what setup needs: on v1 and v2
/// the limit is set on the empty cgroup, so the write succeeds and init is killed later).
fn died_during_setup(
    detail: &str,
    cg: &dyn CgroupManager,
    linux: &oci_spec::runtime::Linux,
) -> String {
    let limit = linux
        .resources()
        .as_ref()
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit());
    match limit {
        Some(limit) if cg.oom_kills() > 0 => format!(
            "init was killed by the OOM killer during setup: linux.resources.memory.limit {limit} bytes is below what the container needs to start"
        ),
        _ => format!("init exited during setup ({detail})"),
    }
}

/// The signals foreground `run` passes on to the container, plus SIGCHLD.
/// A new time namespace with the configured clock offsets, for the children of this process
/// (the container's init): offsets can only be set before a process is in the namespace.
fn enter_time_ns_for_children(linux: &oci_spec::runtime::Linux) -> Result<(), Error> {
    nix::sched::unshare(CloneFlags::from_bits_retain(libc::CLONE_NEWTIME))
        .map_err(|e| io_err("unshare the time namespace")(e.into()))?;
    let mut text = String::new();
    for (clock, o) in linux.time_offsets().iter().flatten() {
        text += &format!(
            "{clock} {} {}\n",
            o.secs().unwrap_or(0),
            o.nanosecs().unwrap_or(0)
        );
    }
    if !text.is_empty() {
        fs::write("/proc/self/timens_offsets", text)
            .map_err(io_err("linux.timeOffsets: write /proc/self/timens_offsets"))?;
    }
    Ok(())
}

/// Waits for `pid` (a child of this process) to exit, forwarding the signals in `forwarded`
/// (which the caller has blocked) to it; returns its exit code, 128+n if killed by signal n.
pub(crate) fn wait_forwarding(
    forwarded: &nix::sys::signal::SigSet,
    pid: Pid,
) -> Result<i32, Error> {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    loop {
        let sig = forwarded
            .wait()
            .map_err(|e| io_err("wait for signals")(e.into()))?;
        if sig != Signal::SIGCHLD {
            let _ = kill(pid, sig);
            continue;
        }
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, c)) => return Ok(c),
            Ok(WaitStatus::Signaled(_, s, _)) => return Ok(128 + s as i32),
            Ok(_) => continue,
            Err(e) => return Err(io_err(format!("wait for pid {pid}"))(e.into())),
        }
    }
}

pub(crate) fn forwarded_signals() -> nix::sys::signal::SigSet {
    let mut set = nix::sys::signal::SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
        Signal::SIGCONT,
    ] {
        set.add(s);
    }
    set
}

#[cfg(test)]
mod list_tests {
    use super::*;

    fn listed(id: &str, bundle: &str, status: Status) -> Listed {
        Listed {
            state: ContainerState {
                oci_version: "1.2.0".into(),
                id: id.into(),
                status,
                pid: Some(4242),
                pid_start_time: None,
                bundle: bundle.into(),
                rootfs: "rootfs".into(),
                created: "2026-01-01T00:00:00Z".into(),
                annotations: Default::default(),
                net_devices: Vec::new(),
                cgroup_path: String::new(),
                owner: "root".into(),
                hooks: None,
            },
            status,
        }
    }

    #[test]
    fn list_columns_line_up_whatever_the_lengths() {
        let long = "a-container-id-longer-than-twenty-characters";
        let table = list_table(&[
            listed("c1", "/b", Status::Running),
            listed(
                long,
                "/a/bundle/path/that/is/longer/than/forty/characters/x",
                Status::Stopped,
            ),
        ]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        // Every column starts at the same offset on every line.
        for header in ["PID", "STATUS", "BUNDLE", "CREATED"] {
            let at = lines[0].find(header).unwrap();
            for line in &lines[1..] {
                assert_eq!(&line[at - 3..at], "   ", "{header} in {line:?}\n{table}");
                assert_ne!(&line[at..at + 1], " ", "{header} in {line:?}\n{table}");
            }
        }
        assert!(
            lines[2].contains(" 0 "),
            "a stopped container shows pid 0: {table}"
        );
    }
}
