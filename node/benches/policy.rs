//! Time per policy decision with 10 and 1,000 rules: one task's facts, and a whole
//! submission of the template project (one judgement per task and one for the project).
//!
//! Run: `cargo bench -p aamas-node --bench policy`
//! Figures are kept in `docs/PERFORMANCE.md`.

use std::hint::black_box;

use aamas_node::governance::policy::{self, Attr, Counter, Facts, Point};
use criterion::{Criterion, criterion_group, criterion_main};

/// A policy of `rules` rules at submission, of three kinds in turn: security matches on
/// executor and state, escalation limits retries, resource advisories on phases. None
/// of them fires on the template, so every rule is evaluated on every judgement (the
/// worst case for a decision that goes through).
fn policy_text(rules: usize) -> String {
    let mut text = String::new();
    for i in 0..rules {
        let body = match i % 3 {
            0 => format!(
                "category = \"security\"\nwhen = {{ executor = \"shell\" }}\nunless = {{ state = [\"s{i}\"] }}\n"
            ),
            1 => format!(
                "category = \"escalation\"\nmax = {{ retries = {} }}\n",
                100 + i
            ),
            _ => format!(
                "category = \"resource\"\nenforcement = \"advisory\"\nwhen = {{ phase = \"p{i}\" }}\n"
            ),
        };
        text.push_str(&format!(
            "[[rule]]\nname = \"rule-{i}\"\nat = \"submission\"\n{body}\n"
        ));
    }
    text
}

fn decisions(c: &mut Criterion) {
    let spec = aamas_node::spec::parse(aamas_node::spec::template()).expect("template");
    let submission = policy::submission_facts(&spec, "12D3KooWowner", 3);
    let one_task = Facts::default()
        .with(Attr::Executor, ["builtin".to_string()])
        .with(Attr::State, ["technical".to_string()])
        .with(Attr::Phase, ["design".to_string()])
        .count(Counter::Retries, 2)
        .count(Counter::ProjectsRunning, 4);
    for rules in [10, 1_000] {
        let parsed = policy::parse(&policy_text(rules)).expect("policy");
        assert!(
            parsed
                .decide(Point::Submission, &submission, None)
                .fired
                .is_empty()
        );
        c.bench_function(&format!("policy/one task/{rules} rules"), |b| {
            b.iter(|| {
                black_box(parsed.decide(
                    Point::Submission,
                    black_box(std::slice::from_ref(&one_task)),
                    None,
                ))
            });
        });
        c.bench_function(
            &format!(
                "policy/template submission ({} judgements)/{rules} rules",
                submission.len()
            ),
            |b| {
                b.iter(|| black_box(parsed.decide(Point::Submission, black_box(&submission), None)))
            },
        );
    }
}

criterion_group!(benches, decisions);
criterion_main!(benches);
