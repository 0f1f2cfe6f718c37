//! Samples: a series of timings with its failures, a rate under load, streams across
//! sessions; the measuring loops they come from (`timed`, `throughput`); and how a cell
//! of the report shows them.

use std::time::Instant;

use futures::StreamExt;

use crate::IN_FLIGHT;

#[derive(Default, Clone)]
pub struct Series {
    pub ms: Vec<f64>,
    pub failures: Vec<String>,
}

impl Series {
    pub fn push(&mut self, started: Instant) {
        self.ms.push(ms_since(started));
    }

    pub fn fail(&mut self, why: impl std::fmt::Display) {
        let why = why.to_string();
        progress!("    failure: {}", first_line(&why, 200));
        self.failures.push(why);
    }

    pub fn sorted(&self) -> Vec<f64> {
        let mut v = self.ms.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        v
    }

    /// Nearest-rank percentile of the successful samples.
    pub fn pct(&self, p: f64) -> Option<f64> {
        let v = self.sorted();
        if v.is_empty() {
            return None;
        }
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        Some(v[rank.clamp(1, v.len()) - 1])
    }

    pub fn n(&self) -> usize {
        self.ms.len()
    }

    pub fn fails_note(&self) -> String {
        if self.failures.is_empty() {
            String::new()
        } else {
            format!(", **{} failed**", self.failures.len())
        }
    }

    /// `p50 / p90 (N=n)`, or one value when there is one sample.
    pub fn cell(&self) -> String {
        match (self.pct(50.0), self.pct(90.0)) {
            (Some(p50), Some(p90)) if self.n() > 1 => {
                format!(
                    "{} / {} (N={}{})",
                    fmt_ms(p50),
                    fmt_ms(p90),
                    self.n(),
                    self.fails_note()
                )
            }
            (Some(p50), _) => format!("{} (N=1{})", fmt_ms(p50), self.fails_note()),
            _ if !self.failures.is_empty() => {
                format!("**all {} failed** (see Failures)", self.failures.len())
            }
            _ => "—".into(),
        }
    }
}

/// Completed calls over wall-clock time, with the per-call latency under that load.
#[derive(Default, Clone)]
pub struct Rate {
    pub wall_ms: f64,
    /// Per-call latency under the load.
    pub calls: Series,
    /// When each successful call completed, in ms since the first was sent, in order.
    pub done_at: Vec<f64>,
    /// The first `burst` completions are served by a warm pool; the rest is sustained.
    pub burst: usize,
}

impl Rate {
    pub fn overall(&self) -> f64 {
        self.calls.n() as f64 / (self.wall_ms / 1000.0)
    }

    /// Completions per second after the first `burst` (the pool drained), if measurable.
    pub fn sustained(&self) -> Option<f64> {
        let n = self.done_at.len();
        if self.burst == 0 || n < self.burst + 4 {
            return None;
        }
        let span = self.done_at[n - 1] - self.done_at[self.burst - 1];
        (span > 0.0).then(|| (n - self.burst) as f64 / (span / 1000.0))
    }

    pub fn cell(&self) -> String {
        if self.calls.n() == 0 {
            return self.calls.cell();
        }
        let all = format!(
            "{:.2}/s ({} calls in {:.1} s{})",
            self.overall(),
            self.calls.n(),
            self.wall_ms / 1000.0,
            self.calls.fails_note()
        );
        match self.sustained() {
            Some(tail) => format!(
                "**{tail:.2}/s** sustained after the first {} (pool drained); {all} overall",
                self.burst
            ),
            None => all,
        }
    }
}

/// Concurrent streams of sequential calls, one stream per session (or raw pipe): total
/// completed calls over the wall-clock time of all streams, and the per-call latency.
/// Measured in rounds (the levels interleaved), so one noisy moment does not decide it.
#[derive(Default, Clone)]
pub struct Parallel {
    pub streams: usize,
    /// Per round: successful calls and wall-clock ms.
    pub rounds: Vec<(usize, f64)>,
    /// Every call of every round.
    pub calls: Series,
}

impl Parallel {
    /// The entry for `streams` in `levels`, created on first use.
    pub fn level(levels: &mut Vec<Parallel>, streams: usize) -> &mut Parallel {
        match levels.iter().position(|p| p.streams == streams) {
            Some(i) => &mut levels[i],
            None => {
                levels.push(Parallel {
                    streams,
                    ..Parallel::default()
                });
                levels.last_mut().expect("just pushed")
            }
        }
    }

    pub fn add_round(&mut self, wall_ms: f64, per_stream: Vec<Series>) {
        let before = self.calls.n();
        for s in per_stream {
            self.calls.ms.extend(s.ms);
            self.calls.failures.extend(s.failures);
        }
        self.rounds.push((self.calls.n() - before, wall_ms));
    }

    /// Calls per second of each round, sorted.
    pub fn rates(&self) -> Vec<f64> {
        let mut v: Vec<f64> = self
            .rounds
            .iter()
            .filter(|(_, ms)| *ms > 0.0)
            .map(|(n, ms)| *n as f64 / (ms / 1000.0))
            .collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v
    }

    /// The median round's rate (the lower middle one for an even count).
    pub fn rate(&self) -> Option<f64> {
        let v = self.rates();
        (!v.is_empty()).then(|| v[(v.len() - 1) / 2])
    }

    pub fn cell(&self) -> String {
        let (Some(p50), Some(p90), Some(rate)) =
            (self.calls.pct(50.0), self.calls.pct(90.0), self.rate())
        else {
            return self.calls.cell();
        };
        let rates = self.rates();
        let per_round = self.rounds.first().map(|r| r.0).unwrap_or(0);
        let how = if rates.len() == 1 {
            format!("{per_round} calls in {:.2} s", self.rounds[0].1 / 1000.0)
        } else {
            format!(
                "median of {} rounds of {per_round} calls; {}–{}/s",
                rates.len(),
                fmt_rate(rates[0]),
                fmt_rate(rates[rates.len() - 1])
            )
        };
        format!(
            "**{}/s** ({how}{}); per call {} / {}",
            fmt_rate(rate),
            self.calls.fails_note(),
            fmt_ms(p50),
            fmt_ms(p90)
        )
    }
}

pub fn fmt_rate(r: f64) -> String {
    if r >= 100.0 {
        format!("{r:.0}")
    } else {
        format!("{r:.1}")
    }
}

/// The cell of the level with `streams` streams, or a dash when it was not run.
pub fn parallel_cell(levels: &[Parallel], streams: usize) -> String {
    levels
        .iter()
        .find(|p| p.streams == streams)
        .map(Parallel::cell)
        .unwrap_or_else(|| "—".into())
}

pub fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

pub fn fmt_ms(ms: f64) -> String {
    if ms >= 10_000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else if ms >= 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.2} ms")
    }
}

pub fn first_line(s: &str, max: usize) -> String {
    let line = s.trim().lines().next().unwrap_or("").trim();
    if line.chars().count() > max {
        format!("{}…", line.chars().take(max).collect::<String>())
    } else {
        line.to_string()
    }
}

/// `total` runs of `job`, `IN_FLIGHT` at a time.
pub async fn throughput<F, Fut>(total: usize, burst: usize, job: F) -> Rate
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let started = Instant::now();
    let results: Vec<(f64, f64, Result<(), String>)> = futures::stream::iter(0..total)
        .map(|i| {
            let t = Instant::now();
            let fut = job(i);
            async move {
                let r = fut.await;
                (ms_since(t), ms_since(started), r)
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    let mut rate = Rate {
        wall_ms: ms_since(started),
        burst,
        ..Rate::default()
    };
    // `collect` keeps completion order.
    for (ms, at, r) in results {
        match r {
            Ok(()) => {
                rate.calls.ms.push(ms);
                rate.done_at.push(at);
            }
            Err(e) => rate.calls.fail(e),
        }
    }
    rate
}

/// Time `fut`: a sample on success, a failure otherwise.
pub async fn timed<T>(
    s: &mut Series,
    fut: impl std::future::Future<Output = Result<T, String>>,
) -> Option<T> {
    let t = Instant::now();
    match fut.await {
        Ok(v) => {
            s.push(t);
            Some(v)
        }
        Err(e) => {
            s.fail(e);
            None
        }
    }
}

/// `a / b` for the report (`×0.42`), or a dash when either is missing.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("×{:.2}", a / b),
        _ => "—".into(),
    }
}
