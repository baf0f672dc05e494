#!/bin/sh
# Runs one command of an image build with the build's optional secrets, which
# BuildKit mounts for that RUN step only (they never land in a layer):
#   /run/secrets/cacert   PEM CA bundle for HTTPS (apt, pip, npm) through a
#                         TLS-intercepting proxy, e.g. the host's
#                         /etc/ssl/certs/ca-certificates.crt
#   /run/secrets/pipconf  a pip configuration file (index-url, ...)
# Both Dockerfiles mount this script from the build context (RUN --mount=type=bind).
#
#   build-env.sh COMMAND [ARGUMENTS...]
set -eu

ca=/run/secrets/cacert
if [ -s "$ca" ]; then
    export PIP_CERT="$ca" SSL_CERT_FILE="$ca" REQUESTS_CA_BUNDLE="$ca" \
        CURL_CA_BUNDLE="$ca" NODE_EXTRA_CA_CERTS="$ca" npm_config_cafile="$ca"
    # apt over https (the image may not have ca-certificates yet).
    apt_conf=$(mktemp)
    trap 'rm -f "$apt_conf"' EXIT
    printf 'Acquire::https::CAInfo "%s";\n' "$ca" > "$apt_conf"
    export APT_CONFIG="$apt_conf"
    echo "build-env: extra CA certificates from the build secret 'cacert'" >&2
fi
if [ -s /run/secrets/pipconf ]; then
    export PIP_CONFIG_FILE=/run/secrets/pipconf
    echo "build-env: pip configuration from the build secret 'pipconf'" >&2
fi
"$@"
