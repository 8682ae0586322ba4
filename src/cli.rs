//! Command-line definitions (clap derive only; behaviour lives in `commands/`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
// Durations on flags parse as everywhere else: `90s`, `2m`, `1h30m`, `1d`, or bare seconds.
use talos_dr::config::parse_duration;

const EXIT_CODES: &str = "\
Exit codes:
  0    success
  1    the operation failed (a stage failed; its checkpoint is saved)
  2    usage or configuration error (bad flag, bad profile, missing tool)
  3    a snapshot file is invalid (verify failed)
  4    a precondition is not met (cluster unhealthy, VM locked, another run holds the lock)
  5    stopped at a confirmation that was declined, or that needs a TTY or --yes
  130  interrupted (Ctrl-C)";

/// Backup and disaster recovery of etcd for Talos Linux clusters on Proxmox VE.
#[derive(Debug, Parser)]
#[command(name = "talos-dr", version, after_help = EXIT_CODES, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Cluster profile name (a directory under $TALOS_DR_HOME, default ~/.config/talos-dr);
    /// `a,b,c` runs snapshot, list, prune, status or schedule for each of them
    #[arg(
        short = 'p',
        long,
        env = "TALOS_DR_PROFILE",
        global = true,
        hide_env_values = true
    )]
    pub profile: Option<String>,
    /// Use this profile directory instead of a named profile
    #[arg(
        long,
        env = "TALOS_DR_CONFIG_DIR",
        global = true,
        value_name = "DIR",
        hide_env_values = true
    )]
    pub config_dir: Option<PathBuf>,
    /// Output format: human-readable text, or one JSON document on stdout
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Text, global = true)]
    pub output: OutputFormat,
    /// Answer yes to confirmations
    #[arg(short = 'y', long, global = true)]
    pub yes: bool,
    /// Never prompt: a confirmation without --yes stops with exit code 5
    #[arg(long, global = true)]
    pub non_interactive: bool,
    /// More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Less output: only warnings and errors on stderr
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// When to use colours (NO_COLOR is honoured)
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto, global = true)]
    pub color: ColorChoice,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Take a verified etcd snapshot and apply retention (cron-friendly)
    ///
    /// Checks cluster health, streams `talosctl etcd snapshot` from one control-plane node into a
    /// temporary file, verifies it, renames it atomically to
    /// <config_dir>/etcd-backups/etcd-YYYYmmdd-HHMMSS.snapshot (UTC, mode 0600) with a .json
    /// sidecar, then prunes old snapshots. Exits non-zero with the reason when anything is wrong.
    Snapshot(SnapshotArgs),
    /// Check snapshot files without etcd: sha256 trailer, bbolt structure, etcd status values
    ///
    /// Prints hash, revision, total keys and total size exactly as `etcdctl snapshot status`
    /// would. Exit code 3 when any file is invalid.
    Verify(VerifyArgs),
    /// What a snapshot holds: objects and bytes per resource and namespace, without etcd
    ///
    /// Reads the live state (the newest revision of every key, deleted keys left out) in the
    /// same single pass that verifies the file. Prints one row per resource (per namespace with
    /// --by-namespace or --namespace), totals, the revision and compaction revision, the
    /// kinds of values (Kubernetes protobuf, JSON, encrypted at rest: provider and key name;
    /// values themselves are never printed), the largest objects, and how much of the file is
    /// free pages. Exit code 3 when the snapshot is invalid.
    Inspect(InspectArgs),
    /// Objects added, removed and changed between two snapshots, per resource and namespace
    ///
    /// Changed means a different value or mod revision. A and B are taken like `inspect`'s
    /// SNAPSHOT. Exit code 3 when either snapshot is invalid.
    Diff(DiffArgs),
    /// Which local snapshots hold objects of a namespace (newest first)
    ///
    /// Reads every snapshot in the profile's backup directory; packed ones are unpacked to a
    /// temporary file with --identity or backup.identity_file. Invalid or unreadable snapshots
    /// are listed with the reason.
    Find(FindArgs),
    /// List the profile's snapshots, newest first
    List(ListArgs),
    /// Delete snapshots past retention (the newest keep_last valid ones always stay)
    Prune(PruneArgs),
    /// Re-verify what is stored: local snapshots, and with --remote the off-site copies
    ///
    /// Every local snapshot is read again and must match its sidecar (sha256, etcd status; a
    /// packed one its stored sha256, and with an identity the plain snapshot's). With --remote,
    /// every off-site copy must have a manifest that matches it; with --read-data it is also
    /// downloaded streaming, decrypted and decompressed (nothing written to disk) and must match
    /// the verified snapshot's sha256. --read-data=N% reads an N% sample instead, chosen by
    /// --seed (random and printed when not given). Writes <config_dir>/check.json and, with
    /// backup.metrics_file, talos_dr_check_* metrics. Exit 3 when anything is damaged (each
    /// damaged copy is named with what to do), 1 when something could not be read.
    Check(CheckArgs),
    /// Restore etcd from a snapshot on every control-plane node (playbook `restore`)
    ///
    /// Stages: preflight (snapshot verifies, every node answers — an unreachable one stops the
    /// run unless --exclude'd —, no `init` node), pre-restore-snapshot (salvages what every
    /// reachable node still holds into runs/<run-id>/salvage/ and asks if a survivor holds newer
    /// data), proxmox-check (VM checks and VM snapshots, with [proxmox]), etcd-recover (reset
    /// EPHEMERAL — and ETCD where etcd has its own partition — on every control-plane node, wait
    /// for etcd Preparing, check the data is gone, `talosctl bootstrap --recover-from` on exactly
    /// one node, wait for Running), post-verify (talosctl health, kubectl nodes and pods),
    /// report. Every call goes to the node itself (`-e NODE -n NODE`). A checkpoint is written
    /// after every stage; `talos-dr resume` continues an interrupted run.
    Restore(RestoreArgs),
    /// A disaster-recovery drill: the restore stages, each confirmed, with a written report
    Drill(RestoreArgs),
    /// Continue an interrupted or failed run from its checkpoint
    Resume(ResumeArgs),
    /// Save what every reachable control-plane node still holds (changes nothing on the cluster)
    ///
    /// Per node, in parallel: `talosctl etcd snapshot` (bounded in time), else a raw copy of
    /// /var/lib/etcd/member/snap/db (`talosctl cp`; no sha256 trailer). Every copy is verified
    /// and goes to <config_dir>/salvage/<time>/ (mode 0600); prints NODE, METHOD, REVISION,
    /// KEYS, VALID, PATH. Exit 0 when at least one copy is valid, 4 when none is.
    Salvage(SalvageArgs),
    /// Before an upgrade: etcd snapshot + Proxmox snapshot of every cluster VM, as one set
    ///
    /// Runs playbook `pre-upgrade`: preflight (talosctl health must pass, Proxmox reachable,
    /// every node mapped to a VM, every VM running or stopped, not locked, snapshottable; all
    /// problems reported at once, exit 4), etcd-snapshot (verified, stored as
    /// sets/<label>.snapshot and never pruned while the set exists), vm-snapshots (every VM in
    /// parallel, at most proxmox.max_parallel, named talosdr-<label>-<yymmddhhmm>), record
    /// (sets/<label>.json), retention (complete sets beyond proxmox.keep_sets are deleted; only
    /// snapshots talos-dr made). A failed or interrupted run is continued with `resume`.
    PreUpgrade(PreUpgradeArgs),
    /// Replace a lost node's VM while the rest of the cluster runs (playbook `rebuild-node`)
    ///
    /// Stages: preflight (the node does not answer, the other control-plane nodes hold etcd
    /// quorum, the profile maps it to a VM, a saved machine config exists and has this cluster's
    /// name and CA, a backup of the VM or a [proxmox] template exists), remove-member (typed
    /// confirmation; `talosctl etcd remove-member` through a healthy node, before any VM starts),
    /// recreate-vm (new VMID from /cluster/nextid: restore the newest vzdump/PBS backup with its
    /// MAC kept, or full-clone the template and set the lost VM's MAC, cores and memory; start
    /// it; the profile's `vm` follows), rejoin-node (template: wait for maintenance mode, then
    /// `apply-config --insecure` with the saved config; backup: wipe its stale etcd data; then
    /// wait until etcd lists it as a voting member), verify (etcd members, kubectl nodes,
    /// talosctl health), report. The lost VM is never destroyed: remove it once its host is back.
    RebuildNode(RebuildNodeArgs),
    /// Roll every VM of a pre-upgrade set back to its snapshot (playbook `rollback`)
    ///
    /// Shows the set, asks for the profile name (running VMs are hard-stopped and everything
    /// since the set was made is discarded), rolls every VM back in parallel, starts them
    /// (start=1) unless --no-start, then waits for `talosctl health`.
    Rollback(RollbackArgs),
    /// List, show or delete pre-upgrade snapshot sets
    Sets {
        #[command(subcommand)]
        command: Option<SetsCommand>,
    },
    /// Show the machine configs saved with the snapshots (secrets redacted)
    ///
    /// Every `snapshot` and `pre-upgrade` saves each node's machine config (`talosctl get
    /// machineconfig`) in <backup dir>/configs/, age-encrypted when backup.recipients is set,
    /// once per content, and records in the snapshot's sidecar which config each node had.
    /// `rebuild-node` puts them back on a replaced node.
    #[command(subcommand)]
    Configs(ConfigsCommand),
    /// List, inspect or abandon playbook runs (checkpoints)
    Runs {
        #[command(subcommand)]
        command: Option<RunsCommand>,
    },
    /// List playbooks, or show the exact commands a playbook will run for this profile
    Playbooks {
        #[command(subcommand)]
        command: Option<PlaybooksCommand>,
    },
    /// Create, show and check cluster profiles
    #[command(subcommand)]
    Profile(ProfileCommand),
    /// See talos-dr work end to end on a built-in simulated cluster (nothing real is touched)
    ///
    /// Creates a throwaway profile for a simulated cluster (3 control-plane VMs, 2 workers) and
    /// runs: snapshot, then a simulated disaster (etcd lost on every control-plane node), then
    /// restore from the newest snapshot (--yes implied) and the recovery report. Needs no root,
    /// no network, no etcd and no talosctl; uses the real kubectl when it is installed.
    #[cfg(feature = "demo")]
    Demo(DemoArgs),
    /// Could each profile's cluster be recovered right now? One row of checks per profile
    ///
    /// Checks, each green, yellow or red with the reason: recovery-point (newest valid snapshot's
    /// age against [backup] rpo, default twice the schedule's interval or 24h), offsite (newest
    /// confirmed copy's age and count), offsite-key (backup.identity_file opens the newest copy:
    /// only its age header and first chunk are read), size (snapshot or etcd database against
    /// the quota — [backup] etcd_quota, default 2 GiB — and growth over the last 5 snapshots),
    /// schedule (timer or cron entry installed, last run's exit code), machine-configs (saved for
    /// every node with the newest snapshot), deep-check (`talos-dr check`'s last result), drill
    /// (last successful `drill` against [backup] drill_every, default 90d), talos-version
    /// (talosctl against the cluster). Exit 0 when nothing is red, 1 when something is. Writes
    /// talos_dr_status{check=…} and friends to backup.metrics_file when set.
    Status(StatusArgs),
    /// Print (or install) a systemd timer + service, or a crontab line, that runs `snapshot`
    ///
    /// The timer uses OnCalendar= with Persistent=true, so a run missed while the machine was
    /// off happens at the next boot. With --install the units go to /etc/systemd/system (root) or
    /// ~/.config/systemd/user and the timer is enabled; with --cron --install the line is added
    /// to the user's crontab (once). With --all-profiles (or -p a,b,c) one timer or line runs
    /// `snapshot` for all of them.
    Schedule(ScheduleArgs),
    /// Print shell completions
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Simulator entry point used by tests and the demo (not for real clusters)
    #[cfg(feature = "demo")]
    #[command(name = "__sim", hide = true)]
    Sim {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// Fleet runs: the same command for several profiles.
#[derive(Debug, Clone, Args)]
pub struct FleetArgs {
    /// Run for every profile under $TALOS_DR_HOME (default ~/.config/talos-dr), in parallel
    /// (-p a,b,c names some). Each keeps its own lock; a failing profile never stops the others;
    /// one summary at the end; the exit code is the worst one: 130 > 1 > 4 > 3 > 2 > 5 > 0
    #[arg(long)]
    pub all_profiles: bool,
    /// How many profiles run at once in a fleet run
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: u16,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub fleet: FleetArgs,
}

#[derive(Debug, Clone, Args)]
pub struct SnapshotArgs {
    /// Write the snapshot to this path instead of the backup directory (no pruning there)
    #[arg(long, value_name = "PATH")]
    pub output_file: Option<PathBuf>,
    /// Stream from this control-plane node instead of the first one that answers
    #[arg(long, value_name = "IP")]
    pub node: Option<String>,
    /// Do not run `talosctl health` first
    #[arg(long)]
    pub skip_health: bool,
    /// Do not apply retention after the snapshot
    #[arg(long)]
    pub no_prune: bool,
    /// Do not copy the snapshot to the [offsite] target
    #[arg(long)]
    pub no_offsite: bool,
    /// How long `talosctl health` may wait for the cluster (e.g. 2m, 90s)
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    pub health_timeout: std::time::Duration,
    #[command(flatten)]
    pub fleet: FleetArgs,
}

#[derive(Debug, Args)]
pub struct ScheduleArgs {
    /// How often: minutes dividing an hour (15m, 30m), hours dividing a day (1h, 6h, 12h), 1d or 7d
    #[arg(long, value_parser = parse_duration, value_name = "INTERVAL")]
    pub every: std::time::Duration,
    /// A crontab line instead of systemd units
    #[arg(long)]
    pub cron: bool,
    /// Install and enable it instead of printing it
    #[arg(long)]
    pub install: bool,
    /// Where to write the units with --install (default: /etc/systemd/system as root, else
    /// ~/.config/systemd/user)
    #[arg(
        long,
        value_name = "DIR",
        requires = "install",
        conflicts_with = "cron"
    )]
    pub unit_dir: Option<PathBuf>,
    #[command(flatten)]
    pub fleet: FleetArgs,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The etcd snapshot to restore: a file made by `talos-dr snapshot` or `talosctl etcd
    /// snapshot` (also `.zst` / `.age`), or an off-site copy (`s3://bucket/prefix/NAME`,
    /// `file:///path/NAME`), which is downloaded, unpacked and verified before anything else
    #[arg(
        long,
        value_name = "FILE|URL",
        required_unless_present = "from_survivor"
    )]
    pub snapshot: Option<std::path::PathBuf>,
    /// Restore from the newest valid copy salvaged from the surviving control-plane nodes (a
    /// streamed snapshot beats a raw copy at equal revision); exit 4 when there is none
    #[arg(long, conflicts_with = "snapshot")]
    pub from_survivor: bool,
    /// Leave this control-plane node out (lost with its Proxmox host): no reset, no wait, not
    /// bootstrapped, not in `talosctl health`. Repeatable
    #[arg(long, value_name = "NODE")]
    pub exclude: Vec<String>,
    /// Re-create this control-plane node's lost VM first (its newest Proxmox backup, else
    /// [proxmox] template, with its saved machine config); it is then reset and joins with the
    /// others (playbook `restore-rebuild`). Repeatable; needs [proxmox]
    #[arg(long, value_name = "NODE", conflicts_with = "from_survivor")]
    pub rebuild: Vec<String>,
    /// age identity file to decrypt an encrypted snapshot (default: backup.identity_file)
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// Snapshot the control-plane VMs first, whatever `proxmox.snapshot_before_restore` says
    #[arg(long, conflicts_with = "no_vm_snapshot")]
    pub vm_snapshot: bool,
    /// Do not snapshot the control-plane VMs first
    #[arg(long)]
    pub no_vm_snapshot: bool,
    /// Print every command and API call the run would make, and change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// How long to wait for etcd to reach Preparing / Running on every node
    #[arg(long, default_value = "15m", value_parser = parse_duration)]
    pub wait_timeout: std::time::Duration,
    /// `talosctl health --wait-timeout` after the restore
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub health_timeout: std::time::Duration,
    /// Longest pause between two status polls (tests shorten it)
    #[arg(long, default_value = "5s", value_parser = parse_duration, hide = true)]
    pub poll_max: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct SalvageArgs {
    /// Leave this control-plane node out (repeatable)
    #[arg(long, value_name = "NODE")]
    pub exclude: Vec<String>,
}

#[cfg(feature = "demo")]
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Put the demo's files here (default: a new directory under the system temp dir)
    #[arg(long, value_name = "DIR")]
    pub dir: Option<std::path::PathBuf>,
    /// Inject a fault to see how talos-dr fails (repeatable)
    #[arg(long, value_enum)]
    pub fault: Vec<talos_dr::sim::demo::Fault>,
    /// Play one of the disasters that actually happen instead of "etcd lost everywhere":
    /// vip-endpoint, quorum-loss (restored with --from-survivor), host-lost (a Proxmox host dies
    /// with one control-plane VM; rebuilt with rebuild-node), etcd-volume (Talos 1.14, ETCD
    /// partition), stale-preparing
    #[arg(long, value_enum, value_name = "NAME")]
    pub disaster: Option<talos_dr::sim::demo::Disaster>,
}

#[derive(Debug, Args)]
pub struct PreUpgradeArgs {
    /// Name of the set (a-z, 0-9, '-', '_'; at most 21 characters); default up-<yymmdd-hhmm>
    #[arg(long, value_name = "L")]
    pub label: Option<String>,
    /// Snapshot only the control-plane VMs, not the workers
    #[arg(long)]
    pub control_plane_only: bool,
    /// Include RAM in the VM snapshots (pauses each guest briefly; needs ~2x RAM of storage)
    #[arg(long)]
    pub vmstate: bool,
    /// Print every command and API call the run would make, and change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// How long `talosctl health` may wait for the cluster before giving up
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    pub health_timeout: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The set to roll back to (see `talos-dr sets list`)
    #[arg(long, value_name = "L")]
    pub label: String,
    /// Leave the VMs stopped after the rollback (and do not wait for health)
    #[arg(long)]
    pub no_start: bool,
    /// Print every API call the run would make, and change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// How long to wait for `talosctl health` after the VMs start
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub health_timeout: std::time::Duration,
    /// Longest pause between two checks while the VMs boot (tests shorten it)
    #[arg(long, default_value = "5s", value_parser = parse_duration, hide = true)]
    pub poll_max: std::time::Duration,
}

#[derive(Debug, Subcommand)]
pub enum SetsCommand {
    /// Every set, newest first: label, time, age, VMs, status
    List,
    /// One set: its etcd snapshot and every VM snapshot
    Show { label: String },
    /// Delete a set: its VM snapshots (through the API), its etcd snapshot and its manifest
    Delete { label: String },
}

#[derive(Debug, Subcommand)]
pub enum ConfigsCommand {
    /// The configs recorded with the newest snapshot (or --at): node, hostname, type, file
    List {
        /// A snapshot's file name (or its leading part, e.g. etcd-20261201) instead of the newest
        #[arg(long, value_name = "SNAPSHOT")]
        at: Option<String>,
    },
    /// Print one node's saved config, secrets redacted unless --reveal
    Show {
        /// The node's address as the profile lists it
        node: String,
        /// A snapshot's file name (or its leading part) instead of the newest that has one
        #[arg(long, value_name = "SNAPSHOT")]
        at: Option<String>,
        /// Print keys, tokens and encryption secrets too (the file can take over the cluster)
        #[arg(long)]
        reveal: bool,
        /// age identity file for encrypted configs (default: backup.identity_file)
        #[arg(long, value_name = "FILE")]
        identity: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct RebuildNodeArgs {
    /// The lost node's address, as the profile lists it
    pub node: String,
    /// Where the VM comes from: its newest Proxmox backup, or a full clone of [proxmox] template
    /// (default: backup when one exists, else template)
    #[arg(long = "from", value_name = "backup|template", value_parser = ["backup", "template"])]
    pub from: Option<String>,
    /// The Proxmox node for the new VM (default: the online node with the most free memory)
    #[arg(long, value_name = "PVE_NODE")]
    pub target_node: Option<String>,
    /// How long a cloned VM may take to reach Talos maintenance mode and to install
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub maintenance_timeout: std::time::Duration,
    /// How long to wait for the node to join etcd and for Kubernetes to be Ready
    #[arg(long, default_value = "15m", value_parser = parse_duration)]
    pub wait_timeout: std::time::Duration,
    /// Longest pause between two checks while waiting
    #[arg(long, default_value = "5s", value_parser = parse_duration, hide = true)]
    pub poll_max: std::time::Duration,
    /// Show the plan and the exact commands, change nothing
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// The run to continue (default: the newest unfinished run of the profile)
    pub run_id: Option<String>,
    /// Resume even though the playbook changed since the run started
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// All runs of the profile, newest first
    List,
    /// One run: every stage with its status, timing, error and outputs
    Show { run_id: String },
    /// Give up on a run: `resume` will no longer pick it
    Abandon { run_id: String },
}

#[derive(Debug, Subcommand)]
pub enum PlaybooksCommand {
    /// The playbooks and what they are for
    List,
    /// The stages of a playbook and the exact commands each will run for this profile
    Show { name: String },
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Snapshot files to check (`.zst` and `.age` files are unpacked to a temporary file first)
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// age identity file for encrypted files (default: the profile's backup.identity_file)
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
}

/// Which objects `inspect`, `diff` and `find` look at.
#[derive(Debug, Clone, Args)]
pub struct ObjectFilterArgs {
    /// Only objects in this namespace (`-` for cluster-scoped objects)
    #[arg(long, value_name = "NS")]
    pub namespace: Option<String>,
    /// Only this resource: kubectl's plural (`pods`, `nodes`, `services`, `endpoints`) or
    /// `<plural>.<group>` for API groups and custom resources
    #[arg(long, value_name = "RESOURCE")]
    pub resource: Option<String>,
    /// Only objects with this name
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A snapshot file (`.zst`/`.age` are unpacked to a temporary file), an `s3://` or
    /// `file://` URL of an off-site copy, or `latest` (the profile's newest local snapshot)
    #[arg(value_name = "SNAPSHOT")]
    pub snapshot: String,
    #[command(flatten)]
    pub filter: ObjectFilterArgs,
    /// One row per resource and namespace (default: one per resource)
    #[arg(long)]
    pub by_namespace: bool,
    /// List the names of the objects under each row
    #[arg(long)]
    pub names: bool,
    /// How many of the largest objects to show
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub largest: usize,
    /// age identity file for encrypted snapshots (default: the profile's backup.identity_file)
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The older snapshot (file, URL or `latest`, as for `inspect`)
    #[arg(value_name = "A")]
    pub a: String,
    /// The newer snapshot
    #[arg(value_name = "B")]
    pub b: String,
    #[command(flatten)]
    pub filter: ObjectFilterArgs,
    /// List the names of the objects added, removed and changed
    #[arg(long)]
    pub names: bool,
    /// age identity file for encrypted snapshots (default: the profile's backup.identity_file)
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct FindArgs {
    /// The namespace to look for
    #[arg(long, value_name = "NS")]
    pub namespace: String,
    /// Only this resource (as for `inspect --resource`)
    #[arg(long, value_name = "RESOURCE")]
    pub resource: Option<String>,
    /// Only objects with this name
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// age identity file for encrypted snapshots (default: the profile's backup.identity_file)
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Re-verify every snapshot instead of trusting its sidecar
    #[arg(long)]
    pub verify: bool,
    /// List the off-site copies (profile [offsite]) instead of the local ones
    #[arg(long, conflicts_with = "verify")]
    pub remote: bool,
    #[command(flatten)]
    pub fleet: FleetArgs,
    /// Add what each snapshot holds (objects, namespaces): from the sidecar, else read now
    #[arg(long, conflicts_with = "remote")]
    pub objects: bool,
}

#[derive(Debug, Clone, Args)]
pub struct PruneArgs {
    /// Delete snapshots older than this many days (default: profile backup.retention_days)
    #[arg(long, value_name = "N")]
    pub retention_days: Option<u32>,
    /// Never delete the newest N valid snapshots (default: profile backup.keep_last)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_last: Option<u32>,
    /// Show what would be kept and deleted, and why; delete nothing
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub fleet: FleetArgs,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Also check the [offsite] copies (against their manifests; with --read-data, downloaded)
    #[arg(long)]
    pub remote: bool,
    /// Read the off-site copies' data too: all of it, or an N% sample (which also samples the
    /// local snapshots)
    #[arg(
        long,
        value_name = "N%",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "100%"
    )]
    pub read_data: Option<String>,
    /// Seed that picks the --read-data=N% sample, to repeat a check (default: random, printed)
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// age identity file to decrypt packed copies (default: profile backup.identity_file)
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum ProfileCommand {
    /// Create a profile: nodes from talosctl when the cluster answers, else from flags
    Init(ProfileInitArgs),
    /// Print the profile with every path resolved
    Show,
    /// Check tools, credentials and that every control-plane node answers
    Check,
    /// Find the Proxmox VM behind each node (VM name = hostname, then guest-agent addresses,
    /// then cloud-init ipconfig) and print the mapping with the reason for each
    Discover {
        /// Write the mapping into profile.toml (`vm = { node, vmid }` per node)
        #[arg(long)]
        write: bool,
    },
}

#[derive(Debug, Args)]
pub struct ProfileInitArgs {
    /// Profile name (also the directory name under $TALOS_DR_HOME unless --config-dir is given)
    pub name: String,
    /// talosconfig to use (default: $TALOSCONFIG, then ~/.talos/config)
    #[arg(long, value_name = "PATH")]
    pub talosconfig: Option<PathBuf>,
    /// kubeconfig to use for post-restore checks (default: <config_dir>/kubeconfig)
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// talosconfig context (default: its current context)
    #[arg(long)]
    pub context: Option<String>,
    /// Control-plane addresses, when talosctl cannot list the members (comma-separated)
    #[arg(long, value_delimiter = ',', value_name = "IP,…")]
    pub control_plane: Vec<String>,
    /// Worker addresses, when talosctl cannot list the members (comma-separated)
    #[arg(long, value_delimiter = ',', value_name = "IP,…")]
    pub workers: Vec<String>,
    /// Overwrite an existing profile.toml
    #[arg(long)]
    pub force: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    /// The parser itself is tested in `config`; this checks that the flags use it.
    #[test]
    fn duration_flags() {
        // A flag takes bare seconds too.
        let health =
            |v: &str| match Cli::try_parse_from(["talos-dr", "snapshot", "--health-timeout", v])
                .map(|c| c.command)
            {
                Ok(Command::Snapshot(a)) => Ok(a.health_timeout.as_secs()),
                Ok(_) => unreachable!(),
                Err(e) => Err(e.to_string()),
            };
        assert_eq!(health("90"), Ok(90));
        assert_eq!(health("2m"), Ok(120));
        assert!(health("soon").unwrap_err().contains("1h30m"));
    }
}
