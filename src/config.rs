//! Command line and environment: every flag is also a `WABA_PROXY_*` variable, every value has
//! a documented default, and [`Config`] is the validated result the rest of the proxy reads.

use crate::link_guard::LinkPolicy;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use http::uri::{Authority, Scheme};
use http::Uri;

use crate::db::DatabaseUrl;
use crate::translate::Meta;

pub const DEFAULT_UPSTREAM: &str = "https://waba-v2.360dialog.io";
/// The `--upstream` value that turns on dry-run mode.
pub const DRY_RUN: &str = "dry-run";
/// The last On-Premise release line; clients parse it as semver, leading `v` included.
pub const DEFAULT_ONPREM_VERSION: &str = "v2.53.0";

#[derive(Debug, Parser)]
#[command(
    name = "waba-onprem-proxy",
    version,
    about = "Speaks the WhatsApp On-Premise API to legacy integrations and the Cloud API upstream"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parses the command line; with no subcommand named, `serve` is meant (so `--listen x`
    /// alone works). Serve's flags and variables are only read when serving, so a stray
    /// `WABA_PROXY_*` value cannot break `translate`.
    pub fn parse_with_default<I: IntoIterator<Item = String>>(args: I) -> Result<Cli, clap::Error> {
        let mut args: Vec<String> = args.into_iter().collect();
        let named = args.get(1).map(String::as_str);
        let is_subcommand_or_help = matches!(
            named,
            Some("serve" | "translate" | "help" | "--help" | "-h" | "--version" | "-V")
        );
        if !is_subcommand_or_help {
            args.insert(1.min(args.len()), "serve".to_owned());
        }
        Cli::try_parse_from(args)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy (the default).
    Serve(Box<ServeArgs>),
    /// Print what an On-Premise request (body on stdin) would send upstream, as JSON.
    Translate(TranslateArgs),
}

#[derive(Debug, Clone, Args)]
pub struct TranslateArgs {
    /// HTTP method of the On-Premise request, e.g. POST.
    pub method: String,
    /// On-Premise path, e.g. /v1/messages.
    pub path: String,
    /// The `meta.version` written into locally answered bodies.
    #[arg(long, env = "WABA_PROXY_ONPREM_VERSION", default_value = DEFAULT_ONPREM_VERSION)]
    pub onprem_version: String,
    /// Show the path in this dialect (`graph`: with placeholder ids).
    #[arg(long, value_enum, default_value = "waba-v2")]
    pub upstream_dialect: Dialect,
    /// The Graph version shown with `--upstream-dialect graph`.
    #[arg(long, default_value = crate::accounts::DEFAULT_GRAPH_VERSION)]
    pub graph_version: String,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free port (printed when ready).
    #[arg(long, env = "WABA_PROXY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Root of the Cloud API (the BSP's host); http:// is allowed for local mocks; `dry-run`
    /// sends nothing anywhere and answers with synthetic Cloud responses.
    #[arg(long, env = "WABA_PROXY_UPSTREAM", default_value = DEFAULT_UPSTREAM)]
    pub upstream: String,
    /// The `meta.version` the proxy answers with.
    #[arg(long, env = "WABA_PROXY_ONPREM_VERSION", default_value = DEFAULT_ONPREM_VERSION)]
    pub onprem_version: String,
    /// Time allowed to open a TCP (and TLS) connection upstream, in milliseconds.
    #[arg(long, env = "WABA_PROXY_CONNECT_TIMEOUT_MS", default_value_t = 5_000)]
    pub connect_timeout_ms: u64,
    /// Deadline for a whole upstream exchange (redirects and body included), in milliseconds.
    #[arg(long, env = "WABA_PROXY_UPSTREAM_TIMEOUT_MS", default_value_t = 30_000)]
    pub upstream_timeout_ms: u64,
    /// Time a client has to send its request headers, in milliseconds.
    #[arg(
        long,
        env = "WABA_PROXY_HEADER_READ_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub header_read_timeout_ms: u64,
    /// Time a client has to send its request body, in milliseconds.
    #[arg(
        long,
        env = "WABA_PROXY_BODY_READ_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    pub body_read_timeout_ms: u64,
    /// Largest JSON request body accepted, in bytes (larger: 413).
    #[arg(long, env = "WABA_PROXY_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Largest total size of a request's headers, in bytes (larger: 431); upstream answers'
    /// headers are held to the same (larger: 502).
    #[arg(long, env = "WABA_PROXY_MAX_HEADER_BYTES", default_value_t = 32 * 1024)]
    pub max_header_bytes: usize,
    /// Largest upstream JSON answer read, in bytes (after gzip decoding).
    #[arg(long, env = "WABA_PROXY_MAX_UPSTREAM_BODY_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub max_upstream_body_bytes: usize,
    /// Deadline for one media transfer (upload, download or provider fetch), in milliseconds.
    #[arg(long, env = "WABA_PROXY_MEDIA_TIMEOUT_MS", default_value_t = 600_000)]
    pub media_timeout_ms: u64,
    /// A media transfer with no byte in either direction for this long ends (504), however
    /// much of `--media-timeout-ms` is left, in milliseconds.
    #[arg(
        long,
        env = "WABA_PROXY_MEDIA_IDLE_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    pub media_idle_timeout_ms: u64,
    /// Addresses a fetch made on a client's behalf (a provider media link) may not connect to,
    /// checked after DNS resolution: `link-local` (cloud metadata services), `private` (also
    /// loopback and internal networks) or `none`.
    #[arg(long, env = "WABA_PROXY_LINK_FETCH_BLOCK", value_enum, default_value_t = LinkPolicy::LinkLocal)]
    pub link_fetch_block: LinkPolicy,
    /// Where the default SQLite database (all state without `--database`) lives, created when
    /// first needed.
    #[arg(long, env = "WABA_PROXY_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Where webhooks, settings, media providers and login sessions are kept:
    /// `sqlite:<path>` (default: `webhooks.sqlite3` in the data directory, one replica) or
    /// `postgres://user:password@host:5432/db` (shared by several replicas).
    #[arg(long, env = "WABA_PROXY_DATABASE")]
    pub database: Option<String>,
    /// PEM file of the CA that signed the PostgreSQL server's certificate: TLS connections then
    /// verify the server (certificate and host name). Without it TLS (`sslmode=prefer`, the
    /// default, or `require`) encrypts without verifying, as libpq does.
    #[arg(long, env = "WABA_PROXY_DATABASE_CA_FILE")]
    pub database_ca_file: Option<PathBuf>,
    /// JSON file mapping old API keys to new ones ("old": "new") and login users
    /// (`"user:<name>": {"password_sha256", "api_key"}`); re-read on SIGHUP.
    #[arg(long, env = "WABA_PROXY_KEY_MAP")]
    pub key_map: Option<PathBuf>,
    /// How the upstream is spoken to: `waba-v2` (360dialog: unversioned paths, the client's
    /// `D360-API-KEY`) or `graph` (Meta's Graph API: versioned paths with the phone-number id,
    /// the account's access token). Default: `graph` when the upstream host is
    /// graph.facebook.com, else `waba-v2`.
    #[arg(long, env = "WABA_PROXY_UPSTREAM_DIALECT", value_enum)]
    pub upstream_dialect: Option<Dialect>,
    /// Graph dialect: JSON file mapping what clients present (API keys, login users) to Meta
    /// accounts (phone-number id, WABA id, access token, app secret...); re-read on SIGHUP.
    #[arg(long, env = "WABA_PROXY_ACCOUNTS")]
    pub accounts: Option<PathBuf>,
    /// Graph dialect: the only hosts an access token is ever sent to (the Graph API and Meta's
    /// media CDN), comma-separated; the upstream's host must be one of them.
    #[arg(
        long,
        env = "WABA_PROXY_TOKEN_HOSTS",
        value_delimiter = ',',
        default_value = "graph.facebook.com,lookaside.fbsbx.com"
    )]
    pub token_hosts: Vec<String>,
    /// Public base URL of this proxy (https, no port, no `_` in the host: Cloud's rules), used to
    /// register `<public-url>/cloud-webhooks/<channel>` upstream when a client sets its webhook.
    #[arg(long, env = "WABA_PROXY_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Legacy webhook URL of the single-channel sidecar (channel `default`).
    #[arg(
        long,
        env = "WABA_PROXY_LEGACY_WEBHOOK_URL",
        requires = "webhook_secret"
    )]
    pub legacy_webhook_url: Option<String>,
    /// Secret Cloud must send in `X-Webhook-Secret` to `/cloud-webhooks/default`.
    #[arg(long, env = "WABA_PROXY_WEBHOOK_SECRET")]
    pub webhook_secret: Option<String>,
    /// Bearer token for `/admin/...`; without it the admin routes do not exist.
    #[arg(long, env = "WABA_PROXY_ADMIN_TOKEN")]
    pub admin_token: Option<String>,
    /// How long undelivered webhooks are retried before the dead-letter table, in seconds.
    #[arg(long, env = "WABA_PROXY_WEBHOOK_RETRY_SECS", default_value_t = 7 * 24 * 3600)]
    pub webhook_retry_secs: u64,
    /// Wait before the first retry of a failed delivery, in milliseconds (then doubling).
    #[arg(
        long,
        env = "WABA_PROXY_WEBHOOK_RETRY_BASE_MS",
        default_value_t = 1_000
    )]
    pub webhook_retry_base_ms: u64,
    /// Time a legacy receiver has to answer one delivery, in milliseconds.
    #[arg(long, env = "WABA_PROXY_WEBHOOK_TIMEOUT_MS", default_value_t = 10_000)]
    pub webhook_timeout_ms: u64,
    /// Deliveries in flight at once (to different recipients).
    #[arg(long, env = "WABA_PROXY_WEBHOOK_CONCURRENCY", default_value_t = 32)]
    pub webhook_concurrency: usize,
    /// Deliveries in flight at once to one channel (one legacy receiver); default: half of
    /// --webhook-concurrency, so a slow receiver never holds every slot.
    #[arg(long, env = "WABA_PROXY_WEBHOOK_CHANNEL_CONCURRENCY")]
    pub webhook_channel_concurrency: Option<usize>,
    /// Failed deliveries in a row that open a channel's circuit breaker: the channel is then
    /// probed with one delivery at its backoff instead of taking slots.
    #[arg(long, env = "WABA_PROXY_WEBHOOK_BREAKER_FAILURES", default_value_t = 5)]
    pub webhook_breaker_failures: u32,
    /// Inbound webhook posts stored in one transaction at most (group commit).
    #[arg(long, env = "WABA_PROXY_WEBHOOK_BATCH_MAX", default_value_t = 512)]
    pub webhook_batch_max: usize,
    /// How long a transaction waits for more inbound posts once it has one, in microseconds
    /// (0: it takes what is already waiting; posts gather anyway while a commit runs).
    #[arg(long, env = "WABA_PROXY_WEBHOOK_BATCH_WAIT_US", default_value_t = 0)]
    pub webhook_batch_wait_us: u64,
    /// How long dead letters are kept, in seconds; delivered payloads go after the retry
    /// period or this, whichever is shorter.
    #[arg(long, env = "WABA_PROXY_WEBHOOK_RETENTION_SECS", default_value_t = 30 * 24 * 3600)]
    pub webhook_retention_secs: u64,
    /// Largest inbound webhook post accepted, in bytes (larger: 413).
    #[arg(long, env = "WABA_PROXY_MAX_WEBHOOK_BYTES", default_value_t = 3 * 1024 * 1024)]
    pub max_webhook_bytes: usize,
    /// Connections served at once; past it new connections get 503 with Retry-After.
    #[arg(long, env = "WABA_PROXY_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// Serving threads (0: one per core). Each runs its own single-threaded runtime and its
    /// own upstream connection pool, and accepts from the one listening socket.
    #[arg(long, env = "WABA_PROXY_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,
    /// Log format on stderr.
    #[arg(long, env = "WABA_PROXY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// How long shutdown waits for in-flight requests, in milliseconds.
    #[arg(long, env = "WABA_PROXY_SHUTDOWN_GRACE_MS", default_value_t = 30_000)]
    pub shutdown_grace_ms: u64,
}

/// The upstream's dialect (see `--upstream-dialect`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Dialect {
    #[value(name = "waba-v2")]
    WabaV2,
    Graph,
}

/// Meta's Graph API host: the default for the Graph dialect.
pub const GRAPH_HOST: &str = "graph.facebook.com";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub upstream: UpstreamRoot,
    /// `--upstream dry-run`: nothing leaves the machine; Cloud's answers are synthesized.
    pub dry_run: bool,
    pub dialect: Dialect,
    pub accounts: Option<PathBuf>,
    /// Hosts (lowercase, without port) an access token may be sent to: the upstream's and
    /// those of `--token-hosts`.
    pub token_hosts: Vec<String>,
    /// The Graph version of accounts that name none (the root's, when it names one).
    pub graph_version: String,
    pub meta: Meta,
    pub connect_timeout: Duration,
    pub upstream_timeout: Duration,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub max_body_bytes: usize,
    pub max_header_bytes: usize,
    pub max_upstream_body_bytes: usize,
    pub media_timeout: Duration,
    pub media_idle_timeout: Duration,
    pub link_fetch_block: LinkPolicy,
    pub data_dir: PathBuf,
    /// None: the SQLite file in the data directory.
    pub database: Option<DatabaseUrl>,
    pub database_ca_file: Option<PathBuf>,
    pub key_map: Option<PathBuf>,
    pub public_url: Option<String>,
    pub legacy_webhook_url: Option<String>,
    pub webhook_secret: Option<String>,
    pub admin_token: Option<String>,
    pub webhook_retry_period: Duration,
    pub webhook_retry_base: Duration,
    pub webhook_delivery_timeout: Duration,
    pub webhook_concurrency: usize,
    /// At least 1, at most `webhook_concurrency`.
    pub webhook_channel_concurrency: usize,
    pub webhook_breaker_failures: u32,
    /// At least 1.
    pub webhook_batch_max: usize,
    pub webhook_batch_wait: Duration,
    pub webhook_retention: Duration,
    pub max_webhook_bytes: usize,
    pub max_connections: usize,
    /// At least 1: `--worker-threads`, or one per core.
    pub serving_threads: usize,
    pub shutdown_grace: Duration,
}

/// Scheme, host and optional path prefix of the Cloud API root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamRoot {
    pub scheme: Scheme,
    pub authority: Authority,
    /// Without a trailing `/`; empty for a bare host.
    pub base_path: String,
}

impl UpstreamRoot {
    pub fn parse(url: &str) -> Result<Self, ConfigError> {
        let bad = |reason: &str| ConfigError::Upstream {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or_else(|| bad("needs http:// or https://"))?;
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err(bad("needs http:// or https://"));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| bad("needs a host"))?;
        if authority.as_str().contains('@') {
            // Credentials here would be logged and never used: 360dialog authenticates by header.
            return Err(bad(
                "must not carry user:password@ (the API key travels as a header)",
            ));
        }
        if uri.query().is_some() {
            return Err(bad("must not carry a query"));
        }
        Ok(UpstreamRoot {
            scheme,
            authority,
            base_path: uri.path().trim_end_matches('/').to_owned(),
        })
    }

    /// Absolute URI of `path_and_query` (which starts with `/`) under this root.
    pub fn join(&self, path_and_query: &str) -> Result<Uri, http::Error> {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(format!("{}{path_and_query}", self.base_path))
            .build()
    }

    /// Same scheme, host and port: the only redirects the proxy follows, since the client's
    /// API key goes along with the request.
    pub fn is_same_origin(&self, uri: &Uri) -> bool {
        uri.scheme() == Some(&self.scheme) && uri.authority() == Some(&self.authority)
    }
}

fn validate_http_url(flag: &'static str, url: &str) -> Result<String, ConfigError> {
    let bad = |reason: &str| ConfigError::Url {
        flag,
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.host().is_some() => Ok(url.to_owned()),
        _ => Err(bad("needs http:// or https:// and a host")),
    }
}

/// Cloud refuses webhook URLs with `_` in the host or an explicit port.
fn validate_public_url(url: &str) -> Result<String, ConfigError> {
    let url = validate_http_url("public-url", url)?;
    let bad = |reason: &str| ConfigError::Url {
        flag: "public-url",
        url: url.clone(),
        reason: reason.to_owned(),
    };
    let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
    if uri.host().is_some_and(|h| h.contains('_')) {
        return Err(bad("the Cloud API refuses webhook hosts with '_'"));
    }
    if uri.port().is_some() {
        return Err(bad(
            "the Cloud API refuses webhook URLs with an explicit port",
        ));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--{flag} {url}: {reason}")]
    Url {
        flag: &'static str,
        url: String,
        reason: String,
    },
    #[error("--upstream {url}: {reason}")]
    Upstream { url: String, reason: String },
    #[error("--upstream-dialect graph: {reason}")]
    Graph { reason: String },
    #[error("--database: {reason}")]
    Database { reason: String },
    #[error("--{flag} must be greater than zero")]
    Zero { flag: &'static str },
    #[error("--{flag} must be at most {max_days} days")]
    TooLong { flag: &'static str, max_days: u64 },
}

/// No timeout is longer than this: deadlines are computed as `now + timeout`, which must not
/// overflow, and nothing the proxy waits for takes a month.
const MAX_TIMEOUT_DAYS: u64 = 30;

impl ServeArgs {
    pub fn validate(&self) -> Result<Config, ConfigError> {
        let positive = |value: u64, flag: &'static str| {
            if value == 0 {
                Err(ConfigError::Zero { flag })
            } else if value > MAX_TIMEOUT_DAYS * 24 * 3600 * 1000 {
                Err(ConfigError::TooLong {
                    flag,
                    max_days: MAX_TIMEOUT_DAYS,
                })
            } else {
                Ok(Duration::from_millis(value))
            }
        };
        if self.max_body_bytes == 0 {
            return Err(ConfigError::Zero {
                flag: "max-body-bytes",
            });
        }
        if self.max_upstream_body_bytes == 0 {
            return Err(ConfigError::Zero {
                flag: "max-upstream-body-bytes",
            });
        }
        let dry_run = self.upstream == DRY_RUN;
        let upstream = if dry_run {
            UpstreamRoot::parse("http://dry-run.invalid")?
        } else {
            UpstreamRoot::parse(&self.upstream)?
        };
        let dialect = self.upstream_dialect.unwrap_or(
            if upstream.authority.host().eq_ignore_ascii_case(GRAPH_HOST) {
                Dialect::Graph
            } else {
                Dialect::WabaV2
            },
        );
        let mut token_hosts: Vec<String> = self
            .token_hosts
            .iter()
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        let mut upstream = upstream;
        let mut graph_version = crate::accounts::DEFAULT_GRAPH_VERSION.to_owned();
        if dialect == Dialect::Graph {
            let graph = |reason: String| ConfigError::Graph { reason };
            // The root the operator named is Graph (or the BSP mirroring it): its host is on
            // the allowlist by that choice; --token-hosts adds the media CDN.
            let host = upstream.authority.host().to_ascii_lowercase();
            if !dry_run && !token_hosts.contains(&host) {
                token_hosts.push(host);
            }
            // A root given with a version (`https://graph.facebook.com/v23.0`, as Meta writes
            // it): the version moves to the accounts that name none, the root keeps the rest.
            if let Some((rest, version)) = upstream.base_path.rsplit_once('/') {
                if crate::accounts::is_graph_version(version) {
                    graph_version = version.to_owned();
                    upstream.base_path = rest.to_owned();
                }
            }
            if self.accounts.is_none() {
                return Err(graph(
                    "--accounts is needed: it says which Meta account each client acts for"
                        .to_owned(),
                ));
            }
            if self.key_map.is_some() {
                return Err(graph(
                    "--key-map is for waba-v2; in the Graph dialect --accounts maps keys and users"
                        .to_owned(),
                ));
            }
        }
        Ok(Config {
            listen: self.listen,
            upstream,
            dry_run,
            dialect,
            accounts: self.accounts.clone(),
            token_hosts,
            graph_version,
            meta: Meta::new(self.onprem_version.clone()),
            connect_timeout: positive(self.connect_timeout_ms, "connect-timeout-ms")?,
            upstream_timeout: positive(self.upstream_timeout_ms, "upstream-timeout-ms")?,
            header_read_timeout: positive(self.header_read_timeout_ms, "header-read-timeout-ms")?,
            body_read_timeout: positive(self.body_read_timeout_ms, "body-read-timeout-ms")?,
            max_body_bytes: self.max_body_bytes,
            // At least 1 KiB (a request line and a few headers); at most 1 MiB, so hyper's read
            // buffer (twice this, and never under its 8 KiB minimum) stays bounded.
            max_header_bytes: self.max_header_bytes.clamp(1024, 1024 * 1024),
            max_upstream_body_bytes: self.max_upstream_body_bytes,
            media_timeout: positive(self.media_timeout_ms, "media-timeout-ms")?,
            media_idle_timeout: positive(self.media_idle_timeout_ms, "media-idle-timeout-ms")?,
            link_fetch_block: self.link_fetch_block,
            data_dir: self.data_dir.clone(),
            database: self
                .database
                .as_deref()
                .map(|url| {
                    DatabaseUrl::parse(url).map_err(|reason| ConfigError::Database { reason })
                })
                .transpose()?,
            database_ca_file: self.database_ca_file.clone(),
            key_map: self.key_map.clone(),
            public_url: self
                .public_url
                .as_deref()
                .map(validate_public_url)
                .transpose()?,
            legacy_webhook_url: self
                .legacy_webhook_url
                .as_deref()
                .map(|url| validate_http_url("legacy-webhook-url", url))
                .transpose()?,
            webhook_secret: self.webhook_secret.clone(),
            admin_token: self.admin_token.clone().filter(|t| !t.is_empty()),
            webhook_retry_period: Duration::from_secs(self.webhook_retry_secs),
            webhook_retry_base: positive(self.webhook_retry_base_ms, "webhook-retry-base-ms")?,
            webhook_delivery_timeout: positive(self.webhook_timeout_ms, "webhook-timeout-ms")?,
            webhook_concurrency: self.webhook_concurrency.max(1),
            webhook_channel_concurrency: self
                .webhook_channel_concurrency
                .unwrap_or(self.webhook_concurrency / 2)
                .clamp(1, self.webhook_concurrency.max(1)),
            webhook_breaker_failures: self.webhook_breaker_failures.max(1),
            webhook_batch_max: self.webhook_batch_max.max(1),
            // Beyond a second it would only hold acknowledgements back.
            webhook_batch_wait: Duration::from_micros(self.webhook_batch_wait_us.min(1_000_000)),
            webhook_retention: Duration::from_secs(self.webhook_retention_secs),
            max_webhook_bytes: self.max_webhook_bytes,
            max_connections: self.max_connections.max(1),
            serving_threads: match self.worker_threads {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                n => n,
            },
            shutdown_grace: Duration::from_millis(self.shutdown_grace_ms),
        })
    }
}

impl Config {
    /// The database in use: `--database`, or the SQLite file in the data directory.
    pub fn database_url(&self) -> DatabaseUrl {
        self.database
            .clone()
            .unwrap_or_else(|| DatabaseUrl::default_in(&self.data_dir))
    }

    /// Defaults, pointed at `upstream`: what tests and embedders start from.
    pub fn with_upstream(upstream: &str) -> Result<Config, ConfigError> {
        let args = ["waba-onprem-proxy", "serve", "--upstream", upstream].map(str::to_owned);
        match Cli::parse_with_default(args) {
            Ok(Cli {
                command: Command::Serve(serve),
            }) => serve.validate(),
            _ => Err(ConfigError::Upstream {
                url: upstream.to_owned(),
                reason: "not accepted".to_owned(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::parse_with_default(args.iter().map(|a| a.to_string())).unwrap()
    }

    fn serve(args: &[&str]) -> ServeArgs {
        match parse(args).command {
            Command::Serve(serve) => *serve,
            other => panic!("not serve: {other:?}"),
        }
    }

    #[test]
    fn the_graph_dialect_is_chosen_by_host_and_checked_at_start() {
        let graph = |extra: &[&str]| {
            let mut args = vec!["x", "--upstream", "https://graph.facebook.com"];
            args.extend_from_slice(extra);
            serve(&args).validate()
        };
        let config = graph(&["--accounts", "a.json"]).unwrap();
        assert_eq!(config.dialect, Dialect::Graph);
        assert_eq!(
            config.token_hosts,
            ["graph.facebook.com", "lookaside.fbsbx.com"]
        );
        assert_eq!(
            serve(&["x"]).validate().unwrap().dialect,
            Dialect::WabaV2,
            "360dialog stays the default"
        );
        // Without accounts no client could be identified; the key map is waba-v2's.
        for refused in [graph(&[]), graph(&["--accounts", "a", "--key-map", "k"])] {
            assert!(
                matches!(refused, Err(ConfigError::Graph { .. })),
                "{refused:?}"
            );
        }
        // A BSP mirroring Graph: its own host carries tokens by the operator's choice.
        let mirrored = serve(&[
            "x",
            "--upstream",
            "https://bsp.example",
            "--upstream-dialect",
            "graph",
            "--accounts",
            "a",
        ])
        .validate()
        .unwrap();
        assert_eq!(mirrored.dialect, Dialect::Graph);
        assert_eq!(
            mirrored.token_hosts,
            ["graph.facebook.com", "lookaside.fbsbx.com", "bsp.example"]
        );
        // A root with Meta's version: the version becomes the accounts' default.
        let versioned = serve(&[
            "x",
            "--upstream",
            "https://graph.facebook.com/v21.0",
            "--accounts",
            "a",
        ])
        .validate()
        .unwrap();
        assert_eq!(versioned.graph_version, "v21.0");
        assert_eq!(
            versioned
                .upstream
                .join("/v21.0/1/messages")
                .unwrap()
                .to_string(),
            "https://graph.facebook.com/v21.0/1/messages"
        );
    }

    #[test]
    fn database_urls_are_checked_at_start_and_never_shown_with_their_password() {
        let config = serve(&["x"]).validate().unwrap();
        assert_eq!(
            config.database_url(),
            DatabaseUrl::Sqlite(PathBuf::from("./data/webhooks.sqlite3"))
        );
        let pg = "postgres://proxy:hunter2@db.internal:5432/waba?sslmode=require";
        let config = serve(&["x", "--database", pg]).validate().unwrap();
        assert_eq!(config.database_url(), DatabaseUrl::Postgres(pg.into()));
        let shown = config.database_url().describe();
        assert_eq!(shown, "postgres://db.internal/waba");
        let sqlite = serve(&["x", "--database", "sqlite:/var/lib/waba/state.db"])
            .validate()
            .unwrap();
        assert_eq!(
            sqlite.database_url(),
            DatabaseUrl::Sqlite(PathBuf::from("/var/lib/waba/state.db"))
        );
        for bad in [
            "mysql://x/y",
            "sqlite:",
            "postgres://x/y?sslmode=verify-full",
            "postgres://x/y?nonsense=1",
        ] {
            let error = serve(&["x", "--database", bad]).validate().unwrap_err();
            assert!(error.to_string().starts_with("--database: "), "{error}");
        }
    }

    #[test]
    fn defaults_need_no_configuration() {
        let config = serve(&["waba-onprem-proxy"]).validate().unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.upstream.authority.as_str(), "waba-v2.360dialog.io");
        assert_eq!(config.meta.version, "v2.53.0");
    }

    #[test]
    fn serve_is_the_default_and_takes_the_same_flags_when_named() {
        let flags = [
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "http://127.0.0.1:9",
        ];
        let named = serve(&[&["x", "serve"][..], &flags[..]].concat())
            .validate()
            .unwrap();
        let config = serve(&[&["x"][..], &flags[..]].concat())
            .validate()
            .unwrap();
        assert_eq!(named.listen, config.listen);
        assert_eq!(config.listen.port(), 0);
        assert_eq!(
            config.upstream.join("/messages").unwrap().to_string(),
            "http://127.0.0.1:9/messages"
        );
    }

    #[test]
    fn translate_is_its_own_subcommand() {
        let cli = parse(&["x", "translate", "POST", "/v1/messages"]);
        assert!(matches!(cli.command, Command::Translate(_)));
    }

    #[test]
    fn upstream_with_a_path_prefix_is_joined() {
        let root = UpstreamRoot::parse("http://mock:1/prefix/").unwrap();
        assert_eq!(
            root.join("/media/1?a=b").unwrap().to_string(),
            "http://mock:1/prefix/media/1?a=b"
        );
    }

    #[test]
    fn upstream_must_be_http_or_https() {
        assert!(UpstreamRoot::parse("ftp://x").is_err());
        assert!(UpstreamRoot::parse("waba-v2.360dialog.io").is_err());
        assert!(UpstreamRoot::parse("https://user:pw@waba-v2.360dialog.io").is_err());
    }

    #[test]
    fn public_url_follows_clouds_webhook_rules() {
        assert!(validate_public_url("https://proxy.example.com/").is_ok());
        assert!(validate_public_url("https://my_proxy.example.com").is_err());
        assert!(validate_public_url("https://proxy.example.com:8443").is_err());
        assert!(validate_public_url("proxy.example.com").is_err());
    }

    #[test]
    fn legacy_webhook_url_needs_a_secret() {
        assert!(Cli::parse_with_default(
            ["x", "--legacy-webhook-url", "http://crm/hook"].map(str::to_owned)
        )
        .is_err());
    }

    #[test]
    fn zero_timeouts_are_refused() {
        let args = serve(&["x", "--upstream-timeout-ms", "0"]);
        assert!(matches!(args.validate(), Err(ConfigError::Zero { .. })));
    }

    #[test]
    fn timeouts_past_30_days_are_refused_and_the_header_cap_is_clamped() {
        // `now + timeout` must never overflow on a request path.
        let args = serve(&["x", "--media-idle-timeout-ms", "18446744073709551615"]);
        assert!(matches!(args.validate(), Err(ConfigError::TooLong { .. })));
        let month = (30 * 24 * 3600 * 1000u64).to_string();
        assert!(serve(&["x", "--media-timeout-ms", &month])
            .validate()
            .is_ok());
        let huge = serve(&["x", "--max-header-bytes", "99999999999"])
            .validate()
            .unwrap();
        assert_eq!(huge.max_header_bytes, 1024 * 1024);
        let tiny = serve(&["x", "--max-header-bytes", "1"]).validate().unwrap();
        assert_eq!(tiny.max_header_bytes, 1024);
    }
}
