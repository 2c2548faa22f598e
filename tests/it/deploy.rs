//! The deployment examples in `deploy/` are copied by users as they are: these checks hold them to
//! what the proxy needs (probes on the right paths and port, a drain that fits the grace period,
//! one shared PostgreSQL from a Secret, three replicas), and hold README.md's copies of them to
//! the files byte for byte.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

const KUBERNETES: &str = "deploy/kubernetes.yaml";
const COMPOSE: &str = "deploy/docker-compose.yaml";
/// `--shutdown-grace-ms` when the variable is not set.
const DEFAULT_SHUTDOWN_GRACE_MS: i64 = 30_000;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo().join(relative))
        .unwrap_or_else(|e| panic!("cannot read {relative}: {e}"))
}

fn load(relative: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(relative))
        .unwrap_or_else(|e| panic!("{relative} is not valid YAML: {e}"))
}

fn text<'a>(value: &'a Yaml, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, found {value:?}"))
}

fn int(value: &Yaml, what: &str) -> i64 {
    value
        .as_i64()
        .unwrap_or_else(|| panic!("{what}: expected an integer, found {value:?}"))
}

fn list<'a>(value: &'a Yaml, what: &str) -> &'a [Yaml] {
    value
        .as_vec()
        .unwrap_or_else(|| panic!("{what}: expected a list, found {value:?}"))
}

/// The port of a `host:port` listen address.
fn listen_port(listen: &str) -> i64 {
    let (_, port) = listen
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("listen address {listen:?} has no port"));
    port.parse()
        .unwrap_or_else(|e| panic!("listen address {listen:?}: {e}"))
}

/// `postgres://user:password@host:port/database`, split; panics on anything else.
struct PostgresUrl {
    user: String,
    password: String,
    host: String,
    port: u16,
    database: String,
}

fn postgres_url(url: &str) -> PostgresUrl {
    let bad =
        |why: &str| -> ! { panic!("{url:?} is not postgres://user:password@host:port/db: {why}") };
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .unwrap_or_else(|| bad("scheme"));
    let (credentials, rest) = rest.split_once('@').unwrap_or_else(|| bad("no user@"));
    let (user, password) = credentials
        .split_once(':')
        .unwrap_or_else(|| bad("no password"));
    let (address, database) = rest.split_once('/').unwrap_or_else(|| bad("no /database"));
    let (host, port) = address.rsplit_once(':').unwrap_or_else(|| bad("no :port"));
    let port = port.parse().unwrap_or_else(|_| bad("port"));
    if [user, password, host, database]
        .iter()
        .any(|p| p.is_empty())
    {
        bad("an empty part");
    }
    PostgresUrl {
        user: user.to_owned(),
        password: password.to_owned(),
        host: host.to_owned(),
        port,
        database: database.to_owned(),
    }
}

/// Every `WABA_PROXY_*` variable the proxy reads, from the `env = "..."` of its flags.
fn known_variables() -> BTreeSet<String> {
    let config = read("src/config.rs");
    let known: BTreeSet<String> = config
        .split("env = \"")
        .skip(1)
        .filter_map(|rest| rest.split_once('"').map(|(name, _)| name.to_owned()))
        .collect();
    assert!(
        known.contains("WABA_PROXY_LISTEN"),
        "src/config.rs: {known:?}"
    );
    known
}

// ---------------------------------------------------------------- Kubernetes

struct Kubernetes {
    documents: Vec<Yaml>,
}

impl Kubernetes {
    fn load() -> Kubernetes {
        Kubernetes {
            documents: load(KUBERNETES),
        }
    }

    fn only(&self, kind: &str) -> &Yaml {
        let found: Vec<&Yaml> = self
            .documents
            .iter()
            .filter(|d| d["kind"].as_str() == Some(kind))
            .collect();
        assert_eq!(found.len(), 1, "{KUBERNETES}: one {kind} expected");
        found[0]
    }

    fn deployment(&self) -> &Yaml {
        self.only("Deployment")
    }

    fn pod(&self) -> &Yaml {
        &self.deployment()["spec"]["template"]["spec"]
    }

    fn container(&self) -> &Yaml {
        let containers = list(&self.pod()["containers"], "containers");
        assert_eq!(containers.len(), 1, "one container expected");
        &containers[0]
    }

    /// The container's env entry named `name`.
    fn env(&self, name: &str) -> &Yaml {
        list(&self.container()["env"], "env")
            .iter()
            .find(|e| e["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("{KUBERNETES}: the container does not set {name}"))
    }

    fn env_value(&self, name: &str) -> Option<&str> {
        list(&self.container()["env"], "env")
            .iter()
            .find(|e| e["name"].as_str() == Some(name))
            .map(|e| text(&e["value"], name))
    }

    /// A probe's or Service's port, numeric or named, as the container port number.
    fn resolve_port(&self, port: &Yaml, what: &str) -> i64 {
        if let Some(number) = port.as_i64() {
            return number;
        }
        let name = text(port, what);
        let ports = list(&self.container()["ports"], "ports");
        let named = ports
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("{what}: no container port named {name:?}"));
        int(&named["containerPort"], "containerPort")
    }

    /// The value of `key` in the Secret a `secretKeyRef` points at.
    fn secret_value(&self, reference: &Yaml, what: &str) -> String {
        let secret = self.only("Secret");
        assert_eq!(
            text(&reference["name"], what),
            text(&secret["metadata"]["name"], "Secret name"),
            "{what} must come from the Secret in the file"
        );
        let key = text(&reference["key"], what);
        text(&secret["stringData"][key], &format!("Secret key {key}")).to_owned()
    }
}

#[test]
fn kubernetes_file_is_a_secret_a_deployment_and_a_service() {
    let k = Kubernetes::load();
    let kinds: Vec<&str> = k
        .documents
        .iter()
        .map(|d| text(&d["kind"], "kind"))
        .collect();
    assert_eq!(kinds, ["Secret", "Deployment", "Service"]);
}

#[test]
fn deployment_runs_three_replicas_behind_the_service() {
    let k = Kubernetes::load();
    let deployment = k.deployment();
    assert_eq!(int(&deployment["spec"]["replicas"], "replicas"), 3);

    // The Deployment's selector and the Service's both pick the pods it creates.
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let selects_pods = |selector: &Yaml, what: &str| {
        let selector = selector
            .as_hash()
            .unwrap_or_else(|| panic!("{what}: no selector"));
        assert!(!selector.is_empty(), "{what}: empty selector");
        for (key, value) in selector {
            assert_eq!(&pod_labels[text(key, what)], value, "{what}: label {key:?}");
        }
    };
    selects_pods(
        &deployment["spec"]["selector"]["matchLabels"],
        "Deployment selector",
    );
    let service = k.only("Service");
    selects_pods(&service["spec"]["selector"], "Service selector");

    let ports = list(&service["spec"]["ports"], "Service ports");
    assert_eq!(ports.len(), 1);
    assert_eq!(int(&ports[0]["port"], "Service port"), 80);
    let listen = listen_port(k.env_value("WABA_PROXY_LISTEN").unwrap());
    assert_eq!(
        k.resolve_port(&ports[0]["targetPort"], "Service targetPort"),
        listen
    );
}

#[test]
fn probes_hit_readyz_and_healthz_on_the_port_the_proxy_listens_on() {
    let k = Kubernetes::load();
    let listen = k
        .env_value("WABA_PROXY_LISTEN")
        .expect("WABA_PROXY_LISTEN must be set: its default, 127.0.0.1, is unreachable");
    assert!(
        listen.starts_with("0.0.0.0:"),
        "the proxy must listen on every interface in a pod, not {listen}"
    );
    let port = listen_port(listen);
    let container = k.container();
    let ports = list(&container["ports"], "ports");
    assert_eq!(ports.len(), 1);
    assert_eq!(int(&ports[0]["containerPort"], "containerPort"), port);

    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(text(&get["path"], probe), path, "{probe}");
        assert_eq!(k.resolve_port(&get["port"], probe), port, "{probe} port");
    }
}

#[test]
fn termination_grace_covers_the_pre_stop_sleep_and_the_drain() {
    let k = Kubernetes::load();
    let grace = int(
        &k.pod()["terminationGracePeriodSeconds"],
        "terminationGracePeriodSeconds",
    );
    let pre_stop = &k.container()["lifecycle"]["preStop"];
    // The image is distroless: no shell and no sleep binary for an exec hook.
    assert!(
        pre_stop["exec"].is_badvalue(),
        "preStop must be a sleep action"
    );
    let sleep = int(&pre_stop["sleep"]["seconds"], "preStop sleep seconds");
    assert!(sleep > 0, "preStop sleep must give endpoints time to go");
    let drain_ms = k
        .env_value("WABA_PROXY_SHUTDOWN_GRACE_MS")
        .map_or(DEFAULT_SHUTDOWN_GRACE_MS, |v| v.parse().unwrap());
    let drain = (drain_ms + 999) / 1000;
    assert!(
        grace > sleep + drain,
        "terminationGracePeriodSeconds {grace} must exceed preStop {sleep} s + drain {drain} s, \
         or in-flight requests are killed"
    );
}

#[test]
fn database_and_secrets_come_from_the_secret_as_placeholders() {
    let k = Kubernetes::load();
    let database = &k.env("WABA_PROXY_DATABASE")["valueFrom"]["secretKeyRef"];
    let url = k.secret_value(database, "WABA_PROXY_DATABASE");
    let parsed = postgres_url(&url);
    assert!(
        url.contains("REPLACE"),
        "the database URL must be marked for replacing: {url}"
    );
    assert!(parsed.password.contains("REPLACE"), "{url}");
    assert_eq!(parsed.port, 5432);

    for name in ["WABA_PROXY_WEBHOOK_SECRET", "WABA_PROXY_ADMIN_TOKEN"] {
        let entry = k.env(name);
        assert!(
            entry["value"].is_badvalue(),
            "{name} must not be written in the Deployment"
        );
        let value = k.secret_value(&entry["valueFrom"]["secretKeyRef"], name);
        assert!(value.contains("REPLACE"), "{name}: {value}");
    }
}

#[test]
fn kubernetes_sets_only_variables_the_proxy_reads() {
    let k = Kubernetes::load();
    let known = known_variables();
    for entry in list(&k.container()["env"], "env") {
        let name = text(&entry["name"], "env name");
        assert!(
            known.contains(name),
            "{KUBERNETES}: {name} is not a proxy variable"
        );
    }
}

#[test]
fn pod_runs_non_root_on_a_read_only_root_with_small_resources() {
    let k = Kubernetes::load();
    let pod = k.pod();
    let container = k.container();
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    // The image's user is a name (distroless "nonroot"): runAsNonRoot needs a numeric id.
    let uid = int(&pod["securityContext"]["runAsUser"], "runAsUser");
    assert_ne!(uid, 0);
    assert_eq!(
        container["securityContext"]["readOnlyRootFilesystem"].as_bool(),
        Some(true)
    );
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"].as_bool(),
        Some(false)
    );

    // With a read-only root, the data dir and the key map must be mounted.
    let mounts: Vec<&str> = list(&container["volumeMounts"], "volumeMounts")
        .iter()
        .map(|m| text(&m["mountPath"], "mountPath"))
        .collect();
    let data_dir = k.env_value("WABA_PROXY_DATA_DIR").unwrap_or("/data");
    assert!(mounts.contains(&data_dir), "{data_dir} is not mounted");
    if let Some(key_map) = k.env_value("WABA_PROXY_KEY_MAP") {
        let dir = Path::new(key_map).parent().unwrap().to_str().unwrap();
        assert!(
            mounts.contains(&dir),
            "the key map {key_map} is not mounted"
        );
    }

    let resources = &container["resources"];
    for field in ["cpu", "memory"] {
        assert!(
            resources["requests"][field].as_str().is_some(),
            "no {field} request"
        );
    }
    assert!(
        resources["limits"]["memory"].as_str().is_some(),
        "no memory limit"
    );
}

// ---------------------------------------------------------------- Compose

struct Compose {
    file: Yaml,
}

impl Compose {
    fn load() -> Compose {
        let mut documents = load(COMPOSE);
        assert_eq!(documents.len(), 1, "{COMPOSE}: one document expected");
        Compose {
            file: documents.remove(0),
        }
    }

    fn service(&self, name: &str) -> &Yaml {
        let service = &self.file["services"][name];
        assert!(!service.is_badvalue(), "{COMPOSE}: no service {name}");
        service
    }

    /// The services that run the proxy (the ones given a database), with their names.
    fn proxies(&self) -> Vec<(&str, &Yaml)> {
        let services = self.file["services"].as_hash().expect("services");
        let proxies: Vec<(&str, &Yaml)> = services
            .iter()
            .filter(|(_, s)| env(s, "WABA_PROXY_DATABASE").is_some())
            .map(|(name, s)| (text(name, "service name"), s))
            .collect();
        assert!(!proxies.is_empty(), "{COMPOSE}: no proxy service");
        proxies
    }
}

/// A Compose service's environment entry, in map or `NAME=value` list form.
fn env<'a>(service: &'a Yaml, name: &str) -> Option<&'a str> {
    let environment = &service["environment"];
    if let Some(entries) = environment.as_vec() {
        return entries.iter().find_map(|e| {
            text(e, "environment entry")
                .strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('='))
        });
    }
    let value = &environment[name];
    (!value.is_badvalue()).then(|| text(value, name))
}

/// A Compose duration such as `35s` or `1m30s`, in seconds.
fn duration_seconds(duration: &str) -> i64 {
    let (mut total, mut digits) = (0, String::new());
    for c in duration.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => panic!("unsupported duration {duration:?}"),
        };
        total += digits.parse::<i64>().unwrap() * unit;
        digits.clear();
    }
    assert!(digits.is_empty(), "duration {duration:?} needs a unit");
    total
}

#[test]
fn compose_postgres_has_a_readiness_healthcheck() {
    let compose = Compose::load();
    let postgres = compose.service("postgres");
    assert!(
        text(&postgres["image"], "postgres image").starts_with("postgres:"),
        "postgres image"
    );
    let test = list(&postgres["healthcheck"]["test"], "healthcheck test");
    assert!(
        test.iter().any(|part| part.as_str() == Some("pg_isready")),
        "the healthcheck must ask pg_isready: {test:?}"
    );
}

#[test]
fn compose_runs_three_proxies_on_the_shared_postgres() {
    let compose = Compose::load();
    let postgres = compose.service("postgres");
    let mut replicas = 0;
    for (name, proxy) in compose.proxies() {
        assert_eq!(
            text(
                &proxy["depends_on"]["postgres"]["condition"],
                "depends_on postgres"
            ),
            "service_healthy",
            "{name} must wait for a healthy postgres (migrations run at start-up)"
        );

        let url = postgres_url(env(proxy, "WABA_PROXY_DATABASE").unwrap());
        assert_eq!(
            url.host, "postgres",
            "{name}: the database host is the service"
        );
        assert_eq!(url.port, 5432);
        assert_eq!(Some(url.user.as_str()), env(postgres, "POSTGRES_USER"));
        assert_eq!(
            Some(url.password.as_str()),
            env(postgres, "POSTGRES_PASSWORD")
        );
        assert_eq!(Some(url.database.as_str()), env(postgres, "POSTGRES_DB"));

        let listen = env(proxy, "WABA_PROXY_LISTEN")
            .unwrap_or_else(|| panic!("{name}: WABA_PROXY_LISTEN must be set"));
        assert!(listen.starts_with("0.0.0.0:"), "{name} listens on {listen}");

        assert_eq!(text(&proxy["stop_signal"], "stop_signal"), "SIGTERM");
        let drain_ms = env(proxy, "WABA_PROXY_SHUTDOWN_GRACE_MS")
            .map_or(DEFAULT_SHUTDOWN_GRACE_MS, |v| v.parse().unwrap());
        let stop = duration_seconds(text(&proxy["stop_grace_period"], "stop_grace_period"));
        assert!(
            stop * 1000 > drain_ms,
            "{name}: stop_grace_period {stop} s must exceed the drain ({drain_ms} ms)"
        );

        // Built from the repository's Dockerfile (the context is relative to deploy/).
        let build = &proxy["build"];
        let context = build["context"]
            .as_str()
            .unwrap_or_else(|| text(build, "build"));
        let dockerfile = repo().join("deploy").join(context).join("Dockerfile");
        assert!(dockerfile.is_file(), "{name}: no {}", dockerfile.display());

        let count = proxy["deploy"]["replicas"].as_i64().unwrap_or(1);
        if count > 1 {
            assert!(
                proxy["ports"].is_badvalue(),
                "{name}: replicas cannot share a published host port"
            );
        }
        replicas += count;
    }
    assert_eq!(replicas, 3, "{COMPOSE}: three proxy replicas");
}

#[test]
fn compose_lb_publishes_one_port_and_forwards_to_the_proxies() {
    let compose = Compose::load();
    let proxies = compose.proxies();
    let lb = compose.service("lb");
    assert_eq!(list(&lb["ports"], "lb ports").len(), 1);
    let mounted = list(&lb["configs"], "lb configs");
    let source = text(&mounted[0]["source"], "lb config source");
    let config = text(&compose.file["configs"][source]["content"], "lb config");
    assert!(
        !config.contains('$'),
        "Compose would substitute the $ in the nginx config"
    );
    for (name, proxy) in proxies {
        let port = listen_port(env(proxy, "WABA_PROXY_LISTEN").unwrap());
        let upstream = format!("proxy_pass http://{name}:{port};");
        assert!(config.contains(&upstream), "lb must forward: {upstream}");
        let depends = list(&lb["depends_on"], "lb depends_on");
        assert!(depends.iter().any(|d| d.as_str() == Some(name)));
    }
}

#[test]
fn compose_sets_only_variables_the_proxy_reads() {
    let compose = Compose::load();
    let known = known_variables();
    for (name, proxy) in compose.proxies() {
        let environment = proxy["environment"].as_hash().expect("environment map");
        for variable in environment.keys() {
            let variable = text(variable, "variable");
            assert!(
                known.contains(variable),
                "{name}: {variable} is not a proxy variable"
            );
        }
    }
}

// ---------------------------------------------------------------- README

#[test]
fn readme_carries_both_files_verbatim() {
    let readme = read("README.md");
    for file in [KUBERNETES, COMPOSE] {
        let block = format!("```yaml\n{}```\n", read(file));
        assert!(
            readme.contains(&block),
            "README.md must show {file} exactly, in a ```yaml block: copy the file into it"
        );
    }
    let section = |heading: &str| {
        readme
            .find(&format!("\n{heading}\n"))
            .unwrap_or_else(|| panic!("README.md has no {heading:?}"))
    };
    let replicas = section("## Running several replicas");
    assert!(section("## Operations") < replicas && replicas < section("## Performance"));
    let performance = section("## Performance");
    for file in [KUBERNETES, COMPOSE] {
        let at = readme.find(&read(file)).unwrap();
        assert!(
            replicas < at && at < performance,
            "{file} belongs in Running several replicas"
        );
    }
}

/// Every metric the Grafana dashboard queries is one the proxy exports: a proxy that has
/// served a send, refused a request and relayed a webhook is scraped, and each `waba_proxy_*`
/// name in the dashboard's queries must be among the series it shows.
#[tokio::test]
async fn the_grafana_dashboard_queries_only_metrics_the_proxy_exports() {
    use crate::support::mock_upstream::MockUpstream;
    use crate::support::proxy::{send, send_text, spawn_proxy_with};
    use crate::webhooks::{legacy_receiver, post_event, receiver_ok, text_event, SECRET};

    let upstream = MockUpstream::start().await;
    let receiver = legacy_receiver([], receiver_ok()).await;
    let hook = format!("{}/hook", receiver.url());
    let proxy = spawn_proxy_with(&upstream.url(), |c| {
        c.legacy_webhook_url = Some(hook);
        c.webhook_secret = Some(SECRET.into());
    })
    .await;
    assert_eq!(send_text(&proxy).await.status, 201);
    assert_eq!(
        send(&proxy, "GET", "/v1/nothing-here", &[], "")
            .await
            .status,
        404
    );
    let event = text_event("49", "wamid.DASH", "hi");
    assert_eq!(
        post_event(&proxy, "default", Some(SECRET), &event).await,
        200
    );
    receiver.wait_for_requests(1).await;
    // The delivery loop publishes its channels about once a second.
    let mut exported = BTreeSet::new();
    for _ in 0..50 {
        let metrics = send(&proxy, "GET", "/metrics", &[], "").await;
        let text = String::from_utf8(metrics.body.to_vec()).unwrap();
        exported = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .map(str::to_owned)
            .collect();
        if exported.contains("waba_proxy_webhook_channel_in_flight") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/waba-onprem-proxy.json")).unwrap();
    let mut queried = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(at) = rest.find("waba_proxy_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                queried.insert(name);
            }
        }
    }
    // The panels the issue names, by what they query.
    for needed in [
        "waba_proxy_requests_total",
        "waba_proxy_errors_total",
        "waba_proxy_upstream_seconds_bucket",
        "waba_proxy_in_flight_requests",
        "waba_proxy_webhook_outbox",
        "waba_proxy_webhook_outbox_oldest_pending_seconds",
        "waba_proxy_webhook_delivery_seconds_bucket",
    ] {
        assert!(
            queried.contains(needed),
            "the dashboard has no panel on {needed}"
        );
    }
    let missing: Vec<&String> = queried.iter().filter(|q| !exported.contains(*q)).collect();
    assert!(
        missing.is_empty(),
        "queried but not exported: {missing:?}\nexported: {exported:?}"
    );
}

/// `promtool` (Debian's `prometheus` package; `.ci/run` installs it) checks the alert rules
/// and runs their unit tests on synthetic series. Without it the test says SKIPPED, unless
/// `WABA_PROXY_TEST_TOOLS_REQUIRED=1` (as in CI).
#[test]
fn the_alert_rules_pass_promtool_check_and_their_unit_tests() {
    let dir = repo().join("deploy/prometheus");
    let run = |args: &[&str]| {
        std::process::Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
    };
    let check = match run(&["check", "rules", "alerts.yaml"]) {
        Ok(output) => output,
        Err(error) => {
            assert!(
                std::env::var("WABA_PROXY_TEST_TOOLS_REQUIRED").as_deref() != Ok("1"),
                "promtool is required but unavailable: {error}"
            );
            eprintln!("SKIPPED (no promtool): {error}");
            return;
        }
    };
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let tested = run(&["test", "rules", "alerts.test.yaml"]).unwrap();
    assert!(
        tested.status.success(),
        "{}{}",
        String::from_utf8_lossy(&tested.stdout),
        String::from_utf8_lossy(&tested.stderr)
    );
    // Each rule says why it exists.
    let rules = load("deploy/prometheus/alerts.yaml");
    for rule in list(&rules[0]["groups"][0]["rules"], "rules") {
        let name = text(&rule["alert"], "alert");
        assert!(
            text(&rule["annotations"]["reasoning"], "reasoning").len() > 80,
            "{name} has no reasoning"
        );
    }
}
