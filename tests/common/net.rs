//! Hosts a test starts itself, for containers to reach. A [`TestNet`] is an engine network
//! the test creates (`--internal`: nothing on it reaches past this machine) with servers on
//! it, each a container of the sandbox image named by a network alias that the engine's DNS
//! resolves (`index.test`). Pointing `network.egress_network` at it puts the daemon's
//! installers there too.
//!
//! On Podman ([`TestNet::create_on`] with [`Engine::Podman`]) the network is not
//! `--internal`: on a host where Docker runs too, Docker's `FORWARD` policy is `DROP` and
//! netavark adds no accept rule for an internal network, so its containers cannot reach
//! each other at all (a connect times out; checked with Podman 4.3 beside dockerd 20.10).
//! Nothing there reaches past this machine either: the servers only listen, and the
//! daemon's egress proxy connects only to the names a test lists.
//!
//! No test reads the host's addresses or the default bridge's settings (a freshly started
//! engine may report no gateway for it), and nothing depends on what an earlier run left in
//! the engine. A passing test ends with [`TestNet::remove`], which asserts that the servers
//! and the network are gone; `Drop` removes them when a test fails first.

use std::process::Command;
use std::time::{Duration, Instant};

/// What the servers run: the sandbox image has python3, and no image can be pulled here.
pub const HOST_IMAGE: &str = "python-docker-mcp:latest";
/// The label on every network and server a test makes; its value is the test process's
/// pid, so `scripts/test.sh` tells strays of a finished run from those of a suite still
/// running. Not the daemon's own `python-docker-mcp.*` labels: the daemon must never count
/// or reap these.
pub const TEST_LABEL: &str = "python-docker-mcp-test.pid";

/// `--label` and its value for what this test process makes.
fn label() -> String {
    format!("{TEST_LABEL}={}", std::process::id())
}
/// The port every server listens on (each has an address of its own).
pub const PORT: u16 = 8080;
/// How long a server may take to start listening: a cold container start takes about
/// 0.3 s, so this only catches a server that never comes up.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// A package index that accepts connections and never answers: an installer that asks it
/// waits until its time-out.
const SILENT: &str = "\
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', PORT))
s.listen(128)
print('listening', flush=True)
held = []
while True:
    held.append(s.accept()[0])
";

/// A small HTTP server: `GET` answers 200 with `hello from NAME PATH`, where NAME is the
/// server's alias (the test passes `NAME = ...` ahead of it, see [`TestNet::http_server`]).
const HTTP: &str = "\
import http.server
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    def do_GET(self):
        body = ('hello from %s %s' % (NAME, self.path)).encode()
        self.send_response(200)
        self.send_header('Content-Type', 'text/plain')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
class S(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512
s = S(('0.0.0.0', PORT), H)
print('listening', flush=True)
s.serve_forever()
";

/// Which engine's CLI makes the network and its servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Docker,
    Podman,
}

impl Engine {
    fn cli(self) -> &'static str {
        match self {
            Engine::Docker => "docker",
            Engine::Podman => "podman",
        }
    }
}

/// A network of the test's own and the servers on it.
pub struct TestNet {
    /// The engine it is made in.
    engine: Engine,
    /// The network's name, unique per test: the value for `network.egress_network`.
    pub name: String,
    /// The servers' container names, removed before the network.
    servers: Vec<String>,
    /// [`TestNet::remove`] ran, so `Drop` has nothing to do.
    removed: bool,
}

impl TestNet {
    /// Create an internal Docker network named `pdm-test-<uuid>`.
    pub fn create() -> TestNet {
        TestNet::create_on(Engine::Docker)
    }

    /// Create a network named `pdm-test-<uuid>` in `engine`: internal on Docker, not on
    /// Podman (see the module doc).
    pub fn create_on(engine: Engine) -> TestNet {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("pdm-test-{}", &id[..12]);
        let label = label();
        let mut args = vec!["network", "create", "--label", &label, &name];
        if engine == Engine::Docker {
            args.insert(2, "--internal");
        }
        cli(engine, &args);
        TestNet {
            engine,
            name,
            servers: Vec::new(),
            removed: false,
        }
    }

    /// Run `program` (Python, with `PORT` defined) as a server on this network, named
    /// `alias`, and wait until it prints `listening`. It runs with no capabilities.
    pub fn serve(&mut self, alias: &str, program: &str) {
        let container = format!("{}-{}", self.name, alias.replace('.', "-"));
        let code = format!("PORT = {PORT}\n{program}");
        self.run(&[
            "run",
            "-d",
            "--name",
            &container,
            "--network",
            &self.name,
            "--network-alias",
            alias,
            "--label",
            &label(),
            "--cap-drop",
            "ALL",
            "--memory",
            "128m",
            HOST_IMAGE,
            "python3",
            "-u",
            "-c",
            &code,
        ]);
        self.servers.push(container.clone());
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let logs = Command::new(self.engine.cli())
                .args(["logs", &container])
                .output()
                .expect("the engine's logs command");
            if String::from_utf8_lossy(&logs.stdout).contains("listening") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the test server {alias} did not start listening within {READY_WITHIN:?}:\n{}{}",
                String::from_utf8_lossy(&logs.stdout),
                String::from_utf8_lossy(&logs.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A package index at `index.test` that accepts connections and never answers. Returns
    /// its URL and its host (to pass as a trusted host).
    pub fn silent_index(&mut self) -> (String, String) {
        let host = "index.test";
        self.serve(host, SILENT);
        (format!("http://{host}:{PORT}/simple"), host.to_string())
    }

    /// An HTTP server at `alias` answering every GET with `hello from ALIAS PATH`.
    pub fn http_server(&mut self, alias: &str) {
        self.serve(alias, &format!("NAME = {alias:?}\n{HTTP}"));
    }

    /// The network's subnet as the engine reports it (its IPAM config: the network was
    /// created here, so it has one), as a CIDR.
    pub fn subnet(&self) -> String {
        let format = match self.engine {
            Engine::Docker => "{{range .IPAM.Config}}{{.Subnet}} {{end}}",
            Engine::Podman => "{{range .Subnets}}{{.Subnet}} {{end}}",
        };
        let subnet = self.run(&["network", "inspect", "-f", format, &self.name]);
        let first = subnet.split_whitespace().next().unwrap_or_default();
        assert!(!first.is_empty(), "{} reports no subnet", self.name);
        first.to_string()
    }

    /// A server that accepts connections and never answers, at `alias`.
    pub fn silent_server(&mut self, alias: &str) {
        self.serve(alias, SILENT);
    }

    /// The address of the server named `alias` on this network: for a probe by address
    /// from a container that is not on it.
    pub fn address(&self, alias: &str) -> String {
        let container = format!("{}-{}", self.name, alias.replace('.', "-"));
        let format = format!(
            "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
            self.name
        );
        let ip = self.run(&["inspect", "-f", &format, &container]);
        assert!(!ip.is_empty(), "{alias} has no address on {}", self.name);
        ip
    }

    /// Whether a one-off container on this network connects to `host:port`: `connected`,
    /// or the error's name. It shows a probe's target is alive, so a failure elsewhere is
    /// the prober's isolation and not a dead server.
    pub fn connect_from_inside(&self, host: &str, port: u16) -> String {
        let code = format!(
            "import socket\n\
             try:\n\
             \x20   socket.create_connection(({host:?}, {port}), timeout=5).close()\n\
             \x20   print('connected')\n\
             except OSError as e:\n\
             \x20   print(type(e).__name__)"
        );
        self.run(&[
            "run",
            "--rm",
            "--network",
            &self.name,
            "--label",
            &label(),
            "--cap-drop",
            "ALL",
            HOST_IMAGE,
            "python3",
            "-c",
            &code,
        ])
    }

    /// Remove the servers and the network, and assert both are gone. A network that still
    /// has an endpoint (a container some daemon left on it) cannot be removed: that fails
    /// the test.
    pub fn remove(mut self) {
        self.removed = true;
        if !self.servers.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(self.servers.iter().map(String::as_str));
            self.run(&args);
        }
        self.run(&["network", "rm", &self.name]);
        let still = Command::new(self.engine.cli())
            .args(["network", "inspect", &self.name])
            .output()
            .expect("the engine's network inspect");
        assert!(
            !still.status.success(),
            "the network {} is still there",
            self.name
        );
    }

    /// Run this network's engine CLI, assert it succeeded, return its trimmed stdout.
    fn run(&self, args: &[&str]) -> String {
        cli(self.engine, args)
    }
}

impl Drop for TestNet {
    /// A safety net for a test that failed before [`TestNet::remove`]: remove the
    /// servers, detach whatever else is still on the network, remove it. Errors are
    /// ignored (the test has failed already, and the engine may be down).
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        let engine = self.engine.cli();
        for server in &self.servers {
            let _ = Command::new(engine)
                .args(["rm", "-f", "-v", server])
                .output();
        }
        if self.engine == Engine::Podman {
            // Podman's `network rm -f` removes what is still on the network first.
            let _ = Command::new(engine)
                .args(["network", "rm", "-f", &self.name])
                .output();
            return;
        }
        let attached = Command::new("docker")
            .args([
                "network",
                "inspect",
                "-f",
                "{{range $id, $c := .Containers}}{{$id}} {{end}}",
                &self.name,
            ])
            .output();
        if let Ok(out) = attached {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("docker")
                    .args(["network", "disconnect", "-f", &self.name, id])
                    .output();
            }
        }
        let _ = Command::new("docker")
            .args(["network", "rm", &self.name])
            .output();
    }
}

/// Run `engine`'s CLI, assert it succeeded, return its trimmed stdout.
fn cli(engine: Engine, args: &[&str]) -> String {
    let program = engine.cli();
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run the {program} CLI: {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed: {}",
        args[..args.len().min(2)].join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
