//! The panic hook the binary installs names where a panic happened, never what it said.
//!
//! The test re-runs itself as a child process (a panic hook is global to a process) that
//! installs `sidecred::panic_hook`, panics with a canary in a thread, in a tokio task and in a
//! failed `expect`, and exits; the parent reads everything the child wrote.

use std::process::Command;

const CANARY: &str = "canary-PANIC-7f3a9c1e2b";
const CHILD_ENV: &str = "SIDECRED_PANIC_CHILD";

#[test]
fn child_panics_with_canary() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    sidecred::panic_hook::install();
    let value = format!("value={CANARY}");
    let t = std::thread::Builder::new()
        .name("worker".into())
        .spawn(move || panic!("fetched {value}"))
        .unwrap();
    assert!(t.join().is_err());
    let r = std::thread::spawn(|| {
        let missing = std::env::var("SIDECRED_PANIC_UNSET").ok();
        missing.expect(CANARY);
    })
    .join();
    assert!(r.is_err());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let r = rt.block_on(async { tokio::spawn(async { assert_eq!(CANARY, "other") }).await });
    assert!(r.unwrap_err().is_panic());
}

#[test]
fn panic_output_names_the_location_not_the_payload() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["child_panics_with_canary", "--exact", "--nocapture"])
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(
        !stdout.contains(CANARY) && !stderr.contains(CANARY),
        "canary in panic output:\n{stdout}\n{stderr}"
    );
    let reports: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("panicked at") && l.contains("tests/panic.rs:"))
        .collect();
    assert_eq!(
        reports.len(),
        3,
        "expected three redacted reports:\n{stderr}"
    );
    assert!(reports[0].contains("thread 'worker'"), "{}", reports[0]);
    assert!(reports.iter().all(|l| l.contains("message withheld")));
}
