"""Connection flood from one uid: up to MAX connects within SECS seconds, each sending an
HTTP/2 preface and STREAMS GetSecret streams with BODY-byte bodies that never end; every
connection is kept open. Prints `started` after the first 50, then `opened N closed M`."""
import os, resource, socket, struct, sys, time

path, total, secs, streams, body = sys.argv[1], *map(int, sys.argv[2:6])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

def frame(ty, flags, sid, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([ty, flags]) + struct.pack(">I", sid) + payload

def lit(name, value):
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value

hdr = b"\x83\x86" + lit(b":path", b"/sidecred.v1.Broker/GetSecret") + lit(b":authority", b"x") \
    + lit(b"content-type", b"application/grpc")
msg = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, b"")
for i in range(streams):
    sid = 2 * i + 1
    msg += frame(1, 4, sid, hdr)
    data = b"\x00" + struct.pack(">I", body) + b"a" * min(body, 16000)
    msg += frame(0, 0, sid, data)

held, opened, closed, start = [], 0, 0, time.time()
while opened < total and time.time() - start < secs:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        s.connect(path)
    except OSError:  # backlog full (EAGAIN) or refused
        closed += 1
        s.close()
        time.sleep(0.001)
        continue
    try:
        s.send(msg)
    except BlockingIOError:
        pass
    except OSError:
        closed += 1
        s.close()
        continue
    held.append(s)
    opened += 1
    if opened == 50:
        print("started", flush=True)
    if len(held) % 200 == 0:
        time.sleep(0.01)
time.sleep(0.5)
for s in held:
    try:
        while s.recv(65536):
            pass
        closed += 1
    except BlockingIOError:
        pass
    except OSError:
        closed += 1
print(f"opened {opened} closed {closed}", flush=True)
