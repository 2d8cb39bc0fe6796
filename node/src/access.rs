//! Who may call which route of the control API: scoped API tokens.
//!
//! Every node writes a fresh *admin* token to `DATA_DIR/api.token` at each start (the
//! operator's own, read by the CLI). With it, an operator creates named tokens of a
//! narrower [`Scope`] for people and programs (`aamas api-token create NAME --scope
//! read`); they are kept, as SHA-256 digests only, in `DATA_DIR/api-tokens.json` (0600)
//! and outlive restarts until revoked. Scopes nest: each allows what the ones below it do.
//!
//! ```text
//!   read     GET every route (status, members, hierarchy, projects, tasks, artefacts,
//!            metrics)
//!   submit   + POST /api/v1/projects
//!   operate  + PUT /api/v1/projects/{id}/phase (hold, resume, advance, archive, approve),
//!            POST /api/v1/alerts/{id}/ack
//!   admin    + join tokens, API tokens, evicting members, applying a policy, resource
//!            limits and decisions on ResourceRequests
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// What a token may do; each scope allows everything the ones before it do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Read everything.
    Read,
    /// Also submit projects.
    Submit,
    /// Also change projects (hold, resume, advance, archive, approve, reject).
    Operate,
    /// Also manage join tokens, API tokens and members.
    Admin,
}

impl Scope {
    /// Its lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Submit => "submit",
            Scope::Operate => "operate",
            Scope::Admin => "admin",
        }
    }

    /// Parses a lowercase name.
    pub fn parse(text: &str) -> Result<Self, AccessError> {
        match text {
            "read" => Ok(Scope::Read),
            "submit" => Ok(Scope::Submit),
            "operate" => Ok(Scope::Operate),
            "admin" => Ok(Scope::Admin),
            other => Err(AccessError::UnknownScope(other.to_string())),
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The scope a request needs, from its method and its route's pattern (axum's matched
/// path, e.g. `/api/v1/projects/{id}/phase`).
pub fn needed(method: &str, route: &str) -> Scope {
    if route.starts_with("/api/v1/tokens")
        || route.starts_with("/api/v1/api-tokens")
        || route.starts_with("/api/v1/members/")
    {
        return Scope::Admin;
    }
    match (method, route) {
        ("GET" | "HEAD", _) => Scope::Read,
        ("POST", "/api/v1/projects") => Scope::Submit,
        // Checks a document without applying it.
        ("POST", "/api/v1/policy/check") => Scope::Read,
        ("PUT", "/api/v1/projects/{id}/phase") => Scope::Operate,
        ("POST", "/api/v1/alerts/{id}/ack") => Scope::Operate,
        ("POST", "/api/v1/governors/{id}/tasks") => Scope::Submit,
        // Evicting through it needs admin: the handler checks.
        ("POST", "/api/v1/agents/command") => Scope::Operate,
        // A route added without a rule here needs the most.
        _ => Scope::Admin,
    }
}

/// Most named tokens a node keeps.
pub const MAX_API_TOKENS: usize = 256;
/// Longest token name, in bytes.
pub const MAX_NAME_BYTES: usize = 64;
/// The file the named tokens are kept in, under the data dir.
pub const FILE: &str = "api-tokens.json";

/// Why a token operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccessError {
    /// Not one of read, submit, operate, admin.
    #[error("unknown scope {0:?}: use read, submit, operate or admin")]
    UnknownScope(String),
    /// The name is empty, too long or has other characters than A-Z a-z 0-9 _ - .
    #[error(
        "a token name is 1 to {MAX_NAME_BYTES} characters of A-Z, a-z, 0-9, '_', '-' and '.', not {0:?}"
    )]
    BadName(String),
    /// A token of that name exists.
    #[error("an API token named {0:?} exists; revoke it first or pick another name")]
    Exists(String),
    /// No token of that name.
    #[error("no API token named {0:?}")]
    NoSuchToken(String),
    /// [`MAX_API_TOKENS`] reached.
    #[error("this node keeps at most {MAX_API_TOKENS} API tokens; revoke some first")]
    Full,
    /// The token file cannot be read, parsed or written.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong (a parse error names its line and column).
        reason: String,
    },
}

impl AccessError {
    /// Whether the request itself is wrong (a 4xx) rather than the node (a 500).
    pub fn is_client_error(&self) -> bool {
        !matches!(self, AccessError::File { .. })
    }
}

/// One named token as the file keeps it (and `aamas api-token list` shows it, without
/// the digest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedToken {
    /// Its name.
    pub name: String,
    /// What it may do.
    pub scope: Scope,
    /// SHA-256 of its secret, hex.
    pub sha256: String,
    /// When it was created, ms since the Unix epoch.
    pub created_ms: u64,
}

/// The named tokens of one node, kept in [`FILE`].
#[derive(Debug)]
pub struct TokenStore {
    path: PathBuf,
    by_name: BTreeMap<String, NamedToken>,
}

fn sha256_hex(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn check_name(name: &str) -> Result<(), AccessError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    if name.is_empty() || name.len() > MAX_NAME_BYTES || !name.chars().all(allowed) {
        return Err(AccessError::BadName(name.to_string()));
    }
    Ok(())
}

impl TokenStore {
    /// Loads the store of `data_dir`; a missing file is an empty store, a broken one an
    /// error that names the file and the line (the node does not start with it: a store
    /// it cannot read is one it would overwrite).
    pub fn load(data_dir: &Path) -> Result<Self, AccessError> {
        let path = data_dir.join(FILE);
        let file_error = |reason: String| AccessError::File {
            path: path.clone(),
            reason,
        };
        let tokens: Vec<NamedToken> = match std::fs::read_to_string(&path) {
            Ok(text) => {
                serde_json::from_str(&text).map_err(|error| file_error(error.to_string()))?
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(error) => return Err(file_error(error.to_string())),
        };
        if tokens.len() > MAX_API_TOKENS {
            return Err(file_error(format!(
                "holds {} tokens, more than {MAX_API_TOKENS}",
                tokens.len()
            )));
        }
        let mut by_name = BTreeMap::new();
        for token in tokens {
            check_name(&token.name).map_err(|error| file_error(error.to_string()))?;
            by_name.insert(token.name.clone(), token);
        }
        Ok(Self { path, by_name })
    }

    /// The scope of the token whose secret is `secret`, if it is one of these.
    pub fn scope_of(&self, secret: &str) -> Option<Scope> {
        let digest = sha256_hex(secret);
        self.by_name
            .values()
            .find(|token| token.sha256 == digest)
            .map(|token| token.scope)
    }

    /// The named tokens, in name order.
    pub fn list(&self) -> Vec<NamedToken> {
        self.by_name.values().cloned().collect()
    }

    /// Creates a token named `name` with `scope` from `secret` (the caller draws it at
    /// random) and saves the store.
    pub fn create(
        &mut self,
        name: &str,
        scope: Scope,
        secret: &str,
        now_ms: u64,
    ) -> Result<(), AccessError> {
        check_name(name)?;
        if self.by_name.contains_key(name) {
            return Err(AccessError::Exists(name.to_string()));
        }
        if self.by_name.len() >= MAX_API_TOKENS {
            return Err(AccessError::Full);
        }
        let token = NamedToken {
            name: name.to_string(),
            scope,
            sha256: sha256_hex(secret),
            created_ms: now_ms,
        };
        self.by_name.insert(name.to_string(), token);
        self.save().inspect_err(|_| {
            self.by_name.remove(name);
        })
    }

    /// Revokes the token named `name` and saves the store.
    pub fn revoke(&mut self, name: &str) -> Result<(), AccessError> {
        let Some(token) = self.by_name.remove(name) else {
            return Err(AccessError::NoSuchToken(name.to_string()));
        };
        self.save().inspect_err(|_| {
            self.by_name.insert(name.to_string(), token);
        })
    }

    /// Writes the store to a temporary file (0600), syncs it and renames it over the
    /// old one, so a crash leaves the old store or the new one, never half of one.
    fn save(&self) -> Result<(), AccessError> {
        use std::io::Write as _;
        let file_error = |error: std::io::Error| AccessError::File {
            path: self.path.clone(),
            reason: error.to_string(),
        };
        let text =
            serde_json::to_string_pretty(&self.list()).map_err(|error| AccessError::File {
                path: self.path.clone(),
                reason: error.to_string(),
            })?;
        let temporary = self.path.with_extension("json.tmp");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut file = options.open(&temporary).map_err(file_error)?;
        file.write_all(text.as_bytes()).map_err(file_error)?;
        file.sync_all().map_err(file_error)?;
        std::fs::rename(&temporary, &self.path).map_err(file_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_nest_and_every_route_needs_one() {
        assert!(Scope::Read < Scope::Submit && Scope::Submit < Scope::Operate);
        assert!(Scope::Operate < Scope::Admin);
        let table = [
            ("GET", "/api/v1/system/status", Scope::Read),
            ("GET", "/api/v1/projects/{id}/artifacts/{task}", Scope::Read),
            ("GET", "/metrics", Scope::Read),
            ("POST", "/api/v1/projects", Scope::Submit),
            ("PUT", "/api/v1/projects/{id}/phase", Scope::Operate),
            ("GET", "/api/v1/tokens", Scope::Admin),
            ("POST", "/api/v1/tokens/revoke", Scope::Admin),
            ("DELETE", "/api/v1/members/{id}", Scope::Admin),
            ("GET", "/api/v1/policy", Scope::Read),
            ("POST", "/api/v1/policy/check", Scope::Read),
            ("PUT", "/api/v1/policy", Scope::Admin),
            ("POST", "/api/v1/alerts/{id}/ack", Scope::Operate),
            ("GET", "/api/v1/api-tokens", Scope::Admin),
            ("DELETE", "/api/v1/projects/{id}", Scope::Admin),
        ];
        for (method, route, scope) in table {
            assert_eq!(needed(method, route), scope, "{method} {route}");
        }
        for scope in [Scope::Read, Scope::Submit, Scope::Operate, Scope::Admin] {
            assert_eq!(Scope::parse(scope.as_str()).ok(), Some(scope));
        }
        assert!(Scope::parse("root").is_err());
    }

    #[test]
    fn tokens_are_kept_as_digests_across_loads_and_revoked_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = TokenStore::load(dir.path()).expect("no file is an empty store");
        store
            .create("ci", Scope::Submit, "s3cret", 1)
            .expect("create");
        assert!(matches!(
            store.create("ci", Scope::Read, "other", 2),
            Err(AccessError::Exists(_))
        ));
        assert!(matches!(
            store.create("bad name", Scope::Read, "x", 2),
            Err(AccessError::BadName(_))
        ));
        let text = std::fs::read_to_string(dir.path().join(FILE)).expect("saved");
        assert!(
            !text.contains("s3cret"),
            "the secret itself is never written"
        );
        let mut again = TokenStore::load(dir.path()).expect("load");
        assert_eq!(again.scope_of("s3cret"), Some(Scope::Submit));
        assert_eq!(again.scope_of("wrong"), None);
        again.revoke("ci").expect("revoke");
        assert!(matches!(
            again.revoke("ci"),
            Err(AccessError::NoSuchToken(_))
        ));
        let after = TokenStore::load(dir.path()).expect("load");
        assert_eq!(after.scope_of("s3cret"), None);
    }

    #[test]
    fn a_broken_file_is_an_error_that_names_it_and_the_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(FILE), "[\n  {\"name\": 3}\n]").expect("write");
        let error = TokenStore::load(dir.path()).expect_err("broken");
        let text = error.to_string();
        assert!(text.contains(FILE) && text.contains("line 2"), "{text}");
    }
}
