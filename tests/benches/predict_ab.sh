#!/usr/bin/env bash
# POST /predict with a 64x64 PNG of a digit, two gateway builds side by side, alternated.
#
#   tests/benches/predict_ab.sh OLD_EDGEPLUG OLD_DIGITS_DIR NEW_EDGEPLUG NEW_DIGITS_DIR [ROUNDS] [SECS]
#
# Each build serves its own digits plugin directory (plugin.toml, plugin.wasm, weights, self-tests),
# packed and signed with a throwaway key. wrk (Debian's `wrk`) drives one gateway at a time:
# ROUNDS alternated rounds of SECS seconds at 4 connections, then the same at 1 connection for
# the per-request latency. Prints every round and the medians; needs python3 for the PNG.
# OLD_CONFIG / NEW_CONFIG (environment) add lines to that build's gateway.toml.
# MID_EDGEPLUG and MID_DIGITS_DIR (environment, both or neither) add a third build, "mid" (say,
# the commit before a change, when OLD is a release further back), alternated between the two
# in every round and reported against OLD; MID_CONFIG adds lines to its gateway.toml.
set -euo pipefail

if [ $# -lt 4 ]; then
    sed -n 2,13p "$0"
    exit 2
fi
OLD_BIN=$(realpath "$1") OLD_DIR=$(realpath "$2") NEW_BIN=$(realpath "$3") NEW_DIR=$(realpath "$4")
ROUNDS=${5:-3} SECS=${6:-10}
BUILDS=(old new)
if [ -n "${MID_EDGEPLUG:-}" ]; then
    MID_BIN=$(realpath "$MID_EDGEPLUG") MID_DIR=$(realpath "${MID_DIGITS_DIR:?MID_EDGEPLUG needs MID_DIGITS_DIR}")
    BUILDS=(old mid new)
fi
command -v wrk > /dev/null || { echo "needs wrk (apt-get install wrk)"; exit 2; }

WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2> /dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

# The 8x8 "seven" of the digits test split, scaled up to 64x64 grayscale, as a multipart form.
python3 - "$WORK" "$(dirname "$0")/../fixtures/digits/seven.json" <<'EOF'
import json, struct, sys, zlib
work, seven = sys.argv[1], sys.argv[2]
rows = json.load(open(seven))
raw = b"".join(b"\0" + bytes(min(255, rows[y // 8][x // 8] * 16) for x in range(64)) for y in range(64))
chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 64, 8, 0, 0, 0, 0))
       + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
body = (b'--abbench\r\nContent-Disposition: form-data; name="image"; filename="seven.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + png + b"\r\n--abbench--\r\n")
open(f"{work}/body.bin", "wb").write(body)
open(f"{work}/predict.lua", "w").write(
    'wrk.method = "POST"\n'
    f'local f = io.open("{work}/body.bin", "rb"); wrk.body = f:read("*a"); f:close()\n'
    'wrk.headers["Content-Type"] = "multipart/form-data; boundary=abbench"\n')
EOF

start() { # name bin plugin_dir port extra_config
    local name=$1 bin=$2 dir=$3 port=$4 extra=$5 home="$WORK/$1"
    mkdir -p "$home/trust"
    "$bin" keygen --out "$home/keys" --name bench > /dev/null
    cp "$home/keys/bench.pub" "$home/trust/"
    "$bin" pack "$dir" --key "$home/keys/bench.key" --out "$home/digits.epk" > /dev/null
    printf 'listen = "127.0.0.1:%s"\nstate_dir = "state"\ntrust_dir = "trust"\nadmin_token = "t"\ndefault_plugin = "digits"\n' \
        "$port" > "$home/gateway.toml"
    printf '%b\n' "$extra" >> "$home/gateway.toml"
    EDGEPLUG_LOG=warn "$bin" serve --config "$home/gateway.toml" --install "$home/digits.epk" \
        > "$home/log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 100); do
        curl -sf -o /dev/null "http://127.0.0.1:$port/v2/health/ready" && break
        sleep 0.2
    done
    local answer
    answer=$(curl -sf -H 'content-type: multipart/form-data; boundary=abbench' \
        --data-binary "@$WORK/body.bin" "http://127.0.0.1:$port/predict")
    echo "$name answers: $answer"
    [ "$answer" = '{"prediction":7}' ] || { echo "$name gave a wrong answer"; cat "$home/log"; exit 1; }
}

start old "$OLD_BIN" "$OLD_DIR" 18181 "${OLD_CONFIG:-}"
start new "$NEW_BIN" "$NEW_DIR" 18182 "${NEW_CONFIG:-}"
[ "${#BUILDS[@]}" = 3 ] && start mid "$MID_BIN" "$MID_DIR" 18183 "${MID_CONFIG:-}"
declare -A PORT=([old]=18181 [new]=18182 [mid]=18183)

measure() { # port connections -> "req/s p50_us"
    wrk -t1 -c"$2" -d"${SECS}s" --latency -s "$WORK/predict.lua" "http://127.0.0.1:$1/predict" |
        awk '/Requests\/sec/ {rps=$2} /^ +50%/ {p=$2} /Non-2xx/ {bad=$NF}
             END {
               if (p ~ /us$/) {sub(/us/,"",p)} else if (p ~ /ms$/) {sub(/ms/,"",p); p*=1000}
               printf "%.0f %.0f %s\n", rps, p, (bad == "" ? 0 : bad)
             }'
}

declare -A RPS LAT
for c in 4 1; do
    for r in $(seq "$ROUNDS"); do
        for which in "${BUILDS[@]}"; do
            read -r rps p50 bad < <(measure "${PORT[$which]}" "$c")
            [ "$bad" = 0 ] || { echo "$which: $bad non-2xx answers"; exit 1; }
            echo "connections=$c round=$r $which: $rps req/s, p50 $p50 us"
            RPS[$which.$c]+="$rps "
            LAT[$which.$c]+="$p50 "
        done
    done
done

median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo
for c in 4 1; do
    o=$(echo "${RPS[old.$c]}" | median) n=$(echo "${RPS[new.$c]}" | median)
    ol=$(echo "${LAT[old.$c]}" | median) nl=$(echo "${LAT[new.$c]}" | median)
    echo "connections=$c median: old $o req/s (p50 $ol us), new $n req/s (p50 $nl us), new/old $(awk "BEGIN {printf \"%.2f\", $n / $o}")"
    if [ "${#BUILDS[@]}" = 3 ]; then
        m=$(echo "${RPS[mid.$c]}" | median) ml=$(echo "${LAT[mid.$c]}" | median)
        echo "connections=$c median: mid $m req/s (p50 $ml us), mid/old $(awk "BEGIN {printf \"%.2f\", $m / $o}"), new/mid $(awk "BEGIN {printf \"%.2f\", $n / $m}")"
    fi
done
