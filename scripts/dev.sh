#!/usr/bin/env bash
# Distill Studio set-up and entry points. Idempotent: the expensive steps run only when needed.
#   bash scripts/dev.sh app     set up if needed, then `streamlit run app.py`
#   bash scripts/dev.sh test    set up if needed (plus Debian's chromium for the browser tests), then run the test suite
#   bash scripts/dev.sh setup   set up only (system packages, dataset, virtual environment)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
VENV="${DISTILL_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
DATASET_DIR=/usr/share/datasets/fashion-mnist

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {  # apt_install PKG... : installs only the packages that are missing
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "[setup] apt-get install ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
}

setup_system() {
  if [ -z "${FASHION_MNIST_DIR:-}" ] && [ ! -f "$DATASET_DIR/train-images-idx3-ubyte.gz" ]; then
    apt_install dataset-fashion-mnist
  fi
  python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
}

setup_python() {
  local want
  want=$(cat requirements.txt requirements-dev.txt constraints-cpu.txt scripts/dev.sh | sha256sum | cut -c1-16)
  if [ -f "$VENV/.setup-stamp" ] && [ "$(cat "$VENV/.setup-stamp")" = "$want" ]; then return 0; fi
  [ -x "$PY" ] || python3 -m venv "$VENV"
  local constraints=()
  if ! command -v nvidia-smi >/dev/null 2>&1; then constraints=(-c constraints-cpu.txt); fi
  echo "[setup] installing Python packages into $VENV (first time: a few minutes)"
  # (grep drops the harmless warnings some pip configurations print for absent local index folders)
  { "$PY" -m pip install -q --upgrade pip && "$PY" -m pip install -q "${constraints[@]}" -r requirements-dev.txt; } 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
  echo "$want" > "$VENV/.setup-stamp"
}

setup_test_system() {  # only the test path needs a browser: tests/e2e drives Debian's chromium with Playwright
  apt_install chromium fonts-noto-color-emoji  # the font: the pages' emoji icons in screenshots
}

setup() {  # one set-up at a time: two commands started together (app and tests) wait for each other
  exec 9>"${TMPDIR:-/tmp}/distill-studio-setup-$(printf %s "$ROOT" | sha256sum | cut -c1-12).lock"
  flock 9
  setup_system; setup_python
  flock -u 9
}

cmd="${1:-app}"; shift || true
case "$cmd" in
  setup) setup ;;
  app)   setup; exec "$VENV/bin/streamlit" run app.py "$@" ;;
  test)  setup; setup_test_system; exec "$PY" -m pytest -q "$@" ;;
  *) echo "usage: bash scripts/dev.sh {app|test|setup} [args...]" >&2; exit 2 ;;
esac
