//! Start-up: configuration in, a running replica out (HTTP server, sequencer, hub, intake).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::api::{self, AppState};
use crate::audit::notary::{Notary, NotaryError};
use crate::audit::signer::CheckpointKey;
use crate::auth::{KeyError, KeySource, Verifier};
use crate::hub::Hub;
use crate::intake::IntakeQueue;
use crate::policy::{Compiled, PolicyErrors, PolicyFiles};
use crate::sequencer::{Sequencer, SequencerConfig};
use crate::storage::{self, StorageError};
use crate::webhooks::worker::Worker;
use crate::webhooks::{Changes, WebhookConfig};

/// Everything a replica needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub database_url: String,
    pub policies: PathBuf,
    /// The conflict window `W`.
    pub window: chrono::Duration,
    /// How long a submission waits for its decision before answering 202.
    pub submit_wait: Duration,
    pub keys: KeySource,
    pub jwt_issuer: String,
    pub jwt_audience: String,
    pub max_connections: u32,
    /// How long a request waits for a database connection before it is answered 503.
    pub db_acquire_timeout: Duration,
    /// How long the sequencer leader's lease lasts unrenewed before a standby deposes it.
    pub leader_lease: Duration,
    pub webhooks: WebhookConfig,
    /// The Ed25519 key that signs checkpoints (PKCS#8 PEM; created, mode 0600, if missing).
    pub checkpoint_key: PathBuf,
    /// How often a checkpoint is published when there are new decisions.
    pub checkpoint_interval: Duration,
    /// Timeouts of the HTTP edge, the token lifetime cap, and who may scrape `/metrics`.
    pub http: api::edge::HttpConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("refusing to listen on {0}: a non-loopback address needs configured keys (--jwt-public-key or --jwks), not the development secret")]
    InsecureListen(SocketAddr),
    #[error("the policies in {dir} do not load:\n{}", list(errors))]
    Policies { dir: PathBuf, errors: PolicyErrors },
    #[error("there is no policy directory {0}: give --policies (REGULATOR_POLICIES); a new database needs the jurisdiction policies to import as version 1")]
    PoliciesMissing(PathBuf),
    #[error("cannot use the database at {url}: {source}{}", if source.is_unavailable() { DATABASE_HINT } else { "" })]
    Database { url: String, source: StorageError },
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    CheckpointKey(#[from] crate::audit::signer::CheckpointKeyError),
    #[error("cannot build the webhook client: {0}")]
    WebhookClient(#[from] reqwest::Error),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("cannot start the sequencer's thread: {0}")]
    Thread(std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

const DATABASE_HINT: &str =
    "\n  hint: is PostgreSQL running and listening there? Start it, or give --database-url \
     (DATABASE_URL). With neither, `serve` starts a private PostgreSQL of its own when the server \
     binaries are installed.";

/// Each error on a line of its own, with its place.
fn list(errors: &PolicyErrors) -> String {
    errors
        .errors
        .iter()
        .map(|e| {
            let place = match (e.line, e.column) {
                (Some(l), Some(c)) => format!("{}:{l}:{c}", e.file),
                _ => e.file.clone(),
            };
            let hint = e
                .hint
                .as_ref()
                .map_or(String::new(), |h| format!(" (hint: {h})"));
            format!("  {place}: [{}] {}{hint}", e.code, e.message)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((user_info, host)) if user_info.contains(':') => {
            let user = user_info.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        _ => url.to_owned(),
    }
}

/// How long [`App::stop`] waits for open requests.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A running replica.
pub struct App {
    pub addr: SocketAddr,
    pub pool: PgPool,
    /// This replica's webhook worker, as named in the leases it holds.
    pub webhook_worker: Option<uuid::Uuid>,
    shutdown: watch::Sender<bool>,
    /// Ends the sequencer's thread at once, dropping its connection mid-flight.
    kill: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl App {
    /// Takes the port, connects (creating the database and applying migrations) and starts.
    /// The port is taken first: a port in use is reported before anything is migrated.
    pub async fn start(config: Config) -> Result<App, StartError> {
        check_listen(&config)?;
        let listener = bind(config.listen).await?;
        tracing::info!(url = %redact(&config.database_url), "connecting to the database");
        let pool = storage::connect_with(
            &config.database_url,
            config.max_connections,
            config.db_acquire_timeout,
        )
        .await
        .map_err(|source| StartError::Database {
            url: redact(&config.database_url),
            source,
        })?;
        Self::start_on(config, pool, Some(listener)).await
    }

    /// Starts on an existing, migrated pool (tests give each app its own database).
    pub async fn start_with_pool(config: Config, pool: PgPool) -> Result<App, StartError> {
        Self::start_on(config, pool, None).await
    }

    async fn start_on(
        config: Config,
        pool: PgPool,
        listener: Option<TcpListener>,
    ) -> Result<App, StartError> {
        check_listen(&config)?;
        let listener = match listener {
            Some(listener) => listener,
            None => bind(config.listen).await?,
        };
        config.webhooks.check().map_err(StartError::Config)?;
        import_policies(&pool, &config.policies).await?;
        let verifier = Arc::new(
            Verifier::new(&config.keys, &config.jwt_issuer, &config.jwt_audience)?
                .with_max_lifetime(config.http.max_token_lifetime),
        );

        let checkpoint_key = CheckpointKey::load_or_create(&config.checkpoint_key)?;
        tracing::info!(key_id = checkpoint_key.key_id(), "checkpoint key loaded");
        let notary = Arc::new(Notary::new(checkpoint_key));

        let head = storage::ledger_head(&pool).await?;
        let hub = Arc::new(Hub::new(head.seq));
        let intake_signal = Arc::new(Notify::new());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = Vec::new();

        let sequencer = Sequencer::new(
            pool.clone(),
            Arc::clone(&hub),
            SequencerConfig {
                window: config.window,
                lease_ttl: config.leader_lease,
                ..SequencerConfig::default()
            },
            Arc::clone(&intake_signal),
        );
        let leading = sequencer.leading();
        let handoff = sequencer.handoff();
        let (kill, killed) = watch::channel(false);
        tasks.push(spawn_sequencer(sequencer, shutdown_rx.clone(), killed)?);
        tasks.push(tokio::spawn(metrics_upkeep(shutdown_rx.clone())));
        tasks.push(tokio::spawn(queue_upkeep(
            pool.clone(),
            leading.clone(),
            shutdown_rx.clone(),
        )));
        tasks.push(tokio::spawn(Arc::clone(&hub).listen(
            pool.clone(),
            Arc::clone(&intake_signal),
            shutdown_rx.clone(),
        )));

        tasks.push(tokio::spawn(checkpoints(
            pool.clone(),
            Arc::clone(&notary),
            config.checkpoint_interval,
            shutdown_rx.clone(),
        )));
        let webhook_wake = Arc::new(Changes::default());
        let mut webhook_worker = None;
        if config.webhooks.deliver {
            let worker = Worker::new(
                pool.clone(),
                config.webhooks.clone(),
                hub.head(),
                Arc::clone(&webhook_wake),
            )?;
            tracing::info!(worker = %worker.owner(), "webhook delivery worker started");
            webhook_worker = Some(worker.owner());
            tasks.push(tokio::spawn(worker.run(shutdown_rx.clone())));
        }

        let state = AppState {
            pool: pool.clone(),
            hub,
            intake: IntakeQueue::spawn(
                pool.clone(),
                Arc::clone(&intake_signal),
                leading.clone(),
                handoff,
            ),
            intake_signal,
            verifier,
            submit_wait: config.submit_wait,
            metrics: metrics_handle(),
            leading,
            webhooks: Arc::new(config.webhooks.clone()),
            webhook_wake,
            notary,
            dev_sign_in: match &config.keys {
                KeySource::DevSecret(secret) => Some(Arc::new(api::sign_in::DevSignIn::new(
                    secret.clone(),
                    &config.jwt_issuer,
                    &config.jwt_audience,
                    config.http.max_token_lifetime,
                ))),
                _ => None,
            },
            simulations: Arc::default(),
        };
        await_first_activation(&pool).await?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let router = api::router(state, &config.http);
        let http = config.http.clone();
        tasks.push(tokio::spawn(async move {
            api::edge::serve(listener, router, &http, shutdown_rx).await;
        }));
        tracing::info!(%addr, "listening");
        Ok(App {
            addr,
            pool,
            webhook_worker,
            shutdown,
            kill,
            tasks,
        })
    }

    /// Stops accepting requests, lets the sequencer step down, and waits for everything; open
    /// streams (SSE, long-polls) get [`SHUTDOWN_GRACE`] to finish before they are cut.
    pub async fn stop(self) {
        self.shutdown.send_replace(true);
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        for mut task in self.tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
            }
        }
    }

    /// Ends every task at once, as a crash would: connections drop, the lock goes with them.
    pub fn kill(self) {
        self.kill.send_replace(true);
        for task in &self.tasks {
            task.abort();
        }
        // A crash tells nobody: the shutdown channel is neither set nor closed. Dropping its
        // sender would close it, which the sequencer takes for a graceful step-down: it would
        // release the lock and stand for it again before it sees the kill.
        std::mem::forget(self.shutdown);
    }
}

/// Runs the sequencer on a thread and runtime of its own: it is the one serial step every
/// decision passes through, so it should not queue behind HTTP handlers for a turn on the
/// shared runtime. The returned task ends when the sequencer does.
/// On a database with no policy version, stores the files of `dir` as version 1 (which the
/// sequencer then activates). Otherwise the files are not used: the ledger says which version
/// decides, and a difference is only reported.
pub async fn import_policies(pool: &PgPool, dir: &std::path::Path) -> Result<(), StartError> {
    let invalid = |errors| StartError::Policies {
        dir: dir.to_owned(),
        errors,
    };
    if storage::policy::has_versions(pool).await? {
        let local = PolicyFiles::read_dir(dir).map(|files| files.content_hash());
        if let (Ok(local), Some(active)) = (local, storage::policy::active(pool).await?) {
            if local != active.hash {
                tracing::info!(
                    dir = %dir.display(),
                    active = active.version,
                    "the policy files differ from the active version, which decides; create and activate a version to change it"
                );
            }
        }
        return Ok(());
    }
    if !dir.is_dir() {
        return Err(StartError::PoliciesMissing(dir.to_owned()));
    }
    let files = PolicyFiles::read_dir(dir).map_err(invalid)?;
    let compiled = Compiled::compile(files).map_err(invalid)?;
    let (version, created) = storage::policy::create_version(
        pool,
        &compiled.files,
        compiled.hash(),
        crate::domain::event::ENGINE_ACTOR,
        &format!("imported from {} on first start", dir.display()),
    )
    .await?;
    if created {
        tracing::info!(
            version = version.version,
            hash = %version.hash,
            policies = compiled.engine.bundle().policy_count(),
            "policy files imported"
        );
    }
    Ok(())
}

/// Waits (briefly) until the ledger names an active version, so that a fresh replica is ready
/// when it starts listening. A sequencer that cannot activate is reported by its own log.
async fn await_first_activation(pool: &PgPool) -> Result<(), StartError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while storage::policy::active(pool).await?.is_none() {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!("no policy version is active yet; orders wait for the sequencer");
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

fn spawn_sequencer(
    sequencer: Sequencer,
    shutdown: watch::Receiver<bool>,
    mut killed: watch::Receiver<bool>,
) -> Result<JoinHandle<()>, StartError> {
    let (done, finished) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("sequencer".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(error) => {
                    tracing::error!(%error, "cannot start the sequencer's runtime");
                    return;
                }
            };
            runtime.block_on(async move {
                tokio::select! {
                    // A kill is a crash: seen before anything else the thread would do next.
                    biased;
                    _ = killed.wait_for(|k| *k) => {}
                    _ = sequencer.run(shutdown) => {}
                }
            });
            let _ = done.send(());
        })
        .map_err(StartError::Thread)?;
    Ok(tokio::spawn(async move {
        let _ = finished.await;
    }))
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

fn check_listen(config: &Config) -> Result<(), StartError> {
    if config.keys.is_development() && !config.listen.ip().is_loopback() {
        return Err(StartError::InsecureListen(config.listen));
    }
    Ok(())
}

/// Publishes a signed checkpoint every `interval` when decisions were added. Every replica
/// runs this; the tree's row lock serializes building, and one checkpoint per size stands.
async fn checkpoints(
    pool: PgPool,
    notary: Arc<Notary>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
        let latest = match crate::storage::audit::latest_checkpoint(&pool).await {
            Ok(latest) => latest.map_or(0, |c| c.tree_size),
            Err(error) => {
                tracing::warn!(%error, "cannot read the latest checkpoint");
                continue;
            }
        };
        match storage::ledger_head(&pool).await {
            Ok(head) if head.seq > latest => match notary.publish(&pool).await {
                Ok(cp) => tracing::info!(tree_size = cp.tree_size, "checkpoint published"),
                Err(error @ NotaryError::Refused(_)) => tracing::error!(%error),
                Err(error) => tracing::warn!(%error, "cannot publish a checkpoint"),
            },
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "cannot read the ledger head"),
        }
    }
}

/// Drains the recorder's histogram buffers even when nobody scrapes `/metrics`, so they do
/// not grow without bound.
async fn metrics_upkeep(mut shutdown: watch::Receiver<bool>) {
    let handle = metrics_handle();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => handle.run_upkeep(),
            _ = shutdown.changed() => return,
        }
    }
}

/// How often the leader vacuums the intake queue (see [`storage::vacuum_intake_queue`]).
const QUEUE_VACUUM_EVERY: Duration = Duration::from_secs(1);

/// While this replica leads, vacuums the intake queue every [`QUEUE_VACUUM_EVERY`]: the
/// leader is the one that deletes from it, and the one whose fetches its dead rows slow. A role
/// that may not vacuum it (not its owner) says so once and leaves it to autovacuum.
async fn queue_upkeep(
    pool: PgPool,
    leading: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut may_vacuum = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(QUEUE_VACUUM_EVERY) => {}
            _ = shutdown.changed() => return,
        }
        if !*leading.borrow() {
            continue;
        }
        if !may_vacuum {
            match storage::may_vacuum_intake_queue(&pool).await {
                Ok(true) => may_vacuum = true,
                Ok(false) => {
                    tracing::warn!(
                        "the service's database role does not own intake_queue: it is left \
                         to autovacuum, and fetches slow down between its runs"
                    );
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, "could not tell whether intake_queue may be vacuumed");
                    continue;
                }
            }
        }
        if let Err(error) = storage::vacuum_intake_queue(&pool).await {
            // Only the fetch's speed depends on it; autovacuum still comes by.
            tracing::warn!(%error, "vacuuming the intake queue failed");
        }
    }
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let latency_buckets = [
                0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0,
            ];
            let batch_buckets = [
                1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0,
            ];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("regulator_decision_latency_seconds".into()),
                    &latency_buckets,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("regulator_sequencer_round_seconds".into()),
                        &latency_buckets,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("regulator_sequencer_batch_size".into()),
                        &batch_buckets,
                    )
                });
            let recorder = match builder {
                Ok(b) => b.build_recorder(),
                Err(_) => PrometheusBuilder::new().build_recorder(),
            };
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
            }
            handle
        })
        .clone()
}
