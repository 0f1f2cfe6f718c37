//! A local fake backend, compiled for unit tests only: each "container" is a host
//! subprocess over pipes, so the pool and engine logic can be tested in milliseconds,
//! deterministically, with no engine.
//!
//! A sandbox's command (`python3 -u -c HELPER`) runs as a host process in a process group
//! of its own, in a temporary directory of its own that stands for its working directory,
//! with the spec's environment. Paths the spec mounts (the working directory, scratch
//! mounts other than `/tmp`, volumes) are mapped to host directories in the environment
//! and the command line. Each container has an id, its spec's name and labels; `remove`
//! kills its process group and deletes its directory. Volumes are labelled temporary
//! directories; mounting one that does not exist makes it, unlabelled, as Docker does.
//! Installers are not run (they write to fixed container paths, `/target` and `/cache`):
//! a stand-in fails at once. Nothing of the security profile is emulated (user, limits, network, read-only root):
//! the fake tests logic, never isolation. The tests against the real engine stay the proof.
//!
//! What tests control and observe: an ordered [`Event`] log; a gate on creations (each
//! waits for a permit the test adds, [`Fake::gated`], [`Fake::open`]); injected refusals
//! ([`Fake::refuse_next`]) and helpers that exit at once ([`Fake::exit_at_once_next`]);
//! the live processes of every group it started ([`Fake::live_processes`]).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch, Semaphore};

use super::{Attached, EngineInfo, EngineKind, Output, RuntimeError, Swept};
use crate::sandbox::{labels, Owner, Role, SandboxSpec};

/// What happened, in order. `name` is the container's or volume's name, `role` its role
/// label (`unlabelled` for a volume a mount made).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub what: What,
    pub name: String,
    pub role: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum What {
    /// A creation was asked for (before the gate).
    Create,
    /// A creation was refused (injected).
    Refused,
    /// Its process started.
    Start,
    /// Its process exited by itself (not removed first).
    Exit,
    /// The daemon removed it (killing it if it ran).
    Remove,
    VolumeCreate,
    VolumeRemove,
    /// The daemon removed everything of one instance (shutdown).
    RemoveInstance,
}

/// The refusal an injected failure returns.
type Refusal = Arc<dyn Fn() -> RuntimeError + Send + Sync>;

/// A fake engine; cheap to clone (a handle). Dropping the last handle kills every process
/// it started and deletes its directories.
#[derive(Clone)]
pub struct Fake {
    inner: Arc<Inner>,
}

struct Inner {
    /// Every container's and volume's directory lives under it.
    root: PathBuf,
    /// When set, each creation waits for one permit (FIFO) before its process starts.
    gate: Option<Arc<Semaphore>>,
    /// A sync mutex: never held across an `.await`.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    next_id: u64,
    containers: HashMap<String, Container>,
    volumes: BTreeMap<String, Volume>,
    events: Vec<Event>,
    /// How many of the next creations are refused (`usize::MAX`: all), and with what.
    refusals: Option<(usize, Refusal)>,
    /// How many of the next creations run a helper that exits at once.
    exit_at_once: usize,
    /// Every process group started: what `live_processes` counts.
    groups: Vec<u32>,
}

struct Container {
    name: String,
    labels: BTreeMap<String, String>,
    dir: PathBuf,
    pgid: Option<u32>,
    /// Becomes `Some(code)` when its process has exited and been reaped.
    exited: watch::Receiver<Option<i64>>,
}

struct Volume {
    labels: BTreeMap<String, String>,
    dir: PathBuf,
}

fn role_of(labels: &BTreeMap<String, String>) -> String {
    labels
        .get(labels::ROLE)
        .cloned()
        .unwrap_or_else(|| "unlabelled".into())
}

/// Kill a process group (no `unsafe` in this crate: `kill(1)` sends the signal).
fn kill_group(pgid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The process group and state of `/proc/PID/stat`, if readable.
fn group_and_state(pid: &str) -> Option<(u32, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    Some((fields.next()?.parse().ok()?, state))
}

/// A container path (or a `:`-separated list of them) as the host paths that stand for
/// them; anything not under a mapped path stays as it is.
fn map_paths(mapped: &[(String, PathBuf)], value: &str) -> String {
    value
        .split(':')
        .map(|piece| {
            for (path, host) in mapped {
                if piece == path {
                    return host.display().to_string();
                }
                if let Some(rest) = piece.strip_prefix(&format!("{path}/")) {
                    return host.join(rest).display().to_string();
                }
            }
            piece.to_string()
        })
        .collect::<Vec<_>>()
        .join(":")
}

/// What the process runs: the spec's command with its paths mapped, or a stand-in.
fn command_of(
    spec: &SandboxSpec,
    role: &str,
    exit_at_once: bool,
    map: &dyn Fn(&str) -> String,
) -> Vec<String> {
    if role == Role::Installer.as_str() {
        // The installer writes to fixed container paths (`/target`, `/cache`) that
        // would be the host's own: a stand-in says so and fails instead.
        vec![
            "python3".into(),
            "-c".into(),
            "import sys; sys.stderr.write('fake: installers do not run on the fake backend\\n'); sys.exit(1)".into(),
        ]
    } else if exit_at_once {
        vec![
            "python3".into(),
            "-c".into(),
            "import sys; sys.stderr.write('fake: this helper exits at once\\n'); sys.exit(3)"
                .into(),
        ]
    } else {
        spec.command.iter().map(|a| map(a)).collect()
    }
}

/// Output: both pipes into one bounded stream, ended when both close.
fn pipe_output(
    child: &mut tokio::process::Child,
) -> std::pin::Pin<Box<dyn futures::Stream<Item = Output> + Send>> {
    let (tx, rx) = mpsc::channel::<Output>(16);
    if let Some(mut out) = child.stdout.take() {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n @ 1..) = out.read(&mut buf).await {
                let chunk = Bytes::copy_from_slice(&buf[..n]);
                if tx.send(Output::Stdout(chunk)).await.is_err() {
                    return;
                }
            }
        });
    }
    if let Some(mut err) = child.stderr.take() {
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n @ 1..) = err.read(&mut buf).await {
                let chunk = Bytes::copy_from_slice(&buf[..n]);
                if tx.send(Output::Stderr(chunk)).await.is_err() {
                    return;
                }
            }
        });
    }
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|o| (o, rx))
    }))
}

impl Default for Fake {
    fn default() -> Self {
        Fake::new()
    }
}

impl Fake {
    /// A fake whose creations complete as soon as their process starts.
    pub fn new() -> Fake {
        Fake::build(None)
    }

    /// A fake whose every creation waits for a permit the test gives with [`Fake::open`].
    pub fn gated() -> Fake {
        Fake::build(Some(Arc::new(Semaphore::new(0))))
    }

    fn build(gate: Option<Arc<Semaphore>>) -> Fake {
        let root = std::env::temp_dir().join(format!(
            "pdm-fake-{}",
            uuid::Uuid::new_v4()
                .simple()
                .to_string()
                .get(..12)
                .unwrap_or("x")
        ));
        std::fs::create_dir_all(&root).expect("create the fake's temporary directory");
        Fake {
            inner: Arc::new(Inner {
                root,
                gate,
                state: Mutex::new(State::default()),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().expect("fake lock")
    }

    fn log(st: &mut State, what: What, name: &str, role: String) {
        st.events.push(Event {
            what,
            name: name.to_string(),
            role,
        });
    }

    /// Let `n` more gated creations complete.
    pub fn open(&self, n: usize) {
        self.inner
            .gate
            .as_ref()
            .expect("Fake::open needs Fake::gated")
            .add_permits(n);
    }

    /// Refuse the next `n` creations (`usize::MAX`: every one until
    /// [`Fake::stop_refusing`]) with `error()`.
    pub fn refuse_next(&self, n: usize, error: impl Fn() -> RuntimeError + Send + Sync + 'static) {
        self.state().refusals = Some((n, Arc::new(error)));
    }

    /// Stop refusing creations.
    pub fn stop_refusing(&self) {
        self.state().refusals = None;
    }

    /// The next `n` creations start a helper that writes a line to stderr and exits at
    /// once, before it is ready (a broken image).
    pub fn exit_at_once_next(&self, n: usize) {
        self.state().exit_at_once += n;
    }

    /// Every event so far, in order.
    pub fn events(&self) -> Vec<Event> {
        self.state().events.clone()
    }

    /// Names of the containers or volumes with event `what` and role `role`, in order.
    pub fn names(&self, what: What, role: &str) -> Vec<String> {
        self.state()
            .events
            .iter()
            .filter(|e| e.what == what && e.role == role)
            .map(|e| e.name.clone())
            .collect()
    }

    /// Names of the containers that exist now (running, or exited and not removed).
    pub fn containers(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .state()
            .containers
            .values()
            .map(|c| c.name.clone())
            .collect();
        names.sort();
        names
    }

    /// Names of the volumes that exist now.
    pub fn volumes(&self) -> Vec<String> {
        self.state().volumes.keys().cloned().collect()
    }

    /// Processes (not zombies) in any process group this fake started: containers'
    /// helpers and whatever they forked.
    pub fn live_processes(&self) -> usize {
        let groups = self.state().groups.clone();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return 0;
        };
        dir.filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
            .filter_map(|pid| group_and_state(&pid))
            .filter(|(g, state)| groups.contains(g) && *state != 'Z')
            .count()
    }

    pub async fn engine(&self) -> Result<EngineInfo, RuntimeError> {
        Ok(EngineInfo {
            kind: EngineKind::Docker,
            version: "fake".into(),
        })
    }

    pub async fn ping(&self) -> Result<String, RuntimeError> {
        Ok("fake".into())
    }

    pub async fn image_present(&self, _image: &str) -> Result<bool, RuntimeError> {
        Ok(true)
    }

    pub async fn oom_killed(&self, _id: &str, _since: Instant, _within: Duration) -> bool {
        false
    }

    pub fn close(&self) {}

    pub async fn sweep_orphans(&self, _me: &Owner, _dry_run: bool) -> Result<Swept, RuntimeError> {
        Ok(Swept::default())
    }

    pub async fn start_attached(&self, spec: &SandboxSpec) -> Result<Attached, RuntimeError> {
        self.start(spec).await
    }

    /// Create and start: the refusal and the gate first, then the host directories that
    /// stand for the mounts, the process, its output and the watcher that reaps it.
    async fn start(&self, spec: &SandboxSpec) -> Result<Attached, RuntimeError> {
        let role = role_of(&spec.labels);
        self.refusal(spec, &role)?;
        if let Some(gate) = &self.inner.gate {
            gate.acquire()
                .await
                .expect("the gate is never closed")
                .forget();
        }
        let (id, dir, exit_at_once, mapped) = self.allocate(spec);
        for (_, host) in &mapped {
            let _ = std::fs::create_dir_all(host);
        }
        let map = |value: &str| map_paths(&mapped, value);
        let command = command_of(spec, &role, exit_at_once, &map);
        let mut cmd = tokio::process::Command::new(&command[0]);
        cmd.args(&command[1..])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .current_dir(dir.join("work"))
            .process_group(0)
            .stdin(if spec.interactive {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for kv in &spec.env {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            // The helper's own data limit counts the tmpfs mounts it expects: on a host,
            // `/tmp` is no tmpfs. The fake enforces no limits at all.
            if k == "PDM_DATA_LIMIT" {
                continue;
            }
            cmd.env(k, map(v));
        }
        let mut child = cmd.spawn().map_err(|e| {
            let _ = std::fs::remove_dir_all(&dir);
            RuntimeError::Api {
                engine: "Fake",
                op: "start a process",
                message: format!("{}: {e}", command[0]),
            }
        })?;
        let pgid = child.id();
        let (exit_tx, exited) = watch::channel(None);
        {
            let mut st = self.state();
            st.groups.extend(pgid);
            st.containers.insert(
                id.clone(),
                Container {
                    name: spec.name.clone(),
                    labels: spec.labels.clone(),
                    dir,
                    pgid,
                    exited,
                },
            );
            Fake::log(&mut st, What::Start, &spec.name, role_of(&spec.labels));
        }
        let output = pipe_output(&mut child);
        let input: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>> = match child.stdin.take() {
            Some(stdin) => Box::pin(stdin),
            None => Box::pin(tokio::io::sink()),
        };
        self.watch_exit(child, id.clone(), spec.remove_on_exit, exit_tx);
        Ok(Attached {
            id,
            name: spec.name.clone(),
            input,
            output,
        })
    }

    /// Log the creation; refuse it if a refusal was injected.
    fn refusal(&self, spec: &SandboxSpec, role: &str) -> Result<(), RuntimeError> {
        let mut st = self.state();
        Fake::log(&mut st, What::Create, &spec.name, role.to_string());
        if let Some((left, refusal)) = st.refusals.take() {
            if left > 1 {
                let left = if left == usize::MAX { left } else { left - 1 };
                st.refusals = Some((left, refusal.clone()));
            }
            Fake::log(&mut st, What::Refused, &spec.name, role.to_string());
            return Err(refusal());
        }
        Ok(())
    }

    /// A new id and directory, whether this one exits at once, and the container paths
    /// with the host directories that stand for them, longest first. A volume the spec
    /// mounts that does not exist is made, unlabelled, as Docker does for a name it does
    /// not know.
    fn allocate(&self, spec: &SandboxSpec) -> (String, PathBuf, bool, Vec<(String, PathBuf)>) {
        let mut st = self.state();
        st.next_id += 1;
        let id = format!("fake{:04}", st.next_id);
        let dir = self.inner.root.join(&id);
        let mut mapped: Vec<(String, PathBuf)> = vec![(spec.working_dir.clone(), dir.join("work"))];
        for (n, s) in spec.scratch.iter().enumerate() {
            if s.path != "/tmp" && s.path != spec.working_dir {
                mapped.push((s.path.clone(), dir.join(format!("scratch{n}"))));
            }
        }
        for v in &spec.volumes {
            if !st.volumes.contains_key(&v.volume) {
                let dir = self.inner.root.join(format!("volume-{}", v.volume));
                st.volumes.insert(
                    v.volume.clone(),
                    Volume {
                        labels: BTreeMap::new(),
                        dir,
                    },
                );
                Fake::log(&mut st, What::VolumeCreate, &v.volume, "unlabelled".into());
            }
            mapped.push((v.target.clone(), st.volumes[&v.volume].dir.clone()));
        }
        mapped.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
        let exit_at_once = st.exit_at_once > 0;
        st.exit_at_once = st.exit_at_once.saturating_sub(1);
        (id, dir, exit_at_once, mapped)
    }

    /// The watcher reaps the process. Like a container whose first process ended, the
    /// whole group goes with it; `remove_on_exit` removes the container too.
    fn watch_exit(
        &self,
        mut child: tokio::process::Child,
        id: String,
        remove_on_exit: bool,
        exit_tx: watch::Sender<Option<i64>>,
    ) {
        let fake = self.clone();
        let pgid = child.id();
        tokio::spawn(async move {
            let code = match child.wait().await {
                Ok(status) => status.code().map_or(-1, i64::from),
                Err(_) => -1,
            };
            if let Some(pgid) = pgid {
                kill_group(pgid);
            }
            {
                let mut st = fake.state();
                if let Some(c) = st.containers.get(&id) {
                    let (name, role) = (c.name.clone(), role_of(&c.labels));
                    Fake::log(&mut st, What::Exit, &name, role);
                    if remove_on_exit {
                        if let Some(c) = st.containers.remove(&id) {
                            let _ = std::fs::remove_dir_all(&c.dir);
                        }
                    }
                }
            }
            let _ = exit_tx.send(Some(code));
        });
    }

    /// Kill a container's process group, wait until its process is reaped, delete its
    /// directory; already gone is fine.
    pub async fn remove(&self, id: &str) {
        let removed = {
            let mut st = self.state();
            let removed = st.containers.remove(id);
            if let Some(c) = &removed {
                let (name, role) = (c.name.clone(), role_of(&c.labels));
                Fake::log(&mut st, What::Remove, &name, role);
            }
            removed
        };
        let Some(mut c) = removed else { return };
        if let Some(pgid) = c.pgid {
            kill_group(pgid);
        }
        let _ =
            tokio::time::timeout(Duration::from_secs(10), c.exited.wait_for(Option::is_some)).await;
        let _ = std::fs::remove_dir_all(&c.dir);
    }

    /// The exit code of a container whose output has ended (`-1` for one that is gone).
    pub async fn exit_code(&self, id: &str) -> Result<i64, RuntimeError> {
        let exited = self.state().containers.get(id).map(|c| c.exited.clone());
        let Some(mut exited) = exited else {
            return Ok(-1);
        };
        let code = match exited.wait_for(Option::is_some).await {
            Ok(code) => code.unwrap_or(-1),
            Err(_) => -1,
        };
        Ok(code)
    }

    /// Create a labelled volume (idempotent: an existing one keeps its labels).
    pub async fn create_volume(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), RuntimeError> {
        let mut st = self.state();
        if st.volumes.contains_key(name) {
            return Ok(());
        }
        let dir = self.inner.root.join(format!("volume-{name}"));
        std::fs::create_dir_all(&dir).map_err(|e| RuntimeError::Api {
            engine: "Fake",
            op: "create a volume",
            message: e.to_string(),
        })?;
        st.volumes.insert(
            name.to_string(),
            Volume {
                labels: labels.clone(),
                dir,
            },
        );
        Fake::log(&mut st, What::VolumeCreate, name, role_of(labels));
        Ok(())
    }

    pub async fn remove_volume(&self, name: &str) {
        let mut st = self.state();
        if let Some(v) = st.volumes.remove(name) {
            let _ = std::fs::remove_dir_all(&v.dir);
            Fake::log(&mut st, What::VolumeRemove, name, role_of(&v.labels));
        }
    }

    /// Remove every container, then every volume, labelled with `instance`.
    pub async fn remove_instance(&self, instance: &str) -> Result<usize, RuntimeError> {
        let (ids, volumes) = {
            let mut st = self.state();
            Fake::log(&mut st, What::RemoveInstance, instance, String::new());
            let mine = |l: &BTreeMap<String, String>| {
                l.get(labels::INSTANCE).map(String::as_str) == Some(instance)
            };
            let ids: Vec<String> = st
                .containers
                .iter()
                .filter(|(_, c)| mine(&c.labels))
                .map(|(id, _)| id.clone())
                .collect();
            let volumes: Vec<String> = st
                .volumes
                .iter()
                .filter(|(_, v)| mine(&v.labels))
                .map(|(n, _)| n.clone())
                .collect();
            (ids, volumes)
        };
        futures::future::join_all(ids.iter().map(|id| self.remove(id))).await;
        for v in &volumes {
            self.remove_volume(v).await;
        }
        Ok(ids.len())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let st = self.state.get_mut().expect("fake lock");
        for c in st.containers.values() {
            if let Some(pgid) = c.pgid {
                kill_group(pgid);
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
