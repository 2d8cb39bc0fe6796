//! What makes a spec valid: the rules every spec obeys, parsed or decoded, and the
//! `validate` methods that run them on specs built by other means.

use std::collections::HashMap;
use std::ops::RangeInclusive;

use aamas_protocol::Phase;

use super::{
    At, BuiltinAction, ExecutorSpec, Field, Lines, MAX_CPU_SECS, MAX_INPUT_BYTES, MAX_LLM_TOKENS,
    MAX_MEMORY_MB, MAX_NAME_BYTES, MAX_OBJECTIVE_BYTES, MAX_OBJECTIVES, MAX_OUTPUT_CAP_BYTES,
    MAX_RETRIES, MAX_SLEEP_MS, MAX_TASKS, MAX_TIMEOUT_SECS, MAX_WORKDIR_BYTES, PhaseSpec,
    PlanError, ProjectSpec, SpecError, TaskSpec, quoted,
};
use super::{
    MAX_CONTEXT_TASKS, MAX_PLAN_ATTEMPTS, MAX_PLANNED_TASKS, MAX_PROMPTS, MAX_REVIEW_ROUNDS,
    MAX_TASK_NAME_BYTES, PlanSpec, is_reserved_task_name,
};

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

pub(super) fn check(spec: &ProjectSpec, lines: Option<&Lines>) -> Result<(), SpecError> {
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
    if spec.prompts.len() > MAX_PROMPTS {
        return Err(checker.fail(
            At::Prompt(MAX_PROMPTS),
            format!("more than {MAX_PROMPTS} role prompts; merge some"),
        ));
    }
    for (k, (key, prompt)) in spec.prompts.iter().enumerate() {
        checker.name(At::Prompt(k), "the role prompt's skill or state", key, true)?;
        if prompt.trim().is_empty() || prompt.len() > MAX_INPUT_BYTES {
            return Err(checker.fail(
                At::Prompt(k),
                format!(
                    "the role prompt of {} is {} bytes; use 1 to {MAX_INPUT_BYTES}",
                    quoted(key),
                    prompt.len()
                ),
            ));
        }
    }
    check_phases(&checker, spec)?;
    check_gates(&checker, spec)?;
    check_tasks(&checker, spec)?;
    for (phase_index, phase) in spec.phases.iter().enumerate() {
        check_dependencies(&checker, spec, phase_index, phase)?;
    }
    Ok(())
}

impl ProjectSpec {
    /// Checks every rule a parsed spec obeys: for specs built in code or decoded by
    /// other means than [`ProjectSpec::from_bytes`]. Errors carry no line.
    pub fn validate(&self) -> Result<(), SpecError> {
        check(self, None)
    }
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
        match (&phase.plan, phase.tasks.is_empty()) {
            (None, true) => {
                return Err(checker.fail(
                    At::Phase(index),
                    format!(
                        "phase `{name}` has no tasks; add a [[phase.task]], plan it with \
                         plan = \"llm\", or remove the phase"
                    ),
                ));
            }
            (Some(_), false) => {
                return Err(checker.fail(
                    At::Phase(index),
                    format!(
                        "phase `{name}` is planned by an llm (plan = \"llm\") and lists \
                         tasks too; remove one or the other"
                    ),
                ));
            }
            (Some(plan), true) => check_plan_settings(checker, index, name, plan)?,
            (None, false) => {}
        }
        previous = Some(phase.phase);
    }
    Ok(())
}

/// A planned phase's brief and bounds.
fn check_plan_settings(
    checker: &Checker<'_>,
    index: usize,
    name: &str,
    plan: &PlanSpec,
) -> Result<(), SpecError> {
    if plan.objectives.is_empty() || plan.objectives.len() > MAX_OBJECTIVES {
        return Err(checker.fail(
            At::Phase(index),
            format!(
                "phase `{name}` is planned by an llm: give it 1 to {MAX_OBJECTIVES} \
                 objectives, the planner's brief (objectives = [\"...\"])"
            ),
        ));
    }
    if let Some((k, objective)) =
        plan.objectives.iter().enumerate().find(|(_, objective)| {
            objective.trim().is_empty() || objective.len() > MAX_OBJECTIVE_BYTES
        })
    {
        return Err(checker.fail(
            At::Phase(index),
            format!(
                "phase `{name}`: objective {} is {} bytes; use 1 to {MAX_OBJECTIVE_BYTES}",
                k + 1,
                objective.len()
            ),
        ));
    }
    if !(1..=MAX_PLANNED_TASKS).contains(&plan.max_tasks) {
        return Err(checker.fail(
            At::Phase(index),
            format!(
                "phase `{name}`: max_tasks = {} is out of range; use 1 to {MAX_PLANNED_TASKS}",
                plan.max_tasks
            ),
        ));
    }
    if !(1..=MAX_PLAN_ATTEMPTS).contains(&plan.attempts) {
        return Err(checker.fail(
            At::Phase(index),
            format!(
                "phase `{name}`: plan_attempts = {} is out of range; use 1 to \
                 {MAX_PLAN_ATTEMPTS}",
                plan.attempts
            ),
        ));
    }
    if let Some(planner) = &plan.planner {
        let what = format!("phase `{name}`: the planner state");
        checker.name(At::Phase(index), &what, planner, true)?;
    }
    Ok(())
}

/// Checks the tasks an llm planned for `phase` of `spec` by every rule of a written spec
/// (names, states, executors, limits, acyclic dependencies, what their inputs and
/// context may name), and by the phase's plan: at most `max_tasks`, `shell` only where
/// it is allowed. The reason is meant for the planner's next attempt.
pub fn check_plan(spec: &ProjectSpec, phase: Phase, tasks: &[TaskSpec]) -> Result<(), PlanError> {
    let Some(plan) = spec.phase(phase).and_then(|p| p.plan.as_ref()) else {
        return Err(PlanError::NotPlanned(phase.as_str()));
    };
    if tasks.is_empty() {
        return Err(PlanError::Empty);
    }
    if tasks.len() > plan.max_tasks as usize {
        return Err(PlanError::TooMany {
            count: tasks.len(),
            max: plan.max_tasks,
        });
    }
    if !plan.allow_shell
        && let Some(task) = tasks
            .iter()
            .find(|task| matches!(task.executor, ExecutorSpec::Shell { .. }))
    {
        return Err(PlanError::Shell(task.name.clone()));
    }
    let mut planned = spec.clone();
    for written in &mut planned.phases {
        if written.phase == phase {
            written.plan = None;
            written.tasks = tasks.to_vec();
        }
    }
    check(&planned, None).map_err(PlanError::Rule)
}

/// A phase's acceptance criteria are bounded like objectives; an llm gate needs some
/// and a reviewer with a valid name; review rounds are bounded.
fn check_gates(checker: &Checker<'_>, spec: &ProjectSpec) -> Result<(), SpecError> {
    for (p, phase) in spec.phases.iter().enumerate() {
        let name = phase.phase.as_str();
        if phase.acceptance.len() > MAX_OBJECTIVES {
            return Err(checker.fail(
                At::Acceptance(p, MAX_OBJECTIVES),
                format!("phase `{name}` has more than {MAX_OBJECTIVES} acceptance criteria"),
            ));
        }
        for (k, criterion) in phase.acceptance.iter().enumerate() {
            if criterion.trim().is_empty() || criterion.len() > MAX_OBJECTIVE_BYTES {
                return Err(checker.fail(
                    At::Acceptance(p, k),
                    format!(
                        "phase `{name}`: acceptance criterion {} is {} bytes; use 1 to \
                         {MAX_OBJECTIVE_BYTES}",
                        k + 1,
                        criterion.len()
                    ),
                ));
            }
        }
        if !phase.gate.llm {
            continue;
        }
        if phase.acceptance.is_empty() {
            return Err(checker.fail(
                At::Gate(p),
                format!(
                    "phase `{name}`: an llm gate judges the phase's outputs against its \
                     acceptance criteria; add acceptance = [\"...\"]"
                ),
            ));
        }
        if !(1..=MAX_REVIEW_ROUNDS).contains(&phase.gate.review_rounds) {
            return Err(checker.fail(
                At::ReviewRounds(p),
                format!(
                    "phase `{name}`: review_rounds = {} is out of range; use 1 to \
                     {MAX_REVIEW_ROUNDS}",
                    phase.gate.review_rounds
                ),
            ));
        }
        if let Some(reviewer) = &phase.gate.reviewer {
            let what = format!("phase `{name}`: the reviewer state");
            checker.name(At::Reviewer(p), &what, reviewer, true)?;
        }
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
            // Reserved in a spec only: a worker runs the tasks gates add under them, named
            // `<task>--r<round>`, which must fit in a name too.
            if task.name.len() > MAX_TASK_NAME_BYTES {
                return Err(checker.fail(
                    at(Field::Name),
                    format!(
                        "task name {} is {} bytes; the limit is {MAX_TASK_NAME_BYTES}",
                        quoted(&task.name),
                        task.name.len()
                    ),
                ));
            }
            if is_reserved_task_name(&task.name) {
                return Err(checker.fail(
                    at(Field::Name),
                    format!(
                        "task name {} is reserved: names holding `--` or starting with `gate-` \
                         name the tasks gates add",
                        quoted(&task.name)
                    ),
                ));
            }

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
        ExecutorSpec::Llm {
            system,
            max_tokens,
            context,
        } => {
            if context.len() > MAX_CONTEXT_TASKS {
                return Err(checker.fail(
                    at(Field::Context),
                    format!(
                        "task {}: context names {} tasks; the limit is {MAX_CONTEXT_TASKS}",
                        quoted(name),
                        context.len()
                    ),
                ));
            }
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
    // `{{ outputs.NAME }}` and `context` read a task this one depends on, or one of an
    // earlier phase.
    for (t, task) in phase.tasks.iter().enumerate() {
        let context: &[String] = match &task.executor {
            ExecutorSpec::Llm { context, .. } => context,
            _ => &[],
        };
        for name in context {
            let depended = task.depends_on.iter().any(|dependency| dependency == name);
            let earlier = spec
                .phases
                .iter()
                .take(p)
                .any(|earlier| earlier.tasks.iter().any(|other| &other.name == name));
            if !depended && !earlier {
                return Err(checker.fail(
                    At::Field(p, t, Field::Context),
                    format!(
                        "task {} reads the output of {} as context, but it is neither a task \
                         it depends on nor a task of an earlier phase",
                        quoted(&task.name),
                        quoted(name)
                    ),
                ));
            }
        }
        for (_, name) in crate::spec::output_refs(&task.input) {
            let depended = task.depends_on.iter().any(|dependency| dependency == name);
            let earlier = spec
                .phases
                .iter()
                .take(p)
                .any(|earlier| earlier.tasks.iter().any(|other| other.name == name));
            if !depended && !earlier {
                return Err(checker.fail(
                    At::Field(p, t, Field::Input),
                    format!(
                        "task {} reads {{{{ outputs.{name} }}}}, but {} is neither a task it \
                         depends on nor a task of an earlier phase",
                        quoted(&task.name),
                        quoted(name)
                    ),
                ));
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::testing::*;
    use crate::spec::{MAX_SPEC_BYTES, parse, template};

    /// The 1-based line of the last line of `text` that holds `needle`.
    fn last_line_of(text: &str, needle: &str) -> usize {
        text.lines()
            .enumerate()
            .filter(|(_, line)| line.contains(needle))
            .map(|(index, _)| index + 1)
            .last()
            .expect("the needle is in the text")
    }

    #[test]
    fn an_output_reference_must_name_a_dependency_or_an_earlier_task() {
        let plan = task("plan", "");
        let text = format!("{}{}", design(&plan), "[[phase]]\nname = \"development\"\n");
        let build = task("build", "  input = \"the plan: {{ outputs.plan }}\"\n");
        assert!(
            parse(&format!("{text}{build}")).is_ok(),
            "an earlier phase's task"
        );
        let same = format!(
            "{}{}",
            task("a", ""),
            task(
                "b",
                "  input = \"{{ outputs.a }}\"\n  depends_on = [\"a\"]\n"
            )
        );
        assert!(parse(&design(&same)).is_ok(), "a dependency");
        let unlisted = format!(
            "{}{}",
            task("a", ""),
            task("b", "  input = \"{{ outputs.a }}\"\n")
        );
        assert_rejected_at(&design(&unlisted), "input", "neither a task it depends on");
        let ghost = task("b", "  input = \"{{ outputs.ghost }}\"\n");
        assert_rejected_at(&design(&ghost), "input", "`ghost`");
    }

    /// An llm task of the design phase reading `context`.
    fn llm(name: &str, extra: &str) -> String {
        format!(
            "  [[phase.task]]\n  name = \"{name}\"\n  state = \"technical\"\n  \
             executor = \"llm\"\n  input = \"write it\"\n{extra}"
        )
    }

    #[test]
    fn context_names_a_dependency_or_an_earlier_task() {
        let ok = format!(
            "{}{}",
            task("a", ""),
            llm("b", "  context = [\"a\"]\n  depends_on = [\"a\"]\n")
        );
        let spec = parse(&design(&ok)).expect("a dependency as context");
        assert!(matches!(
            &spec.task("b").expect("b").1.executor,
            ExecutorSpec::Llm { context, .. } if context == &["a"]
        ));
        let unlisted = format!("{}{}", task("a", ""), llm("b", "  context = [\"a\"]\n"));
        assert_rejected_at(
            &design(&unlisted),
            "context",
            "as context, but it is neither",
        );
        let builtin = task("a", "  context = [\"x\"]\n");
        assert_rejected_at(&design(&builtin), "context", "a setting of llm tasks");
        let many: Vec<String> = (0..=crate::spec::MAX_CONTEXT_TASKS)
            .map(|k| format!("\"t{k}\""))
            .collect();
        let crowded = llm("b", &format!("  context = [{}]\n", many.join(", ")));
        assert_rejected_at(&design(&crowded), "context", "the limit is 16");
    }

    #[test]
    fn gates_are_read_and_checked() {
        let text = format!(
            "{HEAD}gate = [\"llm\", \"human\"]\nacceptance = [\"has tests\"]\nreview_rounds = 3\n\
             reviewer = \"financial\"\n{}",
            task("a", "")
        );
        let spec = parse(&text).expect("a gated phase");
        let first = &spec.phases[0];
        assert_eq!(first.acceptance, ["has tests"]);
        assert!(first.gate.llm && first.gate.human);
        assert_eq!(first.gate.review_rounds, 3);
        assert_eq!(first.gate.reviewer.as_deref(), Some("financial"));
        let human = parse(&format!("{HEAD}gate = \"human\"\n{}", task("a", ""))).expect("human");
        assert!(human.phases[0].gate.human && !human.phases[0].gate.llm);
        assert_eq!(ProjectSpec::from_bytes(&spec.to_bytes()), Ok(spec));

        let unknown = format!("{HEAD}gate = \"robot\"\n{}", task("a", ""));
        assert_rejected_at(&unknown, "robot", "unknown gate `robot`");
        let blind = format!("{HEAD}gate = \"llm\"\n{}", task("a", ""));
        assert_rejected_at(&blind, "gate =", "add acceptance");
        let stray = format!("{HEAD}review_rounds = 2\n{}", task("a", ""));
        assert_rejected_at(&stray, "review_rounds", "a setting of an llm gate");
        let endless = format!(
            "{HEAD}gate = \"llm\"\nacceptance = [\"x\"]\nreview_rounds = 9\n{}",
            task("a", "")
        );
        assert_rejected_at(&endless, "review_rounds", "out of range; use 1 to 5");
        let empty = format!("{HEAD}acceptance = [\" \"]\n{}", task("a", ""));
        assert_rejected_at(&empty, "acceptance", "acceptance criterion 1");
        for reserved in ["gate-review-design-1", "a--r2"] {
            assert_rejected_at(&design(&task(reserved, "")), reserved, "is reserved");
        }
    }

    #[test]
    fn a_planned_phase_is_read_and_its_plans_checked_like_written_tasks() {
        let planned = format!(
            "{HEAD}plan = \"llm\"\nobjectives = [\"a schema\"]\nmax_tasks = 2\n\
             [[phase]]\nname = \"testing\"\n{}",
            task("t", "")
        );
        let spec = parse(&planned).expect("a planned phase");
        let plan = spec.phases[0].plan.as_ref().expect("a plan");
        assert_eq!(plan.objectives, ["a schema"]);
        assert_eq!(
            (plan.max_tasks, plan.attempts, plan.allow_shell),
            (2, 3, false)
        );
        assert_eq!(ProjectSpec::from_bytes(&spec.to_bytes()), Ok(spec.clone()));

        let name = "name = \"design\"";
        let both = format!(
            "{HEAD}plan = \"llm\"\nobjectives = [\"x\"]\n{}",
            task("a", "")
        );
        assert_rejected_at(&both, name, "lists tasks too");
        let briefless = format!(
            "{HEAD}plan = \"llm\"\n[[phase]]\nname = \"testing\"\n{}",
            task("t", "")
        );
        assert_rejected_at(&briefless, name, "give it 1 to 64 objectives");
        let unknown = format!("{HEAD}plan = \"magic\"\n{}", task("a", ""));
        assert_rejected_at(&unknown, "magic", "unknown plan `magic`");
        let stray = format!("{HEAD}max_tasks = 3\n{}", task("a", ""));
        assert_rejected_at(&stray, "max_tasks", "a setting of a planned phase");
        let huge = planned.replace("max_tasks = 2", "max_tasks = 99");
        assert_rejected_at(&huge, name, "max_tasks = 99 is out of range");

        // A plan obeys every rule of a written spec, and the plan's own bounds.
        let planned_task = |name: &str, state: &str, depends_on: &[&str]| TaskSpec {
            name: name.into(),
            state: state.into(),
            skill: None,
            executor: ExecutorSpec::Llm {
                system: None,
                max_tokens: 100,
                context: Vec::new(),
            },
            input: "do it".into(),
            depends_on: depends_on.iter().map(|d| (*d).to_string()).collect(),
            timeout_secs: 10,
            retries: 0,
            budget: 0,
        };
        let check = |tasks: &[TaskSpec]| check_plan(&spec, Phase::Design, tasks);
        assert_eq!(check(&[planned_task("a", "technical", &[])]), Ok(()));
        let cycle = [
            planned_task("a", "technical", &["b"]),
            planned_task("b", "technical", &["a"]),
        ];
        assert!(check(&cycle).is_err_and(|reason| reason.to_string().contains("cycle")));
        let crowd: Vec<TaskSpec> = ["a", "b", "c"]
            .iter()
            .map(|name| planned_task(name, "technical", &[]))
            .collect();
        assert!(check(&crowd).is_err_and(|reason| reason.to_string().contains("at most 2")));
        let taken = [planned_task("t", "technical", &[])];
        assert!(
            check(&taken).is_err_and(|reason| reason.to_string().contains("`t`")),
            "{:?}",
            check(&taken)
        );
        let reserved = [planned_task("gate-plan-design-1", "technical", &[])];
        assert!(check(&reserved).is_err_and(|reason| reason.to_string().contains("reserved")));
        let mut shell = planned_task("s", "technical", &[]);
        shell.executor = ExecutorSpec::Shell {
            command: "make".into(),
            workdir: None,
            cpu_secs: 1,
            memory_mb: 64,
            max_output_bytes: 1024,
        };
        assert!(check(&[shell]).is_err_and(|reason| reason.to_string().contains("does not allow")));
        assert!(check(&[]).is_err_and(|reason| reason.to_string().contains("no tasks")));
        let parsed = crate::spec::parse_plan(
            "Sure! ```json\n{\"tasks\": [{\"name\": \"a\", \"state\": \"technical\", \
             \"input\": \"x\"}]}\n```",
        )
        .expect("a plan in a fence");
        assert_eq!(check(&parsed), Ok(()));
        assert!(crate::spec::parse_plan("no plan today").is_err());
        assert!(
            crate::spec::parse_plan(
                "{\"tasks\": [{\"name\": \"a\", \"state\": \"t\", \"executor\": \"rpc\"}]}"
            )
            .is_err_and(|reason| reason.to_string().contains("`rpc`"))
        );
        let encoded = crate::spec::encode_plan(&parsed);
        assert_eq!(crate::spec::decode_plan(&encoded), Ok(parsed));
        assert!(crate::spec::decode_plan(&encoded[..encoded.len() - 1]).is_err());
    }

    #[test]
    fn role_prompts_are_checked_and_chosen_by_skill_then_state() {
        let text = format!(
            "name = \"P\"\n[prompts]\ntechnical = \"You build.\"\nrust = \"You write Rust.\"\n\
             [[phase]]\nname = \"design\"\n{}{}",
            llm("a", "  skill = \"rust\"\n"),
            llm("b", "")
        );
        let spec = parse(&text).expect("prompts");
        let prompt = |name: &str| spec.system_prompt(spec.task(name).expect("task").1);
        assert_eq!(prompt("a").as_deref(), Some("You write Rust."));
        assert_eq!(prompt("b").as_deref(), Some("You build."));
        let mut plain = spec.clone();
        plain.prompts.clear();
        let default = plain
            .system_prompt(plain.task("b").expect("b").1)
            .expect("a default");
        assert!(default.contains("technical department"), "{default}");
        let bad = text.replace("rust = \"You write Rust.\"", "Rust = \"You write Rust.\"");
        assert_rejected_at(&bad, "Rust =", "lowercase");
        let empty = text.replace("\"You build.\"", "\"\"");
        assert_rejected_at(&empty, "technical =", "role prompt of `technical`");
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
}
