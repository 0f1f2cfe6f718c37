//! The report: the machine and its load, the main table (each server next to its raw
//! Docker reference), the tables of issue 11's phases (after spawn, during refill,
//! installs) with the targets, and every series in detail.

use std::time::Duration;

use crate::after_spawn::AfterSpawn;
use crate::install::Installs;
use crate::phases::ServerResults;
use crate::plan::Phases;
use crate::references::{docker, docker_lines, DockerResults};
use crate::refill::Refill;
use crate::samples::{first_line, fmt_ms, parallel_cell, ratio, Series};
use crate::IMAGE;

/// Everything the report is made from.
pub struct Run<'a> {
    pub quick: bool,
    pub phases: &'a Phases,
    pub machine: &'a [String],
    pub load_before: &'a str,
    pub load_after: &'a str,
    pub elapsed: Duration,
    pub docker: Option<&'a DockerResults>,
    pub after_spawn: Option<&'a AfterSpawn>,
    pub servers: &'a [(String, Result<ServerResults, String>)],
}

pub async fn machine() -> Vec<String> {
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_string())
            })
        })
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let info = docker(&[
        "info",
        "--format",
        "{{.ServerVersion}} cgroup v{{.CgroupVersion}} {{.Driver}}",
    ])
    .await
    .unwrap_or_default();
    let image = docker(&["image", "inspect", "--format", "{{.Id}}", IMAGE])
        .await
        .unwrap_or_default();
    vec![
        format!("{os}, kernel {}, {cpus} CPUs", kernel.trim()),
        format!("Docker engine {}", info.trim()),
        format!(
            "image {IMAGE} {}",
            image
                .trim()
                .trim_start_matches("sha256:")
                .get(..12)
                .unwrap_or("?")
        ),
    ]
}

pub async fn load() -> String {
    let avg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let running = docker_lines(&["ps", "-q"]).await.len();
    format!(
        "load average {}, {running} container(s) running",
        avg.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    )
}

pub fn report(run: &Run<'_>) -> String {
    let mut out = header(run);
    out.push_str(&main_table(run.docker, run.servers));
    out.push_str(&pool_targets_tables(
        run.docker,
        run.after_spawn,
        run.servers,
    ));
    let mut series = docker_series(run.docker);
    series.extend(server_series(run.servers));
    series.extend(after_spawn_series(run.after_spawn));
    out.push_str(&series_details(series));
    out
}

/// The title, the machine, its load before and after, the phases run.
fn header(run: &Run<'_>) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "### End-to-end benchmark ({} run, {:.0} s)\n\n",
        if run.quick { "quick" } else { "full" },
        run.elapsed.as_secs_f64()
    ));
    for m in run.machine {
        out.push_str(&format!("- {m}\n"));
    }
    out.push_str(&format!(
        "- before: {}\n- after: {}\n- phases: {}\n\n",
        run.load_before,
        run.load_after,
        run.phases.names()
    ));
    out.push_str("Latencies are p50 / p90 over N samples (nearest rank); one value means N=1.\n\n");
    out
}

type DockerCell = fn(&DockerResults) -> String;
type ServerCell = fn(&ServerResults) -> String;

/// The main table's rows: the label, the raw Docker reference's cell (none: a dash), and
/// each server's cell.
fn main_rows() -> Vec<(&'static str, Option<DockerCell>, ServerCell)> {
    vec![
        ("spawn → `initialize` answered", None, |r| r.init.cell()),
        ("spawn → first `execute-transient` result", None, |r| {
            r.first_transient.cell()
        }),
        ("spawn → warm pool full (its `pool_size` containers running)", None, |r| {
            r.warm.cell()
        }),
        (
            "… the same with `warm_imports` numpy (a separate start)",
            None,
            |r| r.warm_numpy_fill.cell(),
        ),
        (
            "`execute-transient` `print(1)` | `docker run --rm` `print(1)`",
            Some(|d| d.run.cell()),
            |r| r.transient.cell(),
        ),
        (
            "… `execute-transient` `print(1)`, calls 1.5 s apart (the previous call's replacement is ready)",
            None,
            |r| r.transient_spaced.cell(),
        ),
        (
            "… `docker run --rm` with the sandbox profile (no network, limits, `--init`, read-only)",
            Some(|d| d.run_profile.cell()),
            |_| "—".to_string(),
        ),
        (
            "`execute-persistent` `x = 1` round trip | raw `docker run -i` pipe, JSON-line round trip",
            Some(|d| d.pipe_rtt.cell()),
            |r| r.persistent.cell(),
        ),
        (
            "… the same pipe running the daemon's REPL helper (`src/repl/helper.py`), exec `x = 1`",
            Some(|d| d.helper_rtt.cell()),
            |_| "—".to_string(),
        ),
        (
            "… `docker exec` into a running container (`true`)",
            Some(|d| d.exec.cell()),
            |_| "—".to_string(),
        ),
        (
            "`execute-persistent` first call of a new session | `docker run -i` → first echo",
            Some(|d| d.pipe_first.cell()),
            |r| r.new_session.cell(),
        ),
        (
            "… `docker run -i` → REPL helper `ready`",
            Some(|d| d.helper_ready.cell()),
            |_| "—".to_string(),
        ),
        ("`cleanup-session`", None, |r| r.cleanup.cell()),
        (
            "transient throughput, 8 in flight | `docker run --rm`, 8 in flight",
            Some(|d| d.throughput.cell()),
            |r| r.throughput.cell(),
        ),
        (
            "… per-call latency under that load",
            Some(|d| d.throughput.calls.cell()),
            |r| r.throughput.calls.cell(),
        ),
        (
            "`execute-transient` `import numpy` | `docker run --rm` `import numpy`",
            Some(|d| d.numpy.cell()),
            |r| r.numpy.cell(),
        ),
        (
            "… with `warm_imports` numpy (`PYTHON_DOCKER_MCP_WARM_IMPORTS=numpy`, pool full)",
            None,
            |r| r.warm_numpy.cell(),
        ),
        (
            "`execute-persistent` `x = 1`, 1 session, sequential calls: rate; per call p50 / p90 \
             | REPL helper pipe (sandbox profile), 1 pipe",
            Some(|d| parallel_cell(&d.parallel, 1)),
            |r| parallel_cell(&r.parallel, 1),
        ),
        (
            "… 2 sessions in parallel, one stream of sequential calls each | 2 pipes",
            Some(|d| parallel_cell(&d.parallel, 2)),
            |r| parallel_cell(&r.parallel, 2),
        ),
        (
            "… 4 sessions in parallel | 4 pipes",
            Some(|d| parallel_cell(&d.parallel, 4)),
            |r| parallel_cell(&r.parallel, 4),
        ),
        (
            "… 8 sessions in parallel | 8 pipes",
            Some(|d| parallel_cell(&d.parallel, 8)),
            |r| parallel_cell(&r.parallel, 8),
        ),
        ("shutdown: client closes stdin → server exited", None, |r| {
            r.shutdown.cell()
        }),
        ("containers it holds while idle, before shutdown", None, |r| {
            r.held_idle.map(|n| n.to_string()).unwrap_or_else(|| "—".into())
        }),
        ("containers left behind after exit, per start", None, |r| {
            format!("{:?}", r.leftover_containers)
        }),
    ]
}

/// Each server next to its raw Docker reference, one row per metric, then the servers'
/// notes.
fn main_table(
    d: Option<&DockerResults>,
    servers: &[(String, Result<ServerResults, String>)],
) -> String {
    let dash = || "—".to_string();
    let rows: Vec<(&str, String, ServerCell)> = main_rows()
        .into_iter()
        .map(|(name, docker_cell, f)| {
            let docker_value = docker_cell
                .and_then(|cell| d.map(cell))
                .unwrap_or_else(dash);
            (name, docker_value, f)
        })
        .collect();
    let mut out = String::new();
    out.push_str("| Metric (MCP server \\| raw Docker reference) | raw Docker |");
    for (label, _) in servers {
        out.push_str(&format!(" {label} |"));
    }
    out.push_str("\n|---|---|");
    for _ in servers {
        out.push_str("---|");
    }
    out.push('\n');
    for (name, docker_value, f) in &rows {
        let cells: Vec<String> = servers
            .iter()
            .map(|(_, r)| match r {
                Ok(r) => f(r),
                Err(e) => format!("not run: {}", first_line(e, 120)),
            })
            .collect();
        // A row of phases this run left out (`--only`) says nothing.
        let empty = |c: &String| c == "—" || c == "[]";
        if empty(docker_value) && cells.iter().all(empty) {
            continue;
        }
        out.push_str(&format!(
            "| {} | {docker_value} |",
            name.replace('|', "\\|")
        ));
        for cell in cells {
            out.push_str(&format!(" {cell} |"));
        }
        out.push('\n');
    }
    for (label, r) in servers {
        if let Ok(ServerResults { note: Some(n), .. }) = r {
            out.push_str(&format!("\n{label}: {n}\n"));
        }
    }

    out
}

/// The raw Docker references' series.
fn docker_series(d: Option<&DockerResults>) -> Vec<(String, &Series)> {
    let mut series: Vec<(String, &Series)> = Vec::new();
    if let Some(d) = d {
        series.extend([
            ("docker run print(1)".to_string(), &d.run),
            (
                "docker run print(1), sandbox profile".into(),
                &d.run_profile,
            ),
            ("docker run -i → first echo".into(), &d.pipe_first),
            ("raw pipe round trip".into(), &d.pipe_rtt),
            ("docker run -i → REPL helper ready".into(), &d.helper_ready),
            ("raw pipe to REPL helper, exec x = 1".into(), &d.helper_rtt),
            ("docker exec true".into(), &d.exec),
            ("docker run, 8 in flight".into(), &d.throughput.calls),
            ("docker run import numpy".into(), &d.numpy),
        ]);
        for p in &d.parallel {
            series.push((
                format!("helper pipes, {} in parallel, exec x = 1", p.streams),
                &p.calls,
            ));
        }
    }
    series
}

/// Every server's series.
fn server_series(servers: &[(String, Result<ServerResults, String>)]) -> Vec<(String, &Series)> {
    let mut series: Vec<(String, &Series)> = Vec::new();
    for (label, r) in servers {
        if let Ok(r) = r {
            for (name, s) in [
                ("initialize", &r.init),
                ("first transient", &r.first_transient),
                ("pool full", &r.warm),
                ("transient print(1)", &r.transient),
                ("transient print(1), 1.5 s apart", &r.transient_spaced),
                ("new session", &r.new_session),
                ("persistent x = 1", &r.persistent),
                ("cleanup-session", &r.cleanup),
                ("transient, 8 in flight", &r.throughput.calls),
                ("transient import numpy", &r.numpy),
                ("shutdown", &r.shutdown),
            ] {
                series.push((format!("{label}: {name}"), s));
            }
            if r.warm_numpy_fill.n() + r.warm_numpy.n() + r.warm_numpy.failures.len() > 0 {
                series.push((
                    format!("{label}: pool full, warm_imports numpy"),
                    &r.warm_numpy_fill,
                ));
                series.push((
                    format!("{label}: transient import numpy, warm_imports numpy"),
                    &r.warm_numpy,
                ));
            }
            if let Some(f) = &r.refill {
                for (name, s) in [
                    ("i += 1, pool quiet", &f.quiet),
                    (
                        "transient print(1) back to back (drains the pool)",
                        &f.burst,
                    ),
                    ("i += 1 while the pool refills", &f.during),
                ] {
                    series.push((format!("{label}: {name}"), s));
                }
            }
            if let Some(i) = &r.installs {
                for (name, s) in [
                    (
                        "install-package six (cached) into a session",
                        &i.cached_session,
                    ),
                    (
                        "install-package not cached into a session",
                        &i.uncached_session,
                    ),
                    (
                        "install-package not cached, shared environment",
                        &i.uncached_shared,
                    ),
                    (
                        "install-package cached, shared environment",
                        &i.cached_shared,
                    ),
                ] {
                    series.push((format!("{label}: {name}"), s));
                }
            }
            for p in &r.parallel {
                series.push((
                    format!(
                        "{label}: persistent x = 1, {} session(s) in parallel",
                        p.streams
                    ),
                    &p.calls,
                ));
            }
        }
    }
    series
}

/// The after-spawn phase's series.
fn after_spawn_series(after_spawn: Option<&AfterSpawn>) -> Vec<(String, &Series)> {
    let mut series: Vec<(String, &Series)> = Vec::new();
    if let Some(a) = after_spawn {
        for (name, s) in [
            (
                "after spawn, default pool: spawn → first result",
                &a.on_first,
            ),
            (
                "after spawn, default pool: initialized → first result",
                &a.on_from_init,
            ),
            ("after spawn, pool off: spawn → first result", &a.off_first),
            (
                "after spawn, pool off: initialized → first result",
                &a.off_from_init,
            ),
            (
                "after spawn: docker run --rm, sandbox profile",
                &a.docker_profile,
            ),
        ] {
            series.push((name.to_string(), s));
        }
    }
    series
}

/// Every series in detail (min, p50, p90, max, mean, N, failures), folded away, then the
/// distinct failure messages.
fn series_details(series: Vec<(String, &Series)>) -> String {
    let dash = || "—".to_string();
    let mut out = String::new();
    out.push_str(
        "\n<details><summary>All series (ms): min, p50, p90, max, mean, N, failures</summary>\n\n",
    );
    out.push_str("| Series | min | p50 | p90 | max | mean | N | failed |\n|---|---|---|---|---|---|---|---|\n");
    let mut failures: Vec<(String, usize, String)> = Vec::new();
    for (name, s) in series {
        if s.n() == 0 && s.failures.is_empty() {
            continue;
        }
        let mut distinct: Vec<(usize, &String)> = Vec::new();
        for f in &s.failures {
            match distinct.iter_mut().find(|(_, m)| *m == f) {
                Some((n, _)) => *n += 1,
                None => distinct.push((1, f)),
            }
        }
        for (n, m) in distinct {
            failures.push((name.clone(), n, m.clone()));
        }
        let v = s.sorted();
        let cell = |x: Option<f64>| x.map(fmt_ms).unwrap_or_else(dash);
        let mean = if v.is_empty() {
            None
        } else {
            Some(v.iter().sum::<f64>() / v.len() as f64)
        };
        out.push_str(&format!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} |\n",
            cell(v.first().copied()),
            cell(s.pct(50.0)),
            cell(s.pct(90.0)),
            cell(v.last().copied()),
            cell(mean),
            s.n(),
            s.failures.len()
        ));
    }
    out.push_str("\n</details>\n");
    if !failures.is_empty() {
        out.push_str("\nFailures (distinct messages):\n\n");
        for (name, n, msg) in failures {
            out.push_str(&format!(
                "- {name} ({n}×): `{}`\n",
                first_line(&msg, 400).replace('`', "'")
            ));
        }
    }
    out
}

/// The p50 and p90 of a series, for the targets tables.
fn p50(s: &Series) -> Option<f64> {
    s.pct(50.0)
}

fn p90(s: &Series) -> Option<f64> {
    s.pct(90.0)
}

/// `met` / `missed` for `value <= limit`, or a dash.
fn verdict(value: Option<f64>, limit: Option<f64>) -> &'static str {
    match (value, limit) {
        (Some(v), Some(l)) if v <= l => "met",
        (Some(_), Some(_)) => "**missed**",
        _ => "—",
    }
}

fn opt_ms(v: Option<f64>) -> String {
    v.map(fmt_ms).unwrap_or_else(|| "—".into())
}

/// The figures a target row is measured against: raw Docker references of the same run.
struct References {
    docker_run_p50: Option<f64>,
    pipe_p50: Option<f64>,
    helper_pipe_p50: Option<f64>,
    docker_tput: Option<f64>,
}

/// One row of the targets table: target, measured, reference, ratio, verdict.
type TargetRow = [String; 5];

/// The pool's targets (first call after spawn, calls while it refills, back-to-back
/// transient runs), each figure next to the reference measured in
/// the same run.
fn pool_targets_tables(
    d: Option<&DockerResults>,
    after_spawn: Option<&AfterSpawn>,
    servers: &[(String, Result<ServerResults, String>)],
) -> String {
    let mut out = String::new();
    let ours = || {
        servers
            .iter()
            .filter(|(label, _)| label.contains("(Rust)"))
            .filter_map(|(label, r)| r.as_ref().ok().map(|r| (label, r)))
    };
    let refs = References {
        docker_run_p50: d.and_then(|d| p50(&d.run)),
        pipe_p50: d.and_then(|d| p50(&d.pipe_rtt)),
        helper_pipe_p50: d.and_then(|d| p50(&d.helper_rtt)),
        docker_tput: d.and_then(|d| (d.throughput.calls.n() > 0).then(|| d.throughput.overall())),
    };
    let mut targets: Vec<TargetRow> = Vec::new();
    if let Some(a) = after_spawn {
        out.push_str(&after_spawn_section(a, &mut targets));
    }
    for (label, r) in ours() {
        if let Some(f) = &r.refill {
            out.push_str(&refill_section(label, f, &refs, &mut targets));
        }
        server_targets(label, r, &refs, &mut targets);
        if let Some(i) = &r.installs {
            out.push_str(&installs_section(label, i, &mut targets));
        }
    }
    out.push_str(&targets_table(targets));
    out
}

/// The first result after spawn, pool on and off, next to `docker run --rm`.
fn after_spawn_section(a: &AfterSpawn, targets: &mut Vec<TargetRow>) -> String {
    let mut out = String::new();
    out.push_str(
        "\n#### First result after spawn, as an agent calls (`--only after-spawn`)\n\n\
         A fresh daemon, `initialize`, then at once one `execute-transient` `print(1)`; \
         the three interleaved round by round.\n\n\
         | | spawn → first result | `initialize` answered → first result |\n|---|---|---|\n",
    );
    out.push_str(&format!(
        "| ours, default pool (warming from spawn) | {} | {} |\n",
        a.on_first.cell(),
        a.on_from_init.cell()
    ));
    out.push_str(&format!(
        "| ours, `pool_enabled: false` (cold start on demand) | {} | {} |\n",
        a.off_first.cell(),
        a.off_from_init.cell()
    ));
    out.push_str(&format!(
        "| `docker run --rm` with the sandbox profile, `print(1)` | {} | — |\n",
        a.docker_profile.cell()
    ));
    out.push_str(&format!(
        "\nRatio first result, default pool / pool off: p50 {}, p90 {}. Left behind \
         after each exit: {:?}.\n",
        ratio(p50(&a.on_first), p50(&a.off_first)),
        ratio(p90(&a.on_first), p90(&a.off_first)),
        a.leftovers
    ));
    for n in &a.notes {
        out.push_str(&format!("\n{n}\n"));
    }
    targets.push([
        "first result after spawn ≤ pool-off cold start (p50)".into(),
        opt_ms(p50(&a.on_first)),
        format!("pool off {}", opt_ms(p50(&a.off_first))),
        ratio(p50(&a.on_first), p50(&a.off_first)),
        verdict(p50(&a.on_first), p50(&a.off_first)).into(),
    ]);
    out
}

/// Calls while the pool refills after a burst of transient runs.
fn refill_section(
    label: &str,
    f: &Refill,
    refs: &References,
    targets: &mut Vec<TargetRow>,
) -> String {
    let docker_run_p50 = refs.docker_run_p50;
    let mut out = String::new();
    out.push_str(&format!(
        "\n#### While the pool refills: {label} (`--only refill`)\n\n\
         One session's `i += 1`, with the pool full and quiet; then transient \
         `print(1)` back to back from the full pool; then `i += 1` again for as \
         long as the refill runs.\n\n\
         | | p50 / p90 (N) | reference, same run | ratio |\n|---|---|---|---|\n\
         | `i += 1`, pool quiet | {} | — | — |\n\
         | transient `print(1)`, {} back to back | {} | `docker run --rm` p50 {} | \
         p90 / that: {} |\n\
         | `i += 1` while the pool refills | {} | pool quiet p90 {} | p90 / quiet p90: {} |\n",
        f.quiet.cell(),
        f.burst.n() + f.burst.failures.len(),
        f.burst.cell(),
        opt_ms(docker_run_p50),
        ratio(p90(&f.burst), docker_run_p50),
        f.during.cell(),
        opt_ms(p90(&f.quiet)),
        ratio(p90(&f.during), p90(&f.quiet)),
    ));
    let trace: Vec<String> = f
        .trace
        .iter()
        .map(|(at, running, created)| format!("{:.1} s: {running}+{created}", at / 1000.0))
        .collect();
    out.push_str(&format!(
        "\nContainers running (pool and sessions): {} before the burst, {} right \
         after, {} at the fewest; at most {} created but not started; {} removed since \
         the burst began; used sandboxes removed and pool full again {} after the burst \
         ({} more calls after that, not counted). Sampled (running+created): {}\n",
        f.running_before,
        f.running_after_burst,
        f.running_min,
        f.created_max,
        f.destroyed,
        f.refill_ms
            .map(|ms| format!("{:.1} s", ms / 1000.0))
            .unwrap_or_else(|| "not within 60 s".into()),
        f.after,
        trace.join(", ")
    ));
    targets.push([
        format!("{label}: `i += 1` p90 while refilling ≤ 2× quiet p90"),
        opt_ms(p90(&f.during)),
        format!("quiet {}", opt_ms(p90(&f.quiet))),
        ratio(p90(&f.during), p90(&f.quiet)),
        verdict(p90(&f.during), p90(&f.quiet).map(|q| 2.0 * q)).into(),
    ]);
    targets.push([
        format!("{label}: transient back to back p90 ≤ 1/10 `docker run --rm` p50"),
        opt_ms(p90(&f.burst)),
        format!("`docker run --rm` {}", opt_ms(docker_run_p50)),
        ratio(p90(&f.burst), docker_run_p50),
        verdict(p90(&f.burst), docker_run_p50.map(|x| x / 10.0)).into(),
    ]);
    out
}

/// The steady-state targets of one server: transient, new session, persistent, throughput.
fn server_targets(label: &str, r: &ServerResults, refs: &References, targets: &mut Vec<TargetRow>) {
    let References {
        pipe_p50,
        helper_pipe_p50,
        docker_tput,
        ..
    } = *refs;
    if r.transient.n() > 0 {
        // Steady state: the pool full and quiet, each call's replacement ready (calls
        // 1.5 s apart). Back to back is the refill target above.
        let steady = if r.transient_spaced.n() > 0 {
            &r.transient_spaced
        } else {
            &r.transient
        };
        targets.push([
            format!("{label}: transient p50 ≤ 5 ms (steady state: pool full, calls 1.5 s apart)"),
            opt_ms(p50(steady)),
            format!("5 ms; back to back {}", opt_ms(p50(&r.transient))),
            "—".into(),
            verdict(p50(steady), Some(5.0)).into(),
        ]);
    }
    if r.new_session.n() > 0 {
        targets.push([
            format!("{label}: new session's first call p50 ≤ 5 ms"),
            opt_ms(p50(&r.new_session)),
            "5 ms".into(),
            "—".into(),
            verdict(p50(&r.new_session), Some(5.0)).into(),
        ]);
    }
    if r.persistent.n() > 0 {
        // Like for like: the same helper running `x = 1` over a raw attached pipe. The
        // echo pipe (no Python at all) is shown beside it.
        targets.push([
            format!("{label}: persistent p50 ≤ 3× raw attached-pipe round trip to the helper"),
            opt_ms(p50(&r.persistent)),
            format!(
                "helper pipe {}; echo pipe {} (×{})",
                opt_ms(helper_pipe_p50),
                opt_ms(pipe_p50),
                ratio(p50(&r.persistent), pipe_p50).trim_start_matches('×')
            ),
            ratio(p50(&r.persistent), helper_pipe_p50),
            verdict(p50(&r.persistent), helper_pipe_p50.map(|p| 3.0 * p)).into(),
        ]);
    }
    if r.throughput.calls.n() > 0 {
        let ours = r.throughput.sustained().or(Some(r.throughput.overall()));
        targets.push([
            format!("{label}: sustained transient throughput ≥ `docker run --rm` churn"),
            ours.map(|x| format!("{x:.2}/s")).unwrap_or_default(),
            docker_tput
                .map(|x| format!("`docker run --rm` {x:.2}/s"))
                .unwrap_or_else(|| "—".into()),
            ratio(ours, docker_tput),
            // Higher is better: met when docker's rate is at most ours.
            verdict(docker_tput, ours).into(),
        ]);
    }
}

/// Installs, cached and not, into a session and the shared environment.
fn installs_section(label: &str, i: &Installs, targets: &mut Vec<TargetRow>) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "\n#### Installs: {label} (`--only install`)\n\n\
         | `install-package` | p50 / p90 (N) |\n|---|---|\n\
         | `six`, cached, into a new session | {} |\n\
         | not cached yet (one install each), into a new session | {} |\n\
         | not cached yet, into the shared environment | {} |\n\
         | cached, into the shared environment | {} |\n",
        i.cached_session.cell(),
        i.uncached_session.cell(),
        i.uncached_shared.cell(),
        i.cached_shared.cell()
    ));
    for n in &i.notes {
        out.push_str(&format!("\n{n}\n"));
    }
    for (what, s, limit) in [
        (
            "a small cached package into a session p50 ≤ 1 s",
            &i.cached_session,
            Some(1000.0),
        ),
        (
            "cached, the shared environment p50 ≤ 1 s",
            &i.cached_shared,
            Some(1000.0),
        ),
        (
            "not cached into a session ≤ 3 s plus its download (p50)",
            &i.uncached_session,
            None,
        ),
        (
            "not cached, the shared environment ≤ 3 s plus its download (p50)",
            &i.uncached_shared,
            None,
        ),
    ] {
        targets.push([
            format!("{label}: {what}"),
            opt_ms(p50(s)),
            limit.map(fmt_ms).unwrap_or_else(|| "3 s + download".into()),
            "—".into(),
            match limit {
                Some(_) => verdict(p50(s), limit).into(),
                None => "see the download".into(),
            },
        ]);
    }
    out
}

/// The targets table (empty when no target was measured).
fn targets_table(targets: Vec<TargetRow>) -> String {
    let mut out = String::new();
    if !targets.is_empty() {
        out.push_str(
            "\n#### Against issue 11's targets (same run)\n\n\
             | target | measured | reference | ratio | verdict |\n|---|---|---|---|---|\n",
        );
        for [a, b, c, e, f] in targets {
            out.push_str(&format!("| {a} | {b} | {c} | {e} | {f} |\n"));
        }
    }
    out
}
