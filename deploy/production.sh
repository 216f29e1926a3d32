#!/bin/sh
# The production profile's two steps. docker-compose.yml runs them (services `setup` and
# `server`), and tests/cli/test_production_profile.py runs the same commands from that file
# against the local Redis and PostgreSQL, so the profile and its test cannot drift.
#
#   production.sh setup REPO   create the example repository in REPO (only if it has no
#                              featurestore.yaml), migrate the registry, apply, create the
#                              server token (once), materialize every view (incrementally
#                              when run again)
#   production.sh serve REPO   serve REPO on server.host and server.port with that token
#
# Settings come from the environment: FEATURESTORE__* overrides featurestore.yaml (README.md,
# "Configuration"); FEATURESTORE_TOKEN is the bearer token clients send; without it, setup
# creates one in REPO/data/server-token (mode 600) and serve reads it from there. A non-empty
# FEATURESTORE__SERVER__TOKENS (a JSON list of digests) is used as it is instead.
# PYTHON picks the interpreter (default python3).
set -eu

usage="usage: production.sh setup|serve REPO"
action=${1:?$usage}
repo=${2:?$usage}
python=${PYTHON:-python3}
token_file="$repo/data/server-token"

fs() {
    "$python" -m featurestore.cli.main "$@"
}

setup() {
    if [ ! -f "$repo/featurestore.yaml" ]; then
        # --force: a fresh volume may hold files already; an existing repository is never touched.
        fs init "$repo" --project "${FEATURESTORE__PROJECT:-demo}" --force
    fi
    fs -r "$repo" registry upgrade
    fs -r "$repo" apply
    if [ -z "${FEATURESTORE_TOKEN:-}" ] && [ -z "${FEATURESTORE__SERVER__TOKENS:-}" ] && [ ! -s "$token_file" ]; then
        mkdir -p "$repo/data"
        (umask 077 && "$python" -c 'from featurestore.tokens import new_token; print(new_token())' >"$token_file.new")
        mv "$token_file.new" "$token_file"
        echo "Created the server token in $token_file (clients send it as: Authorization: Bearer TOKEN)."
    fi
    # The first run materializes everything; a later `docker compose up` catches up from each
    # view's watermark.
    fs -r "$repo" materialize --incremental
}

serve() {
    if [ -z "${FEATURESTORE__SERVER__TOKENS:-}" ]; then
        token=${FEATURESTORE_TOKEN:-}
        if [ -z "$token" ] && [ -s "$token_file" ]; then
            token=$(cat "$token_file")
        fi
        if [ -z "$token" ]; then
            echo "error: no server token: FEATURESTORE_TOKEN is not set and $token_file does not exist" >&2
            echo "hint: run \`production.sh setup $repo\` first, or set FEATURESTORE_TOKEN" >&2
            exit 1
        fi
        digest=$(printf '%s' "$token" | "$python" -c 'import sys; from featurestore.tokens import hash_token; print(hash_token(sys.stdin.read().strip()))')
        FEATURESTORE__SERVER__TOKENS="[{\"name\": \"production\", \"sha256\": \"$digest\", \"roles\": [\"read\", \"write\", \"admin\"]}]"
        export FEATURESTORE__SERVER__TOKENS
    fi
    exec "$python" -m featurestore.cli.main -r "$repo" serve
}

case "$action" in
    setup) setup ;;
    serve) serve ;;
    *) echo "error: unknown action '$action'" >&2; echo "hint: $usage" >&2; exit 1 ;;
esac
