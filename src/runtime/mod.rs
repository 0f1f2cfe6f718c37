//! The runtime seam: the one door between the daemon and whatever runs its sandboxes.
//!
//! The rest of the daemon describes a sandbox as a runtime-neutral [`SandboxSpec`]
//! (`crate::sandbox`) and hands it to a [`Backend`], an enum with one variant per engine:
//!
//! - [`docker::Docker`]: the Docker Engine API, spoken to Docker or to Podman's
//!   Docker-compatible service (`docker.rs`, the only module that uses bollard).
//! - [`kubernetes::Kubernetes`] (experimental): one Pod per sandbox in a Kubernetes cluster,
//!   the helper spoken to over `pods/attach` (`kubernetes.rs`, the only module that uses
//!   kube and k8s-openapi).
//! - `fake::Fake` (tests only): host subprocesses over pipes, for fast deterministic unit
//!   tests of the pool and engine logic (`fake.rs`); never a substitute for the real engine.
//!
//! An enum rather than boxed async trait objects: there are few backends, each is known at
//! compile time, and `match` keeps every call a plain `async fn` with no allocation. A new
//! backend is a new variant and one arm in each method below.
//!
//! What every backend shares lives here: the error enum ([`RuntimeError`], whose messages say
//! the fix), the attached streams of a started sandbox ([`Attached`], [`Output`]), the
//! bounded output of a run-to-completion ([`Finished`], [`HeadTail`]) and its one tail
//! ([`Backend::run_until_exit`]: each backend only says how a sandbox's exit code is read),
//! and what a sweep of a dead daemon's leftovers found ([`Swept`]). Which backend serves is chosen once, from
//! `runtime.backend`, by [`Backend::from_config`]. The orphan policy (which leftovers
//! belong to a daemon that is gone) is each backend's own: on Docker, the host and pid
//! labels (`docker::Docker::sweep_orphans`); on Kubernetes, owner references to the
//! daemon's own Pod, else the same labels (`kubernetes::Kubernetes::sweep_orphans`).

pub mod docker;
#[cfg(test)]
pub mod fake;
pub mod kubernetes;

use std::collections::{BTreeMap, VecDeque};
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::Stream;
use tokio::io::AsyncWrite;

use crate::config::{BackendKind, Config};
use crate::sandbox::{Owner, SandboxSpec};
use docker::Docker;
use kubernetes::Kubernetes;

/// What failed when talking to the engine that runs the sandboxes.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No engine answers at the configured address. `engine` is the one expected there
    /// (`Docker`, or `Podman` for a Podman socket).
    #[error(
        "{engine} is not reachable at {host}: {reason}. Is the engine running? Start it \
         (for example `systemctl start docker`, `podman system service`, or \
         `scripts/ensure-docker.sh` from the python-docker-mcp repository), or point \
         DOCKER_HOST at it"
    )]
    Unreachable {
        engine: &'static str,
        host: String,
        reason: String,
    },
    /// The sandbox image is not present locally.
    #[error(
        "the sandbox image `{image}` is not present on this engine. Build it with \
         `python-docker-mcp image build --tag {image}` (on a machine that cannot pull \
         python:3.12-slim, add `--base IMAGE` naming a local image that has python3; a browser \
         profile's image: `python-docker-mcp image build --browser --tag {image}`), or set \
         docker.image / PYTHON_DOCKER_MCP_IMAGE (or the profile's image) to an image that has \
         python3. For Podman, \
         copy it from Docker with `docker save {image} | podman load`"
    )]
    ImageMissing { image: String },
    /// An image build stopped: the engine's own words (a failed `RUN`, a base it could not
    /// pull).
    #[error("building the image `{tag}` failed: {message}")]
    BuildFailed { tag: String, message: String },
    /// The engine knows no OCI runtime by the name `docker.runtime` gives.
    #[error(
        "{engine} has no OCI runtime named `{runtime}` (set by docker.runtime / \
         PYTHON_DOCKER_MCP_RUNTIME): {message}. Register the runtime with the engine (for \
         gVisor: install runsc and add it under \"runtimes\" in /etc/docker/daemon.json, then \
         reload dockerd with SIGHUP), or unset docker.runtime to use the engine's default"
    )]
    UnknownRuntime {
        engine: &'static str,
        runtime: String,
        message: String,
    },
    /// Podman's Docker-compatible API ignores the runtime a client asks for (the container
    /// would silently run with Podman's default): refused rather than pretended.
    #[error(
        "Podman ignores the OCI runtime a Docker API client asks for, so docker.runtime = \
         `{runtime}` (PYTHON_DOCKER_MCP_RUNTIME) cannot be honoured. Unset docker.runtime; to \
         run every Podman container under {runtime}, make it Podman's default instead \
         (`runtime = \"{runtime}\"` under [engine] in containers.conf)"
    )]
    RuntimeIgnored { runtime: String },
    /// Any other refusal by the engine, named (`Docker`, `Podman`).
    #[error("{engine} refused to {op}: {message}")]
    Api {
        engine: &'static str,
        op: &'static str,
        message: String,
    },
    /// Another container already has this name: a slot of the host pool that another
    /// daemon filled first. Not a failure of the engine.
    #[error("a container called `{name}` exists already")]
    NameInUse { name: String },
    /// A container did not finish in time.
    #[error("container did not finish within {0:?}")]
    Timeout(Duration),
    /// No Kubernetes API server could be reached, or no client configuration was found.
    #[error(
        "the Kubernetes API server is not reachable: {reason}. Point KUBECONFIG at a \
         kubeconfig for the cluster (or run the daemon in a pod with a service account), \
         and check that `kubectl get pods` answers with it"
    )]
    KubeUnreachable { reason: String },
    /// The cluster's RBAC refused the daemon's identity an operation.
    #[error(
        "Kubernetes refused to {op} in namespace `{namespace}`: {message}. Grant the \
         daemon's identity a Role in `{namespace}` with these verbs: pods: create, get, list, \
         patch, delete; pods/attach: create, get; persistentvolumeclaims: create, get, list, \
         delete; networkpolicies (networking.k8s.io): create, get, update (README, \
         \"Kubernetes (experimental)\", has the manifest)"
    )]
    Forbidden {
        op: &'static str,
        namespace: String,
        message: String,
    },
    /// The namespace the backend works in does not exist.
    #[error(
        "Kubernetes has no namespace `{namespace}`: create it (`kubectl create namespace \
         {namespace}`) or set kubernetes.namespace / PYTHON_DOCKER_MCP_K8S_NAMESPACE to one \
         that exists"
    )]
    NoNamespace { namespace: String },
    /// The cluster's nodes could not get the sandbox image.
    #[error(
        "the cluster could not pull the sandbox image `{image}` ({reason}: {message}). No \
         registry? Load the image into the nodes (kind: `kind load docker-image {image}`; \
         minikube: `minikube image load {image}`), or push it to a registry the nodes can \
         pull from and set docker.image / PYTHON_DOCKER_MCP_IMAGE to that name"
    )]
    ImageUnavailable {
        image: String,
        reason: String,
        message: String,
    },
    /// Egress allow-lists need a host directory shared by the proxy and every sandbox,
    /// which a pod cannot mount.
    #[error(
        "egress allow-lists (network.allow / PYTHON_DOCKER_MCP_NETWORK_ALLOW) are not \
         available on the Kubernetes backend yet: sandboxes there cannot share the egress \
         proxy's socket. Empty network.allow to run sandboxes without a network, or use the \
         docker backend (Docker or Podman)"
    )]
    EgressUnsupported,
    /// A pod did not reach Running: unschedulable, a volume that never bound, a
    /// RuntimeClass the cluster does not have, or it ended before it could be attached.
    #[error(
        "the sandbox pod `{pod}` did not start: {why}. `kubectl describe pod {pod}` shows \
         the cluster's events"
    )]
    PodNotRunning { pod: String, why: String },
}

/// Which engine runs the sandboxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    Docker,
    /// Podman's Docker-compatible service (`podman system service`).
    Podman,
    /// A Kubernetes API server.
    Kubernetes,
}

impl EngineKind {
    /// The name messages use: "Podman refused to create a container: ...".
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Docker => "Docker",
            EngineKind::Podman => "Podman",
            EngineKind::Kubernetes => "Kubernetes",
        }
    }
}

/// The engine that answered, read once from its version endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineInfo {
    pub kind: EngineKind,
    /// The engine's own version (Podman's, not the API version it emulates).
    pub version: String,
}

impl std::fmt::Display for EngineInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind.name(), self.version)
    }
}

/// A chunk of container output.
#[derive(Debug)]
pub enum Output {
    Stdout(Bytes),
    Stderr(Bytes),
}

/// A started container with its stdin and stdout/stderr attached.
pub struct Attached {
    pub id: String,
    pub name: String,
    pub input: Pin<Box<dyn AsyncWrite + Send>>,
    pub output: Pin<Box<dyn Stream<Item = Output> + Send>>,
}

/// What a run-to-completion container left behind.
#[derive(Debug)]
pub struct Finished {
    pub exit_code: i64,
    pub stdout: String,
    pub stderr: String,
}

/// What a run-to-completion container may leave in memory, per stream: its first
/// `RUN_HEAD` bytes (the command and its first complaints) and its last `RUN_TAIL` bytes
/// (pip's failure summary and its "Successfully installed" line are at the end). What lies
/// between is counted and replaced by one line saying how much was left out.
pub const RUN_HEAD: usize = 16 * 1024;
pub const RUN_TAIL: usize = 48 * 1024;

/// Output kept from one stream: the first `head` bytes, the last `tail` bytes, and a count
/// of what was dropped between them. Memory stays bounded whatever the container writes.
pub(crate) struct HeadTail {
    head: Vec<u8>,
    head_max: usize,
    tail: VecDeque<u8>,
    tail_max: usize,
    left_out: u64,
}

impl HeadTail {
    pub(crate) fn new(head_max: usize, tail_max: usize) -> HeadTail {
        HeadTail {
            head: Vec::new(),
            head_max,
            tail: VecDeque::new(),
            tail_max,
            left_out: 0,
        }
    }

    pub(crate) fn push(&mut self, chunk: &[u8]) {
        let to_head = self
            .head_max
            .saturating_sub(self.head.len())
            .min(chunk.len());
        self.head.extend_from_slice(&chunk[..to_head]);
        let mut rest = &chunk[to_head..];
        if rest.len() >= self.tail_max {
            // The chunk alone fills the tail: everything before its end goes.
            let skip = rest.len() - self.tail_max;
            self.left_out += (self.tail.len() + skip) as u64;
            self.tail.clear();
            rest = &rest[skip..];
        } else {
            let over = (self.tail.len() + rest.len()).saturating_sub(self.tail_max);
            self.tail.drain(..over);
            self.left_out += over as u64;
        }
        self.tail.extend(rest);
    }

    /// The kept text, with a line saying how much was left out (if anything was).
    pub(crate) fn finish(self) -> String {
        let mut out = String::from_utf8_lossy(&self.head).into_owned();
        if self.left_out > 0 {
            if !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(&format!("[... {} bytes left out ...]\n", self.left_out));
        }
        let tail: Vec<u8> = self.tail.into();
        out.push_str(&String::from_utf8_lossy(&tail));
        out
    }
}

/// Read a finished run's output to its end, keeping each stream's first [`RUN_HEAD`] and
/// last [`RUN_TAIL`] bytes (see [`HeadTail`]): (stdout, stderr). Memory stays bounded
/// whatever the sandbox writes.
pub(crate) async fn read_bounded(
    output: &mut Pin<Box<dyn Stream<Item = Output> + Send>>,
) -> (String, String) {
    use futures::StreamExt;
    let mut stdout = HeadTail::new(RUN_HEAD, RUN_TAIL);
    let mut stderr = HeadTail::new(RUN_HEAD, RUN_TAIL);
    while let Some(chunk) = output.next().await {
        match chunk {
            Output::Stdout(b) => stdout.push(&b),
            Output::Stderr(b) => stderr.push(&b),
        }
    }
    (stdout.finish(), stderr.finish())
}

/// What [`Backend::sweep_orphans`] found (and removed, unless it was a dry run).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Swept {
    pub containers: usize,
    pub volumes: usize,
    /// The containers' names (where the backend reports them).
    pub removed: Vec<String>,
}

/// What a sweep removes besides the orphans of dead daemons.
#[derive(Debug, Clone)]
pub struct Sweep<'a> {
    /// The daemon sweeping: sessions it holds are never expired by the sweep.
    pub holder: &'a crate::durable::Holder,
    /// `session.max_lifetime`: a durable session older than this goes, whoever holds it
    /// not alive.
    pub max_lifetime: Duration,
    /// A warm sandbox of the host pool (`pdm-w.`) older than this goes: `pool_max_age`
    /// plus the slack of its own timer.
    pub warm_max_age: Duration,
    /// Count, remove nothing.
    pub dry_run: bool,
    /// Everything any daemon of this host made, live or not (`cleanup --all`).
    pub all: bool,
}

/// A container found by name, with what the engine records of it.
#[derive(Debug, Clone)]
pub struct Named {
    pub id: String,
    pub name: String,
    /// Epoch seconds it was created.
    pub created: u64,
    pub running: bool,
    pub labels: std::collections::HashMap<String, String>,
}

/// Why a backend cannot do what durable sessions need.
#[derive(Debug, thiserror::Error)]
#[error("durable sessions are not implemented on {engine} yet (set session.durable: false)")]
pub struct NotDurable {
    pub engine: &'static str,
}

/// The engine that runs this daemon's sandboxes. Cheap to clone: every variant is a handle.
#[derive(Clone)]
pub enum Backend {
    /// Docker, or Podman through its Docker-compatible service, at `DOCKER_HOST`.
    Docker(Docker),
    /// A Kubernetes cluster (experimental).
    Kubernetes(Kubernetes),
    /// Host subprocesses standing in for sandboxes, for unit tests (`fake.rs`).
    #[cfg(test)]
    Fake(fake::Fake),
}

/// Run `$body` with `$b` bound to the backend inside whichever variant `$self` is.
macro_rules! each {
    ($self:expr, $b:ident => $body:expr) => {
        match $self {
            Backend::Docker($b) => $body,
            Backend::Kubernetes($b) => $body,
            #[cfg(test)]
            Backend::Fake($b) => $body,
        }
    };
}

impl Backend {
    /// The backend `runtime.backend` names. Nothing is contacted yet: every backend connects
    /// on first use, so the daemon starts and answers even while its engine is down.
    pub fn from_config(config: &Config) -> Backend {
        match config.runtime.backend {
            BackendKind::Docker => Backend::Docker(Docker::new()),
            BackendKind::Kubernetes => Backend::Kubernetes(Kubernetes::new(config)),
        }
    }

    /// Which engine answers, and its version; connects if needed.
    pub async fn engine(&self) -> Result<EngineInfo, RuntimeError> {
        each!(self, b => b.engine().await)
    }

    /// Check that the engine answers; returns its version.
    pub async fn ping(&self) -> Result<String, RuntimeError> {
        each!(self, b => b.ping().await)
    }

    /// The id of an image the engine has (part of the host pool's fingerprint: a tag
    /// moved to a new image makes new sandboxes). The name itself where the backend
    /// cannot tell.
    pub async fn image_id(&self, image: &str) -> Result<String, RuntimeError> {
        match self {
            Backend::Docker(d) => d.image_id(image).await,
            _ => Ok(image.to_string()),
        }
    }

    /// Whether the engine has this image.
    pub async fn image_present(&self, image: &str) -> Result<bool, RuntimeError> {
        each!(self, b => b.image_present(image).await)
    }

    /// Create and start a sandbox with its stdin and output attached before it starts, so
    /// nothing it writes is lost.
    pub async fn start_attached(&self, spec: &SandboxSpec) -> Result<Attached, RuntimeError> {
        each!(self, b => b.start_attached(spec).await)
    }

    /// Mark a warm sandbox as taken by `session`, so any replica of the daemon can find the
    /// session's sandbox by label. Kubernetes relabels the pod; Docker cannot change a
    /// container's labels and has only one daemon per sandbox, so it does nothing there.
    /// Failures are logged: the session works without the label.
    pub async fn claim(&self, id: &str, session: &str) {
        match self {
            Backend::Docker(_) => {}
            Backend::Kubernetes(k) => k.claim(id, session).await,
            #[cfg(test)]
            Backend::Fake(_) => {}
        }
    }

    /// Remove a sandbox, running or not; already gone is fine. Failures are logged.
    pub async fn remove(&self, id: &str) {
        each!(self, b => b.remove(id).await)
    }

    /// Run a sandbox to completion and remove it; output kept to its head and tail.
    pub async fn run_to_completion(
        &self,
        spec: &SandboxSpec,
        timeout: Duration,
    ) -> Result<Finished, RuntimeError> {
        let (finished, id) = self.run_until_exit(spec, timeout).await?;
        self.remove(&id).await;
        Ok(finished)
    }

    /// [`Backend::run_to_completion`], except that a sandbox that exited is left for the
    /// caller to remove (its id comes back), so the removal can happen off the reply path.
    /// On a time-out or an error it is removed before this returns.
    ///
    /// The one "run until exit" tail for every backend: start attached, read the output to
    /// its end (bounded, [`read_bounded`]), then ask the backend for the exit code. The
    /// time-out covers all of it, the start included.
    pub async fn run_until_exit(
        &self,
        spec: &SandboxSpec,
        timeout: Duration,
    ) -> Result<(Finished, String), RuntimeError> {
        // Set once the sandbox exists, so a time-out at any later step removes it by id.
        let mut started: Option<String> = None;
        let run = async {
            let mut attached = self.start_attached(spec).await?;
            let id = attached.id.clone();
            started = Some(id.clone());
            let (stdout, stderr) = read_bounded(&mut attached.output).await;
            let exit_code = each!(self, b => b.exit_code(&id).await)?;
            Ok((
                Finished {
                    exit_code,
                    stdout,
                    stderr,
                },
                id,
            ))
        };
        let result = tokio::time::timeout(timeout, run).await;
        let leftover = match (&result, started) {
            (Ok(Ok(_)), _) => None,
            (_, Some(id)) => Some(id),
            // It never started: `start_attached` removed what it made.
            (Ok(Err(_)), None) => None,
            // The time-out came during the start: the name is known before the sandbox
            // exists, and every engine removes by name too.
            (Err(_), None) => Some(spec.name.clone()),
        };
        if let Some(id) = leftover {
            self.remove(&id).await;
        }
        result.unwrap_or(Err(RuntimeError::Timeout(timeout)))
    }

    /// Create a labelled volume (idempotent).
    pub async fn create_volume(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), RuntimeError> {
        each!(self, b => b.create_volume(name, labels).await)
    }

    /// Whether a volume by this name exists.
    pub async fn volume_exists(&self, name: &str) -> Result<bool, RuntimeError> {
        match self {
            Backend::Docker(d) => d.volume_exists(name).await,
            _ => Ok(false),
        }
    }

    /// Remove a volume; already gone is fine.
    pub async fn remove_volume(&self, name: &str) {
        each!(self, b => b.remove_volume(name).await)
    }

    /// Whether the engine reported that this sandbox was killed for its memory at or after
    /// `since`, waiting up to `within` for the report.
    pub async fn oom_killed(&self, id: &str, since: Instant, within: Duration) -> bool {
        each!(self, b => b.oom_killed(id, since, within).await)
    }

    /// Remove every sandbox and volume of one daemon instance; returns how many sandboxes.
    /// `keep`: containers (by id) and volumes (by name) that stay: durable sessions. A
    /// container the instance made that now belongs to no daemon or to another (a warm
    /// sandbox of the host pool, a session, a sandbox another daemon claimed; see
    /// [`crate::durable::claimed_by_other`]) stays too.
    pub async fn remove_instance(
        &self,
        instance: &str,
        keep: &std::collections::HashSet<String>,
    ) -> Result<usize, RuntimeError> {
        match self {
            Backend::Docker(d) => d.remove_instance(instance, keep).await,
            Backend::Kubernetes(k) => k.remove_instance(instance, keep).await,
            #[cfg(test)]
            Backend::Fake(f) => f.remove_instance(instance).await,
        }
    }

    /// Find the leftovers of daemons that are gone, by this backend's orphan policy, and
    /// remove them unless `dry_run`.
    pub async fn sweep_orphans(
        &self,
        me: &Owner,
        sweep: &Sweep<'_>,
    ) -> Result<Swept, RuntimeError> {
        match self {
            Backend::Docker(d) => d.sweep_orphans(me, sweep).await,
            Backend::Kubernetes(k) => k.sweep_orphans(me, sweep).await,
            #[cfg(test)]
            Backend::Fake(f) => f.sweep_orphans(me, sweep.dry_run).await,
        }
    }

    /// Whether sandboxes on this backend can outlive the daemon and be adopted (the
    /// methods below): Docker and Podman (the container's name is the record, renamed
    /// atomically), and Kubernetes (an annotation is the record, patched with a
    /// `resourceVersion` precondition; tested against a mocked API only, SCALING.md).
    pub fn durable(&self) -> Result<(), NotDurable> {
        match self {
            Backend::Docker(_) | Backend::Kubernetes(_) => Ok(()),
            #[cfg(test)]
            Backend::Fake(_) => Err(NotDurable {
                engine: "the fake backend",
            }),
        }
    }

    /// Whether a volume the engine makes for a container (unnamed) starts owned by root
    /// and goes with the container: Docker. Podman gives an empty volume to the first
    /// container's user and ignores the owner a mount asks for, so a durable sandbox gets
    /// a named volume there (removed by its session's end or a sweep, not by itself).
    pub async fn unnamed_volumes(&self) -> bool {
        match self {
            Backend::Docker(d) => d.engine().await.is_ok_and(|e| e.kind == EngineKind::Docker),
            _ => false,
        }
    }

    /// Attach again to a running durable sandbox.
    pub async fn attach(&self, id: &str, name: &str) -> Result<Attached, RuntimeError> {
        match self {
            Backend::Docker(d) => d.attach(id, name).await,
            Backend::Kubernetes(k) => k.attach(id, name).await,
            #[cfg(test)]
            Backend::Fake(_) => Err(self.not_durable()),
        }
    }

    /// Rename the container called `from` to `to`, atomically: the claim. `Ok(false)`:
    /// nothing is called `from` any more (another daemon claimed it, or it is gone).
    /// [`RuntimeError::NameInUse`]: something is called `to` already. On Kubernetes the
    /// "name" is the pod's record annotation, patched with a `resourceVersion`
    /// precondition (`kubernetes::rename_patch`). Docker's rename alone does not decide a
    /// race for a warm sandbox (see `pool::host`).
    pub async fn rename(&self, from: &str, to: &str) -> Result<bool, RuntimeError> {
        match self {
            Backend::Docker(d) => d.rename(from, to).await,
            Backend::Kubernetes(k) => k.rename(from, to).await,
            #[cfg(test)]
            Backend::Fake(_) => Err(self.not_durable()),
        }
    }

    /// The volume mounted at `target` in container `id`, by name (on Kubernetes: the
    /// PersistentVolumeClaim; `None` for an `emptyDir`).
    pub async fn volume_at(&self, id: &str, target: &str) -> Result<Option<String>, RuntimeError> {
        match self {
            Backend::Docker(d) => d.volume_at(id, target).await,
            Backend::Kubernetes(k) => k.volume_at(id, target).await,
            #[cfg(test)]
            Backend::Fake(_) => Ok(None),
        }
    }

    /// Managed containers whose name (on Kubernetes: record) contains `part`.
    pub async fn named(&self, part: &str) -> Result<Vec<Named>, RuntimeError> {
        match self {
            Backend::Docker(d) => d.named(part).await,
            Backend::Kubernetes(k) => k.named(part).await,
            #[cfg(test)]
            Backend::Fake(_) => Ok(Vec::new()),
        }
    }

    #[cfg(test)]
    fn not_durable(&self) -> RuntimeError {
        let e = self
            .durable()
            .expect_err("only called where durable() errs");
        RuntimeError::Api {
            engine: e.engine,
            op: "adopt a durable session",
            message: e.to_string(),
        }
    }

    /// Stop background work (watchers). Dropping the last handle does the same.
    pub fn close(&self) {
        each!(self, b => b.close())
    }
}
