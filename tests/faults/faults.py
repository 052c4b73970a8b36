"""faults.py - the fault matrix's driver: real pdserve processes, faults
injected at a known phase, and the request-level guarantees checked.

Run by the scripts next to it (one per family of faults), as
    python3 faults.py CASE BACKEND...
with PDSERVE_BIN, FAULT_MODEL (and, for the model case, FAULT_MODEL2) set.

Every case:
  1. every client (both halves of a PD request, as the router sends them)
     gets exactly one terminal answer within its deadline: a 200 JSON body,
     an OpenAI-style error body, a stream that ends with a finish event or
     an error event and then [DONE] - or, only where its own server was
     killed, a broken connection;
  2. streamed output_ids (cumulative in /generate chunks) only ever grow by
     appending: no token duplicated or lost; a successful answer's ids equal
     a unified server's greedy output for the same prompt;
  3. page counters (engine_stats: running, waiting, pages free + cached ==
     total; disaggregation.rooms_live) come back to baseline on every
     server still alive;
  4. the survivors keep serving: one more PD request succeeds (after the
     killed server was restarted on the same ports, when one was).

Phases, made deterministic with the test hook PDSERVE_TEST_STEP_DELAY_MS
(the engine sleeps after every forward step) and a small chunk size, so a
long prompt takes many steps on the prefill:
  before  the decode has reserved pages and sent ROOM_DEST; the prefill's
          HTTP half has not been sent yet (nothing computed);
  during  the prefill has computed (and exported) at least two chunks but
          not the whole prompt: KV is on the wire;
  after   the transfer is done and the decode is streaming tokens.
"""
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

BIN = os.environ["PDSERVE_BIN"]
MODEL = os.environ["FAULT_MODEL"]
TMP = os.environ.get("FAULT_TMP", "/tmp")
HB = float(os.environ.get("SGLANG_DISAGGREGATION_HEARTBEAT_INTERVAL", "0.3"))
CHUNK = 16
PREFILL_DELAY_MS = 60   # per prefill step: a 300-token prompt takes ~1.2 s
DECODE_DELAY_MS = 25    # per decode step: 64 tokens take ~1.6 s
WORDS = "once upon a time there was a little girl named lily she loved to play outside in the park".split()


class Fail(Exception):
    pass


def fail(msg):
    raise Fail(msg)


def log(msg):
    print(msg, flush=True)


sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from free_port import free_port  # noqa: E402  (below the ephemeral range)


def wait_for(pred, timeout, what):
    end = time.time() + timeout
    last = None
    while time.time() < end:
        try:
            last = pred()
            if last:
                return last
        except (OSError, http.client.HTTPException, ValueError):
            pass
        time.sleep(0.02)
    fail("%s: not within %.1f s (last: %r)" % (what, timeout, last))


# ---------------------------------------------------------------- processes

class Proc:
    """One pdserve process (server or router) on fixed ports; restartable."""
    all = []

    def __init__(self, name, argv, port, env=None, prefix=(), host="127.0.0.1"):
        self.name, self.argv, self.port, self.env, self.prefix, self.host = name, argv, port, env or {}, list(prefix), host
        self.p = None
        self.gen = 0
        Proc.all.append(self)

    def start(self, ready="/health", timeout=20):
        self.gen += 1
        env = dict(os.environ)
        env.update(self.env)
        out = open(os.path.join(TMP, "%s.%d.log" % (self.name, self.gen)), "w")
        self.p = subprocess.Popen(self.prefix + [BIN] + self.argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        out.close()
        with open(os.path.join(TMP, "pids"), "a") as f:  # the calling script's cleanup kills these
            f.write("%d\n" % self.p.pid)

        def up():
            if self.p.poll() is not None:
                fail("%s exited (%s): %s" % (self.name, self.p.returncode, self.tail()))
            st, _ = http_get(self.host, self.port, ready, timeout=1)
            return st == 200
        wait_for(up, timeout, "%s healthy" % self.name)
        return self

    def tail(self, n=int(os.environ.get("FAULT_TAIL", "8"))):
        try:
            with open(os.path.join(TMP, "%s.%d.log" % (self.name, self.gen))) as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def alive(self):
        return self.p is not None and self.p.poll() is None

    def signal(self, sig):
        self.p.send_signal(sig)
        if sig == signal.SIGKILL:
            self.p.wait()

    def stop(self):
        if self.alive():
            try:
                self.p.send_signal(signal.SIGCONT)
            except OSError:
                pass
            self.p.kill()
            self.p.wait()

    @staticmethod
    def stop_all():
        for p in Proc.all:
            p.stop()


def http_get(host, port, path, timeout=5):
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        body = r.read()
        try:
            return r.status, json.loads(body)
        except ValueError:
            return r.status, body.decode(errors="replace")
    finally:
        c.close()


def server(name, model=None, mode=None, backend="tcp", boot=None, delay=0, extra=(), prefix=(), host="127.0.0.1",
           port=None, max_total=4096):
    port = port or free_port()
    argv = ["server", "--model-path", model or MODEL, "--host", host, "--port", str(port),
            "--max-total-tokens", str(max_total), "--chunked-prefill-size", str(CHUNK)]
    if mode:
        argv += ["--disaggregation-mode", mode, "--disaggregation-transfer-backend", backend]
    if mode == "prefill":
        argv += ["--disaggregation-bootstrap-port", str(boot)]
    argv += list(extra)
    env = {"PDSERVE_TEST_STEP_DELAY_MS": str(delay)} if delay else {}
    p = Proc(name, argv, port, env=env, prefix=prefix, host=host)
    p.boot = boot
    p.boot_host = host
    for _ in range(4):
        # a free port can be taken by a process of another test before we
        # bind it: on a first start that failed to listen, take new ports
        try:
            return p.start()
        except Fail:
            t = p.tail(40)
            if p.gen != 1 or p.alive() or ("cannot listen" not in t and "Address already in use" not in t):
                raise
        p.gen = 0
        new = free_port()
        p.argv[p.argv.index("--port") + 1] = str(new)
        p.port = new
        if mode == "prefill":
            p.boot = free_port()
            p.argv[p.argv.index("--disaggregation-bootstrap-port") + 1] = str(p.boot)
    return p.start()


# ---------------------------------------------------------------- counters

def stats(p):
    st, info = http_get(p.host, p.port, "/get_server_info")
    if st != 200:
        fail("%s: /get_server_info %d" % (p.name, st))
    e = info["engine_stats"]
    d = info.get("disaggregation", {})
    return e, d


def at_baseline(p):
    e, d = stats(p)
    ok = (e["running"] == 0 and e["waiting"] == 0 and e["pages_free"] + e["pages_cached"] == e["pages_total"]
          and d.get("rooms_live", 0) == 0)
    return ok, {"running": e["running"], "waiting": e["waiting"], "pages_used": e["pages_used"],
                "rooms_live": d.get("rooms_live", 0)}


def pages_back(procs, what, timeout=None):
    timeout = timeout or max(5.0, HB * 10)
    for p in procs:
        if not p.alive():
            continue
        end = time.time() + timeout
        while True:
            ok, s = at_baseline(p)
            if ok:
                break
            if time.time() > end:
                fail("%s: %s not back to baseline after %.1f s: %s" % (what, p.name, timeout, s))
            time.sleep(0.03)


# ---------------------------------------------------------------- clients

class Answer:
    """What one HTTP client saw: status, body or SSE events, how it ended."""

    def __init__(self):
        self.status = None
        self.body = None
        self.events = []      # parsed SSE data objects, in order
        self.done = 0         # [DONE] count
        self.after_done = 0   # events after [DONE]
        self.broken = None    # connection error text
        self.t_end = None
        self.first_event = threading.Event()

    def terminal(self):
        """'ok', 'error', 'broken' - or fails when the answer is not one terminal answer."""
        if self.broken is not None:
            return "broken"
        if self.status is None:
            return None
        if self.events or self.done:
            if self.done != 1 or self.after_done:
                fail("stream ended %d times, %d events after [DONE]" % (self.done, self.after_done))
            # one terminal answer: exactly one finish chunk or error event, last;
            # a choice that finished with an error renders its finish chunk
            # (finish_reason type "error") and then the stream's error event
            fin = [e for e in self.events if (e.get("meta_info") or {}).get("finish_reason")]
            errs = [e for e in self.events if "error" in e]
            if len(errs) > 1 or len(fin) > 1 or (errs and errs[0] is not self.events[-1]) or \
                    (fin and not errs and fin[0] is not self.events[-1]) or not (fin or errs):
                fail("stream is not one terminal answer: %d finish, %d error events: %s" %
                     (len(fin), len(errs), self.events[-3:]))
            if fin:
                ftype = fin[0]["meta_info"]["finish_reason"].get("type")
                if (ftype == "error") != bool(errs):
                    fail("finish type %s with %d error events" % (ftype, len(errs)))
                if errs and self.events.index(fin[0]) != len(self.events) - 2:
                    fail("events between the error finish and the error event")
            if errs:
                return "error"
            if ftype == "abort":
                return "error"
            return "ok"
        if self.status == 200:
            return "ok"
        if not (isinstance(self.body, dict) and "message" in self.body.get("error", {})):
            fail("error %d without an OpenAI-style body: %r" % (self.status, self.body))
        return "error"

    def ids(self):
        if self.events:
            return self.events[-1].get("output_ids")
        return self.body.get("output_ids")

    def message(self):
        if self.broken is not None:
            return "connection: " + self.broken
        if self.events and "error" in self.events[-1]:
            return self.events[-1]["error"].get("message")
        if isinstance(self.body, dict) and "error" in self.body:
            return self.body["error"].get("message")
        return None


def request(host, port, path, body, timeout, ans=None, sock_out=None):
    """POST body; fill an Answer. Streams are read event by event and every
    event's output_ids must extend the previous one's (no dup, no loss)."""
    ans = ans or Answer()
    data = json.dumps(body).encode()
    try:
        s = socket.create_connection((host, port), timeout=timeout)
        if sock_out is not None:
            sock_out.append(s)
        s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                  b"Connection: close\r\n\r\n" % (path.encode(), len(data)) + data)
        f = s.makefile("rb")
        line = f.readline()
        if not line:
            raise ConnectionError("closed before the status line")
        ans.status = int(line.split()[1])
        hdr = {}
        while True:
            line = f.readline()
            if not line:
                raise ConnectionError("closed in the headers")
            if line in (b"\r\n", b"\n"):
                break
            k, _, v = line.decode().partition(":")
            hdr[k.strip().lower()] = v.strip()
        chunked = hdr.get("transfer-encoding", "").lower() == "chunked"
        if "text/event-stream" in hdr.get("content-type", ""):
            buf = b""
            prev = []
            for raw in read_body(f, hdr, chunked):
                buf += raw
                while b"\n\n" in buf:
                    ev, buf = buf.split(b"\n\n", 1)
                    ev = ev.strip()
                    if not ev.startswith(b"data:"):
                        continue
                    payload = ev[5:].strip()
                    if payload == b"[DONE]":
                        ans.done += 1
                        continue
                    if ans.done:
                        ans.after_done += 1
                    o = json.loads(payload)
                    ids = o.get("output_ids")
                    if ids is not None:
                        if ids[:len(prev)] != prev or len(ids) < len(prev):
                            fail("stream ids not an extension: %s then %s" % (prev, ids))
                        prev = ids
                    ans.events.append(o)
                    ans.first_event.set()
            if ans.done == 0:
                raise ConnectionError("stream closed without [DONE] after %d events" % len(ans.events))
        else:
            body_b = b"".join(read_body(f, hdr, chunked))
            ans.body = json.loads(body_b) if body_b else {}
        s.close()
    except (OSError, ValueError, http.client.HTTPException) as e:
        ans.broken = "%s: %s" % (type(e).__name__, e)
    ans.t_end = time.time()
    ans.first_event.set()
    return ans


def read_body(f, hdr, chunked):
    if chunked:
        while True:
            line = f.readline()
            if not line:
                raise ConnectionError("closed mid-body (chunked)")
            n = int(line.split(b";")[0], 16)
            if n == 0:
                f.readline()
                return
            data = f.read(n)
            if len(data) < n:
                raise ConnectionError("closed mid-chunk")
            f.readline()
            yield data
    elif "content-length" in hdr:
        n = int(hdr["content-length"])
        data = f.read(n)
        if len(data) < n:
            raise ConnectionError("closed mid-body")
        yield data
    else:
        while True:
            data = f.read1(65536)
            if not data:
                return
            yield data


def prompt(n_words, seed):
    r = random.Random(seed)
    return " ".join(r.choice(WORDS) for _ in range(n_words))


def gen_body(text, n, stream, room=None, boot=None, host="127.0.0.1"):
    b = {"text": text, "stream": stream,
         "sampling_params": {"max_new_tokens": n, "temperature": 0, "ignore_eos": True}}
    if boot is not None:
        b.update(bootstrap_host=host, bootstrap_port=boot, bootstrap_room=room)
    return b


WANT = {}


def unified_ids(u, text, n):
    key = (text, n)
    if key not in WANT:
        a = request(u.host, u.port, "/generate", gen_body(text, n, False), 60)
        if a.terminal() != "ok":
            fail("unified reference failed: %s" % a.message())
        WANT[key] = a.ids()
    return WANT[key]


class PD:
    """Both halves of one PD request, sent the way the router sends them;
    the prefill's half may be held back (phase 'before')."""

    def __init__(self, p, d, text, n, stream, timeout, hold_prefill=False):
        self.room = random.getrandbits(63)
        self.body = gen_body(text, n, stream, self.room, p.boot, p.boot_host)
        self.p, self.d, self.text, self.n, self.timeout = p, d, text, n, timeout
        self.a = {"p": Answer(), "d": Answer()}
        self.socks = {"p": [], "d": []}
        self.th = {}
        self.t0 = time.time()
        self.go("d")
        if not hold_prefill:
            self.go("p")

    def go(self, k):
        srv = self.p if k == "p" else self.d
        self.th[k] = threading.Thread(target=request, daemon=True,
                                      args=(srv.host, srv.port, "/generate", self.body, self.timeout, self.a[k],
                                            self.socks[k]))
        self.th[k].start()

    def hang_up(self, halves=("p", "d")):
        for k in halves:
            for s in self.socks[k]:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def join(self, deadline):
        for k, t in self.th.items():
            t.join(max(0.0, deadline - time.time()))
            if t.is_alive():
                fail("%s half: no terminal answer within %.1f s (hang)" % (k, deadline - self.t0))

    def check(self, u, killed=(), hung_up=False, want_ok=()):
        """Guarantees 1 and 2 on both halves. killed: halves whose server
        died (a broken connection is their terminal answer). Returns the
        decode half's outcome."""
        out = {}
        for k in ("p", "d"):
            if k not in self.th:
                continue
            a = self.a[k]
            t = a.terminal()
            if t is None:
                fail("%s half: no answer" % k)
            if t == "broken" and k not in killed and not hung_up:
                fail("%s half: connection broke but its server is alive: %s" % (k, a.broken))
            if k in want_ok and t != "ok":
                fail("%s half: want success, got %s (%s)" % (k, t, a.message()))
            if t == "ok":
                want = unified_ids(u, self.text, self.n)
                got = a.ids()
                if k == "d" and got != want:
                    fail("decode half: PD ids %s != unified %s" % (got, want))
                if k == "p" and got != want[:1]:
                    fail("prefill half: first token %s != unified %s" % (got, want[:1]))
            out[k] = t
        return out


# ---------------------------------------------------------------- phases

def prompt_tokens(p):
    return stats(p)[0]["prompt_tokens"]


def wait_phase(pd, phase, base_ptok):
    """Block until pd is in phase; base_ptok: the prefill's prompt_tokens before."""
    if phase == "before":
        # ROOM_DEST reached the prefill (its room is live there), nothing computed
        wait_for(lambda: stats(pd.p)[1]["rooms_live"] >= 1 and stats(pd.d)[1]["rooms_live"] >= 1, 5,
                 "room bootstrapped on both sides")
        if prompt_tokens(pd.p) != base_ptok:
            fail("phase before: the prefill already computed")
    elif phase == "during":
        wait_for(lambda: prompt_tokens(pd.p) - base_ptok >= 2 * CHUNK, 10, "two chunks exported")
        if pd.a["d"].events or pd.a["d"].t_end:
            fail("phase during: the decode already answered")
    elif phase == "after":
        # transfer done, decode streaming (or, non-streamed, computing)
        if pd.body["stream"]:
            wait_for(lambda: len(pd.a["d"].events) >= 2, 10, "decode streaming")
        else:
            wait_for(lambda: stats(pd.d)[0]["generation_tokens"] >= 2 + pd.base_gen, 10, "decode generating")
        if pd.th["p"].is_alive():
            pd.th["p"].join(2)
    else:
        raise ValueError(phase)


def start_pd(u, p, d, phase, stream, n=64, words=None):
    words = words or 200
    base = prompt_tokens(p)
    text = prompt(words, 77 + len(WANT))
    unified_ids(u, text, n)
    pd = PD(p, d, text, n, stream, timeout=HB * 30 + 10, hold_prefill=(phase == "before"))
    pd.base_gen = stats(d)[0]["generation_tokens"]
    wait_phase(pd, phase, base)
    return pd


def serve_once(u, p, d, what, stream=True):
    text = prompt(40, 1234)
    want = unified_ids(u, text, 16)
    pd = PD(p, d, text, 16, stream, timeout=20)
    pd.join(time.time() + 20)
    o = pd.check(u, want_ok=("p", "d"))
    if pd.a["d"].ids() != want:
        fail("%s: ids differ" % what)
    return o


# ---------------------------------------------------------------- cases

MAXF = float(os.environ.get("SGLANG_DISAGGREGATION_HEARTBEAT_MAX_FAILURE", "2"))
DEAD = HB * MAXF  # a silent peer is dead after this


def pair(backend, delay=True, suffix="", extra_p=(), extra_d=(), prefix_p=(), prefix_d=(), host_p="127.0.0.1",
         host_d="127.0.0.1", boot=None):
    boot = boot or free_port()
    p = server("P%s%s" % (backend, suffix), mode="prefill", backend=backend, boot=boot,
               delay=PREFILL_DELAY_MS if delay else 0, extra=extra_p, prefix=prefix_p, host=host_p)
    d = server("D%s%s" % (backend, suffix), mode="decode", backend=backend, delay=DECODE_DELAY_MS if delay else 0,
               extra=extra_d, prefix=prefix_d, host=host_d)
    return p, d


def restart(proc):
    proc.stop()
    proc.start()


def case_kill(u, p, d, victim, phase, stream):
    pd = start_pd(u, p, d, phase, stream)
    vic = p if victim == "prefill" else d
    t_kill = time.time()
    vic.signal(signal.SIGKILL)
    if phase == "before" and victim == "decode":
        pd.go("p")  # the prefill's half arrives after its decode died
    pd.join(t_kill + DEAD + 8)
    killed = ("p",) if victim == "prefill" else ("d",)
    want_ok = ()
    if victim == "prefill" and phase == "after":
        want_ok = ("d",)   # the transfer was over: the decode finishes on its own
    if victim == "decode" and phase == "after":
        want_ok = ("p",)   # the prefill had already answered
    o = pd.check(u, killed=killed, want_ok=want_ok)
    other = "d" if victim == "prefill" else "p"
    if other in o and other not in want_ok:
        if o[other] != "error":
            fail("%s half: want an error after its peer died, got %s" % (other, o[other]))
        el = pd.a[other].t_end - t_kill
        if el > DEAD + 2.0:
            fail("%s half answered %.2f s after the kill (heartbeat window %.1f s)" % (other, el, DEAD))
    pages_back([p, d], "after killing the %s %s the transfer" % (victim, phase))
    restart(vic)
    pages_back([p, d], "after restarting the %s" % victim)
    serve_once(u, p, d, "after restarting the %s" % victim)
    return "%s %s: %s" % (other, "ok" if other in want_ok else "error", pd.a[other].message() or "")


def case_stop(u, p, d, victim, stream, backend):
    """SIGSTOP a peer mid-transfer: the other side gives up within the
    heartbeat window; after SIGCONT every answer is final and pages return.
    shm/ucx with a stopped prefill: the prefill writes into the decode's
    memory itself, so the decode holds the room's pages (its client has its
    error already) while that prefill process lives and has not confirmed,
    on a new connection, that it writes the room no more (docs/PROTOCOL.md
    6): checked; then one request through the pair opens that connection
    and the pages must come back without a restart."""
    pd = start_pd(u, p, d, "during", stream)
    vic = p if victim == "prefill" else d
    other = "d" if victim == "prefill" else "p"
    t0 = time.time()
    vic.signal(signal.SIGSTOP)
    try:
        pd.th[other].join(DEAD + 5)
        if pd.th[other].is_alive():
            fail("%s half: no answer %.1f s after its peer stopped" % (other, time.time() - t0))
        el = pd.a[other].t_end - t0
    finally:
        vic.signal(signal.SIGCONT)
    pd.join(time.time() + DEAD + 8)
    o = pd.check(u)
    if o[other] != "error":
        fail("%s half: want an error while its peer is stopped, got %s" % (other, o[other]))
    note = ""
    if backend in ("shm", "ucx"):
        # A resumed decode may also judge the prefill silent (its heartbeat
        # clock ran while it was stopped) before it reads the prefill's
        # close, and hold that room the same way.
        if victim == "prefill":
            pages_back([p], "after SIGSTOP/SIGCONT of the prefill")
        time.sleep(DEAD)
        ok, st = at_baseline(d)
        if victim == "prefill" and (ok or st["rooms_live"] != 1):
            fail("decode should hold exactly the quarantined room: %s" % st)
        if not ok:
            if st["rooms_live"] != 1 or st["running"] or st["waiting"]:
                fail("decode should hold at most the one room: %s" % st)
            serve_once(u, p, d, "the prefill back on a new connection")
            note = "; decode held %d pages until the live prefill confirmed on a new connection" % st["pages_used"]
    pages_back([p, d], "after SIGSTOP/SIGCONT of the %s" % victim)
    serve_once(u, p, d, "after SIGCONT of the %s" % victim)
    return "%s answered %.2f s after the stop (%s); stopped side: %s%s" % (other, el, pd.a[other].message(),
                                                                          o[victim[0]], note)


def case_client(u, p, d, phase, stream, halves=("p", "d")):
    """The client leaves: both halves' connections close (the router's
    client left), or only one half's (its other half must then end with an
    error: the room is failed towards the peer)."""
    pd = start_pd(u, p, d, phase, stream)
    pd.hang_up(halves)
    pd.join(time.time() + DEAD + 8)
    o = pd.check(u, hung_up=True)
    for k in ("p", "d"):
        if k not in halves and o.get(k) not in (None, "error"):
            fail("%s half: want an error after the other half's client left, got %s" % (k, o[k]))
    pages_back([p, d], "after the client left %s the transfer" % phase)
    serve_once(u, p, d, "after the client left")
    return "pages back" + ("" if len(halves) == 2 else "; other half: %s" % pd.a["d" if halves == ("p",) else "p"].message())


def run(name, fn, *args):
    t0 = time.time()
    msg = fn(*args)
    log("ok: %s (%.1f s): %s" % (name, time.time() - t0, msg))


def pd_matrix(which, backends):
    u = server("U")
    for bi, b in enumerate(backends):
        p, d = pair(b)
        i = bi
        if which == "kill":
            for victim in ("prefill", "decode"):
                for phase in ("before", "during", "after"):
                    stream = i % 2 == 0
                    i += 1
                    run("%s: %s killed %s the transfer (%s)" % (b, victim, phase, "stream" if stream else "plain"),
                        case_kill, u, p, d, victim, phase, stream)
        elif which == "stop":
            for victim in ("prefill", "decode"):
                stream = i % 2 == 0
                i += 1
                run("%s: %s stopped (SIGSTOP) mid-transfer (%s)" % (b, victim, "stream" if stream else "plain"),
                    case_stop, u, p, d, victim, stream, b)
        elif which == "client":
            for phase in ("before", "during", "after"):
                for stream in (True, False):
                    run("%s: client left %s the transfer (%s)" % (b, phase, "stream" if stream else "plain"),
                        case_client, u, p, d, phase, stream)
            for halves in (("p",), ("d",)):
                run("%s: only the %s half's client left during the transfer" % (b, "prefill" if halves == ("p",) else "decode"),
                    case_client, u, p, d, "during", True, halves)
        p.stop()
        d.stop()


def router(p, d):
    port = free_port()
    r = Proc("R", ["router", "--prefill", "http://%s:%d" % (p.host, p.port), str(p.boot), "--decode",
                   "http://%s:%d" % (d.host, d.port), "--port", str(port), "--health-check-interval-secs", "0.2",
                   "--policy", "round_robin"], port)
    return r.start()


def case_router(u, p, d, backend):
    """Router SIGKILLed under load, then restarted on its port: every client
    request completes (equal to unified) or breaks at the client (the router
    itself died); the workers' pages come back; after the restart all serve."""
    r = router(p, d)
    texts = [prompt(40 + 7 * i, 900 + i) for i in range(6)]
    for t in texts:
        unified_ids(u, t, 32)
    answers, stop = [], threading.Event()
    lock = threading.Lock()

    def client(i):
        k = 0
        while not stop.is_set():
            body = gen_body(texts[i], 32, (i + k) % 2 == 0)
            a = request(r.host, r.port, "/generate", body, 30)
            with lock:
                answers.append((texts[i], a))
            k += 1
    ths = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(6)]
    [t.start() for t in ths]
    wait_for(lambda: len(answers) >= 6, 20, "requests through the router")
    wait_for(lambda: stats(d)[0]["running"] >= 2, 5, "requests in flight on the decode")
    stop.set()  # the requests in flight go on; no new ones
    r.signal(signal.SIGKILL)
    [t.join(15) for t in ths]
    if any(t.is_alive() for t in ths):
        fail("a client hung after the router died")
    n = {"ok": 0, "broken": 0}
    for text, a in answers:
        t = a.terminal()
        if t not in n:
            fail("through the router: %s (%s)" % (t, a.message()))
        if t == "ok" and a.ids() != unified_ids(u, text, 32):
            fail("through the router: ids %s != unified" % a.ids())
        n[t] += 1
    if n["broken"] == 0:
        fail("no request was in flight when the router died")
    pages_back([p, d], "after the router died")
    r.start()
    for i in range(4):
        a = request(r.host, r.port, "/generate", gen_body(texts[i], 32, i % 2 == 0), 30)
        if a.terminal() != "ok" or a.ids() != unified_ids(u, texts[i], 32):
            fail("after the router restarted: %s %s" % (a.terminal(), a.message()))
    pages_back([p, d], "after the router restarted")
    r.stop()
    return "%d completed, %d broken at the client; restarted router serves" % (n["ok"], n["broken"])


def case_pool(u, backend):
    """KV pool exhausted on the decode: 8 requests that together need ~3x its
    pages all succeed (admission waits: back-pressure, not failure)."""
    p = server("Pp" + backend, mode="prefill", backend=backend, boot=free_port())
    d = server("Dp" + backend, mode="decode", backend=backend, max_total=512)
    texts = [prompt(70, 500 + i) for i in range(8)]
    for t in texts:
        unified_ids(u, t, 48)
    pds = [PD(p, d, t, 48, i % 2 == 0, timeout=30) for i, t in enumerate(texts)]
    peak = queued = 0
    while any(th.is_alive() for pd in pds for th in pd.th.values()):
        e = stats(d)[0]
        peak = max(peak, e["pages_used"])
        queued = max(queued, e["waiting"])
        time.sleep(0.005)
    if not queued:
        fail("no request waited for decode pages: the case did not exhaust the pool")
    waited = 0
    for pd in pds:
        pd.join(time.time() + 1)
        pd.check(u, want_ok=("p", "d"))
        if not pd.body["stream"]:
            waited += pd.a["d"].body["meta_info"]["pd"]["decode_admission_wait"] > 0
    total = stats(d)[0]["pages_total"]
    pages_back([p, d], "after the pool was exhausted")
    p.stop()
    d.stop()
    return "8 requests ok on a %d-page pool (peak %d used, up to %d waiting for pages); %d of 4 non-streamed " \
        "report an admission wait" % (total, peak, queued, waited)


def case_model(u, backend):
    """The prefill restarted with a different model: the handshake refuses
    (the decode's client gets an error naming it, the prefill's half times
    out on its bootstrap), pages come back, and with the right model back
    the same decode serves again."""
    p, d = pair(backend, delay=False, suffix="m")
    serve_once(u, p, d, "before the model change")
    p.stop()
    good = p.argv[:]
    p.argv[p.argv.index("--model-path") + 1] = os.environ["FAULT_MODEL2"]
    p.start()
    text = prompt(20, 4321)
    pd = PD(p, d, text, 8, True, timeout=20)
    pd.join(time.time() + float(os.environ["SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT"]) + 5)
    o = pd.check(u)
    if o["d"] != "error" or "mismatch: model" not in (pd.a["d"].message() or "") or \
            not (pd.a["d"].message() or "").endswith("(different GGUF files)"):
        fail("decode: want a handshake refusal naming the model, got %s: %s" % (o["d"], pd.a["d"].message()))
    if o["p"] != "error":
        fail("prefill half: want an error, got %s" % o["p"])
    pages_back([p, d], "after the refused handshake")
    p.stop()
    p.argv = good
    p.start()
    serve_once(u, p, d, "with the right model back")
    p.stop()
    d.stop()
    return "decode: %s; prefill half: %s" % (pd.a["d"].message(), pd.a["p"].message())


def routed_once(u, r, stream, what):
    text = prompt(40, 1234)
    b = request(r.host, r.port, "/generate", gen_body(text, 16, stream), 30)
    if b.terminal() != "ok" or b.ids() != unified_ids(u, text, 16):
        fail("through the router %s: %s %s" % (what, b.terminal(), b.message()))


def case_router_worker(u, p, d, r, victim, stream):
    """A worker SIGKILLed while the router streams (or waits for) its answer:
    the client gets one error (an SSE error event and [DONE], or an error
    body), the survivor's pages come back, and once the worker is restarted
    the router serves through it again."""
    text = prompt(200, 31337 + stream + (victim == "prefill") * 2)
    unified_ids(u, text, 64)
    base = prompt_tokens(p)
    a = Answer()
    th = threading.Thread(target=request, args=(r.host, r.port, "/generate", gen_body(text, 64, stream), 30, a),
                          daemon=True)
    th.start()
    if victim == "decode":  # mid-stream: the transfer is over
        if stream:
            wait_for(lambda: len(a.events) >= 2, 10, "router streaming")
        else:
            wait_for(lambda: stats(d)[0]["generation_tokens"] >= 2, 10, "decode generating")
    else:  # mid-transfer
        wait_for(lambda: prompt_tokens(p) - base >= 2 * CHUNK, 10, "two chunks exported")
    vic = d if victim == "decode" else p
    t0 = time.time()
    vic.signal(signal.SIGKILL)
    th.join(DEAD + 8)
    if th.is_alive():
        fail("no answer through the router %.1f s after the %s died" % (time.time() - t0, victim))
    t = a.terminal()
    if t != "error":
        fail("through the router: want an error, got %s (%s)" % (t, a.message()))
    if stream and victim == "decode" and not a.events:
        fail("streamed: want the error inside the stream it broke")
    msg = a.message()
    pages_back([p, d], "after the %s died under the router" % victim)
    vic.start()
    wait_for(lambda: http_get(r.host, r.port, "/health")[0] == 200, 10, "router sees the %s again" % victim)
    routed_once(u, r, stream, "after the %s restarted" % victim)
    pages_back([p, d], "after the %s came back" % victim)
    return msg


def case_router_client(u, p, d, r, phase, stream):
    """The client leaves the router during the transfer or mid-stream: the
    router closes both upstream requests, both workers free the pages."""
    text = prompt(200, 4242 + stream + (phase == "after") * 2)
    base = prompt_tokens(p)
    a, socks = Answer(), []
    th = threading.Thread(target=request, args=(r.host, r.port, "/generate", gen_body(text, 64, stream), 30, a, socks),
                          daemon=True)
    th.start()
    if phase == "during":
        wait_for(lambda: prompt_tokens(p) - base >= 2 * CHUNK, 10, "two chunks exported")
    elif stream:
        wait_for(lambda: len(a.events) >= 2, 10, "router streaming")
    else:
        wait_for(lambda: stats(d)[0]["generation_tokens"] >= 2, 10, "decode generating")
    wait_for(lambda: socks, 2, "client socket")
    socks[0].shutdown(socket.SHUT_RDWR)
    th.join(5)
    pages_back([p, d], "after the client left the router %s the transfer" % phase)
    routed_once(u, r, stream, "after a client left")
    return "pages back on both workers"


def main_router(backends):
    u = server("U")
    for b in backends:
        p, d = pair(b, delay=False, suffix="r")
        run("%s: router killed under load and restarted" % b, case_router, u, p, d, b)
        p.stop()
        d.stop()
        p, d = pair(b, suffix="w")
        r = router(p, d)
        for phase in ("during", "after"):
            for stream in (True, False):
                run("%s: client left the router %s the transfer (%s)" % (b, phase, "stream" if stream else "plain"),
                    case_router_client, u, p, d, r, phase, stream)
        for i, victim in enumerate(("decode", "prefill")):
            for stream in (True, False):
                run("%s: %s killed under the router (%s)" % (b, victim, "stream" if stream else "plain"),
                    case_router_worker, u, p, d, r, victim, stream)
        r.stop()
        p.stop()
        d.stop()


def main_pool(backends):
    u = server("U")
    for b in backends:
        run("%s: decode KV pool exhausted" % b, case_pool, u, b)


def main_model(backends):
    u = server("U")
    for b in backends:
        run("%s: prefill restarted with a different model" % b, case_model, u, b)


def case_partition(u, p, d, backend):
    """The link between the prefill's and the decode's namespaces dropped
    mid-transfer (the client still reaches both): both halves end with an
    error within the heartbeat window; after the link is back both
    processes live, the pages return without a restart (ucx, on UCX's tcp:
    closing the connection's UCX worker cuts the prefill off from the
    decode's pool, so the decode need not hold them until the prefill exits)
    and the pair serves again."""
    link = ["ip", "-n", os.environ["NS_P"], "link", "set", os.environ["KV_DEV"]]
    pd = start_pd(u, p, d, "during", backend == "tcp")
    t0 = time.time()
    subprocess.check_call(link + ["down"])
    try:
        pd.join(t0 + DEAD + 8)
        o = pd.check(u)
    finally:
        subprocess.check_call(link + ["up"])
        # UCX only lists an interface once it is operationally up again
        show = ["ip", "-n", os.environ["NS_P"], "link", "show", os.environ["KV_DEV"]]
        wait_for(lambda: b"state UP" in subprocess.check_output(show), 5, "link back up")
    for k in ("p", "d"):
        el = pd.a[k].t_end - t0
        if o[k] != "error" or el > DEAD + 2:
            fail("%s half: want an error within %.1f s of the partition, got %s after %.2f s" % (k, DEAD + 2, o[k], el))
    pages_back([p, d], "after the partition healed")
    time.sleep(0.5)  # late retransmissions arrive; the processes must survive them
    for x in (p, d):
        if not x.alive():
            fail("%s died after the partition healed" % x.name)
    serve_once(u, p, d, "after the partition healed")
    return "decode: %s (%.2f s); prefill: %s" % (pd.a["d"].message(), pd.a["d"].t_end - t0, pd.a["p"].message())


def main_partition(backends):
    """Run inside the client's namespace; servers in NS_P / NS_D listen on
    every address of their namespace, HTTP is reached over the bridge and
    KV goes over the direct P-D link (KV_DEV, prefill at KV_P_IP)."""
    e = os.environ
    u = server("U", host=e["C_IP"])
    for b in backends:
        extra_env = {"UCX_TLS": "tcp", "UCX_NET_DEVICES": e["KV_DEV"]} if b == "ucx" else {}
        os.environ.update(extra_env)
        p = server("Pn" + b, mode="prefill", backend=b, boot=free_port(), delay=PREFILL_DELAY_MS,
                   prefix=["ip", "netns", "exec", e["NS_P"]], host=e["P_IP"], extra=["--host", "0.0.0.0"])
        p.boot_host = e["KV_P_IP"]
        d = server("Dn" + b, mode="decode", backend=b, delay=DECODE_DELAY_MS,
                   prefix=["ip", "netns", "exec", e["NS_D"]], host=e["D_IP"], extra=["--host", "0.0.0.0"])
        serve_once(u, p, d, "across namespaces")
        run("%s: partition between the prefill and decode namespaces mid-transfer" % b, case_partition, u, p, d, b)
        p.stop()
        d.stop()
        for k in extra_env:
            del os.environ[k]


def main():
    which, backends = sys.argv[1], sys.argv[2:]
    try:
        if which in ("kill", "stop", "client"):
            pd_matrix(which, backends)
        else:
            globals()["main_" + which](backends)
    except Fail as e:
        print("FAIL: %s" % e, file=sys.stderr)
        for p in Proc.all:
            print("--- %s (gen %d, %s)\n%s" % (p.name, p.gen, "alive" if p.alive() else "dead", p.tail()),
                  file=sys.stderr)
        Proc.stop_all()
        sys.exit(1)
    Proc.stop_all()
    # a sanitizer build (make check) reports into the servers' logs
    for p in Proc.all:
        for g in range(1, p.gen + 1):
            try:
                with open(os.path.join(TMP, "%s.%d.log" % (p.name, g)), errors="replace") as f:
                    text = f.read()
            except OSError:
                continue
            for bad in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
                if bad in text:
                    print("FAIL: %s (run %d): %s\n%s" % (p.name, g, bad, text[text.index(bad) - 200:][:3000]),
                          file=sys.stderr)
                    sys.exit(1)


if __name__ == "__main__":
    main()
