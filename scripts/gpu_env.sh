# Sourced by the scripts run on a lent GPU machine: installs the carried wheels
# (.whl) into /tmp/site and makes `semarc` importable from this checkout
# (the repository's top-level folders are semarc's subpackages; see pyproject.toml).
# Run python with -P there, so that ./semarc does not shadow /tmp/pkg/semarc.
[ -n "${SKIP_PIP:-}" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
mkdir -p /tmp/pkg/semarc && cp semarc/*.py /tmp/pkg/semarc/
for d in codec workers jobs cluster bench; do ln -sfn "$PWD/$d" /tmp/pkg/semarc/$d; done
export PYTHONPATH=/tmp/pkg:/tmp/site PYTHONUNBUFFERED=1
