//! The etcd side of the simulated cluster: which cluster each node's data belongs to, quorum,
//! and the split clusters a wrong recovery makes (`reference/talos.md` §3, §11, §13).
//!
//! Every accepted bootstrap makes a new cluster (a *generation*); a node's data belongs to one.
//! The members of a generation are the nodes that ever joined it: a wiped member stays in the
//! member list of its old cluster (it is just down), so a node that starts on old data has
//! quorum only if a majority of its old members is back.

use serde::{Deserialize, Serialize};

use super::{Cluster, Node, Transition};

/// How a call to an unreachable node fails (`reference/talos.md` §13.6, §13.7).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DialError {
    /// Down on the client's own L2: `connect: no route to host` after the ARP timeout.
    #[default]
    NoRouteToHost,
    /// The host is gone behind a router: `i/o timeout`.
    Timeout,
}

impl DialError {
    /// The gRPC error talosctl (or apid, for a proxied node) reports for `address`.
    pub fn message(self, address: &str) -> String {
        let cause = match self {
            DialError::NoRouteToHost => "connect: no route to host",
            DialError::Timeout => "i/o timeout",
        };
        format!(
            "rpc error: code = Unavailable desc = connection error: desc = \"transport: Error while dialing: dial tcp {address}:50000: {cause}\""
        )
    }
}

/// Where a node keeps `/var/lib/etcd`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "type")]
pub enum EtcdVolume {
    /// A directory on EPHEMERAL (every Talos before 1.14, and 1.14's default): wiping EPHEMERAL
    /// wipes it.
    #[default]
    Directory,
    /// Talos 1.14 with a `VolumeConfig` named `ETCD`: its own partition, which an EPHEMERAL-only
    /// reset keeps.
    Partition {
        /// The block device, e.g. `/dev/sda7`.
        location: String,
    },
}

/// A recovery mistake the simulator saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdViolation {
    pub at_ms: i64,
    pub kind: ViolationKind,
    /// The node whose action made the split.
    pub node: String,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ViolationKind {
    /// A bootstrap was accepted while a cluster made by an earlier one is alive.
    SecondBootstrap,
    /// Two etcd clusters run at once: a node started on old data and membership while a newer
    /// cluster existed, or a bootstrap was accepted while another node runs older data.
    SplitCluster,
}

/// `v1.14.0` → 14 (the minor version; Talos is 1.x). Unparseable versions count as 1.9.
pub fn minor_version(version: &str) -> u32 {
    version
        .trim_start_matches('v')
        .split('.')
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or(9)
}

/// What etcd logs when it cannot load a damaged database.
pub const CORRUPT_EVENT: &str =
    "Failed to run: etcd: failed to load the database (panic: invalid page type)";

impl Node {
    pub fn is_control_plane(&self) -> bool {
        matches!(self.machine_type.as_str(), "controlplane" | "init")
    }
}

impl Cluster {
    /// The addresses that joined cluster `generation` (generation 0: every control-plane node).
    pub fn members_of(&self, generation: u32) -> Vec<String> {
        match self.etcd_members.get(&generation) {
            Some(m) => m.clone(),
            None if generation == 0 => self
                .nodes
                .iter()
                .filter(|n| n.is_control_plane())
                .map(|n| n.address.clone())
                .collect(),
            None => Vec::new(),
        }
    }

    /// Whether `node` runs etcd as a member of `generation` (reachable, its data, Running).
    fn member_up(node: &Node, generation: u32, healthy: bool) -> bool {
        node.reachable
            && !node.etcd.data_empty
            && node.etcd.generation == generation
            && node.etcd.state == "Running"
            && (!healthy || node.etcd.health == "OK")
    }

    fn majority_up(&self, generation: u32, healthy: bool) -> bool {
        // Learners do not vote.
        let members: Vec<String> = self
            .members_of(generation)
            .into_iter()
            .filter(|a| {
                !self
                    .node(a)
                    .is_some_and(|n| n.etcd.learner && n.etcd.generation == generation)
            })
            .collect();
        let up = members
            .iter()
            .filter_map(|a| self.node(a))
            .filter(|n| Self::member_up(n, generation, healthy))
            .count();
        !members.is_empty() && up * 2 > members.len()
    }

    /// etcd has quorum: a majority of the newest cluster's members is Running and healthy.
    pub fn has_quorum(&self) -> bool {
        self.majority_up(self.etcd_generation, true)
    }

    /// Whether cluster `generation` still has a member with its data that has not failed.
    pub fn generation_alive(&self, generation: u32) -> bool {
        self.nodes.iter().any(|n| {
            n.is_control_plane()
                && !n.etcd.data_empty
                && n.etcd.generation == generation
                && n.etcd.state != "Failed"
                && !n.etcd.pending.iter().any(|t| t.state == "Failed")
        })
    }

    /// Pins every node that still reads the cluster-wide data to that file, before the
    /// cluster-wide data changes (a restore).
    pub fn pin_node_data(&mut self) {
        let source = self.snapshot_source.clone();
        for n in &mut self.nodes {
            if n.etcd.data.is_none() && !n.etcd.data_empty {
                n.etcd.data = source.clone();
            }
        }
    }

    pub fn violation(&mut self, at_ms: i64, kind: ViolationKind, node: &str, detail: String) {
        self.etcd_violations.push(EtcdViolation {
            at_ms,
            kind,
            node: node.to_owned(),
            detail,
        });
    }

    /// Applies one due transition of node `i` (at `at_ms`).
    pub(super) fn arrive(&mut self, i: usize, t: Transition, at_ms: i64) {
        if t.old_data {
            self.start_on_old_data(i, at_ms);
            self.log_etcd(i, at_ms);
            return;
        }
        let node = &mut self.nodes[i];
        node.etcd.set(&t.state, &t.health, &t.event);
        self.log_etcd(i, at_ms);
        let node = &mut self.nodes[i];
        if let Some(e) = t.data_empty {
            node.etcd.data_empty = e;
        }
        if let Some(g) = t.joins {
            let address = node.address.clone();
            node.etcd.generation = g;
            node.etcd.data = None;
            node.etcd.data_corrupt = false;
            node.etcd.restarted_without_quorum = false;
            node.etcd.health_from_quorum = false;
            let members = self.etcd_members.entry(g).or_default();
            if !members.contains(&address) {
                members.push(address);
            }
        }
    }

    fn log_etcd(&mut self, i: usize, at_ms: i64) {
        let n = &self.nodes[i];
        self.etcd_log.push(super::EtcdChange {
            at_ms,
            node: n.address.clone(),
            state: n.etcd.state.clone(),
            health: n.etcd.health.clone(),
        });
        let over = self.etcd_log.len().saturating_sub(super::ETCD_LOG_MAX);
        self.etcd_log.drain(..over);
    }

    /// etcd's pre-stage found data in `/var/lib/etcd`: it skips the join loop and starts etcd on
    /// the old data and member ID (talos:internal/app/machined/pkg/system/services/etcd.go:533-563
    /// @release-1.14).
    fn start_on_old_data(&mut self, i: usize, at_ms: i64) {
        let generation = self.nodes[i].etcd.generation;
        if self.nodes[i].etcd.data_corrupt {
            self.nodes[i].etcd.set("Failed", "Fail", CORRUPT_EVENT);
            return;
        }
        self.nodes[i].etcd.set(
            "Running",
            "?",
            "Started task etcd (PID 3131) for container etcd",
        );
        self.nodes[i].etcd.health_from_quorum = true;
        let healthy = self.majority_up(generation, false);
        // Without quorum the restarted member never gets ready to serve clients.
        self.nodes[i].etcd.restarted_without_quorum = !healthy;
        self.nodes[i].etcd.set(
            "Running",
            if healthy { "OK" } else { "Fail" },
            health_event(healthy),
        );
        let newest = self.etcd_generation;
        if newest > generation && self.generation_alive(newest) {
            let address = self.nodes[i].address.clone();
            self.violation(
                at_ms,
                ViolationKind::SplitCluster,
                &address,
                format!(
                    "etcd on {address} started on its old data (cluster {generation}) while the restored cluster {newest} runs: two clusters"
                ),
            );
        }
    }

    /// HEALTH of nodes running on old membership follows their old cluster's quorum.
    pub(super) fn follow_quorum(&mut self) -> bool {
        let mut changed = false;
        for i in 0..self.nodes.len() {
            let n = &self.nodes[i];
            if !(n.etcd.health_from_quorum && n.etcd.state == "Running" && !n.etcd.data_empty) {
                continue;
            }
            let healthy = self.majority_up(n.etcd.generation, false);
            let want = if healthy { "OK" } else { "Fail" };
            if self.nodes[i].etcd.health != want {
                self.nodes[i]
                    .etcd
                    .set("Running", want, health_event(healthy));
                if healthy {
                    self.nodes[i].etcd.restarted_without_quorum = false;
                }
                changed = true;
            }
        }
        changed
    }

    /// Nodes whose etcd pre-stage finishes by itself: an empty node in the join loop joins the
    /// newest cluster once it has quorum (after a bootstrap, or at any time for a node whose
    /// join loop runs against the live cluster: [`super::Etcd::join_loop`]); a node in
    /// `Preparing` that still has data starts on it once a newer cluster exists (it never waits
    /// for bootstrap).
    pub(super) fn schedule_starts(&mut self, now_ms: i64) -> bool {
        let newest = self.etcd_generation;
        let quorum = self.has_quorum();
        let join_ms = i64::try_from(self.timing.join_ms).unwrap_or(0);
        let mut changed = false;
        for i in 0..self.nodes.len() {
            let n = &self.nodes[i];
            if !n.is_control_plane()
                || !n.reachable
                || n.etcd.state != "Preparing"
                || !n.etcd.pending.is_empty()
            {
                continue;
            }
            let t = if n.etcd.data_empty {
                if !quorum || !(newest > 0 || n.etcd.join_loop) || !self.same_cluster(n) {
                    continue;
                }
                if let Err(e) = self.prepare_join(i) {
                    // Talos retries the join; the pre-stage stays in Preparing.
                    if self.nodes[i].etcd.events.first().map(|e| &e.1) != Some(&e) {
                        self.nodes[i].etcd.set("Preparing", "?", &e);
                        changed = true;
                    }
                    continue;
                }
                let mut t = Transition::at(
                    now_ms.saturating_add(join_ms),
                    "Running",
                    "OK",
                    "Health check successful",
                );
                t.data_empty = Some(false);
                t.joins = Some(newest);
                t
            } else if newest > n.etcd.generation {
                let mut t = Transition::at(now_ms.saturating_add(join_ms), "Running", "?", "");
                t.old_data = true;
                t
            } else {
                continue;
            };
            self.nodes[i].etcd.pending.push(t);
            changed = true;
        }
        changed
    }

    /// Talos's join loop before `MemberAddAsLearner` (talos:svc/etcd.go:472-535@release-1.9):
    /// it removes a member with its own hostname; on 1.14 a member with its peer URL but
    /// another name blocks it. A node that joins after a bootstrap keeps the old rules (no
    /// learner phase unless `timing.promote_ms` is set).
    fn prepare_join(&mut self, i: usize) -> Result<(), String> {
        self.pin_members();
        let newest = self.etcd_generation;
        let address = self.nodes[i].address.clone();
        let hostname = self.nodes[i].hostname.clone();
        let members = self.members_of(newest);
        if minor_version(&self.talos_version) >= 14
            && members.iter().any(|a| {
                *a == address && self.member_hostnames_of(a).is_some_and(|h| h != hostname)
            })
        {
            return Err(format!(
                "Failed to run pre stage: member already exists with the same peer URLs [https://{address}:2380]"
            ));
        }
        if let Some(m) = self.etcd_members.get_mut(&newest) {
            m.retain(|a| *a != address);
        }
        let stale: Vec<String> = self
            .members_of(newest)
            .into_iter()
            .filter(|a| {
                self.node(a)
                    .is_some_and(|n| n.hostname == hostname && n.address != address)
            })
            .collect();
        if let Some(m) = self.etcd_members.get_mut(&newest) {
            m.retain(|a| !stale.contains(a));
        }
        // A new member: a new ID.
        let id = super::machine::fnv(&format!(
            "{hostname}/{address}/{newest}/{}",
            self.member_ids.len()
        ));
        self.member_ids.insert(address.clone(), id);
        self.etcd_restart_loops.retain(|a| *a != address);
        let promote_ms = i64::try_from(self.timing.promote_ms).unwrap_or(0);
        self.member_names.insert(address.clone(), hostname);
        let n = &mut self.nodes[i];
        if promote_ms > 0 {
            n.etcd.learner = true;
            n.etcd.promote_at_ms = Some(
                jiff::Timestamp::now().as_millisecond()
                    + i64::try_from(self.timing.join_ms).unwrap_or(0)
                    + promote_ms,
            );
        }
        Ok(())
    }

    /// The hostname the member at `address` registered with (the node there may have been
    /// replaced since).
    pub fn member_hostnames_of(&self, address: &str) -> Option<String> {
        self.member_names
            .get(address)
            .cloned()
            .or_else(|| self.node(address).map(|n| n.hostname.clone()))
    }
}

fn health_event(healthy: bool) -> &'static str {
    if healthy {
        "Health check successful"
    } else {
        "Health check failed: context deadline exceeded"
    }
}

impl Transition {
    pub fn at(at_ms: i64, state: &str, health: &str, event: &str) -> Self {
        Self {
            at_ms,
            state: state.into(),
            health: health.into(),
            event: event.into(),
            data_empty: None,
            old_data: false,
            joins: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> Cluster {
        Cluster::example(None)
    }

    #[test]
    fn minor_versions() {
        assert_eq!(minor_version("v1.9.5"), 9);
        assert_eq!(minor_version("v1.14.0"), 14);
        assert_eq!(minor_version("1.12.3"), 12);
        assert_eq!(minor_version("garbage"), 9);
    }

    #[test]
    fn quorum_needs_a_majority_of_the_newest_cluster() {
        let mut c = cluster();
        assert!(c.has_quorum());
        c.nodes[0].reachable = false;
        assert!(c.has_quorum(), "two of three");
        c.nodes[1].etcd.health = "Fail".into();
        assert!(!c.has_quorum(), "one of three");
    }

    #[test]
    fn a_wiped_member_still_counts_against_its_old_cluster() {
        let mut c = cluster();
        c.nodes[1].etcd.data_empty = true;
        c.nodes[2].etcd.data_empty = true;
        assert!(!c.has_quorum(), "one of three members has data");
    }

    #[test]
    fn old_data_start_while_a_newer_cluster_runs_is_a_split() {
        let mut c = cluster();
        c.etcd_generation = 1;
        c.etcd_members.insert(1, vec!["10.5.0.11".into()]);
        c.nodes[0].etcd.generation = 1;
        c.nodes[1].etcd.set("Preparing", "?", "Running pre state");
        c.nodes[2].etcd.data_empty = true;
        c.nodes[2].etcd.set("Preparing", "?", "Running pre state");
        assert!(c.schedule_starts(0));
        assert!(
            c.nodes[1].etcd.pending[0].old_data,
            "data left: starts on it"
        );
        assert_eq!(c.nodes[2].etcd.pending[0].joins, Some(1), "empty: joins");
        c.advance(i64::MAX);
        assert_eq!(c.etcd_violations.len(), 1, "{:?}", c.etcd_violations);
        assert_eq!(c.etcd_violations[0].kind, ViolationKind::SplitCluster);
        assert_eq!(c.etcd_violations[0].node, "10.5.0.12");
        assert_eq!(
            c.nodes[1].etcd.health, "Fail",
            "its old cluster has no quorum"
        );
        assert_eq!(c.nodes[2].etcd.generation, 1);
        assert_eq!(c.members_of(1), ["10.5.0.11", "10.5.0.13"]);
    }

    /// A node fresh from `apply-config` (empty data, join loop) next to the live cluster.
    fn joiner(c: &mut Cluster, hostname: &str) -> usize {
        c.pin_members();
        let mut n = super::super::maintenance_node("10.5.0.30", "BC:24:11:AA:BB:CC");
        n.maintenance = false;
        n.machine_type = "controlplane".into();
        n.hostname = hostname.into();
        n.etcd.join_loop = true;
        n.etcd.set("Preparing", "?", "Running pre state");
        c.nodes.push(n);
        c.nodes.len() - 1
    }

    #[test]
    fn the_join_loop_adds_a_learner_while_etcd_has_quorum() {
        let mut c = cluster();
        c.timing.promote_ms = 1000;
        let i = joiner(&mut c, "talos-cp-4");
        assert!(c.schedule_starts(0));
        assert_eq!(c.nodes[i].etcd.pending[0].joins, Some(0));
        assert!(c.nodes[i].etcd.learner);
        c.advance(i64::MAX / 4);
        assert_eq!(c.nodes[i].etcd.state, "Running");
        assert!(c.members_of(0).contains(&"10.5.0.30".to_owned()));
        assert!(!c.nodes[i].etcd.learner, "promoted");
        assert_ne!(c.member_id("10.5.0.30"), 0);
    }

    #[test]
    fn a_config_from_another_cluster_never_joins() {
        let mut c = cluster();
        let i = joiner(&mut c, "talos-cp-4");
        let other = super::super::Secrets::generate("prod", "https://10.9.0.10:6443");
        c.nodes[i].machine_config = Some(other.config(&c.nodes[i], "v1.9.5", "v1.32.3"));
        assert!(!c.schedule_starts(0));
        assert_eq!(c.nodes[i].etcd.state, "Preparing");
        // With this cluster's secrets it joins.
        let own = c.secrets.config(&c.nodes[i], "v1.9.5", "v1.32.3");
        c.nodes[i].machine_config = Some(own);
        assert!(c.schedule_starts(0));
    }

    #[test]
    fn without_quorum_the_joiner_waits_for_a_bootstrap() {
        let mut c = cluster();
        c.nodes[1].reachable = false;
        c.nodes[2].reachable = false;
        let i = joiner(&mut c, "talos-cp-4");
        assert!(!c.schedule_starts(0));
        assert_eq!(c.nodes[i].etcd.state, "Preparing");
        assert!(c.nodes[i].etcd.pending.is_empty());
    }

    #[test]
    fn a_joiner_replaces_the_member_with_its_hostname_but_114_refuses_another_name_on_its_url() {
        let mut c = cluster();
        c.nodes[2].reachable = false;
        let old = c.member_id("10.5.0.13");
        // Same address and hostname as the dead member: it takes its place with a new ID.
        c.pin_members();
        let mut n = c.nodes[2].clone();
        n.reachable = true;
        n.etcd = super::super::Etcd {
            data_empty: true,
            join_loop: true,
            ..super::super::Etcd::default()
        };
        n.etcd.set("Preparing", "?", "Running pre state");
        c.nodes[2] = n.clone();
        assert!(c.schedule_starts(0));
        c.advance(i64::MAX / 4);
        assert_eq!(c.members_of(0).len(), 3);
        assert_ne!(c.member_id("10.5.0.13"), old);
        // Talos 1.14: a member with this peer URL under another name blocks the join.
        let mut c = cluster();
        c.talos_version = "v1.14.0".into();
        c.nodes[2].reachable = false;
        c.pin_members();
        n.hostname = "talos-cp-3b".into();
        c.nodes[2] = n;
        assert!(c.schedule_starts(0));
        assert!(c.nodes[2].etcd.pending.is_empty());
        assert!(
            c.nodes[2].etcd.events[0]
                .1
                .contains("member already exists with the same peer URLs [https://10.5.0.13:2380]"),
            "{:?}",
            c.nodes[2].etcd.events
        );
    }

    #[test]
    fn corrupt_old_data_fails_again() {
        let mut c = cluster();
        c.nodes[0].etcd.data_corrupt = true;
        let mut t = Transition::at(0, "Running", "?", "");
        t.old_data = true;
        c.nodes[0].etcd.pending.push(t);
        c.advance(1);
        assert_eq!(c.nodes[0].etcd.state, "Failed");
        assert!(c.etcd_violations.is_empty());
    }
}
