# Shared by the recipes: run from anywhere, train into runs/<name>, then copy the shipped files
# into models/<name>. DATA defaults to the Kermany copy beside the repository (see ../shared/data/README.md).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
DATA="${DATA:-../shared/data/kermany_224/train}"
DICOMNODE="${DICOMNODE:-dicomnode}"
command -v "$DICOMNODE" >/dev/null 2>&1 || DICOMNODE="$REPO/.venv/bin/dicomnode"

# ship NAME: copy the model files of runs/NAME into models/NAME (weights, manifest, figures).
ship() {
  local name="$1"
  mkdir -p "models/$name"
  cp "runs/$name/manifest.json" "runs/$name/model.safetensors" "runs/$name/metrics.json" \
     "runs/$name/history.csv" "models/$name/"
  [ -f "runs/$name/gate.safetensors" ] && cp "runs/$name/gate.safetensors" "models/$name/"
  for png in curves roc confusion reliability; do
    [ -f "runs/$name/$png.png" ] && cp "runs/$name/$png.png" "models/$name/"
  done
  echo "shipped runs/$name -> models/$name"
}
