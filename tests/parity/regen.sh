#!/usr/bin/env bash
# Regenerate the HF transformers parity fixtures under tests/fixtures/ (see tests/parity/README.md).
#
#   tests/parity/regen.sh           rewrite tokenizer/, hf-tiny/, hf-tiny-sharded/, images/, hf-tiny-ref/,
#                                   prompt-logprobs/, sampling/,
#                                   then rerun the fixture scripts of other owners that depend on them
#   tests/parity/regen.sh --check   regenerate into a temporary folder and compare byte for byte with
#                                   the committed fixtures (exit 1 on any difference)
#
# PYTHON overrides the interpreter (default: the repo's .venv-parity, see requirements.txt).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
py="${PYTHON:-$root/.venv-parity/bin/python}"
fixtures="$root/tests/fixtures"
owned=(tokenizer hf-tiny hf-tiny-sharded images hf-tiny-ref prompt-logprobs sampling)

# One thread and no tokenizers parallelism: identical bytes on every run.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false PYTHONHASHSEED=0
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error HF_HUB_DISABLE_PROGRESS_BARS=1

generate() {
    local out="$1"
    "$py" "$here/make_tokenizer.py" --fixtures "$out"
    "$py" "$here/make_hf_tiny.py" --fixtures "$out"
    "$py" "$here/make_hf_reference.py" --fixtures "$out"
    "$py" "$here/make_prompt_logprobs.py" --fixtures "$out"
    "$py" "$here/make_sampling_reference.py" --fixtures "$out"
}

case "${1:-}" in
"")
    generate "$fixtures"
    # Fixtures owned by other scripts in this folder that read tokenizer/ (run only if present).
    if [[ -f "$here/tokenizer_prompts.py" ]]; then "$py" "$here/tokenizer_prompts.py"; fi
    du -sh "${owned[@]/#/$fixtures/}"
    ;;
--check)
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    generate "$tmp" >/dev/null
    status=0
    for dir in "${owned[@]}"; do
        if ! diff -r -q "$fixtures/$dir" "$tmp/$dir"; then status=1; fi
    done
    if [[ $status -eq 0 ]]; then echo "fixtures are reproducible: identical bytes"; fi
    exit $status
    ;;
*)
    echo "usage: $0 [--check]" >&2
    exit 2
    ;;
esac
