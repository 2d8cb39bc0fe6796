//! The project spec: the TOML file a user submits to describe a project, which the mesh
//! carries through the eight phases.
//!
//! ```text
//!   TOML text ──parse──► RawSpec (spans) ──convert──► ProjectSpec + Lines ──check──► Ok
//!                                                                                    │
//!   bytes ◄──to_bytes── ProjectSpec ──from_bytes (size cap, decode, check) ◄─────────┘
//! ```
//!
//! `parse` is the only way in from text and `from_bytes` the only way in from the wire;
//! both run the same `check`, so a spec that reaches the president has passed every rule
//! below whichever way it came. Parsing keeps each value's byte span, so every problem
//! that has a place in the file is reported as `line N: problem`.
//!
//! # Format
//!
//! ```toml
//! name = "Payments service"
//! objectives = ["Take card payments", "Settle daily"]
//! budget = 10000                      # optional, default 0
//!
//! [[phase]]
//! name = "feasibility"                # lowercase phase name, phases in lifecycle order
//!
//!   [[phase.task]]
//!   name = "technical-assessment"     # [a-z0-9_-], unique in the project
//!   state = "technical"               # [a-z0-9_-]: the state (domain of work) that runs it
//!   skill = "rust"                    # optional: a worker skill preferred for it
//!   executor = "builtin"              # "builtin", "shell" or "llm"
//!   action = "digest"                 # builtin: noop, digest, fail, sleep:<ms>
//!   # command = "cargo test"          # shell: command (required), workdir, cpu_secs,
//!   #                                 #        memory_mb, max_output_bytes
//!   # system = "You are..."           # llm: system, max_tokens
//!   input = "Assess the stack"        # free text handed to the executor
//!   depends_on = []                   # tasks of the same phase that must complete first
//!   timeout_secs = 30                 # default 60, 1..=86400
//!   retries = 2                       # default 2, 0..=10
//!   budget = 0                        # default 0; all task budgets add up to at most
//!                                     # the project budget
//! ```
//!
//! Unknown keys are errors, and so is a setting of another executor (`command` on a
//! builtin task). Only the phases listed run; each listed phase needs at least one task.
//!
//! Phases are named as `aamas_protocol::Phase::as_str` names them.

use std::collections::HashMap;
use std::ops::RangeInclusive;

use aamas_protocol::Phase;
use serde::{Deserialize, Serialize};
use toml::Spanned;

/// Largest spec file accepted, checked before parsing.
pub const MAX_SPEC_BYTES: usize = 1024 * 1024;
/// Largest project, task, state or skill name.
pub const MAX_NAME_BYTES: usize = 256;
/// Most objectives in one spec.
pub const MAX_OBJECTIVES: usize = 64;
/// Largest single objective.
pub const MAX_OBJECTIVE_BYTES: usize = 4096;
/// Most tasks in one project, over all its phases.
pub const MAX_TASKS: usize = 1000;
/// Largest task input, shell command or llm system prompt.
pub const MAX_INPUT_BYTES: usize = 64 * 1024;
/// Largest shell working directory path.
pub const MAX_WORKDIR_BYTES: usize = 4096;

/// Task timeout when the spec does not give one.
pub const DEFAULT_TIMEOUT_SECS: u64 = 60;
/// Longest task timeout: one day.
pub const MAX_TIMEOUT_SECS: u64 = 86_400;
/// Task retries when the spec does not give them.
pub const DEFAULT_RETRIES: u32 = 2;
/// Most retries of one task.
pub const MAX_RETRIES: u32 = 10;
/// Longest `sleep:<ms>` builtin action.
pub const MAX_SLEEP_MS: u64 = 60_000;

/// Shell CPU time limit when the spec does not give one.
pub const DEFAULT_CPU_SECS: u64 = 60;
/// Largest shell CPU time limit.
pub const MAX_CPU_SECS: u64 = 86_400;
/// Shell memory limit when the spec does not give one.
pub const DEFAULT_MEMORY_MB: u64 = 512;
/// Largest shell memory limit.
pub const MAX_MEMORY_MB: u64 = 64 * 1024;
/// Shell output cap when the spec does not give one.
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 64 * 1024;
/// Largest shell output cap: results are committed to a replicated log.
pub const MAX_OUTPUT_CAP_BYTES: u64 = 1024 * 1024;
/// Llm completion length when the spec does not give one.
pub const DEFAULT_MAX_TOKENS: u32 = 512;
/// Largest llm completion length.
pub const MAX_LLM_TOKENS: u32 = 131_072;

/// Longest user-supplied text quoted back in an error message, in characters.
const MAX_QUOTED_CHARS: usize = 64;

/// A parsed, validated project spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectSpec {
    /// The project's name.
    pub name: String,
    /// What the project is meant to achieve, in the user's words.
    pub objectives: Vec<String>,
    /// The project's total budget; task budgets add up to at most this.
    pub budget: u64,
    /// The phases that run, in lifecycle order, each at most once.
    pub phases: Vec<PhaseSpec>,
}

/// One phase of a project and the tasks that complete it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseSpec {
    /// Which phase.
    pub phase: Phase,
    /// Its tasks, in the order the spec lists them; at least one.
    pub tasks: Vec<TaskSpec>,
}

/// One task of a phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// Unique within the project; `[a-z0-9_-]`.
    pub name: String,
    /// Which state (domain of work) runs it, e.g. technical, financial, market,
    /// operations; `[a-z0-9_-]`.
    pub state: String,
    /// A worker skill preferred for it.
    pub skill: Option<String>,
    /// What runs it.
    pub executor: ExecutorSpec,
    /// Free text handed to the executor.
    pub input: String,
    /// Names of tasks of the same phase that must complete first.
    pub depends_on: Vec<String>,
    /// How long one attempt may run, in seconds.
    pub timeout_secs: u64,
    /// How many times a failed attempt is retried.
    pub retries: u32,
    /// The task's share of the project budget.
    pub budget: u64,
}

/// What runs a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExecutorSpec {
    /// Deterministic work for the demo and tests. `action` is one of "noop", "digest",
    /// "fail", `"sleep:<ms>"` (ms <= 60000); see [`BuiltinAction`].
    Builtin {
        /// The action, as written in the spec.
        action: String,
    },
    /// `sh -c command` with limits.
    Shell {
        /// The command line handed to `sh -c`.
        command: String,
        /// Where it runs; the executor's default when absent.
        workdir: Option<String>,
        /// CPU time limit, in seconds.
        cpu_secs: u64,
        /// Memory limit, in MiB.
        memory_mb: u64,
        /// Output beyond this many bytes is cut.
        max_output_bytes: u64,
    },
    /// OpenAI-compatible chat completion; the prompt is the task input.
    Llm {
        /// The system message, if any.
        system: Option<String>,
        /// The most tokens the completion may have.
        max_tokens: u32,
    },
}

impl ExecutorSpec {
    /// The executor's name as the spec writes it: "builtin", "shell" or "llm".
    pub fn kind(&self) -> &'static str {
        match self {
            ExecutorSpec::Builtin { .. } => "builtin",
            ExecutorSpec::Shell { .. } => "shell",
            ExecutorSpec::Llm { .. } => "llm",
        }
    }
}

/// A builtin executor's action, decoded from its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BuiltinAction {
    /// Succeed with an empty output.
    Noop,
    /// Succeed with a digest of the input.
    Digest,
    /// Fail every attempt.
    Fail,
    /// Succeed after waiting.
    Sleep {
        /// How long to wait, in milliseconds; at most [`MAX_SLEEP_MS`].
        ms: u64,
    },
}

impl BuiltinAction {
    /// Decodes "noop", "digest", "fail" or `"sleep:<ms>"` (decimal digits, at most
    /// [`MAX_SLEEP_MS`]); `None` for anything else.
    pub fn parse(action: &str) -> Option<BuiltinAction> {
        match action {
            "noop" => Some(BuiltinAction::Noop),
            "digest" => Some(BuiltinAction::Digest),
            "fail" => Some(BuiltinAction::Fail),
            _ => {
                let digits = action.strip_prefix("sleep:")?;
                // `u64::from_str` also takes a leading `+`; the spec's grammar does not.
                if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
                    return None;
                }
                let ms = digits.parse::<u64>().ok()?;
                (ms <= MAX_SLEEP_MS).then_some(BuiltinAction::Sleep { ms })
            }
        }
    }
}

/// Why a spec was rejected, with the 1-based line of the problem when it has one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", describe(.line, .message))]
pub struct SpecError {
    /// The 1-based line in the spec text, when the problem has a place there.
    pub line: Option<usize>,
    /// What is wrong and, where it helps, what to do about it.
    pub message: String,
}

fn describe(line: &Option<usize>, message: &str) -> String {
    match line {
        Some(line) => format!("line {line}: {message}"),
        None => message.to_owned(),
    }
}

impl SpecError {
    fn new(line: Option<usize>, message: impl Into<String>) -> SpecError {
        SpecError {
            line,
            message: message.into(),
        }
    }
}

/// Parses and validates a spec from TOML text.
pub fn parse(text: &str) -> Result<ProjectSpec, SpecError> {
    if text.len() > MAX_SPEC_BYTES {
        return Err(SpecError::new(
            None,
            format!(
                "the spec is {} bytes; the limit is {MAX_SPEC_BYTES}: move long inputs out \
                 of it or split the project",
                text.len()
            ),
        ));
    }
    let index = LineIndex::new(text);
    let raw: RawSpec = toml::from_str(text).map_err(|error| {
        SpecError::new(
            error.span().map(|span| index.line(span.start)),
            error.message().to_owned(),
        )
    })?;
    let (spec, lines) = convert(&index, raw)?;
    check(&spec, Some(&lines))?;
    Ok(spec)
}

/// The built-in template: the seed's eight phases with builtin tasks spread over the
/// technical, financial, market and operations states. `parse(template())` succeeds.
pub fn template() -> &'static str {
    TEMPLATE
}

impl ProjectSpec {
    /// The spec of one phase, if the project runs it.
    pub fn phase(&self, phase: Phase) -> Option<&PhaseSpec> {
        self.phases.iter().find(|spec| spec.phase == phase)
    }

    /// A task by name, with the phase it belongs to.
    pub fn task(&self, name: &str) -> Option<(Phase, &TaskSpec)> {
        self.phases.iter().find_map(|phase| {
            phase
                .tasks
                .iter()
                .find(|task| task.name == name)
                .map(|task| (phase.phase, task))
        })
    }

    /// How many tasks the project has, over all its phases.
    pub fn task_count(&self) -> usize {
        self.phases.iter().map(|phase| phase.tasks.len()).sum()
    }

    /// Checks every rule a parsed spec obeys: for specs built in code or decoded by
    /// other means than [`ProjectSpec::from_bytes`]. Errors carry no line.
    pub fn validate(&self) -> Result<(), SpecError> {
        check(self, None)
    }

    /// The spec in postcard encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Strings, vectors, integers and enums always encode into a growable vector:
        // only a bug in postcard or serde can fail here. An empty encoding is then
        // refused by `from_bytes`, so the project fails visibly instead of the node.
        postcard::to_stdvec(self).unwrap_or_else(|error| {
            tracing::error!(%error, "a project spec failed to encode");
            Vec::new()
        })
    }

    /// Decodes a spec from [`ProjectSpec::to_bytes`] and validates it: the bytes may
    /// come from the network.
    pub fn from_bytes(bytes: &[u8]) -> Result<ProjectSpec, SpecError> {
        // The encoding is never longer than the TOML it was parsed from, which is capped
        // at MAX_SPEC_BYTES; reject more before decoding allocates anything.
        if bytes.len() > MAX_SPEC_BYTES {
            return Err(SpecError::new(
                None,
                format!(
                    "an encoded spec of {} bytes is over the limit of {MAX_SPEC_BYTES}",
                    bytes.len()
                ),
            ));
        }
        let (spec, rest) = postcard::take_from_bytes::<ProjectSpec>(bytes).map_err(|error| {
            SpecError::new(None, format!("the encoded spec does not decode: {error}"))
        })?;
        if !rest.is_empty() {
            return Err(SpecError::new(
                None,
                format!("the encoded spec has {} trailing bytes", rest.len()),
            ));
        }
        check(&spec, None)?;
        Ok(spec)
    }
}

// ---------------------------------------------------------------------------------------
// TOML shape. Every value keeps its span so that later checks can name its line.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    name: Spanned<String>,
    #[serde(default)]
    objectives: Vec<Spanned<String>>,
    budget: Option<Spanned<u64>>,
    #[serde(default, rename = "phase")]
    phases: Vec<RawPhase>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPhase {
    name: Spanned<String>,
    #[serde(default, rename = "task")]
    tasks: Vec<Spanned<RawTask>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTask {
    name: Spanned<String>,
    state: Spanned<String>,
    skill: Option<Spanned<String>>,
    executor: Spanned<String>,
    // builtin
    action: Option<Spanned<String>>,
    // shell
    command: Option<Spanned<String>>,
    workdir: Option<Spanned<String>>,
    cpu_secs: Option<Spanned<u64>>,
    memory_mb: Option<Spanned<u64>>,
    max_output_bytes: Option<Spanned<u64>>,
    // llm
    system: Option<Spanned<String>>,
    max_tokens: Option<Spanned<u32>>,
    input: Option<Spanned<String>>,
    depends_on: Option<Spanned<Vec<Spanned<String>>>>,
    timeout_secs: Option<Spanned<u64>>,
    retries: Option<Spanned<u32>>,
    budget: Option<Spanned<u64>>,
}

/// Byte offsets of a text's newlines, to turn spans into 1-based lines in O(log n): a
/// spec has thousands of spans, and counting newlines from the start for each would be
/// quadratic in the file size.
struct LineIndex {
    newlines: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> LineIndex {
        let newlines = text
            .bytes()
            .enumerate()
            .filter(|(_, byte)| *byte == b'\n')
            .map(|(offset, _)| offset)
            .collect();
        LineIndex { newlines }
    }

    /// The 1-based line holding byte `offset`.
    fn line(&self, offset: usize) -> usize {
        self.newlines.partition_point(|newline| *newline < offset) + 1
    }

    fn of<T>(&self, value: &Spanned<T>) -> usize {
        self.line(value.span().start)
    }

    fn of_optional<T>(&self, value: &Option<Spanned<T>>) -> Option<usize> {
        value.as_ref().map(|value| self.of(value))
    }
}

fn inner<T>(value: Option<Spanned<T>>) -> Option<T> {
    value.map(Spanned::into_inner)
}

/// User text quoted in an error: escaped and cut short, so that an error message stays
/// one bounded line whatever the spec holds.
fn quoted(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(MAX_QUOTED_CHARS)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().nth(MAX_QUOTED_CHARS).is_some() {
        out.push_str("...");
    }
    format!("`{out}`")
}

// ---------------------------------------------------------------------------------------
// Where each value was, for checks that run after conversion.

/// A task's fields, to find their lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Name,
    State,
    Skill,
    Executor,
    Action,
    Command,
    Workdir,
    CpuSecs,
    MemoryMb,
    MaxOutputBytes,
    System,
    MaxTokens,
    Input,
    DependsOn,
    TimeoutSecs,
    Retries,
    Budget,
}

const FIELD_COUNT: usize = Field::Budget as usize + 1;

/// A place in a spec, by position in [`ProjectSpec`]: phase and task indices.
#[derive(Debug, Clone, Copy)]
enum At {
    Nowhere,
    Name,
    Objective(usize),
    Phase(usize),
    Task(usize, usize),
    Field(usize, usize, Field),
    /// The `k`th entry of a task's `depends_on`.
    Dependency(usize, usize, usize),
}

#[derive(Debug)]
struct Lines {
    name: usize,
    objectives: Vec<usize>,
    phases: Vec<PhaseLines>,
}

#[derive(Debug)]
struct PhaseLines {
    name: usize,
    tasks: Vec<TaskLines>,
}

#[derive(Debug)]
struct TaskLines {
    /// The `[[phase.task]]` header: the place of defaulted fields.
    header: usize,
    fields: [Option<usize>; FIELD_COUNT],
    depends_on: Vec<usize>,
}

impl Lines {
    fn task(&self, phase: usize, task: usize) -> Option<&TaskLines> {
        self.phases.get(phase)?.tasks.get(task)
    }

    fn line(&self, at: At) -> Option<usize> {
        match at {
            At::Nowhere => None,
            At::Name => Some(self.name),
            At::Objective(index) => self.objectives.get(index).copied(),
            At::Phase(phase) => self.phases.get(phase).map(|lines| lines.name),
            At::Task(phase, task) => self.task(phase, task).map(|lines| lines.header),
            At::Field(phase, task, field) => self
                .task(phase, task)
                .map(|lines| lines.fields[field as usize].unwrap_or(lines.header)),
            At::Dependency(phase, task, index) => self.task(phase, task).map(|lines| {
                lines
                    .depends_on
                    .get(index)
                    .copied()
                    .or(lines.fields[Field::DependsOn as usize])
                    .unwrap_or(lines.header)
            }),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Conversion: what only text can get wrong (names of phases and executors, settings of
// another executor). Everything else is left to `check`.

fn convert(index: &LineIndex, raw: RawSpec) -> Result<(ProjectSpec, Lines), SpecError> {
    let mut lines = Lines {
        name: index.of(&raw.name),
        objectives: raw
            .objectives
            .iter()
            .map(|objective| index.of(objective))
            .collect(),
        phases: Vec::with_capacity(raw.phases.len()),
    };
    let mut phases = Vec::with_capacity(raw.phases.len());
    for raw_phase in raw.phases {
        let name_line = index.of(&raw_phase.name);
        let Some(phase) = Phase::from_name(raw_phase.name.get_ref()) else {
            let known: Vec<&str> = Phase::ALL.into_iter().map(Phase::as_str).collect();
            return Err(SpecError::new(
                Some(name_line),
                format!(
                    "unknown phase {}; use one of {}",
                    quoted(raw_phase.name.get_ref()),
                    known.join(", ")
                ),
            ));
        };
        let mut tasks = Vec::with_capacity(raw_phase.tasks.len());
        let mut task_lines = Vec::with_capacity(raw_phase.tasks.len());
        for raw_task in raw_phase.tasks {
            let (task, line) = convert_task(index, raw_task)?;
            tasks.push(task);
            task_lines.push(line);
        }
        phases.push(PhaseSpec { phase, tasks });
        lines.phases.push(PhaseLines {
            name: name_line,
            tasks: task_lines,
        });
    }
    let spec = ProjectSpec {
        name: raw.name.into_inner(),
        objectives: raw
            .objectives
            .into_iter()
            .map(Spanned::into_inner)
            .collect(),
        budget: inner(raw.budget).unwrap_or(0),
        phases,
    };
    Ok((spec, lines))
}

fn convert_task(
    index: &LineIndex,
    raw: Spanned<RawTask>,
) -> Result<(TaskSpec, TaskLines), SpecError> {
    let header = index.of(&raw);
    let raw = raw.into_inner();
    let mut fields = [None; FIELD_COUNT];
    fields[Field::Name as usize] = Some(index.of(&raw.name));
    fields[Field::State as usize] = Some(index.of(&raw.state));
    fields[Field::Skill as usize] = index.of_optional(&raw.skill);
    fields[Field::Executor as usize] = Some(index.of(&raw.executor));
    fields[Field::Action as usize] = index.of_optional(&raw.action);
    fields[Field::Command as usize] = index.of_optional(&raw.command);
    fields[Field::Workdir as usize] = index.of_optional(&raw.workdir);
    fields[Field::CpuSecs as usize] = index.of_optional(&raw.cpu_secs);
    fields[Field::MemoryMb as usize] = index.of_optional(&raw.memory_mb);
    fields[Field::MaxOutputBytes as usize] = index.of_optional(&raw.max_output_bytes);
    fields[Field::System as usize] = index.of_optional(&raw.system);
    fields[Field::MaxTokens as usize] = index.of_optional(&raw.max_tokens);
    fields[Field::Input as usize] = index.of_optional(&raw.input);
    fields[Field::DependsOn as usize] = index.of_optional(&raw.depends_on);
    fields[Field::TimeoutSecs as usize] = index.of_optional(&raw.timeout_secs);
    fields[Field::Retries as usize] = index.of_optional(&raw.retries);
    fields[Field::Budget as usize] = index.of_optional(&raw.budget);

    let name = raw.name.into_inner();
    let executor_line = fields[Field::Executor as usize];
    let kind = raw.executor.get_ref().as_str();
    if !["builtin", "shell", "llm"].contains(&kind) {
        return Err(SpecError::new(
            executor_line,
            format!(
                "task {}: unknown executor {}; use \"builtin\", \"shell\" or \"llm\"",
                quoted(&name),
                quoted(kind)
            ),
        ));
    }
    let settings = [
        ("action", "builtin", Field::Action),
        ("command", "shell", Field::Command),
        ("workdir", "shell", Field::Workdir),
        ("cpu_secs", "shell", Field::CpuSecs),
        ("memory_mb", "shell", Field::MemoryMb),
        ("max_output_bytes", "shell", Field::MaxOutputBytes),
        ("system", "llm", Field::System),
        ("max_tokens", "llm", Field::MaxTokens),
    ];
    for (key, owner, field) in settings {
        if owner != kind
            && let Some(line) = fields[field as usize]
        {
            return Err(SpecError::new(
                Some(line),
                format!(
                    "task {}: `{key}` is a setting of {owner} tasks, but this task's executor \
                     is {kind}; remove it or set executor = \"{owner}\"",
                    quoted(&name)
                ),
            ));
        }
    }
    let executor = match kind {
        "builtin" => {
            let Some(action) = inner(raw.action) else {
                return Err(SpecError::new(
                    executor_line,
                    format!(
                        "task {}: a builtin task needs `action`: \"noop\", \"digest\", \
                         \"fail\" or \"sleep:<ms>\"",
                        quoted(&name)
                    ),
                ));
            };
            ExecutorSpec::Builtin { action }
        }
        "shell" => {
            let Some(command) = inner(raw.command) else {
                return Err(SpecError::new(
                    executor_line,
                    format!(
                        "task {}: a shell task needs `command`, run as `sh -c command`",
                        quoted(&name)
                    ),
                ));
            };
            ExecutorSpec::Shell {
                command,
                workdir: inner(raw.workdir),
                cpu_secs: inner(raw.cpu_secs).unwrap_or(DEFAULT_CPU_SECS),
                memory_mb: inner(raw.memory_mb).unwrap_or(DEFAULT_MEMORY_MB),
                max_output_bytes: inner(raw.max_output_bytes).unwrap_or(DEFAULT_MAX_OUTPUT_BYTES),
            }
        }
        // "llm", the only kind left after the check above.
        _ => ExecutorSpec::Llm {
            system: inner(raw.system),
            max_tokens: inner(raw.max_tokens).unwrap_or(DEFAULT_MAX_TOKENS),
        },
    };
    let (depends_on, depends_on_lines) = match raw.depends_on {
        Some(list) => list
            .into_inner()
            .into_iter()
            .map(|entry| {
                let line = index.of(&entry);
                (entry.into_inner(), line)
            })
            .unzip(),
        None => (Vec::new(), Vec::new()),
    };
    let task = TaskSpec {
        name,
        state: raw.state.into_inner(),
        skill: inner(raw.skill),
        executor,
        input: inner(raw.input).unwrap_or_default(),
        depends_on,
        timeout_secs: inner(raw.timeout_secs).unwrap_or(DEFAULT_TIMEOUT_SECS),
        retries: inner(raw.retries).unwrap_or(DEFAULT_RETRIES),
        budget: inner(raw.budget).unwrap_or(0),
    };
    let lines = TaskLines {
        header,
        fields,
        depends_on: depends_on_lines,
    };
    Ok((task, lines))
}

// ---------------------------------------------------------------------------------------
// The rules, for parsed and decoded specs alike.

struct Checker<'a> {
    lines: Option<&'a Lines>,
}

impl Checker<'_> {
    fn fail(&self, at: At, message: String) -> SpecError {
        SpecError::new(self.lines.and_then(|lines| lines.line(at)), message)
    }

    /// Non-empty, at most MAX_NAME_BYTES and, for `slug`, only `[a-z0-9_-]`.
    fn name(&self, at: At, what: &str, value: &str, slug: bool) -> Result<(), SpecError> {
        if value.is_empty() {
            return Err(self.fail(at, format!("{what} is empty")));
        }
        if value.len() > MAX_NAME_BYTES {
            return Err(self.fail(
                at,
                format!(
                    "{what} is {} bytes; the limit is {MAX_NAME_BYTES}",
                    value.len()
                ),
            ));
        }
        let allowed =
            |byte: u8| byte.is_ascii_lowercase() || byte.is_ascii_digit() || b"-_".contains(&byte);
        if slug && !value.bytes().all(allowed) {
            return Err(self.fail(
                at,
                format!(
                    "{what} {} may only hold lowercase letters a-z, digits, `-` and `_`",
                    quoted(value)
                ),
            ));
        }
        Ok(())
    }

    fn range<T: PartialOrd + std::fmt::Display>(
        &self,
        at: At,
        task: &str,
        key: &str,
        value: T,
        range: RangeInclusive<T>,
    ) -> Result<(), SpecError> {
        if !range.contains(&value) {
            return Err(self.fail(
                at,
                format!(
                    "task {}: {key} = {value} is out of range; use {} to {}",
                    quoted(task),
                    range.start(),
                    range.end()
                ),
            ));
        }
        Ok(())
    }

    fn text(
        &self,
        at: At,
        task: &str,
        key: &str,
        value: &str,
        limit: usize,
    ) -> Result<(), SpecError> {
        if value.len() > limit {
            return Err(self.fail(
                at,
                format!(
                    "task {}: {key} is {} bytes; the limit is {limit}",
                    quoted(task),
                    value.len()
                ),
            ));
        }
        Ok(())
    }
}

fn check(spec: &ProjectSpec, lines: Option<&Lines>) -> Result<(), SpecError> {
    let checker = Checker { lines };
    checker.name(At::Name, "the project name", &spec.name, false)?;
    if spec.objectives.len() > MAX_OBJECTIVES {
        return Err(checker.fail(
            At::Objective(MAX_OBJECTIVES),
            format!("more than {MAX_OBJECTIVES} objectives; merge some"),
        ));
    }
    for (index, objective) in spec.objectives.iter().enumerate() {
        if objective.is_empty() || objective.len() > MAX_OBJECTIVE_BYTES {
            return Err(checker.fail(
                At::Objective(index),
                format!(
                    "objective {} is {} bytes; use 1 to {MAX_OBJECTIVE_BYTES}",
                    index + 1,
                    objective.len()
                ),
            ));
        }
    }
    check_phases(&checker, spec)?;
    check_tasks(&checker, spec)?;
    for (phase_index, phase) in spec.phases.iter().enumerate() {
        check_dependencies(&checker, spec, phase_index, phase)?;
    }
    Ok(())
}

fn check_phases(checker: &Checker<'_>, spec: &ProjectSpec) -> Result<(), SpecError> {
    if spec.phases.is_empty() {
        return Err(checker.fail(
            At::Nowhere,
            "the spec has no phases: add a [[phase]] with a name and at least one \
             [[phase.task]]"
                .to_owned(),
        ));
    }
    let mut previous: Option<Phase> = None;
    for (index, phase) in spec.phases.iter().enumerate() {
        let name = phase.phase.as_str();
        if let Some(previous) = previous {
            if phase.phase == previous {
                return Err(checker.fail(
                    At::Phase(index),
                    format!("phase `{name}` is listed twice; list each phase once"),
                ));
            }
            if phase.phase < previous {
                let order: Vec<&str> = Phase::ALL.into_iter().map(Phase::as_str).collect();
                return Err(checker.fail(
                    At::Phase(index),
                    format!(
                        "phase `{name}` is listed after `{}`; list phases in lifecycle \
                         order: {}",
                        previous.as_str(),
                        order.join(", ")
                    ),
                ));
            }
        }
        if phase.tasks.is_empty() {
            return Err(checker.fail(
                At::Phase(index),
                format!("phase `{name}` has no tasks; add a [[phase.task]] or remove the phase"),
            ));
        }
        previous = Some(phase.phase);
    }
    Ok(())
}

fn check_tasks(checker: &Checker<'_>, spec: &ProjectSpec) -> Result<(), SpecError> {
    let mut seen: HashMap<&str, (usize, usize)> = HashMap::new();
    let mut budget_total: u64 = 0;
    for (p, phase) in spec.phases.iter().enumerate() {
        for (t, task) in phase.tasks.iter().enumerate() {
            if seen.len() == MAX_TASKS {
                return Err(checker.fail(
                    At::Task(p, t),
                    format!("the spec has more than {MAX_TASKS} tasks; split the project"),
                ));
            }
            let at = |field| At::Field(p, t, field);
            if let Some((first_phase, first_task)) = seen.insert(&task.name, (p, t)) {
                let first = checker
                    .lines
                    .and_then(|lines| lines.line(At::Field(first_phase, first_task, Field::Name)))
                    .map(|line| format!(" (first on line {line})"))
                    .unwrap_or_default();
                return Err(checker.fail(
                    at(Field::Name),
                    format!(
                        "task name {} is used twice{first}; task names are unique in a project",
                        quoted(&task.name)
                    ),
                ));
            }
            check_task(checker, p, t, task)?;
            budget_total = budget_total.saturating_add(task.budget);
            if budget_total > spec.budget {
                return Err(checker.fail(
                    at(Field::Budget),
                    format!(
                        "task {}: task budgets add up to more than the project budget of {} \
                         here; raise the top-level `budget` or lower the tasks'",
                        quoted(&task.name),
                        spec.budget
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The rules one task obeys on its own (its place in the project aside: unique name,
/// dependencies, budget share).
fn check_task(checker: &Checker<'_>, p: usize, t: usize, task: &TaskSpec) -> Result<(), SpecError> {
    let at = |field| At::Field(p, t, field);
    checker.name(at(Field::Name), "the task name", &task.name, true)?;
    let what = format!("task {}: the state", quoted(&task.name));
    checker.name(at(Field::State), &what, &task.state, true)?;
    if let Some(skill) = &task.skill {
        let what = format!("task {}: the skill", quoted(&task.name));
        checker.name(at(Field::Skill), &what, skill, false)?;
    }
    checker.text(
        at(Field::Input),
        &task.name,
        "input",
        &task.input,
        MAX_INPUT_BYTES,
    )?;
    checker.range(
        at(Field::TimeoutSecs),
        &task.name,
        "timeout_secs",
        task.timeout_secs,
        1..=MAX_TIMEOUT_SECS,
    )?;
    checker.range(
        at(Field::Retries),
        &task.name,
        "retries",
        task.retries,
        0..=MAX_RETRIES,
    )?;
    check_executor(checker, p, t, task)
}

impl TaskSpec {
    /// Checks the rules one task obeys on its own, for a task that arrived in a message
    /// (a worker checks the spec it is asked to run). Errors carry no line.
    pub fn validate(&self) -> Result<(), SpecError> {
        check_task(&Checker { lines: None }, 0, 0, self)
    }
}

fn check_executor(
    checker: &Checker<'_>,
    p: usize,
    t: usize,
    task: &TaskSpec,
) -> Result<(), SpecError> {
    let at = |field| At::Field(p, t, field);
    let name = &task.name;
    match &task.executor {
        ExecutorSpec::Builtin { action } => {
            if BuiltinAction::parse(action).is_none() {
                return Err(checker.fail(
                    at(Field::Action),
                    format!(
                        "task {}: unknown builtin action {}; use \"noop\", \"digest\", \
                         \"fail\" or \"sleep:<ms>\" with ms at most {MAX_SLEEP_MS}",
                        quoted(name),
                        quoted(action)
                    ),
                ));
            }
        }
        ExecutorSpec::Shell {
            command,
            workdir,
            cpu_secs,
            memory_mb,
            max_output_bytes,
        } => {
            if command.trim().is_empty() {
                return Err(checker.fail(
                    at(Field::Command),
                    format!("task {}: the shell command is empty", quoted(name)),
                ));
            }
            checker.text(
                at(Field::Command),
                name,
                "command",
                command,
                MAX_INPUT_BYTES,
            )?;
            if let Some(workdir) = workdir {
                if workdir.is_empty() {
                    return Err(checker.fail(
                        at(Field::Workdir),
                        format!(
                            "task {}: workdir is empty; remove it to use the default",
                            quoted(name)
                        ),
                    ));
                }
                checker.text(
                    at(Field::Workdir),
                    name,
                    "workdir",
                    workdir,
                    MAX_WORKDIR_BYTES,
                )?;
            }
            checker.range(
                at(Field::CpuSecs),
                name,
                "cpu_secs",
                *cpu_secs,
                1..=MAX_CPU_SECS,
            )?;
            checker.range(
                at(Field::MemoryMb),
                name,
                "memory_mb",
                *memory_mb,
                1..=MAX_MEMORY_MB,
            )?;
            checker.range(
                at(Field::MaxOutputBytes),
                name,
                "max_output_bytes",
                *max_output_bytes,
                1..=MAX_OUTPUT_CAP_BYTES,
            )?;
        }
        ExecutorSpec::Llm { system, max_tokens } => {
            if task.input.trim().is_empty() {
                return Err(checker.fail(
                    at(Field::Input),
                    format!(
                        "task {}: an llm task needs a non-empty `input`: it is the prompt",
                        quoted(name)
                    ),
                ));
            }
            if let Some(system) = system {
                checker.text(at(Field::System), name, "system", system, MAX_INPUT_BYTES)?;
            }
            checker.range(
                at(Field::MaxTokens),
                name,
                "max_tokens",
                *max_tokens,
                1..=MAX_LLM_TOKENS,
            )?;
        }
    }
    Ok(())
}

/// Every dependency names another task of the same phase, once, and they form no cycle.
fn check_dependencies(
    checker: &Checker<'_>,
    spec: &ProjectSpec,
    p: usize,
    phase: &PhaseSpec,
) -> Result<(), SpecError> {
    let index: HashMap<&str, usize> = phase
        .tasks
        .iter()
        .enumerate()
        .map(|(t, task)| (task.name.as_str(), t))
        .collect();
    // edges[t][k]: the task that the `k`th entry of task t's depends_on names.
    let mut edges: Vec<Vec<usize>> = Vec::with_capacity(phase.tasks.len());
    // listed_by[target] == t: task t already listed target. O(1) per entry, where a scan
    // of the list would be quadratic in a task's dependencies.
    let mut listed_by = vec![usize::MAX; phase.tasks.len()];
    for (t, task) in phase.tasks.iter().enumerate() {
        let mut targets = Vec::with_capacity(task.depends_on.len());
        for (k, dependency) in task.depends_on.iter().enumerate() {
            let Some(&target) = index.get(dependency.as_str()) else {
                let elsewhere = match spec.task(dependency) {
                    Some((other, _)) => format!(
                        ", it is in phase `{}`; depends_on names only tasks of the same \
                         phase (earlier phases always finish first)",
                        other.as_str()
                    ),
                    None => String::new(),
                };
                return Err(checker.fail(
                    At::Dependency(p, t, k),
                    format!(
                        "task {} depends on {}, which is not a task of phase `{}`{elsewhere}",
                        quoted(&task.name),
                        quoted(dependency),
                        phase.phase.as_str()
                    ),
                ));
            };
            if listed_by[target] == t {
                return Err(checker.fail(
                    At::Dependency(p, t, k),
                    format!(
                        "task {} lists {} twice in depends_on",
                        quoted(&task.name),
                        quoted(dependency)
                    ),
                ));
            }
            listed_by[target] = t;
            targets.push(target);
        }
        edges.push(targets);
    }
    if let Some((t, k, cycle)) = find_cycle(&edges) {
        let names: Vec<&str> = cycle
            .iter()
            .filter_map(|&task| phase.tasks.get(task).map(|task| task.name.as_str()))
            .collect();
        return Err(checker.fail(
            At::Dependency(p, t, k),
            format!(
                "dependency cycle in phase `{}`: {} (`a -> b`: a depends on b); remove one \
                 of these dependencies",
                phase.phase.as_str(),
                names.join(" -> ")
            ),
        ));
    }
    Ok(())
}

/// A cycle in a dependency graph, as `(task, entry, path)`: the `entry`th dependency of
/// `task` closes the cycle, and `path` lists its tasks from the first back to itself.
/// Iterative depth-first search, so that a long chain of 1,000 tasks needs no deep stack.
fn find_cycle(edges: &[Vec<usize>]) -> Option<(usize, usize, Vec<usize>)> {
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Mark {
        Unvisited,
        OnPath,
        Done,
    }
    let mut marks = vec![Mark::Unvisited; edges.len()];
    // (task, how many of its dependencies have been followed)
    let mut path: Vec<(usize, usize)> = Vec::new();
    for start in 0..edges.len() {
        if marks[start] != Mark::Unvisited {
            continue;
        }
        marks[start] = Mark::OnPath;
        path.push((start, 0));
        while let Some((task, followed)) = path.last_mut() {
            let task = *task;
            let Some(&next) = edges[task].get(*followed) else {
                marks[task] = Mark::Done;
                path.pop();
                continue;
            };
            let entry = *followed;
            *followed += 1;
            match marks[next] {
                Mark::Unvisited => {
                    marks[next] = Mark::OnPath;
                    path.push((next, 0));
                }
                Mark::OnPath => {
                    // Marked OnPath means it is on `path`, so `?` never returns here.
                    let from = path.iter().position(|(on_path, _)| *on_path == next)?;
                    let mut cycle: Vec<usize> =
                        path[from..].iter().map(|(on_path, _)| *on_path).collect();
                    cycle.push(next);
                    return Some((task, entry, cycle));
                }
                Mark::Done => {}
            }
        }
    }
    None
}

// ---------------------------------------------------------------------------------------

const TEMPLATE: &str = r#"# AAMAS project spec: the seed's eight phases with builtin tasks.
# Copy it, rename the project, and replace tasks with shell or llm ones as needed.
name = "Example project"
objectives = [
  "Deliver a working service through all eight phases",
  "Keep spending within the project budget",
]
budget = 10000

[[phase]]
name = "initiation"

  [[phase.task]]
  name = "concept-definition"
  state = "technical"
  executor = "builtin"
  action = "digest"
  input = "Define the product concept and the problem it solves"

  [[phase.task]]
  name = "market-opportunity"
  state = "market"
  executor = "builtin"
  action = "digest"
  input = "Describe the target customers and the opportunity"

  [[phase.task]]
  name = "funding-outline"
  state = "financial"
  executor = "builtin"
  action = "digest"
  input = "Outline how the project is funded"
  budget = 200

  [[phase.task]]
  name = "project-charter"
  state = "operations"
  executor = "builtin"
  action = "digest"
  input = "Write the charter: scope, stakeholders, success criteria"
  depends_on = ["concept-definition", "market-opportunity", "funding-outline"]

[[phase]]
name = "feasibility"

  [[phase.task]]
  name = "technical-assessment"
  state = "technical"
  executor = "builtin"
  action = "digest"
  input = "Assess the technology stack and its risks"
  timeout_secs = 30

  [[phase.task]]
  name = "financial-assessment"
  state = "financial"
  executor = "builtin"
  action = "digest"
  input = "Estimate costs, revenue and return on investment"
  timeout_secs = 30
  budget = 300

  [[phase.task]]
  name = "market-assessment"
  state = "market"
  executor = "builtin"
  action = "digest"
  input = "Size the market and map the competition"
  timeout_secs = 30

  [[phase.task]]
  name = "operations-assessment"
  state = "operations"
  executor = "builtin"
  action = "digest"
  input = "Assess staffing, processes and support needs"
  timeout_secs = 30

  [[phase.task]]
  name = "strategic-plan"
  state = "operations"
  executor = "builtin"
  action = "digest"
  input = "Combine the four assessments into a go or no-go plan"
  depends_on = [
    "technical-assessment",
    "financial-assessment",
    "market-assessment",
    "operations-assessment",
  ]

[[phase]]
name = "requirements"

  [[phase.task]]
  name = "business-requirements"
  state = "market"
  executor = "builtin"
  action = "digest"
  input = "Capture the business requirements and user stories"

  [[phase.task]]
  name = "functional-requirements"
  state = "technical"
  executor = "builtin"
  action = "digest"
  input = "Derive functional and non-functional requirements"
  depends_on = ["business-requirements"]

  [[phase.task]]
  name = "cost-model"
  state = "financial"
  executor = "builtin"
  action = "digest"
  input = "Cost the requirements"
  depends_on = ["functional-requirements"]

  [[phase.task]]
  name = "support-requirements"
  state = "operations"
  executor = "builtin"
  action = "digest"
  input = "List support, compliance and service-level requirements"

[[phase]]
name = "design"

  [[phase.task]]
  name = "system-architecture"
  state = "technical"
  executor = "builtin"
  action = "digest"
  input = "Design the system architecture"

  [[phase.task]]
  name = "data-model"
  state = "technical"
  executor = "builtin"
  action = "digest"
  input = "Design the data model"
  depends_on = ["system-architecture"]

  [[phase.task]]
  name = "infrastructure-plan"
  state = "operations"
  executor = "builtin"
  action = "digest"
  input = "Plan hosting, networking and monitoring"
  depends_on = ["system-architecture"]

  [[phase.task]]
  name = "budget-allocation"
  state = "financial"
  executor = "builtin"
  action = "digest"
  input = "Allocate the budget across the build"
  depends_on = ["infrastructure-plan"]

  [[phase.task]]
  name = "user-experience"
  state = "market"
  executor = "builtin"
  action = "digest"
  input = "Design the user journeys"

[[phase]]
name = "development"

  [[phase.task]]
  name = "core-services"
  state = "technical"
  executor = "builtin"
  action = "digest"
  input = "Build the core services"

  [[phase.task]]
  name = "data-layer"
  state = "technical"
  executor = "builtin"
  action = "digest"
  input = "Build the data layer"

  [[phase.task]]
  name = "api-integration"
  state = "technical"
  executor = "builtin"
  action = "digest"
  input = "Integrate the services behind the public API"
  depends_on = ["core-services", "data-layer"]

  [[phase.task]]
  name = "billing-integration"
  state = "financial"
  executor = "builtin"
  action = "digest"
  input = "Integrate billing and payments"
  depends_on = ["api-integration"]
  budget = 1500

  [[phase.task]]
  name = "build-pipeline"
  state = "operations"
  executor = "builtin"
  action = "digest"
  input = "Set up continuous integration and release builds"

  [[phase.task]]
  name = "launch-materials"
  state = "market"
  executor = "builtin"
  action = "digest"
  input = "Prepare documentation and marketing material"

[[phase]]
name = "testing"

  [[phase.task]]
  name = "integration-tests"
  state = "technical"
  executor = "builtin"
  action = "digest"
  input = "Run unit and integration tests"

  [[phase.task]]
  name = "performance-tests"
  state = "technical"
  executor = "builtin"
  action = "digest"
  input = "Run load and performance tests"
  depends_on = ["integration-tests"]

  [[phase.task]]
  name = "user-acceptance"
  state = "market"
  executor = "builtin"
  action = "digest"
  input = "Run user acceptance tests with pilot customers"
  depends_on = ["integration-tests"]

  [[phase.task]]
  name = "cost-review"
  state = "financial"
  executor = "builtin"
  action = "noop"
  input = "Review spending against the plan"

  [[phase.task]]
  name = "runbook-review"
  state = "operations"
  executor = "builtin"
  action = "digest"
  input = "Review runbooks and incident procedures"

[[phase]]
name = "deployment"

  [[phase.task]]
  name = "environment-provisioning"
  state = "operations"
  executor = "builtin"
  action = "digest"
  input = "Provision the production environment"

  [[phase.task]]
  name = "release-rollout"
  state = "technical"
  executor = "builtin"
  action = "digest"
  input = "Roll the release out to production"
  depends_on = ["environment-provisioning"]

  [[phase.task]]
  name = "monitoring-setup"
  state = "operations"
  executor = "builtin"
  action = "digest"
  input = "Set up monitoring and alerting"
  depends_on = ["environment-provisioning"]

  [[phase.task]]
  name = "deployment-cost-check"
  state = "financial"
  executor = "builtin"
  action = "noop"
  input = "Check running costs after deployment"

  [[phase.task]]
  name = "release-notes"
  state = "market"
  executor = "builtin"
  action = "digest"
  input = "Publish the release notes"

[[phase]]
name = "launch"

  [[phase.task]]
  name = "go-to-market"
  state = "market"
  executor = "builtin"
  action = "digest"
  input = "Announce the launch and start the campaign"

  [[phase.task]]
  name = "customer-onboarding"
  state = "operations"
  executor = "builtin"
  action = "digest"
  input = "Onboard the first customers"
  depends_on = ["go-to-market"]

  [[phase.task]]
  name = "revenue-tracking"
  state = "financial"
  executor = "builtin"
  action = "digest"
  input = "Start tracking revenue against the forecast"

  [[phase.task]]
  name = "launch-review"
  state = "technical"
  executor = "builtin"
  action = "digest"
  input = "Review the launch and hand over to operations"
  depends_on = ["customer-onboarding", "revenue-tracking"]
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HEAD: &str = "name = \"Payments\"\nbudget = 100\n[[phase]]\nname = \"design\"\n";

    /// A spec with one design phase holding `tasks` (TOML text of [[phase.task]]s).
    fn design(tasks: &str) -> String {
        format!("{HEAD}{tasks}")
    }

    fn task(name: &str, extra: &str) -> String {
        format!(
            "  [[phase.task]]\n  name = \"{name}\"\n  state = \"technical\"\n  \
             executor = \"builtin\"\n  action = \"noop\"\n{extra}"
        )
    }

    fn rejected(text: &str) -> SpecError {
        match parse(text) {
            Ok(spec) => panic!("accepted a bad spec: {spec:?}\n{text}"),
            Err(error) => error,
        }
    }

    /// The 1-based line of the first line of `text` that holds `needle`.
    fn line_of(text: &str, needle: &str) -> usize {
        text.lines()
            .position(|line| line.contains(needle))
            .map(|index| index + 1)
            .expect("the needle is in the text")
    }

    /// The 1-based line of the last line of `text` that holds `needle`.
    fn last_line_of(text: &str, needle: &str) -> usize {
        text.lines()
            .enumerate()
            .filter(|(_, line)| line.contains(needle))
            .map(|(index, _)| index + 1)
            .last()
            .expect("the needle is in the text")
    }

    /// Asserts that `text` is rejected on the line holding `needle`, with a message
    /// that holds `says`.
    fn assert_rejected_at(text: &str, needle: &str, says: &str) -> SpecError {
        let error = rejected(text);
        assert_eq!(error.line, Some(line_of(text, needle)), "{error}\n{text}");
        assert!(error.message.contains(says), "{error:?} lacks {says:?}");
        assert!(error.to_string().starts_with("line "), "{error}");
        error
    }

    #[test]
    fn template_parses_and_round_trips() {
        let spec = parse(template()).expect("the template parses");
        assert_eq!(spec.validate(), Ok(()));
        let bytes = spec.to_bytes();
        assert_eq!(ProjectSpec::from_bytes(&bytes), Ok(spec.clone()));
        assert_eq!(
            bytes,
            ProjectSpec::from_bytes(&bytes).expect("decodes").to_bytes()
        );
        assert!(bytes.len() < template().len());
    }

    #[test]
    fn template_has_the_seeds_eight_phases_with_builtin_tasks_per_state() {
        let spec = parse(template()).expect("the template parses");
        let phases: Vec<Phase> = spec.phases.iter().map(|phase| phase.phase).collect();
        assert_eq!(phases, Phase::ALL);
        let states = ["technical", "financial", "market", "operations"];
        for phase in &spec.phases {
            assert!((2..=6).contains(&phase.tasks.len()), "{:?}", phase.phase);
            for state in states {
                assert!(
                    phase.tasks.iter().any(|task| task.state == state),
                    "{:?} has no {state} task",
                    phase.phase
                );
            }
            for task in &phase.tasks {
                assert!(states.contains(&task.state.as_str()), "{}", task.name);
                match &task.executor {
                    ExecutorSpec::Builtin { action } => {
                        assert!(action == "digest" || action == "noop", "{}", task.name)
                    }
                    other => panic!("{} runs on {}", task.name, other.kind()),
                }
            }
        }
        let feasibility = spec.phase(Phase::Feasibility).expect("feasibility");
        for state in states {
            let name = format!("{state}-assessment");
            let (phase, task) = spec.task(&name).expect("one assessment per state");
            assert_eq!((phase, task.state.as_str()), (Phase::Feasibility, state));
            assert!(feasibility.tasks.contains(task));
        }
        let development = spec.phase(Phase::Development).expect("development");
        assert!(development.tasks.len() >= 5);
        let with_dependencies = spec
            .phases
            .iter()
            .flat_map(|phase| &phase.tasks)
            .filter(|task| !task.depends_on.is_empty())
            .count();
        assert!(with_dependencies >= 8);
        assert_eq!(spec.task_count(), 38);
    }

    #[test]
    fn defaults_fill_what_the_spec_leaves_out() {
        let text = design(&format!(
            "{}{}{}",
            task("plain", ""),
            "  [[phase.task]]\n  name = \"build\"\n  state = \"technical\"\n  \
             executor = \"shell\"\n  command = \"cargo build\"\n",
            "  [[phase.task]]\n  name = \"ask\"\n  state = \"market\"\n  \
             executor = \"llm\"\n  input = \"Name three competitors\"\n  skill = \"research\"\n",
        ));
        let spec = parse(&text).expect("parses");
        assert_eq!(spec.name, "Payments");
        assert!(spec.objectives.is_empty());
        assert_eq!(spec.budget, 100);
        assert_eq!(spec.phase(Phase::Initiation), None);
        let (phase, plain) = spec.task("plain").expect("plain");
        assert_eq!(phase, Phase::Design);
        assert_eq!(
            *plain,
            TaskSpec {
                name: "plain".to_owned(),
                state: "technical".to_owned(),
                skill: None,
                executor: ExecutorSpec::Builtin {
                    action: "noop".to_owned()
                },
                input: String::new(),
                depends_on: Vec::new(),
                timeout_secs: DEFAULT_TIMEOUT_SECS,
                retries: DEFAULT_RETRIES,
                budget: 0,
            }
        );
        assert_eq!(
            spec.task("build").expect("build").1.executor,
            ExecutorSpec::Shell {
                command: "cargo build".to_owned(),
                workdir: None,
                cpu_secs: 60,
                memory_mb: 512,
                max_output_bytes: 65_536,
            }
        );
        let ask = spec.task("ask").expect("ask").1;
        assert_eq!(
            ask.executor,
            ExecutorSpec::Llm {
                system: None,
                max_tokens: 512
            }
        );
        assert_eq!(ask.skill.as_deref(), Some("research"));
        assert_eq!(spec.task_count(), 3);
    }

    #[test]
    fn every_setting_is_read() {
        let text = r#"
name = "Full"
objectives = ["one", "two"]
budget = 50
[[phase]]
name = "testing"
  [[phase.task]]
  name = "unit"
  state = "technical"
  skill = "rust"
  executor = "shell"
  command = "cargo test"
  workdir = "service"
  cpu_secs = 120
  memory_mb = 2048
  max_output_bytes = 1000
  input = "stdin"
  timeout_secs = 600
  retries = 0
  budget = 20
  [[phase.task]]
  name = "review"
  state = "market"
  executor = "llm"
  system = "You review test reports."
  max_tokens = 1024
  input = "Summarise the unit test report"
  depends_on = ["unit"]
  budget = 30
"#;
        let spec = parse(text).expect("parses");
        assert_eq!(spec.objectives, ["one", "two"]);
        let unit = spec.task("unit").expect("unit").1;
        assert_eq!(
            unit.executor,
            ExecutorSpec::Shell {
                command: "cargo test".to_owned(),
                workdir: Some("service".to_owned()),
                cpu_secs: 120,
                memory_mb: 2048,
                max_output_bytes: 1000,
            }
        );
        assert_eq!((unit.timeout_secs, unit.retries, unit.budget), (600, 0, 20));
        let review = spec.task("review").expect("review").1;
        assert_eq!(review.depends_on, ["unit"]);
        assert_eq!(
            review.executor,
            ExecutorSpec::Llm {
                system: Some("You review test reports.".to_owned()),
                max_tokens: 1024
            }
        );
        assert_eq!(ProjectSpec::from_bytes(&spec.to_bytes()), Ok(spec));
    }

    #[test]
    fn a_syntax_error_names_its_line() {
        let text = design(&task("a", "  retries = [1,\n"));
        let error = rejected(&text);
        assert!(error.line >= Some(line_of(&text, "retries")), "{error}");
        let text = "name = \"x\"\n[[phase]\nname = \"design\"\n";
        assert_eq!(rejected(text).line, Some(2));
        let text = "name = \"x\"\nname = \"y\"\n";
        assert_eq!(rejected(text).line, Some(2));
    }

    #[test]
    fn an_unknown_key_names_its_line() {
        let text = design(&task("a", "  comand = \"make\"\n"));
        assert_rejected_at(&text, "comand", "unknown field `comand`");
        let text = format!("owner = \"me\"\n{}", design(&task("a", "")));
        assert_rejected_at(&text, "owner", "unknown field `owner`");
        let text = format!("{HEAD}description = \"x\"\n{}", task("a", ""));
        assert_rejected_at(&text, "description", "unknown field");
    }

    #[test]
    fn a_wrong_type_names_its_line() {
        let text = design(&task("a", "  timeout_secs = \"thirty\"\n"));
        assert_rejected_at(&text, "thirty", "invalid type");
        let text = design(&task("a", "  depends_on = \"b\"\n"));
        assert_rejected_at(&text, "depends_on", "invalid type");
        let text = design(&task("a", "  retries = -1\n"));
        assert_rejected_at(&text, "retries", "-1");
        let text = design(&task("a", "  retries = 4294967296\n"));
        assert_rejected_at(&text, "retries", "4294967296");
    }

    #[test]
    fn a_missing_field_names_its_table() {
        let text = design("  [[phase.task]]\n  name = \"a\"\n  executor = \"builtin\"\n");
        assert_rejected_at(&text, "[[phase.task]]", "missing field `state`");
        let text = "budget = 3\n";
        assert_eq!(rejected(text).message, "missing field `name`");
    }

    #[test]
    fn an_unknown_phase_names_its_line() {
        let text = format!(
            "name = \"p\"\n[[phase]]\nname = \"Design\"\n{}",
            task("a", "")
        );
        let error = assert_rejected_at(&text, "Design", "unknown phase `Design`");
        assert!(error.message.contains("initiation, feasibility"), "{error}");
    }

    #[test]
    fn an_unknown_executor_names_its_line() {
        let text = design(
            "  [[phase.task]]\n  name = \"a\"\n  state = \"technical\"\n  executor = \"docker\"\n",
        );
        assert_rejected_at(&text, "docker", "unknown executor `docker`");
    }

    #[test]
    fn a_setting_of_another_executor_names_its_line() {
        let text = design(&task("a", "  command = \"make\"\n"));
        assert_rejected_at(&text, "command", "`command` is a setting of shell tasks");
        let text = design(&task("a", "  max_tokens = 10\n"));
        assert_rejected_at(&text, "max_tokens", "setting of llm tasks");
        let shell = "  [[phase.task]]\n  name = \"s\"\n  state = \"technical\"\n  \
                     executor = \"shell\"\n  command = \"make\"\n";
        let text = design(&format!("{shell}  action = \"noop\"\n"));
        assert_rejected_at(&text, "action", "setting of builtin tasks");
        let text = design(&format!("{shell}  system = \"hi\"\n"));
        assert_rejected_at(&text, "system", "setting of llm tasks");
    }

    #[test]
    fn an_executor_without_its_required_setting_is_rejected() {
        let text = design(
            "  [[phase.task]]\n  name = \"a\"\n  state = \"technical\"\n  executor = \"builtin\"\n",
        );
        assert_rejected_at(&text, "executor", "needs `action`");
        let text = design(
            "  [[phase.task]]\n  name = \"a\"\n  state = \"technical\"\n  executor = \"shell\"\n",
        );
        assert_rejected_at(&text, "executor", "needs `command`");
        let text = design(
            "  [[phase.task]]\n  name = \"a\"\n  state = \"market\"\n  executor = \"llm\"\n",
        );
        assert_rejected_at(&text, "[[phase.task]]", "non-empty `input`");
        let text = design(
            "  [[phase.task]]\n  name = \"a\"\n  state = \"technical\"\n  executor = \"shell\"\n  command = \"  \"\n",
        );
        assert_rejected_at(&text, "command", "command is empty");
    }

    #[test]
    fn builtin_actions_follow_their_grammar() {
        assert_eq!(BuiltinAction::parse("noop"), Some(BuiltinAction::Noop));
        assert_eq!(BuiltinAction::parse("digest"), Some(BuiltinAction::Digest));
        assert_eq!(BuiltinAction::parse("fail"), Some(BuiltinAction::Fail));
        assert_eq!(
            BuiltinAction::parse("sleep:0"),
            Some(BuiltinAction::Sleep { ms: 0 })
        );
        assert_eq!(
            BuiltinAction::parse("sleep:60000"),
            Some(BuiltinAction::Sleep { ms: 60_000 })
        );
        for bad in [
            "",
            "Noop",
            "sleep",
            "sleep:",
            "sleep:+5",
            "sleep:-1",
            "sleep:60001",
            "sleep: 5",
            "sleep:99999999999999999999",
        ] {
            assert_eq!(BuiltinAction::parse(bad), None, "{bad}");
        }
        let text = design(
            "  [[phase.task]]\n  name = \"a\"\n  state = \"technical\"\n  executor = \"builtin\"\n  action = \"sleep:90000\"\n",
        );
        assert_rejected_at(&text, "sleep:90000", "unknown builtin action `sleep:90000`");
    }

    #[test]
    fn a_duplicate_task_name_names_both_lines() {
        let text = design(&format!("{}{}", task("same", ""), task("same", "")));
        let error = rejected(&text);
        let first = line_of(&text, "\"same\"");
        assert!(error.line > Some(first), "{error}");
        assert!(
            error.message.contains(&format!("first on line {first}")),
            "{error}"
        );
        // Across phases too.
        let text = format!(
            "name = \"p\"\n[[phase]]\nname = \"design\"\n{}[[phase]]\nname = \"testing\"\n{}",
            task("same", ""),
            task("same", "")
        );
        let error = rejected(&text);
        assert_eq!(error.line, Some(last_line_of(&text, "\"same\"")), "{error}");
        assert!(error.message.contains("used twice"), "{error}");
    }

    #[test]
    fn a_dependency_on_an_unknown_task_names_its_line() {
        let text = design(&format!(
            "{}{}",
            task("a", ""),
            task("b", "  depends_on = [\n    \"a\",\n    \"ghost\",\n  ]\n")
        ));
        assert_rejected_at(
            &text,
            "ghost",
            "depends on `ghost`, which is not a task of phase `design`",
        );
        let text = design(&task("a", "  depends_on = [\"a\", \"a\"]\n"));
        let error = rejected(&text);
        assert!(error.message.contains("twice"), "{error}");
    }

    #[test]
    fn a_dependency_on_another_phase_says_where_it_is() {
        let text = format!(
            "name = \"p\"\n[[phase]]\nname = \"design\"\n{}[[phase]]\nname = \"testing\"\n{}",
            task("plan", ""),
            task("check", "  depends_on = [\"plan\"]\n")
        );
        assert_rejected_at(&text, "depends_on", "it is in phase `design`");
    }

    #[test]
    fn a_dependency_cycle_names_its_tasks_and_line() {
        let text = design(&format!(
            "{}{}{}{}",
            task("a", "  depends_on = [\"b\"]\n"),
            task("b", "  depends_on = [\"c\"]\n"),
            task("c", "  depends_on = [\"d\", \"a\"]\n"),
            task("d", ""),
        ));
        let error = assert_rejected_at(&text, "[\"d\", \"a\"]", "dependency cycle");
        assert!(error.message.contains("a -> b -> c -> a"), "{error}");
        let text = design(&task("selfish", "  depends_on = [\"selfish\"]\n"));
        let error = assert_rejected_at(&text, "depends_on", "cycle");
        assert!(error.message.contains("selfish -> selfish"), "{error}");
    }

    #[test]
    fn out_of_range_numbers_name_their_line() {
        for bad in ["timeout_secs = 0", "timeout_secs = 86401"] {
            let text = design(&task("a", &format!("  {bad}\n")));
            assert_rejected_at(&text, "timeout_secs", "timeout_secs");
            let error = rejected(&text);
            assert!(error.message.contains("use 1 to 86400"), "{error}");
        }
        let text = design(&task("a", "  retries = 11\n"));
        assert_rejected_at(
            &text,
            "retries",
            "retries = 11 is out of range; use 0 to 10",
        );
        let shell = "  [[phase.task]]\n  name = \"s\"\n  state = \"technical\"\n  \
                     executor = \"shell\"\n  command = \"make\"\n";
        for key in ["cpu_secs", "memory_mb", "max_output_bytes"] {
            let text = design(&format!("{shell}  {key} = 0\n"));
            assert_rejected_at(&text, key, "out of range");
        }
        let text = design(
            "  [[phase.task]]\n  name = \"a\"\n  state = \"market\"\n  executor = \"llm\"\n  input = \"q\"\n  max_tokens = 0\n",
        );
        assert_rejected_at(&text, "max_tokens", "out of range");
        assert!(
            parse(&design(&task(
                "a",
                "  timeout_secs = 86400\n  retries = 10\n"
            )))
            .is_ok()
        );
    }

    #[test]
    fn task_budgets_fit_in_the_project_budget() {
        let text = design(&format!(
            "{}{}",
            task("a", "  budget = 60\n"),
            task("b", "  budget = 41\n")
        ));
        assert_rejected_at(&text, "budget = 41", "more than the project budget of 100");
        let text = design(&format!(
            "{}{}",
            task("a", "  budget = 60\n"),
            task("b", "  budget = 40\n")
        ));
        assert!(parse(&text).is_ok());
    }

    #[test]
    fn phases_come_once_each_in_lifecycle_order() {
        let two = |first: &str, second: &str| {
            format!(
                "name = \"p\"\n[[phase]]\nname = \"{first}\"\n{}[[phase]]\nname = \"{second}\"\n{}",
                task("a", ""),
                task("b", "")
            )
        };
        let text = two("development", "design");
        let error = rejected(&text);
        assert_eq!(error.line, Some(line_of(&text, "\"design\"")), "{error}");
        assert!(
            error.message.contains("listed after `development`"),
            "{error}"
        );
        let text = two("design", "design");
        let error = rejected(&text);
        assert_eq!(
            error.line,
            Some(last_line_of(&text, "\"design\"")),
            "{error}"
        );
        assert!(error.message.contains("listed twice"), "{error}");
        assert!(parse(&two("initiation", "launch")).is_ok());
    }

    #[test]
    fn a_spec_needs_a_phase_and_every_phase_a_task() {
        let error = rejected("name = \"p\"\n");
        assert_eq!(error.line, None);
        assert!(error.message.contains("no phases"), "{error}");
        assert!(!error.to_string().starts_with("line"), "{error}");
        let text = format!("{HEAD}[[phase]]\nname = \"testing\"\n{}", task("a", ""));
        assert_rejected_at(&text, "\"design\"", "phase `design` has no tasks");
    }

    #[test]
    fn names_are_checked() {
        let text = design(&task("Build", ""));
        assert_rejected_at(&text, "Build", "lowercase letters");
        let text = design(&task("", ""));
        assert_rejected_at(&text, "name = \"\"", "the task name is empty");
        let text = design(&task("a", "").replace("technical", "tech nical"));
        assert_rejected_at(&text, "tech nical", "the state");
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        let text = design(&task(&long, ""));
        assert_rejected_at(&text, &long, "257 bytes; the limit is 256");
        let text = design(&task("a", "  skill = \"\"\n"));
        assert_rejected_at(&text, "skill", "the skill is empty");
        let text = format!(
            "name = \"\"\n{}",
            &design(&task("a", ""))[HEAD.find('\n').expect("newline") + 1..]
        );
        assert_rejected_at(&text, "name = \"\"", "the project name is empty");
        // Any characters are fine in a project name or a skill.
        let text =
            design(&task("a", "  skill = \"Rust & C++\"\n")).replace("Payments", "Paiements été");
        assert!(parse(&text).is_ok());
        let text = format!("objectives = [\"\"]\n{}", design(&task("a", "")));
        assert_rejected_at(&text, "objectives", "objective 1");
    }

    #[test]
    fn sizes_are_bounded() {
        let text = design(&task(
            "a",
            &format!("  input = \"{}\"\n", "i".repeat(MAX_INPUT_BYTES + 1)),
        ));
        assert_rejected_at(&text, "input", "input is 65537 bytes");
        let text = design(&task(
            "a",
            &format!("  input = \"{}\"\n", "i".repeat(MAX_INPUT_BYTES)),
        ));
        assert!(parse(&text).is_ok());

        let mut text = design(&task("a", ""));
        text.push_str(&format!("# {}\n", "-".repeat(MAX_SPEC_BYTES)));
        let error = rejected(&text);
        assert_eq!(error.line, None);
        assert!(error.message.contains("limit is 1048576"), "{error}");

        let mut tasks = String::new();
        for index in 0..MAX_TASKS {
            tasks.push_str(&task(&format!("t{index}"), ""));
        }
        let spec = parse(&design(&tasks)).expect("1000 tasks are fine");
        assert_eq!(spec.task_count(), MAX_TASKS);
        tasks.push_str(&task("one-too-many", ""));
        let text = design(&tasks);
        let error = rejected(&text);
        assert_eq!(
            error.line,
            Some(line_of(&text, "one-too-many") - 1),
            "{error}"
        );
        assert!(error.message.contains("more than 1000 tasks"), "{error}");
    }

    #[test]
    fn a_long_dependency_chain_is_checked_without_recursion() {
        let mut tasks = task("t0", "");
        for index in 1..MAX_TASKS {
            tasks.push_str(&task(
                &format!("t{index}"),
                &format!("  depends_on = [\"t{}\"]\n", index - 1),
            ));
        }
        assert!(parse(&design(&tasks)).is_ok());
        let tasks = tasks.replacen(
            "name = \"t0\"\n  state = \"technical\"\n  executor = \"builtin\"\n  action = \"noop\"\n",
            "name = \"t0\"\n  state = \"technical\"\n  executor = \"builtin\"\n  action = \"noop\"\n  depends_on = [\"t999\"]\n",
            1,
        );
        let error = rejected(&design(&tasks));
        assert!(
            error.message.contains("t0 -> t999 -> t998"),
            "{}",
            &error.message[..200]
        );
    }

    #[test]
    fn quoted_text_in_errors_is_short_and_escaped() {
        let text = design(&task(&format!("bad\\n{}", "y".repeat(300)), ""));
        let error = rejected(&text);
        assert!(error.message.len() < 200, "{error}");
        let text = format!(
            "name = \"p\"\n[[phase]]\nname = \"de\\nsign\"\n{}",
            task("a", "")
        );
        let error = rejected(&text);
        assert!(error.message.contains("`de\\nsign`"), "{error}");
    }

    #[test]
    fn errors_display_their_line() {
        let error = SpecError {
            line: Some(7),
            message: "bad".to_owned(),
        };
        assert_eq!(error.to_string(), "line 7: bad");
        let error = SpecError {
            line: None,
            message: "bad".to_owned(),
        };
        assert_eq!(error.to_string(), "bad");
    }

    #[test]
    fn from_bytes_rejects_bad_bytes() {
        let spec = parse(template()).expect("the template parses");
        let bytes = spec.to_bytes();
        assert!(ProjectSpec::from_bytes(&[]).is_err());
        assert!(ProjectSpec::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        let mut trailing = bytes.clone();
        trailing.push(0);
        let error = ProjectSpec::from_bytes(&trailing).expect_err("trailing byte");
        assert!(error.message.contains("1 trailing"), "{error}");
        let error = ProjectSpec::from_bytes(&vec![0; MAX_SPEC_BYTES + 1]).expect_err("oversized");
        assert!(error.message.contains("over the limit"), "{error}");
        // A huge length prefix must not allocate.
        assert!(ProjectSpec::from_bytes(&[0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
    }

    #[test]
    fn from_bytes_and_validate_enforce_the_rules() {
        let mut spec = parse(template()).expect("the template parses");
        let development = spec
            .phases
            .iter_mut()
            .find(|phase| phase.phase == Phase::Development)
            .expect("development");
        let first = development.tasks[0].name.clone();
        let second = development.tasks[1].name.clone();
        development.tasks[0].depends_on.push(second);
        development.tasks[1].depends_on.push(first);
        let error = spec.validate().expect_err("a cycle");
        assert_eq!(error.line, None);
        assert!(error.message.contains("dependency cycle"), "{error}");
        assert_eq!(ProjectSpec::from_bytes(&spec.to_bytes()), Err(error));

        let mut spec = parse(template()).expect("the template parses");
        spec.phases.swap(0, 1);
        let error = ProjectSpec::from_bytes(&spec.to_bytes()).expect_err("out of order");
        assert!(error.message.contains("lifecycle order"), "{error}");

        let mut spec = parse(template()).expect("the template parses");
        spec.phases[0].tasks[0].executor = ExecutorSpec::Builtin {
            action: "explode".to_owned(),
        };
        assert!(spec.validate().is_err());
        spec.phases[0].tasks[0].executor = ExecutorSpec::Shell {
            command: "true".to_owned(),
            workdir: Some(String::new()),
            cpu_secs: 1,
            memory_mb: 1,
            max_output_bytes: 1,
        };
        assert!(
            spec.validate()
                .expect_err("empty workdir")
                .message
                .contains("workdir")
        );
    }

    /// Small edits of the template: mostly invalid specs that get past the TOML parser.
    fn edited_template() -> impl Strategy<Value = String> {
        let edits = prop::collection::vec(
            (any::<prop::sample::Index>(), 0..4usize, "[ -~\n]{0,4}"),
            1..4,
        );
        edits.prop_map(|edits| {
            let mut text: Vec<char> = template().chars().collect();
            for (at, delete, insert) in edits {
                let start = at.index(text.len());
                let end = (start + delete).min(text.len());
                text.splice(start..end, insert.chars());
            }
            text.into_iter().collect()
        })
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_arbitrary_text(text in "\\PC{0,400}") {
            let _ = parse(&text);
        }

        #[test]
        fn parse_never_panics_on_tomlish_text(text in "[a-z_\\[\\]=\"\\.\\n {},0-9-]{0,300}") {
            let _ = parse(&text);
        }

        #[test]
        fn edited_templates_parse_or_fail_with_a_line(text in edited_template()) {
            match parse(&text) {
                Ok(spec) => prop_assert_eq!(ProjectSpec::from_bytes(&spec.to_bytes()), Ok(spec)),
                Err(error) => {
                    let lines = text.lines().count().max(1);
                    if let Some(line) = error.line {
                        prop_assert!((1..=lines + 1).contains(&line), "{} of {}", error, lines);
                    }
                }
            }
        }

        #[test]
        fn line_index_counts_newlines(text in "[a\n]{0,64}", offset in 0..80usize) {
            let counted = text.bytes().take(offset).filter(|byte| *byte == b'\n').count() + 1;
            prop_assert_eq!(LineIndex::new(&text).line(offset), counted);
        }

        #[test]
        fn from_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = ProjectSpec::from_bytes(&bytes);
        }

        #[test]
        fn edited_encodings_never_panic(at in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let mut bytes = parse(template()).map_err(|error| TestCaseError::fail(error.to_string()))?.to_bytes();
            let index = at.index(bytes.len());
            bytes[index] = byte;
            if let Ok(spec) = ProjectSpec::from_bytes(&bytes) {
                prop_assert_eq!(spec.validate(), Ok(()));
            }
        }
    }
}
