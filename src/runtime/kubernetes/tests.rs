//! Golden tests of the Pod, claim and NetworkPolicies a spec becomes, and the backend's
//! calls against a mocked API transport (`tower_test::mock::pair` under `kube::Client`).

use super::*;
use crate::config::{resolve, Layers};
use crate::sandbox::{installer_spec, repl_spec};
use serde_json::{json, Value};

fn fixed_owner() -> Owner {
    Owner {
        instance: "0123456789abcdef0123456789abcdef".into(),
        pid: 42,
        host: "h".into(),
    }
}

fn settings() -> Settings {
    Settings::new(&Config::defaults(), None)
}

/// The pod as JSON, with the embedded helper (long, checked by the sandbox tests)
/// replaced by `HELPER`.
fn rendered(spec: &SandboxSpec, settings: &Settings) -> Value {
    let mut v = serde_json::to_value(pod(spec, settings)).expect("serializable");
    if let Some(helper) = v["spec"]["containers"][0]["command"].get_mut(6) {
        *helper = "HELPER".into();
    }
    v
}

fn env(pairs: &[(&str, &str)]) -> Value {
    pairs
        .iter()
        .map(|(n, v)| json!({"name": n, "value": v}))
        .collect()
}

#[test]
fn a_repl_sandbox_becomes_exactly_this_pod() {
    // A sandbox of a daemon that keeps nothing past its exit (`session.durable: false`);
    // the durable one differs in its idle timer, its detachable stdin and its owner.
    let mut config = Config::defaults();
    config.session.durable = false;
    let spec = repl_spec(&config, &fixed_owner(), "pdm-r".into(), "shared", "own");
    let limits = json!({"cpu": "500m", "ephemeral-storage": "1073741824", "memory": "268435456"});
    let want = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "pdm-r",
            "labels": {
                "python-docker-mcp.host": "h",
                "python-docker-mcp.instance": "0123456789abcdef0123456789abcdef",
                "python-docker-mcp.managed": "true",
                "python-docker-mcp.network": "none",
                "python-docker-mcp.pid": "42",
                "python-docker-mcp.role": "sandbox",
                "python-docker-mcp.state": "warm"
            }
        },
        "spec": {
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "sandbox",
                "image": "python-docker-mcp:latest",
                "imagePullPolicy": "IfNotPresent",
                "command": ["python3", "-c", GATE, "python3", "-u", "-c", "HELPER"],
                "env": env(&[
                    ("PYTHONUNBUFFERED", "1"),
                    ("PYTHONDONTWRITEBYTECODE", "1"),
                    ("MPLBACKEND", "Agg"),
                    ("HOME", "/app"),
                    ("PDM_WORKDIR", "/app"),
                    ("PDM_PACKAGE_DIRS", "/opt/python-docker-mcp/session:/opt/python-docker-mcp/shared"),
                    ("PDM_PRELOAD", ""),
                    ("PDM_DATA_LIMIT", "234881024"),
                    ("OPENBLAS_NUM_THREADS", "1"),
                    ("OMP_NUM_THREADS", "1"),
                    ("MKL_NUM_THREADS", "1"),
                    ("PDM_ALLOWED_MODULES", ""),
                    ("PDM_BLOCKED_MODULES", ""),
                ]),
                "workingDir": "/app",
                "stdin": true,
                "stdinOnce": false,
                "tty": false,
                "resources": {"limits": limits, "requests": limits},
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]},
                    "privileged": false,
                    "readOnlyRootFilesystem": true
                },
                "volumeMounts": [
                    {"name": "scratch-0", "mountPath": "/tmp"},
                    {"name": "scratch-1", "mountPath": "/app"},
                    {"name": "volume-0", "mountPath": "/opt/python-docker-mcp/shared", "readOnly": true},
                    {"name": "volume-1", "mountPath": "/opt/python-docker-mcp/session", "readOnly": true}
                ]
            }],
            "enableServiceLinks": false,
            "hostIPC": false,
            "hostNetwork": false,
            "hostPID": false,
            "restartPolicy": "Never",
            "securityContext": {
                "runAsGroup": 1000,
                "runAsNonRoot": true,
                "runAsUser": 1000,
                "seccompProfile": {"type": "RuntimeDefault"}
            },
            "shareProcessNamespace": true,
            "volumes": [
                {"name": "scratch-0", "emptyDir": {"medium": "Memory", "sizeLimit": "134217728"}},
                {"name": "scratch-1", "emptyDir": {"medium": "Memory", "sizeLimit": "134217728"}},
                {"name": "volume-0", "persistentVolumeClaim": {"claimName": "shared", "readOnly": true}},
                {"name": "volume-1", "persistentVolumeClaim": {"claimName": "own", "readOnly": true}}
            ]
        }
    });
    assert_eq!(rendered(&spec, &settings()), want);
}

#[test]
fn an_installer_becomes_exactly_this_pod() {
    let mut spec = installer_spec(
        &Config::defaults(),
        &fixed_owner(),
        Some("s1"),
        "target",
        vec!["true".into()],
    );
    spec.name = "pdm-i".into();
    let limits = json!({"cpu": "1000m", "ephemeral-storage": "1073741824", "memory": "536870912"});
    let want = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "pdm-i",
            "labels": {
                "python-docker-mcp.host": "h",
                "python-docker-mcp.instance": "0123456789abcdef0123456789abcdef",
                "python-docker-mcp.managed": "true",
                "python-docker-mcp.network": "outbound",
                "python-docker-mcp.pid": "42",
                "python-docker-mcp.role": "installer",
                "python-docker-mcp.session": "s1"
            }
        },
        "spec": {
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "sandbox",
                "image": "python-docker-mcp:latest",
                "imagePullPolicy": "IfNotPresent",
                "command": ["python3", "-c", GATE, "true"],
                "env": env(&[
                    ("HOME", "/tmp"),
                    ("PIP_NO_INPUT", "1"),
                    ("PIP_DISABLE_PIP_VERSION_CHECK", "1"),
                    ("UV_NATIVE_TLS", "1"),
                    ("PYTHONDONTWRITEBYTECODE", "1"),
                ]),
                "workingDir": "/tmp",
                "stdin": true,
                "stdinOnce": false,
                "tty": false,
                "resources": {"limits": limits, "requests": limits},
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]},
                    "privileged": false,
                    "readOnlyRootFilesystem": true
                },
                "volumeMounts": [
                    {"name": "scratch-0", "mountPath": "/tmp"},
                    {"name": "volume-0", "mountPath": "/target", "readOnly": false},
                    {"name": "volume-1", "mountPath": "/cache", "readOnly": false}
                ]
            }],
            "enableServiceLinks": false,
            "hostIPC": false,
            "hostNetwork": false,
            "hostPID": false,
            "restartPolicy": "Never",
            "securityContext": {
                "runAsGroup": 0,
                "runAsNonRoot": false,
                "runAsUser": 0,
                "seccompProfile": {"type": "RuntimeDefault"}
            },
            "shareProcessNamespace": true,
            "volumes": [
                {"name": "scratch-0", "emptyDir": {"medium": "Memory", "sizeLimit": "536870912"}},
                {"name": "volume-0", "persistentVolumeClaim": {"claimName": "target", "readOnly": false}},
                {"name": "volume-1", "persistentVolumeClaim": {"claimName": "python-docker-mcp-cache", "readOnly": false}}
            ]
        }
    });
    assert_eq!(rendered(&spec, &settings()), want);
}

#[test]
fn the_runtime_class_and_owner_go_where_they_belong() {
    let mut config = Config::defaults();
    config.kubernetes.runtime_class = Some("gvisor".into());
    let owner = OwnerReference {
        api_version: "v1".into(),
        kind: "Pod".into(),
        name: "daemon-0".into(),
        uid: "u-1".into(),
        ..Default::default()
    };
    let s = Settings::new(&config, Some(owner));
    let o = fixed_owner();
    let repl = rendered(&repl_spec(&config, &o, "pdm-r".into(), "a", "b"), &s);
    assert_eq!(repl["spec"]["runtimeClassName"], "gvisor");
    // A durable sandbox outlives the daemon's Pod: the garbage collector must not take it.
    assert!(config.session.durable);
    assert_eq!(repl["metadata"].get("ownerReferences"), None);
    let mut once = config.clone();
    once.session.durable = false;
    let repl = rendered(&repl_spec(&once, &o, "pdm-r".into(), "a", "b"), &s);
    let want_owner = json!([{"apiVersion": "v1", "kind": "Pod", "name": "daemon-0", "uid": "u-1"}]);
    assert_eq!(repl["metadata"]["ownerReferences"], want_owner);
    let installer = rendered(
        &installer_spec(&config, &o, None, "t", vec!["true".into()]),
        &s,
    );
    assert_eq!(
        installer["spec"].get("runtimeClassName"),
        None,
        "installers use the default"
    );
    assert_eq!(installer["metadata"]["ownerReferences"], want_owner);
    // Package volumes are owned too; the shared download cache outlives instances.
    let claim = serde_json::to_value(pvc("v", &o.labels(Role::Packages, None), &s)).unwrap();
    assert_eq!(claim["metadata"]["ownerReferences"], want_owner);
    let cache = serde_json::to_value(pvc("c", &Owner::cache_labels(), &s)).unwrap();
    assert_eq!(cache["metadata"].get("ownerReferences"), None);
}

#[test]
fn a_sandbox_with_network_is_labelled_outbound() {
    let mut config = Config::defaults();
    config.docker.network_disabled = false;
    let spec = repl_spec(&config, &fixed_owner(), "pdm-r".into(), "a", "b");
    assert_eq!(
        rendered(&spec, &settings())["metadata"]["labels"][NETWORK_LABEL],
        "outbound"
    );
}

#[test]
fn the_network_policies_deny_everything_but_installer_egress() {
    let want = json!([
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {
                "name": "python-docker-mcp-deny-all",
                "labels": {"python-docker-mcp.managed": "true"}
            },
            "spec": {
                "podSelector": {"matchLabels": {"python-docker-mcp.managed": "true"}},
                "policyTypes": ["Ingress", "Egress"]
            }
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {
                "name": "python-docker-mcp-outbound",
                "labels": {"python-docker-mcp.managed": "true"}
            },
            "spec": {
                "podSelector": {"matchLabels": {
                    "python-docker-mcp.managed": "true",
                    "python-docker-mcp.network": "outbound"
                }},
                "policyTypes": ["Egress"],
                "egress": [{}]
            }
        }
    ]);
    assert_eq!(serde_json::to_value(network_policies()).unwrap(), want);
}

#[test]
fn a_package_volume_becomes_exactly_this_claim() {
    let labels = fixed_owner().labels(Role::Packages, None);
    let want = json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": "pdm-01234567-shared",
            "labels": {
                "python-docker-mcp.host": "h",
                "python-docker-mcp.instance": "0123456789abcdef0123456789abcdef",
                "python-docker-mcp.managed": "true",
                "python-docker-mcp.pid": "42",
                "python-docker-mcp.role": "packages"
            }
        },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1073741824"}}
        }
    });
    let got = serde_json::to_value(pvc("pdm-01234567-shared", &labels, &settings())).unwrap();
    assert_eq!(got, want);
}

#[test]
fn label_values_are_made_acceptable() {
    assert_eq!(label_value("alice"), "alice");
    assert_eq!(label_value("a b/c"), "a-b-c");
    assert_eq!(label_value("-x-"), "x");
    assert_eq!(label_value(&"y".repeat(80)).len(), 63);
}

fn pod_with_status(status: Value) -> Pod {
    serde_json::from_value(json!({"metadata": {"name": "p"}, "status": status})).unwrap()
}

#[test]
fn a_pods_progress_is_read_from_its_status() {
    let waiting = |reason: &str| {
        pod_with_status(json!({"phase": "Pending", "containerStatuses": [{
            "name": "sandbox", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": reason, "message": "m"}}
        }]}))
    };
    assert_eq!(
        progress(&waiting("ErrImagePull")),
        Progress::NoImage {
            reason: "ErrImagePull".into(),
            message: "m".into()
        }
    );
    assert_eq!(
        progress(&waiting("ContainerCreating")),
        Progress::Waiting("ContainerCreating m".into())
    );
    assert_eq!(
        progress(&waiting("CreateContainerConfigError")),
        Progress::Broken("CreateContainerConfigError: m".into())
    );
    let unscheduled = pod_with_status(json!({"phase": "Pending", "conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/1 nodes are available: insufficient memory"
    }]}));
    assert_eq!(
        progress(&unscheduled),
        Progress::Waiting("not scheduled: 0/1 nodes are available: insufficient memory".into())
    );
    let oom = pod_with_status(json!({"phase": "Failed", "containerStatuses": [{
        "name": "sandbox", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
        "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}
    }]}));
    assert_eq!(
        progress(&oom),
        Progress::Exited {
            exit_code: 137,
            reason: "OOMKilled".into()
        }
    );
    assert_eq!(
        progress(&pod_with_status(json!({}))),
        Progress::Waiting("Pending".into())
    );
}

#[test]
fn the_kubernetes_keys_have_defaults_env_vars_and_validation() {
    let c = Config::defaults();
    assert_eq!(c.kubernetes.namespace, None);
    assert_eq!(c.kubernetes.runtime_class, None);
    assert_eq!(c.kubernetes.ephemeral_storage, 1 << 30);
    assert_eq!(c.kubernetes.volume_access, "ReadWriteOnce");
    let layers = |pairs: &[(&str, &str)]| Layers {
        env: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    };
    let c = resolve(&layers(&[
        ("PYTHON_DOCKER_MCP_BACKEND", "kubernetes"),
        ("PYTHON_DOCKER_MCP_K8S_NAMESPACE", "sandboxes"),
        ("PYTHON_DOCKER_MCP_K8S_RUNTIME_CLASS", "gvisor"),
        ("PYTHON_DOCKER_MCP_K8S_EPHEMERAL_STORAGE", "2g"),
        ("PYTHON_DOCKER_MCP_K8S_VOLUME_ACCESS", "ReadWriteMany"),
    ]))
    .unwrap();
    assert_eq!(c.runtime.backend, crate::config::BackendKind::Kubernetes);
    assert_eq!(c.kubernetes.namespace.as_deref(), Some("sandboxes"));
    assert_eq!(c.kubernetes.runtime_class.as_deref(), Some("gvisor"));
    assert_eq!(c.kubernetes.ephemeral_storage, 2 << 30);
    assert_eq!(c.kubernetes.volume_access, "ReadWriteMany");
    for (var, value, key) in [
        (
            "PYTHON_DOCKER_MCP_K8S_NAMESPACE",
            "Not_A_Namespace",
            "kubernetes.namespace",
        ),
        (
            "PYTHON_DOCKER_MCP_K8S_NAMESPACE",
            "a.b",
            "kubernetes.namespace",
        ),
        (
            "PYTHON_DOCKER_MCP_K8S_RUNTIME_CLASS",
            "-gvisor",
            "kubernetes.runtime_class",
        ),
        (
            "PYTHON_DOCKER_MCP_K8S_STORAGE_CLASS",
            "Fast SSD",
            "kubernetes.storage_class",
        ),
        (
            "PYTHON_DOCKER_MCP_K8S_VOLUME_ACCESS",
            "ReadOnlyMany",
            "kubernetes.volume_access",
        ),
    ] {
        let e = resolve(&layers(&[(var, value)])).unwrap_err().to_string();
        assert!(e.contains(key) && e.contains(var), "{e}");
    }
}

// ---- The backend's calls against a mocked API transport ----

type Handle =
    tower_test::mock::Handle<http::Request<kube::client::Body>, http::Response<kube::client::Body>>;

/// Reply with the request's own body (a create echoes the object).
const ECHO: &str = "<echo>";

fn mocked() -> (Kubernetes, Handle) {
    let (service, handle) = tower_test::mock::pair();
    let client = kube::Client::new(service, "ns");
    (
        Kubernetes::with_client(client, &Config::defaults(), None),
        handle,
    )
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// Answer the expected requests in order (method, path, status, reply) and return the
/// requests' bodies (`Null` when empty) with their query strings. A request the script
/// does not expect fails the test.
async fn serve(
    mut handle: Handle,
    script: Vec<(&str, String, u16, Value)>,
) -> Vec<(Value, String)> {
    let mut seen = Vec::new();
    for (method, path, code, reply) in script {
        let (req, send) = handle.next_request().await.expect("a request");
        assert_eq!(
            (req.method().as_str(), req.uri().path()),
            (method, path.as_str())
        );
        let query = req.uri().query().unwrap_or_default().to_string();
        let bytes = req.into_body().collect_bytes().await.unwrap();
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        let reply = if reply == ECHO { body.clone() } else { reply };
        let response = http::Response::builder()
            .status(code)
            .body(kube::client::Body::from(
                serde_json::to_vec(&reply).unwrap(),
            ))
            .unwrap();
        send.send_response(response);
        seen.push((body, query));
    }
    seen
}

const POLICIES: &str = "/apis/networking.k8s.io/v1/namespaces/ns/networkpolicies";
const PODS: &str = "/api/v1/namespaces/ns/pods";
const CLAIMS: &str = "/api/v1/namespaces/ns/persistentvolumeclaims";

fn policy_path(name: &str) -> String {
    format!("{POLICIES}/{name}")
}

fn policy_json(i: usize) -> Value {
    serde_json::to_value(&network_policies()[i]).unwrap()
}

#[tokio::test]
async fn a_pod_is_created_after_the_policies_and_deleted_when_its_image_is_missing() {
    let (k, handle) = mocked();
    let spec = repl_spec(
        &Config::defaults(),
        &fixed_owner(),
        "pdm-r".into(),
        "a",
        "b",
    );
    let (deny, egress, pod_path) = (
        policy_path(DENY_POLICY),
        policy_path(EGRESS_POLICY),
        format!("{PODS}/pdm-r"),
    );
    let no_image = json!({"metadata": {"name": "pdm-r"}, "status": {"phase": "Pending", "containerStatuses": [{
        "name": "sandbox", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
        "state": {"waiting": {"reason": "ErrImageNeverPull", "message": "image not present"}}
    }]}});
    let script = vec![
        (
            "GET",
            deny.clone(),
            404,
            status(404, "NotFound", "not found"),
        ),
        ("POST", POLICIES.into(), 201, ECHO.into()),
        // The second exists as we want it: checked, not written.
        ("GET", egress.clone(), 200, policy_json(1)),
        ("POST", PODS.into(), 201, ECHO.into()),
        ("GET", pod_path.clone(), 200, no_image),
        // Deleting a pod that is already gone is fine.
        (
            "DELETE",
            pod_path.clone(),
            404,
            status(404, "NotFound", "pods \"pdm-r\" not found"),
        ),
    ];
    let server = tokio::spawn(async move { serve(handle, script).await });
    let e = k.start_attached(&spec).await.err().expect("no image");
    assert!(matches!(e, RuntimeError::ImageUnavailable { .. }), "{e}");
    assert!(e.to_string().contains("kind load docker-image"), "{e}");
    let seen = server.await.unwrap();
    assert_eq!(seen[1].0, policy_json(0));
    assert_eq!(
        seen[3].0,
        serde_json::to_value(pod(&spec, &settings())).unwrap()
    );
    assert_eq!(
        seen[5].0,
        json!({"gracePeriodSeconds": 0, "propagationPolicy": "Background"})
    );
}

#[tokio::test]
async fn a_changed_policy_is_put_back() {
    let (k, handle) = mocked();
    let spec = repl_spec(
        &Config::defaults(),
        &fixed_owner(),
        "pdm-r".into(),
        "a",
        "b",
    );
    let mut loosened = policy_json(0);
    loosened["spec"]["policyTypes"] = json!(["Ingress"]);
    loosened["metadata"]["resourceVersion"] = "7".into();
    let (deny, egress) = (policy_path(DENY_POLICY), policy_path(EGRESS_POLICY));
    let script = vec![
        ("GET", deny.clone(), 200, loosened),
        ("PUT", deny.clone(), 200, ECHO.into()),
        ("GET", egress.clone(), 200, policy_json(1)),
        // Stop there: the pod create is refused.
        (
            "POST",
            PODS.into(),
            422,
            status(422, "Invalid", "Pod \"pdm-r\" is invalid"),
        ),
    ];
    let server = tokio::spawn(async move { serve(handle, script).await });
    let e = k.start_attached(&spec).await.err().expect("refused");
    assert!(
        e.to_string()
            .starts_with("Kubernetes refused to create a pod: Pod \"pdm-r\" is invalid"),
        "{e}"
    );
    let seen = server.await.unwrap();
    let mut want = policy_json(0);
    want["metadata"]["resourceVersion"] = "7".into();
    assert_eq!(seen[1].0, want);
}

#[tokio::test]
async fn rbac_refusals_name_the_verbs_to_grant() {
    let (k, handle) = mocked();
    let spec = repl_spec(
        &Config::defaults(),
        &fixed_owner(),
        "pdm-r".into(),
        "a",
        "b",
    );
    let deny = policy_path(DENY_POLICY);
    let rbac = "networkpolicies.networking.k8s.io \"python-docker-mcp-deny-all\" is forbidden: \
                User \"system:serviceaccount:ns:pdm\" cannot get resource \"networkpolicies\"";
    let script = vec![("GET", deny.clone(), 403, status(403, "Forbidden", rbac))];
    let server = tokio::spawn(async move { serve(handle, script).await });
    let e = k.start_attached(&spec).await.err().expect("forbidden");
    server.await.unwrap();
    let text = e.to_string();
    assert!(matches!(e, RuntimeError::Forbidden { .. }), "{text}");
    for want in [
        "Kubernetes refused to read a NetworkPolicy in namespace `ns`",
        "cannot get resource",
        "pods: create, get, list, patch, delete",
        "pods/attach: create, get",
        "networkpolicies (networking.k8s.io): create, get, update",
    ] {
        assert!(text.contains(want), "{want} in {text}");
    }
}

#[tokio::test]
async fn an_admission_refusal_is_not_taken_for_rbac_and_a_missing_namespace_is_named() {
    let (k, handle) = mocked();
    let spec = repl_spec(
        &Config::defaults(),
        &fixed_owner(),
        "pdm-r".into(),
        "a",
        "b",
    );
    let (deny, egress) = (policy_path(DENY_POLICY), policy_path(EGRESS_POLICY));
    let admission = "pods \"pdm-r\" is forbidden: pod rejected: RuntimeClass \"gvisor\" not found";
    let script = vec![
        ("GET", deny.clone(), 200, policy_json(0)),
        ("GET", egress.clone(), 200, policy_json(1)),
        (
            "POST",
            PODS.into(),
            403,
            status(403, "Forbidden", admission),
        ),
        (
            "POST",
            CLAIMS.into(),
            404,
            status(404, "NotFound", "namespaces \"ns\" not found"),
        ),
    ];
    let server = tokio::spawn(async move { serve(handle, script).await });
    let e = k.start_attached(&spec).await.err().expect("refused");
    assert!(matches!(e, RuntimeError::Api { .. }), "{e}");
    assert!(
        e.to_string().contains("RuntimeClass \"gvisor\" not found"),
        "{e}"
    );
    let e = k.create_volume("v", &BTreeMap::new()).await.unwrap_err();
    assert!(matches!(e, RuntimeError::NoNamespace { .. }), "{e}");
    assert!(e.to_string().contains("kubernetes.namespace"), "{e}");
    server.await.unwrap();
}

#[tokio::test]
async fn a_volume_is_a_labelled_claim_created_once() {
    let (k, handle) = mocked();
    let labels = fixed_owner().labels(Role::Packages, None);
    let script = vec![
        ("POST", CLAIMS.into(), 201, ECHO.into()),
        (
            "POST",
            CLAIMS.into(),
            409,
            status(409, "AlreadyExists", "already exists"),
        ),
        (
            "DELETE",
            "/api/v1/namespaces/ns/persistentvolumeclaims/v".into(),
            404,
            status(404, "NotFound", "gone"),
        ),
    ];
    let server = tokio::spawn(async move { serve(handle, script).await });
    k.create_volume("v", &labels).await.unwrap();
    k.create_volume("v", &labels).await.expect("idempotent");
    k.remove_volume("v").await;
    let seen = server.await.unwrap();
    assert_eq!(
        seen[0].0,
        serde_json::to_value(pvc("v", &labels, &settings())).unwrap()
    );
}

#[tokio::test]
async fn a_claimed_pod_is_relabelled_with_its_session() {
    let (k, handle) = mocked();
    let path = format!("{PODS}/pdm-r");
    let script = vec![(
        "PATCH",
        path.clone(),
        200,
        json!({"metadata": {"name": "pdm-r"}}),
    )];
    let server = tokio::spawn(async move { serve(handle, script).await });
    k.claim("pdm-r", "5f0c8a2e-0000-4000-8000-000000000001")
        .await;
    let seen = server.await.unwrap();
    assert_eq!(
        seen[0].0,
        json!({"metadata": {"labels": {
            "python-docker-mcp.state": "claimed",
            "python-docker-mcp.session": "5f0c8a2e-0000-4000-8000-000000000001"
        }}})
    );
}

#[tokio::test]
async fn an_instance_is_removed_by_its_label() {
    let (k, handle) = mocked();
    let list = |kind: &str, names: &[&str]| {
        json!({"kind": kind, "apiVersion": "v1", "metadata": {},
               "items": names.iter().map(|n| json!({"metadata": {"name": n}})).collect::<Vec<_>>()})
    };
    let script = vec![
        ("GET", PODS.into(), 200, list("PodList", &["p1"])),
        (
            "DELETE",
            "/api/v1/namespaces/ns/pods/p1".into(),
            200,
            json!({"metadata": {"name": "p1"}}),
        ),
        (
            "GET",
            CLAIMS.into(),
            200,
            list("PersistentVolumeClaimList", &["c1"]),
        ),
        (
            "DELETE",
            "/api/v1/namespaces/ns/persistentvolumeclaims/c1".into(),
            200,
            json!({"metadata": {"name": "c1"}}),
        ),
    ];
    let server = tokio::spawn(async move { serve(handle, script).await });
    assert_eq!(
        k.remove_instance("abc", &Default::default()).await.unwrap(),
        1
    );
    let seen = server.await.unwrap();
    assert!(
        seen[0]
            .1
            .contains("labelSelector=python-docker-mcp.instance%3Dabc"),
        "{}",
        seen[0].1
    );
}

#[tokio::test]
async fn orphans_are_what_no_owner_reference_covers_and_no_daemon_here_owns() {
    let (k, handle) = mocked();
    let me = fixed_owner();
    // A pid no process has (above the kernel's pid_max on any default system).
    let dead = "4194305";
    let meta = |name: &str, host: &str, pid: &str, owned: bool| {
        let mut m = json!({"name": name, "labels": {
            "python-docker-mcp.managed": "true",
            "python-docker-mcp.instance": "ffffffffffffffffffffffffffffffff",
            "python-docker-mcp.host": host,
            "python-docker-mcp.pid": pid,
        }});
        if owned {
            m["ownerReferences"] =
                json!([{"apiVersion": "v1", "kind": "Pod", "name": "daemon-0", "uid": "u"}]);
        }
        json!({ "metadata": m })
    };
    let pods = json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [
        meta("dead-here", "h", dead, false),
        // The garbage collector's: it goes with the daemon's pod.
        meta("owned", "h", dead, true),
        // Another host's daemon: not ours to judge.
        meta("elsewhere", "other", dead, false),
        // This very daemon.
        meta("mine", "h", "42", false),
    ]});
    let claims = json!({"kind": "PersistentVolumeClaimList", "apiVersion": "v1", "metadata": {},
        "items": [meta("dead-claim", "h", dead, false)]});
    let script = vec![
        ("GET", PODS.into(), 200, pods.clone()),
        ("GET", CLAIMS.into(), 200, claims.clone()),
        // Not a dry run: the two orphans are deleted.
        ("GET", PODS.into(), 200, pods),
        ("GET", CLAIMS.into(), 200, claims),
        (
            "DELETE",
            format!("{PODS}/dead-here"),
            200,
            json!({"metadata": {"name": "dead-here"}}),
        ),
        (
            "DELETE",
            format!("{CLAIMS}/dead-claim"),
            200,
            json!({"metadata": {"name": "dead-claim"}}),
        ),
    ];
    let server = tokio::spawn(async move { serve(handle, script).await });
    let counts = |s: Swept| (s.containers, s.volumes);
    let holder = Holder::me();
    assert_eq!(
        counts(k.sweep_orphans(&me, &sweep(&holder, true)).await.unwrap()),
        (1, 1)
    );
    assert_eq!(
        counts(k.sweep_orphans(&me, &sweep(&holder, false)).await.unwrap()),
        (1, 1)
    );
    let seen = server.await.unwrap();
    assert!(
        seen[0]
            .1
            .contains("labelSelector=python-docker-mcp.managed%3Dtrue"),
        "{}",
        seen[0].1
    );
}

fn sweep(holder: &Holder, dry_run: bool) -> Sweep<'_> {
    Sweep {
        holder,
        max_lifetime: Duration::from_secs(86_400),
        warm_max_age: Duration::from_secs(330),
        dry_run,
        all: false,
    }
}

// ---- Durable records: the claim, named(), the sweep by record ----

const SESSION: &str = "0f0e0d0c-0b0a-4999-8888-777766665555";
const OWNER_KEY: &str = "0123456789abcdef";
const FP: &str = "00112233445566aa";

/// A managed pod called `name` with `record` in its annotation (none when equal), at
/// `version`, created at `created` (RFC 3339), Running.
fn record_pod(name: &str, record: &str, version: &str, created: &str) -> Value {
    let mut meta = json!({"name": name, "resourceVersion": version,
        "creationTimestamp": created,
        "labels": {"python-docker-mcp.managed": "true", "python-docker-mcp.host": "h",
                   "python-docker-mcp.pid": "42"}});
    if record != name {
        meta["annotations"] = json!({ NAME_ANNOTATION: record });
    }
    json!({"metadata": meta, "status": {"phase": "Running"}})
}

fn pod_list(items: Vec<Value>) -> Value {
    json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})
}

fn session_record(holder: Option<Holder>, until: u64) -> String {
    SessionName {
        session: SESSION.into(),
        owner: OWNER_KEY.into(),
        holder,
        until,
    }
    .render()
}

fn warm(slot: u32) -> String {
    WarmName {
        fingerprint: FP.into(),
        slot,
    }
    .render()
}

/// A holder on this host that no process is.
fn dead_holder() -> Holder {
    Holder {
        pid: u32::MAX - 1,
        ..Holder::me()
    }
}

#[test]
fn the_claim_is_a_merge_patch_of_the_record_with_the_version_read_as_precondition() {
    let owner = OwnerReference {
        api_version: "v1".into(),
        kind: "Pod".into(),
        name: "daemon-0".into(),
        uid: "u-1".into(),
        ..Default::default()
    };
    let claimed = ClaimedName {
        holder: Holder {
            host: "abcdef".into(),
            pid: 7,
            start: 99,
        },
        nonce: "0123456789ab".into(),
    }
    .render();
    assert_eq!(
        rename_patch(&claimed, "4711", Some(&owner)),
        json!({"metadata": {
            "resourceVersion": "4711",
            "annotations": {"python-docker-mcp.name": "pdm-t.abcdefx7x99.0123456789ab"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "daemon-0", "uid": "u-1"}]
        }})
    );
    // A session outlives daemons: no owner (null removes it in a merge patch).
    let session = session_record(None, 1_900_000_000);
    assert_eq!(
        rename_patch(&session, "4712", Some(&owner)),
        json!({"metadata": {
            "resourceVersion": "4712",
            "annotations": {"python-docker-mcp.name": session},
            "ownerReferences": null
        }})
    );
    // Outside a cluster (no owner) a claimed pod's owners are left as they are.
    assert_eq!(
        rename_patch(&claimed, "1", None)["metadata"].get("ownerReferences"),
        None
    );
}

/// What the API server accepts as a pod name: a DNS-1123 subdomain (at most 253
/// characters; dot-separated labels of lowercase letters, digits and `-`, each starting and
/// ending with a letter or digit).
fn is_pod_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

#[test]
fn records_that_become_pod_names_are_valid_pod_names() {
    // A warm pod is created by its slot's record, so the name alone bounds the slot.
    let fp = crate::durable::fingerprint(["image", "limits"]);
    for slot in [0, 31, 4096] {
        let name = WarmName {
            fingerprint: fp.clone(),
            slot,
        }
        .render();
        assert!(is_pod_name(&name), "{name}");
    }
    for name in [
        session_record(Some(Holder::me()), 1_900_000_000),
        session_record(None, 1_900_000_000),
        ClaimedName::new(&Holder::me()).render(),
    ] {
        assert!(is_pod_name(&name), "{name}");
    }
    assert!(!is_pod_name("pdm-w.ABC.1") && !is_pod_name("pdm-.x"));
}

#[tokio::test]
async fn of_two_racing_claims_of_one_warm_pod_exactly_one_wins() {
    let (k, mut handle) = mocked();
    let from = warm(3);
    let listed = pod_list(vec![record_pod(&from, &from, "10", "2026-12-03T12:00:00Z")]);
    // Both claimers read version 10; the API server takes the first patch (the pod is at
    // version 11 then) and answers the second 409 Conflict, whichever comes first.
    let server = tokio::spawn(async move {
        let mut patches = Vec::new();
        for _ in 0..4 {
            let (req, send) = handle.next_request().await.expect("a request");
            let method = req.method().as_str().to_string();
            assert_eq!(
                req.uri().path(),
                if method == "GET" {
                    PODS.to_string()
                } else {
                    format!("{PODS}/{}", warm(3))
                }
            );
            let content_type = req.headers().get("content-type").cloned();
            let bytes = req.into_body().collect_bytes().await.unwrap();
            let (code, reply) = match method.as_str() {
                "GET" => (200, listed.clone()),
                "PATCH" => {
                    assert_eq!(content_type.unwrap(), "application/merge-patch+json");
                    patches.push(serde_json::from_slice::<Value>(&bytes).unwrap());
                    if patches.len() == 1 {
                        (200, record_pod(&warm(3), "x", "11", "2026-12-03T12:00:00Z"))
                    } else {
                        (409, status(409, "Conflict", "the object has been modified; please apply your changes to the latest version and try again"))
                    }
                }
                m => panic!("unexpected {m}"),
            };
            send.send_response(
                http::Response::builder()
                    .status(code)
                    .body(kube::client::Body::from(
                        serde_json::to_vec(&reply).unwrap(),
                    ))
                    .unwrap(),
            );
        }
        patches
    });
    let a = ClaimedName::new(&Holder::me()).render();
    let b = ClaimedName::new(&Holder::me()).render();
    let (ra, rb) = tokio::join!(k.rename(&from, &a), k.rename(&from, &b));
    let patches = server.await.unwrap();
    assert_eq!(
        [ra.unwrap(), rb.unwrap()].iter().filter(|w| **w).count(),
        1,
        "exactly one claim wins"
    );
    assert_eq!(patches.len(), 2);
    for p in &patches {
        assert_eq!(p["metadata"]["resourceVersion"], "10", "{p}");
    }
}

#[test]
fn a_warm_record_sits_only_on_the_pod_named_for_its_slot() {
    assert!(slot_of_pod(&warm(3), &warm(3)));
    assert!(slot_of_pod(&format!("pdm-f.{FP}.3"), &warm(3)));
    assert!(!slot_of_pod(&warm(4), &warm(3)));
    assert!(!slot_of_pod("pdm-abc-sandbox-1", &warm(3)));
    // Other records may move onto any pod.
    assert!(slot_of_pod(
        &warm(4),
        &ClaimedName::new(&Holder::me()).render()
    ));
    assert!(slot_of_pod("pdm-abc-sandbox-1", &session_record(None, 1)));
}

#[tokio::test]
async fn a_claim_of_a_record_that_moved_on_is_refused_without_a_patch() {
    let (k, handle) = mocked();
    let from = warm(1);
    // The pod named for slot 1 was claimed already: its record is someone's `pdm-t.`.
    let taken = ClaimedName::new(&dead_holder()).render();
    let script = vec![(
        "GET",
        PODS.into(),
        200,
        pod_list(vec![record_pod(
            &from,
            &taken,
            "12",
            "2026-12-03T12:00:00Z",
        )]),
    )];
    let server = tokio::spawn(async move { serve(handle, script).await });
    let to = ClaimedName::new(&Holder::me()).render();
    assert!(!k.rename(&from, &to).await.unwrap());
    server.await.unwrap();
}

#[tokio::test]
async fn named_reads_records_and_falls_back_to_pod_names() {
    let (k, handle) = mocked();
    let session = session_record(None, 1_900_000_000);
    let mut stopped = record_pod("pdm-abc", &session, "5", "2026-12-03T12:00:00Z");
    stopped["status"]["phase"] = json!("Succeeded");
    let script = vec![(
        "GET",
        PODS.into(),
        200,
        pod_list(vec![
            stopped,
            record_pod(&warm(0), &warm(0), "6", "2026-12-03T12:00:01Z"),
        ]),
    )];
    let server = tokio::spawn(async move { serve(handle, script).await });
    let found = k.named(SESSION).await.unwrap();
    let seen = server.await.unwrap();
    assert!(
        seen[0]
            .1
            .contains("labelSelector=python-docker-mcp.managed%3Dtrue"),
        "{}",
        seen[0].1
    );
    assert_eq!(found.len(), 1);
    let n = &found[0];
    assert_eq!(
        (n.id.as_str(), n.name.as_str()),
        ("pdm-abc", session.as_str())
    );
    assert_eq!(n.created, 1_796_299_200);
    assert!(!n.running);
    assert_eq!(n.labels["python-docker-mcp.pid"], "42");
    assert!(SessionName::parse(&n.name).is_some());
}

#[tokio::test]
async fn the_sweep_goes_by_record_expired_sessions_and_old_warm_pods_go() {
    let (k, handle) = mocked();
    let me = fixed_owner();
    let holder = Holder::me();
    let now = durable::now();
    let old = "2020-01-01T00:00:00Z";
    let future = "2099-01-01T00:00:00Z";
    let pods = pod_list(vec![
        // Past its deadline, no daemon holds it: goes.
        record_pod("s-expired", &session_record(None, now - 10), "1", old),
        // Its deadline is ahead and its lifetime too: stays.
        record_pod("s-live", &session_record(None, now + 3600), "2", future),
        // Held by this very daemon, however late: stays.
        record_pod(
            "s-held",
            &session_record(Some(holder.clone()), now - 10),
            "3",
            old,
        ),
        // A warm pod older than warm_max_age: goes; a young one stays.
        record_pod(&warm(0), &warm(0), "4", old),
        record_pod(&warm(1), &warm(1), "5", future),
        // Claimed by a daemon that is gone: goes; claimed by this one: stays.
        record_pod(
            &warm(2),
            &ClaimedName::new(&dead_holder()).render(),
            "6",
            future,
        ),
        record_pod(&warm(3), &ClaimedName::new(&holder).render(), "7", future),
    ]);
    let claims = json!({"kind": "PersistentVolumeClaimList", "apiVersion": "v1", "metadata": {},
        "items": []});
    let mut script = vec![
        ("GET", PODS.into(), 200, pods.clone()),
        ("GET", CLAIMS.into(), 200, claims.clone()),
        ("GET", PODS.into(), 200, pods),
        ("GET", CLAIMS.into(), 200, claims),
    ];
    for name in ["s-expired".to_string(), warm(0), warm(2)] {
        script.push((
            "DELETE",
            format!("{PODS}/{name}"),
            200,
            json!({"metadata": {"name": name}}),
        ));
    }
    let server = tokio::spawn(async move { serve(handle, script).await });
    let dry = k.sweep_orphans(&me, &sweep(&holder, true)).await.unwrap();
    assert_eq!(dry.removed, ["s-expired".to_string(), warm(0), warm(2)]);
    let done = k.sweep_orphans(&me, &sweep(&holder, false)).await.unwrap();
    assert_eq!(done, dry);
    server.await.unwrap();
}

#[tokio::test]
async fn an_instance_leaves_its_durable_pods_and_what_it_keeps() {
    let (k, handle) = mocked();
    let session = session_record(None, 1_900_000_000);
    let pods = pod_list(vec![
        record_pod(
            "pdm-a-sandbox-1",
            "pdm-a-sandbox-1",
            "1",
            "2026-12-03T12:00:00Z",
        ),
        record_pod("pdm-a-sandbox-2", &session, "2", "2026-12-03T12:00:00Z"),
        record_pod(&warm(0), &warm(0), "3", "2026-12-03T12:00:00Z"),
        record_pod(
            "pdm-a-sandbox-3",
            "pdm-a-sandbox-3",
            "4",
            "2026-12-03T12:00:00Z",
        ),
    ]);
    let script = vec![
        ("GET", PODS.into(), 200, pods),
        (
            "DELETE",
            format!("{PODS}/pdm-a-sandbox-1"),
            200,
            json!({"metadata": {"name": "pdm-a-sandbox-1"}}),
        ),
        (
            "GET",
            CLAIMS.into(),
            200,
            json!({"kind": "PersistentVolumeClaimList", "apiVersion": "v1", "metadata": {}, "items": []}),
        ),
    ];
    let server = tokio::spawn(async move { serve(handle, script).await });
    let keep = std::collections::HashSet::from(["pdm-a-sandbox-3".to_string()]);
    assert_eq!(k.remove_instance("a", &keep).await.unwrap(), 1);
    server.await.unwrap();
}

#[tokio::test]
async fn the_volume_at_a_path_is_the_claim_mounted_there() {
    let (k, handle) = mocked();
    let mut spec = repl_spec(
        &Config::defaults(),
        &fixed_owner(),
        "pdm-r".into(),
        "shared",
        "own",
    );
    spec.name = "pdm-r".into();
    let mut body = serde_json::to_value(pod(&spec, &settings())).unwrap();
    body["status"] = json!({"phase": "Running"});
    let mounts: Vec<(String, Option<String>)> = body["spec"]["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let name = m["name"].as_str().unwrap();
            let vol = body["spec"]["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == name)
                .unwrap();
            (
                m["mountPath"].as_str().unwrap().to_string(),
                vol["persistentVolumeClaim"]["claimName"]
                    .as_str()
                    .map(String::from),
            )
        })
        .collect();
    let (pvc_path, pvc_name) = mounts.iter().find(|(_, c)| c.is_some()).cloned().unwrap();
    let (tmp_path, _) = mounts.iter().find(|(_, c)| c.is_none()).cloned().unwrap();
    let script = vec![
        ("GET", format!("{PODS}/pdm-r"), 200, body.clone()),
        ("GET", format!("{PODS}/pdm-r"), 200, body),
    ];
    let server = tokio::spawn(async move { serve(handle, script).await });
    assert_eq!(k.volume_at("pdm-r", &pvc_path).await.unwrap(), pvc_name);
    assert_eq!(k.volume_at("pdm-r", &tmp_path).await.unwrap(), None);
    server.await.unwrap();
}

// ---- The attach path against a fake API server that speaks v5.channel.k8s.io ----

mod attach {
    use super::*;
    use futures::SinkExt;
    use std::sync::Mutex;
    use tokio::io::AsyncWriteExt;
    use tokio_tungstenite::tungstenite::{handshake::derive_accept_key, protocol::Role, Message};

    type Log = Arc<Mutex<Vec<String>>>;

    /// An API server on a loopback port that knows one pod, `pdm-r`: the policies exist,
    /// the pod is created, reported Running, attached (a WebSocket playing the kubelet's
    /// part, [`kubelet`]), and deleted. Everything it sees goes to the log, in order.
    async fn fake_api_server() -> (String, Log) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let log: Log = Default::default();
        let served = log.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let log = served.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let log = log.clone();
                        async move { Ok::<_, std::convert::Infallible>(answer(req, log)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        (url, log)
    }

    fn answer(mut req: hyper::Request<hyper::body::Incoming>, log: Log) -> hyper::Response<String> {
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or_default().to_string();
        log.lock().unwrap().push(format!("{} {path}", req.method()));
        let reply = |code: u16, body: Value| {
            hyper::Response::builder()
                .status(code)
                .header("content-type", "application/json")
                .body(body.to_string())
                .unwrap()
        };
        let pod = format!("{PODS}/pdm-r");
        match (req.method().as_str(), path.as_str()) {
            ("GET", p) if p == policy_path(DENY_POLICY) => reply(200, policy_json(0)),
            ("GET", p) if p == policy_path(EGRESS_POLICY) => reply(200, policy_json(1)),
            ("POST", PODS) => reply(201, json!({"metadata": {"name": "pdm-r"}})),
            // As a durable session left by an earlier daemon: its record names no holder.
            ("GET", PODS) => reply(
                200,
                pod_list(vec![record_pod(
                    "pdm-r",
                    &session_record(None, 4_000_000_000),
                    "3",
                    "2026-12-03T12:00:00Z",
                )]),
            ),
            ("PATCH", p) if p == pod => {
                reply(200, record_pod("pdm-r", "x", "4", "2026-12-03T12:00:00Z"))
            }
            ("GET", p) if p == pod => reply(
                200,
                json!({"metadata": {"name": "pdm-r"}, "status": {"phase": "Running",
                    "containerStatuses": [{"name": "sandbox", "image": "i", "imageID": "",
                        "ready": true, "restartCount": 0, "state": {"running": {}}}]}}),
            ),
            ("DELETE", p) if p == pod => reply(200, json!({"metadata": {"name": "pdm-r"}})),
            ("GET", p) if p == format!("{pod}/attach") => {
                log.lock().unwrap().push(format!("attach ?{query}"));
                let key = req.headers()["sec-websocket-key"].as_bytes().to_vec();
                let upgrade = hyper::upgrade::on(&mut req);
                tokio::spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(upgrade.await.unwrap());
                    let ws =
                        tokio_tungstenite::WebSocketStream::from_raw_socket(io, Role::Server, None)
                            .await;
                    kubelet(ws, log).await;
                });
                hyper::Response::builder()
                    .status(101)
                    .header("connection", "Upgrade")
                    .header("upgrade", "websocket")
                    .header("sec-websocket-accept", derive_accept_key(&key))
                    .header("sec-websocket-protocol", "v5.channel.k8s.io")
                    .body(String::new())
                    .unwrap()
            }
            _ => reply(404, status(404, "NotFound", "not here")),
        }
    }

    /// The container's side of the attach: nothing is written until stdin has brought
    /// the gate's byte and one line after it (the WebSocket may carry them in one frame or
    /// two); then a line on stdout and one on stderr, the line answered on stdout, and the
    /// container exits (status, then close).
    async fn kubelet<S>(mut ws: tokio_tungstenite::WebSocketStream<S>, log: Log)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let mut stdin = String::new();
        while stdin.matches('\n').count() < 2 {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) if b.first() == Some(&0) => {
                    stdin.push_str(&String::from_utf8_lossy(&b[1..]))
                }
                Some(Ok(_)) => continue,
                _ => return,
            }
        }
        log.lock().unwrap().push(format!("stdin {stdin:?}"));
        let frame =
            |channel: u8, text: &str| Message::binary([&[channel], text.as_bytes()].concat());
        let line = stdin.trim_start_matches('\n');
        ws.send(frame(1, "ready\n")).await.unwrap();
        ws.send(frame(2, "warming up\n")).await.unwrap();
        ws.send(frame(1, &format!("pong {line}"))).await.unwrap();
        ws.send(frame(3, r#"{"metadata":{},"status":"Success"}"#))
            .await
            .unwrap();
        let _ = ws.close(None).await;
    }

    #[tokio::test]
    async fn the_helper_starts_only_once_attached_and_its_streams_come_through() {
        let (url, log) = fake_api_server().await;
        install_tls_provider();
        let client = kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
        let mut config = Config::defaults();
        config.kubernetes.namespace = Some("ns".into());
        let k = Kubernetes::with_client(client, &config, None);
        let spec = repl_spec(&config, &fixed_owner(), "pdm-r".into(), "a", "b");

        let run = async {
            let mut attached = k.start_attached(&spec).await.expect("attached");
            assert_eq!(attached.id, "pdm-r");
            attached.input.write_all(b"ping\n").await.unwrap();
            attached.input.flush().await.unwrap();
            let (mut stdout, mut stderr) = (String::new(), String::new());
            while let Some(chunk) = attached.output.next().await {
                match chunk {
                    Output::Stdout(b) => stdout.push_str(&String::from_utf8_lossy(&b)),
                    Output::Stderr(b) => stderr.push_str(&String::from_utf8_lossy(&b)),
                }
            }
            assert_eq!(stdout, "ready\npong ping\n");
            assert_eq!(stderr, "warming up\n");
            k.remove(&attached.id).await;
        };
        // A hang is a failure, not a stuck test run.
        tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .expect("the attach flow finished");

        let log = log.lock().unwrap().clone();
        let p = |s: &str| s.replace("{pods}", PODS).replace("{policies}", POLICIES);
        assert_eq!(
            log,
            [
                p("GET {policies}/python-docker-mcp-deny-all"),
                p("GET {policies}/python-docker-mcp-outbound"),
                p("POST {pods}"),
                p("GET {pods}/pdm-r"),
                p("GET {pods}/pdm-r/attach"),
                "attach ?&stdin=true&stdout=true&stderr=true&container=sandbox".into(),
                // The gate's byte comes first, before what the caller writes.
                "stdin \"\\nping\\n\"".into(),
                p("DELETE {pods}/pdm-r"),
            ]
        );
    }

    #[tokio::test]
    async fn a_left_session_is_found_claimed_and_attached_again() {
        let (url, log) = fake_api_server().await;
        install_tls_provider();
        let client = kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
        let mut config = Config::defaults();
        config.kubernetes.namespace = Some("ns".into());
        let backend =
            crate::runtime::Backend::Kubernetes(Kubernetes::with_client(client, &config, None));
        // The engine keeps durable sessions on for Kubernetes now.
        assert!(backend.durable().is_ok());

        let run = async {
            // What `Engine::adopt` does: find by record, claim, attach again.
            let found = backend
                .named(&format!("{}{SESSION}.", durable::PREFIX))
                .await
                .unwrap();
            assert_eq!(found.len(), 1);
            let c = &found[0];
            assert!(c.running);
            let name = SessionName::parse(&c.name).expect("a session record");
            let claimed = name.held_by(Some(Holder::me())).render();
            assert!(backend.rename(&c.name, &claimed).await.unwrap());
            let mut attached = backend.attach(&c.id, &claimed).await.expect("attached");
            assert_eq!(
                (attached.id.as_str(), attached.name.as_str()),
                ("pdm-r", claimed.as_str())
            );
            attached.input.write_all(b"ping\n").await.unwrap();
            attached.input.flush().await.unwrap();
            let mut stdout = String::new();
            while let Some(chunk) = attached.output.next().await {
                if let Output::Stdout(b) = chunk {
                    stdout.push_str(&String::from_utf8_lossy(&b));
                }
            }
            assert_eq!(stdout, "ready\npong ping\n");
        };
        tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .expect("the adoption flow finished");

        let log = log.lock().unwrap().clone();
        let p = |s: &str| s.replace("{pods}", PODS);
        assert_eq!(
            log,
            [
                p("GET {pods}"),
                p("GET {pods}"),
                p("PATCH {pods}/pdm-r"),
                p("GET {pods}/pdm-r"),
                p("GET {pods}/pdm-r/attach"),
                "attach ?&stdin=true&stdout=true&stderr=true&container=sandbox".into(),
                // Attached again: the gate's byte reaches the helper as a blank line,
                // which it skips.
                "stdin \"\\nping\\n\"".into(),
            ]
        );
    }
}

#[tokio::test]
async fn a_sandbox_with_the_egress_mount_is_refused_naming_network_allow() {
    let (k, handle) = mocked();
    let mut config = Config::defaults();
    config.network.allow = vec!["allowed.test".into()];
    let owner = fixed_owner();
    let spec = crate::sandbox::repl_spec(&config, &owner, "pdm-r".into(), "shared", "own");
    let e = k
        .start_attached(&spec)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains("network.allow") && e.contains("Kubernetes"),
        "{e}"
    );
    // Refused before the API server was asked anything.
    drop(k);
    let mut handle = handle;
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(100), handle.next_request())
            .await
            .map_or(true, |r| r.is_none()),
        "no request reached the API server"
    );
}
