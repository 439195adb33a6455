#!/usr/bin/env bash
# Create a private CA, a learner (server) certificate and an actor (client) certificate for hilrl TLS.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: deploy/make-certs.sh [-f] [-d DAYS] OUTDIR [HOST_OR_IP ...]

Creates, in OUTDIR (made if missing):
  ca.crt      CA certificate: give it to the learner as --tls-ca (mutual TLS) and to actors/status as --tls-ca
  ca.key      CA private key: keep it offline; only needed to issue more certificates
  server.crt  learner certificate, SANs: localhost, 127.0.0.1, ::1 and every HOST_OR_IP given
  server.key  learner private key (learner --tls-cert server.crt --tls-key server.key)
  client.crt  actor/status client certificate for mutual TLS (--tls-cert client.crt --tls-key client.key)
  client.key  its private key
Keys are EC P-256 with mode 600.

options:
  -d DAYS   validity in days (default 825)
  -f        overwrite existing files in OUTDIR (default: refuse)
  -h        show this help

example:
  deploy/make-certs.sh certs learner.lab.example 10.0.0.7
  hilrl learner --host 0.0.0.0 --tls-cert certs/server.crt --tls-key certs/server.key --token-file token
  hilrl actor --learner learner.lab.example:50051 --tls-ca certs/ca.crt --token-file token
EOF
}

days=825
force=0
while getopts ":hfd:" flag; do
    case "$flag" in
        h) usage; exit 0 ;;
        f) force=1 ;;
        d) days="$OPTARG" ;;
        :) echo "make-certs.sh: -$OPTARG needs a value" >&2; usage >&2; exit 2 ;;
        *) echo "make-certs.sh: unknown option -$OPTARG" >&2; usage >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
if [ $# -lt 1 ]; then
    echo "make-certs.sh: OUTDIR is required" >&2
    usage >&2
    exit 2
fi
case "$days" in
    ''|*[!0-9]*) echo "make-certs.sh: -d DAYS must be a positive integer, got '$days'" >&2; exit 2 ;;
esac
if ! command -v openssl >/dev/null 2>&1; then
    echo "make-certs.sh: openssl is not installed (e.g. apt-get install openssl)" >&2
    exit 1
fi

out="$1"
shift
mkdir -p "$out"
if [ "$force" -eq 0 ]; then
    for name in ca.crt ca.key server.crt server.key client.crt client.key; do
        if [ -e "$out/$name" ]; then
            echo "make-certs.sh: $out/$name already exists; pass -f to overwrite" >&2
            exit 1
        fi
    done
fi

# subjectAltName: localhost and loopback always, then every argument (IPs as IP:, names as DNS:)
san="DNS:localhost,IP:127.0.0.1,IP:::1"
for host in "$@"; do
    if [[ "$host" =~ ^[0-9.]+$ || "$host" == *:* ]]; then
        san="$san,IP:$host"
    else
        san="$san,DNS:$host"
    fi
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
umask 077

newkey() {  # newkey PATH
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
    chmod 600 "$1"
}

issue() {  # issue NAME CN EXTENSIONS
    local name="$1" cn="$2" ext="$3"
    newkey "$out/$name.key"
    openssl req -new -key "$out/$name.key" -subj "/CN=$cn" -out "$work/$name.csr"
    printf '%b\n' "$ext" > "$work/$name.ext"
    openssl x509 -req -in "$work/$name.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial \
        -CAserial "$work/ca.srl" -days "$days" -sha256 -extfile "$work/$name.ext" -out "$out/$name.crt" 2>/dev/null
    chmod 644 "$out/$name.crt"
}

newkey "$out/ca.key"
openssl req -x509 -new -key "$out/ca.key" -sha256 -days "$days" -subj "/CN=hilrl CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$out/ca.crt"
chmod 644 "$out/ca.crt"

leaf="basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment"
issue server "hilrl learner" "$leaf\nextendedKeyUsage=serverAuth\nsubjectAltName=$san"
issue client "hilrl actor" "$leaf\nextendedKeyUsage=clientAuth"

echo "make-certs.sh: wrote ca.crt, server.crt/.key (SAN $san), client.crt/.key to $out"
