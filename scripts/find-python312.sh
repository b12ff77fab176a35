#!/usr/bin/env bash
# Prints the path of a working Python 3.12 interpreter (the Lambda runtime's version).
# Order: $HATCHWAY_PYTHON, python3.12 on PATH (if it actually runs: pyenv shims
# refuse when another global version is selected), then pyenv's newest 3.12.x.
set -u

works() { [ -n "$1" ] && "$1" -c 'import sys; raise SystemExit(sys.version_info[:2] != (3, 12))' >/dev/null 2>&1; }

for candidate in "${HATCHWAY_PYTHON:-}" "$(command -v python3.12 2>/dev/null)"; do
  if works "$candidate"; then echo "$candidate"; exit 0; fi
done

if command -v pyenv >/dev/null 2>&1; then
  for version in ${PYENV_VERSION:-} $(pyenv versions --bare 2>/dev/null | grep -E '^3\.12(\.[0-9]+)?$' | sort -t. -k3 -n -r); do
    candidate=$(PYENV_VERSION="$version" pyenv which python 2>/dev/null)
    if works "$candidate"; then echo "$candidate"; exit 0; fi
  done
fi

echo "error: Hatchway needs Python 3.12 (the Lambda runtime) and none was found." >&2
echo "       Install one (e.g. 'pyenv install 3.12') or set HATCHWAY_PYTHON=/path/to/python3.12." >&2
exit 1
