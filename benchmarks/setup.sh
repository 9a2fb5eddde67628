#!/usr/bin/env bash
# Idempotent setup for the benchmark suite (see benchmarks/README.md).
#   .venv                            Shoal's own venv (as ./dev makes it), only if missing;
#                                    onnx (runtime_overhead.py) and py-spy (stages.py) in it
#   benchmarks/.work/venv-mlserver   mlserver + mlserver-sklearn
#   benchmarks/.work/venv-kserve     kserve + scikit-learn + joblib
#   h2load                           Debian's nghttp2-client
# The competitors' versions are pinned so runs stay comparable; both venvs get exactly the
# scikit-learn version of Shoal's .venv, so the same joblib artifacts load everywhere.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
work="$here/.work"
python="${PYTHON:-python3}"
mkdir -p "$work"

log() { echo "[setup] $*" >&2; }
# pip, without the warnings this machine's pip configuration prints for every package.
pip_quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

# --- Shoal's own venv -------------------------------------------------------------
shoal_venv="${SHOAL_VENV:-$root/.venv}"
if [ ! -x "$shoal_venv/bin/shoal" ]; then
  log "creating Shoal's venv at $shoal_venv"
  [ -x "$shoal_venv/bin/python" ] || "$python" -m venv "$shoal_venv"
  pip_quiet "$shoal_venv/bin/python" -m pip install --quiet --upgrade pip
  pip_quiet "$shoal_venv/bin/python" -m pip install --quiet -c "$root/constraints.txt" -e "$root[all]"
fi
# runtime_overhead.py builds its ONNX model with the onnx package (not a runtime dependency).
"$shoal_venv/bin/python" -c "import onnx" 2>/dev/null ||
  pip_quiet "$shoal_venv/bin/python" -m pip install --quiet "onnx>=1.15"
# stages.py profiles the server with py-spy (a sampling profiler; a binary in the venv).
[ -x "$shoal_venv/bin/py-spy" ] ||
  pip_quiet "$shoal_venv/bin/python" -m pip install --quiet "py-spy>=0.3"
# run.py runs in Shoal's venv: it needs grpcio and Shoal's generated protobuf classes.
sk_version="$("$shoal_venv/bin/python" -c 'import sklearn; print(sklearn.__version__)')"
np_version="$("$shoal_venv/bin/python" -c 'import numpy; print(numpy.__version__)')"
log "Shoal uses scikit-learn $sk_version, numpy $np_version"

# --- a venv per competitor, reinstalled only when its requirement line changes -----
make_venv() {  # name, then pip requirements
  local name="$1"; shift
  local venv="$work/venv-$name"
  local want="$* scikit-learn==$sk_version"
  if [ -f "$venv/.requirements" ] && [ "$(cat "$venv/.requirements")" = "$want" ] \
     && [ -x "$venv/bin/python" ]; then
    log "$name venv up to date"
    return
  fi
  log "installing $name venv: $want"
  [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
  pip_quiet "$venv/bin/python" -m pip install --quiet --upgrade pip
  # shellcheck disable=SC2086
  pip_quiet "$venv/bin/python" -m pip install --quiet $want
  "$venv/bin/python" -c "import sklearn, sys; assert sklearn.__version__ == '$sk_version', sklearn.__version__"
  echo "$want" > "$venv/.requirements"
}

# uvloop<0.22: MLServer 1.7.1's inference workers crash at start with uvloop 0.22
# ("There is no current event loop", SeldonIO/MLServer#2286), so no model ever loads.
make_venv mlserver "mlserver==1.7.1 mlserver-sklearn==1.7.1 uvloop<0.22"
make_venv kserve "kserve==0.21.0 joblib"

# --- h2load -------------------------------------------------------------------------
if ! command -v h2load >/dev/null 2>&1; then
  log "installing h2load (nghttp2-client)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nghttp2-client >/dev/null
fi
command -v taskset >/dev/null 2>&1 || { log "taskset missing (util-linux)"; exit 1; }
log "h2load: $(h2load --version 2>&1 | head -1)"
log "done"
