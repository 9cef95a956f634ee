//! Address allocation that persists on disk and is safe across processes.
//!
//! A network's leases live in `<data_dir>/<network>/leases.json`. Every change happens under
//! an exclusive `flock` on `<data_dir>/<network>/lock`, reads the file, changes it, and
//! writes a temporary file that is renamed over the old one: a crash leaves either the old
//! or the new file, never half of one. The lock is released when the [`LeaseBook`] drops.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

use crate::PortMapping;

#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("lease file {path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("no free address left in {subnet} (network {network})")]
    Exhausted {
        network: String,
        subnet: Ipv4Network,
    },
    #[error("address {ip} is outside subnet {subnet} of network {network}")]
    OutsideSubnet {
        network: String,
        ip: Ipv4Addr,
        subnet: Ipv4Network,
    },
    #[error("address {ip} is reserved in {subnet} (network, gateway or broadcast address)")]
    Reserved { ip: Ipv4Addr, subnet: Ipv4Network },
    #[error("address {ip} is already leased to container {holder}")]
    InUse { ip: Ipv4Addr, holder: String },
    #[error("lease file {path} is for subnet {found}, but network {network} now says {wanted}")]
    SubnetChanged {
        network: String,
        path: PathBuf,
        found: Ipv4Network,
        wanted: Ipv4Network,
    },
}

/// One container's lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub ip: Ipv4Addr,
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    #[serde(default)]
    pub ifname: String,
    #[serde(default)]
    pub host_veth: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct LeaseFile {
    subnet: Option<Ipv4Network>,
    last: Option<Ipv4Addr>,
    leases: BTreeMap<String, Lease>,
}

/// The allocator of one network.
#[derive(Debug, Clone)]
pub struct Allocator {
    network: String,
    dir: PathBuf,
    subnet: Ipv4Network,
    gateway: Ipv4Addr,
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> AllocError + 'a {
    move |source| AllocError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

impl Allocator {
    /// The allocator for `network`, keeping its state under `data_dir/network/`.
    pub fn new(
        data_dir: &Path,
        network: &str,
        subnet: Ipv4Network,
        gateway: Ipv4Addr,
    ) -> Result<Self, AllocError> {
        let dir = data_dir.join(network);
        fs::create_dir_all(&dir).map_err(io_err("create directory", &dir))?;
        Ok(Allocator {
            network: network.to_string(),
            dir,
            subnet,
            gateway,
        })
    }

    /// Where the leases are kept.
    pub fn path(&self) -> PathBuf {
        self.dir.join("leases.json")
    }

    /// Takes the network's lock (blocking until other processes release it) and reads the
    /// leases.
    pub fn lock(&self) -> Result<LeaseBook<'_>, AllocError> {
        let lock_path = self.dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err("open", &lock_path))?;
        loop {
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } == 0 {
                break;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(io_err("lock", &lock_path)(e));
            }
        }
        let path = self.path();
        let file = match fs::read(&path) {
            Ok(bytes) if bytes.is_empty() => LeaseFile::default(),
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| AllocError::Corrupt {
                path: path.clone(),
                source,
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => LeaseFile::default(),
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        if let Some(found) = file.subnet {
            if found != self.subnet && !file.leases.is_empty() {
                return Err(AllocError::SubnetChanged {
                    network: self.network.clone(),
                    path,
                    found,
                    wanted: self.subnet,
                });
            }
        }
        Ok(LeaseBook {
            alloc: self,
            _lock: lock,
            file,
            dirty: false,
        })
    }

    /// Reads the leases without locking (a consistent snapshot: files are replaced by rename).
    pub fn snapshot(&self) -> Result<BTreeMap<String, Lease>, AllocError> {
        let path = self.path();
        match fs::read(&path) {
            Ok(bytes) if bytes.is_empty() => Ok(BTreeMap::new()),
            Ok(bytes) => serde_json::from_slice::<LeaseFile>(&bytes)
                .map(|f| f.leases)
                .map_err(|source| AllocError::Corrupt { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(io_err("read", &path)(e)),
        }
    }

    /// Removes the network's state directory.
    pub fn remove(&self) -> Result<(), AllocError> {
        match fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", &self.dir)(e)),
        }
    }
}

/// The leases of a network, held under its lock.
pub struct LeaseBook<'a> {
    alloc: &'a Allocator,
    _lock: File,
    file: LeaseFile,
    dirty: bool,
}

impl LeaseBook<'_> {
    pub fn get(&self, container_id: &str) -> Option<&Lease> {
        self.file.leases.get(container_id)
    }

    pub fn leases(&self) -> &BTreeMap<String, Lease> {
        &self.file.leases
    }

    fn holder(&self, ip: Ipv4Addr) -> Option<&str> {
        self.file
            .leases
            .iter()
            .find(|(_, l)| l.ip == ip)
            .map(|(k, _)| k.as_str())
    }

    /// Checks that `ip` could be leased: inside the subnet, not reserved, not taken.
    pub fn check_free(&self, ip: Ipv4Addr) -> Result<(), AllocError> {
        let subnet = self.alloc.subnet;
        if !subnet.contains(ip) {
            return Err(AllocError::OutsideSubnet {
                network: self.alloc.network.clone(),
                ip,
                subnet,
            });
        }
        if ip == subnet.network() || ip == subnet.broadcast() || ip == self.alloc.gateway {
            return Err(AllocError::Reserved { ip, subnet });
        }
        if let Some(holder) = self.holder(ip) {
            return Err(AllocError::InUse {
                ip,
                holder: holder.to_string(),
            });
        }
        Ok(())
    }

    /// Leases an address to `container_id`: `requested` if given, else the next free one
    /// after the last allocated (so a released address is not handed out again at once).
    pub fn allocate(
        &mut self,
        container_id: &str,
        requested: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr, AllocError> {
        let ip = match requested {
            Some(ip) => {
                self.check_free(ip)?;
                ip
            }
            None => self.next_free()?,
        };
        self.file.leases.insert(
            container_id.to_string(),
            Lease {
                ip,
                ports: Vec::new(),
                ifname: String::new(),
                host_veth: String::new(),
            },
        );
        self.file.last = Some(ip);
        self.dirty = true;
        Ok(ip)
    }

    fn next_free(&self) -> Result<Ipv4Addr, AllocError> {
        let subnet = self.alloc.subnet;
        let first = u32::from(subnet.network()) + 1;
        let last = u32::from(subnet.broadcast()).saturating_sub(1);
        if last < first {
            return Err(AllocError::Exhausted {
                network: self.alloc.network.clone(),
                subnet,
            });
        }
        let taken: std::collections::HashSet<Ipv4Addr> =
            self.file.leases.values().map(|l| l.ip).collect();
        let start = match self.file.last {
            Some(ip) if subnet.contains(ip) => u32::from(ip).max(first - 1) + 1,
            _ => first,
        };
        let span = last - first + 1;
        for i in 0..span {
            let n = first + (start.saturating_sub(first) + i) % span;
            let ip = Ipv4Addr::from(n);
            if ip != self.alloc.gateway && !taken.contains(&ip) {
                return Ok(ip);
            }
        }
        Err(AllocError::Exhausted {
            network: self.alloc.network.clone(),
            subnet,
        })
    }

    /// Replaces the details of an existing lease (ports, interface names).
    pub fn update(&mut self, container_id: &str, f: impl FnOnce(&mut Lease)) {
        if let Some(l) = self.file.leases.get_mut(container_id) {
            f(l);
            self.dirty = true;
        }
    }

    /// Releases a lease; returns it if there was one.
    pub fn release(&mut self, container_id: &str) -> Option<Lease> {
        let l = self.file.leases.remove(container_id);
        if l.is_some() {
            self.dirty = true;
        }
        l
    }

    /// Writes the leases (temp file + rename) if they changed.
    pub fn commit(&mut self) -> Result<(), AllocError> {
        if !self.dirty {
            return Ok(());
        }
        self.file.subnet = Some(self.alloc.subnet);
        let path = self.alloc.path();
        let tmp = self
            .alloc
            .dir
            .join(format!(".leases.json.{}", std::process::id()));
        let bytes = serde_json::to_vec(&self.file).expect("leases serialise");
        let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
        f.write_all(&bytes).map_err(io_err("write", &tmp))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(io_err("rename", &path))?;
        self.dirty = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc(dir: &Path) -> Allocator {
        Allocator::new(
            dir,
            "n1",
            "10.1.0.0/29".parse().unwrap(),
            Ipv4Addr::new(10, 1, 0, 1),
        )
        .unwrap()
    }

    #[test]
    fn allocates_skipping_gateway_and_persists_across_reopen() {
        let d = tempfile::tempdir().unwrap();
        let a = alloc(d.path());
        let mut b = a.lock().unwrap();
        assert_eq!(b.allocate("c1", None).unwrap(), Ipv4Addr::new(10, 1, 0, 2));
        assert_eq!(b.allocate("c2", None).unwrap(), Ipv4Addr::new(10, 1, 0, 3));
        b.commit().unwrap();
        drop(b);
        let a2 = alloc(d.path());
        let b = a2.lock().unwrap();
        assert_eq!(b.get("c2").unwrap().ip, Ipv4Addr::new(10, 1, 0, 3));
    }

    #[test]
    fn exhausts_then_reuses_released_address() {
        let d = tempfile::tempdir().unwrap();
        let a = alloc(d.path());
        let mut b = a.lock().unwrap();
        for i in 0..5 {
            b.allocate(&format!("c{i}"), None).unwrap();
        }
        assert!(matches!(
            b.allocate("c9", None),
            Err(AllocError::Exhausted { .. })
        ));
        b.release("c2");
        assert_eq!(b.allocate("c9", None).unwrap(), Ipv4Addr::new(10, 1, 0, 4));
    }

    #[test]
    fn requested_address_is_checked() {
        let d = tempfile::tempdir().unwrap();
        let a = alloc(d.path());
        let mut b = a.lock().unwrap();
        let e = b
            .allocate("c1", Some(Ipv4Addr::new(10, 2, 0, 2)))
            .unwrap_err();
        assert!(matches!(e, AllocError::OutsideSubnet { .. }));
        assert!(e.to_string().contains("10.2.0.2"));
        assert!(matches!(
            b.allocate("c1", Some(Ipv4Addr::new(10, 1, 0, 1))),
            Err(AllocError::Reserved { .. })
        ));
        b.allocate("c1", Some(Ipv4Addr::new(10, 1, 0, 5))).unwrap();
        assert!(matches!(
            b.allocate("c2", Some(Ipv4Addr::new(10, 1, 0, 5))),
            Err(AllocError::InUse { .. })
        ));
    }

    #[test]
    fn uncommitted_changes_are_not_persisted() {
        let d = tempfile::tempdir().unwrap();
        let a = alloc(d.path());
        a.lock().unwrap().allocate("c1", None).unwrap();
        assert!(a.lock().unwrap().get("c1").is_none());
    }
}
