"""The fork/exec identity attack: a child connects, then execs an allowed binary while the
parent keeps the connection and relays it to RELAY. Steps are driven by files in DIR:
the test writes `exec` when the child may exec; we write `connected`, `execed`."""
import os, select, socket, sys, time

path, d, allowed = sys.argv[1:4]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(w)
    s.connect(path)
    open(os.path.join(d, "connected"), "w").close()
    os.read(r, 1)
    os.execv(allowed, [allowed, "30"])
os.close(r)
while not os.path.exists(os.path.join(d, "exec")):
    time.sleep(0.01)
os.write(w, b"x")
target = os.path.realpath(allowed)
while True:
    try:
        if os.readlink(f"/proc/{pid}/exe") == target:
            break
    except OSError:
        pass
    time.sleep(0.01)
relay = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
relay.bind(os.path.join(d, "relay.sock"))
os.chmod(os.path.join(d, "relay.sock"), 0o777)
relay.listen(1)
open(os.path.join(d, "execed"), "w").close()
c, _ = relay.accept()
socks = [c, s]
while True:
    rd, _, _ = select.select(socks, [], [], 10)
    if not rd:
        break
    for x in rd:
        try:
            data = x.recv(65536)
        except OSError:
            data = b""
        if not data:
            sys.exit(0)
        (s if x is c else c).sendall(data)
