#!/usr/bin/env bash
# The 1M-item serving benchmark of docs/performance.md, end to end: start the server
# (bench/load-1m.toml, --processes 2), wait until it serves, run the closed-loop sweep
# (concurrency 1, 2, 4, 8, 16), then the open loop at 80 % of the peak, and stop it.
# Every run's JSON summary (with server and generator CPU per request) lands in OUT.
# The generator balances every call over the processes' own addresses (worker_port_base
# in bench/load-1m.toml, gRPC round_robin); ADDR=127.0.0.1:50051 uses the shared
# SO_REUSEPORT port instead, where the kernel splits the connections unevenly.
#
#   recall-engine bench catalog --items 1000000 --out build/catalog-1m   # once, ~25 min
#   bench/load-1m.sh [OUT]                                               # ~5 min
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-build/load-1m}
ART=build/catalog-1m
SECONDS_PER_RUN=${SECONDS_PER_RUN:-30}
PROCESSES=${PROCESSES:-2}
ADDR=${ADDR:-$(seq -s, -f "127.0.0.1:%g" 50061 $((50060 + PROCESSES)))}
mkdir -p "$OUT"
recall-engine serve --config bench/load-1m.toml --processes "$PROCESSES" --log-json \
    > "$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 600); do   # each process logs "serving" once it has loaded
    [ "$(grep -c '"event": "serving"' "$OUT/server.log")" -ge "$PROCESSES" ] && break
    kill -0 $SERVER 2>/dev/null || { cat "$OUT/server.log"; exit 1; }
    sleep 1
done
load() {  # NAME ARGS...
    local name=$1; shift
    recall-engine bench load --addr "$ADDR" --artifacts $ART \
        --interactions $ART/data/sample_interactions.csv -k 200 --warmup 3 \
        --duration "$SECONDS_PER_RUN" --server-pid $SERVER --json "$OUT/$name.json" "$@" \
        | tee "$OUT/$name.txt"
}
for c in 1 2 4 8 16; do load "c$c" --concurrency $c; done
PEAK=$(python -c "import json,sys; print(max(json.load(open(f'$OUT/c{c}.json'))['rps'] for c in (1,2,4,8,16)))")
RATE=$(python -c "print(round(0.8 * $PEAK))")
echo "peak $PEAK req/s; open loop at 80 %: $RATE req/s"
load "rate80" --rate "$RATE"
