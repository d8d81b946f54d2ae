use super::*;
use std::time::Duration;

/// Polls `f` until it returns Some, for at most 10 s.
fn eventually<T>(mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if std::time::Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn proc_dir_names_one_process_until_it_exits() {
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let dir = ProcDir::open(child.id() as i32).expect("own child's /proc dir");
    let exe = dir.exe().expect("a live process has an exe");
    assert!(exe.ends_with("sleep"), "{}", exe.display());
    assert_eq!(dir.exe_is(&exe), Some(true));
    assert_eq!(dir.exe_is(Path::new("/usr/bin/other")), Some(false));
    assert!(dir.start_time().is_some());
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        dir.exe(),
        None,
        "an exited process's directory resolves nothing"
    );
    assert_eq!(dir.exe_is(&exe), None);
    assert!(ProcDir::open(-1).is_none() && ProcDir::open(0).is_none());
}

/// A shell that execs `sleep` once it reads a line on stdin; its pid and pinned directory.
fn execs_on_a_line() -> (std::process::Child, i32, ProcDir) {
    let child = std::process::Command::new("sh")
        .args(["-c", "read line; exec sleep 30"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let dir = ProcDir::open(pid).unwrap();
    (child, pid, dir)
}

/// On a connection that counts its reads, one re-check answers for the requests of the
/// reads before it; a request from a later read checks again and sees the exec.
#[test]
fn one_check_answers_for_the_reads_before_it() {
    use std::io::Write;
    let (mut child, pid, dir) = execs_on_a_line();
    let exe: Arc<Path> = Arc::from(dir.exe().unwrap());
    let plain = PeerIdentity {
        uid: 0,
        gid: 0,
        pid,
        exe: Some(exe.clone()),
        start_time: dir.start_time(),
        proc_dir: Some(dir.clone().shared(pid, dir.start_time().unwrap(), &exe)),
        reads: None,
    };
    let reads = ReadEpoch::default();
    let counted = PeerIdentity {
        reads: Some(reads.clone()),
        ..plain.clone()
    };
    reads.read();
    assert_eq!(counted.still_bound(), Ok(()));
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    eventually(|| plain.still_bound().err()).expect("the exec is seen");
    // No read since the check: nothing arrived that the exec could have sent.
    assert_eq!(counted.still_bound(), Ok(()));
    reads.read();
    let why = counted.still_bound().unwrap_err();
    assert!(why.contains("executed another program"), "{why}");
    // A failed check is not remembered: every later use fails too.
    assert!(counted.still_bound().is_err());
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A process that execs another program after the identity was read is caught at use; one
/// that exits is reported as gone.
#[test]
fn still_bound_catches_an_exec_and_an_exit() {
    use std::io::Write;
    let (mut child, pid, dir) = execs_on_a_line();
    let id = PeerIdentity {
        uid: 0,
        gid: 0,
        pid,
        exe: dir.exe().map(Arc::from),
        start_time: dir.start_time(),
        proc_dir: Some(dir.clone().shared(
            pid,
            dir.start_time().unwrap(),
            &Arc::from(dir.exe().unwrap()),
        )),
        reads: None,
    };
    assert_eq!(id.still_bound(), Ok(()));
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let why = eventually(|| id.still_bound().err()).expect("the exec is seen");
    assert!(why.contains("executed another program"), "{why}");
    child.kill().unwrap();
    child.wait().unwrap();
    let why = id.still_bound().unwrap_err();
    assert!(why.contains("has exited"), "{why}");
    // Without a pinned directory the same facts come from /proc/PID by path.
    let by_path = PeerIdentity {
        proc_dir: None,
        ..id
    };
    assert!(by_path.still_bound().is_err());
}

/// The table keeps none open: dropping every holder closes the descriptor.
#[test]
fn pinned_table_shares_and_keeps_none_open() {
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let d = ProcDir::open(pid).unwrap();
    let (start, exe) = (d.start_time().unwrap(), Arc::from(d.exe().unwrap()));
    let a = ProcDir::open(pid).unwrap().shared(pid, start, &exe);
    let b = ProcDir::open(pid).unwrap().shared(pid, start, &exe);
    assert!(a.same_descriptor(&b));
    let p = ProcDir::pinned(pid).expect("pinned while held");
    assert!(a.same_descriptor(&p.dir));
    assert_eq!((p.start_time, &p.exe), (start, &exe));
    drop(p);
    let weak = Arc::downgrade(&a.0);
    drop((a, b));
    assert_eq!(weak.strong_count(), 0);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn stat_start_time_table() {
    let tail = "S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 424242 20 21";
    for (comm, want) in [
        ("(bash)", Some(424242)),
        ("(a b) c)", Some(424242)),
        ("(x))", Some(424242)),
        ("()", Some(424242)),
    ] {
        assert_eq!(
            stat_start_time(&format!("77 {comm} {tail}")),
            want,
            "{comm}"
        );
    }
    assert_eq!(stat_start_time("77 (x) S 1 2"), None);
    assert_eq!(stat_start_time("no paren at all"), None);
    assert_eq!(stat_start_time(""), None);
}

/// Two connections of one process: a check made for one answers for the other's requests read
/// before it began, never for a later read, and never for a connection that expects another
/// executable.
#[test]
fn a_check_answers_for_earlier_reads_of_every_connection_of_the_process() {
    use std::io::Write;
    let (mut child, pid, dir) = execs_on_a_line();
    let exe: Arc<Path> = Arc::from(dir.exe().unwrap());
    let start = dir.start_time().unwrap();
    let conn = |reads: &ReadEpoch, exe: &Arc<Path>| PeerIdentity {
        uid: 0,
        gid: 0,
        pid,
        exe: Some(exe.clone()),
        start_time: Some(start),
        proc_dir: Some(dir.clone().shared(pid, start, exe)),
        reads: Some(reads.clone()),
    };
    let (ra, rb, rc) = (
        ReadEpoch::default(),
        ReadEpoch::default(),
        ReadEpoch::default(),
    );
    let (a, b) = (conn(&ra, &exe), conn(&rb, &exe));
    let other: Arc<Path> = Arc::from(Path::new("/usr/bin/not-this-one"));
    let c = conn(&rc, &other);
    // B and C read, then A reads and checks: that check covers B's earlier read.
    rb.read();
    rc.read();
    ra.read();
    assert_eq!(a.still_bound(), Ok(()));
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let plain = PeerIdentity {
        reads: None,
        ..a.clone()
    };
    eventually(|| plain.still_bound().err()).expect("the exec is seen");
    assert_eq!(b.still_bound(), Ok(()), "read before A's check began");
    // C expects another executable: A's check says nothing about it.
    let why = c.still_bound().unwrap_err();
    assert!(why.contains("executed another program"), "{why}");
    // B reads again after the exec: its request checks and fails.
    rb.read();
    let why = b.still_bound().unwrap_err();
    assert!(why.contains("executed another program"), "{why}");
    // A's old read stays covered; A's next read does not.
    assert_eq!(a.still_bound(), Ok(()));
    ra.read();
    assert!(a.still_bound().is_err());
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A connection that has counted no read yet is never covered by a check.
#[test]
fn no_read_yet_means_a_check() {
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let dir = ProcDir::open(pid).unwrap();
    let exe: Arc<Path> = Arc::from(dir.exe().unwrap());
    let id = PeerIdentity {
        uid: 0,
        gid: 0,
        pid,
        exe: Some(exe),
        start_time: dir.start_time(),
        proc_dir: Some(dir),
        reads: Some(ReadEpoch::default()),
    };
    assert_eq!(id.still_bound(), Ok(()));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(id.still_bound().is_err(), "an exited caller is caught");
}
