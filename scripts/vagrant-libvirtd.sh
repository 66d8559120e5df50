#!/usr/bin/env bash
# Starts or stops the libvirt daemons vagrant-libvirt talks to, on machines
# where no service manager runs them (containers, sandboxes without systemd).
#
#   scripts/vagrant-libvirtd.sh start STATE   start virtlogd and libvirtd unless
#                                             qemu:///system already answers; the
#                                             pids of what it started go to STATE
#   scripts/vagrant-libvirtd.sh stop STATE    stop exactly those pids, nothing else
#
# With systemd (or a libvirtd someone else runs), start finds libvirt answering
# and records nothing, so stop leaves it alone. Used by scripts/vagrant-test.sh.
set -euo pipefail

say() { echo "vagrant-libvirtd: $*" >&2; }
die() { say "$*"; exit 1; }

[ $# -eq 2 ] || die "usage: $0 start|stop STATE-FILE"
cmd=$1 state=$2
URI=qemu:///system

answers() { virsh -c "$URI" version >/dev/null 2>&1; }

case $cmd in
  start)
    : >"$state"
    if answers; then
      say "libvirt already answers on $URI"
      exit 0
    fi
    [ "$(id -u)" -eq 0 ] || die "libvirtd is not running and only root can start it"
    for d in virtlogd libvirtd; do command -v "$d" >/dev/null || die "$d missing (run scripts/vagrant-deps.sh)"; done
    mkdir -p /run/libvirt
    dir=$(mktemp -d /run/libvirt/neuv-bpf.XXXXXX)
    for d in virtlogd libvirtd; do
      if [ -S "/run/libvirt/$d-sock" ] || { [ "$d" = libvirtd ] && [ -S /run/libvirt/libvirt-sock ]; }; then
        # A socket with nobody behind it (a daemon killed earlier) would make
        # the new daemon refuse to start; one with a live daemon means it runs.
        pid=$(cat "/run/$d.pid" 2>/dev/null || true)
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then continue; fi
      fi
      "$d" --daemon --pid-file="$dir/$d.pid" || die "$d did not start"
      for _ in $(seq 50); do [ -s "$dir/$d.pid" ] && break; sleep 0.2; done
      pid=$(cat "$dir/$d.pid" 2>/dev/null || true)
      [ -n "$pid" ] || die "$d wrote no pid file"
      echo "$d $pid $dir" >>"$state"
      say "started $d (pid $pid)"
    done
    for _ in $(seq 100); do answers && exit 0; sleep 0.3; done
    die "libvirtd started but $URI does not answer"
    ;;
  stop)
    [ -f "$state" ] || exit 0
    # libvirtd first (it holds virtlogd's connections), then virtlogd.
    tac "$state" | while read -r d pid dir; do
      [ -n "$pid" ] || continue
      # Only the process we started: same pid, same program.
      if [ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" = "$d" ]; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$pid" 2>/dev/null && { say "$d (pid $pid) ignored SIGTERM, killing it"; kill -KILL "$pid" 2>/dev/null || true; }
        say "stopped $d (pid $pid)"
      fi
      rm -rf "$dir"
    done
    rm -f "$state"
    ;;
  *) die "usage: $0 start|stop STATE-FILE" ;;
esac
