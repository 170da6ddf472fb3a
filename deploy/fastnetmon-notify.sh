#!/bin/sh
# FastNetMon notify script for ampguard. In /etc/fastnetmon.conf:
#   notify_script_path = /usr/local/bin/ampguard-fastnetmon-notify
#   notify_script_pass_details = on
# FastNetMon runs it as `SCRIPT IP DIRECTION PPS ACTION` with the attack details
# on stdin (for ban and attack_details); ampguard reads all of it, infers the
# vectors from the packet dump, and posts the ban or unban to the daemon.
export AMPGUARD_API="${AMPGUARD_API:-http://127.0.0.1:9470}"
export AMPGUARD_TOKEN_FILE="${AMPGUARD_TOKEN_FILE:-/etc/ampguard/token}"
exec /usr/local/bin/ampguard alert fastnetmon "$@"
