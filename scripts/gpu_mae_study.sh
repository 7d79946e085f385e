#!/usr/bin/env bash
# Encoder quality on one GPU (docs/results.md "Wider MAEs on a GPU"): shapes MAEs of width 32, 64
# and 128 trained with the official augmentation (RandomResizedCrop 0.2-1 + flip), half the 2x2
# cells masked and the classification fine-tune; their linear probes (scripts/probe_encoder.py)
# and free-pixel identity probes (scripts/bench_feature_identity.py); then the shapes recipe with
# the widest MAE's keys next to the raw key against the raw key alone, training seeds 0 and 1,
# scored on held-out colour-shape pairs (scripts/compare_objectives.py). Runs that do not depend on
# each other share the GPU (small models leave most of it idle). On one H200 the MAE phase took 6
# minutes before the augmentation was batched (it was input-bound); the whole study has not yet
# run end to end there: give it 10 minutes.
#
#   scripts/gpu_mae_study.sh runs/gpu_mae            # on a GPU machine
#   scripts/gpu_mae_study.sh runs/gpu_mae_tiny --tiny  # toy sizes on CPU, to check the plumbing
#
# Extra arguments after the folder (and --tiny) are passed to every text-to-image run, e.g.
# text.encoder=PATH for a local copy of the MiniLM encoder. A phase whose result exists is skipped,
# so an interrupted study resumes. MAE_WIDTHS="64 128" trains only those widths (the widest one's
# keys drive the drifting runs).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
out=${1:?usage: gpu_mae_study.sh OUT_DIR [--tiny] [section.key=value ...]}
shift
tiny=0
if [[ ${1:-} == --tiny ]]; then tiny=1; shift; fi
t2i_overrides=("$@")
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
# Several runs share the machine: each gets a few CPU threads instead of all of them fighting.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} MKL_NUM_THREADS=${MKL_NUM_THREADS:-4}
mkdir -p "$out"
start=$SECONDS
stamp() { echo "[$((SECONDS - start)) s] $*"; }

if ((tiny)); then
  widths=(8 16); mae_steps=3; ft_steps=2; mae_batch=8; drift_steps=2; probe_steps=2
  mae_extra=(model.depths=[1,1,1,1] model.norm_num_groups=8 train.checkpointing_steps=100)
  t2i_extra=(model.preset=tiny data.max_samples=32 train.batch_size=4 train.checkpointing_steps=100)
  eval_extra=(--num 4 --diversity-prompts 2 --batch-size 8)
  mp=no
else
  read -r -a widths <<<"${MAE_WIDTHS:-32 64 128}"; mae_steps=2000; ft_steps=300; mae_batch=256; drift_steps=1000; probe_steps=200
  mae_extra=(train.checkpointing_steps=2000)
  t2i_extra=(train.checkpointing_steps=500)
  eval_extra=()
  mp=bf16
fi
widest=${widths[-1]}

# Drifting on shapes, one training seed, with the raw key alone or the widest MAE's keys next to
# it (the MAE recipe's: all sets at weight 1), scored on held-out pairs; runs in the background.
drift() {  # drift SPACE SEED
  local config="$root/recipes/shapes_32px.yaml" extra=()
  if [[ $1 == mae ]]; then
    config="$root/recipes/shapes_32px_mae.yaml"
    extra=(features.mae.path="$out/mae_w$widest/mae")
  fi
  python "$here/compare_objectives.py" --config "$config" --data shapes --max_steps "$drift_steps" \
    --objectives drifting --seeds 2 "${eval_extra[@]}" --out_dir "$out/shapes_$1_seed$2" \
    --doc "$out/shapes_$1_seed$2" -- train.seed="$2" "${t2i_extra[@]}" "${extra[@]}" \
    "${t2i_overrides[@]}" >"$out/shapes_$1_seed$2.log" 2>&1 &
  drift_pids+=($!)
}
drift_pids=()
drift raw 0
drift raw 1   # the raw-key runs need no MAE: they train while the MAEs do

# 1. MAEs, all at once: the recipe with the official augmentation, more steps and a larger batch.
pids=()
for w in "${widths[@]}"; do
  dir="$out/mae_w$w"
  [[ -f $dir/mae/config.json ]] && continue
  groups=$((w < 32 ? 8 : 32))
  python "$here/train_mae.py" --config "$root/recipes/mae/shapes_32px.yaml" --output_dir "$dir" \
    --max_steps "$mae_steps" model.width="$w" model.norm_num_groups="$groups" train.batch_size="$mae_batch" \
    train.mixed_precision="$mp" finetune.steps="$ft_steps" 'augment.crop_scale=[0.2,1.0]' augment.hflip=true \
    optim.warmup_steps=200 "${mae_extra[@]}" >"$out/mae_w$w.log" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || { echo "an MAE run failed: see $out/mae_w*.log" >&2; exit 1; }; done
stamp "MAEs trained"

# 2. The widest MAE's keys, seeds 0 and 1, beside the raw-key runs started first; they train while
# the probes run.
drift mae 0
drift mae 1

# 3. Probes: linear (shape and colour, every width and an untrained widest one) and identity.
maes=()
for w in "${widths[@]}"; do maes+=(--mae "$out/mae_w$w/mae"); done
[[ -f $out/linear_probe.json ]] || python "$here/probe_encoder.py" "${maes[@]}" --random-width "$widest" \
  --json "$out/linear_probe.json" | tee "$out/linear_probe.txt"
for w in "${widths[@]}"; do
  [[ -f $out/identity_w$w.json ]] && continue
  python "$here/bench_feature_identity.py" --data shapes --mae "$out/mae_w$w/mae" --spaces mae mae+raw \
    --losses drift --steps "$probe_steps" --keep-self --json "$out/identity_w$w.json" | tee "$out/identity_w$w.txt"
done
stamp "probes done"

failed=0
for p in "${drift_pids[@]}"; do wait "$p" || failed=1; done
((failed)) && { echo "a drifting run failed: see $out/shapes_*.log" >&2; exit 1; }
stamp "drifting runs done"
for seed in 0 1; do
  for space in raw mae; do
    echo "== $space seed $seed"; sed -n '/^|/p' "$out/shapes_${space}_seed$seed.md"
  done
done
