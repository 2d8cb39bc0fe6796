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
//! The code is in three files, one question each:
//!
//! - this file: what a spec is — the types, the limits, [`SpecError`], the byte
//!   encoding, and `Lines`, where each value was in the text (built by `parse`, read
//!   by `check`);
//! - `parse.rs`: how text becomes a spec — the TOML shape, conversion, defaults, line
//!   numbers, and the template;
//! - `check.rs`: what makes a spec valid — names, states, executors, limits, dependency
//!   cycles, and the `validate` methods.
//!
//! # Format
//!
//! ```toml
//! name = "Payments service"
//! objectives = ["Take card payments", "Settle daily"]
//! budget = 10000                      # optional, default 0
//!
//! [prompts]                           # optional role prompts of llm workers, by skill
//! technical = "You are a senior..."   # or state; a task's own `system` comes first
//!
//! [[phase]]
//! name = "feasibility"                # lowercase phase name, phases in lifecycle order
//! gate = ["llm", "human"]             # optional: "llm", "human" or both, in that order
//! acceptance = ["..."]                # what an llm gate judges the phase's outputs by
//! review_rounds = 2                   # llm gate: rounds before the phase fails, 1..=5
//! reviewer = "technical"              # llm gate: the state that reviews (default: the
//!                                     # first task's)
//!
//!   [[phase.task]]
//!   name = "technical-assessment"     # [a-z0-9_-], unique in the project
//!   state = "technical"               # [a-z0-9_-]: the state (domain of work) that runs it
//!   skill = "rust"                    # optional: a worker skill preferred for it
//!   executor = "builtin"              # "builtin", "shell" or "llm"
//!   action = "digest"                 # builtin: noop, digest, fail, sleep:<ms>
//!   # command = "cargo test"          # shell: command (required), workdir, cpu_secs,
//!   #                                 #        memory_mb, max_output_bytes
//!   # system = "You are..."           # llm: system, max_tokens, context (names of
//!   #                                 # tasks whose outputs precede the input)
//!   input = "Assess the stack"        # free text handed to the executor
//!   depends_on = []                   # tasks of the same phase that must complete first
//!   timeout_secs = 30                 # default 60, 1..=86400
//!   retries = 2                       # default 2, 0..=10
//!   budget = 0                        # default 0; all task budgets add up to at most
//!                                     # the project budget
//! ```
//!
//! An llm gate runs a review task (`gate-review-<phase>-<round>`) once every task of the
//! phase succeeded; a rejection sends the tasks it names back with the reviewer's
//! feedback (as `<task>--r<round>`), for at most `review_rounds` rounds. A human gate
//! then holds the project in `awaiting-approval` until `aamas project approve|reject`.
//! Task names holding `--` or starting with `gate-` are reserved for these.
//!
//! Unknown keys are errors, and so is a setting of another executor (`command` on a
//! builtin task). Only the phases listed run; each listed phase needs at least one task.
//!
//! Phases are named as `aamas_protocol::Phase::as_str` names them.

use std::collections::BTreeMap;

use aamas_protocol::Phase;
use serde::{Deserialize, Serialize};

mod check;
mod parse;

use check::check;
pub use check::check_plan;
pub(crate) use parse::LineIndex;
pub use parse::{parse, parse_plan, template};

/// Largest spec file accepted, checked before parsing.
pub const MAX_SPEC_BYTES: usize = 1024 * 1024;
/// Largest project, task, state or skill name.
pub const MAX_NAME_BYTES: usize = 256;
/// Longest task name a spec may give (gates add `--r<round>` to it).
pub const MAX_TASK_NAME_BYTES: usize = MAX_NAME_BYTES - 16;
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
/// `{{ outputs.NAME }}` in a task's input: the output of task NAME, put in its place
/// before the executor runs (spaces inside the braces are optional). Returns each
/// reference as (its byte range in `input`, NAME), in order. Text that only looks like
/// one (`{{ outputs. }}`, `{{ output.x }}`) is left alone.
pub fn output_refs(input: &str) -> Vec<(std::ops::Range<usize>, &str)> {
    let mut refs = Vec::new();
    let mut from = 0;
    while let Some(open) = input[from..].find("{{").map(|i| from + i) {
        let Some(close) = input[open..].find("}}").map(|i| open + i) else {
            break;
        };
        let inner = input[open + 2..close].trim();
        match inner.strip_prefix("outputs.") {
            Some(name)
                if !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) =>
            {
                refs.push((open..close + 2, name));
                from = close + 2;
            }
            _ => from = open + 2,
        }
    }
    refs
}

/// `input` with each `{{ outputs.NAME }}` replaced by `output(NAME)`.
pub fn fill_outputs<E>(
    input: &str,
    mut output: impl FnMut(&str) -> Result<String, E>,
) -> Result<String, E> {
    let mut filled = String::with_capacity(input.len());
    let mut last = 0;
    for (range, name) in output_refs(input) {
        filled.push_str(&input[last..range.start]);
        filled.push_str(&output(name)?);
        last = range.end;
    }
    filled.push_str(&input[last..]);
    Ok(filled)
}

/// Largest shell memory limit.
pub const MAX_MEMORY_MB: u64 = 64 * 1024;
/// Shell output cap when the spec does not give one: the nodes' default artefact cap
/// (`aamas node --max-artifact-bytes`), so that a larger output fails its task with the
/// reason rather than being cut short without one.
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 4 * 1024 * 1024;
/// Largest shell output cap a spec may give (the shell executor's own limit); the node
/// that runs the task still fails an output over its artefact cap.
pub const MAX_OUTPUT_CAP_BYTES: u64 = 16 * 1024 * 1024;
/// Most tasks an llm task reads as context.
pub const MAX_CONTEXT_TASKS: usize = 16;
/// The skill a node with a valid LLM endpoint adds to its own when it joins: mayors give
/// `llm` tasks that name no skill to such workers first.
pub const LLM_SKILL: &str = "llm";
/// The skill a node that runs shell tasks (`--executors ...,shell`) adds to its own:
/// mayors give shell tasks only to such workers. A node never takes it from `--skills`.
pub const SHELL_SKILL: &str = "shell";
/// Most role prompts in one spec.
pub const MAX_PROMPTS: usize = 64;
/// Review rounds of an llm gate when the spec does not give them.
pub const DEFAULT_REVIEW_ROUNDS: u32 = 2;
/// Most review rounds of an llm gate.
pub const MAX_REVIEW_ROUNDS: u32 = 5;
/// Most tasks an llm planner may give one phase.
pub const MAX_PLANNED_TASKS: u32 = 32;
/// Tasks a planner may give when the spec does not say.
pub const DEFAULT_PLANNED_TASKS: u32 = 8;
/// Most planning attempts of one phase.
pub const MAX_PLAN_ATTEMPTS: u32 = 5;
/// Planning attempts when the spec does not say.
pub const DEFAULT_PLAN_ATTEMPTS: u32 = 3;
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
    /// Role prompts of llm workers by skill or state name (see
    /// [`ProjectSpec::system_prompt`]).
    pub prompts: BTreeMap<String, String>,
}

/// One phase of a project and the tasks that complete it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseSpec {
    /// Which phase.
    pub phase: Phase,
    /// Its tasks, in the order the spec lists them; at least one.
    pub tasks: Vec<TaskSpec>,
    /// What the phase's outputs must meet, judged by its llm gate.
    pub acceptance: Vec<String>,
    /// What must pass before the project leaves the phase.
    pub gate: GateSpec,
    /// When the phase's tasks are planned by an llm instead of written (`plan = "llm"`);
    /// the phase then lists no tasks.
    pub plan: Option<PlanSpec>,
}

/// How an llm plans a phase's tasks: a planning task returns them as JSON, the
/// president checks them by the rules of a written spec ([`check_plan`]) and commits
/// them, or asks again with the reason, up to `attempts` times.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanSpec {
    /// What the phase's tasks must achieve: the planner's brief.
    pub objectives: Vec<String>,
    /// Most tasks the plan may have (1 to [`MAX_PLANNED_TASKS`]).
    pub max_tasks: u32,
    /// Planning attempts before the phase fails with the last reason (1 to
    /// [`MAX_PLAN_ATTEMPTS`]).
    pub attempts: u32,
    /// Whether planned tasks may run `shell` commands (off by default: a model's
    /// command would run on a worker).
    pub allow_shell: bool,
    /// The state whose llm worker plans (`technical` when absent).
    pub planner: Option<String>,
}

/// A phase's gates: what must pass, once every task succeeded, before the project moves
/// on. No gate is the default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateSpec {
    /// A review task judges the outputs against the acceptance criteria.
    pub llm: bool,
    /// A person approves or rejects the phase.
    pub human: bool,
    /// Review rounds before the phase fails (llm gate).
    pub review_rounds: u32,
    /// The state whose governor the review is made for; the first task's when absent.
    pub reviewer: Option<String>,
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
        /// Tasks whose outputs are handed to the model before the input: tasks it
        /// depends on or tasks of earlier phases.
        context: Vec<String>,
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

/// Why a planner's reply, or a plan's bytes, does not make a plan. The message is meant
/// for the planner's next attempt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The reply has no `{...}` in it.
    #[error("the reply holds no JSON object")]
    NoJson,
    /// The JSON is not a plan.
    #[error("the reply is not a plan ({0})")]
    NotAPlan(String),
    /// A task names an executor a plan cannot use.
    #[error("task `{task}` has executor {executor}; use \"llm\"")]
    Executor {
        /// The task.
        task: String,
        /// The executor it named, quoted.
        executor: String,
    },
    /// The phase has no `plan`.
    #[error("phase `{0}` is not planned")]
    NotPlanned(&'static str),
    /// No tasks at all.
    #[error("the plan has no tasks")]
    Empty,
    /// More tasks than the phase allows.
    #[error("the plan has {count} tasks; give at most {max}")]
    TooMany {
        /// Tasks in the plan.
        count: usize,
        /// The phase's `max_tasks`.
        max: u32,
    },
    /// A shell task where the phase does not allow one.
    #[error(
        "task `{0}` runs a shell command, which this phase does not allow; use executor \"llm\""
    )]
    Shell(String),
    /// A rule of a written spec is broken (names, states, limits, dependencies).
    #[error("{}", .0.message)]
    Rule(SpecError),
    /// A rule of the policy in force denied it (its refusal).
    #[error("{0}")]
    Policy(String),
    /// The plan's encoding is larger than a plan may be.
    #[error("the plan is {0} bytes encoded, over {MAX_PLAN_BYTES}: write shorter inputs")]
    TooLong(usize),
    /// Bytes that are not a plan (see [`decode_plan`]).
    #[error("a plan of {0} bytes; a plan has 1 to {MAX_PLAN_BYTES}")]
    Size(usize),
    /// Bytes left over after a plan.
    #[error("the plan has {0} trailing bytes")]
    Trailing(usize),
    /// Bytes that do not decode.
    #[error("the plan does not decode: {0}")]
    Decode(String),
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

    /// The system prompt of an llm task: its own `system`, else the spec's role prompt
    /// for its skill, else for its state, else a default naming its state. `None` for
    /// other executors.
    pub fn system_prompt(&self, task: &TaskSpec) -> Option<String> {
        let ExecutorSpec::Llm { system, .. } = &task.executor else {
            return None;
        };
        let role = |key: &str| self.prompts.get(key).cloned();
        Some(
            system
                .clone()
                .or_else(|| task.skill.as_deref().and_then(role))
                .or_else(|| role(&task.state))
                .unwrap_or_else(|| default_role_prompt(&task.state)),
        )
    }

    /// How many tasks the project has, over all its phases.
    pub fn task_count(&self) -> usize {
        self.phases.iter().map(|phase| phase.tasks.len()).sum()
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

/// Most bytes of a committed plan (its tasks in postcard encoding).
pub const MAX_PLAN_BYTES: usize = 64 * 1024;

/// A phase's planned tasks as the Registry keeps them.
pub fn encode_plan(tasks: &[TaskSpec]) -> Vec<u8> {
    // As for `ProjectSpec::to_bytes`: only a bug in postcard or serde fails here, and an
    // empty encoding is refused by `decode_plan`.
    postcard::to_stdvec(tasks).unwrap_or_default()
}

/// Decodes [`encode_plan`]'s bytes (from the Registry: checked when committed, but a
/// node never trusts bytes it did not check itself).
pub fn decode_plan(bytes: &[u8]) -> Result<Vec<TaskSpec>, PlanError> {
    if bytes.is_empty() || bytes.len() > MAX_PLAN_BYTES {
        return Err(PlanError::Size(bytes.len()));
    }
    match postcard::take_from_bytes::<Vec<TaskSpec>>(bytes) {
        Ok((tasks, [])) => Ok(tasks),
        Ok((_, rest)) => Err(PlanError::Trailing(rest.len())),
        Err(error) => Err(PlanError::Decode(error.to_string())),
    }
}

impl ProjectSpec {
    /// This spec with each phase planned so far in `plans` (encoded by [`encode_plan`])
    /// holding its planned tasks, as a written phase would (its `plan` cleared). A plan
    /// that does not decode is left out: its phase stays unplanned.
    pub fn with_plans<'a>(
        &self,
        plans: impl IntoIterator<Item = (Phase, &'a [u8])>,
    ) -> ProjectSpec {
        let mut planned = self.clone();
        for (phase, bytes) in plans {
            let Ok(tasks) = decode_plan(bytes) else {
                continue;
            };
            if let Some(written) = planned.phases.iter_mut().find(|p| p.phase == phase)
                && written.plan.is_some()
            {
                written.plan = None;
                written.tasks = tasks;
            }
        }
        planned
    }
}

/// The role prompt of an llm worker of `state` when the spec gives none.
pub fn default_role_prompt(state: &str) -> String {
    format!(
        "You are a worker of the {state} department of an organisation of AI agents that \
         takes software projects from an idea to a launch. Do the task you are given \
         thoroughly and reply with its result only, in Markdown: no preamble, no questions."
    )
}

/// Whether `name` is reserved for the tasks gates add (reviews and revisions).
pub fn is_reserved_task_name(name: &str) -> bool {
    name.contains("--") || name.starts_with("gate-")
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
    Context,
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
    /// A phase's `gate`.
    Gate(usize),
    /// The `k`th of a phase's `acceptance` criteria.
    Acceptance(usize, usize),
    /// A phase's `review_rounds`.
    ReviewRounds(usize),
    /// A phase's `reviewer`.
    Reviewer(usize),
    /// The `k`th role prompt, in key order.
    Prompt(usize),
}

#[derive(Debug)]
struct Lines {
    name: usize,
    objectives: Vec<usize>,
    phases: Vec<PhaseLines>,
    prompts: BTreeMap<String, usize>,
}

#[derive(Debug)]
struct PhaseLines {
    name: usize,
    tasks: Vec<TaskLines>,
    gate: Option<usize>,
    acceptance: Vec<usize>,
    review_rounds: Option<usize>,
    reviewer: Option<usize>,
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
            At::Gate(phase) => self.phase_line(phase, |lines| lines.gate),
            At::Acceptance(phase, k) => {
                self.phase_line(phase, |lines| lines.acceptance.get(k).copied())
            }
            At::ReviewRounds(phase) => self.phase_line(phase, |lines| lines.review_rounds),
            At::Reviewer(phase) => self.phase_line(phase, |lines| lines.reviewer),
            At::Prompt(k) => self.prompts.values().nth(k).copied(),
        }
    }

    /// A line of a phase's settings, else the phase's name.
    fn phase_line(&self, phase: usize, of: impl Fn(&PhaseLines) -> Option<usize>) -> Option<usize> {
        self.phases
            .get(phase)
            .map(|lines| of(lines).unwrap_or(lines.name))
    }
}

/// Test helpers shared by the tests of this file, `parse.rs` and `check.rs`.
#[cfg(test)]
pub(crate) mod testing {
    use super::{SpecError, parse};

    pub(super) const HEAD: &str =
        "name = \"Payments\"\nbudget = 100\n[[phase]]\nname = \"design\"\n";

    /// A spec with one design phase holding `tasks` (TOML text of [[phase.task]]s).
    pub(super) fn design(tasks: &str) -> String {
        format!("{HEAD}{tasks}")
    }

    pub(super) fn task(name: &str, extra: &str) -> String {
        format!(
            "  [[phase.task]]\n  name = \"{name}\"\n  state = \"technical\"\n  \
             executor = \"builtin\"\n  action = \"noop\"\n{extra}"
        )
    }

    pub(super) fn rejected(text: &str) -> SpecError {
        match parse(text) {
            Ok(spec) => panic!("accepted a bad spec: {spec:?}\n{text}"),
            Err(error) => error,
        }
    }

    /// The 1-based line of the first line of `text` that holds `needle`.
    pub(super) fn line_of(text: &str, needle: &str) -> usize {
        text.lines()
            .position(|line| line.contains(needle))
            .map(|index| index + 1)
            .expect("the needle is in the text")
    }

    /// Asserts that `text` is rejected on the line holding `needle`, with a message
    /// that holds `says`.
    pub(super) fn assert_rejected_at(text: &str, needle: &str, says: &str) -> SpecError {
        let error = rejected(text);
        assert_eq!(error.line, Some(line_of(text, needle)), "{error}\n{text}");
        assert!(error.message.contains(says), "{error:?} lacks {says:?}");
        assert!(error.to_string().starts_with("line "), "{error}");
        error
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn output_references_are_found_and_filled_in_order() {
        let input =
            "plan: {{ outputs.plan }}; code: {{outputs.build-1}} {{ output.x }} {{ outputs. }} {{";
        let names: Vec<&str> = output_refs(input).into_iter().map(|(_, n)| n).collect();
        assert_eq!(names, vec!["plan", "build-1"]);
        let filled = fill_outputs(input, |name| Ok::<_, ()>(name.to_uppercase()));
        assert_eq!(
            filled,
            Ok("plan: PLAN; code: BUILD-1 {{ output.x }} {{ outputs. }} {{".to_string())
        );
        assert_eq!(
            fill_outputs("{{ outputs.a }}", |_| Err("gone")),
            Err("gone")
        );
        assert_eq!(
            fill_outputs("none here", |_| Err("never")),
            Ok("none here".into())
        );
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

    proptest! {
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
