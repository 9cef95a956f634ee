//! The CNI 1.0 plugin over [`Network`]: the `tug-cni` binary parses its environment and
//! stdin into an [`Invocation`] here, and [`execute`] does the work.
//!
//! Network configuration (stdin):
//!
//! ```json
//! { "cniVersion": "1.0.0", "name": "tug", "type": "tug-cni",
//!   "subnet": "10.88.0.0/24", "bridge": "tug0", "gateway": "10.88.0.1", "mtu": 1500,
//!   "ipMasq": true, "clusterCIDR": "10.88.0.0/16", "dataDir": "/var/lib/tug/netns",
//!   "capabilities": { "portMappings": true },
//!   "runtimeConfig": { "portMappings": [ { "hostPort": 8080, "containerPort": 80, "protocol": "tcp" } ] } }
//! ```

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::network::{AttachRequest, Network, NetworkConfig, NetworkError};
use crate::ops::NetnsRef;
use crate::{PortMapping, Protocol};

pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0"];
pub const DEFAULT_DATA_DIR: &str = "/var/lib/tug/netns";

/// A CNI error result (written to stdout, exit status 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("CNI error {code}: {msg} ({details})")]
pub struct CniError {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            cni_version: "1.0.0".into(),
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CniPortMapping {
    host_port: u16,
    container_port: u16,
    #[serde(default)]
    protocol: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RuntimeConfig {
    #[serde(default)]
    port_mappings: Vec<CniPortMapping>,
}

/// The plugin's network configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    #[serde(default)]
    pub bridge: Option<String>,
    pub subnet: Ipv4Network,
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub ip_masq: Option<bool>,
    #[serde(default, rename = "clusterCIDR")]
    pub cluster_cidr: Option<Ipv4Network>,
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    #[serde(default)]
    runtime_config: RuntimeConfig,
}

/// One plugin call, parsed.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub command: Command,
    pub container_id: String,
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub conf: Option<NetConf>,
    pub ports: Vec<PortMapping>,
}

fn env_var<'a>(env: &'a HashMap<String, String>, key: &str) -> Result<&'a str, CniError> {
    env.get(key)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| CniError::new(4, format!("missing environment variable {key}"), ""))
}

/// Parses the environment and stdin of a plugin call.
pub fn parse(env: &HashMap<String, String>, stdin: &[u8]) -> Result<Invocation, CniError> {
    let command = match env_var(env, "CNI_COMMAND")? {
        "ADD" => Command::Add,
        "DEL" => Command::Del,
        "CHECK" => Command::Check,
        "VERSION" => Command::Version,
        other => return Err(CniError::new(4, format!("unknown CNI_COMMAND {other}"), "")),
    };
    if command == Command::Version {
        return Ok(Invocation {
            command,
            container_id: String::new(),
            netns: None,
            ifname: String::new(),
            conf: None,
            ports: Vec::new(),
        });
    }
    let container_id = env_var(env, "CNI_CONTAINERID")?.to_string();
    let ifname = env_var(env, "CNI_IFNAME")?.to_string();
    let netns = match (command, env_var(env, "CNI_NETNS")) {
        (_, Ok(p)) => Some(PathBuf::from(p)),
        (Command::Del, Err(_)) => None,
        (_, Err(e)) => return Err(e),
    };
    let conf: NetConf = serde_json::from_slice(stdin)
        .map_err(|e| CniError::new(6, "cannot decode network configuration", e.to_string()))?;
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return Err(CniError::new(
            1,
            format!("unsupported cniVersion {}", conf.cni_version),
            format!("supported: {}", SUPPORTED_VERSIONS.join(", ")),
        ));
    }
    let mut ports = Vec::new();
    for p in &conf.runtime_config.port_mappings {
        let protocol = match p.protocol.as_deref().unwrap_or("tcp") {
            "tcp" | "TCP" => Protocol::Tcp,
            "udp" | "UDP" => Protocol::Udp,
            other => {
                return Err(CniError::new(
                    7,
                    format!("unsupported port protocol {other}"),
                    "",
                ))
            }
        };
        ports.push(PortMapping {
            protocol,
            host_port: p.host_port,
            container_port: p.container_port,
        });
    }
    Ok(Invocation {
        command,
        container_id,
        netns,
        ifname,
        conf: Some(conf),
        ports,
    })
}

fn network_config(conf: &NetConf) -> NetworkConfig {
    let data_dir = conf
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    let mut cfg = NetworkConfig::new(&conf.name, conf.subnet, data_dir);
    if let Some(b) = &conf.bridge {
        cfg.bridge = b.clone();
    }
    cfg.gateway = conf.gateway;
    if let Some(m) = conf.mtu {
        cfg.mtu = m;
    }
    cfg.masquerade = conf.ip_masq.unwrap_or(true);
    cfg.cluster_cidr = conf.cluster_cidr;
    cfg
}

/// CNI error code for a library error.
pub fn error_code(e: &NetworkError) -> u32 {
    match e {
        NetworkError::InvalidConfig { .. } | NetworkError::SubnetOverlap { .. } => 7,
        NetworkError::InvalidRequest { .. } | NetworkError::InvalidService { .. } => 7,
        NetworkError::Netns { .. } => 4,
        NetworkError::NotAttached { .. } => 3,
        NetworkError::Alloc {
            source: crate::alloc::AllocError::Exhausted { .. },
            ..
        } => 11,
        NetworkError::Alloc { .. } => 5,
        NetworkError::PortInUse { .. } => 101,
        NetworkError::Broken { .. } => 102,
        NetworkError::Op { .. } | NetworkError::CleanupFailed { .. } => 100,
    }
}

fn lib_err(e: NetworkError) -> CniError {
    let mut details = String::new();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        if !details.is_empty() {
            details.push_str(": ");
        }
        details.push_str(&s.to_string());
        src = s.source();
    }
    CniError::new(error_code(&e), e.to_string(), details)
}

fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Runs a parsed call in the calling thread's network namespace; returns what goes to
/// stdout (`None` for DEL and CHECK, which print nothing on success).
pub async fn execute(inv: &Invocation) -> Result<Option<Value>, CniError> {
    if inv.command == Command::Version {
        return Ok(Some(
            json!({ "cniVersion": "1.0.0", "supportedVersions": SUPPORTED_VERSIONS }),
        ));
    }
    let conf = inv.conf.as_ref().expect("parsed with a configuration");
    let net = Network::open(network_config(conf)).await.map_err(lib_err)?;
    match inv.command {
        Command::Add => {
            let netns = inv.netns.clone().expect("ADD has CNI_NETNS");
            let mut req = AttachRequest::new(&inv.container_id, NetnsRef::Path(netns.clone()));
            req.ifname = inv.ifname.clone();
            req.ports = inv.ports.clone();
            let a = net.attach(&req).await.map_err(lib_err)?;
            Ok(Some(json!({
                "cniVersion": conf.cni_version,
                "interfaces": [
                    { "name": a.host_veth },
                    { "name": a.ifname, "mac": mac_str(a.mac), "sandbox": netns },
                ],
                "ips": [ { "address": a.address.to_string(), "gateway": a.gateway.to_string(), "interface": 1 } ],
                "routes": [ { "dst": "0.0.0.0/0", "gw": a.gateway.to_string() } ],
                "dns": {},
            })))
        }
        Command::Del => {
            net.detach(&inv.container_id).await.map_err(lib_err)?;
            Ok(None)
        }
        Command::Check => {
            let netns = inv.netns.clone().expect("CHECK has CNI_NETNS");
            net.check(&inv.container_id, &NetnsRef::Path(netns))
                .await
                .map_err(lib_err)?;
            Ok(None)
        }
        Command::Version => unreachable!("handled above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const CONF: &str = r#"{"cniVersion":"1.0.0","name":"tug","type":"tug-cni","subnet":"10.88.0.0/24",
        "runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"udp"}]}}"#;

    #[test]
    fn version_needs_no_config() {
        let inv = parse(&env(&[("CNI_COMMAND", "VERSION")]), b"").unwrap();
        let out = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(execute(&inv))
            .unwrap()
            .unwrap();
        assert_eq!(out["supportedVersions"][3], "1.0.0");
    }

    #[test]
    fn add_parses_env_and_port_mappings() {
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth1"),
        ]);
        let inv = parse(&e, CONF.as_bytes()).unwrap();
        assert_eq!(inv.command, Command::Add);
        assert_eq!(inv.ifname, "eth1");
        assert_eq!(
            inv.ports,
            vec![PortMapping {
                protocol: Protocol::Udp,
                host_port: 8080,
                container_port: 80
            }]
        );
        assert!(network_config(inv.conf.as_ref().unwrap()).masquerade);
    }

    #[test]
    fn errors_carry_cni_codes() {
        let missing = parse(&env(&[("CNI_COMMAND", "ADD")]), CONF.as_bytes()).unwrap_err();
        assert_eq!(missing.code, 4);
        assert!(missing.msg.contains("CNI_CONTAINERID"));
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/x"),
            ("CNI_IFNAME", "eth0"),
        ]);
        assert_eq!(parse(&e, b"{not json").unwrap_err().code, 6);
        let old = CONF.replace("1.0.0", "0.1.0");
        assert_eq!(parse(&e, old.as_bytes()).unwrap_err().code, 1);
        let json = serde_json::to_value(parse(&e, b"{").unwrap_err()).unwrap();
        assert_eq!(json["cniVersion"], "1.0.0");
        assert!(json["msg"].is_string() && json["details"].is_string());
    }

    #[test]
    fn del_without_netns_is_accepted() {
        let e = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
        ]);
        assert!(parse(&e, CONF.as_bytes()).unwrap().netns.is_none());
    }
}
