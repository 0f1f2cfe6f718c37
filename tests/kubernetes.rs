//! The Kubernetes backend end to end, through a real MCP client.
//!
//! - Always: with `runtime.backend: kubernetes` and no cluster to reach, the daemon starts,
//!   answers, and a call fails with a message naming the fix (KUBECONFIG).
//! - With a cluster (`KUBECONFIG` names a kubeconfig file; `#[ignore]`d, run it with
//!   `KUBECONFIG=... cargo test --test kubernetes -- --ignored`): a persistent session keeps its
//!   variables, a transient run answers, an install into the session is importable, cleanup
//!   ends the session, and once the daemon exits no pod and no claim of it is left in the
//!   namespace. The sandbox image must be on the nodes (for kind: `kind load docker-image
//!   python-docker-mcp:latest`); `PDM_TEST_K8S_NAMESPACE` and `PDM_TEST_K8S_IMAGE` choose
//!   the namespace and image. No cluster can run on the build machines (no registry, no
//!   kubelet), so CI skips it by name; asked for without a cluster, it fails.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, ListParams};

#[tokio::test]
async fn without_a_cluster_the_daemon_answers_and_names_the_fix() {
    let missing = fresh_dir("kube").join("no-such-kubeconfig");
    let missing = missing.to_str().expect("utf-8 path");
    let mut daemon = Daemon::start_with(&[
        ("PYTHON_DOCKER_MCP_BACKEND", "kubernetes"),
        ("KUBECONFIG", missing),
        // Not in a cluster, whatever the machine running the tests is.
        ("KUBERNETES_SERVICE_HOST", ""),
    ])
    .await;
    let r = daemon.transient("print(1)").await;
    assert_tool_error(&r, "Kubernetes API server is not reachable");
    assert_tool_error(&r, "KUBECONFIG");
    // Still answering after the failure.
    let r = daemon.transient("print(2)").await;
    assert_tool_error(&r, "KUBECONFIG");
    daemon.finish().await;
}

/// The kubeconfig of a cluster to run against, or why there is none.
fn cluster() -> Result<String, String> {
    let path = std::env::var("KUBECONFIG")
        .map_err(|_| "KUBECONFIG is not set (no cluster to run against)".to_string())?;
    let first = path.split(':').next().unwrap_or_default().to_string();
    if !std::path::Path::new(&first).is_file() {
        return Err(format!("KUBECONFIG names {first}, which is not a file"));
    }
    Ok(path)
}

/// Runs only when asked for (no cluster can run on the CI machines), as the README's test
/// section says: `KUBECONFIG=... cargo test --test kubernetes -- --ignored`. Asked for
/// without a cluster, it fails rather than pass having run nothing.
#[tokio::test]
#[ignore = "needs KUBECONFIG"]
async fn on_a_real_cluster_sessions_runs_and_installs_work_and_nothing_is_left() {
    let kubeconfig =
        cluster().unwrap_or_else(|why| panic!("the real-cluster test cannot run: {why}"));
    let namespace = std::env::var("PDM_TEST_K8S_NAMESPACE").unwrap_or_else(|_| "default".into());
    let image =
        std::env::var("PDM_TEST_K8S_IMAGE").unwrap_or_else(|_| "python-docker-mcp:latest".into());
    let mut daemon = Daemon::start_with(&[
        ("PYTHON_DOCKER_MCP_BACKEND", "kubernetes"),
        ("KUBECONFIG", &kubeconfig),
        ("PYTHON_DOCKER_MCP_K8S_NAMESPACE", &namespace),
        ("PYTHON_DOCKER_MCP_IMAGE", &image),
    ])
    .await;

    let session = daemon.new_session("x = 41").await;
    let r = daemon.persistent_ok("print(x + 1)", &session).await;
    assert_eq!(stdout(&r).trim(), "42", "{}", describe(&r));

    let r = daemon.transient("print('transient')").await;
    assert_ok(&r);
    assert_eq!(stdout(&r).trim(), "transient");

    let r = daemon.install("tomli-w", Some(&session)).await;
    assert_ok(&r);
    let r = daemon
        .persistent_ok(
            "import tomli_w; print(tomli_w.dumps({'a': 1}).strip())",
            &session,
        )
        .await;
    assert_eq!(stdout(&r).trim(), "a = 1");

    let r = daemon.cleanup(&session).await;
    assert_ok(&r);
    let pid = daemon.pid;
    daemon.finish().await;

    // Deletion is asynchronous: wait (bounded) until the cluster has let everything go.
    python_docker_mcp::runtime::kubernetes::install_tls_provider();
    let client = kube::Client::try_default().await.expect("a client");
    let selector = ListParams::default().labels(&format!("{PID_LABEL}={pid}"));
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client, &namespace);
    let mut left = (usize::MAX, usize::MAX);
    for _ in 0..120 {
        left = (
            pods.list(&selector).await.expect("list pods").items.len(),
            claims
                .list(&selector)
                .await
                .expect("list claims")
                .items
                .len(),
        );
        if left == (0, 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(left, (0, 0), "pods and claims left by daemon {pid}");
}
