# python-docker-mcp REPL helper: runs inside every sandbox as `python3 -u -c <this file>`.
#
# Protocol: one JSON object per line. The daemon writes requests to the container's stdin;
# the helper answers on the container's stdout. Before any user code runs, the helper moves
# both onto private descriptors (close-on-exec) and points fd 0 at /dev/null, so nothing
# user code does with fds 0, 1 or 2 -- print, os.write(1, ...), C extensions, child
# processes -- can read or corrupt the protocol. During an execution fds 1 and 2 are pipes
# drained by threads into capped buffers; that is what "stdout" and "stderr" return.
#
# Requests:  {"op": "exec", "id": N, "code": str, "state": obj|null, "want_state": bool,
#             "output_limit": int}
#            {"op": "ping", "id": N}       (health check before a warm sandbox is handed out)
#            {"op": "interrupt", "id": N}  (stop execution N: KeyboardInterrupt in its code;
#                                           no reply of its own, N's result says interrupted)
#            {"op": "reset", "id": N}      (forget every variable and import of the session)
#            {"op": "vars", "id": N}       (the session's variables: name, type, short repr)
#            {"op": "packages", "id": N}   (installed distributions: name, version, location)
#            exec, vars, packages and ls carry "list_cap": the most entries a listing, or the
#            files compared for "files_changed", may hold (the daemon's repl::LIST_CAP)
#            exec may also carry "stream": true (send output as it comes) and "max_figures",
#            "max_figure_bytes" (matplotlib figures returned as PNG), and "track_files": true
#            (the result lists the working directory's files the run created or modified)
#            {"op": "put", "id": N, "path": str, "data": base64, "append": bool, "limit": int}
#            {"op": "get", "id": N, "path": str, "offset": int, "length": int, "limit": int}
#            {"op": "ls", "id": N, "path": str}
#            {"op": "network", "id": N, "socket": str, "key": str, "secret": str} starts the
#            egress forwarder (see "Egress" below) and sets the proxy variables; without
#            "socket" it stops it and unsets them. Answer: done with {"port": P} or {}.
#            Files move in chunks (the daemon sends and asks for at most 3 MiB of bytes each).
#            Paths are refused unless their real path (symlinks followed) is inside the
#            working directory or /tmp; the daemon checks the same rule lexically first.
# Replies:   {"op": "ready", "python": str, "preload_failed": {module: error}}  once at start,
#            after importing the modules in PDM_PRELOAD (comma-separated; warm imports)
#            {"op": "pong", "id": N}
#            {"op": "output", "id": N, "stdout": str, "stderr": str}   while streaming
#            {"op": "done", "id": N, "data": any}                        reset, vars
#            put/get/ls answer done with data {"error": kind, "message": str[, "size": int]}
#            on refusal; otherwise put {"size"}, get {"size", "data"}, ls {"path", "entries",
#            "truncated"}; results of tracked runs carry "files_changed": [{path, size,
#            change}], "files_changed_truncated": bool
#            results also carry "images": [base64 PNG], "images_dropped": int; a last
#            expression that is an image (bytes of a PNG or JPEG, or a PIL image, saved as
#            PNG) comes first among them, under the same caps, and its "value" says so
#            {"op": "result", "id": N, "stdout": str, "stderr": str, "stdout_dropped": int,
#             "stderr_dropped": int, "value": str|null, "error": null|{type, message,
#             traceback}, "interrupted": bool, "duration_ms": float, "state": obj|null,
#             "state_skipped": {name: type}, "cpu_seconds": float, "peak_memory_bytes": int,
#             "peak_memory_scope": "run"|"session"}
# Every frame fits in the request's "max_frame" bytes: a result that would not drops its
# figures, then its state, then output (and says so); streamed output frames carry at most
# 64 KiB of text; listings and exception texts are capped. The daemon ends a sandbox that
# sends more, so nothing here may assume the daemon will buffer without bound.
# Memory: before each execution the helper sets its soft RLIMIT_DATA so that what the cell
# can still allocate is PDM_DATA_LIMIT minus what is resident and what the tmpfs mounts
# hold: a big allocation raises MemoryError in the cell instead of getting the sandbox
# OOM-killed, and the session keeps its variables.
# Package directories (PDM_PACKAGE_DIRS, read-only volumes an installer container fills)
# are rescanned before each execution when they changed, so an install is importable at once.
# When stdin closes (the daemon went away) the helper exits at once, so a sandbox never
# outlives its daemon -- unless it is durable (the engine keeps stdin open across attaches):
# then a later daemon attaches again and says {"op": "hello", "id": N}. The reader thread
# answers it at once, busy or not, with a "ready" frame carrying the same id, "running"
# ({id, started} of an execution still under way, or null) and "kept" ({id, finished} of
# the last result nobody acknowledged, or null). Every request may carry "ack": the id of
# the latest reply the daemon received; the last execution's result frame is kept until it
# is acknowledged, so {"op": "replay", "id": K} can send it again, unchanged (id K), to a
# daemon that lost it in a restart.
# Every exec carries "stop_after" (seconds): a run its daemon did not stop by then (the
# daemon went away mid-call) is interrupted by the helper itself, as a time-out would be.
# A durable sandbox ends itself: PDM_IDLE_EXIT (seconds) after the last request finished,
# and at PDM_EXIT_AT (epoch seconds) however busy; {"op": "lease", "id": N, "idle": s,
# "until": epoch} sets both when a session takes the sandbox. User code could defeat
# this timer (it runs in this process); the daemon's sweep is the backstop that cannot be.
# Interrupts come in-band, so they need no signal API from the engine (Kubernetes has
# none): the thread that reads stdin takes "interrupt" itself and, if it names the
# execution running now, sends SIGINT to the main thread (pthread_kill: a signal to that
# thread wakes time.sleep, blocking reads and joins, which _thread.interrupt_main and
# PyThreadState_SetAsyncExc do not on Python 3.11). The SIGINT handler raises
# KeyboardInterrupt only while user code runs; an interrupt that arrives while the run is
# still queued or being set up is raised as its code starts. Code that ignores it, or native code
# that holds the GIL (the reader cannot even run), is the daemon's to kill.
import ast
import base64
import builtins
import codecs
import importlib
import io
import json
import linecache
import os
import resource
import signal
import site
import stat
import sys
import threading
import time
import traceback
import types

PACKAGE_DIRS = [p for p in os.environ.get("PDM_PACKAGE_DIRS", "").split(":") if p]
PRELOAD = [m.strip() for m in os.environ.get("PDM_PRELOAD", "").split(",") if m.strip()]
DATA_LIMIT = int(os.environ.get("PDM_DATA_LIMIT") or 0)
STREAM_FRAME_TEXT = 64 * 1024
TEXT_CAP = 64 * 1024
_workdir = os.environ.get("PDM_WORKDIR") or os.getcwd()

_proto_in = os.fdopen(os.dup(0), "rb")
_proto_out = os.dup(1)
_devnull = os.open(os.devnull, os.O_RDWR)
_diag = os.dup(2)
os.dup2(_devnull, 0)
os.dup2(_devnull, 1)
_orig_stdout, _orig_stderr = sys.stdout, sys.stderr


_send_lock = threading.Lock()


def encode(msg):
    return (json.dumps(msg, ensure_ascii=True) + "\n").encode()


def send(msg):
    write_frame(encode(msg))


def write_frame(data):
    with _send_lock:  # the drain threads send streamed output too
        _write_locked(data)


def _write_locked(data):
    view = memoryview(data)
    while view:
        n = os.write(_proto_out, view)
        view = view[n:]


def diag(text):
    # The container's stderr: the daemon logs it. Only used outside executions.
    try:
        os.write(_diag, ("helper: " + text + "\n").encode(errors="replace"))
    except OSError:
        pass


# Requests are read on a thread so that EOF is noticed, and interrupts are taken, even
# while user code runs. Every other request goes to the main thread, in order.
_requests = []
_requests_cv = threading.Condition()
# An interrupt request is a short line; longer ones are never parsed here.
INTERRUPT_LINE_MAX = 256


def _reader():
    global _last_activity
    while True:
        line = _proto_in.readline()
        if not line:
            os._exit(0)
        _last_activity = time.monotonic()
        if not line.strip():
            continue  # a new daemon ends a line a dead one may have left half-written
        if len(line) <= INTERRUPT_LINE_MAX and (
                b'"interrupt"' in line or b'"hello"' in line or b'"ack"' in line):
            try:
                req = json.loads(line)
            except ValueError:
                req = None
            if isinstance(req, dict) and req.get("op") == "interrupt":
                interrupt(req.get("id"))
                continue
            if isinstance(req, dict) and req.get("op") == "hello":
                hello(req.get("id"), req.get("claim"), req.get("over"))
                continue
            if isinstance(req, dict) and req.get("op") == "ack":
                acknowledge(req.get("ack"))
                continue
        with _requests_cv:
            _requests.append(line)
            _requests_cv.notify()


def next_request():
    with _requests_cv:
        while not _requests:
            _requests_cv.wait()
        return _requests.pop(0)


# SIGINT interrupts user code only. The reader thread sends it to the main thread when
# the daemon asks (see the header); one from outside (`docker kill -s INT`) works too.
_in_user_code = False
# The id of the execution running now (None between executions), and the last one the
# daemon asked to interrupt. Plain assignments: the GIL makes each one atomic.
_running = None
_interrupt_asked = None
_main_thread = threading.main_thread().ident
INTERRUPTED = "execution interrupted by python-docker-mcp (time-out or cancelled call)"


def _on_sigint(signum, frame):
    if _in_user_code:
        raise KeyboardInterrupt(INTERRUPTED)


def interrupt(run_id):
    """The daemon's in-band interrupt (on the reader thread). It hits only the execution
    it names: ids are never reused, so a late request (that run is over) hits nothing. A
    request for a run still queued, or still being set up, is remembered and raised as
    its code starts; one for the run in its code is a SIGINT to the main thread."""
    global _interrupt_asked
    if run_id is None:
        return
    _interrupt_asked = run_id
    if run_id == _running:
        signal.pthread_kill(_main_thread, signal.SIGINT)


signal.signal(signal.SIGINT, _on_sigint)

# Durable sandboxes (see the header). Plain assignments: the GIL makes each one atomic.
_idle_exit = float(os.environ.get("PDM_IDLE_EXIT") or 0)
_exit_at = float(os.environ.get("PDM_EXIT_AT") or 0)
_last_activity = time.monotonic()
_busy = False
_run_started = None
# (id, frame bytes, finished epoch) of the last execution's result, until acknowledged.
_kept = None


def acknowledge(ack):
    """The daemon has every result up to `ack`: forget the kept one."""
    global _kept
    kept = _kept
    if kept is not None and isinstance(ack, int) and ack >= kept[0]:
        _kept = None


# The daemon that holds this sandbox, as its last winning hello "claim" named it. The one
# reader thread decides a race: a claim wins when nobody holds the sandbox yet, or when it
# names ("over") the claim it found, so of several daemons taking over from one that died,
# exactly one wins; the others hear the winner's name.
_claim = None


def hello(req_id, claim=None, over=None):
    """A daemon (re)attached: say who we are and what it may have missed (reader thread)."""
    global _claim
    if claim is not None and (_claim is None or _claim == over):
        _claim = str(claim)
    running = _running
    kept = _kept
    send({"op": "ready", "id": req_id, "python": sys.version.split()[0], "preload_failed": {},
          "running": None if running is None else {"id": running, "started": _run_started},
          "kept": None if kept is None else {"id": kept[0], "finished": kept[2]},
          "claimed_by": _claim})


# When the running execution is interrupted by the helper itself: its daemon went away
# mid-call and nobody else will (the request's "stop_after", beyond the daemon's time-out).
_stop_at = None


def _expiry():
    while True:
        time.sleep(0.5)
        now = time.monotonic()
        running = _running
        if running is not None and _stop_at is not None and now >= _stop_at:
            diag("interrupting execution %s: past its time-out and no daemon stopped it" % (running,))
            interrupt(running)
        if _exit_at and time.time() >= _exit_at:
            diag("exiting: the sandbox's lifetime is over")
            os._exit(0)
        if _idle_exit and not _busy and now - _last_activity >= _idle_exit:
            diag("exiting: idle for %.0f s" % _idle_exit)
            os._exit(0)

# The module policy (allowed_modules / blocked_modules): checked when the user's own code
# imports, not when a library it uses does. It is a policy, not a security boundary; the
# container is the boundary.
ALLOWED = {m.strip() for m in os.environ.get("PDM_ALLOWED_MODULES", "").split(",") if m.strip()}
BLOCKED = {m.strip() for m in os.environ.get("PDM_BLOCKED_MODULES", "").split(",") if m.strip()}
_real_import = builtins.__import__


def _policy_import(name, globals=None, locals=None, fromlist=(), level=0):
    if _in_user_code and level == 0 and globals is not None and globals.get("__name__") == "__main__":
        top = name.partition(".")[0]
        if top in BLOCKED or name in BLOCKED:
            raise ImportError("import of %r is blocked by the server's module policy (blocked_modules)" % name,
                              name=name)
        if ALLOWED and top not in ALLOWED:
            raise ImportError("import of %r is not allowed by the server's module policy (allowed_modules: %s)"
                              % (name, ", ".join(sorted(ALLOWED))), name=name)
    return _real_import(name, globals, locals, fromlist, level)


if ALLOWED or BLOCKED:
    builtins.__import__ = _policy_import


_seen_mtimes = {}


def refresh_paths():
    changed = False
    # Reversed so that the first directory (session packages) ends up first on sys.path.
    for d in reversed(PACKAGE_DIRS):
        try:
            mtime = os.stat(d).st_mtime_ns
        except OSError:
            continue
        if _seen_mtimes.get(d) != mtime:
            _seen_mtimes[d] = mtime
            before = set(sys.path)
            site.addsitedir(d)  # also processes .pth files of installed packages
            # Installed packages win over the image's own copies.
            added = [p for p in sys.path if p not in before]
            for p in added:
                sys.path.remove(p)
            sys.path[0:0] = added
            changed = True
    if changed:
        importlib.invalidate_caches()


def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _tmpfs_used():
    used = 0
    for path in {"/tmp", os.environ.get("PDM_WORKDIR") or os.getcwd()}:
        try:
            st = os.statvfs(path)
            used += (st.f_blocks - st.f_bfree) * st.f_frsize
        except OSError:
            pass
    return used


def apply_data_limit():
    """Let the cell allocate what is left of DATA_LIMIT: the soft RLIMIT_DATA is what is
    mapped now plus that room. Reserved-but-unused mappings (thread arenas, BLAS buffers)
    are therefore not charged twice. The hard limit stays open: a cell that raises the
    soft one only loses this protection (the container's limit still holds)."""
    if DATA_LIMIT <= 0:
        return
    try:
        room = DATA_LIMIT - _status_kb("RssAnon") - _tmpfs_used()
        soft = _status_kb("VmData") + max(room, 0)
        resource.setrlimit(resource.RLIMIT_DATA, (soft, resource.RLIM_INFINITY))
    except (OSError, ValueError) as e:
        diag("data limit not applied: %s" % e)


def _cpu_seconds():
    """User plus system time of the helper and of its children it has waited for."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def begin_costs():
    """Before a run: the CPU clock so far, and the helper's peak resident size reset to
    what it holds now (writing 5 to /proc/self/clear_refs resets VmHWM), so the peak read
    afterwards is this run's. If the reset is refused, the peak is the session's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        scope = "run"
    except OSError:
        scope = "session"
    return _cpu_seconds(), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, scope


def end_costs(result, before):
    """After a run: its CPU seconds and peak memory. A child process reaped during the run
    whose peak beat every earlier child's counts too (the kernel keeps only the largest)."""
    cpu0, kids_peak0, scope = before
    try:
        result["cpu_seconds"] = round(max(0.0, _cpu_seconds() - cpu0), 3)
        peak = _status_kb("VmHWM")
        kids_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        if kids_peak > kids_peak0 * 1024:
            peak = max(peak, kids_peak)
        result["peak_memory_bytes"], result["peak_memory_scope"] = peak, scope
    except (OSError, ValueError) as e:
        diag("costs not measured: %s" % e)


def fit(result, max_frame):
    """The result's frame, made to fit in max_frame bytes: figures go first, then the
    state, then output is cut (each step is reported in the result)."""
    data = encode(result)
    if len(data) <= max_frame:
        return data
    if result.get("images"):
        result["images_dropped"] = result.get("images_dropped", 0) + len(result["images"])
        result["images"] = []
        data = encode(result)
        if len(data) <= max_frame:
            return data
    if result.get("state"):
        skipped = result.get("state_skipped") or {}
        for name, value in result["state"].items():
            skipped[name] = type(value).__name__ + " (too large for the result)"
        result["state"], result["state_skipped"] = {}, skipped
        data = encode(result)
        if len(data) <= max_frame:
            return data
    # Output: escaped JSON can be 6 bytes per character; cut both streams to fit.
    budget = max(0, (max_frame - 65536) // 12)
    for key in ("stdout", "stderr"):
        text = result.get(key) or ""
        if len(text) > budget:
            result[key + "_dropped"] = result.get(key + "_dropped", 0) + len(text[budget:].encode())
            result[key] = text[:budget]
    return encode(result)


class Sink:
    """One execution's stdout or stderr: kept up to `limit` bytes, the rest counted. When
    `stream_id` is set, output is also sent as it comes (at most every 0.25 s)."""

    def __init__(self, limit, stream, stream_id):
        self.limit, self.stream, self.stream_id = limit, stream, stream_id
        self.chunks, self.kept, self.dropped = [], 0, 0
        # Written after the execution's output: everything before it belongs to this run.
        self.marker = b"\x00pdm-end-" + os.urandom(8).hex().encode() + b"\x00"
        self.done = threading.Event()
        self.unsent, self.last_sent = [], 0.0
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def add(self, data):
        room = self.limit - self.kept
        if room > 0:
            self.chunks.append(data[:room])
            self.kept += min(room, len(data))
            if self.stream_id is not None:
                self.unsent.append(data[:room])
        self.dropped += max(0, len(data) - max(room, 0))
        if self.unsent and time.monotonic() - self.last_sent >= 0.25:
            # At most 64 KiB per frame; the result has everything.
            text = self.decoder.decode(b"".join(self.unsent)[:STREAM_FRAME_TEXT])
            self.decoder.reset()
            self.unsent, self.last_sent = [], time.monotonic()
            if text:
                other = "stderr" if self.stream == "stdout" else "stdout"
                send({"op": "output", "id": self.stream_id, self.stream: text, other: ""})

    def text(self):
        return b"".join(self.chunks).decode("utf-8", errors="replace")


class Drain:
    """fd 1 or 2 during executions: a pipe drained, for the helper's whole life, by one
    thread into the current execution's Sink. Between executions the fd points elsewhere,
    and anything that still arrives (a lingering child process) is dropped."""

    def __init__(self, fd, restore_to):
        self.fd, self.restore_to = fd, restore_to
        self.r, self.w = os.pipe()
        self.lock = threading.Lock()
        self.sink = None
        threading.Thread(target=self._run, daemon=True).start()

    def begin(self, sink):
        with self.lock:
            self.sink = sink
        os.dup2(self.w, self.fd)

    def end(self, sink):
        os.dup2(self.restore_to, self.fd)
        os.write(self.w, sink.marker)
        sink.done.wait(timeout=2.0)
        with self.lock:
            self.sink = None

    def _run(self):
        while True:
            try:
                self._drain()
            except BaseException as e:  # MemoryError, say: never lose the drain thread
                diag("output drain restarted after %r" % (e,))

    def _drain(self):
        pending = b""
        while True:
            data = os.read(self.r, 65536)
            with self.lock:
                sink = self.sink
            if sink is None or sink.done.is_set():
                pending = b""
                continue
            data, pending = pending + data, b""
            at = data.find(sink.marker)
            if at >= 0:
                sink.add(data[:at])
                sink.done.set()
                continue
            # The marker may be split across reads: hold back a tail that could be its
            # start. It begins with a NUL byte, which text output almost never contains.
            cut = data.rfind(b"\x00", max(0, len(data) - len(sink.marker) + 1))
            if cut >= 0 and sink.marker.startswith(data[cut:]):
                data, pending = data[:cut], data[cut:]
            sink.add(data)


# Files: the path rule, and the put/get/ls requests. The rule is applied to the real path
# (symlinks followed), so a link the code made that points elsewhere is refused.
class FileRefused(Exception):
    def __init__(self, kind, message, size=None):
        Exception.__init__(self, message)
        self.kind, self.message, self.size = kind, message, size


def _roots():
    return [os.path.realpath(_workdir), os.path.realpath("/tmp")]


def resolve(path):
    if not isinstance(path, str) or not path or "\x00" in path:
        raise FileRefused("path", "the path is empty or contains a NUL byte")
    full = os.path.realpath(os.path.join(_workdir, path))
    for root in _roots():
        if full == root or full.startswith(root.rstrip("/") + "/"):
            return full
    raise FileRefused("path", "`%s` resolves to %s, outside the sandbox's files (the working directory %s "
                      "and /tmp; symlinks are followed)" % (path[:200], full[:200], _workdir))


def file_put(req):
    full = resolve(req.get("path"))
    data = base64.b64decode(req.get("data") or "")
    limit = int(req.get("limit") or 0)
    append = bool(req.get("append"))
    if os.path.isdir(full):
        raise FileRefused("dir", "`%s` is a directory" % req.get("path"))
    parent = os.path.dirname(full)
    if not append:
        os.makedirs(parent, exist_ok=True)
        resolve(parent)  # a parent made of links must still be inside
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_APPEND if append else os.O_TRUNC)
    fd = os.open(full, flags, 0o644)
    try:
        if limit and os.fstat(fd).st_size + len(data) > limit:
            raise FileRefused("too_large", "over the file limit", os.fstat(fd).st_size + len(data))
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    return {"size": size}


def file_get(req):
    full = resolve(req.get("path"))
    try:
        fd = os.open(full, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FileRefused("missing", "`%s` does not exist (list-files shows what is there)" % req.get("path"))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileRefused("dir", "`%s` is not a regular file" % req.get("path"))
        limit = int(req.get("limit") or 0)
        if limit and st.st_size > limit:
            raise FileRefused("too_large", "over the file limit", st.st_size)
        offset, length = int(req.get("offset") or 0), int(req.get("length") or 0)
        os.lseek(fd, offset, os.SEEK_SET)
        chunks, left = [], max(0, min(length, st.st_size - offset))
        while left > 0:
            chunk = os.read(fd, left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    return {"size": st.st_size, "data": base64.b64encode(b"".join(chunks)).decode("ascii")}


def _kind(mode):
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "link"
    return "other"


def file_ls(req):
    cap = int(req["list_cap"])
    full = resolve(req.get("path") or ".")
    st = os.stat(full)
    if not stat.S_ISDIR(st.st_mode):
        return {"path": full, "entries": [{"name": os.path.basename(full), "kind": _kind(st.st_mode),
                                            "size": st.st_size, "mtime": st.st_mtime}], "truncated": False}
    entries, truncated = [], False
    with os.scandir(full) as it:
        for entry in it:
            if len(entries) >= cap:
                truncated = True
                break
            try:
                est = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            entries.append({"name": entry.name, "kind": _kind(est.st_mode), "size": est.st_size,
                            "mtime": est.st_mtime})
    entries.sort(key=lambda e: e["name"])
    return {"path": full, "entries": entries, "truncated": truncated}


def file_op(req):
    op = req.get("op")
    try:
        if op == "put":
            return file_put(req)
        if op == "get":
            return file_get(req)
        return file_ls(req)
    except FileRefused as e:
        out = {"error": e.kind, "message": e.message}
        if e.size is not None:
            out["size"] = e.size
        return out
    except OSError as e:
        return {"error": "os", "message": "`%s`: %s" % (str(req.get("path"))[:200], e.strerror or e)}
    except (ValueError, TypeError) as e:
        return {"error": "bad", "message": "bad file request: %s" % e}


def snapshot_files(cap):
    """The working directory's regular files: {relative path: (mtime_ns, size)}, at most
    cap of them (and whether there were more). Links are not followed, and hidden
    directories (.cache, .config: where libraries keep their caches) are skipped."""
    files, truncated = {}, False
    for top, dirs, names in os.walk(_workdir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if len(files) >= cap:
                return files, True
            path = os.path.join(top, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                files[os.path.relpath(path, _workdir)] = (st.st_mtime_ns, st.st_size)
    return files, truncated


def files_changed(before, after):
    changed = []
    for path, (mtime, size) in sorted(after.items()):
        old = before.get(path)
        if old is None:
            changed.append({"path": path, "size": size, "change": "created"})
        elif old != (mtime, size):
            changed.append({"path": path, "size": size, "change": "modified"})
    return changed


_cell = 0
namespace = {"__name__": "__main__", "__builtins__": builtins}


def as_image(value):
    """A cell's last value as an image: (bytes, "PNG" or "JPEG"), or None. Bytes count
    when they start with a PNG or JPEG signature (what page.screenshot() returns); a PIL
    image is saved as PNG (only when PIL is already imported: nothing is imported here)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        head = bytes(value[:8])
        if head == b"\x89PNG\r\n\x1a\n":
            return bytes(value), "PNG"
        if head[:3] == b"\xff\xd8\xff":
            return bytes(value), "JPEG"
        return None
    pil = sys.modules.get("PIL.Image")
    if pil is not None and isinstance(value, getattr(pil, "Image", ())):
        buf = io.BytesIO()
        value.save(buf, format="PNG")
        return buf.getvalue(), "PNG"
    return None


def add_value_image(result, image, max_count, max_bytes):
    """Put the last value's image first among the result's images, under the figure caps."""
    data, kind = image
    if len(data) > max_bytes:
        result["images_dropped"] += 1
        result["value"] = "<%s image of %d bytes, not returned: larger than %d bytes>" % (
            kind, len(data), max_bytes)
        return
    result["images"].insert(0, base64.b64encode(data).decode("ascii"))
    if len(result["images"]) > max_count:
        result["images"].pop()
        result["images_dropped"] += 1
    result["value"] = "<%s image of %d bytes, returned as an image>" % (kind, len(data))


def collect_figures(max_count, max_bytes):
    """Open matplotlib figures as base64 PNGs (capped), closing every one of them."""
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None:
        return [], 0
    images, dropped = [], 0
    try:
        numbers = plt.get_fignums()
    except Exception:
        return [], 0
    for number in numbers:
        try:
            if len(images) >= max_count:
                dropped += 1
                continue
            buf = io.BytesIO()
            plt.figure(number).savefig(buf, format="png", dpi=100)
            data = buf.getvalue()
            if len(data) > max_bytes:
                dropped += 1
            else:
                images.append(base64.b64encode(data).decode("ascii"))
        except Exception as e:
            dropped += 1
            diag("figure %s not rendered: %s" % (number, e))
        finally:
            plt.close(number)
    return images, dropped


def reset_namespace():
    namespace.clear()
    namespace.update({"__name__": "__main__", "__builtins__": builtins})
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        plt.close("all")


def list_variables(cap):
    out = []
    for name in sorted(namespace):
        if name.startswith("_"):
            continue
        if len(out) >= cap:
            break
        value = namespace[name]
        out.append({"name": name, "type": type(value).__name__, "repr": repr_capped(value, 200)})
    return out


def list_packages(cap):
    from importlib import metadata
    places = [("session", d) for d in PACKAGE_DIRS[:1]] + [("shared", d) for d in PACKAGE_DIRS[1:]]
    places += [("image", p) for p in sys.path
               if p not in PACKAGE_DIRS and ("site-packages" in p or "dist-packages" in p)]
    out, seen = [], set()
    for location, path in places:
        if not os.path.isdir(path) or path in seen:
            continue
        seen.add(path)
        for dist in metadata.distributions(path=[path]):
            name = dist.metadata["Name"] or "?"
            out.append({"name": name, "version": dist.version or "?", "location": location})
    out.sort(key=lambda p: (p["name"].lower(), p["location"]))
    return out[:cap]


# Egress (network.allow). A run with an allow-list gets a forwarder: one thread, listening on
# 127.0.0.1:<ephemeral port>, that relays each accepted connection to the daemon's egress
# proxy over the Unix socket the daemon names (the only way out: the sandbox has no network
# interface but lo), after a first line "PDM1 <key> <secret>" that tells the proxy whose
# grant it is. The proxy variables point every usual client (urllib, requests, pip, git)
# at it; credentials never go in the URL (the forwarder authenticates). One selector loop
# serves every connection, so the connections cost no threads (the sandbox's pids limit
# counts threads); at most FORWARD_MAX at once (past it, a 503 naming the limit), and each
# direction holds at most one FORWARD_CHUNK in memory (a side is read only when the other
# has taken what was read before). What is read is written on at once, and one wake-up
# moves up to FORWARD_BURST chunks, so a download costs few selector round trips.
FORWARD_MAX = 256
FORWARD_CHUNK = 64 * 1024
FORWARD_BURST = 16
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")
NO_PROXY_VARS = ("NO_PROXY", "no_proxy")
NO_PROXY = "localhost,127.0.0.1,::1"


def _refusal(status, text):
    body = (text + "\n").encode()
    return (("HTTP/1.1 %s\r\nConnection: close\r\nContent-Type: text/plain\r\n"
             "Content-Length: %d\r\n\r\n") % (status, len(body))).encode() + body


class _Relay:
    """One client connection and its connection to the proxy."""

    def __init__(self, client, upstream, preamble):
        self.ends = [client, upstream]
        # Bytes read from one end, waiting to be written to the other: pending[i] goes to
        # ends[i]. The preamble goes first to the proxy.
        self.pending = [b"", preamble]
        self.eof = [False, False]
        # What each end is registered for with the selector (0: not registered).
        self.events = [0, 0]


class Forwarder:
    def __init__(self, path, preamble):
        import selectors
        import socket
        self._socket = socket
        self.path = path
        self.preamble = preamble
        self.sel = selectors.DefaultSelector()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        self.sel.register(self.listener, selectors.EVENT_READ, "accept")
        self.sel.register(self.wake_r, selectors.EVENT_READ, "stop")
        self.relays = set()
        self.thread = threading.Thread(target=self._loop, name="pdm-egress", daemon=True)
        self.thread.start()

    def stop(self):
        try:
            os.write(self.wake_w, b"x")
        except OSError:
            pass
        self.thread.join(2)

    def _loop(self):
        try:
            while True:
                for key, _ in self.sel.select():
                    if key.data == "stop":
                        return
                    if key.data == "accept":
                        self._accept()
                    else:
                        self._step(key.data, key.fileobj)
        except Exception as e:
            diag("egress forwarder stopped: %r" % (e,))
        finally:
            for r in list(self.relays):
                self._close(r)
            for f in (self.listener,):
                try:
                    self.sel.unregister(f)
                except (KeyError, ValueError):
                    pass
                f.close()
            self.sel.close()
            os.close(self.wake_r)
            os.close(self.wake_w)

    def _accept(self):
        socket = self._socket
        while True:
            try:
                client, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                diag("egress accept failed: %r" % (e,))
                return
            if len(self.relays) >= FORWARD_MAX:
                self._refuse(client, "503 Service Unavailable",
                             "blocked: too many connections from this sandbox (limit %d)" % FORWARD_MAX)
                continue
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.setblocking(False)
                upstream.connect(self.path)
            except OSError as e:
                upstream.close()
                self._refuse(client, "502 Bad Gateway",
                             "blocked: the egress proxy is not reachable (%s)" % (e.strerror or e,))
                continue
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            relay = _Relay(client, upstream, self.preamble)
            self.relays.add(relay)
            self._watch(relay)

    def _refuse(self, client, status, text):
        try:
            client.setblocking(True)
            client.settimeout(1)
            client.sendall(_refusal(status, text))
        except OSError:
            pass
        client.close()

    def _watch(self, r):
        """Register each end for what it can do now: read while the other end's queue is
        empty, write while its own is not; close the pair once both ends are done."""
        import selectors
        for i in (0, 1):
            events = 0
            if not r.eof[i] and not r.pending[1 - i]:
                events |= selectors.EVENT_READ
            if r.pending[i]:
                events |= selectors.EVENT_WRITE
            if events == r.events[i]:
                continue
            try:
                if r.events[i] == 0:
                    self.sel.register(r.ends[i], events, r)
                elif events == 0:
                    self.sel.unregister(r.ends[i])
                else:
                    self.sel.modify(r.ends[i], events, r)
            except (KeyError, ValueError, OSError):
                self._close(r)
                return
            r.events[i] = events
        if all(r.eof) and not any(r.pending):
            self._close(r)

    def _step(self, r, end):
        if r not in self.relays:
            return
        i = r.ends.index(end)
        try:
            self._flush(r, i)
            self._pump(r, i)
            self._pump(r, 1 - i)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._close(r)
            return
        self._watch(r)

    def _flush(self, r, i):
        """Write what waits for end i; pass on the other end's EOF once it is all out."""
        if r.pending[i]:
            n = r.ends[i].send(r.pending[i])
            r.pending[i] = r.pending[i][n:]
            if not r.pending[i] and r.eof[1 - i]:
                r.ends[i].shutdown(self._socket.SHUT_WR)

    def _pump(self, r, i):
        """Read from end i and write each chunk to the other end at once, up to
        FORWARD_BURST chunks; what the other end does not take waits in its queue, and
        end i is not read again until it is gone."""
        other = 1 - i
        for _ in range(FORWARD_BURST):
            if r.eof[i] or r.pending[other]:
                return
            try:
                data = r.ends[i].recv(FORWARD_CHUNK)
            except (BlockingIOError, InterruptedError):
                return
            if not data:
                r.eof[i] = True
                r.ends[other].shutdown(self._socket.SHUT_WR)
                return
            try:
                n = r.ends[other].send(data)
            except (BlockingIOError, InterruptedError):
                n = 0
            if n < len(data):
                r.pending[other] = data[n:]
                return

    def _close(self, r):
        if r not in self.relays:
            return
        self.relays.discard(r)
        for i, end in enumerate(r.ends):
            if r.events[i]:
                try:
                    self.sel.unregister(end)
                except (KeyError, ValueError):
                    pass
            end.close()


_forwarder = None


def network(req):
    """Start (a "socket" given) or stop the egress forwarder; answers {"port": P} or {}."""
    global _forwarder
    if _forwarder is not None:
        _forwarder.stop()
        _forwarder = None
    for name in PROXY_VARS + NO_PROXY_VARS:
        os.environ.pop(name, None)
    path = req.get("socket")
    if not path:
        return {}
    preamble = ("PDM1 %s %s\n" % (req.get("key"), req.get("secret"))).encode()
    _forwarder = Forwarder(str(path), preamble)
    url = "http://127.0.0.1:%d" % _forwarder.port
    for name in PROXY_VARS:
        os.environ[name] = url
    for name in NO_PROXY_VARS:
        os.environ[name] = NO_PROXY
    return {"port": _forwarder.port}


def compile_cell(code):
    """Compile a cell; if it ends with an expression, compile that separately for its value."""
    global _cell
    _cell += 1
    filename = "<cell-%d>" % _cell
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    tree = ast.parse(code, filename, "exec")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    body = compile(tree, filename, "exec")
    return body, (compile(last, filename, "eval") if last is not None else None)


def describe_error(exc):
    tb = exc.__traceback__
    # Drop the helper's own frames: the traceback starts in the user's cell.
    while tb is not None and not tb.tb_frame.f_code.co_filename.startswith("<cell-"):
        tb = tb.tb_next
    if isinstance(exc, SyntaxError):
        tb = None
    try:
        text = "".join(traceback.format_exception(type(exc), exc, tb))
        message = str(exc)
    except Exception as e:  # a broken __str__ must not break the helper
        text = message = "<exception text failed: %s>" % type(e).__name__
    return {"type": type(exc).__name__, "message": cap(message), "traceback": cap(text, tail=True)}


def cap(text, tail=False):
    if len(text) <= TEXT_CAP:
        return text
    cut = "... [%d characters left out] ..." % (len(text) - TEXT_CAP)
    return (cut + text[-TEXT_CAP:]) if tail else (text[:TEXT_CAP] + cut)


def collect_state(ns):
    state, skipped = {}, {}
    for name, value in ns.items():
        if name.startswith("_") or isinstance(value, (types.ModuleType, types.FunctionType, type)):
            continue
        if name in ("In", "Out", "exit", "quit"):
            continue
        try:
            json.dumps(value, allow_nan=False)
            state[name] = value
        except (TypeError, ValueError, OverflowError, RecursionError):
            skipped[name] = type(value).__name__
    return state, skipped


def repr_capped(value, limit=10000):
    try:
        text = repr(value)
    except Exception as e:  # a broken __repr__ must not break the helper
        text = "<repr failed: %s: %s>" % (type(e).__name__, e)
    if len(text) > limit:
        text = text[:limit] + "... [%d more characters]" % (len(text) - limit)
    return text


def _unclosable_text(fd):
    return io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), encoding="utf-8",
                            errors="backslashreplace", write_through=True)


def reopen_std_streams():
    """A cell may have closed sys.stdout or sys.stderr (which closes fd 1 or 2 with them):
    give the next cell working ones. The new ones never close their descriptor."""
    global _orig_stdout, _orig_stderr
    if _orig_stdout.closed:
        _orig_stdout = _unclosable_text(1)
    if _orig_stderr.closed:
        _orig_stderr = _unclosable_text(2)
    sys.stdout, sys.stderr = _orig_stdout, _orig_stderr


def execute(req):
    global _in_user_code, _running, _run_started, _stop_at
    _run_started = time.time()
    stop_after = req.get("stop_after")
    _stop_at = time.monotonic() + float(stop_after) if stop_after else None
    _running = req.get("id")
    ns = namespace
    if req.get("state") is not None or req.get("want_state"):
        ns = {"__name__": "__main__", "__builtins__": builtins}
        ns.update(req.get("state") or {})
    limit = int(req.get("output_limit") or 262144)
    result = {"op": "result", "id": req.get("id"), "value": None, "error": None, "interrupted": False}
    image = None
    refresh_paths()
    # exit() closes sys.stdin (and fd 0) on its way out; put /dev/null back so no pipe
    # lands on fd 0 and input() reads end-of-file.
    os.dup2(_devnull, 0)
    if sys.stdin is None or sys.stdin.closed:
        sys.stdin = open(0, "r", closefd=False)
    apply_data_limit()
    reopen_std_streams()
    track = bool(req.get("track_files"))
    before = snapshot_files(int(req["list_cap"])) if track else None
    stream_id = req.get("id") if req.get("stream") else None
    out, err = Sink(limit, "stdout", stream_id), Sink(limit, "stderr", stream_id)
    _stdout_drain.begin(out)
    _stderr_drain.begin(err)
    costs = begin_costs()
    started = time.perf_counter()
    try:
        try:
            body, last = compile_cell(req["code"])
            _in_user_code = True
            if _interrupt_asked is not None and _interrupt_asked == _running:
                # Asked while the run was being set up, when the handler ignores SIGINT.
                raise KeyboardInterrupt(INTERRUPTED)
            exec(body, ns)
            if last is not None:
                value = eval(last, ns)
                _in_user_code = False
                if value is not None:
                    try:
                        image = as_image(value)
                    except Exception as e:  # an image that cannot be saved stays a value
                        diag("value not rendered as an image: %r" % (e,))
                    if image is None:
                        result["value"] = repr_capped(value)
        finally:
            _in_user_code = False
    except KeyboardInterrupt as e:
        result["interrupted"] = True
        result["error"] = describe_error(e)
    except BaseException as e:  # SystemExit included: exit() ends the cell, not the helper
        result["error"] = describe_error(e)
    finally:
        _in_user_code = False
        _running = None
        duration = time.perf_counter() - started
        end_costs(result, costs)
        max_figures, max_figure_bytes = int(req.get("max_figures", 4)), int(req.get("max_figure_bytes", 2 << 20))
        try:
            result["images"], result["images_dropped"] = collect_figures(max_figures, max_figure_bytes)
        except BaseException as e:  # an interrupt landing here must not lose the reply
            result["images"], result["images_dropped"] = [], 0
            diag("figures not collected: %r" % (e,))
        if image is not None:
            add_value_image(result, image, max_figures, max_figure_bytes)
        for stream in (sys.stdout, sys.stderr, _orig_stdout, _orig_stderr):
            try:
                stream.flush()
            except Exception:
                pass
        sys.stdout, sys.stderr = _orig_stdout, _orig_stderr
        _stdout_drain.end(out)
        _stderr_drain.end(err)
        result["stdout"], result["stdout_dropped"] = out.text(), out.dropped
        result["stderr"], result["stderr_dropped"] = err.text(), err.dropped
    result["duration_ms"] = round(duration * 1000.0, 3)
    if track:
        try:
            after, more = snapshot_files(int(req["list_cap"]))
            result["files_changed"] = files_changed(before[0], after)
            result["files_changed_truncated"] = before[1] or more
        except Exception as e:
            diag("files not compared: %r" % (e,))
    if req.get("want_state"):
        result["state"], result["state_skipped"] = collect_state(ns)
    return result


def main():
    global _stdout_drain, _stderr_drain
    _stdout_drain, _stderr_drain = Drain(1, _devnull), Drain(2, _diag)
    refresh_paths()
    os.chdir(_workdir)
    preload_failed = {}
    for module in PRELOAD:
        try:
            importlib.import_module(module)  # in sys.modules, not in the user's namespace
        except BaseException as e:
            preload_failed[module] = "%s: %s" % (type(e).__name__, e)
    global _busy, _kept, _idle_exit, _exit_at, _last_activity
    threading.Thread(target=_reader, daemon=True).start()
    threading.Thread(target=_expiry, daemon=True).start()
    send({"op": "ready", "python": sys.version.split()[0], "preload_failed": preload_failed})
    # Between executions fd 1 is /dev/null and fd 2 the container's stderr (the daemon logs it).
    while True:
        _busy = False
        _last_activity = time.monotonic()
        line = next_request()
        _busy = True
        try:
            req = json.loads(line)
        except ValueError as e:
            diag("bad request: %s" % e)
            continue
        if not isinstance(req, dict):
            diag("bad request: not an object")
            continue
        op = req.get("op")
        acknowledge(req.get("ack"))
        lease = req if op == "lease" else req.get("lease")
        if isinstance(lease, dict):
            _idle_exit = float(lease.get("idle") or 0)
            _exit_at = float(lease.get("until") or 0)
        try:
            if op == "lease":
                send({"op": "done", "id": req.get("id"), "data": None})
            elif op == "replay":
                kept = _kept
                if kept is not None and kept[0] == req.get("id"):
                    write_frame(kept[1])
                else:
                    send({"op": "done", "id": req.get("id"), "data": None})
            elif op == "exec":
                result = execute(req)
                try:
                    frame = fit(result, int(req.get("max_frame") or 16 << 20))
                except MemoryError:
                    result = {"op": "result", "id": req.get("id"), "stdout": "", "stderr": "",
                              "stdout_dropped": 0, "stderr_dropped": 0, "value": None,
                              "error": {"type": "MemoryError", "message": "the result did not fit in memory",
                                        "traceback": "MemoryError: the result did not fit in memory"},
                              "interrupted": False, "duration_ms": 0.0}
                    frame = encode(result)
                _kept = (req.get("id"), frame, time.time())
                write_frame(frame)
            elif op == "ping":
                send({"op": "pong", "id": req.get("id")})
            elif op == "reset":
                reset_namespace()
                send({"op": "done", "id": req.get("id"), "data": None})
            elif op == "vars":
                send({"op": "done", "id": req.get("id"), "data": list_variables(int(req["list_cap"]))})
            elif op == "packages":
                send({"op": "done", "id": req.get("id"), "data": list_packages(int(req["list_cap"]))})
            elif op in ("put", "get", "ls"):
                send({"op": "done", "id": req.get("id"), "data": file_op(req)})
            elif op == "network":
                send({"op": "done", "id": req.get("id"), "data": network(req)})
            else:
                diag("unknown op %r" % (op,))
        except Exception as e:  # MemoryError in a listing, say: answer, never exit
            diag("%s failed: %r" % (op, e))
            if op in ("reset", "vars", "packages"):
                send({"op": "done", "id": req.get("id"), "data": [] if op != "reset" else None})
            elif op in ("put", "get", "ls", "network"):
                send({"op": "done", "id": req.get("id"), "data": {"error": "failed", "message": repr(e)[:500]}})
        except KeyboardInterrupt:
            # An interrupt that landed between executions; nothing to stop.
            send({"op": "result", "id": req.get("id"), "stdout": "", "stderr": "",
                  "stdout_dropped": 0, "stderr_dropped": 0, "value": None,
                  "error": {"type": "KeyboardInterrupt", "message": "", "traceback": ""},
                  "interrupted": True, "duration_ms": 0.0})


main()
