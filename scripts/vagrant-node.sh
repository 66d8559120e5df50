#!/usr/bin/env bash
# Installs Node.js $NODE_VERSION (default 20.20.2) with npm under $PREFIX
# (default /usr/local), the layout of the official tarball: bin/node,
# bin/npm, bin/npx, lib/node_modules/npm. Run by the Vagrant provisioner in
# the guest and by scripts/vagrant-box.sh in the box's root file system.
# Debian 12 ships Node 18; package.json needs >= 20.
#
# Sources, in this order (NEUV_BPF_NODE_SOURCE=nodejs.org|npm picks one):
#   nodejs.org   node-v$NODE_VERSION-linux-<arch>.tar.xz, checked against the
#                release's SHASUMS256.txt
#   npm          the npm registry's node-linux-<arch>@$NODE_VERSION (the same
#                binary, published by the `node` package's maintainers) and
#                npm@$NPM_VERSION (default 10.8.2, the npm Node 20 bundles),
#                each checked against the sha512 integrity the registry lists
# Needs curl, jq and xz-utils (installed from Debian's packages if missing).
# Quick when that node is already there.
set -euo pipefail

NODE_VERSION=${NODE_VERSION:-20.20.2}
NPM_VERSION=${NPM_VERSION:-10.8.2}
PREFIX=${PREFIX:-/usr/local}
SOURCE=${NEUV_BPF_NODE_SOURCE:-auto}
REGISTRY=${NPM_CONFIG_REGISTRY:-https://registry.npmjs.org}
REGISTRY=${REGISTRY%/}

say() { echo "node: $*" >&2; }
die() { say "$*"; exit 1; }

case $NODE_VERSION in '' | *[!0-9.]*) die "NODE_VERSION must look like 20.20.2" ;; esac
case $NPM_VERSION in '' | *[!0-9.]*) die "NPM_VERSION must look like 10.8.2" ;; esac
case $SOURCE in auto | nodejs.org | npm) ;; *) die "NEUV_BPF_NODE_SOURCE must be auto, nodejs.org or npm" ;; esac

if [ -x "$PREFIX/bin/node" ] && [ "$("$PREFIX/bin/node" -p 'process.versions.node')" = "$NODE_VERSION" ] &&
  [ -x "$PREFIX/bin/npx" ]; then
  say "$NODE_VERSION already installed in $PREFIX"
  exit 0
fi

case "$(uname -m)" in
  x86_64) arch=x64 ;;
  aarch64) arch=arm64 ;;
  *) die "unsupported architecture $(uname -m)" ;;
esac

need=()
for c in curl:curl jq:jq xz:xz-utils update-ca-certificates:ca-certificates; do
  command -v "${c%%:*}" >/dev/null || need+=("${c#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fetch() { curl -fsSL --connect-timeout 15 --retry 2 -o "$2" "$1"; }

from_nodejs_org() {
  local tarball="node-v${NODE_VERSION}-linux-${arch}.tar.xz" base="https://nodejs.org/dist/v${NODE_VERSION}"
  fetch "$base/$tarball" "$tmp/$tarball" && fetch "$base/SHASUMS256.txt" "$tmp/SHASUMS256.txt" || return 1
  (cd "$tmp" && grep " $tarball\$" SHASUMS256.txt | sha256sum -c - >/dev/null) || die "$tarball: checksum mismatch"
  mkdir -p "$PREFIX"
  tar -xJf "$tmp/$tarball" -C "$PREFIX" --strip-components=1 --no-same-owner \
    --exclude=CHANGELOG.md --exclude=LICENSE --exclude=README.md
}

# An npm package's tarball, checked against the integrity its registry
# metadata lists, unpacked into $3.
npm_package() {
  local name=$1 version=$2 dest=$3 url integrity want got
  fetch "$REGISTRY/$name/$version" "$tmp/$name.json" || return 1
  url=$(jq -er '.dist.tarball' "$tmp/$name.json") || die "$name@$version: no tarball in the registry's metadata"
  integrity=$(jq -er '.dist.integrity' "$tmp/$name.json") || die "$name@$version: no integrity in the registry's metadata"
  case $integrity in sha512-*) ;; *) die "$name@$version: unexpected integrity $integrity" ;; esac
  fetch "$url" "$tmp/$name.tgz" || return 1
  want=$(printf %s "${integrity#sha512-}" | base64 -d | od -An -v -tx1 | tr -d ' \n')
  got=$(sha512sum "$tmp/$name.tgz" | cut -d' ' -f1)
  [ "$got" = "$want" ] || die "$name@$version: sha512 mismatch ($got, the registry says $want)"
  mkdir -p "$dest"
  tar -xzf "$tmp/$name.tgz" -C "$dest" --strip-components=1 --no-same-owner
}

from_npm() {
  npm_package "node-linux-$arch" "$NODE_VERSION" "$tmp/node" || return 1
  npm_package npm "$NPM_VERSION" "$tmp/npm" || return 1
  mkdir -p "$PREFIX/bin" "$PREFIX/lib/node_modules"
  install -m 755 "$tmp/node/bin/node" "$PREFIX/bin/node"
  [ -d "$tmp/node/include" ] && cp -r "$tmp/node/include" "$PREFIX/"
  rm -rf "$PREFIX/lib/node_modules/npm"
  mv "$tmp/npm" "$PREFIX/lib/node_modules/npm"
  ln -sf ../lib/node_modules/npm/bin/npm-cli.js "$PREFIX/bin/npm"
  ln -sf ../lib/node_modules/npm/bin/npx-cli.js "$PREFIX/bin/npx"
}

done=
if [ "$SOURCE" != npm ]; then
  if from_nodejs_org; then
    done=nodejs.org
  elif [ "$SOURCE" = nodejs.org ]; then
    die "cannot download Node $NODE_VERSION from nodejs.org"
  else
    say "nodejs.org unreachable, using the npm registry ($REGISTRY)"
  fi
fi
if [ -z "$done" ]; then
  from_npm || die "cannot download node-linux-$arch@$NODE_VERSION or npm@$NPM_VERSION from $REGISTRY"
  done="the npm registry (node-linux-$arch@$NODE_VERSION, npm@$NPM_VERSION)"
fi
say "installed $("$PREFIX/bin/node" --version) and npm $("$PREFIX/bin/node" "$PREFIX/lib/node_modules/npm/bin/npm-cli.js" --version) in $PREFIX from $done"
