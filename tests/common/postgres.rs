//! A real PostgreSQL on loopback: initdb as user `postgres` into a temp dir, scram-sha-256,
//! stopped (immediate) on drop.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

pub const SUPERUSER_PASSWORD: &str = "pg-super-8d1c";

pub struct Postgres {
    pub port: u16,
    pub dir: tempfile::TempDir,
    uid: u32,
    gid: u32,
}

fn bin(name: &str) -> PathBuf {
    let dir = std::env::var("SIDECRED_PG_BIN")
        .expect("SIDECRED_PG_BIN is not set: source ~/.cache/sidecred/peers/env.sh");
    PathBuf::from(dir).join(name)
}

/// psql lives next to the server binaries, or in /usr/bin.
fn psql_bin() -> PathBuf {
    let p = bin("psql");
    if p.exists() {
        p
    } else {
        PathBuf::from("/usr/bin/psql")
    }
}

impl Postgres {
    pub fn start() -> Postgres {
        let user = nix::unistd::User::from_name("postgres")
            .unwrap()
            .expect("no `postgres` user on this machine");
        let (uid, gid) = (user.uid.as_raw(), user.gid.as_raw());
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("pw"), SUPERUSER_PASSWORD).unwrap();
        for p in [root.to_path_buf(), root.join("pw")] {
            nix::unistd::chown(&p, Some(user.uid), Some(user.gid)).unwrap();
        }
        let port = super::free_port(false);
        let run = |cmd: &mut Command| {
            let out = cmd
                .uid(uid)
                .gid(gid)
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
            assert!(
                out.status.success(),
                "{cmd:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(Command::new(bin("initdb"))
            .arg("-D")
            .arg(root.join("data"))
            .args(["-U", "postgres", "-A", "scram-sha-256", "-N"])
            .arg(format!("--pwfile={}", root.join("pw").display())));
        run(Command::new(bin("pg_ctl"))
            .arg("-D")
            .arg(root.join("data"))
            .arg("-o")
            .arg(format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                root.display()
            ))
            .arg("-l")
            .arg(root.join("log"))
            .args(["-w", "start"]));
        Postgres {
            port,
            dir,
            uid,
            gid,
        }
    }

    /// Runs SQL as `user`; Ok(stdout) or Err(stderr) (a failed login is an Err).
    pub fn psql(&self, user: &str, password: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(psql_bin())
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", user])
            .args(["-d", "postgres", "-tAX", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "3")
            .env("PGSSLMODE", "disable")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).to_string())
        }
    }

    pub fn superuser(&self, sql: &str) -> String {
        self.psql("postgres", SUPERUSER_PASSWORD, sql)
            .unwrap_or_else(|e| panic!("superuser SQL `{sql}`: {e}"))
    }

    /// Whether a role exists (checked in pg_roles).
    pub fn role_exists(&self, name: &str) -> bool {
        self.superuser(&format!(
            "SELECT count(*) FROM pg_roles WHERE rolname = '{}'",
            name.replace('\'', "''")
        )) == "1"
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new(bin("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"])
            .uid(self.uid)
            .gid(self.gid)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
