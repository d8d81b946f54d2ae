//! What the `:authority` shim (src/api/h2fix.rs) costs on the workload socket's hot path:
//! the same client byte stream (preface, SETTINGS, then N unary gRPC requests of one HEADERS
//! and one DATA frame each, shaped as grpcurl and tonic send them) is read once through the
//! shim and once directly, side by side. Printed per request, and as a ratio.
//! Env: BENCH_REQUESTS (default 200000), BENCH_ROUNDS (default 5).

use sidecred::api::h2fix::AuthorityFix;
use std::time::Instant;
use tokio::io::AsyncReadExt;

fn frame(out: &mut Vec<u8>, ty: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&[ty, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

fn literal(out: &mut Vec<u8>, first: u8, name: Option<&str>, value: &str) {
    out.push(first);
    if let Some(n) = name {
        out.push(n.len() as u8);
        out.extend_from_slice(n.as_bytes());
    }
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
}

/// The client side of one connection: the first request's header block adds its fields to the
/// HPACK table (the socket path as `:authority`, as grpcurl sends it); later ones index them.
fn client_stream(requests: u32) -> Vec<u8> {
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frame(&mut out, 0x4, 0, 0, &[]);
    let mut first = vec![0x83, 0x86];
    literal(&mut first, 0x41, None, "/run/sidecred/sock/workload.sock");
    literal(&mut first, 0x44, None, "/sidecred.v1.Broker/GetSecret");
    literal(&mut first, 0x5f, None, "application/grpc");
    literal(&mut first, 0x40, Some("te"), "trailers");
    literal(&mut first, 0x40, Some("user-agent"), "grpc-rust/0.14");
    // Newest first in the dynamic table: user-agent 62, te 63, content-type 64, path 65,
    // authority 66.
    let again = [0x83, 0x86, 0xc2, 0xc1, 0xc0, 0xbf, 0xbe];
    let body = [0u8; 5 + 48];
    for i in 0..requests {
        let stream = 1 + 2 * i;
        let block: &[u8] = if i == 0 { &first } else { &again };
        frame(&mut out, 0x1, 0x4, stream, block);
        frame(&mut out, 0x0, 0x1, stream, &body);
    }
    out
}

async fn drain(mut r: impl tokio::io::AsyncRead + Unpin) -> usize {
    let mut buf = vec![0u8; 16 * 1024];
    let mut total = 0;
    loop {
        let n = r.read(&mut buf).await.expect("in-memory read");
        if n == 0 {
            return total;
        }
        total += n;
    }
}

fn main() {
    let n: u32 = std::env::var("BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let rounds: u32 = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let input = client_stream(n);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let (mut direct, mut shim) = (f64::MAX, f64::MAX);
    for _ in 0..rounds {
        let t = Instant::now();
        let a = rt.block_on(drain(&input[..]));
        direct = direct.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let b = rt.block_on(drain(AuthorityFix::new(&input[..])));
        shim = shim.min(t.elapsed().as_secs_f64());
        // The socket path became "localhost": 23 bytes shorter, once.
        assert_eq!(a - b, 32 - 9, "only the first :authority changes");
    }
    let per = |s: f64| s * 1e9 / n as f64;
    println!("authority shim, {n} unary requests, best of {rounds} rounds");
    println!("| read path | ns per request |");
    println!("|---|---:|");
    println!("| direct | {:.1} |", per(direct));
    println!("| through the shim | {:.1} |", per(shim));
    println!(
        "shim adds {:.1} ns per request ({:.2}x the direct read)",
        per(shim) - per(direct),
        shim / direct
    );
}
