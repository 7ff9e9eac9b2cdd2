#!/usr/bin/env bash
# fetch-chromium.sh PREFIX
#
# Rootless fetch of Debian's chromium (plus the shared libraries this host lacks
# and the DejaVu fonts) into PREFIX, using apt with private state/config dirs.
# Prints (as the only line on stdout) the path of a wrapper that runs headless
# chromium with the right LD_LIBRARY_PATH / FONTCONFIG_FILE.
#
# Idempotent: if PREFIX already holds a complete, working install it only
# re-checks it (no network) and prints the wrapper path. REFRESH=1 forces a new
# index update and re-fetch (e.g. to pick up a chromium security update).
#
# Every .deb is checked against the SHA256 of the signed Packages index (apt
# checks it on download; the script checks it again itself before extracting).
#
# Env knobs: DEBIAN_MIRROR (default http://deb.debian.org/debian),
#            DEBIAN_SECURITY_MIRROR (default http://deb.debian.org/debian-security),
#            REFRESH=1, DPKG_STATUS (host package database to resolve against;
#            default /var/lib/dpkg/status). apt honours http_proxy from the environment.
set -euo pipefail

log() { printf '[fetch-chromium] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ $# -eq 1 ] || die "usage: $0 PREFIX"
mkdir -p "$1"
PREFIX=$(cd "$1" && pwd -P)
ROOT="$PREFIX/root"            # extracted package contents
APTD="$PREFIX/apt"             # private apt config/state/cache
DEBS="$PREFIX/debs"            # verified .deb files
WRAPPER="$PREFIX/bin/chromium-headless"
STAMP="$PREFIX/.complete"

for t in apt-get dpkg dpkg-deb dpkg-query sha256sum ldd mktemp; do
  command -v "$t" >/dev/null || die "missing tool: $t"
done

# shellcheck disable=SC1091
. /etc/os-release
CODENAME=${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}
[ "${ID:-}" = debian ] || log "WARNING: ID=${ID:-?} is not debian; continuing"
ARCH=$(dpkg --print-architecture)
MULTIARCH=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -dumpmachine 2>/dev/null || echo x86_64-linux-gnu)
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
[ -r "$KEYRING" ] || die "$KEYRING not readable (package debian-archive-keyring)"
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECMIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

LIBPATH="$ROOT/usr/lib/$MULTIARCH:$ROOT/usr/lib/$MULTIARCH/pulseaudio:$ROOT/lib/$MULTIARCH:$ROOT/usr/lib/chromium"

check_install() {   # quiet health check of an existing install
  [ -f "$STAMP" ] && [ -x "$WRAPPER" ] && [ -x "$ROOT/usr/lib/chromium/chromium" ] || return 1
  ! LD_LIBRARY_PATH="$LIBPATH" ldd "$ROOT/usr/lib/chromium/chromium" 2>&1 | grep -q 'not found' || return 1
  "$WRAPPER" --version >/dev/null 2>&1
}

if [ "${REFRESH:-0}" != 1 ] && check_install; then
  log "already installed: $(cat "$STAMP" | head -1)"
  echo "$WRAPPER"; exit 0
fi

# ---------------------------------------------------------------- private apt
mkdir -p "$APTD"/{etc/apt.conf.d,etc/preferences.d,etc/sources.list.d,etc/trusted.gpg.d} \
         "$APTD"/state/lists/partial "$APTD"/cache/archives/partial "$APTD"/log "$DEBS"
cat > "$APTD/etc/sources.list" <<EOF
deb [arch=$ARCH signed-by=$KEYRING] $MIRROR $CODENAME main
deb [arch=$ARCH signed-by=$KEYRING] $MIRROR $CODENAME-updates main
deb [arch=$ARCH signed-by=$KEYRING] $SECMIRROR $CODENAME-security main
EOF
# APT_CONFIG is read before /etc/apt/apt.conf.d, and it redirects Dir::Etc::Parts,
# so none of the host's apt configuration or sources are used. The real dpkg
# status file is read (read-only) so that libraries already installed on the
# host are not fetched again.
cat > "$APTD/apt.conf" <<EOF
Dir::Etc "$APTD/etc/";
Dir::Etc::main "$APTD/etc/apt.conf";
Dir::Etc::Parts "$APTD/etc/apt.conf.d/";
Dir::Etc::SourceList "$APTD/etc/sources.list";
Dir::Etc::SourceParts "$APTD/etc/sources.list.d/";
Dir::Etc::Preferences "$APTD/etc/preferences";
Dir::Etc::PreferencesParts "$APTD/etc/preferences.d/";
Dir::Etc::Trusted "$APTD/etc/trusted.gpg";
Dir::Etc::TrustedParts "$APTD/etc/trusted.gpg.d/";
Dir::State "$APTD/state/";
Dir::State::status "${DPKG_STATUS:-/var/lib/dpkg/status}";
Dir::Cache "$APTD/cache/";
Dir::Log "$APTD/log/";
Debug::NoLocking "true";
APT::Sandbox::User "$(id -un)";
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
Acquire::IndexTargets::deb::DEP-11::DefaultEnabled "false";
Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled "false";
Acquire::IndexTargets::deb::DEP-11-icons-hidpi::DefaultEnabled "false";
Acquire::Retries "3";
EOF
export APT_CONFIG="$APTD/apt.conf"
APT=(apt-get -q)
: > "$APTD/etc/apt.conf"   # (empty) main config file

log "apt-get update ($CODENAME, $ARCH) from $MIRROR and $SECMIRROR"
"${APT[@]}" update >&2 || die "apt-get update failed"

# ------------------------------------------------------------ resolve the set
# Simulate 'apt-get install chromium' against the host's dpkg status: the 'Inst'
# lines are exactly what this host lacks. fonts-dejavu-core is always added so
# that rendering does not depend on host fonts.
"${APT[@]}" -s install chromium > "$APTD/sim.txt" || die "could not resolve chromium's dependencies"
: > "$APTD/pkgs.txt"
while read -r _ pkg rest; do
  case "$rest" in
    \[*) # upgrade of a package installed on the host (e.g. libc6): must not be
          # shadowed via LD_LIBRARY_PATH; skip it and rely on the ldd check below.
          log "WARNING: host has $pkg ${rest%%]*}]; chromium wants a newer one - not fetched"; continue ;;
  esac
  ver=${rest#(}; ver=${ver%% *}
  echo "$pkg=$ver" >> "$APTD/pkgs.txt"
done < <(grep '^Inst ' "$APTD/sim.txt")
grep -q '^chromium=' "$APTD/pkgs.txt" || die "chromium not in the install set (already installed system-wide?)"
grep -q '^fonts-dejavu-core=' "$APTD/pkgs.txt" || echo fonts-dejavu-core >> "$APTD/pkgs.txt"

# URIs with the SHA256 from the signed Packages index. Lines: 'URI' FILE SIZE SHA256:HEX
mapfile -t PKGS < "$APTD/pkgs.txt"
"${APT[@]}" --print-uris download "${PKGS[@]}" > "$APTD/uris.txt" || die "apt-get --print-uris download failed"
: > "$APTD/want.txt"
while read -r uri file size hash; do
  [ "${hash%%:*}" = SHA256 ] || die "no SHA256 for $file (got ${hash%%:*})"
  echo "$file ${hash#SHA256:} $size" >> "$APTD/want.txt"
done < <(grep "^'" "$APTD/uris.txt")
[ "$(wc -l < "$APTD/want.txt")" -eq "${#PKGS[@]}" ] || die "expected ${#PKGS[@]} URIs, got $(wc -l < "$APTD/want.txt")"

# ------------------------------------------------------------------ download
t0=$(date +%s)
rm -f "$DEBS"/*.FAILED
# drop .debs left over from earlier versions (REFRESH after a security update)
for f in "$DEBS"/*.deb; do
  [ -e "$f" ] || continue
  cut -d' ' -f1 "$APTD/want.txt" | grep -qxF "${f##*/}" || { log "removing stale ${f##*/}"; rm -f "$f"; }
done
declare -A SPEC   # package name -> name=version as given to apt
for p in "${PKGS[@]}"; do SPEC[${p%%=*}]=$p; done
need=()
while read -r file sha size; do
  if ! { [ -f "$DEBS/$file" ] && echo "$sha  $DEBS/$file" | sha256sum -c --status; }; then
    rm -f "$DEBS/$file"; need+=("${SPEC[${file%%_*}]:?no package for $file}")
  fi
done < "$APTD/want.txt"
if [ ${#need[@]} -gt 0 ]; then
  log "downloading ${#need[@]} packages"
  # apt-get download verifies size+SHA256 against the index itself.
  (cd "$DEBS" && "${APT[@]}" download "${need[@]}" >&2) || die "apt-get download failed"
fi
total=0
: > "$APTD/manifest.new"
while read -r file sha size; do
  echo "$sha  $DEBS/$file" | sha256sum -c --status || die "sha256 mismatch: $file"
  total=$((total + size))
  echo "$file sha256=$sha size=$size" >> "$APTD/manifest.new"
done < "$APTD/want.txt"
log "verified $(wc -l < "$APTD/want.txt") packages, $((total / 1024 / 1024)) MiB, download step $(( $(date +%s) - t0 ))s"

# ------------------------------------------------------------------- extract
rm -rf "$ROOT.tmp"; mkdir -p "$ROOT.tmp"
while read -r file sha size; do
  dpkg-deb -x "$DEBS/$file" "$ROOT.tmp"
done < "$APTD/want.txt"
rm -rf "$ROOT"; mv "$ROOT.tmp" "$ROOT"
[ -x "$ROOT/usr/lib/chromium/chromium" ] || die "chromium binary missing after extraction"

missing=$(for b in "$ROOT/usr/lib/chromium/chromium" "$ROOT/usr/lib/chromium/chrome_crashpad_handler" "$ROOT"/usr/lib/chromium/*.so; do
            LD_LIBRARY_PATH="$LIBPATH" ldd "$b" 2>&1 | grep 'not found' || true; done | sort -u)
[ -z "$missing" ] || die "unresolved shared libraries:"$'\n'"$missing"

# --------------------------------------------------------------------- fonts
# Font *files*: only those fetched into this prefix, so rendering does not depend
# on which fonts the host has. Rendering *rules* (antialias, hinting, generic
# family defaults): Debian's stock conf.d, from the prefix if fontconfig-config
# had to be fetched, else the host's (it is a dependency of libfontconfig1).
CONFD=/etc/fonts/conf.d
[ -f "$ROOT/etc/fonts/fonts.conf" ] && CONFD="$ROOT/etc/fonts/conf.d"   # fontconfig-config fetched
mkdir -p "$PREFIX/etc/fonts" "$PREFIX/fontcache"
cat > "$PREFIX/etc/fonts/fonts.conf" <<EOF
<?xml version="1.0"?>
<!DOCTYPE fontconfig SYSTEM "urn:fontconfig:fonts.dtd">
<fontconfig>
  <dir>$ROOT/usr/share/fonts</dir>
  <include ignore_missing="yes">$CONFD</include>
  <cachedir>$PREFIX/fontcache</cachedir>
  <alias><family>sans-serif</family><prefer><family>DejaVu Sans</family></prefer></alias>
  <alias><family>serif</family><prefer><family>DejaVu Serif</family></prefer></alias>
  <alias><family>monospace</family><prefer><family>DejaVu Sans Mono</family></prefer></alias>
  <alias><family>system-ui</family><prefer><family>DejaVu Sans</family></prefer></alias>
</fontconfig>
EOF

# ------------------------------------------------------------------- wrapper
mkdir -p "$PREFIX/bin"
cat > "$WRAPPER.tmp" <<EOF
#!/bin/sh
# Generated by fetch-chromium.sh: headless Debian chromium from $ROOT
export LD_LIBRARY_PATH="$LIBPATH\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export FONTCONFIG_FILE="$PREFIX/etc/fonts/fonts.conf"
# Chromium wants a writable profile dir; use a throwaway one unless the caller
# passes --user-data-dir=DIR (in that '=' form).
case " \$* " in *" --user-data-dir="*) ud= ;; *) ud=\$(mktemp -d "\${TMPDIR:-/tmp}/chromium-ud.XXXXXX") ;; esac
HOME=\${ud:-\${HOME:-/tmp}} "$ROOT/usr/lib/chromium/chromium" \\
  --headless --no-sandbox --disable-gpu --disable-dev-shm-usage \\
  --no-first-run --no-default-browser-check --disable-extensions \\
  --hide-scrollbars --mute-audio --password-store=basic \\
  \${ud:+--user-data-dir=\$ud} "\$@"
rc=\$?
[ -n "\$ud" ] && rm -rf "\$ud"
exit \$rc
EOF
chmod 755 "$WRAPPER.tmp"; mv "$WRAPPER.tmp" "$WRAPPER"

ver=$("$WRAPPER" --version 2>/dev/null) || die "wrapper --version failed"
{ echo "$ver (debian $CODENAME, fetched $(date -u +%FT%TZ))"; cat "$APTD/manifest.new"; } > "$STAMP.tmp"
mv "$STAMP.tmp" "$STAMP"
log "ok: $ver"
echo "$WRAPPER"
