#!/usr/bin/env bash
# Train the shipped base speaker model on a lent GPU machine (README, "The base model").
#   bash tests/benchmarks/base_model_gpu.sh CARRY STASH OUT BUDGET_S
# CARRY: corpus/ (python -m spkrec.training.basecorpus), testother/ (the unseen test set, for the
# final report only) and wheels/ (soundfile, cffi, pycparser for cp312); STASH: imagenet_fp16.pt,
# carried by an earlier call. Two stem variants train side by side on the one GPU for BUDGET_S
# seconds each; the weights of the one with the lower held-out-voice EER come back in $OUT as
# <=16 MiB parts (the other stays in /tmp/base-runs for a second, short call).
set -euo pipefail
carry=$1 stash=$2 out=$3 budget=${4:-330}
py=${PY:-python3}  # PY, SKIP_WHEELS and BASE_EXTRA (more train flags) are for a dry run on a CPU
[ -n "${SKIP_WHEELS:-}" ] || $py -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$carry"/wheels/*.whl
mkdir -p /tmp/spk/spkrec
for room in models training daemon; do ln -sfn "$PWD/$room" /tmp/spk/spkrec/$room; done
export PYTHONPATH=/tmp/spk:/tmp/site PYTHONUNBUFFERED=1
nvidia-smi -L || true
rm -rf /tmp/base-runs /tmp/base-barrier
for stem in none time; do
  $py -m spkrec.training.basemodel train ${BASE_EXTRA:-} --corpus "$carry/corpus" --test "$carry/testother" \
    --imagenet "$stash/imagenet_fp16.pt" --stem-pool "$stem" --budget-s "$budget" \
    --barrier /tmp/base-barrier --peers 2 --out /tmp/base-runs/$stem > "$out/train_$stem.log" 2>&1 &
done
wait
$py - "$out" <<'PY'
import json, sys, shutil
from pathlib import Path
out = Path(sys.argv[1])
reports = {s: json.loads(Path(f"/tmp/base-runs/{s}/report.json").read_text()) for s in ("none", "time")}
for s, r in reports.items():
    shutil.copy(f"/tmp/base-runs/{s}/report.json", out / f"report_{s}.json")
    print(s, "held-out voices EER", r["best_val_voice_eer"], "test-other file EER", r.get("test_file_pair_eer"), "steps", r["steps"])
best = min(reports, key=lambda s: reports[s]["best_val_voice_eer"])
print("returning", best)
(Path("/tmp/base-runs") / "first").write_text(best)
PY
best=$(cat /tmp/base-runs/first)
split -b 15M -d "/tmp/base-runs/$best/base.pt" "$out/base_${best}.pt.part"
ls -la "$out"
