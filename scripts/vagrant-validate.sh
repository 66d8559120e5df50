#!/usr/bin/env bash
# `make vagrant-validate`: `vagrant validate` of vagrant/Vagrantfile for both
# providers it describes (libvirt and virtualbox), with both boxes (unset and
# local). Boots nothing and needs neither libvirtd nor VirtualBox.
#
# Without VirtualBox installed, vagrant refuses to validate for it ("could not
# detect VirtualBox") before it reads the provider block; `--ignore-provider`
# would skip that block altogether. So when VBoxManage is missing, a stand-in
# that only answers `--version` (NEUV_BPF_VBOX_VERSION, default 7.0.14r161095)
# is put first on PATH for the validation, and vagrant checks the
# virtualbox block (a misspelt setting fails) as it would with VirtualBox.
# Exit code: 0 when every combination validates, else 1.
set -euo pipefail
{
REPO=$(cd "$(dirname "$0")/.." && pwd)
export VAGRANT_CWD=$REPO/vagrant
VBOX_VERSION=${NEUV_BPF_VBOX_VERSION:-7.0.14r161095}
case $VBOX_VERSION in *[!0-9a-z.]* | '') echo "vagrant-validate: bad NEUV_BPF_VBOX_VERSION" >&2; exit 1 ;; esac
command -v vagrant >/dev/null || { echo "vagrant-validate: vagrant missing (run scripts/vagrant-deps.sh)" >&2; exit 1; }

stub=
cleanup() { [ -z "$stub" ] || rm -rf "$stub"; }
trap cleanup EXIT
path=$PATH
if ! command -v VBoxManage >/dev/null; then
  stub=$(mktemp -d)
  printf '#!/bin/sh\n[ "$1" != --version ] || echo %s\n' "$VBOX_VERSION" >"$stub/VBoxManage"
  chmod 755 "$stub/VBoxManage"
  path=$stub:$PATH
  echo "vagrant-validate: no VBoxManage here, a stand-in answers --version ($VBOX_VERSION)" >&2
fi

rc=0
for provider in libvirt virtualbox; do
  for box in '' local; do
    if out=$(PATH=$path VAGRANT_DEFAULT_PROVIDER=$provider NEUV_BPF_VAGRANT_BOX=$box vagrant validate 2>&1); then
      echo "vagrant-validate: $provider, box ${box:-default}: ok" >&2
    else
      echo "vagrant-validate: $provider, box ${box:-default}: FAILED" >&2
      echo "$out" >&2
      rc=1
    fi
  done
done
exit "$rc"
}
