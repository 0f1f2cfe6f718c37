//! The container runtime seam: the only module that talks to Docker (through bollard).
//!
//! It connects lazily (so the daemon starts and answers even when Docker is down), turns a
//! [`ContainerSpec`] into a created, attached and started container, and offers the few
//! other operations the daemon needs: signal, remove, run-to-completion, volumes, and
//! removal of everything carrying a label. Errors say what failed and how to fix it.

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType, VolumeCreateRequest};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, KillContainerOptions, ListContainersOptions,
    ListVolumesOptions, RemoveContainerOptions, RemoveVolumeOptions, WaitContainerOptions,
};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::io::AsyncWrite;
use tokio::sync::OnceCell;

use crate::sandbox::{labels, ContainerSpec};

/// What failed when talking to Docker.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// No engine answers at the configured address.
    #[error(
        "Docker is not reachable at {host}: {reason}. Is the engine running? Start it \
         (for example `systemctl start docker`, or `scripts/ensure-docker.sh` from the \
         python-docker-mcp repository), or point DOCKER_HOST at it"
    )]
    Unreachable { host: String, reason: String },
    /// The sandbox image is not present locally.
    #[error(
        "the sandbox image `{image}` is not present on this Docker engine. Build it with \
         `scripts/build-image.sh` from the python-docker-mcp repository (or `docker build -t \
         {image} docker/`), or set docker.image / PYTHON_DOCKER_MCP_IMAGE to an image that \
         has python3"
    )]
    ImageMissing { image: String },
    /// Any other refusal by the engine.
    #[error("Docker refused to {op}: {message}")]
    Api { op: &'static str, message: String },
    /// A container did not finish in time.
    #[error("container did not finish within {0:?}")]
    Timeout(Duration),
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

/// A container or volume and its labels.
#[derive(Debug)]
pub struct Labelled {
    pub id: String,
    pub volume: bool,
    pub labels: HashMap<String, String>,
}

/// What a run-to-completion container left behind.
#[derive(Debug)]
pub struct Finished {
    pub exit_code: i64,
    pub stdout: String,
    pub stderr: String,
}

/// A cheap-to-clone handle on the engine connection.
#[derive(Clone)]
pub struct Docker {
    /// Connected and version-negotiated on first use; a failed attempt is retried next time.
    client: std::sync::Arc<OnceCell<bollard::Docker>>,
}

impl Default for Docker {
    fn default() -> Self {
        Docker::new()
    }
}

fn host() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into())
}

fn api(op: &'static str) -> impl FnOnce(BollardError) -> DockerError {
    move |e| match e {
        BollardError::DockerResponseServerError { message, .. } => DockerError::Api { op, message },
        BollardError::HyperResponseError { .. }
        | BollardError::IOError { .. }
        | BollardError::RequestTimeoutError => DockerError::Unreachable {
            host: host(),
            reason: e.to_string(),
        },
        other => DockerError::Api {
            op,
            message: other.to_string(),
        },
    }
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

impl Docker {
    pub fn new() -> Docker {
        Docker {
            client: Default::default(),
        }
    }

    async fn client(&self) -> Result<&bollard::Docker, DockerError> {
        self.client
            .get_or_try_init(|| async {
                let unreachable = |e: BollardError| DockerError::Unreachable {
                    host: host(),
                    reason: e.to_string(),
                };
                let docker = bollard::Docker::connect_with_defaults().map_err(unreachable)?;
                docker.negotiate_version().await.map_err(unreachable)
            })
            .await
    }

    /// Check that the engine answers; returns its version.
    pub async fn ping(&self) -> Result<String, DockerError> {
        let v = self
            .client()
            .await?
            .version()
            .await
            .map_err(api("report its version"))?;
        Ok(v.version.unwrap_or_default())
    }

    /// Check that an image is present.
    pub async fn image_present(&self, image: &str) -> Result<bool, DockerError> {
        match self.client().await?.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(api("inspect the image")(e)),
        }
    }

    /// Create, attach (before start, so no output is lost) and start a container.
    pub async fn start_attached(&self, spec: &ContainerSpec) -> Result<Attached, DockerError> {
        let docker = self.client().await?;
        let id = self.create(spec).await?;
        let attached = docker
            .attach_container(
                &id,
                Some(AttachContainerOptions {
                    stdin: spec.interactive,
                    stdout: true,
                    stderr: true,
                    stream: true,
                    logs: false,
                    detach_keys: None,
                }),
            )
            .await;
        let attached = match attached {
            Ok(a) => a,
            Err(e) => {
                self.remove(&id).await;
                return Err(api("attach to the container")(e));
            }
        };
        if let Err(e) = docker.start_container(&id, None).await {
            self.remove(&id).await;
            return Err(api("start the container")(e));
        }
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
            id,
            name: spec.name.clone(),
            input: attached.input,
            output: Box::pin(output),
        })
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, DockerError> {
        let docker = self.client().await?;
        let mounts = spec
            .volumes
            .iter()
            .map(|v| Mount {
                target: Some(v.target.clone()),
                source: Some(v.volume.clone()),
                typ: Some(MountType::VOLUME),
                read_only: Some(v.read_only),
                ..Default::default()
            })
            .collect();
        let host_config = HostConfig {
            memory: Some(spec.memory_bytes as i64),
            memory_swap: Some(spec.memory_bytes as i64),
            nano_cpus: Some(spec.nano_cpus),
            pids_limit: Some(spec.pids_limit),
            cap_drop: Some(spec.cap_drop.clone()),
            security_opt: Some(spec.security_opt.clone()),
            readonly_rootfs: Some(spec.read_only_root),
            network_mode: Some(spec.network.clone().unwrap_or_else(|| "none".into())),
            tmpfs: Some(spec.tmpfs.clone().into_iter().collect()),
            mounts: Some(mounts),
            init: Some(true),
            auto_remove: Some(spec.auto_remove),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: Some(spec.cmd.clone()),
            env: Some(spec.env.clone()),
            user: Some(spec.user.clone()),
            working_dir: Some(spec.working_dir.clone()),
            labels: Some(spec.labels.clone().into_iter().collect()),
            network_disabled: Some(spec.network.is_none()),
            attach_stdin: Some(spec.interactive),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            open_stdin: Some(spec.interactive),
            // Docker closes the helper's stdin when our attach connection goes away, and the
            // helper exits on EOF: a sandbox never outlives its daemon, even after SIGKILL.
            stdin_once: Some(spec.interactive),
            tty: Some(false),
            host_config: Some(host_config),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: Some(spec.name.clone()),
            ..Default::default()
        };
        match docker.create_container(Some(options), body).await {
            Ok(r) => Ok(r.id),
            Err(e) if is_not_found(&e) => Err(DockerError::ImageMissing {
                image: spec.image.clone(),
            }),
            Err(e) => Err(api("create a container")(e)),
        }
    }

    /// Send a signal (for example `SIGINT`) to the container's main process.
    pub async fn signal(&self, id: &str, signal: &str) -> Result<(), DockerError> {
        let options = KillContainerOptions {
            signal: signal.into(),
        };
        match self.client().await?.kill_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if is_gone(&e) => Ok(()),
            Err(e) => Err(api("signal the container")(e)),
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

    /// Run a container to completion, collecting its output; removed afterwards.
    pub async fn run_to_completion(
        &self,
        spec: &ContainerSpec,
        timeout: Duration,
    ) -> Result<Finished, DockerError> {
        let docker = self.client().await?;
        let mut attached = self.start_attached(spec).await?;
        let id = attached.id.clone();
        let collect = async {
            let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
            while let Some(chunk) = attached.output.next().await {
                match chunk {
                    Output::Stdout(b) => stdout.extend_from_slice(&b),
                    Output::Stderr(b) => stderr.extend_from_slice(&b),
                }
            }
            let mut wait = docker.wait_container(&id, None::<WaitContainerOptions>);
            let exit_code = match wait.next().await {
                Some(Ok(r)) => r.status_code,
                Some(Err(BollardError::DockerContainerWaitError { code, .. })) => code,
                Some(Err(e)) => return Err(api("wait for the container")(e)),
                None => -1,
            };
            Ok(Finished {
                exit_code,
                stdout: String::from_utf8_lossy(&stdout).into_owned(),
                stderr: String::from_utf8_lossy(&stderr).into_owned(),
            })
        };
        let result = tokio::time::timeout(timeout, collect).await;
        self.remove(&id).await;
        match result {
            Ok(r) => r,
            Err(_) => Err(DockerError::Timeout(timeout)),
        }
    }

    /// Create a labelled volume (idempotent).
    pub async fn create_volume(
        &self,
        name: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), DockerError> {
        let request = VolumeCreateRequest {
            name: Some(name.into()),
            labels: Some(labels.clone().into_iter().collect()),
            ..Default::default()
        };
        self.client()
            .await?
            .create_volume(request)
            .await
            .map_err(api("create a volume"))?;
        Ok(())
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
    ) -> Result<Vec<String>, DockerError> {
        let filters = HashMap::from([(
            "label".to_string(),
            with.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>(),
        )]);
        let options = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        let list = self
            .client()
            .await?
            .list_containers(Some(options))
            .await
            .map_err(api("list containers"))?;
        Ok(list.into_iter().filter_map(|c| c.id).collect())
    }

    /// Every container and volume carrying the `managed` label, with their labels.
    pub async fn managed(&self) -> Result<Vec<Labelled>, DockerError> {
        let docker = self.client().await?;
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{}=true", labels::MANAGED)],
        )]);
        let options = ListContainersOptions {
            all: true,
            filters: Some(filters.clone()),
            ..Default::default()
        };
        let containers = docker
            .list_containers(Some(options))
            .await
            .map_err(api("list containers"))?;
        let volumes = docker
            .list_volumes(Some(ListVolumesOptions {
                filters: Some(filters),
            }))
            .await
            .map_err(api("list volumes"))?;
        let mut out: Vec<Labelled> = containers
            .into_iter()
            .filter_map(|c| {
                Some(Labelled {
                    id: c.id?,
                    volume: false,
                    labels: c.labels.unwrap_or_default(),
                })
            })
            .collect();
        out.extend(
            volumes
                .volumes
                .unwrap_or_default()
                .into_iter()
                .map(|v| Labelled {
                    id: v.name,
                    volume: true,
                    labels: v.labels,
                }),
        );
        Ok(out)
    }

    /// Remove every container and volume of one daemon instance. Returns how many
    /// containers were removed.
    pub async fn remove_instance(&self, instance: &str) -> Result<usize, DockerError> {
        let ids = self
            .containers_labelled(&[(labels::INSTANCE, instance)])
            .await?;
        futures::future::join_all(ids.iter().map(|id| self.remove(id))).await;
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{}={instance}", labels::INSTANCE)],
        )]);
        let volumes = self
            .client()
            .await?
            .list_volumes(Some(ListVolumesOptions {
                filters: Some(filters),
            }))
            .await
            .map_err(api("list volumes"))?;
        let names: Vec<String> = volumes
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.name)
            .collect();
        futures::future::join_all(names.iter().map(|n| self.remove_volume(n))).await;
        Ok(ids.len())
    }

    /// TEMPORARY until the OOM watcher lands.
    pub async fn oom_killed(
        &self,
        _id: &str,
        _since: std::time::Instant,
        _within: Duration,
    ) -> bool {
        false
    }
}
