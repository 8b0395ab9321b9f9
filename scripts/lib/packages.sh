# Sourced by the server build scripts (nginx, and the others through build-common.sh):
# installing missing apt packages. The caller defines log, apt_get and apt_update.

pkg_installed() {
  dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null | grep -qx installed
}

# Installs whichever of the packages given is missing (apt-get update only if needed).
ensure_packages() {
  local missing=() p
  for p in "$@"; do pkg_installed "$p" || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]}"
  if ! apt_get install --no-install-recommends "${missing[@]}"; then
    apt_update
    apt_get install --no-install-recommends "${missing[@]}"
  fi
}
