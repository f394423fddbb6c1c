#!/bin/bash
# GPU check: on a machine with CUDA GPUs, short bf16-mixed fits and tests of VAE and SkipVAE (the paper's MNIST
# model) on one GPU and on all of them (DDP), then the training-throughput benchmark on one GPU, and one summary.
#   bash benchmarks/gpu_check.sh [output folder, default results/gpu_check]
# Where no CUDA GPU is visible it prints why and exits with 0 without running anything.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then PYTHON=python; [ -x .venv/bin/python ] && PYTHON=.venv/bin/python; fi
OUT=${1:-results/gpu_check}
BATCHES=200  # training batches of 50 per process; validation and test on 20 batches of 500

gpus=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())") || {
    echo "gpu_check: $PYTHON cannot import torch; set PYTHON to the project's interpreter (make installs .venv)" >&2
    exit 1
}
if [ "$gpus" -eq 0 ]; then
    echo "gpu_check: skipped, no CUDA GPU is visible to torch (torch.cuda.device_count() is 0; CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset})."
    exit 0
fi
mkdir -p "$OUT"
summary="$OUT/summary.txt"
{
    echo "gpu_check $(date -u +%FT%TZ): $gpus x $("$PYTHON" -c "import torch; print(torch.cuda.get_device_name(0))"), torch $("$PYTHON" -c "import torch; print(torch.__version__)")"
    printf "%-8s %4s %12s %14s %10s %10s %8s %6s\n" model gpus fit_seconds train_images/s test/elbo test/nll_iw test/kl test/au
} > "$summary"
device_counts=(1)
if [ "$gpus" -gt 1 ]; then device_counts+=("$gpus"); fi
for devices in "${device_counts[@]}"; do
    for model in vae skipvae; do
        name="${model}_${devices}gpu"
        logging=(--trainer.logger.init_args.save_dir "$OUT" --trainer.logger.init_args.name "$name"
                 --trainer.logger.init_args.version 0 --trainer.enable_progress_bar false)
        budget=(--trainer.max_epochs 1 --trainer.limit_train_batches "$BATCHES" --trainer.limit_val_batches 20
                --trainer.limit_test_batches 20 --data.init_args.eval_batch_size 500 --nll_iw.max_examples 500)
        start=$(date +%s.%N)
        "$PYTHON" main.py fit --config "configs/mnist_$model.yaml" --config configs/presets/bf16.yaml \
            --trainer.accelerator gpu --trainer.devices "$devices" "${budget[@]}" "${logging[@]}" > "$OUT/$name.fit.log" 2>&1
        end=$(date +%s.%N)
        "$PYTHON" main.py test --config "configs/mnist_$model.yaml" --config configs/presets/bf16.yaml \
            --trainer.accelerator gpu --trainer.devices 1 "${budget[@]}" "${logging[@]}" \
            --trainer.logger.init_args.version test \
            --ckpt_path "$OUT/$name/version_0/checkpoints/last.ckpt" > "$OUT/$name.test.log" 2>&1
        "$PYTHON" - "$OUT/$name/test" "$model" "$devices" "$start" "$end" "$BATCHES" >> "$summary" <<'PY'
import sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
folder, model, devices, start, end, batches = sys.argv[1:]
events = EventAccumulator(folder, size_guidance={"scalars": 0})
events.Reload()
value = {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"]}
seconds = float(end) - float(start)
print(f"{model:8s} {devices:>4s} {seconds:12.1f} {int(batches) * 50 * int(devices) / seconds:14.0f} "
      f"{value['test/elbo']:10.2f} {value['test/nll_iw']:10.2f} {value['test/kl']:8.2f} {value['test/au']:6.0f}")
PY
    done
done
echo "(fit_seconds include start-up and validation; train_images/s = $BATCHES batches x 50 x gpus / fit_seconds)" >> "$summary"
echo >> "$summary"
"$PYTHON" benchmarks/train_throughput.py --device cuda --precision both --steps 20 --svi-steps 20 >> "$summary" 2>&1
cat "$summary"
