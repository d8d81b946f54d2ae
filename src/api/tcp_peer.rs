//! Caller identity for loopback TCP. A TCP socket has no SO_PEERCRED, so the peer is found the
//! way `ss -p` finds it: the kernel's socket table gives the client socket's owner uid and inode
//! for the exact 4-tuple (NETLINK_SOCK_DIAG; `/proc/net/tcp{,6}` when netlink is unavailable,
//! e.g. under `RestrictAddressFamilies=`), then `/proc/*/fd` names the process holding that
//! inode. Only loopback connections are identified; anything that cannot be fully identified
//! (socket gone, no process holds it, /proc unreadable) is an error, and its connection refused.

use super::peer::{proc_start_time, PeerIdentity};
use nix::sys::socket::{
    recv, sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

/// Parses a listen address and refuses anything but loopback (127.0.0.0/8 or ::1): a TCP
/// endpoint identifies its callers through the local socket table, which only holds callers
/// on this host.
pub fn loopback_addr(s: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = s.parse().map_err(|_| {
        format!("`{s}` is not an address:port such as 127.0.0.1:2773 or [::1]:2773")
    })?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "`{s}` is not a loopback address: only 127.0.0.0/8 and ::1 may be bound, since \
             callers are identified through this host's socket table"
        ));
    }
    Ok(addr)
}

/// The loopback form of an address (an IPv4-mapped IPv6 address as IPv4).
fn plain(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Identifies the process at the other end of an accepted loopback TCP connection. Blocking
/// (netlink and /proc reads): call it off the async workers.
pub fn identify(local: SocketAddr, peer: SocketAddr) -> Result<PeerIdentity, String> {
    let (local_ip, peer_ip) = (plain(local.ip()), plain(peer.ip()));
    if !peer_ip.is_loopback() || !local_ip.is_loopback() {
        return Err(format!("peer {peer} is not on loopback"));
    }
    let local = SocketAddr::new(local_ip, local.port());
    let peer = SocketAddr::new(peer_ip, peer.port());
    let (uid, inode) = match diag_lookup(local, peer) {
        Ok(Some(found)) => found,
        Ok(None) => return Err(format!("peer {peer}: no such socket in the kernel's table")),
        Err(e) => {
            tracing::debug!(error = %e, "sock_diag unavailable; reading /proc/net/tcp");
            proc_net_lookup(local, peer)?
                .ok_or_else(|| format!("peer {peer}: no such socket in /proc/net"))?
        }
    };
    if inode == 0 {
        return Err(format!("peer {peer}: its socket has no owner any more"));
    }
    holder(inode, uid).map_err(|e| format!("peer {peer} (uid {uid}): {e}"))
}

/// The fields of `inet_diag_sockid` for the client's socket: its source is the peer.
fn sockid(local: SocketAddr, peer: SocketAddr) -> [u8; 48] {
    let mut id = [0u8; 48];
    id[0..2].copy_from_slice(&peer.port().to_be_bytes());
    id[2..4].copy_from_slice(&local.port().to_be_bytes());
    let put = |buf: &mut [u8], ip: IpAddr| match ip {
        IpAddr::V4(v4) => buf[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => buf.copy_from_slice(&v6.octets()),
    };
    put(&mut id[4..20], peer.ip());
    put(&mut id[20..36], local.ip());
    // idiag_if 0, idiag_cookie INET_DIAG_NOCOOKIE: match by address only.
    id[40..48].fill(0xff);
    id
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;

/// Builds the netlink request for one socket by its exact 4-tuple.
fn diag_request(local: SocketAddr, peer: SocketAddr) -> Vec<u8> {
    let family = if peer.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    } as u8;
    let mut m = Vec::with_capacity(72);
    m.extend_from_slice(&72u32.to_ne_bytes());
    m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
    m.extend_from_slice(&[family, libc::IPPROTO_TCP as u8, 0, 0]);
    m.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    m.extend_from_slice(&sockid(local, peer));
    m
}

/// Reads a reply: `Some((uid, inode))`, `None` when the kernel has no such socket.
fn parse_diag_reply(buf: &[u8]) -> Result<Option<(u32, u64)>, String> {
    let u32_at = |o: usize| -> Option<u32> {
        buf.get(o..o + 4)
            .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    };
    let kind = buf
        .get(4..6)
        .map(|b| u16::from_ne_bytes([b[0], b[1]]))
        .ok_or("short netlink reply")?;
    if kind == NLMSG_ERROR {
        let errno = u32_at(16).ok_or("short netlink error")? as i32;
        return match -errno {
            libc::ENOENT => Ok(None),
            e => Err(format!("sock_diag: {}", nix::errno::Errno::from_raw(e))),
        };
    }
    if kind != SOCK_DIAG_BY_FAMILY {
        return Err(format!("unexpected netlink message type {kind}"));
    }
    // nlmsghdr (16) then inet_diag_msg: idiag_uid at 64, idiag_inode at 68.
    let uid = u32_at(16 + 64).ok_or("short inet_diag_msg")?;
    let inode = u32_at(16 + 68).ok_or("short inet_diag_msg")?;
    Ok(Some((uid, u64::from(inode))))
}

fn diag_lookup(local: SocketAddr, peer: SocketAddr) -> Result<Option<(u32, u64)>, String> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )
    .map_err(|e| format!("netlink socket: {e}"))?;
    let req = diag_request(local, peer);
    sendto(
        fd.as_raw_fd(),
        &req,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .map_err(|e| format!("netlink send: {e}"))?;
    let mut buf = [0u8; 1024];
    let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())
        .map_err(|e| format!("netlink recv: {e}"))?;
    parse_diag_reply(&buf[..n])
}

/// `/proc/net/tcp` prints each address as its 32-bit words in host byte order, in hex.
fn proc_addr(hex: &str) -> Option<SocketAddr> {
    let (ip, port) = hex.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for i in (0..ip.len()).step_by(8) {
        let word = u32::from_str_radix(ip.get(i..i + 8)?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip = match bytes.len() {
        4 => IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]]),
        16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => return None,
    };
    Some(SocketAddr::new(plain(ip), port))
}

/// Finds the line whose local end is `peer` and remote end `local`: `(uid, inode)`.
fn parse_proc_net(table: &str, local: SocketAddr, peer: SocketAddr) -> Option<(u32, u64)> {
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_ascii_whitespace().collect();
        let (src, dst) = (proc_addr(f.get(1)?)?, proc_addr(f.get(2)?)?);
        (src == peer && dst == local).then_some(())?;
        Some((f.get(7)?.parse().ok()?, f.get(9)?.parse().ok()?))
    })
}

fn proc_net_lookup(local: SocketAddr, peer: SocketAddr) -> Result<Option<(u32, u64)>, String> {
    let mut found = None;
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let table = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
        found = found.or_else(|| parse_proc_net(&table, local, peer));
    }
    Ok(found)
}

/// Pids whose descriptor table holds `socket:[inode]`; the socket owner's processes first.
fn pids_holding(inode: u64, uid: u32) -> Result<Vec<i32>, String> {
    use std::os::unix::fs::MetadataExt;
    let want = format!("socket:[{inode}]");
    let mut procs: Vec<(bool, i32)> = std::fs::read_dir("/proc")
        .map_err(|e| format!("/proc: {e}"))?
        .filter_map(|e| {
            let e = e.ok()?;
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let owner = e.metadata().ok()?.uid();
            Some((owner != uid, pid))
        })
        .collect();
    procs.sort_unstable();
    let mut holders = Vec::new();
    let mut unreadable = 0;
    for (other, pid) in procs {
        if other && !holders.is_empty() {
            break;
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            unreadable += 1;
            continue;
        };
        let held = fds
            .filter_map(Result::ok)
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == want.as_str()));
        if held {
            holders.push(pid);
        }
    }
    if holders.is_empty() {
        return Err(if unreadable > 0 {
            format!(
                "no readable process holds its socket ({unreadable} processes' descriptors \
                 could not be read: sidecred needs to run as root or the caller's uid, or \
                 have CAP_SYS_PTRACE, to identify TCP callers)"
            )
        } else {
            "no process holds its socket".into()
        });
    }
    Ok(holders)
}

/// The effective gid from `/proc/PID/status`.
fn status_egid(status: &str) -> Option<u32> {
    let line = status.lines().find(|l| l.starts_with("Gid:"))?;
    line.split_ascii_whitespace().nth(2)?.parse().ok()
}

/// Reads the identity of the process holding the socket. Its start time is read before and
/// after the rest, so everything read belongs to one process even if the pid is reused.
fn holder(inode: u64, uid: u32) -> Result<PeerIdentity, String> {
    let holders = pids_holding(inode, uid)?;
    let pid = holders[0];
    let start = proc_start_time;
    let before = start(pid).ok_or("its process exited")?;
    // Opened before the second start-time read: if that still matches, the directory is this
    // process's (the same check binds everything else read here).
    let proc_dir = super::peer::ProcDir::open(pid);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    let gid = status_egid(&status).ok_or("no Gid in /proc/PID/status")?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    // A socket shared by processes running different programs names no single executable.
    let shared_exe = holders[1..]
        .iter()
        .all(|p| std::fs::read_link(format!("/proc/{p}/exe")).ok() == exe);
    if start(pid) != Some(before) {
        return Err("its process exited while being identified".into());
    }
    let exe = exe.filter(|_| shared_exe).map(Arc::<Path>::from);
    let proc_dir = match (proc_dir, &exe) {
        (Some(d), Some(e)) => Some(d.shared(pid, before, e)),
        _ => None,
    };
    Ok(PeerIdentity {
        uid,
        gid,
        pid,
        exe,
        start_time: Some(before),
        proc_dir,
        reads: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_only_table() {
        for (s, ok) in [
            ("127.0.0.1:2773", true),
            ("127.3.4.5:1", true),
            ("[::1]:2773", true),
            ("0.0.0.0:2773", false),
            ("[::]:2773", false),
            ("10.0.0.1:80", false),
            ("[::ffff:127.0.0.1]:80", false),
            ("localhost:80", false),
            ("127.0.0.1", false),
            ("", false),
        ] {
            assert_eq!(loopback_addr(s).is_ok(), ok, "{s}");
        }
    }

    #[test]
    fn proc_net_table() {
        let t = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
           0: 0100007F:0AD5 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1 0 100 0 0 10 0\n\
           1: 0100007F:C350 0100007F:0AD5 01 00000000:00000000 00:00000000 00000000 65534        0 4242 1 0 20 4 30 10 -1\n";
        let local: SocketAddr = "127.0.0.1:2773".parse().unwrap();
        let peer: SocketAddr = "127.0.0.1:50000".parse().unwrap();
        assert_eq!(parse_proc_net(t, local, peer), Some((65534, 4242)));
        assert_eq!(parse_proc_net(t, peer, local), None);
        let v6 = "sl local rem\n 0: 00000000000000000000000001000000:C350 00000000000000000000000001000000:0AD5 01 0:0 0:0 0 1000 0 77\n";
        let l6: SocketAddr = "[::1]:2773".parse().unwrap();
        let p6: SocketAddr = "[::1]:50000".parse().unwrap();
        assert_eq!(parse_proc_net(v6, l6, p6), Some((1000, 77)));
        assert_eq!(parse_proc_net("header\ngarbage line\n", local, peer), None);
    }

    #[test]
    fn diag_reply_table() {
        let mut ok = vec![0u8; 16 + 72];
        ok[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        ok[16 + 64..16 + 68].copy_from_slice(&1000u32.to_ne_bytes());
        ok[16 + 68..16 + 72].copy_from_slice(&99u32.to_ne_bytes());
        assert_eq!(parse_diag_reply(&ok), Ok(Some((1000, 99))));
        assert!(parse_diag_reply(&ok[..40]).is_err());
        let mut enoent = vec![0u8; 36];
        enoent[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        enoent[16..20].copy_from_slice(&(-libc::ENOENT).to_ne_bytes());
        assert_eq!(parse_diag_reply(&enoent), Ok(None));
        enoent[16..20].copy_from_slice(&(-libc::EPERM).to_ne_bytes());
        assert!(parse_diag_reply(&enoent).is_err());
        assert!(parse_diag_reply(&[]).is_err());
    }

    #[test]
    fn status_egid_table() {
        assert_eq!(status_egid("Name:\tx\nGid:\t10\t20\t30\t40\n"), Some(20));
        assert_eq!(status_egid("Gid:\t10\n"), None);
        assert_eq!(status_egid(""), None);
    }

    /// A 4-tuple no socket has, and a non-loopback peer, are not identified.
    #[test]
    fn unidentifiable_peers_are_errors() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let local = l.local_addr().unwrap();
        let ghost: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(identify(local, ghost)
            .unwrap_err()
            .contains("no such socket"));
        let far: SocketAddr = "192.0.2.7:40000".parse().unwrap();
        assert!(identify(local, far)
            .unwrap_err()
            .contains("not on loopback"));
    }

    /// A real connection from this very process: both lookups name it.
    #[test]
    fn identifies_own_connection() {
        for bind in ["127.0.0.1:0", "[::1]:0"] {
            let l = std::net::TcpListener::bind(bind).unwrap();
            let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (s, peer) = l.accept().unwrap();
            let local = s.local_addr().unwrap();
            assert_eq!(peer, c.local_addr().unwrap());
            let me = nix::unistd::getuid().as_raw();
            let (uid, inode) = diag_lookup(local, peer).unwrap().unwrap();
            assert_eq!(uid, me);
            assert_eq!(proc_net_lookup(local, peer).unwrap(), Some((uid, inode)));
            let id = identify(local, peer).unwrap();
            assert_eq!((id.uid, id.pid), (me, std::process::id() as i32));
            assert_eq!(id.gid, nix::unistd::getegid().as_raw());
            assert_eq!(id.exe.as_deref(), std::env::current_exe().ok().as_deref());
            drop(c);
        }
    }
}
