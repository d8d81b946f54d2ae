//! Command line: `serve`, `check-config`, and thin gRPC clients of the two sockets.
//! Exit codes: 0 ok, 1 other error, 2 usage or config, 3 denied, 4 not found, 5 unavailable,
//! 6 failed precondition (revoked or expired session), 7 invalid argument, 8 the socket's
//! server is not the expected uid (nothing was sent).

/// Prints a line to stdout; a closed pipe (`sidecred get x | head -c 5`) is not an error.
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

mod client;
mod connect;
#[cfg(feature = "openbao")]
mod direct;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// The private runtime directory config/dev.toml uses when no socket is given:
/// `$XDG_RUNTIME_DIR/sidecred-dev`, else `$HOME/.cache/sidecred-dev` (`/root` without a HOME).
/// Kept in step with the defaults written in that file.
pub fn dev_runtime_dir() -> PathBuf {
    let set = |v: &str| std::env::var_os(v).filter(|s| !s.is_empty());
    let base = match set("XDG_RUNTIME_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(set("HOME").unwrap_or_else(|| "/root".into())).join(".cache"),
    };
    base.join("sidecred-dev")
}

fn default_socket() -> PathBuf {
    dev_runtime_dir().join("sock/workload.sock")
}

fn default_admin_socket() -> PathBuf {
    dev_runtime_dir().join("admin/admin.sock")
}

#[derive(Parser, Debug)]
#[command(
    name = "sidecred",
    version,
    about = "Secrets broker sidecar: short-lived credentials over gRPC on a Unix socket"
)]
pub struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Debug, Clone)]
pub struct Conn {
    /// Workload socket.
    #[arg(long, env = "SIDECRED_SOCKET", default_value_os_t = default_socket(), global = true)]
    socket: PathBuf,
    /// Admin socket.
    #[arg(long, env = "SIDECRED_ADMIN_SOCKET", default_value_os_t = default_admin_socket(), global = true)]
    admin_socket: PathBuf,
    /// The uid sidecred runs as: the CLI refuses a socket whose listener or file belongs to any
    /// other uid (default: the CLI's own uid).
    #[arg(long, env = "SIDECRED_SERVER_UID", global = true)]
    server_uid: Option<u32>,
    /// Take the socket paths from this config file instead.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
    /// Deadline for each call, in seconds.
    #[arg(long, default_value_t = 10, global = true)]
    timeout: u64,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the sidecar.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate a config file and exit.
    CheckConfig { file: PathBuf },
    /// Fetch a secret (opens and closes a session unless --session is given).
    Get {
        name: String,
        #[arg(long)]
        session: Option<String>,
        #[arg(long)]
        call: Option<String>,
        #[arg(long)]
        version: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Open or close a session.
    Session {
        #[command(subcommand)]
        op: SessionOp,
    },
    /// Release a lease before it expires.
    Release {
        lease: String,
        #[arg(long)]
        session: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Stream version changes of a secret.
    Watch {
        name: String,
        #[arg(long)]
        session: String,
        /// Stop after this many events (0 = never).
        #[arg(long, default_value_t = 0)]
        count: u32,
        #[command(flatten)]
        conn: Conn,
    },
    /// Revoke every credential of a session (admin), on every sidecar of the fleet. With
    /// --openbao (a build with the `openbao` feature), talks to OpenBao directly and needs no
    /// sidecar.
    RevokeSession {
        session: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[cfg(feature = "openbao")]
        #[command(flatten)]
        direct: direct::Direct,
        #[command(flatten)]
        conn: Conn,
    },
    /// Rotate a secret (admin): a new version becomes current, the old one stays valid for the grace.
    Rotate {
        name: String,
        /// Grace window, e.g. 30s or 5m (default: the secret's configured grace).
        #[arg(long)]
        grace: Option<String>,
        /// Read the new value from this file ("-" for stdin); default: the backend generates it.
        #[arg(long)]
        value_file: Option<PathBuf>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show backends, sessions, leases and pending work (admin).
    Status {
        #[command(flatten)]
        conn: Conn,
    },
    /// Check a socket's grpc.health.v1 status (for liveness and readiness probes).
    Health {
        /// Check the admin socket instead of the workload socket.
        #[arg(long)]
        admin: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// List open sessions (admin).
    Sessions {
        #[command(flatten)]
        conn: Conn,
    },
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        op: AuditOp,
    },
}

#[derive(Subcommand, Debug)]
enum AuditOp {
    /// Print the digest an audit line holds for a session, lease or call id or a label value.
    Hash {
        value: String,
        /// The sidecar's config (names the audit file and its HMAC key).
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum SessionOp {
    Open {
        /// Lifetime, e.g. 30m (default: the server's).
        #[arg(long)]
        ttl: Option<String>,
        /// Labels as key=value, repeatable.
        #[arg(long = "label")]
        labels: Vec<String>,
        #[command(flatten)]
        conn: Conn,
    },
    Close {
        session: String,
        #[command(flatten)]
        conn: Conn,
    },
}

/// Parses arguments, runs the command, returns the exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve { config } => {
            crate::harden::compact_heap();
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if let Some(n) = std::env::var("SIDECRED_WORKER_THREADS")
                .ok()
                .and_then(|v| v.parse().ok())
            {
                b.worker_threads(n);
            }
            let rt = match b.enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("sidecred: cannot start runtime: {e}");
                    return 1;
                }
            };
            match rt.block_on(crate::serve::run(&config)) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("sidecred: {e}");
                    2
                }
            }
        }
        Cmd::CheckConfig { file } => match crate::config::Config::load(&file) {
            Ok(c) => {
                outln!(
                    "{}: ok ({} backends, {} secrets, {} workload rules, {} admin rules)",
                    file.display(),
                    c.backends.len(),
                    c.secrets.len(),
                    c.workload_policy_len(),
                    c.admin_policy_len()
                );
                0
            }
            Err(e) => {
                eprintln!("{e}");
                2
            }
        },
        Cmd::Audit {
            op: AuditOp::Hash { value, config },
        } => match audit_hash(&config, &value) {
            Ok(h) => {
                outln!("{h}");
                0
            }
            Err(e) => {
                eprintln!("sidecred: {e}");
                2
            }
        },
        other => {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("sidecred: cannot start runtime: {e}");
                    return 1;
                }
            };
            rt.block_on(client::run(other))
        }
    }
}

/// The HMAC digest of `value` under the config's audit key.
fn audit_hash(config: &std::path::Path, value: &str) -> Result<String, String> {
    let c = crate::config::Config::load(config).map_err(|e| e.to_string())?;
    let Some(path) = c.audit.path.as_deref() else {
        return Err(format!("{}: [audit] path is not set", config.display()));
    };
    if !c.audit.hmac_ids {
        return Err(format!(
            "{}: audit.hmac_ids is false; ids are written as they are",
            config.display()
        ));
    }
    let key = crate::audit::key::default_path(
        path,
        c.server.state_dir.as_deref(),
        c.audit.hmac_key_file.as_deref(),
    );
    Ok(crate::audit::key::AuditKey::load(&key)?.hash(value))
}
