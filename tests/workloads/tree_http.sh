#!/bin/sh
# tree_http.sh PORT DIR: start `python3 -m http.server` on 127.0.0.1:PORT
# serving DIR and wait for it, as a service script does. The script and the
# server are one tree: dumped by the script's pid, both come back, and the
# script is still the server's parent, waiting for it.
#
#   READY pid=<script> server=<python>
#   EXITED status=<the server's exit status, as `wait` gives it>
set -u
python3 -u -m http.server "$1" --bind 127.0.0.1 --directory "$2" &
server=$!
echo "READY pid=$$ server=$server"
wait "$server"
echo "EXITED status=$?"
