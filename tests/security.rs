//! Security: the sandbox as seen from inside, through execute-transient and sessions.
//! Each probe reads the kernel's own view (/proc, /sys/fs/cgroup, errno values), so these
//! fail if the container were started with a weaker profile.

mod common;

use common::net::{TestNet, PORT};
use common::*;
use serde_json::{json, Value};

/// Run `code` in a fresh transient sandbox; it must succeed; returns its output state.
async fn probe(d: &Daemon, code: &str) -> serde_json::Map<String, Value> {
    let r = d.transient(code).await;
    assert_ok(&r);
    field(&r, "state")
        .as_object()
        .cloned()
        .unwrap_or_else(|| panic!("no state: {}", describe(&r)))
}

#[tokio::test(flavor = "multi_thread")]
async fn code_runs_as_an_unprivileged_user_without_capabilities() {
    let mut d = Daemon::start().await;
    let s = probe(
        &d,
        "\
import os
uid, euid, gid = os.getuid(), os.geteuid(), os.getgid()
status = dict(line.split(':\\t', 1) for line in open('/proc/self/status').read().splitlines() if ':\\t' in line)
caps = {k: status[k].strip() for k in ('CapEff', 'CapPrm', 'CapInh', 'CapBnd', 'CapAmb')}
no_new_privs = status['NoNewPrivs'].strip()
try:
    os.setuid(0)
    setuid = 'succeeded'
except OSError as e:
    setuid = type(e).__name__
try:
    os.chown('/app', 0, 0)
    chown = 'succeeded'
except OSError as e:
    chown = type(e).__name__
host_pids = len([p for p in os.listdir('/proc') if p.isdigit()])",
    )
    .await;
    assert_ne!(s["uid"], json!(0), "{s:?}");
    assert_ne!(s["euid"], json!(0), "{s:?}");
    assert_ne!(s["gid"], json!(0), "{s:?}");
    for (cap, v) in s["caps"].as_object().unwrap() {
        assert_eq!(v, &json!("0000000000000000"), "{cap} is not empty: {s:?}");
    }
    assert_eq!(s["no_new_privs"], json!("1"), "{s:?}");
    assert_eq!(s["setuid"], json!("PermissionError"), "{s:?}");
    assert_eq!(s["chown"], json!("PermissionError"), "{s:?}");
    assert!(
        s["host_pids"].as_u64().unwrap() < 10,
        "the sandbox sees only its own processes: {s:?}"
    );
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_root_filesystem_is_read_only_while_tmp_and_the_workdir_are_writable() {
    let mut d = Daemon::start().await;
    let s = probe(
        &d,
        "\
import os, errno
def attempt(path):
    try:
        with open(path, 'w') as f:
            f.write('x')
        return 'ok'
    except OSError as e:
        return errno.errorcode[e.errno]
usr = attempt('/usr/pdm-probe')
root = attempt('/pdm-probe')
var_tmp = attempt('/var/tmp/pdm-probe')   # world-writable: only a read-only mount stops it
tmp = attempt('/tmp/pdm-probe')
app = attempt('/app/pdm-probe')
rel = attempt('relative-probe')
cwd = os.getcwd()
mounts = {line.split()[1]: line.split()[3].split(',') for line in open('/proc/self/mounts')}
root_opts = mounts['/']
tmp_opts = mounts.get('/tmp', [])",
    )
    .await;
    assert_ne!(s["usr"], json!("ok"), "{s:?}");
    assert_ne!(s["root"], json!("ok"), "{s:?}");
    assert_eq!(s["var_tmp"], json!("EROFS"), "{s:?}");
    assert_eq!(s["tmp"], json!("ok"), "{s:?}");
    assert_eq!(s["app"], json!("ok"), "{s:?}");
    assert_eq!(s["rel"], json!("ok"), "{s:?}");
    assert_eq!(s["cwd"], json!("/app"), "{s:?}");
    assert!(
        s["root_opts"].as_array().unwrap().contains(&json!("ro")),
        "{s:?}"
    );
    let tmp_opts = s["tmp_opts"].as_array().unwrap();
    for opt in ["nosuid", "nodev"] {
        assert!(tmp_opts.contains(&json!(opt)), "/tmp lacks {opt}: {s:?}");
    }
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sandbox_has_no_network() {
    // A host the test starts itself (a stand-in for the engine's TCP API port), alive for
    // a container on its network: the sandbox must reach it neither by address nor by
    // name. Declared first, removed last.
    let mut net = TestNet::create();
    net.silent_server("api.test");
    let api = net.address("api.test");
    assert_eq!(
        net.connect_from_inside(&api, PORT),
        "connected",
        "the test host answers on its own network"
    );
    let mut d = Daemon::start().await;
    let code = "\
import errno, socket, time
def connect(addr):
    try:
        socket.create_connection(addr, timeout=3).close()
        return 'connected'
    except OSError as e:
        return errno.errorcode.get(e.errno, type(e).__name__)
def resolve(name):
    try:
        socket.getaddrinfo(name, 443)
        return 'resolved'
    except socket.gaierror as e:
        return {socket.EAI_AGAIN: 'EAI_AGAIN', socket.EAI_NONAME: 'EAI_NONAME'}.get(e.errno, str(e.errno))
ip = connect(('198.51.100.1', 53))
api = connect(('API_ADDRESS', API_PORT))
started = time.monotonic()
test_net = connect(('192.0.2.1', 443))
test_net_seconds = time.monotonic() - started
dns = resolve('pdm-probe.invalid')
dns_test_host = resolve('api.test')
interfaces = sorted(line.split(':')[0].strip() for line in open('/proc/net/dev').read().splitlines()[2:])"
        .replace("API_ADDRESS", &api)
        .replace("API_PORT", &PORT.to_string());
    let s = probe(&d, &code).await;
    // No route at all, not a firewall that drops packets: the connect to TEST-NET-1 fails
    // at once with ENETUNREACH instead of running into its 3 s time-out.
    // ENETUNREACH is the refusal itself: a connect that ran into its time-out would say
    // `timeout` instead. Its duration is printed, not asserted.
    assert_eq!(s["test_net"], json!("ENETUNREACH"), "{s:?}");
    eprintln!(
        "the TEST-NET-1 connect failed after {} s",
        s["test_net_seconds"]
    );
    // TEST-NET-2 and the live test host fail the same way.
    assert_eq!(s["ip"], json!("ENETUNREACH"), "{s:?}");
    assert_eq!(s["api"], json!("ENETUNREACH"), "{s:?}");
    // No resolver can be asked (one that answered would say EAI_NONAME for `.invalid`),
    // and the engine's DNS, which names the test host on its network, is not there.
    assert_eq!(s["dns"], json!("EAI_AGAIN"), "{s:?}");
    assert_eq!(s["dns_test_host"], json!("EAI_AGAIN"), "{s:?}");
    assert_eq!(s["interfaces"], json!(["lo"]), "only loopback: {s:?}");
    d.finish().await;
    net.remove();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_docker_socket_is_not_reachable_from_the_sandbox() {
    let mut d = Daemon::start().await;
    let s = probe(
        &d,
        "\
import os
paths = {p: os.path.exists(p) for p in ('/var/run/docker.sock', '/run/docker.sock')}
mounted = [line.split()[1] for line in open('/proc/self/mounts') if line.split()[1].endswith('.sock')]
import stat
def find_sockets():
    found = []
    for top in ('/run', '/var/run', '/tmp', '/app', '/opt'):
        for dirpath, _, filenames in os.walk(top):
            for name in filenames:
                try:
                    if stat.S_ISSOCK(os.lstat(os.path.join(dirpath, name)).st_mode):
                        found.append(os.path.join(dirpath, name))
                except OSError:
                    pass
    return found
sockets = find_sockets()
env = sorted(k for k in os.environ if 'DOCKER' in k)",
    )
    .await;
    assert_eq!(
        s["paths"],
        json!({"/var/run/docker.sock": false, "/run/docker.sock": false}),
        "{s:?}"
    );
    assert_eq!(s["mounted"], json!([]), "{s:?}");
    assert_eq!(
        s["sockets"],
        json!([]),
        "no Unix sockets are reachable: {s:?}"
    );
    assert_eq!(s["env"], json!([]), "{s:?}");
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_cpu_and_process_limits_are_enforced_by_the_kernel() {
    let mut d = Daemon::start().await;
    // cgroup v1 on this machine; fall back to v2 files where v1 ones are absent.
    let s = probe(
        &d,
        "\
import os
def read(*paths):
    for p in paths:
        if os.path.exists(p):
            return open(p).read().strip()
    return None
memory = read('/sys/fs/cgroup/memory/memory.limit_in_bytes', '/sys/fs/cgroup/memory.max')
memsw = read('/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes')
swap = read('/sys/fs/cgroup/memory.swap.max')
pids = read('/sys/fs/cgroup/pids/pids.max', '/sys/fs/cgroup/pids.max')
quota = read('/sys/fs/cgroup/cpu/cpu.cfs_quota_us', '/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us')
period = read('/sys/fs/cgroup/cpu/cpu.cfs_period_us', '/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us')
cpu_max = read('/sys/fs/cgroup/cpu.max')",
    )
    .await;
    assert_eq!(
        s["memory"],
        json!((256u64 * 1024 * 1024).to_string()),
        "{s:?}"
    );
    // No swap beyond the memory limit, in whichever cgroup version the engine uses: v1
    // caps memory plus swap at the memory limit, v2 caps swap at 0. A kernel that shows
    // neither cannot show the promise kept, and fails here.
    match (s["memsw"].as_str(), s["swap"].as_str()) {
        (Some(memsw), None) => assert_eq!(
            json!(memsw),
            s["memory"],
            "cgroup v1: memory plus swap is capped at the memory limit: {s:?}"
        ),
        (None, Some(swap)) => assert_eq!(swap, "0", "cgroup v2: no swap at all: {s:?}"),
        _ => panic!(
            "expected exactly one swap limit file (v1 memory.memsw.limit_in_bytes or v2 \
             memory.swap.max); without swap accounting no swap limit can be seen: {s:?}"
        ),
    }
    assert_eq!(s["pids"], json!("128"), "{s:?}");
    let cpus = if let (Some(q), Some(p)) = (s["quota"].as_str(), s["period"].as_str()) {
        q.parse::<f64>().unwrap() / p.parse::<f64>().unwrap()
    } else {
        let cpu_max = s["cpu_max"].as_str().expect("some cpu limit file");
        let (q, p) = cpu_max.split_once(' ').unwrap();
        q.parse::<f64>().unwrap() / p.parse::<f64>().unwrap()
    };
    assert!((cpus - 0.5).abs() < 1e-6, "cpu limit {cpus}: {s:?}");

    // Limits follow the configuration.
    let mut small = Daemon::start_with(&[
        ("PYTHON_DOCKER_MCP_MEMORY_LIMIT", "128m"),
        ("PYTHON_DOCKER_MCP_PIDS_LIMIT", "64"),
    ])
    .await;
    let s = probe(
        &small,
        "memory = open('/sys/fs/cgroup/memory/memory.limit_in_bytes').read().strip()\n\
         pids = open('/sys/fs/cgroup/pids/pids.max').read().strip()",
    )
    .await;
    assert_eq!(s["memory"], json!((128u64 * 1024 * 1024).to_string()));
    assert_eq!(s["pids"], json!("64"));
    small.finish().await;
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thread_and_process_bomb_hits_the_pids_limit_and_harms_nothing() {
    let mut d = Daemon::start().await;
    let id = d
        .new_session("import threading, subprocess, time\nx = 1")
        .await;
    let r = d
        .persistent_ok(
            "\
stop = threading.Event()
threads, thread_error = [], None
try:
    for i in range(500):
        t = threading.Thread(target=stop.wait)
        t.start()
        threads.append(t)
except Exception as e:
    thread_error = type(e).__name__
stop.set()
for t in threads:
    t.join()
procs, proc_error = [], None
try:
    for i in range(500):
        procs.append(subprocess.Popen(['sleep', '30']))
except Exception as e:
    proc_error = type(e).__name__
for p in procs:
    p.kill()
    p.wait()
(len(threads), thread_error, len(procs), proc_error)",
            &id,
        )
        .await;
    let v = value(&r).unwrap_or_default();
    // (threads started, error, processes started, error)
    let inner = v.trim_start_matches('(').trim_end_matches(')');
    let parts: Vec<&str> = inner.split(", ").collect();
    assert_eq!(parts.len(), 4, "{v}");
    let threads: u32 = parts[0].parse().unwrap();
    let procs: u32 = parts[2].parse().unwrap();
    assert!(threads < 128, "started {threads} threads: {v}");
    assert!(procs < 128, "started {procs} processes: {v}");
    assert_eq!(parts[1], "'RuntimeError'", "{v}");
    assert!(
        parts[3] == "'BlockingIOError'" || parts[3] == "'OSError'",
        "{v}"
    );

    // The session, new transient runs and the daemon are fine.
    let r = d.persistent_ok("x + 1", &id).await;
    assert_eq!(value(&r).as_deref(), Some("2"));
    let r = d.transient("'alive'").await;
    assert_eq!(value(&r).as_deref(), Some("'alive'"));
    d.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn exhausting_memory_fails_the_call_not_the_daemon() {
    let mut d = Daemon::start().await;
    let id = d.new_session("x = 1").await;
    let r = d
        .persistent("hog = b'x' * (700 * 1024 * 1024)\nlen(hog)", Some(&id))
        .await;
    // The promise (README, "Memory"): the helper's data limit turns an allocation over
    // the memory limit into a MemoryError in the cell, and the session keeps its
    // variables. A killed sandbox would be a broken promise, not another outcome.
    assert!(is_error(&r), "{}", describe(&r));
    assert_eq!(
        error_type(&r).as_deref(),
        Some("MemoryError"),
        "{}",
        describe(&r)
    );
    assert_eq!(field(&r, "sandbox_lost"), &json!(false), "{}", describe(&r));
    let r = d.persistent_ok("x", &id).await;
    assert_eq!(value(&r).as_deref(), Some("1"), "{}", describe(&r));
    let r = d.transient("'alive'").await;
    assert_eq!(value(&r).as_deref(), Some("'alive'"), "{}", describe(&r));
    d.finish().await;
}
