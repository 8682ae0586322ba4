//! VM config changes (`PUT`/`POST …/config`, restore overrides) applied to a simulated [`Vm`].

use std::collections::BTreeMap;

use super::Vm;

/// The `net0` models PVE knows (the `keyAlias` entries of the schema's `net[n]`).
const MODELS: &[&str] = &[
    "e1000",
    "e1000-82540em",
    "e1000-82544gc",
    "e1000-82545em",
    "e1000e",
    "i82551",
    "i82557b",
    "i82559er",
    "ne2k_isa",
    "ne2k_pci",
    "pcnet",
    "rtl8139",
    "virtio",
    "vmxnet3",
];

/// A parsed `net0` property string: model, MAC (if given), bridge, other options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Net {
    pub model: String,
    pub mac: Option<String>,
    pub bridge: Option<String>,
    pub options: Vec<String>,
}

/// `virtio=BC:24:11:2A:6C:9E,bridge=vmbr0,firewall=1` or `model=virtio,macaddr=…,…` (the
/// schema check has already accepted it).
pub fn parse_net(s: &str) -> Net {
    let mut net = Net {
        model: "virtio".into(),
        mac: None,
        bridge: None,
        options: Vec::new(),
    };
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('=') {
            Some(("model", v)) => v.clone_into(&mut net.model),
            Some(("macaddr", v)) => net.mac = Some(v.to_ascii_uppercase()),
            Some(("bridge", v)) => net.bridge = Some(v.to_owned()),
            Some((k, v)) if MODELS.contains(&k) => {
                k.clone_into(&mut net.model);
                net.mac = Some(v.to_ascii_uppercase());
            }
            None if MODELS.contains(&part) => part.clone_into(&mut net.model),
            _ => net.options.push(part.to_owned()),
        }
    }
    net
}

/// Keys that a running VM cannot change at once (not hot-pluggable with the default
/// `hotplug: network,disk,usb`): they wait for the next cold start.
pub const COLD: &[&str] = &["cores", "sockets", "memory", "cpu"];

/// Applies `changes` (already complete: `net0` carries its MAC). `delete` removes keys.
pub fn apply(vm: &mut Vm, changes: &BTreeMap<String, String>) {
    for (k, v) in changes {
        match k.as_str() {
            "name" => v.clone_into(&mut vm.name),
            "cores" => vm.cores = v.parse().unwrap_or(vm.cores),
            "memory" => {
                let current = v
                    .split(',')
                    .find_map(|p| match p.split_once('=') {
                        Some(("current", n)) => Some(n),
                        None => Some(p),
                        _ => None,
                    })
                    .and_then(|n| n.parse().ok());
                vm.memory_mib = current.unwrap_or(vm.memory_mib);
            }
            "net0" => {
                let net = parse_net(v);
                vm.model = net.model;
                if let Some(mac) = net.mac {
                    vm.mac = mac;
                }
                vm.bridge = net.bridge.unwrap_or_default();
                vm.net_options = net.options.join(",");
            }
            "tags" => vm.tags = Some(v.clone()),
            "ipconfig0" => vm.ipconfig0 = Some(v.clone()),
            "agent" => vm.agent = v.starts_with('1') || v.contains("enabled=1"),
            "template" => vm.template = v == "1",
            "delete" => {
                for key in v.split([',', ';', ' ']).filter(|k| !k.is_empty()) {
                    match key {
                        "tags" => vm.tags = None,
                        "ipconfig0" => vm.ipconfig0 = None,
                        "agent" => vm.agent = false,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net0_forms() {
        let n = parse_net("virtio=bc:24:11:2a:6c:9e,bridge=vmbr0,firewall=1,tag=20");
        assert_eq!(n.model, "virtio");
        assert_eq!(n.mac.as_deref(), Some("BC:24:11:2A:6C:9E"));
        assert_eq!(n.bridge.as_deref(), Some("vmbr0"));
        assert_eq!(n.options, ["firewall=1", "tag=20"]);
        let n = parse_net("model=e1000,macaddr=BC:24:11:00:00:01,bridge=vmbr1");
        assert_eq!(
            (n.model.as_str(), n.mac.as_deref()),
            ("e1000", Some("BC:24:11:00:00:01"))
        );
        let n = parse_net("virtio,bridge=vmbr0");
        assert_eq!((n.model.as_str(), n.mac), ("virtio", None));
    }
}
