//! The builtin executor: in process, deterministic.

use std::time::Duration;

use sha2::{Digest as _, Sha256};

use super::{ExecError, Execution, failed, misconfigured, timed_out};

/// Longest `sleep:<ms>` a builtin task may ask for.
pub const BUILTIN_SLEEP_MAX_MS: u64 = 60_000;

pub(super) async fn run_builtin(
    action: &str,
    name: &str,
    input: &str,
    timeout: Duration,
) -> Result<Execution, ExecError> {
    match action {
        "noop" => Ok(Execution::complete(String::new())),
        "digest" => Ok(Execution::complete(digest_hex(name, input))),
        "fail" => Err(failed("builtin fail action")),
        _ => {
            let Some(ms) = action.strip_prefix("sleep:") else {
                return Err(misconfigured(format!(
                    "unknown builtin action {action:?}: use noop, digest, fail or sleep:<ms>"
                )));
            };
            let ms = ms
                .parse::<u64>()
                .ok()
                .filter(|ms| *ms <= BUILTIN_SLEEP_MAX_MS)
                .ok_or_else(|| {
                    misconfigured(format!(
                        "builtin action {action:?}: sleep takes 0 to {BUILTIN_SLEEP_MAX_MS} ms"
                    ))
                })?;
            tokio::time::timeout(timeout, tokio::time::sleep(Duration::from_millis(ms)))
                .await
                .map_err(|_| timed_out(timeout))?;
            Ok(Execution::complete(String::new()))
        }
    }
}

/// Hex SHA-256 of `name ‖ 0x00 ‖ input`: the zero byte keeps ("ab", "c") and ("a", "bc")
/// apart.
fn digest_hex(name: &str, input: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update([0u8]);
    hasher.update(input.as_bytes());
    hasher
        .finalize()
        .iter()
        .fold(String::with_capacity(64), |mut hex, byte| {
            const DIGITS: &[u8; 16] = b"0123456789abcdef";
            hex.push(char::from(DIGITS[usize::from(byte >> 4)]));
            hex.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
            hex
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use aamas_consensus::resources::Usage;

    use crate::exec::testing::{LONG, run};
    use crate::spec::ExecutorSpec;

    fn builtin(action: &str) -> ExecutorSpec {
        ExecutorSpec::Builtin {
            action: action.to_owned(),
        }
    }

    #[tokio::test]
    async fn builtin_noop_produces_nothing() {
        let execution = run(&builtin("noop"), "ignored", LONG).await.unwrap();
        assert_eq!(
            execution,
            Execution {
                output: String::new(),
                output_truncated: false,
                digest: None,
                usage: None,
                cpu_ms: 0,
                memory_kib_s: 0,
                stored_bytes: 0,
            }
        );
    }

    #[tokio::test]
    async fn builtin_digest_is_sha256_of_name_zero_input() {
        let execution = run(&builtin("digest"), "input", LONG).await.unwrap();
        // printf 'task\0input' | sha256sum
        assert_eq!(
            execution.output,
            "cb74fc2708234490b0f14e0438f71af9428f9b7ea0f80f8c49bfcdb6dde810d6"
        );
        assert_eq!(
            digest_hex("ab", "c"),
            "6c032e631d39a14d85aff7e319546af701e26c97b57ca95fbfe9c6ba855f67bf"
        );
        assert_ne!(digest_hex("ab", "c"), digest_hex("a", "bc"));
    }

    #[tokio::test]
    async fn builtin_fail_fails_for_good() {
        let error = run(&builtin("fail"), "", LONG).await.unwrap_err();
        assert_eq!(
            error,
            ExecError::Failed {
                reason: "builtin fail action".to_owned(),
                used: Usage::default(),
            }
        );
        assert!(!error.retryable());
    }

    #[tokio::test]
    async fn builtin_sleep_finishes_within_its_timeout() {
        let execution = run(&builtin("sleep:5"), "", LONG).await.unwrap();
        assert_eq!(execution.output, "");
    }

    #[tokio::test]
    async fn builtin_sleep_past_the_timeout_times_out() {
        let started = std::time::Instant::now();
        let error = run(&builtin("sleep:60000"), "", Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(
            error,
            ExecError::Timeout {
                after_ms: 50,
                used: Usage::default()
            }
        );
        assert!(error.retryable());
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn builtin_rejects_unknown_and_out_of_range_actions() {
        for action in [
            "explode",
            "sleep:",
            "sleep:-1",
            "sleep:60001",
            "sleep:1e3",
            "NOOP",
        ] {
            let error = run(&builtin(action), "", LONG).await.unwrap_err();
            assert!(
                matches!(error, ExecError::Misconfigured { .. }),
                "{action}: {error:?}"
            );
            assert!(!error.retryable());
        }
    }
}
