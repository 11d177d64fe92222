# shellcheck shell=bash disable=SC2034  # variables here are used by the scripts that source this file
# Shared by scripts/pipeline.sh and scripts/steps/*.sh (sourced, not run).
# load_config CONFIG: reads the config, checks it and sets up the environment every step needs.
# The step markers WORK_DIR/.done/<step> are what make re-runs skip finished work.

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STEPS=(convert preprocess train predict evaluate package)

# Messages start with the step's name (the script's name until step_start sets STEP).
log() { printf '%s\n' "${STEP:-$(basename "$0" .sh)}: $*"; }
die() { printf '%s\n' "${STEP:-$(basename "$0" .sh)}: error: $*" >&2; exit 1; }

load_config() {
    if [ $# -lt 1 ] || [ -z "$1" ]; then die "usage: $(basename "$0") CONFIG"; fi
    local config="$1"
    [ -f "$config" ] || die "config file '$config' not found"
    # Defaults for the optional keys; the config (bash KEY=value lines) overrides them.
    SYNTHETIC_ARGS="" SUBTYPE_LOSS_WEIGHT="" FAST=0 USE_ENV_NNUNET_DIRS=0
    # shellcheck disable=SC1090  # the config is the user's file
    source "$config"
    local key
    for key in WORK_DIR SOURCE DATASET_ID DATASET_NAME CONFIGURATION PLANS TRAINER FOLDS DEVICE NUM_PROCESSES; do
        [ -n "${!key:-}" ] || die "$config: $key is not set (see scripts/demo.conf for every key)"
    done
    [[ "$DATASET_ID" =~ ^[0-9]+$ ]] || die "$config: DATASET_ID must be a number, got '$DATASET_ID'"
    [[ "$NUM_PROCESSES" =~ ^[1-9][0-9]*$ ]] || die "$config: NUM_PROCESSES must be >= 1, got '$NUM_PROCESSES'"
    [[ "$FAST" =~ ^[01]$ ]] || die "$config: FAST must be 0 or 1, got '$FAST'"
    for key in $FOLDS; do [[ "$key" =~ ^[0-5]$ ]] || die "$config: FOLDS must be '5' or '0 1 2 3 4', got '$FOLDS'"; done

    mkdir -p "$WORK_DIR"
    WORK_DIR="$(cd "$WORK_DIR" && pwd)"   # absolute, so that steps may cd without breaking paths
    DONE_DIR="$WORK_DIR/.done"
    DATASET="$(printf 'Dataset%03d_%s' "$DATASET_ID" "$DATASET_NAME")"

    # Everything runs from the project's virtual environment (scripts/setup.sh creates it).
    local venv="${NNUNET_MT_VENV:-$REPO/.venv}"
    [ -x "$venv/bin/nnunet-multitask" ] || die "$venv has no nnunet-multitask; run: bash scripts/setup.sh"
    export PATH="$venv/bin:$PATH"

    # nnU-Net's three folders live under WORK_DIR unless the user explicitly keeps their own.
    : "${nnUNet_raw:=}" "${nnUNet_preprocessed:=}" "${nnUNet_results:=}"   # declared for the loop below
    local name
    for name in nnUNet_raw nnUNet_preprocessed nnUNet_results; do
        if [ "$USE_ENV_NNUNET_DIRS" = 1 ]; then
            [ -n "${!name:-}" ] || die "USE_ENV_NNUNET_DIRS=1 but $name is not set in the environment"
        else
            printf -v "$name" '%s' "$WORK_DIR/$name"
        fi
        mkdir -p "${!name}"
        export "${name?}"
    done
    # Importing the trainer module costs seconds (torch), so pipeline.sh asks once and the steps inherit it.
    export NNUNET_MT_TRAINER_PATH="${NNUNET_MT_TRAINER_PATH:-$(nnunet-multitask trainer-path)}"
    export nnUNet_extTrainer="$NNUNET_MT_TRAINER_PATH"
    # Empty keeps the trainer class's own lambda; the trainer reads this variable.
    if [ -n "$SUBTYPE_LOSS_WEIGHT" ]; then export nnUNet_subtype_loss_weight="$SUBTYPE_LOSS_WEIGHT"; fi
    if [ "$DEVICE" = cpu ]; then
        # torch.compile is slow to warm up and fragile on CPUs; process counts sized to the machine.
        export nnUNet_compile=false nnUNet_n_proc_DA="$NUM_PROCESSES" nnUNet_def_n_proc="$NUM_PROCESSES"
        export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc)}"
    fi
}

# step_start NAME: returns 1 (caller exits 0) when NAME's marker says it finished already.
step_start() {
    STEP="$1"
    if [ -f "$DONE_DIR/$STEP" ]; then
        log "skip: done already ($DONE_DIR/$STEP; delete it to redo this step)"
        return 1
    fi
    log "start"
}

mark_done() {
    mkdir -p "$DONE_DIR"
    date -u +%FT%TZ > "$DONE_DIR/$1"
    log "done: $1 (marker $DONE_DIR/$1)"
}

# Common arguments of nnUNetv2_predict_multitask (FOLDS unquoted on purpose: one argument per fold).
predict_args() {
    # shellcheck disable=SC2206
    PREDICT_ARGS=(-d "$DATASET_ID" -c "$CONFIGURATION" -tr "$TRAINER" -p "$PLANS" -f $FOLDS -device "$DEVICE"
                  -npp "$NUM_PROCESSES" -nps "$NUM_PROCESSES" --continue_prediction)
    if [ "$FAST" = 1 ]; then PREDICT_ARGS+=(--fast); fi
}
