#!/usr/bin/env python3
"""standin.py: a local stand-in for the Morph Cloud REST API, for the tests
of worldfs's morph backend.  Python 3 standard library only.

    standin.py serve --root DIR [--port N] [--port-file FILE]
    standin.py ctl URL METHOD PATH [JSON]

serve: answers on 127.0.0.1 (port 0: any free one; the port is printed and
written to --port-file) with the paths and JSON shapes of the public SDK
(morphcloud/api.py).  Every request must carry "Authorization: Bearer KEY"
with KEY from $MORPH_API_KEY.  An instance is a private directory under
DIR/instances; exec runs the argv there (cwd and HOME = that directory,
a clean environment, and, when run as root with DIR outside /tmp, a private
/tmp bound to the instance's own tmp/ in a mount namespace, so that
instances do not see each other's /tmp).  A snapshot is a copy of the directory (cp -a); a branch is a
snapshot plus new instances from it; pause/resume stop and continue the
instance's processes; delete kills them and removes the directory.

Control endpoints for the tests (same key):
    POST   /_faults  {"faults": [RULE, ...]}   replace the injected faults
    DELETE /_faults                            no more faults
    GET    /_state                             instances, snapshots, requests
A RULE: {"kind": "status"|"drop"|"slow"|"badjson", "path": REGEX (searched
in the path, default any), "method": M (default any), "count": N (default
1), "status": CODE (kind status), "retry_after": SECONDS (kind status),
"delay": SECONDS (kind slow)}.  status answers CODE without doing anything;
drop closes the connection without an answer and without doing anything;
slow does the request and answers after the delay; badjson does the
request and answers 200 with a body that is not JSON.

ctl: one request to a running stand-in with the key from $MORPH_API_KEY;
prints the reply's body; exit status 0 on a 2xx.
"""

import argparse
import http.server
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

BOOT_DELAY = 0.2  # seconds an instance stays "pending"
EXEC_LIMIT = 3600  # longest exec the stand-in waits for
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ApiError(Exception):
    def __init__(self, status, detail):
        super().__init__(detail)
        self.status = status
        self.detail = detail


class Cloud:
    """The simulated account: instances, snapshots, faults, a request log."""

    def __init__(self, root, use_ns):
        self.root = root
        self.use_ns = use_ns
        self.lock = threading.Lock()
        self.instances = {}
        self.snapshots = {}
        self.faults = []
        self.requests = []
        for sub in ("instances", "snapshots"):
            os.makedirs(os.path.join(root, sub), exist_ok=True)

    # ---- objects as the API shows them ----

    @staticmethod
    def public(obj):
        return {k: v for k, v in obj.items() if not k.startswith("_")}

    def instance(self, iid):
        inst = self.instances.get(iid)
        if inst is None:
            raise ApiError(404, "instance %s not found" % iid)
        if inst["status"] == "pending" and time.time() >= inst["_ready_at"]:
            inst["status"] = "ready"
        return inst

    def snapshot(self, sid):
        snap = self.snapshots.get(sid)
        if snap is None:
            raise ApiError(404, "snapshot %s not found" % sid)
        if snap["status"] == "pending" and time.time() >= snap["_ready_at"]:
            snap["status"] = "ready"
        return snap

    def new_snapshot(self, src_dir, image_id, spec, digest=None, metadata=None, pending=False):
        sid = "snapshot_" + secrets.token_hex(6)
        path = os.path.join(self.root, "snapshots", sid)
        if src_dir:
            subprocess.run(["cp", "-a", src_dir, path], check=True)
        else:
            os.makedirs(os.path.join(path, "tmp"))
            os.chmod(os.path.join(path, "tmp"), 0o1777)
        snap = {
            "id": sid, "object": "snapshot", "created": int(time.time()),
            "status": "pending" if pending else "ready",
            "spec": dict(spec), "refs": {"image_id": image_id},
            "digest": digest, "metadata": metadata or {},
            "_dir": path, "_ready_at": time.time() + BOOT_DELAY,
        }
        self.snapshots[sid] = snap
        return snap

    def new_instance(self, snap, metadata=None):
        iid = "morphvm_" + secrets.token_hex(6)
        path = os.path.join(self.root, "instances", iid)
        subprocess.run(["cp", "-a", snap["_dir"], path], check=True)
        inst = {
            "id": iid, "object": "instance", "created": int(time.time()),
            "status": "pending", "spec": dict(snap["spec"]),
            "refs": {"snapshot_id": snap["id"], "image_id": snap["refs"]["image_id"]},
            "networking": {"internal_ip": None, "http_services": []},
            "ttl": {"ttl_seconds": None, "ttl_expire_at": None, "ttl_action": "stop"},
            "wake_on": {"wake_on_ssh": False, "wake_on_http": False},
            "metadata": metadata or {},
            "_dir": path, "_sids": set(), "_ready_at": time.time() + BOOT_DELAY,
        }
        self.instances[iid] = inst
        return inst

    # ---- processes of an instance (by session id) ----

    @staticmethod
    def signal_sessions(sids, sig):
        if not sids:
            return
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open("/proc/%s/stat" % name) as f:
                    stat = f.read()
                fields = stat[stat.rindex(")") + 2:].split()
                if int(fields[3]) in sids:
                    os.kill(int(name), sig)
            except (OSError, ValueError, IndexError):
                pass

    def kill_all(self):
        with self.lock:
            sids = set()
            for inst in self.instances.values():
                sids |= inst["_sids"]
        self.signal_sessions(sids, signal.SIGKILL)

    # ---- faults ----

    def take_fault(self, method, path):
        with self.lock:
            for rule in self.faults:
                if rule.get("count", 1) <= 0:
                    continue
                if rule.get("method") and rule["method"] != method:
                    continue
                if not re.search(rule.get("path", ""), path):
                    continue
                rule["count"] = rule.get("count", 1) - 1
                return dict(rule)
        return None

    # ---- the API ----

    def handle(self, method, path, query, body):
        parts = [p for p in path.split("/") if p]
        with self.lock:
            if parts == ["_state"] and method == "GET":
                return 200, {
                    "instances": [self.public(self.instance(i)) for i in list(self.instances)],
                    "snapshots": [self.public(self.snapshot(s)) for s in list(self.snapshots)],
                    "requests": self.requests,
                }
            if parts == ["_faults"] and method == "POST":
                faults = body.get("faults")
                if not isinstance(faults, list):
                    raise ApiError(422, "faults: expected a list")
                self.faults = [dict(f) for f in faults]
                return 200, {"faults": self.faults}
            if parts == ["_faults"] and method == "DELETE":
                self.faults = []
                return 200, {"faults": []}

            if parts == ["instance"] and method == "GET":
                want = {k[len("metadata["):-1]: v[0] for k, v in query.items()
                        if k.startswith("metadata[") and k.endswith("]")}
                data = [self.public(self.instance(i)) for i in list(self.instances)
                        if all(self.instances[i]["metadata"].get(k) == v for k, v in want.items())]
                return 200, {"data": data}
            if parts == ["instance"] and method == "POST":
                sid = query.get("snapshot_id", [None])[0]
                if not sid:
                    raise ApiError(422, "snapshot_id is required")
                snap = self.snapshot(sid)
                if snap["status"] != "ready":
                    raise ApiError(409, "snapshot %s is %s" % (sid, snap["status"]))
                return 200, self.public(self.new_instance(snap, body.get("metadata")))
            if len(parts) == 2 and parts[0] == "instance" and method == "GET":
                return 200, self.public(self.instance(parts[1]))
            if len(parts) == 2 and parts[0] == "instance" and method == "DELETE":
                inst = self.instance(parts[1])
                del self.instances[parts[1]]
                self.signal_sessions(inst["_sids"], signal.SIGKILL)
                shutil.rmtree(inst["_dir"], ignore_errors=True)
                return 200, {}
            if len(parts) == 3 and parts[0] == "instance" and method == "POST":
                inst = self.instance(parts[1])
                action = parts[2]
                if action == "pause":
                    if inst["status"] not in ("ready", "paused"):
                        raise ApiError(409, "instance is %s" % inst["status"])
                    inst["status"] = "paused"
                    self.signal_sessions(inst["_sids"], signal.SIGSTOP)
                    return 200, {}
                if action == "resume":
                    if inst["status"] not in ("ready", "paused"):
                        raise ApiError(409, "instance is %s" % inst["status"])
                    inst["status"] = "ready"
                    self.signal_sessions(inst["_sids"], signal.SIGCONT)
                    return 200, {}
                if action == "snapshot":
                    if inst["status"] != "ready":
                        raise ApiError(409, "instance is %s" % inst["status"])
                    digest = query.get("digest", [None])[0]
                    for snap in self.snapshots.values():
                        if digest and snap["digest"] == digest:
                            return 200, self.public(snap)
                    snap = self.new_snapshot(inst["_dir"], inst["refs"]["image_id"], inst["spec"],
                                             digest, body.get("metadata"))
                    return 200, self.public(snap)
                if action == "branch":
                    if inst["status"] != "ready":
                        raise ApiError(409, "instance is %s" % inst["status"])
                    try:
                        count = int(query.get("count", ["1"])[0])
                    except ValueError:
                        raise ApiError(422, "count: expected an integer")
                    if count < 1 or count > 64:
                        raise ApiError(422, "count: expected 1..64")
                    snap = self.new_snapshot(inst["_dir"], inst["refs"]["image_id"], inst["spec"])
                    kids = [self.public(self.new_instance(snap)) for _ in range(count)]
                    return 200, {"snapshot": self.public(snap), "instances": kids}
                if action == "exec":
                    command = body.get("command")
                    if (not isinstance(command, list) or not command
                            or not all(isinstance(a, str) for a in command)):
                        raise ApiError(422, "command: expected a list of strings")
                    if inst["status"] != "ready":
                        raise ApiError(409, "instance is %s" % inst["status"])
                    return "exec", (inst, command)
                raise ApiError(404, "no such action: %s" % action)

            if parts == ["snapshot"] and method == "GET":
                digest = query.get("digest", [None])[0]
                data = [self.public(self.snapshot(s)) for s in list(self.snapshots)
                        if digest is None or self.snapshots[s]["digest"] == digest]
                return 200, {"data": data}
            if parts == ["snapshot"] and method == "POST":
                image = body.get("image_id") or "morphvm-minimal"
                digest = body.get("digest")
                for snap in self.snapshots.values():
                    if digest and snap["digest"] == digest:
                        return 200, self.public(snap)
                spec = {}
                for field in ("vcpus", "memory", "disk_size"):
                    value = body.get(field)
                    if not isinstance(value, int) or value <= 0:
                        raise ApiError(422, "%s: expected a positive integer" % field)
                    spec[field] = value
                snap = self.new_snapshot(None, image, spec, digest, body.get("metadata"), pending=True)
                return 200, self.public(snap)
            if len(parts) == 2 and parts[0] == "snapshot" and method == "GET":
                return 200, self.public(self.snapshot(parts[1]))
            if len(parts) == 2 and parts[0] == "snapshot" and method == "DELETE":
                snap = self.snapshot(parts[1])
                users = [i for i, inst in self.instances.items() if inst["refs"]["snapshot_id"] == snap["id"]]
                if users:
                    raise ApiError(409, "snapshot is in use by %s" % ", ".join(users))
                del self.snapshots[parts[1]]
                shutil.rmtree(snap["_dir"], ignore_errors=True)
                return 200, {}
        raise ApiError(404, "no such path: %s %s" % (method, path))

    def run_exec(self, inst, command):
        """Run command in the instance; outside the lock, it may take long."""
        home = inst["_dir"]
        env = {"PATH": CLEAN_PATH, "HOME": home, "LANG": "C.UTF-8", "USER": "root", "LOGNAME": "root"}
        argv = list(command)
        if self.use_ns:
            argv = ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
                    'mount --bind "$1" /tmp && cd "$2" && shift 2 && exec "$@"',
                    "standin", os.path.join(home, "tmp"), home] + argv
        try:
            proc = subprocess.Popen(argv, cwd=home, env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    start_new_session=True)
        except OSError as e:
            return 200, {"exit_code": 127, "stdout": "", "stderr": "%s: %s\n" % (command[0], e.strerror)}
        with self.lock:
            inst["_sids"].add(proc.pid)
        try:
            out, err = proc.communicate(timeout=EXEC_LIMIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        code = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
        return 200, {"exit_code": code, "stdout": out.decode("utf-8", "replace"),
                     "stderr": err.decode("utf-8", "replace")}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    cloud = None
    key = None

    def log_message(self, fmt, *args):
        sys.stderr.write("standin: %s\n" % (fmt % args))

    def send_json(self, status, obj, headers=(), raw=None):
        data = raw if raw is not None else json.dumps(obj).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            self.close_connection = True  # the client went away (it timed out)

    def serve(self, method):
        url = urllib.parse.urlsplit(self.path)
        path, query = url.path, urllib.parse.parse_qs(url.query)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.headers.get("Authorization") != "Bearer " + self.key:
            self.log_request_note(method, path, 401)
            return self.send_json(401, {"detail": "invalid or missing API key"})
        fault = None if path.startswith("/_") else self.cloud.take_fault(method, path)
        if fault and fault["kind"] == "status":
            status = int(fault.get("status", 500))
            headers = [("Retry-After", str(fault["retry_after"]))] if "retry_after" in fault else []
            self.log_request_note(method, path, status, "fault")
            return self.send_json(status, {"detail": "injected fault"}, headers)
        if fault and fault["kind"] == "drop":
            self.log_request_note(method, path, 0, "fault drop")
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return None
        try:
            body = json.loads(raw) if raw.strip() else {}
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError:
            self.log_request_note(method, path, 422)
            return self.send_json(422, {"detail": "the body is not a JSON object"})
        try:
            status, obj = self.cloud.handle(method, path, query, body)
            if status == "exec":
                status, obj = self.cloud.run_exec(*obj)
        except ApiError as e:
            status, obj = e.status, {"detail": e.detail}
        note = ""
        if fault and fault["kind"] == "slow":
            note = "fault slow"
            time.sleep(float(fault.get("delay", 30)))
        if fault and fault["kind"] == "badjson":
            self.log_request_note(method, path, 200, "fault badjson")
            return self.send_json(200, None, raw=b'{"id": "morphvm_x", "status": ')
        self.log_request_note(method, path, status, note)
        return self.send_json(status, obj)

    def log_request_note(self, method, path, status, note=""):
        with self.cloud.lock:
            self.cloud.requests.append({"method": method, "path": path, "status": status, "note": note})

    def do_GET(self):
        self.serve("GET")

    def do_POST(self):
        self.serve("POST")

    def do_DELETE(self):
        self.serve("DELETE")


def namespaces_work():
    if os.geteuid() != 0:
        return False
    try:
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "true"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
    except OSError:
        return False


def serve(args):
    key = os.environ.get("MORPH_API_KEY")
    if not key:
        sys.exit("standin: MORPH_API_KEY is not set")
    root = os.path.abspath(args.root)
    # The private /tmp hides the real one: the instances must live elsewhere.
    use_ns = namespaces_work() and not (root + "/").startswith("/tmp/")
    if not use_ns:
        sys.stderr.write("standin: no mount namespaces (not root, or --root below /tmp): "
                         "instances share /tmp\n")
    cloud = Cloud(root, use_ns)
    Handler.cloud = cloud
    Handler.key = key
    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    port = server.server_address[1]

    def stop(signum, frame):
        cloud.kill_all()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % port)
        os.rename(tmp, args.port_file)
    print(port, flush=True)
    server.serve_forever()


def ctl(args):
    data = args.json.encode() if args.json is not None else None
    req = urllib.request.Request(args.url.rstrip("/") + args.path, data=data, method=args.method)
    req.add_header("Authorization", "Bearer " + os.environ.get("MORPH_API_KEY", ""))
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            sys.stdout.write(r.read().decode())
            return 0
    except urllib.error.HTTPError as e:
        sys.stdout.write(e.read().decode())
        return 1
    except (urllib.error.URLError, OSError) as e:
        sys.stderr.write("standin ctl: %s: %s\n" % (args.url, e))
        return 1


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--root", required=True)
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--port-file")
    c = sub.add_parser("ctl")
    c.add_argument("url")
    c.add_argument("method")
    c.add_argument("path")
    c.add_argument("json", nargs="?")
    args = p.parse_args()
    if args.cmd == "serve":
        serve(args)
    else:
        sys.exit(ctl(args))


if __name__ == "__main__":
    main()
