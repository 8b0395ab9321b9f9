# Sourced by the build scripts that need Debian source packages (nginx, and sshd through
# build-common.sh): one definition of the deb-src stanzas they write to $SRC_LIST.

# deb-src stanzas mirroring every enabled deb822 stanza of a Debian archive that does
# not already have deb-src.
deb_src_stanzas() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -e "$f" ] || continue
    [ "$f" = "$SRC_LIST" ] && continue
    awk '
      function flush() {
        if (types ~ /(^|[ \t])deb([ \t]|$)/ && types !~ /deb-src/ &&
            enabled !~ /^[ \t]*no/ && uris ~ /debian(-security)?\/?([ \t]|$)/) {
          out = out "Types: deb-src\n" body "\n"
        }
        types = ""; uris = ""; body = ""; enabled = ""
      }
      /^[ \t]*$/ { flush(); next }
      /^#/ { next }
      /^Types:/ { types = substr($0, 7); next }
      /^Enabled:/ { enabled = substr($0, 9) }
      /^URIs:/ { uris = substr($0, 6) }
      { body = body $0 "\n" }
      END { flush(); printf "%s", out }
    ' "$f"
  done
}

