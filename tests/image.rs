//! `python-docker-mcp image build`: the binary builds its sandbox image from the Dockerfile it
//! embeds, and every place a user meets a missing image names that command.
//!
//! No image registry is reachable on the test machine, so builds use the debootstrapped
//! Debian base `scripts/build-image.sh --from debian` makes (`BASE` below). Every image a
//! test builds gets a throwaway tag that a guard removes, also when the test fails.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// The local base with python3 that `scripts/build-image.sh --from debian` imports.
const BASE: &str = "python-docker-mcp-base:bookworm";

/// A tag no one else uses: `pdm-test-build-<pid>-<nanos>:latest`.
fn throwaway_tag(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("pdm-test-{what}-{}-{nanos}:latest", std::process::id())
}

fn image_exists(tag: &str) -> bool {
    std::process::Command::new("docker")
        .args(["image", "inspect", tag])
        .output()
        .expect("run docker")
        .status
        .success()
}

/// Removes its tag on drop (the image itself goes with it when no other tag holds it).
struct RemoveTag(String);

impl Drop for RemoveTag {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["image", "rm", &self.0])
            .output();
    }
}

/// `image build` with these arguments, isolated like a daemon; (success, stderr).
async fn image_build(args: &[&str]) -> (bool, String) {
    let mut all = vec!["image", "build"];
    all.extend_from_slice(args);
    let all: Vec<String> = all.into_iter().map(String::from).collect();
    let out = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = all.iter().map(String::as_str).collect();
        run_cli(&args, &[])
    })
    .await
    .expect("image build thread");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn image_build_makes_an_image_a_daemon_runs_code_in() {
    assert!(
        image_exists(BASE),
        "{BASE} is missing: make it with `scripts/build-image.sh --from debian`"
    );
    let tag = throwaway_tag("build");
    // Declared first, dropped last: after the daemon and its containers are gone.
    let _guard = RemoveTag(tag.clone());
    assert!(!image_exists(&tag));

    let (ok, stderr) = image_build(&["--base", BASE, "--tag", &tag]).await;
    assert!(ok, "image build failed:\n{stderr}");
    // Progress is the engine's step lines, on stderr.
    assert!(stderr.contains("Step 1/"), "{stderr}");
    assert!(stderr.contains(&format!("{tag} is ready")), "{stderr}");
    assert!(image_exists(&tag), "the build tagged {tag}");

    let mut d = Daemon::start_with(&[("PYTHON_DOCKER_MCP_IMAGE", &tag)]).await;
    let r = d
        .transient("import os\nprint(os.getuid(), os.getcwd(), os.environ['MPLBACKEND'])")
        .await;
    assert!(!is_error(&r), "{}", text(&r));
    // uid 1000, /app and Agg come from the embedded Dockerfile, not from the base.
    assert!(text(&r).contains("1000 /app Agg"), "{}", text(&r));
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_base_that_cannot_be_pulled_says_to_pass_base() {
    let tag = throwaway_tag("nobase");
    let _guard = RemoveTag(tag.clone());
    // A reference on a loopback registry port where nothing listens: the engine's pull is
    // refused at once, on this machine.
    let base = "127.0.0.1:1/none:latest";
    let (ok, stderr) = image_build(&["--base", base, "--tag", &tag]).await;
    assert!(
        !ok,
        "a build on a base that does not exist fails:\n{stderr}"
    );
    assert!(
        stderr.contains(&format!("the base image `{base}`"))
            && stderr.contains("cannot be pulled")
            && stderr.contains("--base IMAGE"),
        "{stderr}"
    );
    assert!(!image_exists(&tag), "a failed build tags nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_image_names_the_build_command_in_the_log_and_in_each_call() {
    let image = throwaway_tag("missing");
    let command = format!("python-docker-mcp image build --tag {image}");
    let mut d = Daemon::start_logged(&[("PYTHON_DOCKER_MCP_IMAGE", &image)]).await;

    // `serve` looks for the image at start-up, in the background, and logs it once.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !d.log_text().contains(&command) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = d.log_text();
    assert_eq!(
        log.matches(&command).count(),
        1,
        "start-up logs the missing image once, naming the command:\n{log}"
    );
    assert!(log.contains("--base IMAGE"), "{log}");

    for _ in 0..2 {
        let r = d.transient("1").await;
        assert_tool_error(&r, &command);
        let r = d.persistent("1", None).await;
        assert_tool_error(&r, &command);
    }
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_builds_a_missing_image_and_runs_on_it() {
    let tag = throwaway_tag("demo");
    let _guard = RemoveTag(tag.clone());
    let args: Vec<String> = ["--image", &tag, "demo", "--base", BASE]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let out = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_cli(&args, &[])
    })
    .await
    .expect("demo thread");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("the sandbox image {tag} is missing; building it")),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("built {tag}")), "{stdout}");
    // The first call ran on the image the demo built.
    assert!(stdout.contains("sum of range(10) = 45"), "{stdout}");
    assert!(image_exists(&tag));
}
