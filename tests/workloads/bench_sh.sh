#!/usr/bin/env bash
# bench_sh.sh: the bash workload of the roundtrip benchmark.
#
# Fills an array and an associative array of 1000 entries each, prints
# READY, then blocks in `read` of stdin. Commands, one per line:
#   resume  prints "RESUMED t=<CLOCK_REALTIME ns>" as the first command
#           after the read returns (from $EPOCHREALTIME: microseconds), then
#           expands both arrays whole (bash cannot read its own memory:
#           expanding every variable is how it touches its heap), prints
#           "POPULATED t=<ns>", checks every entry and prints
#           "PASS bench_sh.sh ..." or "FAIL bench_sh.sh <reason>"
#   check   the check alone
#   quit    prints BYE and exits 0

declare -a squares
declare -A names
for ((i = 0; i < 1000; i++)); do
	squares[i]=$((i * i))
	names[key$i]=$((i * 3))
done

# Sets $reason to the first entry that differs, or to nothing (no
# subshell: a fork would cost more than the walk).
differs() {
	local i
	reason=
	for ((i = 0; i < 1000; i++)); do
		[[ ${squares[i]} == $((i * i)) ]] || { reason="squares[$i] is '${squares[i]}'"; return; }
		[[ ${names[key$i]} == $((i * 3)) ]] || { reason="names[key$i] is '${names[key$i]}'"; return; }
	done
}

verdict() {
	if [[ -n $reason ]]; then
		echo "FAIL bench_sh.sh $reason"
	else
		echo "PASS bench_sh.sh pid=$BASHPID"
	fi
}

echo "READY pid=$$"
while read -r line; do
	case $line in
	resume)
		t=$EPOCHREALTIME
		echo "RESUMED t=${t/./}000"
		all="${squares[*]} ${names[*]}"
		t=$EPOCHREALTIME
		echo "POPULATED t=${t/./}000"
		differs
		verdict
		;;
	check)
		differs
		verdict
		;;
	quit)
		echo BYE
		exit 0
		;;
	esac
done
