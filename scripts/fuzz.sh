#!/bin/sh
# Fuzz every target for a bounded time, one after the other.
#
#   scripts/fuzz.sh                      # every target, FUZZTIME each (default 30s)
#   FUZZTIME=2m scripts/fuzz.sh          # longer
#   scripts/fuzz.sh FuzzDecodeJSON Open  # only the targets whose name holds one of these
#
# One worker per target (FUZZPARALLEL, default 1) so the run stays polite on
# a shared machine. A target that finds a failure writes the input under its
# package's testdata/fuzz/<Target>/ and stops the script; commit that file
# with the fix, and plain `go test ./...` replays it from then on.
# docs/testing.md lists what each target checks.
set -eu
cd "$(dirname "$0")/.."

FUZZTIME=${FUZZTIME:-30s}
FUZZPARALLEL=${FUZZPARALLEL:-1}

# package target
targets='
./internal/apikey FuzzValid
./internal/apikey FuzzValidMutated
./internal/httpapi FuzzDecodeJSON
./internal/httpapi FuzzManagementAPI
./internal/keybridge FuzzProviderSettings
./internal/keybridge FuzzValidateBaseURL
./internal/upstream FuzzProbeRequest
./internal/upstream FuzzParseModels
./internal/gateway FuzzUsageScan
./internal/gateway FuzzWSUsage
./internal/gateway FuzzScanReqBody
./internal/gateway FuzzScanModels
./internal/auth FuzzVerifySigV4
./internal/secrets FuzzOpen
'

echo "$targets" | while read -r pkg target; do
	[ -n "$pkg" ] || continue
	if [ $# -gt 0 ]; then
		want=no
		for p in "$@"; do
			case $target in *"$p"*) want=yes ;; esac
		done
		[ $want = yes ] || continue
	fi
	echo "== $pkg $target ($FUZZTIME)"
	go test "$pkg" -run '^$' -fuzz "^$target\$" -fuzztime "$FUZZTIME" -parallel "$FUZZPARALLEL"
done
