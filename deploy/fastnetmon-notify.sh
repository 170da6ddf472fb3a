#!/bin/sh
# FastNetMon notify script for ampguard. In /etc/fastnetmon.conf:
#   notify_script_path = /usr/local/bin/ampguard-fastnetmon-notify
#   notify_script_pass_details = on
# FastNetMon runs it as `SCRIPT IP DIRECTION PPS ACTION` with the attack details
# on stdin (for ban and attack_details); ampguard infers the vectors from the
# packet dump and posts the ban or unban to the daemon.
export AMPGUARD_API="${AMPGUARD_API:-http://127.0.0.1:9470}"
# Prefer the alert-only token (alert_token_file in ampguard.toml): with it a
# compromised detector can post alerts and nothing else.
if [ -z "${AMPGUARD_TOKEN_FILE:-}" ]; then
    if [ -r /etc/ampguard/alert-token ]; then
        AMPGUARD_TOKEN_FILE=/etc/ampguard/alert-token
    else
        AMPGUARD_TOKEN_FILE=/etc/ampguard/token
    fi
fi
export AMPGUARD_TOKEN_FILE
# `--`: FastNetMon's four arguments are never options (an "IP" of
# `--api=http://elsewhere` is refused as an address, not obeyed).
case "${4:-}" in
    ban|attack_details)
        # FastNetMon waits until its details are read: ampguard gets the first
        # 4 MiB (MAX_STDIN_BYTES in alerts/fastnetmon.rs; far more than a
        # packet dump), the rest is read here and discarded, so a flood of
        # stdin costs no memory. The pipeline's status is ampguard's.
        { head -c 4194304; cat >/dev/null; } | /usr/local/bin/ampguard alert fastnetmon -- "$@"
        ;;
    *)
        exec /usr/local/bin/ampguard alert fastnetmon -- "$@"
        ;;
esac
