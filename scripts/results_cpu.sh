#!/usr/bin/env bash
# The experiment=cpu results (docs/results.md): every algorithm of the comparison, three seeds per
# cell, the seeds of a cell stacked in one process (stack_seeds=3: seeds 0, 1, 2 trained together,
# docs/training.md "Stacked seeds").
#
#   scripts/results_cpu.sh walker2d-medium                       # tasks (default: walker2d-medium)
#   ALGOS="iql sfac" scripts/results_cpu.sh walker2d-medium      # some algorithms only
#   SEEDS=5 scripts/results_cpu.sh hopper-medium                 # five seeds per cell (0..4):
#                                            # a cell holding 0..2 finished runs 3..4 (a top-up)
#   EXTRA="precision=bf16" TAG=bf16 scripts/results_cpu.sh hopper-medium   # a variant row
#   ALGOS=srpo EXTRA="hparams=tuned" TAG=tuned scripts/results_cpu.sh halfcheetah-medium
#   DRY_RUN=1 scripts/results_cpu.sh                             # print what it would run, run nothing
#   OUT=results/bf16 VARIANTS=sfac.divergence=js ALGOS=sfac TAG=bf16 EXTRA=precision=bf16 \
#     scripts/results_cpu.sh hopper-medium                        # one variant, logs kept apart
#
# OUT (default results/cpu) is where finished logs are mirrored and where finished cells are looked
# up; VARIANTS (one override per variant, space-separated) replaces the algorithm's variant axis.
#
# One process per cell (algorithm, variant, task), all its seeds stacked: run several cells at once
# by starting the script once per core (pin each with taskset and OMP_NUM_THREADS=1). A cell's run
# goes to $RUNS/cpu/<task>/<algo>/<variant>_stack<K>/ (stack.yaml, checkpoints/ of all seeds, and
# seed_<s>/ per seed); when it has finished, its seeds' logs are mirrored into
# results/cpu/<task>/<algo>/ (scripts/collect_results.py; a finished SRPO or BDPO seed first gets
# scripts/eval_behavior.py's behavior_eval.json: SRPO's with 20 DDPM steps), and
#   python -m torchrl_sym.report results/cpu --out docs/results.md ...
# regenerates the page. Re-running the script after a kill resumes: a cell whose run directory
# is still there is continued with resume=<its directory>; a cell whose seeds results/ already
# holds finished is skipped (so a new machine, whose $RUNS is empty, runs only what the committed
# logs lack). A cell that holds its first seeds finished but not the last ones (SEEDS raised, or
# a seed lost) is topped up: the missing seeds first..SEEDS-1 run stacked in
# <variant>_seed<first>_stack<count>/, evaluated from the start states (eval.start_states) its
# finished seeds used, legacy where their config.yaml predates the key; a cell missing an earlier
# seed runs all SEEDS again.
# Before a new cell starts, scripts/check_data.py compares the local dataset's sha256 with the one
# the committed runs of that cell (else of that task) recorded and stops the script on a mismatch
# (the bits depend on the processor that generated them: docs/datasets.md); DATA_MISMATCH_OK=1
# goes on anyway.
# Put RUNS outside the checkout (for example RUNS=~/runs/results) where the checkout can be
# replaced between sessions: the checkpoints a resume needs live there and are never committed.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-runs/results}
OUT=${OUT:-results/cpu}
ALGOS=${ALGOS:-"iql sfac awac sql xql td3bc srpo"}
SEEDS=${SEEDS:-3}
EXTRA=${EXTRA:-}
TAG=${TAG:-}
TASKS=("$@")
[ ${#TASKS[@]} -eq 0 ] && TASKS=(walker2d-medium)

launch() {  # a recipe run, or with DRY_RUN=1 only its command line
  if [ -n "${DRY_RUN:-}" ]; then echo "python $*"; else python "$@"; fi
}

variants() {  # the algorithm's variant axis (one override per variant): Sf-AC runs both divergences
  if [ -n "${VARIANTS:-}" ]; then echo "$VARIANTS"; return; fi
  case "$1" in
    sfac) echo "sfac.divergence=jeffreys sfac.divergence=js" ;;
    *) echo "-" ;;
  esac
}

finished_configs() {  # finished_configs <dir> <override or -> <tag>: config.yaml of each finished seed there
  local config
  for config in "$1"/*/config.yaml "$1"/*/seed_*/config.yaml; do
    [ -f "$config" ] && [ -f "$(dirname "$config")/summary.json" ] || continue
    if [ "$2" != "-" ] && ! grep -q "^  ${2#*.}\$" <(sed -n "/^${2%%.*}:/,/^[^ ]/p" "$config" | sed 's/: /=/'); then
      continue
    fi
    if [ -n "$3" ]; then  # a tagged row: bf16 (precision) or tuned (hparams)
      grep -q -e "^precision: ${3}\$" -e "^hparams: ${3}\$" "$config" || continue
    elif grep -q -e "^precision: bf16\$" -e "^hparams: tuned\$" "$config"; then
      continue  # a bf16 or tuned row is not the cell of the published fp32 settings
    fi
    echo "$config"
  done
}

start_states_of() {  # start_states_of <config.yaml>: its eval.start_states (legacy where unset)
  local value
  value=$(sed -n '/^eval:/,/^[^ ]/p' "$1" | sed -n 's/^  start_states: //p')
  echo "${value:-legacy}"
}

seed_dirs() {  # seed_dirs <run dir>: the run directory of each of its seeds
  if [ -f "$1/stack.yaml" ]; then ls -d "$1"/seed_*/ 2>/dev/null | sed 's:/$::'; else echo "$1"; fi
}

for task in "${TASKS[@]}"; do
  for algo in $ALGOS; do
    committed="$OUT/$task/$algo"
    for variant in $(variants "$algo"); do
      name="${variant##*=}"; [ "$variant" = "-" ] && name=run
      [ -n "$TAG" ] && name="${name}_$TAG"
      extra=(); [ "$variant" != "-" ] && extra=("$variant")
      # shellcheck disable=SC2206
      [ -n "$EXTRA" ] && extra+=($EXTRA)
      # the seeds 0..SEEDS-1 that the committed logs do not hold finished: all of them (a new
      # cell, one stacked run), or the last ones (a cell topped up: seeds first..SEEDS-1 stacked,
      # evaluated from the start states its finished seeds used)
      mapfile -t finished < <(finished_configs "$committed" "$variant" "$TAG")
      missing=()
      for ((s = 0; s < SEEDS; s++)); do
        found=0
        for config in "${finished[@]}"; do grep -q "^seed: $s\$" "$config" && found=1 && break; done
        [ $found -eq 0 ] && missing+=("$s")
      done
      first=0; count=$SEEDS; run="$RUNS/cpu/$task/$algo/${name}_stack$SEEDS"
      if [ ${#missing[@]} -gt 0 ] && [ "${missing[0]}" -gt 0 ] \
          && [ $((missing[0] + ${#missing[@]})) -eq "$SEEDS" ]; then
        first=${missing[0]}; count=${#missing[@]}
        run="$RUNS/cpu/$task/$algo/${name}_seed${first}_stack$count"
        mapfile -t protocols < <(for config in "${finished[@]}"; do start_states_of "$config"; done | sort -u)
        if [ ${#protocols[@]} -ne 1 ]; then
          echo "results_cpu.sh: the finished seeds of $committed ($name) were evaluated from different start states (${protocols[*]}); a top-up cannot match them. Run the whole cell again under another OUT." >&2
          exit 2
        fi
        [ "${protocols[0]}" = disjoint ] || extra+=("eval.start_states=${protocols[0]}")
      fi
      if [ -f "$run/stack.yaml" ] || [ -f "$run/config.yaml" ]; then
        done_seeds=0
        while read -r seed_dir; do
          [ -f "$seed_dir/summary.json" ] && done_seeds=$((done_seeds + 1))
        done < <(seed_dirs "$run")
        if [ "$done_seeds" -lt "$count" ]; then
          launch "recipes/$algo.py" "resume=$run"
        fi
      elif [ ${#missing[@]} -eq 0 ]; then
        continue  # the committed logs hold this cell's seeds finished
      else
        # a new cell trains on the bits of the task's data that the cell's committed runs (else
        # the table's) trained on: another processor's bits would mix two datasets in one table
        check=(scripts/check_data.py "$task" "$committed" "$OUT/$task")
        [ -n "${DRY_RUN:-}" ] && check+=(--no-generate)
        python "${check[@]}"
        launch "recipes/$algo.py" experiment=cpu "task=$task" "seed=$first" "stack_seeds=$count" \
          "${extra[@]}" "hydra.run.dir=$run"
      fi
      if { [ "$algo" = srpo ] || [ "$algo" = bdpo ]; } && [ -d "$run" ]; then
        # each finished seed: its diffusion behavior model alone, and where its policy went
        # (SRPO's μ with a 20-step DDPM chain; BDPO's ν̄ with its own N-step chain)
        sampling=(); [ "$algo" = srpo ] && sampling=(--sampling-steps 20)
        while read -r seed_dir; do
          if [ -f "$seed_dir/summary.json" ] && [ ! -f "$seed_dir/behavior_eval.json" ]; then
            if [ -n "${DRY_RUN:-}" ]; then echo "python scripts/eval_behavior.py $seed_dir ${sampling[*]}"
            else python scripts/eval_behavior.py "$seed_dir" "${sampling[@]}"; fi
          fi
        done < <(seed_dirs "$run")
      fi
      if [ -d "$run" ] && [ -z "${DRY_RUN:-}" ]; then
        python scripts/collect_results.py "$run" "$committed/$(basename "$run")"
      fi
    done
  done
done
