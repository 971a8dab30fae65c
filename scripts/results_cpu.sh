#!/usr/bin/env bash
# The experiment=cpu results (docs/results.md): every algorithm of the comparison, three seeds per
# cell, one hydra multirun (joblib launcher) per algorithm and task.
#
#   scripts/results_cpu.sh hopper-medium halfcheetah-medium     # tasks (default: these two)
#   JOBS=2 ALGOS="iql sfac" scripts/results_cpu.sh walker2d-medium
#   DRY_RUN=1 scripts/results_cpu.sh                              # print what it would run, run nothing
#
# Runs (with checkpoints) go to $RUNS/cpu/<task>/<algo>/<n>_seed<s>/; after each sweep their logs
# are mirrored into results/cpu/<task>/<algo>/ (scripts/collect_results.py; a finished SRPO run
# first gets scripts/eval_behavior.py's behavior_eval.json, 20 DDPM steps), and
#   python -m torchrl_sym.report results/ --out docs/results.md
# regenerates the page. Re-running the script after a kill resumes: an unfinished run whose
# directory is still there is continued with resume=<its directory>, and only the seeds and variants
# that neither $RUNS nor results/ hold finished are started (so a new machine, whose $RUNS is
# empty, runs only what the committed logs lack).
# Put RUNS outside the checkout (for example RUNS=~/runs/results) where the checkout can be replaced
# between sessions: the checkpoints a resume needs live there and are never committed.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-runs/results}
JOBS=${JOBS:-1}
ALGOS=${ALGOS:-"iql sfac awac sql xql td3bc srpo"}
TASKS=("$@")
[ ${#TASKS[@]} -eq 0 ] && TASKS=(hopper-medium halfcheetah-medium)

launch() {  # a recipe run, or with DRY_RUN=1 only its command line
  if [ -n "${DRY_RUN:-}" ]; then echo "python $*"; else python "$@"; fi
}

variants() {  # the algorithm's variant axis (one override per variant): Sf-AC runs both divergences
  case "$1" in
    sfac) echo "sfac.divergence=jeffreys sfac.divergence=js" ;;
    *) echo "-" ;;
  esac
}

has_run() {  # has_run <dir> <seed> <override or -> [finished]: a run of that seed and variant
  local config  # exists in <dir> (with "finished": one that wrote summary.json)
  for config in "$1"/*/config.yaml; do
    [ -f "$config" ] || continue
    [ "${4:-}" = "finished" ] && [ ! -f "$(dirname "$config")/summary.json" ] && continue
    grep -q "^seed: $2\$" "$config" || continue
    if [ "$3" = "-" ] || grep -q "^  ${3#*.}\$" <(sed -n "/^${3%%.*}:/,/^[^ ]/p" "$config" | sed 's/: /=/'); then
      return 0
    fi
  done
  return 1
}

for task in "${TASKS[@]}"; do
  for algo in $ALGOS; do
    sweep="$RUNS/cpu/$task/$algo"
    committed="results/cpu/$task/$algo"
    if [ ! -d "$sweep" ] && [ ! -d "$committed" ]; then
      axis=$(variants "$algo")
      [ "$axis" = "-" ] && axis="" || axis="${axis%%=*}=$(echo "$axis" | tr ' ' '\n' | sed 's/.*=//' | paste -sd,)"
      # shellcheck disable=SC2086
      launch "recipes/$algo.py" -m experiment=cpu "task=$task" $axis \
        hydra/launcher=joblib "hydra.launcher.n_jobs=$JOBS" "hydra.sweep.dir=$sweep"
    else
      # a killed sweep: continue its unfinished runs, then start the ones it never reached and
      # that results/ does not hold finished (run directories are lost with the machine; the
      # committed logs are not)
      for run in "$sweep"/*/; do
        if [ -f "$run/config.yaml" ] && [ ! -f "$run/summary.json" ]; then
          launch "recipes/$algo.py" "resume=${run%/}"
        fi
      done
      for variant in $(variants "$algo"); do
        for seed in 0 1 2; do
          if ! has_run "$sweep" "$seed" "$variant" && ! has_run "$committed" "$seed" "$variant" finished; then
            extra=(); name=late_seed$seed
            [ "$variant" != "-" ] && extra=("$variant") && name=late_${variant##*=}_seed$seed
            launch "recipes/$algo.py" experiment=cpu "task=$task" "seed=$seed" "${extra[@]}" \
              "hydra.run.dir=$sweep/$name"
          fi
        done
      done
    fi
    if [ "$algo" = srpo ]; then  # each finished SRPO run: its behavior model alone, as a policy
      for run in "$sweep"/*/; do
        if [ -f "$run/summary.json" ] && [ ! -f "$run/behavior_eval.json" ]; then
          if [ -n "${DRY_RUN:-}" ]; then echo "python scripts/eval_behavior.py ${run%/} --sampling-steps 20"
          else python scripts/eval_behavior.py "${run%/}" --sampling-steps 20; fi
        fi
      done
    fi
    if [ -d "$sweep" ] && [ -z "${DRY_RUN:-}" ]; then
      python scripts/collect_results.py "$sweep" "$committed"
    fi
  done
done
