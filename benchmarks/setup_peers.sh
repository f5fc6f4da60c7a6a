#!/usr/bin/env bash
# Build the benchmark-only environment: NNI 3.0 and Torch-Pruning 1.6.x side by side with prunesearch.
#
#   bash benchmarks/setup_peers.sh          # create or update benchmarks/.peers/venv (idempotent)
#   benchmarks/.peers/venv/bin/python benchmarks/bench_masks.py
#
# The venv lives under benchmarks/.peers/ (git-ignored). It is never used by the tests or CI of the
# package itself; NNI 3.0 pins old dependencies (filelock<3.12, typeguard<4.1.3) that we do not want
# in the project's own environment.
#
# Environment knobs:
#   PYTHON=python3.11   interpreter used to create the venv (default: python3; NNI 3.0 is tested here on 3.11)
#
# Dependency notes (resolved on Python 3.11.7, Linux x86_64, CPU only):
#   * torch==2.13.0 is installed FIRST and repeated as a requirement in every later pip call, so pip
#     never tries to replace it (other specs may pull a multi-GB CUDA build).
#   * torchvision is NOT installed (the PyPI build does not work beside this torch); none of the
#     peers needs it.
#   * nni==3.0 declares: filelock<3.12 (pip downgrades torch's filelock to 3.11.0 - torch does not
#     care), typeguard>=3.0.0,<4.1.3 (-> 4.1.2), plus pandas/scipy/scikit-learn/etc. unpinned.
#     numpy 2.x works: the pruners, ModelSpeedup and the tracer ran fine with numpy 2.4, so numpy is
#     NOT pinned <2.
#   * nni does not declare tensorboard, but nni.compression imports it -> installed explicitly.
#   * torch-pruning 1.6.x needs only torch and numpy.
#
# NNI patches (applied to the venv's copy of NNI only, never to our project), both in
# nni/common/concrete_trace_utils/concrete_tracer.py, the tracer behind nni's ModelSpeedup:
#   (a) torch >= 2.3 renamed torch._C._TensorBase to TensorBase, so Tensor methods now have
#       __qualname__ 'TensorBase.xxx'. The tracer checks startswith('_TensorBase'), falls through to a
#       branch that does func.__module__.startswith(...) on None and ModelSpeedup dies with
#       "AttributeError: 'NoneType' object has no attribute 'startswith'". Fix: accept both prefixes.
#   (b) torch.fx's Graph.eliminate_dead_code now calls node.is_impure(impure_random) (Node.is_impure
#       gained an `impure_random: bool = True` parameter); NNI monkeypatches Node.is_impure with
#       node_is_impure_wrapper(node) and tracing dies with "TypeError: Node.is_impure() takes 1
#       positional argument but 2 were given". Fix: give the wrapper an impure_random=True parameter
#       (accepted and ignored).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
PEERS_DIR="$SCRIPT_DIR/.peers"
VENV="$PEERS_DIR/venv"
PYTHON="${PYTHON:-python3}"

TORCH_SPEC="torch==2.13.0"
NNI_SPEC="nni==3.0"
TP_SPEC="torch-pruning>=1.6,<1.7"

log() { printf '\n==> %s\n' "$*"; }

# 1. venv ---------------------------------------------------------------------------------------
mkdir -p "$PEERS_DIR"
if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating venv at $VENV with $PYTHON ($("$PYTHON" --version 2>&1))"
    "$PYTHON" -m venv "$VENV"
else
    log "reusing venv at $VENV"
fi
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip)
"${PIP[@]}" install --upgrade pip

# 2. packages -------------------------------------------------------------------------------------
log "installing $TORCH_SPEC (first, so later installs see it satisfied)"
"${PIP[@]}" install "$TORCH_SPEC"

log "installing peers: $NNI_SPEC, tensorboard, $TP_SPEC"
"${PIP[@]}" install "$TORCH_SPEC" "$NNI_SPEC" tensorboard "$TP_SPEC"

# 3. patch NNI's concrete tracer (idempotent; fails loudly if the code is not what we expect) ------
log "patching NNI concrete_tracer.py"
"$VPY" - <<'PY'
import pathlib
import sys

import importlib.util

spec = importlib.util.find_spec("nni")
if spec is None or not spec.submodule_search_locations:
    sys.exit("setup_peers: nni is not installed in the venv")
path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "common/concrete_trace_utils/concrete_tracer.py"
src = path.read_text()

PATCHES = [
    # (a) torch >= 2.3: Tensor methods' __qualname__ is 'TensorBase.xxx', no longer '_TensorBase.xxx'
    ("TensorBase qualname",
     "if func.__qualname__.startswith('_TensorBase'):",
     "if func.__qualname__.startswith(('_TensorBase', 'TensorBase')):"),
    # (b) torch.fx calls Node.is_impure(impure_random=...), which NNI replaces with this wrapper
    ("node_is_impure_wrapper impure_random",
     "def node_is_impure_wrapper(node):",
     "def node_is_impure_wrapper(node, impure_random=True):"),
]
changed = False
for name, old, new in PATCHES:
    n_old, n_new = src.count(old), src.count(new)
    if n_new == 1 and n_old == 0:
        print(f"  [{name}] already applied")
    elif n_old == 1 and n_new == 0:
        src = src.replace(old, new)
        changed = True
        print(f"  [{name}] applied")
    else:
        sys.exit(f"setup_peers: cannot patch {path}: [{name}] expected exactly one of\n"
                 f"    {old!r} (found {n_old})\n    {new!r} (found {n_new})")
if changed:
    path.write_text(src)
    # drop stale bytecode so the patched source is what gets imported
    for pyc in (path.parent / "__pycache__").glob("concrete_tracer.*.pyc"):
        pyc.unlink()
print(f"  {path}")
PY

# 4. our own package, editable ---------------------------------------------------------------------
# Installed last so its loose ranges (torch>=2.1, numpy>=1.24, ...) are already satisfied by the
# peers' set; torch is repeated to keep pip from touching it.
log "installing prunesearch (editable) from $REPO_ROOT"
self_ok=1
if ! "${PIP[@]}" install "$TORCH_SPEC" -e "$REPO_ROOT"; then
    self_ok=0
fi

"${PIP[@]}" check || echo "WARNING: pip check reported conflicts (see above)" >&2

# 5. report ------------------------------------------------------------------------------------------
log "versions"
"$VPY" - <<'PY'
import importlib.metadata as md
import sys

import torch
import torch_pruning
import nni

print(f"python        {sys.version.split()[0]}")
print(f"torch         {torch.__version__}")
print(f"nni           {nni.__version__}")
print(f"torch_pruning {md.version('torch-pruning')}")
print(f"numpy         {md.version('numpy')}")
try:
    print(f"prunesearch   {md.version('prunesearch')}")
except md.PackageNotFoundError:
    print("prunesearch   NOT INSTALLED")
PY

if [[ $self_ok != 1 ]]; then
    echo "ERROR: 'pip install -e $REPO_ROOT' failed (see above); the peers are installed, but the" \
         "bench scripts also need prunesearch importable." >&2
    exit 1
fi
log "done: use $VENV/bin/python to run benchmarks/bench_*.py"
