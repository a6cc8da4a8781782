#!/bin/sh
# The README's "Install on an agent host", run by `cargo xtask vm-test --deb PATH` as
# root inside a VM guest (never on a real host: it installs and purges the package).
# systemd is not PID 1 in the guest, so the daemon is started with the unit's ExecStart
# command line and an agent is placed the way systemd places a service: a process
# written into sluice.slice/sluice-AGENT.slice/UNIT.service. Prints one `ok - ...` line
# per check; stops at the first `not ok`.
set -u
DEB=$1
SINK_PORT=18080
ROOT=/sys/fs/cgroup/sluice.slice
DAEMON=

fail() {
    echo "not ok - $1"
    [ -f /tmp/sluice-daemon.log ] && tail -20 /tmp/sluice-daemon.log >&2
    [ -n "$DAEMON" ] && kill "$DAEMON" 2>/dev/null
    exit 1
}
check() {
    desc=$1
    shift
    if "$@"; then echo "ok - $desc"; else fail "$desc"; fi
}
start_daemon() {
    # The unit's ExecStart; /run/sluice is its RuntimeDirectory=.
    mkdir -p /run/sluice
    /usr/bin/sluice --config /etc/sluice/sluice.toml daemon >>/tmp/sluice-daemon.log 2>&1 &
    DAEMON=$!
    i=0
    until sluice status >/dev/null 2>&1; do
        i=$((i + 1))
        [ $i -gt 600 ] && fail "the daemon answers"
        sleep 0.5
    done
}
# An agent the way systemd runs a unit with Slice=sluice-reporter.slice: no sluice run,
# no seccomp filter of sluice's; as nobody. Prints what the sink said, or the error.
agent_connects() {
    mkdir -p "$ROOT/sluice-reporter.slice/reporter.service"
    sh -c 'echo $$ > "$0" && exec setpriv --reuid=65534 --regid=65534 --clear-groups python3 -c "
import socket, sys
try:
    s = socket.create_connection((\"127.0.0.2\", $1), timeout=20)
    print(s.makefile().readline().strip())
except OSError as e:
    print(\"error:\", e)
"' "$ROOT/sluice-reporter.slice/reporter.service/cgroup.procs" "$SINK_PORT"
}
reporter_sessions() {
    sluice sessions list --agent reporter --json | python3 -c "
import json, sys
sessions = json.load(sys.stdin)
sessions = sessions.get('sessions', sessions) if isinstance(sessions, dict) else sessions
print(sum(1 for s in sessions if s['decision']['action'] == '$1'))"
}

python3 -c "
import socketserver
class Greet(socketserver.StreamRequestHandler):
    def handle(self):
        self.wfile.write(b'hello from the sink\n')
socketserver.TCPServer(('127.0.0.2', $SINK_PORT), Greet).serve_forever()
" &
SINK=$!

check "the package installs" sh -c "dpkg -i '$DEB' >&2"
check "the state directory is 0700" test "$(stat -c %a /var/lib/sluice)" = 700
check "sluice.toml and the default-deny policy are conffiles" sh -c \
    'dpkg-query -W -f="\${Conffiles}" sluice | grep -q "/etc/sluice/sluice.toml" &&
     dpkg-query -W -f="\${Conffiles}" sluice | grep -q "/etc/sluice/policies/00-default-deny.toml"'
cat >/etc/sluice/policies/10-reporter.toml <<'EOF'
[[agent]]
name = "reporter"

[[resource]]
name = "sink"
addresses = ["127.0.0.2"]
ports = ["18080"]
protocol = "tcp"

[[rule]]
name = "reporter-reaches-sink"
agent = "reporter"
resource = "sink"
operations = ["connect"]
action = "allow"
EOF
check "the policy checks" sh -c "sluice policy check /etc/sluice/policies >&2"
start_daemon
echo "ok - the daemon starts with the packaged configuration"
check "programs are attached to sluice.slice" sh -c \
    'sluice status --json | python3 -c "import json,sys; s=json.load(sys.stdin); sys.exit(0 if all(r[\"enforced\"] for r in s[\"enforcement\"] if r[\"way_out\"] in (\"tcp\",\"packet_socket\",\"foreign_connected_socket\")) else 1)"'

check "a unit placed in sluice-reporter.slice reaches the sink through the daemon" \
    test "$(agent_connects)" = "hello from the sink"
check "its session is attributed to agent reporter and allowed" test "$(reporter_sessions allow)" -ge 1
check "sluice run --agent reporter lands in the same slice" sh -c \
    'sluice run --agent reporter --user nobody -- cat /proc/self/cgroup | grep -qx "0::/sluice.slice/sluice-reporter.slice"'
check "sluice agent enable writes the drop-in" sh -c \
    'sluice agent enable reporter.service --agent reporter --no-reload >&2 &&
     grep -qx "Slice=sluice-reporter.slice" /etc/systemd/system/reporter.service.d/sluice-agent.conf &&
     grep -q "^RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK AF_ALG$" /etc/systemd/system/reporter.service.d/sluice-agent.conf'
check "the agent cannot leave its cgroup" sh -c \
    "! setpriv --reuid=65534 --regid=65534 --clear-groups sh -c 'echo \$\$ > /sys/fs/cgroup/cgroup.procs' 2>/dev/null"

before=$(reporter_sessions allow)
kill "$DAEMON"
wait "$DAEMON" 2>/dev/null
DAEMON=
down=$(agent_connects)
case "$down" in
error:*) echo "ok - with the daemon down the agent's connect fails ($down)" ;;
*) fail "with the daemon down the agent's connect fails (got: $down)" ;;
esac
start_daemon
check "a restarted daemon lost no session" test "$(reporter_sessions allow)" -ge "$before"
check "and serves again" test "$(agent_connects)" = "hello from the sink"

links=$(ls /sys/fs/bpf/sluice/links | wc -l)
check "an upgrade (reinstall) keeps the programs attached" sh -c \
    "dpkg -i '$DEB' >&2 && test \$(ls /sys/fs/bpf/sluice/links | wc -l) -ge $links"
check "and the daemon keeps serving" test "$(agent_connects)" = "hello from the sink"
check "and the policy edits survive" test -f /etc/sluice/policies/10-reporter.toml

kill "$DAEMON"
wait "$DAEMON" 2>/dev/null
DAEMON=
check "a removal leaves the programs attached" sh -c \
    "dpkg -r sluice >&2 && test -n \"\$(ls /sys/fs/bpf/sluice/links)\""
check "a purge detaches them and deletes the state" sh -c \
    "dpkg --purge sluice >&2 && test ! -e /sys/fs/bpf/sluice && test ! -e /var/lib/sluice"
kill "$SINK" 2>/dev/null
exit 0
