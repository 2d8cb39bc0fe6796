//! A fault layer between a node and the network, for the simulator and for fault
//! campaigns: it decides the fate of each application message (an RPC or a gossip
//! message) by who sends it to whom.
//!
//! ```text
//!   outbound request ──► fate(me, peer) ──► Deliver / Delay(d) / Drop (the caller gets an error)
//!                                           / Twice(d): now, and a copy after d (its answer unread)
//!   inbound request  ──► fate(peer, me) ──► Deliver / Delay(d) / Drop (the stream closes)
//!   inbound gossip   ──► fate(forwarder, me) ──► Deliver / Delay(d) / Drop (ignored, no penalty)
//! ```
//!
//! Loss and delay leave connections up: libp2p's own traffic (identify, ping, gossip
//! control messages) flows, as it would through a lossy network that still lets some
//! packets through. A cut ([`Faults::reachable`] false) is a partition as a real network
//! makes one: [`Cut`] refuses new connections across it, and the swarm closes those
//! already open within [`CUT_CHECK`], so liveness and healing see it. A node without a
//! fault layer (every real node) pays nothing for it.
//!
//! A real process gets one only from [`TEST_FAULTS`], the fault campaigns' switch:
//! [`FileFaults`] delays, reorders and duplicates its messages as a file says.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{Multiaddr, PeerId};

/// What happens to one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// It goes through now.
    Deliver,
    /// It goes through after this long.
    Delay(Duration),
    /// It is lost.
    Drop,
    /// It goes through now, and a copy of it after this long (an outbound request; the
    /// copy's answer is not read). Where a message cannot be copied (an inbound request,
    /// whose answer goes back once; a gossip message), it goes through once.
    Twice(Duration),
}

/// Decides the fate of messages; shared by every node of a simulation.
pub trait Faults: Send + Sync + std::fmt::Debug {
    /// The fate of one message from `from` to `to`.
    fn fate(&self, from: &PeerId, to: &PeerId) -> Fate;

    /// Whether `from` and `to` can hold a connection at all (false across a partition).
    fn reachable(&self, _from: &PeerId, _to: &PeerId) -> bool {
        true
    }
}

/// How often a node with a fault layer closes its connections that a cut made
/// unreachable.
pub const CUT_CHECK: Duration = Duration::from_millis(500);

/// Refuses connections across a cut, before the dial for a known peer and after the
/// handshake for an inbound one, as a network that lets no packet through would.
#[derive(Debug)]
pub(crate) struct Cut {
    me: PeerId,
    faults: Arc<dyn Faults>,
}

impl Cut {
    pub(crate) fn new(me: PeerId, faults: Arc<dyn Faults>) -> Self {
        Self { me, faults }
    }

    fn enforce(&self, peer: &PeerId) -> Result<(), ConnectionDenied> {
        if self.faults.reachable(&self.me, peer) {
            Ok(())
        } else {
            Err(ConnectionDenied::new(Unreachable(*peer)))
        }
    }
}

/// Why [`Cut`] refused a connection.
#[derive(Debug)]
struct Unreachable(PeerId);

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "fault layer: {} is across a cut", self.0)
    }
}

impl std::error::Error for Unreachable {}

impl NetworkBehaviour for Cut {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = std::convert::Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.enforce(&peer)?;
        Ok(dummy::ConnectionHandler)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: Option<PeerId>,
        _: &[Multiaddr],
        _: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        if let Some(peer) = peer {
            self.enforce(&peer)?;
        }
        Ok(Vec::new())
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.enforce(&peer)?;
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, _: FromSwarm) {}

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

/// Most messages held back by delays at once, per node; beyond it, delayed messages are
/// dropped (and counted as such by the simulator's delivery figures).
pub const MAX_DELAYED: usize = 4_096;

/// Dice for fault layers: SplitMix64 over a counter, shared by threads. Which message
/// gets which number depends on scheduling, so a rate is reproducible, not each fate.
#[derive(Debug)]
pub struct Dice(AtomicU64);

impl Dice {
    /// Dice seeded by `seed`.
    pub fn new(seed: u64) -> Self {
        Self(AtomicU64::new(seed))
    }

    /// The next number.
    pub fn roll(&self) -> u64 {
        let mut z = self
            .0
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The environment variable that gives a real node a [`FileFaults`]: the path of its
/// fault file. For fault campaigns only; a node started with it says so in its log.
pub const TEST_FAULTS: &str = "AAMAS_TEST_FAULTS";

/// How often [`FileFaults`] looks at its file again.
const FILE_FAULTS_REREAD: Duration = Duration::from_millis(200);

/// The longest delay, jitter or copy delay a fault file may ask for.
const MAX_FILE_DELAY_MS: u64 = 10_000;

/// What a fault file asks for: a TOML table, every key optional.
///
/// ```toml
/// delay_ms = 50           # every message to or from this node waits this long
/// jitter_ms = 100         # and up to this much more, at random: messages overtake each other
/// duplicate_percent = 20  # this share of its outbound requests is sent twice: the
///                         # original at once, the copy after the delay and jitter
/// copy_late_ms = 800      # or, when given, the copy up to this long after its original,
///                         # at random (a duplicate that delays nothing else)
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileFaultState {
    /// Every message's fixed delay (ms).
    #[serde(default)]
    pub delay_ms: u64,
    /// Up to this much more delay, uniformly (ms).
    #[serde(default)]
    pub jitter_ms: u64,
    /// Percent of outbound requests sent twice (0 to 100).
    #[serde(default)]
    pub duplicate_percent: u8,
    /// When not 0, a copy goes out up to this long after its original, uniformly (ms),
    /// instead of after the delay and jitter.
    #[serde(default)]
    pub copy_late_ms: u64,
}

impl FileFaultState {
    /// Parses a fault file's text; a value out of its bounds is an error.
    pub fn parse(text: &str) -> Result<Self, String> {
        let state: Self = toml::from_str(text).map_err(|error| error.message().to_string())?;
        if [state.delay_ms, state.jitter_ms, state.copy_late_ms]
            .iter()
            .any(|&ms| ms > MAX_FILE_DELAY_MS)
        {
            return Err(format!(
                "delay_ms, jitter_ms and copy_late_ms are at most {MAX_FILE_DELAY_MS}"
            ));
        }
        if state.duplicate_percent > 100 {
            return Err("duplicate_percent is at most 100".into());
        }
        Ok(state)
    }
}

/// A fault layer read from a file that the fault campaign rewrites while the node runs
/// (looked at again every [`FILE_FAULTS_REREAD`]): no file, or an empty one, is no
/// fault; a file that does not parse is logged and the previous state kept. It applies
/// to every peer, and never cuts connections (nftables does that to a real host).
#[derive(Debug)]
pub struct FileFaults {
    path: PathBuf,
    /// When the file was last read, and what it said.
    state: Mutex<(Option<Instant>, FileFaultState)>,
    dice: Dice,
    delayed: AtomicU64,
    duplicated: AtomicU64,
}

impl FileFaults {
    /// A layer that reads `path`, with dice seeded by `seed`.
    pub fn new(path: PathBuf, seed: u64) -> Self {
        Self {
            path,
            state: Mutex::new((None, FileFaultState::default())),
            dice: Dice::new(seed),
            delayed: AtomicU64::new(0),
            duplicated: AtomicU64::new(0),
        }
    }

    /// The layer [`TEST_FAULTS`] names, if it is set.
    pub fn from_env() -> Option<Arc<dyn Faults>> {
        let path = std::env::var_os(TEST_FAULTS)?;
        let mut seed = [0u8; 8];
        if getrandom::fill(&mut seed).is_err() {
            seed = 0x5EED_u64.to_le_bytes();
        }
        tracing::warn!(
            file = %PathBuf::from(&path).display(),
            "{TEST_FAULTS} is set: this node delays and duplicates its messages as that file \
             says (for fault campaigns only)"
        );
        Some(Arc::new(Self::new(path.into(), u64::from_le_bytes(seed))))
    }

    /// Messages delayed so far, and requests sent twice.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.delayed.load(Ordering::Relaxed),
            self.duplicated.load(Ordering::Relaxed),
        )
    }

    /// What the file says now (read again when the last read is old).
    fn current(&self) -> FileFaultState {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (read_at, current) = &mut *state;
        if read_at.is_some_and(|at| at.elapsed() < FILE_FAULTS_REREAD) {
            return *current;
        }
        *read_at = Some(Instant::now());
        let read = match std::fs::read_to_string(&self.path) {
            Ok(text) => FileFaultState::parse(&text),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                Ok(FileFaultState::default())
            }
            Err(error) => Err(error.to_string()),
        };
        match read {
            Ok(new) if new != *current => {
                tracing::info!(?new, "test fault layer changed");
                *current = new;
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(
                file = %self.path.display(),
                %error,
                "test fault file not read; the previous faults stay"
            ),
        }
        *current
    }
}

impl Faults for FileFaults {
    fn fate(&self, _from: &PeerId, _to: &PeerId) -> Fate {
        let state = self.current();
        if state == FileFaultState::default() {
            return Fate::Deliver;
        }
        let extra = if state.jitter_ms == 0 {
            0
        } else {
            self.dice.roll() % (state.jitter_ms + 1)
        };
        let delay = Duration::from_millis(state.delay_ms + extra);
        if state.duplicate_percent > 0
            && self.dice.roll() % 100 < u64::from(state.duplicate_percent)
        {
            self.duplicated.fetch_add(1, Ordering::Relaxed);
            let copy_after = if state.copy_late_ms == 0 {
                delay
            } else {
                Duration::from_millis(self.dice.roll() % (state.copy_late_ms + 1))
            };
            return Fate::Twice(copy_after);
        }
        if delay.is_zero() {
            return Fate::Deliver;
        }
        self.delayed.fetch_add(1, Ordering::Relaxed);
        Fate::Delay(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_file_is_checked_and_bounded() {
        assert_eq!(FileFaultState::parse(""), Ok(FileFaultState::default()));
        assert_eq!(
            FileFaultState::parse("delay_ms = 5\nduplicate_percent = 20"),
            Ok(FileFaultState {
                delay_ms: 5,
                jitter_ms: 0,
                duplicate_percent: 20,
                copy_late_ms: 0,
            })
        );
        for (text, says) in [
            ("delay = 5", "unknown field"),
            ("delay_ms = -1", "invalid value"),
            ("delay_ms = \"5\"", "invalid type"),
            ("jitter_ms = 10001", "at most 10000"),
            ("duplicate_percent = 101", "at most 100"),
            ("copy_late_ms = 10001", "at most 10000"),
        ] {
            let error = FileFaultState::parse(text).expect_err(text);
            assert!(error.contains(says), "{text}: {error}");
        }
    }

    #[test]
    fn a_fault_file_delays_duplicates_and_is_followed_as_it_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("faults.toml");
        let faults = FileFaults::new(path.clone(), 7);
        let (a, b) = (PeerId::random(), PeerId::random());
        assert_eq!(faults.fate(&a, &b), Fate::Deliver, "no file, no fault");

        std::fs::write(
            &path,
            "delay_ms = 10\njitter_ms = 5\nduplicate_percent = 25",
        )
        .expect("write");
        // A fresh layer reads it at once; the first one after its reread period.
        let faults = FileFaults::new(path.clone(), 7);
        let mut twice = 0;
        for _ in 0..4_000 {
            let delay = match faults.fate(&a, &b) {
                Fate::Delay(delay) => delay,
                Fate::Twice(delay) => {
                    twice += 1;
                    delay
                }
                other => panic!("expected a delay, got {other:?}"),
            };
            assert!(
                (Duration::from_millis(10)..=Duration::from_millis(15)).contains(&delay),
                "{delay:?}"
            );
        }
        assert!(
            (800..1_200).contains(&twice),
            "{twice} of 4000 twice at 25%"
        );
        assert_eq!(faults.counts(), (4_000 - twice, twice));

        // A broken file keeps the previous faults; a removed one ends them.
        std::fs::write(&path, "delay_ms = ").expect("write");
        faults.state.lock().expect("state").0 = None;
        assert!(matches!(
            faults.fate(&a, &b),
            Fate::Delay(_) | Fate::Twice(_)
        ));
        std::fs::remove_file(&path).expect("remove");
        faults.state.lock().expect("state").0 = None;
        assert_eq!(faults.fate(&a, &b), Fate::Deliver);

        // A duplicate alone: the other messages go at once, and the copies up to
        // `copy_late_ms` after their originals, spread over that span.
        std::fs::write(&path, "duplicate_percent = 50\ncopy_late_ms = 800").expect("write");
        faults.state.lock().expect("state").0 = None;
        let (mut delivered, mut copies) = (0, Vec::new());
        for _ in 0..2_000 {
            match faults.fate(&a, &b) {
                Fate::Deliver => delivered += 1,
                Fate::Twice(after) => copies.push(after),
                other => panic!("a duplicate fault delays nothing: {other:?}"),
            }
        }
        assert!(
            (800..1_200).contains(&delivered),
            "{delivered} of 2000 once at 50%"
        );
        assert!(
            copies
                .iter()
                .all(|after| *after <= Duration::from_millis(800))
        );
        assert!(
            copies
                .iter()
                .any(|after| *after < Duration::from_millis(200))
        );
        assert!(
            copies
                .iter()
                .any(|after| *after > Duration::from_millis(600))
        );
    }
}
