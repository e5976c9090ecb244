#!/usr/bin/env bash
# Generate the DEVELOPMENT-ONLY certificate authority and server certificate
# for realtime-web. See certs/README.md.
#
#   certs/ca.pem      self-signed CA certificate (X.509 v3, CA:TRUE, keyCertSign)
#   certs/ca.key      CA private key (PKCS#8 PEM, EC P-256)
#   certs/server.pem  leaf certificate for localhost / 127.0.0.1 / ::1
#                     (X.509 v3, CA:FALSE, serverAuth, EC P-256)
#   certs/server.key  leaf private key (PKCS#8 PEM, EC P-256)
#
# The leaf is accepted by rustls/webpki: v3, SAN present (webpki ignores CN),
# CA:FALSE, EKU serverAuth, signed by a v3 CA with basicConstraints CA:TRUE
# and keyUsage keyCertSign.
#
# Usage: certs/gen-dev-certs.sh [--force]
#   Without --force it refuses to overwrite existing files.
set -euo pipefail

DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DAYS=3650
FORCE=0
[[ "${1:-}" == "--force" ]] && FORCE=1

command -v openssl >/dev/null || { echo "openssl not found (apt-get install openssl)" >&2; exit 1; }

if [[ $FORCE -eq 0 ]]; then
  for f in ca.pem ca.key server.pem server.key; do
    if [[ -e "$DIR/$f" ]]; then
      echo "$DIR/$f exists; rerun with --force to regenerate all certificates" >&2
      exit 1
    fi
  done
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# new_key NAME: an EC P-256 private key in $TMP/NAME.key.
new_key() {
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 \
    -pkeyopt ec_param_enc:named_curve -out "$TMP/$1.key"
}

# req_config NAME CN [REQ_LINE]: $TMP/NAME.cnf with the [req] section (plus REQ_LINE), the
# subject (O = realtime-web development, CN) and, from stdin, the extension sections.
req_config() {
  {
    printf '[req]\ndistinguished_name = dn\nprompt             = no\n'
    [[ -z "${3:-}" ]] || printf '%s\n' "$3"
    printf '[dn]\nO  = realtime-web development\nCN = %s\n' "$2"
    cat
  } > "$TMP/$1.cnf"
}

# --- CA ---------------------------------------------------------------------
new_key ca
req_config ca "realtime-web Development CA (DO NOT TRUST IN PRODUCTION)" \
  "x509_extensions    = v3_ca" <<'CNF'
[v3_ca]
basicConstraints       = critical, CA:TRUE, pathlen:0
keyUsage               = critical, keyCertSign, cRLSign
subjectKeyIdentifier   = hash
CNF

openssl req -new -x509 -sha256 -days "$DAYS" -key "$TMP/ca.key" \
  -config "$TMP/ca.cnf" -out "$TMP/ca.pem"

# --- server leaf ------------------------------------------------------------
new_key server
req_config server localhost <<'CNF'
[v3_leaf]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature
extendedKeyUsage       = serverAuth
subjectAltName         = DNS:localhost, IP:127.0.0.1, IP:::1
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always
CNF

openssl req -new -sha256 -key "$TMP/server.key" -config "$TMP/server.cnf" \
  -out "$TMP/server.csr"

openssl x509 -req -sha256 -days "$DAYS" -in "$TMP/server.csr" \
  -CA "$TMP/ca.pem" -CAkey "$TMP/ca.key" -set_serial "0x$(openssl rand -hex 16)" \
  -extfile "$TMP/server.cnf" -extensions v3_leaf -out "$TMP/server.pem"

# Sanity checks before installing the files.
openssl verify -CAfile "$TMP/ca.pem" -purpose sslserver "$TMP/server.pem" >/dev/null

# genpkey already writes PKCS#8 ("BEGIN PRIVATE KEY"); make it explicit.
openssl pkcs8 -topk8 -nocrypt -in "$TMP/ca.key" -out "$TMP/ca.key.p8"
openssl pkcs8 -topk8 -nocrypt -in "$TMP/server.key" -out "$TMP/server.key.p8"

install -m 0644 "$TMP/ca.pem"        "$DIR/ca.pem"
install -m 0600 "$TMP/ca.key.p8"     "$DIR/ca.key"
install -m 0644 "$TMP/server.pem"    "$DIR/server.pem"
install -m 0600 "$TMP/server.key.p8" "$DIR/server.key"

echo "wrote $DIR/{ca.pem,ca.key,server.pem,server.key} (valid $DAYS days)"
openssl x509 -in "$DIR/server.pem" -noout -subject -issuer -enddate -ext subjectAltName
