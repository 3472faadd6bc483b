#!/usr/bin/env bash
# make-certs.sh: TLS material and SuperNode authentication keys for a fedsynth federation (Flower 1.42).
#
# Makes, under OUT (default ./certs):
#   ca.crt  ca.key                    private CA (EC P-384). ca.key signs certificates; keep it offline.
#   superlink/server.pem server.key   SuperLink certificate, SANs = every -H plus 127.0.0.1, ::1, localhost
#                                     (the SuperLink's own SuperExec dials 127.0.0.1 when it binds 0.0.0.0).
#   superlink/ca.crt                  copy of the CA for --ssl-ca-certfile.
#   serve/server.pem server.key       download-service certificate (fedsynth serve), SANs = every -S (default: -H).
#   sites/<SITE>/auth-key             SuperNode auth private key: ECDSA P-384, OpenSSH format, mode 0600
#                                     (flower-supernode --auth-supernode-private-key).
#   sites/<SITE>/auth-key.pub         its public key (`ecdsa-sha2-nistp384 ...`): register it on the SuperLink with
#                                     `flwr supernode register sites/<SITE>/auth-key.pub <connection> --name <SITE>`.
#   sites/<SITE>/ca.crt               copy of the CA for --root-certificates.
#
# Existing files are kept (re-running adds new sites and signs nothing twice); delete a file to renew it.
# With --keys-only only the SuperNode key pairs are made: run that at the site, so that the private key never
# leaves it, and send only auth-key.pub to the operator.
#
# Needs openssl (>= 1.1.1) and ssh-keygen (OpenSSH). Without ssh-keygen, the key pairs are made with Python's
# `cryptography` if importable (PYTHON, default python3).
set -euo pipefail

usage() {
  cat <<'EOF'
usage: make-certs.sh [-o OUT] [-H HOST]... [-S HOST]... [-d DAYS] [--keys-only] [SITE...]

  -o, --out DIR         output folder (default: ./certs)
  -H, --superlink-host  DNS name or IP the SuperNodes and the flwr CLI dial (repeatable)
  -S, --serve-host      DNS name or IP of the download service (repeatable; default: the -H hosts)
  -d, --days N          certificate validity in days (default: 365)
      --keys-only       only make SuperNode authentication key pairs for SITE... (run at the site)
  SITE                  site ids (letters, digits, '.', '_', '-'); one key pair each

example: make-certs.sh -o certs -H superlink.example.org -H 10.0.0.5 site-a site-b site-c
EOF
}

OUT=./certs
DAYS=365
KEYS_ONLY=0
LINK_HOSTS=()
SERVE_HOSTS=()
SITES=()
PYTHON=${PYTHON:-python3}

while [[ $# -gt 0 ]]; do
  case "$1" in
    -o|--out) OUT=$2; shift 2 ;;
    -H|--superlink-host) LINK_HOSTS+=("$2"); shift 2 ;;
    -S|--serve-host) SERVE_HOSTS+=("$2"); shift 2 ;;
    -d|--days) DAYS=$2; shift 2 ;;
    --keys-only) KEYS_ONLY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "make-certs.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    *) SITES+=("$1"); shift ;;
  esac
done

die() { echo "make-certs.sh: $*" >&2; exit 1; }
note() { echo "make-certs.sh: $*" >&2; }

[[ "$DAYS" =~ ^[0-9]+$ ]] || die "--days must be a whole number"
for s in ${SITES[@]+"${SITES[@]}"}; do
  [[ "$s" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || die "invalid site id '$s'"
done
if [[ $KEYS_ONLY -eq 1 && ${#SITES[@]} -eq 0 ]]; then die "--keys-only needs at least one SITE"; fi
if [[ $KEYS_ONLY -eq 0 && ${#LINK_HOSTS[@]} -eq 0 ]]; then
  die "give the SuperLink's address with -H (e.g. -H superlink.example.org); 127.0.0.1 is always added"
fi
if [[ ${#SERVE_HOSTS[@]} -eq 0 ]]; then SERVE_HOSTS=(${LINK_HOSTS[@]+"${LINK_HOSTS[@]}"}); fi

umask 077
mkdir -p "$OUT"

# SuperNode auth key pair: ECDSA on a NIST curve in OpenSSH format (Flower loads it with load_ssh_private_key).
make_node_key() {
  local site=$1 dir=$2
  local key="$dir/auth-key"
  mkdir -p "$dir"
  if [[ -e "$key" ]]; then note "$key exists, kept"; return; fi
  if command -v ssh-keygen >/dev/null 2>&1; then
    ssh-keygen -q -t ecdsa -b 384 -N '' -C "$site" -f "$key"
  elif "$PYTHON" -c 'import cryptography' 2>/dev/null; then
    "$PYTHON" - "$key" "$site" <<'PY'
import os, sys
from cryptography.hazmat.primitives import serialization as s
from cryptography.hazmat.primitives.asymmetric import ec
path, site = sys.argv[1], sys.argv[2]
k = ec.generate_private_key(ec.SECP384R1())
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
with os.fdopen(fd, "wb") as f:
    f.write(k.private_bytes(s.Encoding.PEM, s.PrivateFormat.OpenSSH, s.NoEncryption()))
with open(path + ".pub", "wb") as f:
    f.write(k.public_key().public_bytes(s.Encoding.OpenSSH, s.PublicFormat.OpenSSH) + f" {site}\n".encode())
PY
  else
    die "need ssh-keygen (package openssh-client) or Python with 'cryptography' to make SuperNode keys"
  fi
  chmod 600 "$key"
  chmod 644 "$key.pub"
  note "SuperNode key pair for '$site': $key (private, stays at the site) and $key.pub (register it)"
}

if [[ $KEYS_ONLY -eq 1 ]]; then
  for s in "${SITES[@]}"; do make_node_key "$s" "$OUT/sites/$s"; done
  exit 0
fi

command -v openssl >/dev/null 2>&1 || die "openssl not found"

san_list() {  # hosts... -> "IP:1.2.3.4,DNS:name,..." with the loopback names always included
  local out=() h
  for h in "$@" 127.0.0.1 ::1 localhost; do
    if [[ "$h" =~ ^[0-9.]+$ || "$h" == *:* ]]; then out+=("IP:$h"); else out+=("DNS:$h"); fi
  done
  # de-duplicate, keep order
  printf '%s\n' "${out[@]}" | awk '!seen[$0]++' | paste -sd, -
}

# 1. CA
if [[ -e "$OUT/ca.key" ]]; then
  note "$OUT/ca.key exists, reusing the CA"
  [[ -e "$OUT/ca.crt" ]] || die "$OUT/ca.key exists but $OUT/ca.crt does not"
else
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out "$OUT/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$OUT/ca.key" -sha256 -days "$DAYS" -subj "/O=fedsynth/CN=fedsynth federation CA" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -addext "subjectKeyIdentifier=hash" \
    -out "$OUT/ca.crt"
  chmod 644 "$OUT/ca.crt"
  note "CA: $OUT/ca.crt (keep $OUT/ca.key offline)"
fi

# 2. server certificates
make_server_cert() {  # dir cn hosts...
  local dir=$1 cn=$2; shift 2
  mkdir -p "$dir"
  cp "$OUT/ca.crt" "$dir/ca.crt"
  if [[ -e "$dir/server.pem" ]]; then note "$dir/server.pem exists, kept"; return; fi
  local sans ext
  sans=$(san_list "$@")
  ext=$(mktemp)
  cat >"$ext" <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyAgreement
extendedKeyUsage=serverAuth
subjectAltName=$sans
authorityKeyIdentifier=keyid
subjectKeyIdentifier=hash
EOF
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out "$dir/server.key" 2>/dev/null
  openssl req -new -key "$dir/server.key" -subj "/O=fedsynth/CN=$cn" -out "$dir/server.csr"
  openssl x509 -req -in "$dir/server.csr" -CA "$OUT/ca.crt" -CAkey "$OUT/ca.key" -CAcreateserial \
    -days "$DAYS" -sha256 -extfile "$ext" -out "$dir/server.pem" 2>/dev/null
  rm -f "$ext" "$dir/server.csr"
  chmod 600 "$dir/server.key"
  chmod 644 "$dir/server.pem" "$dir/ca.crt"
  openssl verify -CAfile "$OUT/ca.crt" "$dir/server.pem" >/dev/null || die "$dir/server.pem does not verify"
  note "$cn certificate: $dir/server.pem (SANs: $sans)"
}

make_server_cert "$OUT/superlink" "${LINK_HOSTS[0]}" "${LINK_HOSTS[@]}"
make_server_cert "$OUT/serve" "${SERVE_HOSTS[0]}" "${SERVE_HOSTS[@]}"

# 3. SuperNode key pairs
for s in ${SITES[@]+"${SITES[@]}"}; do
  make_node_key "$s" "$OUT/sites/$s"
  cp "$OUT/ca.crt" "$OUT/sites/$s/ca.crt"
  chmod 644 "$OUT/sites/$s/ca.crt"
done

note "done. Next: start the SuperLink with $OUT/superlink/*, then register each sites/<SITE>/auth-key.pub (deploy/README.md)"
