//! Resource accounting (seed §6.2), pure: what an attempt used, measured by its worker;
//! the accounts a state's [`crate::ledger::Ledger`] keeps of it per state, city and
//! worker; and the limits per period that the president sets in the
//! [`crate::registry::Registry`] and the governor copies into its Ledger.
//!
//! ```text
//!   worker: attempt ─measure─► Usage { cpu_ms, tokens, api_calls, money_micros,
//!                                      memory_kib_s, storage_bytes }
//!   mayor:  ChargeAttempt(key, attempt, usage, now)  (before the outcome, once per attempt)
//!   Ledger: task.used += usage; Account(state | city | worker).charge(usage, now)
//!             Account = total + one Window per period (hour, day, 30-day month),
//!                       each aligned to the Unix epoch and restarted when it lapses
//!   Ledger: AssignTask refused while a hard limit is spent, and under a hard limit a
//!           worker runs one task of the state at a time: spending passes a hard limit
//!           by at most the attempts in flight, one per worker
//! ```

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A kind of resource an account counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resource {
    /// CPU time of a task's processes (user + system), in milliseconds.
    CpuMs,
    /// Model tokens (prompt + completion), as the model's endpoint reported them.
    Tokens,
    /// Calls to a model's endpoint.
    ApiCalls,
    /// Money, in millionths of the price unit, from the worker's configured prices.
    MoneyMicros,
    /// Memory over time: the resident memory of a task's processes, sampled while they
    /// run, in KiB-seconds (1 MiB held for one second is 1,024).
    MemoryKibS,
    /// Bytes of output kept as artefacts (counted once, not per copy).
    StorageBytes,
}

impl Resource {
    /// Every resource, in order.
    pub const ALL: [Resource; 6] = [
        Resource::CpuMs,
        Resource::Tokens,
        Resource::ApiCalls,
        Resource::MoneyMicros,
        Resource::MemoryKibS,
        Resource::StorageBytes,
    ];

    /// Its name in commands, documents and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Resource::CpuMs => "cpu_ms",
            Resource::Tokens => "tokens",
            Resource::ApiCalls => "api_calls",
            Resource::MoneyMicros => "money_micros",
            Resource::MemoryKibS => "memory_kib_s",
            Resource::StorageBytes => "storage_bytes",
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Resource {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Resource::ALL
            .into_iter()
            .find(|resource| resource.name() == text)
            .ok_or_else(|| {
                let names: Vec<&str> = Resource::ALL.iter().map(|r| r.name()).collect();
                format!("unknown resource {text:?}; one of {}", names.join(", "))
            })
    }
}

/// What one or more attempts used. Every sum saturates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// CPU time, milliseconds.
    pub cpu_ms: u64,
    /// Model tokens.
    pub tokens: u64,
    /// Calls to a model's endpoint.
    pub api_calls: u64,
    /// Money, millionths of the price unit.
    pub money_micros: u64,
    /// Resident memory over time, KiB-seconds.
    pub memory_kib_s: u64,
    /// Output kept as artefacts, bytes.
    pub storage_bytes: u64,
}

impl Usage {
    /// The amount of `resource`.
    pub fn get(&self, resource: Resource) -> u64 {
        match resource {
            Resource::CpuMs => self.cpu_ms,
            Resource::Tokens => self.tokens,
            Resource::ApiCalls => self.api_calls,
            Resource::MoneyMicros => self.money_micros,
            Resource::MemoryKibS => self.memory_kib_s,
            Resource::StorageBytes => self.storage_bytes,
        }
    }

    /// Adds `other`, saturating.
    pub fn add(&mut self, other: &Usage) {
        self.cpu_ms = self.cpu_ms.saturating_add(other.cpu_ms);
        self.tokens = self.tokens.saturating_add(other.tokens);
        self.api_calls = self.api_calls.saturating_add(other.api_calls);
        self.money_micros = self.money_micros.saturating_add(other.money_micros);
        self.memory_kib_s = self.memory_kib_s.saturating_add(other.memory_kib_s);
        self.storage_bytes = self.storage_bytes.saturating_add(other.storage_bytes);
    }

    /// Whether nothing was used.
    pub fn is_zero(&self) -> bool {
        *self == Usage::default()
    }
}

/// The period a limit applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    /// Each hour (UTC).
    Hour,
    /// Each day (UTC).
    Day,
    /// Each 30 days, counted from the Unix epoch.
    Month,
    /// For ever: the limit never renews.
    Total,
}

impl Period {
    /// Every period, in order.
    pub const ALL: [Period; 4] = [Period::Hour, Period::Day, Period::Month, Period::Total];

    /// Its name in commands and documents.
    pub fn name(self) -> &'static str {
        match self {
            Period::Hour => "hour",
            Period::Day => "day",
            Period::Month => "month",
            Period::Total => "total",
        }
    }

    /// Its length in milliseconds; `None` for [`Period::Total`].
    pub fn length_ms(self) -> Option<u64> {
        match self {
            Period::Hour => Some(3_600_000),
            Period::Day => Some(86_400_000),
            Period::Month => Some(30 * 86_400_000),
            Period::Total => None,
        }
    }

    /// Where the window of this period that holds `now_ms` starts (0 for `Total`).
    pub fn window_start(self, now_ms: u64) -> u64 {
        self.length_ms()
            .map_or(0, |length| now_ms - now_ms % length)
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Period {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Period::ALL
            .into_iter()
            .find(|period| period.name() == text)
            .ok_or_else(|| format!("unknown period {text:?}; one of hour, day, month, total"))
    }
}

/// A limit on one resource of a state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limit {
    /// Most that may be used in one period.
    pub amount: u64,
    /// The period.
    pub period: Period,
    /// Hard: no attempt is dispatched once it is reached, and a ResourceRequest goes up.
    /// Soft: reaching it raises an alert and nothing stops.
    pub hard: bool,
}

/// Use within one window of a period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// Where the window starts, ms since the Unix epoch.
    pub start_ms: u64,
    /// What was used in it.
    pub used: Usage,
}

/// An account: everything charged to it, and what was charged in the current window of
/// each period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Everything charged.
    pub total: Usage,
    /// The windows of the hour, the day and the month, in that order.
    pub windows: [Window; 3],
    /// Attempts charged.
    pub attempts: u64,
}

impl Account {
    /// Charges `used` at `now_ms`: a window that `now_ms` has left starts again at the
    /// window that holds it; a charge stamped before the current window (a proposer whose
    /// clock is behind) counts in the current one.
    pub fn charge(&mut self, used: &Usage, now_ms: u64) {
        self.total.add(used);
        self.attempts = self.attempts.saturating_add(1);
        for (window, period) in self.windows.iter_mut().zip(Period::ALL) {
            let start = period.window_start(now_ms);
            if start > window.start_ms {
                *window = Window {
                    start_ms: start,
                    used: Usage::default(),
                };
            }
            window.used.add(used);
        }
    }

    /// What was used of `resource` in the window of `period` that holds `now_ms`.
    pub fn used(&self, resource: Resource, period: Period, now_ms: u64) -> u64 {
        let index = match period {
            Period::Hour => 0,
            Period::Day => 1,
            Period::Month => 2,
            Period::Total => return self.total.get(resource),
        };
        let window = &self.windows[index];
        if period.window_start(now_ms) > window.start_ms {
            0
        } else {
            window.used.get(resource)
        }
    }
}

/// Where a state stands against its hard limits at `now_ms`: the first one spent, with
/// what was used, or `None`.
pub fn spent_limit<'a>(
    account: &Account,
    limits: impl IntoIterator<Item = (&'a Resource, &'a Limit)>,
    now_ms: u64,
) -> Option<(Resource, Limit, u64)> {
    limits.into_iter().find_map(|(resource, limit)| {
        let used = account.used(*resource, limit.period, now_ms);
        (limit.hard && used >= limit.amount).then_some((*resource, *limit, used))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3_600_000;

    fn money(amount: u64) -> Usage {
        Usage {
            money_micros: amount,
            ..Usage::default()
        }
    }

    #[test]
    fn windows_restart_when_their_period_lapses_and_the_total_never_does() {
        let mut account = Account::default();
        account.charge(&money(5), 10 * HOUR + 1);
        account.charge(&money(7), 10 * HOUR + 2);
        assert_eq!(
            account.used(Resource::MoneyMicros, Period::Hour, 10 * HOUR + 3),
            12
        );
        // The next hour: the hour's window is empty until charged, the day's is not.
        assert_eq!(
            account.used(Resource::MoneyMicros, Period::Hour, 11 * HOUR),
            0
        );
        assert_eq!(
            account.used(Resource::MoneyMicros, Period::Day, 11 * HOUR),
            12
        );
        account.charge(&money(1), 11 * HOUR + 5);
        assert_eq!(
            account.used(Resource::MoneyMicros, Period::Hour, 11 * HOUR + 6),
            1
        );
        assert_eq!(
            account.used(Resource::MoneyMicros, Period::Day, 11 * HOUR + 6),
            13
        );
        assert_eq!(account.used(Resource::MoneyMicros, Period::Total, 0), 13);
        assert_eq!(account.attempts, 3);
        // A late charge (a proposer whose clock is behind) counts in the current window.
        account.charge(&money(2), 10 * HOUR);
        assert_eq!(
            account.used(Resource::MoneyMicros, Period::Hour, 11 * HOUR + 6),
            3
        );
    }

    #[test]
    fn only_a_hard_limit_that_is_reached_is_spent() {
        let mut account = Account::default();
        account.charge(&money(100), HOUR);
        let limit = |amount, hard| Limit {
            amount,
            period: Period::Day,
            hard,
        };
        let check = |limits: &[(Resource, Limit)]| {
            spent_limit(&account, limits.iter().map(|(r, l)| (r, l)), HOUR + 1)
        };
        assert_eq!(check(&[(Resource::MoneyMicros, limit(101, true))]), None);
        assert_eq!(check(&[(Resource::MoneyMicros, limit(100, false))]), None);
        assert_eq!(
            check(&[(Resource::MoneyMicros, limit(100, true))]),
            Some((Resource::MoneyMicros, limit(100, true), 100))
        );
        assert_eq!(check(&[(Resource::Tokens, limit(1, true))]), None);
    }

    #[test]
    fn names_parse_back() {
        for resource in Resource::ALL {
            assert_eq!(resource.name().parse::<Resource>(), Ok(resource));
        }
        for period in Period::ALL {
            assert_eq!(period.name().parse::<Period>(), Ok(period));
        }
        let unknown = "gpu".parse::<Resource>();
        assert!(unknown.is_err_and(|error| error.contains("money_micros")));
        // JSON (the API) spells them as commands do.
        let json = serde_json::to_string(&(Resource::MoneyMicros, Period::Day));
        assert_eq!(json.ok().as_deref(), Some(r#"["money_micros","day"]"#));
    }
}
