#!/usr/bin/env bash
# One-time Garage set-up for deploy/compose.yaml: layout, bucket "imagegate" served by
# the web endpoint (also under the alias "localhost", so http://localhost:3902/<key>
# works without DNS), bucket "imagegate-private" for manifests (not served), and a key
# allowed to write both. Prints the key id and secret.
set -euo pipefail
g() { docker compose -f "$(dirname "$0")/compose.yaml" exec -T garage /garage "$@"; }
node="$(g node id -q | cut -d@ -f1)"
g layout assign -z dc1 -c 10G "$node"
g layout apply --version 1
g bucket create imagegate
g bucket website --allow imagegate
g bucket alias imagegate localhost
g key create imagegate-app
g bucket allow --read --write --owner imagegate --key imagegate-app
g bucket create imagegate-private
g bucket allow --read --write imagegate-private --key imagegate-app
g key info imagegate-app --show-secret
