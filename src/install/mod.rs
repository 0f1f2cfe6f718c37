//! Package installs: what a valid requirement is, and the installer command line.
//!
//! `installer.py` is the program the installer container runs: pip (or uv when configured
//! and present), into a staging directory, moved into place only on success.
//!
//! A requirement is a PEP 508 name with optional extras and version specifiers
//! (`pandas`, `rich==13.7.1`, `requests[socks]>=2,<3`). Nothing else gets through:
//! no options, URLs, paths, environment markers or shell syntax. The install itself runs
//! in a short-lived installer container (see `sandbox::installer_spec`) that has network
//! and writes into a volume the sandboxes mount read-only; the sandbox never gets network.

use crate::config::PackageConfig;
use crate::text::clip;

/// Why a requirement was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequirementError {
    #[error("the package name is empty; give a name such as `requests` or `pandas>=2`")]
    Empty,
    #[error(
        "`{0}` looks like an installer option; only package names with optional version \
         specifiers are accepted (for example `requests` or `pandas>=2`)"
    )]
    Option(String),
    #[error(
        "`{0}` is a URL or path; only package names from the package index are accepted \
         (for example `requests` or `pandas>=2`)"
    )]
    Location(String),
    #[error(
        "`{input}` is not a valid requirement: {why}. Use a package name with optional extras \
         and version specifiers, for example `requests`, `rich==13.7.1` or `requests[socks]>=2,<3`"
    )]
    Invalid { input: String, why: String },
}

/// A validated requirement, safe to pass as one argument to the installer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// The whole specifier, whitespace removed.
    pub spec: String,
    /// The distribution name.
    pub name: String,
}

const OPERATORS: &[&str] = &["===", "~=", "==", "!=", "<=", ">=", "<", ">"];

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

fn is_version_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '*' | '+' | '!' | '_' | '-')
}

/// Parse one requirement specifier.
pub fn parse_requirement(input: &str) -> Result<Requirement, RequirementError> {
    let trimmed = input.trim();
    if trimmed.is_empty() {
        return Err(RequirementError::Empty);
    }
    if trimmed.starts_with('-') {
        return Err(RequirementError::Option(clip(trimmed).into()));
    }
    if trimmed.contains("://")
        || trimmed.starts_with('.')
        || trimmed.starts_with('/')
        || trimmed.starts_with('~')
        || trimmed.contains('@')
        || trimmed.contains('\\')
    {
        return Err(RequirementError::Location(clip(trimmed).into()));
    }
    let invalid = |why: &str| RequirementError::Invalid {
        input: clip(trimmed).into(),
        why: why.into(),
    };
    let s: String = trimmed.chars().filter(|c| !c.is_whitespace()).collect();
    if let Some(c) = s
        .chars()
        .find(|&c| !(is_name_char(c) || is_version_char(c) || "[],=<>!~".contains(c)))
    {
        return Err(invalid(&format!("the character `{c}` is not allowed")));
    }

    let name_end = s.find(|c: char| !is_name_char(c)).unwrap_or(s.len());
    let name = &s[..name_end];
    let valid_name = !name.is_empty()
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !valid_name {
        return Err(invalid(
            "a package name starts and ends with a letter or digit",
        ));
    }
    let mut rest = &s[name_end..];

    if let Some(after) = rest.strip_prefix('[') {
        let close = after
            .find(']')
            .ok_or_else(|| invalid("the extras list has no closing `]`"))?;
        for extra in after[..close].split(',') {
            let ok = !extra.is_empty()
                && extra.chars().all(is_name_char)
                && extra.starts_with(|c: char| c.is_ascii_alphanumeric());
            if !ok {
                return Err(invalid(&format!("`{extra}` is not a valid extra name")));
            }
        }
        rest = &after[close + 1..];
    }

    if !rest.is_empty() {
        for clause in rest.split(',') {
            let op = OPERATORS
                .iter()
                .find(|op| clause.starts_with(**op))
                .ok_or_else(|| {
                    invalid(&format!(
                        "`{clause}` is not a version specifier such as `>=2.0`"
                    ))
                })?;
            let version = &clause[op.len()..];
            if version.is_empty() || !version.chars().all(is_version_char) {
                return Err(invalid(&format!(
                    "`{clause}` has no valid version after `{op}`"
                )));
            }
        }
    }
    Ok(Requirement {
        spec: s.clone(),
        name: name.into(),
    })
}

/// The installer program, embedded so any image with `python3` works.
pub const INSTALLER: &str = include_str!("installer.py");

/// The installer container's command: the embedded installer and its settings as one JSON
/// argument (no shell anywhere). Every requirement has been validated.
pub fn installer_command(config: &PackageConfig, requirements: &[Requirement]) -> Vec<String> {
    let settings = serde_json::json!({
        "installer": config.installer,
        "requirements": requirements.iter().map(|r| r.spec.as_str()).collect::<Vec<_>>(),
        "only_binary": config.only_binary,
        "index_url": config.index_url,
        "extra_index_urls": config.extra_index_urls,
        "trusted_hosts": config.trusted_hosts,
    });
    vec![
        "python3".into(),
        "-c".into(),
        INSTALLER.into(),
        settings.to_string(),
    ]
}

/// The program `doctor` runs in an installer container (see `probe.py`).
pub const PROBE: &str = include_str!("probe.py");

/// The command that checks, in an installer container, that pip runs and the configured
/// package index answers; it prints one JSON line ([`ProbeReport`]).
pub fn probe_command(config: &PackageConfig) -> Vec<String> {
    let settings = serde_json::json!({
        "index_url": config.index_url,
        "extra_index_urls": config.extra_index_urls,
        "trusted_hosts": config.trusted_hosts,
    });
    vec![
        "python3".into(),
        "-c".into(),
        PROBE.into(),
        settings.to_string(),
    ]
}

/// What the installer probe found.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ProbeReport {
    /// `pip 23.0.1`, when pip runs.
    pub pip: Option<String>,
    /// Whether `uv` is on the image's PATH.
    pub uv: bool,
    /// Whether the package index answered.
    pub index: bool,
    /// Why not, in pip's words.
    pub error: Option<String>,
}

/// Which installer ran, from the installer's first line.
pub fn installer_used(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("installer: "))
        .unwrap_or("pip")
        .trim()
        .to_string()
}

/// Where an install's time went, from the installer's `timing: PHASE EPOCH` lines and the
/// daemon's own clock before the container was created (`begun`) and after it was removed
/// (`ended`), all in seconds since the epoch (the container shares the host's clock).
/// Logged at debug level: `container` is create + start + the interpreter's start-up,
/// each phase is the time since the one before, `after` is the exit and the wait for it
/// (the container is removed in the background, after the reply).
pub fn timing_breakdown(stdout: &str, begun: f64, ended: f64) -> String {
    let marks: Vec<(&str, f64)> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("timing: "))
        .filter_map(|l| {
            let (phase, at) = l.trim().split_once(' ')?;
            Some((phase, at.parse().ok()?))
        })
        .collect();
    let ms = |d: f64| (d * 1000.0).round() as i64;
    let mut out = Vec::new();
    let mut last = begun;
    for (i, (phase, at)) in marks.iter().enumerate() {
        let name = if i == 0 { "container" } else { phase };
        out.push(format!("{name}={}ms", ms(at - last)));
        last = *at;
    }
    out.push(format!("after={}ms", ms(ended - last)));
    out.push(format!("total={}ms", ms(ended - begun)));
    out.join(" ")
}

/// Files the installer took from the download cache: pip's `File was already downloaded
/// /cache/wheels/six-1.17.0-py2.py3-none-any.whl` (its wheelhouse) or `Using cached six-...`,
/// or the installer's own `cached: six-1.17.0-py2.py3-none-any.whl` (the uv route).
pub fn cached_from_output(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            l.strip_prefix("File was already downloaded ")
                .or_else(|| l.strip_prefix("cached: "))
                .or_else(|| l.strip_prefix("Processing /cache/wheels/"))
                .map(|path| path.rsplit('/').next().unwrap_or(path))
                .or_else(|| {
                    l.strip_prefix("Using cached ")
                        .and_then(|f| f.split_whitespace().next())
                })
        })
        .map(str::to_string)
        .collect()
}

/// The distributions pip reports in its `Successfully installed a-1.0 b-2.0` line.
/// (uv reports `+ six==1.17.0` lines instead; both are read.)
pub fn installed_from_pip_output(output: &str) -> Vec<String> {
    let pip = output
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Successfully installed "))
        .flat_map(|l| l.split_whitespace().map(str::to_string));
    let uv = output
        .lines()
        .filter_map(|l| l.trim().strip_prefix("+ "))
        .map(|l| l.replace("==", "-"));
    pip.chain(uv).collect()
}

/// The part of pip's output that explains a failure: its `ERROR:` lines, else the tail.
pub fn pip_failure_summary(stdout: &str, stderr: &str) -> String {
    let errors: Vec<&str> = stderr
        .lines()
        .chain(stdout.lines())
        .filter(|l| l.starts_with("ERROR:"))
        .collect();
    if !errors.is_empty() {
        let mut summary = errors.join("\n");
        // pip's "ERROR: Exception:" says nothing by itself; its traceback's end does.
        if errors.iter().any(|l| l.trim() == "ERROR: Exception:") {
            let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
            summary.push('\n');
            summary.push_str(&tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
        return summary;
    }
    // The installer's own bookkeeping (`timing:` lines) is for the daemon's log only.
    let all: Vec<&str> = stderr
        .lines()
        .chain(stdout.lines())
        .filter(|l| !l.starts_with("timing: "))
        .collect();
    all[all.len().saturating_sub(15)..].join("\n")
}

/// A hint to add to a failed install's summary: with wheels only (`package.only_binary`), a
/// package that publishes only a source release looks to pip like one with no versions at
/// all, and to uv like one without usable wheels.
pub fn failure_hint(summary: &str, only_binary: bool) -> Option<&'static str> {
    let no_version = [
        "from versions: none",
        "No matching distribution found",
        "no usable wheels",
        "has no wheels",
        "building from source is disabled",
    ];
    (only_binary && no_version.iter().any(|s| summary.contains(s))).then_some(
        "If the package exists, it may publish only a source release: installs take wheels \
         only (package.only_binary: true), because building from source runs the package's \
         own code. Set package.only_binary: false (PYTHON_DOCKER_MCP_ONLY_BINARY=false) to \
         allow source builds, or pick a version that has wheels",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_wheel_is_explained_only_when_wheels_only_is_on() {
        let pip = "ERROR: Could not find a version that satisfies the requirement docopt \
                   (from versions: none)\nERROR: No matching distribution found for docopt";
        assert!(failure_hint(pip, true)
            .unwrap()
            .contains("package.only_binary"));
        assert!(failure_hint(pip, false).is_none());
        let uv = "Because docopt==0.6.2 has no usable wheels and you require docopt";
        assert!(failure_hint(uv, true).is_some());
        assert!(failure_hint("ERROR: HTTP error 500", true).is_none());
    }

    #[test]
    fn accepts_names_extras_and_specifiers() {
        for ok in [
            "six",
            "pandas>=2",
            "rich==13.7.1",
            "requests[socks]>=2,<3",
            "zope.interface",
            "Foo_Bar-baz ~= 1.4.5",
            "x===1.0+local",
            "numpy!=1.*",
        ] {
            assert!(
                parse_requirement(ok).is_ok(),
                "{ok} refused: {:?}",
                parse_requirement(ok)
            );
        }
        let r = parse_requirement(" pandas >= 2 ").unwrap();
        assert_eq!(r.spec, "pandas>=2");
        assert_eq!(r.name, "pandas");
    }

    #[test]
    fn refuses_shell_options_paths_and_urls() {
        let cases = [
            ("six; rm -rf /", "not allowed"),
            ("--index-url=http://evil", "option"),
            ("-r requirements.txt", "option"),
            ("../x", "URL or path"),
            ("/tmp/pkg", "URL or path"),
            ("https://example.com/x.whl", "URL or path"),
            ("pkg @ https://example.com/x.whl", "URL or path"),
            ("six && curl x", "not allowed"),
            ("$(id)", "not allowed"),
            ("six`id`", "not allowed"),
            ("six|sh", "not allowed"),
            ("", "empty"),
            ("six>=", "no valid version"),
            ("six[", "closing"),
            ("-six", "option"),
            ("six==1.0;python_version<'3'", "not allowed"),
        ];
        for (input, expect) in cases {
            let e = parse_requirement(input).expect_err(input).to_string();
            assert!(e.contains(expect), "{input}: {e}");
        }
    }

    #[test]
    fn installer_settings_travel_as_one_json_argument() {
        let config = crate::config::Config::defaults().package;
        let cmd = installer_command(
            &config,
            &[
                parse_requirement("six").unwrap(),
                parse_requirement("rich==13.7.1").unwrap(),
            ],
        );
        assert_eq!(cmd.len(), 4);
        assert_eq!(&cmd[..2], ["python3", "-c"]);
        let settings: serde_json::Value = serde_json::from_str(&cmd[3]).unwrap();
        assert_eq!(
            settings["requirements"],
            serde_json::json!(["six", "rich==13.7.1"])
        );
        assert_eq!(settings["only_binary"], serde_json::json!(true));
    }

    #[test]
    fn the_timing_breakdown_names_each_phase() {
        let out = "installer: uv\ntiming: start 100.250\ntiming: wheelhouse 100.300\n\
                   timing: moved 100.310\ncached: six-1.17.0-py2.py3-none-any.whl\n";
        assert_eq!(
            timing_breakdown(out, 100.0, 100.4),
            "container=250ms wheelhouse=50ms moved=10ms after=90ms total=400ms"
        );
        assert_eq!(
            cached_from_output(out),
            vec!["six-1.17.0-py2.py3-none-any.whl"]
        );
        assert_eq!(timing_breakdown("", 1.0, 1.5), "after=500ms total=500ms");
    }

    #[test]
    fn reads_pip_results() {
        let out = "Collecting six\nInstalling collected packages: six\nSuccessfully installed six-1.16.0 rich-13.7.1\n";
        assert_eq!(
            installed_from_pip_output(out),
            vec!["six-1.16.0", "rich-13.7.1"]
        );
        let err = "ERROR: Could not find a version that satisfies the requirement nope\nERROR: No matching distribution found for nope\n";
        assert!(pip_failure_summary("", err).contains("No matching distribution"));
    }
}
