#!/usr/bin/env bash
# deploy.sh - the deployment files are real: every pdserve command in
# deploy/docker-compose*.yml and deploy/systemd/*.service goes through
# pdserve's own argument parsers (`--check-args`: parse, validate, print the
# resolved configuration, start nothing), and the router of each file points
# at the servers of that file (ports, bootstrap port, one transfer backend).
#
# - compose: each service's entrypoint (the Dockerfile's ENTRYPOINT unless
#   the service sets one) + command, ${VAR:-default} interpolated as compose
#   does, with the defaults and with PDSERVE_TRANSFER_BACKEND=shm / ucx;
# - systemd: ExecStart expanded with the example EnvironmentFile the way
#   systemd does (${VAR} one word, $VAR split on spaces); `systemd-analyze
#   verify` on the units where it exists (any warning fails);
# - the seed's own command lines (SGLang's launch_server / launch_router
#   flags, --base-gpu-id included) parse;
# - --check-args starts nothing: a port in use and a missing model file do
#   not matter to it, while the real commands fail on them;
# - broken copies fail: a misspelt flag in a compose file, a bad value in an
#   env file, a misspelt flag in a unit, a router pointing at a port no
#   server of the file listens on, a bad backend from the environment;
# - the stacks serve: the commands of each compose file and of the units
#   (fixed ports and router.env's 10.0.0.x addresses as written) run in a
#   network namespace of our own, and one completion goes through each
#   router (skipped where namespaces cannot be created); with shm and the
#   decode given a /tmp of its own (what the compose files' shared /tmp
#   volume and the units' PrivateTmp=no prevent), the request fails naming
#   the prefill's socket;
# - Dockerfile: debian:12 build stage, debian:12-slim runtime stage, a
#   non-root USER, ENTRYPOINT pdserve (hadolint where installed); the
#   runtime stage's packages (install-deps.sh --runtime) own every library
#   the binary links;
#   `docker compose config` where the client has compose; README names the
#   files.
set -euo pipefail
START=$SECONDS

BIN=${PDSERVE_BIN:?set PDSERVE_BIN to the pdserve binary}
HERE=$(cd "$(dirname "$0")/../.." && pwd)
command -v python3 >/dev/null || { echo "skip: needs python3"; exit 0; }
python3 -c 'import yaml' 2>/dev/null || { echo "skip: needs python3-yaml (scripts/install-deps.sh)"; exit 0; }
T=$(mktemp -d)
PIDS=()
cleanup() {
	exec 2>/dev/null
	for p in "${PIDS[@]}"; do kill -9 "$p" || true; done
	wait || true
	rm -rf "$T"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
FREE_PORT_PY=$(cd "$(dirname "${BASH_SOURCE[0]}")/../lib" && pwd)/free_port.py
free_port() { python3 "$FREE_PORT_PY"; } # below the ephemeral range

cat >"$T/check.py" <<'EOF'
"""check.py BIN ROOT: run every pdserve command of ROOT's deployment files
through --check-args and cross-check each file's router against its servers.
Prints one summary line per file; exits 1 with the reasons on any problem."""
import glob, json, os, re, shlex, subprocess, sys, urllib.parse
import yaml

BIN, ROOT = sys.argv[1], sys.argv[2]
problems = []
# EMIT=FILE: also write "FILE<TAB>ARGS" per command that passed (ARGS
# shell-quoted, without the binary), the model path replaced by $MODEL
EMIT = open(os.environ["EMIT"], "w") if os.environ.get("EMIT") else None
MODEL = os.environ.get("MODEL", "")

def interpolate(s):
    """compose: ${VAR}, ${VAR:-default}, ${VAR-default}, $$ -> $"""
    def sub(m):
        if m.group(0) == "$$":
            return "$"
        name, op, default = m.group(1), m.group(2), m.group(3) or ""
        v = os.environ.get(name)
        if op == ":-" and not v or op == "-" and v is None:
            return default
        return v or ""
    return re.sub(r"\$\$|\$\{(\w+)(?:(:?-)([^}]*))?\}", sub, s)

def check_args(where, argv):
    """argv[0] is the pdserve binary's path in the file; returns the resolved config"""
    if os.path.basename(argv[0]) != "pdserve":
        problems.append("%s: runs %s, not pdserve" % (where, argv[0]))
        return None
    r = subprocess.run([BIN] + argv[1:] + ["--check-args"], capture_output=True, text=True)
    if r.returncode != 0:
        msg = [l for l in r.stderr.splitlines() if "pdserve" in l or "option" in l]
        problems.append("%s: exit %d: %s" % (where, r.returncode, " / ".join(msg) or r.stderr.strip()))
        return None
    if EMIT:
        args = [MODEL if i and argv[i - 1] == "--model-path" else a for i, a in enumerate(argv)]
        EMIT.write("%s\t%s\n" % (where.split(" ")[0].split(":")[0], shlex.join(args[1:])))
    cfg = {"workers": []}
    for line in r.stdout.splitlines():
        k, _, v = line.partition(" ")
        if k == "worker":
            cfg["workers"].append(v.split())
        else:
            cfg[k] = v
    return cfg

def cross_check(where, cfgs):
    """the router's workers are this file's servers; one backend"""
    servers = {int(c["port"]): (n, c) for n, c in cfgs if c.get("command") == "server"}
    routers = [(n, c) for n, c in cfgs if c.get("command") == "router"]
    backends = {c.get("disaggregation_transfer_backend") for _, c in servers.values()}
    if len(backends) > 1:
        problems.append("%s: servers use different transfer backends: %s" % (where, sorted(backends)))
    used = set()
    for rn, r in routers:
        for w in r["workers"]:
            kind, url = w[0], urllib.parse.urlsplit(w[1])
            port = url.port or 80
            if port not in servers:
                problems.append("%s: router %s: %s worker %s: no server of this file listens on port %d"
                                % (where, rn, kind, w[1], port))
                continue
            sn, s = servers[port]
            used.add(port)
            if s.get("disaggregation_mode") != kind:
                problems.append("%s: router %s: %s is %s, not %s" % (where, rn, w[1], sn, kind))
            if kind == "prefill" and w[2:] != ["bootstrap", s.get("disaggregation_bootstrap_port")]:
                problems.append("%s: router %s: %s %s, but %s's bootstrap port is %s"
                                % (where, rn, w[1], " ".join(w[2:]), sn, s.get("disaggregation_bootstrap_port")))
            if s.get("host") == "127.0.0.1" and url.hostname not in ("127.0.0.1", "localhost"):
                problems.append("%s: router %s: %s listens on 127.0.0.1 only" % (where, rn, sn))
    for port, (sn, _) in servers.items():
        if routers and port not in used:
            problems.append("%s: no router sends requests to %s (port %d)" % (where, sn, port))
    modes = [c.get("disaggregation_mode", c.get("mode")) for _, c in cfgs]
    return "%d prefill, %d decode, %d router" % (modes.count("prefill"), modes.count("decode"), len(routers))

# compose files: services run the image's ENTRYPOINT + command
m = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", open(os.path.join(ROOT, "Dockerfile")).read(), re.M)
entrypoint = json.loads(m.group(1)) if m else []
for path in sorted(glob.glob(os.path.join(ROOT, "deploy", "docker-compose*.yml"))):
    name = os.path.relpath(path, ROOT)
    doc = yaml.safe_load(open(path))
    cfgs = []
    for svc, spec in (doc.get("services") or {}).items():
        ep = spec.get("entrypoint", entrypoint)
        ep = shlex.split(ep) if isinstance(ep, str) else list(ep)
        cmd = spec.get("command", [])
        cmd = shlex.split(cmd) if isinstance(cmd, str) else [str(x) for x in cmd]
        argv = [interpolate(x) for x in ep + cmd]
        if not argv:
            problems.append("%s: service %s has no command" % (name, svc))
            continue
        cfg = check_args("%s service %s" % (name, svc), argv)
        if cfg:
            cfgs.append((svc, cfg))
    print("%s: %s" % (name, cross_check(name, cfgs)))

# systemd units: ExecStart with the example EnvironmentFile
def env_file(path):
    env = {}
    for line in open(path):
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        k, _, v = line.partition("=")
        v = v.strip()
        if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
            v = v[1:-1]
        env[k.strip()] = v
    return env

cfgs = []
for path in sorted(glob.glob(os.path.join(ROOT, "deploy", "systemd", "*.service"))):
    name = os.path.relpath(path, ROOT)
    text = re.sub(r"\\\n", " ", open(path).read())
    keys = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            k, _, v = line.partition("=")
            keys.setdefault(k.strip(), []).append(v.strip())
    env = {}
    for f in keys.get("EnvironmentFile", []):
        local = os.path.join(ROOT, "deploy", "systemd", os.path.basename(f.lstrip("-")))
        if not os.path.exists(local):
            problems.append("%s: EnvironmentFile %s: no example %s" % (name, f, os.path.relpath(local, ROOT)))
            continue
        env.update(env_file(local))
    if len(keys.get("ExecStart", [])) != 1:
        problems.append("%s: wants one ExecStart" % name)
        continue
    argv = []
    for word in shlex.split(keys["ExecStart"][0].lstrip("-@:+!")):
        whole = re.fullmatch(r"\$(\w+)", word)
        if whole:
            argv += env.get(whole.group(1), "").split()
        else:
            argv.append(re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), ""), word))
    cfg = check_args(name, argv)
    if cfg:
        cfgs.append((os.path.basename(path), cfg))
if cfgs:
    print("deploy/systemd: %s" % cross_check("deploy/systemd", cfgs))

if problems:
    print("\n".join(problems), file=sys.stderr)
    sys.exit(1)
EOF

MODEL=$HERE/../shared/models/stories260K.gguf
if [ ! -r "$MODEL" ]; then
	MODEL=$T/synth.gguf
	"$BIN" model synth --out "$MODEL" >/dev/null 2>&1 || fail "model synth"
fi

# 1. the files as committed (defaults, then the other backends)
EMIT=$T/cmds MODEL=$MODEL python3 "$T/check.py" "$BIN" "$HERE" >"$T/ok.out" 2>"$T/ok.err" ||
	{ cat "$T/ok.err" >&2; fail "deployment files"; }
cat "$T/ok.out"
grep -qx "deploy/docker-compose.pd.yml: 1 prefill, 1 decode, 1 router" "$T/ok.out" || fail "pd.yml: $(cat "$T/ok.out")"
grep -qx "deploy/docker-compose.1p3d.yml: 1 prefill, 3 decode, 1 router" "$T/ok.out" || fail "1p3d.yml"
grep -qx "deploy/systemd: 1 prefill, 1 decode, 1 router" "$T/ok.out" || fail "systemd"
for b in shm ucx mooncake; do
	PDSERVE_TRANSFER_BACKEND=$b python3 "$T/check.py" "$BIN" "$HERE" >/dev/null 2>"$T/b.err" ||
		{ cat "$T/b.err" >&2; fail "compose with PDSERVE_TRANSFER_BACKEND=$b"; }
done

# 2. broken copies must fail, naming the problem
mutate() { # WHAT FILE SED-EXPR EXPECTED-IN-STDERR [ENV...]
	local what=$1 file=$2 expr=$3 want=$4
	shift 4
	rm -rf "$T/m" && mkdir -p "$T/m" && cp -r "$HERE/Dockerfile" "$HERE/deploy" "$T/m/"
	sed -i -e "$expr" "$T/m/$file"
	cmp -s "$HERE/$file" "$T/m/$file" && fail "$what: the edit changed nothing"
	if env "$@" python3 "$T/check.py" "$BIN" "$T/m" >/dev/null 2>"$T/m.err"; then
		fail "$what: a broken $file passed"
	fi
	grep -qF -- "$want" "$T/m.err" || { cat "$T/m.err" >&2; fail "$what: no '$want' in the report"; }
	echo "ok: $what -> $(head -1 "$T/m.err")"
}
mutate "misspelt flag in compose" deploy/docker-compose.pd.yml \
	's/- --disaggregation-bootstrap-port/- --disaggregation-bootstrap-prt/' "disaggregation-bootstrap-prt"
mutate "bad value in compose" deploy/docker-compose.1p3d.yml '0,/- "30002"/s//- "300020"/' \
	"bad value for --port: '300020'"
mutate "router to a port with no server" deploy/docker-compose.pd.yml \
	's#- http://127.0.0.1:30001#- http://127.0.0.1:30009#' "no server of this file listens on port 30009"
mutate "router with the wrong bootstrap port" deploy/docker-compose.1p3d.yml \
	'/- --prefill$/,/- "8998"/s/- "8998"/- "8999"/' \
	"bootstrap port is"
mutate "bad backend in an env file" deploy/systemd/decode.env 's/^PDSERVE_TRANSFER_BACKEND=.*/&p/' \
	"unknown (tcp, shm, ucx"
mutate "misspelt flag in a unit" deploy/systemd/pdserve-router.service 's/--pd-disaggregation/--pd-disagregation/' \
	"unknown flag '--pd-disagregation'"
mutate "backends differ" deploy/systemd/prefill.env 's/^PDSERVE_TRANSFER_BACKEND=.*/PDSERVE_TRANSFER_BACKEND=shm/' \
	"different transfer backends"
mutate "bad backend from the environment" deploy/docker-compose.pd.yml 's/^name: .*/&-x/' \
	"--disaggregation-transfer-backend rdma: unknown" PDSERVE_TRANSFER_BACKEND=rdma

# 3. the seed's command lines (SGLang flags, python -m ... replaced by pdserve)
"$BIN" server --model-path /models/m.gguf --disaggregation-mode prefill --disaggregation-ib-device mlx5_0 \
	--port 30000 --check-args >/dev/null 2>"$T/s.err" || { cat "$T/s.err" >&2; fail "seed prefill"; }
"$BIN" server --model-path /models/m.gguf --disaggregation-mode decode --disaggregation-ib-device mlx5_0 \
	--base-gpu-id 1 --port 30001 --check-args >/dev/null 2>"$T/s.err" || { cat "$T/s.err" >&2; fail "seed decode"; }
"$BIN" router --pd-disaggregation --prefill http://10.0.0.1:30000 8998 --decode http://10.0.0.1:30001 \
	--host 0.0.0.0 --port 8000 --check-args >"$T/s.out" 2>"$T/s.err" || { cat "$T/s.err" >&2; fail "seed router"; }
grep -qx "worker prefill http://10.0.0.1:30000 bootstrap 8998" "$T/s.out" || fail "seed router: $(cat "$T/s.out")"
# the reliability and admission flags of SGLang's router guides (as sglang_router.launch_router spells them)
"$BIN" router --pd-disaggregation --prefill http://10.0.0.1:30000 8998 --decode http://10.0.0.1:30001 \
	--model-path /models/m --tokenizer-path /models/m --disable-tokenizer-autoload \
	--max-concurrent-requests 64 --queue-size 32 --queue-timeout-secs 30 --rate-limit-tokens-per-second 20 \
	--retry-max-retries 2 --retry-initial-backoff-ms 100 --retry-max-backoff-ms 5000 --retry-backoff-multiplier 2 \
	--retry-jitter-factor 0.1 --cb-failure-threshold 5 --cb-window-duration-secs 60 --cb-timeout-duration-secs 30 \
	--shutdown-grace-period-secs 30 --disable-health-check --request-id-headers x-request-id x-trace-id \
	--check-args >"$T/s.out" 2>"$T/s.err" || { cat "$T/s.err" >&2; fail "router with SGLang's reliability flags"; }
for want in "max_concurrent_requests 64" "queue_size 32" "queue_timeout_secs 30" "rate_limit_tokens_per_second 20" \
	"max_retries 2" "retry_backoff_ms 100 x2 up to 5000, jitter 0.1" "health_checks disabled" \
	"shutdown_grace_period_secs 30"; do
	grep -qx "$want" "$T/s.out" || fail "router flags: no '$want' in: $(cat "$T/s.out")"
done
grep -q "model-path /models/m: ignored" "$T/s.err" || fail "an ignored router flag says nothing: $(cat "$T/s.err")"
# GPU and tuning knobs of SGLang's PD guides run (logged); features that would change answers are refused with why
"$BIN" server --model-path /models/m.gguf --disaggregation-mode prefill --trust-remote-code --watchdog-timeout 1000000 \
	--decode-log-interval 1 --enable-dp-attention --disaggregation-decode-tp 1 --disaggregation-decode-dp 1 \
	--load-balance-method round_robin --disable-custom-all-reduce --check-args >/dev/null 2>"$T/s.err" ||
	{ cat "$T/s.err" >&2; fail "server with SGLang's GPU knobs"; }
grep -q "watchdog-timeout 1000000: ignored" "$T/s.err" || fail "an ignored server flag says nothing: $(cat "$T/s.err")"
if "$BIN" server --model-path /models/m.gguf --reasoning-parser qwen3 --check-args >/dev/null 2>"$T/s.err"; then
	fail "server took --reasoning-parser"
fi
grep -q "reasoning-parser is not supported: no reasoning_content" "$T/s.err" || fail "refusal without a reason: $(cat "$T/s.err")"

# 4. --check-args starts nothing: a held port and a missing model are the real start's business
python3 -c 'import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0)); s.listen(); print(s.getsockname()[1]); sys.stdout.flush(); time.sleep(60)' >"$T/held" &
PIDS+=($!)
for _ in $(seq 100); do [ -s "$T/held" ] && break; sleep 0.05; done
HELD=$(cat "$T/held")
[ -n "$HELD" ] || fail "no held port"
"$BIN" server --model-path "$T/none.gguf" --port "$HELD" --check-args >"$T/c.out" 2>&1 || fail "server --check-args: $(cat "$T/c.out")"
grep -qx "port $HELD" "$T/c.out" || fail "server --check-args printed: $(cat "$T/c.out")"
if "$BIN" server --model-path "$T/none.gguf" --port "$(free_port)" >/dev/null 2>&1; then fail "server ran without a model"; fi
"$BIN" router --prefill http://127.0.0.1:1 --decode http://127.0.0.1:2 --port "$HELD" --check-args >/dev/null 2>&1 ||
	fail "router --check-args with a held port"
timeout 10 "$BIN" router --prefill http://127.0.0.1:1 --decode http://127.0.0.1:2 --port "$HELD" >/dev/null 2>&1 &&
	fail "the router started on a held port"
"$BIN" server --page-size 0 --check-args >/dev/null 2>"$T/c.err" && fail "--page-size 0 passed"
grep -qF "bad value for --page-size: '0'" "$T/c.err" || fail "--page-size 0: $(cat "$T/c.err")"

# 5. systemd-analyze verify (units pointed at this binary and the example env files)
if command -v systemd-analyze >/dev/null; then
	mkdir -p "$T/units"
	for u in "$HERE"/deploy/systemd/*.service; do
		sed -e "s#/usr/local/bin/pdserve#$BIN#" -e "s#/etc/pdserve/#$HERE/deploy/systemd/#" "$u" >"$T/units/${u##*/}"
	done
	systemd-analyze verify "$T"/units/*.service >"$T/v.out" 2>&1 || { cat "$T/v.out" >&2; fail "systemd-analyze verify"; }
	[ ! -s "$T/v.out" ] || { cat "$T/v.out" >&2; fail "systemd-analyze verify warned"; }
	sed -i 's/^NoNewPrivileges=/NoNewPrivilege=/' "$T/units/pdserve-router.service"
	systemd-analyze verify "$T"/units/*.service >"$T/v.out" 2>&1 || true
	grep -q "NoNewPrivilege" "$T/v.out" || fail "systemd-analyze verify missed an unknown key"
	echo "ok: systemd-analyze verify"
else
	echo "skip: systemd-analyze not installed"
fi

# 6. Dockerfile shape; hadolint and docker compose config where present
python3 - "$HERE/Dockerfile" <<'EOF' || fail "Dockerfile"
import json, re, sys
lines = [l for l in re.sub(r"\\\n", " ", open(sys.argv[1]).read()).splitlines() if l and not l.startswith("#")]
stages = [i for i, l in enumerate(lines) if l.startswith("FROM ")]
assert len(stages) >= 2, "multi-stage"
assert re.match(r"FROM debian:12 AS build$", lines[stages[0]]), lines[stages[0]]
final = lines[stages[-1]:]
assert final[0] == "FROM debian:12-slim", final[0]
users = [l.split()[1] for l in final if l.startswith("USER ")]
assert users and users[-1] not in ("root", "0"), "runtime stage must run as a non-root USER"
assert any("install-deps.sh --runtime" in l for l in final), "runtime libraries from install-deps.sh --runtime"
assert any("install-deps.sh --build" in l for l in lines[:stages[1]]), "build stage uses install-deps.sh --build"
ep = [json.loads(l.split(None, 1)[1]) for l in final if l.startswith("ENTRYPOINT ")]
assert ep and ep[-1][0].endswith("/pdserve"), "ENTRYPOINT pdserve"
EOF
echo "ok: Dockerfile stages, USER, ENTRYPOINT"
# the runtime stage's packages hold every library the binary links (libc6 is in every image;
# a sanitizer build's own runtimes are not the image's business)
if command -v dpkg >/dev/null && command -v readelf >/dev/null; then
	RUNTIME=" $("$HERE/scripts/install-deps.sh" --runtime --list | tr '\n' ' ') libc6 "
	n=0
	for lib in $(readelf -d "$BIN" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
		case "$lib" in libasan.* | libubsan.* | libstdc++.* | libgcc_s.*) continue ;; esac
		# readers that take all their input: one quitting early would make the
		# writer die of SIGPIPE, and pipefail + set -e end the script silently
		path=$(ldconfig -p | awk -v l="$lib" '$1 == l && /x86-64/ && !p { print $NF; p = 1 }')
		pkg=$( (dpkg -S "$path" || dpkg -S "$(readlink -f "$path")") 2>/dev/null | sed -n '1s/:.*//p')
		[ -n "$pkg" ] || fail "runtime: no package owns $lib ($path)"
		[[ "$RUNTIME" == *" $pkg "* ]] || fail "runtime: $lib comes from $pkg, not in install-deps.sh --runtime"
		n=$((n + 1))
	done
	[ "$n" -ge 5 ] || fail "runtime: only $n libraries found in $BIN"
	echo "ok: install-deps.sh --runtime holds the $n libraries pdserve links"
else
	echo "skip: no dpkg/readelf to check the runtime packages"
fi
if command -v hadolint >/dev/null; then
	hadolint "$HERE/Dockerfile" || fail "hadolint"
else
	echo "skip: hadolint not installed"
fi
if command -v docker >/dev/null && docker compose version >/dev/null 2>&1; then
	for f in "$HERE"/deploy/docker-compose*.yml; do
		docker compose -f "$f" config -q || fail "docker compose config $f"
	done
	echo "ok: docker compose config"
else
	echo "skip: no docker compose client"
fi
for f in Dockerfile deploy/docker-compose.pd.yml deploy/docker-compose.1p3d.yml deploy/systemd; do
	grep -qF "$f" "$HERE/README.md" || fail "README.md does not mention $f"
done

# 7. the stacks serve: each file's commands, as the files give them (fixed
# ports, router.env's 10.0.0.1 / 10.0.0.2), in a network namespace of our
# own with those addresses on its loopback; one completion through each
# router. Each server also gets --max-total-tokens 8192 (a small pool on a
# shared machine).
NS=pdsdeploy$$
if ip netns add "$NS" 2>/dev/null; then
	trap 'cleanup; ip netns del "$NS" 2>/dev/null || true' EXIT
	ip -n "$NS" link set lo up
	ip -n "$NS" addr add 10.0.0.1/32 dev lo
	ip -n "$NS" addr add 10.0.0.2/32 dev lo
	# pd.yml:shm-own-tmp: the decode with a /tmp of its own (a compose file
	# without the shared pdserve-run volume, a unit with PrivateTmp): shm must
	# fail, naming the socket it cannot see
	for run in deploy/docker-compose.pd.yml:tcp deploy/docker-compose.pd.yml:shm deploy/docker-compose.1p3d.yml:tcp \
		deploy/systemd/: deploy/docker-compose.pd.yml:shm-own-tmp; do
		key=${run%:*} backend=${run##*:} own_tmp=
		[ "$backend" = shm-own-tmp ] && { backend=shm; own_tmp=1; }
		EMIT=$T/cmds MODEL=$MODEL PDSERVE_TRANSFER_BACKEND=$backend python3 "$T/check.py" "$BIN" "$HERE" >/dev/null ||
			fail "$run: check"
		STACK=()
		while IFS=$'\t' read -r file args; do
			case "$file" in "$key"*) ;; *) continue ;; esac
			eval "argv=($args)"
			[ "${argv[0]}" = server ] && argv+=(--max-total-tokens 8192)
			wrap=()
			if [ -n "$own_tmp" ] && [[ " ${argv[*]} " == *" --disaggregation-mode decode "* ]]; then
				wrap=(unshare -m sh -c 'mount -t tmpfs pdserve-tmp /tmp && exec "$@"' sh)
			fi
			ip netns exec "$NS" "${wrap[@]}" "$BIN" "${argv[@]}" >"$T/stack.${#STACK[@]}.out" 2>&1 &
			PIDS+=($!)
			STACK+=($!)
			if [ "${argv[0]}" = router ]; then
				RPORT=$(python3 -c 'import sys; a=sys.argv[1:]; print(a[a.index("--port")+1])' "${argv[@]}")
			fi
		done <"$T/cmds"
		[ "${#STACK[@]}" -ge 3 ] || fail "$key: ${#STACK[@]} commands"
		deadline=$((SECONDS + 60))
		until ip netns exec "$NS" curl -sf "http://127.0.0.1:$RPORT/health" >/dev/null 2>&1; do
			for p in "${STACK[@]}"; do kill -0 "$p" 2>/dev/null || { tail -n 5 "$T"/stack.* >&2; fail "$key: a process exited"; }; done
			[ "$SECONDS" -lt "$deadline" ] || { tail -n 5 "$T"/stack.* >&2; fail "$key: router not healthy in 60 s"; }
			sleep 0.1
		done
		code=$(ip netns exec "$NS" curl -s -o "$T/answer" -w '%{http_code}' "http://127.0.0.1:$RPORT/v1/completions" \
			-H 'Content-Type: application/json' \
			-d '{"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0, "ignore_eos": true}' || true)
		if [ -n "$own_tmp" ]; then
			[ "$code" -ge 500 ] && grep -q "shm socket /tmp/pdserve-kv-.*: No such file or directory" "$T/answer" ||
				fail "$run: want a 5xx naming the shm socket, got $code $(cat "$T/answer")"
			echo "ok: $key (shm, the decode with its own /tmp): $code $(head -c 160 "$T/answer")"
			for p in "${STACK[@]}"; do kill "$p" 2>/dev/null || true; done
			for p in "${STACK[@]}"; do wait "$p" 2>/dev/null || true; done
			! grep -Eq "ERROR: (Leak|Address)Sanitizer|runtime error:" "$T"/stack.*.out || { cat "$T"/stack.*.out >&2; fail "$run: sanitizer report"; }
			rm -f "$T"/stack.*
			continue
		fi
		[ "$code" = 200 ] || { tail -n 5 "$T"/stack.* >&2; fail "$key: completion through the router: $code $(cat "$T/answer")"; }
		python3 -c 'import json, sys; u = json.load(open(sys.argv[1]))["usage"]; sys.exit(u["completion_tokens"] != 8)' \
			"$T/answer" || fail "$key: answer $(cat "$T/answer")"
		if [ -n "$backend" ]; then
			grep -q "decode transfer backend $backend " "$T"/stack.*.out || fail "$run: the decode did not use $backend"
		fi
		echo "ok: $key${backend:+ (PDSERVE_TRANSFER_BACKEND=$backend)}: ${#STACK[@]} processes, 8 tokens through the router on port $RPORT"
		for p in "${STACK[@]}"; do kill "$p" 2>/dev/null || true; done
		for p in "${STACK[@]}"; do wait "$p" 2>/dev/null || true; done
		! grep -Eq "ERROR: (Leak|Address)Sanitizer|runtime error:" "$T"/stack.*.out || { cat "$T"/stack.*.out >&2; fail "$run: sanitizer report"; }
		rm -f "$T"/stack.*
	done
else
	echo "skip: cannot create a network namespace here (the stacks were only parsed)"
fi

echo "deploy: all passed in $((SECONDS - START)) s"
