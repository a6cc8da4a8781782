#!/bin/sh
# The README's "Install on an agent host" on a machine whose PID 1 is systemd: run by
# `cargo xtask vm-test --systemd` as root inside a minimal Debian guest built for it
# (never on a real host: it installs, upgrades and purges the package).
#
#   sh systemd-guest.sh OLD.deb NEW.deb
#
# The package installs and starts sluice.service; a test agent service (User=nobody)
# is made an agent with `sluice agent enable`; its connections are intercepted,
# attributed and recorded; it cannot leave its cgroup, reach the daemon or open
# families sluice does not mediate; a daemon restart and an upgrade to NEW.deb lose no
# event and keep the agent refused while the daemon is down. Prints one `ok - ...` line
# per check and stops at the first `not ok`.
set -u
OLD_DEB=$1
NEW_DEB=$2
LIB=/usr/local/lib/sluice-test
LOG=/var/log/sluice-test
mkdir -p "$LIB" "$LOG"

fail() {
    echo "not ok - $1"
    {
        echo "--- journal of sluice.service"
        journalctl -u sluice.service --no-pager -n 40
        echo "--- systemctl --failed"
        systemctl --failed --no-pager
    } >&2
    exit 1
}
check() {
    desc=$1
    shift
    if "$@"; then echo "ok - $desc"; else fail "$desc"; fi
}
# wait_until SECONDS DESCRIPTION COMMAND...: polls COMMAND every half second.
wait_until() {
    limit=$(($1 * 2))
    desc=$2
    shift 2
    i=0
    until "$@" >/dev/null 2>&1; do
        i=$((i + 1))
        [ $i -gt $limit ] && fail "$desc (waited $((limit / 2)) s)"
        sleep 0.5
    done
    echo "ok - $desc"
}

# What the agent service runs: one action, its outcome on stdout.
cat >"$LIB/agent.py" <<'EOF'
import errno, os, socket, sys, time

def connect(host, port):
    try:
        with socket.create_connection((host, int(port)), timeout=15) as s:
            line = s.makefile().readline().strip()
            return "reply: " + line if line else "closed"
    except OSError as e:
        return "error: " + errno.errorcode.get(e.errno, str(e))

def try_socket(family):
    families = {"packet": socket.AF_PACKET, "vsock": socket.AF_VSOCK}
    try:
        socket.socket(families[family], socket.SOCK_STREAM if family == "vsock" else socket.SOCK_RAW).close()
        return "created"
    except OSError as e:
        return "error: " + errno.errorcode.get(e.errno, str(e))

def leave():
    outcomes = []
    for procs in ("/sys/fs/cgroup/cgroup.procs", "/sys/fs/cgroup/system.slice/cgroup.procs"):
        try:
            with open(procs, "w") as f:
                f.write(str(os.getpid()))
            outcomes.append("moved")
        except OSError as e:
            outcomes.append("error: " + errno.errorcode.get(e.errno, str(e)))
    return " / ".join(outcomes) + "; now in " + open("/proc/self/cgroup").read().strip()

def control(path):
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(path)
            return "connected"
    except OSError as e:
        return "error: " + errno.errorcode.get(e.errno, str(e))

action, args = sys.argv[1], sys.argv[2:]
if action == "loop":
    while True:
        print(connect(*args), flush=True)
        time.sleep(0.2)
print({"connect": connect, "socket": try_socket, "leave": leave, "control": control,
       "cgroup": lambda: open("/proc/self/cgroup").read().strip()}[action](*args), flush=True)
EOF

# Reads the daemon's answers (`sluice ... --json`).
cat >"$LIB/query.py" <<'EOF'
import json, subprocess, sys

def sluice(*args):
    return json.loads(subprocess.run(["sluice", *args], check=True, capture_output=True).stdout)

def sessions(destination):
    listed = sluice("sessions", "list", "--limit", "100000", "--json")
    listed = listed.get("sessions", listed) if isinstance(listed, dict) else listed
    return [s for s in listed if s["destination"] == destination]

what, args = sys.argv[1], sys.argv[2:]
if what == "allowed":  # allowed sessions to DEST, all of agent AGENT from UNIT as uid 65534
    destination, agent, unit = args
    found = [s for s in sessions(destination) if s["decision"]["action"] == "allow"]
    wrong = [s for s in found if s["agent"] != agent or not s["cgroup"].endswith("/" + unit) or s["uid"] != 65534]
    if wrong:
        sys.exit(f"misattributed: {wrong[0]}")
    print(len(found))
elif what == "denied":
    print(sum(1 for s in sessions(args[0]) if s["decision"]["action"] != "allow"))
elif what == "rules":
    print(sluice("status", "--json")["policy"]["rules"])
elif what == "enforced":  # every named row of `sluice status` is enforced
    rows = {r["way_out"]: r["enforced"] for r in sluice("status", "--json")["enforcement"]}
    missing = [w for w in args if not rows.get(w)]
    sys.exit(f"not enforced: {missing} of {rows}" if missing else 0)
EOF

# Sinks outside the managed tree (system.slice): each accepted connection is a line
# in LOG/sink-PORT, written before the greeting.
cat >"$LIB/sink.py" <<'EOF'
import socketserver, sys
host, port, log = sys.argv[1], int(sys.argv[2]), open(sys.argv[3], "a", buffering=1)
class Greet(socketserver.StreamRequestHandler):
    def handle(self):
        log.write("accepted\n")
        self.wfile.write(b"hello from the sink\n")
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer((host, port), Greet).serve_forever()
EOF
for sink in 127.0.0.2:18080 127.0.0.2:18082 127.0.0.3:18081; do
    port=${sink#*:}
    : >"$LOG/sink-$port"
    systemd-run --quiet --unit="sink-$port" python3 "$LIB/sink.py" "${sink%:*}" "$port" "$LOG/sink-$port"
done
lines() { wc -l <"$1" | tr -d ' '; }

# The test agents: a oneshot service that runs one action, and one that loops.
cat >/etc/systemd/system/reporter.service <<EOF
[Unit]
Description=sluice test agent (one action)
[Service]
Type=oneshot
User=nobody
EnvironmentFile=$LIB/reporter.env
ExecStart=/usr/bin/python3 $LIB/agent.py \$ACTION
StandardOutput=truncate:$LOG/reporter.out
EOF
cat >/etc/systemd/system/reporter-loop.service <<EOF
[Unit]
Description=sluice test agent (connects every 0.2 s)
[Service]
User=nobody
ExecStart=/usr/bin/python3 $LIB/agent.py loop 127.0.0.2 18082
StandardOutput=append:$LOG/loop.out
EOF
: >"$LOG/loop.out"
# agent ACTION ARGS...: runs the oneshot agent service and prints what it printed.
# (Scripts, not shell functions, so that `check ... sh -c` can call them too.)
cat >"$LIB/agent" <<EOF
#!/bin/sh
echo "ACTION=\$*" >"$LIB/reporter.env"
systemctl start reporter.service || echo "(reporter.service failed)"
cat "$LOG/reporter.out"
EOF
printf '#!/bin/sh\nexec python3 %s/query.py "$@"\n' "$LIB" >"$LIB/query"
chmod +x "$LIB/agent" "$LIB/query"
PATH=$LIB:$PATH
export PATH

for port in 18080 18081 18082; do
    wait_until 60 "the sink on port $port listens" sh -c "ss -Hltn 'sport = :$port' | grep -q ."
done

# --- install
# The README's command (apt resolves the dependencies; the guest has them).
check "apt installs the package" sh -c "apt-get install -y -q '$OLD_DEB' >&2"
check "sluice.service is enabled" test "$(systemctl is-enabled sluice.service)" = enabled
wait_until 300 "the daemon started by the package answers" sluice status
check "sluice.service runs in system.slice, outside the tree it manages" \
    test "$(systemctl show -P ControlGroup sluice.service)" = /system.slice/sluice.service
check "the state directory is 0700" test "$(stat -c %a /var/lib/sluice)" = 700
check "the programs are attached and the BPF LSM rows enforced" \
    query enforced tcp packet_socket foreign_connected_socket

# --- policy
cat >/etc/sluice/policies/10-reporter.toml <<'EOF'
[[agent]]
name = "reporter"

[[resource]]
name = "sink"
addresses = ["127.0.0.2"]
ports = ["18080", "18082"]
protocol = "tcp"

[[rule]]
name = "reporter-reaches-sink"
agent = "reporter"
resource = "sink"
operations = ["connect"]
action = "allow"
EOF
check "sluice policy check && systemctl reload sluice applies the new policy" sh -c \
    'sluice policy check /etc/sluice/policies >&2 && systemctl reload sluice.service && test "$(query rules)" -ge 1'

# --- the agent service
check "sluice agent enable puts reporter.service in sluice-reporter.slice" sh -c \
    'sluice agent enable reporter.service --agent reporter >&2 &&
     test "$(systemctl show -P Slice reporter.service)" = sluice-reporter.slice'
check "it runs in the managed tree" test \
    "$(agent cgroup)" = "0::/sluice.slice/sluice-reporter.slice/reporter.service"
check "its connection to an allowed sink goes through the daemon" \
    test "$(agent connect 127.0.0.2 18080)" = "reply: hello from the sink"
check "the session is recorded as reporter's, from reporter.service as nobody" \
    test "$(query allowed 127.0.0.2:18080 reporter reporter.service)" -ge 1
check "sluice sessions list --agent reporter shows it" sh -c \
    'sluice sessions list --agent reporter | grep -q "reporter .*127.0.0.2:18080 .*allow (reporter-reaches-sink)"'
check "sluice sessions show prints it" sh -c \
    'sluice sessions show "$(sluice sessions list --agent reporter --json | python3 -c "import json,sys; print(json.load(sys.stdin)[0][\"id\"])")" | grep -q reporter'
check "sluice export --format ocsf prints it as OCSF events" sh -c \
    'sluice export --format ocsf | python3 -c "import json,sys; events=[json.loads(l) for l in sys.stdin]; sys.exit(0 if any(e.get(\"class_uid\") == 4001 and \"127.0.0.2\" in json.dumps(e) for e in events) else 1)"'
check "a destination the policy does not allow is refused" sh -c \
    'case "$(agent connect 127.0.0.3 18081)" in closed | error:*) ;; *) exit 1 ;; esac'
check "and never reached" test "$(lines "$LOG/sink-18081")" = 0
wait_until 60 "and recorded as refused" sh -c 'test "$(query denied 127.0.0.3:18081)" -ge 1'

# --- containment
check "the agent cannot move itself out of its cgroup" sh -c \
    'agent leave | grep -q "^error: EACCES / error: EACCES; now in 0::/sluice.slice/sluice-reporter.slice/reporter.service$"'
check "nor reach the daemon's listener" sh -c \
    'case "$(agent connect 127.0.0.1 15001)" in error:*) ;; *) exit 1 ;; esac'
check "nor its control socket" sh -c \
    'case "$(agent control /run/sluice/control.sock)" in error:*) ;; *) exit 1 ;; esac'
check "nor open an AF_PACKET socket" sh -c \
    'case "$(agent socket packet)" in error:*) ;; *) exit 1 ;; esac'
check "nor an AF_VSOCK socket" sh -c \
    'case "$(agent socket vsock)" in error:*) ;; *) exit 1 ;; esac'

# --- restart and upgrade with an agent connecting all along
check "a looping agent service is enabled and started" sh -c \
    'sluice agent enable reporter-loop.service --agent reporter >&2 && systemctl start reporter-loop.service'
wait_until 120 "its connections go through" grep -q "^reply: hello from the sink$" "$LOG/loop.out"
events_before=$(sluice export --format jsonl | wc -l)
first_event=$(sluice export --format jsonl | head -1)

check "systemctl stop sluice stops the daemon" systemctl stop sluice.service
down_from=$(lines "$LOG/loop.out")
# (That none of them reached the sink is the count below: only a running daemon records.)
wait_until 60 "while it is down the agent's connections fail" sh -c \
    "tail -n +$((down_from + 1)) '$LOG/loop.out' | grep -q '^error: '"
check "the programs stay attached while it is down" test -n "$(ls /sys/fs/bpf/sluice/links)"
up_from=$(lines "$LOG/loop.out")
check "systemctl start sluice starts it again" systemctl start sluice.service
wait_until 300 "and the agent's connections go through again" sh -c \
    "tail -n +$((up_from + 1)) '$LOG/loop.out' | grep -q '^reply: '"

pid_before=$(systemctl show -P MainPID sluice.service)
links=$(ls /sys/fs/bpf/sluice/links | wc -l)
check "an upgrade to the new package restarts the daemon" sh -c \
    "apt-get install -y -q '$NEW_DEB' >&2 && test \"\$(dpkg-query -W -f '\${Version}' sluice)\" = \"\$(dpkg-deb -f '$NEW_DEB' Version)\" &&
     test \"\$(systemctl show -P MainPID sluice.service)\" != '$pid_before'"
check "and keeps the programs attached" test "$(ls /sys/fs/bpf/sluice/links | wc -l)" -ge "$links"
up_from=$(lines "$LOG/loop.out")
wait_until 300 "the agent's connections go through after the upgrade" sh -c \
    "tail -n +$((up_from + 1)) '$LOG/loop.out' | grep -q '^reply: '"
check "the policy edits survived the upgrade" test -f /etc/sluice/policies/10-reporter.toml
check "the looping agent stops" systemctl stop reporter-loop.service

# Read the sink first: a session is recorded before its upstream is dialled, so at any
# moment every connection the sink accepted has its record.
accepted=$(lines "$LOG/sink-18082")
recorded=$(query allowed 127.0.0.2:18082 reporter reporter-loop.service) || fail "the loop's sessions are attributed"
echo "# the loop: $(grep -c '^reply: ' "$LOG/loop.out") replies, $(grep -c '^error: ' "$LOG/loop.out") refusals, $accepted reached the sink, $recorded recorded"
check "every connection that reached the sink across restart and upgrade is recorded" \
    test "$accepted" -le "$recorded" -a "$accepted" -ge 2
check "no event was lost: the log grew from the same first event" sh -c \
    "test \"\$(sluice export --format jsonl | head -1)\" = '$first_event' &&
     test \"\$(sluice export --format jsonl | wc -l)\" -gt $events_before"
check "the event chain verifies" sh -c "sluice verify >&2"

# --- removal and purge
links=$(ls /sys/fs/bpf/sluice/links | wc -l)
check "a removal stops the daemon and leaves the programs attached" sh -c \
    "dpkg -r sluice >&2 && ! systemctl is-active -q sluice.service && test \$(ls /sys/fs/bpf/sluice/links | wc -l) -ge $links"
check "a purge stops the daemon, detaches the programs and deletes the state" sh -c \
    "dpkg --purge sluice >&2 && ! systemctl is-active -q sluice.service &&
     test ! -e /sys/fs/bpf/sluice && test ! -e /var/lib/sluice"
exit 0
