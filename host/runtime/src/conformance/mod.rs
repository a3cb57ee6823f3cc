//! The plugin conformance kit: what a plugin author runs before signing and deploying, and
//! what CI runs on every example plugin.
//!
//! [`run`] takes a signed bundle, a plugin directory or a bare component and checks, in order:
//! manifest and signature; that it loads (imports, world, models) and that `describe()` is
//! well formed and agrees with the manifest; the self-test vectors; robustness against
//! malformed input ([`corpus`]); determinism across fresh instances; that every request
//! stayed within the declared limits; and latency. Each check ends as pass, fail or skip with
//! a one-line detail; a report renders as text or JUnit XML ([`junit`]).

pub mod corpus;
pub mod junit;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{
    InferRequest, InferResponse, InvokeError, LoadError, LoadedPlugin, PluginFiles, RequestStats,
    Runtime,
};
use edgeplug_bundle::{BundleLimits, TrustStore};

/// What to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A signed bundle (`.epk`), verified against a trust store.
    Bundle(PathBuf),
    /// A plugin directory holding `plugin.toml`; `component` overrides where the component
    /// is read from (a build output outside the directory).
    Dir {
        dir: PathBuf,
        component: Option<PathBuf>,
    },
    /// A bare component with no manifest: the manifest is derived from `describe()`.
    Component(PathBuf),
}

impl Target {
    /// A directory is a plugin directory, a `.wasm` file a component, anything else a bundle.
    pub fn from_path(path: &Path) -> Target {
        if path.is_dir() {
            Target::Dir {
                dir: path.to_path_buf(),
                component: None,
            }
        } else if path.extension().is_some_and(|e| e == "wasm") {
            Target::Component(path.to_path_buf())
        } else {
            Target::Bundle(path.to_path_buf())
        }
    }

    fn display(&self) -> String {
        match self {
            Target::Bundle(p) | Target::Component(p) | Target::Dir { dir: p, .. } => {
                p.display().to_string()
            }
        }
    }
}

/// How to check.
#[derive(Debug, Clone)]
pub struct Options {
    /// Trust store for a bundle's signature; `None` fails the signature check of a bundle.
    pub trust_dir: Option<PathBuf>,
    /// Requests timed for the latency figure.
    pub latency_runs: usize,
    /// Fresh instances each self-test input runs on for the determinism check.
    pub determinism_runs: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            trust_dir: None,
            latency_runs: 20,
            determinism_runs: 3,
        }
    }
}

/// How one check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail,
    Skip,
}

/// One check's result.
#[derive(Debug, Clone)]
pub struct Check {
    /// The kind of check: `manifest`, `signature`, `load`, `describe`, `self-test`,
    /// `robustness`, `determinism`, `limits`, `latency`.
    pub group: &'static str,
    /// Which case within the group (a vector's name, a corpus file).
    pub name: String,
    pub outcome: Outcome,
    /// One line for humans: what passed, or what went wrong.
    pub detail: String,
    pub elapsed: Duration,
}

/// Everything one run of the kit found.
#[derive(Debug, Clone)]
pub struct Report {
    /// What was checked, as given.
    pub target: String,
    /// `name version` once the plugin is known.
    pub plugin: Option<String>,
    pub checks: Vec<Check>,
}

impl Report {
    /// True when no check failed.
    pub fn passed(&self) -> bool {
        self.failures().next().is_none()
    }

    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.outcome == Outcome::Fail)
    }

    fn count(&self, outcome: Outcome) -> usize {
        self.checks.iter().filter(|c| c.outcome == outcome).count()
    }

    /// The human-readable report: one line per check, then a summary.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "edgeplug conformance: {}{}\n",
            self.target,
            self.plugin
                .as_ref()
                .map(|p| format!(" ({p})"))
                .unwrap_or_default()
        );
        for check in &self.checks {
            let mark = match check.outcome {
                Outcome::Pass => "PASS",
                Outcome::Fail => "FAIL",
                Outcome::Skip => "SKIP",
            };
            let label = if check.name.is_empty() {
                check.group.to_string()
            } else {
                format!("{} {}", check.group, check.name)
            };
            let _ = writeln!(out, "  {mark}  {label:<44} {}", check.detail);
        }
        let _ = writeln!(
            out,
            "{}: {} passed, {} failed, {} skipped",
            if self.passed() { "PASSED" } else { "FAILED" },
            self.count(Outcome::Pass),
            self.count(Outcome::Fail),
            self.count(Outcome::Skip)
        );
        out
    }

    /// The one line a plugin that does not load gets: the error's code, then its message.
    fn load_failed(&mut self, e: &LoadError, started: Instant) {
        let detail = format!("{}: {e}", e.code());
        self.push("load", "", Outcome::Fail, detail, started.elapsed());
    }

    fn push(
        &mut self,
        group: &'static str,
        name: impl Into<String>,
        outcome: Outcome,
        detail: impl Into<String>,
        elapsed: Duration,
    ) {
        self.checks.push(Check {
            group,
            name: name.into(),
            outcome,
            detail: detail.into(),
            elapsed,
        });
    }
}

/// Runs every check on `target`. Blocking: it runs the plugin many times.
pub fn run(runtime: &Runtime, target: &Target, options: &Options) -> Report {
    let mut report = Report {
        target: target.display(),
        plugin: None,
        checks: Vec::new(),
    };
    let Some(files) = read_target(runtime, target, options, &mut report) else {
        return report;
    };
    let started = Instant::now();
    let plugin = match runtime.load(&files) {
        Ok(plugin) => plugin,
        Err(e) => {
            report.load_failed(&e, started);
            return report;
        }
    };
    report.push(
        "load",
        "",
        Outcome::Pass,
        "compiled, imports granted, fits the edgeplug world",
        started.elapsed(),
    );
    check_loaded(&plugin, &files, options, &mut report);
    report
}

/// The checks of a plugin already loaded (describe, self-tests, robustness, determinism,
/// limits, latency): what a gateway configured to verify pushes with the kit runs on a
/// pushed version before activating it. Blocking.
pub fn run_loaded(plugin: &LoadedPlugin, files: &PluginFiles, options: &Options) -> Report {
    let mut report = Report {
        target: files.manifest.name.clone(),
        plugin: None,
        checks: Vec::new(),
    };
    check_loaded(plugin, files, options, &mut report);
    report
}

fn check_loaded(
    plugin: &LoadedPlugin,
    files: &PluginFiles,
    options: &Options,
    report: &mut Report,
) {
    report.plugin = Some(format!("{} {}", plugin.info().name, plugin.info().version));
    check_describe(plugin, report);
    Kit {
        plugin,
        files,
        options,
        report,
        worst: Worst::default(),
    }
    .run();
}

/// Reads the plugin's files and records the manifest and signature checks.
fn read_target(
    runtime: &Runtime,
    target: &Target,
    options: &Options,
    report: &mut Report,
) -> Option<PluginFiles> {
    let started = Instant::now();
    match target {
        Target::Dir { dir, component } => {
            let files = match PluginFiles::from_dir(dir, component.as_deref()) {
                Ok(files) => files,
                Err(e) => {
                    report.push(
                        "manifest",
                        "",
                        Outcome::Fail,
                        format!("{e:#}"),
                        started.elapsed(),
                    );
                    return None;
                }
            };
            report.push(
                "manifest",
                "",
                Outcome::Pass,
                "plugin.toml valid; every file it names is present",
                started.elapsed(),
            );
            report.push(
                "signature",
                "",
                Outcome::Skip,
                "a plugin directory is not signed; check the bundle `edgeplug pack` makes",
                Duration::ZERO,
            );
            Some(files)
        }
        Target::Bundle(path) => {
            let Some(trust_dir) = &options.trust_dir else {
                report.push(
                    "signature",
                    "",
                    Outcome::Fail,
                    "no trust store given (--trust DIR): a bundle's signature cannot be checked",
                    Duration::ZERO,
                );
                return None;
            };
            let verified = TrustStore::load(trust_dir)
                .map_err(anyhow::Error::from)
                .and_then(|trust| {
                    edgeplug_bundle::verify_file(path, &trust, &BundleLimits::default())
                        .map_err(anyhow::Error::from)
                });
            match verified {
                Ok(bundle) => {
                    report.push(
                        "manifest",
                        "",
                        Outcome::Pass,
                        "plugin.toml valid; members match their digests",
                        started.elapsed(),
                    );
                    report.push(
                        "signature",
                        "",
                        Outcome::Pass,
                        format!("signed by trusted key {}", bundle.signer()),
                        started.elapsed(),
                    );
                    Some(PluginFiles::from_bundle(&bundle))
                }
                Err(e) => {
                    report.push(
                        "signature",
                        "",
                        Outcome::Fail,
                        format!("{e:#}"),
                        started.elapsed(),
                    );
                    None
                }
            }
        }
        Target::Component(path) => {
            let wasm = match std::fs::read(path) {
                Ok(wasm) => wasm,
                Err(e) => {
                    report.push(
                        "load",
                        "",
                        Outcome::Fail,
                        format!("cannot read {}: {e}", path.display()),
                        started.elapsed(),
                    );
                    return None;
                }
            };
            let info = match runtime.describe_component(&wasm) {
                Ok(info) => info,
                Err(e) => {
                    report.load_failed(&e, started);
                    return None;
                }
            };
            let files = PluginFiles::bare_component(&info.name, &info.version, &wasm);
            match files {
                Ok(files) => {
                    report.push("manifest", "", Outcome::Skip, "a bare component: manifest derived from describe(), default limits, no grants or self-tests", started.elapsed());
                    report.push(
                        "signature",
                        "",
                        Outcome::Skip,
                        "a bare component is not signed",
                        Duration::ZERO,
                    );
                    Some(files)
                }
                Err(e) => {
                    report.push(
                        "describe",
                        "",
                        Outcome::Fail,
                        format!("describe() cannot make a manifest: {e}"),
                        started.elapsed(),
                    );
                    None
                }
            }
        }
    }
}

fn check_describe(plugin: &LoadedPlugin, report: &mut Report) {
    let info = plugin.info();
    let mut problems = Vec::new();
    if semver::Version::parse(&info.version).is_err() {
        problems.push(format!(
            "version {:?} is not a semantic version",
            info.version
        ));
    }
    for (kind, specs) in [("input", &info.inputs), ("output", &info.outputs)] {
        let mut seen = std::collections::BTreeSet::new();
        for spec in specs {
            if spec.name.is_empty() {
                problems.push(format!("an {kind} tensor has no name"));
            } else if !seen.insert(&spec.name) {
                problems.push(format!("{kind} tensor {:?} is declared twice", spec.name));
            }
            if spec.shape.iter().any(|&d| d < -1 || d == 0) {
                problems.push(format!(
                    "{kind} tensor {:?} has shape {:?}: dimensions are positive, or -1 for dynamic",
                    spec.name, spec.shape
                ));
            }
        }
    }
    if info.description.trim().is_empty() {
        problems.push("the description is empty".to_string());
    }
    if problems.is_empty() {
        report.push(
            "describe",
            "",
            Outcome::Pass,
            format!(
                "{} {} agrees with the manifest; {} input(s), {} output(s)",
                info.name,
                info.version,
                info.inputs.len(),
                info.outputs.len()
            ),
            Duration::ZERO,
        );
    } else {
        report.push(
            "describe",
            "",
            Outcome::Fail,
            problems.join("; "),
            Duration::ZERO,
        );
    }
}

/// The outcome of one request, reduced to what must repeat exactly on a fresh instance.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fingerprint {
    Answer {
        content_type: String,
        body: Vec<u8>,
        tensors: Vec<(String, Vec<usize>, Vec<u8>)>,
    },
    Error(String),
}

fn fingerprint(result: &Result<InferResponse, InvokeError>) -> Fingerprint {
    match result {
        Ok(response) => Fingerprint::Answer {
            content_type: response.content_type.clone(),
            body: response.body.clone(),
            tensors: response
                .tensors
                .iter()
                .map(|(name, t)| (name.clone(), t.shape().to_vec(), t.to_le_bytes()))
                .collect(),
        },
        Err(e) => Fingerprint::Error(e.to_string()),
    }
}

/// The request that went worst against each limit, for the limits check.
#[derive(Debug, Default)]
struct Worst {
    peak: RequestStats,
    slowest: Duration,
    /// Requests a limit ended: (input, error).
    exhausted: Vec<(String, String)>,
}

struct Kit<'a> {
    plugin: &'a LoadedPlugin,
    files: &'a PluginFiles,
    options: &'a Options,
    report: &'a mut Report,
    worst: Worst,
}

impl Kit<'_> {
    fn run(mut self) {
        let self_tests = self.self_tests();
        let cases = corpus::cases(
            self.primary_content_type(),
            self.plugin.shared().limits().request_bytes,
            &self_tests,
        );
        let mut first_results = Vec::with_capacity(cases.len());
        for case in &cases {
            let (result, elapsed) = self.call(&case.name, &case.request);
            let (outcome, detail) = judge_robustness(&result);
            self.report
                .push("robustness", &case.name, outcome, detail, elapsed);
            first_results.push(fingerprint(&result));
        }
        self.determinism(&self_tests, &cases, &first_results);
        self.limits();
        self.latency(&self_tests);
    }

    fn primary_content_type(&self) -> Option<String> {
        self.files
            .manifest
            .self_tests
            .first()
            .map(crate::selftest::input_content_type)
    }

    /// Runs the self-test vectors; returns their inputs for the later checks.
    fn self_tests(&mut self) -> Vec<(String, InferRequest)> {
        let tests = &self.files.manifest.self_tests;
        if tests.is_empty() {
            self.report.push(
                "self-test",
                "",
                Outcome::Fail,
                "the manifest has no [[self-test]] vectors: the gateway cannot check a version before activating it",
                Duration::ZERO,
            );
            return Vec::new();
        }
        let mut inputs = Vec::new();
        for test in tests {
            let started = Instant::now();
            match crate::selftest::run_one(self.plugin, self.files, test) {
                Ok(()) => self.report.push(
                    "self-test",
                    &test.name,
                    Outcome::Pass,
                    format!("matches {} within {}", test.expect, test.tolerance),
                    started.elapsed(),
                ),
                Err(e) => self.report.push(
                    "self-test",
                    &test.name,
                    Outcome::Fail,
                    e.to_string(),
                    started.elapsed(),
                ),
            }
            if let Some(body) = self.files.files.get(&test.input) {
                inputs.push((
                    test.name.clone(),
                    InferRequest {
                        content_type: crate::selftest::input_content_type(test),
                        body: body.to_vec(),
                        tensors: Vec::new(),
                    },
                ));
            }
        }
        inputs
    }

    /// One request on a fresh instance, recorded against the limits.
    fn call(
        &mut self,
        input: &str,
        request: &InferRequest,
    ) -> (Result<InferResponse, InvokeError>, Duration) {
        let started = Instant::now();
        let (result, stats) = self.plugin.infer_with_stats(request.clone());
        let elapsed = started.elapsed();
        let worst = &mut self.worst;
        worst.peak.peak_memory_bytes = worst.peak.peak_memory_bytes.max(stats.peak_memory_bytes);
        worst.peak.peak_tensor_bytes = worst.peak.peak_tensor_bytes.max(stats.peak_tensor_bytes);
        worst.slowest = worst.slowest.max(elapsed);
        if let Err(e) = &result
            && e.is_limit()
        {
            worst.exhausted.push((input.to_string(), e.to_string()));
        }
        (result, elapsed)
    }

    fn determinism(
        &mut self,
        self_tests: &[(String, InferRequest)],
        cases: &[corpus::Case],
        first: &[Fingerprint],
    ) {
        for (name, request) in self_tests {
            let started = Instant::now();
            let runs: Vec<Fingerprint> = (0..self.options.determinism_runs.max(2))
                .map(|_| fingerprint(&self.call(name, request).0))
                .collect();
            let differing = runs.iter().skip(1).position(|r| *r != runs[0]);
            let (outcome, detail) = match differing {
                None => (
                    Outcome::Pass,
                    format!("same answer on {} fresh instances", runs.len()),
                ),
                Some(i) => (
                    Outcome::Fail,
                    format!(
                        "run {} differs from run 1: {}",
                        i + 2,
                        difference(&runs[0], &runs[i + 1])
                    ),
                ),
            };
            self.report
                .push("determinism", name, outcome, detail, started.elapsed());
        }
        // Every corpus case once more: an error must repeat exactly like an answer.
        let started = Instant::now();
        let mut differing = Vec::new();
        for (case, first) in cases.iter().zip(first) {
            let again = fingerprint(&self.call(&case.name, &case.request).0);
            if again != *first {
                differing.push(format!("{}: {}", case.name, difference(first, &again)));
            }
        }
        let (outcome, detail) = if differing.is_empty() {
            (
                Outcome::Pass,
                format!(
                    "each of the {} robustness inputs answered the same on a second fresh instance",
                    cases.len()
                ),
            )
        } else {
            (
                Outcome::Fail,
                format!(
                    "{} of {} inputs answered differently on a fresh instance; {}",
                    differing.len(),
                    cases.len(),
                    differing.join("; ")
                ),
            )
        };
        self.report.push(
            "determinism",
            "robustness inputs",
            outcome,
            detail,
            started.elapsed(),
        );
    }

    fn limits(&mut self) {
        let limits = self.plugin.shared().limits();
        let mib = |b: usize| b as f64 / (1 << 20) as f64;
        let detail = format!(
            "peak linear memory {:.1} of {:.0} MiB; peak host tensors {:.1} of {:.0} MiB; slowest request {:.1} of {} ms",
            mib(self.worst.peak.peak_memory_bytes),
            mib(limits.memory_bytes),
            mib(self.worst.peak.peak_tensor_bytes),
            mib(limits.tensor_bytes),
            self.worst.slowest.as_secs_f64() * 1e3,
            limits.deadline_ms
        );
        if self.worst.exhausted.is_empty() {
            self.report
                .push("limits", "", Outcome::Pass, detail, Duration::ZERO);
        } else {
            let mut hits: Vec<String> = self
                .worst
                .exhausted
                .iter()
                .map(|(input, e)| format!("{input}: {e}"))
                .collect();
            hits.dedup();
            let shown = hits.len().min(3);
            self.report.push(
                "limits",
                "",
                Outcome::Fail,
                format!(
                    "{} request(s) exhausted a limit ({}{}); {detail}",
                    hits.len(),
                    hits[..shown].join("; "),
                    if hits.len() > shown { "; ..." } else { "" }
                ),
                Duration::ZERO,
            );
        }
    }

    fn latency(&mut self, self_tests: &[(String, InferRequest)]) {
        let Some((name, request)) = self_tests.first() else {
            self.report.push(
                "latency",
                "",
                Outcome::Skip,
                "no self-test input to time",
                Duration::ZERO,
            );
            return;
        };
        let started = Instant::now();
        let mut times: Vec<Duration> = (0..self.options.latency_runs.max(1))
            .map(|_| self.call(name, request).1)
            .collect();
        times.sort();
        let at =
            |q: f64| times[((times.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
        let deadline = self.plugin.shared().limits().deadline_ms as f64;
        let (median, p90) = (at(0.5), at(0.9));
        let detail = format!(
            "{name}: median {median:.2} ms, p90 {p90:.2} ms over {} requests (deadline {deadline} ms)",
            times.len()
        );
        let outcome = if p90 < deadline {
            Outcome::Pass
        } else {
            Outcome::Fail
        };
        self.report
            .push("latency", "", outcome, detail, started.elapsed());
    }
}

/// An answer or an error result passes; a trap, a broken contract or an exhausted limit fails.
fn judge_robustness(result: &Result<InferResponse, InvokeError>) -> (Outcome, String) {
    match result {
        Ok(response) => (
            Outcome::Pass,
            format!(
                "answered ({}, {} bytes)",
                response.content_type,
                response.body.len()
            ),
        ),
        Err(e) if e.misconduct().is_none() => (
            Outcome::Pass,
            format!("error {}: {}", e.code(), one_line(&e.message())),
        ),
        Err(e) => (
            Outcome::Fail,
            format!("{}: {}", e.code(), one_line(&e.to_string())),
        ),
    }
}

fn one_line(text: &str) -> String {
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(200) {
        Some((cut, _)) => format!("{}...", &line[..cut]),
        None => line,
    }
}

fn difference(a: &Fingerprint, b: &Fingerprint) -> String {
    let show = |f: &Fingerprint| match f {
        Fingerprint::Answer { body, tensors, .. } => format!(
            "answer {:?}{}",
            one_line(&String::from_utf8_lossy(&body[..body.len().min(120)])),
            if tensors.is_empty() {
                String::new()
            } else {
                format!(" + {} tensor(s)", tensors.len())
            }
        ),
        Fingerprint::Error(e) => format!("error {:?}", one_line(e)),
    };
    format!("{} vs {}", show(a), show(b))
}
