//! What to run: the command line (clap), the phases `--only` selects, and how many samples
//! each server and the raw Docker reference get in a full or a quick run.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// The end-to-end benchmark: python-docker-mcp next to the raw Docker engine and the
/// original Python package, in one run on one machine (see docs/BENCHMARKS.md).
#[derive(Parser, Debug)]
#[command(name = "e2e")]
pub struct Args {
    /// Fewer samples: our daemon once with its default configuration, shorter series.
    #[arg(long)]
    pub quick: bool,
    /// Our daemon with the pool on, off, both, or left at its default (full run: both;
    /// quick run: default).
    #[arg(long, value_enum, value_name = "on|off|both|default")]
    pub pool: Option<PoolChoice>,
    /// The original's `pool_enabled`.
    #[arg(long, value_enum, default_value = "on", value_name = "on|off")]
    pub original_pool: OnOff,
    /// Parts to leave out, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        value_name = "docker,ours,original"
    )]
    pub skip: Vec<Part>,
    /// Run only these phases, comma-separated (and the references they are compared
    /// with). Default: all of them.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "PHASES")]
    pub only: Vec<Phase>,
    /// Do not run scripts/bench-original.sh first.
    #[arg(long)]
    pub no_setup: bool,
    /// The original's venv (default: target/bench-original/venv).
    #[arg(long, env = "PDM_BENCH_ORIGINAL_VENV", value_name = "DIR")]
    pub original_venv: Option<PathBuf>,
    /// Passed by `cargo bench` to benches with `harness = false`; without it the binary
    /// only prints a note (see `main`).
    #[arg(long, hide = true)]
    pub bench: bool,
}

impl Args {
    pub fn skips(&self, part: Part) -> bool {
        self.skip.contains(&part)
    }

    /// The phases to run: every phase unless `--only` names some.
    pub fn phases(&self) -> Phases {
        Phases(if self.only.is_empty() {
            Phase::value_variants().to_vec()
        } else {
            self.only.clone()
        })
    }

    /// Our daemon's pool settings to run, in order.
    pub fn pools(&self) -> Vec<Pool> {
        match self.pool {
            Some(PoolChoice::On) => vec![Pool::On],
            Some(PoolChoice::Off) => vec![Pool::Off],
            Some(PoolChoice::Both) => vec![Pool::On, Pool::Off],
            Some(PoolChoice::Default) => vec![Pool::Default],
            None if self.quick => vec![Pool::Default],
            None => vec![Pool::On, Pool::Off],
        }
    }

    pub fn venv(&self) -> PathBuf {
        self.original_venv.clone().unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-original/venv")
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub enum PoolChoice {
    On,
    Off,
    Both,
    Default,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

/// The parts `--skip` leaves out.
#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub enum Part {
    /// The raw Docker references.
    Docker,
    /// Our daemon.
    Ours,
    /// The original Python package.
    Original,
}

/// One pool setting of our daemon.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Pool {
    /// Leave PYTHON_DOCKER_MCP_POOL_ENABLED unset (the default, `true`).
    Default,
    On,
    Off,
}

/// The phases, in the order they run. Each names the references measured with it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub enum Phase {
    /// Cold starts: spawn → `initialize` → first transient → pool full → shutdown, N times.
    Starts,
    /// Ours: a fresh daemon, `initialize`, at once one transient call; pool on and off and
    /// `docker run --rm` with the sandbox profile, interleaved, N times.
    AfterSpawn,
    /// Transient `print(1)` back to back | `docker run --rm` (plain and sandbox profile).
    Transient,
    /// Transient `print(1)` 1.5 s apart.
    Spaced,
    /// A new session's first call, and `cleanup-session` | `docker run -i` to first answer.
    Sessions,
    /// `execute-persistent` round trip | raw pipe, helper pipe, `docker exec`.
    Persistent,
    /// Ours, pool on: `i += 1` with the pool quiet, then while it refills after 30
    /// transient calls back to back | `docker run --rm` p50.
    Refill,
    /// Transient throughput, 8 in flight | `docker run --rm`, 8 in flight.
    Throughput,
    /// Transient `import numpy` | `docker run --rm` `import numpy`.
    Numpy,
    /// Ours, pool on: a start with `warm_imports` numpy.
    WarmNumpy,
    /// `x = 1` across 1, 2, 4, 8 sessions in parallel | helper pipes.
    Parallel,
    /// Ours: `install-package` into a session (cached, not cached) and the shared
    /// environment.
    Install,
}

/// The phases a run includes.
#[derive(Clone, Debug)]
pub struct Phases(Vec<Phase>);

impl Phases {
    pub fn has(&self, p: Phase) -> bool {
        self.0.contains(&p)
    }

    /// Whether a server start is needed for phases measured on one running instance.
    pub fn any_steady(&self) -> bool {
        self.0
            .iter()
            .any(|p| !matches!(p, Phase::Starts | Phase::AfterSpawn | Phase::WarmNumpy))
    }

    pub fn names(&self) -> String {
        self.0
            .iter()
            .filter_map(|p| p.to_possible_value().map(|v| v.get_name().to_string()))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// How many samples of each kind one server gets.
#[derive(Clone, Copy)]
pub struct Plan {
    /// Cold starts (spawn → initialize → first transient result → shutdown).
    pub starts: usize,
    /// Fresh daemons per pool setting in the after-spawn phase (ours only; 0: not measured).
    pub after_spawn: usize,
    pub transient: usize,
    /// Transient `print(1)` calls spaced `SPACING` apart, so the replacement for the
    /// previous call's sandbox is made before the next call (0: not measured).
    pub transient_spaced: usize,
    pub new_session: usize,
    pub cleanup: usize,
    pub persistent: usize,
    /// `i += 1` calls in each series of the refill phase (the one during the refill goes on
    /// while the refill does); 0: not measured.
    pub refill_calls: usize,
    /// Transient calls back to back that drain the pool in the refill phase.
    pub refill_burst: usize,
    /// Transient calls in the throughput run, on top of the warm pool's size (with a
    /// pool, the first `pool_size` calls drain it and are reported apart).
    pub throughput: usize,
    pub numpy: usize,
    /// Transient `import numpy` calls on a second daemon started with
    /// `PYTHON_DOCKER_MCP_WARM_IMPORTS=numpy` (ours, pool on only; 0: not measured).
    pub warm_numpy: usize,
    /// Sessions running concurrent streams of `x = 1`, one stream per session (empty:
    /// not measured); the largest is how many sessions are created for it.
    pub parallel_levels: &'static [usize],
    /// Sequential calls in each stream.
    pub parallel_calls: usize,
    /// How many times the levels are run, interleaved (the rate is the median round's).
    pub parallel_rounds: usize,
    /// `install-package six` (cached) into a new session, this many times (0: no install
    /// phase; ours only).
    pub install_cached: usize,
    /// Packages never installed by this bench before, one install each, into a session and
    /// into the shared environment.
    pub install_uncached_session: usize,
    pub install_uncached_shared: usize,
}

pub struct DockerPlan {
    pub run: usize,
    pub exec: usize,
    pub pipe_starts: usize,
    pub pipe_round_trips: usize,
    pub throughput: usize,
    pub numpy: usize,
    /// Helper pipes (sandbox profile) running concurrent streams of exec round trips.
    pub parallel_levels: &'static [usize],
    pub parallel_calls: usize,
    pub parallel_rounds: usize,
}

/// Parallel sessions (or raw pipes) in the throughput-across-sessions measurement. The
/// report has a row for each of `LEVELS`.
pub const LEVELS: &[usize] = &[1, 2, 4, 8];
const QUICK_LEVELS: &[usize] = &[1, 8];

/// The plans for the raw Docker references, our daemon and the original.
pub fn plans(quick: bool) -> (DockerPlan, Plan, Plan) {
    if quick {
        (
            DockerPlan {
                run: 6,
                exec: 6,
                pipe_starts: 2,
                pipe_round_trips: 200,
                throughput: 16,
                numpy: 3,
                parallel_levels: QUICK_LEVELS,
                parallel_calls: 50,
                parallel_rounds: 1,
            },
            Plan {
                starts: 1,
                after_spawn: 3,
                transient: 10,
                transient_spaced: 5,
                new_session: 3,
                cleanup: 3,
                persistent: 100,
                refill_calls: 50,
                refill_burst: 30,
                throughput: 16,
                numpy: 3,
                warm_numpy: 3,
                parallel_levels: QUICK_LEVELS,
                parallel_calls: 50,
                parallel_rounds: 1,
                install_cached: 3,
                install_uncached_session: 1,
                install_uncached_shared: 1,
            },
            Plan {
                starts: 1,
                transient: 6,
                new_session: 2,
                cleanup: 1,
                persistent: 10,
                throughput: 12,
                numpy: 2,
                ..Plan::none()
            },
        )
    } else {
        (
            DockerPlan {
                run: 20,
                exec: 20,
                pipe_starts: 5,
                pipe_round_trips: 500,
                throughput: 48,
                numpy: 5,
                parallel_levels: LEVELS,
                parallel_calls: 200,
                parallel_rounds: 3,
            },
            Plan {
                starts: 3,
                after_spawn: 5,
                transient: 30,
                transient_spaced: 10,
                new_session: 5,
                cleanup: 5,
                persistent: 200,
                refill_calls: 50,
                refill_burst: 30,
                throughput: 48,
                numpy: 5,
                warm_numpy: 5,
                parallel_levels: LEVELS,
                parallel_calls: 200,
                parallel_rounds: 3,
                install_cached: 5,
                install_uncached_session: 3,
                install_uncached_shared: 2,
            },
            Plan {
                starts: 1,
                transient: 20,
                new_session: 3,
                cleanup: 1,
                persistent: 40,
                throughput: 32,
                numpy: 5,
                ..Plan::none()
            },
        )
    }
}

impl Plan {
    /// Nothing measured: the base of the original's plan, which has none of the phases
    /// only our daemon has.
    fn none() -> Plan {
        Plan {
            starts: 0,
            after_spawn: 0,
            transient: 0,
            transient_spaced: 0,
            new_session: 0,
            cleanup: 0,
            persistent: 0,
            refill_calls: 0,
            refill_burst: 0,
            throughput: 0,
            numpy: 0,
            warm_numpy: 0,
            parallel_levels: &[],
            parallel_calls: 0,
            parallel_rounds: 0,
            install_cached: 0,
            install_uncached_session: 0,
            install_uncached_shared: 0,
        }
    }
}
