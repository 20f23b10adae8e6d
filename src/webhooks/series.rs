//! The per-subscription metric series (`subscription="<id>"`), and forgetting those of deleted
//! subscriptions.
//!
//! The Prometheus recorder cannot remove a series, so `/metrics` leaves out the series of
//! subscriptions known to be gone: the one this replica deleted, at once, and any other the
//! worker's periodic lag report no longer finds in the database (a deletion on another
//! replica), within that report's interval. What remains in the recorder is a few numbers per
//! deleted subscription.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};

use uuid::Uuid;

#[derive(Default)]
struct Series {
    /// Subscriptions this process has recorded series for.
    labelled: HashSet<Uuid>,
    /// Deleted subscriptions, as their label text.
    retired: HashSet<String>,
}

static SERIES: Mutex<Option<Series>> = Mutex::new(None);

fn with<T>(f: impl FnOnce(&mut Series) -> T) -> T {
    let mut guard = SERIES.lock().unwrap_or_else(PoisonError::into_inner);
    f(guard.get_or_insert_with(Series::default))
}

/// Notes that series labelled with `id` are being recorded.
pub fn labelled(id: Uuid) {
    with(|s| {
        s.labelled.insert(id);
    });
}

/// The subscription was deleted: its series leave `/metrics`.
pub fn retire(id: Uuid) {
    with(|s| {
        s.labelled.remove(&id);
        s.retired.insert(id.to_string());
    });
}

/// `live` is every subscription the database holds: any other with series is retired.
pub fn keep_only(live: &HashSet<Uuid>) {
    with(|s| {
        let gone: Vec<Uuid> = s.labelled.difference(live).copied().collect();
        for id in gone {
            s.labelled.remove(&id);
            s.retired.insert(id.to_string());
        }
        s.labelled.extend(live.iter().copied());
    });
}

/// The Prometheus text without the samples of retired subscriptions.
pub fn scrub(text: String) -> String {
    with(|s| {
        if s.retired.is_empty() {
            return text;
        }
        let mut out = String::with_capacity(text.len());
        for line in text.lines() {
            if !line.starts_with('#') && labels_retired(line, &s.retired) {
                continue;
            }
            out.push_str(line);
            out.push('\n');
        }
        out
    })
}

fn labels_retired(line: &str, retired: &HashSet<String>) -> bool {
    const LABEL: &str = "subscription=\"";
    line.find(LABEL)
        .map(|at| &line[at + LABEL.len()..])
        .and_then(|rest| rest.split('"').next())
        .is_some_and(|id| retired.contains(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retired_samples_leave_and_others_stay() {
        let gone = Uuid::new_v4();
        let kept = Uuid::new_v4();
        labelled(gone);
        labelled(kept);
        keep_only(&HashSet::from([kept]));
        let text = format!(
            "# TYPE regulator_webhook_lag_seconds gauge\n\
             regulator_webhook_lag_seconds{{subscription=\"{gone}\"}} 1\n\
             regulator_webhook_lag_seconds{{subscription=\"{kept}\"}} 2\n\
             regulator_intake_backlog 0\n"
        );
        let scrubbed = scrub(text);
        assert!(!scrubbed.contains(&gone.to_string()), "{scrubbed}");
        assert!(scrubbed.contains(&kept.to_string()), "{scrubbed}");
        assert!(
            scrubbed.contains("regulator_intake_backlog 0"),
            "{scrubbed}"
        );
        assert!(scrubbed.contains("# TYPE regulator_webhook_lag_seconds gauge"));
    }
}
