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

use aamas_protocol::Phase;
use serde::{Deserialize, Serialize};

mod check;
mod parse;

use check::check;
pub use parse::{parse, template};

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
