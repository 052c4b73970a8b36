#!/usr/bin/env python3
"""soak.py - the soak driver behind tests/soak/soak.sh (read its header first).

One process, standard library only. Threads:
- sampler: every SAMPLE_S, VmRSS/VmHWM/threads (/proc/PID/status) and open
  fds of the router and of each worker's current process; a restarted worker
  starts a new series (NAME#GEN);
- bench loop: `pdserve bench serving` runs of BATCH_S each, back to back,
  cycling streaming chat (openai-chat), streaming /generate (sglang) and
  non-streaming completions (openai, --disable-stream); random dataset,
  Poisson arrivals;
- side client: raw-socket requests that the client abandons (a stream closed
  after a few events; a non-streaming request closed before its answer) and
  plain non-streaming chat requests that must succeed;
- restarter: every RESTART_S, one worker killed (the decode D1 and the
  prefill P in turn, SIGTERM and SIGKILL in turn) and started again on the
  same port; the window from the kill until the router routes to it again is
  recorded.

A failed request is "expected" when it overlaps a restart window (for bench
requests, whose failures carry no end time: started at most the run's longest
successful latency before the kill, or before the router took the worker back
plus GRACE_S); any other failure is "unexpected". At the end the load stops,
every worker must come back to idle (no running/waiting/importing request, no
page held, free + cached == total, and after POST /flush_cache free == total),
the router must hold nothing in flight, and every process must exit 0 on
SIGTERM. Then the RSS series are judged (bound in soak.sh's header), a table
is printed and samples.csv, restarts.csv, requests.csv and summary.json are
written to the results directory. Exit status: 0 pass, 1 fail.

`soak.py --selftest` checks the judging code on made-up series and windows
(a flat series passes, a leaking one fails, an error outside a window fails).
"""
import csv, http.client, json, os, random, signal, socket, subprocess, sys, threading, time

MiB = 1024 * 1024


# ---------------------------------------------------------------- judging

def rss_bound(first_kb):
    """Allowed growth (kB) of a series after warm-up: 5% of its first
    after-warm-up value plus 8 MiB (why: soak.sh's header)."""
    return 0.05 * first_kb + 8 * 1024


def judge_series(samples, born, warmup_s, min_samples):
    """samples: [(t, rss_kb)], t in seconds on the run's clock; born: the
    process's start. Returns a dict; 'checked' False when the series has fewer
    than min_samples after warm-up (too short to judge)."""
    warm = [(t, r) for t, r in samples if t - born >= warmup_s]
    out = {"samples": len(samples), "samples_after_warmup": len(warm),
           "rss_start_kb": samples[0][1] if samples else None,
           "rss_end_kb": samples[-1][1] if samples else None,
           "rss_max_kb": max(r for _, r in samples) if samples else None}
    if len(warm) < min_samples:
        out.update(checked=False, ok=True)
        return out
    first = warm[0][1]
    mx = max(r for _, r in warm)
    n = len(warm)
    mt = sum(t for t, _ in warm) / n
    mr = sum(r for _, r in warm) / n
    den = sum((t - mt) ** 2 for t, _ in warm)
    slope = sum((t - mt) * (r - mr) for t, r in warm) / den * 60 if den else 0.0
    out.update(checked=True, rss_warm_kb=first, rss_warm_max_kb=mx, growth_kb=mx - first,
               bound_kb=rss_bound(first), slope_kb_per_min=slope, ok=mx - first < rss_bound(first))
    return out


def error_kind(msg):
    if msg.startswith("HTTP "):
        return msg.split(":", 1)[0]
    return msg.split(":", 1)[0] or "unknown"


def in_window(t0, t1, windows, before=0.0, after=0.0):
    """Whether [t0, t1] overlaps some restart window widened by before/after."""
    return any(t0 <= w1 + after and t1 >= w0 - before for w0, w1 in windows)


def selftest():
    flat = [(t, 50000 + (t * 7919) % 900) for t in range(0, 600, 10)]
    leak = [(t, 50000 + 30 * t) for t in range(0, 600, 10)]     # 18 MiB over 10 min
    j = judge_series(flat, 0, 120, 3)
    assert j["checked"] and j["ok"], j
    j = judge_series(leak, 0, 120, 3)
    assert j["checked"] and not j["ok"] and j["growth_kb"] == 30 * 470, j
    assert judge_series(leak[:14], 0, 120, 3)["checked"] is False
    # growth before warm-up is not counted
    ramp = [(t, 20000 + 200 * min(t, 100)) for t in range(0, 600, 10)]
    assert judge_series(ramp, 0, 120, 3)["ok"]
    # a restarted series is judged from its own start
    assert judge_series([(t, 40000 + (t - 300) * 60) for t in range(300, 600, 10)], 300, 60, 3)["ok"] is False
    w = [(100.0, 110.0)]
    assert in_window(105, 105, w) and in_window(90, 101, w) and not in_window(120, 125, w)
    assert in_window(112, 112, w, after=3) and not in_window(80, 80, w, before=5)
    assert error_kind("HTTP 503: no healthy prefill") == "HTTP 503"
    assert error_kind("connection: Connection refused") == "connection"
    print("soak.py selftest: ok")


# ---------------------------------------------------------------- the run

class Soak:
    def __init__(self, env):
        self.bin = env["PDSERVE_BIN"]
        self.model = env["SOAK_MODEL"]
        self.res = env["SOAK_RESULTS"]
        self.dur = float(env.get("SOAK_MINUTES", "30")) * 60
        self.sample_s = float(env.get("SOAK_SAMPLE_S", "10"))
        self.warmup_s = float(env.get("SOAK_WARMUP_S") or max(30.0, min(180.0, 0.2 * self.dur)))
        self.restart_s = float(env.get("SOAK_RESTART_S") or max(45.0, self.dur / 8))
        self.rate = float(env.get("SOAK_RATE", "6"))
        self.batch_s = float(env.get("SOAK_BATCH_S", "30"))
        self.backend = env.get("SOAK_BACKEND", "tcp")
        self.max_tokens = int(env.get("SOAK_MAX_TOTAL_TOKENS", "8192"))
        self.min_samples = int(env.get("SOAK_MIN_SAMPLES", "3"))
        self.grace_s = 2.0
        # under ASan RSS holds the allocator's quarantine and shadow memory:
        # SOAK_RSS_CHECK=0 reports the series without judging them
        self.rss_check = env.get("SOAK_RSS_CHECK", "1") != "0"
        self.ports = {k: int(env["SOAK_PORT_" + k]) for k in ("R", "P", "BP", "D1", "D2")}
        os.makedirs(self.res + "/logs", exist_ok=True)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.t0 = time.time()
        self.procs = {}          # name -> dict(popen, gen, born)
        self.series = {}         # "NAME#GEN" -> dict(name, gen, pid, born, died, samples)
        self.windows = []        # [(t_kill, t_back)] on the run's clock
        self.restarts = []
        self.side = []           # side client's requests
        self.bench_runs = []     # (tag, t_launch, t_exit, rc)
        self.unexpected = []     # (kind, detail) found outside the request accounting
        self.expected_exit = set()

    def now(self):
        return time.time() - self.t0

    def log(self, msg):
        print("[%6.0f s] %s" % (self.now(), msg), flush=True)

    def problem(self, kind, detail):
        with self.lock:
            self.unexpected.append((kind, detail))
        self.log("UNEXPECTED: %s: %s" % (kind, detail))

    # ---------------------------------------------------------------- processes

    def args_for(self, name):
        p = self.ports
        if name == "R":
            return [self.bin, "router", "--host", "127.0.0.1", "--port", str(p["R"]), "--pd-disaggregation",
                    "--prefill-hosts", "http://127.0.0.1:%d@%d" % (p["P"], p["BP"]),
                    "--decode-hosts", "http://127.0.0.1:%d" % p["D1"], "http://127.0.0.1:%d" % p["D2"],
                    "--health-check-interval-secs", "1", "--health-check-timeout-secs", "2",
                    "--health-failure-threshold", "2", "--health-success-threshold", "1",
                    # cache_aware's trees (the default policy) grow by design up to
                    # --max-tree-size characters per worker (default 2^26, far more
                    # than 30 minutes of this load); a small cap is reached during
                    # warm-up, so what is checked is that eviction holds it
                    "--max-tree-size", "65536", "--eviction-interval-secs", "10"]
        a = [self.bin, "server", "--model-path", self.model, "--host", "127.0.0.1", "--port", str(p[name]),
             "--max-total-tokens", str(self.max_tokens), "--threads", "1",
             "--disaggregation-transfer-backend", self.backend]
        if name == "P":
            return a + ["--disaggregation-mode", "prefill", "--disaggregation-bootstrap-port", str(p["BP"])]
        return a + ["--disaggregation-mode", "decode"]

    def spawn(self, name, deadline_s=30):
        """Start NAME on its port (retrying while the port is still taken) and
        wait for /health. Returns True when healthy."""
        gen = self.procs[name]["gen"] + 1 if name in self.procs else 0
        end = time.time() + deadline_s
        while True:
            err = open("%s/logs/%s.%d.log" % (self.res, name, gen), "ab")
            pop = subprocess.Popen(self.args_for(name), stdout=err, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
            err.close()
            with open(self.res + "/pids", "a") as f:
                f.write("%d\n" % pop.pid)
            born = self.now()
            while time.time() < end:
                if pop.poll() is not None:
                    break
                try:
                    st, _ = self.get(self.ports[name], "/health", timeout=2)
                    if st == 200 or (name == "R" and st == 503):
                        with self.lock:
                            self.procs[name] = {"popen": pop, "gen": gen, "born": born}
                            self.series["%s#%d" % (name, gen)] = {"name": name, "gen": gen, "pid": pop.pid,
                                                                  "born": born, "died": None, "samples": []}
                        return True
                except OSError:
                    pass
                time.sleep(0.1)
            if pop.poll() is None:
                pop.kill()
                pop.wait()
                self.problem("start", "%s not healthy within %d s" % (name, deadline_s))
                return False
            if time.time() >= end:
                self.problem("start", "%s exited %s at start" % (name, pop.returncode))
                return False
            time.sleep(0.5)  # the port is still held: try again

    def get(self, port, path, timeout=10, method="GET", body=None):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            c.request(method, path, body=json.dumps(body) if body is not None else None,
                      headers={"Content-Type": "application/json"})
            r = c.getresponse()
            raw = r.read()
            return r.status, raw
        finally:
            c.close()

    def jget(self, port, path, **kw):
        st, raw = self.get(port, path, **kw)
        return st, json.loads(raw) if raw else None

    def router_workers(self):
        return {w["url"]: w for w in self.jget(self.ports["R"], "/workers")[1]["workers"]}

    def url(self, name):
        return "http://127.0.0.1:%d" % self.ports[name]

    def wait_routable(self, name, want, secs):
        end = time.time() + secs
        while time.time() < end:
            try:
                w = self.router_workers().get(self.url(name))
                if w and w["routable"] == want:
                    return True
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        return False

    # ---------------------------------------------------------------- sampler

    def sample_once(self):
        t = self.now()
        with self.lock:
            live = [(n, p) for n, p in self.procs.items()]
        for name, p in live:
            key = "%s#%d" % (name, p["gen"])
            pid = p["popen"].pid
            try:
                st = {}
                for line in open("/proc/%d/status" % pid):
                    k, _, v = line.partition(":")
                    st[k] = v.split()
                rss, hwm, thr = int(st["VmRSS"][0]), int(st["VmHWM"][0]), int(st["Threads"][0])
                anon, rfile = int(st["RssAnon"][0]), int(st["RssFile"][0]) + int(st["RssShmem"][0])
                fds = len(os.listdir("/proc/%d/fd" % pid))
                f = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
                cpu = (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
            except (OSError, KeyError, IndexError, ValueError):
                continue  # gone between the listing and the read (a restart)
            with self.lock:
                self.series[key]["samples"].append((t, rss, hwm, thr, fds, cpu, anon, rfile))

    def sampler(self):
        nxt = time.time()
        while not self.stop.is_set():
            self.sample_once()
            with self.lock:
                for name, p in self.procs.items():
                    if p["popen"].poll() is not None and (name, p["gen"]) not in self.expected_exit:
                        self.expected_exit.add((name, p["gen"]))  # report once
                        self.problem("crash", "%s#%d (pid %d) exited %s outside a restart" %
                                     (name, p["gen"], p["popen"].pid, p["popen"].returncode))
            nxt += self.sample_s
            self.stop.wait(max(0.0, nxt - time.time()))

    # ---------------------------------------------------------------- load

    def bench_loop(self):
        kinds = [("openai-chat", []), ("sglang", []), ("openai", ["--disable-stream"])]
        i = 0
        out = open(self.res + "/logs/bench.log", "ab")
        while not self.stop.is_set():
            backend, extra = kinds[i % len(kinds)]
            n = max(1, int(self.rate * self.batch_s))
            tag = "b%d" % i
            args = [self.bin, "bench", "serving", "--base-url", self.url("R"), "--backend", backend,
                    "--dataset-name", "random", "--random-input-len", "256", "--random-output-len", "96",
                    "--random-range-ratio", "0.25", "--num-prompts", str(n), "--request-rate", str(self.rate),
                    "--max-concurrency", "32", "--warmup-requests", "0", "--disable-tqdm", "--seed", str(i + 1),
                    "--tokenizer", self.model, "--model", "stories", "--timeout", "60", "--tag", tag,
                    "--output-file", self.res + "/bench.jsonl"] + extra
            out.write(("== %s %s\n" % (tag, " ".join(args[2:]))).encode())
            out.flush()
            t_launch = self.now()
            rc = subprocess.call(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            with self.lock:
                self.bench_runs.append((tag, t_launch, self.now(), rc))
            i += 1
        out.close()

    def raw_request(self, path, body, stream, abort_after_events=None, abort_after_s=None):
        """One request over a raw socket. Returns (outcome, detail): ok, aborted
        (we closed it on purpose) or an error kind."""
        data = json.dumps(body).encode()
        head = ("POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                "Content-Length: %d\r\nConnection: close\r\n\r\n" % (path, len(data))).encode()
        try:
            s = socket.create_connection(("127.0.0.1", self.ports["R"]), timeout=60)
        except OSError as e:
            return "connection", str(e)
        try:
            s.sendall(head + data)
            if abort_after_s is not None:
                s.settimeout(abort_after_s)
            buf = b""
            while True:
                try:
                    chunk = s.recv(65536)
                except socket.timeout:
                    if abort_after_s is not None:
                        return "aborted", "closed after %.2f s" % abort_after_s
                    return "timeout", "no answer in 60 s"
                if not chunk:
                    break
                buf += chunk
                if not buf.startswith(b"HTTP/1.1 200"):
                    continue
                if b'"error"' in buf.partition(b"\r\n\r\n")[2]:
                    return "error in stream", buf[-300:].decode(errors="replace")
                if abort_after_events is not None and buf.count(b"data: ") >= abort_after_events:
                    return "aborted", "closed after %d events" % abort_after_events
        except OSError as e:
            return "connection", str(e)
        finally:
            s.close()
        line = buf.split(b"\r\n", 1)[0].decode(errors="replace")
        if not line.startswith("HTTP/1.1 200"):
            return "HTTP " + (line.split(" ")[1] if " " in line else "?"), buf[-300:].decode(errors="replace")
        if stream and b"data: [DONE]" not in buf:
            return "stream cut", buf[-200:].decode(errors="replace")
        return "ok", ""

    def side_client(self):
        rnd = random.Random(7)
        words = "once upon a time there was a little girl named lily she loved to play in the park".split()
        while not self.stop.is_set():
            text = " ".join(rnd.choice(words) for _ in range(rnd.randint(5, 60)))  # + 300 < 512 tokens with the template
            k = rnd.randrange(3)
            t0 = self.now()
            if k == 0:
                want = "abort-stream"
                body = {"model": "x", "messages": [{"role": "user", "content": text}], "max_tokens": 300,
                        "stream": True, "ignore_eos": True}
                out = self.raw_request("/v1/chat/completions", body, True, abort_after_events=rnd.randint(1, 12))
            elif k == 1:
                want = "abort-nonstream"
                body = {"model": "x", "prompt": text, "max_tokens": 300, "ignore_eos": True}
                out = self.raw_request("/v1/completions", body, False, abort_after_s=rnd.uniform(0.002, 0.05))
            else:
                want = "nonstream-chat"
                body = {"model": "x", "messages": [{"role": "user", "content": text}], "max_tokens": 32}
                out = self.raw_request("/v1/chat/completions", body, False)
            with self.lock:
                self.side.append((want, t0, self.now(), out[0], out[1]))
            self.stop.wait(rnd.uniform(0.2, 1.0))

    # ---------------------------------------------------------------- restarts

    def restarter(self):
        plan = [("D1", signal.SIGTERM), ("P", signal.SIGKILL), ("D1", signal.SIGKILL), ("P", signal.SIGTERM)]
        i = 0
        while not self.stop.wait(max(0.0, (i + 1) * self.restart_s - self.now())):
            if self.now() > self.dur - 30:
                break  # leave the end of the run to settle
            name, sig = plan[i % len(plan)]
            i += 1
            with self.lock:
                p = self.procs[name]
                self.expected_exit.add((name, p["gen"]))
            pop = p["popen"]
            t_kill = self.now()
            self.log("restart %d: %s#%d (pid %d) %s" % (i, name, p["gen"], pop.pid, sig.name))
            pop.send_signal(sig)
            try:
                rc = pop.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.problem("restart", "%s did not exit within 20 s of %s" % (name, sig.name))
                pop.kill()
                rc = pop.wait()
            t_dead = self.now()
            with self.lock:
                self.series["%s#%d" % (name, p["gen"])]["died"] = t_dead
            if sig == signal.SIGTERM and rc != 0:
                self.problem("exit", "%s exited %d on SIGTERM (log: logs/%s.%d.log)" % (name, rc, name, p["gen"]))
            if not self.wait_routable(name, False, 15):
                self.problem("restart", "the router still routes to the dead %s after 15 s" % name)
            t_out = self.now()
            ok = self.spawn(name)
            t_up = self.now()
            if ok and not self.wait_routable(name, True, 30):
                self.problem("restart", "the router did not take %s back within 30 s" % name)
            t_back = self.now()
            with self.lock:
                self.windows.append((t_kill, t_back))
                self.restarts.append({"n": i, "worker": name, "signal": sig.name, "exit": rc, "t_kill": t_kill,
                                      "t_dead": t_dead, "t_unroutable": t_out, "t_healthy": t_up,
                                      "t_routable": t_back})
            self.log("restart %d: %s back after %.1f s (exit %d)" % (i, name, t_back - t_kill, rc))

    # ---------------------------------------------------------------- end

    def settle(self):
        """Workers idle and their pages back; the router holds nothing."""
        ok = True
        for name in ("P", "D1", "D2"):
            port = self.ports[name]
            end, es = time.time() + 60, None
            while time.time() < end:
                es = self.jget(port, "/get_server_info")[1]["engine_stats"]
                if es["running"] == 0 and es["waiting"] == 0 and es.get("importing", 0) == 0 and \
                        es["pages_used"] == 0 and es["pages_free"] + es["pages_cached"] == es["pages_total"]:
                    break
                time.sleep(0.2)
            else:
                self.problem("pages", "%s not idle 60 s after the load stopped: %s" % (name, es))
                ok = False
                continue
            st, _ = self.get(port, "/flush_cache", method="POST", body={})
            es2 = self.jget(port, "/get_server_info")[1]["engine_stats"]
            if st != 200 or es2["pages_free"] != es2["pages_total"]:
                self.problem("pages", "%s after /flush_cache (HTTP %d): %s" % (name, st, es2))
                ok = False
            self.pages[name] = {"idle": {k: es[k] for k in ("pages_total", "pages_free", "pages_cached",
                                                             "pages_used")},
                                "flushed_free": es2["pages_free"], "aborts": es["requests_finished"].get("abort")}
        end = time.time() + 30
        while time.time() < end:
            ws = self.router_workers()
            if all(w["in_flight"] == 0 for w in ws.values()):
                break
            time.sleep(0.2)
        else:
            self.problem("router", "requests still in flight in the router: %s" %
                         {u: w["in_flight"] for u, w in ws.items()})
            ok = False
        return ok

    def shutdown(self):
        for name in ("R", "P", "D1", "D2"):
            p = self.procs[name]
            self.expected_exit.add((name, p["gen"]))
            p["popen"].send_signal(signal.SIGTERM)
            try:
                rc = p["popen"].wait(timeout=30)
            except subprocess.TimeoutExpired:
                p["popen"].kill()
                rc = "none within 30 s"
            self.series["%s#%d" % (name, p["gen"])]["died"] = self.now()
            if rc != 0:
                self.problem("exit", "%s#%d exited %s on SIGTERM (log: logs/%s.%d.log)" %
                             (name, p["gen"], rc, name, p["gen"]))

    def run(self):
        self.pages = {}
        for name in ("P", "D1", "D2", "R"):
            if not self.spawn(name):
                return 1
        for name in ("P", "D1", "D2"):
            if not self.wait_routable(name, True, 30):
                self.problem("start", "the router does not route to %s" % name)
                return 1
        self.log("up: router :%d, P :%d (bootstrap %d), D1 :%d, D2 :%d, %s backend; %.0f min, %g req/s, "
                 "restart every %.0f s, warm-up %.0f s" % (self.ports["R"], self.ports["P"], self.ports["BP"],
                                                           self.ports["D1"], self.ports["D2"], self.backend,
                                                           self.dur / 60, self.rate, self.restart_s, self.warmup_s))
        self.t0 = time.time()  # the run's clock starts with the load
        for s in self.series.values():
            s["born"] = 0.0
        ths = [threading.Thread(target=f, daemon=True) for f in (self.sampler, self.bench_loop, self.side_client,
                                                                 self.restarter)]
        for th in ths:
            th.start()
        last = 0
        while self.now() < self.dur:
            time.sleep(1)
            if self.now() - last >= 60:
                last = self.now()
                with self.lock:
                    r = self.series["R#0"]["samples"][-1:] or [(0, 0)]
                    done = sum(1 for _ in self.side)
                self.log("router RSS %d kB; %d bench runs, %d side requests; %d unexpected so far" %
                         (r[0][1], len(self.bench_runs), done, len(self.unexpected)))
        self.log("load stops")
        self.stop.set()
        for th in ths:
            th.join(timeout=180)
            if th.is_alive():
                self.problem("hang", "thread %s did not stop" % th._target.__name__)
        self.settle()
        time.sleep(1)
        self.sample_once()  # idle
        self.shutdown()
        return self.report()

    # ---------------------------------------------------------------- report

    def requests(self):
        """Every request as (source, kind, t_start, t_end, outcome, detail, expected)."""
        rows = []
        runs = {}
        for line in open(self.res + "/bench.jsonl") if os.path.exists(self.res + "/bench.jsonl") else []:
            o = json.loads(line)
            runs[o["tag"]] = o
        for tag, t_launch, t_exit, rc in self.bench_runs:
            o = runs.get(tag)
            if o is None:
                self.problem("bench", "%s: no result line (exit %d; logs/bench.log)" % (tag, rc))
                continue
            t0 = t_exit - o["duration"]          # no later than the run's real start
            lat = [e for e, err in zip(o["e2e_latencies"], o["errors"]) if not err]
            before = (max(lat) if lat else 60.0) + 1.0
            kind = o["backend"] + ("/nostream" if o["backend"] == "openai" else "/stream")
            for st, err, e2e in zip(o["start_times"], o["errors"], o["e2e_latencies"]):
                ts = t0 + st
                if not err:
                    rows.append(("bench", kind, ts, ts + e2e, "ok", "", False))
                else:
                    exp = in_window(ts, ts, self.windows, before=before, after=self.grace_s + 1.0)
                    rows.append(("bench", kind, ts, ts, error_kind(err), err, exp))
        for want, t0, t1, outcome, detail in self.side:
            exp = outcome not in ("ok", "aborted") and in_window(t0, t1, self.windows, after=self.grace_s)
            rows.append(("side", want, t0, t1, outcome, detail, exp))
        return rows

    def report(self):
        rows = self.requests()
        with open(self.res + "/requests.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["source", "kind", "t_start", "t_end", "outcome", "expected", "detail"])
            for r in rows:
                w.writerow([r[0], r[1], "%.3f" % r[2], "%.3f" % r[3], r[4], int(r[6]), r[5][:300]])
        with open(self.res + "/samples.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["series", "process", "gen", "pid", "t_s", "rss_kb", "rss_anon_kb", "rss_file_shmem_kb", "hwm_kb",
                        "threads", "fds", "cpu_s"])
            for key, s in self.series.items():
                for t, rss, hwm, thr, fds, cpu, anon, rfile in s["samples"]:
                    w.writerow([key, s["name"], s["gen"], s["pid"], "%.1f" % t, rss, anon, rfile, hwm, thr, fds,
                                "%.2f" % cpu])
        with open(self.res + "/restarts.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["n", "worker", "signal", "exit", "t_kill", "t_dead", "t_unroutable",
                                              "t_healthy", "t_routable"])
            w.writeheader()
            for r in self.restarts:
                w.writerow(r)

        ok = True
        print("\n== RSS per process series (kB; warm = first sample %.0f s after the process started)" % self.warmup_s)
        print("%-6s %6s %7s %7s %8s %8s %8s %8s %8s %9s %6s %7s %6s  %s" % (
            "series", "pid", "life_s", "samples", "start", "warm", "max", "end", "growth", "bound", "kB/min",
            "fds", "cpu_s", "verdict"))
        judged = {}
        for key, s in self.series.items():
            smp = [(t, r) for t, r, *_ in s["samples"]]
            j = judge_series(smp, s["born"], self.warmup_s, self.min_samples)
            died = s["died"] if s["died"] is not None else self.now()
            j.update(pid=s["pid"], born=s["born"], died=died,
                     fds_first=s["samples"][0][4] if s["samples"] else None,
                     fds_end=s["samples"][-1][4] if s["samples"] else None,
                     hwm_end_kb=s["samples"][-1][2] if s["samples"] else None,
                     cpu_s=s["samples"][-1][5] if s["samples"] else None,
                     anon_end_kb=s["samples"][-1][6] if s["samples"] else None,
                     file_end_kb=s["samples"][-1][7] if s["samples"] else None)
            warm = [x for x in s["samples"] if x[0] - s["born"] >= self.warmup_s]
            if warm:
                j.update(anon_warm_kb=warm[0][6], file_warm_kb=warm[0][7])
            judged[key] = j
            if j["checked"]:
                verdict = ("ok" if j["ok"] else "GROWS") if self.rss_check else "not judged (SOAK_RSS_CHECK=0)"
                ok &= j["ok"] or not self.rss_check
                print("%-6s %6d %7.0f %7d %8d %8d %8d %8d %8d %9.0f %6.0f %7s %6.0f  %s" % (
                    key, s["pid"], died - s["born"], j["samples"], j["rss_start_kb"], j["rss_warm_kb"],
                    j["rss_warm_max_kb"], j["rss_end_kb"], j["growth_kb"], j["bound_kb"], j["slope_kb_per_min"],
                    "%s>%s" % (j["fds_first"], j["fds_end"]), j["cpu_s"], verdict))
            else:
                print("%-6s %6d %7.0f %7d %8s %8s %8s %8s %8s %9s %6s %7s %6s  %s" % (
                    key, s["pid"], died - s["born"], j["samples"], j["rss_start_kb"], "-", j["rss_max_kb"],
                    j["rss_end_kb"], "-", "-", "-", "%s>%s" % (j["fds_first"], j["fds_end"]),
                    "%.0f" % j["cpu_s"] if j["cpu_s"] is not None else "-", "too short to judge"))

        counts = {}
        for src, kind, _, _, outcome, _, exp in rows:
            k = (src, kind, outcome, "expected" if exp else ("" if outcome in ("ok", "aborted") else "UNEXPECTED"))
            counts[k] = counts.get(k, 0) + 1
        n_ok = sum(v for k, v in counts.items() if k[2] == "ok")
        n_abort = sum(v for k, v in counts.items() if k[2] == "aborted")
        n_exp = sum(v for k, v in counts.items() if k[3] == "expected")
        n_unexp = sum(v for k, v in counts.items() if k[3] == "UNEXPECTED")
        print("\n== requests (%d bench runs, %d restarts)" % (len(self.bench_runs), len(self.restarts)))
        for k in sorted(counts):
            print("  %-5s %-16s %-16s %-10s %7d" % (k[0], k[1], k[2], k[3], counts[k]))
        print("  total %d: ok %d, aborted by the client %d, failed in a restart window %d, unexpected %d" % (
            len(rows), n_ok, n_abort, n_exp, n_unexp))
        for r in rows:
            if r[4] not in ("ok", "aborted") and not r[6]:
                print("  unexpected at %.1f s (%s %s): %s" % (r[2], r[0], r[1], r[5][:200]))
        if self.restarts:
            print("\n== restarts: %s" % "; ".join("%s %s at %.0f s back in %.1f s" % (
                r["worker"], r["signal"][3:], r["t_kill"], r["t_routable"] - r["t_kill"]) for r in self.restarts))
        print("\n== pages when idle: %s" % json.dumps(self.pages))
        for name in sorted(os.listdir(self.res + "/logs")):
            with open(self.res + "/logs/" + name, errors="replace") as f:
                for line in f:
                    if "Sanitizer" in line and "ERROR" in line or "runtime error:" in line:
                        self.problem("sanitizer", "logs/%s: %s" % (name, line.strip()[:200]))
                        break
        for kind, detail in self.unexpected:
            print("  problem: %s: %s" % (kind, detail))
        ok &= n_unexp == 0 and not self.unexpected and n_ok > 0
        summary = {"ok": ok, "minutes": self.dur / 60, "rate": self.rate, "backend": self.backend,
                   "warmup_s": self.warmup_s, "restart_s": self.restart_s, "bound": "5% + 8 MiB",
                   "series": judged, "restarts": self.restarts, "pages": self.pages,
                   "requests": {"total": len(rows), "ok": n_ok, "aborted": n_abort, "expected_errors": n_exp,
                                "unexpected_errors": n_unexp,
                                "by_kind": {"|".join(k): v for k, v in sorted(counts.items())}},
                   "problems": self.unexpected}
        with open(self.res + "/summary.json", "w") as f:
            json.dump(summary, f, indent=1)
        print("\nsoak: %s (results in %s)" % ("PASS" if ok else "FAIL", self.res))
        return 0 if ok else 1


if __name__ == "__main__":
    if sys.argv[1:] == ["--selftest"]:
        selftest()
        sys.exit(0)
    sys.exit(Soak(os.environ).run())
