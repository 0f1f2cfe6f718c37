//! `python-docker-mcp image build`: the binary builds its own sandbox image.
//!
//! The Dockerfile is `docker/Dockerfile` of the repository, embedded at compile time
//! ([`DOCKERFILE`]), so a `cargo install`ed binary needs nothing from the repository;
//! `scripts/build-image.sh` builds from the same file, so there is one source. The build
//! context is that one file, packed into a tar in memory ([`context_tar`]) and sent to the
//! engine through [`Docker::build_image`]; the engine's step lines are the progress.
//!
//! The build also passes the Dockerfile's SHA-256 ([`dockerfile_sha256`]) as
//! `DOCKERFILE_SHA256`, which the Dockerfile puts in the image label [`DOCKERFILE_LABEL`]:
//! `scripts/build-image.sh` computes the same hash and rebuilds an image whose label differs,
//! so a machine with an image from an older Dockerfile gets the new one.
//!
//! `--browser` builds the browser image ([`build_browser`]): `docker/Dockerfile.browser`
//! (with its two helper files, [`BROWSER_CONTEXT`]) on top of the sandbox image: Debian's
//! Chromium, a font set, and Playwright for Python whose browser paths point at that
//! Chromium, so nothing is downloaded. Its label [`BROWSER_LABEL`] carries the SHA-256 of
//! those three files ([`browser_sha256`]), which `scripts/build-image.sh --browser` checks.
//!
//! `--base` fills the Dockerfile's `BASE_IMAGE` (default [`DEFAULT_BASE`]). A machine that
//! cannot pull it names a local image that has python3 instead, for example the Debian base
//! `scripts/build-image.sh --from debian` makes (`python-docker-mcp-base:bookworm`).

use std::collections::HashMap;

use crate::runtime::docker::Docker;
use crate::runtime::RuntimeError;

/// The sandbox image's Dockerfile, the same file `scripts/build-image.sh` builds.
pub const DOCKERFILE: &str = include_str!("../docker/Dockerfile");

/// The image label that records which Dockerfile built the image (its SHA-256, hex).
pub const DOCKERFILE_LABEL: &str = "python-docker-mcp.dockerfile-sha256";

/// The SHA-256 of [`DOCKERFILE`] in lower-case hex, as `sha256sum docker/Dockerfile` prints it.
pub fn dockerfile_sha256() -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(DOCKERFILE.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The browser layer's build context: its Dockerfile (named `Dockerfile` in the context),
/// the Chromium wrapper Playwright starts, and the script that points Playwright's browser
/// paths at it. The same files `scripts/build-image.sh --browser` builds.
pub const BROWSER_CONTEXT: [(&str, &str, u32); 3] = [
    (
        "Dockerfile",
        include_str!("../docker/Dockerfile.browser"),
        0o644,
    ),
    (
        "pdm-chromium",
        include_str!("../docker/pdm-chromium"),
        0o755,
    ),
    (
        "browser-paths.py",
        include_str!("../docker/browser-paths.py"),
        0o644,
    ),
];

/// The browser image's default tag.
pub const BROWSER_TAG: &str = "python-docker-mcp:browser";

/// The image label that records which browser layer built the image.
pub const BROWSER_LABEL: &str = "python-docker-mcp.browser-dockerfile-sha256";

/// The SHA-256 of the browser layer's three files, concatenated in [`BROWSER_CONTEXT`]'s
/// order: `cat docker/Dockerfile.browser docker/pdm-chromium docker/browser-paths.py |
/// sha256sum`.
pub fn browser_sha256() -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for (_, text, _) in BROWSER_CONTEXT {
        hash.update(text.as_bytes());
    }
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Build the browser image `tag` on the sandbox image `sandbox` (which must be present:
/// build it first with [`build`]), passing each progress line to `progress`.
pub async fn build_browser(
    docker: &Docker,
    sandbox: &str,
    tag: &str,
    progress: impl FnMut(&str),
) -> Result<(), ImageError> {
    if !docker.image_present(sandbox).await? {
        return Err(ImageError::SandboxMissing {
            image: sandbox.to_string(),
        });
    }
    let args = HashMap::from([
        ("SANDBOX_IMAGE".to_string(), sandbox.to_string()),
        ("BROWSER_DOCKERFILE_SHA256".to_string(), browser_sha256()),
    ]);
    let context =
        context_tar_files(&BROWSER_CONTEXT.map(|(name, text, mode)| (name, text.as_bytes(), mode)));
    docker.build_image(context, tag, args, progress).await?;
    Ok(())
}

/// The base the Dockerfile names by default (its `ARG BASE_IMAGE=`).
pub const DEFAULT_BASE: &str = "python:3.12-slim";

/// Why the image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The base is not on this engine, and the engine could not pull it.
    #[error(
        "the base image `{base}` is not on this Docker engine and cannot be pulled ({message}). \
         Pass `--base IMAGE` naming a local image that has python3 (for example \
         python-docker-mcp-base:bookworm, which `scripts/build-image.sh --from debian` makes \
         with debootstrap), or make an image registry reachable"
    )]
    BaseUnavailable { base: String, message: String },
    /// The browser layer needs the sandbox image under it.
    #[error(
        "the sandbox image `{image}` the browser layer builds on is not on this Docker engine: \
         build it first with `python-docker-mcp image build` (or name another with --image)"
    )]
    SandboxMissing { image: String },
    /// Anything else the engine refused: unreachable, a failed step.
    #[error(transparent)]
    Docker(#[from] RuntimeError),
}

/// Build the sandbox image from the embedded Dockerfile on `base`, tag it `tag`, and pass
/// each progress line to `progress`.
pub async fn build(
    docker: &Docker,
    base: &str,
    tag: &str,
    progress: impl FnMut(&str),
) -> Result<(), ImageError> {
    // Asked before the build, so a failure can say whether the base was the problem.
    let base_present = docker.image_present(base).await?;
    let args = HashMap::from([
        ("BASE_IMAGE".to_string(), base.to_string()),
        ("DOCKERFILE_SHA256".to_string(), dockerfile_sha256()),
    ]);
    match docker
        .build_image(context_tar(DOCKERFILE.as_bytes()), tag, args, progress)
        .await
    {
        Ok(()) => Ok(()),
        Err(RuntimeError::BuildFailed { message, .. })
            if !base_present && pull_failure(&message) =>
        {
            Err(ImageError::BaseUnavailable {
                base: base.to_string(),
                message,
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether an engine's build error is about fetching the base (rather than a failed step).
fn pull_failure(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    !m.contains("returned a non-zero code")
}

/// A tar archive (ustar) holding one file, `Dockerfile`, with `dockerfile` as its content:
/// the whole build context.
pub fn context_tar(dockerfile: &[u8]) -> Vec<u8> {
    context_tar_files(&[("Dockerfile", dockerfile, 0o644)])
}

/// A tar archive (ustar) of `files` (name, content, mode), in that order.
pub fn context_tar_files(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, content, mode) in files {
        out.extend_from_slice(&tar_entry(name, content, *mode));
    }
    // Two zero blocks end the archive.
    out.resize(out.len() + 1024, 0);
    out
}

/// One file of a ustar archive: its header and its content, padded to 512 bytes.
fn tar_entry(name: &str, dockerfile: &[u8], mode: u32) -> Vec<u8> {
    let mut header = [0u8; 512];
    let field = |header: &mut [u8; 512], at: usize, value: &[u8]| {
        header[at..at + value.len()].copy_from_slice(value);
    };
    field(&mut header, 0, name.as_bytes());
    field(&mut header, 100, format!("{mode:07o}\0").as_bytes());
    field(&mut header, 108, b"0000000\0");
    field(&mut header, 116, b"0000000\0");
    field(
        &mut header,
        124,
        format!("{:011o}\0", dockerfile.len()).as_bytes(),
    );
    field(&mut header, 136, b"00000000000\0");
    header[156] = b'0';
    field(&mut header, 257, b"ustar\0");
    field(&mut header, 263, b"00");
    // The checksum is the sum of the header's bytes with its own field read as spaces.
    field(&mut header, 148, b"        ");
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    field(&mut header, 148, format!("{sum:06o}\0 ").as_bytes());

    let padded = dockerfile.len().div_ceil(512) * 512;
    let mut out = Vec::with_capacity(512 + padded);
    out.extend_from_slice(&header);
    out.extend_from_slice(dockerfile);
    out.resize(512 + padded, 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_is_one_dockerfile_in_a_valid_tar() {
        let tar = context_tar(DOCKERFILE.as_bytes());
        assert_eq!(tar.len() % 512, 0);
        assert_eq!(&tar[..10], b"Dockerfile");
        assert_eq!(&tar[512..512 + DOCKERFILE.len()], DOCKERFILE.as_bytes());
        // The checksum field verifies: the sum with the field as spaces.
        let mut header = tar[..512].to_vec();
        let stored = u32::from_str_radix(
            std::str::from_utf8(&header[148..154]).expect("octal digits"),
            8,
        )
        .expect("octal");
        header[148..156].copy_from_slice(b"        ");
        assert_eq!(stored, header.iter().map(|&b| u32::from(b)).sum::<u32>());
        assert!(DOCKERFILE.contains("ARG BASE_IMAGE=python:3.12-slim"));
    }

    #[test]
    fn the_dockerfile_hash_is_sha256sums_and_the_dockerfile_labels_it() {
        let hash = dockerfile_sha256();
        assert_eq!(hash.len(), 64);
        assert!(hash
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert!(DOCKERFILE.contains(&format!("LABEL {DOCKERFILE_LABEL}=${{DOCKERFILE_SHA256}}")));
        // The installer prefers uv; the image brings it.
        assert!(DOCKERFILE.contains("pip install --no-cache-dir --break-system-packages uv"));
    }

    #[test]
    fn the_browser_context_holds_its_three_files_and_downloads_no_browser() {
        let tar = context_tar_files(
            &BROWSER_CONTEXT.map(|(name, text, mode)| (name, text.as_bytes(), mode)),
        );
        assert_eq!(tar.len() % 512, 0);
        let names: Vec<&str> = BROWSER_CONTEXT.iter().map(|(n, _, _)| *n).collect();
        for name in names {
            assert!(
                tar.windows(name.len()).any(|w| w == name.as_bytes()),
                "{name}"
            );
        }
        let (_, dockerfile, _) = BROWSER_CONTEXT[0];
        assert!(dockerfile.contains(&format!(
            "LABEL {BROWSER_LABEL}=${{BROWSER_DOCKERFILE_SHA256}}"
        )));
        assert!(dockerfile.contains("FROM ${SANDBOX_IMAGE}"));
        assert!(!dockerfile.contains("playwright install"));
        assert_eq!(browser_sha256().len(), 64);
    }
}
