//! How text becomes a spec: the TOML shape, conversion with defaults and line numbers,
//! and the built-in template. The format itself is described in `mod.rs`.

use std::collections::BTreeMap;

use aamas_protocol::Phase;
use serde::Deserialize;
use toml::Spanned;

use super::check::check;
use super::{
    DEFAULT_CPU_SECS, DEFAULT_MAX_OUTPUT_BYTES, DEFAULT_MAX_TOKENS, DEFAULT_MEMORY_MB,
    DEFAULT_PLAN_ATTEMPTS, DEFAULT_PLANNED_TASKS, DEFAULT_RETRIES, DEFAULT_REVIEW_ROUNDS,
    DEFAULT_TIMEOUT_SECS, ExecutorSpec, FIELD_COUNT, Field, GateSpec, Lines, MAX_SPEC_BYTES,
    PhaseLines, PhaseSpec, PlanError, PlanSpec, ProjectSpec, SpecError, TaskLines, TaskSpec,
    quoted,
};

/// One task as a planner writes it in JSON.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlannedTask {
    name: String,
    state: String,
    #[serde(default)]
    skill: Option<String>,
    #[serde(default = "llm_executor")]
    executor: String,
    #[serde(default)]
    input: String,
    #[serde(default)]
    depends_on: Vec<String>,
    #[serde(default)]
    context: Vec<String>,
    #[serde(default)]
    command: Option<String>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    timeout_secs: Option<u64>,
}

fn llm_executor() -> String {
    "llm".to_owned()
}

#[derive(Deserialize)]
struct PlannedPhase {
    tasks: Vec<PlannedTask>,
}

/// The tasks of a planner's reply: the first `{` to the last `}` read as
/// `{"tasks": [{"name", "state", "executor", "input", "depends_on", "context", ...}]}`
/// (models often wrap JSON in prose or a code fence), with a written spec's defaults.
/// Only the shape is read here; [`super::check_plan`] applies the rules.
pub fn parse_plan(reply: &str) -> Result<Vec<TaskSpec>, PlanError> {
    let json = match (reply.find('{'), reply.rfind('}')) {
        (Some(start), Some(end)) if start < end => &reply[start..=end],
        _ => return Err(PlanError::NoJson),
    };
    let planned: PlannedPhase =
        serde_json::from_str(json).map_err(|error| PlanError::NotAPlan(error.to_string()))?;
    planned
        .tasks
        .into_iter()
        .map(|task| {
            let executor = match task.executor.as_str() {
                "llm" => ExecutorSpec::Llm {
                    system: None,
                    max_tokens: task.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
                    context: task.context,
                },
                "shell" => ExecutorSpec::Shell {
                    command: task.command.unwrap_or_default(),
                    workdir: None,
                    cpu_secs: DEFAULT_CPU_SECS,
                    memory_mb: DEFAULT_MEMORY_MB,
                    max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
                },
                "builtin" => ExecutorSpec::Builtin {
                    action: task.action.unwrap_or_default(),
                },
                other => {
                    return Err(PlanError::Executor {
                        task: task.name,
                        executor: quoted(other),
                    });
                }
            };
            Ok(TaskSpec {
                name: task.name,
                state: task.state,
                skill: task.skill,
                executor,
                input: task.input,
                depends_on: task.depends_on,
                timeout_secs: task.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS),
                retries: DEFAULT_RETRIES,
                budget: 0,
            })
        })
        .collect()
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

// ---------------------------------------------------------------------------------------
// TOML shape. Every value keeps its span so that later checks can name its line.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    name: Spanned<String>,
    #[serde(default)]
    objectives: Vec<Spanned<String>>,
    budget: Option<Spanned<u64>>,
    #[serde(default)]
    prompts: BTreeMap<String, Spanned<String>>,
    #[serde(default, rename = "phase")]
    phases: Vec<RawPhase>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPhase {
    name: Spanned<String>,
    gate: Option<Spanned<OneOrMany>>,
    #[serde(default)]
    acceptance: Vec<Spanned<String>>,
    review_rounds: Option<Spanned<u32>>,
    reviewer: Option<Spanned<String>>,
    plan: Option<Spanned<String>>,
    #[serde(default)]
    objectives: Vec<Spanned<String>>,
    max_tasks: Option<Spanned<u32>>,
    plan_attempts: Option<Spanned<u32>>,
    allow_shell: Option<Spanned<bool>>,
    planner: Option<Spanned<String>>,
    #[serde(default, rename = "task")]
    tasks: Vec<Spanned<RawTask>>,
}

/// `gate = "llm"` or `gate = ["llm", "human"]`.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
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
    context: Option<Spanned<Vec<String>>>,
    input: Option<Spanned<String>>,
    depends_on: Option<Spanned<Vec<Spanned<String>>>>,
    timeout_secs: Option<Spanned<u64>>,
    retries: Option<Spanned<u32>>,
    budget: Option<Spanned<u64>>,
}

/// Byte offsets of a text's newlines, to turn spans into 1-based lines in O(log n): a
/// spec has thousands of spans, and counting newlines from the start for each would be
/// quadratic in the file size.
pub(crate) struct LineIndex {
    newlines: Vec<usize>,
}

impl LineIndex {
    pub(crate) fn new(text: &str) -> LineIndex {
        let newlines = text
            .bytes()
            .enumerate()
            .filter(|(_, byte)| *byte == b'\n')
            .map(|(offset, _)| offset)
            .collect();
        LineIndex { newlines }
    }

    /// The 1-based line holding byte `offset`.
    pub(crate) fn line(&self, offset: usize) -> usize {
        self.newlines.partition_point(|newline| *newline < offset) + 1
    }

    pub(crate) fn of<T>(&self, value: &Spanned<T>) -> usize {
        self.line(value.span().start)
    }

    fn of_optional<T>(&self, value: &Option<Spanned<T>>) -> Option<usize> {
        value.as_ref().map(|value| self.of(value))
    }
}

fn inner<T>(value: Option<Spanned<T>>) -> Option<T> {
    value.map(Spanned::into_inner)
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
        prompts: raw
            .prompts
            .iter()
            .map(|(key, value)| (key.clone(), index.of(value)))
            .collect(),
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
        let gate_line = index.of_optional(&raw_phase.gate);
        let mut gate = GateSpec {
            review_rounds: inner(raw_phase.review_rounds.clone()).unwrap_or(DEFAULT_REVIEW_ROUNDS),
            reviewer: inner(raw_phase.reviewer.clone()),
            ..GateSpec::default()
        };
        let kinds = match inner(raw_phase.gate) {
            None => Vec::new(),
            Some(OneOrMany::One(kind)) => vec![kind],
            Some(OneOrMany::Many(kinds)) => kinds,
        };
        for kind in kinds {
            match kind.as_str() {
                "llm" => gate.llm = true,
                "human" => gate.human = true,
                other => {
                    return Err(SpecError::new(
                        gate_line,
                        format!(
                            "phase `{}`: unknown gate {}; use \"llm\", \"human\" or both",
                            phase.as_str(),
                            quoted(other)
                        ),
                    ));
                }
            }
        }
        for (key, line) in [
            ("review_rounds", index.of_optional(&raw_phase.review_rounds)),
            ("reviewer", index.of_optional(&raw_phase.reviewer)),
        ] {
            if line.is_some() && !gate.llm {
                return Err(SpecError::new(
                    line,
                    format!(
                        "phase `{}`: `{key}` is a setting of an llm gate; add gate = \"llm\" \
                         or remove it",
                        phase.as_str()
                    ),
                ));
            }
        }
        let plan = match inner(raw_phase.plan.clone()).as_deref() {
            None => None,
            Some("llm") => Some(PlanSpec {
                objectives: raw_phase
                    .objectives
                    .iter()
                    .map(|objective| objective.get_ref().clone())
                    .collect(),
                max_tasks: inner(raw_phase.max_tasks.clone()).unwrap_or(DEFAULT_PLANNED_TASKS),
                attempts: inner(raw_phase.plan_attempts.clone()).unwrap_or(DEFAULT_PLAN_ATTEMPTS),
                allow_shell: inner(raw_phase.allow_shell.clone()).unwrap_or(false),
                planner: inner(raw_phase.planner.clone()),
            }),
            Some(other) => {
                return Err(SpecError::new(
                    index.of_optional(&raw_phase.plan),
                    format!(
                        "phase `{}`: unknown plan {}; use plan = \"llm\" or list the tasks",
                        phase.as_str(),
                        quoted(other)
                    ),
                ));
            }
        };
        if plan.is_none() {
            let settings = [
                (
                    "objectives",
                    raw_phase.objectives.first().map(|o| index.of(o)),
                ),
                ("max_tasks", index.of_optional(&raw_phase.max_tasks)),
                ("plan_attempts", index.of_optional(&raw_phase.plan_attempts)),
                ("allow_shell", index.of_optional(&raw_phase.allow_shell)),
                ("planner", index.of_optional(&raw_phase.planner)),
            ];
            for (key, line) in settings {
                if line.is_some() {
                    return Err(SpecError::new(
                        line,
                        format!(
                            "phase `{}`: `{key}` is a setting of a planned phase; add \
                             plan = \"llm\" or remove it",
                            phase.as_str()
                        ),
                    ));
                }
            }
        }
        phases.push(PhaseSpec {
            plan,
            phase,
            tasks,
            acceptance: raw_phase
                .acceptance
                .iter()
                .map(|criterion| criterion.get_ref().clone())
                .collect(),
            gate,
        });
        lines.phases.push(PhaseLines {
            name: name_line,
            tasks: task_lines,
            gate: gate_line,
            acceptance: raw_phase.acceptance.iter().map(|c| index.of(c)).collect(),
            review_rounds: index.of_optional(&raw_phase.review_rounds),
            reviewer: index.of_optional(&raw_phase.reviewer),
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
        prompts: raw
            .prompts
            .into_iter()
            .map(|(key, value)| (key, value.into_inner()))
            .collect(),
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
    fields[Field::Context as usize] = index.of_optional(&raw.context);
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
        ("context", "llm", Field::Context),
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
            context: inner(raw.context).unwrap_or_default(),
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
    use crate::spec::testing::*;
    use proptest::prelude::*;

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
                max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            }
        );
        let ask = spec.task("ask").expect("ask").1;
        assert_eq!(
            ask.executor,
            ExecutorSpec::Llm {
                system: None,
                max_tokens: 512,
                context: Vec::new(),
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
  context = ["unit"]
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
                max_tokens: 1024,
                context: vec!["unit".to_owned()],
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

    }
}
