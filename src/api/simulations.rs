//! Simulation of a draft against the recorded history: at once (`POST /v1/policies/simulate`,
//! the report in the answer), or as a job (`POST /v1/policies/simulations`, a status resource
//! that reports orders replayed of the total while it runs, then the same report).
//!
//! Jobs live in this replica's memory: a simulation reads the history and writes nothing, so
//! there is nothing to recover after a restart but the request, which the caller still has.
//! They are bounded (see [`Simulations`]) because each one holds a compiled bundle, a thread
//! deciding and, once done, its report.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::extract::{json_body, require};
use super::policies::{compile, stored, DRAFT_BODY_LIMIT};
use super::problem::{ApiError, Problem};
use super::AppState;
use crate::auth::{Principal, Role};
use crate::policy::{PolicyEngine, PolicyFiles};
use crate::simulate::{self, Progress, Range, Report, SimulateError};
use crate::storage::{self, StorageError};

/// Changed orders listed by a simulation unless asked otherwise, and at most.
const DEFAULT_MAX_CHANGES: usize = 1_000;
const MAX_CHANGES: usize = 100_000;

const AUTHORS: &[Role] = &[Role::PolicyAuthor];

/// What to simulate, over which recorded decisions.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SimulateRequest {
    /// A draft's files, or
    pub files: Option<PolicyFiles>,
    /// a stored version (exactly one of the two).
    pub version: Option<u32>,
    /// The range (default: the whole log): seqs `from_seq..=to_seq`, decision times
    /// `from_time <= t < to_time`. A range that cuts a conflict group takes it whole.
    pub from_seq: Option<u64>,
    pub to_seq: Option<u64>,
    pub from_time: Option<DateTime<Utc>>,
    pub to_time: Option<DateTime<Utc>>,
    /// Changed orders to list (default 1,000, at most 100,000); the counts are always whole.
    pub max_changes: Option<usize>,
}

/// A simulation ready to run: the request checked and the draft compiled.
struct Prepared {
    engine: Arc<PolicyEngine>,
    range: Range,
    max_changes: usize,
}

/// Everything about a request that can be wrong is found here, before anything runs: a job
/// fails only for what the history holds.
async fn prepare(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<Prepared, ApiError> {
    let request: SimulateRequest = json_body(body, DRAFT_BODY_LIMIT)?;
    let files = match (request.files, request.version) {
        (Some(files), None) => files,
        (None, Some(version)) => stored(state, version).await?.files,
        _ => {
            return Err(ApiError::InvalidRequest(
                "give exactly one of `files` (a draft) and `version`".into(),
            ))
        }
    };
    let range = Range {
        from_seq: request.from_seq,
        to_seq: request.to_seq,
        from_time: request.from_time,
        to_time: request.to_time,
    };
    if let Some(why) = range.inverted() {
        return Err(ApiError::InvalidRequest(why));
    }
    let max_changes = request.max_changes.unwrap_or(DEFAULT_MAX_CHANGES);
    if max_changes > MAX_CHANGES {
        return Err(ApiError::InvalidRequest(format!(
            "max_changes is at most {MAX_CHANGES}"
        )));
    }
    let compiled = compile(files).await?;
    Ok(Prepared {
        engine: Arc::new(compiled.engine),
        range,
        max_changes,
    })
}

async fn execute(
    pool: &sqlx::PgPool,
    prepared: Prepared,
    progress: Arc<Progress>,
    by: &str,
) -> Result<Report, ApiError> {
    let report = simulate::run_with_progress(
        pool,
        prepared.engine,
        &prepared.range,
        prepared.max_changes,
        progress,
    )
    .await
    .map_err(|e| match e {
        SimulateError::Storage(e) => ApiError::Internal(e),
        history @ SimulateError::History { .. } => ApiError::Internal(storage::corrupt(history)),
    })?;
    tracing::info!(
        orders = report.orders,
        changed = report.counts.changed,
        elapsed_ms = report.elapsed_ms,
        by = %by,
        "policy simulation"
    );
    Ok(report)
}

/// Replay recorded orders against a draft (or a stored version): every decision whose outcome,
/// priority or determining policies would change, with counts.
#[utoipa::path(
    post, path = "/v1/policies/simulate", tag = "policies", request_body = SimulateRequest,
    responses(
        (status = 200, body = Report),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn simulate(
    State(state): State<AppState>,
    principal: Principal,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Report>, ApiError> {
    require(&principal, AUTHORS)?;
    let prepared = prepare(&state, body).await?;
    let report = execute(&state.pool, prepared, Arc::default(), &principal.sub).await?;
    Ok(Json(report))
}

/// Where a simulation job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Running,
    Done,
    Failed,
}

/// A simulation job: its progress, then its report or why it failed.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SimulationStatus {
    #[schema(value_type = String, format = Uuid)]
    pub id: Uuid,
    pub status: JobStatus,
    /// Orders decided again so far.
    pub replayed: u64,
    /// Orders in the range (0 until they are counted, right after the job starts).
    pub total: u64,
    /// When `done`: exactly what `POST /v1/policies/simulate` answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Report>)]
    pub report: Option<Arc<Report>>,
    /// When `failed`: why, as a problem document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Problem>,
}

/// Start a simulation job: the same request as `POST /v1/policies/simulate`, checked and
/// compiled at once (its errors are this answer's), then replayed while
/// `GET /v1/policies/simulations/{id}` reports the orders replayed of the total.
#[utoipa::path(
    post, path = "/v1/policies/simulations", tag = "policies", request_body = SimulateRequest,
    responses(
        (status = 202, description = "Started; `Location` is its status resource", body = SimulationStatus),
        (status = 404, description = "No such stored version", body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many simulations are running on this replica (`too-many-simulations`); try again when one ends", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn start(
    State(state): State<AppState>,
    principal: Principal,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    require(&principal, AUTHORS)?;
    let prepared = prepare(&state, body).await?;
    let jobs = Arc::clone(&state.simulations);
    let (id, progress) = jobs.start()?;
    let pool = state.pool.clone();
    let by = principal.sub.clone();
    let runner = tokio::spawn({
        let progress = Arc::clone(&progress);
        async move { execute(&pool, prepared, progress, &by).await }
    });
    // A job whose task panicked must not stay `running`, holding a slot, forever.
    tokio::spawn(async move {
        let outcome = match runner.await {
            Ok(result) => result.map_err(|e| e.problem()),
            Err(e) => Err(ApiError::Internal(StorageError::Corrupt(format!(
                "simulation {id}: {e}"
            )))
            .problem()),
        };
        jobs.finish(id, outcome);
    });
    tracing::info!(%id, by = %principal.sub, "simulation job started");
    let location = HeaderValue::from_str(&format!("/v1/policies/simulations/{id}"))
        .map_err(|e| ApiError::Internal(StorageError::Corrupt(e.to_string())))?;
    let status = state
        .simulations
        .status(id)
        .ok_or_else(|| ApiError::NotFound(format!("simulation {id}")))?;
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(status),
    )
        .into_response())
}

/// A simulation job: `running` with the orders replayed of the total, then `done` with its
/// report or `failed` with why. Jobs live in the memory of the replica that started them.
#[utoipa::path(
    get, path = "/v1/policies/simulations/{id}", tag = "policies",
    params(("id" = String, Path, description = "The job's id, from the `Location` of its start")),
    responses(
        (status = 200, body = SimulationStatus),
        (status = 404, description = "No such job on this replica (or it was evicted to make room)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn status(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<SimulationStatus>, ApiError> {
    require(&principal, AUTHORS)?;
    let not_found = || ApiError::NotFound(format!("simulation {id}"));
    let parsed = Uuid::parse_str(&id).map_err(|_| not_found())?;
    state
        .simulations
        .status(parsed)
        .map(Json)
        .ok_or_else(not_found)
}

/// How many jobs may run at once on a replica: each takes a thread deciding.
pub const MAX_RUNNING: usize = 4;
/// How many jobs are kept, finished ones included; the oldest finished makes room.
pub const MAX_KEPT: usize = 64;
/// How many changed orders the kept reports may list together (a report lists up to 100,000);
/// the oldest finished jobs make room.
pub const MAX_KEPT_CHANGES: usize = 200_000;

/// The simulation jobs of this replica, oldest first.
#[derive(Debug)]
pub struct Simulations {
    jobs: Mutex<VecDeque<Job>>,
    /// [`MAX_KEPT_CHANGES`], smaller in tests.
    change_budget: usize,
}

impl Default for Simulations {
    fn default() -> Self {
        Self {
            jobs: Mutex::default(),
            change_budget: MAX_KEPT_CHANGES,
        }
    }
}

#[derive(Debug)]
struct Job {
    id: Uuid,
    progress: Arc<Progress>,
    outcome: Option<Result<Arc<Report>, Problem>>,
}

impl Job {
    fn changes(&self) -> usize {
        match &self.outcome {
            Some(Ok(report)) => report.changes.len(),
            _ => 0,
        }
    }

    fn view(&self) -> SimulationStatus {
        let (status, report, error) = match &self.outcome {
            None => (JobStatus::Running, None, None),
            Some(Ok(report)) => (JobStatus::Done, Some(Arc::clone(report)), None),
            Some(Err(problem)) => (JobStatus::Failed, None, Some(problem.clone())),
        };
        SimulationStatus {
            id: self.id,
            status,
            replayed: self.progress.replayed(),
            total: self.progress.total(),
            report,
            error,
        }
    }
}

impl Simulations {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Job>> {
        // A panic while holding the lock leaves the list as consistent as any step of it.
        self.jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a running job, or refuses with `too-many-simulations` when
    /// [`MAX_RUNNING`] are running.
    pub fn start(&self) -> Result<(Uuid, Arc<Progress>), ApiError> {
        let mut jobs = self.lock();
        let running = jobs.iter().filter(|j| j.outcome.is_none()).count();
        if running >= MAX_RUNNING {
            return Err(ApiError::TooManySimulations(MAX_RUNNING));
        }
        while jobs.len() >= MAX_KEPT {
            // Fewer may run than are kept, so a finished job is there to go.
            let Some(oldest) = jobs.iter().position(|j| j.outcome.is_some()) else {
                return Err(ApiError::TooManySimulations(MAX_RUNNING));
            };
            jobs.remove(oldest);
        }
        let id = Uuid::new_v4();
        let progress = Arc::new(Progress::default());
        jobs.push_back(Job {
            id,
            progress: Arc::clone(&progress),
            outcome: None,
        });
        Ok((id, progress))
    }

    /// Records how job `id` ended.
    pub fn finish(&self, id: Uuid, outcome: Result<Report, Problem>) {
        let mut jobs = self.lock();
        if let Some(job) = jobs.iter_mut().find(|j| j.id == id) {
            job.outcome = Some(outcome.map(Arc::new));
        }
        // Large reports push the oldest finished ones out, never the one just finished.
        while jobs.iter().map(Job::changes).sum::<usize>() > self.change_budget {
            match jobs.iter().position(|j| j.outcome.is_some() && j.id != id) {
                Some(oldest) => {
                    jobs.remove(oldest);
                }
                None => break,
            }
        }
    }

    /// Where job `id` stands, if this replica has it.
    pub fn status(&self, id: Uuid) -> Option<SimulationStatus> {
        self.lock().iter().find(|j| j.id == id).map(Job::view)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(changes: usize) -> Report {
        let mut report: Report = serde_json::from_value(serde_json::json!({
            "from_seq": 1, "to_seq": 0, "orders": 0,
            "counts": {"changed": 0, "outcome": 0, "priority": 0, "determining_policies": 0, "transitions": {}},
            "changes": [], "truncated": false, "elapsed_ms": 0, "orders_per_second": 0.0
        }))
        .unwrap();
        if changes > 0 {
            let change: simulate::Change = serde_json::from_value(serde_json::json!({
                "seq": 2, "order_id": "00000000-0000-4000-8000-000000000001", "kind": "FREEZE",
                "issuer": "US-SEC", "target": {"chain": "ethereum", "asset": "0xA"},
                "decided_at": "2026-01-01T00:00:00Z",
                "recorded": {"outcome": "APPLIED", "priority": 700, "determining_policies": [], "reason_code": "applied"},
                "simulated": {"outcome": "REJECTED", "priority": 700, "determining_policies": [], "reason_code": "no_policy"},
                "differs": ["outcome"]
            }))
            .unwrap();
            report.changes = vec![change; changes];
        }
        report
    }

    #[test]
    fn at_most_four_run_and_a_finished_one_frees_a_slot() {
        let jobs = Simulations::default();
        let started: Vec<Uuid> = (0..MAX_RUNNING).map(|_| jobs.start().unwrap().0).collect();
        let refused = jobs.start().unwrap_err();
        assert_eq!(refused.problem().status, 429);
        assert_eq!(
            refused.problem().kind,
            "urn:regulator:problem:too-many-simulations"
        );
        jobs.finish(started[0], Ok(report(0)));
        assert_eq!(jobs.status(started[0]).unwrap().status, JobStatus::Done);
        assert!(jobs.start().is_ok());
        assert_eq!(jobs.status(started[1]).unwrap().status, JobStatus::Running);
    }

    #[test]
    fn the_oldest_finished_job_makes_room_and_running_ones_stay() {
        let jobs = Simulations::default();
        let running = jobs.start().unwrap().0;
        let mut finished = Vec::new();
        for _ in 1..MAX_KEPT {
            let (id, _) = jobs.start().unwrap();
            jobs.finish(id, Err(ApiError::NotFound("x".into()).problem()));
            finished.push(id);
        }
        let (newest, _) = jobs.start().unwrap();
        assert!(
            jobs.status(finished[0]).is_none(),
            "the oldest finished went"
        );
        assert!(jobs.status(finished[1]).is_some());
        assert!(
            jobs.status(running).is_some(),
            "a running job is never evicted"
        );
        assert!(jobs.status(newest).is_some());
        assert_eq!(jobs.lock().len(), MAX_KEPT);
        assert_eq!(jobs.status(finished[1]).unwrap().status, JobStatus::Failed);
    }

    #[test]
    fn large_reports_push_out_older_ones() {
        let jobs = Simulations {
            change_budget: 10,
            ..Simulations::default()
        };
        let (a, _) = jobs.start().unwrap();
        jobs.finish(a, Ok(report(6)));
        let (b, _) = jobs.start().unwrap();
        jobs.finish(b, Ok(report(4)));
        assert!(jobs.status(a).is_some(), "10 changes fit the budget");
        let (c, _) = jobs.start().unwrap();
        jobs.finish(c, Ok(report(6)));
        assert!(jobs.status(a).is_none(), "the oldest went");
        assert!(jobs.status(b).is_some(), "4 + 6 fit again");
        assert_eq!(jobs.status(c).unwrap().report.unwrap().changes.len(), 6);
        // A report alone over the budget is kept: it is the one just asked for.
        let (d, _) = jobs.start().unwrap();
        jobs.finish(d, Ok(report(11)));
        assert!(jobs.status(d).is_some());
        assert!(jobs.status(b).is_none() && jobs.status(c).is_none());
    }
}
