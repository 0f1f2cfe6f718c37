//! Sandbox profiles: named sets of sandbox settings, chosen per call (`profile`).
//!
//! `profiles` in the config maps a name to a partial profile ([`Profile`], parsed with the
//! config): the settings it gives override the `docker.*` defaults, which are themselves the profile [`DEFAULT`].
//! [`Config::for_profile`] resolves a name to the whole configuration its sandboxes run
//! with, or fails naming the profiles that exist. The engine keeps one warm pool per
//! profile ([`crate::pool::Pools`]); a profile's name is part of its sandboxes' spec
//! (`PDM_PROFILE`), so the host pool's fingerprint never lets two profiles lend each other
//! a sandbox, even two with the same settings.

use crate::config::{human_bytes, Config};
pub use crate::config::{
    valid_profile_name as valid_name, Profile, ProfileTable as Table, DEFAULT_PROFILE as DEFAULT,
};

/// Why a profile cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProfileError {
    /// The call named a profile the config does not have.
    #[error("unknown profile `{name}`: this server's profiles are {}. Omit `profile` for the default", known.join(", "))]
    Unknown { name: String, known: Vec<String> },
    /// A later call to a session named another profile than its first call.
    #[error("session `{session}` runs under profile `{has}`, not `{asked}`: a session keeps the profile of its first call. Omit `profile` (or pass `{has}`) to use this session, or call execute-persistent without session_id and with profile `{asked}` to start a session under it")]
    Switch {
        session: String,
        has: String,
        asked: String,
    },
}

impl Config {
    /// The names of every profile, `default` first.
    pub fn profile_names(&self) -> Vec<String> {
        std::iter::once(DEFAULT.to_string())
            .chain(self.profiles.keys().cloned())
            .collect()
    }

    /// The configuration the sandboxes of profile `name` run with: the default's, with
    /// what the profile sets.
    pub fn for_profile(&self, name: &str) -> Result<Config, ProfileError> {
        if name == DEFAULT {
            let mut c = self.clone();
            c.profile = DEFAULT.into();
            return Ok(c);
        }
        let Some(p) = self.profiles.get(name) else {
            return Err(ProfileError::Unknown {
                name: crate::text::clip(name).into(),
                known: self.profile_names(),
            });
        };
        let mut c = self.clone();
        c.profile = name.to_string();
        let d = &mut c.docker;
        if let Some(v) = &p.image {
            d.image = v.clone();
        }
        if let Some(v) = p.memory_limit {
            d.memory_limit = v;
        }
        if let Some(v) = p.cpu_limit {
            d.cpu_limit = v;
        }
        if let Some(v) = p.pids_limit {
            d.pids_limit = v;
        }
        if let Some(v) = p.tmpfs_size {
            d.tmpfs_size = v;
        }
        if let Some(v) = p.shm_size {
            d.shm_size = Some(v);
        }
        d.pool_size = p.pool_size.unwrap_or(0);
        if let Some(v) = &p.warm_imports {
            d.warm_imports = v.clone();
        }
        if let Some(v) = p.timeout {
            d.timeout = v;
        }
        Ok(c)
    }

    /// Every profile's effective settings, for `python-docker-mcp config`.
    pub fn describe_profiles(&self) -> String {
        let mut out = String::from(
            "\n# Profiles (a call's `profile`; default is the docker.* settings above):\n",
        );
        for name in self.profile_names() {
            let c = self.for_profile(&name).expect("a known name");
            let d = &c.docker;
            let origin = match name.as_str() {
                DEFAULT => "docker.*".to_string(),
                _ => format!("profiles.{name} over docker.*"),
            };
            out.push_str(&format!(
                "profile {name}:  # {origin}\n  image: {}\n  memory_limit: {}\n  cpu_limit: {}\n  \
                 pids_limit: {}\n  tmpfs_size: {}\n  shm_size: {}\n  pool_size: {}\n  \
                 warm_imports: [{}]\n  timeout: {}\n",
                d.image,
                human_bytes(d.memory_limit),
                d.cpu_limit,
                d.pids_limit,
                human_bytes(d.tmpfs_size),
                d.shm_size
                    .map(human_bytes)
                    .unwrap_or_else(|| "null  # the engine's (64m on Docker)".into()),
                d.pool_size,
                d.warm_imports.join(", "),
                humantime::format_duration(d.timeout),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{resolve, Layers};
    use std::path::PathBuf;
    use std::time::Duration;

    fn with(text: &str) -> Config {
        resolve(&Layers {
            file: Some((PathBuf::from("/cfg.yaml"), text.into())),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn a_profile_overrides_what_it_sets_and_keeps_the_rest() {
        let c = with(
            "docker:\n  cpu_limit: 2\nprofiles:\n  browser:\n    image: python-docker-mcp:browser\n    \
             memory_limit: 1g\n    shm_size: 256m\n    timeout: 60\n",
        );
        assert_eq!(c.profile_names(), vec!["default", "browser"]);
        let b = c.for_profile("browser").unwrap();
        assert_eq!(b.profile, "browser");
        assert_eq!(b.docker.image, "python-docker-mcp:browser");
        assert_eq!(b.docker.memory_limit, 1 << 30);
        assert_eq!(b.docker.shm_size, Some(256 << 20));
        assert_eq!(b.docker.timeout, Duration::from_secs(60));
        assert_eq!(b.docker.cpu_limit, 2.0, "inherited from docker.*");
        assert_eq!(
            b.docker.pool_size, 0,
            "a named profile keeps none warm unless set"
        );
        let d = c.for_profile("default").unwrap();
        assert_eq!(d.docker.image, "python-docker-mcp:latest");
        assert_eq!(d.docker.pool_size, 32);
    }

    #[test]
    fn an_unknown_profile_lists_the_names() {
        let c = with("profiles:\n  browser: {pool_size: 1}\n  big: {memory_limit: 2g}\n");
        let e = c.for_profile("chrome").unwrap_err();
        let text = e.to_string();
        assert!(text.contains("`chrome`"), "{text}");
        assert!(text.contains("default, big, browser"), "{text}");
    }

    #[test]
    fn every_profile_is_described() {
        let c = with("profiles:\n  browser: {image: python-docker-mcp:browser, pool_size: 1}\n");
        let text = c.describe_profiles();
        assert!(text.contains("profile default:"), "{text}");
        assert!(text.contains("profile browser:"), "{text}");
        assert!(text.contains("image: python-docker-mcp:browser"), "{text}");
    }

    #[test]
    fn names() {
        assert!(valid_name("browser"));
        assert!(valid_name("big-2_x"));
        assert!(!valid_name(""));
        assert!(!valid_name("-x"));
        assert!(!valid_name("a.b"));
        assert!(!valid_name(&"x".repeat(41)));
    }
}
