#!/bin/sh
# Give each replica of a scaled actor service its own stable actor id and state directory.
#
#   actor-slot.sh hilrl actor [OPTIONS ...]
#
# Claims the first free slot N (0, 1, 2, ...) under $HILRL_SLOT_DIR by taking an exclusive flock on
# $HILRL_SLOT_DIR/$HILRL_SLOT_PREFIX-N.slot, then execs the command with
#   --actor-id $HILRL_SLOT_PREFIX-N --state-dir $HILRL_SLOT_DIR/$HILRL_SLOT_PREFIX-N
# appended. The lock is on a descriptor the exec'd actor inherits, so it is held exactly as long as
# the actor runs. With a volume shared by all replicas, `docker compose up --scale actor=4` gives
# sim-0..sim-3, and a recreated container takes a free slot back with its outbox (unacknowledged
# batches are resent, nothing is lost or doubled). Compose's own replica index is not visible inside
# the container, and the hostname (the container id) changes on every recreation, so neither is used.
#
# Environment: HILRL_SLOT_PREFIX (default sim), HILRL_SLOT_DIR (default /var/lib/hilrl/actors),
# HILRL_SLOT_MAX (default 64 slots).
set -eu
prefix="${HILRL_SLOT_PREFIX:-sim}"
dir="${HILRL_SLOT_DIR:-/var/lib/hilrl/actors}"
max="${HILRL_SLOT_MAX:-64}"
if [ "$#" -eq 0 ]; then
    echo "usage: actor-slot.sh hilrl actor [OPTIONS ...]" >&2
    exit 2
fi
mkdir -p "$dir"
i=0
while [ "$i" -lt "$max" ]; do
    exec 9>>"$dir/$prefix-$i.slot"
    if flock -n 9; then
        echo "actor-slot.sh: slot $prefix-$i" >&2
        exec "$@" --actor-id "$prefix-$i" --state-dir "$dir/$prefix-$i"
    fi
    exec 9>&-
    i=$((i + 1))
done
echo "actor-slot.sh: all $max slots under $dir are taken (raise HILRL_SLOT_MAX)" >&2
exit 1
