#!/usr/bin/env bash
# Where a server's CPU goes per message, below JavaScript: the kernel, the runtime's native
# code (for Deno: op dispatch, tokio, V8's C++), libc (malloc, memset) and JIT-compiled
# JavaScript, from `perf record -e cpu-clock` sampled by shared object; and the system calls
# a message costs, from perf's syscall tracepoints. Needs perf (Debian's linux-perf) and
# bench/results/loadgen (built by `deno task bench:load`). Loopback only.
#
#   bash bench/native_profile.sh SERVER PORT LOADGEN-ARGS...
#   bash bench/native_profile.sh ours 7400 echo 7400 32 1024 4 4 binary
#   bash bench/native_profile.sh uws 7401 fanout 7401 5000 8 4 all
#
# SERVER is a file of bench/servers/ (ours, floor, deno_native: Deno; uws, ws: Node). The
# server runs on core 0 and the load generator on core 1; after its connections are open and
# one warm-up run, one run of the loadgen's SECONDS (give 4) is measured for its middle 2 s.
# No --host: the loadgen's arguments start with its mode.
set -euo pipefail
cd "$(dirname "$0")"
[ $# -ge 3 ] || { sed -n 8,10p "$0"; exit 2; }
server=$1 port=$2
shift 2
case $server in
  uws | ws) command=(node "servers/${server}_node.mjs") ;;
  *) command=(deno run -A "servers/$server.ts") ;;
esac
out=$(mktemp -d)
taskset -c 0 "${command[@]}" "$port" >/dev/null 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -rf "$out"' EXIT
sleep 2
{
  echo "run 0.3"
  echo run
  # quit once the ready line, the warm-up's and the run's are out (within 60 s)
  for _ in $(seq 300); do [ "$(wc -l <"$out/loadgen")" -ge 3 ] && break; sleep 0.2; done
  echo quit
} | taskset -c 1 results/loadgen "$@" >"$out/loadgen" &
loadgen=$!
for _ in $(seq 300); do grep -q ready "$out/loadgen" && break; sleep 0.1; done
sleep 1.3 # the warm-up run, and into the measured one
read -ra before </proc/$pid/stat
events=syscalls:sys_enter_sendto,syscalls:sys_enter_recvfrom,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_epoll_pwait
perf stat -x, -e "$events" -o "$out/syscalls" -p $pid -- \
  perf record -q -F 2000 -e cpu-clock -o "$out/samples" -p $pid -- sleep 2 >/dev/null 2>&1
read -ra after </proc/$pid/stat
wait $loadgen
# The loadgen's count covers its SECONDS; the 2 s measured are taken at its mean rate.
count=$(tail -1 "$out/loadgen" | grep -o '"\(messages\|deliveries\)":[0-9]*' | cut -d: -f2)
# SECONDS is the loadgen's 6th argument in echo mode, its 5th in fanout mode
words=("$@")
seconds=${words[5]}
[ "$1" = fanout ] && seconds=${words[4]}
awk -v n="$count" -v s="$seconds" -v u=$((after[13] - before[13])) -v k=$((after[14] - before[14])) \
  -v tck="$(getconf CLK_TCK)" 'BEGIN {
    m = n * 2 / s
    printf "%s: %d a second; server CPU a message: user %.2f µs, system %.2f µs\n", "'"$server"'", n / s, u / tck * 1e6 / m, k / tck * 1e6 / m
  }'
perf report -i "$out/samples" --no-children --sort dso -g none -n 2>/dev/null | grep -v '^#' | grep -v '^$' | head -6 |
  awk -v n="$count" -v s="$seconds" '{ m = n * 2 / s; printf "  %-26s %6.2f µs a message\n", $3, $2 * 500 / m }'
awk -F, -v n="$count" -v s="$seconds" '$1 > 0 { m = n * 2 / s; sub("syscalls:sys_enter_", "", $3); printf "  %-26s %6.3f a message\n", $3, $1 / m }' "$out/syscalls"
