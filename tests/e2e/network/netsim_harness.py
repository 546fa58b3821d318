"""Starts the real `alem netsim` (the reference network) and the real `alem serve` (the
provider, optionally under mpirun) for the network end-to-end tests, on 127.0.0.1 only.

The simulator listens on a port it picks itself (--listen 127.0.0.1:0; the port is read from
its JSON "listening" log line); the provider dials out to it with --network-endpoint. Both run
in their own process groups so that a test can kill one of them (SIGKILL included) without
touching the other. Every wait has a deadline; nothing here imitates either program.
"""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

ALEM = os.environ.get("ALEM_BINARY", "build/alem")
MODEL = os.environ.get("ALEM_TEST_MODEL", "models/smollm2-135m-instruct.h5")
MODEL_NAME = "SmolLM2-135M-Instruct"


class Skip(Exception):
    """A tool the test needs is missing: reported as skipped (exit 77)."""


def require_tools(*tools):
    if not os.access(ALEM, os.X_OK):
        raise Skip(f"no alem binary at {ALEM}")
    if not os.path.exists(MODEL):
        raise Skip(f"no model store at {MODEL} (scripts/prepare-model.sh)")
    for tool in tools:
        if not shutil.which(tool):
            raise Skip(f"{tool} not installed")


def json_events(path):
    events = []
    try:
        with open(path, "rb") as f:
            for line in f.read().decode("utf-8", "replace").splitlines():
                line = line.strip()
                if line.startswith("{"):
                    try:
                        events.append(json.loads(line))
                    except ValueError:
                        pass
    except FileNotFoundError:
        pass
    return events


def _proc_stat(pid):
    """(state, ppid) of a live process from /proc, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[0], int(fields[1])


def descendants(root):
    """Every process below `root`. mpirun (Open MPI 4) puts each rank in a process group of its
    own, so a signal to mpirun's group does not reach the ranks: they must be found by parent."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _proc_stat(int(entry))
            if st:
                children.setdefault(st[1], []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive_pids(pids):
    """The pids of `pids` that still run (a zombie counts as gone: it holds no files)."""
    out = []
    for pid in pids:
        st = _proc_stat(pid)
        if st and st[0] != "Z":
            out.append(pid)
    return out


class Process:
    """A child in its own process group, logging to a file."""

    def __init__(self, name, args, workdir, env=None):
        self.name = name
        self.log_path = os.path.join(workdir, name + ".log")
        full_env = dict(os.environ)
        full_env["ALEM_LOG_FORMAT"] = "json"
        full_env.setdefault("OMP_NUM_THREADS", "1")
        full_env["OMPI_MCA_rmaps_base_oversubscribe"] = "1"
        if env:
            full_env.update(env)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=full_env, start_new_session=True)

    def events(self):
        return json_events(self.log_path)

    def tail(self, n=40):
        with open(self.log_path, "rb") as f:
            return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-n:])

    def alive(self):
        return self.proc.poll() is None

    def kill(self, sig=signal.SIGKILL):
        if self.alive():
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def kill_all(self, timeout=30):
        """SIGKILL for the whole job: the process, its group and every process below it (the MPI
        ranks, in process groups of their own), then waits until none of them runs, so that a
        restarted job never meets a rank of the killed one (which would still hold the usage
        journal's lock). Returns the pids that were killed."""
        pids = [self.proc.pid] + descendants(self.proc.pid)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.wait(timeout)
        deadline = time.time() + timeout
        while alive_pids(pids) and time.time() < deadline:
            time.sleep(0.05)
        left = alive_pids(pids)
        assert not left, f"{self.name}: processes {left} survived SIGKILL"
        return pids

    def wait(self, timeout):
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace=20):
        """SIGINT, then SIGKILL for the whole job after `grace` seconds."""
        ranks = descendants(self.proc.pid) if self.alive() else []
        if self.alive():
            self.kill(signal.SIGINT)
            if self.wait(grace) is None:
                self.kill(signal.SIGKILL)
                self.wait(10)
        # Ranks mpirun may have left behind (in the group, or in process groups of their own).
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for pid in alive_pids(ranks):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._log.close()


def wait_for(predicate, timeout, what, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and not proc.alive():
            raise AssertionError(f"{proc.name} exited ({proc.proc.returncode}) while waiting for "
                                 f"{what}:\n{proc.tail()}")
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}" +
                         (f":\n{proc.tail()}" if proc else ""))


def start_netsim(workdir, args, tls=None):
    """Starts `alem netsim`; returns (process, port). `tls` is (cert, key) or None (plaintext)."""
    cmd = [ALEM, "netsim", "--listen", "127.0.0.1:0", *args]
    cmd += ["--tls-cert", tls[0], "--tls-key", tls[1]] if tls else ["--insecure"]
    proc = Process("netsim", cmd, workdir)

    def port():
        for e in proc.events():
            if e.get("msg") == "listening":
                return int(e["port"])
        return None

    return proc, wait_for(port, 30, "the simulator's listening line", proc)


def start_provider(workdir, port, name="serve", ranks=1, tls_ca=None, extra=()):
    """Starts `alem serve` as a provider of the simulator at `port` (under mpirun --tp 3 when
    ranks == 3), with its key file and usage journal in `workdir`."""
    args = [ALEM, "serve", "--model", MODEL, "--host", "127.0.0.1", "--port", "0",
            "--network-endpoint", f"127.0.0.1:{port}",
            "--provider-key", os.path.join(workdir, "provider.key"),
            "--usage-journal", os.path.join(workdir, "usage.journal"),
            "--attestation", "off", "--max-model-len", "512", "--kv-cache-mb", "64", *extra]
    args += ["--network-ca", tls_ca] if tls_ca else ["--network-insecure"]
    if ranks > 1:
        args += ["--tp", str(ranks)]
        args = [shutil.which("mpirun"), "--oversubscribe", "--allow-run-as-root", "-np",
                str(ranks), "-x", "OMP_NUM_THREADS=1", "-x", "ALEM_LOG_FORMAT", *args]
    return Process(name, args, workdir)


def make_tls_cert(workdir):
    """A self-signed certificate for 127.0.0.1 made with openssl; returns (cert, key)."""
    cert = os.path.join(workdir, "netsim-cert.pem")
    key = os.path.join(workdir, "netsim-key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout", key, "-out", cert], check=True, capture_output=True, timeout=60)
    return cert, key


def generate_cli(prompt, max_tokens, chat=False, ranks=1):
    """The greedy completion `alem generate` prints: an independent code path (no HTTP, no
    queue, no sealing) for the expected text of a greedy request."""
    args = [ALEM, "generate", "--model", MODEL, "--prompt", prompt, "--max-tokens",
            str(max_tokens), "--temperature", "0", "--quiet"]
    if chat:
        args.append("--chat")
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    if ranks > 1:
        args = [shutil.which("mpirun"), "--oversubscribe", "--allow-run-as-root", "-np",
                str(ranks), "-x", "OMP_NUM_THREADS=1", *args, "--tp", str(ranks)]
        env["OMPI_MCA_rmaps_base_oversubscribe"] = "1"
    out = subprocess.run(args, capture_output=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    text = out.stdout.decode("utf-8")
    assert text.endswith("\n")
    return text[:-1]


def write_requests(path, entries):
    with open(path, "w") as f:
        for e in entries:
            f.write(json.dumps(e) + "\n")


def read_report(path):
    with open(path) as f:
        return json.load(f)


def new_workdir(prefix):
    return tempfile.mkdtemp(prefix=prefix)
