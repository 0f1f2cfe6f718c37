//! Configuration: defaults < YAML file < `PYTHON_DOCKER_MCP_*` environment < command-line flags.
//!
//! Every setting is one row of [`KEYS`]: a constant named by its environment variable, with
//! its dotted path in the YAML file (the original's names), its kind, its default and what
//! it means. The path is written there only: each section reads its keys through the
//! constants (`DockerConfig::parse`), and a profile's keys are the `docker.*` constants it
//! may override ([`PROFILE_KEYS`]). [`resolve`] is a pure
//! function over the layers, so tests feed it maps instead of touching the process
//! environment. The result remembers where each value came from ([`Config::describe`]).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Prefix of every environment variable the daemon reads.
pub const ENV_PREFIX: &str = "PYTHON_DOCKER_MCP_";

/// Environment variables with the prefix that are not settings but are still ours.
const ENV_NOT_SETTINGS: &[&str] = &["CONFIG", "LOG", "DEBUG"];

/// The shape a value must have.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Str,
    OptStr,
    Bool,
    Int {
        min: u64,
        max: u64,
    },
    /// A whole number, or null for a default computed from other settings.
    OptInt {
        min: u64,
        max: u64,
    },
    /// An IP address and port, such as `127.0.0.1:8002` or `[::1]:8002`, or null.
    OptAddr,
    Float {
        min: f64,
        max: f64,
    },
    /// Seconds as an integer, or a humantime string such as `"30s"` or `"5m"`.
    Duration,
    /// Bytes, in Docker's notation: `"256m"`, `"1g"`, `"512k"` or a plain number of bytes.
    Bytes {
        min: u64,
        max: u64,
    },
    /// A size as for `Bytes`, or null for the engine's default.
    OptBytes {
        min: u64,
    },
    /// A YAML list, or a comma-separated string in the environment.
    List,
    /// `profiles`: a mapping of profile names to partial profiles (YAML or JSON text in
    /// the environment). See `profile.rs`.
    Profiles,
    Choice(&'static [&'static str]),
}

impl Kind {
    fn expected(&self) -> String {
        match self {
            Kind::Str => "a string".into(),
            Kind::OptStr => "a string (or null)".into(),
            Kind::Bool => "true or false".into(),
            Kind::Int { min, max } => format!("a whole number from {min} to {max}"),
            Kind::OptInt { min, max } => {
                format!("a whole number from {min} to {max} (or null for the default)")
            }
            Kind::OptAddr => {
                "an IP address and port such as 127.0.0.1:8002 or \"[::1]:8002\" (or null)".into()
            }
            Kind::Float { min, max } => format!("a number from {min} to {max}"),
            Kind::Duration => {
                "a duration: seconds (30) or a string such as \"30s\" or \"5m\"".into()
            }
            Kind::Bytes { min, max: NO_MAX } => {
                format!(
                    "a size such as \"256m\" or \"1g\" (at least {})",
                    human_bytes(*min)
                )
            }
            Kind::Bytes { min, max } => {
                format!(
                    "a size such as \"256k\" or \"1m\" (from {} to {})",
                    human_bytes(*min),
                    human_bytes(*max)
                )
            }
            Kind::OptBytes { min } => format!(
                "a size such as \"256m\" or \"1g\" (at least {}), or null for the engine's default",
                human_bytes(*min)
            ),
            Kind::List => "a list of strings (comma-separated in the environment)".into(),
            Kind::Profiles => format!(
                "a mapping from profile names to settings, e.g. {{browser: {{image: \
                 python-docker-mcp:browser, memory_limit: 1g}}}}; a profile may set {}",
                profile_key_names()
            ),
            Kind::Choice(c) => format!("one of: {}", c.join(", ")),
        }
    }
}

/// One setting.
struct Key {
    /// Dotted path in the YAML file, e.g. `docker.image`.
    path: &'static str,
    /// Environment variable suffix after [`ENV_PREFIX`].
    env: &'static str,
    kind: Kind,
    /// Default in YAML notation.
    default: &'static str,
    doc: &'static str,
}

/// Defines one constant per setting, named by its environment variable (whose text it
/// also becomes), and [`KEYS`], the table of them in order.
macro_rules! keys {
    ($($env:ident { path: $path:literal, kind: $kind:expr, default: $default:literal, doc: $doc:literal $(,)? })*) => {
        $(
            #[doc = $doc]
            const $env: Key = Key { path: $path, env: stringify!($env), kind: $kind, default: $default, doc: $doc };
        )*
        /// Every setting the daemon knows, in the order `config` prints them.
        /// `config.example.yaml` mirrors this table.
        const KEYS: &[Key] = &[$($env),*];
    };
}

const MIB: u64 = 1024 * 1024;
/// No upper bound on a size.
const NO_MAX: u64 = u64::MAX;

// Every setting the daemon knows, one row each: the constant is named by its environment
// variable (after [`ENV_PREFIX`]), and its path is written here and nowhere else: the
// sections below read their values through these constants.
keys! {
    BACKEND { path: "runtime.backend", kind: Kind::Choice(&["docker", "kubernetes"]), default: "docker",
          doc: "What runs the sandboxes: docker is the Docker Engine API at DOCKER_HOST, served by Docker or by Podman (`podman system service`); kubernetes (experimental) runs each sandbox as a Pod in the cluster KUBECONFIG names (or the one the daemon runs in)" }
    K8S_NAMESPACE { path: "kubernetes.namespace", kind: Kind::OptStr, default: "null",
          doc: "Namespace the sandbox pods, their volumes and network policies live in; null means the kubeconfig context's namespace, the daemon's own namespace in a cluster, or default" }
    K8S_RUNTIME_CLASS { path: "kubernetes.runtime_class", kind: Kind::OptStr, default: "null",
          doc: "RuntimeClass the sandbox pods run with (e.g. gvisor), the Kubernetes counterpart of docker.runtime; installer pods use the cluster's default. null means the cluster's default" }
    K8S_EPHEMERAL_STORAGE { path: "kubernetes.ephemeral_storage", kind: Kind::Bytes { min: MIB, max: NO_MAX }, default: "1g",
          doc: "Node disk each pod may use besides its volumes (container writes, logs), requested and limited" }
    K8S_VOLUME_SIZE { path: "kubernetes.volume_size", kind: Kind::Bytes { min: MIB, max: NO_MAX }, default: "1g",
          doc: "Storage requested by each package volume (PersistentVolumeClaim)" }
    K8S_STORAGE_CLASS { path: "kubernetes.storage_class", kind: Kind::OptStr, default: "null",
          doc: "StorageClass of the package volumes; null means the cluster's default class" }
    K8S_VOLUME_ACCESS { path: "kubernetes.volume_access", kind: Kind::Choice(&["ReadWriteOnce", "ReadWriteMany"]), default: "ReadWriteOnce",
          doc: "Access mode of the package volumes: ReadWriteOnce suits a single-node cluster; with several nodes, pods that share a volume may land on different nodes, which needs ReadWriteMany (and a storage class that offers it)" }
    IMAGE { path: "docker.image", kind: Kind::Str, default: "python-docker-mcp:latest",
          doc: "Image the sandboxes run; any image with python3 on its PATH works" }
    WORKING_DIR { path: "docker.working_dir", kind: Kind::Str, default: "/app",
          doc: "Working directory of the code inside the sandbox" }
    MEMORY_LIMIT { path: "docker.memory_limit", kind: Kind::Bytes { min: 6 * MIB, max: NO_MAX }, default: "256m",
          doc: "Memory limit per sandbox (no swap beyond it)" }
    CPU_LIMIT { path: "docker.cpu_limit", kind: Kind::Float { min: 0.01, max: 1024.0 }, default: "0.5",
          doc: "CPUs per sandbox" }
    PIDS_LIMIT { path: "docker.pids_limit", kind: Kind::Int { min: 8, max: 1_000_000 }, default: "128",
          doc: "Maximum processes and threads per sandbox (stops fork bombs)" }
    TIMEOUT { path: "docker.timeout", kind: Kind::Duration, default: "30s",
          doc: "How long one execution may run before it is interrupted, unless the call asks for its own `timeout`" }
    MAX_TIMEOUT { path: "docker.max_timeout", kind: Kind::Duration, default: "30m",
          doc: "The longest `timeout` a call to execute-transient or execute-persistent may ask for; a longer one is refused with this cap named" }
    NETWORK_DISABLED { path: "docker.network_disabled", kind: Kind::Bool, default: "true",
          doc: "Sandboxes have no network at all (installs still work: they run in a separate installer container)" }
    READ_ONLY { path: "docker.read_only", kind: Kind::Bool, default: "true",
          doc: "Read-only root filesystem; /tmp and the working directory are writable tmpfs" }
    TMPFS_SIZE { path: "docker.tmpfs_size", kind: Kind::Bytes { min: MIB, max: NO_MAX }, default: "128m",
          doc: "Size of each writable tmpfs (/tmp, working directory) when read_only is on; counts against memory" }
    SHM_SIZE { path: "docker.shm_size", kind: Kind::OptBytes { min: MIB }, default: "null",
          doc: "Size of /dev/shm (a tmpfs; counts against memory); browsers want more than the 64m engines give. null means the engine's default" }
    USER { path: "docker.user", kind: Kind::Str, default: "'1000:1000'",
          doc: "Numeric uid:gid the code runs as (a lone uid is also the gid); never root" }
    RUNTIME { path: "docker.runtime", kind: Kind::OptStr, default: "null",
          doc: "OCI runtime the engine runs sandboxes with, e.g. runsc for gVisor (a user-space kernel between the code and the host); it must be registered with the engine (under Podman, make it Podman's default instead). null means the engine's default" }
    OUTPUT_LIMIT { path: "docker.output_limit", kind: Kind::Bytes { min: 1024, max: 4 * MIB }, default: "256k",
          doc: "Cap on stdout and on stderr returned per call, at most 4m (a reply must fit the protocol's 16 MiB frame); the rest is dropped with a marker" }
    FILE_LIMIT { path: "docker.file_limit", kind: Kind::Bytes { min: 1024, max: 1024 * MIB }, default: "16m",
          doc: "Largest file upload-file, download-file and resources/read move, and the total a transient run returns embedded; larger ones are refused with this limit named" }
    POOL_ENABLED { path: "docker.pool_enabled", kind: Kind::Bool, default: "true",
          doc: "Keep warm sandboxes ready so a call never waits for a container start" }
    POOL_SIZE { path: "docker.pool_size", kind: Kind::Int { min: 0, max: 1024 }, default: "32",
          doc: "Warm containers to keep ready" }
    POOL_MAX_AGE { path: "docker.pool_max_age", kind: Kind::Duration, default: "300s",
          doc: "Age after which a warm container is replaced" }
    MAX_CONCURRENT_CREATIONS { path: "docker.max_concurrent_creations", kind: Kind::Int { min: 1, max: 256 }, default: "5",
          doc: "Containers being created at once, at most, for waiting calls (the background refill makes one at a time)" }
    POOL_WAIT_TIMEOUT { path: "docker.pool_wait_timeout", kind: Kind::Duration, default: "60s",
          doc: "How long a call waits for a sandbox when none is ready before it fails" }
    WARM_IMPORTS { path: "docker.warm_imports", kind: Kind::List, default: "[]",
          doc: "Modules every sandbox imports before it is handed out, e.g. [numpy, pandas]" }
    SESSION_IDLE_TIMEOUT { path: "session.idle_timeout", kind: Kind::Duration, default: "30m",
          doc: "A session nobody has used for this long is ended and its sandbox removed" }
    MAX_SESSIONS { path: "session.max_sessions", kind: Kind::Int { min: 1, max: 10_000 }, default: "32",
          doc: "Live sessions at most; creating one more is refused with a clear message" }
    MAX_SESSIONS_PER_CLIENT { path: "session.max_sessions_per_client", kind: Kind::OptInt { min: 1, max: 10_000 }, default: "null",
          doc: "Live sessions one client may hold at most; null means a quarter of session.max_sessions (at least 1) when a tokens file names several clients, else all of session.max_sessions" }
    SESSION_DURABLE { path: "session.durable", kind: Kind::Bool, default: "true",
          doc: "Sessions outlive the daemon: left running at exit (and after a crash), adopted by the next daemon of the same owner when a call names them; false removes them at exit" }
    SESSION_SCOPE { path: "session.scope", kind: Kind::Str, default: "default",
          doc: "Part of a session's owner with the OS user (and, over HTTP, the client): a daemon adopts only sessions of its own scope" }
    SESSION_MAX_LIFETIME { path: "session.max_lifetime", kind: Kind::Duration, default: "24h",
          doc: "A session is removed this long after it started, however busy (the engine-side backstop enforces it even when the sandbox's own timer was tampered with)" }
    INSTALLER { path: "package.installer", kind: Kind::Choice(&["pip", "uv"]), default: "uv",
          doc: "Installer run in the installer container: uv when the image has it, pip otherwise (the result says which ran)" }
    INDEX_URL { path: "package.index_url", kind: Kind::OptStr, default: "null",
          doc: "Package index URL (pip --index-url); null means the installer's default" }
    EXTRA_INDEX_URL { path: "package.extra_index_url", kind: Kind::List, default: "[]",
          doc: "Extra package index URLs (pip --extra-index-url); one string or a list" }
    TRUSTED_HOSTS { path: "package.trusted_hosts", kind: Kind::List, default: "[]",
          doc: "Hosts the installer trusts without TLS verification (pip --trusted-host)" }
    INSTALL_TIMEOUT { path: "package.timeout", kind: Kind::Duration, default: "60s",
          doc: "How long one install may take" }
    ONLY_BINARY { path: "package.only_binary", kind: Kind::Bool, default: "true",
          doc: "Install wheels only; building from source runs the package's code at install time" }
    EGRESS_NETWORK { path: "network.egress_network", kind: Kind::OptStr, default: "null",
          doc: "Engine network that outbound traffic uses: installers, and sandboxes when docker.network_disabled is off. null means the engine's default bridge. Docker and Podman only: on Kubernetes, outbound traffic uses the pod network" }
    NETWORK_ALLOW { path: "network.allow", kind: Kind::List, default: "[]",
          doc: "The operator's ceiling for per-run egress allow-lists: host patterns (example.com, *.example.com for subdomains only, host:port; no port means 80 and 443; IP addresses and CIDRs only when written out). A call's `network` list must stay within it. Empty: sandboxes have no network, as without this key. Non-empty: an egress proxy container runs on network.egress_network and every sandbox mounts its socket directory. Docker and Podman only" }
    NETWORK_ALLOW_PRIVATE { path: "network.allow_private", kind: Kind::List, default: "[]",
          doc: "CIDRs the egress proxy may connect to although they are private, loopback or link-local (e.g. a test network's subnet); otherwise a name that resolves into such a range is refused" }
    NETWORK_IDLE_TIMEOUT { path: "network.idle_timeout", kind: Kind::Duration, default: "60s",
          doc: "The egress proxy closes a tunnel or plain HTTP exchange through which no byte moved for this long (at least 1s)" }
    NETWORK_ASK { path: "network.ask", kind: Kind::Bool, default: "false",
          doc: "A host outside a session's list but matching network.askable may be approved by the user: the server asks the calling client through MCP elicitation (30 s; no answer or a client without elicitation: denied)" }
    NETWORK_ASKABLE { path: "network.askable", kind: Kind::List, default: "[]",
          doc: "Host patterns (same forms as network.allow, and each within it) the user may approve with network.ask" }
    HTTP { path: "server.http", kind: Kind::OptAddr, default: "null",
          doc: "Serve MCP over streamable HTTP at this address (path /mcp) instead of stdio, e.g. 127.0.0.1:8002; same as `serve --http ADDR`" }
    TOKENS_FILE { path: "server.tokens_file", kind: Kind::OptStr, default: "null",
          doc: "File of HTTP clients, one `NAME TOKEN` per line (`#` comments); every request then needs `Authorization: Bearer TOKEN`. Required off loopback" }
    METRICS_PUBLIC { path: "server.metrics_public", kind: Kind::Bool, default: "false",
          doc: "Serve GET /metrics (Prometheus text) without a bearer token, for a scraper on a trusted network; otherwise it needs a token like /mcp" }
    LEGACY_SSE { path: "server.legacy_sse", kind: Kind::Bool, default: "true",
          doc: "With server.http, also serve MCP's older HTTP+SSE transport (protocol 2024-11-05: GET /sse, then POST /messages?sessionId=...) for clients that speak only that; the same tokens, ownership and limits as /mcp" }
    DRAIN_TIMEOUT { path: "server.drain_timeout", kind: Kind::Duration, default: "30s",
          doc: "On SIGTERM or SIGINT, how long running executions and installs may go on finishing before they are interrupted (a second signal interrupts them at once); 0 interrupts at once" }
    MAX_MESSAGE { path: "server.max_message", kind: Kind::Bytes { min: MIB, max: 1024 * MIB }, default: "32m",
          doc: "The largest JSON-RPC message a client may send, over stdio (one line) or HTTP (one request body); a larger one is answered with an error naming this limit. The default fits a 16 MB file sent as base64" }
    TASK_AFTER { path: "server.task_after", kind: Kind::Duration, default: "5s",
          doc: "For clients that declare the MCP tasks extension: an execution or install not finished within this becomes a task (the call answers with a task id; poll tasks/get)" }
    TASK_TTL { path: "server.task_ttl", kind: Kind::Duration, default: "10m",
          doc: "How long a finished task's result is kept for tasks/get before it is freed (tasks do not survive a restart)" }
    ALLOWED_MODULES { path: "allowed_modules", kind: Kind::List, default: "[]",
          doc: "If not empty, user code may import only these top-level modules (a policy, not a security boundary: the container is)" }
    BLOCKED_MODULES { path: "blocked_modules", kind: Kind::List, default: "[]",
          doc: "Top-level modules user code may not import (a policy, not a security boundary: the container is)" }
    PROFILES { path: "profiles", kind: Kind::Profiles, default: "{}",
          doc: "Named sandbox profiles a call picks with `profile`, each a partial set of settings over the docker.* ones (the profile `default`): image, memory_limit, cpu_limit, pids_limit, tmpfs_size, shm_size, pool_size (a named profile keeps none warm unless set; its pool is made on first use), warm_imports, timeout. Example: {browser: {image: python-docker-mcp:browser, memory_limit: 1g, shm_size: 256m, pids_limit: 512, pool_size: 1}} (in the environment as YAML or JSON text)" }
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    File(PathBuf),
    Env(String),
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => write!(f, "default"),
            Source::File(p) => write!(f, "file {}", p.display()),
            Source::Env(v) if v.starts_with(ENV_PREFIX) => write!(f, "environment variable {v}"),
            Source::Env(v) => write!(f, "{v}"),
            Source::Flag(v) => write!(f, "command-line flag {v}"),
        }
    }
}

/// Why the configuration could not be loaded. Every message names the key and the source.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not YAML.
    #[error("config file {path} is not valid YAML: {message}")]
    Yaml { path: PathBuf, message: String },
    /// A key nobody knows.
    #[error("unknown setting `{key}` in {origin}{hint}")]
    UnknownKey {
        key: String,
        origin: Source,
        hint: String,
    },
    /// A value of the wrong shape or out of range.
    #[error("invalid value {value} for `{key}` in {origin}: expected {expected}")]
    Invalid {
        key: String,
        origin: Source,
        value: String,
        expected: String,
    },
}

/// Docker and sandbox settings (`docker.*`).
#[derive(Debug, Clone)]
pub struct DockerConfig {
    pub image: String,
    pub working_dir: String,
    pub memory_limit: u64,
    pub cpu_limit: f64,
    pub pids_limit: u64,
    pub timeout: Duration,
    /// The longest per-call `timeout` a call may ask for.
    pub max_timeout: Duration,
    pub network_disabled: bool,
    pub read_only: bool,
    pub tmpfs_size: u64,
    /// The size of `/dev/shm`; `None`: the engine's default.
    pub shm_size: Option<u64>,
    /// Who the code runs as, parsed from `docker.user` once; never root.
    pub user: UserIds,
    /// The OCI runtime sandboxes run with (`runsc` for gVisor); `None`: the engine's default.
    pub runtime: Option<String>,
    pub output_limit: u64,
    /// The largest file moved in or out (`upload-file`, `download-file`, `resources/read`),
    /// and the total of the files a transient run returns embedded.
    pub file_limit: u64,
    pub pool_enabled: bool,
    pub pool_size: u64,
    pub pool_max_age: Duration,
    pub max_concurrent_creations: u64,
    pub pool_wait_timeout: Duration,
    pub warm_imports: Vec<String>,
}

/// Session settings (`session.*`).
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub idle_timeout: Duration,
    pub max_sessions: u64,
    /// `None`: the default, see [`SessionConfig::per_client_limit`].
    pub max_sessions_per_client: Option<u64>,
    /// Sessions outlive the daemon and are adopted by the next one (see `durable.rs`).
    pub durable: bool,
    /// With the OS user and the client, who owns a session across daemons.
    pub scope: String,
    /// The hard end of a session, however busy.
    pub max_lifetime: Duration,
}

impl SessionConfig {
    /// The sessions one client may hold. Unset, it is a quarter of `max_sessions` (at
    /// least 1) when several clients share the daemon, and all of `max_sessions` when
    /// there is one client (stdio, loopback without tokens, a tokens file of one client),
    /// so a single client keeps every slot as before.
    pub fn per_client_limit(&self, several_clients: bool) -> u64 {
        match self.max_sessions_per_client {
            Some(n) => n,
            None if several_clients => default_per_client(self.max_sessions),
            None => self.max_sessions,
        }
    }
}

/// HTTP service settings (`server.*`).
#[derive(Debug, Clone, Default)]
pub struct ServerConfig {
    /// Serve streamable HTTP here instead of stdio.
    pub http: Option<std::net::SocketAddr>,
    /// The clients and their bearer tokens.
    pub tokens_file: Option<PathBuf>,
    /// `GET /metrics` needs no token.
    pub metrics_public: bool,
    /// Also serve the 2024-11-05 HTTP+SSE transport at `/sse` and `/messages`.
    pub legacy_sse: bool,
    /// How long a shutdown lets running calls finish before it interrupts them.
    pub drain_timeout: Duration,
    /// The largest message a client may send (stdio line, HTTP request body).
    pub max_message: u64,
    /// A run of a client that declares tasks becomes a task after this long.
    pub task_after: Duration,
    /// How long a finished task's result is kept.
    pub task_ttl: Duration,
}

/// `session.max_sessions_per_client` when it is not set and several clients share the
/// daemon: a quarter of the global limit, at least 1, so one client cannot take every slot.
pub fn default_per_client(max_sessions: u64) -> u64 {
    (max_sessions / 4).max(1)
}

/// Package installation settings (`package.*`).
#[derive(Debug, Clone)]
pub struct PackageConfig {
    pub installer: String,
    pub index_url: Option<String>,
    pub extra_index_urls: Vec<String>,
    pub trusted_hosts: Vec<String>,
    pub timeout: Duration,
    pub only_binary: bool,
}

/// `network.*`: where outbound traffic goes.
#[derive(Debug, Clone, Default)]
pub struct NetworkConfig {
    /// The engine network installers (and sandboxes with network) join; `None`: the
    /// engine's default bridge. Tests point it at a network they create, so an installer
    /// reaches only the hosts the test started.
    pub egress_network: Option<String>,
    /// The operator's ceiling for egress allow-lists (`network.allow`), as written; each
    /// one parses as a pattern (checked at load). Empty: no sandbox gets a network.
    pub allow: Vec<String>,
    /// CIDRs the proxy may reach although private (`network.allow_private`), as written;
    /// each one parses (checked at load).
    pub allow_private: Vec<String>,
    /// The proxy closes a connection idle this long (`network.idle_timeout`).
    pub idle_timeout: Duration,
    /// Hosts outside a list may be approved by the user (`network.ask`).
    pub ask: bool,
    /// What the user may approve (`network.askable`), each pattern within the ceiling.
    pub askable: Vec<String>,
    /// The host directory of the egress proxy's Unix socket (`~/.python-docker-mcp/egress`,
    /// from `HOME`; not a setting): sandboxes mount it read-only when `allow` is set.
    pub egress_dir: PathBuf,
}

/// `runtime.*`: what runs the sandboxes.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub backend: BackendKind,
}

/// `kubernetes.*`: settings of the Kubernetes backend (read only when it is chosen).
#[derive(Debug, Clone)]
pub struct KubernetesConfig {
    /// `None`: the kubeconfig context's namespace, or the service account's in a cluster.
    pub namespace: Option<String>,
    /// The RuntimeClass of sandbox pods; `None`: the cluster's default.
    pub runtime_class: Option<String>,
    /// Bytes of node disk per pod, requested and limited.
    pub ephemeral_storage: u64,
    /// Bytes requested by each package volume.
    pub volume_size: u64,
    /// StorageClass of the package volumes; `None`: the cluster's default.
    pub storage_class: Option<String>,
    /// `ReadWriteOnce` or `ReadWriteMany`.
    pub volume_access: String,
}

/// The engines a sandbox can run on (`runtime.backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// The Docker Engine API: Docker, or Podman's Docker-compatible service.
    Docker,
    /// A Kubernetes cluster: one Pod per sandbox (experimental).
    Kubernetes,
}

/// The effective configuration, loaded once at start-up.
#[derive(Debug, Clone)]
pub struct Config {
    pub runtime: RuntimeConfig,
    pub kubernetes: KubernetesConfig,
    pub docker: DockerConfig,
    pub session: SessionConfig,
    pub package: PackageConfig,
    pub network: NetworkConfig,
    pub server: ServerConfig,
    pub allowed_modules: Vec<String>,
    pub blocked_modules: Vec<String>,
    /// The named profiles (`profiles`), as the config gives them; see `profile.rs`.
    pub profiles: ProfileTable,
    /// The profile this configuration is for: `default`, or a name of `profiles` once
    /// [`Config::for_profile`] made it.
    pub profile: String,
    /// For each key, its value in YAML notation and where it came from.
    provenance: BTreeMap<&'static str, (String, Source)>,
}

/// The layers [`resolve`] merges, lowest first after the defaults.
#[derive(Debug, Default)]
pub struct Layers {
    /// The config file's path and text, if there is one.
    pub file: Option<(PathBuf, String)>,
    /// Environment variables (all of them; only `PYTHON_DOCKER_MCP_*` are read).
    pub env: HashMap<String, String>,
    /// Command-line overrides as (dotted key, value, flag name).
    pub flags: Vec<(String, String, String)>,
}

impl Layers {
    /// Read the real process environment and the config file it points to.
    pub fn from_process(config_flag: Option<&Path>) -> Result<Layers, ConfigError> {
        let env: HashMap<String, String> = std::env::vars().collect();
        let path = config_flag
            .map(Path::to_path_buf)
            .or_else(|| env.get("PYTHON_DOCKER_MCP_CONFIG").map(PathBuf::from))
            .or_else(|| {
                std::env::var_os("HOME").map(|h| {
                    PathBuf::from(h)
                        .join(".python-docker-mcp")
                        .join("config.yaml")
                })
            });
        let explicit = config_flag.is_some() || env.contains_key("PYTHON_DOCKER_MCP_CONFIG");
        let file = match path {
            Some(p) => match std::fs::read_to_string(&p) {
                Ok(text) => Some((p, text)),
                // The default location is optional; a file named explicitly is not.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => None,
                Err(e) => return Err(ConfigError::Read { path: p, source: e }),
            },
            None => None,
        };
        Ok(Layers {
            file,
            env,
            flags: Vec::new(),
        })
    }
}

/// The `docker.*` keys a profile may set (`profiles.NAME.image` overrides `docker.image`,
/// and takes its kind and range).
const PROFILE_KEYS: &[Key] = &[
    IMAGE,
    MEMORY_LIMIT,
    CPU_LIMIT,
    PIDS_LIMIT,
    TMPFS_SIZE,
    SHM_SIZE,
    POOL_SIZE,
    WARM_IMPORTS,
    TIMEOUT,
];

/// A profile key's name: its `docker.*` key's, without the section.
fn profile_key(key: &Key) -> &'static str {
    key.path.strip_prefix("docker.").unwrap_or(key.path)
}

/// `image, memory_limit, ...`: what a profile may set.
fn profile_key_names() -> String {
    PROFILE_KEYS
        .iter()
        .map(profile_key)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Each key's value in YAML notation and where it came from, by path.
type Chosen = BTreeMap<&'static str, (serde_norway::Value, Source)>;

/// Merge the layers and validate every value.
pub fn resolve(layers: &Layers) -> Result<Config, ConfigError> {
    let chosen = merge(layers)?;
    let mut p = Parsed {
        chosen: &chosen,
        provenance: BTreeMap::new(),
        profile: None,
    };
    let mut config = Config {
        runtime: RuntimeConfig::parse(&mut p)?,
        kubernetes: KubernetesConfig::parse(&mut p)?,
        docker: DockerConfig::parse(&mut p)?,
        session: SessionConfig::parse(&mut p)?,
        package: PackageConfig::parse(&mut p)?,
        network: NetworkConfig::parse(&mut p, &layers.env)?,
        server: ServerConfig::parse(&mut p)?,
        allowed_modules: p.list(&ALLOWED_MODULES)?,
        blocked_modules: p.list(&BLOCKED_MODULES)?,
        profiles: p.profiles(&PROFILES)?,
        profile: DEFAULT_PROFILE.into(),
        provenance: BTreeMap::new(),
    };
    check_names(&config, &p)?;
    check_egress(&config.network, &p)?;
    check_kubernetes_names(&config.kubernetes, &p)?;
    check_durations(&config, &p)?;
    config.provenance = p.provenance;
    Ok(config)
}

/// The defaults, then the file, the environment and the flags over them.
fn merge(layers: &Layers) -> Result<Chosen, ConfigError> {
    let mut chosen = Chosen::new();
    for key in KEYS {
        let v = serde_norway::from_str(key.default).expect("defaults are valid YAML");
        chosen.insert(key.path, (v, Source::Default));
    }
    if let Some((path, text)) = &layers.file {
        let source = Source::File(path.clone());
        let doc: serde_norway::Value =
            serde_norway::from_str(text).map_err(|e| ConfigError::Yaml {
                path: path.clone(),
                message: e.to_string(),
            })?;
        let mut flat = Vec::new();
        flatten("", &doc, &mut flat, &source)?;
        for (k, v) in flat {
            let key = find_key(&k).ok_or_else(|| unknown(&k, &source))?;
            chosen.insert(key.path, (v, source.clone()));
        }
    }
    let mut env: Vec<_> = layers
        .env
        .iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    env.sort();
    for (name, value) in env {
        let suffix = &name[ENV_PREFIX.len()..];
        if ENV_NOT_SETTINGS.contains(&suffix) {
            continue;
        }
        let source = Source::Env(name.clone());
        let key = KEYS
            .iter()
            .find(|k| k.env == suffix)
            .ok_or_else(|| ConfigError::UnknownKey {
                key: name.clone(),
                origin: Source::Env("the environment".into()),
                hint: hint(suffix, KEYS.iter().map(|k| k.env), ENV_PREFIX),
            })?;
        chosen.insert(key.path, (env_value(key.kind, value), source));
    }
    for (k, value, flag) in &layers.flags {
        let source = Source::Flag(flag.clone());
        let key = find_key(k).ok_or_else(|| unknown(k, &source))?;
        chosen.insert(key.path, (env_value(key.kind, value), source));
    }
    Ok(chosen)
}

impl RuntimeConfig {
    fn parse(p: &mut Parsed) -> Result<RuntimeConfig, ConfigError> {
        let backend = match p.string(&BACKEND)?.as_str() {
            "docker" => BackendKind::Docker,
            "kubernetes" => BackendKind::Kubernetes,
            _ => return Err(p.invalid(&BACKEND, "docker or kubernetes")),
        };
        Ok(RuntimeConfig { backend })
    }
}

impl KubernetesConfig {
    fn parse(p: &mut Parsed) -> Result<KubernetesConfig, ConfigError> {
        Ok(KubernetesConfig {
            namespace: p.opt_string(&K8S_NAMESPACE)?,
            runtime_class: p.opt_string(&K8S_RUNTIME_CLASS)?,
            ephemeral_storage: p.bytes(&K8S_EPHEMERAL_STORAGE)?,
            volume_size: p.bytes(&K8S_VOLUME_SIZE)?,
            storage_class: p.opt_string(&K8S_STORAGE_CLASS)?,
            volume_access: p.string(&K8S_VOLUME_ACCESS)?,
        })
    }
}

impl DockerConfig {
    fn parse(p: &mut Parsed) -> Result<DockerConfig, ConfigError> {
        Ok(DockerConfig {
            image: p.string(&IMAGE)?,
            working_dir: p.string(&WORKING_DIR)?,
            memory_limit: p.bytes(&MEMORY_LIMIT)?,
            cpu_limit: p.float(&CPU_LIMIT)?,
            pids_limit: p.int(&PIDS_LIMIT)?,
            timeout: p.duration(&TIMEOUT)?,
            max_timeout: p.duration(&MAX_TIMEOUT)?,
            network_disabled: p.bool(&NETWORK_DISABLED)?,
            read_only: p.bool(&READ_ONLY)?,
            tmpfs_size: p.bytes(&TMPFS_SIZE)?,
            shm_size: p.opt_bytes(&SHM_SIZE)?,
            user: p.user(&USER)?,
            runtime: p.opt_string(&RUNTIME)?,
            output_limit: p.bytes(&OUTPUT_LIMIT)?,
            file_limit: p.bytes(&FILE_LIMIT)?,
            pool_enabled: p.bool(&POOL_ENABLED)?,
            pool_size: p.int(&POOL_SIZE)?,
            pool_max_age: p.duration(&POOL_MAX_AGE)?,
            max_concurrent_creations: p.int(&MAX_CONCURRENT_CREATIONS)?,
            pool_wait_timeout: p.duration(&POOL_WAIT_TIMEOUT)?,
            warm_imports: p.list(&WARM_IMPORTS)?,
        })
    }
}

impl SessionConfig {
    fn parse(p: &mut Parsed) -> Result<SessionConfig, ConfigError> {
        Ok(SessionConfig {
            idle_timeout: p.duration(&SESSION_IDLE_TIMEOUT)?,
            max_sessions: p.int(&MAX_SESSIONS)?,
            max_sessions_per_client: p.opt_int(&MAX_SESSIONS_PER_CLIENT)?,
            durable: p.bool(&SESSION_DURABLE)?,
            scope: p.string(&SESSION_SCOPE)?,
            max_lifetime: p.duration(&SESSION_MAX_LIFETIME)?,
        })
    }
}

impl PackageConfig {
    fn parse(p: &mut Parsed) -> Result<PackageConfig, ConfigError> {
        Ok(PackageConfig {
            installer: p.string(&INSTALLER)?,
            index_url: p.opt_string(&INDEX_URL)?,
            extra_index_urls: p.list(&EXTRA_INDEX_URL)?,
            trusted_hosts: p.list(&TRUSTED_HOSTS)?,
            timeout: p.duration(&INSTALL_TIMEOUT)?,
            only_binary: p.bool(&ONLY_BINARY)?,
        })
    }
}

impl NetworkConfig {
    /// `env` gives `HOME`, under which the egress proxy's socket directory lives.
    fn parse(p: &mut Parsed, env: &HashMap<String, String>) -> Result<NetworkConfig, ConfigError> {
        Ok(NetworkConfig {
            egress_network: p.opt_string(&EGRESS_NETWORK)?,
            allow: p.list(&NETWORK_ALLOW)?,
            allow_private: p.list(&NETWORK_ALLOW_PRIVATE)?,
            idle_timeout: p.duration(&NETWORK_IDLE_TIMEOUT)?,
            ask: p.bool(&NETWORK_ASK)?,
            askable: p.list(&NETWORK_ASKABLE)?,
            egress_dir: PathBuf::from(env.get("HOME").map_or("/tmp", String::as_str))
                .join(".python-docker-mcp")
                .join("egress"),
        })
    }
}

impl ServerConfig {
    fn parse(p: &mut Parsed) -> Result<ServerConfig, ConfigError> {
        Ok(ServerConfig {
            http: p.opt_addr(&HTTP)?,
            tokens_file: p.opt_string(&TOKENS_FILE)?.map(PathBuf::from),
            metrics_public: p.bool(&METRICS_PUBLIC)?,
            legacy_sse: p.bool(&LEGACY_SSE)?,
            drain_timeout: p.duration(&DRAIN_TIMEOUT)?,
            max_message: p.bytes(&MAX_MESSAGE)?,
            task_after: p.duration(&TASK_AFTER)?,
            task_ttl: p.duration(&TASK_TTL)?,
        })
    }
}

/// Names the engine or the API server would refuse, refused here with the key named.
fn check_names(c: &Config, p: &Parsed) -> Result<(), ConfigError> {
    if !c.docker.working_dir.starts_with('/') {
        return Err(p.invalid(&WORKING_DIR, "an absolute path such as /app"));
    }
    let name_char = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
    if let Some(runtime) = &c.docker.runtime {
        if runtime.is_empty() || !runtime.chars().all(name_char) {
            return Err(p.invalid(
                &RUNTIME,
                "the name of an OCI runtime registered with the engine, such as runsc \
                 (letters, digits, `.`, `_`, `-`), or null for the engine's default",
            ));
        }
    }
    if let Some(name) = &c.network.egress_network {
        let engine_mode = ["host", "none"].contains(&name.as_str());
        if !name.starts_with(|c: char| c.is_ascii_alphanumeric())
            || !name.chars().all(name_char)
            || engine_mode
        {
            return Err(p.invalid(
                &EGRESS_NETWORK,
                "the name of a network on the engine, such as one `docker network create` \
                 made (letters, digits, `.`, `_`, `-`; not host or none), or null for the \
                 engine's default bridge",
            ));
        }
    }
    Ok(())
}

/// Egress: every pattern and CIDR parses, and what users may approve is within the
/// ceiling; the error names the key (and the pattern).
fn check_egress(network: &NetworkConfig, p: &Parsed) -> Result<(), ConfigError> {
    use crate::egress::policy::{Cidr, List};
    const PATTERNS: &str = "host patterns: example.com, *.example.com (subdomains only), \
         an IP address or a CIDR, each optionally with :port";
    let ceiling = List::parse(&network.allow)
        .map_err(|e| p.invalid(&NETWORK_ALLOW, &format!("{PATTERNS} ({e})")))?;
    let askable = List::parse(&network.askable)
        .map_err(|e| p.invalid(&NETWORK_ASKABLE, &format!("{PATTERNS} ({e})")))?;
    List::admit(&ceiling, askable).map_err(|e| {
        p.invalid(
            &NETWORK_ASKABLE,
            &format!("patterns within network.allow ({e})"),
        )
    })?;
    for cidr in &network.allow_private {
        Cidr::parse(cidr).map_err(|e| {
            p.invalid(
                &NETWORK_ALLOW_PRIVATE,
                &format!("CIDRs such as 172.18.0.0/16 or fd00::/8 ({e})"),
            )
        })?;
    }
    Ok(())
}

/// Names the API server would refuse, refused here with the key named instead.
fn check_kubernetes_names(k: &KubernetesConfig, p: &Parsed) -> Result<(), ConfigError> {
    for (key, value, what) in [
        (
            &K8S_NAMESPACE,
            &k.namespace,
            "a namespace name: lowercase letters, digits and `-`, at most 63, starting and \
             ending with a letter or digit (or null for the context's namespace)",
        ),
        (
            &K8S_RUNTIME_CLASS,
            &k.runtime_class,
            "the name of a RuntimeClass in the cluster: lowercase letters, digits, `-` and \
             `.` (or null for the cluster's default)",
        ),
        (
            &K8S_STORAGE_CLASS,
            &k.storage_class,
            "the name of a StorageClass in the cluster: lowercase letters, digits, `-` and \
             `.` (or null for the cluster's default)",
        ),
    ] {
        let label_only = key.path == K8S_NAMESPACE.path;
        if let Some(name) = value {
            if !is_dns_name(name, label_only) {
                return Err(p.invalid(key, what));
            }
        }
    }
    Ok(())
}

/// Time-outs that must be positive, and the ones bounded by `docker.max_timeout`.
fn check_durations(c: &Config, p: &Parsed) -> Result<(), ConfigError> {
    let docker = &c.docker;
    if docker.timeout.is_zero() {
        return Err(p.invalid(&TIMEOUT, "a duration greater than zero"));
    }
    if docker.max_timeout < docker.timeout {
        return Err(p.invalid(
            &MAX_TIMEOUT,
            &format!(
                "a duration at least docker.timeout ({})",
                humantime::format_duration(docker.timeout)
            ),
        ));
    }
    if c.server.task_ttl.is_zero() {
        return Err(p.invalid(&TASK_TTL, "a duration greater than zero"));
    }
    if c.package.timeout.is_zero() {
        return Err(p.invalid(&INSTALL_TIMEOUT, "a duration greater than zero"));
    }
    for (name, profile) in &c.profiles {
        if let Some(timeout) = profile.timeout {
            if timeout.is_zero() || timeout > docker.max_timeout {
                return Err(ConfigError::Invalid {
                    key: format!("profiles.{name}.timeout"),
                    origin: p.chosen[PROFILES.path].1.clone(),
                    value: humantime::format_duration(timeout).to_string(),
                    expected: format!(
                        "a duration greater than zero and at most docker.max_timeout ({})",
                        humantime::format_duration(docker.max_timeout)
                    ),
                });
            }
        }
    }
    Ok(())
}

/// The numeric user and group a sandbox runs as (`docker.user`). Numbers, not names: every
/// backend applies them as they are, with no need to read the image's `/etc/passwd`, and
/// the writable scratch mounts are given to exactly this owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserIds {
    pub uid: u32,
    pub gid: u32,
}

impl UserIds {
    /// Root: only the installer runs as root, with every capability dropped.
    pub const ROOT: UserIds = UserIds { uid: 0, gid: 0 };

    /// `"1000:1000"`, or a lone `"1000"` whose group is the same number; `None` for
    /// anything else (a user name, an empty part).
    pub fn parse(text: &str) -> Option<UserIds> {
        let (uid, gid) = text.split_once(':').unwrap_or((text, text));
        let number = |s: &str| {
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse().ok())
                .flatten()
        };
        Some(UserIds {
            uid: number(uid)?,
            gid: number(gid)?,
        })
    }
}

/// `uid:gid`, the form Docker's `--user` takes.
impl fmt::Display for UserIds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.uid, self.gid)
    }
}

/// A Kubernetes object name: a DNS-1123 label (`label_only`: namespaces, at most 63
/// characters, no dots) or subdomain (at most 253, dot-separated labels).
fn is_dns_name(name: &str, label_only: bool) -> bool {
    let label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if label_only {
        label(name)
    } else {
        name.len() <= 253 && name.split('.').all(label)
    }
}

fn find_key(path: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.path == path)
}

fn unknown(key: &str, source: &Source) -> ConfigError {
    ConfigError::UnknownKey {
        key: key.to_string(),
        origin: source.clone(),
        hint: hint(key, KEYS.iter().map(|k| k.path), ""),
    }
}

/// "; did you mean X?" for a near miss, else where to find the list.
fn hint<'a>(wrong: &str, known: impl Iterator<Item = &'a str>, prefix: &str) -> String {
    let best = known.map(|k| (edit_distance(wrong, k), k)).min();
    match best {
        Some((d, k)) if d <= 3 => format!("; did you mean `{prefix}{k}`?"),
        _ => "; `python-docker-mcp config --example` lists every setting".into(),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// Flatten a YAML mapping into dotted keys; the original's file has two levels.
fn flatten(
    prefix: &str,
    v: &serde_norway::Value,
    out: &mut Vec<(String, serde_norway::Value)>,
    source: &Source,
) -> Result<(), ConfigError> {
    match v {
        serde_norway::Value::Null if prefix.is_empty() => Ok(()),
        serde_norway::Value::Mapping(m) if prefix.is_empty() || find_key(prefix).is_none() => {
            for (k, v) in m {
                let k = k.as_str().ok_or_else(|| ConfigError::Invalid {
                    key: prefix.to_string(),
                    origin: source.clone(),
                    value: format!("{k:?}"),
                    expected: "string keys".into(),
                })?;
                let path = if prefix.is_empty() {
                    k.to_string()
                } else {
                    format!("{prefix}.{k}")
                };
                // A section (docker, package) is a mapping; anything else is a leaf.
                if matches!(v, serde_norway::Value::Mapping(_)) && find_key(&path).is_none() {
                    if !KEYS
                        .iter()
                        .any(|key| key.path.starts_with(&format!("{path}.")))
                    {
                        return Err(unknown(&path, source));
                    }
                    flatten(&path, v, out, source)?;
                } else if matches!(v, serde_norway::Value::Null)
                    && find_key(&path).is_none()
                    && KEYS
                        .iter()
                        .any(|key| key.path.starts_with(&format!("{path}.")))
                {
                    // An empty section (`docker:` with nothing under it) is fine.
                } else {
                    out.push((path, v.clone()));
                }
            }
            Ok(())
        }
        _ => Err(ConfigError::Invalid {
            key: if prefix.is_empty() {
                "(top level)".into()
            } else {
                prefix.into()
            },
            origin: source.clone(),
            value: yaml_text(v),
            expected: "a mapping of settings".into(),
        }),
    }
}

/// An environment or flag string as a YAML value of the key's kind.
fn env_value(kind: Kind, s: &str) -> serde_norway::Value {
    match kind {
        Kind::List => serde_norway::Value::Sequence(
            s.split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(|x| serde_norway::Value::String(x.into()))
                .collect(),
        ),
        // Strings stay strings (an IPv6 address `[::1]:8002` is not a YAML list).
        Kind::OptStr | Kind::OptAddr if s.trim().is_empty() || s.trim() == "null" => {
            serde_norway::Value::Null
        }
        Kind::OptStr | Kind::OptAddr => serde_norway::Value::String(s.trim().into()),
        // YAML text (JSON is YAML); a string that is not a mapping fails as the wrong shape.
        Kind::Profiles if s.trim().is_empty() => serde_norway::Value::Null,
        // Let YAML decide: "true", "5", "0.5" and "null" become what they look like.
        _ => serde_norway::from_str(s).unwrap_or_else(|_| serde_norway::Value::String(s.into())),
    }
}

fn yaml_text(v: &serde_norway::Value) -> String {
    match v {
        serde_norway::Value::String(s) => format!("{s:?}"),
        other => serde_norway::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

struct Parsed<'a> {
    chosen: &'a BTreeMap<&'static str, (serde_norway::Value, Source)>,
    provenance: BTreeMap<&'static str, (String, Source)>,
    /// Parsing a profile's settings: the prefix its keys are named by in errors
    /// (`profiles.browser.`), in place of `docker.`.
    profile: Option<String>,
}

impl Parsed<'_> {
    fn get(&mut self, key: &'static Key) -> (&serde_norway::Value, Kind) {
        let (v, source) = &self.chosen[key.path];
        self.provenance
            .insert(key.path, (yaml_text(v), source.clone()));
        (v, key.kind)
    }

    fn invalid(&self, key: &Key, expected: &str) -> ConfigError {
        let (v, source) = &self.chosen[key.path];
        let path = key.path;
        let key = match &self.profile {
            Some(prefix) => format!("{prefix}{}", path.strip_prefix("docker.").unwrap_or(path)),
            None => path.to_string(),
        };
        ConfigError::Invalid {
            key,
            origin: source.clone(),
            value: yaml_text(v),
            expected: expected.to_string(),
        }
    }

    fn wrong(&self, key: &Key, kind: Kind) -> ConfigError {
        self.invalid(key, &kind.expected())
    }

    /// `docker.user`: a numeric, non-root `uid[:gid]`.
    fn user(&mut self, key: &'static Key) -> Result<UserIds, ConfigError> {
        let text = self.string(key)?;
        match UserIds::parse(&text) {
            Some(ids) if ids.uid != 0 => Ok(ids),
            _ => Err(self.invalid(
                key,
                "a numeric, non-root uid[:gid] such as 1000:1000 (user names are not \
                 looked up; root is refused)",
            )),
        }
    }

    fn string(&mut self, key: &'static Key) -> Result<String, ConfigError> {
        let (v, kind) = self.get(key);
        let s = match (v, kind) {
            (serde_norway::Value::String(s), Kind::Choice(c)) if c.contains(&s.as_str()) => {
                s.clone()
            }
            (serde_norway::Value::String(s), Kind::Str) if !s.is_empty() => s.clone(),
            (serde_norway::Value::Number(n), Kind::Str) => n.to_string(),
            _ => return Err(self.wrong(key, kind)),
        };
        Ok(s)
    }

    fn opt_string(&mut self, key: &'static Key) -> Result<Option<String>, ConfigError> {
        let (v, kind) = self.get(key);
        match v {
            serde_norway::Value::Null => Ok(None),
            serde_norway::Value::String(s) if s.is_empty() => Ok(None),
            serde_norway::Value::String(s) => Ok(Some(s.clone())),
            _ => Err(self.wrong(key, kind)),
        }
    }

    fn bool(&mut self, key: &'static Key) -> Result<bool, ConfigError> {
        let (v, kind) = self.get(key);
        match v {
            serde_norway::Value::Bool(b) => Ok(*b),
            serde_norway::Value::Number(n) if n.as_u64() == Some(1) => Ok(true),
            serde_norway::Value::Number(n) if n.as_u64() == Some(0) => Ok(false),
            serde_norway::Value::String(s) => match s.to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" | "1" => Ok(true),
                "false" | "no" | "off" | "0" => Ok(false),
                _ => Err(self.wrong(key, kind)),
            },
            _ => Err(self.wrong(key, kind)),
        }
    }

    fn int(&mut self, key: &'static Key) -> Result<u64, ConfigError> {
        let (v, kind) = self.get(key);
        let Kind::Int { min, max } = kind else {
            unreachable!("{} is not an int", key.path)
        };
        match v.as_u64() {
            Some(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(self.wrong(key, kind)),
        }
    }

    fn opt_int(&mut self, key: &'static Key) -> Result<Option<u64>, ConfigError> {
        let (v, kind) = self.get(key);
        let Kind::OptInt { min, max } = kind else {
            unreachable!("{} is not an optional int", key.path)
        };
        match v {
            serde_norway::Value::Null => Ok(None),
            v => match v.as_u64() {
                Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
                _ => Err(self.wrong(key, kind)),
            },
        }
    }

    fn opt_addr(&mut self, key: &'static Key) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        let (v, kind) = self.get(key);
        match v {
            serde_norway::Value::Null => Ok(None),
            serde_norway::Value::String(s) if s.is_empty() => Ok(None),
            serde_norway::Value::String(s) => match s.parse() {
                Ok(addr) => Ok(Some(addr)),
                Err(_) => Err(self.wrong(key, kind)),
            },
            _ => Err(self.wrong(key, kind)),
        }
    }

    fn float(&mut self, key: &'static Key) -> Result<f64, ConfigError> {
        let (v, kind) = self.get(key);
        let Kind::Float { min, max } = kind else {
            unreachable!("{} is not a float", key.path)
        };
        match v.as_f64() {
            Some(n) if n >= min && n <= max => Ok(n),
            _ => Err(self.wrong(key, kind)),
        }
    }

    fn duration(&mut self, key: &'static Key) -> Result<Duration, ConfigError> {
        let (v, kind) = self.get(key);
        let d = match v {
            serde_norway::Value::Number(n) => n.as_u64().map(Duration::from_secs),
            serde_norway::Value::String(s) => parse_duration(s),
            _ => None,
        };
        d.ok_or_else(|| self.wrong(key, kind))
    }

    fn bytes(&mut self, key: &'static Key) -> Result<u64, ConfigError> {
        let (v, kind) = self.get(key);
        let Kind::Bytes { min, max } = kind else {
            unreachable!("{} is not a size", key.path)
        };
        let n = match v {
            serde_norway::Value::Number(n) => n.as_u64(),
            serde_norway::Value::String(s) => parse_bytes(s),
            _ => None,
        };
        match n {
            Some(n) if n >= min && n <= max => Ok(n),
            _ => Err(self.wrong(key, kind)),
        }
    }

    fn opt_bytes(&mut self, key: &'static Key) -> Result<Option<u64>, ConfigError> {
        let (v, kind) = self.get(key);
        let Kind::OptBytes { min } = kind else {
            unreachable!("{} is not an optional size", key.path)
        };
        let n = match v {
            serde_norway::Value::Null => return Ok(None),
            serde_norway::Value::String(s) if s.trim().is_empty() || s.trim() == "null" => {
                return Ok(None)
            }
            serde_norway::Value::Number(n) => n.as_u64(),
            serde_norway::Value::String(s) => parse_bytes(s),
            _ => None,
        };
        match n {
            Some(n) if n >= min => Ok(Some(n)),
            _ => Err(self.wrong(key, kind)),
        }
    }

    /// `profiles`: each name checked, each profile's keys known and each value of the
    /// kind of the `docker.*` key it overrides; errors name `profiles.NAME.KEY`.
    fn profiles(&mut self, key: &'static Key) -> Result<ProfileTable, ConfigError> {
        let (v, kind) = self.get(key);
        let (v, source) = (v.clone(), self.chosen[key.path].1.clone());
        let map = match v {
            serde_norway::Value::Null => return Ok(Default::default()),
            serde_norway::Value::Mapping(m) => m,
            _ => return Err(self.wrong(key, kind)),
        };
        let mut table = ProfileTable::new();
        for (name, body) in map {
            let name = match name.as_str() {
                Some(n) if valid_profile_name(n) && n != DEFAULT_PROFILE => n.to_string(),
                _ => {
                    return Err(ConfigError::Invalid {
                        key: key.path.into(),
                        origin: source,
                        value: yaml_text(&name),
                        expected: "profile names of letters, digits, `-` and `_` (at most 40; \
                                   `default` is the docker.* settings, set them there)"
                            .into(),
                    })
                }
            };
            let profile: Profile = Parsed::profile(&name, body, &source)?;
            table.insert(name, profile);
        }
        // `config` shows the names here, and each profile's settings below the keys.
        let names = table.keys().cloned().collect::<Vec<_>>().join(", ");
        self.provenance
            .insert(key.path, (format!("{{{names}}}"), source));
        Ok(table)
    }

    /// One profile's settings, each parsed as the `docker.*` key it overrides.
    fn profile(
        name: &str,
        body: serde_norway::Value,
        source: &Source,
    ) -> Result<Profile, ConfigError> {
        let prefix = format!("profiles.{name}.");
        let body = match body {
            serde_norway::Value::Null => Default::default(),
            serde_norway::Value::Mapping(m) => m,
            other => {
                return Err(ConfigError::Invalid {
                    key: format!("profiles.{name}"),
                    origin: source.clone(),
                    value: yaml_text(&other),
                    expected: format!("a mapping of settings ({})", profile_key_names()),
                })
            }
        };
        let mut set = Chosen::new();
        for (k, v) in body {
            let k = k.as_str().unwrap_or_default().to_string();
            let Some(key) = PROFILE_KEYS.iter().find(|key| profile_key(key) == k) else {
                let hint = hint(&k, PROFILE_KEYS.iter().map(profile_key), &prefix).replace(
                    "`python-docker-mcp config --example` lists every setting",
                    &format!("a profile may set {}", profile_key_names()),
                );
                return Err(ConfigError::UnknownKey {
                    key: format!("{prefix}{k}"),
                    origin: source.clone(),
                    hint,
                });
            };
            set.insert(key.path, (v, source.clone()));
        }
        let mut q = Parsed {
            chosen: &set,
            provenance: BTreeMap::new(),
            profile: Some(prefix),
        };
        Ok(Profile {
            image: q.given(&IMAGE, Parsed::string)?,
            memory_limit: q.given(&MEMORY_LIMIT, Parsed::bytes)?,
            cpu_limit: q.given(&CPU_LIMIT, Parsed::float)?,
            pids_limit: q.given(&PIDS_LIMIT, Parsed::int)?,
            tmpfs_size: q.given(&TMPFS_SIZE, Parsed::bytes)?,
            shm_size: q.given(&SHM_SIZE, Parsed::opt_bytes)?.flatten(),
            pool_size: q.given(&POOL_SIZE, Parsed::int)?,
            warm_imports: q.given(&WARM_IMPORTS, Parsed::list)?,
            timeout: q.given(&TIMEOUT, Parsed::duration)?,
        })
    }

    /// `parse` of a key the profile sets; `None` when it leaves the key to the default.
    fn given<T>(
        &mut self,
        key: &'static Key,
        parse: fn(&mut Self, &'static Key) -> Result<T, ConfigError>,
    ) -> Result<Option<T>, ConfigError> {
        if !self.chosen.contains_key(key.path) {
            return Ok(None);
        }
        parse(self, key).map(Some)
    }

    fn list(&mut self, key: &'static Key) -> Result<Vec<String>, ConfigError> {
        let (v, kind) = self.get(key);
        match v {
            serde_norway::Value::Null => Ok(Vec::new()),
            serde_norway::Value::String(one) => Ok(vec![one.clone()]),
            serde_norway::Value::Sequence(items) => items
                .iter()
                .map(|i| i.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| self.wrong(key, kind)),
            _ => Err(self.wrong(key, kind)),
        }
    }
}

/// `"30"`, `"30s"`, `"5m"`, `"1h 30m"`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    humantime::parse_duration(s).ok()
}

/// Docker's notation: `"256m"`, `"1g"`, `"512k"`, `"1024b"`, `"1024"`; case-insensitive,
/// an optional trailing `b` (`"256mb"`).
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let s = s
        .strip_suffix('b')
        .filter(|r| !r.is_empty() && !r.ends_with(|c: char| c.is_ascii_digit()))
        .unwrap_or(&s);
    let (num, mult) = match s.chars().last()? {
        'k' => (&s[..s.len() - 1], 1024u64),
        'm' => (&s[..s.len() - 1], 1024 * 1024),
        'g' => (&s[..s.len() - 1], 1024 * 1024 * 1024),
        'b' => (&s[..s.len() - 1], 1),
        _ => (s, 1),
    };
    let n: f64 = num.trim().parse().ok()?;
    if !(n.is_finite() && n >= 0.0) {
        return None;
    }
    Some((n * mult as f64) as u64)
}

/// `268435456` as `"256m"`.
pub fn human_bytes(n: u64) -> String {
    for (unit, size) in [("g", 1u64 << 30), ("m", 1 << 20), ("k", 1 << 10)] {
        if n >= size && n.is_multiple_of(size) {
            return format!("{}{unit}", n / size);
        }
    }
    format!("{n}b")
}

impl Config {
    /// The defaults alone, as if no file, variable or flag were set.
    pub fn defaults() -> Config {
        resolve(&Layers::default()).expect("defaults are valid")
    }

    /// Every setting, its effective value and where it came from, one per line.
    pub fn describe(&self) -> String {
        let width = KEYS.iter().map(|k| k.path.len()).max().unwrap_or(0);
        let mut out = String::new();
        for key in KEYS {
            let (value, source) = &self.provenance[key.path];
            out.push_str(&format!(
                "{:width$}  {:<28} # {} [{}{}]\n",
                key.path,
                value,
                source,
                ENV_PREFIX,
                key.env,
                width = width
            ));
        }
        out.push_str(&self.describe_profiles());
        out
    }

    /// `config.example.yaml`: every key with its default and meaning.
    pub fn example_yaml() -> String {
        let mut out = String::from(
            "# python-docker-mcp configuration: every key with its default.\n\
             # Location: ~/.python-docker-mcp/config.yaml, or the file named by PYTHON_DOCKER_MCP_CONFIG\n\
             # or --config. Each key can also be set by the environment variable shown; precedence is\n\
             # defaults < this file < environment < command-line flags. Unknown keys are errors.\n\
             # Durations take 30, \"30s\" or \"5m\"; sizes take \"256m\" or \"1g\".\n",
        );
        let mut section = "";
        for key in KEYS {
            let (sec, name) = key.path.split_once('.').unwrap_or(("", key.path));
            if sec != section {
                out.push('\n');
                if !sec.is_empty() {
                    out.push_str(&format!("{sec}:\n"));
                }
                section = sec;
            }
            let indent = if sec.is_empty() { "" } else { "  " };
            out.push_str(&format!(
                "{indent}# {} ({}{})\n",
                key.doc, ENV_PREFIX, key.env
            ));
            out.push_str(&format!("{indent}{name}: {}\n", key.default));
        }
        out
    }
}

// ----- profiles: the table as loaded (resolving a name is `profile.rs`) -----

/// The name of the unnamed defaults (`docker.*`).
pub const DEFAULT_PROFILE: &str = "default";

/// A partial profile: what it sets, validated when the config is loaded. What it leaves
/// out is the default's, except `pool_size`: a named profile keeps no sandbox warm unless
/// it says so (its pool is made on first use), so a profile of large sandboxes costs
/// nothing until it is used.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Profile {
    pub image: Option<String>,
    pub memory_limit: Option<u64>,
    pub cpu_limit: Option<f64>,
    pub pids_limit: Option<u64>,
    pub tmpfs_size: Option<u64>,
    pub shm_size: Option<u64>,
    pub pool_size: Option<u64>,
    pub warm_imports: Option<Vec<String>>,
    pub timeout: Option<Duration>,
}

/// A profile name: what a call may ask for.
pub fn valid_profile_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 40
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The profiles a config names, for its validation: `profiles` as the file gives it.
pub type ProfileTable = BTreeMap<String, Profile>;

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn file(text: &str) -> Option<(PathBuf, String)> {
        Some((PathBuf::from("/cfg.yaml"), text.to_string()))
    }

    #[test]
    fn defaults_are_secure() {
        let c = Config::defaults();
        assert!(c.docker.network_disabled);
        assert!(c.docker.read_only);
        assert_eq!(c.docker.memory_limit, 256 * MIB);
        assert_eq!(c.docker.timeout, Duration::from_secs(30));
        assert_eq!(c.package.timeout, Duration::from_secs(60));
        assert_eq!(c.docker.user.to_string(), "1000:1000");
    }

    #[test]
    fn original_file_keeps_working() {
        let text = "docker:\n  image: python:3.12.2-slim\n  memory_limit: 512m\n  cpu_limit: 1.5\n  timeout: 10\n  \
                    network_disabled: false\n  pool_size: 4\n  pool_max_age: 300\npackage:\n  installer: uv\n  \
                    index_url: null\n  trusted_hosts: []\nallowed_modules: [math]\nblocked_modules: [os]\n";
        let c = resolve(&Layers {
            file: file(text),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.docker.image, "python:3.12.2-slim");
        assert_eq!(c.docker.memory_limit, 512 * MIB);
        assert_eq!(c.docker.cpu_limit, 1.5);
        assert_eq!(c.docker.timeout, Duration::from_secs(10));
        assert!(!c.docker.network_disabled);
        assert_eq!(c.docker.pool_size, 4);
        assert_eq!(c.allowed_modules, vec!["math"]);
        assert_eq!(c.blocked_modules, vec!["os"]);
    }

    #[test]
    fn layering_env_over_file_over_default_and_flags_over_all() {
        let layers = Layers {
            file: file("docker:\n  timeout: 10\n  pool_size: 3\n"),
            env: env(&[("PYTHON_DOCKER_MCP_TIMEOUT", "5m"), ("PATH", "/bin")]),
            flags: vec![("docker.pool_size".into(), "7".into(), "--pool-size".into())],
        };
        let c = resolve(&layers).unwrap();
        assert_eq!(c.docker.timeout, Duration::from_secs(300));
        assert_eq!(c.docker.pool_size, 7);
        let d = c.describe();
        assert!(
            d.contains("environment variable PYTHON_DOCKER_MCP_TIMEOUT"),
            "{d}"
        );
        assert!(d.contains("command-line flag --pool-size"), "{d}");
        assert!(d.contains("docker.image"), "{d}");
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h 30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(parse_bytes("256m"), Some(256 * MIB));
        assert_eq!(parse_bytes("1g"), Some(1 << 30));
        assert_eq!(parse_bytes("1G"), Some(1 << 30));
        assert_eq!(parse_bytes("512kb"), Some(512 * 1024));
        assert_eq!(parse_bytes("1024"), Some(1024));
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(human_bytes(256 * MIB), "256m");
    }

    #[test]
    fn unknown_file_key_names_key_and_file() {
        let e = resolve(&Layers {
            file: file("docker:\n  imgae: x\n"),
            ..Default::default()
        })
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("docker.imgae") && msg.contains("/cfg.yaml"),
            "{msg}"
        );
        let e = resolve(&Layers {
            file: file("dockr:\n  image: x\n"),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("dockr"), "{e}");
    }

    #[test]
    fn unknown_env_var_is_an_error() {
        let e = resolve(&Layers {
            env: env(&[("PYTHON_DOCKER_MCP_POOLSIZE", "3")]),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("PYTHON_DOCKER_MCP_POOLSIZE"), "{e}");
        assert!(
            e.to_string()
                .contains("did you mean `PYTHON_DOCKER_MCP_POOL_SIZE`"),
            "{e}"
        );
        // The config-file pointer is ours but not a setting.
        resolve(&Layers {
            env: env(&[("PYTHON_DOCKER_MCP_CONFIG", "/x")]),
            ..Default::default()
        })
        .unwrap();
    }

    #[test]
    fn file_limit_defaults_to_16m_and_is_validated_by_name() {
        let c = resolve(&Layers::default()).unwrap();
        assert_eq!(c.docker.file_limit, 16 * MIB);
        let c = resolve(&Layers {
            env: env(&[("PYTHON_DOCKER_MCP_FILE_LIMIT", "64k")]),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.docker.file_limit, 64 * 1024);
        let e = resolve(&Layers {
            file: file("docker:\n  file_limit: 2g\n"),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("docker.file_limit") && e.contains("1g"), "{e}");
    }

    #[test]
    fn output_limit_is_capped_below_the_frame_limit() {
        let ok = resolve(&Layers {
            env: env(&[("PYTHON_DOCKER_MCP_OUTPUT_LIMIT", "4m")]),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(ok.docker.output_limit, 4 * MIB);
        let e = resolve(&Layers {
            file: file("docker:\n  output_limit: 5m\n"),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("docker.output_limit") && e.contains("/cfg.yaml") && e.contains("4m"),
            "{e}"
        );
    }

    #[test]
    fn wrong_type_names_key_source_and_expectation() {
        let e = resolve(&Layers {
            env: env(&[("PYTHON_DOCKER_MCP_POOL_SIZE", "many")]),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("docker.pool_size")
                && e.contains("PYTHON_DOCKER_MCP_POOL_SIZE")
                && e.contains("whole number"),
            "{e}"
        );
        let e = resolve(&Layers {
            file: file("docker:\n  memory_limit: 1k\n"),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("docker.memory_limit") && e.contains("at least 6m"),
            "{e}"
        );
        let e = resolve(&Layers {
            file: file("docker:\n  network_disabled: maybe\n"),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("true or false"), "{e}");
    }

    #[test]
    fn root_user_is_refused() {
        for user in ["0", "root", "0:0", ""] {
            let e = resolve(&Layers {
                env: env(&[("PYTHON_DOCKER_MCP_USER", user)]),
                ..Default::default()
            });
            assert!(e.is_err(), "user {user:?} accepted");
        }
    }

    #[test]
    fn the_user_is_numbers_parsed_once() {
        let user = |text: &str| {
            resolve(&Layers {
                env: env(&[("PYTHON_DOCKER_MCP_USER", text)]),
                ..Default::default()
            })
            .map(|c| c.docker.user)
        };
        assert_eq!(
            user("1000:1001").unwrap(),
            UserIds {
                uid: 1000,
                gid: 1001
            }
        );
        assert_eq!(
            user("1234").unwrap(),
            UserIds {
                uid: 1234,
                gid: 1234
            }
        );
        for bad in [
            "nobody",
            "1000:staff",
            ":1000",
            "-1",
            "1000:1000:1",
            "99999999999",
        ] {
            let e = user(bad).expect_err(bad).to_string();
            assert!(
                e.contains("docker.user") && e.contains("numeric"),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn the_oci_runtime_is_the_engines_default_unless_named() {
        assert_eq!(Config::defaults().docker.runtime, None);
        let c = resolve(&Layers {
            file: file("docker:\n  runtime: runsc\n"),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.docker.runtime.as_deref(), Some("runsc"));
        let c = resolve(&Layers {
            file: file("docker:\n  runtime: runsc\n"),
            env: env(&[("PYTHON_DOCKER_MCP_RUNTIME", "")]),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            c.docker.runtime, None,
            "an empty variable means the default"
        );
        for bad in ["run sc", "runsc;rm", "/usr/bin/runsc"] {
            let e = resolve(&Layers {
                env: env(&[("PYTHON_DOCKER_MCP_RUNTIME", bad)]),
                ..Default::default()
            })
            .unwrap_err()
            .to_string();
            assert!(
                e.contains("docker.runtime") && e.contains("OCI runtime"),
                "{e}"
            );
        }
    }

    #[test]
    fn egress_network_names_an_engine_network_or_the_default() {
        assert_eq!(Config::defaults().network.egress_network, None);
        let c = resolve(&Layers {
            file: file("network:\n  egress_network: pdm-test-1a2b\n"),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.network.egress_network.as_deref(), Some("pdm-test-1a2b"));
        let c = resolve(&Layers {
            env: env(&[("PYTHON_DOCKER_MCP_EGRESS_NETWORK", "my_net.v2")]),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.network.egress_network.as_deref(), Some("my_net.v2"));
        // Not a network: the host's own stack, no network, another container's, a typo.
        for bad in ["host", "none", "container:abc", "-net", "a net"] {
            let e = resolve(&Layers {
                env: env(&[("PYTHON_DOCKER_MCP_EGRESS_NETWORK", bad)]),
                ..Default::default()
            })
            .unwrap_err()
            .to_string();
            assert!(
                e.contains("network.egress_network")
                    && e.contains("PYTHON_DOCKER_MCP_EGRESS_NETWORK")
                    && e.contains("engine's default bridge"),
                "{e}"
            );
        }
    }

    #[test]
    fn the_egress_keys_are_lists_checked_at_load_naming_the_key() {
        let c = Config::defaults();
        assert!(c.network.allow.is_empty() && c.network.allow_private.is_empty());
        assert!(!c.network.ask && c.network.askable.is_empty());
        let c = resolve(&Layers {
            env: env(&[
                (
                    "PYTHON_DOCKER_MCP_NETWORK_ALLOW",
                    "allowed.test, *.example.com:8443",
                ),
                ("PYTHON_DOCKER_MCP_NETWORK_ALLOW_PRIVATE", "172.30.0.0/16"),
                ("PYTHON_DOCKER_MCP_NETWORK_ASK", "true"),
                ("PYTHON_DOCKER_MCP_NETWORK_ASKABLE", "a.example.com:8443"),
                ("HOME", "/home/u"),
            ]),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.network.allow, ["allowed.test", "*.example.com:8443"]);
        assert_eq!(c.network.allow_private, ["172.30.0.0/16"]);
        assert!(c.network.ask);
        assert_eq!(
            c.network.egress_dir,
            PathBuf::from("/home/u/.python-docker-mcp/egress")
        );
        for (key, var, bad) in [
            ("network.allow", "NETWORK_ALLOW", "exa mple.com"),
            ("network.allow", "NETWORK_ALLOW", "a.test:99999"),
            (
                "network.allow_private",
                "NETWORK_ALLOW_PRIVATE",
                "10.0.0.0/33",
            ),
            (
                "network.allow_private",
                "NETWORK_ALLOW_PRIVATE",
                "example.com",
            ),
            ("network.askable", "NETWORK_ASKABLE", "*.*"),
            // Outside the ceiling (allowed.test alone).
            ("network.askable", "NETWORK_ASKABLE", "other.test"),
        ] {
            let e = resolve(&Layers {
                env: env(&[
                    ("PYTHON_DOCKER_MCP_NETWORK_ALLOW", "allowed.test"),
                    (&format!("PYTHON_DOCKER_MCP_{var}"), bad),
                ]),
                ..Default::default()
            })
            .unwrap_err()
            .to_string();
            assert!(e.contains(key) && e.contains(var), "{bad}: {e}");
        }
    }

    #[test]
    fn profiles_are_validated_with_the_key_named() {
        let err = |text: &str| {
            resolve(&Layers {
                file: file(text),
                ..Default::default()
            })
            .unwrap_err()
            .to_string()
        };
        let e = err("profiles:\n  browser:\n    memory: 1g\n");
        assert!(
            e.contains("unknown setting `profiles.browser.memory`"),
            "{e}"
        );
        assert!(e.contains("memory_limit"), "{e}");
        let e = err("profiles:\n  browser:\n    memory_limit: lots\n");
        assert!(e.contains("`profiles.browser.memory_limit`"), "{e}");
        assert!(e.contains("file /cfg.yaml"), "{e}");
        let e = err("profiles:\n  browser:\n    cpu_limit: 0\n");
        assert!(e.contains("`profiles.browser.cpu_limit`"), "{e}");
        let e = err("profiles:\n  browser:\n    timeout: 2h\n");
        assert!(e.contains("`profiles.browser.timeout`"), "{e}");
        assert!(e.contains("docker.max_timeout"), "{e}");
        let e = err("profiles:\n  default:\n    memory_limit: 1g\n");
        assert!(e.contains("`default` is the docker.* settings"), "{e}");
        let e = err("profiles:\n  browser: 3\n");
        assert!(e.contains("`profiles.browser`"), "{e}");
        let e = err("profiles: [browser]\n");
        assert!(e.contains("`profiles`"), "{e}");
    }

    #[test]
    fn profiles_come_from_the_environment_too_and_are_printed() {
        let c = resolve(&Layers {
            file: file("profiles:\n  big: {memory_limit: 2g}\n"),
            env: env(&[(
                "PYTHON_DOCKER_MCP_PROFILES",
                r#"{"browser": {"image": "python-docker-mcp:browser", "shm_size": "256m", "pool_size": 1}}"#,
            )]),
            ..Default::default()
        })
        .unwrap();
        // The environment replaces the file's table, as for every key.
        assert_eq!(c.profile_names(), vec!["default", "browser"]);
        let b = &c.profiles["browser"];
        assert_eq!(b.shm_size, Some(256 * MIB));
        assert_eq!(b.pool_size, Some(1));
        let d = c.describe();
        assert!(d.contains("{browser}"), "{d}");
        assert!(d.contains("profile browser:"), "{d}");
        assert!(d.contains("profile default:"), "{d}");
    }

    #[test]
    fn shm_size_is_the_engines_unless_set() {
        assert_eq!(Config::defaults().docker.shm_size, None);
        let c = resolve(&Layers {
            env: env(&[("PYTHON_DOCKER_MCP_SHM_SIZE", "512m")]),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.docker.shm_size, Some(512 * MIB));
    }

    #[test]
    fn env_lists_are_comma_separated() {
        let c = resolve(&Layers {
            env: env(&[("PYTHON_DOCKER_MCP_TRUSTED_HOSTS", "a.example, b.example")]),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.package.trusted_hosts, vec!["a.example", "b.example"]);
    }

    #[test]
    fn per_client_sessions_default_to_a_quarter_when_shared_and_can_be_set() {
        let c = Config::defaults();
        assert_eq!(c.session.max_sessions, 32);
        assert_eq!(c.session.max_sessions_per_client, None);
        assert_eq!(c.session.per_client_limit(true), 8);
        assert_eq!(
            c.session.per_client_limit(false),
            32,
            "one client keeps every slot"
        );
        let c = resolve(&Layers {
            env: env(&[("PYTHON_DOCKER_MCP_MAX_SESSIONS", "3")]),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.session.per_client_limit(true), 1, "at least one");
        let c = resolve(&Layers {
            file: file("session:\n  max_sessions_per_client: 5\n"),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.session.per_client_limit(true), 5);
        assert_eq!(c.session.per_client_limit(false), 5);
        let e = resolve(&Layers {
            env: env(&[("PYTHON_DOCKER_MCP_MAX_SESSIONS_PER_CLIENT", "0")]),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("session.max_sessions_per_client") && e.contains("from 1 to"),
            "{e}"
        );
    }

    #[test]
    fn http_address_and_tokens_file() {
        let c = Config::defaults();
        assert_eq!(c.server.http, None);
        assert_eq!(c.server.tokens_file, None);
        let c = resolve(&Layers {
            env: env(&[
                ("PYTHON_DOCKER_MCP_HTTP", "127.0.0.1:8002"),
                ("PYTHON_DOCKER_MCP_TOKENS_FILE", "/etc/pdm/tokens"),
            ]),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.server.http, Some("127.0.0.1:8002".parse().unwrap()));
        assert_eq!(c.server.tokens_file, Some(PathBuf::from("/etc/pdm/tokens")));
        let c = resolve(&Layers {
            flags: vec![("server.http".into(), "[::1]:0".into(), "--http".into())],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.server.http, Some("[::1]:0".parse().unwrap()));
        let c = resolve(&Layers {
            file: file("server:\n  http: \"[::1]:8002\"\n"),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.server.http, Some("[::1]:8002".parse().unwrap()));
        for bad in ["localhost", "8002", "example:80"] {
            let e = resolve(&Layers {
                flags: vec![("server.http".into(), bad.into(), "--http".into())],
                ..Default::default()
            })
            .unwrap_err()
            .to_string();
            assert!(
                e.contains("server.http") && e.contains("--http") && e.contains("127.0.0.1:8002"),
                "{e}"
            );
        }
    }

    #[test]
    fn legacy_sse_is_on_unless_turned_off() {
        assert!(Config::defaults().server.legacy_sse);
        let c = resolve(&Layers {
            file: file("server:\n  legacy_sse: false\n"),
            ..Default::default()
        })
        .unwrap();
        assert!(!c.server.legacy_sse);
        let e = resolve(&Layers {
            env: env(&[("PYTHON_DOCKER_MCP_LEGACY_SSE", "sometimes")]),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("server.legacy_sse") && e.contains("PYTHON_DOCKER_MCP_LEGACY_SSE"),
            "{e}"
        );
    }

    #[test]
    fn metrics_public_is_off_unless_set() {
        assert!(!Config::defaults().server.metrics_public);
        let c = resolve(&Layers {
            env: env(&[("PYTHON_DOCKER_MCP_METRICS_PUBLIC", "true")]),
            ..Default::default()
        })
        .unwrap();
        assert!(c.server.metrics_public);
        assert!(c.describe().contains("server.metrics_public"));
        let e = resolve(&Layers {
            file: file("server:\n  metrics_public: maybe\n"),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("server.metrics_public") && e.contains("true or false"),
            "{e}"
        );
    }

    #[test]
    fn drain_timeout() {
        assert_eq!(
            Config::defaults().server.drain_timeout,
            Duration::from_secs(30)
        );
        let c = resolve(&Layers {
            env: env(&[("PYTHON_DOCKER_MCP_DRAIN_TIMEOUT", "1m 30s")]),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.server.drain_timeout, Duration::from_secs(90));
        assert!(c.describe().contains("PYTHON_DOCKER_MCP_DRAIN_TIMEOUT"));
        let c = resolve(&Layers {
            file: file("server:\n  drain_timeout: 0\n"),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.server.drain_timeout, Duration::ZERO);
        let e = resolve(&Layers {
            flags: vec![(
                "server.drain_timeout".into(),
                "soon".into(),
                "--set server.drain_timeout".into(),
            )],
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("server.drain_timeout") && e.contains("duration"),
            "{e}"
        );
    }

    #[test]
    fn committed_example_matches_the_key_table() {
        // Regenerate with: python-docker-mcp config --example > config.example.yaml
        assert_eq!(
            include_str!("../config.example.yaml"),
            Config::example_yaml()
        );
    }

    #[test]
    fn example_yaml_parses_to_the_defaults() {
        let text = Config::example_yaml();
        let c = resolve(&Layers {
            file: file(&text),
            ..Default::default()
        })
        .unwrap();
        let d = Config::defaults();
        assert_eq!(c.docker.image, d.docker.image);
        assert_eq!(c.docker.memory_limit, d.docker.memory_limit);
        assert_eq!(c.package.timeout, d.package.timeout);
    }
}
