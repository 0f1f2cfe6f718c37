//! The Docker backend: the only module that talks to Docker (through bollard).
//!
//! It speaks the Docker API to whatever engine answers at `DOCKER_HOST`: Docker, or Podman
//! through `podman system service`. Which one answered is read once from the version
//! endpoint ([`EngineInfo`]); messages name it, and the few places where Podman reads the
//! API differently are bridged here ([`tmpfs_options`]), so the rest of the daemon never
//! asks which engine it has.
//!
//! It connects lazily (so the daemon starts and answers even when Docker is down), renders a
//! runtime-neutral [`SandboxSpec`] into the Docker API's words (capability names,
//! `no-new-privileges`, tmpfs option strings, `NanoCpus`, log driver `none`: every Docker
//! string lives here, and only here), creates, attaches and starts it, and offers the few
//! other operations the daemon needs: remove, run-to-completion (output capped to
//! its head and tail), volumes, removal of everything carrying a label, and building an
//! image from an in-memory context ([`Docker::build_image`]). It also owns
//! the OOM watcher: one long-lived subscription to the engine's `oom` events, so a caller
//! can tell for certain whether a container was killed for its memory
//! ([`Docker::oom_killed`]). Errors say what failed and how to fix it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigLogConfig, Mount, MountType, MountVolumeOptions,
    VolumeCreateRequest,
};
use bollard::query_parameters::{
    AttachContainerOptions, BuildImageOptions, CreateContainerOptions, EventsOptions,
    ListContainersOptions, ListVolumesOptions, RemoveContainerOptions, RemoveVolumeOptions,
    RenameContainerOptions, WaitContainerOptions,
};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{Notify, OnceCell};
use tokio_util::sync::CancellationToken;

use super::{Attached, EngineInfo, EngineKind, Named, Output, RuntimeError, Sweep, Swept};
use crate::config::Config;
use crate::durable::{self, SessionName};
use crate::sandbox::{self, labels, Network, Owner, Role, SandboxSpec, Scratch, UserIds};

impl EngineInfo {
    /// Podman names itself in the version's components ("Podman Engine") and platform;
    /// anything else speaking the API is taken for Docker.
    fn from_version(v: &bollard::models::SystemVersion) -> EngineInfo {
        let podman = |name: &str| name.to_ascii_lowercase().contains("podman");
        let component = v.components.iter().flatten().find(|c| podman(&c.name));
        let platform = v.platform.as_ref().is_some_and(|p| podman(&p.name));
        let kind = if component.is_some() || platform {
            EngineKind::Podman
        } else {
            EngineKind::Docker
        };
        let version = component
            .map(|c| c.version.clone())
            .or_else(|| v.version.clone())
            .unwrap_or_default();
        EngineInfo { kind, version }
    }
}

/// A scratch mount's tmpfs options as `kind` accepts them: read-write, no setuid, no
/// devices, its size in bytes and its mode in octal, then its owner. Docker takes the
/// kernel's `uid=` and `gid=`. Podman refuses those ("unknown mount option") and offers `U`
/// instead, which gives the mount to the container's user: the owner the spec asks for.
/// Podman also copies the image's files at the mount point into a new tmpfs unless told
/// `notmpcopyup`; Docker mounts it empty, and so do we on both.
pub fn tmpfs_options(kind: EngineKind, scratch: &Scratch, user: UserIds) -> String {
    let mut options = format!(
        "rw,nosuid,nodev,size={},mode={:04o}",
        scratch.size_bytes, scratch.mode
    );
    match kind {
        EngineKind::Docker | EngineKind::Kubernetes => {
            if scratch.owned_by_user {
                options.push_str(&format!(",uid={},gid={}", user.uid, user.gid));
            }
        }
        EngineKind::Podman => {
            if scratch.owned_by_user {
                options.push_str(",U");
            }
            options.push_str(",notmpcopyup");
        }
    }
    options
}

/// Driver options for a new volume on `kind`. Podman gives an empty volume to the user of
/// the first container that mounts it (a sandbox, uid 1000, mounting it read-only), and
/// the installer (root without capabilities) could then no longer write it. Docker leaves
/// a new volume's root to root. An explicit owner, `uid=0,gid=0`, makes Podman do the
/// same: it never changes a volume's owner once one is given.
fn volume_options(kind: EngineKind) -> Option<HashMap<String, String>> {
    match kind {
        EngineKind::Docker | EngineKind::Kubernetes => None,
        EngineKind::Podman => Some(HashMap::from([("o".into(), "uid=0,gid=0".into())])),
    }
}

/// A container or volume and its labels.
#[derive(Debug)]
pub struct Labelled {
    pub id: String,
    pub volume: bool,
    pub labels: HashMap<String, String>,
}

/// How many OOM kills the watcher remembers (the oldest are forgotten first).
const OOM_REMEMBERED: usize = 1024;
/// First pause before the watcher subscribes again after losing the engine; it doubles
/// up to `OOM_RETRY_MAX` while the engine stays away.
const OOM_RETRY_MIN: Duration = Duration::from_millis(250);
const OOM_RETRY_MAX: Duration = Duration::from_secs(10);
/// A subscription that lived this long was healthy: the next pause starts from the minimum.
const OOM_HEALTHY: Duration = Duration::from_secs(10);

/// A cheap-to-clone handle on the engine connection.
#[derive(Clone)]
pub struct Docker {
    /// Connected, version-negotiated and identified on first use; a failed attempt is
    /// retried next time.
    client: Arc<OnceCell<Connection>>,
    /// The OOM watcher. Its task holds the client and the log, never this handle, so the
    /// task stops when the last handle is dropped (or at [`Docker::close`]).
    oom: Arc<OomWatch>,
}

/// One engine connection and what answered on it.
struct Connection {
    api: bollard::Docker,
    /// Docker or Podman: read once, when the connection is made.
    engine: EngineInfo,
}

impl Connection {
    /// Map a failure of `op` to an error naming this engine.
    fn refused(&self, op: &'static str) -> impl FnOnce(BollardError) -> RuntimeError {
        api(self.engine.kind.name(), op)
    }
}

/// The OOM watcher's handle side: started once, stopped by [`Docker::close`] or on drop.
struct OomWatch {
    /// What the watcher task recorded.
    log: Arc<OomLog>,
    /// The task is started by the first `start_attached` (or `oom_killed`), not before:
    /// a daemon that never starts a container never subscribes.
    started: std::sync::Once,
    /// Stops the task.
    stop: CancellationToken,
}

impl Drop for OomWatch {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// OOM kills the engine reported: written by the watcher task, read by `oom_killed`.
#[derive(Default)]
struct OomLog {
    /// (full container id, when its event arrived), oldest first, at most
    /// `OOM_REMEMBERED`. A sync mutex: held for a scan, never across an `.await`.
    kills: Mutex<VecDeque<(String, Instant)>>,
    /// Wakes every `oom_killed` waiting, on each recorded kill.
    arrived: Notify,
}

impl OomLog {
    fn record(&self, id: String) {
        let mut kills = self.kills.lock().expect("oom log lock");
        // A subscription resumed after a gap replays recent events: keep the first arrival.
        if kills.iter().any(|(k, _)| *k == id) {
            return;
        }
        if kills.len() == OOM_REMEMBERED {
            kills.pop_front();
        }
        kills.push_back((id, Instant::now()));
        drop(kills);
        self.arrived.notify_waiters();
    }

    fn seen(&self, id: &str, since: Instant) -> bool {
        let kills = self.kills.lock().expect("oom log lock");
        kills.iter().any(|(k, at)| k == id && *at >= since)
    }
}

impl Default for Docker {
    fn default() -> Self {
        Docker::new()
    }
}

/// Where the engine is reached: `DOCKER_HOST`, or Docker's default socket.
pub fn host() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into())
}

fn api(engine: &'static str, op: &'static str) -> impl FnOnce(BollardError) -> RuntimeError {
    move |e| match e {
        BollardError::DockerResponseServerError { message, .. } => RuntimeError::Api {
            engine,
            op,
            message,
        },
        BollardError::HyperResponseError { .. }
        | BollardError::HyperLegacyError { .. }
        | BollardError::IOError { .. }
        | BollardError::RequestTimeoutError => RuntimeError::Unreachable {
            engine,
            host: host(),
            reason: e.to_string(),
        },
        other => RuntimeError::Api {
            engine,
            op,
            message: other.to_string(),
        },
    }
}

/// Whether an engine's refusal says it has no runtime by this name. Docker: "unknown or
/// invalid runtime name: X"; Podman: "... runtime X ...: invalid argument"-style messages
/// that name the runtime. Both name it; both say "runtime".
fn names_unknown_runtime(message: &str, runtime: &str) -> bool {
    message.contains(runtime) && message.to_ascii_lowercase().contains("runtime")
}

fn is_not_found(e: &BollardError) -> bool {
    matches!(
        e,
        BollardError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// Removal races with auto-removal: "already gone" and "already being removed" are success.
fn is_gone(e: &BollardError) -> bool {
    matches!(
        e,
        BollardError::DockerResponseServerError {
            status_code: 404 | 409,
            ..
        }
    )
}

/// Connect, negotiate the API version and tell Docker from Podman, once; a failed
/// attempt is retried next time.
async fn connect(cell: &OnceCell<Connection>) -> Result<&Connection, RuntimeError> {
    cell.get_or_try_init(|| async {
        // Nothing answered, so the engine is named by its address.
        let unreachable = |e: BollardError| RuntimeError::Unreachable {
            engine: if host().contains("podman") {
                "Podman"
            } else {
                "Docker"
            },
            host: host(),
            reason: e.to_string(),
        };
        let docker = bollard::Docker::connect_with_defaults().map_err(unreachable)?;
        let api = docker.negotiate_version().await.map_err(unreachable)?;
        let version = api.version().await.map_err(unreachable)?;
        let engine = EngineInfo::from_version(&version);
        tracing::debug!(engine = %engine, host = %host(), "connected to the container engine");
        Ok(Connection { api, engine })
    })
    .await
}

/// Seconds since the epoch with nanoseconds, the way the events API takes `since`.
fn engine_timestamp(at: SystemTime) -> String {
    let d = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

/// The OOM watcher task: one `events` subscription (type=container, event=oom, our
/// managed label), subscribed again with a growing pause whenever it ends, because the
/// engine may restart while the daemon runs. Each subscription asks for events since
/// shortly before the previous one ended (since the watcher started, the first time), so a
/// kill during a gap is replayed by the engine rather than missed.
async fn watch_ooms(client: Arc<OnceCell<Connection>>, log: Arc<OomLog>, stop: CancellationToken) {
    let mut since = SystemTime::now() - Duration::from_secs(1);
    let mut pause = OOM_RETRY_MIN;
    loop {
        let began = Instant::now();
        match connect(&client).await {
            Ok(Connection { api: docker, .. }) => {
                let filters = HashMap::from([
                    ("type".to_string(), vec!["container".to_string()]),
                    ("event".to_string(), vec!["oom".to_string()]),
                    (
                        "label".to_string(),
                        vec![format!("{}=true", labels::MANAGED)],
                    ),
                ]);
                let options = EventsOptions {
                    since: Some(engine_timestamp(since)),
                    until: None,
                    filters: Some(filters),
                };
                let mut events = docker.events(Some(options));
                loop {
                    let next = tokio::select! {
                        _ = stop.cancelled() => return,
                        next = events.next() => next,
                    };
                    match next {
                        Some(Ok(event)) => {
                            if let Some(id) = event.actor.and_then(|a| a.id) {
                                tracing::debug!(container = %id, "the engine reports an OOM kill");
                                log.record(id);
                            }
                        }
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "the OOM event subscription ended");
                            break;
                        }
                        None => break,
                    }
                }
                since = SystemTime::now() - Duration::from_secs(1);
            }
            Err(e) => tracing::debug!(error = %e, "the OOM watcher cannot reach Docker yet"),
        }
        if began.elapsed() >= OOM_HEALTHY {
            pause = OOM_RETRY_MIN;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(OOM_RETRY_MAX);
    }
}

/// Capabilities dropped when a spec drops them all.
const CAP_DROP_ALL: &str = "ALL";
/// The security option behind [`Security::no_new_privileges`](crate::sandbox::Security).
const NO_NEW_PRIVILEGES: &str = "no-new-privileges";
/// The network a spec's [`Network::Outbound`] joins when it names none (the engine's
/// default), and the mode for [`Network::None`].
const NETWORK_OUTBOUND: &str = "bridge";
const NETWORK_NONE: &str = "none";
/// The log driver of a spec that keeps no logs: nothing is written to the host's disk.
pub const LOG_DRIVER: &str = "none";

/// The isolation profile of a REPL sandbox as `docker run` flags, for references measured
/// next to the daemon (the end-to-end benchmark) and for trying the profile by hand. They
/// are read from the very create request the daemon sends ([`container_body`]), so they
/// cannot drift from it.
pub fn docker_run_flags(config: &Config) -> Vec<String> {
    let owner = Owner::new();
    let spec = sandbox::repl_spec(config, &owner, owner.name(Role::Sandbox), "shared", "own");
    let body = container_body(&spec, EngineKind::Docker);
    let h = body.host_config.unwrap_or_default();
    let mut flags: Vec<String> = Vec::new();
    let mut flag = |name: &str, value: String| flags.extend([name.to_string(), value]);
    flag("--network", h.network_mode.unwrap_or_default());
    flag("--memory", h.memory.unwrap_or_default().to_string());
    flag(
        "--memory-swap",
        h.memory_swap.unwrap_or_default().to_string(),
    );
    flag(
        "--cpus",
        (h.nano_cpus.unwrap_or_default() as f64 / 1e9).to_string(),
    );
    flag("--pids-limit", h.pids_limit.unwrap_or_default().to_string());
    for cap in h.cap_drop.unwrap_or_default() {
        flag("--cap-drop", cap);
    }
    for opt in h.security_opt.unwrap_or_default() {
        flag("--security-opt", opt);
    }
    for (path, options) in h.tmpfs.unwrap_or_default() {
        flag("--tmpfs", format!("{path}:{options}"));
    }
    flag("--user", body.user.unwrap_or_default());
    if let Some(driver) = h.log_config.and_then(|l| l.typ) {
        flag("--log-driver", driver);
    }
    if h.readonly_rootfs == Some(true) {
        flags.push("--read-only".into());
    }
    if h.init == Some(true) {
        flags.push("--init".into());
    }
    flags
}

/// The create request for `spec` on `kind`: the sandbox's typed settings in the Docker
/// API's words. Nothing is decided here; every value comes from the spec (the profile is
/// decided in `sandbox.rs`), except what Docker needs to run any sandbox at all: an init
/// as PID 1, no terminal, and memory+swap equal to memory (no swap).
fn container_body(spec: &SandboxSpec, kind: EngineKind) -> ContainerCreateBody {
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: Some(spec.command.clone()),
        env: Some(spec.env.clone()),
        user: Some(spec.user.to_string()),
        working_dir: Some(spec.working_dir.clone()),
        labels: Some(spec.labels.clone().into_iter().collect()),
        network_disabled: Some(spec.network == Network::None),
        attach_stdin: Some(spec.interactive),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        open_stdin: Some(spec.interactive),
        // Docker closes the helper's stdin when our attach connection goes away, and the
        // helper exits on EOF: a sandbox never outlives its daemon, even after SIGKILL.
        // A detachable one (a durable session) keeps stdin open for the next attach.
        stdin_once: Some(spec.interactive && !spec.detachable),
        tty: Some(false),
        host_config: Some(host_config(spec, kind)),
        ..Default::default()
    }
}

/// Volumes (a named one, or one the engine makes for this container), then binds.
fn mounts(spec: &SandboxSpec) -> Vec<Mount> {
    spec.volumes
        .iter()
        .map(|v| Mount {
            target: Some(v.target.clone()),
            // No name: the engine makes the volume for this container, labelled like it,
            // and removes it with the container (auto-remove included).
            source: (!v.volume.is_empty()).then(|| v.volume.clone()),
            typ: Some(MountType::VOLUME),
            read_only: Some(v.read_only),
            volume_options: v.volume.is_empty().then(|| MountVolumeOptions {
                labels: Some(spec.labels.clone().into_iter().collect()),
                ..Default::default()
            }),
            ..Default::default()
        })
        .chain(spec.binds.iter().map(|b| Mount {
            target: Some(b.target.clone()),
            source: Some(b.source.to_string_lossy().into_owned()),
            typ: Some(MountType::BIND),
            read_only: Some(b.read_only),
            ..Default::default()
        }))
        .collect()
}

/// Limits, security, network, scratch mounts, init, removal, runtime and log driver.
fn host_config(spec: &SandboxSpec, kind: EngineKind) -> HostConfig {
    let limits = &spec.limits;
    let security = &spec.security;
    HostConfig {
        memory: Some(limits.memory_bytes as i64),
        memory_swap: Some(limits.memory_bytes as i64),
        nano_cpus: Some((limits.cpus * 1e9) as i64),
        pids_limit: Some(limits.pids as i64),
        cap_drop: Some(
            security
                .drop_all_capabilities
                .then(|| CAP_DROP_ALL.to_string())
                .into_iter()
                .collect(),
        ),
        security_opt: Some(
            security
                .no_new_privileges
                .then(|| NO_NEW_PRIVILEGES.to_string())
                .into_iter()
                .collect(),
        ),
        readonly_rootfs: Some(security.read_only_root),
        network_mode: Some(
            match &spec.network {
                Network::None => NETWORK_NONE,
                Network::Outbound { via } => via.as_deref().unwrap_or(NETWORK_OUTBOUND),
            }
            .into(),
        ),
        tmpfs: Some(
            spec.scratch
                .iter()
                .map(|m| (m.path.clone(), tmpfs_options(kind, m, spec.user)))
                .collect(),
        ),
        mounts: Some(mounts(spec)),
        init: Some(true),
        auto_remove: Some(spec.remove_on_exit),
        runtime: spec.runtime.clone(),
        // Keeping logs means the engine's own default driver.
        log_config: (!spec.keep_logs).then(|| HostConfigLogConfig {
            typ: Some(LOG_DRIVER.into()),
            config: None,
        }),
        ..Default::default()
    }
}

impl Docker {
    pub fn new() -> Docker {
        Docker {
            client: Default::default(),
            oom: Arc::new(OomWatch {
                log: Default::default(),
                started: std::sync::Once::new(),
                stop: CancellationToken::new(),
            }),
        }
    }

    async fn client(&self) -> Result<&bollard::Docker, RuntimeError> {
        Ok(&connect(&self.client).await?.api)
    }

    async fn connection(&self) -> Result<&Connection, RuntimeError> {
        connect(&self.client).await
    }

    /// Which engine answers (Docker or Podman) and its version; connects if needed.
    pub async fn engine(&self) -> Result<EngineInfo, RuntimeError> {
        Ok(self.connection().await?.engine.clone())
    }

    /// Start the OOM watcher if it is not running (idempotent; needs a tokio runtime).
    fn watch_ooms(&self) {
        self.oom.started.call_once(|| {
            if self.oom.stop.is_cancelled() {
                return;
            }
            tokio::spawn(watch_ooms(
                self.client.clone(),
                self.oom.log.clone(),
                self.oom.stop.clone(),
            ));
        });
    }

    /// Whether the engine reported an OOM kill of this container (its full id) at or
    /// after `since`, waiting up to `within` for the event: the engine sends it a moment
    /// after the container's output ends. False if the watcher is stopped.
    pub async fn oom_killed(&self, container_id: &str, since: Instant, within: Duration) -> bool {
        self.watch_ooms();
        let log = &self.oom.log;
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let arrived = log.arrived.notified();
            tokio::pin!(arrived);
            // Registered before looking, so a kill recorded in between still wakes us.
            arrived.as_mut().enable();
            if log.seen(container_id, since) {
                return true;
            }
            if self.oom.stop.is_cancelled()
                || tokio::time::timeout_at(deadline, arrived).await.is_err()
            {
                return false;
            }
        }
    }

    /// Stop the background work (the OOM watcher). Dropping the last handle does the same.
    pub fn close(&self) {
        self.oom.stop.cancel();
    }

    /// Check that the engine answers; returns its version.
    pub async fn ping(&self) -> Result<String, RuntimeError> {
        let conn = self.connection().await?;
        let v = conn
            .api
            .version()
            .await
            .map_err(conn.refused("report its version"))?;
        Ok(v.version.unwrap_or_default())
    }

    /// Check that an image is present.
    pub async fn image_id(&self, image: &str) -> Result<String, RuntimeError> {
        let conn = self.connection().await?;
        match conn.api.inspect_image(image).await {
            Ok(i) => Ok(i.id.unwrap_or_else(|| image.to_string())),
            Err(e) if is_not_found(&e) => Err(RuntimeError::ImageMissing {
                image: image.to_string(),
            }),
            Err(e) => Err(conn.refused("inspect the image")(e)),
        }
    }

    pub async fn image_present(&self, image: &str) -> Result<bool, RuntimeError> {
        let conn = self.connection().await?;
        match conn.api.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(conn.refused("inspect the image")(e)),
        }
    }

    /// Build an image from a context tar held in memory (`context_tar`, with a `Dockerfile`
    /// at its root) and tag it `tag`; `build_args` fill the Dockerfile's `ARG`s. Each line
    /// the engine reports (steps, their output, pulls) goes to `progress` as it arrives,
    /// without its trailing newline. Intermediate containers are removed, also on failure.
    pub async fn build_image(
        &self,
        context_tar: Vec<u8>,
        tag: &str,
        build_args: HashMap<String, String>,
        mut progress: impl FnMut(&str),
    ) -> Result<(), RuntimeError> {
        let conn = self.connection().await?;
        let docker = &conn.api;
        let options = BuildImageOptions {
            t: Some(tag.to_string()),
            buildargs: Some(build_args),
            rm: true,
            forcerm: true,
            ..Default::default()
        };
        let failed = |message: String| RuntimeError::BuildFailed {
            tag: tag.to_string(),
            message,
        };
        let mut stream = docker.build_image(
            options,
            None,
            Some(bollard::body_full(Bytes::from(context_tar))),
        );
        while let Some(item) = stream.next().await {
            let info = match item {
                Ok(info) => info,
                Err(BollardError::DockerStreamError { error }) => return Err(failed(error)),
                Err(e) => match conn.refused("build an image")(e) {
                    RuntimeError::Api { message, .. } => return Err(failed(message)),
                    other => return Err(other),
                },
            };
            if let Some(detail) = info.error_detail {
                return Err(failed(detail.message.unwrap_or_default()));
            }
            for text in [info.stream, info.status].into_iter().flatten() {
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    progress(line);
                }
            }
        }
        Ok(())
    }

    /// Create, attach (before start, so no output is lost) and start a container.
    pub async fn start_attached(&self, spec: &SandboxSpec) -> Result<Attached, RuntimeError> {
        let conn = self.connection().await?;
        let docker = &conn.api;
        self.watch_ooms();
        let id = self.create(spec).await?;
        let attached = match self.attach_streams(&id, &spec.name, spec.interactive).await {
            Ok(a) => a,
            Err(e) => {
                self.remove(&id).await;
                return Err(e);
            }
        };
        if let Err(e) = docker.start_container(&id, None).await {
            self.remove(&id).await;
            return Err(conn.refused("start the container")(e));
        }
        Ok(attached)
    }

    /// Attach to a running container again (a durable session being adopted): its stdin
    /// and what it writes from now on.
    pub async fn attach(&self, id: &str, name: &str) -> Result<Attached, RuntimeError> {
        self.watch_ooms();
        self.attach_streams(id, name, true).await
    }

    async fn attach_streams(
        &self,
        id: &str,
        name: &str,
        stdin: bool,
    ) -> Result<Attached, RuntimeError> {
        let conn = self.connection().await?;
        let attached = conn
            .api
            .attach_container(
                id,
                Some(AttachContainerOptions {
                    stdin,
                    stdout: true,
                    stderr: true,
                    stream: true,
                    logs: false,
                    detach_keys: None,
                }),
            )
            .await
            .map_err(conn.refused("attach to the container"))?;
        let output = attached.output.filter_map(|item| async move {
            match item {
                Ok(bollard::container::LogOutput::StdOut { message })
                | Ok(bollard::container::LogOutput::Console { message }) => {
                    Some(Output::Stdout(message))
                }
                Ok(bollard::container::LogOutput::StdErr { message }) => {
                    Some(Output::Stderr(message))
                }
                Ok(bollard::container::LogOutput::StdIn { .. }) => None,
                Err(e) => {
                    tracing::debug!(error = %e, "attach stream ended with an error");
                    None
                }
            }
        });
        Ok(Attached {
            id: id.to_string(),
            name: name.to_string(),
            input: attached.input,
            output: Box::pin(output),
        })
    }

    /// The name of the volume mounted at `target` in container `id` (an unnamed one the
    /// engine made, say).
    pub async fn volume_at(&self, id: &str, target: &str) -> Result<Option<String>, RuntimeError> {
        let conn = self.connection().await?;
        let info = conn
            .api
            .inspect_container(id, None)
            .await
            .map_err(conn.refused("inspect a container"))?;
        Ok(info
            .mounts
            .unwrap_or_default()
            .into_iter()
            .find(|m| m.destination.as_deref() == Some(target))
            .and_then(|m| m.name))
    }

    /// Rename the container now called `from` to `to`: the claim primitive (of two
    /// daemons renaming the same name, exactly one succeeds). `Ok(false)`: no container is
    /// called `from` any more (another daemon won, or it is gone).
    pub async fn rename(&self, from: &str, to: &str) -> Result<bool, RuntimeError> {
        let conn = self.connection().await?;
        let options = RenameContainerOptions { name: to.into() };
        match conn.api.rename_container(from, options).await {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(BollardError::DockerResponseServerError {
                status_code: 409, ..
            }) => Err(RuntimeError::NameInUse { name: to.into() }),
            Err(e) => Err(conn.refused("rename a container")(e)),
        }
    }

    /// Running or not, the containers whose name contains `part`, with their labels.
    pub async fn named(&self, part: &str) -> Result<Vec<Named>, RuntimeError> {
        let mut filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{}=true", labels::MANAGED)],
        )]);
        if !part.is_empty() {
            filters.insert("name".into(), vec![part.to_string()]);
        }
        Ok(self
            .list_containers(filters)
            .await?
            .into_iter()
            .filter_map(|c| {
                let name = c.names?.into_iter().next()?;
                Some(Named {
                    id: c.id?,
                    name: name.trim_start_matches('/').to_string(),
                    created: c.created.unwrap_or(0).max(0) as u64,
                    running: c.state.is_some_and(|s| s.to_string() == "running"),
                    labels: c.labels.unwrap_or_default(),
                })
            })
            .collect())
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<String, RuntimeError> {
        let conn = self.connection().await?;
        let docker = &conn.api;
        let kind = conn.engine.kind;
        if let (EngineKind::Podman, Some(runtime)) = (kind, &spec.runtime) {
            return Err(RuntimeError::RuntimeIgnored {
                runtime: runtime.clone(),
            });
        }
        let body = container_body(spec, kind);
        let options = CreateContainerOptions {
            name: Some(spec.name.clone()),
            ..Default::default()
        };
        match docker.create_container(Some(options), body).await {
            Ok(r) => Ok(r.id),
            Err(BollardError::DockerResponseServerError {
                status_code: 409, ..
            }) => Err(RuntimeError::NameInUse {
                name: spec.name.clone(),
            }),
            Err(e) if is_not_found(&e) => Err(RuntimeError::ImageMissing {
                image: spec.image.clone(),
            }),
            Err(e) => match (&spec.runtime, conn.refused("create a container")(e)) {
                (Some(runtime), RuntimeError::Api { message, .. })
                    if names_unknown_runtime(&message, runtime) =>
                {
                    Err(RuntimeError::UnknownRuntime {
                        engine: kind.name(),
                        runtime: runtime.clone(),
                        message,
                    })
                }
                (_, other) => Err(other),
            },
        }
    }

    /// Force-remove a container; already gone is fine. Failures are logged, not returned:
    /// every caller is cleaning up and has nothing better to do with them.
    pub async fn remove(&self, id: &str) {
        let Ok(docker) = self.client().await else {
            return;
        };
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        if let Err(e) = docker.remove_container(id, Some(options)).await {
            if !is_gone(&e) {
                tracing::warn!(container = %id, error = %e, "could not remove container");
            }
        }
    }

    /// The exit code of a container whose output has ended (`-1` if the engine says none).
    pub async fn exit_code(&self, id: &str) -> Result<i64, RuntimeError> {
        let conn = self.connection().await?;
        let mut wait = conn.api.wait_container(id, None::<WaitContainerOptions>);
        match wait.next().await {
            Some(Ok(r)) => Ok(r.status_code),
            Some(Err(BollardError::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(conn.refused("wait for the container")(e)),
            None => Ok(-1),
        }
    }

    /// Create a labelled volume (idempotent).
    pub async fn create_volume(
        &self,
        name: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), RuntimeError> {
        let conn = self.connection().await?;
        let request = VolumeCreateRequest {
            name: Some(name.into()),
            labels: Some(labels.clone().into_iter().collect()),
            driver_opts: volume_options(conn.engine.kind),
            ..Default::default()
        };
        conn.api
            .create_volume(request)
            .await
            .map_err(conn.refused("create a volume"))?;
        Ok(())
    }

    pub async fn volume_exists(&self, name: &str) -> Result<bool, RuntimeError> {
        let conn = self.connection().await?;
        match conn.api.inspect_volume(name).await {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(conn.refused("inspect a volume")(e)),
        }
    }

    /// Remove a volume; already gone is fine. A container that was just force-removed
    /// may still hold it for a moment (its removal races Docker's own auto-remove), so
    /// "in use" is retried for a few seconds before giving up.
    pub async fn remove_volume(&self, name: &str) {
        let Ok(docker) = self.client().await else {
            return;
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match docker
                .remove_volume(name, Some(RemoveVolumeOptions { force: true }))
                .await
            {
                Ok(()) => return,
                Err(e) if is_not_found(&e) => return,
                Err(BollardError::DockerResponseServerError {
                    status_code: 409, ..
                }) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    tracing::warn!(volume = %name, error = %e, "could not remove volume");
                    return;
                }
            }
        }
    }

    /// Ids of containers carrying every given `key=value` label, running or not.
    pub async fn containers_labelled(
        &self,
        with: &[(&str, &str)],
    ) -> Result<Vec<String>, RuntimeError> {
        let filters = HashMap::from([(
            "label".to_string(),
            with.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>(),
        )]);
        let list = self.list_containers(filters).await?;
        Ok(list.into_iter().filter_map(|c| c.id).collect())
    }

    /// Containers matching `filters`, running or not.
    async fn list_containers(
        &self,
        filters: HashMap<String, Vec<String>>,
    ) -> Result<Vec<bollard::models::ContainerSummary>, RuntimeError> {
        let options = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        let conn = self.connection().await?;
        conn.api
            .list_containers(Some(options))
            .await
            .map_err(conn.refused("list containers"))
    }

    /// Remove every container and volume of one daemon instance. Returns how many
    /// containers were removed.
    /// Containers (by id) and volumes (by name) in `keep` stay.
    pub async fn remove_instance(
        &self,
        instance: &str,
        keep: &std::collections::HashSet<String>,
    ) -> Result<usize, RuntimeError> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{}={instance}", labels::INSTANCE)],
        )]);
        let me = durable::Holder::me();
        let ids: Vec<String> = self
            .list_containers(filters)
            .await?
            .into_iter()
            .filter(|c| {
                let name = c.names.as_ref().and_then(|n| n.first());
                !name.is_some_and(|n| durable::claimed_by_other(n, &me))
            })
            .filter_map(|c| c.id)
            .filter(|id| !keep.contains(id))
            .collect();
        futures::future::join_all(ids.iter().map(|id| self.remove(id))).await;
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{}={instance}", labels::INSTANCE)],
        )]);
        let conn = self.connection().await?;
        let volumes = conn
            .api
            .list_volumes(Some(ListVolumesOptions {
                filters: Some(filters),
            }))
            .await
            .map_err(conn.refused("list volumes"))?;
        let names: Vec<String> = volumes
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.name)
            .filter(|n| !keep.contains(n))
            .collect();
        futures::future::join_all(names.iter().map(|n| self.remove_volume(n))).await;
        Ok(ids.len())
    }

    /// Find what no live daemon will remove, and remove it unless `sweep.dry_run`. The
    /// policy of this backend, for containers:
    /// - a durable session (its name parses as a [`SessionName`]) goes when it has expired
    ///   ([`SessionName::expired`]: past its deadline or its lifetime, and no live daemon
    ///   holds it), whoever made it: the backstop that user code cannot touch;
    /// - a warm sandbox of the host pool (`pdm-w.`, or held ready `pdm-h.`) goes when the
    ///   engine created it more than `sweep.warm_max_age` ago, whoever made it;
    /// - a claimed sandbox (`pdm-t.`) goes when its holder is gone;
    /// - anything else goes when its host label is this host, its pid label names another
    ///   process, and no python-docker-mcp runs with that pid ([`is_orphan`]): warm and
    ///   transient sandboxes and installers of a dead daemon;
    /// - with `sweep.all`, everything labelled by a daemon of this host (`cleanup --all`).
    ///
    /// Volumes go only when no container mounts them any more (the engine's `dangling`),
    /// and by the same labels: a durable session's package volume stays as long as it does.
    pub async fn sweep_orphans(
        &self,
        me: &Owner,
        sweep: &Sweep<'_>,
    ) -> Result<Swept, RuntimeError> {
        let now = durable::now();
        let doomed = |c: &Named| {
            if sweep.all {
                return c.labels.get(labels::HOST) == Some(&me.host);
            }
            if let Some(n) = SessionName::parse(&c.name) {
                return n.expired(c.created, sweep.max_lifetime, now, sweep.holder);
            }
            if durable::WarmName::parse(&c.name).is_some()
                || durable::HeldName::parse(&c.name).is_some()
            {
                return durable::WarmName::expired(c.created, sweep.warm_max_age, now);
            }
            if let Some(n) = durable::ClaimedName::parse(&c.name) {
                return !n.holder.alive(sweep.holder);
            }
            is_orphan(&c.labels, me, daemon_alive)
        };
        let containers: Vec<Named> = self
            .named("")
            .await?
            .into_iter()
            .filter(|c| doomed(c))
            .collect();
        let volume_doomed = |labels: &HashMap<String, String>| {
            (sweep.all && labels.get(labels::HOST) == Some(&me.host))
                || is_orphan(labels, me, daemon_alive)
        };
        if sweep.dry_run {
            let volumes = self.volumes(true).await?;
            return Ok(Swept {
                containers: containers.len(),
                volumes: volumes.iter().filter(|v| volume_doomed(&v.labels)).count(),
                removed: containers.into_iter().map(|c| c.name).collect(),
            });
        }
        // Containers first: a volume cannot go while a container still mounts it.
        futures::future::join_all(containers.iter().map(|c| self.remove(&c.id))).await;
        let volumes: Vec<Labelled> = self
            .volumes(true)
            .await?
            .into_iter()
            .filter(|v| volume_doomed(&v.labels))
            .collect();
        futures::future::join_all(volumes.iter().map(|v| self.remove_volume(&v.id))).await;
        Ok(Swept {
            containers: containers.len(),
            volumes: volumes.len(),
            removed: containers.into_iter().map(|c| c.name).collect(),
        })
    }

    /// Managed volumes, only those no container mounts when `dangling`.
    async fn volumes(&self, dangling: bool) -> Result<Vec<Labelled>, RuntimeError> {
        let conn = self.connection().await?;
        let mut filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{}=true", labels::MANAGED)],
        )]);
        if dangling {
            filters.insert("dangling".into(), vec!["true".into()]);
        }
        let volumes = conn
            .api
            .list_volumes(Some(ListVolumesOptions {
                filters: Some(filters),
            }))
            .await
            .map_err(conn.refused("list volumes"))?;
        Ok(volumes
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| Labelled {
                id: v.name,
                volume: true,
                labels: v.labels,
            })
            .collect())
    }
}
/// Whether an object labelled by some daemon belongs to one that is gone: same host,
/// another process, and that process no longer runs python-docker-mcp.
pub(super) fn is_orphan(
    labels: &std::collections::HashMap<String, String>,
    me: &Owner,
    alive: impl Fn(u32) -> bool,
) -> bool {
    use crate::sandbox::labels as l;
    if labels.get(l::MANAGED).map(String::as_str) != Some("true")
        || labels.get(l::HOST) != Some(&me.host)
    {
        return false;
    }
    if labels.get(l::INSTANCE) == Some(&me.instance) {
        return false;
    }
    match labels.get(l::PID).and_then(|p| p.parse::<u32>().ok()) {
        Some(pid) => pid != me.pid && !alive(pid),
        None => false,
    }
}

/// Whether a python-docker-mcp process runs with this pid (on this host).
pub(super) fn daemon_alive(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("python-docker-mcp"))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::runtime::{HeadTail, RUN_HEAD, RUN_TAIL};
    use crate::sandbox::{installer_spec, repl_spec, Owner};

    fn kept(head: usize, tail: usize, chunks: &[&[u8]]) -> String {
        let mut h = HeadTail::new(head, tail);
        for c in chunks {
            h.push(c);
        }
        h.finish()
    }

    fn version(json: &str) -> bollard::models::SystemVersion {
        serde_json::from_str(json).expect("a version document")
    }

    #[test]
    fn orphans_are_dead_daemons_on_this_host_only() {
        let me = Owner::new();
        let mut other = Owner::new();
        other.pid = me.pid + 1;
        let theirs = other.labels(Role::Sandbox, Some("s")).into_iter().collect();
        assert!(
            is_orphan(&theirs, &me, |_| false),
            "a dead daemon's container is an orphan"
        );
        assert!(
            !is_orphan(&theirs, &me, |_| true),
            "a live daemon's container is left alone"
        );
        let mine = me.labels(Role::Sandbox, None).into_iter().collect();
        assert!(!is_orphan(&mine, &me, |_| false), "never our own");
        other.host = "elsewhere".into();
        let remote = other.labels(Role::Sandbox, None).into_iter().collect();
        assert!(
            !is_orphan(&remote, &me, |_| false),
            "another host's daemon may be alive"
        );
        let unlabelled = std::collections::HashMap::new();
        assert!(
            !is_orphan(&unlabelled, &me, |_| false),
            "never anything we did not create"
        );
    }

    #[test]
    fn podman_is_told_from_docker_by_its_version_document() {
        // Trimmed from what Podman 4.3.1 and Debian's Docker 20.10 answer here.
        let podman = version(
            r#"{"Platform":{"Name":"linux/amd64/debian-12"},
                "Components":[{"Name":"Podman Engine","Version":"4.3.1","Details":{}},
                              {"Name":"Conmon","Version":"conmon version 2.1.6","Details":{}}],
                "Version":"4.3.1","ApiVersion":"1.41"}"#,
        );
        let info = EngineInfo::from_version(&podman);
        assert_eq!(info.kind, EngineKind::Podman);
        assert_eq!(info.to_string(), "Podman 4.3.1");
        let docker = version(
            r#"{"Platform":{"Name":""},
                "Components":[{"Name":"Engine","Version":"20.10.24+dfsg1","Details":{}},
                              {"Name":"runc","Version":"1.1.5","Details":{}}],
                "Version":"20.10.24+dfsg1","ApiVersion":"1.41"}"#,
        );
        let info = EngineInfo::from_version(&docker);
        assert_eq!(info.kind, EngineKind::Docker);
        assert_eq!(info.to_string(), "Docker 20.10.24+dfsg1");
        assert_eq!(
            EngineInfo::from_version(&version(r#"{"Version":"27.0.1"}"#)).kind,
            EngineKind::Docker
        );
    }

    #[test]
    fn podman_gets_tmpfs_ownership_as_u_and_docker_as_given() {
        let user = UserIds {
            uid: 1000,
            gid: 1000,
        };
        let owned = Scratch {
            path: "/app".into(),
            size_bytes: 128 * 1024 * 1024,
            mode: 0o755,
            owned_by_user: true,
        };
        assert_eq!(
            tmpfs_options(EngineKind::Docker, &owned, user),
            "rw,nosuid,nodev,size=134217728,mode=0755,uid=1000,gid=1000"
        );
        assert_eq!(
            tmpfs_options(EngineKind::Podman, &owned, user),
            "rw,nosuid,nodev,size=134217728,mode=0755,U,notmpcopyup"
        );
        let shared = Scratch {
            path: "/tmp".into(),
            size_bytes: 512 * 1024 * 1024,
            mode: 0o1777,
            owned_by_user: false,
        };
        let want = "rw,nosuid,nodev,size=536870912,mode=1777";
        assert_eq!(tmpfs_options(EngineKind::Docker, &shared, user), want);
        assert_eq!(
            tmpfs_options(EngineKind::Podman, &shared, user),
            format!("{want},notmpcopyup")
        );
    }

    /// The request a spec renders to, as JSON, with the embedded helper (long, and
    /// checked by the sandbox tests) replaced by `HELPER`.
    fn rendered(spec: &SandboxSpec, kind: EngineKind) -> serde_json::Value {
        let mut v = serde_json::to_value(container_body(spec, kind)).expect("serializable");
        if let Some(helper) = v["Cmd"].get_mut(3) {
            *helper = "HELPER".into();
        }
        v
    }

    fn fixed_owner() -> Owner {
        Owner {
            instance: "0123456789abcdef0123456789abcdef".into(),
            pid: 42,
            host: "h".into(),
        }
    }

    /// The repl sandbox (with `docker.runtime` set) and an installer, rendered by the code
    /// before `SandboxSpec` existed (captured from `ContainerSpec` at 44caa31). The only
    /// difference since: the installer's `/tmp` size is written in bytes (`536870912`)
    /// where it said `512m`, the same size.
    const REPL_BEFORE: &str = r#"
        {
          "AttachStderr": true,
          "AttachStdin": true,
          "AttachStdout": true,
          "Cmd": [
            "python3",
            "-u",
            "-c",
            "HELPER"
          ],
          "Env": [
            "PYTHONUNBUFFERED=1",
            "PYTHONDONTWRITEBYTECODE=1",
            "MPLBACKEND=Agg",
            "HOME=/app",
            "PDM_WORKDIR=/app",
            "PDM_PACKAGE_DIRS=/opt/python-docker-mcp/session:/opt/python-docker-mcp/shared",
            "PDM_PRELOAD=",
            "PDM_DATA_LIMIT=234881024",
            "OPENBLAS_NUM_THREADS=1",
            "OMP_NUM_THREADS=1",
            "MKL_NUM_THREADS=1",
            "PDM_ALLOWED_MODULES=",
            "PDM_BLOCKED_MODULES="
          ],
          "HostConfig": {
            "AutoRemove": true,
            "CapDrop": [
              "ALL"
            ],
            "Init": true,
            "LogConfig": {
              "Type": "none"
            },
            "Memory": 268435456,
            "MemorySwap": 268435456,
            "Mounts": [
              {
                "ReadOnly": true,
                "Source": "shared",
                "Target": "/opt/python-docker-mcp/shared",
                "Type": "volume"
              },
              {
                "ReadOnly": true,
                "Source": "own",
                "Target": "/opt/python-docker-mcp/session",
                "Type": "volume"
              }
            ],
            "NanoCpus": 500000000,
            "NetworkMode": "none",
            "PidsLimit": 128,
            "ReadonlyRootfs": true,
            "Runtime": "runsc",
            "SecurityOpt": [
              "no-new-privileges"
            ],
            "Tmpfs": {
              "/app": "rw,nosuid,nodev,size=134217728,mode=0755,uid=1000,gid=1000",
              "/tmp": "rw,nosuid,nodev,size=134217728,mode=1777"
            }
          },
          "Image": "python-docker-mcp:latest",
          "Labels": {
            "python-docker-mcp.host": "h",
            "python-docker-mcp.instance": "0123456789abcdef0123456789abcdef",
            "python-docker-mcp.managed": "true",
            "python-docker-mcp.pid": "42",
            "python-docker-mcp.role": "sandbox"
          },
          "NetworkDisabled": true,
          "OpenStdin": true,
          "StdinOnce": true,
          "Tty": false,
          "User": "1000:1000",
          "WorkingDir": "/app"
        }"#;
    const INSTALLER_BEFORE: &str = r#"
        {
          "AttachStderr": true,
          "AttachStdin": false,
          "AttachStdout": true,
          "Cmd": [
            "true"
          ],
          "Env": [
            "HOME=/tmp",
            "PIP_NO_INPUT=1",
            "PIP_DISABLE_PIP_VERSION_CHECK=1",
            "UV_NATIVE_TLS=1",
            "PYTHONDONTWRITEBYTECODE=1"
          ],
          "HostConfig": {
            "AutoRemove": false,
            "CapDrop": [
              "ALL"
            ],
            "Init": true,
            "LogConfig": {
              "Type": "none"
            },
            "Memory": 536870912,
            "MemorySwap": 536870912,
            "Mounts": [
              {
                "ReadOnly": false,
                "Source": "target",
                "Target": "/target",
                "Type": "volume"
              },
              {
                "ReadOnly": false,
                "Source": "python-docker-mcp-cache",
                "Target": "/cache",
                "Type": "volume"
              }
            ],
            "NanoCpus": 1000000000,
            "NetworkMode": "bridge",
            "PidsLimit": 128,
            "ReadonlyRootfs": true,
            "SecurityOpt": [
              "no-new-privileges"
            ],
            "Tmpfs": {
              "/tmp": "rw,nosuid,nodev,size=536870912,mode=1777"
            }
          },
          "Image": "python-docker-mcp:latest",
          "Labels": {
            "python-docker-mcp.host": "h",
            "python-docker-mcp.instance": "0123456789abcdef0123456789abcdef",
            "python-docker-mcp.managed": "true",
            "python-docker-mcp.pid": "42",
            "python-docker-mcp.role": "installer",
            "python-docker-mcp.session": "s1"
          },
          "NetworkDisabled": false,
          "OpenStdin": false,
          "StdinOnce": false,
          "Tty": false,
          "User": "0:0",
          "WorkingDir": "/tmp"
        }"#;

    #[test]
    fn a_durable_sandbox_keeps_stdin_open_ends_itself_and_owns_an_unnamed_volume() {
        let config = Config::defaults();
        assert!(config.session.durable);
        let owner = fixed_owner();
        let spec = repl_spec(&config, &owner, "pdm-r".into(), "shared", "");
        let body = rendered(&spec, EngineKind::Docker);
        assert_eq!(body["StdinOnce"], false, "the next daemon attaches again");
        assert_eq!(body["OpenStdin"], true);
        assert_eq!(body["HostConfig"]["AutoRemove"], true);
        let env = body["Env"].as_array().unwrap();
        assert!(
            env.contains(&serde_json::json!("PDM_IDLE_EXIT=305")),
            "{env:?}"
        );
        let own = &body["HostConfig"]["Mounts"][1];
        assert_eq!(own["Target"], "/opt/python-docker-mcp/session");
        assert!(
            own.get("Source").is_none(),
            "unnamed: removed with the container"
        );
        assert_eq!(
            own["VolumeOptions"]["Labels"]["python-docker-mcp.role"],
            "sandbox"
        );
        assert_eq!(body["HostConfig"]["Mounts"][0]["Source"], "shared");
    }

    #[test]
    fn the_repl_and_installer_specs_render_the_same_request_as_before() {
        let mut config = Config::defaults();
        config.docker.runtime = Some("runsc".into());
        // Sessions that end with their daemon, as before durable sessions.
        config.session.durable = false;
        let owner = fixed_owner();
        let repl = repl_spec(&config, &owner, "pdm-r".into(), "shared", "own");
        let mut installer =
            installer_spec(&config, &owner, Some("s1"), "target", vec!["true".into()]);
        installer.name = "pdm-i".into();
        let before = |text: &str| -> serde_json::Value { serde_json::from_str(text).unwrap() };
        assert_eq!(rendered(&repl, EngineKind::Docker), before(REPL_BEFORE));
        assert_eq!(
            rendered(&installer, EngineKind::Docker),
            before(INSTALLER_BEFORE)
        );
        // Podman's request differs in the tmpfs options only.
        for (spec, tmpfs) in [
            (
                &repl,
                serde_json::json!({
                    "/app": "rw,nosuid,nodev,size=134217728,mode=0755,U,notmpcopyup",
                    "/tmp": "rw,nosuid,nodev,size=134217728,mode=1777,notmpcopyup",
                }),
            ),
            (
                &installer,
                serde_json::json!({"/tmp": "rw,nosuid,nodev,size=536870912,mode=1777,notmpcopyup"}),
            ),
        ] {
            let mut podman = rendered(spec, EngineKind::Podman);
            assert_eq!(podman["HostConfig"]["Tmpfs"], tmpfs);
            podman["HostConfig"]["Tmpfs"] =
                rendered(spec, EngineKind::Docker)["HostConfig"]["Tmpfs"].take();
            assert_eq!(podman, rendered(spec, EngineKind::Docker));
        }
    }

    #[test]
    fn the_host_config_says_in_dockers_words_what_the_spec_means() {
        let config = Config::defaults();
        let owner = fixed_owner();
        let repl = repl_spec(&config, &owner, "pdm-r".into(), "shared", "own");
        let body = container_body(&repl, EngineKind::Docker);
        let h = body.host_config.expect("a host config");
        assert_eq!(h.cap_drop, Some(vec!["ALL".to_string()]));
        assert_eq!(h.security_opt, Some(vec!["no-new-privileges".to_string()]));
        assert_eq!(h.readonly_rootfs, Some(true));
        assert_eq!(h.nano_cpus, Some(500_000_000));
        assert_eq!(h.memory, Some(256 * 1024 * 1024));
        assert_eq!(h.memory_swap, h.memory, "no swap");
        assert_eq!(h.pids_limit, Some(128));
        assert_eq!(h.network_mode.as_deref(), Some("none"));
        assert_eq!(body.network_disabled, Some(true));
        assert_eq!(h.log_config.and_then(|l| l.typ).as_deref(), Some("none"));
        assert_eq!(h.auto_remove, Some(true));
        assert_eq!(h.runtime, None);
        assert_eq!(
            h.tmpfs.expect("tmpfs")["/app"],
            "rw,nosuid,nodev,size=134217728,mode=0755,uid=1000,gid=1000"
        );
        assert_eq!(body.user.as_deref(), Some("1000:1000"));

        let installer = installer_spec(&config, &owner, None, "target", vec!["true".into()]);
        let body = container_body(&installer, EngineKind::Docker);
        let h = body.host_config.expect("a host config");
        assert_eq!(h.network_mode.as_deref(), Some("bridge"));
        assert_eq!(body.network_disabled, Some(false));
        assert_eq!(h.auto_remove, Some(false));
        assert_eq!(h.nano_cpus, Some(1_000_000_000));
        assert_eq!(h.memory, Some(512 * 1024 * 1024));
        assert_eq!(body.user.as_deref(), Some("0:0"));
    }

    #[test]
    fn outbound_traffic_joins_the_egress_network_when_one_is_named() {
        let mut config = Config::defaults();
        config.network.egress_network = Some("pdm-test-net".into());
        let installer = installer_spec(&config, &fixed_owner(), None, "t", vec!["true".into()]);
        let body = container_body(&installer, EngineKind::Docker);
        assert_eq!(body.network_disabled, Some(false));
        let mode = body.host_config.and_then(|h| h.network_mode);
        assert_eq!(mode.as_deref(), Some("pdm-test-net"));
    }

    #[test]
    fn the_egress_directory_is_a_read_only_bind_mount_in_a_sandbox_without_network() {
        let mut config = Config::defaults();
        config.network.allow = vec!["allowed.test".into()];
        config.network.egress_dir = "/home/u/.python-docker-mcp/egress".into();
        let repl = repl_spec(&config, &fixed_owner(), "pdm-r".into(), "shared", "own");
        let body = rendered(&repl, EngineKind::Docker);
        let mounts = body["HostConfig"]["Mounts"].as_array().unwrap();
        assert_eq!(
            mounts.last().unwrap(),
            &serde_json::json!({
                "Target": "/run/pdm-egress",
                "Source": "/home/u/.python-docker-mcp/egress",
                "Type": "bind",
                "ReadOnly": true,
            })
        );
        assert_eq!(body["HostConfig"]["NetworkMode"], "none");
        assert_eq!(body["NetworkDisabled"], true);
    }

    #[test]
    fn an_unknown_runtime_is_recognised_in_either_engines_words() {
        assert!(names_unknown_runtime(
            "unknown or invalid runtime name: no-such-runtime",
            "no-such-runtime"
        ));
        assert!(!names_unknown_runtime("no such image", "no-such-runtime"));
    }

    #[test]
    fn short_output_is_kept_whole() {
        assert_eq!(kept(4, 6, &[b"ab", b"cdef", b"gh"]), "abcdefgh");
        assert_eq!(kept(4, 6, &[]), "");
    }

    #[test]
    fn long_output_keeps_its_head_and_tail_and_counts_the_rest() {
        // 26 bytes in small chunks: 4 kept at the start, 6 at the end, 16 left out.
        let text = b"abcdefghijklmnopqrstuvwxyz";
        let chunks: Vec<&[u8]> = text.chunks(3).collect();
        assert_eq!(
            kept(4, 6, &chunks),
            "abcd\n[... 16 bytes left out ...]\nuvwxyz"
        );
        // The same text in one chunk, or in one byte at a time, gives the same result.
        assert_eq!(kept(4, 6, &[text]), kept(4, 6, &chunks));
        let bytes: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(kept(4, 6, &bytes), kept(4, 6, &chunks));
    }

    #[test]
    fn the_end_of_a_huge_pip_log_survives() {
        let mut h = HeadTail::new(RUN_HEAD, RUN_TAIL);
        h.push(b"Collecting numpy\n");
        for _ in 0..100_000 {
            h.push(b"  Downloading something ... 10%\n");
        }
        h.push(b"Successfully installed numpy-2.0\n");
        let out = h.finish();
        assert!(out.starts_with("Collecting numpy\n"));
        assert!(out.ends_with("Successfully installed numpy-2.0\n"));
        assert!(out.contains(" bytes left out ...]"));
        assert!(out.len() < RUN_HEAD + RUN_TAIL + 100);
    }

    #[test]
    fn the_oom_log_is_bounded_and_matches_full_ids_after_since() {
        let log = OomLog::default();
        let before = Instant::now();
        log.record("a".repeat(64));
        assert!(log.seen(&"a".repeat(64), before));
        assert!(
            !log.seen(&"a".repeat(12), before),
            "a short id is not the full id"
        );
        let later = Instant::now() + Duration::from_millis(1);
        assert!(!log.seen(&"a".repeat(64), later), "before since");
        for i in 0..OOM_REMEMBERED {
            log.record(format!("{i:064}"));
        }
        assert_eq!(log.kills.lock().unwrap().len(), OOM_REMEMBERED);
        assert!(
            !log.seen(&"a".repeat(64), before),
            "the oldest is forgotten"
        );
    }
}

#[cfg(test)]
mod docker_run_flags_tests {
    use super::*;

    #[test]
    fn the_flags_say_what_the_daemon_sends() {
        let flags = docker_run_flags(&Config::defaults());
        let line = flags.join(" ");
        for want in [
            "--network none",
            "--memory 268435456",
            "--memory-swap 268435456",
            "--cpus 0.5",
            "--pids-limit 128",
            "--cap-drop ALL",
            "--security-opt no-new-privileges",
            "--user 1000:1000",
            "--log-driver none",
            "--read-only",
            "--init",
            "--tmpfs /tmp:rw,nosuid,nodev,",
            "--tmpfs /app:rw,nosuid,nodev,",
        ] {
            assert!(line.contains(want), "{want} in {line}");
        }
    }

    #[test]
    fn the_flags_follow_the_config() {
        let mut config = Config::defaults();
        config.docker.network_disabled = false;
        config.docker.read_only = false;
        config.docker.cpu_limit = 1.5;
        let line = docker_run_flags(&config).join(" ");
        assert!(
            !line.contains("--read-only") && !line.contains("--tmpfs"),
            "{line}"
        );
        assert!(line.contains("--cpus 1.5"), "{line}");
        assert!(!line.contains("--network none"), "{line}");
    }
}
