//! sidecred-bench: a closed-loop load generator over Unix sockets and loopback TCP, and the
//! side-by-side comparison of sidecred against the transport floor and the peer sidecars.
//!
//!   sidecred-bench serve-echo SOCKET
//!   sidecred-bench run [--duration 10s] [--concurrency 32] [--connections 4] [--client h2|tonic|stock]
//!                      [--fail-on-errors] TARGET...
//!   sidecred-bench startup SIDECRED_BIN CONFIG SOCKET RUNS
//!   sidecred-bench singleflight SOCKET ADMIN_SOCKET SECRET N
//!   sidecred-bench fill SOCKET PREFIX N
//!   sidecred-bench rss PID
//!   sidecred-bench rotation-watch SOCKET ADMIN_SOCKET SECRET WATCHERS ROTATIONS
//!   sidecred-bench fleet [SIDECARS] [ROUNDS]   revocation propagation and idle OpenBao load
//!
//! Targets (the first one is the baseline for ratios):
//!   sidecred=SOCKET,SECRET[,audit] cached GetSecret over gRPC on a Unix socket (`audit`: label
//!                                 for a sidecred that writes an audit log)
//!   echo=SOCKET                   bare tonic unary echo over a Unix socket
//!   http-unix=SOCKET,PATH[,H:V]   HTTP/1.1 keep-alive GET over a Unix socket (bao proxy)
//!   vault-unix=SOCKET,PATH[,H:V]  the same, named as sidecred's Vault-compatible endpoint
//!   http-tcp=HOST:PORT,PATH[,H:V] HTTP/1.1 keep-alive GET over loopback TCP (AWS SM Agent)
//!   sidecred-http-tcp=HOST:PORT,PATH[,H:V]  the same, labelled as sidecred's AWS agent API
//!   labelled-tcp=LABEL,HOST:PORT,PATH[,H:V] the same with a label (the proxy comparison)
//!   tls-tcp=LABEL,HOST:PORT,SNI,CA_FILE,PATH[,H:V]  the same over TLS, verified against CA_FILE
//!   connect-tls=LABEL,PROXY:PORT,DEST:PORT,CA_FILE,PATH[,H:V]  `CONNECT DEST:PORT` through the
//!                                 proxy (H:V sent with the CONNECT), then TLS with SNI = DEST
#![forbid(unsafe_code)]

mod extra;
mod fleet;
mod h2c;
mod http;
mod load;
mod rotation;
mod target;
mod tls;

use std::time::Duration;

/// `10s`, `500ms`, `2m`: the load durations the scripts pass.
fn parse_duration(s: &str) -> Result<Duration, ()> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).ok_or(())?);
    let n: u64 = n.parse().map_err(|_| ())?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(60 * n)),
        _ => Err(()),
    }
}

fn usage() -> ! {
    eprintln!("usage: sidecred-bench serve-echo SOCKET | run [--duration D] [--concurrency C] [--connections N] [--client h2|tonic|stock] [--fail-on-errors] TARGET...");
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(
            std::env::var("BENCH_THREADS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(2),
        )
        .enable_all()
        .build()
        .expect("runtime");
    match args.first().map(String::as_str) {
        Some("serve-echo") => rt.block_on(load::serve_echo(args.get(1).unwrap_or_else(|| usage()))),
        Some("run") => {
            let mut opts = load::Opts {
                requests: None,
                duration: Duration::from_secs(10),
                concurrency: 32,
                connections: 4,
                warmup: Duration::from_secs(1),
                client: load::ClientKind::Lean,
                threads: std::env::var("BENCH_THREADS")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(2),
                stealing: std::env::var("BENCH_RUNTIME").is_ok_and(|v| v == "stealing"),
            };
            let mut targets = Vec::new();
            // A row with failed requests measured something else (e.g. a missing injection).
            let mut fail_on_errors = false;
            let mut it = args[1..].iter();
            while let Some(a) = it.next() {
                let mut val = || it.next().cloned().unwrap_or_else(|| usage());
                match a.as_str() {
                    "--fail-on-errors" => fail_on_errors = true,
                    "--duration" => {
                        opts.duration = parse_duration(&val()).unwrap_or_else(|_| usage())
                    }
                    "--warmup" => opts.warmup = parse_duration(&val()).unwrap_or_else(|_| usage()),
                    "--requests" => opts.requests = Some(val().parse().unwrap_or_else(|_| usage())),
                    "--concurrency" => opts.concurrency = val().parse().unwrap_or_else(|_| usage()),
                    "--connections" => opts.connections = val().parse().unwrap_or_else(|_| usage()),
                    "--client" => {
                        opts.client = match val().as_str() {
                            "tonic" => load::ClientKind::Tonic,
                            "h2" => load::ClientKind::Lean,
                            "stock" => load::ClientKind::Stock,
                            _ => usage(),
                        }
                    }
                    t => targets.push(load::Target::parse(t).unwrap_or_else(|e| {
                        eprintln!("{e}");
                        usage()
                    })),
                }
            }
            if targets.is_empty() {
                usage();
            }
            let results = rt.block_on(load::run_all(&opts, &targets));
            load::print_table(&opts, &results);
            if fail_on_errors {
                if let Some(r) = results.iter().find(|r| r.errors > 0) {
                    eprintln!("{}: {} failed requests", r.name, r.errors);
                    std::process::exit(1);
                }
            }
        }
        Some("startup") if args.len() == 5 => rt.block_on(extra::startup(
            &args[1],
            &args[2],
            &args[3],
            args[4].parse().unwrap_or_else(|_| usage()),
        )),
        Some("singleflight") if args.len() == 5 => rt.block_on(extra::singleflight(
            &args[1],
            &args[2],
            &args[3],
            args[4].parse().unwrap_or_else(|_| usage()),
        )),
        Some("fill") if args.len() == 4 => rt.block_on(extra::fill(
            &args[1],
            &args[2],
            args[3].parse().unwrap_or_else(|_| usage()),
        )),
        Some("rotation-watch") if args.len() == 6 => rt.block_on(rotation::rotation_watch(
            &args[1],
            &args[2],
            &args[3],
            args[4].parse().unwrap_or_else(|_| usage()),
            args[5].parse().unwrap_or_else(|_| usage()),
        )),
        Some("rss") if args.len() == 2 => println!(
            "{}",
            extra::rss_kib(args[1].parse().unwrap_or_else(|_| usage()))
        ),
        Some("fleet") => rt.block_on(fleet::run(
            args.get(1).and_then(|v| v.parse().ok()).unwrap_or(8),
            args.get(2).and_then(|v| v.parse().ok()).unwrap_or(20),
        )),
        _ => usage(),
    }
}
