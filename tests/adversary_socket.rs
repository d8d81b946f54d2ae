//! Attacks on socket placement and on the files sidecred writes or reads, against the real
//! binary, the attacker running as uid 65534: a socket directory another uid can write (or
//! owns), a listener of that uid at the path the CLI is pointed at, an audit file created under
//! a permissive umask, and a credential file others can read.

mod common;

use common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const NOBODY: u32 = 65534;

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A config whose workload socket is in a private dir under `root` and whose admin socket is
/// `admin`; `extra` is appended (backends, secrets).
fn config(root: &Path, admin: &Path, extra: &str) -> PathBuf {
    let text = format!(
        "[server]\nworkload_socket = \"{}\"\nadmin_socket = \"{}\"\nstate_dir = \"{}\"\n\n[audit]\npath = \"{}\"\n\n{}",
        root.join("w/workload.sock").display(),
        admin.display(),
        root.join("state").display(),
        root.join("audit.jsonl").display(),
        if extra.is_empty() { dev_body("", "") } else { extra.to_string() },
    );
    let p = root.join("sidecred.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// Runs `serve` and expects it to exit by itself within 15 s; returns (exit code, stderr).
/// A server that keeps running is killed and reported as having started.
fn serve_expecting_exit(cfg: &Path, root: &Path) -> (Option<i32>, String) {
    let err = root.join("serve.err");
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(cfg)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let status = wait_for(Duration::from_secs(15), || child.try_wait().unwrap());
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let text = std::fs::read_to_string(&err).unwrap_or_default();
    match status {
        Some(s) => (s.code(), text),
        None => (None, format!("sidecred kept serving:\n{text}")),
    }
}

fn assert_refused(admin: &Path, root: &Path, want: &[&str]) {
    let cfg = config(root, admin, "");
    let (code, err) = serve_expecting_exit(&cfg, root);
    assert!(
        matches!(code, Some(c) if c != 0),
        "refused with exit code: {err}"
    );
    for w in want {
        assert!(err.contains(w), "`{w}` in: {err}");
    }
    assert!(!admin.exists(), "no admin socket was created: {err}");
    assert!(
        !root.join("w/workload.sock").exists(),
        "the workload socket bound before the refusal is removed: {err}"
    );
}

#[test]
fn a_socket_directly_in_sticky_tmp_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let admin = PathBuf::from(format!("/tmp/sidecred-adv-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&admin);
    assert_refused(
        &admin,
        t.path(),
        &[
            "admin socket",
            "directory /tmp",
            "mode 1777",
            "owned by its own uid 0",
        ],
    );
}

#[test]
fn a_directory_owned_by_another_uid_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("theirs");
    std::fs::create_dir(&d).unwrap();
    chmod(&d, 0o700);
    nix::unistd::chown(&d, Some(NOBODY.into()), Some(NOBODY.into())).unwrap();
    assert_refused(
        &d.join("admin.sock"),
        t.path(),
        &["owned by uid 65534 with mode 0700", "chown 0"],
    );
}

#[test]
fn a_world_writable_directory_and_one_below_it_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("open");
    std::fs::create_dir(&d).unwrap();
    chmod(&d, 0o777);
    assert_refused(
        &d.join("admin.sock"),
        t.path(),
        &["mode 0777", "chmod go-w"],
    );
    // A private directory below a writable one can be renamed away by whoever writes above it.
    let below = d.join("private");
    std::fs::create_dir(&below).unwrap();
    chmod(&below, 0o700);
    assert_refused(
        &below.join("admin.sock"),
        t.path(),
        &["above the socket's directory", "mode 0777"],
    );
}

/// The attacker's listener: uid 65534, accepts every connection, answers with an empty HTTP/2
/// SETTINGS frame (so a client goes on to send its request) and appends every byte it receives
/// to `captured`.
const LISTENER: &str = r#"
import socket, sys, threading
path, out = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX)
s.bind(path)
s.listen(16)
open(out + ".ready", "w").close()
lock = threading.Lock()
def handle(c):
    c.settimeout(3)
    data = b""
    try:
        c.sendall(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        while True:
            d = c.recv(65536)
            if not d:
                break
            data += d
    except Exception:
        pass
    with lock, open(out, "ab") as f:
        f.write(data)
while True:
    c, _ = s.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
"#;

struct Attacker {
    child: std::process::Child,
    captured: PathBuf,
}

impl Attacker {
    /// Starts the listener as uid 65534 at `sock`, in `dir`, which that uid owns.
    fn listen(dir: &Path, sock: &Path) -> Attacker {
        let captured = dir.join("captured");
        let child = Command::new("setpriv")
            .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
            .args(["/usr/bin/python3", "-c", LISTENER])
            .arg(sock)
            .arg(&captured)
            .stdin(Stdio::null())
            .spawn()
            .expect("setpriv and /usr/bin/python3");
        let ready = captured.with_extension("ready");
        assert!(
            wait_for(Duration::from_secs(10), || ready.exists().then_some(())).is_some(),
            "attacker listener up"
        );
        Attacker { child, captured }
    }

    /// Everything the listener received, once its connections have had time to end.
    fn captured(mut self) -> Vec<u8> {
        std::thread::sleep(Duration::from_millis(3500));
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::fs::read(&self.captured).unwrap_or_default()
    }
}

#[test]
fn the_cli_sends_nothing_to_a_listener_of_another_uid() {
    let sc = Sidecar::start(&dev_body("", ""));
    let t = tempfile::tempdir().unwrap();
    chmod(t.path(), 0o755);
    let evil = t.path().join("evil");
    std::fs::create_dir(&evil).unwrap();
    chmod(&evil, 0o755);
    nix::unistd::chown(&evil, Some(NOBODY.into()), Some(NOBODY.into())).unwrap();
    let sock = evil.join("admin.sock");
    let attacker = Attacker::listen(&evil, &sock);
    assert_eq!(std::fs::metadata(&sock).unwrap().uid(), NOBODY);
    let value = "NEW-VALUE-CANARY-5c7a1b";
    let vf = t.path().join("value");
    std::fs::write(&vf, value).unwrap();
    chmod(&vf, 0o600);
    let vf_arg = vf.to_str().unwrap();
    let run = |args: &[&str]| {
        let o = Command::new(BIN)
            .args(args)
            .args(["--timeout", "2"])
            .env("SIDECRED_ADMIN_SOCKET", &sock)
            .env("SIDECRED_SOCKET", &sock)
            .env_remove("SIDECRED_SERVER_UID")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let mut outcomes = Vec::new();
    for args in [
        vec!["rotate", "app/a", "--value-file", vf_arg],
        vec!["revoke-session", "ses_0123456789abcdef0123456789abcdef"],
        vec!["status"],
        vec!["get", "app/a"],
    ] {
        outcomes.push((args[0].to_string(), run(&args)));
    }
    let got = attacker.captured();
    assert!(
        got.is_empty(),
        "the attacker received {} bytes (value inside: {})",
        got.len(),
        got.windows(value.len()).any(|w| w == value.as_bytes())
    );
    for (cmd, (code, err)) in &outcomes {
        assert_eq!(
            *code,
            Some(8),
            "{cmd} refused with its own exit code: {err}"
        );
        assert!(
            err.contains("runs as uid 65534") && err.contains("uid 0 was expected"),
            "{cmd}: {err}"
        );
        assert!(err.contains("nothing was sent"), "{cmd}: {err}");
    }
    // The real server, under the CLI's own uid, is still reached.
    assert!(ok_stdout(&sc.cli(&["status"])).contains("sidecred"));
}

#[test]
fn sidecred_never_starts_where_the_attacker_could_swap_its_socket() {
    // uid 65534 can write the admin socket's directory: it could unlink admin.sock after the
    // bind and put its own listener there. sidecred must not start in it at all.
    let t = tempfile::tempdir().unwrap();
    chmod(t.path(), 0o755);
    let shared = t.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    nix::unistd::chown(&shared, Some(NOBODY.into()), Some(NOBODY.into())).unwrap();
    chmod(&shared, 0o770);
    let admin = shared.join("admin.sock");
    let cfg = config(t.path(), &admin, "");
    let (code, err) = serve_expecting_exit(&cfg, t.path());
    assert!(matches!(code, Some(c) if c != 0), "refused: {err}");
    assert!(err.contains("owned by uid 65534 with mode 0770"), "{err}");
    assert!(!admin.exists());
}

#[test]
fn the_audit_file_is_owner_only_under_umask_000() {
    let t = tempfile::tempdir().unwrap();
    let cfg = config(t.path(), &t.path().join("a/admin.sock"), "");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 000; exec {BIN} serve --config '{}'",
            cfg.display()
        ))
        .stderr(Stdio::from(
            std::fs::File::create(t.path().join("serve.log")).unwrap(),
        ))
        .spawn()
        .unwrap();
    let w = t.path().join("w/workload.sock");
    let up = wait_for(Duration::from_secs(15), || {
        std::os::unix::net::UnixStream::connect(&w).ok()
    });
    let mode = |p: &Path| std::fs::symlink_metadata(p).map(|m| m.mode() & 0o7777).ok();
    let audit = mode(&t.path().join("audit.jsonl"));
    let journal = mode(&t.path().join("state/journal.jsonl"));
    let (wdir, adir, asock) = (
        mode(&t.path().join("w")),
        mode(&t.path().join("a")),
        mode(&t.path().join("a/admin.sock")),
    );
    let _ = child.kill();
    let _ = child.wait();
    assert!(up.is_some(), "served");
    assert_eq!(audit, Some(0o600), "audit file mode");
    assert_eq!(journal, Some(0o600), "journal mode");
    // Created owner-only (the journals are rewritten at start), not created wide and narrowed.
    let log = std::fs::read_to_string(t.path().join("serve.log")).unwrap_or_default();
    assert!(!log.contains("narrowed to 0600"), "{log}");
    // Socket directories are created private, whatever the umask; the admin socket is 0600.
    assert_eq!(
        wdir,
        Some(0o710),
        "workload dir (socket 0660: group may search)"
    );
    assert_eq!(adir, Some(0o700));
    assert_eq!(asock, Some(0o600));

    // An audit file left group/world readable is narrowed to 0600 at start.
    let t = tempfile::tempdir().unwrap();
    let cfg = config(t.path(), &t.path().join("a/admin.sock"), "");
    let a = t.path().join("audit.jsonl");
    std::fs::write(&a, "").unwrap();
    chmod(&a, 0o644);
    let mut sc = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let w = t.path().join("w/workload.sock");
    let up = wait_for(Duration::from_secs(15), || {
        std::os::unix::net::UnixStream::connect(&w).ok()
    });
    let narrowed = mode(&a);
    let _ = sc.kill();
    let _ = sc.wait();
    assert!(up.is_some());
    assert_eq!(narrowed, Some(0o600));
}

fn bao_body(auth: &str) -> String {
    format!(
        "[backends.bao]\nkind = \"openbao\"\naddress = \"http://127.0.0.1:1\"\n[backends.bao.auth]\n{auth}\n\n[[secret]]\nname = \"app/x\"\nbackend = \"bao\"\npath = \"x\"\nzone = \"internal\"\n\n[[policy.admin]]\nname = \"root\"\nuids = [0]\nactions = [\"*\"]\n"
    )
}

#[test]
fn a_credential_file_others_can_read_is_refused_at_load() {
    let t = tempfile::tempdir().unwrap();
    let tf = t.path().join("token");
    std::fs::write(&tf, "s.root-token").unwrap();
    chmod(&tf, 0o640);
    let sf = t.path().join("secret-id");
    std::fs::write(&sf, "secret-id").unwrap();
    chmod(&sf, 0o604);
    for (auth, file, mode, setting) in [
        (
            format!("method = \"token_file\"\npath = \"{}\"", tf.display()),
            &tf,
            "0640",
            "auth.path",
        ),
        (
            format!(
                "method = \"approle\"\nrole_id = \"r\"\nsecret_id_file = \"{}\"",
                sf.display()
            ),
            &sf,
            "0604",
            "auth.secret_id_file",
        ),
    ] {
        let cfg = config(t.path(), &t.path().join("a/admin.sock"), &bao_body(&auth));
        let o = Command::new(BIN)
            .arg("check-config")
            .arg(&cfg)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "check-config refuses: {err}");
        let want = format!("{setting} `{}` has mode {mode}", file.display());
        assert!(err.contains(&want), "`{want}` in {err}");
        assert!(err.contains("chmod 600"), "{err}");
        assert!(!err.contains("s.root-token"), "{err}");
        let (code, err) = serve_expecting_exit(&cfg, t.path());
        assert!(matches!(code, Some(c) if c != 0), "serve refuses: {err}");
        assert!(err.contains(&want), "{err}");
    }
    // Owner-only passes the check (the backend itself is not reachable here).
    chmod(&tf, 0o600);
    let auth = format!("method = \"token_file\"\npath = \"{}\"", tf.display());
    let cfg = config(t.path(), &t.path().join("a/admin.sock"), &bao_body(&auth));
    let o = Command::new(BIN)
        .arg("check-config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn dev_config_serves_verbatim_from_a_private_runtime_dir() {
    // A fresh clone, as root, no SIDECRED_* variables: only HOME (a temp dir here).
    let home = tempfile::tempdir().unwrap();
    let env = |c: &mut Command| {
        c.env_clear()
            .env("HOME", home.path())
            .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    };
    let mut serve = Command::new(BIN);
    serve.args(["serve", "--config", "config/dev.toml"]);
    env(&mut serve);
    let mut child = serve.stderr(Stdio::null()).spawn().unwrap();
    let run = home.path().join(".cache/sidecred-dev");
    let w = run.join("sock/workload.sock");
    let up = wait_for(Duration::from_secs(15), || {
        std::os::unix::net::UnixStream::connect(&w).ok()
    });
    let mut get = Command::new(BIN);
    get.args(["get", "tools/github-token"]);
    env(&mut get);
    let got = get.output().unwrap();
    let mut status = Command::new(BIN);
    status.arg("status");
    env(&mut status);
    let status = status.output().unwrap();
    let mode = |p: &str| {
        std::fs::metadata(run.join(p))
            .map(|m| m.mode() & 0o777)
            .ok()
    };
    let modes = (mode("sock"), mode("admin"), mode("audit.jsonl"));
    let _ = child.kill();
    let _ = child.wait();
    assert!(up.is_some(), "served at {}", w.display());
    assert_eq!(ok_stdout(&got), "dev-github-token-0001\n");
    assert!(ok_stdout(&status).contains("sidecred"));
    assert_eq!(modes, (Some(0o710), Some(0o700), Some(0o600)));
}
