#!/usr/bin/env bash
# loop.sh: a self-checking bash victim for crimg.
#
# Prints READY, then "TICK n" about every --interval-ms (default 10). It keeps
# an array and an associative array with known contents and a running sum of
# the ticks. On SIGUSR2 or the stdin line "check" it verifies them and prints
# "PASS loop.sh pid=<pid> tick=<n>" or "FAIL loop.sh <reason>". "quit" on
# stdin prints BYE and exits 0. ($$ is the pid at start; after a restore the
# process has a new pid, so the PASS line reports $BASHPID, asked anew.)

interval_ms=10
if [[ $# -eq 2 && $1 == --interval-ms ]]; then
	interval_ms=$2
elif [[ $# -ne 0 ]]; then
	echo "ERROR usage: loop.sh [--interval-ms N]"
	exit 2
fi
timeout=$(printf '0.%03d' "$interval_ms")
((interval_ms >= 1000)) && timeout=$((interval_ms / 1000))

declare -a squares
declare -A names
for ((i = 0; i < 1000; i++)); do
	squares[i]=$((i * i))
	names[key$i]=$((i * 3))
done
tick=0
tick_sum=0
check_requested=0

check() {
	check_requested=0
	local reasons=() i
	for ((i = 0; i < 1000; i++)); do
		if [[ ${squares[i]} != $((i * i)) ]]; then
			reasons+=("squares[$i] is '${squares[i]}'")
			break
		fi
		if [[ ${names[key$i]} != $((i * 3)) ]]; then
			reasons+=("names[key$i] is '${names[key$i]}'")
			break
		fi
	done
	if ((tick_sum != tick * (tick + 1) / 2)); then
		reasons+=("tick sum $tick_sum does not match tick $tick")
	fi
	if ((${#reasons[@]})); then
		local IFS=';'
		echo "FAIL loop.sh ${reasons[*]}"
	else
		echo "PASS loop.sh pid=$BASHPID tick=$tick"
	fi
}

trap 'check_requested=1' USR2
echo "READY pid=$$ interval_ms=$interval_ms"
stdin_open=1
partial=
while :; do
	# read -t doubles as the tick sleep; a signal interrupts it and runs the trap.
	if ((stdin_open)); then
		if read -r -t "$timeout" line; then
			line=$partial$line
			partial=
			case $line in
			check) check ;;
			quit)
				echo BYE
				exit 0
				;;
			esac
		elif (($? > 128)); then
			# Timed out. read's deadline is wall-clock time, so after a
			# freeze (a dump) it can expire in the middle of a line that
			# is already there: bash then leaves what it read in $line.
			partial+=$line
		else
			stdin_open=0 # EOF
		fi
	else
		sleep "$timeout"
	fi
	((check_requested)) && check
	((tick += 1))
	((tick_sum += tick))
	echo "TICK $tick"
done
