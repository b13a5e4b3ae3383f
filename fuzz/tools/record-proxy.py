#!/usr/bin/env python3
"""A recording TCP proxy for seeding the fuzz corpus: listens on an ephemeral port (printed on stdout),
forwards every connection to HOST:PORT, and writes what each client sent to OUTDIR/PREFIX-N.bin.
Runs until its stdin closes, so the script that started it stops it by closing the pipe."""
import os, socket, sys, threading

host, port, outdir, prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
os.makedirs(outdir, exist_ok=True)
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(64)
print(listener.getsockname()[1], flush=True)
counter = [0]
lock = threading.Lock()

def pump(src, dst, record):
    try:
        while True:
            b = src.recv(65536)
            if not b:
                break
            if record is not None:
                record.write(b)
            dst.sendall(b)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

def serve(client):
    with lock:
        counter[0] += 1
        n = counter[0]
    upstream = socket.create_connection((host, port))
    with open(os.path.join(outdir, "%s-%03d.bin" % (prefix, n)), "wb") as record:
        t = threading.Thread(target=pump, args=(upstream, client, None), daemon=True)
        t.start()
        pump(client, upstream, record)
        t.join(5)
    client.close()
    upstream.close()

def accept():
    while True:
        c, _ = listener.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()

threading.Thread(target=accept, daemon=True).start()
sys.stdin.read()
