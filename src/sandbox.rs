//! The security profile: what every sandbox this daemon starts looks like.
//!
//! This is the one place isolation settings are decided (user, capabilities, network,
//! limits, filesystem, labels, logging). It produces a runtime-neutral [`SandboxSpec`]: typed
//! values that say what is meant (bytes, CPUs, uid and gid, "no network", "drop every
//! capability"), never an engine's words. A backend only translates it: the Docker module
//! renders it into a `HostConfig` and adds nothing of its own; a Pod could be rendered from
//! it as directly. The sandbox is the security boundary: nothing here relies on inspecting
//! the code that runs inside.

use std::collections::BTreeMap;

pub use crate::config::UserIds;
use crate::config::{Config, DockerConfig};

/// Label keys on every object the daemon creates.
pub mod labels {
    /// Marks an object as made by python-docker-mcp (value `true`).
    pub const MANAGED: &str = "python-docker-mcp.managed";
    /// The daemon instance (a uuid per process) that owns it.
    pub const INSTANCE: &str = "python-docker-mcp.instance";
    /// Why it exists: `sandbox` (runs user code), `installer` or `packages` (shared volume).
    pub const ROLE: &str = "python-docker-mcp.role";
    /// The session an installer works for.
    pub const SESSION: &str = "python-docker-mcp.session";
    /// Process id and host of the owning daemon, for telling live owners from dead ones.
    pub const PID: &str = "python-docker-mcp.pid";
    pub const HOST: &str = "python-docker-mcp.host";
    /// The client a shared package volume belongs to, when several share the daemon.
    pub const CLIENT: &str = "python-docker-mcp.client";
    /// The profile a sandbox was made for (named profiles only; none means `default`).
    pub const PROFILE: &str = "python-docker-mcp.profile";
}

/// How long a warm sandbox outlives `pool_max_age` before it ends itself (a private
/// pool's own reaper retires it first while its daemon runs; a host pool's warm sandboxes
/// end by this timer alone).
pub const WARM_EXIT_SLACK: std::time::Duration = std::time::Duration::from_secs(5);

/// The download cache every installer shares. It belongs to no daemon instance (no
/// instance, pid or host label), so it survives restarts on purpose: a repeated install
/// is quick. `docker volume rm python-docker-mcp-cache` clears it.
pub const CACHE_VOLUME: &str = "python-docker-mcp-cache";

/// Where package volumes are mounted in a sandbox (read-only there).
pub const SHARED_PACKAGES: &str = "/opt/python-docker-mcp/shared";
pub const SESSION_PACKAGES: &str = "/opt/python-docker-mcp/session";

/// The REPL helper, embedded so any image with `python3` works.
pub const HELPER: &str = include_str!("repl/helper.py");

/// Why a container exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A REPL sandbox: warm in the pool, then one transient run or one session.
    Sandbox,
    /// A short-lived installer container.
    Installer,
    /// The shared package volume.
    Packages,
    /// The download cache shared by installers (see [`CACHE_VOLUME`]).
    Cache,
    /// The daemon's egress proxy (`network.allow`; see `crate::egress`).
    Egress,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Sandbox => "sandbox",
            Role::Installer => "installer",
            Role::Packages => "packages",
            Role::Cache => "cache",
            Role::Egress => "egress",
        }
    }
}

/// A volume mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMount {
    /// The volume's name; empty for one the engine makes for this container (with the
    /// container's labels) and removes with it, so a sandbox that ends itself leaves no
    /// volume behind (durable sandboxes' own package volumes).
    pub volume: String,
    pub target: String,
    pub read_only: bool,
}

/// A host path mounted into the container (the egress socket directory, the proxy's
/// binary). Only the Docker backend renders it: Kubernetes refuses a spec with one (a pod
/// cannot share a host directory with the daemon), naming `network.allow`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// The path on the engine's host (the daemon's host: Docker and Podman run there).
    pub source: std::path::PathBuf,
    pub target: String,
    pub read_only: bool,
}

/// Where every sandbox sees the egress socket directory when `network.allow` is set,
/// read-only (a socket on a read-only mount can still be connected to), and where the
/// proxy container has it read-write.
pub const EGRESS_MOUNT: &str = "/run/pdm-egress";
/// Where the proxy container sees this daemon's own binary (read-only).
pub const PROXY_BINARY: &str = "/opt/python-docker-mcp/bin/python-docker-mcp";

/// Everything needed to create one sandbox (or installer), in runtime-neutral terms.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub env: Vec<String>,
    /// Who the command runs as: numbers, so no backend needs the image's `/etc/passwd`.
    pub user: UserIds,
    pub working_dir: String,
    pub labels: BTreeMap<String, String>,
    pub network: Network,
    pub limits: Limits,
    pub security: Security,
    /// Writable in-memory mounts (a read-only root needs somewhere to write).
    pub scratch: Vec<Scratch>,
    pub volumes: Vec<VolumeMount>,
    /// Host paths mounted in (see [`BindMount`]); empty unless `network.allow` is set.
    pub binds: Vec<BindMount>,
    /// Keep stdin open and attached; the helper speaks over it.
    pub interactive: bool,
    /// Stdin stays open when the daemon's attach goes away, so the sandbox outlives its
    /// daemon (a durable session, `session.durable`) and a later daemon can attach again.
    /// It then ends itself (the helper's timer) or is removed by a sweep. Otherwise the
    /// engine closes stdin with the attach and the helper exits: it never outlives the
    /// daemon, even one killed with SIGKILL.
    pub detachable: bool,
    /// The engine removes the sandbox as soon as it exits (sandboxes); otherwise the
    /// daemon removes it after reading its exit code (installers).
    pub remove_on_exit: bool,
    /// Whether the engine keeps a copy of the output: false for everything this daemon
    /// starts. The daemon reads all output through the attach stream, so a second copy on
    /// the host's disk (unbounded with Docker's default `json-file` driver) would only fill
    /// it.
    pub keep_logs: bool,
    /// The OCI runtime (`docker.runtime`, e.g. `runsc` for gVisor); `None` is the
    /// engine's default.
    pub runtime: Option<String>,
}

/// Resource limits of one sandbox.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Memory, in bytes, with no swap beyond it. Scratch mounts count against it.
    pub memory_bytes: u64,
    /// CPU time, in CPUs (0.5 is half of one CPU).
    pub cpus: f64,
    /// Processes and threads, at most (stops fork bombs).
    pub pids: u64,
}

/// What the sandbox can reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// Nothing: no interface but loopback.
    None,
    /// Outbound connections. Installers get it to download packages; sandboxes only when
    /// `docker.network_disabled` is off.
    Outbound {
        /// The engine network they go through (`network.egress_network`); `None`: the
        /// engine's default (Docker's `bridge`). Kubernetes has only the pod network.
        via: Option<String>,
    },
}

impl Network {
    /// Outbound through the configured egress network.
    fn outbound(config: &Config) -> Network {
        Network::Outbound {
            via: config.network.egress_network.clone(),
        }
    }
}

/// Privilege settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Security {
    /// Drop every Linux capability (root in the sandbox is then only a uid).
    pub drop_all_capabilities: bool,
    /// setuid binaries and file capabilities cannot raise privileges.
    pub no_new_privileges: bool,
    /// The image's filesystem cannot be written; writes go to scratch mounts and volumes.
    pub read_only_root: bool,
}

/// A writable in-memory mount (tmpfs, or an `emptyDir` with medium `Memory`). Every scratch
/// mount is read-write, allows no setuid and no device files, and starts empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scratch {
    pub path: String,
    /// Size cap in bytes; its pages count against the memory limit.
    pub size_bytes: u64,
    /// Permission bits of the mount's root, e.g. `0o1777` for `/tmp`.
    pub mode: u32,
    /// The mount belongs to the sandbox's [`SandboxSpec::user`]; otherwise to root.
    pub owned_by_user: bool,
}

/// The installer's `/tmp`: pip and uv unpack wheels there.
const INSTALLER_TMP: u64 = 512 * 1024 * 1024;

/// Memory kept out of the helper's data limit, at least: the interpreter, its stacks, the
/// tmpfs pages and the C library's own arenas live there.
const DATA_HEADROOM_MIN: u64 = 24 * 1024 * 1024;
/// Memory kept out of the helper's data limit, at most.
const DATA_HEADROOM_MAX: u64 = 128 * 1024 * 1024;

/// Threads for native thread pools (BLAS, OpenMP): the sandbox's CPUs, at least one.
pub fn threads(cpu_limit: f64) -> u32 {
    (cpu_limit.ceil() as u32).max(1)
}

/// The data segment limit (`RLIMIT_DATA`) the helper sets for itself, `PDM_DATA_LIMIT`:
/// the memory limit minus a headroom of one eighth of it, clamped to 24..=128 MiB, and
/// never more than half the limit (tiny limits). An allocation past it raises
/// `MemoryError` in the cell instead of letting the kernel OOM-kill the whole session.
pub fn data_limit(memory_limit: u64) -> u64 {
    let headroom = (memory_limit / 8)
        .clamp(DATA_HEADROOM_MIN, DATA_HEADROOM_MAX)
        .min(memory_limit / 2);
    memory_limit - headroom
}

/// Every container drops all capabilities and cannot gain privileges; the root
/// filesystem is read-only unless `read_only_root` says otherwise.
fn locked_down(read_only_root: bool) -> Security {
    Security {
        drop_all_capabilities: true,
        no_new_privileges: true,
        read_only_root,
    }
}

/// Who owns the containers: one per daemon process.
#[derive(Debug, Clone)]
pub struct Owner {
    pub instance: String,
    pub pid: u32,
    pub host: String,
}

impl Owner {
    pub fn new() -> Owner {
        Owner {
            instance: uuid::Uuid::new_v4().simple().to_string(),
            pid: std::process::id(),
            host: hostname(),
        }
    }

    /// Labels for an object with this role.
    pub fn labels(&self, role: Role, session: Option<&str>) -> BTreeMap<String, String> {
        let mut l = BTreeMap::new();
        l.insert(labels::MANAGED.into(), "true".into());
        l.insert(labels::INSTANCE.into(), self.instance.clone());
        l.insert(labels::ROLE.into(), role.as_str().into());
        l.insert(labels::PID.into(), self.pid.to_string());
        l.insert(labels::HOST.into(), self.host.clone());
        if let Some(s) = session {
            l.insert(labels::SESSION.into(), s.into());
        }
        l
    }

    /// Labels for the shared download cache: ours, but no instance's.
    pub fn cache_labels() -> BTreeMap<String, String> {
        BTreeMap::from([
            (labels::MANAGED.to_string(), "true".to_string()),
            (labels::ROLE.to_string(), Role::Cache.as_str().to_string()),
        ])
    }

    /// A unique, recognisable container or volume name.
    pub fn name(&self, role: Role) -> String {
        let short = uuid::Uuid::new_v4().simple().to_string();
        format!(
            "pdm-{}-{}-{}",
            &self.instance[..8],
            role.as_str(),
            &short[..12]
        )
    }

    /// The shared package volume of this daemon instance.
    pub fn shared_volume(&self) -> String {
        format!("pdm-{}-shared", &self.instance[..8])
    }

    /// The shared package volume of this instance's `n`th client with an environment of
    /// its own (the client's name is a label, not part of the name).
    pub fn client_volume(&self, n: usize) -> String {
        format!("pdm-{}-shared-c{n}", &self.instance[..8])
    }
}

impl Default for Owner {
    fn default() -> Self {
        Owner::new()
    }
}

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// A sandbox that runs the REPL helper: no network (unless configured), non-root, no
/// capabilities, no new privileges, limits on memory, CPU and processes, read-only root.
/// It mounts, read-only, the shared package volume and its own package volume (where
/// installs go if it becomes a session).
pub fn repl_spec(
    config: &Config,
    owner: &Owner,
    name: String,
    shared_volume: &str,
    own_volume: &str,
) -> SandboxSpec {
    let d = &config.docker;
    // A named profile's sandboxes say so: the code can read it, and the spec (so the host
    // pool's fingerprint) differs from every other profile's, even with the same settings.
    let named_profile = (config.profile != crate::profile::DEFAULT).then_some(&config.profile);
    let mut sandbox_labels = owner.labels(Role::Sandbox, None);
    if let Some(profile) = named_profile {
        sandbox_labels.insert(labels::PROFILE.into(), profile.clone());
    }
    SandboxSpec {
        name,
        image: d.image.clone(),
        command: vec!["python3".into(), "-u".into(), "-c".into(), HELPER.into()],
        env: repl_env(config, named_profile),
        user: d.user,
        working_dir: d.working_dir.clone(),
        labels: sandbox_labels,
        network: if d.network_disabled {
            Network::None
        } else {
            Network::outbound(config)
        },
        limits: Limits {
            memory_bytes: d.memory_limit,
            cpus: d.cpu_limit,
            pids: d.pids_limit,
        },
        security: locked_down(d.read_only),
        scratch: repl_scratch(d),
        volumes: repl_volumes(shared_volume, own_volume),
        binds: egress_binds(config),
        interactive: true,
        detachable: config.session.durable,
        remove_on_exit: true,
        keep_logs: false,
        runtime: d.runtime.clone(),
    }
}

/// The shared package volume (none when its name is empty: durable mode, before anything
/// was installed into it), then the sandbox's own.
fn repl_volumes(shared_volume: &str, own_volume: &str) -> Vec<VolumeMount> {
    let shared = (!shared_volume.is_empty()).then(|| VolumeMount {
        volume: shared_volume.into(),
        target: SHARED_PACKAGES.into(),
        read_only: true,
    });
    shared
        .into_iter()
        .chain([VolumeMount {
            volume: own_volume.into(),
            target: SESSION_PACKAGES.into(),
            // An unnamed volume (durable sandboxes) cannot be mounted read-only (the
            // engine refuses); its root belongs to root and the code runs as
            // `docker.user` with no capability, so the code cannot write there either.
            read_only: !own_volume.is_empty(),
        }])
        .collect()
}

/// With a read-only root, `/tmp` and the working directory as tmpfs; and `/dev/shm` when
/// its size is set.
fn repl_scratch(d: &DockerConfig) -> Vec<Scratch> {
    let mut scratch = if d.read_only {
        vec![
            Scratch {
                path: "/tmp".into(),
                size_bytes: d.tmpfs_size,
                mode: 0o1777,
                owned_by_user: false,
            },
            Scratch {
                path: d.working_dir.clone(),
                size_bytes: d.tmpfs_size,
                mode: 0o755,
                owned_by_user: true,
            },
        ]
    } else {
        Vec::new()
    };
    // Browsers keep their shared memory in /dev/shm; the engine's default is small.
    if let Some(size) = d.shm_size {
        scratch.push(Scratch {
            path: "/dev/shm".into(),
            size_bytes: size,
            mode: 0o1777,
            owned_by_user: false,
        });
    }
    scratch
}

/// The helper's environment: its paths and limits, module policy, thread pools sized to
/// the sandbox's CPUs, the profile's name, and in durable mode its idle exit.
fn repl_env(config: &Config, named_profile: Option<&String>) -> Vec<String> {
    let d = &config.docker;
    // Session packages come first on the path so they win over shared ones.
    let package_dirs = [SESSION_PACKAGES, SHARED_PACKAGES];
    vec![
        "PYTHONUNBUFFERED=1".into(),
        "PYTHONDONTWRITEBYTECODE=1".into(),
        "MPLBACKEND=Agg".into(),
        format!("HOME={}", d.working_dir),
        format!("PDM_WORKDIR={}", d.working_dir),
        format!("PDM_PACKAGE_DIRS={}", package_dirs.join(":")),
        format!("PDM_PRELOAD={}", d.warm_imports.join(",")),
        format!("PDM_DATA_LIMIT={}", data_limit(d.memory_limit)),
        // Native thread pools sized to the CPUs the sandbox has. OpenBLAS reserves a
        // buffer per thread (one per host core by default): under the helper's data
        // limit those reservations fail, and OpenBLAS then hangs instead of raising.
        format!("OPENBLAS_NUM_THREADS={}", threads(d.cpu_limit)),
        format!("OMP_NUM_THREADS={}", threads(d.cpu_limit)),
        format!("MKL_NUM_THREADS={}", threads(d.cpu_limit)),
        format!("PDM_ALLOWED_MODULES={}", config.allowed_modules.join(",")),
        format!("PDM_BLOCKED_MODULES={}", config.blocked_modules.join(",")),
    ]
    .into_iter()
    .chain(named_profile.map(|p| format!("PDM_PROFILE={p}")))
    // A durable sandbox nobody uses ends itself (a session's lease replaces this).
    .chain(config.session.durable.then(|| {
        format!(
            "PDM_IDLE_EXIT={}",
            (d.pool_max_age + WARM_EXIT_SLACK).as_secs()
        )
    }))
    .collect()
}

/// The short-lived installer: has network (it downloads packages), writes only into the
/// target volume, runs with no capabilities and the same limits, and is never a sandbox
/// that user code runs in.
pub fn installer_spec(
    config: &Config,
    owner: &Owner,
    session: Option<&str>,
    target_volume: &str,
    cmd: Vec<String>,
) -> SandboxSpec {
    let d = &config.docker;
    SandboxSpec {
        name: owner.name(Role::Installer),
        image: d.image.clone(),
        command: cmd,
        env: vec![
            "HOME=/tmp".into(),
            "PIP_NO_INPUT=1".into(),
            "PIP_DISABLE_PIP_VERSION_CHECK=1".into(),
            // uv trusts the system's CA store, as pip does (needed behind TLS-inspecting proxies).
            "UV_NATIVE_TLS=1".into(),
            "PYTHONDONTWRITEBYTECODE=1".into(),
        ],
        // The volume's root belongs to root; writing there needs no capability beyond
        // ownership, so root with every capability dropped is enough.
        user: UserIds::ROOT,
        working_dir: "/tmp".into(),
        labels: owner.labels(Role::Installer, session),
        network: Network::outbound(config),
        limits: Limits {
            memory_bytes: d.memory_limit.max(512 * 1024 * 1024),
            cpus: d.cpu_limit.max(1.0),
            pids: d.pids_limit,
        },
        security: locked_down(true),
        scratch: vec![Scratch {
            path: "/tmp".into(),
            size_bytes: INSTALLER_TMP,
            mode: 0o1777,
            owned_by_user: false,
        }],
        volumes: vec![
            VolumeMount {
                volume: target_volume.into(),
                target: "/target".into(),
                read_only: false,
            },
            VolumeMount {
                volume: CACHE_VOLUME.into(),
                target: "/cache".into(),
                read_only: false,
            },
        ],
        // Installs keep their own path: no egress socket.
        binds: Vec::new(),
        interactive: false,
        detachable: false,
        // Removed by the daemon after its exit code is read.
        remove_on_exit: false,
        keep_logs: false,
        // The engine's default runtime: docker.runtime is for the code sandboxes.
        runtime: None,
    }
}

/// The egress socket directory, read-only at [`EGRESS_MOUNT`], for every sandbox of a
/// daemon with a non-empty ceiling (`network.allow`); nothing otherwise. Pooled sandboxes
/// have it whether or not a run asks for a network: a run's list is given to its sandbox at
/// claim time (the helper's `network` request), never by re-creating it. The mount is part
/// of the spec, so the host pool's fingerprint differs with and without it.
fn egress_binds(config: &Config) -> Vec<BindMount> {
    if config.network.allow.is_empty() {
        return Vec::new();
    }
    vec![BindMount {
        source: config.network.egress_dir.clone(),
        target: EGRESS_MOUNT.into(),
        read_only: true,
    }]
}

/// The daemon's egress proxy: this daemon's own binary (`binary`, mounted read-only) run as
/// `egress-proxy --socket /run/pdm-egress/<socket>` in a container of the sandbox image (for
/// its C library), with the socket directory read-write, on `network.egress_network`,
/// as the sandbox user, every capability dropped, no new privileges, a read-only root, and
/// small limits. Its stdin and stdout are the control channel (`crate::egress`): stdin closes
/// with the daemon's attach, and the proxy exits, so it never outlives its daemon; a dead
/// daemon's proxy is an orphan for the sweep (its labels).
pub fn proxy_spec(
    config: &Config,
    owner: &Owner,
    binary: &std::path::Path,
    socket: &str,
) -> SandboxSpec {
    SandboxSpec {
        name: owner.name(Role::Egress),
        image: config.docker.image.clone(),
        command: vec![
            PROXY_BINARY.into(),
            "egress-proxy".into(),
            "--socket".into(),
            format!("{EGRESS_MOUNT}/{socket}"),
        ],
        env: vec!["PYTHON_DOCKER_MCP_LOG=info".into()],
        user: config.docker.user,
        working_dir: "/".into(),
        labels: owner.labels(Role::Egress, None),
        network: Network::outbound(config),
        limits: Limits {
            memory_bytes: PROXY_MEMORY,
            cpus: 1.0,
            pids: PROXY_PIDS,
        },
        security: locked_down(true),
        scratch: Vec::new(),
        volumes: Vec::new(),
        binds: vec![
            BindMount {
                source: binary.to_path_buf(),
                target: PROXY_BINARY.into(),
                read_only: true,
            },
            BindMount {
                source: config.network.egress_dir.clone(),
                target: EGRESS_MOUNT.into(),
                read_only: false,
            },
        ],
        interactive: true,
        detachable: false,
        remove_on_exit: true,
        keep_logs: false,
        // The engine's default runtime: docker.runtime is for the code sandboxes.
        runtime: None,
    }
}

/// The proxy's memory: its relay buffers are fixed per tunnel, and tunnels are capped.
const PROXY_MEMORY: u64 = 256 * 1024 * 1024;
/// The proxy's threads at most (tokio's workers and blocking pool for name lookups).
const PROXY_PIDS: u64 = 256;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_profile_is_in_its_spec_and_keeps_the_lockdown() {
        let base = crate::config::resolve(&crate::config::Layers {
            file: Some((
                "/cfg.yaml".into(),
                "profiles:\n  browser: {memory_limit: 1g, shm_size: 256m}\n  twin: {}\n".into(),
            )),
            ..Default::default()
        })
        .unwrap();
        let owner = Owner::new();
        let spec = |name: &str| {
            let mut s = repl_spec(
                &base.for_profile(name).unwrap(),
                &owner,
                String::new(),
                "shared",
                "",
            );
            s.labels.clear();
            s
        };
        let (default, browser, twin) = (spec("default"), spec("browser"), spec("twin"));
        assert!(!default.env.iter().any(|e| e.starts_with("PDM_PROFILE=")));
        assert!(browser.env.contains(&"PDM_PROFILE=browser".to_string()));
        assert_eq!(browser.limits.memory_bytes, 1 << 30);
        let shm = browser
            .scratch
            .iter()
            .find(|m| m.path == "/dev/shm")
            .expect("a /dev/shm tmpfs");
        assert_eq!(shm.size_bytes, 256 << 20);
        assert_eq!(browser.security, default.security);
        assert_eq!(browser.user, default.user);
        assert_eq!(browser.network, Network::None);
        // Same settings as the default, another profile: another spec (so another
        // host-pool fingerprint).
        assert_eq!(twin.limits, default.limits);
        assert_ne!(format!("{twin:?}"), format!("{default:?}"));
        let named = repl_spec(
            &base.for_profile("twin").unwrap(),
            &owner,
            String::new(),
            "",
            "",
        )
        .labels;
        assert_eq!(named.get(labels::PROFILE).map(String::as_str), Some("twin"));
    }

    #[test]
    fn repl_sandbox_is_locked_down_by_default() {
        let config = Config::defaults();
        let owner = Owner::new();
        let s = repl_spec(&config, &owner, owner.name(Role::Sandbox), "shared", "own");
        assert_eq!(s.network, Network::None);
        assert_eq!(
            s.user,
            UserIds {
                uid: 1000,
                gid: 1000
            }
        );
        assert_eq!(
            s.security,
            Security {
                drop_all_capabilities: true,
                no_new_privileges: true,
                read_only_root: true,
            }
        );
        assert_eq!(
            s.limits,
            Limits {
                memory_bytes: 256 * 1024 * 1024,
                cpus: 0.5,
                pids: 128,
            }
        );
        let paths: Vec<&str> = s.scratch.iter().map(|m| m.path.as_str()).collect();
        assert_eq!(paths, ["/tmp", "/app"]);
        assert!(!s.scratch[0].owned_by_user && s.scratch[1].owned_by_user);
        assert!(s.remove_on_exit && s.interactive);
        assert!(
            s.volumes.iter().all(|v| v.read_only),
            "sandboxes only read package volumes"
        );
        assert!(s.volumes.iter().all(|v| !v.volume.contains("docker.sock")));
        assert_eq!(s.labels[labels::ROLE], "sandbox");
        assert_eq!(s.labels[labels::INSTANCE], owner.instance);
        assert!(s.env.iter().any(|e| e
            == "PDM_PACKAGE_DIRS=/opt/python-docker-mcp/session:/opt/python-docker-mcp/shared"));
    }

    #[test]
    fn no_container_keeps_a_log_on_the_host() {
        let config = Config::defaults();
        let owner = Owner::new();
        let s = repl_spec(&config, &owner, owner.name(Role::Sandbox), "shared", "own");
        assert!(!s.keep_logs);
        let i = installer_spec(&config, &owner, None, "target", vec!["true".into()]);
        assert!(!i.keep_logs);
    }

    #[test]
    fn the_data_limit_leaves_headroom_below_the_memory_limit() {
        const M: u64 = 1024 * 1024;
        // An eighth of the limit, within 24..=128 MiB.
        assert_eq!(data_limit(256 * M), 256 * M - 32 * M);
        assert_eq!(data_limit(128 * M), 128 * M - 24 * M);
        assert_eq!(data_limit(4096 * M), 4096 * M - 128 * M);
        assert_eq!(data_limit(2048 * M), 2048 * M - 128 * M);
        // Tiny limits keep half.
        assert_eq!(data_limit(32 * M), 16 * M);
        assert_eq!(data_limit(6 * M), 3 * M);
        let config = Config::defaults();
        let owner = Owner::new();
        let s = repl_spec(&config, &owner, owner.name(Role::Sandbox), "shared", "own");
        let want = format!("PDM_DATA_LIMIT={}", data_limit(config.docker.memory_limit));
        assert!(s.env.contains(&want), "{:?}", s.env);
    }

    #[test]
    fn native_thread_pools_get_the_sandboxs_cpus() {
        assert_eq!(threads(0.5), 1);
        assert_eq!(threads(2.0), 2);
        assert_eq!(threads(2.5), 3);
        let s = repl_spec(
            &Config::defaults(),
            &Owner::new(),
            "n".into(),
            "shared",
            "own",
        );
        assert!(
            s.env.contains(&"OPENBLAS_NUM_THREADS=1".to_string()),
            "{:?}",
            s.env
        );
    }

    #[test]
    fn network_only_when_configured() {
        let mut config = Config::defaults();
        config.docker.network_disabled = false;
        let owner = Owner::new();
        let s = repl_spec(&config, &owner, owner.name(Role::Sandbox), "shared", "own");
        assert_eq!(s.network, Network::Outbound { via: None });
    }

    #[test]
    fn outbound_traffic_uses_the_egress_network_when_one_is_named() {
        let mut config = Config::defaults();
        config.network.egress_network = Some("pdm-test-net".into());
        let owner = Owner::new();
        let via = Network::Outbound {
            via: Some("pdm-test-net".into()),
        };
        let i = installer_spec(&config, &owner, None, "target", vec!["true".into()]);
        assert_eq!(i.network, via);
        let s = repl_spec(&config, &owner, owner.name(Role::Sandbox), "shared", "own");
        assert_eq!(s.network, Network::None, "no network stays no network");
        config.docker.network_disabled = false;
        let s = repl_spec(&config, &owner, owner.name(Role::Sandbox), "shared", "own");
        assert_eq!(s.network, via);
    }

    #[test]
    fn every_sandbox_mounts_the_egress_directory_read_only_when_a_ceiling_is_set() {
        let mut config = Config::defaults();
        let owner = Owner::new();
        let s = repl_spec(&config, &owner, owner.name(Role::Sandbox), "shared", "own");
        assert!(s.binds.is_empty(), "no ceiling, no mount: {:?}", s.binds);
        config.network.allow = vec!["allowed.test".into()];
        let s = repl_spec(&config, &owner, owner.name(Role::Sandbox), "shared", "own");
        assert_eq!(
            s.binds,
            [BindMount {
                source: config.network.egress_dir.clone(),
                target: EGRESS_MOUNT.into(),
                read_only: true,
            }]
        );
        assert_eq!(s.network, Network::None, "the socket is the only way out");
        let i = installer_spec(&config, &owner, None, "target", vec!["true".into()]);
        assert!(i.binds.is_empty(), "installs keep their own path");
    }

    #[test]
    fn the_proxy_runs_our_binary_locked_down_on_the_egress_network() {
        let mut config = Config::defaults();
        config.network.allow = vec!["allowed.test".into()];
        config.network.egress_network = Some("pdm-test-net".into());
        let owner = Owner::new();
        let bin = std::path::Path::new("/usr/bin/python-docker-mcp");
        let p = proxy_spec(&config, &owner, bin, "abc.sock");
        assert_eq!(
            p.command,
            [
                PROXY_BINARY,
                "egress-proxy",
                "--socket",
                "/run/pdm-egress/abc.sock"
            ]
        );
        assert_eq!(p.labels[labels::ROLE], "egress");
        assert_eq!(
            p.network,
            Network::Outbound {
                via: Some("pdm-test-net".into())
            }
        );
        assert_eq!(p.user, config.docker.user);
        assert!(p.security.drop_all_capabilities && p.security.no_new_privileges);
        assert!(p.security.read_only_root);
        assert!(p.interactive && !p.detachable && p.remove_on_exit && !p.keep_logs);
        assert_eq!(p.binds[0].source, bin);
        assert!(p.binds[0].read_only, "the binary is read-only");
        assert_eq!(p.binds[1].target, EGRESS_MOUNT);
        assert!(!p.binds[1].read_only, "the proxy makes its socket there");
        assert!(p.limits.memory_bytes <= 256 * 1024 * 1024);
    }

    #[test]
    fn names_are_unique_and_say_who_made_them() {
        let owner = Owner::new();
        let a = owner.name(Role::Sandbox);
        assert_ne!(a, owner.name(Role::Sandbox));
        assert!(a.starts_with(&format!("pdm-{}-sandbox-", &owner.instance[..8])));
    }
}
