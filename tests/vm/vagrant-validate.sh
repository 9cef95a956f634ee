#!/usr/bin/env bash
# Checks vagrant/: `vagrant validate` on the Vagrantfile (with the libvirt provider's own
# checks where the vagrant-libvirt plugin is installed; VirtualBox's need VirtualBox itself,
# which Debian does not ship), and shellcheck on provision.sh and the VM stages' scripts. Vagrant's state and home go to
# a temp dir that is removed, so nothing is left in the tree or in ~/.vagrant.d.
set -euo pipefail
cd "$(dirname "$0")/../../vagrant"
command -v vagrant >/dev/null || { echo "tests/vm/vagrant-validate.sh: vagrant is not installed (bash tests/install-deps.sh)"; exit 1; }
tmp=$(mktemp -d /tmp/tug-vagrant.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
export VAGRANT_HOME=$tmp/home VAGRANT_DOTFILE_PATH=$tmp/dot VAGRANT_CHECKPOINT_DISABLE=1
if vagrant plugin list 2>/dev/null | grep -q '^vagrant-libvirt '; then
  echo "vagrant validate (libvirt provider)"
  VAGRANT_DEFAULT_PROVIDER=libvirt vagrant validate
else
  echo "vagrant validate --ignore-provider (no vagrant-libvirt plugin here)"
  vagrant validate --ignore-provider
fi
# Both control planes: three servers on etcd (the default) and one server.
echo "vagrant validate --ignore-provider, TUG_CONTROL_PLANE=single"
TUG_CONTROL_PLANE=single vagrant validate --ignore-provider
if TUG_CONTROL_PLANE=two vagrant validate --ignore-provider >"$tmp/bad" 2>&1 ||
  ! grep -q "TUG_CONTROL_PLANE must be ha or single" "$tmp/bad"; then
  echo "vagrant/Vagrantfile: TUG_CONTROL_PLANE=two was not refused by name:"; cat "$tmp/bad"; exit 1
fi
if command -v shellcheck >/dev/null; then
  shellcheck provision.sh
  (cd .. && shellcheck -x tests/vm/*.sh)
else
  bash -n provision.sh
  for f in ../tests/vm/*.sh; do bash -n "$f"; done
fi
echo "vagrant/: valid"
