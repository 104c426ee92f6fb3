#!/usr/bin/env bash
# Install the Debian packages a command needs when they are missing: arguments are CHECK=PACKAGE pairs, where
# CHECK is a command on PATH or an absolute path. As root they are installed; otherwise the apt-get line is printed.
set -euo pipefail
missing=()
for pair in "$@"; do
  check="${pair%%=*}"
  package="${pair#*=}"
  if [[ "$check" == /* ]]; then
    [ -e "$check" ] || missing+=("$package")
  else
    command -v "$check" >/dev/null 2>&1 || missing+=("$package")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "error: missing Debian packages; install them with: sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
if [[ " ${missing[*]} " == *" postgresql-15 "* ]] && [ ! -e /etc/postgresql-common/createcluster.conf ]; then
  # the stack makes its own throwaway cluster: no system cluster, no service
  mkdir -p /etc/postgresql-common
  echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf
fi
echo "==> installing Debian packages: ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
