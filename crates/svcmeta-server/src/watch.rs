//! Blocking queries and the change-event stream.
//!
//! A blocking read (`index=N&wait=D`) returns at once when the revision of the last change
//! that could affect its answer (its scope revision) is above N, or when N is above the
//! current revision (the client resets, as with Consul). Otherwise it parks on the catalog's
//! one revision channel: every write wakes the parked requests, each re-checks its own scope in
//! O(1) and parks again unless its answer may differ. Nothing polls.
//! The event stream replays retained events after a revision and then follows new ones.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::Event as SseEvent;
use futures_util::Stream;
use svcmeta_core::{Event, Query};
use tokio::sync::watch;

use crate::api::error::ApiError;
use crate::catalog::Catalog;

/// Consul's default wait when a blocking read names none.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5 * 60);
/// The longest wait a client may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(10 * 60);

/// The blocking parameters of a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocking {
    /// The revision the client has seen.
    pub index: u64,
    /// How long to hold the request at most (before jitter).
    pub wait: Duration,
}

/// Parses `index` and `wait`; `None` when the read must not block (no index, or `index=0`).
pub fn parse_blocking(
    index: Option<&str>,
    wait: Option<&str>,
) -> Result<Option<Blocking>, ApiError> {
    let wait = match wait {
        None | Some("") => DEFAULT_WAIT,
        Some(text) => {
            let ms = svcmeta_core::parse_duration_ms(text).map_err(|reason| {
                ApiError::bad_request(format!(
                    "wait: {reason} (use a Go duration such as 30s or 5m)"
                ))
            })?;
            if ms == 0 {
                DEFAULT_WAIT
            } else {
                Duration::from_millis(ms).min(MAX_WAIT)
            }
        }
    };
    let index = match index {
        None | Some("") => return Ok(None),
        Some(text) => text.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!(
                "index: {text:?} is not a revision (an unsigned integer)"
            ))
        })?,
    };
    if index == 0 {
        return Ok(None);
    }
    Ok(Some(Blocking { index, wait }))
}

/// Up to wait/16 of extra delay, so that many clients parked together do not return together.
fn jitter(wait: Duration) -> Duration {
    let span = wait.as_millis() as u64 / 16;
    if span == 0 {
        return Duration::ZERO;
    }
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    Duration::from_millis(seed % span)
}

/// Waits until `scope()` (re-read after every write) exceeds the client's index, or the
/// wait runs out, or the index is ahead of the registry (the client must reset).
pub async fn wait_for_change(catalog: &Catalog, blocking: Blocking, scope: impl Fn() -> u64) {
    let mut revisions: watch::Receiver<u64> = catalog.subscribe();
    if blocking.index > *revisions.borrow_and_update() {
        return;
    }
    let deadline = tokio::time::Instant::now() + blocking.wait + jitter(blocking.wait);
    loop {
        if scope() > blocking.index || catalog.is_stopping() {
            return;
        }
        tokio::select! {
            changed = revisions.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep_until(deadline) => return,
        }
    }
}

struct StreamState {
    catalog: Arc<Catalog>,
    revisions: watch::Receiver<u64>,
    last: u64,
    query: Query,
    pending: VecDeque<Event>,
    finished: bool,
}

fn sse_event(event: &Event) -> SseEvent {
    let data = serde_json::to_string(event).unwrap_or_else(|_| "{}".to_string());
    SseEvent::default()
        .id(event.revision.to_string())
        .event(event.kind.as_str())
        .data(data)
}

/// The events after `since` that match `query`, then every new one, as server-sent events.
/// If the stream falls behind the retained history it sends a `reset` event and ends.
pub fn event_stream(
    catalog: Arc<Catalog>,
    since: u64,
    query: Query,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let revisions = catalog.subscribe();
    let state = StreamState {
        catalog,
        revisions,
        last: since,
        query,
        pending: VecDeque::new(),
        finished: false,
    };
    futures_util::stream::unfold(state, |mut state| async move {
        loop {
            if state.finished || state.catalog.is_stopping() {
                return None;
            }
            if let Some(event) = state.pending.pop_front() {
                let sse = sse_event(&event);
                return Some((Ok(sse), state));
            }
            // Mark the current revision seen before reading, so no write can slip between.
            state.revisions.borrow_and_update();
            match state.catalog.events_since(state.last) {
                Ok(events) => {
                    if let Some(newest) = events.last() {
                        state.last = newest.revision;
                    }
                    let query = &state.query;
                    state.pending.extend(
                        events
                            .into_iter()
                            .filter(|e| e.concerns(|i| query.matches(i))),
                    );
                    if !state.pending.is_empty() {
                        continue;
                    }
                }
                Err(trimmed) => {
                    state.finished = true;
                    let reset = SseEvent::default().event("reset").data(
                        serde_json::json!({
                            "error": "history_trimmed",
                            "message": trimmed.to_string(),
                        })
                        .to_string(),
                    );
                    return Some((Ok(reset), state));
                }
            }
            if state.revisions.changed().await.is_err() {
                return None;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_follow_consul() {
        assert_eq!(
            parse_blocking(None, Some("30s")).unwrap(),
            None,
            "wait alone never blocks"
        );
        assert_eq!(
            parse_blocking(Some("0"), Some("30s")).unwrap(),
            None,
            "index=0 never blocks"
        );
        assert_eq!(
            parse_blocking(Some("7"), None).unwrap(),
            Some(Blocking {
                index: 7,
                wait: DEFAULT_WAIT
            })
        );
        assert_eq!(
            parse_blocking(Some("7"), Some("1h"))
                .unwrap()
                .map(|b| b.wait),
            Some(MAX_WAIT)
        );
        assert_eq!(
            parse_blocking(Some("7"), Some("1500ms"))
                .unwrap()
                .map(|b| b.wait),
            Some(Duration::from_millis(1500))
        );
        assert!(parse_blocking(Some("x"), None).is_err());
        assert!(
            parse_blocking(Some("7"), Some("30")).is_err(),
            "a bare number has no unit"
        );
        assert!(jitter(Duration::from_secs(160)) < Duration::from_secs(10));
    }
}
