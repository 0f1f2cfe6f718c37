//! Packages: `install-package` (into a session or a shared environment), `list-packages`,
//! and the installer container both they and a run's `packages` use.

use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::Serialize;

use super::{Engine, ExecError, CONTROL_TIMEOUT};
use crate::calls::{Operation, ShuttingDown};
use crate::client::Client;
use crate::install;
use crate::install::{Requirement, RequirementError};
use crate::repl::Package;
use crate::runtime::{Finished, RuntimeError};
use crate::sandbox::SandboxSpec;
use crate::sandbox::{self, Owner};
use crate::text::clip;

/// The structured result of `install-package`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct InstallResult {
    /// The requirements as installed.
    pub requirements: Vec<String>,
    /// Where it went: `session <id>` or `shared environment`.
    #[schemars(with = "String")]
    pub target: InstallTarget,
    /// Distributions installed, as `name-version`.
    pub installed: Vec<String>,
    /// Files taken from the download cache instead of the network.
    pub cached: Vec<String>,
    /// The installer that ran (`uv` or `pip`).
    pub installer: String,
    /// How long the install took, in milliseconds.
    pub duration_ms: f64,
}

/// Where an install goes. Its `Display` is the text the result carries (`target`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstallTarget {
    /// A session's own package volume.
    Session(String),
    /// The shared environment transient runs and sessions see (`install-package` without
    /// a session).
    Shared,
    /// A transient run's own sandbox (its `packages`).
    Run,
}

impl InstallTarget {
    /// The session the installer works for, if any (its labels say so).
    fn session(&self) -> Option<&str> {
        match self {
            InstallTarget::Session(id) => Some(id),
            InstallTarget::Shared | InstallTarget::Run => None,
        }
    }
}

impl std::fmt::Display for InstallTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InstallTarget::Session(id) => write!(f, "session {id}"),
            InstallTarget::Shared => f.write_str("shared environment"),
            InstallTarget::Run => f.write_str("this run"),
        }
    }
}

/// On the wire, the same string as before the enum: its `Display`.
impl Serialize for InstallTarget {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Now, in seconds since the epoch (installer containers report their phases on the same
/// clock).
pub(super) fn epoch_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Why an install failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(transparent)]
    Requirement(#[from] RequirementError),
    #[error(transparent)]
    Session(#[from] ExecError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("installing `{requirement}` failed:\n{summary}")]
    Failed {
        requirement: String,
        summary: String,
    },
    #[error("installing `{requirement}` took longer than the install time-out ({timeout:?}) and was stopped; nothing was changed. Raise package.timeout (PYTHON_DOCKER_MCP_INSTALL_TIMEOUT) for large packages")]
    TimedOut {
        requirement: String,
        timeout: Duration,
    },
    #[error(transparent)]
    ShuttingDown(#[from] ShuttingDown),
}

impl Engine {
    /// Install a run's `packages` into `volume` (a session's, or a transient run's own
    /// sandbox's); nothing to do without any.
    pub(super) async fn install_for_run(
        &self,
        requirements: &[Requirement],
        volume: &str,
        session: Option<&str>,
    ) -> Result<Vec<String>, InstallError> {
        if requirements.is_empty() {
            return Ok(Vec::new());
        }
        let target = match session {
            Some(id) => InstallTarget::Session(id.into()),
            None => InstallTarget::Run,
        };
        let r = self.run_installer(requirements, volume, target).await?;
        Ok(r.installed)
    }

    /// Install a requirement into a session, or into the shared environment that
    /// transient runs and sessions see.
    pub async fn install_package(
        &self,
        packages: &[String],
        session_id: Option<&str>,
        client: &Client,
    ) -> Result<InstallResult, InstallError> {
        let _call = self.admit(Operation::Install, session_id, client)?;
        let requirements = parse_requirements(packages)?;
        match session_id {
            Some(id) => {
                let session = self.session(id, client).await?;
                // Holding the session's lock: no code runs in it while packages change, and
                // an ended session's volume is never touched again.
                let mut guard = session.lock().await;
                self.live(&session, &mut guard)?;
                let target = InstallTarget::Session(id.into());
                self.run_installer(&requirements, &session.volume, target)
                    .await
            }
            None => {
                let pool = self.shared_environment_of(client);
                let volume = pool.shared_volume().await?.to_string();
                let _one_at_a_time = self.shared.shared_install.lock().await;
                self.run_installer(&requirements, &volume, InstallTarget::Shared)
                    .await
            }
        }
    }

    /// Installed distributions as a session sees them (its own, shared, the image's), or,
    /// without a session, as a new sandbox sees them (shared and the image's).
    pub async fn list_packages(
        &self,
        session_id: Option<&str>,
        client: &Client,
    ) -> Result<Vec<Package>, ExecError> {
        let _call = self.admit(Operation::ListPackages, session_id, client)?;
        match session_id {
            Some(id) => {
                let session = self.session(id, client).await?;
                let mut guard = session.lock().await;
                let repl = self.live(&session, &mut guard)?;
                repl.packages(CONTROL_TIMEOUT)
                    .await
                    .map_err(|e| ExecError::Broken {
                        id: clip(id).into(),
                        why: e,
                    })
            }
            None => {
                let pool = self.pool_for(client);
                let mut sandbox = pool.acquire(client).await?;
                let listed = sandbox.repl.packages(CONTROL_TIMEOUT).await;
                pool.discard(sandbox);
                listed.map_err(|e| ExecError::Broken {
                    id: "(new sandbox)".into(),
                    why: e,
                })
            }
        }
    }

    /// Install `requirements` into `volume` with an installer container of its own,
    /// which is removed afterwards (before a failure is reported).
    pub(super) async fn run_installer(
        &self,
        requirements: &[Requirement],
        volume: &str,
        target: InstallTarget,
    ) -> Result<InstallResult, InstallError> {
        let c = &self.shared.config;
        let wanted = requirements
            .iter()
            .map(|r| r.spec.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        self.cache_volume().await?;
        let cmd = install::installer_command(&c.package, requirements);
        let spec = sandbox::installer_spec(c, &self.shared.owner, target.session(), volume, cmd);
        let started = Instant::now();
        let begun = epoch_seconds();
        tracing::info!(requirements = %wanted, %target, "installing");
        let finished = self.run_to_exit(&spec, &wanted).await?;
        tracing::debug!(
            requirements = %wanted,
            %target,
            exit_code = finished.exit_code,
            timing = %install::timing_breakdown(&finished.stdout, begun, epoch_seconds()),
            "install timing"
        );
        if finished.exit_code != 0 {
            let mut summary = install::pip_failure_summary(&finished.stdout, &finished.stderr);
            if let Some(hint) = install::failure_hint(&summary, c.package.only_binary) {
                summary = format!("{summary}\n{hint}");
            }
            return Err(InstallError::Failed {
                requirement: wanted,
                summary,
            });
        }
        let output = format!("{}\n{}", finished.stdout, finished.stderr);
        Ok(InstallResult {
            requirements: requirements.iter().map(|r| r.spec.clone()).collect(),
            target,
            installed: install::installed_from_pip_output(&output),
            cached: install::cached_from_output(&output),
            installer: install::installer_used(&finished.stdout),
            duration_ms: started.elapsed().as_secs_f64() * 1000.0,
        })
    }

    /// The download cache volume every installer mounts, made on the first install.
    async fn cache_volume(&self) -> Result<(), RuntimeError> {
        self.shared
            .cache_volume
            .get_or_try_init(|| async {
                let labels = Owner::cache_labels();
                self.shared
                    .backend
                    .create_volume(sandbox::CACHE_VOLUME, &labels)
                    .await
            })
            .await
            .map(|_| ())
    }

    /// Run the installer `spec` until it exits, within `package.timeout`, and remove it:
    /// after a success off the reply path, after a failure before it is reported (so a
    /// caller that looks finds nothing left, and a retry starts clean).
    async fn run_to_exit(
        &self,
        spec: &SandboxSpec,
        wanted: &str,
    ) -> Result<Finished, InstallError> {
        let backend = &self.shared.backend;
        match backend
            .run_until_exit(spec, self.shared.config.package.timeout)
            .await
        {
            Ok((f, id)) if f.exit_code == 0 => {
                // It has exited: its removal need not delay a success.
                let backend = backend.clone();
                self.shared
                    .tasks
                    .spawn(async move { backend.remove(&id).await });
                Ok(f)
            }
            Ok((f, id)) => {
                backend.remove(&id).await;
                Ok(f)
            }
            Err(RuntimeError::Timeout(timeout)) => Err(InstallError::TimedOut {
                requirement: wanted.into(),
                timeout,
            }),
            Err(e) => Err(e.into()),
        }
    }
}

/// Validate every requirement before anything runs; at least one is needed.
pub(super) fn parse_requirements(
    packages: &[String],
) -> Result<Vec<Requirement>, RequirementError> {
    if packages.is_empty() {
        return Err(RequirementError::Empty);
    }
    packages
        .iter()
        .map(|p| install::parse_requirement(p))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_install_target_is_the_same_string_on_the_wire_and_in_the_schema() {
        let result = |target| InstallResult {
            requirements: vec!["six".into()],
            target,
            installed: Vec::new(),
            cached: Vec::new(),
            installer: "uv".into(),
            duration_ms: 1.0,
        };
        let session = serde_json::to_value(result(InstallTarget::Session("abc".into()))).unwrap();
        assert_eq!(session["target"], "session abc");
        let shared = serde_json::to_value(result(InstallTarget::Shared)).unwrap();
        assert_eq!(shared["target"], "shared environment");
        let schema = serde_json::to_value(schemars::schema_for!(InstallResult)).unwrap();
        let target = &schema["properties"]["target"];
        assert_eq!(target["type"], "string", "{target}");
        assert_eq!(
            target["description"],
            "Where it went: `session <id>` or `shared environment`."
        );
    }
}
