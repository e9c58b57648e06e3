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
        /// Log level: trace, debug, info, warn, error.
        #[arg(short = 'l', long = "log-level", default_value = "info")]
        log_level: String,
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

#[derive(Clone, Copy, ValueEnum)]
enum StatusFormat {
    Table,
    Json,
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    sluice_config::istio::parse_duration(text).ok_or_else(|| format!("`{text}` is not a duration"))
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
            log_level,
        } => {
            init_logging(&log_level);
            let rt = match runtime_or_exit(true) {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            let options = sluice_control::server::ControlOptions {
                config_dir,
                xds_address,
                api_address,
                debounce,
                address_file,
            };
            match rt.block_on(sluice_control::server::run(options)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::ProxyStatus { server, output } => {
            let rt = match runtime_or_exit(false) {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            match rt.block_on(sluice_control::proxy_status::fetch(&server)) {
                Ok(doc) => {
                    match output {
                        StatusFormat::Json => {
                            println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default())
                        }
                        StatusFormat::Table => {
                            print!("{}", sluice_control::proxy_status::render_table(&doc))
                        }
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::DemoUpstream { listen, name } => {
            let rt = match runtime_or_exit(false) {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            match rt.block_on(sluice_proxy::demo_upstream::serve(listen, name)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{listen}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
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
