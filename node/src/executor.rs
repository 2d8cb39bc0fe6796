//! Executors (stub until the real module lands).
#![allow(missing_docs)]
use crate::spec::ExecutorSpec;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Execution {
    pub output: String,
    pub output_truncated: bool,
    pub usage: Option<TokenUsage>,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ExecError {
    #[error("timeout after {after_ms} ms")]
    Timeout { after_ms: u64 },
    #[error("{reason}")]
    Failed { reason: String },
}
impl ExecError {
    pub fn retryable(&self) -> bool {
        matches!(self, ExecError::Timeout { .. })
    }
    pub fn reason(&self) -> String {
        self.to_string()
    }
}
#[derive(Clone)]
pub struct LlmConfig;
impl LlmConfig {
    pub fn from_env() -> Option<Self> {
        None
    }
}
#[derive(Clone)]
pub struct Executors;
impl Executors {
    pub fn new(_llm: Option<LlmConfig>) -> Self {
        Executors
    }
    pub async fn run(
        &self,
        _spec: &ExecutorSpec,
        _name: &str,
        _input: &str,
        _timeout: Duration,
    ) -> Result<Execution, ExecError> {
        Ok(Execution {
            output: String::new(),
            output_truncated: false,
            usage: None,
        })
    }
}
