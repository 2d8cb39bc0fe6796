//! Project specs (stub until the real module lands).
#![allow(missing_docs)]
use aamas_protocol::Phase;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectSpec {
    pub name: String,
    pub objectives: Vec<String>,
    pub budget: u64,
    pub phases: Vec<PhaseSpec>,
}
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseSpec {
    pub phase: Phase,
    pub tasks: Vec<TaskSpec>,
}
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub name: String,
    pub state: String,
    pub skill: Option<String>,
    pub executor: ExecutorSpec,
    pub input: String,
    pub depends_on: Vec<String>,
    pub timeout_secs: u64,
    pub retries: u32,
    pub budget: u64,
}
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExecutorSpec {
    Builtin { action: String },
    Shell { command: String, workdir: Option<String>, cpu_secs: u64, memory_mb: u64, max_output_bytes: u64 },
    Llm { system: Option<String>, max_tokens: u32 },
}
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SpecError {
    pub line: Option<usize>,
    pub message: String,
}
pub fn parse(_text: &str) -> Result<ProjectSpec, SpecError> {
    Err(SpecError { line: None, message: "stub".into() })
}
pub fn template() -> &'static str {
    ""
}
impl ProjectSpec {
    pub fn phase(&self, phase: Phase) -> Option<&PhaseSpec> {
        self.phases.iter().find(|p| p.phase == phase)
    }
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SpecError> {
        postcard::from_bytes(bytes).map_err(|e| SpecError { line: None, message: e.to_string() })
    }
    pub fn task_count(&self) -> usize {
        self.phases.iter().map(|p| p.tasks.len()).sum()
    }
}
