//! What `python-docker-mcp doctor` checks, assembled by the engine itself: a sandbox from
//! the engine's configuration, owner and backend through the spec the pool starts its
//! sandboxes with (`sandbox::repl_spec`), and the installer probe run where installs run
//! (the download cache, `sandbox::installer_spec`, `package.timeout`). The doctor only
//! asks and judges; it assembles nothing. Everything a probe makes carries this engine's
//! instance label, and [`Engine::probe_cleanup`] removes it.

use crate::install;
use crate::repl::{Repl, ReplError};
use crate::runtime::{Finished, RuntimeError};
use crate::sandbox::{self, Owner, Role};

use super::Engine;

/// Why the probe sandbox is not there.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// A package volume could not be created.
    #[error("could not create the sandbox's volumes: {0}")]
    Volumes(RuntimeError),
    /// The sandbox did not start, or its helper never became ready.
    #[error("a sandbox does not start: {0}")]
    Start(ReplError),
}

/// Why the installer probe did not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum InstallerProbeError {
    /// The download cache volume could not be created.
    #[error("could not create the download cache volume: {0}")]
    Cache(RuntimeError),
    /// The installer container did not run to its end.
    #[error("the installer container did not run: {0}")]
    Run(RuntimeError),
}

/// A sandbox the probe started, and the shared package volume it mounts (the installer
/// probe installs into it, as an install without a session does).
pub struct ProbeSandbox {
    pub repl: Repl,
    pub shared_volume: String,
}

impl Engine {
    /// Start one sandbox as the pool starts one: this engine's shared package volume and
    /// a package volume of its own, then the pool's spec, with this engine's limits,
    /// labels and backend.
    pub async fn probe_sandbox(&self) -> Result<ProbeSandbox, ProbeError> {
        let s = &self.shared;
        let shared = s.owner.shared_volume();
        let name = s.owner.name(Role::Sandbox);
        let own = format!("{name}-packages");
        s.backend
            .create_volume(&shared, &s.owner.labels(Role::Packages, None))
            .await
            .map_err(ProbeError::Volumes)?;
        s.backend
            .create_volume(&own, &s.owner.labels(Role::Sandbox, None))
            .await
            .map_err(ProbeError::Volumes)?;
        let spec = sandbox::repl_spec(&s.config, &s.owner, name, &shared, &own);
        let repl = Repl::start(&s.backend, &spec)
            .await
            .map_err(ProbeError::Start)?;
        Ok(ProbeSandbox {
            repl,
            shared_volume: shared,
        })
    }

    /// Run the installer probe (`install/probe.py`: pip runs, the index answers) in an
    /// installer container exactly as an install into `volume` runs, and remove it.
    pub async fn probe_installer(&self, volume: &str) -> Result<Finished, InstallerProbeError> {
        let s = &self.shared;
        s.cache_volume
            .get_or_try_init(|| async {
                s.backend
                    .create_volume(sandbox::CACHE_VOLUME, &Owner::cache_labels())
                    .await
            })
            .await
            .map_err(InstallerProbeError::Cache)?;
        let cmd = install::probe_command(&s.config.package);
        let spec = sandbox::installer_spec(&s.config, &s.owner, None, volume, cmd);
        s.backend
            .run_to_completion(&spec, s.config.package.timeout)
            .await
            .map_err(InstallerProbeError::Run)
    }

    /// Remove every container and volume of this engine's instance (what the probes
    /// made).
    pub async fn probe_cleanup(&self) -> Result<(), RuntimeError> {
        let s = &self.shared;
        s.backend
            .remove_instance(&s.owner.instance, &Default::default())
            .await
            .map(|_| ())
    }
}
