//! The Kubernetes backend (experimental): one Pod per sandbox; the only module that uses kube
//! and k8s-openapi.
//!
//! It renders a runtime-neutral [`SandboxSpec`] into a Pod ([`pod`], a pure function), keeps
//! the sandboxes off the network with NetworkPolicies ([`network_policies`], created or
//! checked before the first pod), speaks to the helper over `pods/attach` (a WebSocket, the
//! `v5.channel.k8s.io` protocol), and keeps package volumes as PersistentVolumeClaims
//! ([`pvc`]). It connects lazily, from `KUBECONFIG` or the in-cluster service account, so the
//! daemon starts and answers while the cluster is unreachable; errors name the fix (the
//! kubeconfig, the namespace, the RBAC verbs).
//!
//! **How nothing the helper writes is lost.** Output written while nobody is attached is
//! gone, and a pod can only be attached once it runs. So every pod's command is the spec's
//! command behind a one-byte gate ([`GATE`]): a `python3 -c` that reads one byte from stdin
//! and then `exec`s the real command. The backend waits for the pod to be Running, attaches,
//! and only then writes the byte: the helper starts after the attach is in place. Installer
//! pods get the same gate (so their stdin is open too, though they never read it).
//!
//! **What a Pod cannot say.** Kubernetes has no per-pod process limit (`limits.pids`: set the
//! kubelet's `podPidsLimit` on the nodes), no mode or owner for an `emptyDir` (they are
//! world-writable, `0777`), no way to keep no logs (the kubelet always keeps a container's
//! output; `keep_logs` is not honoured), and a pod's stdin stays open after the daemon goes
//! (`stdinOnce: false`, so another attach, or another replica, can reach the helper). The
//! pod's pause container is PID 1 (`shareProcessNamespace`), which reaps zombies as Docker's
//! `--init` does.
//!
//! **Orphans.** Run in a cluster with `POD_NAME` and `POD_UID` set from the downward API, the
//! daemon puts an owner reference to its own Pod on every pod and claim it creates, and the
//! cluster's garbage collector removes them when the daemon's Pod goes, even after a crash.
//! Objects with no owner reference (a daemon run outside the cluster) follow the Docker
//! rule: same host label, a pid label naming no running daemon.
//!
//! Pods that may outlive the daemon (`session.durable`) get no owner reference.
//!
//! **Durable records.** What a container's name carries on Docker (`crate::durable`: a
//! session `pdm-s.`, a warm sandbox `pdm-w.`, a claimed one `pdm-t.`) is a pod's
//! [`NAME_ANNOTATION`] here, since pod names cannot change; a pod without it is named by
//! its pod name. The claim ([`Kubernetes::rename`]) is a merge patch of that annotation
//! with the `resourceVersion` the claimer read as its precondition ([`rename_patch`]): the
//! API server answers 409 Conflict to the loser of a race. The sweep goes by the record as
//! Docker's goes by the name. A warm pod's slot is its pod name, so a slot is free again
//! only once the pod claimed from it ends (SCALING.md says why). All of this is tested
//! against a mocked API only.
//!
//! **Warm pool.** Sandbox pods start labelled `python-docker-mcp.state=warm`; a session that
//! takes one relabels it `claimed` with the session's id ([`Kubernetes::claim`]), so any
//! replica can find a session's pod by label.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext, PodSpec,
    ResourceRequirements, SeccompProfile, SecurityContext, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicySpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use kube::api::{Api, AttachParams, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::OnceCell;

use super::{Attached, EngineInfo, EngineKind, Named, Output, RuntimeError, Sweep, Swept};
use crate::config::Config;
use crate::durable::{self, ClaimedName, Holder, SessionName, WarmName};
use crate::sandbox::{labels, Network, Owner, Role, SandboxSpec};

/// The name of the one container in every pod.
pub const CONTAINER: &str = "sandbox";
/// Label saying whether a pod may reach the network: `none` or `outbound`. The
/// NetworkPolicies select on it.
pub const NETWORK_LABEL: &str = "python-docker-mcp.network";
/// Label of a sandbox pod's place in the warm pool: `warm`, then `claimed`.
pub const STATE_LABEL: &str = "python-docker-mcp.state";
/// Annotation carrying a pod's record in the grammar of [`crate::durable`] (`pdm-s.`,
/// `pdm-w.`, `pdm-t.` names): what a container's name carries on Docker. Pod names cannot
/// change, so the record moves here; a pod without it is named by its pod name.
pub const NAME_ANNOTATION: &str = "python-docker-mcp.name";
/// The policy that denies every pod of ours all ingress and egress.
pub const DENY_POLICY: &str = "python-docker-mcp-deny-all";
/// The policy that gives outbound pods (installers) egress.
pub const EGRESS_POLICY: &str = "python-docker-mcp-outbound";

/// The gate in front of every pod's command: wait for one byte on stdin (written once the
/// backend is attached), then become the real command (`argv[1:]`). EOF first: exit.
pub const GATE: &str =
    "import os, sys\nif os.read(0, 1):\n    os.execvp(sys.argv[1], sys.argv[1:])\n";

/// How long a pod may take to be scheduled, get its volumes and start.
const POD_START_TIMEOUT: Duration = Duration::from_secs(120);
/// Pause between two looks at a pod's status.
const POLL: Duration = Duration::from_millis(200);
/// Bytes the attach pipes buffer in each direction before the other side must read.
const ATTACH_BUFFER: usize = 64 * 1024;

/// What the Pod and claim renderers need besides the spec: the `kubernetes.*` settings and
/// the daemon's own Pod, when it runs in one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    pub runtime_class: Option<String>,
    pub ephemeral_storage: u64,
    pub volume_size: u64,
    pub storage_class: Option<String>,
    pub volume_access: String,
    /// An owner reference to the daemon's Pod (from `POD_NAME` and `POD_UID`).
    pub owner: Option<OwnerReference>,
}

impl Settings {
    pub fn new(config: &Config, owner: Option<OwnerReference>) -> Settings {
        let k = &config.kubernetes;
        Settings {
            runtime_class: k.runtime_class.clone(),
            ephemeral_storage: k.ephemeral_storage,
            volume_size: k.volume_size,
            storage_class: k.storage_class.clone(),
            volume_access: k.volume_access.clone(),
            owner,
        }
    }
}

/// The daemon's own Pod as an owner, when the downward API gives its name and uid
/// (`env: POD_NAME from metadata.name, POD_UID from metadata.uid`).
pub fn owner_from_env() -> Option<OwnerReference> {
    let name = std::env::var("POD_NAME").ok().filter(|s| !s.is_empty())?;
    let uid = std::env::var("POD_UID").ok().filter(|s| !s.is_empty())?;
    Some(OwnerReference {
        api_version: "v1".into(),
        kind: "Pod".into(),
        name,
        uid,
        ..Default::default()
    })
}

/// A label value Kubernetes accepts: at most 63 of `[A-Za-z0-9._-]`, starting and ending
/// with a letter or digit. Other characters become `-`.
fn label_value(v: &str) -> String {
    let mapped: String = v
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    mapped
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

fn labels_of(spec_labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    spec_labels
        .iter()
        .map(|(k, v)| (k.clone(), label_value(v)))
        .collect()
}

fn quantity(bytes: u64) -> Quantity {
    Quantity(bytes.to_string())
}

/// CPUs as millicores: `0.5` is `500m`.
fn cpu_quantity(cpus: f64) -> Quantity {
    Quantity(format!("{}m", (cpus * 1000.0).round() as u64))
}

/// The Pod for `spec`: every value comes from the spec (the profile is decided in
/// `sandbox.rs`) or from the `kubernetes.*` settings, except what any pod of ours needs:
/// the stdin gate, no service-account token, no service links, no host namespaces, never
/// restarted, the pause container as PID 1, the image used as the node has it.
pub fn pod(spec: &SandboxSpec, settings: &Settings) -> Pod {
    let sandbox = spec.labels.get(labels::ROLE).map(String::as_str) == Some(Role::Sandbox.as_str());
    let (volumes, mounts) = pod_volumes(spec);
    Pod {
        metadata: ObjectMeta {
            name: Some(spec.name.clone()),
            labels: Some(pod_labels(spec, sandbox)),
            // A durable sandbox outlives the daemon's Pod: the garbage collector must not
            // take it with that Pod (its own timer and every replica's sweep end it).
            owner_references: settings
                .owner
                .clone()
                .filter(|_| !spec.detachable)
                .map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![container(spec, settings, mounts)],
            volumes: Some(volumes),
            restart_policy: Some("Never".into()),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            host_network: Some(false),
            host_pid: Some(false),
            host_ipc: Some(false),
            share_process_namespace: Some(true),
            // The RuntimeClass is for code sandboxes; installers use the cluster's default,
            // as `docker.runtime` is for sandboxes only.
            runtime_class_name: if sandbox {
                settings.runtime_class.clone()
            } else {
                None
            },
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(spec.user.uid != 0),
                run_as_user: Some(spec.user.uid.into()),
                run_as_group: Some(spec.user.gid.into()),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    localhost_profile: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    }
}

/// The spec's labels, plus the network policy's (`outbound` or `none`) and, for a code
/// sandbox, the state `warm`.
fn pod_labels(spec: &SandboxSpec, sandbox: bool) -> BTreeMap<String, String> {
    let mut labels = labels_of(&spec.labels);
    // The pod network is the only one: `network.egress_network` is the Docker engine's.
    let outbound = matches!(spec.network, Network::Outbound { .. });
    labels.insert(
        NETWORK_LABEL.into(),
        if outbound { "outbound" } else { "none" }.into(),
    );
    if sandbox {
        labels.insert(STATE_LABEL.into(), "warm".into());
    }
    labels
}

/// Scratch mounts as memory-backed `emptyDir`s, then the package volumes as claims.
fn pod_volumes(spec: &SandboxSpec) -> (Vec<Volume>, Vec<VolumeMount>) {
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    for (i, s) in spec.scratch.iter().enumerate() {
        let name = format!("scratch-{i}");
        volumes.push(Volume {
            name: name.clone(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".into()),
                size_limit: Some(quantity(s.size_bytes)),
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name,
            mount_path: s.path.clone(),
            ..Default::default()
        });
    }
    for (i, v) in spec.volumes.iter().enumerate() {
        let name = format!("volume-{i}");
        volumes.push(Volume {
            name: name.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: v.volume.clone(),
                read_only: Some(v.read_only),
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name,
            mount_path: v.target.clone(),
            read_only: Some(v.read_only),
            ..Default::default()
        });
    }
    (volumes, mounts)
}

/// The pod's one container: the gate before the spec's command, its environment, limits
/// equal to requests, and the spec's security settings.
fn container(spec: &SandboxSpec, settings: &Settings, mounts: Vec<VolumeMount>) -> Container {
    let limits = BTreeMap::from([
        ("cpu".to_string(), cpu_quantity(spec.limits.cpus)),
        ("memory".to_string(), quantity(spec.limits.memory_bytes)),
        (
            "ephemeral-storage".to_string(),
            quantity(settings.ephemeral_storage),
        ),
    ]);
    let mut command = vec!["python3".to_string(), "-c".into(), GATE.into()];
    command.extend(spec.command.iter().cloned());
    let env = spec
        .env
        .iter()
        .map(|e| {
            let (name, value) = e.split_once('=').unwrap_or((e, ""));
            EnvVar {
                name: name.into(),
                value: Some(value.into()),
                ..Default::default()
            }
        })
        .collect();
    let security = &spec.security;
    Container {
        name: CONTAINER.into(),
        image: Some(spec.image.clone()),
        // An image loaded into the nodes (no registry) must not be pulled, even `:latest`.
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(command),
        env: Some(env),
        working_dir: Some(spec.working_dir.clone()),
        stdin: Some(true),
        stdin_once: Some(false),
        tty: Some(false),
        resources: Some(ResourceRequirements {
            requests: Some(limits.clone()),
            limits: Some(limits),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(!security.no_new_privileges),
            capabilities: security.drop_all_capabilities.then(|| Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            privileged: Some(false),
            read_only_root_filesystem: Some(security.read_only_root),
            ..Default::default()
        }),
        volume_mounts: Some(mounts),
        ..Default::default()
    }
}

/// The claim behind a package volume (or the shared download cache): labelled like the
/// volume, owned by the daemon's Pod unless it outlives instances (the cache has no
/// instance label).
pub fn pvc(
    name: &str,
    spec_labels: &BTreeMap<String, String>,
    settings: &Settings,
) -> PersistentVolumeClaim {
    let owned = spec_labels.contains_key(labels::INSTANCE);
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(labels_of(spec_labels)),
            owner_references: settings.owner.clone().filter(|_| owned).map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec![settings.volume_access.clone()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    quantity(settings.volume_size),
                )])),
                limits: None,
            }),
            storage_class_name: settings.storage_class.clone(),
            ..Default::default()
        }),
        status: None,
    }
}

/// The two NetworkPolicies of the namespace: every pod of ours is denied all ingress and
/// egress, and pods labelled `outbound` (installers; sandboxes only when
/// `docker.network_disabled` is off) are given egress. Policies add up, so an outbound pod
/// gets egress and still no ingress. They hold only where the cluster's network plugin
/// enforces NetworkPolicy (Calico, Cilium, ...).
pub fn network_policies() -> Vec<NetworkPolicy> {
    let policy = |name: &str, select: &[(&str, &str)], types: &[&str], egress| NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([(
                labels::MANAGED.to_string(),
                "true".to_string(),
            )])),
            ..Default::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(
                    select
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                match_expressions: None,
            }),
            policy_types: Some(types.iter().map(|t| t.to_string()).collect()),
            ingress: None,
            egress,
        }),
    };
    vec![
        policy(
            DENY_POLICY,
            &[(labels::MANAGED, "true")],
            &["Ingress", "Egress"],
            None,
        ),
        policy(
            EGRESS_POLICY,
            &[(labels::MANAGED, "true"), (NETWORK_LABEL, "outbound")],
            &["Egress"],
            Some(vec![NetworkPolicyEgressRule::default()]),
        ),
    ]
}

/// Where a pod is on its way to running, read from its status.
#[derive(Debug, Clone, PartialEq)]
enum Progress {
    /// Not yet running: what the cluster says it waits for.
    Waiting(String),
    Running,
    /// The node cannot get the image.
    NoImage {
        reason: String,
        message: String,
    },
    /// It will never run: bad container config, or the pod failed before starting.
    Broken(String),
    /// The container ended.
    Exited {
        exit_code: i32,
        reason: String,
    },
}

fn progress(pod: &Pod) -> Progress {
    let status = pod.status.clone().unwrap_or_default();
    let container = status
        .container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == CONTAINER);
    if let Some(state) = container.and_then(|c| c.state.as_ref()) {
        if let Some(t) = &state.terminated {
            return Progress::Exited {
                exit_code: t.exit_code,
                reason: t.reason.clone().unwrap_or_default(),
            };
        }
        if state.running.is_some() {
            return Progress::Running;
        }
        if let Some(w) = &state.waiting {
            let reason = w.reason.clone().unwrap_or_default();
            let message = w.message.clone().unwrap_or_default();
            return match reason.as_str() {
                "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName" | "ErrImageNeverPull" => {
                    Progress::NoImage { reason, message }
                }
                "CreateContainerConfigError" | "CreateContainerError" | "RunContainerError" => {
                    Progress::Broken(format!("{reason}: {message}"))
                }
                _ => Progress::Waiting(format!("{reason} {message}").trim().to_string()),
            };
        }
    }
    match status.phase.as_deref() {
        Some("Failed") | Some("Succeeded") => Progress::Broken(format!(
            "the pod ended ({}) {}",
            status.reason.unwrap_or_default(),
            status.message.unwrap_or_default()
        )),
        _ => {
            let unscheduled = status
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == "PodScheduled" && c.status == "False");
            Progress::Waiting(match unscheduled {
                Some(c) => format!(
                    "not scheduled: {}",
                    c.message.clone().or(c.reason.clone()).unwrap_or_default()
                ),
                None => status.phase.unwrap_or_else(|| "Pending".into()),
            })
        }
    }
}

/// A pod's record: its [`NAME_ANNOTATION`], else its pod name.
pub fn record(meta: &ObjectMeta) -> String {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(NAME_ANNOTATION))
        .or(meta.name.as_ref())
        .cloned()
        .unwrap_or_default()
}

/// A pod as [`Named`]: id is the pod name, name its record.
fn named_of(pod: &Pod) -> Option<Named> {
    let meta = &pod.metadata;
    Some(Named {
        id: meta.name.clone()?,
        name: record(meta),
        created: meta
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_second().max(0) as u64),
        running: pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"),
        labels: meta
            .labels
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
    })
}

/// The claim mounted at `target` in the pod's sandbox container.
fn claim_at(pod: &Pod, target: &str) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let mount = spec
        .containers
        .iter()
        .find(|c| c.name == CONTAINER)?
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == target)?;
    spec.volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)?
        .persistent_volume_claim
        .as_ref()
        .map(|c| c.claim_name.clone())
}

/// The merge patch that moves a pod's record to `to`, the claim: `resourceVersion` is the
/// version the claimer read, and the API server applies the patch only if the pod is still
/// at it (else 409 Conflict), so of two claimers of one read exactly one wins. The owner
/// reference follows the record: a pod claimed for a transient run (`pdm-t.`) is owned by
/// the claiming daemon's Pod (the garbage collector ends it if that Pod goes); a session or
/// warm pod is owned by no one (it outlives daemons).
pub fn rename_patch(
    to: &str,
    resource_version: &str,
    owner: Option<&OwnerReference>,
) -> serde_json::Value {
    let mut metadata = serde_json::json!({
        "resourceVersion": resource_version,
        "annotations": {NAME_ANNOTATION: to},
    });
    if ClaimedName::parse(to).is_some() {
        if let Some(o) = owner {
            metadata["ownerReferences"] = serde_json::json!([o]);
        }
    } else if SessionName::parse(to).is_some() || WarmName::parse(to).is_some() {
        metadata["ownerReferences"] = serde_json::Value::Null;
    }
    serde_json::json!({ "metadata": metadata })
}

/// Whether the pod called `pod` may carry the record `to`. A warm record
/// (`pdm-w.<fingerprint>.<slot>`) only on the pod named for that slot
/// (`<prefix>.<fingerprint>.<slot>`, as the record itself or a filling name), so the API
/// server's refusal of a second pod by one name keeps a slot to one pod; any other record
/// on any pod.
fn slot_of_pod(pod: &str, to: &str) -> bool {
    let Some(w) = WarmName::parse(to) else {
        return true;
    };
    pod.split_once('.')
        .is_some_and(|(_, rest)| rest == format!("{}.{}", w.fingerprint, w.slot))
}

/// Whether a pod with this record belongs to no daemon or to another daemon than `me`: it
/// stays when the instance that made it is removed.
fn held_elsewhere(record: &str, me: &Holder) -> bool {
    SessionName::parse(record).is_some()
        || WarmName::parse(record).is_some()
        || ClaimedName::parse(record).is_some_and(|c| c.holder != *me)
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// A cheap-to-clone handle on the cluster connection.
#[derive(Clone)]
pub struct Kubernetes {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    /// `kubernetes.namespace`; `None`: the client's default.
    namespace: Option<String>,
    /// Made on first use; a failed attempt is retried next time.
    conn: OnceCell<Connection>,
    /// The NetworkPolicies were created or checked (once per daemon, before the first pod).
    policies: OnceCell<()>,
}

/// One client and the namespace it works in.
struct Connection {
    client: kube::Client,
    namespace: String,
}

impl Connection {
    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }
    fn claims(&self) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }
    fn policies(&self) -> Api<NetworkPolicy> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Map a failure of `op` to an error that names the fix.
    fn refused(&self, op: &'static str) -> impl FnOnce(kube::Error) -> RuntimeError + '_ {
        move |e| refused(op, &self.namespace, e)
    }
}

fn refused(op: &'static str, namespace: &str, e: kube::Error) -> RuntimeError {
    use kube::client::UpgradeConnectionError as Upgrade;
    let forbidden = |message: String| RuntimeError::Forbidden {
        op,
        namespace: namespace.into(),
        message,
    };
    match e {
        // RBAC says "... is forbidden: User "x" cannot create resource ..."; an admission
        // refusal (Pod Security, a missing RuntimeClass) is a 403 too, but names no verb.
        kube::Error::Api(s) if s.code == 403 && s.message.contains("cannot ") => {
            forbidden(s.message)
        }
        kube::Error::Api(s)
            if s.code == 404 && s.message.contains(&format!("namespaces \"{namespace}\"")) =>
        {
            RuntimeError::NoNamespace {
                namespace: namespace.into(),
            }
        }
        kube::Error::Api(s) => RuntimeError::Api {
            engine: EngineKind::Kubernetes.name(),
            op,
            message: s.message,
        },
        kube::Error::UpgradeConnection(Upgrade::ProtocolSwitch(code)) if code.as_u16() == 403 => {
            forbidden(format!("the API server answered the upgrade with {code}"))
        }
        kube::Error::HyperError(_)
        | kube::Error::Service(_)
        | kube::Error::Auth(_)
        | kube::Error::InferConfig(_)
        | kube::Error::InferKubeconfig(_)
        | kube::Error::RustlsTls(_)
        | kube::Error::TlsRequired => RuntimeError::KubeUnreachable {
            reason: e.to_string(),
        },
        other => RuntimeError::Api {
            engine: EngineKind::Kubernetes.name(),
            op,
            message: other.to_string(),
        },
    }
}

/// Make ring, the provider kube is built with, rustls's process-wide default (once; a
/// provider already installed is kept). kube builds a rustls connector for every client,
/// and rustls refuses to pick a provider when two are compiled in, as in test builds
/// (reqwest brings aws-lc-rs).
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Chunks read from `r`, each wrapped by `wrap`, until EOF or an error.
fn chunks<R>(r: R, wrap: fn(Bytes) -> Output) -> impl Stream<Item = Output> + Send
where
    R: AsyncRead + Unpin + Send + 'static,
{
    futures::stream::unfold(r, move |mut r| async move {
        let mut buf = vec![0u8; 16 * 1024];
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((wrap(Bytes::from(buf)), r))
            }
        }
    })
}

impl Kubernetes {
    /// A backend for `runtime.backend: kubernetes`; nothing is contacted yet.
    pub fn new(config: &Config) -> Kubernetes {
        Kubernetes {
            inner: Arc::new(Inner {
                settings: Settings::new(config, owner_from_env()),
                namespace: config.kubernetes.namespace.clone(),
                conn: OnceCell::new(),
                policies: OnceCell::new(),
            }),
        }
    }

    /// A backend on a given client (tests pass one over a mocked transport).
    pub fn with_client(
        client: kube::Client,
        config: &Config,
        owner: Option<OwnerReference>,
    ) -> Kubernetes {
        let namespace = config
            .kubernetes
            .namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_string());
        Kubernetes {
            inner: Arc::new(Inner {
                settings: Settings::new(config, owner),
                namespace: Some(namespace.clone()),
                conn: OnceCell::new_with(Some(Connection { client, namespace })),
                policies: OnceCell::new(),
            }),
        }
    }

    async fn conn(&self) -> Result<&Connection, RuntimeError> {
        self.inner
            .conn
            .get_or_try_init(|| async {
                install_tls_provider();
                let client = kube::Client::try_default()
                    .await
                    .map_err(|e| refused("connect", "", e))?;
                let namespace = self
                    .inner
                    .namespace
                    .clone()
                    .unwrap_or_else(|| client.default_namespace().to_string());
                tracing::debug!(%namespace, "connected to the Kubernetes API");
                Ok(Connection { client, namespace })
            })
            .await
    }

    /// The API server's version; connects if needed.
    pub async fn engine(&self) -> Result<EngineInfo, RuntimeError> {
        Ok(EngineInfo {
            kind: EngineKind::Kubernetes,
            version: self.ping().await?,
        })
    }

    /// Check that the API server answers; returns its version.
    pub async fn ping(&self) -> Result<String, RuntimeError> {
        let conn = self.conn().await?;
        let info = conn
            .client
            .apiserver_version()
            .await
            .map_err(conn.refused("report its version"))?;
        Ok(info.git_version)
    }

    /// Whether the image is there: the API cannot tell what the nodes have, so this says
    /// yes; a missing image shows when a pod starts ([`RuntimeError::ImageUnavailable`]).
    pub async fn image_present(&self, _image: &str) -> Result<bool, RuntimeError> {
        Ok(true)
    }

    /// Create the NetworkPolicies, or bring them back to ours if someone changed them; once.
    async fn ensure_policies(&self) -> Result<(), RuntimeError> {
        let conn = self.conn().await?;
        self.inner
            .policies
            .get_or_try_init(|| async {
                let api = conn.policies();
                for want in network_policies() {
                    let name = want.metadata.name.clone().unwrap_or_default();
                    let have = api
                        .get_opt(&name)
                        .await
                        .map_err(conn.refused("read a NetworkPolicy"))?;
                    match have {
                        None => match api.create(&PostParams::default(), &want).await {
                            Ok(_) => {}
                            Err(e) if is_status(&e, 409) => {}
                            Err(e) => return Err(conn.refused("create a NetworkPolicy")(e)),
                        },
                        Some(have) if have.spec == want.spec => {}
                        Some(have) => {
                            tracing::warn!(policy = %name, "a NetworkPolicy of ours was changed; putting it back");
                            let mut put = want.clone();
                            put.metadata.resource_version = have.metadata.resource_version;
                            api.replace(&name, &PostParams::default(), &put)
                                .await
                                .map_err(conn.refused("update a NetworkPolicy"))?;
                        }
                    }
                }
                Ok(())
            })
            .await?;
        Ok(())
    }

    /// Create the pod for `spec` (after the NetworkPolicies are in place).
    async fn create_pod(&self, spec: &SandboxSpec) -> Result<String, RuntimeError> {
        if !spec.binds.is_empty() {
            return Err(RuntimeError::EgressUnsupported);
        }
        self.ensure_policies().await?;
        let conn = self.conn().await?;
        let pod = pod(spec, &self.inner.settings);
        conn.pods()
            .create(&PostParams::default(), &pod)
            .await
            .map_err(conn.refused("create a pod"))?;
        Ok(spec.name.clone())
    }

    /// The pod's status now; `None` once it is gone.
    async fn look(&self, name: &str) -> Result<Option<Pod>, RuntimeError> {
        let conn = self.conn().await?;
        conn.pods()
            .get_opt(name)
            .await
            .map_err(conn.refused("read a pod"))
    }

    /// Wait until the pod runs (its command sits at the gate).
    async fn wait_running(&self, name: &str, image: &str) -> Result<(), RuntimeError> {
        let deadline = tokio::time::Instant::now() + POD_START_TIMEOUT;
        let not_running = |why: String| RuntimeError::PodNotRunning {
            pod: name.into(),
            why,
        };
        loop {
            let Some(pod) = self.look(name).await? else {
                return Err(not_running("it was deleted while starting".into()));
            };
            match progress(&pod) {
                Progress::Running => return Ok(()),
                Progress::NoImage { reason, message } => {
                    return Err(RuntimeError::ImageUnavailable {
                        image: image.into(),
                        reason,
                        message,
                    })
                }
                Progress::Broken(why) => return Err(not_running(why)),
                Progress::Exited { exit_code, reason } => {
                    return Err(not_running(format!(
                        "it exited ({reason}, code {exit_code}) before it was attached"
                    )))
                }
                Progress::Waiting(why) if tokio::time::Instant::now() >= deadline => {
                    return Err(not_running(format!(
                        "still waiting after {POD_START_TIMEOUT:?}: {why}"
                    )))
                }
                Progress::Waiting(_) => tokio::time::sleep(POLL).await,
            }
        }
    }

    /// Create the pod, wait until it runs, attach its stdin, stdout and stderr, then open
    /// the gate: the command starts only once the attach is in place, so nothing it writes
    /// is lost. On any failure the pod is deleted before the error returns.
    pub async fn start_attached(&self, spec: &SandboxSpec) -> Result<Attached, RuntimeError> {
        let name = self.create_pod(spec).await?;
        match self.attach_pod(&name, &spec.image).await {
            Ok(attached) => Ok(attached),
            Err(e) => {
                self.remove(&name).await;
                Err(e)
            }
        }
    }

    /// Attach again to a running durable sandbox's helper (adoption, or a warm pod of the
    /// host pool just claimed). The gate's byte goes to the helper this time, which skips
    /// a blank line.
    pub async fn attach(&self, id: &str, name: &str) -> Result<Attached, RuntimeError> {
        let mut attached = self.attach_pod(id, "the sandbox image").await?;
        attached.name = name.into();
        Ok(attached)
    }

    async fn attach_pod(&self, name: &str, image: &str) -> Result<Attached, RuntimeError> {
        self.wait_running(name, image).await?;
        let conn = self.conn().await?;
        let params = AttachParams {
            container: Some(CONTAINER.into()),
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false,
            max_stdin_buf_size: Some(ATTACH_BUFFER),
            max_stdout_buf_size: Some(ATTACH_BUFFER),
            max_stderr_buf_size: Some(ATTACH_BUFFER),
        };
        let mut process = conn
            .pods()
            .attach(name, &params)
            .await
            .map_err(conn.refused("attach to a pod (pods/attach)"))?;
        let (Some(mut input), Some(stdout), Some(stderr)) =
            (process.stdin(), process.stdout(), process.stderr())
        else {
            return Err(RuntimeError::Api {
                engine: EngineKind::Kubernetes.name(),
                op: "attach to a pod",
                message: "the attach gave no stdin, stdout or stderr".into(),
            });
        };
        // Open the gate.
        let opened = async {
            input.write_all(b"\n").await?;
            input.flush().await
        };
        opened.await.map_err(|e| RuntimeError::Api {
            engine: EngineKind::Kubernetes.name(),
            op: "write to a pod's stdin",
            message: e.to_string(),
        })?;
        // The attached process aborts its WebSocket task when dropped: the output stream
        // owns it, so the connection lives exactly as long as someone reads.
        let output = futures::stream::select(
            chunks(stdout, Output::Stdout),
            chunks(stderr, Output::Stderr),
        )
        .map(move |o| {
            let _connection = &process;
            o
        });
        Ok(Attached {
            id: name.into(),
            name: name.into(),
            input: Box::pin(input),
            output: Box::pin(output),
        })
    }

    /// Managed pods, running or not, whose record contains `part` (see [`NAME_ANNOTATION`]).
    pub async fn named(&self, part: &str) -> Result<Vec<Named>, RuntimeError> {
        Ok(self
            .managed_pods()
            .await?
            .iter()
            .filter_map(named_of)
            .filter(|n| n.name.contains(part))
            .collect())
    }

    async fn managed_pods(&self) -> Result<Vec<Pod>, RuntimeError> {
        let conn = self.conn().await?;
        let selector = ListParams::default().labels(&format!("{}=true", labels::MANAGED));
        Ok(conn
            .pods()
            .list(&selector)
            .await
            .map_err(conn.refused("list pods"))?
            .items)
    }

    /// Move the record of the pod whose record is `from` to `to`: the claim, a merge patch
    /// with the `resourceVersion` read as its precondition ([`rename_patch`]). `Ok(false)`:
    /// no pod's record is `from` any more, or another daemon changed the pod first (409).
    pub async fn rename(&self, from: &str, to: &str) -> Result<bool, RuntimeError> {
        let pods = self.managed_pods().await?;
        let Some(pod) = pods.iter().find(|p| record(&p.metadata) == from) else {
            return Ok(false);
        };
        let (Some(name), Some(version)) = (&pod.metadata.name, &pod.metadata.resource_version)
        else {
            return Ok(false);
        };
        if !slot_of_pod(name, to) {
            return Err(RuntimeError::Api {
                engine: EngineKind::Kubernetes.name(),
                op: "move a warm record",
                message: format!(
                    "the pod `{name}` is not the one for `{to}`: a warm record names its \
                     slot, and only the pod named for that slot may carry it"
                ),
            });
        }
        let conn = self.conn().await?;
        let patch = rename_patch(to, version, self.inner.settings.owner.as_ref());
        match conn
            .pods()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_status(&e, 409) || is_status(&e, 404) => Ok(false),
            Err(e) => Err(conn.refused("patch a pod's record")(e)),
        }
    }

    /// The PersistentVolumeClaim mounted at `target` in pod `id`; `None` for an `emptyDir`
    /// or nothing there.
    pub async fn volume_at(&self, id: &str, target: &str) -> Result<Option<String>, RuntimeError> {
        let Some(pod) = self.look(id).await? else {
            return Ok(None);
        };
        Ok(claim_at(&pod, target))
    }

    /// Label a warm sandbox pod as taken by `session`. Failures are logged.
    pub async fn claim(&self, id: &str, session: &str) {
        let Ok(conn) = self.conn().await else {
            return;
        };
        let patch = serde_json::json!({"metadata": {"labels": {
            STATE_LABEL: "claimed",
            labels::SESSION: label_value(session),
        }}});
        if let Err(e) = conn
            .pods()
            .patch(id, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            tracing::debug!(pod = %id, error = %e, "could not label the pod as claimed");
        }
    }

    /// Delete a pod at once; already gone is fine. Failures are logged.
    pub async fn remove(&self, id: &str) {
        let Ok(conn) = self.conn().await else {
            return;
        };
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::background()
        };
        match conn.pods().delete(id, &params).await {
            Ok(_) => {}
            Err(e) if is_status(&e, 404) => {}
            Err(e) => tracing::warn!(pod = %id, error = %e, "could not delete pod"),
        }
    }

    /// The exit code of a pod whose output has ended: its status is polled until the
    /// container is reported exited (`-1` for a pod that is gone).
    pub async fn exit_code(&self, id: &str) -> Result<i64, RuntimeError> {
        loop {
            match self.look(id).await?.as_ref().map(progress) {
                Some(Progress::Exited { exit_code, .. }) => return Ok(i64::from(exit_code)),
                None => return Ok(-1),
                Some(_) => tokio::time::sleep(POLL).await,
            }
        }
    }

    /// Create a labelled PersistentVolumeClaim (idempotent).
    pub async fn create_volume(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), RuntimeError> {
        let conn = self.conn().await?;
        match conn
            .claims()
            .create(
                &PostParams::default(),
                &pvc(name, labels, &self.inner.settings),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, 409) => Ok(()),
            Err(e) => Err(conn.refused("create a PersistentVolumeClaim")(e)),
        }
    }

    /// Delete a claim; already gone is fine. The cluster keeps it until no pod mounts it.
    pub async fn remove_volume(&self, name: &str) {
        let Ok(conn) = self.conn().await else {
            return;
        };
        match conn
            .claims()
            .delete(name, &DeleteParams::background())
            .await
        {
            Ok(_) => {}
            Err(e) if is_status(&e, 404) => {}
            Err(e) => tracing::warn!(claim = %name, error = %e, "could not delete claim"),
        }
    }

    /// Whether the pod's container was killed for its memory, waiting up to `within` for
    /// the kubelet to report it. Pod names are never reused, so `since` is not needed.
    pub async fn oom_killed(&self, id: &str, _since: Instant, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match self.look(id).await {
                Ok(Some(pod)) => {
                    if let Progress::Exited { reason, .. } = progress(&pod) {
                        return reason == "OOMKilled";
                    }
                }
                Ok(None) | Err(_) => return false,
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Delete every pod and claim of one daemon instance; returns how many pods. Pods (by
    /// name) and claims in `keep` stay, and so does a pod whose record says it is no
    /// daemon's or another's (a durable session, a warm pod of the host pool, a pod another
    /// daemon claimed).
    pub async fn remove_instance(
        &self,
        instance: &str,
        keep: &std::collections::HashSet<String>,
    ) -> Result<usize, RuntimeError> {
        let me = Holder::me();
        let conn = self.conn().await?;
        let selector = ListParams::default().labels(&format!("{}={instance}", labels::INSTANCE));
        let pods = conn
            .pods()
            .list(&selector)
            .await
            .map_err(conn.refused("list pods"))?;
        let names: Vec<String> = pods
            .items
            .into_iter()
            .filter(|p| !held_elsewhere(&record(&p.metadata), &me))
            .filter_map(|p| p.metadata.name)
            .filter(|n| !keep.contains(n))
            .collect();
        futures::future::join_all(names.iter().map(|n| self.remove(n))).await;
        let claims = conn
            .claims()
            .list(&selector)
            .await
            .map_err(conn.refused("list PersistentVolumeClaims"))?;
        let claims: Vec<String> = claims
            .items
            .into_iter()
            .filter_map(|c| c.metadata.name)
            .filter(|n| !keep.contains(n))
            .collect();
        futures::future::join_all(claims.iter().map(|n| self.remove_volume(n))).await;
        Ok(names.len())
    }

    /// Find what the sweep removes, and delete it unless `sweep.dry_run`. By a pod's record
    /// ([`NAME_ANNOTATION`]), as Docker's sweep goes by a container's name:
    /// - a durable session (`pdm-s.`) when [`SessionName::expired`]: past its deadline or
    ///   its lifetime, and no live daemon holds it;
    /// - a warm pod of the host pool (`pdm-w.`) when the API server created it more than
    ///   `sweep.warm_max_age` ago;
    /// - a claimed pod (`pdm-t.`) when its holder is gone (a holder on another host, as
    ///   another replica is, counts as alive: its owner reference covers it);
    /// - anything else as before: objects with an owner reference are the garbage
    ///   collector's (see the module doc), the others follow the Docker rule (host and pid
    ///   labels).
    ///
    /// With `sweep.all`, every pod and claim labelled with this host.
    pub async fn sweep_orphans(
        &self,
        me: &Owner,
        sweep: &Sweep<'_>,
    ) -> Result<Swept, RuntimeError> {
        let conn = self.conn().await?;
        let selector = ListParams::default().labels(&format!("{}=true", labels::MANAGED));
        let now = durable::now();
        let host = label_value(&me.host);
        let orphan = |meta: &ObjectMeta| {
            let labels: HashMap<String, String> = meta
                .labels
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect();
            if sweep.all {
                return labels.get(labels::HOST) == Some(&host);
            }
            meta.owner_references.as_ref().is_none_or(Vec::is_empty)
                && super::docker::is_orphan(&labels, me, super::docker::daemon_alive)
        };
        let doomed = |pod: &Pod| {
            let Some(n) = named_of(pod) else {
                return false;
            };
            if sweep.all {
                return orphan(&pod.metadata);
            }
            if let Some(s) = SessionName::parse(&n.name) {
                return s.expired(n.created, sweep.max_lifetime, now, sweep.holder);
            }
            if WarmName::parse(&n.name).is_some() {
                return WarmName::expired(n.created, sweep.warm_max_age, now);
            }
            if let Some(c) = ClaimedName::parse(&n.name) {
                return !c.holder.alive(sweep.holder);
            }
            orphan(&pod.metadata)
        };
        let pods: Vec<String> = conn
            .pods()
            .list(&selector)
            .await
            .map_err(conn.refused("list pods"))?
            .items
            .into_iter()
            .filter(doomed)
            .filter_map(|p| p.metadata.name)
            .collect();
        let claims: Vec<String> = conn
            .claims()
            .list(&selector)
            .await
            .map_err(conn.refused("list PersistentVolumeClaims"))?
            .items
            .into_iter()
            .filter(|c| orphan(&c.metadata))
            .filter_map(|c| c.metadata.name)
            .collect();
        let swept = Swept {
            containers: pods.len(),
            volumes: claims.len(),
            removed: pods.clone(),
        };
        if !sweep.dry_run {
            futures::future::join_all(pods.iter().map(|n| self.remove(n))).await;
            futures::future::join_all(claims.iter().map(|n| self.remove_volume(n))).await;
        }
        Ok(swept)
    }

    /// Nothing runs in the background: attach connections end with their streams.
    pub fn close(&self) {}
}

#[cfg(test)]
mod tests;
