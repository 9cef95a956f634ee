//! Attaching and detaching containers: the per-container half of [`Network`].

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use super::*;

impl<N: NetOps> Network<N> {
    fn attachment(&self, id: &str, lease: &Lease, mac: Option<[u8; 6]>) -> Attachment {
        Attachment {
            container_id: id.to_string(),
            address: Ipv4Network::new(lease.ip, self.cfg.subnet.prefix()).expect("prefix"),
            gateway: self.gateway,
            mac: mac.unwrap_or_else(|| mac_for(lease.ip)),
            ifname: lease.ifname.clone(),
            host_veth: lease.host_veth.clone(),
            ports: lease.ports.clone(),
        }
    }

    fn validate(&self, req: &AttachRequest) -> Result<(), NetworkError> {
        let bad = |reason: String| NetworkError::InvalidRequest {
            container: req.container_id.clone(),
            reason,
        };
        if req.container_id.is_empty() || req.container_id.len() > 256 {
            return Err(bad("container id must be 1-256 characters".into()));
        }
        if !valid_ifname(&req.ifname) {
            return Err(bad(format!(
                "interface name {:?} must be 1-15 characters",
                req.ifname
            )));
        }
        for (i, p) in req.ports.iter().enumerate() {
            if p.host_port == 0 || p.container_port == 0 {
                return Err(bad(format!("port mapping {p:?} uses port 0")));
            }
            if req.ports[..i]
                .iter()
                .any(|q| q.protocol == p.protocol && q.host_port == p.host_port)
            {
                return Err(bad(format!(
                    "{:?} host port {} listed twice",
                    p.protocol, p.host_port
                )));
            }
        }
        if let Some(mac) = req.mac {
            if mac[0] & 1 == 1 || mac == [0; 6] {
                return Err(bad("mac must be a unicast, non-zero address".into()));
            }
        }
        Ok(())
    }

    /// Ports published by containers of other networks under the same data dir.
    fn ports_elsewhere(&self) -> Vec<(PortMapping, String, String)> {
        let mut out = Vec::new();
        for rec in self.sibling_records() {
            let a = Allocator::new(
                &rec.config.data_dir,
                &rec.config.name,
                rec.config.subnet,
                rec.config.gateway(),
            );
            if let Ok(leases) = a.and_then(|a| a.snapshot()) {
                for (id, l) in leases {
                    for p in l.ports {
                        out.push((p, id.clone(), rec.config.name.clone()));
                    }
                }
            }
        }
        out
    }

    /// Gives a container its network: a veth pair (host end on the bridge, the other end in
    /// the container's namespace as `ifname`), an address, `lo` up, a default route via the
    /// bridge, and its published ports. On error nothing of it is left behind (what could
    /// not be undone is named in [`NetworkError::CleanupFailed`]).
    ///
    /// Attaching a container that is already attached returns its attachment.
    pub async fn attach(&self, req: &AttachRequest) -> Result<Attachment, NetworkError> {
        self.validate(req)?;
        let ns = Netns::open(&req.netns).map_err(|source| NetworkError::Netns {
            container: req.container_id.clone(),
            source,
        })?;
        let id = req.container_id.as_str();
        let host_veth = host_veth_name(&self.cfg.name, id);
        let mut book = self.alloc.lock().map_err(self.alloc_err())?;
        let mut previous_ip = None;
        if let Some(lease) = book.get(id).cloned() {
            if self
                .ops
                .link_index(&lease.host_veth)
                .await
                .map_err(self.op_err("find veth"))?
                .is_some()
            {
                return Ok(self.attachment(id, &lease, req.mac));
            }
            // A lease without its veth: an attach that crashed half-way, or a container
            // whose namespace died (taking the veth with it) and is now restarted. Start
            // again, on the same address unless another one is asked for.
            book.release(id);
            previous_ip = Some(lease.ip);
        }
        for p in &req.ports {
            let clash = book
                .leases()
                .iter()
                .flat_map(|(h, l)| {
                    l.ports
                        .iter()
                        .map(move |q| (q, h.clone(), self.cfg.name.clone()))
                })
                .map(|(q, h, n)| (*q, h, n))
                .chain(self.ports_elsewhere())
                .find(|(q, _, _)| q.protocol == p.protocol && q.host_port == p.host_port);
            if let Some((_, holder, network)) = clash {
                return Err(NetworkError::PortInUse {
                    protocol: p.protocol,
                    port: p.host_port,
                    holder,
                    network,
                });
            }
        }
        let ip = book
            .allocate(id, req.ip.or(previous_ip))
            .map_err(self.alloc_err())?;
        book.update(id, |l| {
            l.ports = req.ports.clone();
            l.ifname = req.ifname.clone();
            l.host_veth = host_veth.clone();
        });
        // The lease is on disk before any kernel object exists: a crash from here on leaves
        // a record that detach follows.
        book.commit().map_err(self.alloc_err())?;
        let lease = book.get(id).cloned().expect("just leased");
        let mac = req.mac.unwrap_or_else(|| mac_for(ip));
        let result = self.plumb(req, &ns, &host_veth, ip, mac).await;
        match result {
            Ok(()) => Ok(self.attachment(id, &lease, Some(mac))),
            Err(cause) => {
                let mut leftovers = Vec::new();
                if let Err(e) = self.ops.del_link(&host_veth).await {
                    leftovers.push(format!("veth {host_veth}: {e}"));
                }
                // Publishing is the last step and one transaction: if it failed nothing of it
                // was applied, and if an earlier step failed it never ran.
                book.release(id);
                if let Err(e) = book.commit() {
                    leftovers.push(format!("lease of {ip}: {e}"));
                }
                if leftovers.is_empty() {
                    Err(cause)
                } else {
                    Err(NetworkError::CleanupFailed {
                        cause: Box::new(cause),
                        leftovers,
                    })
                }
            }
        }
    }

    async fn plumb(
        &self,
        req: &AttachRequest,
        ns: &Netns,
        host_veth: &str,
        ip: Ipv4Addr,
        mac: [u8; 6],
    ) -> Result<(), NetworkError> {
        let spec = VethSpec {
            host_name: host_veth.to_string(),
            bridge_index: self.bridge_index,
            peer_name: req.ifname.clone(),
            mtu: self.cfg.mtu,
            peer_mac: mac,
            // Any container can be a service endpoint and reach its own service: the DNATed
            // packet is routed back out of the port it came in on, which the bridge only
            // does with hairpin mode on (kubenet does the same for every pod).
            hairpin: true,
        };
        self.ops
            .add_veth(&spec, ns)
            .await
            .map_err(self.op_err(format!("create veth {host_veth}")))?;
        let netns_err = |source| NetworkError::Netns {
            container: req.container_id.clone(),
            source,
        };
        let inside = self.ops.enter(ns).await.map_err(netns_err)?;
        if let Some(lo) = inside.link_index("lo").await.map_err(netns_err)? {
            inside.set_up(lo).await.map_err(netns_err)?;
        }
        let dev = inside
            .link_index(&req.ifname)
            .await
            .map_err(netns_err)?
            .ok_or_else(|| NetworkError::Broken {
                container: req.container_id.clone(),
                problem: format!(
                    "{} missing in {} right after creation",
                    req.ifname, req.netns
                ),
            })?;
        let addr = Ipv4Network::new(ip, self.cfg.subnet.prefix()).expect("prefix checked");
        inside.add_address(dev, addr).await.map_err(netns_err)?;
        // The peer cannot be made up in the creating message (veth_open needs the pair
        // linked, which happens after the peer is configured).
        inside.set_up(dev).await.map_err(netns_err)?;
        let default = Route {
            destination: Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 0).expect("default"),
            gateway: Some(self.gateway),
            dev: Some(dev),
            onlink: false,
        };
        inside.add_route(&default).await.map_err(netns_err)?;
        if !req.ports.is_empty() {
            let p = firewall::Published {
                host_veth: host_veth.to_string(),
                ip,
                ports: req.ports.clone(),
            };
            self.ops
                .nft(&firewall::publish(&self.fw, &p))
                .await
                .map_err(self.op_err(format!("publish ports of {}", req.container_id)))?;
        }
        Ok(())
    }

    /// Takes a container off the network: its veth, published ports and lease. Succeeds
    /// when there is nothing to remove (twice in a row, after a crash, after the container's
    /// namespace is gone).
    pub async fn detach(&self, container_id: &str) -> Result<(), NetworkError> {
        let mut book = self.alloc.lock().map_err(self.alloc_err())?;
        let lease = book.get(container_id).cloned();
        let host_veth = lease
            .as_ref()
            .map(|l| l.host_veth.clone())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| host_veth_name(&self.cfg.name, container_id));
        // Ports first, so nothing is forwarded to an interface that is going away.
        if let Some(lease) = lease.as_ref().filter(|l| !l.ports.is_empty()) {
            let p = firewall::Published {
                host_veth: host_veth.clone(),
                ip: lease.ip,
                ports: lease.ports.clone(),
            };
            if self
                .ops
                .nft(&firewall::unpublish(&self.fw, &p))
                .await
                .is_err()
            {
                // Not (all) there: the attach died before publishing, or the ruleset was
                // changed behind our back. Make the kernel match the other leases.
                let mut rest = book.leases().clone();
                rest.remove(container_id);
                self.ops
                    .nft(&firewall::resync(&self.fw, &published(&rest)))
                    .await
                    .map_err(self.op_err(format!("unpublish ports of {container_id}")))?;
                self.set_unmasqueraded_peers().await?;
            }
        }
        self.ops
            .del_link(&host_veth)
            .await
            .map_err(self.op_err(format!("delete veth {host_veth}")))?;
        if lease.is_some() {
            book.release(container_id);
            book.commit().map_err(self.alloc_err())?;
        }
        Ok(())
    }

    /// The attachment of a container, after checking the kernel still has it: the host veth
    /// on the bridge and the address inside the container.
    pub async fn check(
        &self,
        container_id: &str,
        netns: &NetnsRef,
    ) -> Result<Attachment, NetworkError> {
        let leases = self.alloc.snapshot().map_err(self.alloc_err())?;
        let lease = leases
            .get(container_id)
            .ok_or_else(|| NetworkError::NotAttached {
                container: container_id.to_string(),
                network: self.cfg.name.clone(),
            })?;
        let broken = |problem: String| NetworkError::Broken {
            container: container_id.to_string(),
            problem,
        };
        if self
            .ops
            .link_index(&lease.host_veth)
            .await
            .map_err(self.op_err("find veth"))?
            .is_none()
        {
            return Err(broken(format!("host veth {} is missing", lease.host_veth)));
        }
        let ns = Netns::open(netns).map_err(|source| NetworkError::Netns {
            container: container_id.to_string(),
            source,
        })?;
        let netns_err = |source| NetworkError::Netns {
            container: container_id.to_string(),
            source,
        };
        let inside = self.ops.enter(&ns).await.map_err(netns_err)?;
        let dev = inside
            .link_index(&lease.ifname)
            .await
            .map_err(netns_err)?
            .ok_or_else(|| broken(format!("{} is missing in {netns}", lease.ifname)))?;
        let addrs = inside.addresses(dev).await.map_err(netns_err)?;
        let want = Ipv4Network::new(lease.ip, self.cfg.subnet.prefix()).expect("prefix");
        if !addrs.contains(&want) {
            return Err(broken(format!(
                "{} lacks address {want} (has {addrs:?})",
                lease.ifname
            )));
        }
        // The last step of an attach: without it (a crash just before), the container has
        // an address and no way out.
        let default = Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 0).expect("0.0.0.0/0");
        let routes = inside.routes().await.map_err(netns_err)?;
        if !routes
            .iter()
            .any(|r| r.destination == default && r.gateway == Some(self.gateway))
        {
            return Err(broken(format!(
                "no default route via {} in {netns}",
                self.gateway
            )));
        }
        Ok(self.attachment(container_id, lease, None))
    }

    /// Current attachments, from the leases.
    pub fn attachments(&self) -> Result<Vec<Attachment>, NetworkError> {
        let leases = self.alloc.snapshot().map_err(self.alloc_err())?;
        Ok(leases
            .iter()
            .map(|(id, l)| self.attachment(id, l, None))
            .collect())
    }
}
