//! Mapping cluster nodes to the VMs behind them (`profile discover`).
//!
//! Three methods, in order, each with the reason it matched:
//! 1. the VM name equals the node's hostname (or its first DNS label);
//! 2. the guest agent of exactly one VM reports the node's address (loopback, link-local and
//!    CNI/kube interfaces ignored: a VIP or a Service IP must not map a node);
//! 3. the cloud-init `ipconfigN` of exactly one VM sets the node's address.
//!
//! An address seen on two VMs is ambiguous and maps nothing; a VM claimed by two nodes maps
//! neither. The matching is a pure function over an [`Inventory`] so it is tested without HTTP;
//! [`map_nodes`] fetches only what the earlier methods left open.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::pve::client::PveClient;
use crate::pve::error::PveError;
use crate::pve::types::{AgentInterface, ClusterVm, VmConfig, VmRef};

/// A cluster node as the profile knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeIdentity {
    pub address: String,
    pub hostname: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchMethod {
    Name,
    GuestAgent,
    CloudInit,
    /// Not mapped (see the reason).
    None,
}

/// The VM found for one node, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mapping {
    pub address: String,
    pub hostname: Option<String>,
    pub vm: Option<VmRef>,
    pub vm_name: Option<String>,
    pub method: MatchMethod,
    pub reason: String,
    /// MAC of the VM's `net0`, read after matching (a rebuild from a template needs it).
    pub mac: Option<String>,
}

/// What the matching looks at. `vms` may hold LXC guests and templates; they are skipped.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    pub vms: Vec<ClusterVm>,
    /// Guest-agent interfaces per VM, or why they could not be read.
    pub agent: BTreeMap<VmRef, Result<Vec<AgentInterface>, String>>,
    pub configs: BTreeMap<VmRef, VmConfig>,
}

/// Interfaces whose addresses say nothing about which VM a node is (CNI, IPVS, bridges).
fn ignored_interface(name: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "lo",
        "cilium",
        "lxc",
        "flannel",
        "cni",
        "kube-ipvs",
        "vxlan",
        "docker",
        "veth",
        "cali",
        "tunl",
        "weave",
        "genev",
        "nodelocaldns",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p))
}

fn ignored_address(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_link_local() || v4.is_unspecified(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

/// Usable guest-agent addresses of one VM, with their interface names.
pub fn agent_addresses(ifs: &[AgentInterface]) -> Vec<(IpAddr, String)> {
    ifs.iter()
        .filter(|i| !ignored_interface(&i.name))
        .flat_map(|i| {
            i.ip_addresses
                .iter()
                .filter_map(|a| a.ip_address.parse::<IpAddr>().ok())
                .filter(|ip| !ignored_address(ip))
                .map(|ip| (ip, i.name.clone()))
        })
        .collect()
}

fn candidates(inv: &Inventory) -> impl Iterator<Item = &ClusterVm> {
    inv.vms.iter().filter(|v| v.is_qemu() && !v.template)
}

fn vm_list(vms: &BTreeSet<VmRef>) -> String {
    vms.iter()
        .map(|v| format!("{} ({})", v.vmid, v.node))
        .collect::<Vec<_>>()
        .join(", ")
}

fn by_name(node: &NodeIdentity, inv: &Inventory) -> Result<(VmRef, String), String> {
    let Some(host) = node.hostname.as_deref().filter(|h| !h.is_empty()) else {
        return Err("hostname unknown".into());
    };
    let short = host.split('.').next().unwrap_or(host);
    let hits: Vec<&ClusterVm> = candidates(inv)
        .filter(|v| {
            v.name
                .as_deref()
                .is_some_and(|n| n.eq_ignore_ascii_case(host) || n.eq_ignore_ascii_case(short))
        })
        .collect();
    match hits.as_slice() {
        [] => Err(format!("no VM is named '{host}'")),
        [one] => Ok((
            one.vm_ref(),
            format!(
                "VM name '{}' equals the node's hostname",
                one.name.as_deref().unwrap_or("")
            ),
        )),
        many => Err(format!(
            "several VMs are named '{host}': {}",
            vm_list(&many.iter().map(|v| v.vm_ref()).collect())
        )),
    }
}

/// Maps each node to a VM with the data in `inv`. Pure: no I/O.
pub fn map_with_inventory(nodes: &[NodeIdentity], inv: &Inventory) -> Vec<Mapping> {
    let names: BTreeMap<VmRef, Option<String>> = candidates(inv)
        .map(|v| (v.vm_ref(), v.name.clone()))
        .collect();

    let mut agent_index: BTreeMap<IpAddr, BTreeMap<VmRef, String>> = BTreeMap::new();
    let mut agent_missing = Vec::new();
    for (vm, res) in &inv.agent {
        match res {
            Ok(ifs) => {
                for (ip, ifname) in agent_addresses(ifs) {
                    agent_index
                        .entry(ip)
                        .or_default()
                        .insert(vm.clone(), ifname);
                }
            }
            Err(_) => agent_missing.push(vm.vmid.to_string()),
        }
    }
    let mut ci_index: BTreeMap<IpAddr, BTreeSet<VmRef>> = BTreeMap::new();
    for (vm, cfg) in &inv.configs {
        for ip in cfg.cloud_init_addresses() {
            ci_index.entry(ip).or_default().insert(vm.clone());
        }
    }

    let mut out: Vec<Mapping> = nodes
        .iter()
        .map(|node| {
            let mut notes = Vec::new();
            let found = |vm: VmRef, method, reason: String| Mapping {
                address: node.address.clone(),
                hostname: node.hostname.clone(),
                vm_name: names.get(&vm).cloned().flatten(),
                vm: Some(vm),
                method,
                reason,
                mac: None,
            };
            match by_name(node, inv) {
                Ok((vm, reason)) => return found(vm, MatchMethod::Name, reason),
                Err(note) => notes.push(note),
            }
            let ip: Option<IpAddr> = node.address.parse().ok();
            match ip {
                None => notes.push(format!("'{}' is not an IP address", node.address)),
                Some(ip) => {
                    match agent_index.get(&ip) {
                        Some(hits) if hits.len() == 1 => {
                            let (vm, ifname) = hits.iter().next().expect("one hit");
                            let reason = format!(
                                "the guest agent of VM {} reports {ip} on {ifname}",
                                vm.vmid
                            );
                            return found(vm.clone(), MatchMethod::GuestAgent, reason);
                        }
                        Some(hits) => notes.push(format!(
                            "{ip} is reported by the guest agents of several VMs: {}",
                            vm_list(&hits.keys().cloned().collect())
                        )),
                        None if inv.agent.is_empty() => {}
                        None => notes.push(format!("no guest agent reports {ip}")),
                    }
                    match ci_index.get(&ip) {
                        Some(hits) if hits.len() == 1 => {
                            let vm = hits.iter().next().expect("one hit").clone();
                            let reason = format!("cloud-init ipconfig of VM {} sets {ip}", vm.vmid);
                            return found(vm, MatchMethod::CloudInit, reason);
                        }
                        Some(hits) => notes.push(format!(
                            "{ip} is set by cloud-init on several VMs: {}",
                            vm_list(hits)
                        )),
                        None if inv.configs.is_empty() => {}
                        None => notes.push(format!("no cloud-init ipconfig sets {ip}")),
                    }
                }
            }
            if !agent_missing.is_empty() {
                notes.push(format!(
                    "no guest agent answer from VM {}",
                    agent_missing.join(", ")
                ));
            }
            Mapping {
                address: node.address.clone(),
                hostname: node.hostname.clone(),
                vm: None,
                vm_name: None,
                method: MatchMethod::None,
                reason: notes.join("; "),
                mac: None,
            }
        })
        .collect();

    // One VM cannot back two nodes: drop such matches rather than guess.
    let mut claims: BTreeMap<VmRef, Vec<String>> = BTreeMap::new();
    for m in &out {
        if let Some(vm) = &m.vm {
            claims
                .entry(vm.clone())
                .or_default()
                .push(m.address.clone());
        }
    }
    for m in &mut out {
        if let Some(vm) = m.vm.clone()
            && let Some(addrs) = claims.get(&vm).filter(|a| a.len() > 1)
        {
            m.reason = format!(
                "VM {} matched several nodes ({}); was: {}",
                vm.vmid,
                addrs.join(", "),
                m.reason
            );
            m.vm = None;
            m.vm_name = None;
            m.method = MatchMethod::None;
        }
    }
    out
}

const FETCH_PARALLEL: usize = 8;

/// Maps nodes to VMs through the API: cluster resources first, then guest agents and VM
/// configs only if the names left nodes unmapped. Agent and config failures of single VMs are
/// recorded, not fatal.
pub async fn map_nodes(
    client: &PveClient,
    nodes: &[NodeIdentity],
) -> Result<Vec<Mapping>, PveError> {
    let mut mappings = match_nodes(client, nodes).await?;
    let mapped: Vec<VmRef> = mappings.iter().filter_map(|m| m.vm.clone()).collect();
    let configs = fetch_all(
        client,
        mapped,
        |c, vm| async move { c.vm_config(&vm).await },
    )
    .await;
    for m in &mut mappings {
        m.mac =
            m.vm.as_ref()
                .and_then(|vm| configs.get(vm))
                .and_then(|r| r.as_ref().ok())
                .and_then(|cfg| cfg.other.get("net0"))
                .and_then(|v| v.as_str())
                .and_then(super::mac_of);
    }
    Ok(mappings)
}

async fn match_nodes(client: &PveClient, nodes: &[NodeIdentity]) -> Result<Vec<Mapping>, PveError> {
    let mut inv = Inventory {
        vms: client.cluster_vms().await?,
        ..Inventory::default()
    };
    let unmapped = |inv: &Inventory| {
        map_with_inventory(nodes, inv)
            .iter()
            .any(|m| m.vm.is_none())
    };
    if !unmapped(&inv) {
        return Ok(map_with_inventory(nodes, &inv));
    }
    let running: Vec<VmRef> = candidates(&inv)
        .filter(|v| v.status == "running")
        .map(ClusterVm::vm_ref)
        .collect();
    inv.agent = fetch_all(client, running, |c, vm| async move {
        c.agent_interfaces(&vm).await.map_err(|e| e.to_string())
    })
    .await;
    if !unmapped(&inv) {
        return Ok(map_with_inventory(nodes, &inv));
    }
    // Offline nodes answer 595 after a delay; skip their VMs.
    let reachable: Vec<VmRef> = candidates(&inv)
        .filter(|v| v.status != "unknown")
        .map(ClusterVm::vm_ref)
        .collect();
    inv.configs = fetch_all(
        client,
        reachable,
        |c, vm| async move { c.vm_config(&vm).await },
    )
    .await
    .into_iter()
    .filter_map(|(vm, r)| match r {
        Ok(cfg) => Some((vm, cfg)),
        Err(e) => {
            tracing::debug!(error = %e, "skipping VM config in discovery");
            None
        }
    })
    .collect();
    Ok(map_with_inventory(nodes, &inv))
}

async fn fetch_all<T, E, F, Fut>(
    client: &PveClient,
    vms: Vec<VmRef>,
    f: F,
) -> BTreeMap<VmRef, Result<T, E>>
where
    T: Send + 'static,
    E: Send + 'static,
    F: Fn(PveClient, VmRef) -> Fut,
    Fut: std::future::Future<Output = Result<T, E>> + Send + 'static,
{
    let sem = Arc::new(Semaphore::new(FETCH_PARALLEL));
    let mut set = JoinSet::new();
    for vm in vms {
        let fut = f(client.clone(), vm.clone());
        let sem = Arc::clone(&sem);
        set.spawn(async move {
            let _permit = sem.acquire_owned().await;
            (vm, fut.await)
        });
    }
    let mut out = BTreeMap::new();
    while let Some(joined) = set.join_next().await {
        if let Ok((vm, r)) = joined {
            out.insert(vm, r);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pve::types::AgentIp;

    fn qemu(vmid: u32, node: &str, name: Option<&str>) -> ClusterVm {
        ClusterVm {
            id: format!("qemu/{vmid}"),
            vmid,
            kind: "qemu".into(),
            node: node.into(),
            status: "running".into(),
            name: name.map(str::to_owned),
            template: false,
            lock: None,
            tags: None,
        }
    }

    fn iface(name: &str, ips: &[&str]) -> AgentInterface {
        AgentInterface {
            name: name.into(),
            hardware_address: None,
            ip_addresses: ips
                .iter()
                .map(|ip| AgentIp {
                    ip_address: (*ip).into(),
                    ip_address_type: "ipv4".into(),
                    prefix: None,
                })
                .collect(),
        }
    }

    fn node(addr: &str, host: Option<&str>) -> NodeIdentity {
        NodeIdentity {
            address: addr.into(),
            hostname: host.map(str::to_owned),
        }
    }

    #[test]
    fn name_then_agent_then_cloud_init() {
        let mut inv = Inventory {
            vms: vec![
                qemu(101, "pve1", Some("talos-cp-1")),
                qemu(102, "pve2", Some("vm-102")),
                qemu(103, "pve3", Some("vm-103")),
                ClusterVm {
                    template: true,
                    ..qemu(900, "pve1", Some("talos-cp-9"))
                },
            ],
            ..Inventory::default()
        };
        inv.agent.insert(
            VmRef::new("pve2", 102),
            Ok(vec![
                iface("lo", &["127.0.0.1"]),
                iface("ens18", &["10.0.0.12", "169.254.1.1"]),
                // A Service IP seen by IPVS must not map anything.
                iface("kube-ipvs0", &["10.0.0.13"]),
            ]),
        );
        inv.agent.insert(
            VmRef::new("pve3", 103),
            Err("QEMU guest agent is not running".into()),
        );
        let cfg: VmConfig =
            serde_json::from_str(r#"{"ipconfig0":"ip=10.0.0.13/24,gw=10.0.0.1"}"#).unwrap();
        inv.configs.insert(VmRef::new("pve3", 103), cfg);

        let nodes = [
            node("10.0.0.11", Some("talos-cp-1.lan")),
            node("10.0.0.12", Some("talos-cp-2")),
            node("10.0.0.13", None),
            node("10.0.0.14", Some("talos-cp-9")),
        ];
        let m = map_with_inventory(&nodes, &inv);
        assert_eq!(m[0].method, MatchMethod::Name);
        assert_eq!(m[0].vm, Some(VmRef::new("pve1", 101)));
        assert_eq!(m[1].method, MatchMethod::GuestAgent);
        assert_eq!(m[1].vm, Some(VmRef::new("pve2", 102)));
        assert!(m[1].reason.contains("ens18"), "{}", m[1].reason);
        assert_eq!(m[2].method, MatchMethod::CloudInit);
        assert_eq!(m[2].vm, Some(VmRef::new("pve3", 103)));
        // Templates are never candidates.
        assert_eq!(m[3].vm, None);
        assert!(
            m[3].reason.contains("no VM is named 'talos-cp-9'"),
            "{}",
            m[3].reason
        );
        assert!(
            m[3].reason.contains("no guest agent answer from VM 103"),
            "{}",
            m[3].reason
        );
    }

    #[test]
    fn ambiguous_address_and_double_claims() {
        let mut inv = Inventory {
            vms: vec![qemu(101, "pve1", Some("a")), qemu(102, "pve2", Some("b"))],
            ..Inventory::default()
        };
        inv.agent.insert(
            VmRef::new("pve1", 101),
            Ok(vec![iface("ens18", &["10.0.0.10"])]),
        );
        inv.agent.insert(
            VmRef::new("pve2", 102),
            Ok(vec![iface("eth0", &["10.0.0.10"])]),
        );
        let m = map_with_inventory(&[node("10.0.0.10", None)], &inv);
        assert_eq!(m[0].vm, None);
        assert!(m[0].reason.contains("several VMs"), "{}", m[0].reason);

        // Two nodes whose names both resolve to VM 101.
        let inv = Inventory {
            vms: vec![qemu(101, "pve1", Some("cp"))],
            ..Inventory::default()
        };
        let m = map_with_inventory(
            &[
                node("10.0.0.1", Some("cp")),
                node("10.0.0.2", Some("cp.lan")),
            ],
            &inv,
        );
        assert!(m.iter().all(|m| m.vm.is_none()));
        assert!(
            m[0].reason.contains("matched several nodes"),
            "{}",
            m[0].reason
        );
    }
}
