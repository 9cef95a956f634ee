//! The volume drivers of a node: where a named volume's files are before they are bound
//! into a container, how full it is, and its end (module docs of [`super::volumes`]).

use super::NodeContext;
use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tugboat_api::model::{now_ms, Volume, VolumeUsage};
use tugboat_api::spec::VolumeDriver;

/// How often usage is measured (and sent when it changed).
pub const USAGE_EVERY: Duration = Duration::from_secs(10);
/// A plugin call or an NFS mount that takes longer fails (nfs: `options.timeout_seconds`).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const NFS_TIMEOUT: Duration = Duration::from_secs(10);

fn objects_dir(ctx: &NodeContext) -> PathBuf {
    ctx.data_dir.join("volume-objects")
}
fn images_dir(ctx: &NodeContext) -> PathBuf {
    ctx.data_dir.join("volume-images")
}
fn mounts_dir(ctx: &NodeContext) -> PathBuf {
    ctx.data_dir.join("volume-mounts")
}

/// Where the volume's files are on this node, for a driver.
pub fn mountpoint(ctx: &NodeContext, volume: &Volume) -> PathBuf {
    match volume.config.driver {
        VolumeDriver::Local => ctx.volumes_dir().join(&volume.name),
        VolumeDriver::Nfs | VolumeDriver::Exec => mounts_dir(ctx).join(&volume.name),
    }
}

/// The volume object of `name`: the server's, kept on disk for an offline start; None when
/// the server has no such object (an implicit local directory).
async fn object(ctx: &NodeContext, name: &str) -> Result<Option<Volume>, String> {
    let cached = objects_dir(ctx).join(format!("{name}.json"));
    match ctx.client.volume(name).await {
        Ok(volume) => {
            std::fs::create_dir_all(objects_dir(ctx))
                .and_then(|_| super::monitor::write_json(&cached, &volume))
                .map_err(|e| format!("volume {name}: keeping its record {}: {e}", cached.display()))?;
            Ok(Some(volume))
        }
        Err(e) if e.status() == Some(404) => Ok(None),
        Err(e) => match super::monitor::read_json::<Volume>(&cached) {
            Some(volume) => Ok(Some(volume)),
            // Never seen: if it is a sized or network volume, a bare directory would be
            // the wrong place to write; wait for the server.
            None if cached.exists() => Err(format!(
                "volume {name}: its record {} cannot be read and the server does not answer ({e})",
                cached.display()
            )),
            None => Err(format!(
                "volume {name}: the server does not answer and this node has no record of the volume yet ({e})"
            )),
        },
    }
}

/// Held while a volume is made ready and while the usage loop decides what to unmount, so a
/// volume being prepared for an instance is not released under it (nor mounted twice).
static MOUNTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Makes the volume `name` ready on this node (made, mounted) and returns the directory to
/// bind into the container.
pub async fn prepare(ctx: &NodeContext, name: &str) -> Result<PathBuf, String> {
    let _held = MOUNTS.lock().await;
    prepare_held(ctx, name).await
}

/// Finishes or undoes a restore that a crash left in a local volume
/// ([`super::volume_archive::recover`]), before anyone uses it. (A shared volume, nfs or
/// exec, is recovered only by its next restore: another node may be restoring it now.)
fn recovered(name: &str, root: PathBuf) -> Result<PathBuf, String> {
    match super::volume_archive::recover(&root) {
        Ok(done) => {
            for line in done {
                eprintln!("tugboat agent: volume {name}: an interrupted restore: {line}");
            }
            Ok(root)
        }
        Err(e) => Err(format!(
            "volume {name}: finishing a restore interrupted by a crash: {e}"
        )),
    }
}

/// At the agent's start: every local volume's directory is checked for a restore a crash
/// interrupted (a sized volume that is not mounted now is checked when it is).
pub fn recover_restores(ctx: &NodeContext) {
    let Ok(entries) = std::fs::read_dir(ctx.volumes_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Err(e) = recovered(&name, e.path()) {
            eprintln!("tugboat agent: {e}");
        }
    }
}

/// [`prepare`] with [`MOUNTS`] held by the caller.
async fn prepare_held(ctx: &NodeContext, name: &str) -> Result<PathBuf, String> {
    let Some(volume) = object(ctx, name).await? else {
        let p = ctx.volumes_dir().join(name);
        std::fs::create_dir_all(&p)
            .map_err(|e| format!("named volume {name}: {}: {e}", p.display()))?;
        return recovered(name, p);
    };
    let target = mountpoint(ctx, &volume);
    match volume.config.driver {
        VolumeDriver::Local => match volume.size_bytes {
            None => {
                std::fs::create_dir_all(&target)
                    .map_err(|e| format!("volume {name}: {}: {e}", target.display()))?;
                recovered(name, target)
            }
            Some(size) => {
                let image = images_dir(ctx).join(format!("{name}.ext4"));
                let t = target.clone();
                let n = name.to_string();
                tokio::task::spawn_blocking(move || sized_local(&n, &image, size, &t))
                    .await
                    .map_err(|e| format!("volume {name}: {e}"))??;
                recovered(name, target)
            }
        },
        VolumeDriver::Nfs => {
            let t = target.clone();
            let v = volume.clone();
            let timeout = volume
                .config
                .options
                .get("timeout_seconds")
                .and_then(|s| s.parse().ok())
                .map_or(NFS_TIMEOUT, Duration::from_secs);
            let mount = tokio::task::spawn_blocking(move || nfs_mount(&v, &t));
            match tokio::time::timeout(timeout, mount).await {
                Ok(joined) => joined.map_err(|e| format!("volume {name}: {e}"))??,
                Err(_) => {
                    return Err(format!(
                        "volume {name}: nfs server {} did not answer in {} s",
                        volume.config.options.get("server").map_or("?", |s| s),
                        timeout.as_secs()
                    ))
                }
            }
            Ok(target)
        }
        VolumeDriver::Exec => {
            std::fs::create_dir_all(&target)
                .map_err(|e| format!("volume {name}: {}: {e}", target.display()))?;
            let created = objects_dir(ctx).join(format!("{name}.created"));
            if !created.exists() {
                plugin(ctx, &volume, "create", &target).await?;
                std::fs::write(&created, b"")
                    .map_err(|e| format!("volume {name}: {}: {e}", created.display()))?;
            }
            let answer = plugin(ctx, &volume, "mount", &target).await?;
            let path = match answer.get("path").and_then(|p| p.as_str()) {
                Some(path) if Path::new(path).is_absolute() && Path::new(path).is_dir() => {
                    PathBuf::from(path)
                }
                Some(path) => {
                    return Err(format!(
                        "volume {name}: the plugin's mount answered path `{path}`, which is not a directory"
                    ))
                }
                None => target,
            };
            let record = objects_dir(ctx).join(format!("{name}.path"));
            std::fs::write(&record, path.as_os_str().as_encoded_bytes())
                .map_err(|e| format!("volume {name}: {}: {e}", record.display()))?;
            Ok(path)
        }
    }
}

/// A volume object's files, made ready for a snapshot or a restore: mounted when no
/// instance has it mounted, and held so that the usage loop does not release it (nor an
/// instance's preparation mount it) until [`ArchiveAccess::finish`].
pub struct ArchiveAccess {
    pub volume: Volume,
    pub path: PathBuf,
    /// Ids of this node's instances that use the volume.
    pub users: Vec<String>,
    _held: tokio::sync::MutexGuard<'static, ()>,
}

/// Why a volume cannot be archived or restored here, with the HTTP status it answers.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("volume `{0}` not found: the server has no such volume object")]
    Unknown(String),
    #[error("{0}")]
    Failed(String),
}

/// Takes a volume object for a snapshot or a restore (see [`ArchiveAccess`]).
pub async fn open_for_archive(ctx: &NodeContext, name: &str) -> Result<ArchiveAccess, AccessError> {
    let held = MOUNTS.lock().await;
    let Some(volume) = object(ctx, name).await.map_err(AccessError::Failed)? else {
        return Err(AccessError::Unknown(name.to_string()));
    };
    let path = prepare_held(ctx, name).await.map_err(AccessError::Failed)?;
    let users = super::volumes::in_use(&ctx.data_dir)
        .remove(name)
        .unwrap_or_default();
    Ok(ArchiveAccess {
        volume,
        path,
        users,
        _held: held,
    })
}

impl ArchiveAccess {
    /// Unmounts the volume again when no instance here uses it.
    pub async fn finish(self, ctx: &NodeContext) -> Result<(), String> {
        if super::volumes::in_use(&ctx.data_dir).contains_key(&self.volume.name) {
            return Ok(());
        }
        release(ctx, &self.volume).await
    }
}

/// Where the plugin said an exec volume's files are (its mount's answer), else its
/// mount point.
fn exec_path(ctx: &NodeContext, volume: &Volume) -> PathBuf {
    std::fs::read(objects_dir(ctx).join(format!("{}.path", volume.name)))
        .ok()
        .map(|b| PathBuf::from(String::from_utf8_lossy(&b).into_owned()))
        .unwrap_or_else(|| mountpoint(ctx, volume))
}

/// Whether `path` is a mount point (listed in this process's mountinfo).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| unescape_mountinfo(m) == want)
}

fn unescape_mountinfo(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// A sized local volume: an ext4 image made once (sparse), on a loop device that goes with
/// the mount (autoclear), mounted at `target`. Nothing half-made is left on failure.
fn sized_local(name: &str, image: &Path, size: u64, target: &Path) -> Result<(), String> {
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("volume {name}: {what}: {e}");
    std::fs::create_dir_all(target).map_err(|e| fail(&target.display().to_string(), &e))?;
    if is_mounted(target) {
        return Ok(());
    }
    if !image.exists() {
        let dir = image.parent().expect("an image has a directory");
        std::fs::create_dir_all(dir).map_err(|e| fail(&dir.display().to_string(), &e))?;
        let tmp = image.with_extension("ext4.tmp");
        let made = (|| {
            let file = std::fs::File::create(&tmp).map_err(|e| fail("making its image", &e))?;
            file.set_len(size)
                .map_err(|e| fail("sizing its image", &e))?;
            drop(file);
            // No Rust crate formats ext4; e2fsprogs' mkfs is on every Debian host (Priority:
            // required). -m 0: the whole size is the container's.
            let out = std::process::Command::new("mkfs.ext4")
                .args(["-q", "-F", "-m", "0", "-E", "root_owner=0:0", "-L"])
                .arg(format!("tug-{name}").chars().take(16).collect::<String>())
                .arg(&tmp)
                .output()
                .map_err(|e| fail("running mkfs.ext4 (e2fsprogs)", &e))?;
            if !out.status.success() {
                return Err(fail(
                    "mkfs.ext4",
                    &String::from_utf8_lossy(&out.stderr).trim().to_string(),
                ));
            }
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(|e| fail("syncing its image", &e))?;
            std::fs::rename(&tmp, image).map_err(|e| fail("placing its image", &e))
        })();
        if made.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        made?;
    }
    let backing = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .map_err(|e| fail(&image.display().to_string(), &e))?;
    let device = loop_attach(&backing).map_err(|e| fail("attaching a loop device", &e))?;
    let (loop_fd, path) = device;
    let mounted = nix::mount::mount(
        Some(path.as_path()),
        target,
        Some("ext4"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        None::<&str>,
    );
    // Autoclear: the device goes when its last user does: the mount, or this descriptor if
    // the mount failed.
    drop(loop_fd);
    mounted.map_err(|e| {
        fail(
            &format!("mounting {} on {}", path.display(), target.display()),
            &e,
        )
    })
}

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// struct loop_info64 (linux/loop.h).
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// struct loop_config (linux/loop.h, Linux 5.8).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// Attaches `backing` to a free loop device with autoclear (LOOP_CONFIGURE in one step, as
/// util-linux does since Linux 5.8). The loopdev crates generate their bindings with bindgen
/// at build time (libclang), which neither a fresh host nor the musl build has: the two
/// ioctls are written out here.
fn loop_attach(backing: &std::fs::File) -> std::io::Result<(OwnedFd, PathBuf)> {
    let control = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")?;
    for _ in 0..10 {
        // SAFETY: an ioctl without argument on an open descriptor.
        let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let path = PathBuf::from(format!("/dev/loop{n}"));
        let device = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)?;
        // SAFETY: zeroed plain-data structs, filled below.
        let mut config: LoopConfig = unsafe { std::mem::zeroed() };
        config.fd = backing.as_raw_fd() as u32;
        config.info.lo_flags = LO_FLAGS_AUTOCLEAR;
        // SAFETY: LOOP_CONFIGURE reads a struct loop_config of this layout.
        let r = unsafe { libc::ioctl(device.as_raw_fd(), LOOP_CONFIGURE, &config) };
        if r == 0 {
            // SAFETY: the descriptor is ours, moved into the OwnedFd.
            let fd = unsafe { OwnedFd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(device)) };
            return Ok((fd, path));
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(e);
        }
    }
    Err(std::io::Error::from_raw_os_error(libc::EBUSY))
}

/// An NFS v4 mount through mount(2): the kernel's text options, `addr=` for the server.
fn nfs_mount(volume: &Volume, target: &Path) -> Result<(), String> {
    let name = &volume.name;
    std::fs::create_dir_all(target)
        .map_err(|e| format!("volume {name}: {}: {e}", target.display()))?;
    if is_mounted(target) {
        return Ok(());
    }
    let (source, data) = nfs_source_and_options(&volume.config.options);
    // No look at /proc/filesystems first: on a stock kernel nfs4 is a module that is not
    // loaded until the first mount asks for it (the kernel loads `fs-nfs4` itself).
    nix::mount::mount(
        Some(source.as_str()),
        target,
        Some("nfs4"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        Some(data.as_str()),
    )
    .map_err(|e| nfs_mount_error(name, &source, &data, e))
}

/// `SERVER:PATH` and the kernel's text options for an nfs volume's driver options.
fn nfs_source_and_options(options: &BTreeMap<String, String>) -> (String, String) {
    let option = |k: &str| options.get(k).cloned().unwrap_or_default();
    let server = option("server");
    let mut data = format!("vers=4.2,addr={server},clientaddr=0.0.0.0,soft,timeo=50,retrans=2");
    let extra = option("mount_options");
    if !extra.is_empty() {
        data.push(',');
        data.push_str(&extra);
    }
    (format!("{server}:{}", option("path")), data)
}

/// What a failed nfs4 mount says: ENODEV is a kernel without the file system (after it
/// tried to load the module).
fn nfs_mount_error(name: &str, source: &str, data: &str, e: nix::errno::Errno) -> String {
    if e == nix::errno::Errno::ENODEV {
        return format!(
            "volume {name}: this kernel has no nfs4 file system (CONFIG_NFS_V4; load the nfs module)"
        );
    }
    format!("volume {name}: mounting {source} (nfs4, {data}): {e}")
}

/// Calls an exec plugin: `PLUGIN ACTION` with the volume as JSON on stdin; its stdout is
/// JSON (or empty). A non-zero exit fails with the plugin's last line of stderr.
pub async fn plugin(
    ctx: &NodeContext,
    volume: &Volume,
    action: &str,
    target: &Path,
) -> Result<serde_json::Value, String> {
    let name = &volume.name;
    let program = volume
        .config
        .options
        .get("plugin")
        .cloned()
        .unwrap_or_default();
    let request = serde_json::json!({
        "volume": name,
        "node": ctx.node,
        "size_bytes": volume.size_bytes,
        "options": volume.config.options,
        "target": target,
    });
    let mut child = tokio::process::Command::new(&program)
        .arg(action)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("volume {name}: plugin {program}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        use tokio::io::AsyncWriteExt;
        let _ = stdin.write_all(request.to_string().as_bytes()).await;
    }
    let out = tokio::time::timeout(CALL_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| {
            format!(
                "volume {name}: plugin {program} {action} took longer than {} s",
                CALL_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| format!("volume {name}: plugin {program} {action}: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "volume {name}: plugin {program} {action} failed ({}): {}",
            out.status,
            stderr.lines().last().unwrap_or("no message")
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Ok(serde_json::json!({}));
    }
    serde_json::from_str(text.trim()).map_err(|e| {
        format!("volume {name}: plugin {program} {action} printed what is not JSON ({e}): {text}")
    })
}

/// What a volume holds here: statvfs of its mount (sized, nfs, exec), or the bytes of a
/// plain directory's files (its size is the host's: no total).
fn measure(volume: &Volume, path: &Path, node: &str) -> VolumeUsage {
    let mut usage = VolumeUsage {
        volume: volume.name.clone(),
        node: node.to_string(),
        bytes_used: 0,
        bytes_total: 0,
        inodes_used: 0,
        inodes_total: 0,
        state: "mounted".into(),
        measured_ms: now_ms(),
    };
    let own_fs = volume.size_bytes.is_some() || volume.config.driver != VolumeDriver::Local;
    // An exec volume's path may be a plain directory the plugin handed over.
    if own_fs && volume.config.driver != VolumeDriver::Exec && !is_mounted(path) {
        usage.state = "not mounted".into();
    } else if own_fs {
        match nix::sys::statvfs::statvfs(path) {
            Ok(s) => {
                let frag = s.fragment_size();
                usage.bytes_total = s.blocks() * frag;
                usage.bytes_used = (s.blocks() - s.blocks_free()) * frag;
                usage.inodes_total = s.files();
                usage.inodes_used = s.files() - s.files_free();
            }
            Err(e) => usage.state = format!("cannot measure {}: {e}", path.display()),
        }
    } else {
        let (bytes, inodes) = du(path, 100_000);
        usage.bytes_used = bytes;
        usage.inodes_used = inodes;
    }
    usage
}

/// Bytes and entries under `dir`, without following links, up to `limit` entries.
fn du(dir: &Path, limit: u64) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut stack = vec![dir.to_path_buf()];
    let (mut bytes, mut n) = (0, 0);
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            n += 1;
            if n > limit {
                return (bytes, n);
            }
            let Ok(m) = e.metadata() else { continue };
            bytes += m.blocks() * 512;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    (bytes, n)
}

/// Volume objects this node has used (its records).
fn known(ctx: &NodeContext) -> BTreeMap<String, Volume> {
    let Ok(entries) = std::fs::read_dir(objects_dir(ctx)) else {
        return BTreeMap::new();
    };
    entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| super::monitor::read_json::<Volume>(&e.path()))
        .map(|v| (v.name.clone(), v))
        .collect()
}

/// Unmounts a volume no instance here uses (sized local, nfs, exec).
async fn release(ctx: &NodeContext, volume: &Volume) -> Result<(), String> {
    let target = mountpoint(ctx, volume);
    let name = &volume.name;
    match volume.config.driver {
        VolumeDriver::Exec => {
            let mounted = objects_dir(ctx).join(format!("{name}.path"));
            if mounted.exists() {
                plugin(ctx, volume, "unmount", &exec_path(ctx, volume)).await?;
                let _ = std::fs::remove_file(&mounted);
            }
        }
        _ => {
            if is_mounted(&target) {
                nix::mount::umount2(&target, nix::mount::MntFlags::empty())
                    .map_err(|e| format!("volume {name}: unmounting {}: {e}", target.display()))?;
            }
        }
    }
    Ok(())
}

/// Removes the volume's data on this node (its object is gone): unmount, then the directory
/// and image (local), the plugin's `remove` (exec); an NFS export's files stay (they are
/// the server's).
async fn remove(ctx: &NodeContext, volume: &Volume) -> Result<(), String> {
    release(ctx, volume).await?;
    let name = &volume.name;
    let target = mountpoint(ctx, volume);
    if volume.config.driver == VolumeDriver::Exec
        && objects_dir(ctx).join(format!("{name}.created")).exists()
    {
        plugin(ctx, volume, "remove", &target).await?;
    }
    let gone = |p: &Path| match std::fs::remove_dir_all(p).or_else(|_| std::fs::remove_file(p)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(format!("volume {name}: removing {}: {e}", p.display()))
        }
        _ => Ok(()),
    };
    if is_mounted(&target) {
        return Err(format!(
            "volume {name}: {} is still mounted",
            target.display()
        ));
    }
    gone(&target)?;
    gone(&images_dir(ctx).join(format!("{name}.ext4")))?;
    gone(&objects_dir(ctx).join(format!("{name}.created")))?;
    gone(&objects_dir(ctx).join(format!("{name}.path")))?;
    gone(&objects_dir(ctx).join(format!("{name}.json")))?;
    Ok(())
}

/// Every [`USAGE_EVERY`]: measures the volumes mounted here and sends the report when it
/// changed (by a whole percent or a MiB); unmounts volumes no instance uses; removes the
/// data of volumes whose object the server deleted.
pub async fn usage_loop(ctx: std::sync::Arc<NodeContext>) {
    let mut every = tokio::time::interval(USAGE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent: Option<Vec<(String, u64, u64)>> = None;
    let mut said = std::collections::HashSet::new();
    loop {
        every.tick().await;
        let held = MOUNTS.lock().await;
        let objects = known(&ctx);
        if objects.is_empty() && sent.as_ref().is_some_and(Vec::is_empty) {
            drop(held);
            continue;
        }
        let users = super::volumes::in_use(&ctx.data_dir);
        let live = match ctx.client.volumes().await {
            Ok(list) => Some(
                list.into_iter()
                    .map(|v| v.name)
                    .collect::<std::collections::BTreeSet<_>>(),
            ),
            Err(_) => None,
        };
        let mut report = vec![];
        for volume in objects.values() {
            let used = users.contains_key(&volume.name);
            let deleted = live.as_ref().is_some_and(|l| !l.contains(&volume.name));
            let outcome = if deleted && !used {
                remove(&ctx, volume).await
            } else if !used {
                release(&ctx, volume).await
            } else if volume.config.driver == VolumeDriver::Exec {
                let path = exec_path(&ctx, volume);
                let mut u = {
                    let (v, p, n) = (volume.clone(), path.clone(), ctx.node.clone());
                    tokio::task::spawn_blocking(move || measure(&v, &p, &n))
                        .await
                        .unwrap_or_else(|e| panic!("measuring a volume: {e}"))
                };
                // The plugin's own figures win where it gives them (a quota it set).
                if let Ok(answer) = plugin(&ctx, volume, "usage", &path).await {
                    let n = |k: &str| answer.get(k).and_then(|v| v.as_u64());
                    if let (Some(used), Some(total)) = (n("bytes_used"), n("bytes_total")) {
                        u.bytes_used = used;
                        u.bytes_total = total;
                        u.inodes_used = n("inodes_used").unwrap_or(u.inodes_used);
                        u.inodes_total = n("inodes_total").unwrap_or(u.inodes_total);
                    }
                }
                report.push(u);
                Ok(())
            } else {
                let path = mountpoint(&ctx, volume);
                let v = volume.clone();
                let node = ctx.node.clone();
                if let Ok(u) = tokio::task::spawn_blocking(move || measure(&v, &path, &node)).await
                {
                    report.push(u);
                }
                Ok(())
            };
            match outcome {
                Err(e) if said.insert(e.clone()) => eprintln!("tugboat agent: {e}"),
                _ => {}
            }
        }
        drop(held);
        let digest: Vec<(String, u64, u64)> = report
            .iter()
            .map(|u| (u.volume.clone(), u.percent(), u.bytes_used >> 20))
            .collect();
        if sent.as_ref() == Some(&digest) {
            continue;
        }
        let body = tugboat_api::wire::VolumeUsageReport { volumes: report };
        if ctx
            .client
            .report_volume_usage(&ctx.node, &body)
            .await
            .is_ok()
        {
            sent = Some(digest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }

    #[test]
    fn du_counts_files_under_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/f"), vec![1u8; 10_000]).unwrap();
        let (bytes, n) = du(dir.path(), 100);
        assert_eq!(n, 2);
        assert!(bytes >= 10_000, "{bytes}");
    }

    #[test]
    fn nfs_options_carry_the_server_address_for_the_kernel() {
        let mut options = BTreeMap::new();
        options.insert("server".to_string(), "192.168.76.11".to_string());
        options.insert("path".to_string(), "/vols".to_string());
        let (source, data) = nfs_source_and_options(&options);
        assert_eq!(source, "192.168.76.11:/vols");
        assert!(data.starts_with("vers=4.2,addr=192.168.76.11,"), "{data}");
        options.insert("mount_options".to_string(), "noatime".to_string());
        assert!(nfs_source_and_options(&options).1.ends_with(",noatime"));
    }

    #[test]
    fn a_kernel_without_nfs4_is_named_as_such() {
        let e = nfs_mount_error("v", "a:/p", "vers=4.2", nix::errno::Errno::ENODEV);
        assert!(e.contains("this kernel has no nfs4 file system"), "{e}");
        let e = nfs_mount_error("v", "a:/p", "vers=4.2", nix::errno::Errno::EACCES);
        assert!(e.contains("mounting a:/p (nfs4, vers=4.2)"), "{e}");
    }
}
