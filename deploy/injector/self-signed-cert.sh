#!/bin/sh
# A self-signed CA and the injector's serving certificate, without cert-manager (docs/add-to-your-app.md):
#   deploy/injector/self-signed-cert.sh DIR [NAMESPACE]
# writes DIR/ca.crt, DIR/tls.crt and DIR/tls.key (openssl; the CA key is not kept) and prints the caBundle
# (the CA certificate, base64) for the MutatingWebhookConfiguration. Valid 825 days: run it again, re-create
# the Secret and patch the caBundle before then.
set -eu
dir=${1:?usage: self-signed-cert.sh DIR [NAMESPACE]}
namespace=${2:-query-signing-proxy}
service=query-signing-proxy-injector
mkdir -p "$dir"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 825 \
  -subj "/CN=$service-ca" -keyout "$work/ca.key" -out "$dir/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -subj "/CN=$service.$namespace.svc" -keyout "$dir/tls.key" -out "$work/tls.csr" 2>/dev/null
printf 'subjectAltName=DNS:%s.%s.svc,DNS:%s.%s.svc.cluster.local\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' \
  "$service" "$namespace" "$service" "$namespace" > "$work/ext"
openssl x509 -req -in "$work/tls.csr" -CA "$dir/ca.crt" -CAkey "$work/ca.key" -CAcreateserial -days 825 \
  -extfile "$work/ext" -out "$dir/tls.crt" 2>/dev/null
base64 < "$dir/ca.crt" | tr -d '\n'
echo
