//! `sluice`: progressive delivery proxy and control plane. This binary only dispatches the
//! command line to the library crates.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use sluice_proxy::compile::CompileOptions;
use sluice_proxy::runtime::{self, Proxy, ProxyOptions};

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Progressive delivery proxy, compatible with Envoy, Istio and Argo Rollouts"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    Serve,
    Validate,
}

#[derive(Subcommand)]
enum Command {
    /// Run the data plane on an Envoy v3 bootstrap (flags as Envoy's).
    Proxy {
        /// Envoy v3 bootstrap, YAML or JSON.
        #[arg(short = 'c', long = "config-path")]
        config_path: PathBuf,
        /// Worker threads (default: number of cores).
        #[arg(long)]
        concurrency: Option<usize>,
        /// Log level: trace, debug, info, warn, error, critical, off.
        #[arg(short = 'l', long = "log-level", default_value = "info")]
        log_level: String,
        /// Node id (overrides `node.id`).
        #[arg(long = "service-node")]
        service_node: Option<String>,
        /// Node cluster (overrides `node.cluster`).
        #[arg(long = "service-cluster")]
        service_cluster: Option<String>,
        /// `validate` checks the configuration and exits 0 (valid) or 1.
        #[arg(long, value_enum, default_value = "serve")]
        mode: Mode,
        /// Reload when the file changes (SIGHUP always reloads).
        #[arg(long = "watch-config")]
        watch_config: bool,
        /// Write the admin server's bound address to this file.
        #[arg(long = "admin-address-path")]
        admin_address_path: Option<PathBuf>,
    },
    /// The whole product on this machine: control plane, gateway proxy, two demo upstreams and
    /// a canary release to try (`--scripted` runs and verifies one, then exits).
    Demo {
        /// Run a canary (20 % -> pause -> 50 % -> 100 %) and an abort, verifying each step.
        #[arg(long)]
        scripted: bool,
        /// The gateway's address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        gateway: std::net::SocketAddr,
        /// The control plane's xDS address.
        #[arg(long = "xds-address", default_value = "127.0.0.1:15010")]
        xds_address: std::net::SocketAddr,
        /// The control plane's API address.
        #[arg(long = "api-address", default_value = "127.0.0.1:15080")]
        api_address: std::net::SocketAddr,
        /// Keep configuration, state and logs here (default: a temporary directory).
        #[arg(long = "work-dir")]
        work_dir: Option<PathBuf>,
    },
    /// Run a tiny upstream that answers every request with NAME (for demos and quick checks).
    DemoUpstream {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: std::net::SocketAddr,
        /// What to answer (also sent as `x-upstream`).
        #[arg(long, default_value = "v1")]
        name: String,
    },
    /// Check any Envoy document (bootstrap, route configuration, xDS resource file).
    Validate { files: Vec<PathBuf> },
    /// Run the control plane: Istio resources from a directory, served to proxies over ADS.
    Control {
        /// Directory of Istio resources (`*.yaml`, `*.yml`, `*.json`, multi-document), watched.
        #[arg(long = "config-dir")]
        config_dir: PathBuf,
        /// Address of the xDS (ADS) gRPC server.
        #[arg(long = "xds-address", default_value = "127.0.0.1:15010")]
        xds_address: std::net::SocketAddr,
        /// Address of the HTTP API (proxy status).
        #[arg(long = "api-address", default_value = "127.0.0.1:15080")]
        api_address: std::net::SocketAddr,
        /// Quiet time after an edit before pushing (e.g. 10ms, 1s).
        #[arg(long, default_value = "10ms", value_parser = parse_duration)]
        debounce: std::time::Duration,
        /// Write the bound addresses as JSON `{"xds": …, "api": …}` to this file.
        #[arg(long = "address-file")]
        address_file: Option<PathBuf>,
        /// Keep release state here (an embedded database); without it state is lost on restart.
        #[arg(long = "data-dir")]
        data_dir: Option<PathBuf>,
        /// Require `Authorization: Bearer <token>` (the file's content) on mutating API calls.
        #[arg(long = "api-token-file")]
        api_token_file: Option<PathBuf>,
        /// Log level: trace, debug, info, warn, error.
        #[arg(short = 'l', long = "log-level", default_value = "info")]
        log_level: String,
    },
    /// Release tasks (Argo Rollouts): list, get, promote, pause, resume, abort, retry, undo,
    /// set-weight, apply.
    Rollout {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        command: RolloutCommand,
    },
    /// Weights of VirtualService routes that no Rollout manages.
    Route {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        command: RouteCommand,
    },
    /// Send requests and report the share each version got, with 99 % confidence intervals;
    /// exit 1 when an expectation (`--expect v1=80,v2=20`) falls outside its interval.
    Verify {
        url: String,
        /// Number of requests.
        #[arg(short = 'n', long = "requests", default_value_t = 1000)]
        requests: u64,
        /// Extra request header, `name: value` (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// Where the version is: `body` (trimmed) or `header:NAME`.
        #[arg(long, default_value = "body")]
        by: String,
        /// Expected shares, `v1=80,v2=20` (percent).
        #[arg(long)]
        expect: Option<String>,
        /// Requests in flight at once.
        #[arg(short = 'c', long, default_value_t = 8)]
        concurrency: usize,
        /// Confidence of the intervals, percent: 90, 95, 99, 99.9, 99.99 or 99.999.
        #[arg(long, default_value_t = 99.0)]
        confidence: f64,
    },
    /// Every proxy connected to the control plane and what it has acknowledged (like
    /// `istioctl proxy-status`).
    ProxyStatus {
        /// The control plane's API address.
        #[arg(long, default_value = "127.0.0.1:15080")]
        server: String,
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: StatusFormat,
    },
}

/// How to reach the control plane's API.
#[derive(clap::Args, Clone)]
struct ApiArgs {
    /// The control plane's API address.
    #[arg(long, global = true, default_value = "127.0.0.1:15080")]
    server: String,
    /// File holding the API token (sent as `Authorization: Bearer`).
    #[arg(long = "token-file", global = true)]
    token_file: Option<PathBuf>,
    /// Namespace of the Rollout.
    #[arg(short = 'n', long, global = true, default_value = "default")]
    namespace: String,
    /// Output format.
    #[arg(
        short = 'o',
        long = "output",
        global = true,
        value_enum,
        default_value = "table"
    )]
    output: StatusFormat,
}

#[derive(Subcommand)]
enum RolloutCommand {
    /// Every Rollout with its phase, step and weight.
    List,
    /// One Rollout: steps, weights (desired and acknowledged), revisions, events.
    Get {
        name: String,
        /// Refresh every second until interrupted.
        #[arg(short = 'w', long)]
        watch: bool,
    },
    /// Go to the next step (ends a pause); `--full` skips every remaining step.
    Promote {
        name: String,
        #[arg(long)]
        full: bool,
    },
    /// Hold the release where it is.
    Pause { name: String },
    /// Undo `pause`.
    Resume { name: String },
    /// Send all traffic back to the stable revision (idempotent).
    Abort { name: String },
    /// Restart an aborted release from its first step.
    Retry { name: String },
    /// Release a previous revision (default: the last one that completed).
    Undo {
        name: String,
        #[arg(long = "to-revision")]
        to_revision: Option<u32>,
    },
    /// Set the canary's traffic share by hand (the release pauses until promote or resume).
    SetWeight { name: String, weight: u32 },
    /// Create a release from a form: DestinationRule, VirtualService and Rollout for SERVICE,
    /// then start releasing the canary labels.
    Create {
        name: String,
        /// The service (a ServiceEntry host) to release.
        #[arg(long)]
        service: String,
        /// Labels of the stable version's endpoints, `k=v[,k=v]`.
        #[arg(long = "stable-labels")]
        stable_labels: String,
        /// Labels of the canary version's endpoints, `k=v[,k=v]`.
        #[arg(long = "canary-labels")]
        canary_labels: String,
        /// `WEIGHT[:WAIT],…` — a wait of 0 pauses until promoted (e.g. `10:5m,50:0,100`).
        #[arg(long)]
        steps: String,
        /// Also route the service through this Gateway (`namespace/name`).
        #[arg(long)]
        gateway: Option<String>,
    },
    /// Apply Rollouts and Istio resources from a YAML file (kept by the control plane).
    Apply {
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum RouteCommand {
    /// Set the weights of one route: `sluice route set-weight VS ROUTE stable=70 canary=30`
    /// (destinations by subset, or by host when they have none).
    SetWeight {
        virtual_service: String,
        route: String,
        /// `SUBSET=PERCENT`, adding up to 100.
        #[arg(required = true)]
        weights: Vec<String>,
    },
}

fn labels(text: &str) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    text.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| anyhow::anyhow!("label `{p}`: expected key=value"))
        })
        .collect()
}

async fn route_command(api: ApiArgs, command: RouteCommand) -> anyhow::Result<()> {
    let client = api_client(&api)?;
    match command {
        RouteCommand::SetWeight {
            virtual_service,
            route,
            weights,
        } => {
            let mut w = serde_json::Map::new();
            for item in &weights {
                let (k, v) = item
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("`{item}`: expected SUBSET=PERCENT"))?;
                w.insert(
                    k.trim().to_string(),
                    v.trim().trim_end_matches('%').parse::<u32>()?.into(),
                );
            }
            let path = format!(
                "/api/v1/virtualservices/{}/{virtual_service}/routes/{route}/weights",
                api.namespace
            );
            let v = client
                .post(&path, serde_json::json!({"weights": w}))
                .await?;
            match api.output {
                StatusFormat::Json => println!("{}", serde_json::to_string_pretty(&v)?),
                StatusFormat::Yaml => print!("{}", sluice_control::rollout_view::yaml(&v)),
                StatusFormat::Table => println!(
                    "{} weights set: {}",
                    v["route"].as_str().unwrap_or(""),
                    v["weights"]
                ),
            }
        }
    }
    Ok(())
}

#[derive(Clone, Copy, ValueEnum)]
enum StatusFormat {
    Table,
    Json,
    Yaml,
}

fn api_client(api: &ApiArgs) -> anyhow::Result<sluice_control::api_client::ApiClient> {
    let token = match &api.token_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    Ok(sluice_control::api_client::ApiClient {
        server: api.server.clone(),
        token,
        user: std::env::var("USER").ok(),
    })
}

async fn rollout_command(api: ApiArgs, command: RolloutCommand) -> anyhow::Result<()> {
    use sluice_control::rollout_view::{render, render_list};
    let client = api_client(&api)?;
    let ns = &api.namespace;
    let show = |v: &serde_json::Value| match api.output {
        StatusFormat::Json => println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
        StatusFormat::Yaml => print!("{}", sluice_control::rollout_view::yaml(v)),
        StatusFormat::Table => print!("{}", render(v)),
    };
    let action = |name: &str, action: &str| format!("/api/v1/rollouts/{ns}/{name}/{action}");
    match command {
        RolloutCommand::List => {
            let v = client.get("/api/v1/rollouts").await?;
            match api.output {
                StatusFormat::Json => println!("{}", serde_json::to_string_pretty(&v)?),
                StatusFormat::Yaml => print!("{}", sluice_control::rollout_view::yaml(&v)),
                StatusFormat::Table => print!("{}", render_list(&v)),
            }
        }
        RolloutCommand::Get { name, watch } => loop {
            let v = client.get(&format!("/api/v1/rollouts/{ns}/{name}")).await?;
            if watch {
                print!("\x1b[2J\x1b[H");
            }
            show(&v);
            if !watch {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        },
        RolloutCommand::Promote { .. }
        | RolloutCommand::Pause { .. }
        | RolloutCommand::Resume { .. }
        | RolloutCommand::Abort { .. }
        | RolloutCommand::Retry { .. }
        | RolloutCommand::Undo { .. }
        | RolloutCommand::SetWeight { .. } => {
            let (name, op, body) = match command {
                RolloutCommand::Promote { name, full } => {
                    (name, "promote", serde_json::json!({"full": full}))
                }
                RolloutCommand::Pause { name } => (name, "pause", serde_json::json!({})),
                RolloutCommand::Resume { name } => (name, "resume", serde_json::json!({})),
                RolloutCommand::Abort { name } => (name, "abort", serde_json::json!({})),
                RolloutCommand::Retry { name } => (name, "retry", serde_json::json!({})),
                RolloutCommand::Undo { name, to_revision } => {
                    (name, "undo", serde_json::json!({"revision": to_revision}))
                }
                RolloutCommand::SetWeight { name, weight } => {
                    (name, "set-weight", serde_json::json!({"weight": weight}))
                }
                // The outer arm admits only the operations above.
                _ => return Ok(()),
            };
            show(&client.post(&action(&name, op), body).await?);
        }
        RolloutCommand::Create {
            name,
            service,
            stable_labels,
            canary_labels,
            steps,
            gateway,
        } => {
            let body = serde_json::json!({
                "name": name, "namespace": ns, "service": service,
                "stable_labels": labels(&stable_labels)?, "canary_labels": labels(&canary_labels)?,
                "steps": steps, "gateway": gateway,
            });
            client.post("/api/v1/rollouts", body).await?;
            // Show the release as it starts.
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            show(&client.get(&format!("/api/v1/rollouts/{ns}/{name}")).await?);
        }
        RolloutCommand::Apply { file } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let v = client
                .call(
                    http::Method::POST,
                    "/api/v1/apply",
                    Some((bytes::Bytes::from(text), "application/yaml")),
                )
                .await?;
            for k in v["applied"].as_array().cloned().unwrap_or_default() {
                println!("applied {}", k.as_str().unwrap_or(""));
            }
        }
    }
    Ok(())
}

async fn verify_command(
    url: String,
    requests: u64,
    headers: Vec<String>,
    by: String,
    expect: Option<String>,
    concurrency: usize,
    confidence: f64,
) -> anyhow::Result<bool> {
    use sluice_control::verify::{self, VerifyOptions, VersionFrom};
    let url: http::Uri = url.parse().map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
    let mut hs = Vec::new();
    for h in headers {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("header `{h}`: expected `name: value`"))?;
        hs.push((
            http::HeaderName::from_bytes(k.trim().as_bytes())?,
            http::HeaderValue::from_str(v.trim())?,
        ));
    }
    let by = match by.strip_prefix("header:") {
        Some(h) => VersionFrom::Header(http::HeaderName::from_bytes(h.as_bytes())?),
        None if by == "body" => VersionFrom::Body,
        None => anyhow::bail!("--by takes `body` or `header:NAME`"),
    };
    let mut expected = std::collections::BTreeMap::new();
    for part in expect
        .iter()
        .flat_map(|e| e.split(','))
        .filter(|p| !p.is_empty())
    {
        let (v, pct) = part
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--expect `{part}`: expected VERSION=PERCENT"))?;
        expected.insert(
            v.trim().to_string(),
            pct.trim().trim_end_matches('%').parse::<f64>()?,
        );
    }
    let z = verify::z_for(confidence)
        .ok_or_else(|| anyhow::anyhow!("--confidence takes 90, 95, 99, 99.9, 99.99 or 99.999"))?;
    let options = VerifyOptions {
        url,
        requests,
        concurrency,
        headers: hs,
        by,
        expect: expected,
        z,
    };
    let (n, shares) = verify::run(&options).await?;
    print!("{}", verify::render(n, &shares, confidence));
    Ok(shares.iter().all(|s| s.ok))
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    sluice_config::istio::parse_duration(text).ok_or_else(|| format!("`{text}` is not a duration"))
}

/// Run `fut` to completion on a new runtime; an error is printed and exits 1.
fn run_async<E: std::fmt::Display>(
    multi: bool,
    fut: impl std::future::Future<Output = Result<(), E>>,
) -> ExitCode {
    let rt = match runtime_or_exit(multi) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn runtime_or_exit(multi: bool) -> Result<tokio::runtime::Runtime, ExitCode> {
    let mut b = if multi {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    b.enable_all().build().map_err(|e| {
        eprintln!("cannot start runtime: {e}");
        ExitCode::FAILURE
    })
}

fn init_logging(level: &str) {
    let level = match level {
        "critical" => "error",
        "off" => "off",
        other => other,
    };
    let filter = tracing_subscriber::EnvFilter::try_new(format!("{level},h2=warn,hyper=warn"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Proxy {
            config_path,
            concurrency,
            log_level,
            service_node,
            service_cluster,
            mode,
            watch_config,
            admin_address_path,
        } => {
            init_logging(&log_level);
            let options = ProxyOptions {
                config_path,
                compile: CompileOptions {
                    service_node,
                    service_cluster,
                },
                watch_config,
                admin_address_path,
            };
            if let Mode::Validate = mode {
                return match runtime::validate(&options) {
                    Ok(summary) => {
                        println!("{summary}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("{e}");
                        ExitCode::FAILURE
                    }
                };
            }
            let workers = concurrency.filter(|n| *n > 0).unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            });
            // One worker: a single-threaded runtime (no work-stealing, no cross-thread wake-ups).
            let mut builder = if workers == 1 {
                tokio::runtime::Builder::new_current_thread()
            } else {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(workers);
                b
            };
            let rt = match builder.enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            rt.block_on(async move {
                match Proxy::start(options).await {
                    Ok(proxy) => {
                        proxy.run_until_signalled().await;
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("{e}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
        Command::Control {
            config_dir,
            xds_address,
            api_address,
            debounce,
            address_file,
            data_dir,
            api_token_file,
            log_level,
        } => {
            init_logging(&log_level);
            let options = sluice_control::server::ControlOptions {
                config_dir,
                xds_address,
                api_address,
                debounce,
                address_file,
                data_dir,
                api_token_file,
            };
            run_async(true, sluice_control::server::run(options))
        }
        Command::ProxyStatus { server, output } => run_async(false, async move {
            let doc = sluice_control::proxy_status::fetch(&server).await?;
            match output {
                StatusFormat::Json => {
                    println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default())
                }
                StatusFormat::Yaml => print!("{}", sluice_control::rollout_view::yaml(&doc)),
                StatusFormat::Table => {
                    print!("{}", sluice_control::proxy_status::render_table(&doc))
                }
            }
            Ok::<(), sluice_control::api_client::ApiClientError>(())
        }),
        Command::Rollout { api, command } => run_async(false, rollout_command(api, command)),
        Command::Route { api, command } => run_async(false, route_command(api, command)),
        Command::Verify {
            url,
            requests,
            headers,
            by,
            expect,
            concurrency,
            confidence,
        } => {
            let rt = match runtime_or_exit(true) {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            match rt.block_on(verify_command(
                url,
                requests,
                headers,
                by,
                expect,
                concurrency,
                confidence,
            )) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Demo {
            scripted,
            gateway,
            xds_address,
            api_address,
            work_dir,
        } => {
            let options = sluice_control::demo::DemoOptions {
                gateway,
                xds: xds_address,
                api: api_address,
                scripted,
                work_dir,
            };
            run_async(true, sluice_control::demo::run(options))
        }
        Command::DemoUpstream { listen, name } => run_async(false, async move {
            sluice_proxy::demo_upstream::serve(listen, name)
                .await
                .map_err(|e| format!("{listen}: {e}"))
        }),
        Command::Validate { files } => {
            let mut ok = true;
            for f in files {
                match runtime::validate_document(&f) {
                    Ok(summary) => println!("{summary}"),
                    Err(e) => {
                        ok = false;
                        eprintln!("{e}");
                    }
                }
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
