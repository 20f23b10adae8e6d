//! `regulator serve` and `regulator token`: run a replica; mint a development token.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use regulator::app::{App, Config};
use regulator::auth::{mint_dev_token, KeySource, Role};
use regulator::webhooks::retry::parse_duration;
use regulator::webhooks::{RetrySchedule, UrlGuard, WebhookConfig};

/// Where tokens are checked: shared by `serve` and `token`.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// Development signing secret (HS256), generated with mode 0600 if missing. Used only when
    /// no public key or JWKS is configured.
    #[arg(
        long,
        env = "REGULATOR_DEV_SECRET_FILE",
        default_value = ".regulator/dev-secret"
    )]
    pub dev_secret_file: PathBuf,
    /// Expected `iss` claim.
    #[arg(long, env = "REGULATOR_JWT_ISSUER", default_value = "regulator")]
    pub jwt_issuer: String,
    /// Expected `aud` claim.
    #[arg(long, env = "REGULATOR_JWT_AUDIENCE", default_value = "regulator")]
    pub jwt_audience: String,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on. A non-loopback address needs --jwt-public-key or --jwks.
    #[arg(long, env = "REGULATOR_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Postgres URL; the database is created if missing and migrated on start. Without it,
    /// `postgres://postgres@127.0.0.1:5432/regulator`; if nothing listens there, a private
    /// PostgreSQL is started under `--private-postgres-dir` from the installed server binaries.
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    /// Where the private PostgreSQL keeps its cluster, when one is needed.
    #[arg(
        long,
        env = "REGULATOR_PRIVATE_POSTGRES_DIR",
        default_value = ".regulator/pg"
    )]
    private_postgres_dir: PathBuf,
    /// Directory of the jurisdiction policies.
    #[arg(long, env = "REGULATOR_POLICIES", default_value = "policies")]
    policies: PathBuf,
    /// Conflict window W in milliseconds: orders on one asset this close together are decided
    /// as one group. 0 is allowed.
    #[arg(long, env = "REGULATOR_CONFLICT_WINDOW_MS", default_value_t = 100)]
    conflict_window_ms: u32,
    /// How long a submission waits for its decision before answering 202, in milliseconds.
    #[arg(long, env = "REGULATOR_SUBMIT_WAIT_MS", default_value_t = 5_000)]
    submit_wait_ms: u64,
    /// PEM public key verifying tokens (RSA → RS256, EC P-256 → ES256, Ed25519 → EdDSA).
    #[arg(long, env = "REGULATOR_JWT_PUBLIC_KEY", conflicts_with = "jwks")]
    jwt_public_key: Option<PathBuf>,
    /// JWKS file verifying tokens, keys chosen by `kid`.
    #[arg(long, env = "REGULATOR_JWKS")]
    jwks: Option<PathBuf>,
    /// Database connections per replica.
    #[arg(long, env = "REGULATOR_DB_CONNECTIONS", default_value_t = 16)]
    db_connections: u32,
    /// How long a request waits for a database connection before it is answered 503
    /// `not-ready` (the database is down or every connection is busy).
    #[arg(long, env = "REGULATOR_DB_ACQUIRE_TIMEOUT", default_value = "3s", value_parser = duration)]
    db_acquire_timeout: Duration,
    /// How long the sequencer leader's lease lasts unrenewed. A standby deposes a leader that
    /// has not renewed it for this long (frozen, or stuck), terminating its database session.
    /// It must exceed the longest sequencer round.
    #[arg(long, env = "REGULATOR_LEADER_LEASE", default_value = "5s", value_parser = duration)]
    leader_lease: Duration,
    /// Log format: `json` (structured) or `text`.
    #[arg(long, env = "REGULATOR_LOG_FORMAT", default_value = "json")]
    log_format: String,
    #[command(flatten)]
    tokens: TokenArgs,
    #[command(flatten)]
    webhooks: WebhookArgs,
    #[command(flatten)]
    http: HttpArgs,
    /// The Ed25519 key that signs checkpoints of the decision log (PKCS#8 PEM), created with
    /// mode 0600 if missing. Give every replica the same key.
    #[arg(
        long,
        env = "REGULATOR_CHECKPOINT_KEY",
        default_value = ".regulator/checkpoint-key.pem"
    )]
    checkpoint_key: PathBuf,
    /// How often a checkpoint is published when there are new decisions.
    #[arg(long, env = "REGULATOR_CHECKPOINT_INTERVAL", default_value = "60s", value_parser = duration)]
    checkpoint_interval: Duration,
}

/// The HTTP edge. Durations are written `250ms`, `10s`, `5m` or `1h`.
#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// A connection must send a request's complete headers within this, or it is closed; also
    /// how long an idle keep-alive connection is kept.
    #[arg(long, env = "REGULATOR_HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = duration)]
    http_header_timeout: Duration,
    /// A request's body must have arrived within this after its headers, or it gets 408.
    #[arg(long, env = "REGULATOR_HTTP_BODY_TIMEOUT", default_value = "30s", value_parser = duration)]
    http_body_timeout: Duration,
    /// Refuse tokens that live longer than this (`exp - iat`).
    #[arg(long, env = "REGULATOR_JWT_MAX_LIFETIME", default_value = "24h", value_parser = duration)]
    jwt_max_lifetime: Duration,
    /// `/metrics` needs a bearer token with the `monitor` (or `admin`) role.
    #[arg(long, env = "REGULATOR_METRICS_REQUIRE_TOKEN")]
    metrics_require_token: bool,
}

impl HttpArgs {
    fn config(self) -> regulator::api::edge::HttpConfig {
        regulator::api::edge::HttpConfig {
            header_timeout: self.http_header_timeout,
            body_timeout: self.http_body_timeout,
            metrics_need_token: self.metrics_require_token,
            max_token_lifetime: self.jwt_max_lifetime,
        }
    }
}

/// Webhook delivery (SPEC §8). Durations are written `250ms`, `10s`, `5m` or `1h`.
#[derive(Debug, Clone, Args)]
pub struct WebhookArgs {
    /// Comma-separated hosts subscription URLs may name: `hooks.chain.example` or
    /// `*.chain.example`. Empty: any host with a public address.
    #[arg(long, env = "REGULATOR_WEBHOOK_ALLOWED_HOSTS", value_delimiter = ',')]
    webhook_allowed_hosts: Vec<String>,
    /// Allow loopback and private addresses, and plain http: for development and tests only.
    #[arg(long, env = "REGULATOR_WEBHOOK_ALLOW_PRIVATE")]
    webhook_allow_private: bool,
    /// Timeout of one delivery request, connection included.
    #[arg(long, env = "REGULATOR_WEBHOOK_TIMEOUT", default_value = "10s", value_parser = duration)]
    webhook_timeout: Duration,
    /// Delays between attempts; a delivery gets one more attempt than there are delays, then
    /// its subscription is paused. Each delay is jittered by ±20%; a `Retry-After` replaces it.
    #[arg(
        long,
        env = "REGULATOR_WEBHOOK_RETRY_SCHEDULE",
        default_value = "1s,5s,30s,2m,10m,30m,1h,4h",
        value_parser = schedule
    )]
    webhook_retry_schedule: RetrySchedule,
    /// How long a replica's claim on a subscription lasts unrenewed (at least twice the
    /// timeout plus 500ms); a crashed replica's subscriptions move after this.
    #[arg(long, env = "REGULATOR_WEBHOOK_LEASE", default_value = "30s", value_parser = duration)]
    webhook_lease: Duration,
    /// How long the old secret keeps signing after a rotation, unless the request says.
    #[arg(long, env = "REGULATOR_WEBHOOK_ROTATION_GRACE", default_value = "24h", value_parser = duration)]
    webhook_rotation_grace: Duration,
    /// How long delivery attempts stay in the log.
    #[arg(long, env = "REGULATOR_WEBHOOK_ATTEMPTS_RETENTION", default_value = "168h", value_parser = duration)]
    webhook_attempts_retention: Duration,
    /// Do not run a delivery worker on this replica (others deliver).
    #[arg(long, env = "REGULATOR_WEBHOOK_NO_DELIVERY")]
    webhook_no_delivery: bool,
}

fn duration(text: &str) -> Result<Duration, String> {
    parse_duration(text)
        .ok_or_else(|| format!("{text:?} is not a duration like 250ms, 10s, 5m or 1h"))
}

fn schedule(text: &str) -> Result<RetrySchedule, String> {
    RetrySchedule::parse(text).map_err(|e| e.to_string())
}

impl WebhookArgs {
    pub fn config(self) -> WebhookConfig {
        WebhookConfig {
            guard: UrlGuard::new(self.webhook_allowed_hosts, self.webhook_allow_private),
            timeout: self.webhook_timeout,
            schedule: self.webhook_retry_schedule,
            lease: self.webhook_lease,
            rotation_grace: self.webhook_rotation_grace,
            attempts_retention: self.webhook_attempts_retention,
            deliver: !self.webhook_no_delivery,
        }
    }
}

pub fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = if format == "text" {
        builder.try_init()
    } else {
        builder.json().flatten_event(true).try_init()
    };
}

/// The database `serve` uses when given none.
const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/regulator";

/// The default database URL; the tests point it at a port where nothing listens.
fn default_database_url() -> String {
    std::env::var("REGULATOR_DEFAULT_DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.into())
}

/// SIGINT or SIGTERM.
async fn stop_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            return tokio::select! {
                _ = tokio::signal::ctrl_c() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            };
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    "SIGINT"
}

impl ServeArgs {
    pub fn run(self) -> ExitCode {
        init_tracing(&self.log_format);
        let mut private = None;
        let database_url = match self.database_url {
            Some(url) => url,
            None => {
                let url = default_database_url();
                if super::private_pg::listening(&url) {
                    url
                } else {
                    match super::private_pg::PrivatePostgres::start(&self.private_postgres_dir) {
                        Ok(cluster) => {
                            let url = cluster.url.clone();
                            private = Some(cluster);
                            url
                        }
                        Err(e) => {
                            eprintln!(
                                "error: nothing listens at {} (the default database URL): {e}",
                                regulator::app::redact(&url)
                            );
                            return ExitCode::from(2);
                        }
                    }
                }
            }
        };
        let keys = match (&self.jwt_public_key, &self.jwks) {
            (Some(pem), _) => KeySource::PublicKeyPem(pem.clone()),
            (None, Some(jwks)) => KeySource::Jwks(jwks.clone()),
            (None, None) => KeySource::DevSecret(self.tokens.dev_secret_file.clone()),
        };
        let config = Config {
            listen: self.listen,
            database_url,
            policies: self.policies,
            window: chrono::Duration::milliseconds(i64::from(self.conflict_window_ms)),
            submit_wait: Duration::from_millis(self.submit_wait_ms),
            keys,
            jwt_issuer: self.tokens.jwt_issuer,
            jwt_audience: self.tokens.jwt_audience,
            max_connections: self.db_connections,
            db_acquire_timeout: self.db_acquire_timeout,
            leader_lease: self.leader_lease,
            webhooks: self.webhooks.config(),
            checkpoint_key: self.checkpoint_key,
            checkpoint_interval: self.checkpoint_interval,
            http: self.http.config(),
        };
        let runtime = match tokio::runtime::Runtime::new() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("error: cannot start the runtime: {e}");
                return ExitCode::from(2);
            }
        };
        let code = runtime.block_on(async move {
            let app = match App::start(config).await {
                Ok(app) => app,
                Err(e) => {
                    // Once, on stderr, for whoever started it.
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let signal = stop_signal().await;
            tracing::info!(signal, "shutting down: no new requests; open ones get 5 s");
            app.stop().await;
            tracing::info!("stopped");
            ExitCode::SUCCESS
        });
        if let Some(mut cluster) = private {
            cluster.stop();
        }
        code
    }
}

#[derive(Debug, Args)]
pub struct TokenCommand {
    /// The authority or service the token speaks for, e.g. US-SEC.
    #[arg(long)]
    sub: String,
    /// Comma-separated roles: regulator, coordinator, policy_author, auditor, chain, admin,
    /// monitor (spaces after the commas are fine).
    #[arg(long, required = true, num_args = 1..)]
    roles: Vec<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl_secs: i64,
    #[command(flatten)]
    tokens: TokenArgs,
}

impl TokenCommand {
    pub fn run(self) -> ExitCode {
        let mut roles = Vec::new();
        for role in self.roles.iter().flat_map(|r| r.split(',')).map(str::trim) {
            if role.is_empty() {
                continue;
            }
            match role.parse::<Role>() {
                Ok(role) => roles.push(role),
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        if roles.is_empty() {
            eprintln!("error: --roles names no role");
            return ExitCode::from(2);
        }
        // A token the service would refuse is better not minted.
        if let Err(e) = regulator::auth::check_sub(&self.sub) {
            eprintln!("error: --sub: {e}");
            return ExitCode::from(2);
        }
        if !self.tokens.dev_secret_file.exists() {
            // A new secret would sign tokens no running server accepts.
            eprintln!(
                "error: there is no development secret at {}: `regulator serve` creates it on \
                 first start; run `token` where the server runs, with the same --dev-secret-file",
                self.tokens.dev_secret_file.display()
            );
            return ExitCode::from(2);
        }
        match mint_dev_token(
            &self.tokens.dev_secret_file,
            &self.tokens.jwt_issuer,
            &self.tokens.jwt_audience,
            &self.sub,
            roles,
            chrono::Duration::seconds(self.ttl_secs),
        ) {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        }
    }
}
