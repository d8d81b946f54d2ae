"""Connects N times, sends an HTTP/2 preface on each, and counts the connections the server
closes within 2 s (EOF or reset). Prints `closed C of N`."""
import socket, sys, time

path, n = sys.argv[1], int(sys.argv[2])
socks = []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    try:
        s.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    except OSError:
        pass
    socks.append(s)
closed, end = 0, time.time() + 2
for s in socks:
    s.settimeout(max(0.01, end - time.time()))
    try:
        while s.recv(4096):
            pass
        closed += 1
    except socket.timeout:
        pass
    except OSError:
        closed += 1
print(f"closed {closed} of {n}", flush=True)
