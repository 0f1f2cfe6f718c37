//! A raw JSON-RPC client over the daemon's stdio, shared by the benches that need one
//! (`files`, `installs`, `scaling`, `browser`): each spawns the release binary with a clean
//! `PYTHON_DOCKER_MCP_*` environment and a home of its own, and times its round trips.
//! A raw client, not rmcp's: rmcp's client, like its server by default, drops any line over
//! 16 MiB, and a 16 MiB file is about 22.4 MB of base64 in one message.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::daemon::std_command;

/// A daemon over stdio and the ids of its requests.
pub struct Rpc {
    child: Child,
    /// Taken (closed) on close or drop: EOF makes the daemon clean up and exit.
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    next: u64,
}

impl Rpc {
    /// Spawn `bin` with `env` (over a clean `PYTHON_DOCKER_MCP_*` environment, log level
    /// warn, a home under the temp dir named for `bench`) and initialise it.
    pub fn start(bin: &str, bench: &str, env: &[(&str, String)]) -> Rpc {
        let home = std::env::temp_dir().join(format!("pdm-bench-{bench}-{}", std::process::id()));
        std::fs::create_dir_all(&home).expect("home");
        let mut cmd = std_command(Path::new(bin), &home);
        cmd.env("PYTHON_DOCKER_MCP_LOG", "warn");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn python-docker-mcp");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut rpc = Rpc {
            child,
            stdin: Some(stdin),
            stdout,
            next: 0,
        };
        rpc.request(
            "initialize",
            json!({"protocolVersion": "2025-11-25", "capabilities": {},
                   "clientInfo": {"name": format!("bench-{bench}"), "version": "0"}}),
        );
        rpc.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        rpc
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn send(&mut self, message: &Value) {
        let mut line = serde_json::to_vec(message).unwrap();
        line.push(b'\n');
        let stdin = self.stdin.as_mut().expect("open");
        stdin.write_all(&line).unwrap();
        stdin.flush().unwrap();
    }

    /// One request; its response and the round trip (request written to response parsed).
    pub fn request(&mut self, method: &str, params: Value) -> (Value, Duration) {
        self.next += 1;
        let id = self.next;
        let started = Instant::now();
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        loop {
            let mut line = String::new();
            if self.stdout.read_line(&mut line).unwrap() == 0 {
                panic!("the daemon closed stdout");
            }
            let message: Value = serde_json::from_str(&line).expect("a JSON line");
            if message["id"] == id {
                return (message, started.elapsed());
            }
        }
    }

    /// One tool call that must succeed; its result and the round trip.
    pub fn tool(&mut self, name: &str, arguments: Value) -> (Value, Duration) {
        let (response, took) =
            self.request("tools/call", json!({"name": name, "arguments": arguments}));
        let result = response["result"].clone();
        assert!(
            result.is_object() && result["isError"] != true,
            "{name} failed: {}",
            &response.to_string()[..response.to_string().len().min(800)]
        );
        (result, took)
    }

    /// A new session that ran `code`; its id.
    pub fn new_session(&mut self, code: &str) -> String {
        let (result, _) = self.tool("execute-persistent", json!({ "code": code }));
        result["structuredContent"]["session_id"]
            .as_str()
            .expect("a session id")
            .to_string()
    }

    /// Close stdin and wait (60 s at most) for the daemon's shutdown to finish.
    pub fn close(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if self.stdin.take().is_none() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
    }
}

impl Drop for Rpc {
    fn drop(&mut self) {
        self.stop();
    }
}
