//! Files in and out, end to end against the real engine: `upload-file`, `download-file`,
//! `list-files`, `files_changed` with resource links, `resources/read`, transient runs with
//! `files`, the path rule (escapes refused, symlinks included), `docker.file_limit`, and
//! ownership over HTTP (another client's session files are an unknown session). One test
//! drives the official MCP Python SDK and checks it sees the resource links.

mod common;

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use common::http::*;
use common::*;
use rmcp::model::{CallToolResult, ContentBlock, ReadResourceRequestParams, ResourceContents};
use serde_json::{json, Value};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("base64")
}

/// The bytes of resource contents, text or blob.
fn contents_bytes(c: &ResourceContents) -> Vec<u8> {
    let v = serde_json::to_value(c).expect("contents serialise");
    match (v["text"].as_str(), v["blob"].as_str()) {
        (Some(text), _) => text.as_bytes().to_vec(),
        (None, Some(blob)) => unb64(blob),
        _ => panic!("neither text nor blob: {v}"),
    }
}

fn mime(c: &ResourceContents) -> Option<String> {
    let v = serde_json::to_value(c).expect("contents serialise");
    v["mimeType"].as_str().map(str::to_string)
}

fn is_blob(c: &ResourceContents) -> bool {
    serde_json::to_value(c).expect("contents serialise")["blob"].is_string()
}

/// The embedded resources of a result, by URI.
fn embedded(r: &CallToolResult) -> Vec<(String, ResourceContents)> {
    r.content
        .iter()
        .filter_map(|c| match c {
            ContentBlock::Resource(e) => {
                let v = serde_json::to_value(&e.resource).expect("contents serialise");
                Some((v["uri"].as_str()?.to_string(), e.resource.clone()))
            }
            _ => None,
        })
        .collect()
}

/// The resource links of a result: (uri, name).
fn links(r: &CallToolResult) -> Vec<(String, String)> {
    r.content
        .iter()
        .filter_map(|c| match c {
            ContentBlock::ResourceLink(l) => Some((l.uri.clone(), l.name.clone())),
            _ => None,
        })
        .collect()
}

fn changed(r: &CallToolResult) -> Vec<(String, String)> {
    structured(r)["files_changed"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_string(),
                f["change"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// pyplot is imported by the session's first call: importing it (numpy's buffers) and
/// drawing in one cell can exhaust the cell's RLIMIT_DATA room under the default memory
/// limit (see the report; not a files matter).
const SETUP: &str = "import os, matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\nos.makedirs('out')";

const ANALYSE: &str = r#"
import csv
rows = list(csv.DictReader(open("data/input.csv")))
xs = [float(r["x"]) for r in rows]
ys = [float(r["y"]) for r in rows]
fig = plt.figure()
plt.plot(xs, ys)
fig.savefig("out/plot.png")
plt.close(fig)
with open("out/summary.csv", "w") as f:
    f.write("n,total\n%d,%g\n" % (len(ys), sum(ys)))
len(rows)
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_csv_goes_in_a_png_and_a_csv_come_out_and_both_reads_agree() {
    let mut d = Daemon::start().await;
    let session = d.new_session(SETUP).await;
    let csv = "x,y\n1,2\n2,4\n3,9\n";
    let up = d
        .call(
            "upload-file",
            json!({"session_id": session, "path": "data/input.csv", "content": csv}),
        )
        .await;
    assert_ok(&up);
    assert_eq!(structured(&up)["size"], csv.len());
    assert_eq!(structured(&up)["path"], "/app/data/input.csv");

    let run = d.persistent_ok(ANALYSE, &session).await;
    assert_eq!(value(&run).as_deref(), Some("3"), "{}", describe(&run));
    let mut seen = changed(&run);
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("out/plot.png".to_string(), "created".to_string()),
            ("out/summary.csv".to_string(), "created".to_string()),
        ],
        "the input was not changed, the outputs were created: {}",
        describe(&run)
    );
    let mut linked = links(&run);
    linked.sort();
    assert_eq!(linked.len(), 2, "{}", describe(&run));
    for (uri, name) in &linked {
        assert_eq!(
            uri,
            &format!("sandbox://sessions/{session}/files/{name}"),
            "link URIs name the session and path"
        );
    }
    assert!(
        text(&run).contains("out/plot.png (created"),
        "{}",
        text(&run)
    );

    for (uri, path) in &linked {
        let dl = d
            .call(
                "download-file",
                json!({"session_id": session, "path": path}),
            )
            .await;
        assert_ok(&dl);
        let got = embedded(&dl);
        assert_eq!(got.len(), 1, "{}", describe(&dl));
        let via_tool = contents_bytes(&got[0].1);
        assert_eq!(&got[0].0, uri, "the embedded resource has the link's URI");
        let read = d
            .client()
            .read_resource(ReadResourceRequestParams::new(uri.clone()))
            .await
            .expect("resources/read");
        assert_eq!(read.contents.len(), 1);
        let via_read = contents_bytes(&read.contents[0]);
        assert_eq!(
            via_tool, via_read,
            "{path}: download-file and resources/read agree"
        );
        assert_eq!(
            structured(&dl)["size"],
            via_tool.len(),
            "{path}: the size is the bytes'"
        );
        if path.ends_with(".png") {
            assert!(via_tool.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
            assert_eq!(mime(&got[0].1).as_deref(), Some("image/png"));
            assert!(is_blob(&got[0].1), "a PNG is a blob");
        } else {
            assert_eq!(via_tool, b"n,total\n3,15\n");
            assert_eq!(mime(&got[0].1).as_deref(), Some("text/csv"));
        }
    }

    let listed = d
        .call("list-files", json!({"session_id": session, "path": "out"}))
        .await;
    assert_ok(&listed);
    let names: Vec<&str> = structured(&listed)["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["plot.png", "summary.csv"], "{}", describe(&listed));
    let top = d.call("list-files", json!({"session_id": session})).await;
    let entries = structured(&top)["entries"].as_array().unwrap().clone();
    assert!(
        entries
            .iter()
            .any(|e| e["name"] == "data" && e["kind"] == "dir"),
        "{entries:?}"
    );

    // A second run that rewrites the summary reports it as modified.
    let run = d
        .persistent_ok("open('out/summary.csv', 'a').write('x\\n')", &session)
        .await;
    assert_eq!(
        changed(&run),
        vec![("out/summary.csv".to_string(), "modified".to_string())]
    );
    d.cleanup(&session).await;
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn escapes_are_refused_dotdot_absolute_and_symlinks() {
    let mut d = Daemon::start().await;
    let session = d
        .new_session(
            "import os\nos.symlink('/etc', 'etc_link')\nos.symlink('/etc/passwd', 'pw')\n\
             open('/tmp/ok.txt', 'w').write('tmp is fine')",
        )
        .await;
    let refused = |r: &CallToolResult, what: &str| {
        assert!(is_error(r), "{what} must be refused: {}", describe(r));
        let t = text(r);
        assert!(
            t.contains("outside the sandbox's files"),
            "{what}: says why: {t}"
        );
    };
    let r = d
        .call(
            "upload-file",
            json!({"session_id": session, "path": "../../etc/passwd", "content": "x"}),
        )
        .await;
    refused(&r, "an upload to ../../etc/passwd");
    let r = d
        .call(
            "download-file",
            json!({"session_id": session, "path": "../../etc/passwd"}),
        )
        .await;
    refused(&r, "a download of ../../etc/passwd");
    let r = d
        .call(
            "download-file",
            json!({"session_id": session, "path": "/etc/passwd"}),
        )
        .await;
    refused(&r, "a download of /etc/passwd");
    let r = d
        .call("list-files", json!({"session_id": session, "path": "/etc"}))
        .await;
    refused(&r, "a listing of /etc");
    // Symlinks the code made: the helper follows them and refuses.
    for path in ["pw", "etc_link/passwd"] {
        let r = d
            .call(
                "download-file",
                json!({"session_id": session, "path": path}),
            )
            .await;
        refused(&r, path);
        assert!(text(&r).contains("symlinks are followed"), "{}", text(&r));
    }
    let r = d
        .call(
            "upload-file",
            json!({"session_id": session, "path": "etc_link/evil", "content": "x"}),
        )
        .await;
    refused(&r, "an upload through a symlink");
    let r = d
        .call(
            "list-files",
            json!({"session_id": session, "path": "etc_link"}),
        )
        .await;
    refused(&r, "a listing through a symlink");
    let read = d
        .client()
        .read_resource(ReadResourceRequestParams::new(format!(
            "sandbox://sessions/{session}/files/pw"
        )))
        .await;
    assert!(read.is_err(), "resources/read through a symlink: {read:?}");
    // Nothing was written outside, and /tmp is allowed.
    let r = d
        .persistent_ok("import os; os.path.exists('/etc/evil')", &session)
        .await;
    assert_eq!(value(&r).as_deref(), Some("False"));
    let r = d
        .call(
            "download-file",
            json!({"session_id": session, "path": "/tmp/ok.txt"}),
        )
        .await;
    assert_ok(&r);
    assert_eq!(contents_bytes(&embedded(&r)[0].1), b"tmp is fine");
    d.cleanup(&session).await;
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn files_over_the_limit_are_refused_naming_it() {
    let mut d = Daemon::start_with(&[("PYTHON_DOCKER_MCP_FILE_LIMIT", "64k")]).await;
    let session = d
        .new_session("open('big.bin', 'wb').write(b'x' * 100_000)")
        .await;
    let r = d
        .call(
            "upload-file",
            json!({"session_id": session, "path": "in.bin",
                   "content": b64(&vec![7u8; 100_000]), "encoding": "base64"}),
        )
        .await;
    assert_tool_error(&r, "docker.file_limit");
    assert!(text(&r).contains("64k"), "names the limit: {}", text(&r));
    let r = d
        .call(
            "download-file",
            json!({"session_id": session, "path": "big.bin"}),
        )
        .await;
    assert_tool_error(&r, "docker.file_limit");
    assert!(text(&r).contains("64k"), "names the limit: {}", text(&r));
    // Within the limit, both ways work.
    let r = d
        .call(
            "upload-file",
            json!({"session_id": session, "path": "small.bin",
                   "content": b64(&[0, 1, 2, 255]), "encoding": "base64"}),
        )
        .await;
    assert_ok(&r);
    let r = d
        .call(
            "download-file",
            json!({"session_id": session, "path": "small.bin"}),
        )
        .await;
    assert_eq!(contents_bytes(&embedded(&r)[0].1), [0, 1, 2, 255]);
    d.cleanup(&session).await;
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transient_run_takes_files_and_returns_what_it_changed_embedded() {
    let mut d = Daemon::start().await;
    let png_like = [0x89u8, b'P', b'N', b'G', 0, 1, 2, 3];
    let r = d
        .call(
            "execute-transient",
            json!({
                "code": "data = open('notes/in.txt').read()\n\
                         raw = open('blob.bin', 'rb').read()\n\
                         open('out.txt', 'w').write(data.upper())\n\
                         open('blob.bin', 'ab').write(b'!')\n\
                         len(raw)",
                "files": {
                    "notes/in.txt": "hello files",
                    "blob.bin": {"base64": b64(&png_like)}
                }
            }),
        )
        .await;
    assert_ok(&r);
    assert_eq!(value(&r).as_deref(), Some("8"), "{}", describe(&r));
    let mut seen = changed(&r);
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("blob.bin".to_string(), "modified".to_string()),
            ("out.txt".to_string(), "created".to_string()),
        ],
        "inputs written before the run are not changes unless the run changes them"
    );
    let got = embedded(&r);
    assert_eq!(got.len(), 2, "{}", describe(&r));
    for (uri, contents) in &got {
        if uri.ends_with("/out.txt") {
            assert_eq!(contents_bytes(contents), b"HELLO FILES");
        } else {
            assert!(uri.ends_with("/blob.bin"), "{uri}");
            let mut want = png_like.to_vec();
            want.push(b'!');
            assert_eq!(contents_bytes(contents), want);
        }
    }
    assert!(
        links(&r).is_empty(),
        "a transient sandbox is gone: no links"
    );
    // A bad path in `files` refuses the call before anything runs.
    let r = d
        .call(
            "execute-transient",
            json!({"code": "1", "files": {"../x": "no"}}),
        )
        .await;
    assert_tool_error(&r, "outside the sandbox's files");
    d.finish().await;
}

/// The caps on what a run reports and returns (src/repl/helper.py `LIST_CAP`, and the
/// budget in src/engine/files.rs `collect_outputs`): hidden directories are not compared,
/// the comparison stops at 2000 files and says so, and a transient run's changed files
/// come back embedded up to `docker.file_limit` in all, a file left out said so.
#[tokio::test(flavor = "multi_thread")]
async fn files_changed_skips_hidden_directories_stops_at_2000_and_embeds_up_to_the_limit() {
    let mut d = Daemon::start_with(&[("PYTHON_DOCKER_MCP_FILE_LIMIT", "64k")]).await;
    let session = d.new_session("import os").await;
    // Hidden directories (where libraries keep caches) are skipped; the rest is listed.
    let r = d
        .persistent_ok(
            "os.makedirs('.cache/deep')\nopen('.cache/deep/x.txt', 'w').write('x')\n\
             os.makedirs('.config')\nopen('.config/y.txt', 'w').write('y')\n\
             open('seen.txt', 'w').write('z')",
            &session,
        )
        .await;
    assert_eq!(
        changed(&r),
        vec![("seen.txt".to_string(), "created".to_string())],
        "{}",
        describe(&r)
    );
    assert_ne!(
        structured(&r)["files_changed_truncated"],
        json!(true),
        "{}",
        describe(&r)
    );
    // 2100 more files: the comparison covers the first 2000 files of the working
    // directory (seen.txt, then 1999 of these), and says it stopped.
    let r = d
        .persistent_ok(
            "os.makedirs('many')\nfor i in range(2100):\n    open(f'many/{i:04}.txt', 'w').close()",
            &session,
        )
        .await;
    let seen = changed(&r);
    assert_eq!(seen.len(), 1999, "2000 files compared, seen.txt unchanged");
    assert_eq!(seen[0].0, "many/0000.txt");
    assert_eq!(seen[1998].0, "many/1998.txt");
    assert_eq!(
        structured(&r)["files_changed_truncated"],
        json!(true),
        "{}",
        clip(&text(&r))
    );
    assert!(
        text(&r).contains("more than 2000 files"),
        "{}",
        clip(&text(&r))
    );
    d.cleanup(&session).await;

    // A transient run's changed files come back up to file_limit (64 KiB) in all, in
    // path order: a (40 KB) fits, b (40 KB) no longer does, c (10 KB) still does.
    let r = d
        .transient(
            "open('a.bin', 'wb').write(b'a' * 40000)\n\
             open('b.bin', 'wb').write(b'b' * 40000)\n\
             open('c.bin', 'wb').write(b'c' * 10000)",
        )
        .await;
    assert_ok(&r);
    let mut got: Vec<(String, usize)> = embedded(&r)
        .iter()
        .map(|(uri, c)| {
            (
                uri.rsplit('/').next().unwrap().to_string(),
                contents_bytes(c).len(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![("a.bin".to_string(), 40000), ("c.bin".to_string(), 10000)],
        "{}",
        describe(&r)
    );
    assert!(
        text(&r)
            .contains("b.bin (created, 40000 bytes, not returned (over docker.file_limit in all))"),
        "the file left out is said so: {}",
        describe(&r)
    );
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn another_clients_session_files_are_an_unknown_session() {
    let tokens = tokens_file();
    let mut daemon =
        HttpDaemon::start(&[("PYTHON_DOCKER_MCP_TOKENS_FILE", tokens.to_str().unwrap())]).await;
    let alice = daemon.connect(Some(ALICE)).await;
    let bob = daemon.connect(Some(BOB)).await;
    let r = call(
        &alice,
        "execute-persistent",
        json!({"code": "open('secret.txt', 'w').write('alice only')"}),
    )
    .await;
    assert!(!r.is_error.unwrap_or(false), "{r:?}");
    let session = structured(&r)["session_id"].as_str().unwrap().to_string();
    let uri = format!("sandbox://sessions/{session}/files/secret.txt");
    let read = alice
        .read_resource(ReadResourceRequestParams::new(uri.clone()))
        .await
        .expect("alice reads her file");
    assert_eq!(contents_bytes(&read.contents[0]), b"alice only");

    let never = "00000000-0000-4000-8000-000000000000";
    let unknown_tool = call(
        &bob,
        "download-file",
        json!({"session_id": never, "path": "secret.txt"}),
    )
    .await;
    let bobs_tool = call(
        &bob,
        "download-file",
        json!({"session_id": session, "path": "secret.txt"}),
    )
    .await;
    assert_eq!(bobs_tool.is_error, Some(true));
    assert_eq!(
        text(&bobs_tool).replace(&session, "ID"),
        text(&unknown_tool).replace(never, "ID"),
        "bob's download of alice's file reads exactly as an unknown session"
    );
    assert!(
        text(&bobs_tool).contains("no such session"),
        "{}",
        text(&bobs_tool)
    );
    let bobs_read = bob
        .read_resource(ReadResourceRequestParams::new(uri.clone()))
        .await
        .expect_err("bob may not read alice's file");
    let unknown_read = bob
        .read_resource(ReadResourceRequestParams::new(format!(
            "sandbox://sessions/{never}/files/secret.txt"
        )))
        .await
        .expect_err("an unknown session");
    assert_eq!(
        bobs_read.to_string().replace(&session, "ID"),
        unknown_read.to_string().replace(never, "ID"),
        "bob's resources/read of alice's file reads exactly as an unknown session"
    );
    assert!(
        bobs_read.to_string().contains("no such session"),
        "{bobs_read}"
    );
    let bobs_list = call(&bob, "list-files", json!({"session_id": session})).await;
    assert!(
        text(&bobs_list).contains("no such session"),
        "{bobs_list:?}"
    );
    let bobs_upload = call(
        &bob,
        "upload-file",
        json!({"session_id": session, "path": "secret.txt", "content": "bob was here"}),
    )
    .await;
    assert!(
        text(&bobs_upload).contains("no such session"),
        "{bobs_upload:?}"
    );
    let read = alice
        .read_resource(ReadResourceRequestParams::new(uri))
        .await
        .expect("alice still reads her file");
    assert_eq!(
        contents_bytes(&read.contents[0]),
        b"alice only",
        "unchanged"
    );
    drop((alice, bob));
    daemon.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_sdk_sees_resource_links() {
    let python = python_sdk();
    let tokens = tokens_file();
    let mut daemon =
        HttpDaemon::start(&[("PYTHON_DOCKER_MCP_TOKENS_FILE", tokens.to_str().unwrap())]).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/files_client.py");
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(&python)
            .arg(&script)
            .args([daemon.mcp_url().as_str(), ALICE])
            .output(),
    )
    .await
    .expect("the SDK client finished")
    .expect("run the SDK client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let got: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\n{stderr}"));
    let session = got["session_id"].as_str().expect("a session id");
    let links = got["links"].as_array().expect("links");
    assert_eq!(links.len(), 1, "{got}");
    assert_eq!(
        links[0]["uri"],
        format!("sandbox://sessions/{session}/files/hello.txt")
    );
    assert_eq!(links[0]["name"], "hello.txt");
    assert_eq!(links[0]["mimeType"], "text/plain");
    assert_eq!(got["read"], "hi from the sandbox", "{got}");
    assert_eq!(got["resources_capability"], true, "{got}");
    daemon.finish().await;
}
