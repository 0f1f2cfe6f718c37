//! Browser sandboxes through profiles, end to end: the browser image (`image build
//! --browser`, no browser download), a persistent session whose Chromium renders a local
//! page and stays open across calls, screenshots returned as PNG images (decoded here),
//! a transient run under the profile, an unknown profile, two profiles' pools kept apart,
//! the browser's uid and capabilities, a page that allocates past the memory limit, and
//! Chromium held to a session's egress allow-list. No test reaches past this machine:
//! pages are files inside the sandbox, or servers the test starts on a network of its own
//! (`common::net`).
//!
//! Needs the image python-docker-mcp:browser (`scripts/build-image.sh --browser`, which
//! scripts/test.sh runs first).

mod common;

#[path = "browser/png.rs"]
mod png;

use std::time::Duration;

use base64::Engine as _;
use common::*;
use rmcp::model::CallToolResult;
use serde_json::{json, Value};

const BROWSER_IMAGE: &str = "python-docker-mcp:browser";

/// The browser profile the tests configure, as an operator would.
const PROFILES: (&str, &str) = (
    "PYTHON_DOCKER_MCP_PROFILES",
    "{browser: {image: python-docker-mcp:browser, memory_limit: 1g, shm_size: 256m, \
     pids_limit: 512, cpu_limit: 1, timeout: 90}}",
);

/// A page with a red 120x80 box at (50, 40) that turns blue when clicked.
const PAGE: &str = "<html><body style='margin:0;background:#fff'>\
<div id='box' style='position:absolute;left:50px;top:40px;width:120px;height:80px;background:rgb(255,0,0)' \
onclick=\"this.style.background='rgb(0,0,255)'\"></div></body></html>";

fn require_image() {
    let present = std::process::Command::new("docker")
        .args(["image", "inspect", BROWSER_IMAGE])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        present,
        "{BROWSER_IMAGE} is missing: run scripts/build-image.sh --browser (scripts/test.sh does)"
    );
}

fn run(code: &str, profile: &str) -> Value {
    json!({ "code": code, "profile": profile })
}

/// The images of a result: (mime type, bytes).
fn images(r: &CallToolResult) -> Vec<(String, Vec<u8>)> {
    r.content
        .iter()
        .filter_map(|c| c.as_image())
        .map(|i| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(&i.data)
                .expect("base64 image data");
            (i.mime_type.clone(), bytes)
        })
        .collect()
}

/// The one PNG of a result, decoded.
#[track_caller]
fn screenshot(r: &CallToolResult) -> png::Image {
    assert_ok(r);
    let got = images(r);
    assert_eq!(got.len(), 1, "one image: {}", describe(r));
    assert_eq!(got[0].0, "image/png");
    png::decode(&got[0].1).unwrap_or_else(|e| panic!("a PNG: {e}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_renders_a_local_page_and_keeps_its_browser_open() {
    require_image();
    let mut d = Daemon::start_with(&[PROFILES]).await;
    // Call 1: the page, a browser, a tab; nothing is returned yet.
    let open = format!(
        "from playwright.sync_api import sync_playwright\n\
         open('/app/page.html', 'w').write({PAGE:?})\n\
         pw = sync_playwright().start()\n\
         browser = pw.chromium.launch()\n\
         page = browser.new_page(viewport={{'width': 400, 'height': 300}})\n\
         page.goto('file:///app/page.html')\n\
         page.title()"
    );
    let r = d.call("execute-persistent", run(&open, "browser")).await;
    assert_ok(&r);
    let id = session_id(&r);
    // Call 2: a screenshot, the last expression, comes back as image/png.
    let r = d
        .call(
            "execute-persistent",
            json!({"code": "page.screenshot()", "session_id": id}),
        )
        .await;
    let shot = screenshot(&r);
    assert_eq!((shot.width, shot.height), (400, 300));
    assert_eq!(shot.pixel(100, 70), [255, 0, 0, 255], "inside the box");
    assert_eq!(
        shot.pixel(300, 200),
        [255, 255, 255, 255],
        "outside the box"
    );
    assert!(
        value(&r).is_some_and(|v| v.contains("PNG image")),
        "{}",
        describe(&r)
    );
    // Call 3: the same page, still open, takes a click.
    let r = d
        .call(
            "execute-persistent",
            json!({"code": "page.click('#box')\npage.screenshot()", "session_id": id, "profile": "browser"}),
        )
        .await;
    assert_eq!(screenshot(&r).pixel(100, 70), [0, 0, 255, 255], "clicked");
    // The browser runs as the sandbox's user with no capabilities.
    let r = d
        .call(
            "execute-persistent",
            json!({"code": "import json, os\n\
                    found = []\n\
                    for pid in filter(str.isdigit, os.listdir('/proc')):\n\
                    \x20   try:\n\
                    \x20       comm = open(f'/proc/{pid}/comm').read().strip()\n\
                    \x20       lines = open(f'/proc/{pid}/status').read().splitlines()\n\
                    \x20   except OSError:\n\
                    \x20       continue\n\
                    \x20   status = dict(l.split(':', 1) for l in lines if ':' in l)\n\
                    \x20   if 'chrom' in comm:\n\
                    \x20       found.append([comm, status['Uid'].split(), status['CapEff'].strip(), status['CapPrm'].strip()])\n\
                    print(json.dumps(found))",
                   "session_id": id}),
        )
        .await;
    assert_ok(&r);
    let found: Vec<(String, Vec<String>, String, String)> =
        serde_json::from_str(stdout(&r).trim()).expect("a JSON list");
    assert!(!found.is_empty(), "a running Chromium: {}", describe(&r));
    for (comm, uids, eff, prm) in &found {
        assert!(uids.iter().all(|u| u == "1000"), "{comm}: uids {uids:?}");
        assert_eq!(eff, "0000000000000000", "{comm}: effective capabilities");
        assert_eq!(prm, "0000000000000000", "{comm}: permitted capabilities");
    }
    // Another profile for this session is refused, naming the one it has.
    let r = d
        .call(
            "execute-persistent",
            json!({"code": "1", "session_id": id, "profile": "default"}),
        )
        .await;
    assert_tool_error(&r, "runs under profile `browser`");
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transient_run_under_the_profile_and_an_image_without_a_browser_download() {
    require_image();
    let mut d = Daemon::start_with(&[PROFILES]).await;
    // A plain launch, with no executable path, in a single-use sandbox.
    let code = format!(
        "from playwright.sync_api import sync_playwright\n\
         with sync_playwright() as p:\n\
         \x20   b = p.chromium.launch()\n\
         \x20   page = b.new_page(viewport={{'width': 200, 'height': 100}})\n\
         \x20   page.goto('data:text/html,' + {PAGE:?}.replace('#', '%23'))\n\
         \x20   shot = page.screenshot()\n\
         \x20   b.close()\n\
         shot"
    );
    let r = d.call("execute-transient", run(&code, "browser")).await;
    let shot = screenshot(&r);
    assert_eq!((shot.width, shot.height), (200, 100));
    assert_eq!(shot.pixel(60, 50), [255, 0, 0, 255]);
    // What the image holds: no browser Playwright downloaded, only links to the
    // system Chromium's wrapper where Playwright looks.
    let r = d
        .call(
            "execute-transient",
            run(
                "import json, os\n\
                 root = os.environ['PLAYWRIGHT_BROWSERS_PATH']\n\
                 files = []\n\
                 for d, dirs, names in os.walk(root):\n\
                 \x20   files += [(os.path.join(d, n), os.path.islink(os.path.join(d, n)), os.path.realpath(os.path.join(d, n))) for n in names]\n\
                 caches = [d for base in ('/app', '/root', '/home', '/tmp', '/opt', '/usr/local')\n\
                 \x20         for d, dirs, names in os.walk(base) if os.path.basename(d) == 'ms-playwright']\n\
                 print(json.dumps({'files': files, 'caches': caches}))",
                "browser",
            ),
        )
        .await;
    assert_ok(&r);
    let seen: Value = serde_json::from_str(stdout(&r).trim()).expect("JSON");
    let files = seen["files"].as_array().expect("files");
    assert!(!files.is_empty(), "{seen}");
    for f in files {
        assert_eq!(f[1], true, "a link, not a downloaded browser: {f}");
        assert_eq!(f[2], "/usr/local/bin/pdm-chromium", "{f}");
    }
    assert_eq!(seen["caches"], json!([]), "no Playwright browser cache");
    d.finish().await;

    // The binary's own build of the layer: the same files, no browser download in its log,
    // labelled with the same hash as the image the tests use (so the layers are shared and
    // this build reuses them).
    let tag = "python-docker-mcp:browser-check";
    let out = run_cli(&["image", "build", "--browser", "--tag", tag], &[]);
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "image build --browser: {log}");
    assert!(log.contains("no browser download"), "{log}");
    let lower = log.to_ascii_lowercase();
    assert!(
        !lower.contains("downloading chrom") && !lower.contains("playwright install"),
        "{log}"
    );
    let label = |image: &str| {
        let out = std::process::Command::new("docker")
            .args([
                "image",
                "inspect",
                "-f",
                "{{index .Config.Labels \"python-docker-mcp.browser-dockerfile-sha256\"}}",
                image,
            ])
            .output()
            .expect("docker image inspect");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let (built, used) = (label(tag), label(BROWSER_IMAGE));
    let _ = std::process::Command::new("docker")
        .args(["image", "rm", tag])
        .output();
    assert_eq!(built.len(), 64, "{built:?}");
    assert_eq!(
        built, used,
        "the script and the binary build the same files"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_profile_fails_with_the_names_and_the_schema_names_them() {
    let mut d = Daemon::start_with(&[PROFILES]).await;
    for tool in ["execute-transient", "execute-persistent"] {
        let r = d.call(tool, run("1", "chrome")).await;
        assert_tool_error(&r, "unknown profile `chrome`");
        assert_tool_error(&r, "default, browser");
    }
    let tools = d.client().list_all_tools().await.expect("tools/list");
    let transient = tools
        .iter()
        .find(|t| t.name == "execute-transient")
        .expect("execute-transient");
    let described = transient.input_schema["properties"]["profile"]["description"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        described.contains("profiles: default, browser"),
        "{described}"
    );
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_profiles_pools_never_lend_each_other_a_sandbox() {
    // `twin` has exactly the default's settings; only its name differs. Both keep one
    // sandbox warm.
    let mut d = Daemon::start_with(&[
        ("PYTHON_DOCKER_MCP_POOL_ENABLED", "true"),
        ("PYTHON_DOCKER_MCP_POOL_SIZE", "1"),
        ("PYTHON_DOCKER_MCP_PROFILES", "{twin: {pool_size: 1}}"),
    ])
    .await;
    let pid = d.pid;
    let profile_of = |id: &str| {
        let out = std::process::Command::new("docker")
            .args([
                "inspect",
                "-f",
                "{{index .Config.Labels \"python-docker-mcp.profile\"}}",
                id,
            ])
            .output()
            .expect("docker inspect");
        // A label that is not there prints `<no value>`: the default profile's.
        let label = String::from_utf8_lossy(&out.stdout).trim().to_string();
        match label.as_str() {
            "<no value>" | "" => "default".to_string(),
            _ => label,
        }
    };
    assert!(
        eventually(Duration::from_secs(60), || {
            let warm = containers_with_role(pid, "sandbox");
            let mut profiles: Vec<String> = warm.iter().map(|c| profile_of(c)).collect();
            profiles.sort();
            profiles == ["default", "twin"]
        })
        .await,
        "one warm sandbox per profile"
    );
    let code = "import os\nos.environ.get('PDM_PROFILE', 'default')";
    for _ in 0..3 {
        for (profile, want) in [("default", "'default'"), ("twin", "'twin'")] {
            let r = d.call("execute-transient", run(code, profile)).await;
            assert_eq!(value(&r).as_deref(), Some(want), "{}", describe(&r));
        }
        // Sessions too, and a session keeps its profile without naming it again.
        let r = d.call("execute-persistent", run(code, "twin")).await;
        assert_eq!(value(&r).as_deref(), Some("'twin'"), "{}", describe(&r));
        let id = session_id(&r);
        let r = d.persistent_ok(code, &id).await;
        assert_eq!(value(&r).as_deref(), Some("'twin'"));
        assert_ok(&d.cleanup(&id).await);
    }
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn images_as_values_png_jpeg_and_pil() {
    let mut d = Daemon::start().await;
    // A PIL image, saved as PNG.
    let r = d
        .transient("from PIL import Image\nImage.new('RGB', (7, 5), (0, 200, 0))")
        .await;
    let img = screenshot(&r);
    assert_eq!((img.width, img.height), (7, 5));
    assert_eq!(img.pixel(3, 2), [0, 200, 0, 255]);
    // JPEG bytes stay JPEG.
    let r = d
        .transient(
            "import io\nfrom PIL import Image\nbuf = io.BytesIO()\n\
             Image.new('RGB', (8, 8), (0, 0, 255)).save(buf, 'JPEG')\nbuf.getvalue()",
        )
        .await;
    assert_ok(&r);
    let got = images(&r);
    assert_eq!(got.len(), 1, "{}", describe(&r));
    assert_eq!(got[0].0, "image/jpeg");
    assert!(got[0].1.starts_with(&[0xff, 0xd8, 0xff]));
    // Other bytes are a value, as before.
    let r = d.transient("b'\\x89PN not quite'").await;
    assert_ok(&r);
    assert!(images(&r).is_empty(), "{}", describe(&r));
    assert_eq!(value(&r).as_deref(), Some("b'\\x89PN not quite'"));
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_page_that_allocates_past_the_limit_is_reported_and_others_keep_working() {
    require_image();
    let mut d = Daemon::start_with(&[PROFILES]).await;
    // Another session, before: it must be untouched.
    let other = d.new_session("kept = 41").await;
    let r = d
        .call(
            "execute-persistent",
            run(
                "from playwright.sync_api import sync_playwright\n\
                 pw = sync_playwright().start()\n\
                 browser = pw.chromium.launch()\n\
                 page = browser.new_page()\n\
                 page.goto('data:text/html,<p>hi</p>')\n\
                 page.evaluate('() => { const a = []; while (true) a.push(new Array(1 << 20).fill(1.5)); }')",
                "browser",
            ),
        )
        .await;
    // Reported: an exception from the page (it crashed) or the sandbox killed for memory.
    assert!(
        is_error(&r) || error_type(&r).is_some(),
        "the allocation is reported: {}",
        describe(&r)
    );
    let said = text(&r).to_ascii_lowercase();
    assert!(
        said.contains("crash") || said.contains("memory") || said.contains("closed"),
        "{}",
        describe(&r)
    );
    // The session lives on, and so does its browser: a new page works.
    let id = session_id(&r);
    let r = d
        .persistent_ok(
            "page = browser.new_page()\npage.set_content('<p>again</p>')\npage.inner_text('p')",
            &id,
        )
        .await;
    assert_eq!(value(&r).as_deref(), Some("'again'"), "{}", describe(&r));
    let r = d.persistent_ok("kept + 1", &other).await;
    assert_eq!(value(&r).as_deref(), Some("42"));
    d.assert_serves().await;
    // A new browser session works. (The page gets content first: Chromium once answered
    // "Unable to capture screenshot" for a blank page not yet painted, with two browser
    // tests running at once.)
    let r = d
        .call(
            "execute-transient",
            run(
                "from playwright.sync_api import sync_playwright\n\
                 with sync_playwright() as p:\n\
                 \x20   b = p.chromium.launch()\n\
                 \x20   page = b.new_page()\n\
                 \x20   page.set_content('<p>new</p>')\n\
                 \x20   shot = page.screenshot()\n\
                 shot",
                "browser",
            ),
        )
        .await;
    screenshot(&r);
    d.finish().await;
}

/// (short id, name) of the warm sandboxes of the host pool (`pdm-w.<fingerprint>.<slot>`,
/// or `pdm-h.` while a daemon holds one ready) that the daemon `pid` made.
fn host_warm(pid: u32) -> Vec<(String, String)> {
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "--filter",
            &format!("label=python-docker-mcp.pid={pid}"),
            "--format",
            "{{.ID}} {{.Names}}",
        ])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (id, name) = l.split_once(' ')?;
            (name.starts_with("pdm-w.") || name.starts_with("pdm-h."))
                .then(|| (id[..12].to_string(), name.to_string()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_host_pool_keeps_profiles_apart_by_fingerprint() {
    // Durable daemons share warm sandboxes through the engine, matched by fingerprint.
    let scope = format!("test-profiles-{}", std::process::id());
    let base = [
        ("PYTHON_DOCKER_MCP_SESSION_DURABLE", "true"),
        ("PYTHON_DOCKER_MCP_SESSION_SCOPE", scope.as_str()),
        ("PYTHON_DOCKER_MCP_PROFILES", "{twin: {pool_size: 1}}"),
    ];
    let mut filler = Daemon::start_with(&[
        base[0],
        base[1],
        base[2],
        ("PYTHON_DOCKER_MCP_POOL_ENABLED", "true"),
        ("PYTHON_DOCKER_MCP_POOL_SIZE", "1"),
    ])
    .await;
    let mut warm = Vec::new();
    assert!(
        eventually(Duration::from_secs(60), || {
            warm = host_warm(filler.pid);
            warm.len() == 2
        })
        .await,
        "one warm sandbox per profile: {warm:?}"
    );
    filler.close(Duration::from_secs(30)).await.expect("exits");
    let fingerprint = |name: &str| name.split('.').nth(1).unwrap_or_default().to_string();
    assert_ne!(
        fingerprint(&warm[0].1),
        fingerprint(&warm[1].1),
        "two profiles, two fingerprints: {warm:?}"
    );
    let label_of = |id: &str| {
        let out = std::process::Command::new("docker")
            .args([
                "inspect",
                "-f",
                "{{index .Config.Labels \"python-docker-mcp.profile\"}}",
                id,
            ])
            .output()
            .expect("docker inspect");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // Read now: a transient run's sandbox is removed once its run is done.
    let profiles: Vec<String> = warm.iter().map(|(id, _)| label_of(id)).collect();
    assert_eq!(
        profiles.iter().filter(|p| p.as_str() == "twin").count(),
        1,
        "one warm sandbox is labelled twin: {warm:?} {profiles:?}"
    );
    // A later daemon's runs: each profile's sandbox, never the other's.
    let mut d = Daemon::start_with(&base).await;
    let code =
        "import os, socket\n(os.environ.get('PDM_PROFILE', 'default'), socket.gethostname())";
    let mut ran = Vec::new();
    for profile in ["twin", "default"] {
        let r = d.call("execute-transient", run(code, profile)).await;
        assert_ok(&r);
        let v = value(&r).unwrap_or_default();
        assert!(v.starts_with(&format!("('{profile}'")), "{v}");
        ran.push(v);
    }
    // Each warm sandbox served the run of its own profile.
    for ((id, _), label) in warm.iter().zip(&profiles) {
        let profile = match label.as_str() {
            "twin" => "twin",
            _ => "default",
        };
        let v = ran
            .iter()
            .find(|v| v.contains(id.as_str()))
            .unwrap_or_else(|| panic!("the warm {profile} sandbox {id} served a run: {ran:?}"));
        assert!(v.starts_with(&format!("('{profile}'")), "{id} ran {v}");
    }
    d.finish().await;
    // The filler's warm sandboxes were the host's on purpose; both were taken above.
    remove_leftovers(filler.pid);
    filler.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_an_allow_list_chromium_goes_through_the_sessions_proxy() {
    require_image();
    // A network of the test's own with two servers (`common::net`), the egress ceiling
    // naming both, and the browser profile.
    let mut net = common::net::TestNet::create();
    net.http_server("allowed.test");
    net.http_server("denied.test");
    let subnet = net.subnet();
    let mut d = Daemon::start_with(&[
        PROFILES,
        (
            "PYTHON_DOCKER_MCP_NETWORK_ALLOW",
            "allowed.test:8080,denied.test:8080",
        ),
        ("PYTHON_DOCKER_MCP_NETWORK_ALLOW_PRIVATE", subnet.as_str()),
        ("PYTHON_DOCKER_MCP_EGRESS_NETWORK", net.name.as_str()),
    ])
    .await;
    // The session's list names one of them; a plain launch, no proxy argument.
    let r = d
        .call(
            "execute-persistent",
            json!({"code": "from playwright.sync_api import sync_playwright\n\
                    pw = sync_playwright().start()\n\
                    browser = pw.chromium.launch()\n\
                    page = browser.new_page()\n\
                    response = page.goto('http://allowed.test:8080/page')\n\
                    (response.status, page.inner_text('body'))",
                   "profile": "browser", "network": ["allowed.test:8080"]}),
        )
        .await;
    assert_ok(&r);
    assert_eq!(
        value(&r).as_deref(),
        Some("(200, 'hello from allowed.test /page')"),
        "{}",
        describe(&r)
    );
    let id = session_id(&r);
    // The other host: the proxy refuses it, and the result says so.
    let r = d
        .call(
            "execute-persistent",
            json!({"code": "response = page.goto('http://denied.test:8080/page')\n\
                    (response.status, page.inner_text('body'))",
                   "session_id": id}),
        )
        .await;
    let blocked = "blocked: denied.test:8080 (not in this session's allow-list)";
    assert!(text(&r).contains(blocked), "{}", describe(&r));
    assert!(
        value(&r).is_some_and(|v| v.starts_with("(403")),
        "{}",
        describe(&r)
    );
    d.finish().await;
    net.remove();
}
