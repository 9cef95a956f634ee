//! An instance's secrets on its node: fetched from the server (which gives them to this node
//! only), written as files on a tmpfs of the instance's own (`<instance dir>/secrets`, mounted
//! by the agent, never a disk), bind-mounted read-only into the container, and unmounted
//! with the instance.

use base64::Engine;
use std::path::{Path, PathBuf};
use tugboat_api::client::ApiClient;
use tugboat_api::model::Instance;

/// The tmpfs of an instance's secrets, in its directory on the node.
pub fn dir(instance_dir: &Path) -> PathBuf {
    instance_dir.join("secrets")
}

/// Room for a few secrets of the largest size the server takes (memory is used only for
/// what is written).
const TMPFS_OPTIONS: &str = "size=8m,mode=0755";

fn on_tmpfs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
        .unwrap_or(false)
}

/// Makes the instance's secret directories; returns (host dir, container target) pairs to
/// bind-mount. Without the server (an edge node restarting its instances offline), files
/// written before are used again.
pub async fn prepare(
    client: &ApiClient,
    instance: &Instance,
    instance_dir: &Path,
    uid: u32,
    gid: u32,
) -> Result<Vec<(PathBuf, String)>, String> {
    if instance.spec.secrets.is_empty() {
        return Ok(vec![]);
    }
    let root = dir(instance_dir);
    use std::os::unix::fs::PermissionsExt;
    if !on_tmpfs(&root) {
        std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
        use nix::mount::{mount, MsFlags};
        mount(
            Some("tmpfs"),
            &root,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some(TMPFS_OPTIONS),
        )
        .map_err(|e| format!("secrets: a tmpfs on {}: {e}", root.display()))?;
    }
    let mounts: Vec<(PathBuf, String)> = instance
        .spec
        .secrets
        .iter()
        .map(|m| (root.join(&m.secret), m.target()))
        .collect();
    let values = match client.instance_secrets(&instance.id).await {
        Ok(values) => values,
        Err(e) if e.status().is_none() && mounts.iter().all(|(d, _)| d.is_dir()) => {
            // The server is away: the files of the last start hold.
            let _ = e;
            return Ok(mounts);
        }
        Err(e) => return Err(format!("secrets of {}: {e}", instance.id)),
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    for (secret, data) in &values.secrets {
        let dir = root.join(secret);
        let tmp = root.join(format!(".{secret}.tmp"));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        for (key, value) in data {
            let bytes = b64
                .decode(value)
                .map_err(|e| format!("secret {secret}, key {key}: {e}"))?;
            let path = tmp.join(key);
            std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400))
                .map_err(|e| format!("{}: {e}", path.display()))?;
            nix::unistd::chown(&path, Some(uid.into()), Some(gid.into()))
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o500))
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        nix::unistd::chown(&tmp, Some(uid.into()), Some(gid.into()))
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        // Replaced whole: a container never sees half of a new version.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    Ok(mounts)
}

/// Removes an instance's secrets from the node: its tmpfs goes, and with it every copy.
pub fn remove(instance_dir: &Path) {
    let root = dir(instance_dir);
    if on_tmpfs(&root) {
        let _ = nix::mount::umount2(&root, nix::mount::MntFlags::MNT_DETACH);
    }
    let _ = std::fs::remove_dir(&root);
}
