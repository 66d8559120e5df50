#!/usr/bin/env bash
# Builds a container image's root filesystem tarball from this machine's
# Debian packages and files of ours, nothing from a registry: the offline
# test image (test/containers.test.ts, test/oci-hook.test.ts import it with
# `podman import`) and the service's image (make image, scripts/image.sh).
#
# Usage: container-rootfs.sh OUT.tar [--deb PKG]... [--copy SRC=DEST]...
#                            [--link PATH=TARGET]... [TOOL...]
#   --deb PKG         the files of the installed Debian package PKG and of
#                     every package it depends on (Depends and Pre-Depends,
#                     the first installed alternative), as dpkg lists them,
#                     without docs, man pages, locales, glibc's iconv modules,
#                     /etc and /var (the image has no dpkg: no maintainer
#                     script runs)
#   --skip PKG        a dependency not to follow (one whose only use is a
#                     maintainer script, such as debconf)
#   --copy SRC=DEST   a file or directory of ours at DEST
#   --link PATH=TARGET  a symbolic link
#   TOOL              a file of ours at /bin/<its name>
# The layout is merged /usr (/bin, /sbin, /lib, /lib64 link to /usr), as on
# Debian 12 itself; /etc holds a root passwd and group. Reproducible: fixed
# owner, order and times.
set -euo pipefail
die() { echo "container-rootfs: $*" >&2; exit 1; }
[ $# -ge 1 ] || die "usage: container-rootfs.sh OUT.tar [--deb PKG]... [--skip PKG]... [--copy SRC=DEST]... [--link PATH=TARGET]... [TOOL...]"
out=$1
shift
debs=()
declare -A skip=()
copies=()
links=()
tools=()
while [ $# -gt 0 ]; do
  case $1 in
    --deb) debs+=("${2:?--deb needs a package}"); shift 2 ;;
    --skip) skip[${2:?--skip needs a package}]=1; shift 2 ;;
    --copy) [[ ${2:-} == ?*=/?* ]] || die "--copy needs SRC=/DEST"; copies+=("$2"); shift 2 ;;
    --link) [[ ${2:-} == /?*=?* ]] || die "--link needs /PATH=TARGET"; links+=("$2"); shift 2 ;;
    -*) die "unknown option $1" ;;
    *) tools+=("$1"); shift ;;
  esac
done
[ -L /bin ] && [ -L /lib ] || [ ${#debs[@]} -eq 0 ] || die "this host's / is not merged /usr (/bin and /lib are not links): --deb needs it"

installed() { [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]; }

# The packages and their dependency closure, on this machine's dpkg database.
declare -A seen=()
queue=("${debs[@]}")
pkgs=()
while [ ${#queue[@]} -gt 0 ]; do
  p=${queue[0]}
  queue=("${queue[@]:1}")
  [ -z "${seen[$p]:-}" ] || continue
  seen[$p]=1
  installed "$p" || die "Debian package $p is not installed (make deps)"
  pkgs+=("$p")
  IFS=',' read -ra groups <<<"$(dpkg-query -W -f='${Pre-Depends},${Depends}' "$p")"
  for g in "${groups[@]}"; do
    [ -n "${g// /}" ] || continue
    pick=
    IFS='|' read -ra alts <<<"$g"
    for a in "${alts[@]}"; do
      a=${a#"${a%%[! ]*}"}
      a=${a%% *}
      a=${a%%:*}
      if [ -n "${skip[$a]:-}" ]; then pick=skip; break; fi
      if installed "$a"; then pick=$a; break; fi
    done
    [ -n "$pick" ] || die "$p depends on '${g# }' and none of it is installed"
    [ "$pick" = skip ] || queue+=("$pick")
  done
done

dir=$(mktemp -d)
chmod 755 "$dir"
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/usr/bin" "$dir/usr/sbin" "$dir/usr/lib" "$dir/usr/lib64" "$dir/etc" "$dir/tmp" "$dir/proc" "$dir/sys" "$dir/dev" "$dir/run"
for d in bin sbin lib lib64; do ln -s "usr/$d" "$dir/$d"; done

if [ ${#pkgs[@]} -gt 0 ]; then
  # Each package's paths, /bin/x written as /usr/bin/x (merged /usr), what exists here.
  list=$(mktemp)
  trap 'rm -rf "$dir" "$list"' EXIT
  dpkg-query -L "${pkgs[@]}" |
    sed -E 's#^/(bin|sbin|lib|lib64)(/|$)#/usr/\1\2#' |
    grep -Ev '^/usr/share/(doc|doc-base|man|info|locale|lintian|bug|bash-completion|zsh)(/|$)|^/usr/lib/[^/]+/gconv(/|$)|^/(etc|var|usr/lib/systemd|usr/lib/tmpfiles\.d)(/|$)|^/usr(/(bin|sbin|lib|lib64))?$|^/\.$' |
    sort -u | while IFS= read -r f; do [ -e "$f" ] || [ -L "$f" ] && printf '%s\n' "${f#/}"; done >"$list"
  tar -C / --no-recursion -cf - -T "$list" | tar -C "$dir" -xpf -
fi
for c in "${copies[@]}"; do
  src=${c%%=*}
  dest=$dir${c#*=}
  mkdir -p "$(dirname "$dest")"
  cp -a "$src" "$dest"
done
for t in "${tools[@]}"; do cp "$t" "$dir/bin/$(basename "$t")"; done
for l in "${links[@]}"; do
  mkdir -p "$dir$(dirname "${l%%=*}")"
  ln -sfn "${l#*=}" "$dir${l%%=*}"
done
echo 'root:x:0:0:root:/:/bin/sh' > "$dir/etc/passwd"
echo 'root:x:0:' > "$dir/etc/group"
chmod 1777 "$dir/tmp"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$dir" -cf "$out.tmp" .
mv "$out.tmp" "$out"
