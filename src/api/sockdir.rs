//! Safe socket placement. A socket is only as safe as its directory: whoever can write there can
//! replace the socket with a listener of their own and receive what clients send (new secret
//! values, admin requests). So sidecred binds only in a directory it owns that group and others
//! cannot write, reached through directories owned by root or by sidecred that no one else can
//! write (or that are sticky). The directory is held open as an fd from the moment it is checked:
//! the stale-socket check, the bind, the chmod and the removal at shutdown all go through that
//! fd, never through a path that could be swapped in between.

use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fchmod, fchmodat, fstat, fstatat, mkdirat, FchmodatFlags, FileStat, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};
use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

const S_IFMT: u32 = 0o170_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFSOCK: u32 = 0o140_000;
const S_ISVTX: u32 = 0o1000;

/// A socket bound inside a verified directory, with that directory held open.
#[derive(Debug)]
pub struct BoundSocket {
    pub listener: std::os::unix::net::UnixListener,
    pub guard: SocketGuard,
}

/// Removes the socket when dropped (at shutdown, or when a later socket fails to bind) through
/// the held directory fd, only if it is still ours.
#[derive(Debug)]
pub struct SocketGuard {
    dir: OwnedFd,
    name: OsString,
    ino: u64,
}

impl Drop for SocketGuard {
    /// Unlinks the socket this process bound; anything else now at that name is left alone.
    fn drop(&mut self) {
        if let Ok(st) = fstatat(
            &self.dir,
            self.name.as_os_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            if st.st_ino == self.ino {
                let _ = unlinkat(&self.dir, self.name.as_os_str(), UnlinkatFlags::NoRemoveDir);
            }
        }
    }
}

/// The mode of a directory sidecred creates for a socket of `socket_mode`: private, plus search
/// (x only, no listing) for the group or others when the socket's mode lets them connect.
pub fn dir_mode_for(socket_mode: u32) -> u32 {
    let mut m = 0o700;
    if socket_mode & 0o020 != 0 {
        m |= 0o010;
    }
    if socket_mode & 0o002 != 0 {
        m |= 0o001;
    }
    m
}

fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

fn describe(st: &FileStat) -> String {
    format!(
        "owned by uid {} with mode {:04o}",
        st.st_uid,
        st.st_mode & 0o7777
    )
}

/// The socket's own directory: ours, and no one else may write to it (sticky does not help:
/// a sticky directory still lets others create the name first).
fn check_socket_dir(dir: &Path, st: &FileStat) -> Result<(), String> {
    let me = euid();
    if st.st_mode & S_IFMT != S_IFDIR {
        return Err(format!("{} is not a directory", dir.display()));
    }
    if st.st_uid != me || st.st_mode & 0o022 != 0 {
        return Err(format!(
            "the socket's directory {} is {}; sidecred binds only in a directory owned by its \
             own uid {me} that group and others cannot write (sticky /tmp included): \
             point the socket at a private directory (e.g. $XDG_RUNTIME_DIR/sidecred) or \
             `chown {me} {0}; chmod go-w {0}`",
            dir.display(),
            describe(st),
        ));
    }
    Ok(())
}

/// A directory above the socket's: owned by root or by us, and not writable by others unless
/// sticky (then others cannot rename or remove what root or we put there).
fn check_ancestor(dir: &Path, st: &FileStat) -> Result<(), String> {
    let me = euid();
    if st.st_mode & S_IFMT != S_IFDIR {
        return Err(format!("{} is not a directory", dir.display()));
    }
    let owner_ok = st.st_uid == 0 || st.st_uid == me;
    let write_ok = st.st_mode & 0o022 == 0 || st.st_mode & S_ISVTX != 0;
    if !owner_ok || !write_ok {
        return Err(format!(
            "{} (above the socket's directory) is {}; every directory above a socket must be \
             owned by root or uid {me} and not writable by group or others unless sticky: \
             move the socket or `chmod go-w {}`",
            dir.display(),
            describe(st),
            dir.display()
        ));
    }
    Ok(())
}

/// Symlinks in the configured path are followed only when root or sidecred owns them.
fn resolve(dir: &Path) -> Result<PathBuf, String> {
    let me = euid();
    let mut prefix = PathBuf::from("/");
    let mut rest = Vec::new();
    let mut missing = false;
    for c in dir.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(n) if !missing => {
                prefix.push(n);
                match std::fs::symlink_metadata(&prefix) {
                    Ok(m) if m.file_type().is_symlink() => {
                        use std::os::unix::fs::MetadataExt;
                        if m.uid() != 0 && m.uid() != me {
                            return Err(format!(
                                "{} is a symlink owned by uid {}; sidecred follows only symlinks \
                                 owned by root or uid {me}",
                                prefix.display(),
                                m.uid()
                            ));
                        }
                    }
                    Ok(_) => {}
                    Err(_) => {
                        prefix.pop();
                        rest.push(n.to_owned());
                        missing = true;
                    }
                }
            }
            Component::Normal(n) => rest.push(n.to_owned()),
            _ => {
                return Err(format!(
                    "{} must be absolute, without `.` or `..`",
                    dir.display()
                ))
            }
        }
    }
    let mut out = std::fs::canonicalize(&prefix)
        .map_err(|e| format!("cannot resolve {}: {e}", prefix.display()))?;
    out.extend(rest);
    Ok(out)
}

/// Opens `dir` one component at a time without following symlinks, creating what is missing
/// with `create_mode`, and checks each level as it is opened. Returns the socket directory's fd.
fn open_verified(dir: &Path, create_mode: u32) -> Result<OwnedFd, String> {
    let flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY;
    let mut fd =
        nix::fcntl::open("/", flags, Mode::empty()).map_err(|e| format!("cannot open /: {e}"))?;
    let comps: Vec<_> = dir.components().collect();
    let mut here = PathBuf::from("/");
    for (i, c) in comps.iter().enumerate() {
        let last = i + 1 == comps.len();
        let Component::Normal(name) = c else {
            if i == 0 {
                let st = fstat(&fd).map_err(|e| format!("cannot stat /: {e}"))?;
                if comps.len() == 1 {
                    check_socket_dir(&here, &st)?;
                } else {
                    check_ancestor(&here, &st)?;
                }
            }
            continue;
        };
        here.push(name);
        let next = match openat(&fd, *name, flags, Mode::empty()) {
            Ok(f) => f,
            Err(nix::errno::Errno::ENOENT) => {
                match mkdirat(&fd, *name, Mode::from_bits_truncate(0o700)) {
                    Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                    Err(e) => return Err(format!("cannot create {}: {e}", here.display())),
                }
                let f = openat(&fd, *name, flags, Mode::empty())
                    .map_err(|e| format!("cannot open {}: {e}", here.display()))?;
                let st = fstat(&f).map_err(|e| format!("cannot stat {}: {e}", here.display()))?;
                if st.st_uid == euid() {
                    fchmod(&f, Mode::from_bits_truncate(create_mode))
                        .map_err(|e| format!("cannot chmod {}: {e}", here.display()))?;
                    tracing::info!(dir = %here.display(), mode = format!("{create_mode:04o}"), "created socket directory");
                }
                f
            }
            Err(e) => {
                return Err(format!(
                    "cannot open {} as a directory without following symlinks: {e}",
                    here.display()
                ))
            }
        };
        let st = fstat(&next).map_err(|e| format!("cannot stat {}: {e}", here.display()))?;
        if last {
            check_socket_dir(&here, &st)?;
        } else {
            check_ancestor(&here, &st)?;
        }
        fd = next;
    }
    Ok(fd)
}

/// The path of `name` inside the held directory, resolved by the kernel through the fd.
fn through(dir: &OwnedFd, name: &std::ffi::OsStr) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name)
}

/// Binds `path` with `mode` after checking its directory and every directory above it;
/// creates missing directories with [`dir_mode_for`]. Refuses a socket held by a live server,
/// removes a stale one, and refuses anything else at that name.
pub fn bind(path: &Path, mode: u32) -> Result<BoundSocket, String> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(format!("{} is not a socket path", path.display()));
    };
    if !path.is_absolute() {
        return Err(format!("{} must be absolute", path.display()));
    }
    let dir_path = resolve(parent)?;
    let dir = open_verified(&dir_path, dir_mode_for(mode))?;
    // The held fd must still be the directory that was checked, and reachable at its path.
    let via_proc = through(&dir, name);
    let use_proc = via_proc.parent().is_some_and(|p| p.exists());
    let bind_at = if use_proc {
        via_proc
    } else {
        path.to_path_buf()
    };
    let nofollow = nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW;
    match fstatat(&dir, name, nofollow) {
        Ok(st) if st.st_mode & S_IFMT == S_IFSOCK => {
            if std::os::unix::net::UnixStream::connect(&bind_at).is_ok() {
                return Err(format!(
                    "{} is held by a running server; refusing to take it over",
                    path.display()
                ));
            }
            tracing::info!(socket = %path.display(), "removing stale socket");
            unlinkat(&dir, name, UnlinkatFlags::NoRemoveDir)
                .map_err(|e| format!("cannot remove stale socket {}: {e}", path.display()))?;
        }
        Ok(st) => {
            return Err(format!(
                "{} exists and is not a socket ({}); remove it",
                path.display(),
                describe(&st)
            ))
        }
        Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(format!("cannot stat {}: {e}", path.display())),
    }
    let listener = std::os::unix::net::UnixListener::bind(&bind_at)
        .map_err(|e| format!("cannot bind {}: {e}", path.display()))?;
    fchmodat(
        &dir,
        name,
        Mode::from_bits_truncate(mode),
        FchmodatFlags::FollowSymlink,
    )
    .map_err(|e| format!("cannot chmod {}: {e}", path.display()))?;
    // Re-verify: the name holds the socket just bound, with our mode, in the directory checked.
    let st = fstatat(&dir, name, nofollow)
        .map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
    let dir_st = fstat(&dir).map_err(|e| format!("cannot stat {}: {e}", dir_path.display()))?;
    let dir_now = nix::sys::stat::stat(parent)
        .map_err(|e| format!("cannot stat {}: {e}", parent.display()))?;
    if st.st_mode & S_IFMT != S_IFSOCK
        || st.st_uid != euid()
        || st.st_mode & 0o7777 != mode & 0o7777
        || (dir_st.st_dev, dir_st.st_ino) != (dir_now.st_dev, dir_now.st_ino)
    {
        return Err(format!(
            "{} changed while it was being bound ({}); refusing it",
            path.display(),
            describe(&st)
        ));
    }
    check_socket_dir(&dir_path, &dir_st)?;
    Ok(BoundSocket {
        listener,
        guard: SocketGuard {
            dir,
            name: name.to_owned(),
            ino: st.st_ino,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn dir_modes_follow_the_socket_mode() {
        assert_eq!(dir_mode_for(0o600), 0o700);
        assert_eq!(dir_mode_for(0o660), 0o710);
        assert_eq!(dir_mode_for(0o666), 0o711);
    }

    #[test]
    fn binds_in_a_private_dir_and_refuses_open_ones() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("new/sub/s.sock");
        let b = bind(&p, 0o660).unwrap();
        let m = std::fs::metadata(t.path().join("new/sub")).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o710);
        let m = std::fs::symlink_metadata(&p).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o660);
        assert!(bind(&p, 0o660).unwrap_err().contains("running server"));
        drop(b.listener);
        drop(b.guard);
        assert!(!p.exists());
        let open = t.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = bind(&open.join("s.sock"), 0o600).unwrap_err();
        assert!(e.contains("mode 0777"), "{e}");
        assert!(bind(&open.join("x/s.sock"), 0o600)
            .unwrap_err()
            .contains("above"));
        let e = bind(Path::new("/tmp/sidecred-unit.sock"), 0o600).unwrap_err();
        assert!(e.contains("/tmp") && e.contains("1777"), "{e}");
    }
}
