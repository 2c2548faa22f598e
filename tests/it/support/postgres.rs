//! A real PostgreSQL for tests, offline. Every `fresh_database` call gets a new empty database,
//! so tests running in parallel never see each other's tables.
//!
//! The server is `WABA_PROXY_TEST_POSTGRES` (an admin URL; `.ci/run` starts one) or, when that
//! is unset, a throwaway cluster this test process starts on first use and that stops, and is
//! deleted, when the process exits. Without either the caller is told to skip, with a
//! `SKIPPED (no PostgreSQL): ...` line on stderr, unless `WABA_PROXY_TEST_POSTGRES_REQUIRED=1`
//! makes that a failure (CI must not pass by skipping).

use std::error::Error as _;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;
use tokio_postgres::{Client, NoTls};

const ADMIN_URL_ENV: &str = "WABA_PROXY_TEST_POSTGRES";
const REQUIRED_ENV: &str = "WABA_PROXY_TEST_POSTGRES_REQUIRED";
const START_TIMEOUT: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

// Holds the result rather than retrying: a failed initdb would fail the same way for every test.
static CLUSTER: OnceCell<Result<Cluster, String>> = OnceCell::const_new();

struct Cluster {
    admin_url: String,
    // Never dropped (it lives in a static): the open stdin pipe is what keeps the server up.
    _supervisor: Child,
}

/// A `postgres://` URL of a new, empty database, or `None` when no server is available (the
/// reason is already printed; the test should just return).
pub async fn fresh_database() -> Option<String> {
    match create_database().await {
        Ok(url) => Some(url),
        Err(reason) => {
            if std::env::var(REQUIRED_ENV).is_ok_and(|v| v == "1") {
                panic!("PostgreSQL is required ({REQUIRED_ENV}=1) but unavailable: {reason}");
            }
            eprintln!("SKIPPED (no PostgreSQL): {reason}");
            None
        }
    }
}

/// Best effort: drops a database made by `fresh_database`, even with sessions still open.
/// Throwaway clusters vanish anyway; this matters against a long-lived `WABA_PROXY_TEST_POSTGRES`.
pub async fn drop_database(url: &str) {
    let Ok(config) = url.parse::<tokio_postgres::Config>() else {
        return;
    };
    let Some(name) = config.get_dbname() else {
        return;
    };
    let Ok(admin) = admin_url().await else {
        return;
    };
    if let Ok(client) = connect(&admin).await {
        let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
        let _ = client.batch_execute(&sql).await;
    }
}

async fn create_database() -> Result<String, String> {
    let admin = admin_url().await?;
    let client = connect(&admin).await?;
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .map_err(|e| format!("CREATE DATABASE via {admin}: {}", describe(&e)))?;
    Ok(with_database(&admin, &name))
}

async fn admin_url() -> Result<String, String> {
    if let Some(url) = std::env::var(ADMIN_URL_ENV).ok().filter(|u| !u.is_empty()) {
        return Ok(url);
    }
    match CLUSTER.get_or_init(start_cluster).await {
        Ok(cluster) => Ok(cluster.admin_url.clone()),
        Err(reason) => Err(reason.clone()),
    }
}

// A fresh client per call: each #[tokio::test] has its own runtime, and a connection task
// spawned on one dies with it.
async fn connect(url: &str) -> Result<Client, String> {
    let (client, connection) =
        tokio::time::timeout(CONNECT_TIMEOUT, tokio_postgres::connect(url, NoTls))
            .await
            .map_err(|_| format!("connecting to {url}: no answer within {CONNECT_TIMEOUT:?}"))?
            .map_err(|e| format!("connecting to {url}: {}", describe(&e)))?;
    tokio::spawn(connection);
    Ok(client)
}

// tokio_postgres' Display says only "db error"; the server's message is in the source chain.
fn describe(error: &tokio_postgres::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

/// Same server and credentials as `admin`, other database. Accepts URLs and key=value strings.
fn with_database(admin: &str, database: &str) -> String {
    match admin.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
            let (authority, tail) = rest.split_at(authority_end);
            let query = tail.find('?').map_or("", |i| &tail[i..]);
            format!("{scheme}://{authority}/{database}{query}")
        }
        // In key=value strings the last setting wins.
        None => format!("{admin} dbname={database}"),
    }
}

async fn start_cluster() -> Result<Cluster, String> {
    let bindir = find_bindir()?;
    let base =
        std::env::temp_dir().join(format!("waba-proxy-pg-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir(&base).map_err(|e| format!("creating {}: {e}", base.display()))?;
    match init_and_spawn(&bindir, &base, &[], None).await {
        Ok((admin_url, _, child)) => wait_until_ready(admin_url, child).await,
        Err(reason) => {
            // Nothing is running yet, so the supervisor script will not clean this up.
            let _ = std::fs::remove_dir_all(&base);
            Err(reason)
        }
    }
}

/// initdb into `base/data`, then the server with extra `settings` (`-c name=value` pairs) and,
/// when given, its own pg_hba.conf. Returns the admin URL, the port and the supervisor.
async fn init_and_spawn(
    bindir: &Path,
    base: &Path,
    settings: &[&str],
    hba: Option<&str>,
) -> Result<(String, u16, Child), String> {
    // The directory we just made is owned by our effective uid: no libc needed to ask.
    let as_root = std::fs::metadata(base)
        .map_err(|e| format!("{}: {e}", base.display()))?
        .uid()
        == 0;
    if as_root {
        // initdb and postgres refuse to run as root; the distribution's `postgres` user runs them.
        let mut chown = Command::new("chown");
        chown.arg("-R").arg("postgres:").arg(base);
        run(chown).await?;
    }
    let mut initdb = as_server_user(as_root, &bindir.join("initdb"));
    initdb
        .args([
            "--auth=trust",
            "-U",
            "postgres",
            "--no-sync",
            "--encoding=UTF8",
            "--locale=C",
            "-D",
        ])
        .arg(base.join("data"))
        .current_dir(base);
    run(initdb).await?;
    if let Some(hba) = hba {
        std::fs::write(base.join("data").join("pg_hba.conf"), hba)
            .map_err(|e| format!("writing pg_hba.conf: {e}"))?;
    }

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("finding a free port: {e}"))?
        .port();
    let mut server = as_server_user(as_root, Path::new("sh"));
    server
        .args(["-c", SUPERVISOR, "sh"])
        .arg(bindir.join("postgres"))
        .arg(base)
        .arg(port.to_string())
        .args(settings)
        .current_dir(base)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Out of the terminal's process group: Ctrl-C reaches only the tests, and the cluster
        // then stops because the pipe closes, like on any other exit.
        .process_group(0);
    let child = server
        .spawn()
        .map_err(|e| format!("starting postgres: {e}"))?;
    Ok((
        format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        port,
        child,
    ))
}

// Ties the server's life to our stdin pipe, which closes however the test process ends (even
// SIGKILL): then it stops the server and deletes the cluster. It also exits, printing the log,
// if the server dies on its own, so a failed start is reported instead of waited out.
const SUPERVISOR: &str = r#"
postgres=$1 base=$2 port=$3
shift 3
"$postgres" -D "$base/data" -p "$port" -k "$base" -c listen_addresses=127.0.0.1 \
    -c fsync=off -c synchronous_commit=off -c full_page_writes=off "$@" >"$base/log" 2>&1 &
pid=$!
exec 3<&0
(read _ <&3; kill -INT "$pid") >/dev/null 2>&1 &
wait "$pid"
status=$?
tail -n 20 "$base/log" >&2
rm -rf "$base"
exit "$status"
"#;

async fn wait_until_ready(admin_url: String, mut child: Child) -> Result<Cluster, String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let mut log = String::new();
            if let Some(mut stderr) = child.stderr.take() {
                let _ = stderr.read_to_string(&mut log);
            }
            return Err(format!(
                "postgres exited during start ({status}): {}",
                log.trim()
            ));
        }
        match connect(&admin_url).await {
            Ok(_) => {
                return Ok(Cluster {
                    admin_url,
                    _supervisor: child,
                })
            }
            // Dropping `child` closes the pipe, which stops and deletes the cluster.
            Err(reason) if Instant::now() >= deadline => {
                return Err(format!(
                    "postgres not ready after {START_TIMEOUT:?}: {reason}"
                ))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn as_server_user(as_root: bool, program: &Path) -> Command {
    if as_root {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

async fn run(command: Command) -> Result<(), String> {
    let shown = format!("{command:?}");
    let output = tokio::process::Command::from(command)
        .output()
        .await
        .map_err(|e| format!("{shown}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{shown}: {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn find_bindir() -> Result<PathBuf, String> {
    // Debian and Ubuntu keep the server binaries off PATH, one directory per major version.
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let major = entry
                .file_name()
                .to_str()?
                .split('.')
                .next()?
                .parse()
                .ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((major, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    // Elsewhere (Fedora, Homebrew, Nix) they are on PATH.
    std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).find(|dir| dir.join("initdb").is_file()))
        .ok_or_else(|| {
            "no initdb in /usr/lib/postgresql/*/bin or on PATH (apt-get install postgresql)".into()
        })
}

/// A throwaway cluster of its own that accepts TCP connections only over TLS, with a server
/// certificate for `localhost` signed by a CA made for it.
pub struct TlsCluster {
    /// `postgres://postgres@localhost:<port>/postgres`, no `sslmode`.
    pub url: String,
    /// The CA that signed the server's certificate (PEM).
    pub ca_file: PathBuf,
    /// A CA that did not.
    pub other_ca_file: PathBuf,
    _supervisor: Child,
}

/// Starts a [`TlsCluster`] (each call its own); None (with the reason printed) when PostgreSQL
/// or openssl is missing, unless PostgreSQL is required.
pub async fn tls_cluster() -> Option<TlsCluster> {
    match start_tls_cluster().await {
        Ok(cluster) => Some(cluster),
        Err(reason) => {
            if std::env::var(REQUIRED_ENV).is_ok_and(|v| v == "1") {
                panic!("PostgreSQL is required ({REQUIRED_ENV}=1) but a TLS cluster could not start: {reason}");
            }
            eprintln!("SKIPPED (no PostgreSQL with TLS): {reason}");
            None
        }
    }
}

async fn start_tls_cluster() -> Result<TlsCluster, String> {
    let bindir = find_bindir()?;
    let base = std::env::temp_dir().join(format!(
        "waba-proxy-pgtls-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir(&base).map_err(|e| format!("creating {}: {e}", base.display()))?;
    let certificates = async {
        let openssl = |args: &str| {
            let mut command = Command::new("openssl");
            command.args(args.split_whitespace()).current_dir(&base);
            command
        };
        for ca in ["ca", "other-ca"] {
            run(openssl(&format!(
                "req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=waba-test-{ca} -keyout {ca}.key -out {ca}.crt"
            )))
            .await?;
        }
        run(openssl(
            "req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key -out server.csr",
        ))
        .await?;
        std::fs::write(
            base.join("san.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .map_err(|e| e.to_string())?;
        run(openssl(
            "x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile san.ext -out server.crt",
        ))
        .await?;
        // The server refuses a key others can read.
        std::fs::set_permissions(
            base.join("server.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .map_err(|e| e.to_string())?;
        Ok::<(), String>(())
    };
    if let Err(reason) = certificates.await {
        let _ = std::fs::remove_dir_all(&base);
        return Err(format!("making certificates: {reason}"));
    }
    let settings = [
        "-c",
        "ssl=on",
        "-c",
        "ssl_cert_file=../server.crt",
        "-c",
        "ssl_key_file=../server.key",
    ];
    // TCP only over TLS; the socket (used to see the server is up) without.
    let hba =
        "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n";
    match init_and_spawn(&bindir, &base, &settings, Some(hba)).await {
        Ok((_, port, child)) => {
            let socket = format!(
                "host={} port={port} user=postgres dbname=postgres",
                base.display()
            );
            let cluster = wait_until_ready(socket, child).await?;
            Ok(TlsCluster {
                url: format!("postgres://postgres@localhost:{port}/postgres"),
                ca_file: base.join("ca.crt"),
                other_ca_file: base.join("other-ca.crt"),
                _supervisor: cluster._supervisor,
            })
        }
        Err(reason) => {
            let _ = std::fs::remove_dir_all(&base);
            Err(reason)
        }
    }
}
